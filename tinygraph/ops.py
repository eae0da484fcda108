"""The op registry: each op's forward, its shape rule and one vector-Jacobian
product (VJP) per input, declared together in one place.

A VJP has the signature ``vjp(g, out, *inputs, **attrs)`` where ``g`` is dE/d(out)
and returns dE/d(that input), or ``None`` when no gradient flows to that input.
It may return a gradient of the *broadcast* shape: the engine sums it back to the
input's shape (``unbroadcast``) once, for every op.  Adding an op touches only
this file: call ``defop`` and write the node-building function next to it.
"""

import builtins
import math
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from . import shapes as S
from .errors import NodeTypeError, ShapeError, UnknownOpError
from .node import Node


@dataclass(frozen=True)
class OpDef:
    name: str
    forward: Callable
    vjps: tuple  # one function per input; for a variadic op a single function vjp(i, g, out, *xs)
    shape: Callable  # shape(*input_shapes, **attrs) -> static output shape
    variadic: bool = False
    # How the op runs on members stacked along a new leading axis (one call for many
    # independent copies of the same node, e.g. one node of every time step):
    # "elementwise" (forward and VJPs work unchanged on stacked inputs), "matmul"
    # (the same, with a shared right operand), a (forward, lift, vjps) triple of
    # dedicated versions (losses: one value per member; lift says whether operands
    # broadcast elementwise), or None (not batched).
    batch: object = None
    # For elementwise unary ops whose derivative can be read off the output alone
    # (tanh: 1 - out^2): slope(out).  Its VJP is g * slope(out), and the engine may compute
    # the slopes of many nodes of this op in one call (see plan.SlopeRow).
    slope: Callable = None
    # False when no VJP reads ``out`` (matmul, add_n): a batch of the op may then let its
    # stacked output go after forward (plan.Plan.droppable), and a tied copy's own gradient
    # is computed without its consumer's value.
    reads_out: bool = True

    def vjp(self, i, g, out, values, attrs):
        if self.variadic:
            return self.vjps[0](i, g, out, *values, **attrs)
        if i >= len(self.vjps):
            raise UnknownOpError(f"op '{self.name}' has no derivative rule for input {i}")
        return self.vjps[i](g, out, *values, **attrs)


REGISTRY: dict[str, OpDef] = {}


def defop(name, forward, vjps, shape, variadic=False, batch=None, slope=None, reads_out=True):
    """Register an op: forward(*values, **attrs), its VJPs, its shape rule and (optionally)
    how it batches across identical independent nodes (see OpDef.batch), for an
    elementwise unary op its derivative as a function of its output (see OpDef.slope), and
    whether any VJP reads the output (OpDef.reads_out: when unsure, leave it True)."""
    if name in REGISTRY:
        raise ValueError(f"op '{name}' is already registered")
    REGISTRY[name] = OpDef(name, forward, tuple(vjps), shape, variadic, batch, slope, bool(reads_out))
    return REGISTRY[name]


def _set_batch(name, rule):
    REGISTRY[name] = replace(REGISTRY[name], batch=rule)


