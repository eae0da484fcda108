"""Lean chains (fragments.Chain): a repeated fragment that is the recurrence
h_t = f(P_t + h_{t-1} @ W) runs with its sums ``net[h]@t`` and its products ``in[h->h]@t``
(all but the fragment's last) left out of ``acts._values``; ``Activations.value`` remakes
them on demand with the same numpy calls, and the backward pass uses the fragment's
``backward_lean`` loop.

Every claim is checked against the same run with the lean path disabled (``Chain.run_lean``
returning False: the generic generated loop then stores everything), bitwise, and against an
independent numpy BPTT or finite differences within tolerance.  Where a test says the lean
path ran (or did not), it checks that structurally: dropped values are None before anyone
asks, the run's batch store marks the fragment, the spy saw run_lean return True/False."""

from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rnn
import tinygraph as tg
from tinygraph.autodiff import compile_plan
from tinygraph.fragments import FRAGMENT, Chain
from tinygraph.plan import ROWS
from tinygraph.rowbuffers import stacked_view

from shared import shared_fd, tanh_rnn, tanh_rnn_bptt

# ============================================================ helpers


@contextmanager
def lean_disabled(in_rows_only=False):
    """The lean forward refused for every chain: the generic generated loop runs and stores
    all (``in_rows_only``: only Chain.run_lean_in_rows refused, so run_lean runs instead)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Chain, "run_lean_in_rows", lambda self, *args, **kwargs: False)
        if not in_rows_only:
            mp.setattr(Chain, "run_lean", lambda self, *args, **kwargs: False)
        yield


@contextmanager
def chain_spy(method, **settings):
    """Records what each real call of Chain.<method> returned (``settings``: Chain class
    attributes set meanwhile)."""
    calls = []
    real = getattr(Chain, method)

    def spy(self, *args, **kwargs):
        got = real(self, *args, **kwargs)
        calls.append(got)
        return got

    with pytest.MonkeyPatch.context() as mp:
        for name, value in settings.items():
            mp.setattr(Chain, name, value)
        mp.setattr(Chain, method, spy)
        yield calls


@contextmanager
def lean_spy():
    """Records whether each fragment's lean forward ran: True when Chain.run_lean_in_rows
    did, else what Chain.run_lean returned (called only when the first did not run)."""
    calls = []
    in_rows, plain = Chain.run_lean_in_rows, Chain.run_lean

    def spy_in_rows(self, *args, **kwargs):
        got = in_rows(self, *args, **kwargs)
        if got:
            calls.append(True)
        return got

    def spy(self, *args, **kwargs):
        got = plain(self, *args, **kwargs)
        calls.append(got)
        return got

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Chain, "run_lean_in_rows", spy_in_rows)
        mp.setattr(Chain, "run_lean", spy)
        yield calls


def _fragments(acts):
    return [s[1] for s in acts.plan.fast_steps if s[0] == FRAGMENT]


def _chain_frags(acts):
    return [f for f in _fragments(acts) if f.chain is not None]


def _none_indices(acts):
    return {i for i, v in enumerate(acts._values) if v is None}


def _assert_ran_lean(acts):
    """The run took the lean path: every chain fragment is marked, and exactly the chain's sums
    and all but its last product are missing (besides lazy batch members, made on demand)."""
    chains = _chain_frags(acts)
    assert chains, "no chain fragment: the test would mean nothing"
    none = _none_indices(acts)
    for f in chains:
        assert acts._bstore.get(f) is True
        ch = f.chain
        dropped = set(ch.sums) | set(ch.products[:-1])
        assert dropped <= none
        assert acts._values[ch.products[-1]] is not None  # the last product feeds steps outside: kept
        assert not none & set(ch.states)
    rest = none - set(acts.plan.recompute)
    # besides, only lazy batch members and inputs fed whole to one batch (rows made when asked)
    assert all(i in acts.plan.member_of or i in acts.plan.fed_rows for i in rest)


def _assert_ran_full(acts):
    """The run stored every chain node: no fragment marked lean, no remake needed."""
    assert not any(acts._bstore.get(f) for f in _fragments(acts))
    for i in acts.plan.recompute:
        assert acts._values[i] is not None, acts.graph.nodes[i].name


def _eq(a, b, what):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype, (what, a.dtype, b.dtype)
    assert a.shape == b.shape, (what, a.shape, b.shape)
    assert np.array_equal(a, b), f"{what}: not bitwise equal (max diff {np.max(np.abs(a - b)) if a.size else 0})"


def _assert_same_acts(a, b):
    """Every node's value, through acts.items() (which remakes what a lean run dropped)."""
    va = {n.index: v for n, v in a.items()}
    vb = {n.index: v for n, v in b.items()}
    assert va.keys() == vb.keys()
    for i in va:
        _eq(va[i], vb[i], a.graph.nodes[i].name)
        _eq(a[a.graph.nodes[i]], vb[i], a.graph.nodes[i].name)


def _assert_same_grads(ga, gb):
    """Every node's gradient (tied copies' own shares included) and the constrained ones."""
    for n in ga.acts.plan.order:
        assert ga.reached(n) == gb.reached(n), n.name
        _eq(ga[n], gb[n], "d/d " + n.name)
    ca, cb = ga.constrained(), gb.constrained()
    assert set(ca) == set(cb)
    for p in ca:
        _eq(ca[p], cb[p], "constrained d/d " + p.name)


