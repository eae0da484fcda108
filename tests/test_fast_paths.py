"""The backward pass's fast paths give the same gradients as the plain rules:
slopes of unbatched chains computed in one call (plan.SlopeGroup), a tied weight's
matmul shares summed in one product per chunk (TIED_OUTER, _sum_outer), the cached
transpose for g @ W.T (TIED_MATMUL_A), their fallbacks, and the malloc setting."""

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinygraph as tg
import tinygraph.autodiff as AD
from tinygraph.plan import BATCH, TIED_MATMUL_A, TIED_OUTER, SlopeGroup, SlopeRow
from tinygraph.rowbuffers import RowIndex

from shared import shared_fd

# independent derivatives, written from the activation, not from tinygraph's rules
ACTS = {
    "tanh": (tg.tanh, np.tanh, lambda z, h: 1.0 - np.tanh(z) ** 2),
    "logistic": (tg.logistic, lambda z: 1.0 / (1.0 + np.exp(-z)),
                 lambda z, h: np.exp(-z) / (1.0 + np.exp(-z)) ** 2),
    "relu": (tg.relu, lambda z: np.maximum(z, 0.0), lambda z, h: (z > 0).astype(float)),
    "exp": (tg.exp, np.exp, lambda z, h: np.exp(z)),
}


def _chain(act, T, B, H, seed=0, scale=0.4, shared=True):
    """h_t = act(h_{t-1} @ W_t + b) with W_1..W_T tied copies of one W: a literal unrolled chain
    (the copies share one array, or with shared=False each has its own equal array)."""
    rng = np.random.default_rng(seed)
    W = scale * rng.standard_normal((H, H))
    b = 0.1 * rng.standard_normal(H)
    g = tg.Graph("chain")
    h0 = g.input("h0", (None, H))
    tgt = g.input("target", (None, H))
    copies, h = [], h0
    for t in range(1, T + 1):
        Wt = g.param(f"W@t{t}", W if shared else W.copy())
        copies.append(Wt)
        h = ACTS[act][0](h @ Wt + b, name=f"h@t{t}")
    g.tie(*copies)
    # plus sum_t sum(C * h_t), built after the chain: every h_t then has two gradient sources,
    # the one from this term arriving first in the backward pass
    Cv = 0.3 * rng.standard_normal(H)
    C = g.const(Cv, name="C")
    states = [g[f"h@t{t}"] for t in range(1, T + 1)]
    loss = tg.add_n([tg.squared_error(h, tgt)] + [tg.sum(C * s) for s in states], name="loss")
    feeds = {"h0": rng.standard_normal((B, H)), "target": rng.standard_normal((B, H))}
    return g, copies, loss, feeds, W, b, Cv


def _hand_bptt(act, W, b, C, feeds, T):
    """dE/dW summed over copies, each copy's share, and dE/dh0, by explicit BPTT in numpy."""
    f, df = ACTS[act][1], ACTS[act][2]
    hs, zs = [feeds["h0"]], []
    for _ in range(T):
        zs.append(hs[-1] @ W + b)
        hs.append(f(zs[-1]))
    d = hs[-1] - feeds["target"]
    shares = [None] * T
    for t in range(T, 0, -1):
        d = d + C
        dz = d * df(zs[t - 1], hs[t])
        shares[t - 1] = hs[t - 1].T @ dz
        d = dz @ W.T
    return sum(shares), shares, d


@pytest.mark.parametrize("act", sorted(ACTS))
def test_fast_paths_match_hand_written_bptt(act):
    T = 7
    g, copies, loss, feeds, W, b, C = _chain(act, T, B=3, H=4)
    grads = g.forward(feeds).backward(loss)
    plan = grads.acts.plan
    vjp_kinds = [v for s in plan.steps if s[0] != BATCH for _, v, _ in s[4]]
    # the test means something only if the fast paths ran
    assert sum(type(v) is SlopeRow for v in vjp_kinds) == T
    # the states are stacked in forward by the batch of C * h_t nodes: the slopes read that stack
    assert {v.group.stacked_as is not None for v in vjp_kinds if type(v) is SlopeRow} == {True}
    assert sum(v is TIED_OUTER for v in vjp_kinds) == T
    assert sum(v is TIED_MATMUL_A for v in vjp_kinds) == T
    total, shares, dh0 = _hand_bptt(act, W, b, C, feeds, T)
    np.testing.assert_allclose(grads.constrained()[copies[0]], total, rtol=1e-12, atol=1e-12)
    for Wt, share in zip(copies, shares):
        np.testing.assert_allclose(grads[Wt], share, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grads["h0"], dh0, rtol=1e-12, atol=1e-12)


