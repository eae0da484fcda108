"""One table of bad inputs for every public entry point of ../shared/API.md.

Each row calls one entry point with a wrong type, shape, name or value and asserts
two things: the exception is a ``tinygraph.GraphError`` subclass (the library's
promise: one ``except`` catches every error a user can cause; the few rows where
API.md documents a plain built-in exception say so with ``graph_error=False``),
and its message names the thing at fault (the node, group, weight, file or bad
value) through substrings or regular expressions.

Rows whose entry point does not exist yet are skipped (``requires``); rows that
show a library bug are kept, marked ``xfail(strict=True)`` with the bug in the
reason, so fixing the bug turns the row into an unexpected pass that asks for the
marker to be removed.
"""

import inspect
import re
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest

import rnn
import tinygraph as tg


# ----------------------------------------------------------------- the table's machinery

@dataclass
class Case:
    id: str
    fn: object  # fn(t) -> anything; must raise.  t is pytest's tmp_path when the parameter is named "t"
    match: tuple  # substrings (str), regexes (re.Pattern) or fn(tmp_path) -> substring the message must hold
    exc: type = tg.GraphError
    graph_error: bool = True  # the error must also be a tg.GraphError
    requires: tuple = ()  # dotted names that must exist, else the row is skipped
    bug: str = None  # a known library bug: the row is a strict xfail


CASES = []
_IDS = set()


def case(id, fn, *match, exc=tg.GraphError, graph_error=True, requires=(), bug=None):
    assert id not in _IDS, f"duplicate case id {id}"
    _IDS.add(id)
    CASES.append(Case(id, fn, match, exc, graph_error, tuple(requires), bug))


def row(id, *match, **kw):
    """Decorator form of ``case`` for rows that need a few statements."""
    def deco(fn):
        case(id, fn, *match, **kw)
        return fn
    return deco


def _exists(dotted):
    root, *rest = dotted.split(".")
    obj = {"tg": tg, "rnn": rnn, "RecurrentNet": rnn.RecurrentNet}[root]
    for part in rest:
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


# ----------------------------------------------------------------- small fixtures (cheap, built per row)

def mlp(name="mlp"):
    """The README's two-layer example: x (None, 3) @ W (3, 4) + b -> tanh -> squared loss."""
    g = tg.Graph(name)
    x = g.input("x", shape=(None, 3))
    y = g.input("y", shape=(None, 4))
    W = g.param("W", np.arange(12.0).reshape(3, 4) / 10)
    b = g.param("b", np.zeros(4))
    h = tg.tanh(x @ W + b, name="h")
    loss = tg.sum((h - y) ** 2, name="loss")
    feeds = {"x": np.ones((2, 3)), "y": np.zeros((2, 4))}
    return SimpleNamespace(g=g, x=x, y=y, W=W, b=b, h=h, loss=loss, feeds=feeds)


def run(m):
    m.acts = m.g.forward(m.feeds)
    m.grads = m.acts.backward(m.loss)
    return m


def other():
    """A second graph, for nodes, activations and gradients that belong elsewhere."""
    return run(mlp("other"))


def pair():
    """Two params of equal value and one of another shape, for ties and constraints."""
    g = tg.Graph("ties")
    A = np.arange(6.0).reshape(2, 3)
    return SimpleNamespace(g=g, W1=g.param("W1", A), W2=g.param("W2", A.copy()),
                           W3=g.param("W3", np.ones((3, 2))), S=g.param("S", np.ones((2, 2))),
                           x=g.input("x", (None, 3)))


T, B = 3, 2
X = np.zeros((T, B, 2))
Y = np.full((T, B, 1), 0.5)


def adder():
    """The API.md net: x (2, input) -> h (3, learned initial state, recurrent) -> y (1, output)."""
    net = rnn.RecurrentNet("adder")
    net.add_group("x", 2, role="input")
    net.add_group("h", 3, activation="logistic", initial="learned")
    net.add_group("y", 1, activation="logistic", role="output")
    net.connect("x", "h")
    net.connect("h", "h", delay=1)
    net.connect("h", "y")
    return net


def classifier():
    """x -> c, a softmax group of 3 classes, for cross-entropy targets."""
    net = rnn.RecurrentNet("cls")
    net.add_group("x", 2, role="input")
    net.add_group("c", 3, activation="softmax", role="output")
    net.connect("x", "c")
    net.connect("c", "c", delay=1)
    return net


# ================================================================= tinygraph: Graph.input / param / const

case("input-name-int", lambda _: tg.Graph("g").input(3, (None, 3)), "names", "3")
case("input-name-empty", lambda _: tg.Graph("g").input("", (None, 3)), "non-empty", "''")
case("input-shape-int", lambda _: tg.Graph("g").input("x", 5), "'x'", "5")
case("input-shape-negative", lambda _: tg.Graph("g").input("x", (-1, 3)), "'x'", "(-1, 3)")
case("input-shape-strings", lambda _: tg.Graph("g").input("x", ("a", 3)), "'x'", "'a'")
case("input-shape-float", lambda _: tg.Graph("g").input("x", (None, 2.5)), "'x'", "2.5")
case("input-dtype-bogus", lambda _: tg.Graph("g").input("x", (None, 3), dtype="notadtype"), "'x'", "notadtype")


@row("input-duplicate-name", "already has a node named 'x'", "'g'")
def _(_):
    g = tg.Graph("g")
    g.input("x", (None, 3))
    g.input("x", (None, 3))


case("param-strings", lambda _: tg.Graph("g").param("W", "abc"), "param 'W'", "<U3")
case("param-name-none", lambda _: tg.Graph("g").param(None, np.ones(3)), "None")
case("param-ragged", lambda _: tg.Graph("g").param("W", [[1.0], [1.0, 2.0]]), "'W'")
case("param-object", lambda _: tg.Graph("g").param("W", object()), "'W'", "object")


@row("param-duplicate-of-input", "already has a node named 'x'", "input")
def _(_):
    g = tg.Graph("g")
    g.input("x", (None, 3))
    g.param("x", np.ones(3))


case("const-strings", lambda _: tg.Graph("g").const("abc", name="c"), "const 'c'", "<U3")


# ================================================================= ops and operators

case("matmul-inner-mismatch", lambda _: (lambda m: m.x @ m.g.param("V", np.ones((4, 5))))(mlp()),
     "matmul", "'x'", "'V'", "(None, 3)", "(4, 5)", exc=tg.ShapeError)
case("matmul-named-node", lambda _: (lambda m: tg.matmul(m.x, m.b, name="proj"))(mlp()),
     "'proj'", "(None, 3)", "(4,)", exc=tg.ShapeError)
case("matmul-scalar-operand", lambda _: (lambda m: m.g.param("s", np.array(2.0)) @ m.W)(mlp()),
     "'s'", "()", exc=tg.ShapeError)
case("add-broadcast", lambda _: (lambda m: m.x + m.b)(mlp()), "add", "'x'", "'b'", "(None, 3)", "(4,)",
     exc=tg.ShapeError)
