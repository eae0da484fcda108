"""Compiled execution: forward runs, stored activities, and reverse-mode gradients.

A graph is compiled once per set of requested outputs into a flat plan (the
needed nodes in topological order, with their input slots); later runs reuse it.
The backward pass walks the same plan in reverse, accumulating dE/d(node) for
every node the loss depends on (parameters, inputs and intermediates alike).
"""

import numpy as np

from . import ops as _ops
from .errors import FeedError, GraphError, NonFiniteError, ShapeError, UnknownNodeError
from .node import Node
from .shapes import fmt


class Plan:
    """The nodes one run computes, in topological order, with their input slots."""

    __slots__ = ("graph", "order", "steps", "inputs", "size")

    def __init__(self, graph, needed):
        self.graph = graph
        self.size = len(graph.nodes)
        self.order = [graph.nodes[i] for i in needed]
        for node in self.order:  # creation order is topological; check it instead of trusting it
            for inp in node.inputs:
                if inp.index >= node.index:
                    raise GraphError(f"node '{node.name}' uses '{inp.name}', created after it")
        self.inputs = [n for n in self.order if n.op == "input"]
        self.steps = [(n.index, _ops.get(n.op), tuple(i.index for i in n.inputs), n.attrs)
                      if n.op not in ("input", "param", "const") else (n.index, None, (), None)
                      for n in self.order]


def ancestors(graph, roots):
    """Sorted indices of ``roots`` and everything they depend on (one reverse sweep, no recursion)."""
    if roots is None:
        return list(range(len(graph.nodes)))
    mark = bytearray(len(graph.nodes))
    for r in roots:
        mark[r.index] = 1
    top = max(r.index for r in roots) if roots else -1
    nodes = graph.nodes
    for i in range(top, -1, -1):
        if mark[i]:
            for inp in nodes[i].inputs:
                mark[inp.index] = 1
    return [i for i in range(top + 1) if mark[i]]


def compile_plan(graph, outputs=None):
    roots = None if outputs is None else tuple(graph.own(o, "outputs") for o in outputs)
    key = (len(graph.nodes), None if roots is None else tuple(sorted(r.index for r in roots)))
    plan = graph._plans.get(key)
    if plan is None:
        if len(graph._plans) > 32:
            graph._plans.clear()
        plan = graph._plans[key] = Plan(graph, ancestors(graph, roots))
    return plan


def _resolve_feeds(graph, plan, feeds):
    if not isinstance(feeds, dict):
        raise FeedError(f"feeds must be a dict of input name (or node) -> array, got {type(feeds).__name__}")
    resolved = {}
    for key, value in feeds.items():
        if isinstance(key, Node):
            node = graph.own(key, "feeds")
        elif isinstance(key, str):
            if key not in graph._by_name:
                names = [n.name for n in graph.inputs]
                raise FeedError(f"feed '{key}': graph '{graph.name}' has no input of that name (inputs: {names})")
            node = graph[key]
        else:
            raise FeedError(f"feed keys must be input names or input nodes, got {type(key).__name__}")
        if node.op != "input":
            raise FeedError(f"feed '{node.name}': it is a {node.op} node, only input nodes can be fed")
        resolved[node.index] = _check_feed(node, value)
    for node in plan.inputs:
        if node.index not in resolved:
            raise FeedError(
                f"missing feed for input '{node.name}' of shape {fmt(node.shape)} in graph '{graph.name}'; "
                f"pass it in feeds, e.g. {{'{node.name}': array}}")
    return resolved


def _check_feed(node, value):
    try:
        arr = np.asarray(value)
    except Exception as exc:  # ragged lists and the like
        raise FeedError(f"feed '{node.name}': cannot be read as an array ({exc})") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise FeedError(f"feed '{node.name}': expected numbers, got dtype {arr.dtype}")
    if np.issubdtype(node.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.integer):
            if not np.all(np.equal(np.mod(arr, 1), 0)):
                raise FeedError(f"feed '{node.name}': input is declared integer but got non-integer values")
            arr = arr.astype(np.int64)
    elif not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(node.dtype)
    if arr.ndim != len(node.shape):
        raise FeedError(
            f"feed '{node.name}': expected rank {len(node.shape)} with shape {fmt(node.shape)}, "
            f"got rank {arr.ndim} with shape {arr.shape}")
    for axis, (want, got) in enumerate(zip(node.shape, arr.shape)):
        if want is not None and want != got:
            raise FeedError(
                f"feed '{node.name}': expected shape {fmt(node.shape)}, got {arr.shape} "
                f"(axis {axis} must be {want})")
    return arr


def _not_finite(value):
    return isinstance(value, np.ndarray) and value.dtype.kind == "f" and not np.all(np.isfinite(value))


def _describe_inputs(node, values):
    parts = []
    for i in node.inputs:
        v = values[i.index]
        parts.append(f"'{i.name}' ({i.op}, shape {np.shape(v)}, finite={not _not_finite(np.asarray(v))})")
    return ", ".join(parts)


