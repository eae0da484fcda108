"""Row buffers (tinygraph/rowbuffers.py) and what builds on them: the values of a tanh chain
written as rows of one array (plan.RowOut), slope products as rows of one array
(autodiff._slopes) read in place by a tied weight's summed gradient (autodiff._sum_outer),
an add_n of a whole batch as one reduction (plan.BATCH_SUM), inputs fed stacked under a
tuple of node indices (rnn's Emitted.feed_dict), and ops._matmul's 3-D @ 2-D product.

Every fast path is checked against an independent numpy computation (hand-written BPTT)
or against the same graph with the path disabled, and where a test claims a path is taken
it checks that structurally (shared buffers, call counts), never by timing."""

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rnn
import tinygraph as tg
import tinygraph.autodiff as AD
import tinygraph.plan as P
from tinygraph import ops
from tinygraph.autodiff import compile_plan, run_forward
from tinygraph.plan import BATCH, BATCH_SUM, ROWS, RowOut, SlopeRow
from tinygraph.rowbuffers import RowIndex, runs, stacked_view

from shared import tanh_rnn, tanh_rnn_bptt

# ============================================================ 1. RowIndex, runs, stacked_view


def test_new_returns_registered_views_of_one_buffer():
    idx = RowIndex()
    rows = idx.new(3, (2, 4), np.float32)
    assert len(rows) == 3
    buf = rows[0].base
    assert buf is not None and buf.shape == (3, 2, 4) and buf.dtype == np.float32
    for k, r in enumerate(rows):
        assert r.shape == (2, 4) and r.dtype == np.float32 and r.base is buf
        r[...] = k  # writing the row writes the buffer
        hit = idx.find(r)
        assert hit is not None
        assert hit[0] is buf and hit[1] is rows and hit[2] == k
    np.testing.assert_array_equal(buf, np.arange(3, dtype=np.float32)[:, None, None] * np.ones((3, 2, 4)))
    # identity only: equal values, or a fresh view of the same memory, are not registered rows
    assert idx.find(rows[1].copy()) is None
    assert idx.find(buf[1]) is None
    assert idx.find(np.zeros((2, 4), np.float32)) is None


def test_adopt_registers_the_rows_of_an_existing_array():
    arr = np.arange(24.0).reshape(4, 2, 3).copy()  # owns its memory: rows' .base is arr
    idx = RowIndex()
    rows = idx.adopt(arr)
    assert len(rows) == 4
    for k, r in enumerate(rows):
        assert r.base is arr
        np.testing.assert_array_equal(r, arr[k])
        buf, rs, kk = idx.find(r)
        assert buf is arr and rs is rows and kk == k
    # two buffers in one index: each row is found in its own
    other = np.ones((2, 2, 3))
    orows = idx.adopt(other)
    assert idx.find(orows[1])[0] is other and idx.find(orows[1])[2] == 1
    assert idx.find(rows[3])[0] is arr and idx.find(rows[3])[2] == 3


def test_a_backward_index_sees_its_parents_rows_but_not_the_reverse():
    fwd = RowIndex()
    frows = fwd.new(3, (2,), np.float64)
    bwd = RowIndex(fwd)
    brows = bwd.adopt(np.zeros((2, 2)))
    assert bwd.parent is fwd
    hit = bwd.find(frows[2])
    assert hit is not None and hit[1] is frows and hit[2] == 2
    assert bwd.find(brows[0])[2] == 0
    assert fwd.find(brows[0]) is None  # the forward run knows nothing of the sweep's buffers
    assert bwd.find(np.zeros(2)) is None
    # a run of rows of the parent, read through the child: one view of the parent's buffer
    v = stacked_view(frows[1:], bwd)
    assert v is not None and v.base is frows[0].base


def _rows_of_two_buffers():
    idx = RowIndex()
    a = idx.adopt(np.arange(30.0).reshape(5, 2, 3).copy())
    b = idx.adopt(100 + np.arange(24.0).reshape(4, 2, 3))
    return idx, a, b


def test_runs_splits_a_mixed_list():
    idx, a, b = _rows_of_two_buffers()
    A, B = a[0].base, b[0].base
    f1, f2 = np.full((2, 3), -1.0), a[3].copy()  # f2: equal values to a registered row, not that row
    arrs = [f1, a[1], a[2], a[3], b[0], b[1], a[0], a[0], f2, f1, a[4], b[3], a[2], a[1]]
    got = runs(arrs, idx)
    cuts = [(lo, hi) for lo, hi, _ in got]
    assert cuts == [(0, 1), (1, 4), (4, 6), (6, 7), (7, 8), (8, 10), (10, 11), (11, 12), (12, 13), (13, 14)]
    views = [v for _, _, v in got]
    assert views[0] is None and views[5] is None
    for (lo, hi, v), buf in zip([got[i] for i in (1, 2, 3, 4, 6, 7, 8, 9)], [A, B, A, A, A, B, A, A]):
        assert v is not None and v.base is buf  # a view of the buffer, no copy
        np.testing.assert_array_equal(v, np.stack(arrs[lo:hi]))
    np.testing.assert_array_equal(np.concatenate([np.stack(arrs[lo:hi]) if v is None else v for lo, hi, v in got]),
                                  np.stack(arrs))


def test_runs_of_nothing_registered_and_of_one_whole_buffer():
    idx, a, b = _rows_of_two_buffers()
    foreign = [np.zeros((2, 3)) for _ in range(3)]
    assert runs(foreign, idx) == [(0, 3, None)]
    assert runs([], idx) == []
    (lo, hi, v), = runs(list(a), idx)
    assert (lo, hi) == (0, 5) and v.base is a[0].base and v.shape == (5, 2, 3)


# one element of a random list: a row of buffer 0 or 1 (k), or a foreign array (k picks which)
_ELEMENT = st.tuples(st.sampled_from(["a", "b", "foreign", "copy", "fresh view"]), st.integers(0, 4))


