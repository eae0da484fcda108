"""Weight tying and linear constraints on parameters.

The lecture's recipe: compute the gradients as if the weights were free, then
change them so the constraints keep holding.  Two mechanisms share one model:

* a **tie group** makes several parameters one *variable*: its gradient is the
  sum (or mean) of the members' raw gradients, one update is computed, and every
  member receives exactly that update (members sharing one storage are updated
  once; the others get a bitwise copy);
* a **linear constraint** ``sum_i C_i vec(W_i) = d`` over such variables: the
  gradient is projected orthogonally onto the null space of the stacked
  constraint matrix (for a pure tie that projection is the mean of the members'
  gradients).  Constraints that share variables are merged into one system, and
  what the projection needs (an orthonormal basis of the row space and a
  pseudo-inverse) is computed once, when the system changes.
"""

import numpy as np

from .errors import ConstraintError, NodeTypeError
from .graph import note_param_write
from .node import Node

_TOL = 1e-9
_NEARLY_DEPENDENT = 1e-8  # constraints whose scaled rows are this close to dependent cannot be kept apart


class Variable:
    """One free variable: a lone parameter, or a tie group's members moving together."""

    __slots__ = ("members", "reduce", "storages", "shape", "tie")

    def __init__(self, members, reduce="sum", tie=None):
        self.members = list(members)
        self.reduce = reduce
        self.tie = tie
        self.shape = self.members[0].value.shape
        seen = {}
        for m in self.members:
            seen.setdefault(id(m.value), m.value)
        self.storages = list(seen.values())  # distinct arrays: T copies sharing one cost one

    @property
    def value(self):
        return self.storages[0]

    @property
    def size(self):
        return self.storages[0].size

    def __repr__(self):
        return f"<Variable {self.members[0].name} x{len(self.members)}>"


class TieGroup:
    """Parameters tied together (kept bitwise equal by every optimizer update)."""

    def __init__(self, members, reduce):
        self.members = list(members)
        self.reduce = reduce

    def __repr__(self):
        names = [m.name for m in self.members[:3]]
        more = f", ... ({len(self.members)} members)" if len(self.members) > 3 else ""
        return f"<TieGroup reduce={self.reduce} {names}{more}>"


class LinearConstraint:
    """``sum_i coefficients[W_i] @ vec(W_i) = rhs``.

    ``kind`` "symmetric" (W == W.T) and "transpose" (W1 == W2.T) have closed-form
    projections; their dense coefficient matrices (quadratic in the weight's size) are
    built only if they join other constraints in one system.
    """

    def __init__(self, coefficients, rhs, kind="general", params=None, dense=None):
        self._coefficients = coefficients  # {param node: (m, size) array}, or None until needed
        self._rhs = rhs
        self._dense = dense  # () -> (coefficients, rhs), for structured kinds
        self.kind = kind
        self.params = list(params if params is not None else coefficients)

    def _materialize(self):
        if self._coefficients is None:
            self._coefficients, self._rhs = self._dense()

    @property
    def coefficients(self):
        self._materialize()
        return self._coefficients

    @property
    def rhs(self):
        self._materialize()
        return self._rhs

    def __repr__(self):
        return f"<LinearConstraint {self.kind} over {[p.name for p in self.params]}>"


