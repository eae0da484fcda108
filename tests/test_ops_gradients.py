"""Every op's reverse-mode gradient against central finite differences.

Each case gives a tinygraph builder and an independent numpy reference of the same
function.  The test checks

* the forward value against the numpy reference,
* every differentiable input's gradient (reverse mode, through ``grads[input]``)
  against central differences of the *numpy reference* (an independent route:
  neither tinygraph's forward nor its VJPs are used for the numeric gradient),
* that each gradient has exactly its input's shape.

The loss is ``sum(out * R)`` with a fixed random ``R`` so that every output entry
carries a different weight (a plain ``sum`` would hide transposed or permuted
gradients).
"""

import zlib

import numpy as np
import pytest

import tinygraph as tg
from tinygraph import ops as tg_ops

EPS = 1e-6
RTOL = 1e-6


# ----------------------------------------------------------------- helpers (independent route)

def central_diff(f, arrays, i, eps=EPS):
    """d f(*arrays) / d arrays[i] by central differences, entry by entry, in float64."""
    arrays = [np.array(a, dtype=np.float64, copy=True) if np.issubdtype(np.asarray(a).dtype, np.floating)
              else np.asarray(a) for a in arrays]
    x = arrays[i]
    grad = np.zeros(x.shape, dtype=np.float64)
    flat = x.reshape(-1)  # a view
    gflat = grad.reshape(-1)
    for k in range(flat.size):
        old = flat[k]
        flat[k] = old + eps
        up = float(f(*arrays))
        flat[k] = old - eps
        down = float(f(*arrays))
        flat[k] = old
        gflat[k] = (up - down) / (2 * eps)
    return grad


def assert_grad_close(analytic, numeric, rtol=RTOL, what=""):
    analytic = np.asarray(analytic, dtype=np.float64)
    numeric = np.asarray(numeric, dtype=np.float64)
    assert analytic.shape == numeric.shape, f"{what}: shape {analytic.shape} != {numeric.shape}"
    scale = max(np.max(np.abs(numeric), initial=0.0), np.max(np.abs(analytic), initial=0.0), 1e-3)
    err = np.max(np.abs(analytic - numeric), initial=0.0) / scale
    assert err < rtol, f"{what}: relative error {err:.3g}\nanalytic={analytic}\nnumeric={numeric}"


