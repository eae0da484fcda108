"""Optimizers that keep ties bitwise equal and linear constraints satisfied.

References are independent: optimizer updates written out in numpy, the same net
written with one shared weight instead of tied copies, and constraint residuals
computed here from the constraint matrices.
"""

import numpy as np
import pytest

import tinygraph as tg


def _sgd_ref(w, grad_fn, steps, lr, momentum=0.0, weight_decay=0.0):
    w = w.copy()
    vel = None
    for _ in range(steps):
        g = grad_fn(w) + weight_decay * w
        vel = g if vel is None else momentum * vel + g
        w = w - lr * vel
    return w


def _adam_ref(w, grad_fn, steps, lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0):
    w = w.copy()
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    for t in range(1, steps + 1):
        g = grad_fn(w) + weight_decay * w
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        w = w - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    return w


# ----------------------------------------------------------------- plain updates

@pytest.mark.parametrize("make_opt, ref", [
    (lambda p: tg.SGD(p, lr=0.1), lambda w, f: _sgd_ref(w, f, 50, 0.1)),
    (lambda p: tg.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.01),
     lambda w, f: _sgd_ref(w, f, 50, 0.05, 0.9, 0.01)),
    (lambda p: tg.Adam(p, lr=0.02, weight_decay=0.01), lambda w, f: _adam_ref(w, f, 50, 0.02, weight_decay=0.01)),
], ids=["sgd", "sgd_momentum_wd", "adam_wd"])
def test_unconstrained_updates_match_numpy(make_opt, ref):
    rng = np.random.default_rng(0)
    T = rng.standard_normal((3, 2))
    w0 = rng.standard_normal((3, 2))
    g = tg.Graph("quad")
    W = g.param("W", w0.copy())
    loss = tg.sum((W - g.const(T)) ** 2) / 2  # dE/dW = W - T
    opt = make_opt([W])
    for _ in range(50):
        opt.step(g.forward().backward(loss))
    np.testing.assert_allclose(W.value, ref(w0, lambda w: w - T), rtol=1e-12, atol=1e-14)


def test_shared_storage_tie_moves_once_per_step():
    a = np.array([1.0, -2.0])
    g = tg.Graph("once")
    Ws = [g.param(f"W{i}", a) for i in range(3)]  # three copies, one storage
    loss = tg.sum(Ws[0] * 1.0) + tg.sum(Ws[1] * 2.0) + tg.sum(Ws[2] * 4.0)
    g.tie(*Ws)
    tg.SGD(g.params, lr=0.1).step(g.forward().backward(loss))
    np.testing.assert_allclose(a, [1.0 - 0.7, -2.0 - 0.7], rtol=1e-15)  # one step of the sum 7, not three


def test_optimizer_over_part_of_a_tie_moves_every_member():
    g = tg.Graph("part")
    W1 = g.param("W1", np.array([1.0, 2.0]))
    W2 = g.param("W2", np.array([1.0, 2.0]))
    loss = tg.sum(W1 * 3.0) + tg.sum(W2 * 5.0)
    g.tie(W1, W2)
    opt = tg.SGD([W1], lr=0.5)
    opt.step(g.forward().backward(loss))
    np.testing.assert_allclose(W1.value, [1.0 - 4.0, 2.0 - 4.0], rtol=1e-15)
    assert W1.value.tobytes() == W2.value.tobytes()


# ----------------------------------------------------------------- bitwise ties under training

def _tied_chain(storage, rng):
    """x -> tanh(. @ W_k) three times with the W_k tied, then a free readout."""
    A = rng.standard_normal((3, 3)) * 0.5
    g = tg.Graph(f"chain_{storage}")
    x = g.input("x", shape=(None, 3))
    y = g.input("y", shape=(None, 2))
    if storage == "separate":
        vals = [A.copy(), A.copy(), A.copy()]
    elif storage == "shared":
        vals = [A, A, A]
    else:  # mixed: two share one array, the third has its own
        vals = [A, A, A.copy()]
    Ws = [g.param(f"W{k}", v) for k, v in enumerate(vals)]
    V = g.param("V", rng.standard_normal((3, 2)) * 0.5)
    h = x
    for W in Ws:
        h = tg.tanh(h @ W)
    loss = tg.squared_error(h @ V, y)
    g.tie(*Ws, reduce="sum")
    return g, Ws, V, loss


