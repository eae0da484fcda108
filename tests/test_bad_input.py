"""Every bad input raises a tinygraph.GraphError subclass whose message names the
node(s) and the shapes involved."""

import warnings

import numpy as np
import pytest

import tinygraph as tg
from tinygraph import ops as tg_ops


def raises(cls, *fragments):
    """pytest.raises(cls) that also checks the class is a GraphError and the message holds every fragment."""
    assert issubclass(cls, tg.GraphError)
    return _Raises(cls, fragments)


class _Raises:
    def __init__(self, cls, fragments):
        self.cls = cls
        self.fragments = fragments
        self.ctx = pytest.raises(cls)

    def __enter__(self):
        self.info = self.ctx.__enter__()
        return self.info

    def __exit__(self, *exc):
        suppressed = self.ctx.__exit__(*exc)
        err = self.info.value
        assert isinstance(err, tg.GraphError), f"{type(err).__name__} is not a GraphError"
        msg = str(err)
        for frag in self.fragments:
            assert frag in msg, f"message {msg!r} does not mention {frag!r}"
        return suppressed


# ----------------------------------------------------------------- build-time shape errors

def test_matmul_shape_mismatch_at_build_time():
    g = tg.Graph("net")
    x = g.input("x", (None, 3))
    W = g.param("W", np.ones((4, 5)))
    n_before = len(g)
    with raises(tg.ShapeError, "'x'", "'W'", "(None, 3)", "(4, 5)", "matmul"):
        x @ W
    assert len(g) == n_before  # the failed node was not added
    with raises(tg.ShapeError, "'proj'", "(None, 3)", "(4, 5)"):
        tg.matmul(x, W, name="proj")
    assert "proj" not in g
    assert issubclass(tg.ShapeError, ValueError)


def test_matmul_batch_mismatch_and_scalar_operand():
    g = tg.Graph()
    a = g.input("a", (2, 3, 4))
    b = g.input("b", (5, 4, 6))
    with raises(tg.ShapeError, "(2, 3, 4)", "(5, 4, 6)"):
        a @ b
    s = g.param("s", np.array(2.0))
    with raises(tg.ShapeError, "()"):
        s @ a


def test_broadcast_mismatch_at_build_time():
    g = tg.Graph()
    a = g.input("a", (None, 3, 4))
    b = g.param("b", np.ones(5))
    for build in (lambda: a + b, lambda: a - b, lambda: b * a, lambda: a / b, lambda: tg.squared_error(a, b)):
        with raises(tg.ShapeError, "'a'", "'b'", "(None, 3, 4)", "(5,)"):
            build()
    c = g.param("c", np.ones((2, 1)))
    d = g.param("d", np.ones((3, 1)))
    with raises(tg.ShapeError, "(2, 1)", "(3, 1)"):
        c + d


@pytest.mark.parametrize("build,fragments", [
    (lambda x: tg.concat([x, tg.transpose(x)], axis=0), ("(3, 4)", "(4, 3)")),
    (lambda x: tg.reshape(x, (5, -1)), ("(3, 4)", "(5, -1)")),
    (lambda x: tg.reshape(x, (5, 2)), ("(3, 4)",)),
    (lambda x: tg.transpose(x, (0, 0)), ("(0, 0)",)),
    (lambda x: tg.sum(x, axis=2), ("axis 2",)),
    (lambda x: tg.mean(x, axis=(0, 0)), ("(3, 4)",)),
    (lambda x: tg.softmax(x, axis=-3), ("axis -3",)),
    (lambda x: x[5], ("(3, 4)",)),
    (lambda x: x[0, 0, 0], ("(3, 4)",)),
    (lambda x: tg.cross_entropy(x, np.zeros((2, 2, 2))), ("(3, 4)", "(2, 2, 2)")),
])
def test_other_build_time_shape_errors(build, fragments):
    g = tg.Graph()
    x = g.input("x", (3, 4))
    with raises(tg.ShapeError, "'x'", *fragments):
        build(x)


def test_bad_index_kinds():
    g = tg.Graph()
    x = g.input("x", (3, 4))
    with raises(tg.NodeTypeError, "boolean"):
        x[np.array([True, False, True])]
    with raises(tg.NodeTypeError, "float"):
        x[np.array([0.5, 1.0])]
    with raises(tg.NodeTypeError, "node"):
        x[g.input("i", ())]


