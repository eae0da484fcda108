"""Training a recurrent net by training its unrolled graph.

The optimizer works on the unrolled graph's parameters; since every copy of a
weight shares the net's array and the copies are tied, each step moves every
shared weight once (by the tied gradient), which trains the net itself.
"""

import sys
import time

import numpy as np

import tinygraph as tg

from .data import Clamp, DataError, Target


def _with_step_axis(values, single_step_ndim):
    """Values of a single step may come without the step axis; give it back."""
    arr = np.asarray(values)
    return arr[None] if arr.ndim == single_step_ndim else arr


class SequenceData:
    """A set of examples along the batch axis: clamps and targets whose values hold
    every example (shape (steps, N, units)).  ``subset(idx)`` slices the batch."""

    def __init__(self, inputs, targets):
        self.inputs = [Clamp(c.group, _with_step_axis(c.values, 2), c.steps, c.units) for c in inputs]
        self.targets = [Target(t.group, _with_step_axis(t.values, 1 if t.loss == "cross_entropy" else 2),
                               t.steps, t.units, t.loss,
                               None if t.mask is None else _with_step_axis(t.mask, 2)) for t in targets]
        sizes = {np.shape(x.values)[1] for x in self.inputs + self.targets}
        if len(sizes) != 1:
            raise DataError(f"SequenceData: clamps and targets disagree on the number of examples: {sorted(sizes)}")
        self.size = sizes.pop()

    def __len__(self):
        return self.size

    def subset(self, idx):
        ins = [Clamp(c.group, np.asarray(c.values)[:, idx], c.steps, c.units) for c in self.inputs]
        tgts = [Target(t.group, np.asarray(t.values)[:, idx], t.steps, t.units, t.loss,
                       None if t.mask is None else np.asarray(t.mask)[:, idx]) for t in self.targets]
        return ins, tgts


class History:
    """Per-epoch mean loss (and any metric the callback returns), plus timings."""

    def __init__(self):
        self.loss = []
        self.metrics = []
        self.seconds = 0.0
        self.updates = 0

    def __repr__(self):
        last = f"{self.loss[-1]:.4g}" if self.loss else "-"
        return f"<History {len(self.loss)} epochs, last loss {last}, {self.seconds:.1f}s>"


def _progress(epoch, epochs, loss, extra, width=24, stream=sys.stderr):
    done = int(width * epoch / max(epochs, 1))
    stream.write(f"\r  epoch {epoch:>4}/{epochs} [{'#' * done}{'.' * (width - done)}] loss {loss:.4f}{extra}")
    stream.flush()


def make_optimizer(optimizer, params, lr):
    if isinstance(optimizer, str):
        if optimizer == "adam":
            return tg.Adam(params, lr=lr)
        if optimizer == "sgd":
            return tg.SGD(params, lr=lr, momentum=0.9)
        raise DataError(f"optimizer must be 'adam', 'sgd' or a callable params -> optimizer, got {optimizer!r}")
    if callable(optimizer):
        return optimizer(params)
    raise DataError(f"optimizer must be 'adam', 'sgd' or a callable params -> optimizer, got {type(optimizer).__name__}")


def train(net, data, steps, optimizer="adam", epochs=100, batch_size=32, lr=0.01, progress=True,
          truncate=None, seed=0, callback=None, stop=None):
    """Train ``net`` on ``data`` (a SequenceData) unrolled for ``steps`` steps.

    Parameters
    ----------
    optimizer : "adam" | "sgd" | callable(params) -> tinygraph optimizer
    callback : callable(epoch, net) -> dict of metrics, optional (stored in history.metrics)
    stop : callable(metrics) -> bool, optional; ends training early when it returns True.

    Returns
    -------
    History
    """
    if not isinstance(data, SequenceData):
        raise DataError(f"train: data must be an rnn.train.SequenceData, got {type(data).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise DataError(f"train: batch_size must be an int >= 1, got {batch_size!r}")
    rng = np.random.default_rng(seed)
    ff = net.unroll(steps)
    hist = History()
    opt = None
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(data))
        losses = []
        for k in range(0, len(data), batch_size):
            ins, tgts = data.subset(order[k:k + batch_size])
            out = ff.run(ins, tgts, truncate=truncate, check_finite=True)
            if opt is None or opt.graph is not out.graph:
                opt = make_optimizer(optimizer, out.graph.params, lr)
            opt.step(out.grads)
            hist.updates += 1
            losses.append(out.loss / len(order[k:k + batch_size]))
        hist.loss.append(float(np.mean(losses)))
        metrics = callback(epoch, net) if callback else {}
        hist.metrics.append(metrics)
        if progress:
            extra = "".join(f" {k} {v:.4g}" for k, v in metrics.items())
            _progress(epoch, epochs, hist.loss[-1], extra)
        if stop is not None and stop(metrics):
            break
    if progress:
        sys.stderr.write("\n")
    hist.seconds = time.perf_counter() - start
    hist.epochs = len(hist.loss)
    return hist
