"""Graph building and running: shapes, names, operand order, reflected operators,
compiled plans, reverse mode to every node, very long chains, networkx export,
and micrograd-style scalar expressions checked against hand-derived derivatives."""

import math
import sys

import networkx as nx
import numpy as np
import pytest

import tinygraph as tg
import tinygraph.autodiff as AD


def _subst(shape, batch):
    return tuple(batch if d is None else d for d in shape)


# ----------------------------------------------------------------- static shape inference

def _shape_graph():
    g = tg.Graph("shapes")
    x = g.input("x", (None, 3))
    y = g.input("y", (None, 1))
    z = g.input("z", (2, None, 3))
    W = g.param("W", np.ones((3, 4)))
    b = g.param("b", np.ones(4))
    r = g.param("r", np.ones((1, 4)))
    h = x @ W + b
    cases = {
        "x@W": (x @ W, (None, 4)),
        "h": (h, (None, 4)),
        "tanh": (tg.tanh(h), (None, 4)),
        "y+r": (y + r, (None, 4)),                       # (None, 1) + (1, 4)
        "x*y": (x * y, (None, 3)),                       # None and None, 3 and 1
        "x+3": (x + 3.0, (None, 3)),
        "sum0": (tg.sum(h, axis=0), (4,)),
        "sum1": (tg.sum(h, axis=1), (None,)),
        "sum1k": (tg.sum(h, axis=1, keepdims=True), (None, 1)),
        "sumall": (tg.sum(h), ()),
        "meank": (tg.mean(h, keepdims=True), (1, 1)),
        "T": (h.T, (4, None)),
        "transpose": (tg.transpose(z, (1, 0, 2)), (None, 2, 3)),
        "reshape": (tg.reshape(x, (-1,)), (None,)),
        "reshape2": (tg.reshape(z, (2, -1)), (2, None)),
        "concat0": (tg.concat([x, g.param("c", np.ones((2, 3))), x], axis=0), (None, 3)),
        "concat1": (tg.concat([x, y, x], axis=1), (None, 7)),
        "row": (x[0], (3,)),
        "col": (x[:, 0], (None,)),
        "tail": (x[1:], (None, 3)),
        "step": (x[::2, ::-1], (None, 3)),
        "newaxis": (x[:, None, :], (None, 1, 3)),
        "ellipsis": (z[..., 1], (2, None)),
        "gather": (x[:, [0, 0, 2, 1]], (None, 4)),
        "softmax": (tg.softmax(h, axis=0), (None, 4)),
        "batched": (z @ W, (2, None, 4)),
        "vec@mat": (g.param("v", np.ones(3)) @ W, (4,)),
        "mat@vec": (x @ g.param("v2", np.ones(3)), (None,)),
        "se": (tg.squared_error(h, b), ()),
    }
    return g, cases