def test_input_with_bad_shape():
    g = tg.Graph()
    with raises(tg.ShapeError, "'x'", "-2"):
        g.input("x", (None, -2))
    with raises(tg.ShapeError, "'y'"):
        g.input("y", 3)


# ----------------------------------------------------------------- feeds

def _two_input_graph():
    g = tg.Graph("feeds")
    x = g.input("x", (None, 3))
    y = g.input("y", (None, 4))
    W = g.param("W", np.ones((3, 4)))
    xw = tg.matmul(x, W, name="xw")
    loss = tg.sum((xw - y) ** 2)
    return g, x, y, W, loss


def test_missing_feed():
    g, x, y, W, loss = _two_input_graph()
    with raises(tg.FeedError, "'y'", "(None, 4)", "missing"):
        g.forward({"x": np.ones((2, 3))})
    with raises(tg.FeedError, "'x'", "(None, 3)"):
        g.forward()
    # only what the requested outputs need is required
    acts = g.forward({"x": np.ones((2, 3))}, outputs=[g["xw"]])
    np.testing.assert_array_equal(acts[g["xw"]], np.full((2, 4), 3.0))


def test_unknown_feed_name():
    g, x, y, W, loss = _two_input_graph()
    with raises(tg.FeedError, "'z'", "'x'", "'y'"):
        g.forward({"x": np.ones((2, 3)), "y": np.ones((2, 4)), "z": np.ones(3)})
    with raises(tg.FeedError, "'W'", "param"):
        g.forward({"x": np.ones((2, 3)), "y": np.ones((2, 4)), "W": np.ones((3, 4))})
    with raises(tg.FeedError):
        g.forward({3: np.ones(3)})
    with raises(tg.FeedError):
        g.forward([("x", np.ones((2, 3)))])


def test_feed_with_wrong_rank():
    g, x, y, W, loss = _two_input_graph()
    with raises(tg.FeedError, "'x'", "rank 2", "(None, 3)", "(6,)"):
        g.forward({"x": np.ones(6), "y": np.ones((2, 4))})
    with raises(tg.FeedError, "'y'", "(None, 4)", "(2, 1, 4)"):
        g.forward({"x": np.ones((2, 3)), "y": np.ones((2, 1, 4))})


def test_feed_with_wrong_size_on_fixed_axis():
    g, x, y, W, loss = _two_input_graph()
    with raises(tg.FeedError, "'x'", "(None, 3)", "(2, 5)", "axis 1"):
        g.forward({"x": np.ones((2, 5)), "y": np.ones((2, 4))})


def test_feed_errors_come_before_any_computation():
    calls = []
    name = "test_counting_identity"
    tg_ops.defop(name, lambda v: (calls.append(1), v)[1], (lambda gr, out, v: gr,), lambda s: s)
    try:
        g = tg.Graph()
        x = g.input("x", (2,))
        y = g.input("y", (3,))
        tg_ops.apply(name, (x,))
        tg.sum(y)
        with raises(tg.FeedError, "'y'"):
            g.forward({"x": np.ones(2), "y": np.ones(4)})
        assert calls == []
    finally:
        tg_ops.REGISTRY.pop(name, None)


def test_feed_not_numbers():
    g, x, y, W, loss = _two_input_graph()
    with raises(tg.FeedError, "'x'"):
        g.forward({"x": np.array([["a", "b", "c"]]), "y": np.ones((1, 4))})
    with raises(tg.FeedError, "'x'"):
        g.forward({"x": [[1.0, 2.0, 3.0], [1.0]], "y": np.ones((2, 4))})


# ----------------------------------------------------------------- nodes, names, graphs

def test_node_from_another_graph():
    g1, g2 = tg.Graph("first"), tg.Graph("second")
    a = g1.input("a", (3,))
    b = g2.input("b", (3,))
    with raises(tg.NodeTypeError, "'b'", "'first'", "'second'"):
        a + b
    with raises(tg.NodeTypeError, "'a'", "'first'", "'second'"):
        tg.concat([b, a])
    s = tg.sum(a)
    acts = g1.forward({"a": np.ones(3)})
    with raises(tg.NodeTypeError, "'b'", "'second'", "'first'"):
        acts[b]
    with raises(tg.NodeTypeError, "'b'"):
        acts.backward(s)[b]
    with raises(tg.NodeTypeError, "'b'"):
        g1.forward({b: np.ones(3)})
    with raises(tg.NodeTypeError, "'b'"):
        g1.forward({"a": np.ones(3)}, outputs=[b])
    sb = tg.sum(b)
    with raises(tg.NodeTypeError, f"'{sb.name}'", "'second'", "'first'"):
        tg.check_gradients(g1, sb)