@settings(max_examples=50, deadline=None)
@given(spec=st.lists(_ELEMENT, max_size=16), split=st.booleans())
def test_runs_pieces_reassemble_the_stack(spec, split):
    # split: buffer a registered in a parent index, b in the child the query goes through
    parent = RowIndex()
    idx = RowIndex(parent) if split else parent
    a = parent.adopt(np.arange(30.0).reshape(5, 2, 3).copy())
    b = idx.adopt(100 + np.arange(24.0).reshape(4, 2, 3))
    foreign = [np.full((2, 3), -1.0 - k) for k in range(5)]
    arrs = []
    for kind, k in spec:
        if kind == "a":
            arrs.append(a[k])
        elif kind == "b":
            arrs.append(b[k % 4])
        elif kind == "foreign":
            arrs.append(foreign[k])
        elif kind == "copy":
            arrs.append(a[k].copy())  # equal values, another object
        else:
            arrs.append(a[0].base[k])  # the same memory as row k, another object
    got = runs(arrs, idx)
    if not arrs:
        assert got == []
        return
    # the pieces cover the list in order, each once
    assert got[0][0] == 0 and got[-1][1] == len(arrs)
    assert all(lo < hi for lo, hi, _ in got)
    assert all(p[1] == q[0] for p, q in zip(got, got[1:]))
    pieces = []
    for lo, hi, v in got:
        if v is None:  # only unregistered arrays are left to copy
            assert all(idx.find(x) is None for x in arrs[lo:hi])
            pieces.append(np.stack(arrs[lo:hi]))
        else:
            assert v.shape[0] == hi - lo
            buf, rows, k = idx.find(arrs[lo])
            assert v.base is buf  # a view, not a copy
            assert all(x is r for x, r in zip(arrs[lo:hi], rows[k:k + hi - lo]))
            pieces.append(v)
    # maximal: no two pieces to copy in a row, and no run that stops before the next row
    for (lo, hi, v), (lo2, _, v2) in zip(got, got[1:]):
        assert not (v is None and v2 is None)
        if v is not None:
            buf, rows, k = idx.find(arrs[lo])
            end = k + hi - lo
            assert end == len(rows) or arrs[lo2] is not rows[end]
    np.testing.assert_array_equal(np.concatenate(pieces), np.stack(arrs))
    # stacked_view is the one-piece case of runs
    sv = stacked_view(arrs, idx)
    whole = len(got) == 1 and got[0][2] is not None
    assert (sv is not None) == whole
    if whole:
        np.testing.assert_array_equal(sv, np.stack(arrs))


def test_stacked_view_only_for_exactly_consecutive_rows():
    idx, a, b = _rows_of_two_buffers()
    A = a[0].base
    v = stacked_view(a[1:4], idx)
    assert v is not None and v.base is A and np.shares_memory(v, A)
    np.testing.assert_array_equal(v, np.stack(a[1:4]))
    v[0, 0, 0] = 7.0  # a view: it writes the rows
    assert a[1][0, 0] == 7.0
    assert stacked_view(list(a), idx).shape == (5, 2, 3)
    assert stacked_view([a[0], a[2]], idx) is None                     # a gap
    assert stacked_view([a[2], a[1]], idx) is None                     # out of order
    assert stacked_view([a[1], a[1]], idx) is None                     # repeated
    assert stacked_view([a[3], a[4], b[0]], idx) is None               # runs into another buffer
    assert stacked_view([a[1], a[2].copy()], idx) is None              # a foreign array after a row
    assert stacked_view([np.zeros((2, 3)), a[0]], idx) is None         # a foreign array first
    assert stacked_view([A[1], A[2]], idx) is None                     # new views of the memory, not the rows
    assert stacked_view(a[1:3], None) is None
    assert stacked_view([], idx) is None


# ============================================================ a tanh chain with per-step losses


def _chain(T=6, B=3, H=4, seed=0, extra=None):
    """h_t = tanh(h_{t-1} @ W_t + b), W_1..W_T tied copies of one W; loss = add_n of the per-step
    squared errors (a whole batch), plus ``extra`` * loss@t3 when extra is given (then loss@t3
    has two uses)."""
    rng = np.random.default_rng(seed)
    W = 0.5 * rng.standard_normal((H, H))
    b = 0.1 * rng.standard_normal(H)
    g = tg.Graph("rows chain")
    h = g.input("h0", (None, H))
    feeds = {"h0": rng.standard_normal((B, H))}
    copies, losses = [], []
    for t in range(1, T + 1):
        Wt = g.param(f"W@t{t}", W)
        copies.append(Wt)
        pre = tg.add(tg.matmul(h, Wt, name=f"mm@t{t}"), b, name=f"pre@t{t}")
        h = tg.tanh(pre, name=f"h@t{t}")
        y = g.input(f"y@t{t}", (None, H))
        feeds[f"y@t{t}"] = 0.5 * rng.standard_normal((B, H))
        losses.append(tg.squared_error(h, y, name=f"loss@t{t}"))
    g.tie(*copies)
    loss = tg.add_n(losses, name="loss")
    if extra is not None:
        loss = tg.add(loss, tg.mul(losses[2], extra), name="loss+")
    return g, copies, loss, feeds, W, b


def _chain_bptt(W, b, feeds, T, weights=None, scale=1.0):
    """Loss, states, dE/dW (summed over copies), dE/d(tanh input) per step, dE/dh0, dE/dy_t:
    written out in numpy from the chain's definition.  weights[t-1] multiplies step t's loss."""
    c = np.ones(T) if weights is None else np.asarray(weights, float)
    hs = [feeds["h0"]]
    for _ in range(T):
        hs.append(np.tanh(hs[-1] @ W + b))
    res = [hs[t] - feeds[f"y@t{t}"] for t in range(1, T + 1)]
    loss = sum(ck * 0.5 * np.sum(r * r) for ck, r in zip(c, res))
    dW = np.zeros_like(W)
    dz = [None] * T
    carry = np.zeros_like(hs[0])
    for t in range(T, 0, -1):
        d = scale * c[t - 1] * res[t - 1] + carry
        dz[t - 1] = d * (1.0 - hs[t] ** 2)
        dW += hs[t - 1].T @ dz[t - 1]
        carry = dz[t - 1] @ W.T
    dy = [-scale * ck * r for ck, r in zip(c, res)]
    return loss, hs, dW, dz, carry, dy


def _no_rows(monkeypatch):
    """Row buffers off: every slope group's run gets NO_ROWS, so nothing is written into rows."""
    monkeypatch.setattr(P.SlopeGroup, "value_rows", lambda self, x, bstore=None: P.NO_ROWS)


def _assert_chain_right(g, copies, loss, feeds, W, b, T, acts, grads, rtol=1e-12):
    ref_loss, hs, dW, dz, dh0, dy = _chain_bptt(W, b, feeds, T)
    np.testing.assert_allclose(float(acts[loss]), ref_loss, rtol=rtol)
    for t in range(1, T + 1):
        np.testing.assert_allclose(acts[g[f"h@t{t}"]], hs[t], rtol=rtol, atol=1e-15)
        np.testing.assert_allclose(grads[g[f"pre@t{t}"]], dz[t - 1], rtol=rtol, atol=1e-14)
        np.testing.assert_allclose(grads[g[f"y@t{t}"]], dy[t - 1], rtol=rtol, atol=1e-14)
    np.testing.assert_allclose(grads.constrained()[copies[0]], dW, rtol=rtol, atol=1e-14)
    np.testing.assert_allclose(grads["h0"], dh0, rtol=rtol, atol=1e-14)


