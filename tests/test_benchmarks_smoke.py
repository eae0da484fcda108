"""Smoke test of the benchmark suite (tiny sizes): the harness runs, the numpy floor's gradients
match central finite differences, and every implementation's gradients equal the floor's.
It asserts agreement, never speed."""

import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import QUICK_CONFIGS  # noqa: E402
from benchmarks.floor import PARAM_NAMES, FloorRNN, init_params, make_data  # noqa: E402
from benchmarks.impls import TinygraphRNN, TorchLoopRNN, TorchNNRNN, torch_available  # noqa: E402

T, B, I, H = 6, 3, 3, 5


def _setup(dtype=np.float64, seed=0):
    p = init_params(I, H, seed=seed, dtype=dtype)
    X, Y = make_data(T, B, I, seed=seed + 1, dtype=dtype)
    return p, X, Y


def test_floor_matches_central_finite_differences():
    p, X, Y = _setup()
    f = FloorRNN(p, X, Y, lr=0.1)
    g = f.grads()
    assert f.forward_backward() == pytest.approx(f.loss_at(p), rel=1e-12)
    eps = 1e-6
    for k in PARAM_NAMES:
        num = np.zeros_like(p[k])
        for idx in np.ndindex(p[k].shape):
            q = {a: b.copy() for a, b in p.items()}
            q[k][idx] += eps
            lp = f.loss_at(q)
            q[k][idx] -= 2 * eps
            lm = f.loss_at(q)
            num[idx] = (lp - lm) / (2 * eps)
        err = np.max(np.abs(num - g[k])) / max(np.max(np.abs(num)), 1e-12)
        assert err < 1e-6, (k, err)


def test_floor_sgd_step_moves_every_param_by_lr_times_grad():
    p, X, Y = _setup()
    f = FloorRNN(p, X, Y, lr=0.05)
    g = f.grads()
    f.step()
    for k in PARAM_NAMES:
        np.testing.assert_allclose(f.params[k], p[k] - 0.05 * g[k], rtol=1e-12, atol=1e-15)


def test_floor_keeps_float32():
    p, X, Y = _setup(np.float32)
    f = FloorRNN(p, X, Y, lr=0.01)
    f.step()
    assert all(v.dtype == np.float32 for v in f.grad.values())
    assert all(v.dtype == np.float32 for v in f.params.values())
    assert f.hs.dtype == np.float32


def test_tinygraph_weight_gradients_equal_the_floors():
    p, X, Y = _setup()
    ref = FloorRNN(p, X, Y, lr=0.01).grads()
    tg = TinygraphRNN(p, X, Y, lr=0.01)
    g = tg.grads()
    assert set(g) == set(PARAM_NAMES)
    for k in PARAM_NAMES:
        np.testing.assert_allclose(g[k], ref[k], rtol=1e-9, atol=1e-12 * np.max(np.abs(ref[k])), err_msg=k)


def test_tinygraph_and_floor_take_the_same_sgd_steps():
    p, X, Y = _setup()
    f, tg = FloorRNN(p, X, Y, lr=0.01), TinygraphRNN(p, X, Y, lr=0.01)
    for _ in range(3):
        assert tg.step() == pytest.approx(f.step(), rel=1e-10)
    for k in PARAM_NAMES:
        np.testing.assert_allclose(tg.net.weights[k], f.params[k], rtol=1e-9, atol=1e-12, err_msg=k)


def test_tinygraph_float32_gradients_agree_with_the_floor():
    p, X, Y = _setup(np.float32)
    ref = FloorRNN(p, X, Y, lr=0.01).grads()
    g = TinygraphRNN(p, X, Y, lr=0.01).grads()
    for k in PARAM_NAMES:
        np.testing.assert_allclose(np.asarray(g[k], dtype=np.float64), ref[k], rtol=1e-4,
                                   atol=1e-5 * np.max(np.abs(ref[k])), err_msg=k)


@pytest.mark.skipif(not torch_available(), reason="torch is optional")
@pytest.mark.parametrize("cls", [TorchLoopRNN, TorchNNRNN], ids=["loop", "nn.RNN"])
def test_torch_gradients_equal_the_floors(cls):
    p, X, Y = _setup()
    ref = FloorRNN(p, X, Y, lr=0.01).grads()
    g = cls(p, X, Y, lr=0.01).grads()
    for k in PARAM_NAMES:
        np.testing.assert_allclose(g[k], ref[k], rtol=1e-9, atol=1e-12 * np.max(np.abs(ref[k])), err_msg=k)


def test_harness_runs_end_to_end(tmp_path):
    from benchmarks.__main__ import main
    out = tmp_path / "b.json"
    md = tmp_path / "R.md"
    rc = main(["--quick", "--no-torch", "--configs", "tiny,long", "--dtype", "both", "--repeats", "2",
               "--json", str(out), "--results", str(md), "--memory", "--build-scaling", "--build-steps", "20,40",
               "--profile", "tiny"])
    assert rc == 0
    payload = json.loads(out.read_text())
    assert [(r["config"]["name"], r["dtype"]) for r in payload["results"]] == [
        ("tiny", "float32"), ("tiny", "float64"), ("long", "float32"), ("long", "float64")]
    for r in payload["results"]:
        assert set(r["impls"]) == {"numpy floor", "tinygraph"}
        assert r["impls"]["numpy floor"]["ratio"] == 1.0 == r["impls"]["numpy floor"]["ratio_paired"]
        tg_ = r["impls"]["tinygraph"]  # the paired ratio: the median of the two rounds' ratios
        t, f = np.asarray(tg_["times_ms"]), np.asarray(r["impls"]["numpy floor"]["times_ms"])
        assert tg_["ratio_paired"] == pytest.approx(float(np.median(t / f)))
        assert all(len(s["times_ms"]) == 2 and s["median_ms"] > 0 for s in r["impls"].values())
        assert all(a["ok"] for a in r["agreement"].values()), r["agreement"]
        assert all(a["ok"] for a in r["loss_agreement"].values()), r["loss_agreement"]
        assert r["config"] == QUICK_CONFIGS[r["config"]["name"]]._asdict()
    assert [m["dtype"] for m in payload["memory"]] == ["float32", "float64"]
    assert all(m["ratio_peak"] > 0 for m in payload["memory"])
    assert [b["T"] for b in payload["build"]] == [20, 40]
    assert all("error" not in b for b in payload["build"]), payload["build"]
    text = md.read_text()
    assert "| tiny (" in text and "Peak memory" in text and "Building and compiling" in text
