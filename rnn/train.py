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


def _steps_named(steps):
    """How many steps a spec names when that does not depend on T (None for "all")."""
    if isinstance(steps, str):
        return 1 if steps in ("final", "initial") else None
    if isinstance(steps, tuple) and len(steps) == 2 and steps[0] == "last":
        return steps[1] if isinstance(steps[1], (int, np.integer)) else None
    if isinstance(steps, (int, np.integer)):
        return 1
    try:
        return len(steps)
    except TypeError:
        return None


def _cross_entropy_values(t, examples):
    """A cross-entropy target's values with their step axis: class labels (steps, N) or one-hot
    rows (steps, N, classes).  One step may come as labels (N,) or as one-hot rows (N, classes),
    which Target tells from labels (1, N) by the group's size; without the net, a 2-D float
    array for one named step is one-hot rows unless its first axis is 1 and the examples
    (``examples``, from the other records) are not 1."""
    arr = np.asarray(t.values)
    if arr.ndim == 1:
        return arr[None]
    if (arr.ndim == 2 and _steps_named(t.steps) == 1 and arr.dtype.kind == "f"
            and (arr.shape[0] != 1 or examples == {1})):
        return arr[None]
    return arr


class SequenceData:
    """A set of examples along the batch axis: clamps and targets whose values hold
    every example (shape (steps, N, units)).  ``subset(idx)`` slices the batch."""

    def __init__(self, inputs, targets):
        self.inputs = [Clamp(c.group, _with_step_axis(c.values, 2), c.steps, c.units) for c in inputs]
        plain = [t for t in targets if t.loss != "cross_entropy"]
        examples = {np.shape(_with_step_axis(x.values, 2))[1] for x in list(inputs) + plain}
        self.targets = [Target(t.group, _cross_entropy_values(t, examples) if t.loss == "cross_entropy"
                               else _with_step_axis(t.values, 2), t.steps, t.units, t.loss,
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

    @property
    def epochs(self):
        return len(self.loss)

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


def windows(net, steps, inputs, targets, window):
    """Cut one batch of clamps and targets over steps 1..T into consecutive windows of
    ``window`` steps, each renumbered 1..window (step 0 stays with the first window).

    Yields (inputs, targets) per window; the caller clamps each window's initial states.
    """
    resolved_in = [(c, *c.resolve(net, steps)) for c in inputs]    # (clamp, steps, units, values)
    resolved_t = [(t, *t.resolve(net, steps)) for t in targets]    # (target, steps, units, values, mask)
    for w in range(steps // window):
        lo, hi = w * window, (w + 1) * window

        def pick(st):
            return [k for k, s in enumerate(st) if lo < s <= hi or (w == 0 and s == 0)]

        ins, tgts = [], []
        for c, st, units, vals in resolved_in:
            k = pick(st)
            if k:
                ins.append(Clamp(c.group, vals[k], steps=[st[i] - lo for i in k], units=units))
        for t, st, units, vals, mask in resolved_t:
            k = pick(st)
            if k:
                tgts.append(Target(t.group, vals[k], steps=[st[i] - lo for i in k], units=units, loss=t.loss,
                                   mask=None if mask is None else mask[k]))
        yield ins, tgts


def _last_state(run, group):
    """The state of ``group`` at the run's last step, (batch, units): what the next window starts from."""
    v = np.asarray(run.acts[run.emitted.layers[-1][group]])
    return v.copy() if v.ndim == 2 else run.states(group)[-1].copy()  # (a batch-free state: broadcast)


def train(net, data, steps, optimizer="adam", epochs=100, batch_size=32, lr=0.01, progress=True,
          truncate=None, seed=0, callback=None, stop=None, window=None):
    """Train ``net`` on ``data`` (a SequenceData) unrolled for ``steps`` steps.

    Parameters
    ----------
    optimizer : "adam" | "sgd" | callable(params) -> tinygraph optimizer
    truncate : int, optional
        Truncated BPTT: gradients flow back only this many steps (within each window).
    window : int, optional
        Train on consecutive windows of this many steps (``steps`` must be a multiple):
        each window is its own unrolled graph and its own update, and its final states
        are carried forward as the next window's (clamped) initial states.  Needs
        delays <= 1, since a window's layer 0 holds only one carried step.
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
    if window is not None:
        if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or not 1 <= window <= steps \
                or steps % window:
            raise DataError(f"train: window must be an int that divides steps={steps}, got {window!r}")
        if net.max_delay > 1:
            raise DataError(f"train: window training carries one step of state between windows, but net "
                            f"'{net.name}' has delays up to {net.max_delay}; train without window=")
    rng = np.random.default_rng(seed)
    ff = net.unroll(window or steps)
    hist = History()
    optimizers = {}  # one per emitted graph, all sharing one state (keyed by the shared weight arrays)

    def update(out):
        opt = optimizers.get(id(out.graph))
        if opt is None:
            opt = make_optimizer(optimizer, out.graph.params, lr)
            if optimizers:
                opt.state = next(iter(optimizers.values())).state
            optimizers[id(out.graph)] = opt
        opt.step(out.grads)
        hist.updates += 1

    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(data))
        losses = []
        for k in range(0, len(data), batch_size):
            ins, tgts = data.subset(order[k:k + batch_size])
            n = len(order[k:k + batch_size])
            if window is None:
                out = ff.run(ins, tgts, truncate=truncate, check_finite=True)
                update(out)
                losses.append(out.loss / n)
                continue
            carried, total = None, 0.0
            for w_ins, w_tgts in windows(net, steps, ins, tgts, window):
                if carried is not None:
                    clamped0 = {c.group for c in w_ins if 0 in np.atleast_1d(c.steps)}
                    w_ins = w_ins + [Clamp(g, s[None], steps=[0]) for g, s in carried.items() if g not in clamped0]
                out = ff.run(w_ins, w_tgts, truncate=truncate, check_finite=True)
                if out.grads is not None:
                    update(out)
                    total += out.loss
                carried = {g: _last_state(out, g) for g in net.groups}
            losses.append(total / n)
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
    return hist
