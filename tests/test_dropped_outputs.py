"""Batch outputs let go after forward (Plan.droppable) and the sources kept for remaking
values (Plan.kept_sources).

An unrolled net's input projections P_t = x_t @ U are one batched matmul whose members only
the per-step add_n nodes read, and forward has added them in: a fast run then lets that
(T, B, H) array go, backward reads a stand-in of its shape (matmul's VJPs never read the
output), and ``Activations.value`` makes the whole batch again, by the same call on the
same operands, when anyone asks for a member.  The parameters such remakes read (U here;
the recurrent weight and the bias for a lean chain's sums and products) are copied by the
run, so a value asked for after an optimizer step is still the run's.

Every claim is checked against the same run with nothing dropped (``_drop_output`` a no-op),
bitwise."""

import gc
import weakref
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinygraph as tg
import tinygraph.autodiff as AD
from tinygraph.plan import DROPPED, KEPT

from test_lean_chains import _assert_ran_lean, _assert_same_runs, _eq, _net, _run, lean_disabled


@pytest.fixture(autouse=True)
def drop_small_outputs(monkeypatch):
    """These nets are small: let their outputs go too (by default only those of 64 KiB or more)."""
    monkeypatch.setattr(AD, "DROP_MIN_BYTES", 0)


@contextmanager
def drop_disabled():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(AD, "_drop_output", lambda *args, **kwargs: None)
        yield


def _x_batch(acts):
    (bid,) = acts.plan.droppable
    return acts.plan.batches[bid]


def _dropped_and_kept(T, B, dtype=np.float64, I=2, H=4, seed=0, lean=True):
    net, X, Y = _net(T, B, I=I, H=H, dtype=dtype, seed=seed)
    ff = net.unroll(T)
    with (lean_disabled() if not lean else _nothing()):
        dropped = _run(ff, X, Y)
        with drop_disabled():
            kept = _run(ff, X, Y)
    return net, ff, X, Y, dropped, kept


@contextmanager
def _nothing():
    yield


# ============================================================ what is let go, and what stands in


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "chain-not-lean"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_the_input_projections_are_let_go_and_made_again_bitwise(lean, dtype):
    T, B = 9, 3
    net, ff, X, Y, dropped, kept = _dropped_and_kept(T, B, dtype, lean=lean)
    acts, b = dropped.acts, _x_batch(dropped.acts)
    assert [acts.graph.nodes[m].name for m in b.members] == [f"in[x->h]@t{t}" for t in range(1, T + 1)]
    assert acts._bstore[DROPPED] == {b.id: True}
    assert DROPPED not in kept.acts._bstore
    stand_in = acts._bstore[b.id][0]
    assert stand_in.shape == (T, B, 4) and stand_in.dtype == dtype and stand_in.strides == (0, 0, 0)
    for m in b.members:  # the members' values hold no memory until someone asks
        assert acts._values[m].strides == (0, 0) and acts._values[m].shape == (B, 4)
    if lean:
        _assert_ran_lean(acts)
    _assert_same_runs(dropped, kept)  # every value (members remade), gradient and weight gradient
    assert DROPPED not in acts._bstore or not acts._bstore[DROPPED]  # remade once, then kept
    out = acts._bstore[b.id][0]
    for k, m in enumerate(b.members):
        assert np.shares_memory(acts._values[m], out[k]) and acts._values[m].shape == out[k].shape


def test_the_dropped_array_is_freed():
    net, X, Y = _net(7, 2)
    ff = net.unroll(7)
    first = _run(ff, X, Y, backward=False)
    b = _x_batch(first.acts)
    made = []
    real = b.forward

    def spy(*args):
        out = real(*args)
        made.append(weakref.ref(out))
        return out

    b.forward = spy  # (the plan is the graph's cached one: the next run uses this batch object)
    try:
        out = _run(ff, X, Y)
        gc.collect()
        assert len(made) == 1 and made[0]() is None  # nothing holds the (T, B, H) array any more
        out.acts[out.graph["in[x->h]@t3"]]
        assert len(made) == 2 and made[1]() is not None  # made again, and kept by the run
    finally:
        del b.forward


