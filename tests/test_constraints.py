"""Weight tying and linear constraints: gradients, projections, structure and errors.

Every expected value here comes from a route independent of tinygraph's own
constraint code: hand-derived numbers, closed-form projections computed with
numpy's least squares / pseudo-inverse, or a direct numpy convolution.
"""

import gc
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinygraph as tg


def _row_space_projection(A, g):
    """g minus its orthogonal projection onto the row space of A (least squares, rank-safe)."""
    y = np.linalg.lstsq(A.T, g, rcond=None)[0]
    return g - A.T @ y


def _null_space_projector(A):
    """P = I - A^T (A A^T)^+ A, the orthogonal projector onto null(A)."""
    n = A.shape[1]
    return np.eye(n) - A.T @ np.linalg.pinv(A @ A.T, rcond=1e-10) @ A


# ----------------------------------------------------------------- ties: sum and mean

@pytest.mark.parametrize("reduce, expected", [
    ("sum", [3.5, -6.0]),     # x + 3*W2 = [2, -3] + [1.5, -3]
    ("mean", [1.75, -3.0]),   # half of that
])
def test_tie_reduce_against_hand_computed_gradients(reduce, expected):
    g = tg.Graph("hand")
    x = g.input("x", shape=(2,))
    W1 = g.param("W1", np.array([0.5, -1.0]))
    W2 = g.param("W2", np.array([0.5, -1.0]))
    free = g.param("free", np.array([4.0]))
    # dE/dW1 = x, dE/dW2 = 3 * W2, dE/dfree = 2 * free
    loss = tg.sum(W1 * x) + 1.5 * tg.sum(W2 * W2) + tg.sum(free * free)
    g.tie(W1, W2, reduce=reduce)
    grads = g.forward({"x": np.array([2.0, -3.0])}).backward(loss)

    # raw gradients stay per-copy, as if the weights were free
    np.testing.assert_allclose(grads[W1], [2.0, -3.0], rtol=0, atol=1e-15)
    np.testing.assert_allclose(grads[W2], [1.5, -3.0], rtol=0, atol=1e-15)
    cg = grads.constrained()
    np.testing.assert_allclose(cg[W1], expected, rtol=0, atol=1e-15)
    np.testing.assert_allclose(cg[W2], expected, rtol=0, atol=1e-15)
    np.testing.assert_allclose(cg[free], [8.0], rtol=0, atol=1e-15)
    # asking for the constrained gradients does not change the raw ones
    np.testing.assert_allclose(grads[W1], [2.0, -3.0], rtol=0, atol=1e-15)
    np.testing.assert_allclose(grads[W2], [1.5, -3.0], rtol=0, atol=1e-15)


@pytest.mark.parametrize("reduce, expected", [
    ("sum", [[10.0, 14.0], [16.0, 24.0]]),
    ("mean", [[5.0, 7.0], [8.0, 12.0]]),
])
def test_tie_reduce_in_a_chain_like_an_unrolled_net(reduce, expected):
    # E = sum(x @ W1 @ W2), x = [1, 2], W1 = W2 = [[1, 2], [3, 4]]
    # u = x @ W1 = [7, 10];  dE/dW2 = outer(u, 1) = [[7, 7], [10, 10]]
    # dE/dW1 = outer(x, W2 @ 1) = outer([1, 2], [3, 7]) = [[3, 7], [6, 14]]
    A = np.array([[1.0, 2.0], [3.0, 4.0]])
    g = tg.Graph("chain")
    x = g.input("x", shape=(1, 2))
    W1 = g.param("W1", A)
    W2 = g.param("W2", A.copy())
    loss = tg.sum(x @ W1 @ W2)
    g.tie(W1, W2, reduce=reduce)
    grads = g.forward({"x": np.array([[1.0, 2.0]])}).backward(loss)
    np.testing.assert_allclose(grads[W1], [[3.0, 7.0], [6.0, 14.0]], atol=1e-14)
    np.testing.assert_allclose(grads[W2], [[7.0, 7.0], [10.0, 10.0]], atol=1e-14)
    cg = grads.constrained()
    np.testing.assert_allclose(cg[W1], expected, atol=1e-14)
    np.testing.assert_allclose(cg[W2], expected, atol=1e-14)