def test_static_shape_inference_with_none_axes():
    g, cases = _shape_graph()
    for key, (node, expected) in cases.items():
        assert node.shape == expected, f"{key}: static shape {node.shape}, expected {expected}"


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_static_shapes_match_runtime_shapes(batch):
    g, cases = _shape_graph()
    rng = np.random.default_rng(batch)
    feeds = {"x": rng.standard_normal((batch, 3)), "y": rng.standard_normal((batch, 1)),
             "z": rng.standard_normal((2, batch, 3))}
    acts = g.forward(feeds)
    # where a None axis is not simply the batch size
    runtime = {"reshape": (3 * batch,), "reshape2": (2, 3 * batch), "concat0": (2 * batch + 2, 3),
               "tail": (batch - 1, 3), "step": ((batch + 1) // 2, 3)}
    for key, (node, expected) in cases.items():
        assert np.shape(acts[node]) == runtime.get(key, _subst(expected, batch)), key
    # every node, not only the listed ones, is compatible with its static shape
    for node in g.nodes:
        rt = np.shape(acts[node])
        assert len(rt) == len(node.shape), node
        assert all(s is None or s == d for s, d in zip(node.shape, rt)), (node, rt)


def test_static_shape_values_are_correct():
    g, cases = _shape_graph()
    X = np.arange(6.0).reshape(2, 3)
    acts = g.forward({"x": X, "y": np.ones((2, 1)), "z": np.ones((2, 2, 3))})
    np.testing.assert_array_equal(acts[cases["gather"][0]], X[:, [0, 0, 2, 1]])
    np.testing.assert_array_equal(acts[cases["step"][0]], X[::2, ::-1])
    np.testing.assert_array_equal(acts[cases["concat1"][0]], np.concatenate([X, np.ones((2, 1)), X], axis=1))
    np.testing.assert_array_equal(acts[cases["x@W"][0]], X @ np.ones((3, 4)))


def test_static_shape_of_vector_dot_vector_is_scalar():
    g = tg.Graph()
    a = g.input("a", (3,))
    b = g.input("b", (3,))
    d = a @ b
    acts = g.forward({"a": np.ones(3), "b": np.arange(3.0)})
    assert np.shape(acts[d]) == ()
    assert d.shape == ()


def test_static_shape_of_bounded_slice_on_none_axis_is_unknown():
    g = tg.Graph()
    x = g.input("x", (None, 3))
    head = x[:5]
    acts = g.forward({"x": np.ones((2, 3))})
    assert np.shape(acts[head]) == (2, 3)
    assert head.shape[0] is None or head.shape[0] == 2  # must be compatible with every batch size
    assert head.shape == (None, 3)


def _check_slice_shape_against_batches(index):
    g = tg.Graph()
    x = g.input("x", (None, 3))
    part = x[index]
    for batch in (1, 2, 5):
        acts = g.forward({"x": np.ones((batch, 3))})
        rt = np.shape(acts[part])
        assert part.shape[0] is None or part.shape[0] == rt[0], (batch, part.shape, rt)


@pytest.mark.parametrize("index", [np.s_[:5], np.s_[1:3], np.s_[2:], np.s_[::2], np.s_[-1:]],
                         ids=[":5", "1:3", "2:", "::2", "-1:"])
def test_static_shape_of_slices_on_none_axis(index):
    _check_slice_shape_against_batches(index)


@pytest.mark.parametrize("index", [np.s_[:2], np.s_[-2:]], ids=[":2", "-2:"])
def test_static_shape_of_short_slices_on_none_axis(index):
    _check_slice_shape_against_batches(index)


# ----------------------------------------------------------------- names

def _build_named(g):
    x = g.input("x", (None, 2))
    W = g.param("W", np.ones((2, 2)))
    h = tg.tanh(x @ W)
    out = tg.sum(h * 2.0 + h, name="loss")
    return [x, W, h, out]


def test_node_names_unique_and_lookup():
    g = tg.Graph()
    nodes = _build_named(g)
    names = [n.name for n in g.nodes]
    assert len(names) == len(set(names)) == len(g)
    for n in g.nodes:
        assert g[n.name] is n
        assert n.name in g and n in g
    assert g["loss"] is nodes[-1]
    assert g["x"].op == "input" and g["W"].op == "param"
    assert nodes[2].op == "tanh"
    # auto names are non-empty strings that differ from the explicit ones
    assert all(isinstance(n, str) and n for n in names)


def test_node_names_are_stable_across_rebuilds():
    g1, g2 = tg.Graph("a"), tg.Graph("b")
    _build_named(g1)
    _build_named(g2)
    assert [n.name for n in g1.nodes] == [n.name for n in g2.nodes]
    assert [n.op for n in g1.nodes] == [n.op for n in g2.nodes]


def test_auto_names_skip_names_the_user_took():
    g = tg.Graph()
    x = g.input("x", (2,))
    taken = [g.param(f"{op}_{i}", np.ones(2)) for op in ("add", "mul", "const") for i in range(4)]
    made = [x + 1.0, x * 2.0, x + x, x * x]
    names = [n.name for n in g.nodes]
    assert len(names) == len(set(names))
    assert all(n not in taken for n in made)
    for n in made:
        assert g[n.name] is n


# ----------------------------------------------------------------- operand order

def test_inputs_kept_in_order():
    g = tg.Graph()
    a = g.input("a", (3,))
    b = g.input("b", (3,))
    d1, d2 = a - b, b - a
    q1, q2 = a / b, b / a
    m = tg.matmul(tg.reshape(a, (3, 1)), tg.reshape(b, (1, 3)))
    assert d1.inputs == (a, b) and d2.inputs == (b, a)
    assert q1.inputs == (a, b) and q2.inputs == (b, a)
    av, bv = np.array([1.0, 2.0, 3.0]), np.array([5.0, 7.0, 11.0])
    loss = tg.sum(d1 * np.array([1.0, 10.0, 100.0]))
    acts = g.forward({"a": av, "b": bv})
    np.testing.assert_array_equal(acts[d1], av - bv)
    np.testing.assert_array_equal(acts[d2], bv - av)
    np.testing.assert_array_equal(acts[q1], av / bv)
    np.testing.assert_array_equal(acts[q2], bv / av)
    np.testing.assert_array_equal(acts[m], np.outer(av, bv))
    grads = acts.backward(loss)
    np.testing.assert_array_equal(grads[a], [1.0, 10.0, 100.0])
    np.testing.assert_array_equal(grads[b], [-1.0, -10.0, -100.0])


def test_reflected_operators():
    g = tg.Graph()
    x = g.input("x", (3,))
    A = np.arange(6.0).reshape(2, 3)
    xv = np.array([1.0, 2.0, 4.0])
    exprs = {
        "2*x": (2 * x, 2 * xv, 2 * np.ones(3)),
        "x*2": (x * 2, 2 * xv, 2 * np.ones(3)),
        "10/x": (10.0 / x, 10.0 / xv, -10.0 / xv ** 2),
        "x/10": (x / 10.0, xv / 10.0, np.full(3, 0.1)),
        "1-x": (1 - x, 1 - xv, -np.ones(3)),
        "x-1": (x - 1, xv - 1, np.ones(3)),
        "3+x": (3 + x, 3 + xv, np.ones(3)),
        "A@x": (A @ x, A @ xv, A.sum(axis=0)),
        "np2*x": (np.float64(2.0) * x, 2 * xv, 2 * np.ones(3)),
        "arr-x": (np.array([1.0, 1.0, 1.0]) - x, 1 - xv, -np.ones(3)),
        "-x": (-x, -xv, -np.ones(3)),
        "+x": (+x, xv, np.ones(3)),
    }
    for key, (node, value, grad) in exprs.items():
        assert isinstance(node, tg.Node), key
        assert node.graph is g
        loss = tg.sum(node)
        acts = g.forward({"x": xv})
        np.testing.assert_allclose(acts[node], value, rtol=1e-15, err_msg=key)
        np.testing.assert_allclose(acts.backward(loss)[x], grad, rtol=1e-15, err_msg=key)
    # the reflected forms keep the constant as the first operand
    for node in (exprs["2*x"][0], exprs["10/x"][0], exprs["1-x"][0], exprs["A@x"][0]):
        assert node.inputs[0].op == "const" and node.inputs[1] is x
    assert exprs["A@x"][0].op == "matmul" and exprs["A@x"][0].shape == (2,)
    np.testing.assert_array_equal(exprs["A@x"][0].inputs[0].value, A)


# ----------------------------------------------------------------- build once, run many

def test_build_once_run_many_batch_sizes_and_plan_reuse():
    rng = np.random.default_rng(0)
    Wv = rng.standard_normal((3, 2))
    g = tg.Graph()
    x = g.input("x", (None, 3))
    W = g.param("W", Wv)
    h = tg.tanh(x @ W)
    loss = tg.sum(h)
    n_nodes = len(g)
    plans = None
    for step in range(3):
        for batch in (1, 4, 9, 4, 1):
            X = rng.standard_normal((batch, 3))
            acts = g.forward({"x": X})
            H = np.tanh(X @ Wv)
            np.testing.assert_allclose(acts[h], H, rtol=1e-14)
            grads = acts.backward(loss)
            np.testing.assert_allclose(grads[W], X.T @ (1 - H ** 2), rtol=1e-12)
            np.testing.assert_allclose(grads[x], (1 - H ** 2) @ Wv.T, rtol=1e-12)
            if plans is None:
                plans = dict(g._plans)
                plan = acts.plan
            assert g._plans == plans, "the plan cache grew on a repeated run"
            assert acts.plan is plan, "the compiled plan was rebuilt"
    assert len(g) == n_nodes  # running adds no nodes


def test_plan_cache_per_output_set_and_after_growth():
    g = tg.Graph()
    x = g.input("x", (2,))
    a = x * 2.0
    b = x + 1.0
    for _ in range(3):
        g.forward({"x": np.ones(2)}, outputs=[a])
        g.forward({"x": np.ones(2)}, outputs=[b])
        g.forward({"x": np.ones(2)})
    n = len(g._plans)
    assert n <= 3
    c = a * b  # the graph grew: a full run must compute the new node
    acts = g.forward({"x": np.array([1.0, 2.0])})
    np.testing.assert_array_equal(acts[c], [2.0 * 2.0, 4.0 * 3.0])
    for _ in range(5):
        g.forward({"x": np.ones(2)})
    assert len(g._plans) <= n + 1


def test_params_are_live_between_runs():
    g = tg.Graph()
    x = g.input("x", (None, 2))
    W = g.param("W", np.eye(2))
    y = x @ W
    X = np.array([[1.0, 2.0]])
    np.testing.assert_array_equal(g.forward({"x": X})[y], X)
    W.value *= 3.0  # an optimizer updates the live array in place
    np.testing.assert_array_equal(g.forward({"x": X})[y], 3.0 * X)


def test_outputs_subset_needs_only_its_feeds():
    g = tg.Graph()
    x = g.input("x", (2,))
    y = g.input("y", (2,))
    a = x * 2.0
    b = y * 3.0
    acts = g.forward({"x": np.array([1.0, 2.0])}, outputs=[a])
    np.testing.assert_array_equal(acts[a], [2.0, 4.0])
    assert a in acts and b not in acts
    with pytest.raises(tg.UnknownNodeError, match=b.name):
        acts[b]


# ----------------------------------------------------------------- gradients reach every node

def test_gradients_reach_every_node_closed_form():
    rng = np.random.default_rng(1)
    X, Y = rng.standard_normal((5, 3)), rng.standard_normal((5, 4))
    Wv, bv = rng.standard_normal((3, 4)), rng.standard_normal(4)
    g = tg.Graph()
    x, y = g.input("x", (None, 3)), g.input("y", (None, 4))
    W, b = g.param("W", Wv), g.param("b", bv)
    pre = x @ W + b
    h = tg.tanh(pre)
    diff = h - y
    loss = tg.sum(diff ** 2) / 2
    acts = g.forward({"x": X, "y": Y})
    grads = acts.backward(loss)

    H = np.tanh(X @ Wv + bv)
    dH = H - Y
    dpre = dH * (1 - H ** 2)
    expected = {diff: dH, h: dH, pre: dpre, W: X.T @ dpre, b: dpre.sum(axis=0), x: dpre @ Wv.T, y: -dH,
                loss: np.array(1.0)}
    for node, exp in expected.items():
        np.testing.assert_allclose(grads[node], exp, rtol=1e-12, atol=1e-14, err_msg=node.name)
        assert np.shape(grads[node]) == np.shape(acts[node])
        assert grads.reached(node)
    # every node the loss depends on has a gradient of its value's shape
    for node in g.nodes:
        assert np.shape(grads[node]) == np.shape(acts[node]), node


def test_fan_out_gradients_accumulate():
    g = tg.Graph()
    x = g.input("x", (3,))
    y = x * x + x * 3.0 + tg.exp(x)  # x used four times
    loss = tg.sum(y)
    xv = np.array([0.5, -1.0, 2.0])
    grads = g.forward({"x": xv}).backward(loss)
    np.testing.assert_allclose(grads[x], 2 * xv + 3.0 + np.exp(xv), rtol=1e-14)


def test_gradient_does_not_alias_values():
    g = tg.Graph()
    x = g.input("x", (3,))
    y = x + 0.0
    loss = tg.sum(y * y)
    xv = np.array([1.0, 2.0, 3.0])
    acts = g.forward({"x": xv})
    grads = acts.backward(loss)
    gy = grads[y].copy()
    grads2 = acts.backward(loss)  # a second backward from the same activations gives the same result
    np.testing.assert_array_equal(grads2[y], gy)
    np.testing.assert_array_equal(grads2[x], 2 * xv)
    np.testing.assert_array_equal(xv, [1.0, 2.0, 3.0])  # the feed was not modified


def test_unreached_params_get_zeros():
    g = tg.Graph()
    x = g.input("x", (None, 2))
    W = g.param("W", np.ones((2, 3)))
    V = g.param("V", np.ones((4, 5)))  # never used
    S = g.param("S", np.ones(3))
    loss = tg.sum(x @ W * tg.stop_gradient(S))
    other = tg.sum(V)  # uses V, but not part of loss
    acts = g.forward({"x": np.ones((2, 2))})
    grads = acts.backward(loss)
    np.testing.assert_array_equal(grads[V], np.zeros((4, 5)))
    np.testing.assert_array_equal(grads[S], np.zeros(3))
    np.testing.assert_array_equal(grads[other], np.zeros(()))
    assert not grads.reached(V) and not grads.reached(S) and grads.reached(W)
    late = g.param("late", np.ones((2, 2)))  # created after the run
    np.testing.assert_array_equal(grads[late], np.zeros((2, 2)))
    assert set(grads.params()) == {W, V, S, late}
    np.testing.assert_array_equal(grads.params()[W], np.full((2, 3), 2.0))
    # a run restricted to the loss never computed V: still zeros, not KeyError
    grads2 = g.forward({"x": np.ones((2, 2))}, outputs=[loss]).backward(loss)
    np.testing.assert_array_equal(grads2[V], np.zeros((4, 5)))
    np.testing.assert_array_equal(grads2.params()[V], np.zeros((4, 5)))


# ----------------------------------------------------------------- a very long chain

def test_chain_of_100000_nodes_forward_and_backward():
    N = 50_000
    c_val = 1.0001
    pv = np.array([1.0, -2.0, 0.5])
    g = tg.Graph("chain")
    p = g.param("p", pv)
    c = g.const(c_val, name="c")
    z = g.const(0.0, name="z")
    x = p
    for _ in range(N):
        x = x * c + z
    loss = tg.sum(x)
    assert len(g) >= 100_000
    limit = sys.getrecursionlimit()
    acts = g.forward({})
    grads = acts.backward(loss)
    assert sys.getrecursionlimit() == limit
    cN = c_val ** N
    np.testing.assert_allclose(acts[x], pv * cN, rtol=1e-9)
    np.testing.assert_allclose(grads[p], np.full(3, cN), rtol=1e-9)
    # x_N = p c^N + z (c^N - 1) / (c - 1)
    np.testing.assert_allclose(grads[c], pv.sum() * N * c_val ** (N - 1), rtol=1e-9)
    np.testing.assert_allclose(grads[z], 3 * (cN - 1) / (c_val - 1), rtol=1e-7)


def test_long_chain_with_python_constants():
    g = tg.Graph("chain2")
    p = g.param("p", np.array(2.0))
    x = p
    n = 5_000
    for _ in range(n):
        x = x * 1.0001 + 0.0
    acts = g.forward({})
    grads = acts.backward(x)
    np.testing.assert_allclose(acts[x], 2.0 * 1.0001 ** n, rtol=1e-10)
    np.testing.assert_allclose(grads[p], 1.0001 ** n, rtol=1e-10)


# ----------------------------------------------------------------- networkx export

def test_to_networkx():
    g = tg.Graph("nx")
    a = g.input("a", (None, 3))
    b = g.param("b", np.ones(3))
    d = tg.sub(b, a, name="d")
    s = tg.sum(tg.tanh(d), axis=1, name="s")
    G = g.to_networkx()
    assert isinstance(G, nx.DiGraph)
    assert G.number_of_nodes() == len(g)
    assert set(G.nodes) == {n.name for n in g.nodes}
    for n in g.nodes:
        attrs = G.nodes[n.name]
        assert attrs["op"] == n.op
        assert tuple(attrs["shape"]) == n.shape
        assert attrs["name"] == n.name
    expected_edges = {(i.name, n.name) for n in g.nodes for i in n.inputs}
    assert set(G.edges) == expected_edges
    assert G.number_of_edges() == sum(len(n.inputs) for n in g.nodes)
    assert G.edges["b", "d"]["position"] == 0 and G.edges["a", "d"]["position"] == 1
    assert G.nodes["s"]["shape"] == (None,)
    assert nx.is_directed_acyclic_graph(G)
    assert list(nx.topological_sort(G))  # a valid order exists
    assert nx.has_path(G, "a", "s") and not nx.has_path(G, "s", "a")


# ----------------------------------------------------------------- micrograd-style scalar expressions

def _relu(v):
    return v if v > 0 else 0.0


def _step(v):
    return 1.0 if v > 0 else 0.0


def test_micrograd_sanity_check():
    # micrograd's test_sanity_check, with x.grad derived by hand:
    # z = 3x + 2;  q = relu(z) + z x;  h = relu(z^2);  y = h + q + q x
    g = tg.Graph()
    x = g.input("x", ())
    z = 2 * x + 2 + x
    q = tg.relu(z) + z * x
    h = tg.relu(z * z)
    y = h + q + q * x
    for xv in (-4.0, -1.3, 0.7, 2.5):
        acts = g.forward({"x": np.array(xv)})
        zv = 3 * xv + 2
        qv = _relu(zv) + zv * xv
        hv = _relu(zv * zv)
        yv = hv + qv + qv * xv
        dz = 3.0
        dq = _step(zv) * dz + dz * xv + zv
        dh = _step(zv * zv) * 2 * zv * dz
        dy = dh + dq + dq * xv + qv
        np.testing.assert_allclose(acts[y], yv, rtol=1e-13)
        np.testing.assert_allclose(acts.backward(y)[x], dy, rtol=1e-13)
    acts = g.forward({"x": np.array(-4.0)})
    assert acts[y] == pytest.approx(-20.0)
    assert acts.backward(y)[x] == pytest.approx(46.0)


def _micrograd_more_ops(a, b):
    c = a + b
    d = a * b + b ** 3
    c = c + (c + 1)
    c = c + (1 + c + (-a))
    d = d + (d * 2 + tg.relu(b + a))
    d = d + (3 * d + tg.relu(b - a))
    e = c - d
    f = e ** 2
    out = f / 2.0
    out = out + 10.0 / f
    return out


def _micrograd_more_ops_by_hand(a, b):
    """Value and (dG/da, dG/db) derived by hand.

    c = 3a + 4b + 3;  d = 12 (ab + b^3) + 4 relu(a + b) + relu(b - a);  e = c - d;
    f = e^2;  G = f / 2 + 10 / f;  dG/de = (1/2 - 10 / f^2) 2e.
    """
    c = 3 * a + 4 * b + 3
    d = 12 * (a * b + b ** 3) + 4 * _relu(a + b) + _relu(b - a)
    e = c - d
    f = e * e
    G = f / 2 + 10 / f
    dG_de = (0.5 - 10 / f ** 2) * 2 * e
    de_da = 3 - (12 * b + 4 * _step(a + b) - _step(b - a))
    de_db = 4 - (12 * (a + 3 * b ** 2) + 4 * _step(a + b) + _step(b - a))
    return G, dG_de * de_da, dG_de * de_db


def test_micrograd_more_ops():
    g = tg.Graph()
    a = g.input("a", ())
    b = g.input("b", ())
    G = _micrograd_more_ops(a, b)
    points = [(-4.0, 2.0), (1.5, -0.25), (0.3, 0.9), (-2.2, -1.1), (3.0, 0.5)]
    for av, bv in points:
        acts = g.forward({"a": np.array(av), "b": np.array(bv)})
        grads = acts.backward(G)
        Gv, ga, gb = _micrograd_more_ops_by_hand(av, bv)
        np.testing.assert_allclose(acts[G], Gv, rtol=1e-12)
        np.testing.assert_allclose(grads[a], ga, rtol=1e-10)
        np.testing.assert_allclose(grads[b], gb, rtol=1e-10)
    # micrograd's published numbers at (-4, 2)
    acts = g.forward({"a": np.array(-4.0), "b": np.array(2.0)})
    grads = acts.backward(G)
    assert acts[G] == pytest.approx(24.70408163265306, rel=1e-12)
    assert grads[a] == pytest.approx(138.83381924198252, rel=1e-12)
    assert grads[b] == pytest.approx(645.5772594752186, rel=1e-12)


def test_mixed_transcendental_scalar_expression():
    """y = tanh(ab + c) exp(-a) / (1 + b^2) + log(c^2 + 1) - logistic(a - c), derived by hand."""
    g = tg.Graph()
    a, b, c = (g.input(n, ()) for n in "abc")
    y = tg.tanh(a * b + c) * tg.exp(-a) / (1 + b ** 2) + tg.log(c * c + 1) - tg.logistic(a - c)
    rng = np.random.default_rng(3)
    for av, bv, cv in rng.uniform(-2, 2, size=(8, 3)):
        acts = g.forward({"a": np.array(av), "b": np.array(bv), "c": np.array(cv)})
        grads = acts.backward(y)
        v = math.tanh(av * bv + cv)
        w = math.exp(-av)
        r = 1 + bv ** 2
        s = 1 / (1 + math.exp(-(av - cv)))
        yv = v * w / r + math.log(cv * cv + 1) - s
        dya = ((1 - v * v) * bv * w - v * w) / r - s * (1 - s)
        dyb = (1 - v * v) * av * w / r - v * w * 2 * bv / r ** 2
        dyc = (1 - v * v) * w / r + 2 * cv / (cv * cv + 1) + s * (1 - s)
        np.testing.assert_allclose(acts[y], yv, rtol=1e-12)
        np.testing.assert_allclose([grads[a], grads[b], grads[c]], [dya, dyb, dyc], rtol=1e-10, atol=1e-14)


# ----------------------------------------------------------------- repeated (identical) subexpressions

@pytest.mark.parametrize("shape", [(), (3,), (2, 3)])
def test_identical_subexpressions_each_get_value_and_gradient(shape):
    """The same op on the same inputs built several times: separate nodes, each with its value and gradient."""
    rng = np.random.default_rng(7)
    xv = rng.standard_normal(shape)
    g = tg.Graph()
    x = g.input("x", shape)
    W = g.param("W", np.array(1.5))
    a1, a2, a3 = x + x, x + x, x + x
    t1, t2 = tg.tanh(x * W), tg.tanh(x * W)
    loss = tg.sum(a1) + 2.0 * tg.sum(a2) + 3.0 * tg.sum(a3) + tg.sum(t1 * t2)
    acts = g.forward({"x": xv})
    for n in (a1, a2, a3):
        np.testing.assert_array_equal(acts[n], 2 * xv)
        assert np.shape(acts[n]) == shape
    T = np.tanh(1.5 * xv)
    np.testing.assert_allclose(acts[t1], T, rtol=1e-15)
    np.testing.assert_allclose(acts[t2], T, rtol=1e-15)
    grads = acts.backward(loss)
    np.testing.assert_allclose(grads[a1], np.ones(shape))
    np.testing.assert_allclose(grads[a2], np.full(shape, 2.0))
    np.testing.assert_allclose(grads[a3], np.full(shape, 3.0))
    np.testing.assert_allclose(grads[t1], T, rtol=1e-15)
    # d/dx [2x + 4x + 6x + tanh(1.5 x)^2] = 12 + 2 T (1 - T^2) 1.5
    np.testing.assert_allclose(grads[x], 12.0 + 3.0 * T * (1 - T ** 2), rtol=1e-13)
    np.testing.assert_allclose(grads[W], np.sum(2 * T * (1 - T ** 2) * xv), rtol=1e-13)


# ----------------------------------------------------------------- batched execution of identical independent nodes

def _unrolled_rnn(T=5, batch=3, seed=0):
    rng = np.random.default_rng(seed)
    g = tg.Graph("rnn")
    Wx = g.param("Wx", rng.standard_normal((2, 4)) * 0.5)
    Wh = g.param("Wh", rng.standard_normal((4, 4)) * 0.5)
    b = g.param("b", rng.standard_normal(4) * 0.1)
    Wy = g.param("Wy", rng.standard_normal((4, 3)) * 0.5)
    h = g.param("h0", rng.standard_normal(4) * 0.1)
    feeds = {}
    losses = []
    for t in range(T):
        x = g.input(f"x{t}", (None, 2))
        y = g.input(f"y{t}", (None, 3))
        lab = g.input(f"lab{t}", (None,), dtype=np.int64)
        h = tg.tanh(x @ Wx + h @ Wh + b)
        out = h @ Wy
        losses.append(tg.squared_error(tg.logistic(out), y) + tg.cross_entropy(out, lab))
        feeds[f"x{t}"] = rng.standard_normal((batch, 2))
        feeds[f"y{t}"] = rng.uniform(0, 1, (batch, 3))
        feeds[f"lab{t}"] = rng.integers(0, 3, batch)
    loss = tg.add_n(losses)
    return g, loss, feeds


def test_batched_and_node_by_node_runs_agree():
    g, loss, feeds = _unrolled_rnn()
    acts_b = g.forward(feeds, batch=True)
    acts_s = g.forward(feeds, batch=False)
    assert acts_b.plan.batches, "the unrolled net should have batched steps"
    assert not getattr(acts_s.plan, "batches", [])
    for n in g.nodes:
        np.testing.assert_allclose(acts_b[n], acts_s[n], rtol=1e-12, atol=1e-14, err_msg=n.name)
    gb, gs = acts_b.backward(loss), acts_s.backward(loss)
    for n in g.nodes:
        np.testing.assert_allclose(gb[n], gs[n], rtol=1e-10, atol=1e-13, err_msg=n.name)
    assert tg.check_gradients(g, loss, feeds, inputs=True) < 1e-6


def test_identical_nodes_with_different_runtime_sizes():
    g = tg.Graph()
    x1 = g.input("x1", (None, 3))
    x2 = g.input("x2", (None, 3))
    u1, u2 = tg.tanh(x1), tg.tanh(x2)  # same op, same static shapes: a batch candidate
    v1, v2 = tg.exp(u1), tg.exp(u2)    # a batch fed by that batch
    loss = tg.sum(v1) + tg.sum(v2)
    X1, X2 = np.full((2, 3), 0.5), np.full((4, 3), -0.25)
    acts = g.forward({"x1": X1, "x2": X2})
    np.testing.assert_allclose(acts[v1], np.exp(np.tanh(X1)), rtol=1e-14)
    np.testing.assert_allclose(acts[v2], np.exp(np.tanh(X2)), rtol=1e-14)
    grads = acts.backward(loss)
    for x, X in ((x1, X1), (x2, X2)):
        T = np.tanh(X)
        np.testing.assert_allclose(grads[x], np.exp(T) * (1 - T ** 2), rtol=1e-13)


@pytest.mark.parametrize("kind", ["indices", "one-hot"])
def test_cross_entropy_shared_logits_several_label_sets(kind):
    rng = np.random.default_rng(5)
    Z = rng.standard_normal((4, 3))
    idx = [np.array([0, 1, 2, 0]), np.array([2, 2, 1, 0])]
    g = tg.Graph()
    z = g.input("z", (4, 3))
    if kind == "indices":
        ys = [g.input(f"y{k}", (4,)) for k in range(2)]
        feeds = {f"y{k}": idx[k].astype(np.float64) for k in range(2)}
    else:
        ys = [g.input(f"y{k}", (4, 3)) for k in range(2)]
        feeds = {f"y{k}": np.eye(3)[idx[k]] for k in range(2)}
    feeds["z"] = Z
    loss = tg.cross_entropy(z, ys[0]) + tg.cross_entropy(z, ys[1])
    acts = g.forward(feeds)
    logp = Z - np.log(np.exp(Z).sum(axis=1, keepdims=True))
    P = np.exp(logp)
    expected = -sum(logp[np.arange(4), i].sum() for i in idx)
    np.testing.assert_allclose(acts[loss], expected, rtol=1e-13)
    np.testing.assert_allclose(acts.backward(loss)[z], 2 * P - sum(np.eye(3)[i] for i in idx), rtol=1e-12)


def test_repeated_subexpressions_at_different_depths():
    g = tg.Graph()
    x = g.input("x", (1,))
    a0 = x + x
    s1 = tg.log(x * x + 1.0)
    s2 = tg.log(x * x + 1.0)
    d1 = 2.0 / (a0 * a0 + 1.0) + x
    d2 = 2.0 / (s2 * s2 + 1.0) + s1
    loss = tg.sum(d1) + tg.sum(d2)
    xv = 0.7
    acts = g.forward({"x": np.array([xv])})
    a, s = 2 * xv, np.log(xv * xv + 1)
    np.testing.assert_allclose(acts[d1], [2 / (a * a + 1) + xv], rtol=1e-14)
    np.testing.assert_allclose(acts[d2], [2 / (s * s + 1) + s], rtol=1e-14)
    dd1 = -8 * a / (a * a + 1) ** 2 + 1
    dd2 = (-4 * s / (s * s + 1) ** 2 + 1) * 2 * xv / (xv * xv + 1)
    np.testing.assert_allclose(acts.backward(loss)[x], [dd1 + dd2], rtol=1e-13)


def test_cross_entropy_several_logits_one_shared_one_hot_target():
    rng = np.random.default_rng(6)
    Z1, Z2 = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    idx = np.array([0, 1, 2, 0])
    g = tg.Graph()
    z1, z2 = g.input("z1", (4, 3)), g.input("z2", (4, 3))
    y = g.input("y", (4, 3))
    loss = tg.cross_entropy(z1, y) + tg.cross_entropy(z2, y)
    acts = g.forward({"z1": Z1, "z2": Z2, "y": np.eye(3)[idx]})
    grads = acts.backward(loss)
    for z, Z in ((z1, Z1), (z2, Z2)):
        P = np.exp(Z) / np.exp(Z).sum(axis=1, keepdims=True)
        np.testing.assert_allclose(grads[z], P - np.eye(3)[idx], rtol=1e-12)
    expected = sum(-np.log(np.exp(Z) / np.exp(Z).sum(axis=1, keepdims=True))[np.arange(4), idx].sum()
                   for Z in (Z1, Z2))
    np.testing.assert_allclose(acts[loss], expected, rtol=1e-13)


@pytest.mark.parametrize("g_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("t_shape", [(5, 3, 4), (5, 1, 4), (1, 3, 4)])
def test_batched_squared_error_rule_matches_the_single_rule(g_dtype, t_shape):
    # the stacked rule (members first) against the single-node rule member by member,
    # in float32 with a gradient of either dtype (dtype promotion as numpy's)
    from tinygraph import ops
    rng = np.random.default_rng(2)
    p = rng.standard_normal((5, 3, 4)).astype(np.float32)
    t = rng.standard_normal(t_shape).astype(np.float32)
    g = rng.standard_normal(5).astype(g_dtype)
    single = ops.get("squared_error")
    forward, _, (vjp_p, vjp_t) = single.batch
    out = forward(p, t)
    tb = np.broadcast_to(t, p.shape)
    for k in range(5):  # the same bits: a batched node's value is the node's value
        np.testing.assert_array_equal(out[k], single.forward(p[k], tb[k]))
    gp, gt = vjp_p(g, out, p, t), vjp_t(g, out, p, t)
    assert gp.dtype == gt.dtype == np.result_type(g, p)
    for k in range(5):
        np.testing.assert_array_equal(gp[k], single.vjp(0, g[k], out[k], [p[k], tb[k]], {}))
        np.testing.assert_array_equal(gt[k], single.vjp(1, g[k], out[k], [p[k], tb[k]], {}))


def test_a_dedicated_batch_rule_without_a_vjp_for_an_input_nobody_differentiates():
    # a user op whose batched rule has no VJP for its label input: the batch still runs, the
    # labels' gradient is never needed, and asking for it names the op and the input
    from tinygraph import ops
    name = "dot_with_labels_test"
    if name not in ops.REGISTRY:
        ops.defop(name, lambda p, lab: np.sum(p * lab), (lambda g, out, p, lab: g * lab,), lambda a, b: (),
                  batch=(lambda p, lab: np.sum(p * lab, axis=tuple(range(1, p.ndim))), True,
                         (lambda g, out, p, lab: g.reshape((-1,) + (1,) * (p.ndim - 1)) * lab,)))
    g = tg.Graph("labels")
    W = g.param("W", np.ones(3))
    losses = [ops.apply(name, (tg.mul(g.input(f"x{t}", (3,)), W), g.input(f"l{t}", (3,))), name=f"L{t}")
              for t in range(3)]
    loss = tg.add_n(losses, name="loss")
    feeds = {**{f"x{t}": np.arange(3.0) + t for t in range(3)}, **{f"l{t}": np.full(3, t + 1.0) for t in range(3)}}
    acts = g.forward(feeds)
    assert acts.plan.batches  # the three losses ran as one batch
    grads = acts.backward(loss)
    np.testing.assert_array_equal(grads[W], sum((np.arange(3.0) + t) * (t + 1) for t in range(3)))
    with pytest.raises(tg.UnknownOpError, match=f"'{name}' has no derivative rule for input 1"):
        grads[g["l0"]]


def test_a_batch_contribution_in_float32_does_not_swallow_a_later_float64_one():
    # a float32 weight read by a batch of float32 matmuls (their product becomes the weight's
    # gradient buffer) and by a float64 path cast back to float32: the later float64
    # contribution is added as the unbatched run adds it, not rounded into the float32 buffer
    from tinygraph import ops
    name = "to_float32_test"
    if name not in ops.REGISTRY:
        ops.defop(name, lambda x: np.asarray(x, np.float32), (lambda g, out, x: np.asarray(g, x.dtype),), lambda s: s)
    g = tg.Graph("mixed")
    W = g.param("W", np.random.default_rng(0).standard_normal((3, 3)).astype(np.float32))
    r = ops.apply(name, (tg.sum(tg.matmul(g.input("z", (5, 3)), W)),), name="r")
    ps = [tg.matmul(g.input(f"x{t}", (2, 3), np.float32), W, name=f"p{t}") for t in range(4)]
    loss = tg.add_n([r] + [tg.sum(p) for p in ps], name="loss")
    rng = np.random.default_rng(1)
    feeds = {"z": rng.standard_normal((5, 3)), **{f"x{t}": rng.standard_normal((2, 3)).astype(np.float32) for t in range(4)}}
    acts = g.forward(feeds)
    assert [len(b.members) for b in acts.plan.batches.values()] == [4]
    got, want = acts.backward(loss)[W], g.forward(feeds, batch=False).backward(loss)[W]
    assert got.dtype == want.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_to_networkx_keeps_every_position_of_a_repeated_input():
    g = tg.Graph("rep")
    a = g.input("a", (2,))
    x = g.input("x", (2,))
    tg.mul(a, a, name="sq")
    tg.concat([a, x, a], name="cat")
    G = g.to_networkx()
    assert G.edges["a", "sq"]["positions"] == [0, 1] and G.edges["a", "sq"]["position"] == 0
    assert G.edges["a", "cat"]["positions"] == [0, 2] and G.edges["x", "cat"]["positions"] == [1]
    assert sum(len(d["positions"]) for *_, d in G.edges(data=True)) == sum(len(n.inputs) for n in g.nodes)


def test_check_gradients_perturbs_an_int_array_fed_to_a_float_input():
    g = tg.Graph("intfeed")
    x = g.input("x", (None, 2))
    W = g.param("W", np.array([[0.3, -0.2], [0.1, 0.4]]))
    loss = tg.sum(tg.tanh(x @ W) ** 3)
    check = tg.check_gradients(g, loss, {"x": np.ones((3, 2), dtype=int)}, inputs=True)
    assert check < 1e-6, check


# ----------------------------------------------------------------- a run's numbers stay the run's

def _after_a_step(g, loss, feeds, params=None):
    """(acts, grads) of a run, asked only after an SGD step wrote the params in place, and
    the same run's numbers copied before the step: {node: value}, {node: gradient} (node by
    node, batch=False)."""
    ref = g.forward(feeds, batch=False)
    ref_grads = ref.backward(loss)
    want = {n: np.array(ref[n]) for n in g.nodes if n in ref}
    want_grads = {n: np.array(ref_grads[n]) for n in want}
    acts = g.forward(feeds)
    grads = acts.backward(loss)
    before = [p.value.copy() for p in g.params]
    tg.SGD(params or g.params, lr=0.5).step(grads)
    assert any(not np.array_equal(b, p.value) for b, p in zip(before, g.params))
    return acts, grads, want, want_grads


def test_values_of_params_and_of_views_of_them_stay_the_runs_after_a_step():
    g = tg.Graph("views")
    W = g.param("W", np.array([[1.0, 2.0], [3.0, 4.0]]))
    views = [tg.transpose(W), tg.reshape(W, (4,)), tg.identity(W), W[0], tg.stop_gradient(W)]
    loss = tg.sum(W * W)
    acts, _, ref, _ = _after_a_step(g, loss, {})
    for n in [W] + views:
        np.testing.assert_array_equal(acts[n], ref[n], err_msg=n.name)


def test_backward_after_a_step_uses_the_runs_params():
    rng = np.random.default_rng(0)
    g = tg.Graph("late")
    x = g.input("x", (None, 3))
    W = g.param("W", rng.standard_normal((3, 2)))
    loss = tg.sum(tg.tanh(x @ W))
    X = rng.standard_normal((4, 3))
    want = g.forward({"x": X}, batch=False).backward(loss)
    acts = g.forward({"x": X})
    W.value *= 3.0
    tg.note_param_write()
    grads = acts.backward(loss)
    for n in (x, W):
        np.testing.assert_allclose(grads[n], want[n], rtol=1e-12, err_msg=n.name)


def test_a_tied_copys_own_gradient_after_a_step_is_the_runs():
    """A copy's own gradient is made when asked, from its consumers' operands: after a step
    they must still be the run's (a learned initial state h0 and the tied W copies here)."""
    rng = np.random.default_rng(1)
    g = tg.Graph("copies")
    A = rng.standard_normal((4, 4)) * 0.5
    h = g.param("h0", rng.standard_normal(4))
    Ws = [g.param(f"W{t}", A) for t in range(1, 5)]
    for W in Ws:
        h = tg.tanh(h @ W)
    g.tie(*Ws)
    loss = tg.sum(h * h) + tg.sum(Ws[0] * Ws[0])
    acts, grads, ref, ref_grads = _after_a_step(g, loss, {})
    for W in Ws:
        np.testing.assert_allclose(grads[W], ref_grads[W], rtol=1e-12, err_msg=W.name)


def _projections_through_a_view(T=64, B=32, I=16, H=64, fed_view=False):
    """A recurrence whose input projections P_t = x_t @ UT read UT = transpose(U), a view of a
    param (or, ``fed_view``, of a fed input M): large enough for P to be let go after forward."""
    rng = np.random.default_rng(0)
    g = tg.Graph("view-operand")
    if fed_view:
        U = g.input("M", (H, I))
        feeds = {"M": rng.standard_normal((H, I)) * 0.3}
    else:
        U = g.param("U", rng.standard_normal((H, I)) * 0.3)
        feeds = {}
    UT = tg.transpose(U, name="UT")
    Wa, ba = rng.standard_normal((H, H)) * 0.3, np.zeros(H)  # (the tied copies share these arrays)
    h, Ws, bs, Ps, losses = g.const(np.zeros((B, H))), [], [], [], []
    for t in range(1, T + 1):
        x = g.input(f"x{t}", (None, I))
        feeds[f"x{t}"] = rng.standard_normal((B, I))
        Ws.append(g.param(f"W{t}", Wa))
        bs.append(g.param(f"b{t}", ba))
        Ps.append(tg.matmul(x, UT, name=f"P{t}"))
        h = tg.tanh(tg.add_n([Ps[-1], bs[-1], tg.matmul(h, Ws[-1])]))
        losses.append(tg.sum(h * h))
    g.tie(*Ws), g.tie(*bs)
    return g, tg.add_n(losses, name="loss"), feeds, Ps


@pytest.mark.parametrize("fed_view", [False, True], ids=["view of a param", "view of a fed array"])
def test_a_dropped_output_read_through_a_view_is_made_again_as_the_run_had_it(fed_view):
    g, loss, feeds, Ps = _projections_through_a_view(fed_view=fed_view)
    ref = {P: np.array(v) for P, v in zip(Ps, (g.forward(feeds, batch=False)[P] for P in Ps))}
    acts = g.forward(feeds)
    assert acts._bstore.get("dropped")  # (P let go: made again when asked)
    grads = acts.backward(loss)
    if fed_view:
        feeds["M"][...] = 0.0  # the caller refills its array
    else:
        tg.SGD(g.params, lr=0.5).step(grads)
    for P in Ps[:4]:
        np.testing.assert_array_equal(acts[P], ref[P], err_msg=P.name)


def test_a_fed_inputs_deferred_gradient_through_a_view_of_a_param_is_the_runs():
    rng = np.random.default_rng(0)
    g = tg.Graph("deferred")
    U = g.param("U", rng.standard_normal((4, 2)))
    UT = tg.transpose(U)
    xs = [g.input(f"x{t}", (None, 2)) for t in range(6)]
    loss = tg.add_n([tg.sum(tg.tanh(x @ UT)) for x in xs])
    feeds = {f"x{t}": rng.standard_normal((3, 2)) for t in range(6)}
    acts, grads, ref, ref_grads = _after_a_step(g, loss, feeds, params=[U])
    for x in xs:
        np.testing.assert_allclose(grads[x], ref_grads[x], rtol=1e-12, err_msg=x.name)


def test_a_float32_run_gives_float32_zero_gradients_where_the_loss_does_not_reach():
    g = tg.Graph("f32")
    x = g.input("x", (None, 3), dtype=np.float32)
    a = tg.matmul(x, g.const(np.ones((3, 2), np.float32)), name="a")
    b = tg.matmul(x, g.const(np.ones((3, 2), np.float32)), name="b")  # batched with a; the loss skips it
    loss = tg.sum(a * a)
    for batch in (False, True):
        grads = g.forward({"x": np.ones((2, 3), np.float32)}, batch=batch).backward(loss)
        assert grads[a].dtype == grads[x].dtype == grads[b].dtype == np.float32, batch


def test_a_param_whose_array_is_replaced_is_read_from_its_own_array():
    """Params grouped by array when the plan was made: one of them given another array since
    is read from that one (each param's own value, as node by node)."""
    g = tg.Graph("rebind")
    A = np.ones((2, 2))
    x = g.input("x", (None, 2))
    W1, W2 = g.param("W1", A), g.param("W2", A)
    y = tg.sum(x @ W1 + x @ W2)
    X = np.arange(6.0).reshape(3, 2)
    g.forward({"x": X})
    W2.value = np.zeros((2, 2))
    assert float(g.forward({"x": X})[y]) == float(g.forward({"x": X}, batch=False)[y]) == float(np.sum(X @ A))


def test_a_const_is_the_graphs_own_copy():
    """Writing the array a const was made from changes no run, not even what a run makes
    later (a dropped output, a deferred input gradient), and the const itself is read-only."""
    rng = np.random.default_rng(0)
    U = rng.standard_normal((2, 5))
    g = tg.Graph("const")
    Uc = g.const(U, name="U")
    xs = [g.input(f"x{t}", (None, 2)) for t in range(4)]
    loss = tg.sum(tg.add_n([tg.tanh(x @ Uc) for x in xs]))
    feeds = {f"x{t}": rng.standard_normal((3, 2)) for t in range(4)}
    want = g.forward(feeds, batch=False).backward(loss)
    want = {x: np.array(want[x]) for x in xs}
    grads = g.forward(feeds).backward(loss)
    U *= -2.0
    for x in xs:
        np.testing.assert_allclose(grads[x], want[x], rtol=1e-12)
    assert not Uc.value.flags.writeable and not np.shares_memory(Uc.value, U)


def test_what_a_run_stored_is_answered_after_a_write_even_when_it_did_not_copy_its_params(monkeypatch):
    """A run without param copies refuses only what it would make from the new weights: the
    tied sums and gradients it stored serve a second optimizer step, and `in` still answers."""
    monkeypatch.setattr(AD, "PARAMS_COPIED_UP_TO", 0)
    rng = np.random.default_rng(0)
    g = tg.Graph("two-steps")
    x = g.input("x", (None, 3))
    A, c = rng.standard_normal((3, 3)), rng.standard_normal(3)
    Ws, bs = [g.param(f"W{t}", A) for t in range(3)], [g.param(f"b{t}", c) for t in range(3)]
    h = x
    for W, b in zip(Ws, bs):
        h = tg.tanh(h @ W + b)
    loss = tg.sum(h * h)
    g.tie(*Ws), g.tie(*bs)
    acts = g.forward({"x": rng.standard_normal((2, 3))})
    assert not acts._params_copied
    grads = acts.backward(loss)
    want = {k: np.array(v) for k, v in grads.constrained().items()}
    tg.SGD(bs, lr=0.1).step(grads)
    tg.SGD(Ws, lr=0.1).step(grads)  # (the same Gradients, after the first step wrote the biases)
    assert Ws[0] in acts
    for k, v in grads.constrained().items():
        np.testing.assert_array_equal(v, want[k])
    with pytest.raises(tg.GraphError, match="written since"):
        acts[Ws[0]]


def test_params_given_other_arrays_after_the_plan_are_planned_again():
    """Untied params on one array are one source of a summed step and one optimizer storage;
    given another array later, a param is read, summed and stepped as its own."""
    rng = np.random.default_rng(0)
    T = 6
    g = tg.Graph("rebound")
    bias = np.ones(4)
    xs = [g.input(f"x{t}", (None, 4)) for t in range(T)]
    W, U = g.param("W", 0.1 * rng.standard_normal((4, 4))), g.param("U", 0.1 * rng.standard_normal((4, 4)))
    bs = [g.param(f"b{t}", bias) for t in range(T)]
    h, outs = tg.tanh(xs[0] @ W), []
    for t in range(1, T):
        h = tg.tanh(tg.add_n([xs[t] @ W, bs[t], h @ U]))
        outs.append(h)
    loss = tg.sum(tg.add_n(outs))
    feeds = {f"x{t}": rng.standard_normal((5, 4)) for t in range(T)}
    g.forward(feeds)
    bs[3].value = np.full(4, -2.0)
    assert float(g.forward(feeds)[loss]) == pytest.approx(float(g.forward(feeds, batch=False)[loss]), rel=1e-12)
    opt = tg.SGD([W], lr=0.1)
    opt.step(g.forward(feeds).backward(loss))
    W.value = np.zeros((4, 4))
    want = -0.1 * np.asarray(g.forward(feeds).backward(loss)[W])
    opt.step(g.forward(feeds).backward(loss))
    np.testing.assert_allclose(W.value, want, rtol=1e-12)  # the step went to the new array


def test_an_array_met_again_shares_its_const():
    rng = np.random.default_rng(0)
    g = tg.Graph("lifted")
    M = rng.standard_normal((8, 8))
    h = g.input("h", (None, 8))
    for _ in range(5):
        h = tg.tanh(h @ M)
    consts = [n for n in g.nodes if n.op == "const"]
    assert len(consts) == 5 and all(c.value is consts[0].value for c in consts)
    M[0, 0] += 1.0  # changed: met again, it gets a copy of its own
    tg.tanh(h @ M)
    newest = [n for n in g.nodes if n.op == "const"][-1]
    assert newest.value is not consts[0].value and newest.value[0, 0] == M[0, 0]


def test_identical_nodes_on_inputs_of_other_dtypes_keep_their_dtypes():
    g = tg.Graph("dtypes")
    a = g.input("a", (None, 3), dtype=np.float32)
    b = g.input("b", (None, 3))
    nodes = [tg.tanh(tg.tanh(a)), tg.tanh(tg.tanh(b))]  # batched together: one stack would promote a's
    feeds = {"a": np.ones((2, 3), np.float32), "b": np.ones((2, 3))}
    for kw in ({}, {"batch": False}, {"check_finite": True}):
        acts = g.forward(feeds, **kw)
        assert [acts[n].dtype for n in nodes] == [np.float32, np.float64], kw


def test_an_unreached_float32_input_gradient_is_float32_zeros():
    g = tg.Graph("zeros32")
    xs = [g.input(f"x{t}", (None, 2), dtype=np.float32) for t in range(3)]
    W = g.param("W", np.ones((2, 2), np.float32))
    loss = tg.add_n([tg.sum(tg.stop_gradient(x) @ W) for x in xs])
    grads = g.forward({f"x{t}": np.ones((4, 2), np.float32) for t in range(3)}).backward(loss)
    assert grads[xs[0]].dtype == np.float32 and not grads[xs[0]].any()


def test_check_gradients_of_tied_copies_sharing_one_array():
    """Moving the shared array moves every copy: the check compares with their summed gradient."""
    rng = np.random.default_rng(0)
    g = tg.Graph("shared-check")
    A = rng.standard_normal((3, 3))
    x = g.input("x", (None, 3))
    W1, W2 = g.param("W1", A), g.param("W2", A)
    g.tie(W1, W2)
    loss = tg.sum(tg.tanh(tg.tanh(x @ W1) @ W2))
    check = tg.check_gradients(g, loss, {"x": rng.standard_normal((4, 3))})
    assert check < 1e-6, check
    assert list(check.errors) == ["W1"]  # (one check for the array both hold)