# ============================================================ after an optimizer step


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "chain-not-lean"])
def test_values_made_after_an_optimizer_step_are_the_runs(lean):
    # the remade projections, sums and products read the run's copies of U, W and the bias,
    # not the arrays the step changed in place
    T, B = 8, 2
    net, X, Y = _net(T, B)
    ff = net.unroll(T)
    with (lean_disabled() if not lean else _nothing()):
        out = _run(ff, X, Y)
    with drop_disabled(), lean_disabled():
        ref = _run(ff, X, Y)
    ref_values = {n.index: np.array(v) for n, v in ref.acts.items()}
    ref_copy_grads = {c.name: np.array(ref.grads[c]) for name in net.weights for c in ff.copies(name)}
    before = {k: w.copy() for k, w in net.weights.items()}
    tg.SGD(out.graph.params, lr=0.3).step(out.grads)
    assert not np.array_equal(before["x->h"], net.weights["x->h"])  # the step moved U in place
    for n, v in out.acts.items():
        if n.op not in ("param", "const"):  # (a param's value is its live array)
            _eq(v, ref_values[n.index], n.name)
    for name in net.weights:
        for c in ff.copies(name):
            _eq(out.grads[c], ref_copy_grads[c.name], "copy " + c.name)


def test_the_kept_copies_are_one_per_weight():
    net, X, Y = _net(10, 2)
    ff = net.unroll(10)
    out = _run(ff, X, Y)
    plan = out.acts.plan
    kept = out.acts._bstore[KEPT]
    names = {out.graph.nodes[j].name.split("@")[0] for j in plan.kept_sources.values()}
    assert names == {"W[x->h]", "W[h->h]", "b[h]"}  # what remakes read: U, W and the bias
    assert kept.keys() == plan.kept_sources.keys()  # one copy per tie, whichever copy reads it
    for key, j in plan.kept_sources.items():
        _eq(kept[key], out.acts._values[j], "kept " + out.graph.nodes[j].name)
        assert not np.shares_memory(kept[key], out.acts._values[j])


# ============================================================ when nothing is dropped


def test_nothing_is_dropped_when_the_copies_would_not_be_much_smaller():
    # P is (T, B, H) = (2, 1, 2) here, U is (I, H) = (6, 2): copying U to drop P would cost more
    net, ff, X, Y, dropped, kept = _dropped_and_kept(2, 1, I=6, H=2)
    assert dropped.acts.plan.droppable  # it could be dropped ...
    assert DROPPED not in dropped.acts._bstore  # ... but is not
    _assert_same_runs(dropped, kept)


def test_small_outputs_are_kept_by_default(monkeypatch):
    monkeypatch.setattr(AD, "DROP_MIN_BYTES", 1 << 16)
    for T, B, H, dropped in [(16, 4, 8, False), (64, 8, 32, True)]:  # 4 KiB, 64 KiB of float64
        net, X, Y = _net(T, B, H=H)
        out = _run(net.unroll(T), X, Y)
        assert (DROPPED in out.acts._bstore) == dropped, (T, B, H)


def test_a_member_read_by_another_node_keeps_the_output():
    T = 6
    net, X, Y = _net(T, 2)
    ff = net.unroll(T)
    out = _run(ff, X, Y)
    assert out.acts.plan.droppable
    g = out.graph
    tg.sum(g["in[x->h]@t3"], name="extra")  # a second reader of one member
    again = _run(ff, X, Y)
    assert again.graph is g and again.acts.plan.droppable == ()
    assert DROPPED not in again.acts._bstore
    np.testing.assert_array_equal(again.acts[g["extra"]], np.sum(again.acts[g["in[x->h]@t3"]]))


def test_check_finite_runs_keep_every_output():
    net, X, Y = _net(6, 2)
    ff = net.unroll(6)
    out = _run(ff, X, Y, check_finite=True)
    assert DROPPED not in out.acts._bstore and KEPT not in out.acts._bstore
    with drop_disabled():
        ref = _run(ff, X, Y)
    _assert_same_runs(out, ref)


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "chain-not-lean"])
def test_a_checked_backward_after_dropping_agrees(lean):
    net, X, Y = _net(6, 2)
    ff = net.unroll(6)
    with (lean_disabled() if not lean else _nothing()):
        out = _run(ff, X, Y, backward=False)
    assert out.acts._bstore[DROPPED]
    grads = out.acts.backward(out.emitted.loss, check_finite=True)  # (the generic loops)
    with drop_disabled():
        ref = _run(ff, X, Y)
    for n in out.acts.plan.order:
        _eq(grads[n], ref.grads[n], "d/d " + n.name)


# ============================================================ property: random small shapes


@settings(max_examples=15, deadline=None)
@given(T=st.integers(3, 14), B=st.integers(1, 4), H=st.integers(1, 5), I=st.integers(1, 3),
       dtype=st.sampled_from([np.float64, np.float32]), lean=st.booleans(), seed=st.integers(0, 2**16))
def test_dropping_changes_no_value_or_gradient_for_random_shapes(T, B, H, I, dtype, lean, seed):
    net, ff, X, Y, dropped, kept = _dropped_and_kept(T, B, dtype, I=I, H=H, seed=seed, lean=lean)
    assert (DROPPED in dropped.acts._bstore) == (T * B * H > 2 * I * H)
    _assert_same_runs(dropped, kept)
