"""Helpers several test files use (pytest puts this folder on sys.path: `from shared import ...`)."""

import numpy as np

import rnn


def tanh_rnn(name, I, H):
    """x (I inputs) -> h (H tanh units, learned initial state, recurrent) -> y (I linear outputs):
    the benchmarks' model, built here so that tests do not depend on benchmarks/."""
    net = rnn.RecurrentNet(name)
    net.add_group("x", I, role="input")
    net.add_group("h", H, activation="tanh", initial="learned")
    net.add_group("y", I, activation="linear", role="output")
    net.connect("x", "h", delay=0)
    net.connect("h", "h", delay=1)
    net.connect("h", "y", delay=0)
    return net


def tanh_rnn_bptt(weights, X, Y):
    """In float64 numpy from the net's definition: loss, h_1..h_T, weight gradients, dE/dx_t,
    and each step's share of dE/dW[h->h] (step t's copy multiplies h_{t-1})."""
    p = {k: np.asarray(v, np.float64) for k, v in weights.items()}
    X, Y = np.asarray(X, np.float64), np.asarray(Y, np.float64)
    T, B, _ = X.shape
    Wxh, Whh, bh, Why, by = p["x->h"], p["h->h"], p["bias:h"], p["h->y"], p["bias:y"]
    hs = [np.tile(p["init:h"], (B, 1))]
    for t in range(T):
        hs.append(np.tanh(X[t] @ Wxh + hs[-1] @ Whh + bh))
    rs = [hs[t + 1] @ Why + by - Y[t] for t in range(T)]
    loss = sum(0.5 * np.sum(r * r) for r in rs)
    d = {k: np.zeros_like(v) for k, v in p.items()}
    dX = np.zeros_like(X)
    shares = [None] * T
    carry = np.zeros_like(hs[0])
    for t in range(T - 1, -1, -1):
        d["h->y"] += hs[t + 1].T @ rs[t]
        d["bias:y"] += rs[t].sum(0)
        dz = (rs[t] @ Why.T + carry) * (1 - hs[t + 1] ** 2)
        d["x->h"] += X[t].T @ dz
        shares[t] = hs[t].T @ dz
        d["h->h"] += shares[t]
        d["bias:h"] += dz.sum(0)
        dX[t] = dz @ Wxh.T
        carry = dz @ Whh.T
    d["init:h"] = carry.sum(0)
    return loss, hs[1:], d, dX, shares


def central_difference(loss_fn, arr, index, eps=1e-6):
    """dloss/darr[index] by central differences, perturbing the array in place (written out
    here, independent of tinygraph.check)."""
    old = arr[index]
    arr[index] = old + eps
    up = loss_fn()
    arr[index] = old - eps
    down = loss_fn()
    arr[index] = old
    return (up - down) / (2 * eps)


def shared_fd(g, loss, feeds, arr, eps=1e-6):
    """d loss / d(one shared array) by central differences: perturbs every tied copy at once."""
    def loss_fn():
        return float(g.forward(feeds, outputs=[loss])[loss])
    return np.array([central_difference(loss_fn, arr, pos, eps) for pos in np.ndindex(arr.shape)]).reshape(arr.shape)
