"""Graph: the container that owns nodes, names, parameters and constraints.

Nodes are appended in creation order and every node's inputs already exist when
it is made, so creation order is a topological order: running a graph never needs
recursion, and a 100,000-step chain is as easy as a 3-node one.
"""

import itertools
import types

import networkx as nx
import numpy as np

from .errors import GraphError, NodeTypeError, ShapeError, UnknownNodeError
from .node import Node
from .shapes import fmt

_SOURCE_OPS = ("input", "param", "const")


def _check_name(name):
    if not isinstance(name, str) or not name:
        raise NodeTypeError(f"node names must be non-empty strings, got {name!r}")
    return name


def _as_float_array(value, what):
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as exc:  # ragged nesting and the like
        raise NodeTypeError(f"{what}: cannot be read as a numeric array ({exc})") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise NodeTypeError(f"{what}: expected numbers, got an array of dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise NodeTypeError(f"{what}: complex values are not supported (dtype {arr.dtype}); pass real numbers")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    return arr


_NO_ATTRS = types.MappingProxyType({})

_param_writes = 0  # in-place writes of parameter values by tinygraph, process-wide (note_param_write)


def note_param_write():
    """Say that parameter values are being written in place.  tinygraph calls it for its own
    writes (optimizer steps, tying, load_params); call ``tg.note_param_write()`` after
    writing a weight array yourself (``net.weights["h->h"] *= 0.5``).  A run works on its own
    copy of the params, except params larger than 1 MiB and than its feeds: such a run reads
    the live arrays, and so answers (values, gradients, backward) only while no parameter has
    been written since it ran (process-wide: nets share weight arrays across graphs), and
    otherwise says so instead of answering with other numbers."""
    global _param_writes
    _param_writes += 1


def param_writes():
    return _param_writes


class Graph:
    """A symbolic graph built once and run many times with feeds.

    Parameters
    ----------
    name : str
        Shown in error messages and drawings.
    """

    def __init__(self, name="graph"):
        self.name = name
        self.nodes = []
        self._by_name = {}
        self._shapes = {}  # one tuple per distinct shape, shared by the nodes of that shape
        self._auto = itertools.count()
        self._plans = {}
        self._const_copies = {}  # id(an array given to const) -> (that array, the graph's copy of it)
        from .constraints import ConstraintSet
        self.constraints = ConstraintSet(self)

    # ------------------------------------------------------------ building
    def _add_node(self, op, inputs, shape, attrs, name=None, value=None, dtype=None):
        if name is None:
            name = f"{op}_{next(self._auto)}"
            while name in self._by_name:
                name = f"{op}_{next(self._auto)}"
        _check_name(name)
        if name in self._by_name:
            raise GraphError(
                f"graph '{self.name}' already has a node named '{name}' "
                f"({self._by_name[name].op}); pick another name")
        # deep graphs have millions of nodes: those without attributes share one empty,
        # read-only mapping, and nodes of one shape share its tuple
        shape = tuple(shape)
        shape = self._shapes.setdefault(shape, shape)
        node = Node(self, name, op, inputs, shape, attrs or _NO_ATTRS, len(self.nodes), value, dtype)
        self.nodes.append(node)
        self._by_name[name] = node
        return node

    def input(self, name, shape, dtype=np.float64):
        """A placeholder fed at run time; ``None`` in ``shape`` means any size on that axis."""
        try:
            dims = tuple(shape)
        except TypeError:
            raise ShapeError(f"input '{name}': shape must be a tuple of ints or None, got {shape!r}") from None
        if not all(d is None or (isinstance(d, (int, np.integer)) and not isinstance(d, bool)) for d in dims):
            raise ShapeError(f"input '{name}': shape must be a tuple of ints or None (any size), got {shape!r}")
        shape = tuple(None if d is None else int(d) for d in dims)
        if any(d is not None and d < 0 for d in shape):
            raise ShapeError(f"input '{name}': sizes must be >= 0, got {fmt(shape)}")
        try:
            dtype = np.dtype(dtype)
        except TypeError:
            raise NodeTypeError(f"input '{name}': dtype {dtype!r} is not a numpy dtype (e.g. np.float64, int)") from None
        return self._add_node("input", (), shape, {}, _check_name(name), dtype=dtype)

    def param(self, name, value):
        """A trainable parameter.  The node holds ``value`` itself (no copy when it is
        already a float array), so ``node.value`` is the live array an optimizer updates
        and several parameters may share one storage (tied copies)."""
        arr = _as_float_array(value, f"param '{name}'")
        return self._add_node("param", (), arr.shape, {}, _check_name(name), value=arr, dtype=arr.dtype)

    def const(self, value, name=None):
        """A constant (lifted automatically when a Python number or array meets a node): the
        graph's own read-only copy, so that writing the array given changes no run's numbers;
        an array met again, unchanged, shares its copy (one copy, and consts that share an
        array are what batching and summed steps recognise as one)."""
        given = _as_float_array(value, f"const '{name or 'const'}'")
        got = self._const_copies.get(id(given))
        if got is not None and got[0] is given and np.array_equal(got[1], given):
            arr = got[1]
        else:
            arr = np.array(given, copy=True)
            arr.flags.writeable = False
            if given.size > 1:  # (numbers are lifted anew each time: not worth keeping)
                self._const_copies[id(given)] = (given, arr)
        return self._add_node("const", (), arr.shape, {}, name, value=arr, dtype=arr.dtype)

    # ------------------------------------------------------------ lookup
    def __getitem__(self, name):
        try:
            return self._by_name[name]
        except KeyError:
            close = [n for n in self._by_name if name.lower() in n.lower()][:5] if isinstance(name, str) else []
            hint = f"; similar names: {close}" if close else ""
            raise UnknownNodeError(f"graph '{self.name}' has no node named {name!r}{hint}") from None

    def __contains__(self, item):
        if isinstance(item, Node):
            return item.graph is self
        return item in self._by_name

    def __len__(self):
        return len(self.nodes)

    def __repr__(self):
        return f"<Graph '{self.name}' with {len(self.nodes)} nodes>"

    @property
    def params(self):
        """Every parameter node, in creation order."""
        return [n for n in self.nodes if n.op == "param"]

    @property
    def inputs(self):
        return [n for n in self.nodes if n.op == "input"]

    def own(self, node, what="node"):
        """Return ``node`` (or the node named so) after checking it belongs to this graph."""
        if isinstance(node, str):
            return self[node]
        if not isinstance(node, Node):
            raise NodeTypeError(f"{what}: expected a tinygraph Node or a node name, got {type(node).__name__}")
        if node.graph is not self:
            if node.graph.name == self.name:  # (an unrolled net emits one graph per clamp and target structure)
                raise NodeTypeError(
                    f"{what}: node '{node.name}' belongs to another graph that is also named '{self.name}', "
                    f"not to the graph these results come from; take the node from that graph (for an "
                    f"unrolled net's run: out.layer(t), out.graph[name])")
            raise NodeTypeError(
                f"{what}: node '{node.name}' belongs to graph '{node.graph.name}', not to graph '{self.name}'")
        return node

    # ------------------------------------------------------------ running
    def forward(self, feeds=None, outputs=None, check_finite=False, batch=None):
        """Run the graph and return the Activations (the stored value of every node).

        Parameters
        ----------
        feeds : dict
            Input name or input node -> array.  Checked against the declared shapes
            before anything is computed.
        outputs : list of nodes, optional
            Compute only what these need (and only require their feeds).  Default: all nodes.
        check_finite : bool
            Stop at the first node whose value holds NaN or infinity, naming it.
        batch : bool, optional
            Run identical independent nodes as one batched numpy call (default: on,
            see ``tinygraph.plan``); False runs node by node.  Results are the same.

        Raises
        ------
        FeedError for a missing, unknown or malformed feed; NonFiniteError with
        ``check_finite``.
        """
        from .autodiff import run_forward
        return run_forward(self, feeds or {}, outputs, check_finite, batch)

    # ------------------------------------------------------------ ties and constraints
    def tie(self, *params, reduce="sum", align=False):
        """Tie parameters: they start equal and every update keeps them bitwise equal.

        ``reduce="sum"`` gives each member the sum of the members' raw gradients,
        ``"mean"`` their average.  ``align=True`` copies the first member's value
        into the others instead of requiring equal values.  Returns the TieGroup.
        """
        return self.constraints.tie(params, reduce=reduce, align=align)

    def constrain(self, coefficients, rhs=None, project_init=False):
        """Add the linear constraint ``sum_i C_i vec(W_i) = rhs`` (C_i of shape (m, W_i.size))."""
        return self.constraints.constrain(coefficients, rhs=rhs, project_init=project_init)

    def constrain_symmetric(self, W, project_init=False):
        """Keep a square parameter symmetric: W == W.T."""
        return self.constraints.constrain_symmetric(W, project_init=project_init)

    def constrain_transpose(self, W1, W2, project_init=False):
        """Keep W1 == W2.T (e.g. a tied autoencoder's encoder and decoder)."""
        return self.constraints.constrain_transpose(W1, W2, project_init=project_init)

    # ------------------------------------------------------------ export
    def to_networkx(self):
        """A networkx.DiGraph with one node per graph node (keyed by name) and one edge from
        each input to each node that reads it.

        Node attributes: ``op``, ``shape``, ``name``; edge attributes ``positions`` (every
        position of that input among the consumer's inputs: ``a * a`` reads ``a`` at 0 and 1)
        and ``position`` (the first of them).
        """
        G = nx.DiGraph(name=self.name)
        for n in self.nodes:
            G.add_node(n.name, op=n.op, shape=n.shape, name=n.name)
        for n in self.nodes:
            for pos, i in enumerate(n.inputs):
                if G.has_edge(i.name, n.name):
                    G.edges[i.name, n.name]["positions"].append(pos)
                else:
                    G.add_edge(i.name, n.name, position=pos, positions=[pos])
        return G
