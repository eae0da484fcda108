"""Saving and loading: bitwise round trips, atomic writes, and hostile files that must fail
with a clear GraphError (never another exception, never by running code)."""

import io
import json
import os
import re
import time
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import rnn
import rnn.persist as persist
import tinygraph as tg
import tinygraph.io as tgio

T = 4


def make_net():
    """Every kind of spec entry: learned / float / array / default initials, bias on and off,
    delays 0, 1 and 2, a custom name and an auto-named second connection between the same groups."""
    net = rnn.RecurrentNet("every-kind", seed=7)
    net.add_group("x", 2, role="input")
    net.add_group("h", 3, activation="tanh", initial="learned")
    net.add_group("m", 2, activation="logistic", initial=0.3, bias=False)
    net.add_group("k", 2, activation="relu", initial=np.array([0.1, -0.2]))
    net.add_group("y", 1, activation="logistic", role="output")
    net.connect("x", "h")
    net.connect("h", "h", delay=1)
    net.connect("h", "h", delay=2)  # auto-named "h->h[d2]"
    net.connect("h", "m", delay=0, name="hidden to memory")
    net.connect("m", "k", delay=1)
    net.connect("k", "y")
    net.connect("m", "y", delay=2)
    net.set_initial("y", "zero")
    rng = np.random.default_rng(1)
    for arr in net.weights.values():  # non-trivial values everywhere (biases start at zero)
        arr[...] = rng.standard_normal(arr.shape)
    return net


def data(batch=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 2, size=(T, batch, 2)).astype(float)
    Y = rng.uniform(0.1, 0.9, size=(T, batch, 1))
    return [rnn.Clamp("x", X)], [rnn.Target("y", Y, steps="all")]


def raises_clear(cls, *fragments):
    """pytest.raises that also requires a GraphError whose message holds every fragment."""
    assert issubclass(cls, tg.GraphError)
    return pytest.raises(cls, match="(?s)" + "".join(f"(?=.*{re.escape(f)})" for f in fragments))


# ----------------------------------------------------------------- round trips

def test_round_trip_is_bitwise_and_keeps_structure(tmp_path):
    net = make_net()
    net.weights["k->y"] = net.weights["k->y"].astype(np.float32)  # a float32 weight keeps its dtype
    path = tmp_path / "net.npz"
    assert net.save(path) == os.fspath(path)
    back = rnn.load(path)
    assert back.spec() == net.spec()
    assert back.name == net.name and back.seed == net.seed
    assert list(back.weights) == list(net.weights)
    for name, arr in net.weights.items():
        got = back.weights[name]
        assert got.dtype == arr.dtype and got.shape == arr.shape, name
        assert got.tobytes() == arr.tobytes(), name  # bitwise
        assert got is not arr
    assert list(back.groups) == list(net.groups)
    for name, g in net.groups.items():
        b = back.groups[name]
        assert (b.size, b.activation, b.role, b.bias) == (g.size, g.activation, g.role, g.bias)
    assert back.groups["h"].learned and back.groups["m"].initial == 0.3 and back.groups["y"].initial == 0.0
    assert back.groups["x"].initial is None
    np.testing.assert_array_equal(back.groups["k"].initial, [0.1, -0.2])
    assert [(c.name, c.src, c.dst, c.delay) for c in back.connections.values()] == \
           [(c.name, c.src, c.dst, c.delay) for c in net.connections.values()]
    assert "h->h[d2]" in back.connections and "hidden to memory" in back.connections


def test_random_stream_continues_after_loading(tmp_path):
    # weights drawn after saving (a new group's learned initial state, a new connection) are the
    # ones the original net draws next, not a re-seeded stream
    net = make_net()
    net.save(tmp_path / "net.npz")
    back = rnn.load(tmp_path / "net.npz")
    for n in (net, back):
        n.add_group("z", 4, activation="tanh", initial="learned")
        n.connect("h", "z", delay=1)
    assert back.weights["init:z"].tobytes() == net.weights["init:z"].tobytes()
    assert back.weights["h->z"].tobytes() == net.weights["h->z"].tobytes()



