"""The implementations under test, all with one interface.

Each takes the floor's starting ``params`` (see ``floor.PARAM_NAMES``), the data
``X``, ``Y`` (T, B, I) of one dtype and a learning rate, and offers:

- ``step()``: one training step (forward, backward through time, SGD update); returns the loss
- ``grads()``: {param name: dE/dparam as a numpy array} at the current weights, no update
- ``name``, ``dtype_report()`` (tinygraph only: where float32 is upcast)
"""

import os

import numpy as np

from .floor import PARAM_NAMES, FloorRNN

__all__ = ["FloorRNN", "TinygraphRNN", "TorchLoopRNN", "TorchNNRNN", "torch_available", "build_net"]


def build_net(I, H, name="bench"):
    """The rnn.RecurrentNet equivalent to the floor's model."""
    import rnn
    net = rnn.RecurrentNet(name)
    net.add_group("x", I, role="input")
    net.add_group("h", H, activation="tanh", initial="learned")
    net.add_group("y", I, activation="linear", role="output")
    net.connect("x", "h", delay=0)
    net.connect("h", "h", delay=1)
    net.connect("h", "y", delay=0)
    return net


class TinygraphRNN:
    """tinygraph: ``net.unroll(T)``, ``ff.run([Clamp], [Target])``, ``tg.SGD(...).step(out.grads)``."""

    name = "tinygraph"

    def __init__(self, params, X, Y, lr):
        import rnn  # noqa: F401  (imported here so the floor runs without the library)
        T, B, I = X.shape
        H = params["h->h"].shape[0]
        self.dtype = X.dtype
        self.X, self.Y, self.lr, self.T = X, Y, float(lr), T
        self.net = net = build_net(I, H)
        if set(net.weights) != set(PARAM_NAMES):
            raise RuntimeError(f"the net's weights {sorted(net.weights)} are not the floor's {sorted(PARAM_NAMES)}")
        for k in PARAM_NAMES:
            if net.weights[k].dtype == self.dtype:
                net.weights[k][...] = params[k]                     # in place: the storage the copies use
            else:
                net.weights[k] = np.array(params[k], dtype=self.dtype)  # before unroll, so copies use it
        self.ff = net.unroll(T)
        self.opt = None

    def run(self):
        import rnn
        return self.ff.run([rnn.Clamp("x", self.X)], [rnn.Target("y", self.Y, steps="all")])

    def step(self):
        import tinygraph as tg
        out = self.run()
        if self.opt is None:
            self.opt = tg.SGD(out.graph.params, self.lr)
        self.opt.step(out.grads)
        return out.loss

    def grads(self):
        out = self.run()
        return {k: np.array(v) for k, v in out.weight_grads.items()}

    def dtype_report(self):
        """Where the run's values are not in the data's dtype: {what: dtype} plus counts."""
        out = self.run()
        rep = {"data": str(self.dtype),
               "net.weights": sorted({str(v.dtype) for v in self.net.weights.values()}),
               "states h": str(out.states("h").dtype),
               "states y": str(out.states("y").dtype),
               "weight_grads": {k: str(v.dtype) for k, v in out.weight_grads.items()}}
        counts = {}
        first = {}
        for node in out.graph.nodes:
            try:
                v = np.asarray(out.acts[node])
            except Exception:
                continue
            dt = str(v.dtype)
            counts[dt] = counts.get(dt, 0) + 1
            if v.size:
                first.setdefault(dt, f"{node.name} ({node.op})")
        rep["node values by dtype"] = counts
        rep["first non-empty node of each dtype"] = first
        fed = [n for n in out.graph.nodes if n.op == "input" and n.name.startswith(("x@t", "target["))]
        rep["fed inputs"] = sorted({f"{n.name.split('@')[0].split('[')[0]}: {np.asarray(out.acts[n]).dtype}"
                                    for n in fed if n in out.acts})
        rep["upcast"] = any(d != str(self.dtype) for d in
                            [rep["states h"], rep["states y"], *rep["weight_grads"].values()])
        return rep


# ----------------------------------------------------------------- PyTorch (optional)

def torch_available():
    try:
        import torch  # noqa: F401
        return True
    except Exception:
        return False