def get(name):
    """The OpDef for ``name``; an unknown op fails with its name."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownOpError(
            f"unknown op '{name}': no forward or derivative rule is registered for it "
            f"(known ops: {', '.join(sorted(REGISTRY))}); register it with tinygraph.ops.defop") from None


_BLAS_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


_ONES = {}  # (length, dtype) -> a read-only vector of ones, for _sum_leading
_ONES_KEPT = 8  # vectors kept (a run sums a few lengths, over and over) ...
_ONES_LONGEST = 1 << 16  # ... short ones: making a long one costs little next to its product


def _ones(n, dtype):
    """A vector of n ones, made once for the short lengths a run sums over and over."""
    v = _ONES.get((n, dtype))
    if v is None:
        v = np.ones(n, dtype)
        if n <= _ONES_LONGEST:
            if len(_ONES) >= _ONES_KEPT:
                _ONES.clear()
            v.flags.writeable = False
            _ONES[(n, dtype)] = v
    return v


def _sum_leading(grad, k):
    """``grad`` summed over its first k axes (a bias's gradient over time and batch).  For a
    contiguous float32/float64 array with axes left, as one matrix-vector product with a
    vector of ones: BLAS does it several times faster than numpy's reduction down the
    leading axis (rounding differs in the last bits, as any other order of the sum would)."""
    if (type(grad) is np.ndarray and grad.ndim > k and grad.size and grad.dtype in _BLAS_FLOATS
            and grad.flags.c_contiguous):
        n = math.prod(grad.shape[:k])
        return (_ones(n, grad.dtype) @ grad.reshape(n, -1)).reshape(grad.shape[k:])
    # (np.add.reduce is what ndarray.sum calls, without its Python wrapper)
    return np.add.reduce(grad, axis=0 if k == 1 else tuple(range(k)))


def unbroadcast(grad, shape):
    """Sum a gradient of a broadcast shape back to ``shape`` (the input's)."""
    if type(grad) is np.ndarray and grad.shape == shape:
        return grad  # (the common case, without np.shape's overhead)
    gshape = np.shape(grad)
    shape = tuple(shape)
    if gshape == shape:
        return grad
    if gshape[1:] == shape:  # the common case: one leading (batch or time) axis to sum away
        return _sum_leading(grad, 1)
    grad = np.asarray(grad)
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = _sum_leading(grad, extra)
    if 1 in shape:
        axes = tuple(i for i, d in enumerate(shape) if d == 1 and grad.shape[i] != 1)
        if axes:
            grad = np.add.reduce(grad, axis=axes, keepdims=True)
    return grad.reshape(shape)


# ----------------------------------------------------------------- building nodes

def _graph_of(args, opname):
    graph = None
    for a in args:
        if isinstance(a, Node):
            if graph is None:
                graph = a.graph
            elif a.graph is not graph:
                raise NodeTypeError(
                    f"{opname}: node '{a.name}' belongs to graph '{a.graph.name}' but the other operands "
                    f"belong to graph '{graph.name}'; build every node of one expression in one graph")
    if graph is None:
        raise NodeTypeError(f"{opname}: at least one operand must be a tinygraph Node, got "
                            f"{', '.join(type(a).__name__ for a in args)}")
    return graph


def apply(opname, args, attrs=None, name=None):
    """Build a node for op ``opname`` on ``args`` (nodes, or constants to lift)."""
    op = get(opname)
    attrs = dict(attrs or {})
    graph = _graph_of(args, opname)
    inputs = []
    for a in args:
        if isinstance(a, Node):
            inputs.append(a)
            continue
        try:
            inputs.append(graph.const(a))
        except NodeTypeError:
            nodes = [x.name for x in args if isinstance(x, Node)]
            kind = getattr(np.asarray(a), "dtype", type(a).__name__) if not isinstance(a, dict) else "dict"
            raise NodeTypeError(f"{opname} with {', '.join(repr(n) for n in nodes)}: the operand {a!r} "
                                f"(dtype {kind}) is not a number, an array of numbers or a node") from None
    inputs = tuple(inputs)
    try:
        shape = tuple(op.shape(*(n.shape for n in inputs), **attrs))
    except S.ShapeMismatch as exc:
        described = ", ".join(f"'{n.name}' {S.fmt(n.shape)}" for n in inputs)
        label = f" '{name}'" if name else ""
        raise ShapeError(f"{opname}{label}: {exc} (inputs: {described})") from None
    return graph._add_node(opname, inputs, shape, attrs, name)


# ----------------------------------------------------------------- elementwise arithmetic

def _bshape(*shapes):
    return S.broadcast(*shapes)


def passthrough(g, out, *inputs, **attrs):
    """The VJP of an input that the output depends on with slope 1 (add, identity, ...).
    The engine recognises it and hands ``g`` on without a call."""
    return g


defop("add", np.add, (passthrough, passthrough), _bshape)
defop("sub", np.subtract, (passthrough, lambda g, out, a, b: -g), _bshape)
defop("mul", np.multiply, (lambda g, out, a, b: g * b, lambda g, out, a, b: g * a), _bshape)
defop("div", np.divide, (lambda g, out, a, b: g / b, lambda g, out, a, b: -g * out / b), _bshape)
defop("neg", np.negative, (lambda g, out, a: -g,), lambda s: s)


def _pow_vjp(g, out, x, *, exponent):
    if exponent == 0:
        return np.zeros(np.broadcast_shapes(np.shape(g), np.shape(x)))  # x**0 is constant, even at 0
    if exponent == 2:
        return g * 2.0 * x
    return g * exponent * x ** (exponent - 1)


defop("pow", lambda x, *, exponent: x ** exponent, (_pow_vjp,), lambda s, *, exponent: s)


def _add_n(*xs):
    total = xs[0] + xs[1] if len(xs) > 1 else np.array(xs[0], copy=True)
    for x in xs[2:]:
        try:
            total += x  # total is a fresh array here, so adding in place is safe
        except ValueError:  # x broadcasts total to a bigger shape
            total = total + x
    return total


defop("add_n", _add_n, (lambda i, g, out, *xs: g,), lambda *shapes: S.broadcast(*shapes), variadic=True,
      reads_out=False)
defop("identity", lambda x: x, (passthrough,), lambda s: s, reads_out=False)


def add_n(nodes, *, name=None):
    """The sum of several nodes in one node (e.g. a unit's total input from all its connections)."""
    nodes = list(nodes)
    if not nodes:
        raise NodeTypeError("add_n needs at least one node")
    return apply("add_n", tuple(nodes), name=name)


def identity(x, *, name=None):
    """x itself, as a node of its own (a linear unit's state next to its total input)."""
    return apply("identity", (x,), name=name)


def add(a, b, *, name=None):
    """a + b with numpy broadcasting."""
    return apply("add", (a, b), name=name)


def sub(a, b, *, name=None):
    """a - b with numpy broadcasting."""
    return apply("sub", (a, b), name=name)


def mul(a, b, *, name=None):
    """Elementwise a * b with numpy broadcasting."""
    return apply("mul", (a, b), name=name)


def div(a, b, *, name=None):
    """Elementwise a / b with numpy broadcasting."""
    return apply("div", (a, b), name=name)


def neg(a, *, name=None):
    return apply("neg", (a,), name=name)


def pow(x, exponent, *, name=None):  # noqa: A001 - mirrors the operator's name
    """x ** exponent for a scalar (Python number) exponent."""
    if (isinstance(exponent, (Node, bool, np.bool_)) or not isinstance(exponent, (int, float, np.number))
            or np.ndim(exponent) != 0 or np.iscomplexobj(exponent)):
        raise NodeTypeError(
            f"pow: the exponent must be a real Python number, got {type(exponent).__name__} {exponent!r}; "
            f"for a node exponent write tg.exp(e * tg.log(x))")
    return apply("pow", (x,), {"exponent": float(exponent)}, name=name)


# ----------------------------------------------------------------- matmul

def _rows(x):
    """x as a 2-D matrix of its last axis (reshape(-1, n) fails when n == 0)."""
    return x.reshape(math.prod(x.shape[:-1]), x.shape[-1])


def _swap(x):
    return x.T if x.ndim == 2 else np.swapaxes(x, -1, -2)


def _matmul_vjp_a(g, out, a, b):
    if b.ndim == 1:
        return g[..., None] * b
    if a.ndim == 1:
        return (b @ g[..., None])[..., 0]
    if b.ndim == 2 and g.ndim > 2:  # members stacked on a shared weight: one 2-D product, not one per member
        return (_rows(g) @ b.T).reshape(g.shape[:-1] + (b.shape[0],))
    return g @ _swap(b)


def _matmul_vjp_b(g, out, a, b):
    if b.ndim == 2 and a.ndim >= 2 and a.shape[:-1] == g.shape[:-1]:
        # one matrix product over every leading axis: a shared weight's gradient summed
        # over batch (and time, when batched) without a per-member intermediate
        if a.ndim == 2:
            return a.T @ g
        return _rows(a).T @ _rows(g)
    if a.ndim == 1 and b.ndim == 1:
        return g * a
    if a.ndim == 1:
        return a[:, None] * g[..., None, :]
    if b.ndim == 1:
        return (_swap(a) @ g[..., None])[..., 0]
    return _swap(a) @ g


def _matmul(a, b):
    if b.ndim == 2 and a.ndim > 2:  # stacked members on one weight: one 2-D product, not one per member
        return np.dot(_rows(a), b).reshape(a.shape[:-1] + b.shape[1:])
    return np.matmul(a, b)


defop("matmul", _matmul, (_matmul_vjp_a, _matmul_vjp_b), S.matmul, reads_out=False)


def matmul(a, b, *, name=None):
    """a @ b: 2-D, 1-D and batched (leading axes broadcast) as in numpy."""
    return apply("matmul", (a, b), name=name)


# ----------------------------------------------------------------- nonlinearities

def _logistic(x):
    # exp(-log(1 + exp(-x))): no overflow for large |x| and full relative precision
    # for very negative x (where 1 / (1 + exp(-x)) or 0.5 * (1 + tanh(x / 2)) cancel)
    return np.exp(-np.logaddexp(0.0, -x))


def _same_shape(s):
    return s


def _def_unary(name, forward, slope):
    """An elementwise op whose derivative is slope(out): its VJP is g * slope(out)."""
    defop(name, forward, (lambda g, out, x: g * slope(out),), _same_shape, slope=slope)


def _tanh_slope(out):
    """1 - out^2 with one temporary (the slopes of a whole chain are computed at once)."""
    s = out * out
    if type(s) is np.ndarray and s.ndim:
        return np.subtract(1.0, s, out=s)
    return 1.0 - s


def _logistic_slope(out):
    """out * (1 - out), with one temporary."""
    s = 1.0 - out
    s *= out
    return s


# these differentiate from their stored output: no second transcendental call
_def_unary("exp", np.exp, lambda out: out)
_def_unary("tanh", np.tanh, _tanh_slope)
_def_unary("logistic", _logistic, _logistic_slope)
_def_unary("relu", lambda x: np.maximum(x, 0.0), lambda out: out > 0)  # out > 0 exactly where x > 0
defop("log", np.log, (lambda g, out, x: g / x,), _same_shape)
defop("stop_gradient", lambda x: x, (lambda g, out, x: None,), _same_shape)


def exp(x, *, name=None):
    return apply("exp", (x,), name=name)


def log(x, *, name=None):
    return apply("log", (x,), name=name)


def tanh(x, *, name=None):
    return apply("tanh", (x,), name=name)


def logistic(x, *, name=None):
    """The logistic sigmoid 1 / (1 + exp(-x))."""
    return apply("logistic", (x,), name=name)


sigmoid = logistic


def relu(x, *, name=None):
    return apply("relu", (x,), name=name)


def stop_gradient(x, *, name=None):
    """Identity forward; no gradient flows back through it (a cut in the graph)."""
    return apply("stop_gradient", (x,), name=name)


def _softmax(x, *, axis):
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def _log_softmax(x, *, axis):
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def _axis_shape(s, *, axis):
    S.normalize_axis(axis, len(s))
    return s


defop("softmax", _softmax,
      (lambda g, out, x, *, axis: out * (g - np.sum(g * out, axis=axis, keepdims=True)),), _axis_shape)
defop("log_softmax", _log_softmax,
      (lambda g, out, x, *, axis: g - np.exp(out) * np.sum(g, axis=axis, keepdims=True),), _axis_shape)


def _is_int(x):
    """An int (Python or numpy), not a bool."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _one_axis(axis, opname, x):
    if _is_int(axis):
        return int(axis)
    what = f" of '{x.name}'" if isinstance(x, Node) else ""
    raise NodeTypeError(f"{opname}{what}: axis must be an int, got {axis!r}")


def softmax(x, axis=-1, *, name=None):
    return apply("softmax", (x,), {"axis": _one_axis(axis, "softmax", x)}, name=name)


def log_softmax(x, axis=-1, *, name=None):
    return apply("log_softmax", (x,), {"axis": _one_axis(axis, "log_softmax", x)}, name=name)


# ----------------------------------------------------------------- reductions and shape ops

def _expand_reduced(g, x, axis, keepdims):
    if not keepdims and axis is not None:
        g = np.expand_dims(g, S.normalize_axis(axis, x.ndim))
    return np.broadcast_to(g, x.shape)


def _count(x, axis):
    axes = S.normalize_axis(axis, x.ndim)
    return int(np.prod([x.shape[a] for a in axes], dtype=np.int64))


defop("sum", lambda x, *, axis, keepdims: np.sum(x, axis=axis, keepdims=keepdims),
      (lambda g, out, x, *, axis, keepdims: _expand_reduced(g, x, axis, keepdims),),
      lambda s, *, axis, keepdims: S.reduce(s, axis, keepdims))
defop("mean", lambda x, *, axis, keepdims: np.mean(x, axis=axis, keepdims=keepdims),
      (lambda g, out, x, *, axis, keepdims: _expand_reduced(g, x, axis, keepdims) / max(_count(x, axis), 1),),
      lambda s, *, axis, keepdims: S.reduce(s, axis, keepdims))


def _axis_attr(axis, opname="reduce", x=None):
    if axis is None or _is_int(axis):
        return None if axis is None else int(axis)
    try:
        axes = tuple(axis)
    except TypeError:
        axes = None
    if axes is None or not all(map(_is_int, axes)):
        what = f" of '{x.name}'" if isinstance(x, Node) else ""
        raise NodeTypeError(f"{opname}{what}: axis must be None, an int or a tuple of ints, got {axis!r}")
    return tuple(int(a) for a in axes)


def sum(x, axis=None, keepdims=False, *, name=None):  # noqa: A001 - numpy's name
    """Sum over ``axis`` (int, tuple or None for all)."""
    return apply("sum", (x,), {"axis": _axis_attr(axis, "sum", x), "keepdims": bool(keepdims)}, name=name)


def mean(x, axis=None, keepdims=False, *, name=None):
    """Mean over ``axis`` (int, tuple or None for all)."""
    return apply("mean", (x,), {"axis": _axis_attr(axis, "mean", x), "keepdims": bool(keepdims)}, name=name)


defop("reshape", lambda x, *, shape: np.reshape(x, shape),
      (lambda g, out, x, *, shape: np.reshape(g, x.shape),),
      lambda s, *, shape: S.reshape(s, shape))


def reshape(x, shape, *, name=None):
    """Reshape; one axis may be -1 (e.g. the batch axis)."""
    try:
        dims = tuple(shape)
    except TypeError:
        dims = None
    if dims is None or not all(map(_is_int, dims)):
        what = getattr(x, "name", x)
        raise NodeTypeError(f"reshape of '{what}': the new shape must be a tuple of ints (one may be -1), "
                            f"got {shape!r}")
    return apply("reshape", (x,), {"shape": tuple(int(d) for d in dims)}, name=name)


def _transpose_vjp(g, out, x, *, axes):
    if axes is None:
        return np.transpose(g)
    return np.transpose(g, np.argsort(axes))


defop("transpose", lambda x, *, axes: np.transpose(x, axes), (_transpose_vjp,),
      lambda s, *, axes: S.transpose(s, axes))


def transpose(x, axes=None, *, name=None):
    """Permute axes (reverse them when ``axes`` is None)."""
    if axes is not None:
        try:
            axes = tuple(axes)
        except TypeError:
            axes = (axes,)
        if not all(map(_is_int, axes)):
            raise NodeTypeError(f"transpose: axes must be a tuple of ints, got {axes!r}")
        nd = len(x.shape) if isinstance(x, Node) else np.ndim(x)
        axes = tuple(int(a) + nd if int(a) < 0 else int(a) for a in axes)  # (numpy's negative axes; the VJP inverts them)
    return apply("transpose", (x,), {"axes": axes}, name=name)


def _concat_vjp(i, g, out, *xs, axis):
    start = builtins.sum(x.shape[axis] for x in xs[:i])
    sl = [slice(None)] * g.ndim
    sl[axis] = slice(start, start + xs[i].shape[axis])
    return g[tuple(sl)]


defop("concat", lambda *xs, axis: np.concatenate(xs, axis=axis), (_concat_vjp,),
      lambda *shapes, axis: S.concat(shapes, axis), variadic=True)


def concat(nodes, axis=0, *, name=None):
    """Join nodes along ``axis``."""
    nodes = list(nodes)
    if not nodes:
        raise NodeTypeError("concat needs at least one node")
    return apply("concat", tuple(nodes), {"axis": _one_axis(axis, "concat", None)}, name=name)


def _has_array_index(idx):
    return any(isinstance(i, np.ndarray) or isinstance(i, list) for i in idx)


def _getitem_vjp(g, out, x, *, index):
    grad = np.zeros(x.shape, dtype=np.result_type(g.dtype, x.dtype))
    if _has_array_index(index):
        np.add.at(grad, index, g)  # repeated integer indices add up
    else:
        grad[index] = g
    return grad


defop("getitem", lambda x, *, index: x[index], (_getitem_vjp,), lambda s, *, index: S.index(s, index))


def _normalize_index(idx):
    if not isinstance(idx, tuple):
        idx = (idx,)
    out = []
    for i in idx:
        if isinstance(i, Node):
            raise NodeTypeError("indexing with a node is not supported: index with ints, slices or integer arrays")
        if isinstance(i, (list, np.ndarray)):
            arr = np.asarray(i)
            if arr.size == 0 and arr.ndim == 1:
                arr = np.zeros(0, dtype=np.intp)  # ([]: numpy's empty selection)
            if arr.dtype == bool:
                raise NodeTypeError("boolean-mask indexing is not supported (its shape is not static): "
                                    "use np.flatnonzero(mask) as an integer index")
            if not np.issubdtype(arr.dtype, np.integer):
                raise NodeTypeError(f"index arrays must hold integers, got dtype {arr.dtype}")
            out.append(arr)
        elif isinstance(i, slice):
            if not all(v is None or _is_int(v) for v in (i.start, i.stop, i.step)):
                raise NodeTypeError(f"slice bounds must be ints or None, got {i!r}")
            out.append(i)
        else:
            out.append(i)  # (anything else is judged by the shape rule, which names the node)
    return tuple(out)


def getitem(x, index, *, name=None):
    """x[index] for basic slices, ints, None/Ellipsis and integer arrays."""
    return apply("getitem", (x,), {"index": _normalize_index(index)}, name=name)


# ----------------------------------------------------------------- losses

def _se_forward(p, t):
    d = p - t
    return 0.5 * np.sum(d * d)


defop("squared_error", _se_forward,
      (lambda g, out, p, t: g * (p - t), lambda g, out, p, t: -g * (p - t)),
      lambda a, b: (S.broadcast(a, b), ())[1])


def _wse_forward(p, t, w):
    d = p - t
    return 0.5 * np.sum(w * d * d)


defop("weighted_squared_error", _wse_forward,
      (lambda g, out, p, t, w: g * w * (p - t), lambda g, out, p, t, w: -g * w * (p - t),
       lambda g, out, p, t, w: 0.5 * g * (p - t) ** 2),
      lambda a, b, c: (S.broadcast(a, b, c), ())[1])


def weighted_squared_error(pred, target, weight, *, name=None):
    """Half the weighted sum of squares: 0.5 * sum(weight * (pred - target)**2) (weight 0 ignores an entry)."""
    return apply("weighted_squared_error", (pred, target, weight), name=name)


def squared_error(pred, target, *, name=None):
    """Half the sum of squares of (pred - target): a scalar."""
    return apply("squared_error", (pred, target), name=name)


def _class_indices(labels, logits):
    lab = labels.astype(np.int64)
    n = logits.shape[-1]
    if lab.size and (lab.min() < 0 or lab.max() >= n):
        raise ShapeError(f"cross_entropy: labels must lie in 0..{n - 1}, got values from {lab.min()} to {lab.max()}")
    return lab


def _onehot(labels, logits):
    if labels.ndim == logits.ndim:  # one-hot rows or probabilities, of any dtype (broadcasting as the shape rule allows)
        return labels.astype(logits.dtype, copy=False)
    return np.eye(logits.shape[-1], dtype=logits.dtype)[_class_indices(labels, logits)]


def _ce_terms(logits, labels):
    """label * log_softmax(logits) per entry (class indices: the labelled entry of each row),
    0 where a label is 0 even when its logit is -inf (a class masked out: 0 * -inf is no NaN)."""
    logp = _log_softmax(logits, axis=-1)
    if labels.ndim == logits.ndim:
        p = labels.astype(logp.dtype, copy=False)
        out = np.zeros(np.broadcast_shapes(p.shape, logp.shape), logp.dtype)
        return np.multiply(p, logp, out=out, where=p != 0)
    lab = np.broadcast_to(_class_indices(labels, logits), logits.shape[:-1])
    return np.take_along_axis(logp, lab[..., None], axis=-1)


def _ce_forward(logits, labels):
    return -np.sum(_ce_terms(logits, labels))


def _ce_shape(ls, lab):
    if len(lab) == len(ls):
        if lab and ls and None not in (lab[-1], ls[-1]) and lab[-1] != ls[-1]:
            raise S.ShapeMismatch(
                f"labels {S.fmt(lab)} of the logits' rank are one-hot rows or probabilities and need "
                f"{ls[-1]} classes on the last axis; class indices go as shape {S.fmt(ls[:-1])}")
        S.broadcast(ls, lab)
    elif len(lab) == len(ls) - 1:
        S.broadcast(ls[:-1], lab)
    else:
        raise S.ShapeMismatch(
            f"labels {S.fmt(lab)} must be integer class indices of shape {S.fmt(ls[:-1])} "
            f"or one-hot/probabilities of shape {S.fmt(ls)}")
    return ()


defop("cross_entropy", _ce_forward,
      (lambda g, out, logits, labels: g * (_softmax(logits, axis=-1) - _onehot(labels, logits)),
       lambda g, out, logits, labels: (-g * _log_softmax(logits, axis=-1)
                                       if labels.ndim == logits.ndim else None)),
      _ce_shape)


def cross_entropy(logits, labels, *, name=None):
    """Summed softmax cross-entropy of ``logits`` against integer labels or one-hot rows."""
    return apply("cross_entropy", (logits, labels), name=name)


# ----------------------------------------------------------------- batch broadcasting (used by rnn)

def _like_shape(x, like):
    if len(like) < 1:
        raise S.ShapeMismatch(f"broadcast_like needs a reference of rank >= 1, got {S.fmt(like)}")
    return tuple(like[:-1]) + tuple(x[-1:])


def _broadcast_like(x, like):
    """x repeated over like's leading axes, as a new array (np.broadcast_to's read-only view
    costs more to make than copying the few rows an initial state has)."""
    x = np.asarray(x)
    out = np.empty(like.shape[:-1] + x.shape[-1:], x.dtype)
    out[...] = x
    return out


defop("broadcast_like", _broadcast_like, (lambda g, out, x, like: g, lambda g, out, x, like: None), _like_shape)


def broadcast_like(x, like, *, name=None):
    """``x`` (a row of units) repeated over the leading axes of ``like`` (e.g. its batch):
    the gradient of x is the sum over those rows, while each row keeps its own."""
    return apply("broadcast_like", (x, like), name=name)


# ----------------------------------------------------------------- unit clamping (used by rnn)

def _clamp_forward(computed, value, *, units):
    shape = np.broadcast_shapes(computed.shape[:-1], value.shape[:-1]) + computed.shape[-1:]
    out = np.empty(shape, dtype=np.result_type(computed, value))
    out[...] = computed  # a batch-free initial state broadcasts over the clamped batch
    out[..., units] = value
    return out


def _clamp_vjp_computed(g, out, computed, value, *, units):
    g = np.array(g, copy=True)
    g[..., units] = 0.0  # a clamped unit ignores what its inputs computed
    return g


def _clamp_shape(c, v, *, units):
    if len(v) < 1 or (v[-1] is not None and v[-1] != len(units)):
        raise S.ShapeMismatch(f"clamp of {len(units)} units needs values with last axis {len(units)}, got {S.fmt(v)}")
    return S.broadcast(c[:-1], v[:-1]) + c[-1:]


defop("clamp", _clamp_forward,
      (_clamp_vjp_computed, lambda g, out, computed, value, *, units: g[..., units]), _clamp_shape)


def clamp(computed, value, units, *, name=None):
    """``computed`` with the units (last axis) in ``units`` replaced by ``value``."""
    units = np.asarray(units, dtype=np.int64)
    return apply("clamp", (computed, value), {"units": units}, name=name)


# ----------------------------------------------------------------- batching rules

def _lead(g, ndim):
    """A per-member scalar gradient (members,) shaped to broadcast against stacked inputs."""
    return np.reshape(g, (-1,) + (1,) * (ndim - 1))


def _rest(x):
    return tuple(range(1, x.ndim))


def _se_batched(p, t):
    d = p - t
    d *= d
    return 0.5 * np.add.reduce(d, axis=_rest(d))  # (each member's sum as the single rule's np.sum)


def _se_batched_vjp(sign):
    """dE/dp (sign 1) or dE/dt (sign -1) of stacked squared errors: g_k * (p - t) per member,
    made in the one temporary p - t when g's dtype is the difference's."""
    def vjp(g, out, p, t):
        d = p - t
        lead = _lead(g, d.ndim)
        if lead.dtype != d.dtype:
            return sign * lead * d
        d *= lead
        return d if sign > 0 else np.negative(d, out=d)
    return vjp


def _wse_batched(p, t, w):
    d = p - t
    return 0.5 * np.sum(w * d * d, axis=_rest(d))


def _ce_batched(logits, labels):
    return -np.sum(_ce_terms(logits, labels), axis=_rest(logits))


for _name in ("add", "sub", "mul", "div", "neg", "pow", "add_n", "identity", "exp", "log", "tanh", "logistic",
              "relu", "stop_gradient", "clamp"):
    _set_batch(_name, "elementwise")
_set_batch("matmul", "matmul")
_set_batch("squared_error", (_se_batched, True, (_se_batched_vjp(1), _se_batched_vjp(-1))))
_set_batch("weighted_squared_error", (_wse_batched, True, (
    lambda g, out, p, t, w: _lead(g, max(p.ndim, t.ndim, w.ndim)) * w * (p - t),
    lambda g, out, p, t, w: -_lead(g, max(p.ndim, t.ndim, w.ndim)) * w * (p - t),
    lambda g, out, p, t, w: 0.5 * _lead(g, max(p.ndim, t.ndim, w.ndim)) * (p - t) ** 2)))
_set_batch("cross_entropy", (_ce_batched, False, (
    lambda g, out, logits, labels: _lead(g, logits.ndim) * (_softmax(logits, axis=-1) - _onehot(labels, logits)),
    lambda g, out, logits, labels: (-_lead(g, logits.ndim) * _log_softmax(logits, axis=-1)
                                    if labels.ndim == logits.ndim else None))))