def test_file_without_random_state_still_loads(tmp_path, monkeypatch):
    # files written before the state was saved: the loaded net re-seeds, so its next draws
    # differ (the saved weights were not drawn again), which is what saving the state fixes
    net = make_net()
    monkeypatch.setattr(persist, "rng_state", lambda net: None)
    net.save(tmp_path / "old.npz")
    back = rnn.load(tmp_path / "old.npz")
    assert all(back.weights[k].tobytes() == v.tobytes() for k, v in net.weights.items())
    for n in (net, back):
        n.connect("x", "y", delay=1, name="late")
    assert back.weights["late"].tobytes() != net.weights["late"].tobytes()


@pytest.mark.parametrize("rng, fragment", [
    ("PCG64", "must be a JSON object"),
    ({"bit_generator": "MT19937", "state": {"state": 1, "inc": 1}, "has_uint32": 0, "uinteger": 0},
     "bit_generator must be 'PCG64'"),
    ({"bit_generator": "PCG64", "state": {"state": -1, "inc": 1}, "has_uint32": 0, "uinteger": 0}, "state.state"),
    ({"bit_generator": "PCG64", "state": {"state": 1, "inc": 2 ** 128}, "has_uint32": 0, "uinteger": 0},
     "state.inc"),
    ({"bit_generator": "PCG64", "state": {"state": 1, "inc": 1}, "has_uint32": 2, "uinteger": 0}, "has_uint32"),
    ({"bit_generator": "PCG64", "state": {"state": 1, "inc": 1}, "has_uint32": 0, "uinteger": 1.5}, "uinteger"),
    ({"bit_generator": "PCG64", "state": {"state": 1}, "has_uint32": 0, "uinteger": 0}, "lacks"),
    ({"bit_generator": "PCG64", "state": {"state": 1, "inc": 1}, "has_uint32": 0, "uinteger": 0, "x": 1},
     "unknown key"),
])
def test_a_damaged_random_state_is_refused_clearly(rng, fragment):
    spec = dict(make_net().spec(), rng=rng)
    with raises_clear(rnn.LoadError, "rng", fragment):
        rnn.net_from_spec(spec)


def test_loaded_net_computes_exactly_the_same_loss_and_gradients(tmp_path):
    net = make_net()
    net.save(tmp_path / "net.npz")
    back = rnn.load(tmp_path / "net.npz")
    inputs, targets = data()
    a = net.unroll(T).run(inputs, targets)
    b = back.unroll(T).run(inputs, targets)
    assert a.loss == b.loss
    for name in net.weights:
        assert np.array_equal(a.weight_grads[name], b.weight_grads[name]), name


def test_saved_file_is_a_plain_npz_with_the_spec_as_bytes(tmp_path):
    net = make_net()
    net.save(tmp_path / "net.npz")
    with np.load(tmp_path / "net.npz", allow_pickle=False) as z:
        assert z["__spec__"].dtype == np.uint8
        stored = json.loads(z["__spec__"].tobytes())
        assert stored["format"] == "tinygraph-rnn" and stored["version"] == 1
        keys = dict(stored["arrays"])
        assert np.array_equal(z[keys["h->h"]], net.weights["h->h"])
        assert keys["hidden to memory"].startswith("__w")  # a name unfit as an archive key gets an index


def test_save_without_npz_suffix_writes_exactly_that_path(tmp_path):
    make_net().save(tmp_path / "weights.bin")
    assert os.listdir(tmp_path) == ["weights.bin"]
    assert rnn.load_any(tmp_path / "weights.bin").spec() == make_net().spec()


def test_json_spec_file_builds_the_same_structure_with_seeded_weights(tmp_path):
    net = make_net()
    (tmp_path / "net.json").write_text(json.dumps(net.spec()))
    a = rnn.load_any(tmp_path / "net.json")
    b = persist.load_spec_file(tmp_path / "net.json")
    assert a.spec() == net.spec()
    for name in net.weights:  # same seed, same random start
        assert np.array_equal(a.weights[name], b.weights[name])
    a.unroll(T).run(*data())


