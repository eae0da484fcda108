"""How data meets a recurrent net: Clamp (inputs) and Target (desired states).

Steps are numbered 0..T, layer 0 holding the initial states.  ``steps`` may be
"all" (1..T), "final" (T), "initial" (0), an int, a list, a range, or
("last", k) for the last k steps (attractor training).  Values have shape
(n_steps, batch, n_units); a single step also accepts (batch, n_units).
"""

import math

import numpy as np

from .net import NetError, RecurrentNet


class DataError(NetError):
    """Clamp or target data that does not fit the net or the number of steps."""


def resolve_steps(steps, T, where):
    """The list of steps a spec names (in the order given), checked against 0..T."""
    if isinstance(steps, str):
        if steps == "all":
            return list(range(1, T + 1))
        if steps == "final":
            return [T]
        if steps == "initial":
            return [0]
        raise DataError(f"{where}: steps must be 'all', 'final', 'initial', an int, a list or a range, got {steps!r}")
    if isinstance(steps, tuple) and len(steps) == 2 and steps[0] == "last":
        k = steps[1]
        if not isinstance(k, (int, np.integer)) or not 1 <= k <= T:
            raise DataError(f"{where}: ('last', k) needs 1 <= k <= T={T}, got k={k!r}")
        return list(range(T - k + 1, T + 1))
    if isinstance(steps, (int, np.integer)) and not isinstance(steps, bool):
        steps = [steps]
    try:
        items = list(steps)
    except TypeError:
        items = None
    if items is None or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in items):
        raise DataError(f"{where}: steps must be 'all', 'final', 'initial', an int, a list or a range of ints, "
                        f"got {steps!r}")
    out = [int(s) for s in items]
    bad = [s for s in out if not 0 <= s <= T]
    if bad:
        raise DataError(f"{where}: steps {bad} are outside 0..T (T={T}); layer 0 holds the initial states")
    if len(set(out)) != len(out):
        raise DataError(f"{where}: a step appears twice in {out}")
    if not out:
        raise DataError(f"{where}: no steps selected")
    return out


def _in_time_order(steps, *arrays):
    """Sort steps given out of order, and the values (first axis) with them."""
    if sorted(steps) == steps:  # the usual case: already in order (steps are distinct)
        return (steps,) + arrays
    order = np.argsort(steps, kind="stable")
    return ([steps[i] for i in order],) + tuple(None if a is None else a[order] for a in arrays)


def resolve_units(units, size, where):
    if units is None:
        return None
    if isinstance(units, slice):
        units = range(size)[units]
    try:
        items = list(units)
    except TypeError:
        items = None
    if items is None or not all(isinstance(u, (int, np.integer)) and not isinstance(u, (bool, np.bool_))
                                for u in items):
        raise DataError(f"{where}: units must be a list of int unit indices, got {units!r}")
    out = np.asarray([int(u) for u in items], dtype=np.int64)
    if out.size == 0:
        raise DataError(f"{where}: units selects no unit")
    bad = [int(u) for u in out if not 0 <= u < size]
    if bad:
        raise DataError(f"{where}: units {bad} are outside 0..{size - 1}")
    if len(set(out.tolist())) != out.size:
        raise DataError(f"{where}: a unit appears twice in {out.tolist()}")
    if out.size == size and np.array_equal(out, np.arange(size)):
        return None  # every unit, in order
    return out


def _values(values, n_steps, n_units, where, integer=False):
    try:
        arr = np.asarray(values)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: values must be numeric arrays ({exc})") from None
    if arr.dtype.kind == "O":  # (numbers held as objects, e.g. a mixed table's .to_numpy())
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            raise DataError(f"{where}: values must be numeric arrays of real numbers, got objects that are "
                            f"not numbers") from None
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{where}: values must be numeric arrays of real numbers, got dtype {arr.dtype}")
    if integer:
        if arr.dtype.kind == "f" and arr.size and not np.all(np.floor(arr) == arr):
            raise DataError(f"{where}: class labels must be whole numbers, got {arr.ravel()[:8]} (one-hot rows: "
                            f"give shape (steps, batch, classes))")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind != "f":
        arr = arr.astype(np.float64)  # a float dtype the user chose (float32) is kept
    last = () if integer else (n_units,)
    want = (n_steps, "batch") + last
    if arr.ndim == len(want) - 1 and n_steps == 1:
        arr = arr[None]
    if arr.ndim != len(want) or arr.shape[0] != n_steps or arr.shape[2:] != last:
        raise DataError(f"{where}: values must have shape (steps={n_steps}, batch{', units=' + str(n_units) if last else ''}), "
                        f"got {arr.shape}")
    if integer:
        return arr
    if not _all_finite(arr):
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise DataError(f"{where}: values hold NaN or infinity (first at index {tuple(int(i) for i in bad)})")
    return arr