# ============================================================ 2. forward: values as rows of one buffer


def test_chain_values_are_rows_of_one_buffer():
    T = 6
    g, copies, loss, feeds, W, b = _chain(T)
    acts = g.forward(feeds)
    plan = acts.plan
    # the test means something only if the tanh steps are RowOut members of one slope group
    tanh_steps = [s for s in plan.steps if s[0] != BATCH and g.nodes[s[1]].op == "tanh"]
    assert len(tanh_steps) == T and all(type(s[2]) is RowOut for s in tanh_steps)
    assert len({id(s[2].group) for s in tanh_steps}) == 1
    hs = [acts[g[f"h@t{t}"]] for t in range(1, T + 1)]
    buf = hs[0].base
    assert buf is not None and buf.shape == (T, 3, 4)
    for k, h in enumerate(hs):
        assert h.base is buf
        assert np.shares_memory(h, buf[k]) and not np.shares_memory(h, buf[k + 1:])
        np.testing.assert_array_equal(buf[k], h)
    # the run's index knows them as consecutive rows: the loss batch reads them in place
    assert stacked_view(hs, acts._bstore[ROWS]) is not None
    bid = plan.member_of[g["loss@t1"].index][0]
    operand = acts._bstore[bid][1][0]
    assert operand.base is buf


def test_chain_without_row_buffers_gives_the_same_values_and_gradients(monkeypatch):
    T = 6
    g, copies, loss, feeds, W, b = _chain(T)
    fast_acts = g.forward(feeds)
    fast = fast_acts.backward(loss)
    _assert_chain_right(g, copies, loss, feeds, W, b, T, fast_acts, fast)
    fast_vals = {n.name: np.array(v) for n, v in fast_acts.items()}

    _no_rows(monkeypatch)
    acts = g.forward(feeds)
    hs = [acts[g[f"h@t{t}"]] for t in range(1, T + 1)]
    # really off: no value is a row of a buffer, and no two states share memory
    assert all(acts._bstore[ROWS].find(h) is None for h in hs)
    assert not any(np.shares_memory(p, q) for k, p in enumerate(hs) for q in hs[k + 1:])
    for n, v in acts.items():  # the same numpy calls on the same numbers: bitwise the same values
        np.testing.assert_array_equal(v, fast_vals[n.name], err_msg=n.name)
    grads = acts.backward(loss)
    _assert_chain_right(g, copies, loss, feeds, W, b, T, acts, grads)


def test_each_run_has_its_own_buffer():
    g, copies, loss, feeds, W, b = _chain(5)
    acts1 = g.forward(feeds)
    h1 = [np.array(acts1[g[f"h@t{t}"]]) for t in range(1, 6)]
    feeds2 = dict(feeds, h0=-2.0 * feeds["h0"])
    acts2 = g.forward(feeds2)
    assert acts2[g["h@t1"]].base is not acts1[g["h@t1"]].base
    for t in range(1, 6):  # the second run wrote nothing into the first run's rows
        np.testing.assert_array_equal(acts1[g[f"h@t{t}"]], h1[t - 1])
    assert not np.allclose(acts2[g["h@t1"]], h1[0])


# ============================================================ 3. fallback: member shapes or dtypes differ


def _two_branches(T=4, H=3):
    """Two tanh chains with their own tied weights, all 2T tanh nodes in one slope group
    (static shape (None, H), float64): branch a starts with tanh(a), branch c with tanh(c @ Wc)."""
    rng = np.random.default_rng(7)
    Wa, Wc = 0.6 * rng.standard_normal((H, H)), 0.6 * rng.standard_normal((H, H))
    g = tg.Graph("two branches")
    a, c = g.input("a", (None, H)), g.input("c", (None, H))
    ka, kc = g.const(0.3 * rng.standard_normal(H), name="ka"), g.const(0.3 * rng.standard_normal(H), name="kc")
    h = tg.tanh(a, name="ha@t1")
    aw = []
    for t in range(2, T + 1):
        aw.append(g.param(f"Wa@t{t}", Wa))
        h = tg.tanh(h @ aw[-1], name=f"ha@t{t}")
    ha = h
    h, cw = c, []
    for t in range(1, T + 1):
        cw.append(g.param(f"Wc@t{t}", Wc))
        h = tg.tanh(h @ cw[-1], name=f"hc@t{t}")
    g.tie(*aw)
    g.tie(*cw)
    # (one more node on c's side: the branches' tanh nodes then differ in depth from the
    # sources and from the loss, so no two of them are batched together)
    hc = tg.mul(h, 1.0, name="hc")
    loss = tg.add(tg.sum(ka * ha * ha), tg.sum(kc * hc * hc), name="loss")
    return g, loss, aw, cw, Wa, Wc, ka.value, kc.value


def _two_branches_reference(a, c, Wa, Wc, ka, kc, T):
    """Forward and backward of _two_branches in numpy (in each value's own dtype)."""
    has = [np.tanh(a)]
    for _ in range(2, T + 1):
        has.append(np.tanh(has[-1] @ Wa))
    hcs = [c]
    for _ in range(T):
        hcs.append(np.tanh(hcs[-1] @ Wc))
    loss = np.sum(ka * has[-1] ** 2) + np.sum(kc * hcs[-1] ** 2)
    d = 2 * ka * has[-1]
    dWa = np.zeros_like(Wa)
    for t in range(T - 1, 0, -1):  # has[t] = tanh(has[t-1] @ Wa)
        dz = d * (1.0 - has[t] * has[t])
        dWa += has[t - 1].T @ dz
        d = dz @ Wa.T
    da = d * (1.0 - has[0] * has[0])
    d = 2 * kc * hcs[-1]
    dWc = np.zeros_like(Wc)
    for t in range(T, 0, -1):
        dz = d * (1.0 - hcs[t] * hcs[t])
        dWc += hcs[t - 1].T @ dz
        d = dz @ Wc.T
    return loss, has, hcs[1:], dWa, dWc, da, d