@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_sgd_step_on_a_tie_uses_the_reduced_gradient(reduce):
    g = tg.Graph("step")
    x = g.input("x", shape=(2,))
    W1 = g.param("W1", np.array([0.5, -1.0]))
    W2 = g.param("W2", np.array([0.5, -1.0]))
    loss = tg.sum(W1 * x) + 1.5 * tg.sum(W2 * W2)
    g.tie(W1, W2, reduce=reduce)
    grads = g.forward({"x": np.array([2.0, -3.0])}).backward(loss)
    tg.SGD(g.params, lr=0.1).step(grads)
    step = np.array([3.5, -6.0]) if reduce == "sum" else np.array([1.75, -3.0])
    want = np.array([0.5, -1.0]) - 0.1 * step
    np.testing.assert_allclose(W1.value, want, rtol=1e-15)
    assert W1.value.tobytes() == W2.value.tobytes()


def test_three_way_tie_sums_all_members():
    rng = np.random.default_rng(3)
    A = rng.standard_normal((2, 3))
    G = [rng.standard_normal((2, 3)) for _ in range(3)]
    g = tg.Graph("three")
    Ws = [g.param(f"W{i}", A.copy()) for i in range(3)]
    loss = tg.add(tg.add(tg.sum(Ws[0] * G[0]), tg.sum(Ws[1] * G[1])), tg.sum(Ws[2] * G[2]))
    g.tie(Ws[0], Ws[1])
    g.tie(Ws[2], Ws[1])  # shares W1 with the first group: the groups merge
    assert len(g.constraints.ties) == 1
    assert {id(m) for m in g.constraints.ties[0].members} == {id(W) for W in Ws}
    grads = g.forward().backward(loss)
    cg = grads.constrained()
    for W in Ws:
        np.testing.assert_allclose(cg[W], G[0] + G[1] + G[2], atol=1e-14)
    for W, Gi in zip(Ws, G):
        np.testing.assert_allclose(grads[W], Gi, atol=1e-15)


# ----------------------------------------------------------------- general linear constraints

def _linear_loss(g, params, rng):
    """loss = sum_i sum(P_i * G_i): the raw gradient of P_i is exactly G_i."""
    Gs = [rng.standard_normal(p.value.shape) for p in params]
    terms = [tg.sum(p * g.const(Gi)) for p, Gi in zip(params, Gs)]
    loss = terms[0]
    for t in terms[1:]:
        loss = loss + t
    return loss, Gs


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_params=st.integers(1, 3), n_cons=st.integers(1, 3),
       redundant=st.booleans(), homogeneous=st.booleans())
def test_constrained_gradient_is_the_orthogonal_projection(seed, n_params, n_cons, redundant, homogeneous):
    rng = np.random.default_rng(seed)
    g = tg.Graph("proj")
    shapes = [(int(rng.integers(1, 3)), int(rng.integers(2, 4))) for _ in range(n_params)]
    params = [g.param(f"P{i}", rng.standard_normal(s)) for i, s in enumerate(shapes)]
    free = g.param("free", rng.standard_normal(3))  # in no constraint
    sizes = [p.value.size for p in params]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    N = int(offsets[-1])
    x0 = np.concatenate([p.value.reshape(-1) for p in params])

    # each constraint covers params k and k+1 (mod n): consecutive constraints overlap and
    # merge into one system
    specs = []  # (coefficient dict by index, rows in global coordinates)
    for k in range(n_cons):
        idx = sorted({k % n_params, (k + 1) % n_params})
        m = int(rng.integers(1, 3))
        coeffs = {i: rng.standard_normal((m, sizes[i])) for i in idx}
        if redundant:  # a repeated (scaled) row inside one constraint
            coeffs = {i: np.vstack([C, 2.5 * C[:1]]) for i, C in coeffs.items()}
        specs.append(coeffs)
    if redundant and n_cons > 1:  # a whole constraint that is a combination of two others
        combo = {}
        for k, w in ((0, 1.5), (1, -0.5)):
            for i, C in specs[k].items():
                combo[i] = combo.get(i, 0) + w * C[:1]
        specs.append(combo)

    rows = []
    for coeffs in specs:
        m = next(iter(coeffs.values())).shape[0]
        block = np.zeros((m, N))
        for i, C in coeffs.items():
            block[:, offsets[i]:offsets[i + 1]] = C
        rows.append(block)
    A = np.vstack(rows)

    for coeffs, block in zip(specs, rows):
        C = {params[i]: M for i, M in coeffs.items()}
        if homogeneous:
            g.constrain(C, project_init=True)
        else:
            g.constrain(C, rhs=block @ x0)

    x = np.concatenate([p.value.reshape(-1) for p in params])
    if homogeneous:
        # project_init moves the values to the nearest point of null(A)
        np.testing.assert_allclose(x, _row_space_projection(A, x0), atol=1e-9 * max(1, np.abs(x0).max()))
        assert np.linalg.norm(A @ x) <= 1e-9 * max(1.0, np.linalg.norm(A) * np.linalg.norm(x0))
    else:
        np.testing.assert_array_equal(x, x0)  # values already satisfy it: untouched

    loss, Gs = _linear_loss(g, params + [free], rng)
    grads = g.forward().backward(loss)
    for p, Gi in zip(params + [free], Gs):
        np.testing.assert_allclose(grads[p], Gi, atol=1e-15)  # raw stays raw

    graw = np.concatenate([Gi.reshape(-1) for Gi in Gs[:-1]])
    want = _row_space_projection(A, graw)
    np.testing.assert_allclose(_null_space_projector(A) @ graw, want, atol=1e-8)  # two routes agree
    cg = grads.constrained()
    got = np.concatenate([cg[p].reshape(-1) for p in params])
    scale = max(1.0, np.linalg.norm(graw))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10 * scale)
    assert np.linalg.norm(A @ got) <= 1e-9 * scale * max(1.0, np.linalg.norm(A))
    np.testing.assert_allclose(cg[free], Gs[-1], atol=1e-15)
    for p in params:
        assert cg[p].shape == p.value.shape


