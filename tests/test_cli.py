"""The `tinygraph` command, run as a subprocess: exit codes, files written, clear errors."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import rnn

EXAMPLE = os.path.join(os.path.dirname(rnn.__file__), "examples", "adder.json")


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "rnn.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_help_of_every_command_is_useful():
    top = cli("--help")
    assert top.returncode == 0 and "feed-forward net" in top.stdout
    for cmd, words in [("demo", "index.html"), ("render", "extension"), ("check", "exit status 1"),
                       ("inspect", "dE/dstate")]:
        r = cli(cmd, "--help")
        assert r.returncode == 0 and words in r.stdout, (cmd, r.stdout)


def test_check_passes_on_the_example_spec_and_a_saved_net(tmp_path):
    r = cli("check", EXAMPLE, "--steps", "4")
    assert r.returncode == 0, r.stderr
    assert "PASS" in r.stdout and "grad fd h->h" in r.stdout
    net = rnn.tasks.BinaryAddition().net(seed=1)
    path = str(tmp_path / "adder.npz")
    net.save(path)
    r = cli("check", path, "--steps", "3", "--batch", "1")
    assert r.returncode == 0 and "PASS" in r.stdout, r.stdout + r.stderr


def test_check_exits_1_when_the_gradients_disagree(tmp_path):
    """A net whose saved weights blow the loss up to infinity cannot pass: exit status 1 or a clear error."""
    spec = json.load(open(EXAMPLE))
    spec["groups"][1]["activation"] = "linear"
    path = tmp_path / "wild.json"
    path.write_text(json.dumps(spec))
    net = rnn.load_any(str(path))
    net.weights["h->h"][...] = 1e200
    saved = str(tmp_path / "wild.npz")
    try:
        net.save(saved)
    except rnn.LoadError:
        pytest.skip("the library refuses to save non-finite weights, so this net cannot be written")
    r = cli("check", saved, "--steps", "6")
    assert r.returncode in (1, 2), r.stdout
    assert r.returncode == 2 or "FAIL" in r.stdout


def test_missing_and_malformed_net_files_fail_clearly(tmp_path):
    r = cli("check", str(tmp_path / "nope.npz"), "--steps", "3")
    assert r.returncode == 2 and "nope.npz" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "tinygraph-rnn", "version": 99}')
    r = cli("inspect", str(bad), "--steps", "3")
    assert r.returncode == 2 and "bad.json" in r.stderr and "version" in r.stderr and "Traceback" not in r.stderr
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"PK\x03\x04 definitely not a zip")
    r = cli("render", str(junk), "--steps", "2", "-o", str(tmp_path / "x.svg"))
    assert r.returncode == 2 and "junk.npz" in r.stderr and not (tmp_path / "x.svg").exists()
    r = cli("check", EXAMPLE, "--steps", "0")
    assert r.returncode == 2 and "--steps" in r.stderr


def test_inspect_prints_the_table_and_writes_csv(tmp_path):
    csv_path = tmp_path / "d.csv"
    r = cli("inspect", EXAMPLE, "--steps", "3", "--csv", str(csv_path))
    assert r.returncode == 0, r.stderr
    assert "dE/dstate" in r.stdout and "h->h" in r.stdout
    rows = csv_path.read_text().strip().splitlines()
    assert rows[0].startswith("t,group,unit") and len(rows) == 1 + 4 * (2 + 3 + 1)  # (T+1) steps x 6 units


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_render_writes_svg_and_dot(tmp_path):
    for view in ("side-by-side", "folded", "unrolled"):
        out = tmp_path / f"{view}.svg"
        r = cli("render", EXAMPLE, "--steps", "3", "--view", view, "-o", str(out))
        assert r.returncode == 0, r.stderr
        assert out.read_text().lstrip().startswith(("<?xml", "<svg", "<!DOCTYPE"))
    dot_file = tmp_path / "net.dot"
    r = cli("render", EXAMPLE, "--steps", "3", "--units", "-o", str(dot_file))
    assert r.returncode == 0 and "digraph" in dot_file.read_text()


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_demo_writes_its_report(tmp_path):
    out = tmp_path / "demo"
    r = cli("demo", "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "100.00%" in r.stdout and "PASS" in r.stdout
    index = (out / "index.html").read_text()
    for name in ("side_by_side.svg", "unrolled.svg", "folded.svg", "units.svg", "check.svg", "heatmap.png",
                 "gradient_norms.png", "peeling.gif", "training.png"):
        assert (out / name).exists() and name in index, name
    net = rnn.load(str(out / "adder.npz"))
    assert set(net.weights) == {"x->h", "h->h", "h->y", "bias:h", "bias:y"}


def test_inspection_numbers_equal_bptt():
    """The inspection table's numbers are the time-domain BPTT loop's."""
    net = rnn.tasks.BinaryAddition(bits=3).net(seed=2)
    T = 6
    rng = np.random.default_rng(0)
    ins = [rnn.Clamp("x", rng.integers(0, 2, (T, 3, 2)).astype(float))]
    tgts = [rnn.Target("y", rng.uniform(0, 1, (3, 3, 1)), steps=("last", 3))]
    got = rnn.inspect(net, T, ins, tgts)
    ref = rnn.bptt(net, T, ins, tgts)
    for g in net.groups:
        for t in range(T + 1):
            np.testing.assert_allclose(got.state_deltas[g][t], ref.deltas[t][g], rtol=1e-10, atol=1e-14)
            if t >= 1 and g in ref.total_deltas[t]:
                np.testing.assert_allclose(got.total_deltas[g][t], ref.total_deltas[t][g], rtol=1e-10, atol=1e-14)
    for w in net.weights:
        for t, gr in ref.step_grads[w].items():
            np.testing.assert_allclose(got.step_grads[w][t], gr, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(got.weight_grads[w], ref.grads[w], rtol=1e-10, atol=1e-14)
    per_step = np.sqrt([sum((ref.deltas[t][g] ** 2).sum() for g in net.groups) for t in range(T + 1)])
    np.testing.assert_allclose(got.delta_norms, per_step, rtol=1e-10)