case("sub-broadcast", lambda _: (lambda m: m.W - m.x)(mlp()), "sub", "'W'", "'x'", exc=tg.ShapeError)
case("mul-broadcast", lambda _: (lambda m: tg.mul(m.b, m.x))(mlp()), "mul", "'b'", "'x'", exc=tg.ShapeError)
case("div-broadcast", lambda _: (lambda m: m.x / np.ones(5))(mlp()), "div", "'x'", "(5,)", exc=tg.ShapeError)
case("add-no-node", lambda _: tg.add(1.0, np.ones(3)), "add", "float", "ndarray", exc=tg.NodeTypeError)
case("exp-of-string", lambda _: tg.exp("x"), "exp", "str", exc=tg.NodeTypeError)
case("add-string-operand", lambda _: (lambda m: m.x + "abc")(mlp()), "add", "'x'", "<U3")
case("add-foreign-node", lambda _: (lambda m, o: m.x + o.x)(mlp(), other()),
     "'x'", "'other'", "'mlp'", exc=tg.NodeTypeError)
case("pow-node-exponent", lambda _: (lambda m: m.x ** m.x)(mlp()), "exponent", "Node", exc=tg.NodeTypeError)
case("pow-array-exponent", lambda _: (lambda m: m.x ** np.array([1.0, 2.0]))(mlp()), "exponent", "ndarray",
     exc=tg.NodeTypeError)
case("softmax-bad-axis", lambda _: (lambda m: tg.softmax(m.x, axis=5))(mlp()), "softmax", "axis 5", "'x'",
     exc=tg.ShapeError)
case("log-softmax-bad-axis", lambda _: (lambda m: tg.log_softmax(m.W, axis=-3))(mlp()), "axis -3", "'W'",
     exc=tg.ShapeError)
case("sum-bad-axis", lambda _: (lambda m: tg.sum(m.x, axis=2))(mlp()), "sum", "axis 2", "'x'", exc=tg.ShapeError)
case("mean-repeated-axis", lambda _: (lambda m: tg.mean(m.W, axis=(0, -2)))(mlp()), "mean", "repeats", "'W'",
     exc=tg.ShapeError)
case("sum-string-axis", lambda _: (lambda m: tg.sum(m.x, axis="rows"))(mlp()), "sum", "'rows'")
case("reshape-incompatible", lambda _: (lambda m: tg.reshape(m.W, (5, -1)))(mlp()), "reshape", "'W'", "(3, 4)",
     "(5, -1)", exc=tg.ShapeError)
case("reshape-two-minus-one", lambda _: (lambda m: tg.reshape(m.W, (-1, -1)))(mlp()), "'W'", "at most one",
     exc=tg.ShapeError)
case("reshape-string-shape", lambda _: (lambda m: tg.reshape(m.W, "ab"))(mlp()), "reshape", "'W'")
case("transpose-bad-axes", lambda _: (lambda m: tg.transpose(m.W, axes=(0, 0)))(mlp()), "transpose", "(0, 0)",
     "'W'", exc=tg.ShapeError)
case("concat-empty", lambda _: tg.concat([]), "concat", "at least one", exc=tg.NodeTypeError)
case("concat-axis-mismatch", lambda _: (lambda m: tg.concat([m.x, m.W], axis=0))(mlp()), "concat", "'x'", "'W'",
     "(None, 3)", "(3, 4)", exc=tg.ShapeError)
case("concat-rank-mismatch", lambda _: (lambda m: tg.concat([m.W, m.b]))(mlp()), "concat", "equal rank", "'W'",
     "'b'", exc=tg.ShapeError)
case("index-out-of-range", lambda _: (lambda m: m.W[5])(mlp()), "getitem", "5", "'W'", "(3, 4)",
     exc=tg.ShapeError)
case("index-column-out-of-range", lambda _: (lambda m: m.x[:, 7])(mlp()), "7", "'x'", "(None, 3)",
     exc=tg.ShapeError)
case("index-too-many-axes", lambda _: (lambda m: m.b[0, 0])(mlp()), "'b'", "(4,)", exc=tg.ShapeError)
case("index-float-slice", lambda _: mlp().W[0.5:2], "slice bounds must be ints", "0.5", exc=tg.NodeTypeError)
case("softmax-float-axis", lambda _: tg.softmax(mlp().h, axis=1.5), "softmax of 'h'", "axis must be an int", "1.5",
     exc=tg.NodeTypeError)
case("concat-string-axis", lambda _: (lambda m: tg.concat([m.W, m.W], axis="a"))(mlp()), "concat", "'a'",
     exc=tg.NodeTypeError)
case("pow-string-exponent", lambda _: mlp().W ** "a", "exponent", "'a'", exc=tg.NodeTypeError)
case("rpow-negative-base", lambda _: (-2) ** mlp().W, "-2", "'W'", "positive", exc=tg.NodeTypeError)
case("param-complex", lambda _: tg.Graph("c").param("c", np.array([1 + 2j])), "param 'c'", "complex",
     exc=tg.NodeTypeError)
case("reshape-never-fits-a-batch", lambda _: tg.reshape(mlp().x, (4, 5)), "(None, 3)", "(4, 5)", "20",
     exc=tg.ShapeError)
case("index-string", lambda _: (lambda m: m.W["a"])(mlp()), "'a'", "'W'", exc=tg.ShapeError)
case("index-by-node", lambda _: (lambda m: m.W[m.b])(mlp()), "node", exc=tg.NodeTypeError)
case("index-bool-mask", lambda _: (lambda m: m.b[np.array([True, False, True, False])])(mlp()), "boolean",
     exc=tg.NodeTypeError)
case("index-float-array", lambda _: (lambda m: m.b[[0.5, 1.0]])(mlp()), "integers", "float64",
     exc=tg.NodeTypeError)
case("squared-error-mismatch", lambda _: (lambda m: tg.squared_error(m.h, m.x))(mlp()), "squared_error", "'h'",
     "'x'", "(None, 4)", "(None, 3)", exc=tg.ShapeError)
case("cross-entropy-label-shape", lambda _: (lambda m: tg.cross_entropy(m.h, m.x))(mlp()), "cross_entropy", "'h'",
     "'x'", exc=tg.ShapeError)
case("cross-entropy-label-rank", lambda _: (lambda m: tg.cross_entropy(
    m.h, m.g.input("lab", (None, 4, 2))))(mlp()), "'lab'", "(None, 4, 2)", exc=tg.ShapeError)
case("op-duplicate-name", lambda _: (lambda m: tg.exp(m.W, name="h"))(mlp()), "already has a node named 'h'")
case("node-truth-value", lambda _: bool(mlp().h), "'h'", "truth value", exc=TypeError)
case("node-iter", lambda _: list(mlp().h), "'h'", "not iterable", exc=TypeError)
case("node-len-unknown", lambda _: len(mlp().x), "'x'", "(None, 3)", exc=TypeError)


# ================================================================= Graph lookup and forward feeds

case("graph-getitem-unknown", lambda _: mlp().g["nope"], "'nope'", "'mlp'",
     exc=tg.UnknownNodeError)
case("feeds-not-dict", lambda _: mlp().g.forward([np.ones((2, 3))]), "feeds", "list", exc=tg.FeedError)


@row("feed-missing", "missing feed", "'y'", "(None, 4)", exc=tg.FeedError)
def _(_):
    m = mlp()
    m.g.forward({"x": np.ones((2, 3))})


@row("feed-unknown-name", "'z'", "no input", "['x', 'y']", exc=tg.FeedError)
def _(_):
    m = mlp()
    m.g.forward(dict(m.feeds, z=np.ones(3)))


@row("feed-a-param", "'W'", "param", exc=tg.FeedError)
def _(_):
    m = mlp()
    m.g.forward(dict(m.feeds, W=np.ones((3, 4))))


@row("feed-wrong-rank", "'x'", "rank 2", "(None, 3)", "(3,)", exc=tg.FeedError)
def _(_):
    m = mlp()
    m.g.forward(dict(m.feeds, x=np.ones(3)))