def numpy_threads():
    """How many threads numpy's BLAS uses (threadpoolctl when installed, else the core count)."""
    try:
        import threadpoolctl
        n = [i["num_threads"] for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas"]
        if n:
            return int(max(n))
    except Exception:
        pass
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return os.cpu_count() or 1


_TORCH_READY = False


def _torch():
    global _TORCH_READY
    import torch
    if not _TORCH_READY:
        torch.set_num_threads(numpy_threads())
        _TORCH_READY = True
    return torch


class _TorchTraining:
    """What both PyTorch implementations share: a step is zero_grad, backward, SGD step;
    ``grads`` maps their parameters' gradients to the floor's names (``_named_grads``)."""

    def step(self):
        self.opt.zero_grad(set_to_none=True)
        loss = self._loss()
        loss.backward()
        self.opt.step()
        return loss.item()

    def grads(self):
        self.opt.zero_grad(set_to_none=True)
        self._loss().backward()
        out = self._named_grads()
        self.opt.zero_grad(set_to_none=True)
        return out


class TorchLoopRNN(_TorchTraining):
    """PyTorch autograd with a Python loop over time, written well: the input projection of all
    steps is one matmul before the loop, the recurrence is one ``addmm`` + ``tanh`` per step, the
    output projection one matmul after it; ``torch.optim.SGD``."""

    name = "torch loop"

    def __init__(self, params, X, Y, lr):
        torch = _torch()
        self.torch = torch
        T, B, I = X.shape
        self.T, self.B, self.I = T, B, I
        self.H = params["h->h"].shape[0]
        self.p = {k: torch.tensor(np.asarray(params[k], dtype=X.dtype), requires_grad=True) for k in PARAM_NAMES}
        self.X2 = torch.from_numpy(np.ascontiguousarray(X).reshape(T * B, I))
        self.Y2 = torch.from_numpy(np.ascontiguousarray(Y, dtype=X.dtype).reshape(T * B, I))
        self.opt = torch.optim.SGD(list(self.p.values()), lr=float(lr))

    def _loss(self):
        torch, p = self.torch, self.p
        T, B, H = self.T, self.B, self.H
        xw = torch.addmm(p["bias:h"], self.X2, p["x->h"]).view(T, B, H)
        h = p["init:h"].expand(B, H)
        Whh = p["h->h"]
        hs = []
        for t in range(T):
            h = torch.tanh(torch.addmm(xw[t], h, Whh))
            hs.append(h)
        y = torch.addmm(p["bias:y"], torch.stack(hs).view(T * B, H), p["h->y"])
        return 0.5 * ((y - self.Y2) ** 2).sum()

    def _named_grads(self):
        return {k: v.grad.detach().numpy().copy() for k, v in self.p.items()}


class TorchNNRNN(_TorchTraining):
    """``torch.nn.RNN`` (tanh, one layer) + ``torch.nn.Linear``, learned h0; ``torch.optim.SGD``.
    nn.RNN has two hidden biases; ``bias_hh`` is fixed at 0 so the model is exactly the floor's."""

    name = "torch nn.RNN"

    def __init__(self, params, X, Y, lr):
        torch = _torch()
        self.torch = torch
        T, B, I = X.shape
        H = params["h->h"].shape[0]
        self.B, self.H = B, H
        dt = torch.float32 if X.dtype == np.float32 else torch.float64
        self.rnn = torch.nn.RNN(I, H, num_layers=1, nonlinearity="tanh", bias=True).to(dt)
        self.lin = torch.nn.Linear(H, I).to(dt)
        t = lambda a: torch.tensor(np.asarray(a, dtype=X.dtype))  # noqa: E731
        with torch.no_grad():
            self.rnn.weight_ih_l0.copy_(t(params["x->h"]).T)
            self.rnn.weight_hh_l0.copy_(t(params["h->h"]).T)
            self.rnn.bias_ih_l0.copy_(t(params["bias:h"]))
            self.rnn.bias_hh_l0.zero_()
            self.lin.weight.copy_(t(params["h->y"]).T)
            self.lin.bias.copy_(t(params["bias:y"]))
        self.rnn.bias_hh_l0.requires_grad_(False)
        self.h0 = torch.nn.Parameter(t(params["init:h"]))
        self.X = torch.from_numpy(np.ascontiguousarray(X))
        self.Y = torch.from_numpy(np.ascontiguousarray(Y, dtype=X.dtype))
        trainable = [q for q in self.rnn.parameters() if q.requires_grad] + list(self.lin.parameters()) + [self.h0]
        self.opt = self.torch.optim.SGD(trainable, lr=float(lr))

    def _loss(self):
        h0 = self.h0.view(1, 1, self.H).expand(1, self.B, self.H).contiguous()
        out, _ = self.rnn(self.X, h0)
        y = self.lin(out)
        return 0.5 * ((y - self.Y) ** 2).sum()

    def _named_grads(self):
        n = lambda q: q.grad.detach().numpy().copy()  # noqa: E731
        return {"x->h": n(self.rnn.weight_ih_l0).T.copy(), "h->h": n(self.rnn.weight_hh_l0).T.copy(),
                "bias:h": n(self.rnn.bias_ih_l0), "h->y": n(self.lin.weight).T.copy(),
                "bias:y": n(self.lin.bias), "init:h": n(self.h0)}