def test_ops_need_a_node():
    with raises(tg.NodeTypeError, "float"):
        tg.add(1.0, 2.0)


def test_duplicate_name():
    g = tg.Graph("dup")
    x = g.input("x", (2,))
    with raises(tg.GraphError, "'x'", "'dup'"):
        g.input("x", (3,))
    with raises(tg.GraphError, "'x'"):
        g.param("x", np.ones(2))
    y = tg.tanh(x, name="h")
    with raises(tg.GraphError, "'h'", "tanh"):
        tg.exp(x, name="h")
    assert g["h"] is y and g["x"] is x  # the originals are untouched
    with raises(tg.NodeTypeError):
        g.input("", (2,))


def test_unknown_node_name():
    g = tg.Graph("lookup")
    g.input("weights_in", (2,))
    with raises(tg.UnknownNodeError, "'weight'", "'lookup'", "weights_in"):
        g["weight"]
    with pytest.raises(KeyError):  # also a KeyError, for generic handlers
        g["nothing"]


def test_value_of_a_node_not_computed():
    g = tg.Graph()
    x = g.input("x", (2,))
    a = x * 2.0
    acts = g.forward({"x": np.ones(2)})
    late = a + 1.0
    with raises(tg.UnknownNodeError, late.name):
        acts[late]
    with raises(tg.UnknownNodeError, late.name):
        acts.backward(late)


# ----------------------------------------------------------------- backward and seeds

def test_backward_from_non_scalar_needs_a_seed():
    g = tg.Graph()
    x = g.input("x", (None, 3))
    W = g.param("W", np.arange(6.0).reshape(3, 2))
    y = tg.matmul(x, W, name="y")
    X = np.arange(12.0).reshape(4, 3)
    acts = g.forward({"x": X})
    with raises(tg.GraphError, "'y'", "(4, 2)", "seed"):
        acts.backward(y)
    seed = np.arange(8.0).reshape(4, 2)
    grads = acts.backward(y, seed=seed)
    np.testing.assert_allclose(grads[W], X.T @ seed, rtol=1e-15)
    np.testing.assert_allclose(grads[x], seed @ W.value.T, rtol=1e-15)
    np.testing.assert_array_equal(grads[y], seed)


def test_seed_of_wrong_shape():
    g = tg.Graph()
    x = g.input("x", (None, 3))
    y = tg.tanh(x, name="t")
    acts = g.forward({"x": np.ones((4, 3))})
    with raises(tg.ShapeError, "'t'", "(4, 3)", "(3,)"):
        acts.backward(y, seed=np.ones(3))
    with raises(tg.ShapeError, "'t'", "(3, 4)"):
        acts.backward(y, seed=np.ones((3, 4)))


def test_scalar_loss_with_explicit_seed_scales_gradients():
    g = tg.Graph()
    x = g.input("x", (3,))
    loss = tg.sum(x * x)
    acts = g.forward({"x": np.array([1.0, 2.0, 3.0])})
    np.testing.assert_allclose(acts.backward(loss, seed=np.array(0.5))[x], [1.0, 2.0, 3.0])


# ----------------------------------------------------------------- non-finite values

def test_check_finite_names_the_first_node_producing_nan():
    g = tg.Graph()
    x = g.input("x", (3,))
    a = tg.exp(x, name="first_exp")
    l = tg.log(x - 1.0, name="the_log")
    m = tg.mul(l, a, name="later_mul")
    s = tg.sum(tg.tanh(m, name="later_tanh"), name="later_sum")
    feeds = {"x": np.array([2.0, 0.5, 3.0])}  # log(-0.5) is NaN
    with np.errstate(all="ignore"):
        acts = g.forward(feeds)  # without check_finite: runs, the NaN propagates
        assert np.isnan(acts[s])
        with raises(tg.NonFiniteError, "'the_log'") as info:
            g.forward(feeds, check_finite=True)
    msg = str(info.value)
    for later in ("later_mul", "later_tanh", "later_sum", "first_exp"):
        assert later not in msg
    assert issubclass(tg.NonFiniteError, tg.GraphError)
    # finite feeds pass the check
    assert np.isfinite(g.forward({"x": np.array([2.0, 1.5, 3.0])}, check_finite=True)[s])


