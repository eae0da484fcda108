"""A node of a symbolic graph: an op applied to input nodes, with a static shape.

Nodes hash by identity (never by value) and keep their inputs in a tuple, so
``a - b`` and ``b - a`` differ.  Python operators build new nodes in the same graph.
"""

import numpy as np

from .errors import NodeTypeError
from .shapes import fmt


class Node:
    """One value in a graph.  Build nodes with Graph.input/param/const and the tg ops."""

    __slots__ = ("graph", "name", "op", "inputs", "shape", "attrs", "index", "value", "dtype", "__weakref__")
    __array_ufunc__ = None  # make `numpy_array * node` call Node.__rmul__ instead of numpy

    def __init__(self, graph, name, op, inputs, shape, attrs, index, value=None, dtype=None):
        self.graph = graph
        self.name = name
        self.op = op
        self.inputs = tuple(inputs)
        self.shape = tuple(shape)
        self.attrs = attrs
        self.index = index  # position in the graph's creation order (a topological order)
        self.value = value  # the live array of a param or const
        self.dtype = dtype

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def T(self):
        return ops.transpose(self)

    def __repr__(self):
        return f"<Node '{self.name}' op={self.op} shape={fmt(self.shape)}>"

    def __add__(self, other):
        return ops.add(self, other)

    def __radd__(self, other):
        return ops.add(other, self)

    def __sub__(self, other):
        return ops.sub(self, other)

    def __rsub__(self, other):
        return ops.sub(other, self)

    def __mul__(self, other):
        return ops.mul(self, other)

    def __rmul__(self, other):
        return ops.mul(other, self)

    def __truediv__(self, other):
        return ops.div(self, other)

    def __rtruediv__(self, other):
        return ops.div(other, self)

    def __neg__(self):
        return ops.neg(self)

    def __pos__(self):
        return self

    def __pow__(self, exponent):
        return ops.pow(self, exponent)

    def __rpow__(self, base):
        """``base ** node`` for a positive number base: exp(node * log(base))."""
        if (isinstance(base, (bool, np.bool_)) or not isinstance(base, (int, float, np.number))
                or np.iscomplexobj(base) or not base > 0):
            raise NodeTypeError(f"{base!r} ** node '{self.name}': the base must be a positive number "
                                f"(write tg.exp(e * tg.log(x)) for a node base)")
        return ops.exp(self * float(np.log(base)))

    def __matmul__(self, other):
        return ops.matmul(self, other)

    def __rmatmul__(self, other):
        return ops.matmul(other, self)

    def __getitem__(self, index):
        return ops.getitem(self, index)

    def __bool__(self):
        raise NodeTypeError(f"node '{self.name}' has no truth value at build time; run the graph and test the array")

    def __iter__(self):
        raise NodeTypeError(f"node '{self.name}' is not iterable; index it with node[i]")

    def __len__(self):
        if not self.shape or self.shape[0] is None:
            raise NodeTypeError(f"node '{self.name}' of shape {fmt(self.shape)} has no static length")
        return self.shape[0]


from . import ops  # noqa: E402  (ops imports Node; the operators above look it up at call time)

__all__ = ["Node", "np"]