def run_forward(graph, feeds, outputs=None, check_finite=False):
    plan = compile_plan(graph, outputs)
    fed = _resolve_feeds(graph, plan, feeds)
    values = [None] * plan.size
    nodes = graph.nodes
    for index, op, in_idx, attrs in plan.steps:
        if op is None:
            node = nodes[index]
            values[index] = fed[index] if node.op == "input" else node.value
        else:
            try:
                values[index] = op.forward(*[values[j] for j in in_idx], **attrs)
            except (ValueError, IndexError) as exc:
                node = nodes[index]
                shapes = ", ".join(f"'{i.name}' {np.shape(values[i.index])}" for i in node.inputs)
                raise ShapeError(f"{node.op} '{node.name}' failed at run time on inputs {shapes}: {exc}") from None
        if check_finite and _not_finite(values[index]):
            node = nodes[index]
            raise NonFiniteError(
                f"forward: node '{node.name}' ({node.op}) is the first to produce NaN or infinity; "
                f"its inputs: {_describe_inputs(node, values) or 'none (a source node)'}")
    return Activations(graph, plan, values)


class Activations:
    """The stored value (activity) of every node computed by one forward run."""

    def __init__(self, graph, plan, values):
        self.graph = graph
        self.plan = plan
        self._values = values

    def _node(self, key):
        node = self.graph.own(key, "activations")
        if node.index >= len(self._values) or self._values[node.index] is None:
            raise UnknownNodeError(
                f"node '{node.name}' was not computed in this run (it was built after the run, "
                f"or is not needed by the requested outputs)")
        return node

    def __getitem__(self, key):
        return self._values[self._node(key).index]

    def __contains__(self, key):
        try:
            self._node(key)
            return True
        except GraphError:
            return False

    def items(self):
        return [(n, self._values[n.index]) for n in self.plan.order]

    def backward(self, loss, seed=None, check_finite=False):
        """Reverse mode from ``loss``: dloss/d(node) for every node ``loss`` depends on.

        A non-scalar ``loss`` needs an explicit ``seed`` of its shape (dE/d(loss)).

        Raises
        ------
        GraphError if ``loss`` is not scalar and no seed is given, or the seed's shape is wrong;
        NonFiniteError with ``check_finite`` at the first non-finite gradient.
        """
        loss = self._node(loss)
        out = np.asarray(self._values[loss.index])
        if seed is None:
            if out.size != 1:
                raise GraphError(
                    f"backward from '{loss.name}' of shape {out.shape}: it is not a scalar; reduce it "
                    f"(tg.sum) or pass seed= an array of shape {out.shape} holding dE/d('{loss.name}')")
            seed = np.ones_like(out, dtype=out.dtype if out.dtype.kind == "f" else np.float64)
        else:
            seed = np.asarray(seed, dtype=np.float64 if out.dtype.kind != "f" else out.dtype)
            if seed.shape != out.shape:
                raise ShapeError(f"backward: seed shape {seed.shape} does not match '{loss.name}' shape {out.shape}")
        return Gradients(self, loss, backward_pass(self, loss, seed, check_finite))


def backward_pass(acts, loss, seed, check_finite=False):
    """The reverse sweep; returns a list of gradients indexed by node (None where unreached)."""
    values = acts._values
    nodes = acts.graph.nodes
    grads = [None] * len(values)
    grads[loss.index] = seed
    steps = acts.plan.steps
    # plan.steps is topological; walk it backwards from the loss
    for index, op, in_idx, attrs in reversed(steps):
        if index > loss.index:
            continue
        g = grads[index]
        if g is None or op is None:
            continue
        if check_finite and _not_finite(g):
            node = nodes[index]
            raise NonFiniteError(f"backward: the gradient at node '{node.name}' ({node.op}) is the first "
                                 f"to hold NaN or infinity")
        ins = [values[j] for j in in_idx]
        out = values[index]
        for pos, j in enumerate(in_idx):
            gi = op.vjp(pos, g, out, ins, attrs)
            if gi is None:
                continue
            gi = _ops.unbroadcast(gi, np.shape(values[j]))
            prev = grads[j]
            grads[j] = gi if prev is None else prev + gi  # out of place: gi may be shared with g
    return grads


class Gradients:
    """dE/d(node) for every node; zeros for nodes the loss does not depend on.

    ``grads[W]`` is the raw gradient of one parameter, as if it were unconstrained;
    ``grads.constrained()`` applies the graph's ties and linear constraints.
    """

    def __init__(self, acts, loss, grads):
        self.acts = acts
        self.graph = acts.graph
        self.loss = loss
        self._grads = grads

    def __getitem__(self, key):
        node = self.graph.own(key, "gradients")
        g = self._grads[node.index] if node.index < len(self._grads) else None
        if g is not None:
            return g
        if node.index < len(self.acts._values) and self.acts._values[node.index] is not None:
            return np.zeros(np.shape(self.acts._values[node.index]))
        if node.op == "param":
            return np.zeros_like(node.value)
        raise UnknownNodeError(f"node '{node.name}' was not computed in the forward run, so it has no gradient")

    def reached(self, key):
        """True when the loss depends on this node."""
        node = self.graph.own(key, "gradients")
        return node.index < len(self._grads) and self._grads[node.index] is not None

    def params(self):
        """{param node: raw gradient} for every parameter of the graph."""
        return {p: self[p] for p in self.graph.params}

    def constrained(self):
        """{param node: gradient} after the ties and linear constraints are applied."""
        return self.graph.constraints.constrained_grads(self)