def test_net_from_spec_with_weights_and_defaults():
    spec = {"format": "tinygraph-rnn", "version": 1,
            "groups": [{"name": "x", "size": 2, "role": "input"}, {"name": "h", "size": 3}],
            "connections": [{"src": "x", "dst": "h"}, {"src": "h", "dst": "h"}]}
    W = {"x->h": np.ones((2, 3)), "h->h": np.eye(3, dtype=np.float32), "bias:h": np.zeros(3)}
    net = rnn.net_from_spec(spec, weights=W)
    assert net.connections["h->h"].delay == 1 and net.connections["x->h"].delay == 0
    assert net.weights["h->h"].dtype == np.float32 and net.weights["h->h"] is not W["h->h"]
    with raises_clear(rnn.LoadError, "h->h", "(3, 3)", "(2, 2)"):
        rnn.net_from_spec(spec, weights=dict(W, **{"h->h": np.eye(2)}))
    with raises_clear(rnn.LoadError, "bias:h"):
        rnn.net_from_spec(spec, weights={k: v for k, v in W.items() if k != "bias:h"})
    with raises_clear(rnn.LoadError, "NaN"):
        rnn.net_from_spec(spec, weights=dict(W, **{"x->h": np.full((2, 3), np.nan)}))


# ----------------------------------------------------------------- tinygraph params

def small_graph(n=3):
    g = tg.Graph("mlp")
    W = g.param("W", np.arange(n * 2, dtype=float).reshape(n, 2) / 7)
    b = g.param("b", np.array([0.1, -0.3]))
    return g, W, b


def test_save_params_load_params_round_trip_in_place(tmp_path):
    g, W, b = small_graph()
    tg.save_params(g, tmp_path / "w.npz")
    saved = {p.name: p.value.copy() for p in g.params}
    W_storage, b_storage = W.value, b.value
    W.value[...] = 0.0
    b.value[...] = 5.0
    assert tg.load_params(g, tmp_path / "w.npz") == ["W", "b"]
    assert W.value is W_storage and b.value is b_storage  # in place
    assert W.value.tobytes() == saved["W"].tobytes() and b.value.tobytes() == saved["b"].tobytes()


def test_load_params_keeps_tied_copies_sharing_the_nets_storage(tmp_path):
    net = make_net()
    ff = net.unroll(T)
    ff.run(*data())
    tg.save_params(ff.graph, tmp_path / "ff.npz")
    before = {k: v.copy() for k, v in net.weights.items()}
    for arr in net.weights.values():
        arr[...] = 0.0
    tg.load_params(ff.graph, tmp_path / "ff.npz")
    for name, arr in net.weights.items():
        assert np.array_equal(arr, before[name])
        assert all(c.value is arr for c in ff.copies(name))


def test_load_params_mismatches_are_clear_and_change_nothing(tmp_path):
    g, W, b = small_graph()
    tg.save_params(g, tmp_path / "w.npz")
    g2, W2, b2 = small_graph(4)
    W2.value[...] = 9.0
    with raises_clear(tg.PersistError, "'W'", "(4, 2)", "(3, 2)", "w.npz"):
        tg.load_params(g2, tmp_path / "w.npz")
    assert np.all(W2.value == 9.0)  # nothing written when any check fails

    g3, _, _ = small_graph()
    g3.param("extra", np.zeros(2))
    with raises_clear(tg.PersistError, "extra", "strict=False"):
        tg.load_params(g3, tmp_path / "w.npz")
    assert tg.load_params(g3, tmp_path / "w.npz", strict=False) == ["W", "b"]

    g4 = tg.Graph("other")
    g4.param("W", np.zeros((3, 2)))
    with raises_clear(tg.PersistError, "'b'"):
        tg.load_params(g4, tmp_path / "w.npz")
    with raises_clear(tg.PersistError, "no such file"):
        tg.load_params(g, tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with raises_clear(tg.PersistError, "junk.npz", "not a .npz"):
        tg.load_params(g, tmp_path / "junk.npz")


def test_param_names_that_clash_with_savez_arguments_are_fine(tmp_path):
    g = tg.Graph("g")
    p = g.param("file", np.ones(2))
    q = g.param("a/b.npy", np.full(3, 2.0))
    tg.save_params(g, tmp_path / "w")
    assert os.listdir(tmp_path) == ["w"]
    p.value[...] = 0
    q.value[...] = 0
    tg.load_params(g, tmp_path / "w")
    assert np.all(p.value == 1) and np.all(q.value == 2)


# ----------------------------------------------------------------- atomic writes

@pytest.mark.parametrize("kind", ["net", "params"])
def test_crash_mid_write_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch, kind):
    net = make_net()
    g, _, _ = small_graph()
    path = tmp_path / "out.npz"
    save = (lambda: net.save(path)) if kind == "net" else (lambda: tg.save_params(g, path))
    save()
    old = path.read_bytes()

    def crash(f, arrays):
        f.write(b"PK\x03\x04 half of a zip")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(persist if kind == "net" else tgio, "write_npz", crash)
    with pytest.raises(OSError, match="simulated"):
        save()
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == ["out.npz"]