def _all_finite(arr):
    """Every value finite?  Small arrays: np.isfinite (one call, a small temporary).  Large
    ones without a temporary: if not contiguous, the smallest and the largest value
    (np.minimum and np.maximum carry NaN); if contiguous, the sum of squares, one BLAS pass
    (NaN and infinity carry into it; when it is not finite the squares may just have
    overflowed, so the values are then looked at one by one)."""
    if arr.size < 4096:
        return bool(np.logical_and.reduce(np.isfinite(arr), axis=None))
    if not arr.flags.c_contiguous:  # (np.isfinite on the extremes: a long double may exceed a float)
        return bool(np.isfinite(np.minimum.reduce(arr, axis=None)) and np.isfinite(np.maximum.reduce(arr, axis=None)))
    flat = arr.reshape(-1)
    with np.errstate(over="ignore", invalid="ignore"):
        if math.isfinite(np.dot(flat, flat)):
            return True
    return bool(np.all(np.isfinite(arr)))


class Clamp:
    """Give some units fixed states: the initial state (steps=[0]) of all or some units,
    or the state of some units at every step (steps="all", the usual sequence input).

    Clamped units take the given value instead of their computed one and pass no
    gradient to their total input.
    """

    def __init__(self, group, values, steps="all", units=None):
        self.group = group
        self.values = values
        self.steps = steps
        self.units = units

    def resolve(self, net, T):
        where = f"Clamp('{self.group}')"
        g = net.group(self.group, where)
        steps = resolve_steps(self.steps, T, where)
        units = resolve_units(self.units, g.size, where)
        n = g.size if units is None else len(units)
        steps, values = _in_time_order(steps, _values(self.values, len(steps), n, where))
        return steps, units, values

    def __repr__(self):
        return f"Clamp({self.group!r}, steps={self.steps!r}, units={self.units!r})"


LOSSES = ("squared", "cross_entropy")


class Target:
    """Desired states of some units at some steps.

    loss="squared": half the squared error (optionally weighted by ``mask``, same
    shape as the values: 0 ignores an entry).  loss="cross_entropy": the group must
    be a softmax group; values are class indices (steps, batch) or one-hot rows.
    """

    def __init__(self, group, values, steps="all", units=None, loss="squared", mask=None):
        self.group = group
        self.values = values
        self.steps = steps
        self.units = units
        self.loss = loss
        self.mask = mask

    def resolve(self, net, T):
        where = f"Target('{self.group}')"
        g = net.group(self.group, where)
        if self.loss not in LOSSES:
            raise DataError(f"{where}: loss must be one of {LOSSES}, got {self.loss!r}")
        steps = resolve_steps(self.steps, T, where)
        if 0 in steps:
            raise DataError(f"{where}: step 0 holds the initial states; targets apply to steps 1..T")
        units = resolve_units(self.units, g.size, where)
        n = g.size if units is None else len(units)
        mask = None
        if self.loss == "cross_entropy":
            if g.activation != "softmax":
                raise DataError(f"{where}: loss='cross_entropy' needs a softmax group; '{g.name}' is "
                                f"{g.activation} (use loss='squared' or activation='softmax')")
            if units is not None or self.mask is not None:
                raise DataError(f"{where}: loss='cross_entropy' takes the whole group and no mask")
            arr = np.asarray(self.values)
            onehot = arr.ndim == 3 or (arr.ndim == 2 and len(steps) == 1 and arr.shape[-1] == n and
                                       np.issubdtype(arr.dtype, np.floating))
            values = _values(arr, len(steps), n, where, integer=not onehot)
            if not onehot and values.size and (values.min() < 0 or values.max() >= n):
                raise DataError(f"{where}: class labels must lie in 0..{n - 1}")
            if onehot and values.size:
                sums = values.sum(axis=-1)
                if values.min() < 0 or not np.all(np.isclose(sums, 1) | (sums == 0)):
                    raise DataError(f"{where}: one-hot rows must be >= 0 and sum to 1 (class probabilities; a row of "
                                    f"zeros counts nothing); class labels go as ints of shape (steps, batch)")
        else:
            values = _values(self.values, len(steps), n, where)
            if self.mask is not None:
                mask = _values(self.mask, len(steps), n, where + " mask")
                if mask.shape != values.shape:
                    raise DataError(f"{where}: mask shape {mask.shape} differs from values shape {values.shape}")
                if mask.size and mask.min() < 0:
                    raise DataError(f"{where}: mask entries weigh the errors and must be >= 0 (0 ignores an entry)")
        steps, values, mask = _in_time_order(steps, values, mask)
        return steps, units, values, mask

    def __repr__(self):
        return f"Target({self.group!r}, steps={self.steps!r}, units={self.units!r}, loss={self.loss!r})"