@pytest.mark.parametrize("case", ["alike", "batch sizes differ", "dtypes differ"])
def test_members_of_another_shape_or_dtype_fall_back(case, monkeypatch):
    T = 4
    g, loss, aw, cw, Wa, Wc, ka, kc = _two_branches(T)
    rng = np.random.default_rng(11)
    av = rng.standard_normal((2, 3))
    cv = rng.standard_normal((5 if case == "batch sizes differ" else 2, 3))
    if case == "dtypes differ":
        av = av.astype(np.float32)  # a float input keeps its float dtype: tanh(a) is float32
    feeds = {"a": av, "c": cv}
    acts = g.forward(feeds)
    plan = acts.plan
    assert not any(g.nodes[m].op == "tanh" for s in plan.steps if s[0] == BATCH for m in s[1].members)
    slope_rows = [v for s in plan.steps if s[0] != BATCH for _, v, _ in s[4] if type(v) is SlopeRow]
    assert len(slope_rows) == 2 * T and len({id(v.group) for v in slope_rows}) == 1  # one group, both branches
    ha = [acts[g[f"ha@t{t}"]] for t in range(1, T + 1)]
    hc = [acts[g[f"hc@t{t}"]] for t in range(1, T + 1)]
    buf = ha[0].base  # the buffer takes the shape and dtype of the first member's input
    assert buf is not None and buf.shape == (2 * T,) + av.shape and buf.dtype == av.dtype
    if case == "alike":
        assert all(h.base is buf for h in ha + hc)
    elif case == "batch sizes differ":
        assert all(h.base is buf for h in ha)
        assert not any(np.shares_memory(h, buf) for h in hc)  # the other shape is computed on its own
        assert all(h.shape == (5, 3) for h in hc)
    else:
        assert ha[0].dtype == np.float32  # not promoted by the buffer
        assert not any(np.shares_memory(h, buf) for h in ha[1:] + hc)
        assert all(h.dtype == np.float64 for h in ha[1:] + hc)
    ref = _two_branches_reference(av, cv, Wa, Wc, ka, kc, T)
    rl, rha, rhc, dWa, dWc, da, dc = ref
    tol = dict(rtol=1e-5, atol=1e-6) if case == "dtypes differ" else dict(rtol=1e-12, atol=1e-14)
    for mode in ("rows", "no rows"):
        if mode == "no rows":
            _no_rows(monkeypatch)
            acts = g.forward(feeds)
            assert acts._bstore[ROWS].find(acts[g["ha@t1"]]) is None
        grads = acts.backward(loss)
        np.testing.assert_allclose(float(acts[loss]), rl, **tol)
        for t in range(T):
            np.testing.assert_allclose(acts[g[f"ha@t{t + 1}"]], rha[t], **tol)
            np.testing.assert_allclose(acts[g[f"hc@t{t + 1}"]], rhc[t], **tol)
        con = grads.constrained()
        np.testing.assert_allclose(con[aw[0]], dWa, **tol, err_msg=mode)
        np.testing.assert_allclose(con[cw[0]], dWc, **tol, err_msg=mode)
        np.testing.assert_allclose(grads["a"], da, **tol, err_msg=mode)
        np.testing.assert_allclose(grads["c"], dc, **tol, err_msg=mode)
        if case == "dtypes differ":
            assert grads[g["ha@t1"]].dtype == np.float64  # g (float64) * slope (float32)
    if case != "dtypes differ":  # and against finite differences (the inputs: tied copies share storage)
        assert tg.check_gradients(g, loss, feeds, wrt=[g["a"], g["c"]]) < 1e-6


def test_a_group_whose_first_input_is_0d_gets_no_buffer():
    # value_rows refuses a 0-d first input: every member then runs unbuffered, and still right
    g = tg.Graph("scalars")
    x = g.input("x", ())
    h = x
    for t in range(5):
        h = tg.tanh(h * 1.5, name=f"h{t}")
    loss = tg.mul(h, 1.0, name="loss")
    acts = g.forward({"x": np.array(0.3)})
    want, d = 0.3, 1.0
    hs = []
    for _ in range(5):
        want = np.tanh(1.5 * want)
        hs.append(want)
    for hv in reversed(hs):
        d = d * (1 - hv * hv) * 1.5
    assert acts[g["h0"]].base is None or acts._bstore[ROWS].find(acts[g["h0"]]) is None
    np.testing.assert_allclose(float(acts[loss]), want, rtol=1e-14)
    np.testing.assert_allclose(float(acts.backward(loss)["x"]), d, rtol=1e-13)


# ============================================================ 4. backward: slope products as rows of one array


def test_slope_products_are_rows_of_one_array_and_the_tied_sum_reads_them(monkeypatch):
    T = 6
    g, copies, loss, feeds, W, b = _chain(T)
    calls = []
    real = AD._flat_outer

    def spy(a, gr):
        calls.append((a, gr))
        return real(a, gr)

    monkeypatch.setattr(AD, "_flat_outer", spy)
    monkeypatch.setattr(AD, "OUTER_SMALL", 0)  # (smaller operands are simply stacked)
    acts = g.forward(feeds)
    grads = acts.backward(loss)
    _assert_chain_right(g, copies, loss, feeds, W, b, T, acts, grads)
    dpre = [grads[g[f"pre@t{t}"]] for t in range(1, T + 1)]
    S = dpre[0].base
    assert S is not None and S.shape == (T, 3, 4)
    assert all(d.base is S for d in dpre)
    for k, d in enumerate(dpre):
        assert np.shares_memory(d, S[k]) and not np.shares_memory(d, S[:k])
    # the tied W: h0 (fed, not a row) alone, then h1..h_{T-1} and the products of steps 2..T
    # as two views, one product: two calls, the second reading both buffers in place
    hbuf = acts[g["h@t1"]].base
    assert len(calls) == 2
    a, gr = calls[1]
    assert a.shape == (T - 1, 3, 4) and a.base is hbuf
    assert gr.shape == (T - 1, 3, 4) and gr.base is S
    assert np.shares_memory(calls[0][1], S)


def test_generic_loops_with_check_finite_agree_with_the_fast_run():
    T = 7
    g, copies, loss, feeds, W, b = _chain(T, seed=3)
    fast_acts = g.forward(feeds)
    fast = fast_acts.backward(loss)
    slow_acts = g.forward(feeds, check_finite=True)  # plan.steps: no fragments
    slow = slow_acts.backward(loss, check_finite=True)
    _assert_chain_right(g, copies, loss, feeds, W, b, T, slow_acts, slow)
    for n in g.nodes:
        if n in fast_acts:
            np.testing.assert_allclose(slow_acts[n], fast_acts[n], rtol=1e-12, atol=1e-15, err_msg=n.name)
        if fast.reached(n) or slow.reached(n):
            np.testing.assert_allclose(slow[n], fast[n], rtol=1e-12, atol=1e-14, err_msg=n.name)
    np.testing.assert_allclose(slow.constrained()[copies[0]], fast.constrained()[copies[0]], rtol=1e-12)
    # the generic loops use the buffers too
    assert slow_acts[g["h@t2"]].base is slow_acts[g["h@t1"]].base
    assert slow[g["pre@t2"]].base is slow[g["pre@t1"]].base