@row("feed-wrong-size", "'x'", "(None, 3)", "(2, 5)", "axis 1 must be 3", exc=tg.FeedError)
def _(_):
    m = mlp()
    m.g.forward(dict(m.feeds, x=np.ones((2, 5))))


@row("feed-strings", "'x'", "dtype", exc=tg.FeedError)
def _(_):
    m = mlp()
    m.g.forward(dict(m.feeds, x=np.array([["a", "b", "c"]])))


@row("feed-ragged", "'x'", "cannot be read", exc=tg.FeedError)
def _(_):
    m = mlp()
    m.g.forward(dict(m.feeds, x=[[1.0, 2.0, 3.0], [1.0]]))


@row("feed-int-key", "feed keys", "int", exc=tg.FeedError)
def _(_):
    m = mlp()
    m.g.forward({**m.feeds, 5: np.ones((2, 3))})


@row("feed-foreign-node", "'x'", "'other'", "'mlp'", exc=tg.NodeTypeError)
def _(_):
    m, o = mlp(), other()
    m.g.forward({o.x: np.ones((2, 3)), "y": np.zeros((2, 4))})


@row("feed-integer-input-fraction", "'k'", "integer", exc=tg.FeedError)
def _(_):
    g = tg.Graph("g")
    k = g.input("k", (None,), dtype=np.int64)
    g.forward({"k": np.array([0.5, 1.0])}, outputs=[k])


@row("forward-outputs-foreign", "'h'", "'other'", "'mlp'", exc=tg.NodeTypeError)
def _(_):
    m, o = mlp(), other()
    m.g.forward(m.feeds, outputs=[o.h])


@row("forward-outputs-unknown", "'nope'", exc=tg.UnknownNodeError)
def _(_):
    m = mlp()
    m.g.forward(m.feeds, outputs=["nope"])


@row("forward-check-finite", "'logx'", "NaN", exc=tg.NonFiniteError)
def _(_):
    g = tg.Graph("g")
    x = g.input("x", (None,))
    tg.log(x, name="logx")
    with np.errstate(invalid="ignore"):
        g.forward({"x": np.array([-1.0])}, check_finite=True)


# ================================================================= acts[...] / grads[...] / backward

@row("acts-foreign-node", "'h'", "'other'", "'mlp'", exc=tg.NodeTypeError)
def _(_):
    m, o = run(mlp()), other()
    m.acts[o.h]


@row("acts-unknown-name", "'nope'", exc=tg.UnknownNodeError)
def _(_):
    run(mlp()).acts["nope"]


@row("acts-not-a-node", "int", exc=tg.NodeTypeError)
def _(_):
    run(mlp()).acts[3]


@row("acts-built-after-run", "'late'", "not computed", exc=tg.UnknownNodeError)
def _(_):
    m = run(mlp())
    late = tg.exp(m.h, name="late")
    m.acts[late]


@row("acts-not-requested", "'loss'", "not computed", exc=tg.UnknownNodeError)
def _(_):
    m = mlp()
    acts = m.g.forward(m.feeds, outputs=[m.h])
    acts[m.loss]


@row("grads-foreign-node", "'W'", "'other'", "'mlp'", exc=tg.NodeTypeError)
def _(_):
    m, o = run(mlp()), other()
    m.grads[o.W]


@row("grads-built-after-run", "'late'", exc=tg.UnknownNodeError)
def _(_):
    m = run(mlp())
    late = tg.exp(m.h, name="late")
    m.grads[late]


@row("backward-non-scalar", "'h'", "not a scalar", "seed")
def _(_):
    m = mlp()
    m.g.forward(m.feeds).backward(m.h)


@row("backward-seed-shape", "seed", "'loss'", "(3,)", exc=tg.ShapeError)
def _(_):
    m = mlp()
    m.g.forward(m.feeds).backward(m.loss, seed=np.ones(3))


@row("backward-seed-strings", "seed", "'h'")
def _(_):
    m = mlp()
    m.g.forward(m.feeds).backward(m.h, seed="abc")


@row("backward-foreign-loss", "'loss'", "'other'", "'mlp'", exc=tg.NodeTypeError)
def _(_):
    m, o = mlp(), other()
    m.g.forward(m.feeds).backward(o.loss)


@row("backward-unknown-name", "'nope'", exc=tg.UnknownNodeError)
def _(_):
    m = mlp()
    m.g.forward(m.feeds).backward("nope")


# ================================================================= tg.check_gradients

case("checkgrad-foreign-loss", lambda _: (lambda m, o: tg.check_gradients(m.g, o.loss, m.feeds))(mlp(), other()),
     "'loss'", "'other'", "'mlp'", exc=tg.NodeTypeError)
case("checkgrad-missing-feed", lambda _: (lambda m: tg.check_gradients(m.g, m.loss, {"x": np.ones((2, 3))}))(mlp()),
     "'y'", exc=tg.FeedError)
case("checkgrad-wrt-intermediate", lambda _: (lambda m: tg.check_gradients(m.g, m.loss, m.feeds, wrt=[m.h]))(mlp()),
     "'h'", "tanh", "params and inputs")
case("checkgrad-wrt-foreign", lambda _: (lambda m, o: tg.check_gradients(m.g, m.loss, m.feeds, wrt=[o.W]))(
    mlp(), other()), "'W'", "'other'", exc=tg.NodeTypeError)
case("checkgrad-non-scalar-loss", lambda _: (lambda m: tg.check_gradients(m.g, m.h, m.feeds))(mlp()),
     "'h'", "not a scalar")
case("checkgrad-not-a-graph", lambda _: (lambda m: tg.check_gradients("mlp", m.loss, m.feeds))(mlp()),
     "graph", "str")
case("checkgrad-eps-zero", lambda _: (lambda m: tg.check_gradients(m.g, m.loss, m.feeds, eps=0.0))(mlp()),
     "eps", "0")
case("checkgrad-feeds-list", lambda _: (lambda m: tg.check_gradients(m.g, m.loss, [np.ones((2, 3))]))(mlp()),
     "feeds", "list", exc=tg.FeedError)


# ================================================================= ties and linear constraints

case("tie-single", lambda _: (lambda p: p.g.tie(p.W1))(pair()), "at least two", "'W1'", exc=tg.ConstraintError)
case("tie-different-values", lambda _: (lambda p: (p.W2.value.__setitem__((0, 0), 9.0), p.g.tie(p.W1, p.W2)))(
    pair()), "'W1'", "'W2'", "different values", "align=True", exc=tg.ConstraintError)
case("tie-different-shapes", lambda _: (lambda p: p.g.tie(p.W1, p.W3))(pair()), "'W1'", "'W3'", "(2, 3)", "(3, 2)",
     exc=tg.ConstraintError)
case("tie-bad-reduce", lambda _: (lambda p: p.g.tie(p.W1, p.W2, reduce="max"))(pair()), "reduce", "'max'",
     exc=tg.ConstraintError)
case("tie-an-input", lambda _: (lambda p: p.g.tie(p.W1, p.x))(pair()), "'x'", "input", exc=tg.NodeTypeError)
case("tie-foreign-param", lambda _: (lambda p, o: p.g.tie(p.W1, o.W))(pair(), other()), "'W'", "'other'", "'ties'",
     exc=tg.NodeTypeError)