def test_pure_tie_as_general_constraint_equals_the_mean():
    rng = np.random.default_rng(5)
    A = rng.standard_normal((3, 2))
    g = tg.Graph("tie_as_constraint")
    W1 = g.param("W1", A.copy())
    W2 = g.param("W2", A.copy())
    loss, (G1, G2) = _linear_loss(g, [W1, W2], rng)
    g.constrain({W1: np.eye(6), W2: -np.eye(6)})  # W1 - W2 = 0
    cg = g.forward().backward(loss).constrained()
    np.testing.assert_allclose(cg[W1], (G1 + G2) / 2, atol=1e-14)
    np.testing.assert_allclose(cg[W2], (G1 + G2) / 2, atol=1e-14)

    # and the same as a tie with reduce="mean"
    h = tg.Graph("tie_mean")
    V1 = h.param("W1", A.copy())
    V2 = h.param("W2", A.copy())
    loss2 = tg.sum(V1 * h.const(G1)) + tg.sum(V2 * h.const(G2))
    h.tie(V1, V2, reduce="mean")
    cg2 = h.forward().backward(loss2).constrained()
    np.testing.assert_allclose(cg[W1], cg2[V1], atol=1e-14)


def test_tie_inside_a_constraint_projects_the_summed_gradient():
    # W1, W2 tied (sum); sum(W1) = 6.  The variable's gradient is G1 + G2, projected onto
    # {v : sum(v) = 0}: subtract its mean.
    rng = np.random.default_rng(6)
    g = tg.Graph("tie_and_sum")
    W1 = g.param("W1", np.full((2, 3), 1.0))
    W2 = g.param("W2", np.full((2, 3), 1.0))
    loss, (G1, G2) = _linear_loss(g, [W1, W2], rng)
    g.tie(W1, W2)
    g.constrain({W1: np.ones(6)}, rhs=[6.0])
    cg = g.forward().backward(loss).constrained()
    s = G1 + G2
    np.testing.assert_allclose(cg[W1], s - s.mean(), atol=1e-14)
    np.testing.assert_allclose(cg[W2], s - s.mean(), atol=1e-14)


def test_symmetric_and_transpose_gradients_closed_form():
    rng = np.random.default_rng(7)
    g = tg.Graph("sym_T")
    S0 = rng.standard_normal((3, 3))
    S = g.param("S", S0 + S0.T)
    E = g.param("E", rng.standard_normal((3, 2)))
    D = g.param("D", E.value.T.copy())
    loss, (GS, GE, GD) = _linear_loss(g, [S, E, D], rng)
    g.constrain_symmetric(S)
    g.constrain_transpose(D, E)  # D == E.T
    cg = g.forward().backward(loss).constrained()
    np.testing.assert_allclose(cg[S], (GS + GS.T) / 2, atol=1e-14)
    np.testing.assert_allclose(cg[D], (GD + GE.T) / 2, atol=1e-14)
    np.testing.assert_allclose(cg[E], (GE + GD.T) / 2, atol=1e-14)