def test_a_second_sweep_leaves_the_first_sweeps_gradients_alone():
    T = 5
    g, copies, loss, feeds, W, b = _chain(T)
    acts = g.forward(feeds)
    first = acts.backward(loss)
    kept = {t: np.array(first[g[f"pre@t{t}"]]) for t in range(1, T + 1)}
    kept_w = np.array(first.constrained()[copies[0]])
    h_before = np.array(acts[g["h@t3"]])
    second = acts.backward(loss, seed=np.array(-3.0))
    for t in range(1, T + 1):
        np.testing.assert_array_equal(first[g[f"pre@t{t}"]], kept[t])
        np.testing.assert_allclose(second[g[f"pre@t{t}"]], -3.0 * kept[t], rtol=1e-13)
    np.testing.assert_array_equal(first.constrained()[copies[0]], kept_w)
    np.testing.assert_array_equal(acts[g["h@t3"]], h_before)  # the slopes did not overwrite the values


# ============================================================ 5. BATCH_SUM


def test_add_n_of_a_whole_batch_is_one_batch_sum():
    T = 6
    g, copies, loss, feeds, W, b = _chain(T)
    plan = compile_plan(g, [loss])
    assert loss.index in plan.batch_sums
    b_ = plan.batch_sums[loss.index]
    assert b_.members == [g[f"loss@t{t}"].index for t in range(1, T + 1)]
    kinds = [s[0] for s in plan.steps if s[0] != BATCH and s[1] == loss.index]
    assert kinds == [BATCH_SUM]
    acts = g.forward(feeds, outputs=[loss])
    assert acts.plan is plan
    assert b_.id in acts._bstore  # the batch stacked: the sum was one reduction of its output
    members = [float(acts[g[f"loss@t{t}"]]) for t in range(1, T + 1)]
    np.testing.assert_allclose(float(acts[loss]), sum(members), rtol=1e-13)
    ref_loss, *_ = _chain_bptt(W, b, feeds, T)
    np.testing.assert_allclose(float(acts[loss]), ref_loss, rtol=1e-12)
    grads = acts.backward(loss, seed=2.5)
    for t in range(1, T + 1):
        assert float(grads[g[f"loss@t{t}"]]) == 2.5
    _, _, dW, dz, dh0, dy = _chain_bptt(W, b, feeds, T, scale=2.5)
    np.testing.assert_allclose(grads.constrained()[copies[0]], dW, rtol=1e-12)
    np.testing.assert_allclose(grads["h0"], dh0, rtol=1e-12, atol=1e-14)
    for t in range(1, T + 1):
        np.testing.assert_allclose(grads[g[f"y@t{t}"]], dy[t - 1], rtol=1e-12)


def test_a_member_with_another_use_is_no_batch_sum():
    T = 6
    g, copies, loss, feeds, W, b = _chain(T, extra=3.0)  # loss@t3 also feeds 3 * loss@t3
    plan = compile_plan(g, [loss])
    total = g["loss"]
    assert total.index not in plan.batch_sums and not plan.batch_sums
    assert all(s[0] != BATCH_SUM for s in plan.steps)
    acts = g.forward(feeds)
    grads = acts.backward(loss, seed=2.5)
    weights = [4.0 if t == 3 else 1.0 for t in range(1, T + 1)]
    ref_loss, _, dW, dz, dh0, dy = _chain_bptt(W, b, feeds, T, weights=weights, scale=2.5)
    np.testing.assert_allclose(float(acts[loss]), ref_loss, rtol=1e-12)
    for t in range(1, T + 1):
        np.testing.assert_allclose(float(grads[g[f"loss@t{t}"]]), 2.5 * weights[t - 1], rtol=1e-15)
        np.testing.assert_allclose(grads[g[f"pre@t{t}"]], dz[t - 1], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grads.constrained()[copies[0]], dW, rtol=1e-12)
    np.testing.assert_allclose(grads["h0"], dh0, rtol=1e-12, atol=1e-14)


def test_batch_sum_when_its_batch_cannot_stack():
    # per-step errors of inputs fed with different numbers of rows: the batch runs member by
    # member, the BATCH_SUM step then adds them one by one and passes the seed on plainly
    g = tg.Graph("ragged sum")
    xs, ys, terms = [], [], []
    for t in range(4):
        xs.append(g.input(f"x{t}", (None, 2)))
        ys.append(g.input(f"y{t}", (None, 2)))
        terms.append(tg.squared_error(tg.tanh(xs[-1], name=f"h{t}"), ys[-1], name=f"e{t}"))
    loss = tg.add_n(terms, name="loss")
    rng = np.random.default_rng(4)
    feeds = {}
    for t in range(4):
        n = t + 1 if t != 3 else 1
        feeds[f"x{t}"], feeds[f"y{t}"] = rng.standard_normal((n, 2)), rng.standard_normal((n, 2))
    plan = compile_plan(g, [loss])
    assert loss.index in plan.batch_sums
    acts = g.forward(feeds)
    assert plan.batch_sums[loss.index].id not in acts._bstore  # really the unstacked case
    want = sum(0.5 * np.sum((np.tanh(feeds[f"x{t}"]) - feeds[f"y{t}"]) ** 2) for t in range(4))
    np.testing.assert_allclose(float(acts[loss]), want, rtol=1e-13)
    grads = acts.backward(loss, seed=2.5)
    for t in range(4):
        h = np.tanh(feeds[f"x{t}"])
        assert float(grads[g[f"e{t}"]]) == 2.5
        np.testing.assert_allclose(grads[xs[t]], 2.5 * (h - feeds[f"y{t}"]) * (1 - h * h), rtol=1e-13)
        np.testing.assert_allclose(grads[ys[t]], -2.5 * (h - feeds[f"y{t}"]), rtol=1e-13)


# ============================================================ 6. rnn: stacked feeds


def _rnn(T=6, B=3, I=2, H=4, seed=0):
    net = tanh_rnn("rows", I, H)
    rng = np.random.default_rng(seed)
    for k, w in net.weights.items():
        w[...] = 0.5 * rng.standard_normal(w.shape)
    X = rng.standard_normal((T, B, I))
    Y = 0.5 * rng.standard_normal((T, B, I))
    return net, X, Y


def _rnn_run(T=6):
    net, X, Y = _rnn(T)
    ff = net.unroll(T)
    out = ff.run([rnn.Clamp("x", X)], [rnn.Target("y", Y, steps="all")])
    return net, X, Y, ff, out


def _per_node_feeds(em, X, Y, B):
    """Every input node fed its own row: the one clamp record X, the one target record Y."""
    return _node_by_node(em, [(None, None, None, X)], [(None, None, None, Y, None)], B)