case("tie-not-a-node", lambda _: (lambda p: p.g.tie(p.W1, 5))(pair()), "int", exc=tg.NodeTypeError)
case("tie-unknown-name", lambda _: (lambda p: p.g.tie(p.W1, "W9"))(pair()), "'W9'", exc=tg.UnknownNodeError)
case("tie-repeated", lambda _: (lambda p: p.g.tie(p.W1, p.W1))(pair()), "twice", "'W1'", exc=tg.ConstraintError)


@row("tie-reduce-conflict", "'W2'", "reduce='sum'", exc=tg.ConstraintError)
def _(_):
    p = pair()
    p.g.tie(p.W1, p.W2, reduce="sum")
    W4 = p.g.param("W4", p.W1.value.copy())
    p.g.tie(p.W2, W4, reduce="mean")


case("constrain-empty", lambda _: pair().g.constrain({}), "constrain", "dict", exc=tg.ConstraintError)
case("constrain-not-dict", lambda _: (lambda p: p.g.constrain([p.W1]))(pair()), "constrain", "dict",
     exc=tg.ConstraintError)
case("constrain-coef-width", lambda _: (lambda p: p.g.constrain({p.W1: np.ones((1, 5))}))(pair()),
     "'W1'", "(1, 5)", "6 entries", exc=tg.ConstraintError)
case("constrain-row-mismatch", lambda _: (lambda p: p.g.constrain(
    {p.W1: np.ones((1, 6)), p.W3: np.ones((2, 6))}))(pair()), "same number of rows", "'W3'", exc=tg.ConstraintError)
case("constrain-rhs-size", lambda _: (lambda p: p.g.constrain({p.W1: np.ones((1, 6))}, rhs=[1.0, 2.0]))(pair()),
     "rhs", "2 entries", "1 rows", exc=tg.ConstraintError)
case("constrain-nan-coefficients", lambda _: (lambda p: p.g.constrain({p.W1: np.full((1, 6), np.nan)}))(pair()),
     "finite", "'W1'", exc=tg.ConstraintError)
case("constrain-string-coefficients", lambda _: (lambda p: p.g.constrain({p.W1: [["a"] * 6]}))(pair()),
     "'W1'", exc=tg.ConstraintError)
case("constrain-violated", lambda _: (lambda p: p.g.constrain({p.W1: np.ones((1, 6))}, rhs=[0.0]))(pair()),
     "'W1'", "violate", "project_init=True", exc=tg.ConstraintError)


@row("constrain-inconsistent", "inconsistent", "'W1'", exc=tg.ConstraintError)
def _(_):
    p = pair()
    C = np.ones((1, 6))
    total = float(p.W1.value.sum())
    p.g.constrain({p.W1: C}, rhs=[total])
    p.g.constrain({p.W1: C}, rhs=[total + 1.0], project_init=True)


case("constrain-an-input", lambda _: (lambda p: p.g.constrain({p.x: np.ones((1, 3))}))(pair()), "'x'", "input",
     exc=tg.NodeTypeError)
case("symmetric-non-square", lambda _: (lambda p: p.g.constrain_symmetric(p.W1))(pair()), "'W1'", "(2, 3)",
     "square", exc=tg.ConstraintError)
case("symmetric-violated", lambda _: (lambda p: (p.S.value.__setitem__((0, 1), 5.0),
                                                 p.g.constrain_symmetric(p.S)))(pair()),
     "'S'", "violate", exc=tg.ConstraintError)
case("symmetric-an-input", lambda _: (lambda p: p.g.constrain_symmetric(p.x))(pair()), "'x'", "input",
     exc=tg.NodeTypeError)
case("transpose-shapes", lambda _: (lambda p: p.g.constrain_transpose(p.W1, p.W2))(pair()), "'W1'", "'W2'",
     "(2, 3)", exc=tg.ConstraintError)
case("transpose-violated", lambda _: (lambda p: p.g.constrain_transpose(p.W1, p.W3))(pair()), "'W1'", "'W3'",
     "violate", exc=tg.ConstraintError)
case("transpose-foreign", lambda _: (lambda p, o: p.g.constrain_transpose(p.W1, o.W))(pair(), other()),
     "'W'", "'other'", exc=tg.NodeTypeError)


# ================================================================= optimizers

case("sgd-no-params", lambda _: tg.SGD([], lr=0.1), "SGD", "no parameters")
case("sgd-input-as-param", lambda _: (lambda m: tg.SGD([m.W, m.x], lr=0.1))(mlp()), "SGD", "'x'",
     exc=tg.NodeTypeError)
case("sgd-number-as-param", lambda _: (lambda m: tg.SGD([m.W, 5], lr=0.1))(mlp()), "SGD", "int",
     exc=tg.NodeTypeError)
case("sgd-single-node", lambda _: tg.SGD(mlp().W, lr=0.1), "SGD", "'W'")
case("sgd-two-graphs", lambda _: (lambda m, o: tg.SGD([m.W, o.W], lr=0.1))(mlp(), other()), "SGD", "2 graphs")
case("sgd-lr-zero", lambda _: tg.SGD(mlp().g.params, lr=0), "SGD", "lr", "0")
case("sgd-lr-negative", lambda _: tg.SGD(mlp().g.params, lr=-0.5), "SGD", "lr", "-0.5")
case("sgd-lr-nan", lambda _: tg.SGD(mlp().g.params, lr=float("nan")), "SGD", "lr", "nan")
case("sgd-lr-string", lambda _: tg.SGD(mlp().g.params, lr="fast"), "SGD", "lr", "'fast'")
case("sgd-lr-inf", lambda _: tg.SGD(mlp().g.params, lr=float("inf")), "SGD", "lr", "inf")
case("sgd-momentum-one", lambda _: tg.SGD(mlp().g.params, lr=0.1, momentum=1.0), "momentum", "1.0")
case("sgd-momentum-negative", lambda _: tg.SGD(mlp().g.params, lr=0.1, momentum=-0.1), "momentum", "-0.1")
case("sgd-momentum-string", lambda _: tg.SGD(mlp().g.params, lr=0.1, momentum="high"), "momentum", "'high'")
case("sgd-clip-norm-zero", lambda _: tg.SGD(mlp().g.params, lr=0.1, clip_norm=0), "clip_norm", "0")
case("adam-lr-zero", lambda _: tg.Adam(mlp().g.params, lr=0.0), "Adam", "lr")
case("adam-betas-one-entry", lambda _: tg.Adam(mlp().g.params, betas=(0.9,)), "Adam", "betas", "(0.9,)")
case("adam-beta-one", lambda _: tg.Adam(mlp().g.params, betas=(1.0, 0.999)), "Adam", "betas", "1.0")
case("adam-beta-negative", lambda _: tg.Adam(mlp().g.params, betas=(0.9, -0.1)), "Adam", "betas", "-0.1")
case("adam-betas-scalar", lambda _: tg.Adam(mlp().g.params, betas=0.9), "Adam", "betas", "0.9")
case("sgd-weight-decay-string", lambda _: tg.SGD(mlp().g.params, lr=0.1, weight_decay="lots"), "weight_decay",
     "'lots'")
case("adam-eps-zero", lambda _: tg.Adam(mlp().g.params, eps=0.0), "Adam", "eps", "0.0")


@row("step-foreign-gradients", "SGD.step", "'other'", "'mlp'")
def _(_):
    m, o = mlp(), other()
    tg.SGD(m.g.params, lr=0.1).step(o.grads)


@row("step-dict-foreign-param", "SGD.step", "'W'", "'other'")
def _(_):
    m, o = mlp(), other()
    tg.SGD(m.g.params, lr=0.1).step({o.W: np.ones((3, 4))})


