"""The floor: one training step of a tanh RNN in hand-written numpy BPTT, no framework.

The model (the same one every implementation in this suite trains)::

    h_0 = init:h                                   (H,), learned, shared by the batch
    h_t = tanh(x_t @ W[x->h] + h_{t-1} @ W[h->h] + bias:h)      t = 1..T
    y_t = h_t @ W[h->y] + bias:y                   (linear output, I units)
    E   = 0.5 * sum over t = 1..T, batch, units of (y_t - target_t)^2

then plain SGD: ``w -= lr * dE/dw`` for every parameter.

It is written to be as fast as numpy allows, so that ratios against it mean
something: the input projection of all steps is one ``(T*B, I) @ (I, H)`` matmul
outside the time loop, the output projection and its gradients are one matmul
each (the bias gradients too: a vector of ones times the rows), only the recurrence runs in Python loops (three numpy calls per step each
way, ``np.dot`` into preallocated rows, the transposed recurrent weight made
contiguous once per step), every buffer is allocated once, and everything stays in the dtype of the
inputs.  Parameter names are those of ``rnn.RecurrentNet`` (see ``PARAM_NAMES``).
"""

import numpy as np

PARAM_NAMES = ("x->h", "h->h", "bias:h", "h->y", "bias:y", "init:h")


def param_shapes(I, H):
    return {"x->h": (I, H), "h->h": (H, H), "bias:h": (H,), "h->y": (H, I), "bias:y": (I,), "init:h": (H,)}


def init_params(I, H, seed=0, dtype=np.float64):
    """Reproducible starting weights (float64 draws, then cast, so both dtypes start alike)."""
    rng = np.random.default_rng(seed)
    p = {
        "x->h": rng.standard_normal((I, H)) / np.sqrt(I),
        "h->h": rng.standard_normal((H, H)) * (0.9 / np.sqrt(H)),
        "bias:h": 0.1 * rng.standard_normal(H),
        "h->y": rng.standard_normal((H, I)) / np.sqrt(H),
        "bias:y": 0.1 * rng.standard_normal(I),
        "init:h": 0.1 * rng.standard_normal(H),
    }
    return {k: v.astype(dtype) for k, v in p.items()}


