"""The visualization scripts, run on tiny nets, and the numbers behind the figures."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")
PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

import rnn  # noqa: E402
from rnn import figures  # noqa: E402
from tinygraph.errors import GraphError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def load_script(name):
    path = ROOT / "visualizations" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"viz_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def assert_png(path, min_size=(200, 150)):
    path = Path(path)
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_MAGIC, f"{path} is not a PNG"
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size[0] >= min_size[0] and im.size[1] >= min_size[1], im.size
        return im.size


# ----------------------------------------------------------------- the scripts, on tiny nets

def test_heatmap_script(tmp_path):
    paths = load_script("heatmap").main(["--out", str(tmp_path), "--bits", "2"])
    assert paths == [str(tmp_path / "delta_heatmap.png")]
    assert_png(paths[0])


def test_gradient_norms_script(tmp_path, capsys):
    paths = load_script("gradient_norms").main(["--out", str(tmp_path), "--bits", "2", "--hidden", "3",
                                                "--examples", "4", "--scales", "0.5", "4"])
    assert paths == [str(tmp_path / "gradient_norms.png")]
    assert_png(paths[0])
    assert "scale 0.5" in capsys.readouterr().out


def test_peeling_script(tmp_path):
    task = rnn.tasks.BinaryAddition(bits=2, n_train=8)
    paths = load_script("peeling").main(["--out", str(tmp_path), "--bits", "2", "--duration", "100"])
    frames, gif = paths[:-1], paths[-1]
    assert len(frames) == task.steps + 1  # one frame per backward step t = T..0
    sizes = {assert_png(p) for p in frames}
    assert len(sizes) == 1, "every frame must have the same size"
    assert all(Path(p).parent == tmp_path / "peeling" for p in frames)
    assert Path(gif) == tmp_path / "peeling.gif"
    assert Path(gif).read_bytes()[:6] in (b"GIF87a", b"GIF89a")
    with Image.open(gif) as im:
        assert im.format == "GIF"
        assert im.size == sizes.pop()
        assert im.n_frames == task.steps + 1


def test_training_curves_script(tmp_path):
    paths = load_script("training_curves").main(["--out", str(tmp_path), "--bits", "2", "--epochs", "3",
                                                 "--train", "8", "--test", "8"])
    assert paths == [str(tmp_path / "training_curves.png")]
    assert_png(paths[0])


def test_scripts_default_out_is_visualizations_out():
    for name in ("heatmap", "gradient_norms", "peeling", "training_curves"):
        src = (ROOT / "visualizations" / f"{name}.py").read_text()
        assert 'default="./visualizations/out"' in src
        assert 'if __name__ == "__main__":' in src


# ----------------------------------------------------------------- the numbers behind the figures

def tiny_adder(bits=2):
    task = rnn.tasks.BinaryAddition(bits=bits, n_train=8)
    return task, task.data(task.train_pairs[:4])


def linear_net(scale):
    net = rnn.RecurrentNet("lin", seed=3)
    net.add_group("x", 1, role="input")
    net.add_group("h", 4, activation="tanh")
    net.add_group("y", 1, activation="linear", role="output")
    net.connect("x", "h", delay=1)
    net.connect("h", "h", delay=1, scale=scale)
    net.connect("h", "y", delay=0)
    return net


def test_norms_for_scales_small_weights_vanish_large_ones_explode():
    T = 8
    x = np.random.default_rng(0).uniform(-0.1, 0.1, size=(T, 3, 1))
    ins = [rnn.Clamp("x", x)]
    tgts = [rnn.Target("y", np.zeros((1, 3, 1)), steps="final")]
    curves = figures.norms_for_scales(linear_net, T, ins, tgts, [0.25, 4.0])
    assert list(curves) == ["scale 0.25", "scale 4"]
    small, large = curves["scale 0.25"], curves["scale 4"]
    assert small.shape == large.shape == (T + 1,)
    # at t = T the derivative of the state with respect to itself is the identity: norm sqrt(units)
    assert small[-1] == pytest.approx(2.0) and large[-1] == pytest.approx(2.0)
    assert small[0] < 1e-3 * large[0]            # ||dS_T/dS_0||: smaller for small weights
    assert small[0] < small[-1] < large[0]       # vanishing going back vs exploding going back
    # the default group is the recurrent one, and the numbers are Inspection.jacobian_norms
    direct = rnn.inspect(linear_net(4.0), T, ins, tgts).jacobian_norms("h")
    np.testing.assert_allclose(large, direct)
    deltas = figures.norms_for_scales(linear_net, T, ins, tgts, [1.0], measure="delta")["scale 1"]
    np.testing.assert_allclose(deltas, rnn.inspect(linear_net(1.0), T, ins, tgts).delta_norms)


def test_norms_for_scales_on_the_adder_layout():
    task, data = tiny_adder(bits=3)

    def factory(scale):
        net = rnn.RecurrentNet("a", seed=0)
        net.add_group("x", 2, role="input")
        net.add_group("h", 8, activation="tanh")
        net.add_group("y", 1, role="output")
        net.connect("x", "h", delay=1)
        net.connect("h", "h", delay=1, scale=scale)
        net.connect("h", "y", delay=1)
        return net

    curves = figures.norms_for_scales(factory, task.steps, data.inputs, data.targets, [0.5, 4.0])
    assert curves["scale 0.5"][0] < curves["scale 4"][0]


def test_heatmap_and_curves_functions(tmp_path):
    task, data = tiny_adder()
    net = task.net()
    ins = rnn.inspect(net, task.steps, data.inputs, data.targets)
    p = figures.delta_heatmap(ins, tmp_path / "sub" / "h.png", group=["h", "y"], example=None,
                              targets=data.targets)
    assert p == str(tmp_path / "sub" / "h.png")
    assert_png(p)
    assert_png(figures.delta_heatmap(ins, tmp_path / "one.png", group="h", example=1, annotate=False))
    assert_png(figures.gradient_norms_over_time({"a": ins.delta_norms, "zeros": np.zeros(task.steps + 1)},
                                                tmp_path / "n.png"))
    assert not list(tmp_path.glob(".*.tmp")), "temporary files left behind"


def test_peeling_frames_count_and_order(tmp_path):
    task, data = tiny_adder()
    net = task.net()
    frames = figures.peeling_frames(net, task.steps, data.inputs, data.targets, tmp_path, example=None)
    T = task.steps
    assert len(frames) == T + 1
    assert [Path(f).name for f in frames][0].endswith(f"_t{T:02d}.png")   # backward: t = T first
    assert [Path(f).name for f in frames][-1].endswith("_t00.png")
    assert sorted(frames) == frames


def test_peeling_one_example_of_a_batch_with_a_single_step_clamp(tmp_path, monkeypatch):
    # a single-step clamp may be given as (batch, units); picking example 1 must slice the batch
    task, _ = tiny_adder()
    net = task.net()
    rng = np.random.default_rng(0)
    X = rng.integers(0, 2, size=(3, net.groups["x"].size)).astype(float)
    Y = rng.uniform(size=(task.steps, 3, 1))
    seen = []
    real = figures.bptt
    monkeypatch.setattr(figures, "bptt", lambda *a: seen.append(a) or real(*a))
    frames = figures.peeling_frames(net, task.steps, [rnn.Clamp("x", X, steps=[1])], [rnn.Target("y", Y)],
                                    tmp_path, example=1)
    assert len(frames) == task.steps + 1
    assert len(seen) == 1  # one backward pass for the frames
    (clamp,), (target,) = seen[0][2], seen[0][3]
    np.testing.assert_array_equal(np.asarray(clamp.values), X[None, 1:2])
    np.testing.assert_array_equal(np.asarray(target.values), Y[:, 1:2])


def test_frames_to_gif_without_pillow_warns(tmp_path, monkeypatch):
    task, data = tiny_adder()
    frames = figures.peeling_frames(task.net(), task.steps, data.inputs, data.targets, tmp_path)
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.warns(RuntimeWarning, match="Pillow"):
        assert figures.frames_to_gif(frames, tmp_path / "x.gif") is None
    assert not (tmp_path / "x.gif").exists()


def test_missing_matplotlib_error_names_the_extra(tmp_path, monkeypatch):
    task, data = tiny_adder()
    ins = rnn.inspect(task.net(), task.steps, data.inputs, data.targets)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(figures.MatplotlibNotFoundError, match=r"pip install tinygraph\[viz\]") as exc:
        figures.delta_heatmap(ins, tmp_path / "h.png")
    assert isinstance(exc.value, GraphError) and isinstance(exc.value, ImportError)
    assert not (tmp_path / "h.png").exists()


def test_training_curves_function_and_errors(tmp_path):
    import matplotlib
    from rnn.train import History
    before = matplotlib.rcParams["font.size"]
    h = History()
    h.loss = [1.0, 0.5, 0.01]
    h.metrics = [{"accuracy": 0.1}, {"accuracy": 0.6}, {"accuracy": 1.0}]
    assert_png(figures.training_curves(h, tmp_path / "t.png", metric="accuracy"))
    assert_png(figures.training_curves(h, tmp_path / "t2.png"))
    with pytest.raises(figures.FigureError, match="no metric 'recall'.*accuracy"):
        figures.training_curves(h, tmp_path / "t3.png", metric="recall")
    with pytest.raises(figures.FigureError, match="no epochs"):
        figures.training_curves(History(), tmp_path / "t4.png")
    with pytest.raises(figures.FigureError, match="extension"):
        figures.training_curves(h, tmp_path / "t5.nope")
    with pytest.raises(figures.FigureError, match="empty"):
        figures.gradient_norms_over_time({}, tmp_path / "n.png")
    assert not list(tmp_path.glob(".*.tmp"))
    import matplotlib
    assert matplotlib.rcParams["font.size"] == before, "a figure left its style settings behind"


def test_bad_group_and_example_are_graph_errors(tmp_path):
    task, data = tiny_adder()
    ins = rnn.inspect(task.net(), task.steps, data.inputs, data.targets)
    with pytest.raises(GraphError, match="no group 'zz'"):
        figures.delta_heatmap(ins, tmp_path / "h.png", group="zz")
    with pytest.raises(figures.FigureError, match="example must be"):
        figures.delta_heatmap(ins, tmp_path / "h.png", example=9)
    with pytest.raises(figures.FigureError, match="example must be"):
        figures.peeling_frames(task.net(), task.steps, data.inputs, data.targets, tmp_path, example=9)