@row("step-not-gradients", "SGD.step", "str", exc=tg.NodeTypeError)
def _(_):
    tg.SGD(mlp().g.params, lr=0.1).step("grads")


@row("step-dict-wrong-shape", "Adam.step", "'W'", "(2, 2)", "(3, 4)")
def _(_):
    m = mlp()
    tg.Adam(m.g.params).step({m.W: np.ones((2, 2))})


@row("step-dict-strings", "SGD.step", "'W'")
def _(_):
    m = mlp()
    tg.SGD(m.g.params, lr=0.1).step({m.W: "abc"})


# ================================================================= tg.render

case("render-not-a-graph", lambda _: tg.render("mlp"), "render", "str")
case("render-none", lambda _: tg.render(None), "render", "None")
case("render-foreign-acts", lambda _: (lambda m, o: tg.render(m.g, acts=o.acts))(mlp(), other()),
     "acts", "'other'", "'mlp'")
case("render-foreign-grads", lambda _: (lambda m, o: tg.render(m.g, grads=o.grads))(mlp(), other()),
     "grads", "'other'", "'mlp'")
case("render-acts-not-activations", lambda _: tg.render(mlp().g, acts={"x": 1}), "acts", "dict")
case("render-unknown-node", lambda _: tg.render(mlp().g, nodes=["nope"]), "'nope'")
case("render-foreign-highlight", lambda _: (lambda m, o: tg.render(m.g, highlight={o.W: "#ff0000"}))(mlp(), other()),
     "'W'", "'other'")
case("render-too-many-nodes", lambda _: tg.render(mlp().g, max_nodes=2), "max_nodes=2", "'mlp'")


# ================================================================= tg.save_params / tg.load_params

def _graph_with(arrays):
    g = tg.Graph("file")
    for k, v in arrays.items():
        g.param(k, v)
    return g


IO = ("tg.save_params", "tg.load_params")
case("load-params-missing-file", lambda t: tg.load_params(mlp().g, t / "nope.npz"), "nope.npz", "no such file",
     requires=IO)


@row("load-params-not-npz", "junk.npz", "not a .npz", requires=IO)
def _(t):
    (t / "junk.npz").write_text("hello")
    tg.load_params(mlp().g, t / "junk.npz")


@row("load-params-other-graph", "'W'", "'b'", "'mlp'", requires=IO)
def _(t):
    tg.save_params(_graph_with({"V": np.ones(2)}), t / "v.npz")
    tg.load_params(mlp().g, t / "v.npz")


@row("load-params-wrong-shape", "'W'", "(3, 4)", "(4, 3)", requires=IO)
def _(t):
    tg.save_params(_graph_with({"W": np.ones((4, 3)), "b": np.zeros(4)}), t / "w.npz")
    tg.load_params(mlp().g, t / "w.npz")


@row("load-params-nan", "'b'", "NaN", requires=IO)
def _(t):
    tg.save_params(_graph_with({"W": np.ones((3, 4)), "b": np.full(4, np.nan)}), t / "w.npz")
    tg.load_params(mlp().g, t / "w.npz")


@row("load-params-pickled", "'W'", "pickle", requires=IO)
def _(t):
    np.savez(t / "p.npz", W=np.array([{"evil": 1}] * 12, dtype=object).reshape(3, 4), b=np.zeros(4))
    tg.load_params(mlp().g, t / "p.npz")


case("load-params-path-int", lambda t: tg.load_params(mlp().g, 123), "123", requires=IO)
case("save-params-missing-dir", lambda t: tg.save_params(mlp().g, t / "no" / "such" / "w.npz"), "w.npz",
     requires=IO)
case("save-params-not-a-graph", lambda t: tg.save_params("mlp", t / "w.npz"), "graph", "str", requires=IO)


# ================================================================= rnn.RecurrentNet.add_group / connect

def _net():
    return rnn.RecurrentNet("n")


NetError = rnn.NetError
case("group-name-empty", lambda _: _net().add_group("", 3), "group names", "''", exc=NetError)
case("group-name-int", lambda _: _net().add_group(5, 3), "group names", "5", exc=NetError)
case("group-name-space", lambda _: _net().add_group("a b", 3), "'a b'", exc=NetError)
case("group-name-arrow", lambda _: _net().add_group("x->y", 3), "'x->y'", exc=NetError)
case("group-duplicate", lambda _: adder().add_group("h", 2), "'h'", "already", exc=NetError)
case("group-size-zero", lambda _: _net().add_group("h", 0), "'h'", "size", "0", exc=NetError)
case("group-size-negative", lambda _: _net().add_group("h", -2), "'h'", "size", "-2", exc=NetError)
case("group-size-float", lambda _: _net().add_group("h", 1.5), "'h'", "size", "1.5", exc=NetError)
case("group-size-bool", lambda _: _net().add_group("h", True), "'h'", "size", "True", exc=NetError)
case("group-size-string", lambda _: _net().add_group("h", "3"), "'h'", "size", "'3'", exc=NetError)
case("group-size-huge", lambda _: _net().add_group("h", 10 ** 9), "'h'", "size", "1000000000", exc=NetError)
case("group-activation", lambda _: _net().add_group("h", 3, activation="sigmoid"), "'h'", "activation",
     "'sigmoid'", exc=NetError)
case("group-role", lambda _: _net().add_group("h", 3, role="latent"), "'h'", "role", "'latent'", exc=NetError)
case("group-bias-string", lambda _: _net().add_group("h", 3, bias="yes"), "'h'", "bias", "'yes'", exc=NetError)
case("group-initial-word", lambda _: _net().add_group("h", 3, initial="random"), "'h'", "initial", "'random'",
     exc=NetError)
case("group-initial-shape", lambda _: _net().add_group("h", 3, initial=np.zeros(2)), "'h'", "(3,)", "(2,)",
     exc=NetError)
case("group-initial-nan", lambda _: _net().add_group("h", 3, initial=float("nan")), "'h'", "finite",
     exc=NetError)
case("group-initial-mixed-list", lambda _: _net().add_group("h", 2, initial=[1.0, "a"]), "'h'", "initial",
     exc=NetError)
case("group-initial-bool", lambda _: _net().add_group("h", 2, initial=True), "'h'", "bool", exc=NetError)


@row("group-failed-add-leaves-no-trace", "'h'", "initial", exc=NetError)
def _(_):
    net = _net()
    with pytest.raises(NetError):
        net.add_group("h", 3, initial="random")
    assert "h" not in net.groups and "bias:h" not in net.weights
    net.add_group("h", 3, initial="bad")


case("connect-unknown-src", lambda _: adder().connect("z", "h"), "connect", "'z'", "['x', 'h', 'y']",
     exc=NetError)
case("connect-unknown-dst", lambda _: adder().connect("h", "out"), "connect", "'out'", exc=NetError)
case("connect-unhashable-group", lambda _: adder().connect(["h"], "y"), "connect", "['h']", exc=NetError)
case("connect-into-input", lambda _: adder().connect("h", "x", delay=1), "h->x", "'x'", "input", exc=NetError)
case("connect-delay-negative", lambda _: adder().connect("y", "h", delay=-1), "y->h", "delay", "-1", exc=NetError)
case("connect-delay-float", lambda _: adder().connect("y", "h", delay=1.5), "y->h", "delay", "1.5", exc=NetError)
case("connect-delay-bool", lambda _: adder().connect("y", "h", delay=True), "y->h", "delay", "True", exc=NetError)
case("connect-delay-string", lambda _: adder().connect("y", "h", delay="1"), "y->h", "delay", "'1'", exc=NetError)
case("connect-weight-shape", lambda _: adder().connect("y", "h", delay=1, weight=np.ones((3, 1))), "y->h",
     "(1, 3)", "(3, 1)", exc=NetError)