def test_non_homogeneous_constraint_and_project_init_nearest_point():
    g = tg.Graph("affine")
    x0 = np.array([[0.2, 0.5, 0.1], [0.0, 0.4, 0.6]])
    W = g.param("W", x0.copy())
    g.constrain({W: np.ones((1, 6))}, rhs=[1.0], project_init=True)
    # the nearest point of {sum = 1}: subtract (sum - 1) / 6 from every entry
    np.testing.assert_allclose(W.value, x0 - (x0.sum() - 1.0) / 6, atol=1e-15)
    assert abs(W.value.sum() - 1.0) <= 1e-12


# ----------------------------------------------------------------- examples

def _toeplitz_band(k, n_out, n_in):
    M = np.zeros((n_out, n_in))
    for i in range(n_out):
        M[i, i:i + len(k)] = k
    return M


def _conv_reference(X, k, R):
    """Valid 1-D correlation of each row of X with k, and dE/dk for E = sum(R * Y)."""
    Y = np.array([np.convolve(row, k[::-1], mode="valid") for row in X])
    dk = np.zeros(len(k))
    for b in range(X.shape[0]):
        for i in range(R.shape[1]):
            for d in range(len(k)):
                dk[d] += R[b, i] * X[b, i + d]
    return Y, dk


def test_conv1d_as_tied_fully_connected_layer():
    rng = np.random.default_rng(11)
    n_in, K, batch = 7, 3, 4
    n_out = n_in - K + 1
    k = rng.standard_normal(K)
    X = rng.standard_normal((batch, n_in))
    R = rng.standard_normal((batch, n_out))
    Y_ref, dk_ref = _conv_reference(X, k, R)

    g = tg.Graph("conv_fc")
    x = g.input("x", shape=(None, n_in))
    entry = {}
    rows = []
    for i in range(n_out):
        parts = []
        if i > 0:
            parts.append(g.const(np.zeros(i)))
        for d in range(K):
            entry[i, d] = g.param(f"M_{i}_{i + d}", np.array([k[d]]))  # one scalar param per entry
            parts.append(entry[i, d])
        if n_in - i - K > 0:
            parts.append(g.const(np.zeros(n_in - i - K)))
        rows.append(tg.reshape(tg.concat(parts), (1, n_in)))
    M = tg.concat(rows, axis=0)  # (n_out, n_in), band of width K
    y = x @ tg.transpose(M)
    loss = tg.sum(y * g.const(R))
    for d in range(K):  # one tie group per diagonal
        g.tie(*[entry[i, d] for i in range(n_out)], reduce="sum")

    acts = g.forward({"x": X})
    np.testing.assert_allclose(acts[y], Y_ref, atol=1e-13)
    grads = acts.backward(loss)
    cg = grads.constrained()
    for i in range(n_out):
        for d in range(K):
            # raw: this entry's own contribution; constrained: the kernel gradient (the sum)
            np.testing.assert_allclose(grads[entry[i, d]], [R[:, i] @ X[:, i + d]], atol=1e-13)
            np.testing.assert_allclose(cg[entry[i, d]], [dk_ref[d]], atol=1e-12)

    # one SGD step on the tied layer equals one step on the kernel itself
    tg.SGD(g.params, lr=0.05).step(grads)
    for d in range(K):
        vals = [entry[i, d].value for i in range(n_out)]
        np.testing.assert_allclose(vals[0], [k[d] - 0.05 * dk_ref[d]], rtol=1e-14)
        assert all(v.tobytes() == vals[0].tobytes() for v in vals)


def test_conv1d_as_constrained_full_matrix():
    rng = np.random.default_rng(12)
    n_in, K, batch = 6, 2, 3
    n_out = n_in - K + 1
    k = rng.standard_normal(K)
    X = rng.standard_normal((batch, n_in))
    R = rng.standard_normal((batch, n_out))
    Y_ref, dk_ref = _conv_reference(X, k, R)

    g = tg.Graph("conv_matrix")
    x = g.input("x", shape=(None, n_in))
    W = g.param("W", _toeplitz_band(k, n_out, n_in))
    y = x @ tg.transpose(W)
    loss = tg.sum(y * g.const(R))
    rows = []
    for i in range(n_out):
        for j in range(n_in):
            row = np.zeros(n_out * n_in)
            d = j - i
            if 0 <= d < K:
                if i == 0:
                    continue
                row[i * n_in + j] = 1.0  # W[i, i+d] - W[0, d] = 0
                row[0 * n_in + d] = -1.0
            else:
                row[i * n_in + j] = 1.0  # off-band entries are zero
            rows.append(row)
    g.constrain({W: np.array(rows)})

    acts = g.forward({"x": X})
    np.testing.assert_allclose(acts[y], Y_ref, atol=1e-13)
    cg = acts.backward(loss).constrained()
    # the diagonals are orthogonal directions of n_out entries each: the projection puts
    # dk[d] / n_out on every entry of diagonal d (the tie's "mean"), zero off the band
    want = _toeplitz_band(dk_ref / n_out, n_out, n_in)
    np.testing.assert_allclose(cg[W], want, atol=1e-12)
    # summing the constrained gradient over a diagonal's n_out entries recovers the sum
    for d in range(K):
        np.testing.assert_allclose(n_out * cg[W][0, d], dk_ref[d], atol=1e-12)