def resolve_all(net, T, inputs, targets, check_overlaps=True):
    """Check every clamp and target against the net and T; return plain resolved records.

    Returns (clamps, targets, batch) where clamps is a list of (group, steps, units, values)
    and targets a list of (group, steps, units, values, mask, loss).
    """
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 1:
        raise DataError(f"steps must be an int >= 1, got {T!r}")
    if not isinstance(net, RecurrentNet):
        raise DataError(f"the first argument must be a net (rnn.RecurrentNet), got {type(net).__name__} {net!r}")
    if isinstance(inputs, (Clamp, Target)) or isinstance(targets, (Clamp, Target)):
        raise DataError("inputs and targets are lists: write [rnn.Clamp(...)] and [rnn.Target(...)]")
    try:
        inputs = list(inputs or [])
        targets = list(targets or [])
    except TypeError:
        raise DataError(f"inputs and targets must be lists of rnn.Clamp / rnn.Target, got "
                        f"{type(inputs).__name__} and {type(targets).__name__}") from None
    for x in inputs:
        if not isinstance(x, Clamp):
            raise DataError(f"inputs must be rnn.Clamp objects, got {type(x).__name__}")
    for x in targets:
        if not isinstance(x, Target):
            raise DataError(f"targets must be rnn.Target objects, got {type(x).__name__}")
    clamps = [(c.group,) + c.resolve(net, T) for c in inputs]
    tgts = [(t.group,) + t.resolve(net, T) + (t.loss,) for t in targets]
    batches = {int(r[3].shape[1]) for r in clamps} | {int(r[3].shape[1]) for r in tgts}
    if len(batches) > 1:
        raise DataError(f"clamps and targets disagree on the batch size: {sorted(batches)}")
    if batches == {0}:
        raise DataError("clamps and targets hold no example (batch size 0)")
    if check_overlaps:
        refuse_overlaps(net, clamps, tgts)
    return clamps, tgts, (batches.pop() if batches else None)


def check_truncate(truncate, T):
    """``truncate`` as run and bptt take it: None (no cut) or an int in 1..T (T: no cut either)."""
    if truncate is None:
        return None
    if isinstance(truncate, bool) or not isinstance(truncate, (int, np.integer)) or not 1 <= truncate <= T:
        raise DataError(f"truncate must be an int in 1..T={T}, got {truncate!r}")
    return None if truncate == T else int(truncate)


def refuse_overlaps(net, clamps, tgts):
    """A unit clamped twice at one step, or clamped and targeted at one step, is refused.
    It depends only on where clamps and targets sit, not on their values, so a caller that
    runs one structure many times (Unrolled.run) checks it once per structure."""
    clamped = {}
    for g, steps, units, _ in clamps:
        size = net.groups[g].size
        us = set(range(size)) if units is None else set(units.tolist())
        for t in steps:
            seen = clamped.setdefault((g, t), set())
            if seen & us:
                raise DataError(f"Clamp('{g}'): units {sorted(seen & us)} are clamped twice at step {t}")
            seen |= us
    for g, steps, units, *_ in tgts:
        size = net.groups[g].size
        us = set(range(size)) if units is None else set(units.tolist())
        for t in steps:
            both = clamped.get((g, t), set()) & us
            if both:
                raise DataError(f"Target('{g}'): units {sorted(both)} are also clamped at step {t}; a clamped "
                                f"unit cannot be wrong, so a target there teaches nothing: drop one of the two")