class _System:
    """One connected set of constraints over some variables, with its projection precomputed."""

    def __init__(self, variables, constraints, variable_of):
        self.variables = variables
        self.constraints = constraints
        self.offsets = np.cumsum([0] + [v.size for v in variables])
        col = {id(v): k for k, v in enumerate(variables)}
        rows = []
        rhs = []
        for c in constraints:
            m = next(iter(c.coefficients.values())).shape[0]
            block = np.zeros((m, self.offsets[-1]))
            for p, C in c.coefficients.items():
                k = col[id(variable_of(p))]
                block[:, self.offsets[k]:self.offsets[k + 1]] += C  # two members of one tie: coefficients add
            rows.append(block)
            rhs.append(c.rhs)
        self.A = np.vstack(rows)
        self.d = np.concatenate(rhs)
        # each row scaled to norm 1 (a constraint means the same at any scale), so that the
        # rank and consistency decisions below do not depend on how the user scaled a row
        norms = np.linalg.norm(self.A, axis=1)
        norms[norms == 0] = 1.0
        self.An, self.dn = self.A / norms[:, None], self.d / norms
        U, s, Vt = np.linalg.svd(self.An, full_matrices=False)
        rank = int(np.sum(s > max(self.A.shape) * np.finfo(float).eps * (s[0] if s.size else 0.0)))
        names = sorted({p.name for c in constraints for p in c.params})
        if rank and s[rank - 1] < _NEARLY_DEPENDENT * s[0]:
            raise ConstraintError(
                f"the linear constraints over {names} are nearly dependent (condition number "
                f"{s[0] / s[rank - 1]:.3g}): they cannot be held to {_TOL:g} apart; drop the redundant one, "
                f"or state it exactly as a combination of the others")
        self.basis = Vt[:rank]  # orthonormal basis of the row space
        self.pinv = (Vt[:rank].T / s[:rank]) @ U[:, :rank].T  # of the scaled rows
        x_ls = self.pinv @ self.dn
        miss = np.abs(self.An @ x_ls - self.dn)
        # each row against its own scale: its right-hand side, or the values it weighs (a
        # right-hand side of rounding noise around zero is consistent at their scale)
        x = np.abs(self.flat({v: v.value for v in variables}))
        scale = np.maximum(np.maximum(np.abs(self.dn), np.abs(self.An) @ x), np.finfo(float).tiny)
        if np.any(miss > 1e-8 * scale):
            miss = float(np.linalg.norm(miss))
            raise ConstraintError(
                f"the linear constraints over {names} are inconsistent: no values satisfy all of them "
                f"(least-squares residual {miss:.3g}, rows scaled to norm 1); remove or fix one")

    def names(self):
        return sorted({p.name for c in self.constraints for p in c.params})

    def flat(self, per_var):
        return np.concatenate([np.asarray(per_var[v], dtype=np.float64).reshape(-1) for v in self.variables])

    def split(self, vec):
        return [vec[self.offsets[k]:self.offsets[k + 1]].reshape(v.shape) for k, v in enumerate(self.variables)]

    def project(self, per_var):
        """Orthogonal projection of a gradient (or step) onto the constraints' null space."""
        g = self.flat(per_var)
        g = g - self.basis.T @ (self.basis @ g)
        return dict(zip(self.variables, self.split(g)))

    def residual(self):
        x = self.flat({v: v.value for v in self.variables})
        r = np.linalg.norm(self.A @ x - self.d)
        return float(r / max(1.0, float(np.linalg.norm(self.d)), float(np.linalg.norm(self.A) * np.linalg.norm(x))))

    def correct_values(self):
        """Move the values back onto the constraint set (removes rounding drift)."""
        x = self.flat({v: v.value for v in self.variables})
        x = x - self.pinv @ (self.An @ x - self.dn)
        for v, new in zip(self.variables, self.split(x)):
            _assign(v, new)


class _SymmetricSystem:
    """W == W.T alone: the projection is (G + G.T) / 2, with no matrix to store."""

    def __init__(self, variable, constraint):
        self.variables = [variable]
        self.constraints = [constraint]

    def names(self):
        return [self.constraints[0].params[0].name]

    def project(self, per_var):
        (v,) = self.variables
        g = np.asarray(per_var[v], dtype=np.float64)
        return {v: 0.5 * (g + g.T)}

    def residual(self):
        x = self.variables[0].value
        return float(np.linalg.norm(x - x.T) / np.sqrt(2) / max(1.0, float(np.linalg.norm(x))))

    def correct_values(self):
        x = self.variables[0].value
        _assign(self.variables[0], 0.5 * (x + x.T))


class _TransposeSystem:
    """W1 == W2.T alone: the projection averages G1 with G2.T."""

    def __init__(self, v1, v2, constraint):
        self.variables = [v1, v2]
        self.constraints = [constraint]

    def names(self):
        return sorted(p.name for p in self.constraints[0].params)

    def project(self, per_var):
        v1, v2 = self.variables
        a = 0.5 * (np.asarray(per_var[v1], dtype=np.float64) + np.asarray(per_var[v2], dtype=np.float64).T)
        return {v1: a, v2: a.T.copy()}

    def residual(self):
        x1, x2 = (v.value for v in self.variables)
        return float(np.linalg.norm(x1 - x2.T) / max(1.0, float(np.linalg.norm(x1) + np.linalg.norm(x2))))

    def correct_values(self):
        x1, x2 = (v.value for v in self.variables)
        a = 0.5 * (x1 + x2.T)
        _assign(self.variables[0], a)
        _assign(self.variables[1], a.T)


def _assign(variable, new_value):
    note_param_write()
    first = variable.storages[0]
    first[...] = new_value
    for s in variable.storages[1:]:
        s[...] = first  # bitwise copy keeps tie members equal