def test_check_finite_infinity_and_source_nodes():
    g = tg.Graph()
    x = g.input("x", (2,))
    q = tg.div(1.0, x, name="recip")
    r = tg.sum(q * 2.0, name="after")
    with np.errstate(all="ignore"):
        with raises(tg.NonFiniteError, "'recip'") as info:
            g.forward({"x": np.array([0.0, 1.0])}, check_finite=True)
        assert "after" not in str(info.value)
        with raises(tg.NonFiniteError, "'x'"):  # a non-finite feed is reported at the input itself
            g.forward({"x": np.array([np.nan, 1.0])}, check_finite=True)


def test_backward_check_finite_reports_infinite_input_gradient():
    g = tg.Graph()
    x = g.input("x", (3,))
    loss = tg.sum(tg.log(x, name="lg"))
    with np.errstate(all="ignore"):
        acts = g.forward({"x": np.array([0.0, 1.0, 2.0])})
        with raises(tg.NonFiniteError, "'x'"):
            acts.backward(loss, check_finite=True)


def test_backward_check_finite_reports_intermediate_gradient():
    g = tg.Graph()
    x = g.input("x", (3,))
    y = tg.add(x, 0.0, name="shifted")
    r = tg.pow(y, 0.5, name="root")  # sqrt(0) = 0 is finite, its derivative is not
    loss = tg.sum(tg.mul(r, 2.0, name="later"), name="total")
    with np.errstate(all="ignore"):
        acts = g.forward({"x": np.array([0.0, 1.0, 4.0])}, check_finite=True)
        with raises(tg.NonFiniteError, "'shifted'") as info:
            acts.backward(loss, check_finite=True)
        grads = acts.backward(loss)  # without the check: no error, the infinity is there
    for name in ("root", "later", "total"):
        assert f"'{name}'" not in str(info.value)
    assert np.isinf(grads[y][0]) and np.isfinite(grads[r]).all()
    np.testing.assert_allclose(grads[x][1:], [1.0, 0.5])


# ----------------------------------------------------------------- ops

def test_pow_with_a_node_exponent():
    g = tg.Graph()
    x = g.input("x", (3,))
    e = g.input("e", ())
    with raises(tg.NodeTypeError, "exponent", "Node"):
        x ** e
    with raises(tg.NodeTypeError, "exponent"):
        tg.pow(x, e)
    with raises(tg.NodeTypeError, "exponent"):
        tg.pow(x, np.array([1.0, 2.0, 3.0]))
    assert issubclass(tg.NodeTypeError, TypeError)


def test_unknown_op_name():
    with raises(tg.UnknownOpError, "'no_such_op'") as info:
        tg_ops.get("no_such_op")
    assert isinstance(info.value, KeyError)
    assert "add" in str(info.value)  # lists the known ops
    g = tg.Graph()
    x = g.input("x", (2,))
    with raises(tg.UnknownOpError, "'no_such_op'"):
        tg_ops.apply("no_such_op", (x,))
    assert len(g) == 1


def test_cross_entropy_label_out_of_range_at_run_time():
    g = tg.Graph()
    logits = g.input("logits", (None, 3))
    labels = g.input("labels", (None,), dtype=np.int64)
    loss = tg.cross_entropy(logits, labels, name="ce")
    with raises(tg.ShapeError, "0..2", "5"):
        g.forward({"logits": np.zeros((2, 3)), "labels": np.array([0, 5])})
    with raises(tg.FeedError, "'labels'", "integer"):
        g.forward({"logits": np.zeros((2, 3)), "labels": np.array([0.5, 1.0])})


def test_run_time_shape_error_names_the_node():
    g = tg.Graph()
    x = g.input("x", (None, 3))
    y = g.input("y", (None, 3))
    s = tg.add(x, y, name="together")  # None vs None: only known at run time
    with raises(tg.ShapeError, "'together'", "(2, 3)", "(4, 3)"):
        g.forward({"x": np.ones((2, 3)), "y": np.ones((4, 3))})


def test_node_has_no_truth_value_or_iteration():
    g = tg.Graph()
    x = g.input("x", (3,))
    with pytest.raises(TypeError, match="'x'"):
        bool(x)
    with pytest.raises(TypeError, match="'x'"):
        iter(x)
    b = g.input("b", (None, 2))
    with pytest.raises(TypeError, match="'b'"):
        len(b)
    assert len(x) == 3


