"""Optimizers that keep every tie and linear constraint.

Each step works on *variables* (a tie group counts once): the raw gradients are
reduced (sum or mean over the tie), weight decay is added, the result is
projected onto the constraints' null space, the optimizer turns it into a step,
and the step is projected again (Adam's per-coordinate scaling would otherwise
leave the constraint set).  One step is applied per variable, so T tied copies of
a weight sharing one storage move once, not T times, and copies with separate
storage receive a bitwise copy.  Finally constrained values are re-projected to
wipe out rounding drift.
"""

import math
from operator import attrgetter, is_

import numpy as np

from .autodiff import Gradients
from .constraints import reduce_member_grads
from .errors import GraphError, NodeTypeError
from .node import Node


_value = attrgetter("value")


def _squared_norm(g):
    return float(np.vdot(g, g))


class Optimizer:
    """Base class: subclasses implement ``_delta(state, grad)`` -> the step to subtract."""

    def __init__(self, params, lr, weight_decay=0.0, clip_norm=None):
        name = type(self).__name__
        if isinstance(params, Node):
            raise NodeTypeError(f"{name}: pass a list of params (e.g. [{params.name!r} node] or graph.params), "
                                f"not the single node '{params.name}'")
        try:
            params = list(params)
        except TypeError:
            raise NodeTypeError(f"{name}: params must be a list of param nodes, got {type(params).__name__}") from None
        for what, v in (("lr", lr), ("weight_decay", weight_decay)):
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not np.isfinite(v):
                raise GraphError(f"{name}: {what} must be a finite number, got {v!r}")
        if clip_norm is not None and (isinstance(clip_norm, bool) or not isinstance(clip_norm, (int, float, np.number))):
            raise GraphError(f"{name}: clip_norm must be a number or None, got {clip_norm!r}")
        if weight_decay < 0:
            raise GraphError(f"{name}: weight_decay must be >= 0, got {weight_decay}")
        if not params:
            raise GraphError(f"{name}: no parameters to optimize")
        for p in params:
            if not isinstance(p, Node) or p.op != "param":
                what = p.name if isinstance(p, Node) else type(p).__name__
                raise NodeTypeError(f"{name}: '{what}' is not a param node")
        graphs = {id(p.graph): p.graph for p in params}
        if len(graphs) != 1:
            raise GraphError(f"{name}: params come from {len(graphs)} graphs; use one optimizer per graph")
        if not lr > 0:
            raise GraphError(f"{name}: lr must be > 0, got {lr}")
        if clip_norm is not None and not clip_norm > 0:
            raise GraphError(f"{name}: clip_norm must be > 0 or None, got {clip_norm}")
        self.params = params
        self.graph = params[0].graph
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.clip_norm = clip_norm
        self.state = {}  # id(storage array) -> per-variable state
        self._variables = (None, None)  # (constraints version, variables): recomputed only on change
        self._firsts = self._arrays = ()  # a member of each variable, and the array it held then
        self.steps = 0
        self.last_grad_norm = None

    def _checked_variables(self, cs):
        """The variables of this optimizer's params (a tie group counts once), refusing two
        untied params that share one array (one update per variable would move it twice)."""
        name = type(self).__name__
        variables = cs.variables(self.params)
        owner = {}
        for v in variables:
            for arr in v.storages:
                other = owner.setdefault(id(arr), v)
                if other is not v:
                    raise GraphError(f"{name}: params '{other.members[0].name}' and '{v.members[0].name}' share one "
                                     f"array but are not tied, so a step would move it twice; tie them "
                                     f"(graph.tie) or give each its own array")
        return variables

    def _grads(self, grads, variables):
        cs = self.graph.constraints
        if isinstance(grads, Gradients):
            if grads.graph is not self.graph:
                raise GraphError(f"{type(self).__name__}.step: gradients of graph '{grads.graph.name}' "
                                 f"given to an optimizer of graph '{self.graph.name}'")
            return {v: cs.raw_variable_grad(v, grads) for v in variables}
        if isinstance(grads, dict):
            mine = {id(m) for v in variables for m in v.members}
            for k in grads:
                if id(k) not in mine:
                    what = f"'{k.name}' (of graph '{k.graph.name}')" if isinstance(k, Node) else repr(k)
                    raise GraphError(f"{type(self).__name__}.step: {what} is not one of this optimizer's params "
                                     f"(graph '{self.graph.name}'); pass gradients of its params only")
            lookup = {}
            for k, g in grads.items():
                try:
                    lookup[id(k)] = np.asarray(g, dtype=np.float64)
                except (TypeError, ValueError):
                    raise GraphError(f"{type(self).__name__}.step: the gradient of '{k.name}' is not numeric") from None
                if lookup[id(k)].shape != k.value.shape:
                    raise GraphError(f"{type(self).__name__}.step: the gradient of '{k.name}' has shape "
                                     f"{lookup[id(k)].shape}, but the param has {k.value.shape}")
            out = {}
            for v in variables:
                gs = [lookup[id(m)] for m in v.members if id(m) in lookup]
                if not gs:
                    continue
                out[v] = reduce_member_grads(v, gs)
            return out
        raise NodeTypeError(f"{type(self).__name__}.step expects Gradients or a dict {{param: gradient}}, "
                            f"got {type(grads).__name__}")

    def step(self, grads):
        """Apply one update from ``grads`` (a Gradients object or {param: raw gradient})."""
        cs = self.graph.constraints
        version, variables = self._variables
        if version == cs.version and not all(map(is_, map(_value, self._firsts), self._arrays)):
            cs._rebuild()  # a param's array was replaced since: the variables hold the old one
        if version != cs.version:
            variables = self._checked_variables(cs)
            self._variables = (cs.version, variables)
            self._firsts = [v.members[0] for v in variables]
            self._arrays = [v.storages[0] for v in variables]
        per_var = self._grads(grads, variables)
        for v, g in per_var.items():
            if g.shape != v.shape:
                raise GraphError(f"{type(self).__name__}.step: gradient of '{v.members[0].name}' has shape "
                                 f"{g.shape}, expected {v.shape}")
        if self.weight_decay:
            per_var = {v: g + self.weight_decay * v.value for v, g in per_var.items()}
        per_var = cs.project(per_var)
        norm = math.sqrt(sum(map(_squared_norm, per_var.values())))
        self.last_grad_norm = norm
        if self.clip_norm is not None and norm > self.clip_norm:
            per_var = {v: g * (self.clip_norm / norm) for v, g in per_var.items()}
        self.steps += 1
        deltas = {}
        state = self.state
        for v, g in per_var.items():
            first = v.storages[0]
            st = state.get(id(first))
            if st is None or st["_array"] is not first:
                st = state[id(first)] = {"_array": first}
            deltas[v] = self._delta(st, g)
        if self._needs_step_projection:
            deltas = cs.project(deltas)
        for v, d in deltas.items():
            cs.apply_step(v, d)
        cs.correct(deltas)
        return norm

    _needs_step_projection = False


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum and weight decay.

    Momentum is a linear combination of projected gradients, so it stays in the
    constraints' null space without a second projection.
    """

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0, clip_norm=None):
        super().__init__(params, lr, weight_decay, clip_norm)
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float, np.number)) or not 0.0 <= momentum < 1.0:
            raise GraphError(f"SGD: momentum must be a number in [0, 1), got {momentum!r}")
        self.momentum = float(momentum)

    def _delta(self, st, g):
        if self.momentum:
            vel = st.get("velocity")
            vel = g.copy() if vel is None else self.momentum * vel + g
            st["velocity"] = vel
            return self.lr * vel
        return self.lr * g


class Adam(Optimizer):
    """Adam (Kingma & Ba); its step is projected back onto the constraints."""

    _needs_step_projection = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, clip_norm=None):
        super().__init__(params, lr, weight_decay, clip_norm)
        if (not isinstance(betas, (tuple, list)) or len(betas) != 2
                or not all(isinstance(b, (int, float, np.number)) and 0.0 <= b < 1.0 for b in betas)):
            raise GraphError(f"Adam: betas must be a pair of numbers in [0, 1), got {betas!r}")
        if not isinstance(eps, (int, float, np.number)) or not eps > 0:
            raise GraphError(f"Adam: eps must be > 0, got {eps}")
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)

    def _delta(self, st, g):
        b1, b2 = self.betas
        if "m" not in st:
            st["m"] = np.zeros_like(g)
            st["v"] = np.zeros_like(g)
            st["t"] = 0
        st["t"] += 1
        st["m"] = b1 * st["m"] + (1 - b1) * g
        st["v"] = b2 * st["v"] + (1 - b2) * g * g
        mhat = st["m"] / (1 - b1 ** st["t"])
        vhat = st["v"] / (1 - b2 ** st["t"])
        return self.lr * mhat / (np.sqrt(vhat) + self.eps)