def test_fast_paths_agree_with_finite_differences():
    # separate storage per copy: perturbing one copy then measures that copy's own share
    g, _, loss, feeds, *_ = _chain("tanh", T=5, B=2, H=3, seed=3, shared=False)
    report = tg.check_gradients(g, loss, feeds)
    assert report < 1e-6, report


def test_slopes_keep_each_members_dtype_when_dtypes_differ():
    group = SlopeGroup([0, 1], tg.ops.get("tanh").slope)
    v = np.linspace(-1, 1, 6).reshape(2, 3)
    values = [np.tanh(v).astype(np.float32), np.tanh(v)]
    slopes = group.compute(values)
    assert [s.dtype for s in slopes] == [np.float32, np.float64]  # no promotion through stacking
    np.testing.assert_allclose(slopes[1], 1 - np.tanh(v) ** 2, rtol=1e-15)
    same = group.compute([np.tanh(v), np.tanh(2 * v)])  # one dtype, one shape: one stacked array
    assert same.shape == (2, 2, 3)
    np.testing.assert_allclose(same[1], 1 - np.tanh(2 * v) ** 2, rtol=1e-15)


@pytest.mark.parametrize("chunk", [1, 6, 13, 1 << 18])
def test_slopes_computed_in_chunks_match_one_by_one(chunk, monkeypatch):
    import tinygraph.plan as P
    monkeypatch.setattr(P, "SLOPE_CHUNK", chunk)  # 1 and 6 elements: one member (of 6) per chunk
    rng = np.random.default_rng(5)
    outs = [np.tanh(rng.standard_normal((2, 3))) for _ in range(7)]
    got = SlopeGroup(list(range(7)), tg.ops.get("tanh").slope).compute(outs)
    np.testing.assert_allclose(got, np.stack([1 - o ** 2 for o in outs]), rtol=1e-15)


def test_slopes_fall_back_when_runtime_shapes_differ():
    g = tg.Graph("ragged")
    a = g.input("a", (None, 3))
    c = g.input("c", (None, 3))
    loss = tg.sum(tg.logistic(a)) + tg.sum(tg.logistic(c) * c)
    av, cv = np.linspace(-2, 2, 6).reshape(2, 3), np.linspace(-1, 3, 12).reshape(4, 3)
    grads = g.forward({"a": av, "c": cv}).backward(loss)
    s = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    np.testing.assert_allclose(grads["a"], s(av) * (1 - s(av)), rtol=1e-13)
    np.testing.assert_allclose(grads["c"], s(cv) * (1 - s(cv)) * cv + s(cv), rtol=1e-13)


@settings(max_examples=30, deadline=None)
@given(rows=st.lists(st.integers(0, 5), min_size=1, max_size=12), k=st.integers(1, 4), n=st.integers(1, 4),
       chunk=st.integers(1, 64), small=st.sampled_from([0, 10**6]), in_rows=st.booleans(),
       seed=st.integers(0, 2**16))
def test_sum_outer_is_the_sum_of_products_for_any_chunking(rows, k, n, chunk, small, in_rows, seed):
    rng = np.random.default_rng(seed)
    As = [rng.standard_normal((r, k)) for r in rows]
    Gs = [rng.standard_normal((r, n)) for r in rows]
    index = None
    if in_rows and len(set(rows)) == 1:  # operands that are rows of row buffers, read in place
        index = RowIndex()
        As, Gs = index.adopt(np.stack(As))[::-1], index.adopt(np.stack(Gs))[::-1]  # (collected last first)
    old = AD.OUTER_CHUNK, AD.OUTER_SMALL
    AD.OUTER_CHUNK = chunk  # small chunks: several partial products must add up
    AD.OUTER_SMALL = small  # 0: never simply stacked; 10**6: always
    try:
        got = AD._sum_outer(As, Gs, index)
    finally:
        AD.OUTER_CHUNK, AD.OUTER_SMALL = old
    want = sum(a.T @ g for a, g in zip(As, Gs))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the malloc setting is glibc-only")
def test_malloc_setting_applies_and_can_be_turned_off():
    code = "import tinygraph as tg; print(tg.keep_freed_memory())"
    env = dict(os.environ)
    env.pop("TINYGRAPH_KEEP_FREED_MEMORY", None)
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    env["TINYGRAPH_KEEP_FREED_MEMORY"] = "0"
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    import platform
    assert on.stdout.strip() == str(platform.libc_ver()[0] == "glibc")
    assert off.stdout.strip() == "False"