def _assert_same_runs(a, b):
    """Two rnn RunResults of the same emitted graph: loss, values, gradients, weight gradients."""
    assert a.graph is b.graph
    assert a.loss == b.loss or (np.isnan(a.loss) and np.isnan(b.loss))
    _assert_same_acts(a.acts, b.acts)
    _assert_same_grads(a.grads, b.grads)
    for name in a.unrolled.net.weights:
        _eq(a.weight_grads[name], b.weight_grads[name], "weight_grads " + name)
        for copy in a.emitted.copies[name]:
            _eq(a.grads[copy], b.grads[copy], "copy " + copy.name)
    for grp in a.unrolled.net.groups:
        _eq(a.states(grp), b.states(grp), "states " + grp)
        _eq(a.deltas(grp), b.deltas(grp), "deltas " + grp)


# ------------------------------------------------------------ the rnn net and its hand BPTT


def _net(T, B, I=2, H=4, dtype=np.float64, seed=0, dtypes=None):
    """tanh hidden with a learned initial state, linear output, squared error at every step.
    ``dtypes``: {weight name: dtype} overriding ``dtype`` per weight (set before unroll)."""
    net = tanh_rnn("lean", I, H)
    rng = np.random.default_rng(seed)
    for k in list(net.weights):
        w = 0.6 * rng.standard_normal(net.weights[k].shape)
        net.weights[k] = w.astype((dtypes or {}).get(k, dtype))  # before unroll: the copies use these
    X = rng.standard_normal((T, B, I)).astype(dtype)
    Y = (0.5 * rng.standard_normal((T, B, I))).astype(dtype)
    return net, X, Y


def _run(ff, X, Y, **kw):
    return ff.run([rnn.Clamp("x", X)], [rnn.Target("y", Y, steps="all")], **kw)


def _assert_matches_bptt(out, net, X, Y, tol):
    loss, hs, d, dX, shares = tanh_rnn_bptt(net.weights, X, Y)
    g = out.graph
    T = X.shape[0]
    np.testing.assert_allclose(out.loss, loss, rtol=tol)
    np.testing.assert_allclose(out.states("h")[1:], np.stack(hs), rtol=tol, atol=tol)
    for k, v in out.weight_grads.items():
        np.testing.assert_allclose(v, d[k], rtol=tol, atol=tol, err_msg=k)
    per_step = out.step_grads("h->h")
    assert sorted(per_step) == list(range(1, T + 1))
    for t, v in per_step.items():  # each tied copy's own share
        np.testing.assert_allclose(v, shares[t - 1], rtol=tol, atol=tol, err_msg=f"W[h->h]@t{t}")
    for t in range(1, T + 1):
        np.testing.assert_allclose(out.grads[g[f"x@t{t}"]], dX[t - 1], rtol=tol, atol=tol)


def _tol(dtype):
    return 1e-11 if np.dtype(dtype) == np.float64 else 2e-4


def _forward_lean_and_plain(T, B=3):
    """Forward runs (no backward) of one unrolled net, lean and with the lean path refused."""
    net, X, Y = _net(T, B)
    ff = net.unroll(T)
    out = _run(ff, X, Y, backward=False)
    with lean_disabled():
        pout = _run(ff, X, Y, backward=False)
    return net, X, Y, ff, out, pout


def _lean_and_plain(T, B, dtype, H=4, I=2, seed=0):
    net, X, Y = _net(T, B, I=I, H=H, dtype=dtype, seed=seed)
    ff = net.unroll(T)
    with lean_spy() as calls:
        lean = _run(ff, X, Y)
    _assert_ran_lean(lean.acts)  # (checked before anything asks for a dropped value)
    assert calls == [True]
    with lean_disabled():
        plain = _run(ff, X, Y)
    _assert_ran_full(plain.acts)
    return net, X, Y, lean, plain


# ------------------------------------------------------------ a hand-built input-driven chain


def _driven(T=6, B=3, H=3, I=2, act="tanh", weights="tied", extra=None, h0_rows=None, dtype=np.float64,
            w_dtype=None, seed=0, wscale=1 / 3, every_state=False):
    """h_t = act(add_n(x_t @ U_t, h_{t-1} @ W_t, b_t)), loss = squared error of h_T (plus
    0.1 * sum(e * e) of ``extra``: the node "net@t3", "rec@t3", "h@t3" or, "last", the last
    product of the chain).  U and b copies tied, sharing one array.  ``weights``: "tied" (W
    copies share one array), "separate" (each copy its own equal array, tied), "single" (one
    W param node read by every step).  ``h0_rows``: rows of h0 when not B.  ``every_state``:
    the loss also has 0.1 * sum(h_t * h_t) of every state before the last."""
    rng = np.random.default_rng(seed)
    U = (rng.standard_normal((I, H)) / 2).astype(dtype)
    W = (wscale * rng.standard_normal((H, H))).astype(w_dtype or dtype)
    b = (rng.standard_normal(H) / 4).astype(dtype)
    g = tg.Graph("driven")
    h = g.input("h0", (None, H))
    feeds = {"h0": rng.standard_normal((h0_rows or B, H)).astype(dtype),
             "target": rng.standard_normal((B, H)).astype(dtype)}
    copies = {"U": [], "W": [], "b": []}
    single = g.param("W", W) if weights == "single" else None
    extras = []
    for t in range(1, T + 1):
        x = g.input(f"x@t{t}", (None, I))
        feeds[f"x@t{t}"] = rng.standard_normal((B, I)).astype(dtype)
        Ut, bt = g.param(f"U@t{t}", U), g.param(f"b@t{t}", b)
        Wt = single if single is not None else g.param(f"W@t{t}", W if weights == "tied" else W.copy())
        copies["U"].append(Ut)
        copies["b"].append(bt)
        if single is None:
            copies["W"].append(Wt)
        rec = tg.matmul(h, Wt, name=f"rec@t{t}")
        net = tg.add_n([tg.matmul(x, Ut, name=f"inx@t{t}"), rec, bt], name=f"net@t{t}")
        h = getattr(tg, act)(net, name=f"h@t{t}")
    for cs in copies.values():
        if cs:
            g.tie(*cs)
    if extra == "last":
        extras.append(g[f"rec@t{T}"])
    elif extra is not None:
        extras.append(g[extra])
    if every_state:
        extras += [g[f"h@t{t}"] for t in range(1, T)]
    terms = [tg.squared_error(h, g.input("target", (None, H)))] + [0.1 * tg.sum(e * e) for e in extras]
    loss = tg.add_n(terms, name="loss")
    return g, copies, loss, feeds, {"U": U, "W": W, "b": b}