case("connect-weight-strings", lambda _: adder().connect("y", "h", delay=1, weight=[["a", "b", "c"]]),
     "y->h", "weight", exc=NetError)
case("connect-weight-nan", lambda _: adder().connect("y", "h", delay=1, weight=np.full((1, 3), np.nan)),
     "y->h", "finite", exc=NetError)
case("connect-scale-string", lambda _: adder().connect("y", "h", delay=1, scale="big"), "y->h", "scale",
     exc=NetError)
case("connect-duplicate-name", lambda _: adder().connect("x", "h", name="h->y"), "'h->y'", "already",
     exc=NetError)
case("connect-name-empty", lambda _: adder().connect("y", "h", delay=1, name=""), "y->h", "name", "''",
     exc=NetError)
case("connect-name-int", lambda _: adder().connect("y", "h", delay=1, name=7), "y->h", "name", "7",
     exc=NetError)
case("connect-zero-delay-cycle", lambda _: adder().connect("y", "h", delay=0), "cycle", "h -> y -> h",
     "delay=1", exc=NetError)
case("connect-zero-delay-self-loop", lambda _: adder().connect("h", "h", delay=0, name="hh0"), "cycle",
     "h -> h", exc=NetError)


@row("connect-failed-cycle-leaves-no-trace", "'zz'", exc=NetError)
def _(_):
    net = adder()
    with pytest.raises(NetError):
        net.connect("y", "h", delay=0)
    assert "y->h" not in net.connections and "y->h" not in net.weights
    net.unroll(2)  # still a valid net
    net.connect("zz", "h")


# ================================================================= net.unroll, ff.layer, ff.copies

case("unroll-steps-zero", lambda _: adder().unroll(steps=0), "steps", "0", exc=NetError)
case("unroll-steps-negative", lambda _: adder().unroll(steps=-1), "steps", "-1", exc=NetError)
case("unroll-steps-float", lambda _: adder().unroll(steps=1.5), "steps", "1.5", exc=NetError)
case("unroll-steps-bool", lambda _: adder().unroll(steps=True), "steps", "True", exc=NetError)
case("unroll-steps-string", lambda _: adder().unroll(steps="3"), "steps", "'3'", exc=NetError)
case("unroll-reduce", lambda _: adder().unroll(3, reduce="max"), "reduce", "'max'", exc=NetError)
case("layer-negative", lambda _: adder().unroll(T).layer(-1), "layer", "0..3", "-1", exc=NetError)
case("layer-past-T", lambda _: adder().unroll(T).layer(T + 1), "layer", "0..3", "4", exc=NetError)
case("layer-float", lambda _: adder().unroll(T).layer(1.0), "layer", "1.0", exc=NetError)
case("layer-bool", lambda _: adder().unroll(T).layer(True), "layer", "True", exc=NetError)
case("total-input-step-zero", lambda _: adder().unroll(T).total_input(0), "total_input", "1..3", "0",
     exc=NetError)
case("copies-unknown-weight", lambda _: adder().unroll(T).copies("h->x"), "copies", "'h->x'", "'adder'",
     exc=NetError)
case("copies-not-a-name", lambda _: adder().unroll(T).copies(5), "copies", "5", exc=NetError)
case("copy-steps-unknown", lambda _: adder().unroll(T).copy_steps("W_hh"), "'W_hh'", exc=NetError)


# ================================================================= clamps and targets, through every runner

DataError = rnn.DataError
C = rnn.Clamp
Tg = rnn.Target