def _node_by_node(em, clamps, targets, B):
    """Every input node fed its own row of its record (resolved clamps and targets: values
    at [3], a target's mask at [4]), keyed by node: the feeds the engine got before records
    were fed whole."""
    feeds = {em.batch_node: np.empty((B, 0))} if em.batch_node is not None else {}
    for node, kind, r, pos in em.feeds:
        feeds[node] = (clamps[r][3] if kind == "clamp" else targets[r][3] if kind == "target" else targets[r][4])[pos]
    return feeds


def test_rnn_run_feeds_records_stacked_and_reads_them_in_place():
    T = 6
    net, X, Y, ff, out = _rnn_run(T)
    em, g, acts = out.emitted, out.graph, out.acts
    clamps, tgts, batch = rnn.data.resolve_all(net, T, [rnn.Clamp("x", X)], [rnn.Target("y", Y, steps="all")])
    fd = em.feed_dict(clamps, tgts, batch)
    xs = tuple(g[f"x@t{t}"].index for t in range(1, T + 1))
    assert xs in fd and fd[xs] is X  # the user's array itself, keyed by the tuple of its inputs
    assert sum(type(k) is tuple for k in fd) == 2  # the clamp record and the target record
    # the batch of input projections reads X itself as its stacked operand
    bid = acts.plan.member_of[g["in[x->h]@t1"].index][0]
    assert acts.plan.batches[bid].inputs[0] == ("stack", list(xs))
    operand = acts._bstore[bid][1][0]
    assert operand is X
    # nothing else reads the x@t: their values are made when asked, as rows of X
    assert all(acts._values[i] is None for i in xs)
    for t in range(1, T + 1):
        assert acts[g[f"x@t{t}"]].base is X
        np.testing.assert_array_equal(acts[g[f"x@t{t}"]], X[t - 1])
    # the states are rows of one buffer
    hs = [acts[g[f"h@t{t}"]] for t in range(1, T + 1)]
    assert all(h.base is hs[0].base is not None for h in hs)
    # against hand BPTT
    ref_loss, rhs, rgrads, dX, _ = tanh_rnn_bptt(net.weights, X, Y)
    np.testing.assert_allclose(out.loss, ref_loss, rtol=1e-12)
    for t in range(T):
        np.testing.assert_allclose(hs[t], rhs[t], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(out.grads[g[f"x@t{t + 1}"]], dX[t], rtol=1e-12, atol=1e-14)
    for k, v in out.weight_grads.items():
        np.testing.assert_allclose(v, rgrads[k], rtol=1e-12, atol=1e-14, err_msg=k)


def test_per_node_feeds_give_identical_results():
    T = 6
    net, X, Y, ff, out = _rnn_run(T)
    em, g = out.emitted, out.graph
    acts = run_forward(g, _per_node_feeds(em, X, Y, X.shape[1]), trusted=True)
    grads = acts.backward(em.loss)
    # the same numbers, but the projections' operand is a stacked copy this time
    bid = acts.plan.member_of[g["in[x->h]@t1"].index][0]
    assert not np.shares_memory(acts._bstore[bid][1][0], X)
    for n, v in out.acts.items():
        np.testing.assert_array_equal(acts[n], v, err_msg=n.name)
    for n in g.nodes:
        if out.grads.reached(n) or grads.reached(n):
            np.testing.assert_array_equal(grads[n], out.grads[n], err_msg=n.name)
    stacked, plain = out.grads.constrained(), grads.constrained()
    for p in g.params:
        np.testing.assert_array_equal(plain[p], stacked[p], err_msg=p.name)


def test_a_batch_that_runs_member_by_member_reads_the_rows_of_its_fed_array(monkeypatch):
    # the batch of input projections is the only reader of the x@t, fed as one array; when
    # it cannot run stacked (here: refused), its members run one by one on X's rows
    T = 6
    net, X, Y, ff, out = _rnn_run(T)
    g = out.graph
    xs = [g[f"x@t{t}"].index for t in range(1, T + 1)]
    bid = out.acts.plan.member_of[g["in[x->h]@t1"].index][0]
    real = AD._forward_batch
    monkeypatch.setattr(AD, "_forward_batch", lambda b, *a, **k: False if b.id == bid else real(b, *a, **k))
    alone = ff.run([rnn.Clamp("x", X)], [rnn.Target("y", Y, steps="all")])
    assert bid not in alone.acts._bstore
    assert all(alone.acts._values[i].base is X for i in xs)  # stored before the members ran
    for n, v in out.acts.items():  # (one product per step instead of one for all: rounding only)
        np.testing.assert_allclose(alone.acts[n], v, rtol=1e-13, atol=1e-15, err_msg=n.name)
    for n in g.nodes:
        if out.grads.reached(n):
            np.testing.assert_allclose(alone.grads[n], out.grads[n], rtol=1e-12, atol=1e-14, err_msg=n.name)


def test_check_finite_runs_store_the_inputs_fed_whole_at_once():
    T = 5
    net, X, Y, ff, out = _rnn_run(T)
    g = out.graph
    xs = [g[f"x@t{t}"].index for t in range(1, T + 1)]
    assert all(out.acts._values[i] is None for i in xs)  # the fast run: made when asked
    checked = ff.run([rnn.Clamp("x", X)], [rnn.Target("y", Y, steps="all")], check_finite=True)
    assert all(checked.acts._values[i] is not None and checked.acts._values[i].base is X for i in xs)
    for t in range(1, T + 1):
        np.testing.assert_array_equal(checked.grads[g[f"x@t{t}"]], out.grads[g[f"x@t{t}"]])
    bad = X.copy()
    bad[2, 1, 0] = np.nan  # (the data layer refuses it first; the graph check names the node)
    fd = out.emitted.feed_dict(*rnn.data.resolve_all(net, T, [rnn.Clamp("x", X)], [rnn.Target("y", Y, steps="all")]))
    fd[tuple(xs)] = bad
    with pytest.raises(tg.NonFiniteError, match=re.escape("x@t3")):
        run_forward(g, fd, check_finite=True, trusted=True)


def test_trusted_feeds_name_a_missing_input():
    T = 5
    net, X, Y, ff, out = _rnn_run(T)
    em, g = out.emitted, out.graph
    feeds = _per_node_feeds(em, X, Y, X.shape[1])
    del feeds[g["x@t3"]]
    with pytest.raises(tg.FeedError, match=re.escape("x@t3")):
        run_forward(g, feeds, trusted=True)
    # a record fed stacked, but without the targets
    clamps, tgts, batch = rnn.data.resolve_all(net, T, [rnn.Clamp("x", X)], [rnn.Target("y", Y, steps="all")])
    fd = em.feed_dict(clamps, tgts, batch)
    ys = next(k for k in fd if type(k) is tuple and g.nodes[k[0]].name.startswith("target"))
    del fd[ys]
    with pytest.raises(tg.FeedError, match=re.escape("target[y@t1]")):
        run_forward(g, fd, trusted=True)
    # a stacked record one row short: its last input is missing
    fd = em.feed_dict(clamps, tgts, batch)
    xs = tuple(g[f"x@t{t}"].index for t in range(1, T + 1))
    fd[xs] = X[:-1]
    with pytest.raises(tg.FeedError, match=re.escape(f"x@t{T}")):
        run_forward(g, fd, trusted=True)


def test_trusted_feeds_of_an_input_fed_twice_and_a_missing_one():
    # a record fed whole and one of its inputs fed again on its own: its own feed wins, the
    # others read their rows; a missing input is still named (the two must not cancel out)
    g = tg.Graph("twice")
    W = g.param("W", np.ones((2, 2)))
    xs = [g.input(f"x{t}", (None, 2)) for t in range(3)]
    c = g.input("c", (None, 2))
    ys = [tg.matmul(x, W, name=f"y{t}") for t, x in enumerate(xs)]
    loss = tg.add_n([tg.sum(y) for y in ys] + [tg.sum(c)], name="loss")
    X = np.ones((3, 4, 2))
    key = tuple(x.index for x in xs)
    for order in ("record first", "node first"):
        feeds = {key: X, xs[0]: X[0] * 2, c: np.ones((4, 2))}
        if order == "node first":
            feeds = {xs[0]: X[0] * 2, key: X, c: np.ones((4, 2))}
        acts = run_forward(g, feeds, trusted=True)
        np.testing.assert_array_equal(acts[xs[0]], X[0] * 2)
        assert acts[xs[1]].base is X
        assert float(acts[loss]) == 2 * 16 + 16 + 16 + 8
        del feeds[c]
        with pytest.raises(tg.FeedError, match=re.escape("['c']")):
            run_forward(g, feeds, trusted=True)


def test_rnn_loss_is_a_batch_sum():
    T = 6
    net, X, Y, ff, out = _rnn_run(T)
    em, g = out.emitted, out.graph
    plan = compile_plan(g, [em.loss])
    assert em.loss.index in plan.batch_sums
    members = plan.batch_sums[em.loss.index].members
    assert [g.nodes[m].name for m in members] == [f"loss[y@t{t}]" for t in range(1, T + 1)]
    acts = run_forward(g, _per_node_feeds(em, X, Y, X.shape[1]), outputs=[em.loss], trusted=True)
    np.testing.assert_allclose(float(acts[em.loss]), sum(float(acts[g.nodes[m]]) for m in members), rtol=1e-13)
    grads = acts.backward(em.loss, seed=2.5)
    assert [float(grads[g.nodes[m]]) for m in members] == [2.5] * T
    _, _, rgrads, _, _ = tanh_rnn_bptt(net.weights, X, Y)
    con = grads.constrained()
    for k, copies in em.copies.items():
        np.testing.assert_allclose(con[copies[0]], 2.5 * rgrads[k], rtol=1e-12, atol=1e-14, err_msg=k)


# ============================================================ 7. ops._matmul: stacked @ shared


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["contiguous", "transposed a", "transposed b", "4-d a"])
def test_matmul_of_stacked_members_on_one_weight(dtype, layout):
    rng = np.random.default_rng(9)
    if layout == "transposed a":
        a = rng.standard_normal((5, 3, 4)).astype(dtype).transpose(2, 1, 0)  # (4, 3, 5), not contiguous
        assert not a.flags.c_contiguous
    elif layout == "4-d a":
        a = rng.standard_normal((2, 4, 3, 5)).astype(dtype)
    else:
        a = rng.standard_normal((4, 3, 5)).astype(dtype)
    b = rng.standard_normal((5, 2)).astype(dtype)
    if layout == "transposed b":
        b = np.ascontiguousarray(b.T).T
        assert not b.flags.c_contiguous
    got = ops._matmul(a, b)
    want = np.matmul(a, b)
    assert got.shape == want.shape and got.dtype == want.dtype == dtype
    tol = 1e-5 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    assert not np.shares_memory(got, a) and not np.shares_memory(got, b)