def _assert_shared_grads_match_fd(grads, g, loss, feeds, copies, arrays):
    """The constrained gradient of each shared array (U, W, b) against finite differences."""
    con = grads.constrained()
    for k in "UWb":
        np.testing.assert_allclose(con[copies[k][0]], shared_fd(g, loss, feeds, arrays[k]),
                                   rtol=1e-6, atol=1e-8, err_msg=k)


def _driven_bptt(act, arrays, feeds, T):
    """Loss, states, dE/dU, dE/dW, dE/db (summed over copies), dE/dh0, in float64 numpy."""
    f = {"tanh": np.tanh, "exp": np.exp}[act]
    df = {"tanh": lambda h: 1 - h * h, "exp": lambda h: h}[act]  # from the output h = f(z)
    U, W, b = (np.asarray(arrays[k], np.float64) for k in "UWb")
    fd = {k: np.asarray(v, np.float64) for k, v in feeds.items()}
    hs = [np.broadcast_to(fd["h0"], fd["target"].shape)]
    for t in range(1, T + 1):
        hs.append(f(fd[f"x@t{t}"] @ U + hs[-1] @ W + b))
    r = hs[-1] - fd["target"]
    loss = 0.5 * np.sum(r * r)
    dU, dW, db = np.zeros_like(U), np.zeros_like(W), np.zeros_like(b)
    d = r
    for t in range(T, 0, -1):
        dz = d * df(hs[t])
        dU += fd[f"x@t{t}"].T @ dz
        dW += hs[t - 1].T @ dz
        db += dz.sum(0)
        d = dz @ W.T
    if d.shape != fd["h0"].shape:
        d = d.sum(0, keepdims=True)
    return loss, hs, dU, dW, db, d


def _graph_lean_and_plain(g, loss, feeds):
    with lean_spy() as calls:
        acts = g.forward(feeds)
        lean_calls = list(calls)
    grads = acts.backward(loss)
    with lean_disabled():
        pacts = g.forward(feeds)
    pgrads = pacts.backward(loss)
    return acts, grads, pacts, pgrads, lean_calls


# ============================================================ 1. rnn: lean == plain, bitwise


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("T,B", [(5, 3), (12, 1), (40, 4)])
def test_rnn_lean_run_equals_the_plain_run_bitwise(dtype, T, B):
    net, X, Y, lean, plain = _lean_and_plain(T, B, dtype)
    (frag,) = _chain_frags(lean.acts)
    assert len(frag.chain.sums) == T - 1  # steps 1..T-1: the product of step T+1 does not exist
    assert lean.acts[lean.graph["h@t1"]].dtype == dtype  # float32 stays float32
    _assert_same_runs(lean, plain)
    _assert_matches_bptt(lean, net, X, Y, _tol(dtype))


def test_rnn_lean_run_is_the_default_and_repeats():
    # a second run of the same unrolled graph runs lean again, into its own buffers
    net, X, Y = _net(8, 3)
    ff = net.unroll(8)
    a = _run(ff, X, Y)
    b = _run(ff, X, Y)
    _assert_ran_lean(a.acts)
    _assert_ran_lean(b.acts)
    assert a.acts[a.graph["h@t2"]].base is not b.acts[b.graph["h@t2"]].base
    _assert_same_runs(a, b)


# ============================================================ 2. which nodes are dropped, and remade


def test_exactly_the_sums_and_all_but_the_last_product_are_dropped():
    T = 8
    net, X, Y = _net(T, 3)
    out = _run(net.unroll(T), X, Y)
    acts, g = out.acts, out.graph
    plan = acts.plan
    names = {g.nodes[i].name for i in _none_indices(acts) if i in plan.recompute}
    assert names == ({f"net[h]@t{t}" for t in range(1, T)} | {f"in[h->h]@t{t}" for t in range(2, T)})
    assert set(plan.recompute) == {g[n].index for n in names}
    for name in ("in[h->h]@t1", f"in[h->h]@t{T}", f"net[h]@t{T}"):  # outside the chain, or its last product
        assert acts._values[g[name].index] is not None, name
    # the states are kept, and are consecutive rows of one buffer
    hs = [acts._values[g[f"h@t{t}"].index] for t in range(1, T + 1)]
    assert all(h is not None for h in hs)
    buf = hs[0].base
    assert buf is not None and buf.shape == (T, 3, 4) and all(h.base is buf for h in hs)
    assert stacked_view(hs, acts._bstore[ROWS]) is not None
    # the kept last product is its own array, not a row of the states' buffer
    assert not np.shares_memory(acts._values[g[f"in[h->h]@t{T}"].index], buf)


