"""Row buffers: one array per run whose rows are the values (or gradients) of many nodes,
e.g. the state h of every time step, written in place by the op that computes them.

Whoever needs those nodes stacked (a batch's operand, the products a tied weight's
gradient sums, the slopes of a tanh chain) then reads a view of consecutive rows instead
of copying T small arrays into a new one, and the run holds one array instead of T.
Every node still has its own value (row k is an ordinary array), a buffer belongs to one
run and each row is written once.  A row is trusted only by identity: a view is used when
the node's value *is* the registered row k, so anything computed some other way (another
shape or dtype, a fallback path) is simply copied as before.
"""

import operator

import numpy as np

_is = operator.is_


class RowIndex:
    """The row buffers of one run, each with ``{id(row view): k}``.  A backward sweep has
    its own index whose ``parent`` is the forward run's (it sees both)."""

    __slots__ = ("_buffers", "parent")

    def __init__(self, parent=None):
        self._buffers = []
        self.parent = parent

    def new(self, n, shape, dtype):
        """A buffer of n rows of ``shape``; returns its rows (views), registered here."""
        return self.adopt(np.empty((n,) + tuple(shape), dtype))

    def adopt(self, buf):
        """Register the rows of an existing array (e.g. inputs fed stacked); returns them."""
        rows = list(buf)
        if rows:
            self._buffers.append([buf, rows, None])  # (the index id -> k is made when first needed)
        return rows

    def find(self, a):
        """(buffer, rows, k) when ``a`` is row k of a registered buffer, else None.  Only a
        buffer whose rows have ``a``'s base can hold it; the first row needs no index."""
        base = getattr(a, "base", None)
        for entry in self._buffers:
            buf, rows, where = entry
            if base is not rows[0].base:
                continue
            if rows[0] is a:
                return buf, rows, 0
            if where is None:
                where = entry[2] = dict(zip(map(id, rows), range(len(rows))))
            k = where.get(id(a))
            if k is not None:
                return buf, rows, k
        return None if self.parent is None else self.parent.find(a)


def runs(arrs, index):
    """``arrs`` cut into maximal runs: ``(lo, hi, view)`` when arrs[lo:hi] are consecutive
    rows of one buffer (view: those rows, no copy), ``(lo, hi, None)`` for the rest."""
    out = []
    n = len(arrs)
    i = pending = 0
    while i < n:
        hit = index.find(arrs[i])
        if hit is None:
            i += 1
            continue
        buf, rows, k = hit
        m = min(n - i, len(rows) - k)
        mine, theirs = arrs[i:i + m], rows[k:k + m]
        if not all(map(_is, mine, theirs)):
            m = next(q for q, (a, r) in enumerate(zip(mine, theirs)) if a is not r)
        if pending < i:
            out.append((pending, i, None))
        out.append((i, i + m, buf[k:k + m]))
        i = pending = i + m
    if pending < n:
        out.append((pending, n, None))
    return out


def stacked_view(arrs, index):
    """``np.stack(arrs)`` as a view when they are consecutive rows of one buffer, else None."""
    if index is None or not arrs:
        return None
    hit = index.find(arrs[0])
    if hit is None:
        return None
    buf, rows, k = hit
    n = len(arrs)
    if k + n <= len(rows) and all(map(_is, arrs, rows[k:k + n])):
        return buf[k:k + n]
    return None