def test_matmul_of_mixed_dtypes_promotes_like_numpy():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((3, 2, 4)).astype(np.float32), rng.standard_normal((4, 3))
    got = ops._matmul(a, b)
    assert got.dtype == np.matmul(a, b).dtype == np.float64
    np.testing.assert_allclose(got, np.matmul(a, b), rtol=1e-6)


def test_matmul_of_stacked_members_with_no_inner_dimension():  # (reshape(-1, 0) used to fail)
    a, b = np.ones((2, 3, 0)), np.ones((0, 4))
    np.testing.assert_array_equal(ops._matmul(a, b), np.matmul(a, b))


def test_gradients_through_a_3d_by_2d_matmul():
    rng = np.random.default_rng(5)
    g = tg.Graph("3d @ 2d")
    x = g.input("x", (None, 4, 3))
    W = g.param("W", 0.5 * rng.standard_normal((3, 2)))
    V = g.param("V", 0.5 * rng.standard_normal((2, 3)))
    h = tg.tanh(tg.matmul(x, W), name="h")
    loss = tg.sum(tg.matmul(h, V) * tg.matmul(h, V), name="loss")
    xv = rng.standard_normal((3, 4, 5)).transpose(2, 1, 0)[:2]  # (2, 4, 3), not contiguous
    assert not xv.flags.c_contiguous
    assert tg.check_gradients(g, loss, {"x": xv}, inputs=True) < 1e-6
    # and against numpy, fed the non-contiguous view itself
    grads = g.forward({"x": xv}).backward(loss)
    hv = np.tanh(np.matmul(xv, W.value))
    out = np.matmul(hv, V.value)
    dh = np.matmul(2 * out, V.value.T)
    dz = dh * (1 - hv * hv)
    np.testing.assert_allclose(grads[W], np.einsum("bti,btj->ij", xv, dz), rtol=1e-12)
    np.testing.assert_allclose(grads[V], np.einsum("bti,btj->ij", hv, 2 * out), rtol=1e-12)
    np.testing.assert_allclose(grads["x"], np.matmul(dz, W.value.T), rtol=1e-12)