def test_cross_entropy_broadcast_one_hot_labels_work_or_fail_at_build_time():
    g = tg.Graph()
    logits = g.input("logits", (4, 3))
    labels = g.input("labels", (1, 3))
    try:
        loss = tg.cross_entropy(logits, labels)
    except tg.ShapeError:
        return  # rejecting the shapes when the node is built is also correct
    val = g.forward({"logits": np.zeros((4, 3)), "labels": np.array([[0.0, 1.0, 0.0]])})[loss]
    assert val == pytest.approx(4 * np.log(3.0))


def test_backward_check_finite_names_first_node_inside_a_batch():
    g = tg.Graph()
    x = g.input("x", (3,))
    w = g.input("w", (3,))
    s1, s2 = tg.add(x, 0.0, name="s1"), tg.add(w, 0.0, name="s2")    # identical independent nodes: batched
    r1, r2 = tg.pow(s1, 0.5, name="r1"), tg.pow(s2, 0.5, name="r2")
    loss = tg.sum(r1 * 2.0) + tg.sum(r2 * 3.0)
    with np.errstate(all="ignore"):
        acts = g.forward({"x": np.array([0.0, 1.0, 4.0]), "w": np.array([1.0, 1.0, 4.0])})
        with raises(tg.NonFiniteError, "'s1'"):
            acts.backward(loss, check_finite=True)


def test_run_time_shape_error_inside_identical_nodes_names_the_node():
    g = tg.Graph()
    x1, y1, x2, y2 = (g.input(n, (None, 3)) for n in ("x1", "y1", "x2", "y2"))
    tg.add(x1, y1, name="together1")
    tg.add(x2, y2, name="together2")
    with raises(tg.ShapeError, "'together1'", "(2, 3)", "(4, 3)"):
        g.forward({"x1": np.ones((2, 3)), "y1": np.ones((4, 3)), "x2": np.ones((2, 3)), "y2": np.ones((4, 3))})


@pytest.mark.parametrize("batch", [2, 2048], ids=["small", "large"])  # (large: the BLAS sum of squares)
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_huge_finite_clamp_values_are_accepted_and_non_finite_ones_refused(batch, layout, bad):
    """The finiteness test looks at a summary first (the smallest and largest value, or the
    sum of squares): squares that overflow must not be taken for an infinite value, and a
    non-finite value among them is still found and placed, in any memory layout."""
    import rnn
    net = rnn.RecurrentNet("big")
    net.add_group("x", 2, role="input")
    net.add_group("h", 3, activation="tanh")
    net.connect("x", "h", delay=0)
    net.connect("h", "h", delay=1)
    X = np.full((4, batch, 2), 1e308)  # finite, but their squares (and sum) overflow
    if layout == "strided":
        X = np.full((4, batch, 4), 1e308)[:, :, ::2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no overflow warning reaches the user
        clamps, _, _ = rnn.data.resolve_all(net, 4, [rnn.Clamp("x", X)], [])
    assert clamps[0][3] is X
    X[2, 1, 0] = bad
    with pytest.raises(rnn.DataError, match=r"NaN or infinity \(first at index \(2, 1, 0\)\)"):
        rnn.data.resolve_all(net, 4, [rnn.Clamp("x", X)], [])


@pytest.mark.skipif(np.finfo(np.longdouble).max <= np.finfo(np.float64).max, reason="long double is double here")
def test_finite_long_double_clamp_values_beyond_float_range_are_accepted():
    import rnn
    net = rnn.RecurrentNet("wide")
    net.add_group("x", 3, role="input")
    net.add_group("h", 2, activation="tanh")
    net.connect("x", "h", delay=0)
    X = np.ones((2, 1, 3), dtype=np.longdouble)
    X[0, 0, 0] = np.longdouble("1e400")  # finite as a long double, infinite as a float
    clamps, _, _ = rnn.data.resolve_all(net, 2, [rnn.Clamp("x", X)], [])
    assert clamps[0][3] is X
    X[1, 0, 2] = np.nan
    with pytest.raises(rnn.DataError, match=r"NaN or infinity \(first at index \(1, 0, 2\)\)"):
        rnn.data.resolve_all(net, 2, [rnn.Clamp("x", X)], [])