def test_atomic_write_gives_new_files_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        tgio.atomic_write(tmp_path / "a.bin", lambda f: f.write(b"x"))
    finally:
        os.umask(umask)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "a.bin").read_bytes() == b"x"


# ----------------------------------------------------------------- hostile files

def rewrite(path, drop=(), arrays=None, raw=None, spec=None):
    """Copy a saved net's archive with members dropped, arrays replaced, raw members or a new spec."""
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    for name in drop:
        del members[name + ".npy"]
    for name, arr in (arrays or {}).items():
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=True)
        members[name + ".npy"] = buf.getvalue()
    if spec is not None:
        buf = io.BytesIO()
        np.save(buf, np.frombuffer(json.dumps(spec).encode(), dtype=np.uint8))
        members["__spec__.npy"] = buf.getvalue()
    members.update(raw or {})
    out = path.with_name("hostile.npz")
    with zipfile.ZipFile(out, "w") as zf:
        for n, b in members.items():
            zf.writestr(n, b)
    return out


def stored_spec(path):
    with np.load(path) as z:
        return json.loads(z["__spec__"].tobytes())


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "net.npz"
    make_net().save(path)
    return path


def test_truncated_file(saved):
    blob = saved.read_bytes()
    for cut in (0, 10, len(blob) // 2, len(blob) - 5):
        saved.write_bytes(blob[:cut])
        with raises_clear(rnn.LoadError, "net.npz", "not a .npz"):
            rnn.load(saved)


def test_damaged_member_inside_an_intact_archive(saved, tmp_path):
    with zipfile.ZipFile(saved) as zf:
        info = zf.getinfo("h->h.npy")
    blob = bytearray(saved.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + 20  # inside the member's data
    blob[start:start + 8] = b"\xff" * 8
    saved.write_bytes(bytes(blob))
    with raises_clear(rnn.LoadError, "net.npz", "damaged"):
        rnn.load(saved)


def test_random_bytes_and_missing_file(tmp_path):
    p = tmp_path / "noise.npz"
    p.write_bytes(np.random.default_rng(0).bytes(4096))
    with raises_clear(rnn.LoadError, "noise.npz"):
        rnn.load(p)
    p2 = tmp_path / "noise.dat"
    p2.write_bytes(b"\x93NUMPY" + bytes(100))
    with raises_clear(rnn.LoadError, "noise.dat", "neither"):
        rnn.load_any(p2)
    with raises_clear(rnn.LoadError, "nothere.npz", "no such file"):
        rnn.load(tmp_path / "nothere.npz")
    with raises_clear(rnn.LoadError, "nothere.json", "no such file"):
        rnn.load_any(tmp_path / "nothere.json")


UNPICKLED = []


def _unpickled_marker():  # referenced by the pickle below: calling it would prove code ran
    UNPICKLED.append(1)
    return 0


class _Evil:
    def __reduce__(self):
        return (_unpickled_marker, ())


@pytest.mark.parametrize("where", ["__spec__", "h->h"])
def test_pickled_object_array_is_refused_without_running_it(saved, where):
    evil = np.array([_Evil()], dtype=object)
    hostile = rewrite(saved, arrays={where: evil})
    with raises_clear(rnn.LoadError, "hostile.npz", "pickle"):
        rnn.load(hostile)
    assert UNPICKLED == []


def test_missing_spec_is_a_params_file_hint(tmp_path):
    g, _, _ = small_graph()
    tg.save_params(g, tmp_path / "p.npz")
    with raises_clear(rnn.LoadError, "p.npz", "__spec__", "load_params"):
        rnn.load(tmp_path / "p.npz")


def test_bad_json_and_unknown_version(saved):
    with raises_clear(rnn.LoadError, "not valid JSON"):
        rnn.load(rewrite(saved, raw={"__spec__.npy": _npy(np.frombuffer(b"{oops", dtype=np.uint8))}))
    spec = dict(stored_spec(saved), version=2)
    with raises_clear(rnn.LoadError, "hostile.npz", "version 2", "upgrade"):
        rnn.load(rewrite(saved, spec=spec))
    with raises_clear(rnn.LoadError, "format"):
        rnn.load(rewrite(saved, spec=dict(stored_spec(saved), format="keras")))
    with raises_clear(rnn.LoadError, "unknown key", "colour"):
        rnn.load(rewrite(saved, spec=dict(stored_spec(saved), colour="red")))
    with raises_clear(rnn.LoadError, "__spec__", "uint8"):
        rnn.load(rewrite(saved, arrays={"__spec__": np.zeros(3)}))


def _npy(arr):
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def test_missing_extra_and_misshapen_arrays(saved):
    with raises_clear(rnn.LoadError, "hostile.npz", "h->h", "lacks"):
        rnn.load(rewrite(saved, drop=["h->h"]))
    with raises_clear(rnn.LoadError, "stray"):
        rnn.load(rewrite(saved, arrays={"stray": np.zeros(2)}))
    with raises_clear(rnn.LoadError, "h->h", "(4, 4)", "(3, 3)"):
        rnn.load(rewrite(saved, arrays={"h->h": np.zeros((4, 4))}))
    with raises_clear(rnn.LoadError, "h->h", "NaN"):
        rnn.load(rewrite(saved, arrays={"h->h": np.full((3, 3), np.inf)}))
    with raises_clear(rnn.LoadError, "h->h", "float"):
        rnn.load(rewrite(saved, arrays={"h->h": np.full((3, 3), 1 + 2j)}))
    spec = stored_spec(saved)
    spec["arrays"] = [p for p in spec["arrays"] if p[0] != "bias:h"]
    with raises_clear(rnn.LoadError, "bias:h"):
        rnn.load(rewrite(saved, spec=spec))


def test_zero_delay_cycle_in_the_spec(saved):
    spec = stored_spec(saved)
    spec["connections"].append({"name": "m->h", "src": "m", "dst": "h", "delay": 0})
    spec["arrays"].append(["m->h", "m->h"])
    hostile = rewrite(saved, spec=spec, arrays={"m->h": np.zeros((2, 3))})
    with raises_clear(rnn.LoadError, "hostile.npz", "cycle", "h -> m -> h"):
        rnn.load(hostile)
    del spec["arrays"]
    with raises_clear(rnn.NetError, "cycle"):
        rnn.net_from_spec(spec)


def test_huge_declared_sizes_fail_fast_without_allocating(saved, tmp_path):
    spec = stored_spec(saved)
    spec["groups"][1]["size"] = 10 ** 12
    t0 = time.perf_counter()
    with raises_clear(rnn.LoadError, "hostile.npz", "size", "1000000000000"):
        rnn.load(rewrite(saved, spec=spec))
    spec = stored_spec(saved)
    spec["groups"][1]["size"] = spec["groups"][2]["size"] = 1_000_000  # each allowed, together 10**12 weights
    del spec["arrays"]
    with raises_clear(rnn.LoadError, "weight entries", "limit"):
        rnn.net_from_spec(spec)
    # an array member declaring a huge shape is refused from its header
    with raises_clear(rnn.LoadError, "h->h"):
        rnn.load(rewrite(saved, raw={"h->h.npy": _fake_npy_header((100000, 100000))}))
    (tmp_path / "big.json").write_text(json.dumps(dict(spec, groups=spec["groups"][:1] * 300)))
    with raises_clear(rnn.LoadError, "big.json", "300 groups"):
        rnn.load_any(tmp_path / "big.json")
    assert time.perf_counter() - t0 < 2.0


def _fake_npy_header(shape):
    """An .npy header declaring ``shape`` float64, followed by almost no data."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": shape})
    return buf.getvalue() + bytes(16)


def test_json_spec_file_problems(tmp_path):
    p = tmp_path / "s.json"
    good = make_net().spec()
    p.write_text(json.dumps(good).replace('"initial": 0.3', '"initial": NaN'))
    with raises_clear(rnn.LoadError, "s.json", "NaN"):
        rnn.load_any(p)
    p.write_text('{"format": "tinygraph-rnn", "format": "x"}')
    with raises_clear(rnn.LoadError, "twice"):
        rnn.load_any(p)
    p.write_text("[" * 100000)
    with raises_clear(rnn.LoadError, "s.json", "JSON"):
        rnn.load_any(p)
    bad = json.loads(json.dumps(good))
    bad["groups"][1]["bias"] = "false"
    p.write_text(json.dumps(bad))
    with raises_clear(rnn.LoadError, "groups[1] ('h')", "bias"):
        rnn.load_any(p)
    bad = json.loads(json.dumps(good))
    bad["connections"][0]["src"] = "nowhere"
    p.write_text(json.dumps(bad))
    with raises_clear(rnn.LoadError, "connections[0]", "nowhere", "not a group"):
        rnn.load_any(p)
    bad = json.loads(json.dumps(good))
    bad["groups"][3]["initial"] = [1, [2]]
    p.write_text(json.dumps(bad))
    with raises_clear(rnn.LoadError, "groups[3] ('k')", "finite numbers"):
        rnn.load_any(p)


def test_save_refuses_what_load_would_refuse(tmp_path):
    net = make_net()
    net.weights["h->h"][0, 0] = np.nan
    with raises_clear(rnn.NetError, "cannot save", "NaN"):
        net.save(tmp_path / "x.npz")
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------- random specs (hypothesis)

NAMES = ["a", "b", "c", "d"]
JUNK = st.one_of(st.none(), st.booleans(), st.integers(-3, 10 ** 13), st.floats(allow_nan=True),
                 st.text(max_size=3), st.lists(st.integers(0, 2), max_size=3),
                 st.dictionaries(st.text(max_size=2), st.integers(), max_size=2))


def rarely(draw, strategy, usual, odds=8):
    """``usual`` most of the time, a draw from ``strategy`` once in ``odds``."""
    return draw(strategy) if draw(st.sampled_from([False] * (odds - 1) + [True])) else usual


@st.composite
def specs(draw):
    """A plausible spec (which may still be wrong: negative delays, zero-delay cycles, connections
    into input groups, unknown or repeated names, bad initial lists), then 0-2 junk corruptions."""
    n = draw(st.integers(1, 4))
    groups = []
    for i in range(n):
        size = draw(st.integers(1, 3))
        g = {"name": rarely(draw, st.sampled_from(NAMES), NAMES[i]), "size": size}
        if draw(st.booleans()):
            g["activation"] = rarely(draw, st.just("sine"),
                                     draw(st.sampled_from(["logistic", "tanh", "linear", "relu", "softmax"])))
        if draw(st.booleans()):
            g["role"] = draw(st.sampled_from(["input", "hidden", "hidden", "output"]))
        if draw(st.booleans()):
            g["bias"] = draw(st.booleans())
        if draw(st.booleans()):
            g["initial"] = draw(st.one_of(st.sampled_from(["learned", "zero"]), st.floats(-1, 1),
                                          st.lists(st.floats(-1, 1), min_size=size, max_size=size)))
            g["initial"] = rarely(draw, st.one_of(st.just("random"), st.lists(st.floats(-1, 1), max_size=4)),
                                  g["initial"])
        groups.append(g)
    conns = []
    for _ in range(draw(st.integers(0, 5))):
        c = {"src": rarely(draw, st.sampled_from(NAMES), draw(st.sampled_from(NAMES[:n]))),
             "dst": rarely(draw, st.sampled_from(NAMES), draw(st.sampled_from(NAMES[:n])))}
        if draw(st.integers(0, 3)):
            c["delay"] = rarely(draw, st.just(-1), draw(st.integers(0, 2)))
        if draw(st.integers(0, 3)) == 0:
            c["name"] = draw(st.sampled_from(["w1", "w2", "bias:a"]))
        conns.append(c)
    spec = {"format": "tinygraph-rnn", "version": 1, "name": "rand", "seed": 0, "groups": groups,
            "connections": conns}
    for _ in range(draw(st.sampled_from([0, 0, 0, 0, 1, 2]))):
        where = draw(st.sampled_from(["top", "group", "conn"]))
        obj = spec if where == "top" or not (groups if where == "group" else conns) else \
            draw(st.sampled_from(groups if where == "group" else conns))
        key = draw(st.sampled_from(sorted(obj) + ["extra"]))
        if draw(st.integers(0, 4)) == 0:
            obj.pop(key, None)
        else:
            obj[key] = draw(JUNK)
    return spec


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(specs())
@example(make_net().spec())
@example({"format": "tinygraph-rnn", "version": 1, "groups": [{"name": "a", "size": 2}, {"name": "b", "size": 1}],
          "connections": [{"src": "a", "dst": "b"}, {"src": "b", "dst": "a", "delay": 0}]})
def test_random_specs_build_and_run_or_fail_clearly(spec):
    try:
        net = rnn.net_from_spec(json.loads(json.dumps(spec)))
    except tg.GraphError as exc:
        assert str(exc)
        return
    clamps = [rnn.Clamp(g.name, np.ones((3, 2, g.size))) for g in net.groups.values() if g.role == "input"]
    targets = [rnn.Target(g.name, np.full((3, 2, g.size), 0.5)) for g in net.groups.values() if g.role != "input"]
    out = net.unroll(3).run(clamps, targets)
    assert out.loss is None or np.isfinite(out.loss)


# ----------------------------------------------------------------- load_params keeps ties and constraints

def _tied_graph():
    g = tg.Graph("lp")
    W1 = g.param("W1", np.eye(2))
    W2 = g.param("W2", np.eye(2))
    S = g.param("S", np.eye(2))
    g.tie(W1, W2)
    g.constrain_symmetric(S)
    return g, W1, W2, S


def test_load_params_refuses_values_that_would_untie_a_tie(tmp_path):
    g, W1, W2, S = _tied_graph()
    path = tmp_path / "p.npz"
    np.savez(path, W1=np.ones((2, 2)), W2=np.zeros((2, 2)), S=np.eye(2))
    with pytest.raises(tgio.PersistError, match="'W1' and 'W2' hold one value"):
        tg.load_params(g, path)
    assert np.array_equal(W1.value, np.eye(2)) and np.array_equal(W2.value, np.eye(2))


def test_load_params_refuses_values_that_break_a_constraint_and_writes_nothing(tmp_path):
    g, W1, W2, S = _tied_graph()
    path = tmp_path / "p.npz"
    np.savez(path, W1=np.full((2, 2), 3.0), W2=np.full((2, 2), 3.0), S=np.array([[0.0, 1.0], [2.0, 3.0]]))
    with pytest.raises(tgio.PersistError, match="break the constraint over \\['S'\\]"):
        tg.load_params(g, path)
    assert np.array_equal(S.value, np.eye(2)) and np.array_equal(W1.value, np.eye(2))


def test_load_params_refuses_different_values_for_params_sharing_one_array(tmp_path):
    g = tg.Graph("one")
    A = np.zeros(2)
    g.param("a", A), g.param("b", A)
    np.savez(tmp_path / "p.npz", a=np.ones(2), b=np.zeros(2))
    with pytest.raises(tgio.PersistError, match="hold one value"):
        tg.load_params(g, tmp_path / "p.npz")


def test_load_params_refuses_values_too_large_for_a_float32_param(tmp_path):
    g = tg.Graph("f32")
    W = g.param("W", np.zeros(2, dtype=np.float32))
    np.savez(tmp_path / "p.npz", W=np.array([1e300, 1.0]))
    with pytest.raises(tgio.PersistError, match="do not fit the param's float32"):
        tg.load_params(g, tmp_path / "p.npz")
    assert np.array_equal(W.value, np.zeros(2))


def test_load_params_reads_each_param_from_its_own_member(tmp_path):
    """A param named 'a.npy' is stored as member 'a.npy.npy'; 'a' as 'a.npy'.  Each must load
    its own values (the checked header and the data read must be the same member)."""
    g = tg.Graph("names")
    a, b = g.param("a", np.zeros(1)), g.param("a.npy", np.zeros(3))
    src = tg.Graph("names")
    src.param("a", np.array([7.0])), src.param("a.npy", np.array([1.0, 2.0, 3.0]))
    tg.save_params(src, tmp_path / "p.npz")
    tg.load_params(g, tmp_path / "p.npz")
    assert np.array_equal(a.value, [7.0]) and np.array_equal(b.value, [1.0, 2.0, 3.0])


def test_load_params_takes_back_what_a_float32_constrained_graph_saved(tmp_path):
    rng = np.random.default_rng(0)
    g = tg.Graph("f32")
    W = g.param("W", rng.standard_normal(3).astype(np.float32))
    V = g.param("V", rng.standard_normal(3).astype(np.float32))
    g.constrain({W: rng.standard_normal((2, 3)), V: rng.standard_normal((2, 3))}, project_init=True)
    tg.save_params(g, tmp_path / "p.npz")
    assert tg.load_params(g, tmp_path / "p.npz") == ["V", "W"]


def test_load_params_partly_into_a_longer_unroll_of_the_same_net(tmp_path):
    """strict=False: the shorter unroll's copies carry the one value of each weight; the copies
    the file does not hold share the array written, so nothing is untied."""
    net = rnn.RecurrentNet("n", seed=0)
    net.add_group("x", 1, role="input")
    net.add_group("h", 2, activation="tanh")
    net.connect("x", "h", delay=0)
    net.connect("h", "h", delay=1)
    short, long = net.unroll(2), net.unroll(5)
    tg.save_params(short.graph, tmp_path / "p.npz")
    saved = {k: v.copy() for k, v in net.weights.items()}
    for v in net.weights.values():
        v += 1.0
    tg.load_params(long.graph, tmp_path / "p.npz", strict=False)
    for k, v in saved.items():
        np.testing.assert_array_equal(net.weights[k], v)


def test_load_params_checks_the_constraints_of_every_array_it_writes(tmp_path):
    g = tg.Graph("g")
    S = np.eye(3)
    g.param("P", S)                      # unconstrained ...
    Q = g.param("Q", S)                  # ... on the array of a constrained param
    g.constrain_symmetric(Q)
    src = tg.Graph("g")
    src.param("P", np.arange(9.0).reshape(3, 3))
    tg.save_params(src, tmp_path / "p.npz")
    with pytest.raises(tgio.PersistError, match=r"break the constraint over \['Q'\]"):
        tg.load_params(g, tmp_path / "p.npz", strict=False)
    assert np.array_equal(S, np.eye(3))


def test_load_params_judges_a_float16_constraint_at_float16_precision(tmp_path):
    g = tg.Graph("g")
    W = g.param("W", np.eye(2, dtype=np.float16))
    g.constrain_symmetric(W)
    np.savez(tmp_path / "p.npz", W=np.array([[1.0, 0.5], [0.0, 1.0]], dtype=np.float16))
    with pytest.raises(tgio.PersistError, match="break the constraint"):
        tg.load_params(g, tmp_path / "p.npz")