# ----------------------------------------------------------------- memory

def _tie_alloc(n):
    A = np.zeros((200, 200))  # 320 KB
    g = tg.Graph(f"mem{n}")
    gc.collect()
    tracemalloc.start()
    try:
        params = [g.param(f"W{i}", A) for i in range(n)]
        g.tie(*params)
        build_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    opt = tg.SGD(params, lr=0.1, momentum=0.5)
    grad = {params[0]: np.ones(A.shape)}
    gc.collect()
    tracemalloc.start()
    try:
        opt.step(grad)
        opt.step(grad)
        step_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert all(p.value is A for p in params)
    # each step moves the one storage once: velocity 1, then 0.5 * 1 + 1
    np.testing.assert_allclose(A, -0.1 * 1 - 0.1 * 1.5, rtol=1e-15)
    return build_peak, step_peak, A.nbytes


def test_shared_storage_tie_costs_constant_memory_in_members():
    b100, s100, nbytes = _tie_alloc(100)
    b1000, s1000, _ = _tie_alloc(1000)
    assert b1000 < 0.01 * 1000 * nbytes  # far below one copy per member
    assert b1000 < 4 * nbytes
    # each extra member costs a node's bookkeeping, not an array
    assert (b1000 - b100) / 900 < nbytes / 50
    # an optimizer step works on the one storage: a few arrays, whatever the member count
    assert s1000 < 6 * nbytes
    assert s1000 < 1.5 * s100 + nbytes


# ----------------------------------------------------------------- bad input

def test_tie_different_shapes_refused():
    g = tg.Graph("g")
    W1 = g.param("Wa", np.zeros((2, 3)))
    W2 = g.param("Wb", np.zeros((3, 2)))
    with pytest.raises(tg.GraphError, match="Wb") as exc:
        g.tie(W1, W2)
    assert "Wa" in str(exc.value) and "(3, 2)" in str(exc.value)
    assert g.constraints.ties == []


def test_tie_params_from_different_graphs_refused():
    g1, g2 = tg.Graph("first"), tg.Graph("second")
    W1 = g1.param("W1", np.zeros(3))
    W2 = g2.param("W2", np.zeros(3))
    with pytest.raises(tg.GraphError, match="W2") as exc:
        g1.tie(W1, W2)
    assert "second" in str(exc.value)
    with pytest.raises(tg.GraphError, match="W2"):
        g1.constrain({W1: np.eye(3), W2: -np.eye(3)})


@pytest.mark.parametrize("kind", ["input", "const", "op"])
def test_tie_non_param_refused(kind):
    g = tg.Graph("g")
    W = g.param("W", np.zeros(3))
    other = {"input": lambda: g.input("xin", shape=(3,)),
             "const": lambda: g.const(np.zeros(3), name="c0"),
             "op": lambda: tg.tanh(W, name="th")}[kind]()
    with pytest.raises(tg.GraphError, match=other.name):
        g.tie(W, other)
    with pytest.raises(tg.GraphError, match=other.name):
        g.constrain({other: np.ones(3)})
    with pytest.raises(tg.GraphError):
        g.tie(W, "not a node at all")
    assert g.constraints.ties == [] and g.constraints.constraints == []


def test_tie_different_values_refused_and_align_copies():
    g = tg.Graph("g")
    a = np.array([1.0, 2.0, 3.0])
    b = np.array([1.0, 2.0, 3.5])
    W1 = g.param("W1", a)
    W2 = g.param("W2", b)
    with pytest.raises(tg.GraphError, match="W2") as exc:
        g.tie(W1, W2)
    assert "W1" in str(exc.value)
    np.testing.assert_array_equal(b, [1.0, 2.0, 3.5])  # untouched after the refusal
    g.tie(W1, W2, align=True)
    assert W2.value is b  # copied into the same storage, not replaced
    assert not np.shares_memory(W1.value, W2.value)
    assert W1.value.tobytes() == W2.value.tobytes() == np.array([1.0, 2.0, 3.0]).tobytes()


