"""Symmetric and transpose constraints use closed-form projections (no quadratic matrix),
and fall back to the general system when combined with other constraints."""

import numpy as np

import tinygraph as tg


def test_large_symmetric_constraint_is_cheap_and_exact():
    rng = np.random.default_rng(0)
    g = tg.Graph()
    n = 400  # a dense constraint matrix would be 79,800 x 160,000
    W = g.param("W", rng.standard_normal((n, n)))
    g.constrain_symmetric(W, project_init=True)
    np.testing.assert_array_equal(W.value, W.value.T)
    G = rng.standard_normal((n, n))
    out = g.constraints.constrained_grads(_Grads(g, {W: G}))
    np.testing.assert_allclose(out[W], (G + G.T) / 2, rtol=1e-15)


def test_transpose_closed_form_equals_the_general_projection():
    rng = np.random.default_rng(1)
    A = rng.standard_normal((3, 2))
    G1, G2 = rng.standard_normal((3, 2)), rng.standard_normal((2, 3))
    fast = tg.Graph()
    W1, W2 = fast.param("W1", A.copy()), fast.param("W2", A.T.copy())
    fast.constrain_transpose(W1, W2)
    slow = tg.Graph()
    V1, V2 = slow.param("W1", A.copy()), slow.param("W2", A.T.copy())
    perm = np.array([j * 3 + i for i in range(3) for j in range(2)])
    slow.constrain({V1: np.eye(6), V2: -np.eye(6)[perm]})
    a = fast.constraints.constrained_grads(_Grads(fast, {W1: G1, W2: G2}))
    b = slow.constraints.constrained_grads(_Grads(slow, {V1: G1, V2: G2}))
    np.testing.assert_allclose(a[W1], b[V1], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(a[W2], b[V2], rtol=1e-12, atol=1e-14)


def test_symmetric_joined_by_another_constraint_uses_the_general_system():
    rng = np.random.default_rng(2)
    g = tg.Graph()
    S = rng.standard_normal((3, 3))
    S = (S + S.T) / 2
    S -= S.sum() / 9  # entries sum to 0
    W = g.param("W", S)
    g.constrain_symmetric(W)
    g.constrain({W: np.ones((1, 9))}, rhs=[0.0])
    x = g.input("x", (None, 3))
    loss = tg.sum(tg.tanh(x @ W) ** 2)
    opt = tg.Adam(g.params, lr=0.05)
    for _ in range(200):
        opt.step(g.forward({"x": rng.standard_normal((4, 3))}).backward(loss))
    np.testing.assert_allclose(W.value, W.value.T, atol=1e-12)
    assert abs(W.value.sum()) < 1e-9


class _Grads:
    """A stand-in for Gradients holding given raw gradients (no graph run needed)."""

    def __init__(self, graph, grads):
        self.graph = graph
        self._g = grads

    def __getitem__(self, p):
        return self._g.get(p, np.zeros_like(p.value))