# check_gradients used to perturb arr.reshape(-1), a copy for a non-contiguous feed
def test_check_gradients_accepts_a_non_contiguous_feed():
    g = tg.Graph("fd")
    x = g.input("x", (None, 3))
    loss = tg.sum(tg.tanh(x) * tg.tanh(x), name="loss")
    xv = np.linspace(-1, 1, 12).reshape(3, 4).T[:, :3]  # (4, 3), not C-contiguous
    assert not xv.flags.c_contiguous
    assert tg.check_gradients(g, loss, {"x": xv}, inputs=True) < 1e-6


def test_float32_rnn_keeps_its_rows_in_float32():
    T = 6
    net, X, Y = _rnn(T)
    ref_loss, rhs, rgrads, dX, _ = tanh_rnn_bptt({k: v.copy() for k, v in net.weights.items()}, X, Y)
    for k in list(net.weights):
        net.weights[k] = net.weights[k].astype(np.float32)  # before unroll: the copies use these
    X32, Y32 = X.astype(np.float32), Y.astype(np.float32)
    out = net.unroll(T).run([rnn.Clamp("x", X32)], [rnn.Target("y", Y32, steps="all")])
    g, acts = out.graph, out.acts
    hs = [acts[g[f"h@t{t}"]] for t in range(1, T + 1)]
    assert hs[0].base is not None and hs[0].base.dtype == np.float32
    assert all(h.base is hs[0].base for h in hs)
    bid = acts.plan.member_of[g["in[x->h]@t1"].index][0]
    assert acts._bstore[bid][1][0] is X32  # read as fed, no copy
    dpre = [out.grads[g[f"net[h]@t{t}"]] for t in range(1, T + 1)]
    assert all(d.dtype == np.float32 for d in dpre)
    assert dpre[0].base is not None and all(d.base is dpre[0].base for d in dpre)  # the products' rows
    np.testing.assert_allclose(out.loss, ref_loss, rtol=1e-5)
    for t in range(T):
        np.testing.assert_allclose(hs[t], rhs[t], rtol=1e-4, atol=1e-5)
    for k, v in out.weight_grads.items():
        assert v.dtype == np.float32, k
        np.testing.assert_allclose(v, rgrads[k], rtol=1e-4, atol=1e-4, err_msg=k)


# ============================================================ 8. lazy batch members


def test_members_only_batches_read_get_their_values_when_asked():
    """y_t = x_t @ W is read only by the tanh batch: its members' values are made on demand,
    equal the plain product, and a backward pass seeded at one of them is right."""
    rng = np.random.default_rng(3)
    g = tg.Graph("lazy")
    W = g.param("W", rng.standard_normal((3, 2)))
    xs = [g.input(f"x{t}", (None, 3)) for t in range(4)]
    ys = [tg.matmul(x, W, name=f"y{t}") for t, x in enumerate(xs)]
    zs = [tg.tanh(y, name=f"z{t}") for t, y in enumerate(ys)]
    feeds = {f"x{t}": rng.standard_normal((2, 3)) for t in range(4)}
    acts = g.forward(feeds)
    plan = AD.compile_plan(g)
    lazy = {plan.batches[b].op.name: plan.batches[b].lazy for b in plan.batches}
    assert lazy == {"matmul": True, "tanh": True}  # (nothing reads the z's: nobody needs their rows either)
    assert acts._values[ys[2].index] is None  # not made by the forward run
    for t in range(4):
        np.testing.assert_array_equal(acts[ys[t]], feeds[f"x{t}"] @ W.value)
    assert dict(acts.items())[ys[3]] is acts[ys[3]]
    seed = rng.standard_normal((2, 2))
    gr = g.forward(feeds).backward(ys[1], seed=seed)  # (a fresh run: its other members have no rows yet)
    np.testing.assert_array_equal(gr[ys[1]], seed)
    np.testing.assert_array_equal(gr[ys[0]], np.zeros((2, 2)))
    np.testing.assert_allclose(gr[W], feeds["x1"].T @ seed, rtol=1e-13)
    gr = acts.backward(zs[1], seed=seed)
    np.testing.assert_allclose(gr[ys[1]], seed * (1 - np.tanh(feeds["x1"] @ W.value) ** 2), rtol=1e-13)


@settings(max_examples=25, deadline=None)
@given(T=st.integers(2, 7), B=st.integers(1, 3), seed=st.integers(0, 2**16),
       clamp_steps=st.sampled_from(["all", "some", "initial+all"]),
       clamp_units=st.sampled_from([None, [1], [0, 1]]),
       target_steps=st.sampled_from(["all", "final", "last2", "odd"]),
       masked=st.booleans())
def test_records_fed_whole_equal_the_same_data_fed_node_by_node(T, B, seed, clamp_steps, clamp_units,
                                                                 target_steps, masked):
    # whatever the records look like (some steps, some units, masks), feeding each record as
    # one array (read by a batch, rows made when asked) gives the bits of feeding every
    # input node its own row
    net = tanh_rnn("whole", 2, 3)
    rng = np.random.default_rng(seed)
    steps = {"all": "all", "some": [t for t in range(1, T + 1) if t % 2], "initial+all": "all"}[clamp_steps]
    n_steps = T if steps == "all" else len(steps)
    n_units = 2 if clamp_units is None else len(clamp_units)
    clamps = [rnn.Clamp("x", rng.standard_normal((n_steps, B, n_units)), steps=steps, units=clamp_units)]
    if clamp_steps == "initial+all":
        clamps.append(rnn.Clamp("h", rng.standard_normal((1, B, 3)), steps=[0]))
    tsteps = {"all": "all", "final": "final", "last2": ("last", min(2, T)),
              "odd": [t for t in range(1, T + 1) if t % 2]}[target_steps]
    k = len(rnn.data.resolve_steps(tsteps, T, "t"))
    mask = (rng.random((k, B, 2)) > 0.3).astype(float) if masked else None
    targets = [rnn.Target("y", rng.standard_normal((k, B, 2)), steps=tsteps, mask=mask)]
    ff = net.unroll(T)
    out = ff.run(clamps, targets)
    em, g = out.emitted, out.graph
    if clamp_steps != "some" and clamp_units is None:  # the x record is the projections' operand
        assert P.FED in out.acts._bstore
    cl, tg_, batch = rnn.data.resolve_all(net, T, clamps, targets)
    acts = run_forward(g, _node_by_node(em, cl, tg_, batch), trusted=True)
    grads = acts.backward(em.loss)
    for n in g.nodes:
        if acts.value(n.index) is not None or out.acts.value(n.index) is not None:
            np.testing.assert_array_equal(out.acts[n], acts[n], err_msg=n.name)
        if grads.reached(n) or out.grads.reached(n):
            np.testing.assert_array_equal(out.grads[n], grads[n], err_msg="d/d " + n.name)