def test_tie_same_param_twice_or_alone_refused():
    g = tg.Graph("g")
    W = g.param("W", np.zeros(2))
    with pytest.raises(tg.GraphError, match="W"):
        g.tie(W, W)
    with pytest.raises(tg.GraphError, match="W"):
        g.tie(W)
    with pytest.raises(tg.GraphError, match="reduce"):
        g.tie(W, g.param("V", np.zeros(2)), reduce="max")


def test_constraint_wrong_number_of_columns_refused():
    g = tg.Graph("g")
    W = g.param("Wcols", np.zeros((2, 2)))
    V = g.param("Vcols", np.zeros(3))
    with pytest.raises(tg.GraphError, match="Wcols") as exc:
        g.constrain({W: np.ones((1, 5))})
    assert "4" in str(exc.value)
    with pytest.raises(tg.GraphError, match="Vcols"):
        g.constrain({W: np.ones((1, 4)), V: np.ones((1, 2))})
    with pytest.raises(tg.GraphError):  # row counts disagree
        g.constrain({W: np.ones((2, 4)), V: np.ones((1, 3))})
    with pytest.raises(tg.GraphError):  # rhs of the wrong length
        g.constrain({W: np.ones((1, 4))}, rhs=[0.0, 0.0])
    assert g.constraints.constraints == []


def test_inconsistent_system_refused_and_rolled_back():
    g = tg.Graph("g")
    W = g.param("Wx", np.array([1.0, 0.0, 0.0]))
    e0 = np.array([[1.0, 0.0, 0.0]])
    g.constrain({W: e0}, rhs=[1.0])
    with pytest.raises(tg.GraphError, match="Wx") as exc:
        g.constrain({W: e0}, rhs=[2.0], project_init=True)
    assert "inconsistent" in str(exc.value)
    assert len(g.constraints.constraints) == 1  # the bad constraint left no trace
    np.testing.assert_array_equal(W.value, [1.0, 0.0, 0.0])
    # the surviving constraint still works
    loss = tg.sum(W * g.const(np.array([1.0, 2.0, 3.0])))
    cg = g.forward().backward(loss).constrained()
    np.testing.assert_allclose(cg[W], [0.0, 2.0, 3.0], atol=1e-15)


def test_inconsistent_across_params_refused():
    # x + y = 1 and x + y = 3 written over two params
    g = tg.Graph("g")
    X = g.param("X", np.array([0.5]))
    Y = g.param("Y", np.array([0.5]))
    g.constrain({X: [[1.0]], Y: [[1.0]]}, rhs=[1.0])
    with pytest.raises(tg.GraphError, match="X") as exc:
        g.constrain({X: [[2.0]], Y: [[2.0]]}, rhs=[6.0], project_init=True)
    assert "Y" in str(exc.value)


def test_initial_values_violating_constraint():
    g = tg.Graph("g")
    W = g.param("Wv", np.array([0.3, 0.3, 0.3]))
    with pytest.raises(tg.GraphError, match="Wv") as exc:
        g.constrain({W: np.ones(3)}, rhs=[1.0])
    assert "project_init" in str(exc.value)
    assert g.constraints.constraints == []
    np.testing.assert_array_equal(W.value, [0.3, 0.3, 0.3])
    g.constrain({W: np.ones(3)}, rhs=[1.0], project_init=True)
    np.testing.assert_allclose(W.value, [1 / 3, 1 / 3, 1 / 3], atol=1e-15)

    S = g.param("Sv", np.array([[1.0, 2.0], [0.0, 1.0]]))
    with pytest.raises(tg.GraphError, match="Sv"):
        g.constrain_symmetric(S)
    g.constrain_symmetric(S, project_init=True)
    np.testing.assert_allclose(S.value, [[1.0, 1.0], [1.0, 1.0]], atol=1e-15)

    E = g.param("Ev", np.ones((2, 3)))
    D = g.param("Dv", np.zeros((3, 2)))
    with pytest.raises(tg.GraphError, match="Dv"):
        g.constrain_transpose(D, E)
    with pytest.raises(tg.GraphError, match="Ev"):  # wrong shapes for a transpose
        g.constrain_transpose(E, E)
    with pytest.raises(tg.GraphError, match="Ev"):  # not square
        g.constrain_symmetric(E)