# (id, net builder, inputs, targets, fragments, bug)
DATA = [
    ("clamp-unknown-group", adder, [C("z", X)], [Tg("y", Y)], ("Clamp('z')", "'z'"), None),
    ("clamp-not-a-string-group", adder, [C(5, X)], [Tg("y", Y)], ("Clamp('5')", "5"), None),
    ("clamp-wrong-units-axis", adder, [C("x", np.zeros((T, B, 5)))], [Tg("y", Y)],
     ("Clamp('x')", "units=2", "(3, 2, 5)"), None),
    ("clamp-wrong-step-count", adder, [C("x", np.zeros((T - 1, B, 2)))], [Tg("y", Y)],
     ("Clamp('x')", "steps=3", "(2, 2, 2)"), None),
    ("clamp-missing-batch-axis", adder, [C("x", np.zeros((T, 2)))], [Tg("y", Y)],
     ("Clamp('x')", "(3, 2)"), None),
    ("clamp-string-values", adder, [C("x", "abc")], [Tg("y", Y)], ("Clamp('x')", "numeric"), None),
    ("clamp-nan", adder, [C("x", np.where(np.arange(T * B * 2).reshape(T, B, 2) == 5, np.nan, 0.0))], [Tg("y", Y)],
     ("Clamp('x')", "NaN", "(1, 0, 1)"), None),
    ("clamp-step-past-T", adder, [C("x", np.zeros((2, B, 2)), steps=[1, T + 1])], [Tg("y", Y)],
     ("Clamp('x')", "[4]", "0..T"), None),
    ("clamp-step-negative", adder, [C("x", np.zeros((1, B, 2)), steps=[-1])], [Tg("y", Y)],
     ("Clamp('x')", "[-1]"), None),
    ("clamp-step-word", adder, [C("x", X, steps="every")], [Tg("y", Y)], ("Clamp('x')", "'every'"), None),
    ("clamp-step-float", adder, [C("x", np.zeros((1, B, 2)), steps=[1.5])], [Tg("y", Y)],
     ("Clamp('x')", "1.5"),
     None),
    ("clamp-step-bool", adder, [C("x", np.zeros((1, B, 2)), steps=True)], [Tg("y", Y)],
     ("Clamp('x')", "True"), None),
    ("clamp-step-repeated", adder, [C("x", np.zeros((2, B, 2)), steps=[1, 1])], [Tg("y", Y)],
     ("Clamp('x')", "twice", "[1, 1]"), None),
    ("clamp-steps-empty", adder, [C("x", np.zeros((0, B, 2)), steps=[])], [Tg("y", Y)],
     ("Clamp('x')", "no steps"), None),
    ("clamp-last-k-zero", adder, [C("x", np.zeros((1, B, 2)), steps=("last", 0))], [Tg("y", Y)],
     ("Clamp('x')", "k=0"), None),
    ("clamp-last-k-past-T", adder, [C("x", np.zeros((5, B, 2)), steps=("last", 5))], [Tg("y", Y)],
     ("Clamp('x')", "k=5", "T=3"), None),
    ("clamp-unit-out-of-range", adder, [C("h", np.zeros((1, B, 1)), steps=[0], units=[3])], [Tg("y", Y)],
     ("Clamp('h')", "[3]", "0..2"), None),
    ("clamp-unit-negative", adder, [C("h", np.zeros((1, B, 1)), steps=[0], units=[-1])], [Tg("y", Y)],
     ("Clamp('h')", "[-1]"), None),
    ("clamp-unit-repeated", adder, [C("h", np.zeros((1, B, 2)), steps=[0], units=[1, 1])], [Tg("y", Y)],
     ("Clamp('h')", "twice", "[1, 1]"), None),
    ("clamp-units-empty", adder, [C("h", np.zeros((1, B, 0)), steps=[0], units=[])], [Tg("y", Y)],
     ("Clamp('h')", "no unit"), None),
    ("clamp-units-strings", adder, [C("h", np.zeros((1, B, 1)), steps=[0], units="a")], [Tg("y", Y)],
     ("Clamp('h')", "'a'"), None),
    ("clamp-same-unit-twice", adder, [C("x", X), C("x", np.zeros((1, B, 1)), steps=[2], units=[1])], [Tg("y", Y)],
     ("Clamp('x')", "[1]", "twice", "step 2"), None),
    ("clamp-and-target-same-unit", adder, [C("x", X), C("y", Y[-1:], steps="final")], [Tg("y", Y)],
     ("Target('y')", "[0]", "step 3"), None),
    ("batch-mismatch", adder, [C("x", X)], [Tg("y", np.zeros((T, B + 1, 1)))], ("batch", "[2, 3]"), None),
    ("inputs-not-clamps", adder, [X], [Tg("y", Y)], ("Clamp", "ndarray"), None),
    ("targets-not-targets", adder, [C("x", X)], [("y", Y)], ("Target", "tuple"), None),
    ("inputs-single-clamp", adder, C("x", X), [Tg("y", Y)], ("Clamp",),
     None),
    ("target-unknown-group", adder, [C("x", X)], [Tg("out", Y)], ("Target('out')", "'out'"), None),
    ("target-step-zero", adder, [C("x", X)], [Tg("y", Y[:1], steps=[0])], ("Target('y')", "step 0"), None),
    ("target-step-initial", adder, [C("x", X)], [Tg("y", Y[:1], steps="initial")], ("Target('y')", "step 0"), None),
    ("target-step-past-T", adder, [C("x", X)], [Tg("y", Y[:1], steps=[T + 2])], ("Target('y')", "[5]"), None),
    ("target-wrong-units-axis", adder, [C("x", X)], [Tg("y", np.zeros((T, B, 3)))],
     ("Target('y')", "units=1", "(3, 2, 3)"), None),
    ("target-final-wrong-shape", adder, [C("x", X)], [Tg("y", Y, steps="final")], ("Target('y')", "steps=1",
                                                                                    "(3, 2, 1)"), None),
    ("target-nan", adder, [C("x", X)], [Tg("y", np.full((T, B, 1), np.nan))], ("Target('y')", "NaN"), None),
    ("target-inf", adder, [C("x", X)], [Tg("y", np.full((T, B, 1), np.inf))], ("Target('y')", "infinity"), None),
    ("target-unit-out-of-range", adder, [C("x", X)], [Tg("y", Y, units=[1])], ("Target('y')", "[1]", "0..0"), None),
    ("target-unit-repeated", adder, [C("x", X)], [Tg("h", np.zeros((T, B, 2)), units=[2, 2])],
     ("Target('h')", "twice"), None),
    ("target-bad-loss", adder, [C("x", X)], [Tg("y", Y, loss="hinge")], ("Target('y')", "'hinge'"), None),
    ("target-ce-not-softmax", adder, [C("x", X)], [Tg("y", np.zeros((T, B), dtype=int), loss="cross_entropy")],
     ("Target('y')", "softmax", "'y'", "logistic"), None),
    ("target-ce-label-range", classifier, [C("x", X)], [Tg("c", np.full((T, B), 3), loss="cross_entropy")],
     ("Target('c')", "0..2"), None),
    ("target-ce-with-units", classifier, [C("x", X)], [Tg("c", np.zeros((T, B), dtype=int), units=[0],
                                                          loss="cross_entropy")],
     ("Target('c')", "whole group"), None),
    ("target-mask-shape", adder, [C("x", X)], [Tg("y", Y, mask=np.ones((T, B, 2)))], ("Target('y') mask",
                                                                                       "(3, 2, 2)"), None),
    ("target-mask-negative", adder, [C("x", X)], [Tg("y", Y, mask=-np.ones((T, B, 1)))], ("Target('y')", ">= 0"), None),
    ("target-units-bools", adder, [C("x", X)], [Tg("h", np.zeros((T, B, 2)), units=[True, False])],
     ("Target('h')", "int unit indices", "[True, False]"), None),
    ("target-units-float", adder, [C("x", X)], [Tg("h", np.zeros((T, B, 1)), units=[0.5])],
     ("Target('h')", "int unit indices", "[0.5]"), None),
    ("clamp-complex-values", adder, [C("x", X + 1j)], [Tg("y", Y)], ("Clamp('x')", "complex128"), None),
    ("target-ce-fractional-labels", classifier, [C("x", X)], [Tg("c", np.full((T, B), 1.5), loss="cross_entropy")],
     ("Target('c')", "whole numbers", "1.5"), None),
    ("target-ce-one-hot-row-sums", classifier, [C("x", X)],
     [Tg("c", np.stack([np.eye(3)[[0, 1]] * 2] * T), loss="cross_entropy")], ("Target('c')", "sum to 1"), None),
    ("data-batch-zero", adder, [C("x", np.zeros((T, 0, 2)))], [Tg("y", np.zeros((T, 0, 1)))], ("batch size 0",), None),
]

RUNNERS = {
    "run": lambda net, inputs, targets: net.unroll(T).run(inputs, targets),
    "bptt": lambda net, inputs, targets: rnn.bptt(net, T, inputs, targets),
    "check": lambda net, inputs, targets: rnn.check_equivalence(net, T, inputs, targets, finite_differences=False),
}

for _id, _build, _inputs, _targets, _frags, _bug in DATA:
    for _runner, _call in RUNNERS.items():
        case(f"{_runner}-{_id}",
             (lambda call, build, inputs, targets: lambda _: call(build(), inputs, targets))(
                 _call, _build, _inputs, _targets),
             *_frags, exc=NetError, bug=None if _bug is None else _bug)

case("bptt-truncate-zero", lambda _: rnn.bptt(adder(), T, [C("x", X)], [Tg("y", Y)], truncate=0),
     "truncate", "1..T=3", "0", exc=DataError)
case("bptt-truncate-fraction", lambda _: rnn.bptt(adder(), T, [C("x", X)], [Tg("y", Y)], truncate=1.5),
     "truncate", "1.5", exc=DataError)
case("run-truncate-zero", lambda _: adder().unroll(T).run([C("x", X)], [Tg("y", Y)], truncate=0),
     "truncate", "0", exc=DataError)
case("run-truncate-past-T", lambda _: adder().unroll(T).run([C("x", X)], [Tg("y", Y)], truncate=T + 1),
     "truncate", "4", "T=3", exc=DataError)
case("bptt-steps-zero", lambda _: rnn.bptt(adder(), 0, [C("x", X)], [Tg("y", Y)]), "steps", "0", exc=NetError)
case("bptt-steps-float", lambda _: rnn.bptt(adder(), 1.5, [C("x", X)], [Tg("y", Y)]), "steps", "1.5",
     exc=NetError)
case("check-steps-bool", lambda _: rnn.check_equivalence(adder(), True, [C("x", X)]), "steps", "True",
     exc=NetError)
case("bptt-not-a-net", lambda _: rnn.bptt("adder", T, [C("x", X)], [Tg("y", Y)]), "net", "str")
case("weight-grads-without-targets", lambda _: adder().unroll(T).run([C("x", X)]).weight_grads,
     "no targets", exc=DataError)
case("inspect-without-targets", lambda _: rnn.inspect(adder(), T, [C("x", X)]), "rnn.Target", exc=DataError)
case("inspect-bad-target", lambda _: rnn.inspect(adder(), T, [C("x", X)], [Tg("q", Y)]), "Target('q')",
     exc=NetError)