def _shared_chain(A, V0):
    """The same net written with one weight used three times (the tie's independent reference)."""
    g = tg.Graph("one_weight")
    x = g.input("x", shape=(None, 3))
    y = g.input("y", shape=(None, 2))
    W = g.param("W", A.copy())
    V = g.param("V", V0.copy())
    h = x
    for _ in range(3):
        h = tg.tanh(h @ W)
    return g, W, V, tg.squared_error(h @ V, y)


@pytest.mark.parametrize("storage", ["separate", "shared", "mixed"])
@pytest.mark.parametrize("make_opt", [
    # a small rate: with a large one the dynamics are chaotic and amplify the rounding
    # difference between the two routes' gradient sums
    lambda p: tg.SGD(p, lr=0.002, momentum=0.9, weight_decay=1e-3),
    lambda p: tg.Adam(p, lr=0.003, weight_decay=1e-3),
], ids=["sgd_momentum_wd", "adam_wd"])
def test_tie_members_bitwise_equal_after_1000_steps(storage, make_opt):
    rng = np.random.default_rng(21)
    g, Ws, V, loss = _tied_chain(storage, rng)
    h, W_ref, V_ref, loss_ref = _shared_chain(Ws[0].value, V.value)
    feeds = {"x": rng.standard_normal((8, 3)), "y": rng.standard_normal((8, 2)) * 0.5}
    if storage == "separate":
        assert not any(np.shares_memory(Ws[0].value, W.value) for W in Ws[1:])
    start = Ws[0].value.copy()
    opt, opt_ref = make_opt(g.params), make_opt(h.params)
    first = float(g.forward(feeds)[loss])
    for _ in range(1000):
        opt.step(g.forward(feeds).backward(loss))
        opt_ref.step(h.forward(feeds).backward(loss_ref))
    for W in Ws[1:]:
        assert np.array_equal(W.value, Ws[0].value)
        assert W.value.tobytes() == Ws[0].value.tobytes()
    assert not np.allclose(Ws[0].value, start)  # it really trained
    assert float(g.forward(feeds)[loss]) < first
    # tied copies with summed gradients train exactly like one shared weight
    np.testing.assert_allclose(Ws[0].value, W_ref.value, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(V.value, V_ref.value, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("make_opt", [
    lambda p: tg.SGD(p, lr=0.01, momentum=0.9, weight_decay=1e-3),
    lambda p: tg.Adam(p, lr=0.01, weight_decay=1e-3),
], ids=["sgd_momentum_wd", "adam_wd"])
def test_mean_tie_with_constraint_stays_bitwise_equal(make_opt):
    # a tie (separate storage) that is also inside a linear constraint: the value
    # correction after each step must keep the copies bitwise equal
    rng = np.random.default_rng(22)
    g = tg.Graph("tie_in_constraint")
    a = np.array([0.2, 0.3, 0.5])
    T1, T2 = g.param("T1", a.copy()), g.param("T2", a.copy())
    g.tie(T1, T2, reduce="mean")
    g.constrain({T1: np.ones(3)}, rhs=[1.0])
    opt = make_opt(g.params)
    for _ in range(1000):
        opt.step({T1: rng.standard_normal(3), T2: rng.standard_normal(3)})
    assert T1.value.tobytes() == T2.value.tobytes()
    assert abs(T1.value.sum() - 1.0) <= 1e-12


# ----------------------------------------------------------------- constraint residuals

def _rel_residual(A, x, d):
    return np.linalg.norm(A @ x - d) / max(1.0, np.linalg.norm(d))


def _build_constrained(rng):
    g = tg.Graph("residuals")
    S0 = rng.standard_normal((3, 3))
    S = g.param("S", S0 + S0.T)                       # symmetric
    Q = g.param("Q", rng.standard_normal((3, 2)))
    P = g.param("P", Q.value.T.copy())                # P == Q.T
    U0 = rng.standard_normal((3, 3))
    U = g.param("U", U0 - U0.mean() + 1 / 9)          # sum(U) == 1
    V = g.param("V", rng.standard_normal(3))
    C_U = rng.standard_normal((2, 9))
    C_V = rng.standard_normal((2, 3))
    d = C_U @ U.value.reshape(-1) + C_V @ V.value    # a general constraint over U and V, rhs != 0
    T1 = g.param("T1", np.array([0.25, 0.25, 1.0]))
    T2 = g.param("T2", np.array([0.25, 0.25, 1.0]))   # tied, separate storage, T1[0] + T1[1] = 0.5
    g.constrain_symmetric(S)
    g.constrain_transpose(P, Q)
    g.constrain({U: np.ones(9)}, rhs=[1.0])
    g.constrain({U: C_U, V: C_V}, rhs=d)
    g.tie(T1, T2)
    g.constrain({T1: [[1.0, 1.0, 0.0]]}, rhs=[0.5])
    free = g.param("free", rng.standard_normal(2))

    def check(tol):
        assert np.max(np.abs(S.value - S.value.T)) <= tol * max(1.0, np.abs(S.value).max())
        assert np.max(np.abs(P.value - Q.value.T)) <= tol * max(1.0, np.abs(Q.value).max())
        assert _rel_residual(np.ones((1, 9)), U.value.reshape(-1), np.array([1.0])) <= tol
        A = np.hstack([C_U, C_V])
        x = np.concatenate([U.value.reshape(-1), V.value])
        assert _rel_residual(A, x, d) <= tol * max(1.0, np.linalg.norm(A) * np.linalg.norm(x) / max(1.0, np.linalg.norm(d)))
        assert abs(T1.value[0] + T1.value[1] - 0.5) <= tol
        assert T1.value.tobytes() == T2.value.tobytes()
        assert all(r <= tol for r in g.constraints.residuals().values())

    return g, check, free


@pytest.mark.parametrize("make_opt", [
    lambda p: tg.SGD(p, lr=0.01, momentum=0.9, weight_decay=1e-4),
    lambda p: tg.Adam(p, lr=0.01, weight_decay=1e-4),
], ids=["sgd_momentum_wd", "adam_wd"])
def test_constraints_hold_after_10000_steps_of_noise(make_opt):
    # random raw gradients every step: the values wander far, the constraints must not drift
    rng = np.random.default_rng(31)
    g, check, free = _build_constrained(rng)
    check(1e-12)
    opt = make_opt(g.params)
    start = {p.name: p.value.copy() for p in g.params}
    for _ in range(10_000):
        opt.step({p: rng.standard_normal(p.value.shape) for p in g.params})
    check(1e-9)
    assert all(np.abs(p.value - start[p.name]).max() > 0.1 for p in g.params)


@pytest.mark.parametrize("make_opt", [
    lambda p: tg.SGD(p, lr=0.02, momentum=0.9),
    lambda p: tg.Adam(p, lr=0.01),
], ids=["sgd_momentum", "adam"])
def test_constraints_hold_after_10000_training_steps(make_opt):
    # a real loss: W symmetric with every row summing to 1, fitted to a target map
    rng = np.random.default_rng(32)
    g = tg.Graph("fit")
    x = g.input("x", shape=(None, 3))
    y = g.input("y", shape=(None, 3))
    W = g.param("W", np.full((3, 3), 1 / 3))
    loss = tg.squared_error(x @ W, y)
    g.constrain_symmetric(W)
    rows = np.kron(np.eye(3), np.ones(3))  # row sums of vec(W) in C order
    g.constrain({W: rows}, rhs=np.ones(3))
    feeds = {"x": rng.standard_normal((5, 3)), "y": rng.standard_normal((5, 3))}
    first = float(g.forward(feeds)[loss])
    opt = make_opt([W])
    for _ in range(10_000):
        opt.step(g.forward(feeds).backward(loss))
    assert float(g.forward(feeds)[loss]) < first
    assert np.max(np.abs(W.value - W.value.T)) <= 1e-9 * max(1.0, np.abs(W.value).max())
    assert _rel_residual(rows, W.value.reshape(-1), np.ones(3)) <= 1e-9

    # and the optimum reached is the constrained least-squares fit computed directly:
    # minimise |X w_mat - Y|^2 over w in the affine set, via the null-space parametrisation
    sym = np.array([[1.0 if (i * 3 + j) in ((a * 3 + b), (b * 3 + a)) else 0.0
                     for a in range(3) for b in range(a, 3)] for i in range(3) for j in range(3)])
    # vec(W) = sym @ s for s in R^6; impose row sums with a particular solution + null space
    Rs = rows @ sym
    s0 = np.linalg.lstsq(Rs, np.ones(3), rcond=None)[0]
    _, sv, Vt = np.linalg.svd(Rs)
    N = Vt[int(np.sum(sv > 1e-12)):].T
    X, Y = feeds["x"], feeds["y"]
    # vec(X @ W) is linear in vec(W): X @ W = sum_k W-columns ... build it explicitly
    L = np.kron(X, np.eye(3))  # vec(X @ W) = (X kron I) vec(W) in C order
    M = L @ sym @ N
    z = np.linalg.lstsq(M, Y.reshape(-1) - L @ sym @ s0, rcond=None)[0]
    W_star = (sym @ (s0 + N @ z)).reshape(3, 3)
    np.testing.assert_allclose(W.value, W_star, atol=1e-4)


def test_constraint_holds_when_optimizer_gets_part_of_the_system():
    rng = np.random.default_rng(33)
    g = tg.Graph("partial")
    E = g.param("E", rng.standard_normal((3, 2)))
    D = g.param("D", E.value.T.copy())
    loss = tg.sum(D * g.const(rng.standard_normal((2, 3)))) + tg.sum(E * E)
    g.constrain_transpose(D, E)
    opt = tg.SGD([D], lr=0.01, momentum=0.5)
    for _ in range(100):
        opt.step(g.forward().backward(loss))
    np.testing.assert_allclose(D.value, E.value.T, atol=1e-12)


# ----------------------------------------------------------------- examples

def _autoencoder(rng, shared):
    X = rng.standard_normal((30, 2)) @ rng.standard_normal((2, 5))  # data on a plane in R^5
    g = tg.Graph("tied_ae" if not shared else "one_weight_ae")
    x = g.input("x", shape=(None, 5))
    W0 = rng.standard_normal((5, 2)) * 0.3
    enc = g.param("W_enc", W0)
    if shared:
        dec = tg.transpose(enc)
    else:
        dec = g.param("W_dec", W0.T.copy())
        g.constrain_transpose(dec, enc)  # W_dec == W_enc.T
    loss = tg.squared_error(tg.tanh(x @ enc) @ dec, x) / 30
    return g, enc, dec, loss, {"x": X}


def test_tied_autoencoder_keeps_transpose_and_learns():
    g, enc, dec, loss, feeds = _autoencoder(np.random.default_rng(41), shared=False)
    h, enc1, _, loss1, feeds1 = _autoencoder(np.random.default_rng(41), shared=True)

    grads = g.forward(feeds).backward(loss)
    cg = grads.constrained()
    np.testing.assert_allclose(cg[enc], (grads[enc] + grads[dec].T) / 2, atol=1e-14)
    np.testing.assert_allclose(cg[dec], cg[enc].T, atol=1e-14)

    first = float(g.forward(feeds)[loss])
    opt = tg.SGD(g.params, lr=0.05, momentum=0.9)
    # the shared-weight net's gradient is the sum, twice the projection: half the rate matches
    opt1 = tg.SGD(h.params, lr=0.025, momentum=0.9)
    for _ in range(300):
        opt.step(g.forward(feeds).backward(loss))
        opt1.step(h.forward(feeds1).backward(loss1))
    last = float(g.forward(feeds)[loss])
    assert last < 0.5 * first
    np.testing.assert_allclose(dec.value, enc.value.T, rtol=0, atol=1e-12)
    assert all(r <= 1e-9 for r in g.constraints.residuals().values())
    np.testing.assert_allclose(enc.value, enc1.value, rtol=1e-9, atol=1e-12)


def test_hopfield_weights_stay_symmetric_with_zero_diagonal_under_adam():
    rng = np.random.default_rng(42)
    n = 6
    patterns = np.sign(rng.standard_normal((3, n))) * 0.8
    g = tg.Graph("hopfield")
    s = g.input("s", shape=(None, n))
    W0 = rng.standard_normal((n, n)) * 0.1
    W = g.param("W", (W0 + W0.T) - np.diag(np.diag(W0 + W0.T)))
    loss = tg.squared_error(tg.tanh(s @ W), s)  # each stored pattern is a fixed point
    g.constrain_symmetric(W)
    g.constrain({W: np.eye(n * n)[[i * n + i for i in range(n)]]})  # zero self-connections
    assert len(g.constraints.systems) == 1  # both constraints on W form one system
    feeds = {"s": patterns}
    first = float(g.forward(feeds)[loss])
    opt = tg.Adam([W], lr=0.01)
    for _ in range(2000):
        opt.step(g.forward(feeds).backward(loss))
    assert float(g.forward(feeds)[loss]) < 0.2 * first
    assert np.max(np.abs(W.value - W.value.T)) <= 1e-12
    assert np.max(np.abs(np.diag(W.value))) <= 1e-12


# ----------------------------------------------------------------- bad input

@pytest.mark.parametrize("cls", [tg.SGD, tg.Adam])
def test_optimizer_bad_input(cls):
    g = tg.Graph("g")
    W = g.param("Wopt", np.zeros(2))
    x = g.input("xin", shape=(2,))
    with pytest.raises(tg.GraphError, match="no param"):
        cls([], lr=0.1)
    for lr in (0.0, -0.1, float("nan")):
        with pytest.raises(tg.GraphError, match="lr"):
            cls([W], lr=lr)
    with pytest.raises(tg.GraphError, match="xin"):
        cls([W, x], lr=0.1)
    with pytest.raises(tg.GraphError, match="th_node"):
        cls([W, tg.tanh(W, name="th_node")], lr=0.1)
    h = tg.Graph("h")
    V = h.param("Vopt", np.zeros(2))
    with pytest.raises(tg.GraphError, match="graph"):
        cls([W, V], lr=0.1)
    opt = cls([W], lr=0.1)
    lossV = tg.sum(V * V)
    other = h.forward().backward(lossV)
    with pytest.raises(tg.GraphError, match="'h'"):
        opt.step(other)
    with pytest.raises(tg.GraphError, match="Wopt"):
        opt.step({W: np.zeros(3)})
    with pytest.raises(tg.GraphError):
        opt.step([np.zeros(2)])
    np.testing.assert_array_equal(W.value, [0.0, 0.0])  # failed steps change nothing


def test_sgd_bad_momentum():
    g = tg.Graph("g")
    W = g.param("W", np.zeros(2))
    for m in (-0.1, 1.0, 1.5):
        with pytest.raises(tg.GraphError, match="momentum"):
            tg.SGD([W], lr=0.1, momentum=m)


@pytest.mark.parametrize("betas", [(1.0, 0.999), (0.9, 1.0), (-0.1, 0.999)])
def test_adam_bad_betas_refused(betas):
    g = tg.Graph("g")
    W = g.param("W", np.ones(2))
    with pytest.raises(tg.GraphError, match="betas"):
        tg.Adam([W], lr=0.1, betas=betas)


def test_untied_params_sharing_one_array_are_refused():
    """One update per variable would move a shared array twice (and Adam would count two
    steps in one state): such params must be tied."""
    g = tg.Graph("shared")
    A = np.ones(3)
    W1, W2 = g.param("W1", A), g.param("W2", A)
    loss = tg.sum(W1 * W2)
    grads = g.forward().backward(loss)
    for opt in (tg.SGD(g.params, lr=0.1), tg.Adam(g.params, lr=0.1)):
        with pytest.raises(tg.GraphError, match="share one array but are not tied"):
            opt.step(grads)
    assert np.array_equal(A, np.ones(3))
    g.tie(W1, W2)
    tg.SGD(g.params, lr=0.1).step(g.forward().backward(loss))
    np.testing.assert_allclose(A, 1 - 0.1 * 2 * np.ones(3), rtol=1e-12)  # the two copies' gradients (1 each), summed


def test_a_dict_step_checks_each_members_gradient_shape():
    g = tg.Graph("dict")
    W1, W2 = g.param("W1", np.eye(3)), g.param("W2", np.eye(3))
    g.tie(W1, W2)
    for bad in ({W1: np.ones((3, 3)), W2: np.ones(3)}, {W1: np.ones(3), W2: np.ones((3, 3))}):
        with pytest.raises(tg.GraphError, match=r"gradient of 'W[12]' has shape \(3,\), but the param has \(3, 3\)"):
            tg.SGD(g.params, lr=0.1).step(bad)
    assert np.array_equal(W1.value, np.eye(3))