def run_case(build, ref, arrays, diff=None, seed=0, rtol=RTOL):
    """Build ``build(*input_nodes)`` in a fresh graph, compare value and gradients with ``ref``."""
    rng = np.random.default_rng(seed)
    arrays = [np.asarray(a) for a in arrays]
    if diff is None:
        diff = [i for i, a in enumerate(arrays) if np.issubdtype(a.dtype, np.floating)]
    g = tg.Graph("case")
    nodes = [g.input(f"x{i}", a.shape, dtype=a.dtype) for i, a in enumerate(arrays)]
    out = build(*nodes)
    expected = np.asarray(ref(*arrays))
    R = rng.standard_normal(expected.shape)
    loss = tg.sum(out * R, name="loss")
    feeds = {f"x{i}": a for i, a in enumerate(arrays)}
    acts = g.forward(feeds)
    value = np.asarray(acts[out])
    assert value.shape == expected.shape, f"value shape {value.shape} != reference {expected.shape}"
    np.testing.assert_allclose(value, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(acts[loss], np.sum(expected * R), rtol=1e-12, atol=1e-12)
    grads = acts.backward(loss)

    def f(*xs):
        return np.sum(np.asarray(ref(*xs)) * R)

    for i in diff:
        gi = np.asarray(grads[nodes[i]])
        assert gi.shape == arrays[i].shape, f"gradient of input {i}: shape {gi.shape} != input shape {arrays[i].shape}"
        assert_grad_close(gi, central_diff(f, arrays, i), rtol=rtol, what=f"input {i}")
    return g, nodes, out, grads


def rnd(rng, *shape, low=None, high=None):
    if low is not None:
        return rng.uniform(low, high, size=shape)
    return rng.standard_normal(shape)


def away_from_zero(rng, *shape, margin=0.2):
    """Random values with |x| >= margin (no relu / abs kinks inside the FD step)."""
    x = rng.standard_normal(shape)
    return np.where(x >= 0, x + margin, x - margin)


# ----------------------------------------------------------------- elementwise binary with broadcasting

BINARY = {
    "add": (tg.add, np.add, lambda a, b: a + b),
    "sub": (tg.sub, np.subtract, lambda a, b: a - b),
    "mul": (tg.mul, np.multiply, lambda a, b: a * b),
    "div": (tg.div, np.divide, lambda a, b: a / b),
}

BROADCAST_PAIRS = [
    ((3, 4), (3, 4)),
    ((3, 1), (1, 4)),      # both sides broadcast
    ((1, 4), (3, 1)),
    ((4,), (2, 3, 4)),     # missing leading axes on the left
    ((2, 3, 4), (4,)),     # ... and on the right
    ((), (2, 3)),          # scalar + array
    ((2, 3), ()),          # array + scalar
    ((2, 1, 4), (3, 1)),   # rank and size-1 broadcasting together
    ((1,), (5,)),
]


@pytest.mark.parametrize("opname", sorted(BINARY))
@pytest.mark.parametrize("sa,sb", BROADCAST_PAIRS, ids=[f"{a}-{b}" for a, b in BROADCAST_PAIRS])
@pytest.mark.parametrize("style", ["function", "operator"])
def test_binary_broadcast_gradients(opname, sa, sb, style):
    rng = np.random.default_rng(zlib.crc32(repr((opname, sa, sb)).encode()))
    fn, ref, operator = BINARY[opname]
    a = rnd(rng, *sa)
    b = rnd(rng, *sb) if opname != "div" else rnd(rng, *sb, low=0.5, high=2.0) * rng.choice([-1, 1], size=sb)
    build = fn if style == "function" else operator
    g, (na, nb), out, grads = run_case(build, ref, [a, b])
    assert out.op == opname
    assert out.inputs == (na, nb)
    assert out.shape == np.broadcast_shapes(sa, sb)


def test_neg():
    rng = np.random.default_rng(1)
    run_case(tg.neg, np.negative, [rnd(rng, 3, 4)])
    run_case(lambda x: -x, np.negative, [rnd(rng, 2, 3, 2)])
    run_case(lambda x: -x, np.negative, [np.float64(0.7)])


@pytest.mark.parametrize("exponent", [2, 3, 1, 0.5, -1.0, -1.5, 2.5, 0])
def test_pow(exponent):
    rng = np.random.default_rng(2)
    if float(exponent) == int(exponent):
        x = rnd(rng, 3, 4)
        if exponent < 0:
            x = away_from_zero(rng, 3, 4, margin=0.5)
    else:
        x = rnd(rng, 3, 4, low=0.3, high=2.0)  # non-integer powers need x > 0
    run_case(lambda n: n ** exponent, lambda v: np.power(v, float(exponent)), [x])
    run_case(lambda n: tg.pow(n, exponent), lambda v: np.power(v, float(exponent)), [x])


def test_pow_exponent_zero_at_zero_has_zero_gradient():
    g = tg.Graph()
    x = g.param("x", np.array([0.0, 1.5, -2.0]))
    loss = tg.sum(x ** 0)
    acts = g.forward({})
    assert acts[loss] == 3.0
    with np.errstate(all="ignore"):
        grad = acts.backward(loss)[x]
    np.testing.assert_array_equal(grad, np.zeros(3))


# ----------------------------------------------------------------- matmul

MATMUL_SHAPES = [
    ((3, 4), (4, 5)),          # 2-D
    ((4,), (4, 5)),            # 1-D on the left
    ((3, 4), (4,)),            # 1-D on the right
    ((4,), (4,)),              # both 1-D: a dot product
    ((2, 3, 4), (4, 5)),       # batched on the left
    ((3, 4), (2, 4, 5)),       # batched on the right
    ((2, 3, 4), (2, 4, 5)),    # batched on both
    ((2, 1, 3, 4), (5, 4, 2)),  # batch axes broadcast against each other
    ((1, 3, 4), (2, 4, 5)),    # size-1 batch axis broadcast
    ((4,), (2, 4, 5)),         # 1-D with a batched right side
    ((2, 3, 4), (4,)),         # batched left with a 1-D right side
]


@pytest.mark.parametrize("sa,sb", MATMUL_SHAPES, ids=[f"{a}@{b}" for a, b in MATMUL_SHAPES])
def test_matmul(sa, sb):
    rng = np.random.default_rng(3)
    a, b = rnd(rng, *sa), rnd(rng, *sb)
    run_case(lambda x, y: x @ y, np.matmul, [a, b])
    run_case(tg.matmul, np.matmul, [a, b])


def test_matmul_with_numpy_array_on_the_left():
    rng = np.random.default_rng(4)
    A = rnd(rng, 3, 4)
    run_case(lambda x: A @ x, lambda v: A @ v, [rnd(rng, 4, 2)])


# ----------------------------------------------------------------- nonlinearities

def _logistic_ref(x):
    return 1.0 / (1.0 + np.exp(-x))


@pytest.mark.parametrize("shape", [(), (5,), (2, 3, 2)])
@pytest.mark.parametrize("name", ["exp", "log", "tanh", "logistic", "sigmoid", "relu"])
def test_unary(name, shape):
    rng = np.random.default_rng(5)
    refs = {"exp": np.exp, "log": np.log, "tanh": np.tanh, "logistic": _logistic_ref,
            "sigmoid": _logistic_ref, "relu": lambda v: np.where(v > 0, v, 0.0)}
    if name == "log":
        x = rnd(rng, *shape, low=0.2, high=3.0)
    elif name == "relu":
        x = away_from_zero(rng, *shape)
    else:
        x = 1.5 * rnd(rng, *shape)
    run_case(getattr(tg, name), refs[name], [np.asarray(x, dtype=np.float64)])


def test_relu_gradient_is_a_step():
    g = tg.Graph()
    x = g.input("x", (4,))
    loss = tg.sum(tg.relu(x) * np.array([1.0, 2.0, 3.0, 4.0]))
    grads = g.forward({"x": np.array([-1.0, 2.0, -3.0, 0.5])}).backward(loss)
    np.testing.assert_array_equal(grads[x], [0.0, 2.0, 0.0, 4.0])


def test_logistic_is_stable_for_large_inputs():
    g = tg.Graph()
    x = g.input("x", (4,))
    y = tg.logistic(x)
    loss = tg.sum(y)
    with np.errstate(over="raise"):
        acts = g.forward({"x": np.array([-800.0, -40.0, 40.0, 800.0])})
    assert np.all(np.isfinite(acts[y]))
    np.testing.assert_allclose(acts[y], [0.0, 0.0, 1.0, 1.0], rtol=0, atol=1e-15)
    assert np.all(np.isfinite(acts.backward(loss)[x]))


def test_logistic_keeps_relative_precision_for_negative_inputs():
    g = tg.Graph()
    x = g.input("x", (4,))
    y = tg.logistic(x)
    ll = tg.log(y)
    xv = np.array([-10.0, -20.0, -30.0, -45.0])
    with np.errstate(all="ignore"):
        acts = g.forward({"x": xv})
    np.testing.assert_allclose(acts[y], np.exp(xv) / (1.0 + np.exp(xv)), rtol=1e-12)
    np.testing.assert_allclose(acts[ll], xv - np.log1p(np.exp(xv)), rtol=1e-12)


def _softmax_ref(x, axis):
    e = np.exp(x)
    return e / np.sum(e, axis=axis, keepdims=True)


def _log_softmax_ref(x, axis):
    return x - np.log(np.sum(np.exp(x), axis=axis, keepdims=True))


@pytest.mark.parametrize("axis", [0, 1, 2, -1, -2])
def test_softmax_each_axis(axis):
    rng = np.random.default_rng(6)
    x = rnd(rng, 2, 3, 4)
    run_case(lambda n: tg.softmax(n, axis=axis), lambda v: _softmax_ref(v, axis), [x])


@pytest.mark.parametrize("axis", [0, 1, 2, -1, -3])
def test_log_softmax_each_axis(axis):
    rng = np.random.default_rng(7)
    x = rnd(rng, 2, 3, 4)
    run_case(lambda n: tg.log_softmax(n, axis=axis), lambda v: _log_softmax_ref(v, axis), [x])


def test_softmax_default_axis_is_last_and_rows_sum_to_one():
    rng = np.random.default_rng(8)
    x = rnd(rng, 3, 5)
    g, (n,), out, _ = run_case(tg.softmax, lambda v: _softmax_ref(v, -1), [x])
    np.testing.assert_allclose(g.forward({"x0": x})[out].sum(axis=-1), np.ones(3), rtol=1e-12)


def test_log_softmax_large_logits_stay_finite():
    g = tg.Graph()
    x = g.input("x", (2, 3))
    y = tg.log_softmax(x)
    val = g.forward({"x": np.array([[1000.0, 0.0, -1000.0], [5.0, 5.0, 5.0]])})[y]
    np.testing.assert_allclose(val, [[0.0, -1000.0, -2000.0], [-np.log(3)] * 3], rtol=1e-12)


# ----------------------------------------------------------------- reductions

AXES = [None, 0, 1, 2, -1, (0, 2), (1, 2), (0, 1, 2), (-1, 0)]


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axis", AXES, ids=str)
@pytest.mark.parametrize("name", ["sum", "mean"])
def test_reductions(name, axis, keepdims):
    rng = np.random.default_rng(9)
    x = rnd(rng, 2, 3, 4)
    ref = getattr(np, name)
    g, (n,), out, grads = run_case(lambda v: getattr(tg, name)(v, axis=axis, keepdims=keepdims),
                                   lambda v: ref(v, axis=axis, keepdims=keepdims), [x])
    assert out.shape == np.shape(ref(x, axis=axis, keepdims=keepdims))


def test_sum_and_mean_gradient_closed_form():
    g = tg.Graph()
    x = g.input("x", (2, 5))
    s = tg.sum(x, axis=1)
    m = tg.mean(x, axis=1)
    acts = g.forward({"x": np.arange(10.0).reshape(2, 5)})
    np.testing.assert_array_equal(acts.backward(s, seed=np.array([2.0, 3.0]))[x],
                                  [[2.0] * 5, [3.0] * 5])
    np.testing.assert_allclose(acts.backward(m, seed=np.array([2.0, 3.0]))[x],
                               [[0.4] * 5, [0.6] * 5], rtol=1e-15)


# ----------------------------------------------------------------- shape ops

@pytest.mark.parametrize("new", [(6, 4), (-1,), (4, -1), (2, -1, 2), (24,), (1, 2, 3, 4), (3, 8)])
def test_reshape(new):
    rng = np.random.default_rng(10)
    x = rnd(rng, 2, 3, 4)
    g, (n,), out, _ = run_case(lambda v: tg.reshape(v, new), lambda v: np.reshape(v, new), [x])
    assert out.shape == np.reshape(x, new).shape


@pytest.mark.parametrize("axes", [None, (1, 0, 2), (2, 0, 1), (0, 2, 1), (0, 1, 2)])
def test_transpose(axes):
    rng = np.random.default_rng(11)
    x = rnd(rng, 2, 3, 4)
    g, _, out, _ = run_case(lambda v: tg.transpose(v, axes), lambda v: np.transpose(v, axes), [x])
    assert out.shape == np.transpose(x, axes).shape


def test_transpose_property_T():
    rng = np.random.default_rng(12)
    run_case(lambda v: v.T, lambda v: v.T, [rnd(rng, 3, 5)])


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_concat_three_operands(axis):
    rng = np.random.default_rng(13)
    base = [2, 3, 4]
    arrays = []
    for k in (1, 2, 3):  # different sizes along the concat axis
        s = list(base)
        s[axis] = k
        arrays.append(rnd(rng, *s))
    g, nodes, out, _ = run_case(lambda a, b, c: tg.concat([a, b, c], axis=axis),
                                lambda a, b, c: np.concatenate([a, b, c], axis=axis), arrays)
    assert out.inputs == tuple(nodes)


def test_concat_same_node_twice():
    rng = np.random.default_rng(14)
    run_case(lambda a: tg.concat([a, a * 2.0, a], axis=0),
             lambda a: np.concatenate([a, a * 2.0, a], axis=0), [rnd(rng, 2, 3)])


# getitem: (index built from numpy-compatible objects, description)
GETITEM_CASES = [
    (np.s_[1], "int"),
    (np.s_[-1], "negative int"),
    (np.s_[1:3], "slice"),
    (np.s_[:, 1:], "slice second axis"),
    (np.s_[::-1], "negative step"),
    (np.s_[3:0:-2, ::-1], "negative steps both axes"),
    (np.s_[1, 2], "two ints"),
    (np.s_[1, :, 0], "int slice int"),
    (np.s_[None, 1:3], "None"),
    (np.s_[..., 1], "Ellipsis"),
    (np.s_[..., None, 0:2], "Ellipsis and None"),
    (np.s_[[0, 2, 3]], "int list"),
    (np.s_[[0, 0, 2, 0]], "repeated indices"),
    (np.s_[:, [1, 1, 0]], "repeated indices second axis"),
    (np.s_[[0, 3, 0], [1, 1, 2]], "paired integer arrays with repeats"),
    (np.s_[[[0, 1], [1, 1]]], "2-D integer array"),
    (np.s_[::-1, [2, 0, 2]], "negative step and integer array"),
    (np.s_[[-1, -4, -1]], "negative integer array entries"),
]


@pytest.mark.parametrize("index,desc", GETITEM_CASES, ids=[d for _, d in GETITEM_CASES])
def test_getitem(index, desc):
    rng = np.random.default_rng(15)
    x = rnd(rng, 4, 3, 2)
    idx = tuple(np.asarray(i) if isinstance(i, list) else i for i in index) if isinstance(index, tuple) else (
        np.asarray(index) if isinstance(index, list) else index)
    g, _, out, _ = run_case(lambda v: v[index], lambda v: v[idx], [x])
    assert out.shape == x[idx].shape
    # the functional form agrees
    run_case(lambda v: tg.getitem(v, index), lambda v: v[idx], [x])


def test_getitem_repeated_indices_accumulate():
    g = tg.Graph()
    x = g.input("x", (3,))
    loss = tg.sum(x[[0, 0, 0, 2]])
    grads = g.forward({"x": np.array([1.0, 2.0, 3.0])}).backward(loss)
    np.testing.assert_array_equal(grads[x], [3.0, 0.0, 1.0])


# ----------------------------------------------------------------- losses

@pytest.mark.parametrize("sp,st", [((3, 4), (3, 4)), ((3, 4), (4,)), ((5,), (5,)), ((2, 3), ())])
def test_squared_error(sp, st):
    rng = np.random.default_rng(16)
    p, t = rnd(rng, *sp), rnd(rng, *st)
    g, _, out, _ = run_case(tg.squared_error, lambda a, b: 0.5 * np.sum((a - b) ** 2), [p, t])
    assert out.shape == ()


def _ce_int_ref(logits, labels):
    lp = _log_softmax_ref(logits, -1)
    return -np.sum(np.take_along_axis(lp, labels[..., None].astype(np.int64), axis=-1))


def _ce_onehot_ref(logits, y):
    return -np.sum(y * _log_softmax_ref(logits, -1))


@pytest.mark.parametrize("shape", [(5, 4), (2, 3, 4), (4,)])
def test_cross_entropy_integer_labels(shape):
    rng = np.random.default_rng(17)
    logits = rnd(rng, *shape)
    labels = rng.integers(0, shape[-1], size=shape[:-1]).astype(np.int64)
    g, nodes, out, grads = run_case(tg.cross_entropy, _ce_int_ref, [logits, labels], diff=[0])
    assert out.shape == ()
    # closed form: softmax - onehot, per row
    p = _softmax_ref(logits, -1)
    onehot = np.eye(shape[-1])[labels]
    acts = g.forward({"x0": logits, "x1": labels})
    np.testing.assert_allclose(acts.backward(out)[nodes[0]], p - onehot, rtol=1e-12, atol=1e-14)


def test_cross_entropy_integer_labels_fed_as_floats():
    """Labels declared with the default float dtype and fed as floats still index classes."""
    rng = np.random.default_rng(18)
    logits = rnd(rng, 6, 3)
    labels = rng.integers(0, 3, size=6)
    g = tg.Graph()
    x = g.input("x", (None, 3))
    y = g.input("y", (None,))
    loss = tg.cross_entropy(x, y)
    acts = g.forward({"x": logits, "y": labels.astype(np.float64)})
    np.testing.assert_allclose(acts[loss], _ce_int_ref(logits, labels), rtol=1e-12)
    grads = acts.backward(loss)
    assert_grad_close(grads[x], central_diff(lambda v: _ce_int_ref(v, labels), [logits], 0))
    np.testing.assert_array_equal(grads[y], np.zeros(6))  # no gradient flows to class indices


@pytest.mark.parametrize("shape", [(5, 4), (2, 3, 4)])
def test_cross_entropy_one_hot_labels(shape):
    rng = np.random.default_rng(19)
    logits = rnd(rng, *shape)
    onehot = np.eye(shape[-1])[rng.integers(0, shape[-1], size=shape[:-1])]
    run_case(tg.cross_entropy, _ce_onehot_ref, [logits, onehot])  # both logits and labels


def test_cross_entropy_probability_labels():
    rng = np.random.default_rng(20)
    logits = rnd(rng, 4, 3)
    probs = _softmax_ref(rnd(rng, 4, 3), -1)
    run_case(tg.cross_entropy, _ce_onehot_ref, [logits, probs])


def test_cross_entropy_integer_and_one_hot_agree():
    rng = np.random.default_rng(21)
    logits = rnd(rng, 5, 4)
    labels = rng.integers(0, 4, size=5)
    g = tg.Graph()
    x = g.param("x", logits)
    l1 = tg.cross_entropy(x, labels)
    l2 = tg.cross_entropy(x, np.eye(4)[labels])
    acts = g.forward({})
    np.testing.assert_allclose(acts[l1], acts[l2], rtol=1e-13)
    np.testing.assert_allclose(acts.backward(l1)[x], acts.backward(l2)[x], rtol=1e-13, atol=1e-15)


# ----------------------------------------------------------------- stop_gradient and clamp

def test_stop_gradient_blocks_gradient():
    rng = np.random.default_rng(22)
    xv = rnd(rng, 3, 2)
    g = tg.Graph()
    x = g.input("x", (3, 2))
    s = tg.stop_gradient(x * 3.0)
    loss = tg.sum(s * s)
    acts = g.forward({"x": xv})
    np.testing.assert_array_equal(acts[s], xv * 3.0)  # identity forward
    grads = acts.backward(loss)
    np.testing.assert_array_equal(grads[x], np.zeros((3, 2)))
    assert grads[x].shape == (3, 2)
    assert not grads.reached(x)
    # the gradient still arrives at the stop_gradient node itself
    np.testing.assert_allclose(grads[s], 2 * xv * 3.0, rtol=1e-15)


def test_stop_gradient_on_one_path_only():
    rng = np.random.default_rng(23)
    xv = rnd(rng, 4)
    g = tg.Graph()
    x = g.input("x", (4,))
    loss = tg.sum(x * tg.stop_gradient(x))  # d/dx treats the stopped factor as a constant: grad = x
    grads = g.forward({"x": xv}).backward(loss)
    np.testing.assert_allclose(grads[x], xv, rtol=1e-15)


def _clamp_ref(units):
    def ref(c, v):
        shape = np.broadcast_shapes(c.shape[:-1], v.shape[:-1]) + c.shape[-1:]
        out = np.array(np.broadcast_to(c, shape), copy=True)
        out[..., units] = v
        return out
    return ref


@pytest.mark.parametrize("cshape,vshape", [((3, 5), (3, 2)), ((3, 5), (2,)), ((5,), (3, 2)), ((1, 5), (4, 2))])
def test_clamp(cshape, vshape):
    rng = np.random.default_rng(24)
    units = [1, 3]
    c, v = rnd(rng, *cshape), rnd(rng, *vshape)
    g, (nc, nv), out, grads = run_case(lambda a, b: tg.clamp(a, b, units), _clamp_ref(units), [c, v])
    assert np.all(grads[nc][..., units] == 0.0)
    assert out.shape == _clamp_ref(units)(c, v).shape


# ----------------------------------------------------------------- composite expressions and check_gradients

def test_composite_expression_all_inputs():
    rng = np.random.default_rng(25)
    X, W, b, Y = rnd(rng, 5, 3), rnd(rng, 3, 4), rnd(rng, 4), rnd(rng, 5, 4)

    def build(x, w, bb, y):
        h = tg.tanh(x @ w + bb)
        return tg.mean(tg.log_softmax(h * 2.0, axis=1) * y, axis=0) + tg.sum(tg.logistic(h) ** 2) / 3.0

    def ref(x, w, bb, y):
        h = np.tanh(x @ w + bb)
        return np.mean(_log_softmax_ref(h * 2.0, 1) * y, axis=0) + np.sum(_logistic_ref(h) ** 2) / 3.0

    run_case(build, ref, [X, W, b, Y])


def _mlp_graph(rng):
    g = tg.Graph("mlp")
    x = g.input("x", (None, 3))
    y = g.input("y", (None,))
    W1 = g.param("W1", rng.standard_normal((3, 5)))
    b1 = g.param("b1", rng.standard_normal(5) * 0.1)
    W2 = g.param("W2", rng.standard_normal((5, 4)))
    h = tg.logistic(x @ W1 + b1)
    loss = tg.cross_entropy(h @ W2, y) + 0.01 * tg.sum(W1 ** 2)
    feeds = {"x": rng.standard_normal((6, 3)), "y": rng.integers(0, 4, 6).astype(np.float64)}
    return g, loss, feeds


def test_check_gradients_on_mlp():
    rng = np.random.default_rng(26)
    g, loss, feeds = _mlp_graph(rng)
    res = tg.check_gradients(g, loss, feeds)
    assert isinstance(res, float) and res < 1e-6
    assert set(res.errors) == {"W1", "b1", "W2"}
    assert res.node in res.errors
    assert float(res) == max(res.errors.values())
    res_in = tg.check_gradients(g, loss, {"x": feeds["x"], "y": feeds["y"]}, wrt=[g["x"]])
    assert set(res_in.errors) == {"x"} and res_in < 1e-6
    # max_entries samples entries but still checks
    assert tg.check_gradients(g, loss, feeds, max_entries=3) < 1e-6


def test_check_gradients_restores_params_and_feeds():
    rng = np.random.default_rng(27)
    g, loss, feeds = _mlp_graph(rng)
    before = {p.name: p.value.copy() for p in g.params}
    x_before = feeds["x"].copy()
    tg.check_gradients(g, loss, feeds, wrt=list(g.params) + [g["x"]])
    for p in g.params:
        np.testing.assert_array_equal(p.value, before[p.name])
    np.testing.assert_array_equal(feeds["x"], x_before)


@pytest.mark.parametrize("build", [
    lambda x, w: tg.sum(tg.softmax(x @ w, axis=0) * tg.exp(x[:, :2] @ w[:2])),
    lambda x, w: tg.sum(tg.concat([x, tg.transpose(w)[:, ::-1]], axis=0) ** 3),
    lambda x, w: tg.squared_error(tg.reshape(x, (-1,)), tg.reshape(w, (-1,)) / 2.0),
    lambda x, w: tg.sum(tg.mean(tg.relu(x) * 1.0, axis=0, keepdims=True) @ w),
])
def test_check_gradients_various(build):
    rng = np.random.default_rng(28)
    g = tg.Graph()
    x = g.param("x", away_from_zero(rng, 4, 3))
    w = g.param("w", rnd(rng, 3, 4))
    loss = build(x, w)
    assert tg.check_gradients(g, loss) < 1e-6


def test_check_gradients_detects_a_wrong_derivative():
    """check_gradients must be able to fail: an op with a deliberately wrong VJP is caught."""
    name = "test_wrong_square"
    tg_ops.defop(name, lambda x: x * x, (lambda g, out, x: g * x,), lambda s: s)  # should be 2 g x
    try:
        g = tg.Graph()
        w = g.param("w", np.array([0.5, -1.5, 2.0]))
        v = g.param("v", np.array([1.0, 2.0, 3.0]))
        loss = tg.sum(tg_ops.apply(name, (w,)) + v)
        res = tg.check_gradients(g, loss)
        assert res > 0.3
        assert res.node == "w"
        assert res.errors["v"] < 1e-6
    finally:
        tg_ops.REGISTRY.pop(name, None)


def test_check_gradients_inputs_true_ignores_inputs_the_loss_does_not_use():
    rng = np.random.default_rng(29)
    g = tg.Graph()
    x = g.input("x", (None, 2))
    other = g.input("other", (None, 2))  # used by another output only
    W = g.param("W", rng.standard_normal((2, 2)))
    loss = tg.sum(tg.tanh(x @ W))
    tg.sum(other @ W)
    res = tg.check_gradients(g, loss, {"x": rng.standard_normal((3, 2))}, inputs=True)
    assert res < 1e-6 and set(res.errors) == {"W", "x"}
    res = tg.check_gradients(g, loss, {"x": rng.standard_normal((3, 2)), "other": np.ones((3, 2))}, inputs=True)
    assert res < 1e-6 and set(res.errors) == {"W", "x"}


def test_check_gradients_inputs_true():
    rng = np.random.default_rng(30)
    g = tg.Graph()
    x = g.input("x", (None, 2))
    W = g.param("W", rng.standard_normal((2, 3)))
    loss = tg.sum(tg.logistic(x @ W) ** 2)
    res = tg.check_gradients(g, loss, {"x": rng.standard_normal((4, 2))}, inputs=True)
    assert res < 1e-6 and set(res.errors) == {"W", "x"}


def test_check_gradients_no_false_alarm_on_an_exactly_zero_gradient():
    worst = 0.0
    for seed in range(12):  # the false alarm depends on rounding: try several data sets
        rng = np.random.default_rng(seed)
        g = tg.Graph()
        x = g.input("x", (None, 3))
        W = g.param("W", rng.standard_normal((3, 4)))
        c = g.param("c", np.array(0.3))  # the same shift for every logit
        loss = tg.cross_entropy(x @ W + c, np.array([0, 1, 2, 3, 1]))
        feeds = {"x": rng.standard_normal((5, 3)) * 3}
        acts = g.forward(feeds)
        assert abs(acts.backward(loss)[c]) < 1e-13  # reverse mode is right: zero up to rounding

        def shifted(v):
            old = c.value.copy()
            c.value[...] = v
            try:
                return float(g.forward(feeds)[loss])
            finally:
                c.value[...] = old

        assert abs(central_diff(shifted, [np.array(0.3)], 0)) < 1e-8  # FD agrees in absolute terms
        worst = max(worst, float(tg.check_gradients(g, loss, feeds)))
    assert worst < 1e-6


# ----------------------------------------------------------------- cross-entropy edge cases

@pytest.mark.parametrize("batch", [False, True])
def test_cross_entropy_with_a_masked_out_class_is_finite(batch):
    """A logit of -inf (a class masked out) that is not the label: 0 * -inf must not make NaN."""
    g = tg.Graph("mask")
    logits = [g.input(f"l{k}", (None, 3)) for k in range(3)]
    labels = [g.input(f"y{k}", (None,), dtype=np.int64) for k in range(3)]
    onehots = [g.input(f"o{k}", (None, 3)) for k in range(3)]
    loss = tg.add_n([tg.cross_entropy(l, y) for l, y in zip(logits, labels)]
                    + [tg.cross_entropy(l, o) for l, o in zip(logits, onehots)])
    L = np.array([[0.0, 1.0, -np.inf], [2.0, -np.inf, 0.5]])
    Y = np.array([1, 0])
    feeds = {**{f"l{k}": L for k in range(3)}, **{f"y{k}": Y for k in range(3)},
             **{f"o{k}": np.eye(3)[Y] for k in range(3)}}
    acts = g.forward(feeds, batch=batch)
    finite = np.array([[0.0, 1.0], [2.0, 0.5]])
    want = -np.sum(finite[[0, 1], [1, 0]] - np.log(np.exp(finite).sum(axis=1)))
    assert float(acts[loss]) == pytest.approx(6 * want, rel=1e-12)
    grads = acts.backward(loss)
    assert np.all(np.isfinite(grads[logits[0]]))


@pytest.mark.parametrize("dtype", [np.int64, np.float64])
def test_cross_entropy_reads_one_hot_rows_of_any_dtype(dtype):
    """Labels of the logits' rank are one-hot rows (the shape rule's reading) whatever their dtype."""
    rng = np.random.default_rng(0)
    g = tg.Graph("onehot")
    x = g.input("x", (None, 3))
    y = g.input("y", (None, 3), dtype=dtype)
    loss = tg.cross_entropy(x, y)
    X = rng.standard_normal((3, 3))
    labels = np.array([2, 0, 1])
    acts = g.forward({"x": X, "y": np.eye(3, dtype=dtype)[labels]})
    logp = X - np.log(np.exp(X).sum(axis=1, keepdims=True))
    assert float(acts[loss]) == pytest.approx(-logp[np.arange(3), labels].sum(), rel=1e-12)
    soft = np.exp(logp)
    np.testing.assert_allclose(acts.backward(loss)[x], soft - np.eye(3)[labels], rtol=1e-12)


# ----------------------------------------------------------------- what numpy accepts, the graph accepts

def test_build_time_shapes_follow_numpy_for_indexing_and_transposing():
    """Negative transpose axes, an empty index list and an int index past 10,007 on a None
    axis are valid numpy: each builds, runs to numpy's value and has the right gradient."""
    rng = np.random.default_rng(0)
    g = tg.Graph("numpy")
    v = g.input("v", (None,))
    x = g.input("x", (None, 3))
    picked, empty, turned = v[10008], v[[]], tg.transpose(x, (-1, -2))
    assert picked.shape == () and empty.shape == (0,) and turned.shape == (3, None)
    loss = picked * 3.0 + tg.sum(turned * turned) + tg.sum(empty)
    V, X = rng.standard_normal(10010), rng.standard_normal((4, 3))
    acts = g.forward({"v": V, "x": X})
    assert float(acts[picked]) == V[10008] and acts[empty].shape == (0,)
    np.testing.assert_array_equal(acts[turned], X.T)
    grads = acts.backward(loss)
    want = np.zeros_like(V)
    want[10008] = 3.0
    np.testing.assert_array_equal(grads[v], want)
    np.testing.assert_allclose(grads[x], 2 * X, rtol=1e-12)


def test_a_number_to_the_power_of_a_node():
    g = tg.Graph("rpow")
    W = g.param("W", np.array([0.5, -1.0, 2.0]))
    loss = tg.sum(2 ** W)
    acts = g.forward()
    np.testing.assert_allclose(acts[loss], np.sum(2.0 ** W.value), rtol=1e-12)
    np.testing.assert_allclose(acts.backward(loss)[W], np.log(2.0) * 2.0 ** W.value, rtol=1e-12)


def test_index_forms_numpy_accepts_build_and_run():
    g = tg.Graph("idx")
    x = g.input("x", (None, 3))
    y = g.input("y", (None, None))
    forms = {x[np.array(1)]: (lambda X, Y: X[np.array(1)]), x[: 2 ** 62]: (lambda X, Y: X[: 2 ** 62]),
             y[0, 1:10 ** 12]: (lambda X, Y: Y[0, 1:10 ** 12])}
    X, Y = np.arange(12.0).reshape(4, 3), np.arange(20.0).reshape(4, 5)
    acts = g.forward({"x": X, "y": Y})
    for node, fn in forms.items():
        np.testing.assert_array_equal(acts[node], fn(X, Y))
        assert len(node.shape) == fn(X, Y).ndim


def test_cross_entropy_refuses_labels_that_are_neither_indices_nor_rows():
    g = tg.Graph("ce")
    z = g.input("z", (None, 4))
    y = g.input("y", (None, 1), dtype=np.int64)
    with pytest.raises(tg.ShapeError, match=r"need 4 classes on the last axis; class indices go as shape \(None,\)"):
        tg.cross_entropy(z, y)