def test_a_dropped_value_is_remade_when_asked_and_then_kept():
    T = 7
    net, X, Y = _net(T, 2)
    ff = net.unroll(T)
    out = _run(ff, X, Y)
    with lean_disabled():
        plain = _run(ff, X, Y)
    acts, g = out.acts, out.graph
    W = net.weights["h->h"]
    buf = acts[g["h@t1"]].base
    # a product: np.dot of the kept state and weight, cached in acts._values
    p = g["in[h->h]@t4"]
    assert acts._values[p.index] is None
    v = acts[p]
    assert acts._values[p.index] is v
    assert acts[p] is v  # asked again: the same array, not remade
    _eq(v, np.dot(acts[g["h@t3"]], W), "in[h->h]@t4 vs np.dot(h@t3, W)")
    _eq(v, plain.acts[p], "in[h->h]@t4 vs the plain run")
    _eq(v, acts[g["h@t3"]] @ W, "in[h->h]@t4 vs h@t3 @ W")  # (2-D @ and np.dot: the same BLAS product)
    assert not np.shares_memory(v, buf)  # (a fresh array: its row now holds h@t4)
    # a sum: (member + bias) + product, its product cached on the way
    s, q = g["net[h]@t5"], g["in[h->h]@t5"]
    assert acts._values[s.index] is None and acts._values[q.index] is None
    sv = acts.value(s.index)
    assert acts._values[s.index] is sv and acts._values[q.index] is not None
    _eq(sv, (acts[g["in[x->h]@t5"]] + net.weights["bias:h"]) + acts[q], "net[h]@t5 rebuilt")
    _eq(sv, plain.acts[s], "net[h]@t5 vs the plain run")
    _eq(acts[q], plain.acts[q], "in[h->h]@t5 vs the plain run")
    assert not np.shares_memory(sv, buf)
    # and the state is f(sum) exactly
    _eq(acts[g["h@t5"]], np.tanh(sv), "h@t5 = tanh(net[h]@t5)")
    # the first sum's live operand is the product made outside the fragment
    s1 = g["net[h]@t1"]
    assert acts._values[s1.index] is None
    _eq(acts[s1], (acts[g["in[x->h]@t1"]] + net.weights["bias:h"]) + acts[g["in[h->h]@t1"]], "net[h]@t1")
    # asking for values changed no state
    _eq(out.states("h"), plain.states("h"), "states after remaking")


def test_dropped_values_read_through_gradients_and_contains():
    T = 6
    net, X, Y = _net(T, 2)
    out = _run(net.unroll(T), X, Y)
    g = out.graph
    s = g["net[h]@t2"]
    assert out.acts._values[s.index] is None
    assert s in out.acts  # `in` says it can be had, without making it
    assert out.acts._values[s.index] is None
    out.acts[s]  # asking for the value makes it
    assert out.acts._values[s.index] is not None
    # a tied copy's own gradient reads its (dropped) product through Activations.value
    c = g["W[h->h]@t4"]
    assert out.acts._values[g["in[h->h]@t4"].index] is None
    gc = out.grads[c]
    _, _, _, _, shares = tanh_rnn_bptt(net.weights, X, Y)
    np.testing.assert_allclose(gc, shares[3], rtol=1e-11, atol=1e-12)


# ============================================================ 3. fallbacks: lean must not run


def _assert_driven_fallback(g, loss, feeds, chain_expected=True):
    acts, grads, pacts, pgrads, calls = _graph_lean_and_plain(g, loss, feeds)
    frags = _fragments(acts)
    assert frags, "no fragment: the test would mean nothing"
    if chain_expected:
        assert any(f.chain is not None for f in frags)
        assert calls and not any(calls)  # run_lean was asked and refused
    _assert_ran_full(acts)
    _assert_same_acts(acts, pacts)
    _assert_same_grads(grads, pgrads)
    return acts, grads