def test_tie_groups_merge_with_same_reduce_and_refuse_different():
    g = tg.Graph("g")
    a = np.arange(4.0)
    Ws = [g.param(f"W{i}", a.copy()) for i in range(5)]
    g.tie(Ws[0], Ws[1], reduce="mean")
    g.tie(Ws[2], Ws[3], reduce="mean")
    assert len(g.constraints.ties) == 2
    g.tie(Ws[1], Ws[2], reduce="mean")  # bridges both groups
    assert len(g.constraints.ties) == 1
    assert {id(m) for m in g.constraints.ties[0].members} == {id(W) for W in Ws[:4]}
    with pytest.raises(tg.GraphError, match="W3") as exc:
        g.tie(Ws[3], Ws[4], reduce="sum")
    assert "mean" in str(exc.value)
    assert len(g.constraints.ties) == 1 and len(g.constraints.ties[0].members) == 4

    terms = [tg.sum(W * g.const(np.full(4, float(i + 1)))) for i, W in enumerate(Ws[:4])]
    loss = terms[0] + terms[1] + terms[2] + terms[3]
    cg = g.forward().backward(loss).constrained()
    for W in Ws[:4]:
        np.testing.assert_allclose(cg[W], np.full(4, 2.5), atol=1e-15)  # mean of 1, 2, 3, 4


# ----------------------------------------------------------------- known bugs

def test_tie_that_makes_constraints_inconsistent_leaves_no_trace():
    g = tg.Graph("g")
    W1 = g.param("W1", np.array([1.0, 0.0]))
    W2 = g.param("W2", np.array([2.0, 0.0]))
    g.constrain({W1: [[1.0, 0.0]]}, rhs=[1.0])  # W1[0] = 1
    g.constrain({W2: [[1.0, 0.0]]}, rhs=[2.0])  # W2[0] = 2: tying them cannot work
    with pytest.raises(tg.GraphError, match="W1"):
        g.tie(W1, W2, align=True)
    assert g.constraints.ties == []
    np.testing.assert_array_equal(W2.value, [2.0, 0.0])
    loss = tg.sum(W1 * 1.0) + tg.sum(W2 * 1.0)
    cg = g.forward().backward(loss).constrained()
    np.testing.assert_allclose(cg[W1], [0.0, 1.0], atol=1e-15)  # the constraints still act
    tg.SGD(g.params, lr=0.1).step(g.forward().backward(loss))
    assert all(r <= 1e-9 for r in g.constraints.residuals().values())


def test_align_tie_does_not_silently_break_a_constraint():
    g = tg.Graph("g")
    W1 = g.param("W1", np.array([0.3, 0.3]))
    W2 = g.param("W2", np.array([0.5, 0.5]))
    g.constrain({W2: np.ones(2)}, rhs=[1.0])
    try:
        g.tie(W1, W2, align=True)
    except tg.GraphError as exc:  # refusing is fine, if it names the param and changes nothing
        assert "W2" in str(exc)
        np.testing.assert_array_equal(W2.value, [0.5, 0.5])
        return
    assert W1.value.tobytes() == W2.value.tobytes()
    assert all(r <= 1e-9 for r in g.constraints.residuals().values())


def test_same_param_twice_in_one_constraint_is_not_silently_dropped():
    # either refuse, or add the blocks (as for two members of one tie): [[1, 1]] x = 0.5 is
    # then violated by x = [0.5, 0.5].  Keeping only [[0, 1]] and accepting is wrong either way.
    g = tg.Graph("g")
    W = g.param("W", np.array([0.5, 0.5]))
    with pytest.raises(tg.GraphError, match="W"):
        g.constrain({W: [[1.0, 0.0]], "W": [[0.0, 1.0]]}, rhs=[0.5])


# ----------------------------------------------------------------- ties made after a run

def _two_copies(rng):
    g = tg.Graph("late")
    A = rng.standard_normal((3, 3))
    x = g.input("x", (None, 3))
    W1, W2 = g.param("W1", A.copy()), g.param("W2", A.copy())
    loss = tg.sum(tg.tanh(x @ W1) @ W2)
    return g, x, W1, W2, loss, {"x": rng.standard_normal((4, 3))}


