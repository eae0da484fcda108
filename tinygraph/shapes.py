"""Static shape inference at build time.

A static shape is a tuple whose entries are ints or ``None`` (any size, e.g. the
batch axis).  Inference runs when a node is built, so a mismatch is reported
there, naming the nodes, instead of deep inside numpy at run time.
"""

import numpy as np


class ShapeMismatch(Exception):
    """Raised by an inference rule; the graph turns it into a ShapeError naming the nodes."""


def fmt(shape):
    """Show a static shape the way users write it: (None, 3)."""
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def broadcast(*shapes):
    """numpy broadcasting on static shapes; ``None`` matches any size."""
    ndim = max(len(s) for s in shapes)
    padded = [(1,) * (ndim - len(s)) + tuple(s) for s in shapes]
    out = []
    for axis, dims in enumerate(zip(*padded)):
        known = {d for d in dims if d is not None and d != 1}
        if len(known) > 1:
            raise ShapeMismatch(
                f"shapes {', '.join(fmt(s) for s in shapes)} do not broadcast: axis {axis - ndim} "
                f"has sizes {sorted(known)}")
        if known:
            out.append(known.pop())
        elif any(d is None for d in dims):
            out.append(None)
        else:
            out.append(1)
    return tuple(out)


def _same(a, b):
    return a is None or b is None or a == b


def matmul(a, b):
    """Shape of ``a @ b`` with numpy's rules (1-D operands, batched leading axes)."""
    if len(a) == 0 or len(b) == 0:
        raise ShapeMismatch(f"matmul needs at least 1-D operands, got {fmt(a)} and {fmt(b)}")
    a2 = (1,) + tuple(a) if len(a) == 1 else tuple(a)
    b2 = tuple(b) + (1,) if len(b) == 1 else tuple(b)
    if not _same(a2[-1], b2[-2]):
        raise ShapeMismatch(
            f"matmul {fmt(a)} @ {fmt(b)}: the inner sizes differ ({a2[-1]} vs {b2[-2]}); "
            f"the last axis of the left operand must equal the second-to-last of the right "
            f"(transpose one of them?)")
    batch = broadcast(a2[:-2], b2[:-2]) if (len(a2) > 2 or len(b2) > 2) else ()
    out = batch + (a2[-2], b2[-1])
    if len(b) == 1:
        out = out[:-1]
    if len(a) == 1:
        out = out[:-2] + out[-1:] if len(b) > 1 else out[:-1]
    return out


def normalize_axis(axis, ndim):
    """Axis (int, tuple or None) as a sorted tuple of non-negative ints."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = []
    for ax in axes:
        if not -ndim <= ax < ndim:
            raise ShapeMismatch(f"axis {ax} is out of range for a {ndim}-D operand")
        out.append(int(ax) % ndim)
    if len(set(out)) != len(out):
        raise ShapeMismatch(f"axis {axis} repeats an axis")
    return tuple(sorted(out))


def reduce(shape, axis, keepdims):
    axes = normalize_axis(axis, len(shape))
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def reshape(shape, new):
    new = tuple(int(d) for d in new)
    if sum(d == -1 for d in new) > 1:
        raise ShapeMismatch(f"reshape to {new}: at most one axis may be -1")
    if any(d < -1 for d in new):
        raise ShapeMismatch(f"reshape to {new}: sizes must be >= 0 or -1")
    if None in shape:
        known_in = int(np.prod([d for d in shape if d is not None], dtype=np.int64))
        if -1 not in new and known_in and int(np.prod(new, dtype=np.int64)) % known_in:
            raise ShapeMismatch(f"cannot reshape {fmt(shape)} (a multiple of {known_in} entries) to {new} "
                                f"({int(np.prod(new, dtype=np.int64))} entries)")
        return tuple(None if d == -1 else d for d in new)
    total = int(np.prod(shape, dtype=np.int64))
    known = int(np.prod([d for d in new if d != -1], dtype=np.int64))
    if -1 in new:
        if known == 0 or total % known:
            raise ShapeMismatch(f"cannot reshape {fmt(shape)} ({total} entries) to {new}")
        return tuple(total // known if d == -1 else d for d in new)
    if known != total:
        raise ShapeMismatch(f"cannot reshape {fmt(shape)} ({total} entries) to {new} ({known} entries)")
    return new


def transpose(shape, axes):
    if axes is None:
        return tuple(reversed(shape))
    axes = [a + len(shape) if a < 0 else a for a in axes]
    if sorted(axes) != list(range(len(shape))):
        raise ShapeMismatch(f"transpose axes {tuple(axes)} are not a permutation of {len(shape)} axes")
    return tuple(shape[a] for a in axes)


def concat(shapes, axis):
    nd = len(shapes[0])
    if any(len(s) != nd for s in shapes):
        raise ShapeMismatch(f"concat needs operands of equal rank, got {', '.join(fmt(s) for s in shapes)}")
    (ax,) = normalize_axis(axis, nd)
    out = []
    for i in range(nd):
        dims = [s[i] for s in shapes]
        if i == ax:
            out.append(None if None in dims else sum(dims))
        else:
            known = {d for d in dims if d is not None}
            if len(known) > 1:
                raise ShapeMismatch(
                    f"concat along axis {axis}: axis {i} differs ({', '.join(fmt(s) for s in shapes)})")
            out.append(known.pop() if known else None)
    return tuple(out)


_SENTINELS = (10007, 10009, 2, 1, 0)


_LARGEST_SENTINEL = 1 << 40  # (an int index past this on an unknown axis: its size is refused)


def _largest_int(idx):
    """The largest magnitude of an int index or integer-array entry in ``idx`` (slices clip,
    so the fixed sentinels decide them), at most _LARGEST_SENTINEL."""
    top = 0
    for i in idx if isinstance(idx, tuple) else (idx,):
        if isinstance(i, np.ndarray) and i.size and i.dtype.kind in "iu":
            top = max(top, int(np.abs(i).max()))
        elif isinstance(i, (int, np.integer)) and not isinstance(i, (bool, np.bool_)):
            top = max(top, abs(int(i)))
    return min(top, _LARGEST_SENTINEL)


def index(shape, idx):
    """Shape of ``x[idx]``: run the index on zero-stride views of sentinel sizes.

    Axes whose result size depends on the unknown (None) sizes come out different
    between the runs and become None again (the small sentinel catches x[:5] on a
    None axis, which is min(5, size)).  No data is allocated for x.
    """
    results = []
    big = max(_SENTINELS[0], _largest_int(idx) + 2)  # an int index past the first sentinel on a None axis
    for k, s in enumerate((big, big + 2) + _SENTINELS[2:]):
        concrete = tuple(s if d is None else d for d in shape)
        view = np.broadcast_to(np.empty((), dtype=bool), concrete)
        try:
            results.append(view[idx].shape)
        except IndexError as exc:
            if k >= 2 and None in shape:
                continue  # an index that needs a bigger unknown axis; the large sentinels decide
            raise ShapeMismatch(f"index {idx!r} does not fit shape {fmt(shape)}: {exc}") from None
    return tuple(dims[0] if len(set(dims)) == 1 else None for dims in zip(*results))