class ConstraintSet:
    """The ties and linear constraints of one graph."""

    def __init__(self, graph):
        self.graph = graph
        self.ties = []
        self.constraints = []
        self._systems = None
        self._variables = {}  # param node -> Variable (its tie group, or the param alone)
        self._tie_of = {}  # param node -> TieGroup (nodes hash by identity)
        self.version = 0  # bumped on every change, so compiled plans know to recompile

    # ------------------------------------------------------------ declaring
    def _param(self, p, what):
        if isinstance(p, str):
            p = self.graph[p]
        if not isinstance(p, Node):
            raise NodeTypeError(f"{what}: expected a param node, got {type(p).__name__}")
        if p.graph is not self.graph:
            raise NodeTypeError(
                f"{what}: param '{p.name}' belongs to graph '{p.graph.name}', not '{self.graph.name}'")
        if p.op != "param":
            raise NodeTypeError(f"{what}: '{p.name}' is a {p.op} node; only param nodes can be tied or constrained")
        return p

    def tie(self, params, reduce="sum", align=False):
        if len(params) == 1 and isinstance(params[0], (list, tuple)):
            params = tuple(params[0])
        if reduce not in ("sum", "mean"):
            raise ConstraintError(f"tie: reduce must be 'sum' or 'mean', got {reduce!r}")
        members = [self._param(p, "tie") for p in params]
        if len(members) < 2:
            raise ConstraintError(f"tie needs at least two params, got {[m.name for m in members]}")
        if len({id(m) for m in members}) != len(members):
            raise ConstraintError(f"tie: a param appears twice in {[m.name for m in members]}")
        first = members[0]
        for m in members[1:]:
            if m.value.shape != first.value.shape:
                raise ConstraintError(
                    f"tie: '{m.name}' has shape {m.value.shape} but '{first.name}' has {first.value.shape}; "
                    f"tied params must have equal shapes")
            if m.value.dtype != first.value.dtype:  # (one update, rounded into two dtypes, would part them)
                raise ConstraintError(
                    f"tie: '{m.name}' is {m.value.dtype} but '{first.name}' is {first.value.dtype}; tied params "
                    f"must have one dtype to stay equal bit for bit (make both arrays the same float type)")
        # a param already in a tie group: merge the groups when they agree on reduce
        merged = {}
        for m in members:
            t = self._tie_of.get(m)
            if t is not None and id(t) not in merged:
                if t.reduce != reduce:
                    raise ConstraintError(
                        f"tie: '{m.name}' is already in a tie group with reduce={t.reduce!r}; "
                        f"tie with the same reduce to merge the groups")
                merged[id(t)] = t
        if merged:
            ids = {id(m) for m in members}
            for t in merged.values():
                members += [x for x in t.members if id(x) not in ids]
                ids.update(id(x) for x in t.members)
        aligned = []
        for m in members[1:]:
            if m.value is first.value:
                continue
            if not np.array_equal(m.value, first.value):
                if not align:
                    raise ConstraintError(
                        f"tie: '{m.name}' and '{first.name}' have different values; tied params must start "
                        f"equal (pass align=True to copy '{first.name}' into the others)")
                aligned.append(m)
        saved_ties, saved_tie_of = list(self.ties), dict(self._tie_of)
        saved_values = [(m, m.value.copy()) for m in aligned]
        if aligned:
            note_param_write()
        for m in aligned:
            m.value[...] = first.value
        if merged:
            self.ties = [t for t in self.ties if id(t) not in merged]
        group = TieGroup(members, reduce)
        self.ties.append(group)
        for m in members:
            self._tie_of[m] = group
        try:
            self._rebuild()
            ids = {id(m) for m in members}
            for s in self._systems:
                if any(id(p) in ids for v in s.variables for p in v.members) and s.residual() > _TOL:
                    raise ConstraintError(
                        f"tie: tying {[m.name for m in members[:4]]} makes their values violate the linear "
                        f"constraint over {s.names()} (relative residual {s.residual():.3g}); make the values "
                        f"satisfy it before tying")
        except ConstraintError:
            self.ties, self._tie_of = saved_ties, saved_tie_of
            for m, old in saved_values:
                m.value[...] = old
            self._rebuild()
            raise
        return group

    def constrain(self, coefficients, rhs=None, project_init=False, kind="general"):
        if not isinstance(coefficients, dict) or not coefficients:
            raise ConstraintError("constrain: pass a dict {param: coefficient matrix C (m, param.size)}")
        coeffs = {}
        m = None
        for p, C in coefficients.items():
            p = self._param(p, "constrain")
            try:
                C = np.asarray(C, dtype=np.float64)
            except (TypeError, ValueError):
                raise ConstraintError(f"constrain: the coefficients for '{p.name}' must be a numeric matrix "
                                      f"of shape (m, {p.value.size})") from None
            if not np.all(np.isfinite(C)):
                raise ConstraintError(f"constrain: the coefficients for '{p.name}' are not finite (NaN or infinity)")
            if C.ndim == 1:
                C = C[None, :]
            if C.ndim != 2 or C.shape[1] != p.value.size:
                raise ConstraintError(
                    f"constrain: the coefficients for '{p.name}' have shape {C.shape}, but '{p.name}' has "
                    f"{p.value.size} entries (shape {p.value.shape}): C must be (m, {p.value.size}) "
                    f"acting on vec('{p.name}') in C order")
            if m is not None and C.shape[0] != m:
                raise ConstraintError(f"constrain: every coefficient matrix needs the same number of rows; "
                                      f"'{p.name}' has {C.shape[0]}, others {m}")
            m = C.shape[0]
            # the same param named twice: its blocks act on one vector, so they add
            coeffs[p] = coeffs[p] + C if p in coeffs else C
        try:
            rhs = np.zeros(m) if rhs is None else np.asarray(rhs, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise ConstraintError(f"constrain over {[p.name for p in coeffs]}: rhs must be {m} numbers") from None
        if rhs.shape != (m,):
            raise ConstraintError(f"constrain: rhs has {rhs.size} entries but the constraint has {m} rows")
        if not np.all(np.isfinite(rhs)):
            raise ConstraintError(f"constrain over {[p.name for p in coeffs]}: rhs holds NaN or infinity")
        return self._add(LinearConstraint(coeffs, rhs, kind), project_init)

    def _add(self, c, project_init):
        """Register constraint c, rebuild the systems, and check (or fix) the current values."""
        self.constraints.append(c)
        try:
            self._rebuild()
            system = next(s for s in self._systems if c in s.constraints)
            res = system.residual()
            if res > _TOL:
                if not project_init:
                    raise ConstraintError(
                        f"constrain: the current values of {system.names()} violate the constraint "
                        f"(relative residual {res:.3g} > {_TOL}); set them to satisfy it, or pass "
                        f"project_init=True to move them to the nearest values that do")
                system.correct_values()
        except ConstraintError:
            self.constraints.remove(c)
            self._rebuild()
            raise
        return c

    def constrain_symmetric(self, W, project_init=False):
        W = self._param(W, "constrain_symmetric")
        if W.value.ndim != 2 or W.value.shape[0] != W.value.shape[1]:
            raise ConstraintError(f"constrain_symmetric: '{W.name}' has shape {W.value.shape}; it must be square")
        n = W.value.shape[0]
        if n < 2:
            return None

        def dense():
            rows = [(i, j) for i in range(n) for j in range(i + 1, n)]
            C = np.zeros((len(rows), n * n))
            for r, (i, j) in enumerate(rows):
                C[r, i * n + j] = 1.0
                C[r, j * n + i] = -1.0
            return {W: C}, np.zeros(len(rows))
        return self._add(LinearConstraint(None, None, "symmetric", params=[W], dense=dense), project_init)

    def constrain_transpose(self, W1, W2, project_init=False):
        W1 = self._param(W1, "constrain_transpose")
        W2 = self._param(W2, "constrain_transpose")
        if W1.value.ndim != 2 or W1.value.shape != W2.value.shape[::-1]:
            raise ConstraintError(
                f"constrain_transpose: '{W1.name}' {W1.value.shape} must have the transposed shape of "
                f"'{W2.name}' {W2.value.shape}")
        if W1 is W2:
            return self.constrain_symmetric(W1, project_init=project_init)
        a, b = W1.value.shape

        def dense():
            size = a * b
            # vec(W2.T)[i*b + j] = W2[j, i] = vec(W2)[j*a + i]
            perm = np.array([j * a + i for i in range(a) for j in range(b)])
            return {W1: np.eye(size), W2: -np.eye(size)[perm]}, np.zeros(size)
        return self._add(LinearConstraint(None, None, "transpose", params=[W1, W2], dense=dense), project_init)

    # ------------------------------------------------------------ compiled view
    def _rebuild(self):
        self.version += 1
        self._variables = {}
        for t in self.ties:
            v = Variable(t.members, t.reduce, t)
            for m in t.members:
                self._variables[m] = v
        for c in self.constraints:
            for p in c.params:
                if p not in self._variables:
                    self._variables[p] = Variable([p])
        # connected components of variables through constraints (union-find, no recursion)
        parent = {}

        def find(x):
            while parent.setdefault(x, x) != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for c in self.constraints:
            vs = [id(self.variable(p)) for p in c.params]
            for v in vs[1:]:
                parent[find(vs[0])] = find(v)
        comps = {}
        for c in self.constraints:
            comps.setdefault(find(id(self.variable(c.params[0]))), []).append(c)
        systems = []
        for cs in comps.values():
            seen = {}
            for c in cs:
                for p in c.params:
                    v = self.variable(p)
                    seen.setdefault(id(v), v)
            variables = list(seen.values())
            if len(cs) == 1 and cs[0].kind == "symmetric":
                systems.append(_SymmetricSystem(variables[0], cs[0]))
            elif len(cs) == 1 and cs[0].kind == "transpose" and len(variables) == 2:
                v1, v2 = (self.variable(p) for p in cs[0].params)
                systems.append(_TransposeSystem(v1, v2, cs[0]))
            else:
                systems.append(_System(variables, cs, self.variable))
        self._systems = systems
        self._system_of = {id(v): s for s in systems for v in s.variables}

    def variable(self, param):
        """The Variable that moves ``param`` (its tie group, or the param alone)."""
        v = self._variables.get(param)
        if v is None:
            v = self._variables[param] = Variable([param])
        return v

    def variables(self, params):
        """Distinct variables covering ``params`` (a tie group appears once)."""
        out = {}
        for p in params:
            v = self.variable(p)
            out.setdefault(id(v), v)
        return list(out.values())

    @property
    def systems(self):
        return list(self._systems or [])

    # ------------------------------------------------------------ applying
    def raw_variable_grad(self, variable, grads):
        """The unconstrained gradient of one variable: sum or mean over its members."""
        first = variable.tie.members[0] if variable.tie is not None else None
        if first is not None and hasattr(grads, "tied_sum") and grads.acts.computed(first):
            total = grads.tied_sum(variable.tie)
            if total is not None:
                return total / len(variable.members) if variable.reduce == "mean" else total
        return reduce_member_grads(variable, [grads[m] for m in variable.members])

    def project(self, per_var):
        """Project {variable: gradient or step} onto every affected constraint system (new dict)."""
        out = dict(per_var)
        if not self._systems:
            return out
        for s in self._systems:
            if any(v in out for v in s.variables):
                full = {v: out[v] if v in out else np.zeros(v.shape) for v in s.variables}  # what s reads
                out.update({v: g for v, g in s.project(full).items() if v in out})
        return out

    def constrained_grads(self, grads, params=None):
        """{param: gradient} after ties and constraints, for ``params`` (default: all)."""
        params = self.graph.params if params is None else params
        variables = self.variables(params)
        per_var = {v: self.raw_variable_grad(v, grads) for v in variables}
        per_var = self.project(per_var)
        out = {}
        for v in variables:
            for m in v.members:
                out[m] = per_var[v]
        return {p: out[p] for p in params if p in out}

    def apply_step(self, variable, delta):
        """value -= delta for every member of the variable (storage shared by copies moves once)."""
        note_param_write()
        first = variable.storages[0]
        first -= delta
        for s in variable.storages[1:]:
            s[...] = first

    def correct(self, variables=None):
        """Re-project the values of the systems touching ``variables`` (any container that
        answers ``in``; None: all) to remove rounding drift."""
        for s in self._systems or []:
            if variables is None or any(v in variables for v in s.variables):
                s.correct_values()

    def residuals(self):
        """{system names: relative residual |A x - d|} for every constraint system."""
        return {tuple(s.names()): s.residual() for s in self._systems or []}


def reduce_member_grads(variable, gs):
    """A variable's unconstrained gradient from its members' (present) gradients: their sum,
    or for reduce="mean" the sum over the variable's member count."""
    total = np.asarray(gs[0]) if len(gs) == 1 else _sum_arrays(gs)
    return total / len(variable.members) if variable.reduce == "mean" else total


def _sum_arrays(arrays):
    """Their sum in one buffer, added in place (no stacked temporary); float32 stays float32."""
    total = np.array(arrays[0], dtype=np.result_type(*{np.asarray(a).dtype for a in arrays}), copy=True)
    for a in arrays[1:]:
        total += a
    return total