@pytest.mark.parametrize("when", ["after backward", "between forward and backward"])
def test_a_tie_made_after_the_run_sums_the_members_own_gradients(when):
    """The run did not know the tie: its members have their own gradients, and the tied
    gradient is their sum (it was zero: the run had no buffer for a group it never saw)."""
    g, x, W1, W2, loss, feeds = _two_copies(np.random.default_rng(0))
    acts = g.forward(feeds)
    if when == "between forward and backward":
        g.tie(W1, W2)
        grads = acts.backward(loss)
    else:
        grads = acts.backward(loss)
        g.tie(W1, W2)
    want = np.asarray(grads[W1]) + np.asarray(grads[W2])
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(grads.constrained()[W1], want, rtol=1e-12)
    before = W1.value.copy()
    tg.SGD(g.params, lr=0.1).step(grads)
    np.testing.assert_allclose(before - W1.value, 0.1 * want, rtol=1e-12)
    assert np.array_equal(W1.value, W2.value)


def test_a_tie_merged_after_the_run_sums_every_members_gradient():
    rng = np.random.default_rng(1)
    g = tg.Graph("merge")
    A = rng.standard_normal(2)
    Ws = [g.param(f"W{k}", A.copy()) for k in range(3)]
    loss = tg.sum(Ws[0] * g.const([1.0, 2.0])) + tg.sum(Ws[1] * g.const([3.0, 4.0])) + tg.sum(Ws[2] * g.const([-1.0, 6.0]))
    g.tie(Ws[0], Ws[1])
    grads = g.forward().backward(loss)
    g.tie(Ws[1], Ws[2])  # merges into a new group the run never saw
    np.testing.assert_allclose(grads.constrained()[Ws[0]], [3.0, 12.0], rtol=1e-12)


def test_tied_params_must_share_a_dtype():
    g = tg.Graph("dtypes")
    W1 = g.param("W1", np.ones((2, 2)))
    W2 = g.param("W2", np.ones((2, 2), dtype=np.float32))
    with pytest.raises(tg.GraphError, match="float32.*float64|one dtype"):
        g.tie(W1, W2)
    assert not g.constraints.ties


# ----------------------------------------------------------------- ill-posed constraint systems

def test_nearly_dependent_constraints_are_refused_as_such_not_as_inconsistent():
    g = tg.Graph("near")
    W = g.param("W", np.array([1.0, 2.0, 3.0]))
    A = np.array([[1.0, 1.0, 1.0], [1.0, 1.0 + 1e-10, 1.0]])
    with pytest.raises(tg.GraphError, match="nearly dependent"):
        g.constrain({W: A}, rhs=A @ W.value)
    assert not g.constraints.constraints


def test_consistency_does_not_depend_on_how_a_row_is_scaled():
    g = tg.Graph("scale")
    W = g.param("W", np.zeros(1))
    g.constrain({W: np.array([[1e-9]])}, rhs=[0.0])
    with pytest.raises(tg.GraphError, match="inconsistent"):
        g.constrain({W: np.array([[1e-9]])}, rhs=[1e-9])  # w = 0 and w = 1 together
    assert len(g.constraints.constraints) == 1


def test_dependent_constraints_whose_right_hand_side_is_rounding_noise_are_consistent():
    """Row and column sums of a doubly centred W, kept at their current values (about 1e-16):
    the system is consistent at W's scale, whatever the noise's own scale."""
    rng = np.random.default_rng(0)
    A = rng.standard_normal((3, 3))
    A -= A.mean(axis=0)
    A -= A.mean(axis=1, keepdims=True)
    g = tg.Graph("centred")
    W = g.param("W", A)
    rows = np.kron(np.eye(3), np.ones((1, 3)))
    cols = np.kron(np.ones((1, 3)), np.eye(3))
    C = np.vstack([rows, cols])  # (exactly dependent: both sum to the total)
    g.constrain({W: C}, rhs=C @ A.reshape(-1))
    assert list(g.constraints.residuals().values())[0] < 1e-12


def test_contradicting_constraints_on_one_entry_of_a_large_weight_are_refused():
    rng = np.random.default_rng(0)
    g = tg.Graph("large")
    W = g.param("W", 1e3 * rng.standard_normal((30, 30)))
    e00 = np.zeros((1, W.value.size))
    e00[0, 0] = 1.0
    g.constrain({W: e00}, rhs=[0.0], project_init=True)
    with pytest.raises(tg.GraphError, match="inconsistent"):
        g.constrain({W: e00}, rhs=[1e-4], project_init=True)  # W[0,0] = 0 and W[0,0] = 1e-4