def _input_driven(T, B, H, I, seed=0, rows=None, extra_use=False):
    """h_t = tanh(x_t @ U_t + h_{t-1} @ W_t + b_t), copies of U, W and b tied and sharing
    storage: the total input is an add_n of a batch member, a single and a tied bias copy."""
    rng = np.random.default_rng(seed)
    U, W, b = rng.standard_normal((I, H)) / 2, rng.standard_normal((H, H)) / 3, rng.standard_normal(H) / 4
    g = tg.Graph("driven")
    h = g.input("h0", (None, H))
    feeds = {"h0": rng.standard_normal((B, H)), "target": rng.standard_normal((B, H))}
    tied = {"U": [], "W": [], "b": []}
    extra = []
    for t in range(1, T + 1):
        x = g.input(f"x@t{t}", (None, I))
        feeds[f"x@t{t}"] = rng.standard_normal(((rows or {}).get(t, B), I))
        Ut, Wt, bt = g.param(f"U@t{t}", U), g.param(f"W@t{t}", W), g.param(f"b@t{t}", b)
        for k, n in zip("UWb", (Ut, Wt, bt)):
            tied[k].append(n)
        inx = tg.matmul(x, Ut, name=f"inx@t{t}")
        if extra_use:
            extra.append(inx)
        h = tg.tanh(tg.add_n([inx, h @ Wt, bt], name=f"net@t{t}"), name=f"h@t{t}")
    for copies in tied.values():
        g.tie(*copies)
    terms = [tg.squared_error(h, g.input("target", (None, H)))] + [0.1 * tg.sum(e * e) for e in extra]
    loss = tg.add_n(terms, name="loss")
    return g, tied, loss, feeds, {"U": U, "W": W, "b": b}


@pytest.mark.parametrize("case", ["plain", "member used twice", "ragged batch"])
def test_presummed_total_inputs_and_bias_from_the_batch(case):
    from tinygraph.plan import PRESUM, SOURCE_VIA_BATCH
    T = 6
    g, tied, loss, feeds, arrays = _input_driven(
        T, B=3, H=4, I=2, extra_use=case == "member used twice",
        rows={2: 1} if case == "ragged batch" else None)  # x@t2 has one row: its batch cannot stack
    grads = g.forward(feeds).backward(loss)
    plan = grads.acts.plan
    assert sum(s[0] == PRESUM for s in plan.steps) == T
    via = sum(v is SOURCE_VIA_BATCH for s in plan.steps if s[0] == PRESUM for _, v, _ in s[4])
    assert via == (0 if case == "member used twice" else T)  # a member with two uses keeps the plain path
    con = grads.constrained()
    for name in ("U", "W", "b"):
        want = shared_fd(g, loss, feeds, arrays[name])
        np.testing.assert_allclose(con[tied[name][0]], want, rtol=1e-6, atol=1e-8)
    # each x@t feeds only the batch of input projections: its gradient is a row found via fed_rows
    xs = [g[f"x@t{t}"] for t in (1, 2, T)]
    if case != "ragged batch":
        assert all(x.index in plan.fed_rows for x in xs)
    assert tg.check_gradients(g, loss, feeds, wrt=xs) < 1e-6


def test_bias_from_the_batch_ignores_a_seed_on_a_member():
    # backward from one input projection: the bias is not upstream of it, U is
    g, tied, loss, feeds, arrays = _input_driven(5, B=3, H=4, I=2)
    acts = g.forward(feeds)
    seed = np.arange(12.0).reshape(3, 4)
    con = acts.backward(g["inx@t3"], seed=seed).constrained()
    np.testing.assert_array_equal(con[tied["b"][0]], np.zeros(4))
    np.testing.assert_allclose(con[tied["U"][0]], feeds["x@t3"].T @ seed, rtol=1e-14)


def _generic_and_fragment_grads(g, loss, feeds):
    """Gradients through the plan with its repeated fragments and through the generic loops."""
    from tinygraph.fragments import FRAGMENT
    acts = g.forward(feeds)
    plan = acts.plan
    assert any(s[0] == FRAGMENT for s in plan.fast_steps)  # the fragment path is what runs
    flat = [x for s in plan.fast_steps for x in (s[1].steps if s[0] == FRAGMENT else [s])]
    assert flat == plan.steps  # fragments cover the plan's steps, in order, each once
    fast = acts.backward(loss)
    fast_values = [np.array(acts[n]) for n in g.nodes if n in acts]
    saved = plan.fast_steps
    plan.fast_steps = plan.steps  # the generic loops
    try:
        acts2 = g.forward(feeds)
        slow = acts2.backward(loss)
        slow_values = [np.array(acts2[n]) for n in g.nodes if n in acts2]
    finally:
        plan.fast_steps = saved
    return fast, slow, fast_values, slow_values