def make_data(T, B, I, seed=1, dtype=np.float64):
    """Inputs X (T, B, I) and targets Y (T, B, I)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((T, B, I)).astype(dtype)
    Y = (0.5 * rng.standard_normal((T, B, I))).astype(dtype)
    return X, Y


def default_lr(T, B):
    """A step size small enough that a few dozen timed steps stay well-behaved at every size."""
    return 0.01 / (T * B)


class FloorRNN:
    """Hand-written BPTT with preallocated buffers.

    ``params`` is copied (in X's dtype); ``X`` and ``Y`` are (T, B, I) arrays of one dtype.
    ``forward_backward()`` fills the buffers ``self.grad`` and returns the loss; ``grads()``
    returns copies of them; ``step()`` also applies SGD.  ``loss_at(params)`` is a plain forward pass for finite differences.
    """

    name = "numpy floor"

    def __init__(self, params, X, Y, lr):
        X = np.ascontiguousarray(X)
        Y = np.ascontiguousarray(Y, dtype=X.dtype)
        if X.dtype.kind != "f" or X.ndim != 3 or Y.shape != X.shape:
            raise ValueError(f"X and Y must be float arrays of one shape (T, B, I), got {X.shape}, {Y.shape}")
        dt = X.dtype
        T, B, I = X.shape
        H = params["h->h"].shape[0]
        shapes = param_shapes(I, H)
        self.params = {k: np.array(params[k], dtype=dt, copy=True) for k in PARAM_NAMES}
        for k, s in shapes.items():
            if self.params[k].shape != s:
                raise ValueError(f"param {k}: shape {self.params[k].shape}, expected {s}")
        self.T, self.B, self.I, self.H, self.dtype = T, B, I, H, dt
        self.lr = dt.type(lr)
        self.X, self.Y = X, Y
        self.X2 = X.reshape(T * B, I)
        self.Y2 = Y.reshape(T * B, I)
        # buffers, allocated once
        self.hs = np.empty((T + 1, B, H), dt)   # h_0 .. h_T
        self.A = np.empty((T, B, H), dt)        # input projection, then dE/d(total input of h)
        self.D = np.empty((T, B, H), dt)        # tanh' = 1 - h^2
        self.R = np.empty((T * B, I), dt)       # outputs, then residuals y - target
        self.carry = np.empty((B, H), dt)       # dE/dh_{t-1} through the recurrence
        self.WhhT = np.empty((H, H), dt)        # W[h->h] transposed, contiguous (BLAS is faster on it)
        self.ones = np.ones(T * B, dt)          # bias gradients as ones @ rows: BLAS beats np.sum(axis=0)
        self.grad = {k: np.empty(s, dt) for k, s in shapes.items()}  # gradient buffers

    def nbytes(self):
        """Bytes held by this object's preallocated buffers (params and grads included)."""
        arrs = [self.hs, self.A, self.D, self.R, self.carry, self.WhhT, self.ones, *self.params.values(),
                *self.grad.values()]
        return int(sum(a.nbytes for a in arrs))

    def forward_backward(self):
        p, g = self.params, self.grad
        T, B, H = self.T, self.B, self.H
        Whh = p["h->h"]
        hs, A, D, R, carry = self.hs, self.A, self.D, self.R, self.carry
        A2 = A.reshape(T * B, H)
        # forward: all input projections at once, then only the recurrence in the loop
        np.matmul(self.X2, p["x->h"], out=A2)
        A2 += p["bias:h"]
        hs[0] = p["init:h"]
        dot, tanh = np.dot, np.tanh   # np.dot: less call overhead than np.matmul on small 2-d arrays
        for t in range(T):
            h = hs[t + 1]
            dot(hs[t], Whh, out=h)
            h += A[t]
            tanh(h, out=h)
        H2 = hs[1:].reshape(T * B, H)
        np.matmul(H2, p["h->y"], out=R)
        R += p["bias:y"]
        R -= self.Y2
        r = R.reshape(-1)
        loss = 0.5 * float(np.dot(r, r))
        # backward: output layer in one matmul each
        np.matmul(H2.T, R, out=g["h->y"])
        np.matmul(self.ones, R, out=g["bias:y"])
        np.matmul(R, p["h->y"].T, out=A2)       # dE/dh_t from the outputs, every t
        np.multiply(H2, H2, out=D.reshape(T * B, H))
        np.subtract(1, D, out=D)
        # through time: only the recurrence in the loop
        WhhT = self.WhhT
        np.copyto(WhhT, Whh.T)
        A[T - 1] *= D[T - 1]
        multiply = np.multiply
        for t in range(T - 1, 0, -1):
            dot(A[t], WhhT, out=carry)
            a = A[t - 1]
            a += carry
            multiply(a, D[t - 1], out=a)
        dot(A[0], WhhT, out=carry)
        np.sum(carry, axis=0, out=g["init:h"])
        np.matmul(hs[:-1].reshape(T * B, H).T, A2, out=g["h->h"])
        np.matmul(self.X2.T, A2, out=g["x->h"])
        np.matmul(self.ones, A2, out=g["bias:h"])
        return loss

    def grads(self):
        """{param name: dE/dparam} at the current weights (copies; no update)."""
        self.forward_backward()
        return {k: v.copy() for k, v in self.grad.items()}

    def step(self):
        """One training step: forward, BPTT, SGD update.  Returns the loss before the update."""
        loss = self.forward_backward()
        p, lr = self.params, self.lr
        for k, gk in self.grad.items():
            gk *= lr            # the gradient buffers are rewritten next step anyway
            p[k] -= gk
        return loss

    def loss_at(self, params):
        """The loss at other parameters (plain numpy forward, float64), for finite differences."""
        p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
        X = self.X.astype(np.float64)
        h = np.broadcast_to(p["init:h"], (self.B, self.H))
        loss = 0.0
        for t in range(self.T):
            h = np.tanh(X[t] @ p["x->h"] + h @ p["h->h"] + p["bias:h"])
            y = h @ p["h->y"] + p["bias:y"]
            loss += 0.5 * float(np.sum((y - self.Y[t]) ** 2))
        return loss