def test_weight_copies_with_separate_arrays_do_not_run_lean():
    T = 6
    g, copies, loss, feeds, arrays = _driven(T, weights="separate")
    acts, grads = _assert_driven_fallback(g, loss, feeds)
    # the same graph with shared storage does run lean (so the refusal is about the storage)
    g2, _, loss2, feeds2, _ = _driven(T, weights="tied")
    _assert_ran_lean(g2.forward(feeds2))
    _, hs, dU, dW, db, dh0 = _driven_bptt("tanh", arrays, feeds, T)
    np.testing.assert_allclose(grads.constrained()[copies["W"][0]], dW, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(grads["h0"], dh0, rtol=1e-11, atol=1e-13)
    # separate storage: perturbing one W copy measures that copy's own share (U and b share theirs)
    assert tg.check_gradients(g, loss, feeds, wrt=copies["W"] + [g["h0"], g["x@t2"]]) < 1e-6


def test_float32_data_with_a_float64_weight_does_not_run_lean():
    T = 6
    g, copies, loss, feeds, arrays = _driven(T, dtype=np.float32, w_dtype=np.float64)
    acts, grads = _assert_driven_fallback(g, loss, feeds)
    assert acts[g["h@t3"]].dtype == np.float64  # promoted by the product, as numpy does
    loss_ref, hs, dU, dW, db, dh0 = _driven_bptt("tanh", arrays, feeds, T)
    np.testing.assert_allclose(float(acts[loss]), loss_ref, rtol=1e-5)
    for t in range(1, T + 1):
        np.testing.assert_allclose(acts[g[f"h@t{t}"]], hs[t], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads.constrained()[copies["W"][0]], dW, rtol=1e-4, atol=1e-5)


def test_rnn_with_a_recurrent_weight_of_another_dtype_does_not_run_lean():
    T = 8
    net, X, Y = _net(T, 3, dtypes={"h->h": np.float32})
    ff = net.unroll(T)
    with lean_spy() as calls:
        out = _run(ff, X, Y)
    assert _chain_frags(out.acts) and calls == [False]
    _assert_ran_full(out.acts)
    with lean_disabled():
        plain = _run(ff, X, Y)
    _assert_same_runs(out, plain)
    _assert_matches_bptt(out, net, X, Y, 1e-10)


def test_an_initial_state_of_one_row_against_a_batch_does_not_run_lean():
    # h0 has 1 row, x_t has B: the first product broadcasts, so it is not the sums' shape
    T, B = 6, 3
    g, copies, loss, feeds, arrays = _driven(T, B=B, h0_rows=1)
    acts, grads = _assert_driven_fallback(g, loss, feeds)
    assert acts[g["h@t1"]].shape == (B, 3)
    assert grads[g["rec@t1"]].shape == (1, 3)  # the first product's gradient, unbroadcast to its shape
    loss_ref, hs, dU, dW, db, dh0 = _driven_bptt("tanh", arrays, feeds, T)
    np.testing.assert_allclose(float(acts[loss]), loss_ref, rtol=1e-12)
    np.testing.assert_allclose(grads["h0"], dh0, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(grads.constrained()[copies["W"][0]], dW, rtol=1e-11, atol=1e-13)
    # the same compiled plan, fed B rows of h0 next: lean again, and one row after that: not
    full = dict(feeds, h0=np.repeat(feeds["h0"], B, axis=0))
    acts2 = g.forward(full)
    assert acts2.plan is acts.plan
    _assert_ran_lean(acts2)
    _eq(acts2[loss], acts[loss], "loss with h0 repeated to B rows")  # the same numbers row by row
    _assert_ran_full(g.forward(feeds))


def test_check_finite_runs_use_the_generic_loops_and_store_everything():
    T = 9
    net, X, Y = _net(T, 3)
    ff = net.unroll(T)
    with lean_spy() as calls:
        checked = _run(ff, X, Y, check_finite=True)
    assert calls == []  # the generic loops: no fragment, so no chain asked
    _assert_ran_full(checked.acts)
    assert _chain_frags(checked.acts)  # (the plan has a chain; check_finite just does not use it)
    lean = _run(ff, X, Y)
    _assert_ran_lean(lean.acts)
    _assert_same_runs(lean, checked)
    _assert_matches_bptt(checked, net, X, Y, 1e-11)


def test_check_finite_still_names_the_first_non_finite_step():
    # exp overflows at step 4 inside the chain: the checked run names that node
    T = 7
    g, copies, loss, feeds, arrays = _driven(T, act="exp", wscale=0.1)
    feeds = dict(feeds, **{"x@t4": np.full_like(feeds["x@t4"], 4000.0)})
    with np.errstate(all="ignore"):
        acts = g.forward(feeds)  # unchecked: lean, no error
        _assert_ran_lean(acts)
        assert not np.all(np.isfinite(acts[g["h@t4"]]))
        assert np.all(np.isfinite(acts[g["h@t3"]]))
        with pytest.raises(tg.NonFiniteError, match=r"'h@t4' \(exp\) is the first"):
            g.forward(feeds, check_finite=True)


# ============================================================ 4. a sum or product with a second consumer


@pytest.mark.parametrize("extra,is_chain", [("net@t3", False), ("rec@t3", False), ("h@t3", True), ("last", True)])
def test_a_second_consumer_of_a_sum_or_product_is_no_chain(extra, is_chain):
    T, H = 6, 3
    g, copies, loss, feeds, arrays = _driven(T, H=H, extra=extra)
    plan = compile_plan(g, [loss])
    frags = [s[1] for s in plan.fast_steps if s[0] == FRAGMENT]
    assert len(frags) == 1  # the fragment is found either way: only its chain depends on the uses
    assert (frags[0].chain is not None) == is_chain
    assert bool(plan.recompute) == is_chain
    assert (frags[0].backward_lean is not None) == is_chain
    acts, grads, pacts, pgrads, calls = _graph_lean_and_plain(g, loss, feeds)
    if is_chain:  # a second use of a state or of the last product is fine: both are kept
        _assert_ran_lean(acts)
        assert calls == [True]
    else:
        _assert_ran_full(acts)
        assert calls == []
    _assert_same_acts(acts, pacts)
    _assert_same_grads(grads, pgrads)
    # against finite differences: the inputs one by one, each shared array as a whole
    wrt = [g["h0"]] + [g[f"x@t{t}"] for t in (1, 3, T)]
    assert tg.check_gradients(g, loss, feeds, wrt=wrt) < 1e-6
    _assert_shared_grads_match_fd(grads, g, loss, feeds, copies, arrays)


# ============================================================ 5. exp: a slope op whose slope is its output


@pytest.mark.parametrize("weights", ["tied", "single"])
def test_exp_chain_lean_equals_plain_and_hand_bptt(weights):
    T = 7
    g, copies, loss, feeds, arrays = _driven(T, B=2, H=3, act="exp", weights=weights, wscale=0.1, seed=4)
    acts, grads, pacts, pgrads, calls = _graph_lean_and_plain(g, loss, feeds)
    assert calls == [True]
    (frag,) = _chain_frags(acts)
    assert frag.F[1] is np.exp
    _assert_ran_lean(acts)  # (backward asks for no dropped value: they are still None here)
    states = {t: np.array(acts[g[f"h@t{t}"]]) for t in range(1, T + 1)}
    _assert_same_acts(acts, pacts)
    _assert_same_grads(grads, pgrads)
    loss_ref, hs, dU, dW, db, dh0 = _driven_bptt("exp", arrays, feeds, T)
    np.testing.assert_allclose(float(acts[loss]), loss_ref, rtol=1e-12)
    for t in range(1, T + 1):  # backward wrote its products into the slopes, not into the values
        _eq(acts[g[f"h@t{t}"]], states[t], f"h@t{t} after backward")
        np.testing.assert_allclose(states[t], hs[t], rtol=1e-12)
    W_node = g["W"] if weights == "single" else copies["W"][0]
    con = grads.constrained()
    np.testing.assert_allclose(con[W_node], dW, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(con[copies["U"][0]], dU, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(con[copies["b"][0]], db, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(grads["h0"], dh0, rtol=1e-11, atol=1e-13)


def test_tanh_chain_with_one_untied_weight_node_runs_lean():
    # one W node read by every step (no tie): the products' VJPs are the generic matmul rules
    T = 6
    g, copies, loss, feeds, arrays = _driven(T, weights="single")
    acts, grads, pacts, pgrads, calls = _graph_lean_and_plain(g, loss, feeds)
    assert calls == [True]
    _assert_same_acts(acts, pacts)
    _assert_same_grads(grads, pgrads)
    _, _, dU, dW, db, dh0 = _driven_bptt("tanh", arrays, feeds, T)
    np.testing.assert_allclose(grads[g["W"]], dW, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(grads["h0"], dh0, rtol=1e-11, atol=1e-13)


# ============================================================ 6. several backward passes, other seeds


def test_two_backward_passes_from_one_lean_run_agree():
    T = 10
    net, X, Y = _net(T, 3)
    ff = net.unroll(T)
    out = _run(ff, X, Y, backward=False)
    acts, em = out.acts, out.emitted
    order = [n.index for n in acts.plan.order]
    _assert_ran_lean(acts)
    first = acts.backward(em.loss)
    # what the first sweep stored, read without asking for any dropped value
    raw = {i: np.array(first._raw(i)) for i in order if first._raw(i) is not None}
    tsums = {k: np.array(v) for k, v in first._tied_sums.items()}
    assert raw and tsums
    _assert_ran_lean(acts)  # backward made no dropped value: the second sweep also meets a lean run
    second = acts.backward(em.loss)
    for i, v in raw.items():  # the second sweep did not write into the first one's arrays
        _eq(first._raw(i), v, "first sweep, after the second: " + acts.graph.nodes[i].name)
        _eq(second._raw(i), v, "second sweep: " + acts.graph.nodes[i].name)
    assert {i for i in order if second._raw(i) is not None} == set(raw)
    for k, v in tsums.items():
        _eq(first._tied_sums[k], v, "first sweep's tied sum")
        _eq(second._tied_sums[k], v, "second sweep's tied sum")
    _assert_same_grads(first, second)
    with lean_disabled():
        plain = _run(ff, X, Y)
    _assert_same_grads(second, plain.grads)
    # a third sweep, after every dropped value was remade (read here), agrees too
    for n in acts.plan.order:
        acts[n]
    assert not _none_indices(acts) & set(acts.plan.recompute)
    _assert_same_grads(acts.backward(em.loss), plain.grads)


@pytest.mark.parametrize("seed_at", ["net[h]@t3", "in[h->h]@t4", "h@t5"])
def test_backward_from_an_intermediate_node_matches_the_plain_run(seed_at):
    T = 9
    net, X, Y, ff, out, pout = _forward_lean_and_plain(T)
    acts, pacts, g = out.acts, pout.acts, out.graph
    _assert_ran_lean(acts)
    node = g[seed_at]
    rng = np.random.default_rng(7)
    seed = rng.standard_normal((3, 4))
    seed_copy = seed.copy()
    gl = acts.backward(node, seed=seed)
    gp = pacts.backward(node, seed=seed_copy.copy())
    _eq(seed, seed_copy, "the seed array after backward")  # not written into
    _assert_same_grads(gl, gp)
    _eq(gl[node], seed_copy, "the seed node's own gradient")
    # nothing after the seed is reached; the initial state and the x's before it are
    t0 = int(seed_at.rsplit("@t", 1)[1])
    assert not gl.reached(g[f"h@t{t0 + 1}"]) and not gl.reached(g[f"net[h]@t{t0 + 1}"])
    if seed_at.startswith("in"):  # x@t4 does not feed h@t3 @ W: its row of the batch's gradient is zero
        _eq(gl[g[f"x@t{t0}"]], np.zeros((3, 2)), "d/d x@t4")
    assert gl.reached(g["init[h]@t0"]) and gl.reached(g["x@t1"])
    # against hand BPTT of dE/d(net[h]@t) = seed propagated back to step 1
    Whh, Wxh = net.weights["h->h"], net.weights["x->h"]
    _, hs, _, _, _ = tanh_rnn_bptt(net.weights, X, Y)
    hs = [np.tile(net.weights["init:h"], (3, 1))] + hs
    if seed_at.startswith("net"):
        dz = seed_copy
    elif seed_at.startswith("in"):  # in[h->h]@t4 = h@t3 @ W: the seed reaches step 3's total input
        t0 -= 1
        dz = (seed_copy @ Whh.T) * (1 - hs[t0] ** 2)
    else:
        dz = seed_copy * (1 - hs[t0] ** 2)
    dWhh = hs[t0].T @ seed_copy if seed_at.startswith("in") else np.zeros_like(Whh)  # (copy @t4's share)
    for t in range(t0, 0, -1):
        np.testing.assert_allclose(gl[g[f"x@t{t}"]], dz @ Wxh.T, rtol=1e-11, atol=1e-13)
        dWhh += hs[t - 1].T @ dz
        dz = (dz @ Whh.T) * (1 - hs[t - 1] ** 2) if t > 1 else dz @ Whh.T
    np.testing.assert_allclose(gl.constrained()[g["W[h->h]@t1"]], dWhh, rtol=1e-11, atol=1e-13)
    # and a full backward from the loss afterwards is the plain run's
    with lean_disabled():
        plain = _run(ff, X, Y)
    _assert_same_grads(acts.backward(out.emitted.loss), plain.grads)


# ============================================================ 7. property: random small shapes


@settings(max_examples=20, deadline=None)
@given(T=st.integers(5, 16), B=st.integers(1, 4), H=st.integers(1, 5), I=st.integers(1, 3),
       dtype=st.sampled_from([np.float64, np.float32]), seed=st.integers(0, 2**16))
def test_lean_equals_plain_for_random_shapes(T, B, H, I, dtype, seed):
    net, X, Y, lean, plain = _lean_and_plain(T, B, dtype, H=H, I=I, seed=seed)
    g = lean.graph
    for t in range(2, T):  # remade products: np.dot of the kept state and the weight
        _eq(lean.acts[g[f"in[h->h]@t{t}"]], np.dot(lean.acts[g[f"h@t{t - 1}"]], net.weights["h->h"]),
            f"in[h->h]@t{t}")
    _assert_same_runs(lean, plain)
    _assert_matches_bptt(lean, net, X, Y, _tol(dtype) * (10 if dtype == np.float32 else 1))


# ============================================================ 8. the chain's own backward loop (Chain.run_backward)


def chain_backward(min_steps=1):
    """Chain.run_backward allowed from ``min_steps`` on; yields what each call returned."""
    return chain_spy("run_backward", MIN_STEPS_LEAN_BACKWARD=min_steps)


@contextmanager
def chain_backward_refused():
    """Chain.run_backward never applies: the generated loop does the lean backward."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Chain, "run_backward", lambda self, *args, **kwargs: False)
        yield


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("T,B,H", [(5, 3, 4), (12, 1, 1), (30, 4, 6)])
def test_chain_backward_equals_the_generated_loop_and_the_plain_run_bitwise(dtype, T, B, H):
    net, X, Y = _net(T, B, H=H, dtype=dtype, seed=T)
    ff = net.unroll(T)
    with chain_backward() as calls:
        fast = _run(ff, X, Y)
    assert calls == [True]
    with chain_backward_refused():
        generated = _run(ff, X, Y)
    with lean_disabled():
        plain = _run(ff, X, Y)
    _assert_same_runs(fast, generated)
    _assert_same_runs(fast, plain)
    _assert_matches_bptt(fast, net, X, Y, _tol(dtype))


def test_chain_backward_runs_by_default_on_long_chains_only():
    short, long_ = Chain.MIN_STEPS_LEAN_BACKWARD - 1, Chain.MIN_STEPS_LEAN_BACKWARD + 1
    for T, expect in ((short + 1, False), (long_ + 1, True)):  # T steps: a chain of T - 1
        net, X, Y = _net(T, 2, H=3, seed=1)
        ff = net.unroll(T)
        with chain_backward(Chain.MIN_STEPS_LEAN_BACKWARD) as calls:
            out = _run(ff, X, Y)
        assert calls == [expect]
        if expect:
            with chain_backward_refused():
                _assert_same_grads(out.grads, _run(ff, X, Y).grads)


@pytest.mark.parametrize("steps", ["final", ("last", 3)])
def test_chain_backward_leaves_states_without_gradients_to_the_generated_loop(steps):
    # targets at the last steps only: most states get their gradient from the recurrence alone
    T = 10
    net, X, Y = _net(T, 3)
    ff = net.unroll(T)
    Yk = Y[-1:] if steps == "final" else Y[-3:]
    with chain_backward() as calls:
        fast = ff.run([rnn.Clamp("x", X)], [rnn.Target("y", Yk, steps=steps)])
    assert calls == [False]
    with lean_disabled():
        plain = ff.run([rnn.Clamp("x", X)], [rnn.Target("y", Yk, steps=steps)])
    _assert_same_runs(fast, plain)


@pytest.mark.parametrize("seed_at,runs", [("net[h]@t3", [False]), ("h@t5", [False]), ("y@t6", [True])])
def test_chain_backward_from_an_intermediate_node_matches_the_plain_run(seed_at, runs):
    # net[h]@t3: no gradient reaches the fragment's last product; h@t5: states after it get
    # none; y@t6: its batch hands every state a gradient row (zeros after step 6), so the
    # chain's loop applies
    net, X, Y, ff, out, pout = _forward_lean_and_plain(9)
    node = out.graph[seed_at]
    seed = np.random.default_rng(3).standard_normal(np.shape(out.acts[node]))
    with chain_backward() as calls:
        gl = out.acts.backward(node, seed=seed.copy())
    assert calls == runs
    _assert_same_grads(gl, pout.acts.backward(node, seed=seed.copy()))


@pytest.mark.parametrize("every_state", [True, False])
@pytest.mark.parametrize("extra", [None, "h@t3", "last"])
def test_chain_backward_on_a_hand_built_chain(extra, every_state):
    # with a loss term on every state, each state's gradient is a row this sweep owns and the
    # chain's loop applies; with the loss on the last state only, they come from the recurrence
    T = 8
    g, copies, loss, feeds, arrays = _driven(T, B=2, H=3, extra=extra, seed=5, every_state=every_state)
    with chain_backward() as calls:
        acts, grads, pacts, pgrads, lean_calls = _graph_lean_and_plain(g, loss, feeds)
    assert lean_calls == [True]
    assert calls == [every_state]
    _assert_same_acts(acts, pacts)
    _assert_same_grads(grads, pgrads)
    _assert_shared_grads_match_fd(grads, g, loss, feeds, copies, arrays)


def test_chain_backward_repeated_sweeps_do_not_write_into_earlier_ones():
    T = 12
    net, X, Y = _net(T, 3, seed=2)
    ff = net.unroll(T)
    out = _run(ff, X, Y, backward=False)
    with chain_backward() as calls:
        first = out.acts.backward(out.emitted.loss)
        kept = {n.index: np.array(first[n]) for n in out.acts.plan.order}
        second = out.acts.backward(out.emitted.loss)
    assert calls == [True, True]
    for i, v in kept.items():
        _eq(first[out.graph.nodes[i]], v, out.graph.nodes[i].name)
    _assert_same_grads(first, second)


def test_a_checked_backward_after_a_lean_forward_makes_the_dropped_values_first():
    # backward(check_finite=True) runs the generic loops, which read every value
    T = 8
    net, X, Y = _net(T, 2)
    out = _run(net.unroll(T), X, Y)
    _assert_ran_lean(out.acts)
    checked = out.acts.backward(out.emitted.loss, check_finite=True)
    assert not _none_indices(out.acts) & set(out.acts.plan.recompute)
    with lean_disabled():
        plain = _run(net.unroll(T), X, Y)
    _assert_same_grads(checked, out.grads)
    _assert_same_acts(out.acts, plain.acts)


# ============================================================ 9. sums written into the states' rows (Chain.run_lean_in_rows)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("T,B,H", [(5, 3, 4), (12, 1, 1), (30, 4, 6)])
def test_sums_made_in_the_state_rows_equal_run_lean_and_the_plain_run_bitwise(dtype, T, B, H):
    net, X, Y = _net(T, B, H=H, dtype=dtype, seed=T + 1)
    ff = net.unroll(T)
    with chain_spy("run_lean_in_rows") as in_rows:
        fast = _run(ff, X, Y)
    assert in_rows == [True]
    (frag,) = _chain_frags(fast.acts)
    assert fast.acts._values[frag.chain.states[0]].base is fast.acts._values[frag.chain.states[-1]].base
    with lean_disabled(in_rows_only=True), lean_spy() as calls:
        lean = _run(ff, X, Y)
    assert calls == [True]  # run_lean ran instead
    with lean_disabled():
        plain = _run(ff, X, Y)
    _assert_same_runs(fast, lean)
    _assert_same_runs(fast, plain)
    _assert_matches_bptt(fast, net, X, Y, _tol(dtype))


@pytest.mark.parametrize("act", ["tanh", "exp"])
def test_sums_made_in_the_state_rows_on_a_hand_built_chain(act):
    # U, W and b copies tied (b the PreSum's source); the loss on every state and the last
    T = 7
    g, copies, loss, feeds, arrays = _driven(T, B=2, H=3, act=act, wscale=0.1, seed=3, every_state=True)
    with chain_spy("run_lean_in_rows") as in_rows:
        acts, grads, pacts, pgrads, calls = _graph_lean_and_plain(g, loss, feeds)
    assert in_rows[0] is True and calls == [True]
    _assert_same_acts(acts, pacts)
    _assert_same_grads(grads, pgrads)
    _assert_shared_grads_match_fd(grads, g, loss, feeds, copies, arrays)


def test_a_source_in_another_dtype_keeps_the_sums_out_of_the_state_rows():
    # a float64 bias with float32 projections: the sums are float64, so they are not written
    # into float32 rows, and run_lean (one dtype too) refuses: the generic loop runs
    T = 6
    net, X, Y = _net(T, 2, dtype=np.float32, dtypes={"bias:h": np.float64})
    ff = net.unroll(T)
    with chain_spy("run_lean_in_rows") as in_rows, lean_spy() as calls:
        out = _run(ff, X, Y)
    assert in_rows == [False] and calls == [False]
    with lean_disabled():
        plain = _run(ff, X, Y)
    _assert_same_runs(out, plain)