@pytest.mark.parametrize("graph", ["tanh chain", "input driven", "general vjp"])
def test_fragment_loops_equal_the_generic_loops_bitwise(graph):
    if graph == "tanh chain":
        g, _, loss, feeds, *_ = _chain("tanh", T=9, B=3, H=4)
    elif graph == "input driven":
        g, _, loss, feeds, _ = _input_driven(9, B=3, H=4, I=2)
    else:  # a mul by a constant after each tanh: a VJP the generated code calls as a function
        rng = np.random.default_rng(2)
        g = tg.Graph("general")
        h = g.input("h0", (None, 3))
        W = rng.standard_normal((3, 3)) / 2
        copies = []
        for t in range(1, 8):
            copies.append(g.param(f"W@t{t}", W))
            h = tg.mul(tg.tanh(h @ copies[-1]), 0.9, name=f"h@t{t}")
        g.tie(*copies)
        loss = tg.sum(h * h)
        feeds = {"h0": rng.standard_normal((2, 3))}
    fast, slow, fv, sv = _generic_and_fragment_grads(g, loss, feeds)
    for a, b in zip(fv, sv):
        np.testing.assert_array_equal(a, b)
    for n in g.nodes:
        if fast.reached(n) or slow.reached(n):
            np.testing.assert_array_equal(fast[n], slow[n], err_msg=n.name)
    for p, v in fast.constrained().items():
        np.testing.assert_array_equal(v, slow.constrained()[p], err_msg=p.name)


def test_a_runtime_error_inside_a_fragment_names_the_node():
    g, _, loss, feeds, *_ = _input_driven(6, B=3, H=4, I=2)
    feeds["x@t4"] = np.ones((2, 2))  # 2 rows against 3: the total input of step 4 cannot be formed
    with pytest.raises(tg.ShapeError, match="net@t4"):
        g.forward(feeds)


def test_fragment_code_is_shared_by_graphs_of_one_shape():
    from tinygraph import fragments
    for seed in range(3):  # new graphs, new tie groups and slope groups: the same generated code
        g, _, loss, feeds, *_ = _chain("tanh", T=6, B=2, H=3, seed=seed)
        g.forward(feeds).backward(loss)
        if seed == 0:
            size = len(fragments._CODE)
    assert len(fragments._CODE) == size


@pytest.mark.parametrize("a_shape,b_shape,shared", [((2, 3), (5, 3, 4), True), ((2, 3), (1, 3, 4), True),
                                                     ((2, 3), (5, 3, 4), False), ((5, 2, 3), (3, 4), True),
                                                     ((5, 2, 3), (5, 3, 4), False)])
def test_batched_matmul_of_operands_of_different_rank_is_numpys(a_shape, b_shape, shared):
    """Identical matmul nodes whose operands differ in rank (numpy broadcasts the batch axes):
    batched or not, each node's value is np.matmul of its operands, and so are the gradients."""
    rng = np.random.default_rng(0)
    g = tg.Graph("ranks")
    T = 5
    xs = [g.input(f"a{t}", a_shape) for t in range(T)]
    bs = [g.input("b", b_shape)] * T if shared else [g.input(f"b{t}", b_shape) for t in range(T)]
    outs = [tg.matmul(tg.tanh(x), b) for x, b in zip(xs, bs)]
    loss = tg.add_n([tg.sum(o * o) for o in outs])
    feeds = {f"a{t}": rng.standard_normal(a_shape) for t in range(T)}
    feeds.update({"b": rng.standard_normal(b_shape)} if shared else
                 {f"b{t}": rng.standard_normal(b_shape) for t in range(T)})
    plain = g.forward(feeds, batch=False)
    fast = g.forward(feeds)
    for t, o in enumerate(outs):
        want = np.matmul(np.tanh(feeds[f"a{t}"]), feeds["b" if shared else f"b{t}"])
        assert fast[o].shape == o.shape == want.shape
        np.testing.assert_allclose(fast[o], want, rtol=1e-12)
    gp, gf = plain.backward(loss), fast.backward(loss)
    for x in xs:
        np.testing.assert_allclose(gf[x], gp[x], rtol=1e-10)