# ================================================================= rnn.load / net.save

LOAD = ("rnn.load",)
SAVE = ("RecurrentNet.save",)
LoadError = getattr(rnn, "LoadError", tg.GraphError)

case("load-missing-file", lambda t: rnn.load(t / "nope.npz"), "nope.npz", "no such file", exc=LoadError,
     requires=LOAD)


@row("load-text-file", "junk.npz", exc=LoadError, requires=LOAD)
def _(t):
    (t / "junk.npz").write_text("not a net")
    rnn.load(t / "junk.npz")


@row("load-params-file", "p.npz", "__spec__", "load_params", exc=LoadError, requires=LOAD + IO)
def _(t):
    tg.save_params(mlp().g, t / "p.npz")
    rnn.load(t / "p.npz")


@row("load-truncated", "net.npz", exc=LoadError, requires=LOAD + SAVE)
def _(t):
    adder().save(t / "net.npz")
    blob = (t / "net.npz").read_bytes()
    (t / "net.npz").write_bytes(blob[: len(blob) // 2])
    rnn.load(t / "net.npz")


@row("load-pickled-spec", "p.npz", "pickle", exc=LoadError, requires=LOAD)
def _(t):
    np.savez(t / "p.npz", __spec__=np.array([{"format": "tinygraph-rnn"}], dtype=object))
    rnn.load(t / "p.npz")


@row("load-unknown-version", "v.npz", "version 99", exc=LoadError, requires=LOAD + SAVE)
def _(t):
    import json
    adder().save(t / "v.npz")
    with np.load(t / "v.npz", allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    spec = json.loads(arrays["__spec__"].tobytes())
    spec["version"] = 99
    arrays["__spec__"] = np.frombuffer(json.dumps(spec).encode(), dtype=np.uint8)
    np.savez(t / "v.npz", **arrays)
    rnn.load(t / "v.npz")


case("load-path-int", lambda _: rnn.load(123), "file path", "int", exc=LoadError, requires=LOAD)
case("load-directory", lambda t: rnn.load(t), lambda t: str(t), exc=LoadError, requires=LOAD)
case("save-missing-dir", lambda t: adder().save(t / "no" / "such" / "net.npz"), "net.npz", requires=SAVE)
case("save-path-int", lambda _: adder().save(123), "123", requires=SAVE)
case("save-into-directory", lambda t: adder().save(t), lambda t: str(t), requires=SAVE)


# ================================================================= rnn.render / rnn.render_side_by_side

RENDER = ("rnn.render",)
SIDE = ("rnn.render_side_by_side",)


def _run():
    return adder().unroll(T).run([C("x", X)], [Tg("y", Y)])


case("rnn-render-string", lambda _: rnn.render("adder"), "rnn.render", "str", requires=RENDER)
case("rnn-render-graph", lambda _: rnn.render(mlp().g), "rnn.render", "Graph", requires=RENDER)
case("rnn-render-net-with-acts", lambda _: rnn.render(adder(), acts=_run().acts), "rnn.render", "'adder'",
     requires=RENDER)
case("rnn-render-foreign-acts", lambda _: (lambda r1, r2: rnn.render(r1, acts=r2.acts))(_run(), _run()),
     "rnn.render", "acts", requires=RENDER)
case("rnn-render-acts-not-acts", lambda _: rnn.render(_run(), acts="values"), "rnn.render", "acts", "str",
     requires=RENDER)
case("rnn-render-max-steps-zero", lambda _: rnn.render(adder().unroll(T), max_steps=0), "max_steps", "0",
     requires=RENDER)
case("rnn-render-show-ends-float", lambda _: rnn.render(adder().unroll(T), show_ends=1.5), "show_ends", "1.5",
     requires=RENDER)
case("rnn-render-check-not-report", lambda _: rnn.render(adder().unroll(T), check="ok"), "check", "rnn.render",
     requires=RENDER)
case("side-by-side-no-steps", lambda _: rnn.render_side_by_side(adder()), "steps", "'adder'", requires=SIDE)
case("side-by-side-steps-zero", lambda _: rnn.render_side_by_side(adder(), steps=0), "steps", "0", requires=SIDE)
case("side-by-side-steps-mismatch", lambda _: rnn.render_side_by_side(adder().unroll(T), steps=T + 1),
     "steps=4", "T=3", requires=SIDE)
case("side-by-side-not-a-net", lambda _: rnn.render_side_by_side(42, steps=3), "int", requires=SIDE)
# documented in render_side_by_side's docstring as a plain TypeError (Python's own convention for keywords)
case("side-by-side-unknown-keyword", lambda _: rnn.render_side_by_side(adder(), steps=T, colour="red"),
     "'colour'", exc=TypeError, graph_error=False, requires=SIDE)


# ================================================================= the test

def _params():
    for c in CASES:
        marks = [pytest.mark.xfail(strict=True, reason="BUG: " + c.bug)] if c.bug else []
        yield pytest.param(c, id=c.id, marks=marks)


@pytest.mark.parametrize("c", list(_params()))
def test_bad_input(c, request):
    missing = [r for r in c.requires if not _exists(r)]
    if missing:
        pytest.skip(f"entry point(s) {missing} not present yet")
    # only the file rows get a temporary folder (creating one per row would double the runtime)
    wants_tmp = "t" in inspect.signature(c.fn).parameters
    tmp_path = request.getfixturevalue("tmp_path") if wants_tmp else None
    with pytest.raises(Exception) as info:
        c.fn(tmp_path)
    err = info.value
    assert isinstance(err, c.exc), f"expected {c.exc.__name__}, got {type(err).__name__}: {err}"
    if c.graph_error:
        assert isinstance(err, tg.GraphError), f"{type(err).__name__} is not a tinygraph.GraphError: {err}"
    msg = str(err)
    for m in c.match:
        if callable(m):
            m = m(tmp_path)
        if isinstance(m, re.Pattern):
            assert m.search(msg), f"message {msg!r} does not match /{m.pattern}/"
        else:
            assert m in msg, f"message {msg!r} does not name {m!r}"


def test_table_covers_every_section():
    """A guard against the table silently shrinking: each API.md section keeps its rows."""
    prefixes = ("input-", "param-", "matmul-", "feed-", "acts-", "grads-", "backward-", "checkgrad-", "tie-",
                "constrain-", "symmetric-", "transpose-", "sgd-", "adam-", "step-", "render-", "load-params-",
                "group-", "connect-", "unroll-", "layer-", "copies-", "run-", "bptt-", "check-", "inspect-",
                "load-", "save-", "rnn-render-", "side-by-side-")
    for p in prefixes:
        assert any(c.id.startswith(p) for c in CASES), f"no row for {p}"


def test_set_initial_refused_leaves_the_group_as_it_was():
    net = rnn.RecurrentNet("init")
    net.add_group("h", 2, initial=0.3)
    with pytest.raises(rnn.NetError, match="finite"):
        net.set_initial("h", [np.nan, 1.0])
    assert net.groups["h"].initial == 0.3


def test_object_arrays_of_numbers_are_data():
    net = adder()
    X = np.zeros((T, B, 2)).astype(object)
    rnn.bptt(net, T, [C("x", X)], [Tg("y", Y)])  # (a mixed table's .to_numpy() gives these)
    with pytest.raises(DataError, match="not numbers"):
        rnn.bptt(net, T, [C("x", np.full((T, B, 2), "a", dtype=object))], [Tg("y", Y)])
