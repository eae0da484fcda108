"""check_equivalence: the unrolled graph, the time-domain BPTT loop and finite
differences must tell the same story, and the unrolled graph must have the
structure the lecture draws (T + 1 layers, every weight tied across exactly the
steps that use it, identical layers)."""

import networkx as nx
import numpy as np

from tinygraph.check import central_differences, noise_floor, relative_error

from .bptt import bptt
from .data import Target, resolve_all


class EquivalenceReport:
    """Figures of one equivalence check, with ``passed`` and a printable summary.

    ``errors`` maps a figure name to its relative error (``"grad bptt h->h"``,
    ``"grad fd h->h"``, ``"state h"``, ``"delta h"``, ``"loss"``); ``step_errors``
    maps a weight name to {step: relative error of that copy's gradient against
    the BPTT per-step contribution}; ``structure`` maps a structural check to
    (ok, detail).
    """

    def __init__(self, net, steps, tol_bptt, tol_fd):
        self.net = net
        self.steps = steps
        self.tol_bptt = tol_bptt
        self.tol_fd = tol_fd
        self.errors = {}
        self.step_errors = {}
        self.fd_errors = {}
        self.structure = {}
        self.notes = []
        self.run = None
        self.reference = None

    def _tol(self, key):
        return self.tol_fd if key.startswith("grad fd") else self.tol_bptt

    @property
    def failures(self):
        out = [f"{k}: relative error {v:.3g} > {self._tol(k):g}" for k, v in self.errors.items()
               if not v <= self._tol(k)]
        out += [f"structure {k}: {detail}" for k, (ok, detail) in self.structure.items() if not ok]
        return out

    @property
    def passed(self):
        return not self.failures

    def __bool__(self):
        return self.passed

    def node_errors(self):
        """{graph node name: relative error} for tied copies (for drawing the check on the graph)."""
        out = {}
        em = self.run.emitted if self.run is not None else None
        if em is None:
            return out
        for name, per_step in self.step_errors.items():
            for node, t in zip(em.copies[name], em.copy_steps[name]):
                if t in per_step:
                    out[node.name] = per_step[t]
        return out

    def __str__(self):
        lines = [f"equivalence check of net '{self.net.name}' over T={self.steps} steps: "
                 f"{'PASS' if self.passed else 'FAIL'}"]
        lines.append(f"  {'figure':<34} {'rel. error':>11}  {'tolerance':>9}")
        for k, v in self.errors.items():
            mark = "ok" if v <= self._tol(k) else "FAIL"
            lines.append(f"  {k:<34} {v:>11.2e}  {self._tol(k):>9.0e}  {mark}")
        for k, (ok, detail) in self.structure.items():
            lines.append(f"  structure: {k:<23} {'ok' if ok else 'FAIL'}  {detail}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    __repr__ = __str__


def _same_shape_error(got, want):
    """relative_error, or infinity when the shapes differ (nothing broadcasts a shared row)."""
    got, want = np.asarray(got), np.asarray(want)
    return relative_error(got, want) if got.shape == want.shape else float("inf")


def _default_targets(net, T, batch, seed, clamps=()):
    """Random targets on every unit of every non-input group at every step, except where the
    caller's clamps (resolved) fix a unit: a clamped unit cannot be wrong."""
    rng = np.random.default_rng(seed)
    clamped = {}
    for g, steps, units, _ in clamps:
        for t in steps:
            clamped.setdefault((g, t), set()).update(range(net.groups[g].size) if units is None else units.tolist())
    out = []
    for g in net.groups.values():
        if g.role == "input":
            continue
        by_units = {}  # the free units of a step -> its steps (one Target per pattern)
        for t in range(1, T + 1):
            free = tuple(u for u in range(g.size) if u not in clamped.get((g.name, t), ()))
            if free:
                by_units.setdefault(free, []).append(t)
        for free, steps in by_units.items():
            units = None if len(free) == g.size else list(free)
            out.append(Target(g.name, rng.uniform(0.1, 0.9, size=(len(steps), batch, len(free))), steps=steps,
                              units=units))
    return out


def check_equivalence(net, steps, inputs=(), targets=(), truncate=None, reduce="sum", tol_bptt=1e-10,
                      tol_fd=1e-6, eps=1e-6, max_entries=12, seed=0, finite_differences=True):
    """Compare the unrolled graph's autodiff with ``bptt`` and with central finite
    differences (loss, states, dE/dstate, weight and initial-state gradients, each
    copy's per-step gradient), and check the unrolled graph's structure.

    Without targets, every non-input group gets a seeded random target at every step
    so that there is a loss to differentiate.  With ``truncate`` the finite-difference
    comparison is skipped (a truncated gradient is deliberately not the full derivative).

    Returns
    -------
    EquivalenceReport (truthy when every figure is within tolerance).
    """
    T = steps
    clamps, _, batch = resolve_all(net, T, inputs, targets)
    if not targets:
        targets = _default_targets(net, T, batch or 2, seed, clamps)
    report = EquivalenceReport(net, T, tol_bptt, tol_fd)
    ff = net.unroll(T, reduce=reduce)
    out = ff.run(inputs, targets, truncate=truncate)
    ref = bptt(net, T, inputs, targets, truncate=truncate, reduce=reduce)
    report.run, report.reference = out, ref
    em = out.emitted

    report.errors["loss"] = relative_error(out.loss, ref.loss)
    for g in net.groups:  # (every state of a run with data has its batch axis: example by example)
        report.errors[f"state {g}"] = max(_same_shape_error(out.acts[em.layers[t][g]], ref.states[t][g])
                                          for t in range(T + 1))
        report.errors[f"delta {g}"] = max(_same_shape_error(out.grads[em.layers[t][g]], ref.deltas[t][g])
                                          for t in range(T + 1))
    for name in net.weights:
        report.errors[f"grad bptt {name}"] = relative_error(out.weight_grads[name], ref.grads[name])
        per_step = {}
        for node, t in zip(em.copies[name], em.copy_steps[name]):
            per_step[t] = relative_error(out.grads[node], ref.step_grads[name].get(t, 0.0 * node.value))
        report.step_errors[name] = per_step
        if per_step:
            report.errors[f"copies bptt {name}"] = max(per_step.values())

    if finite_differences and truncate is None:
        rng = np.random.default_rng(seed)
        floor = noise_floor(out.loss, eps, tol_fd)  # finite differences' rounding noise scales with the loss
        def loss():
            return ff.run(inputs, targets, backward=False).loss
        for name, arr in net.weights.items():
            # the net's array is every tied copy's storage: perturbing it perturbs them all at once
            idx, numeric = central_differences(loss, arr, eps, max_entries, rng)
            analytic = out.weight_grads[name].reshape(-1)[idx]
            if reduce == "mean" and em.copies[name]:
                analytic = analytic * len(em.copies[name])  # the mean is the derivative divided by #copies
            report.fd_errors[name] = (analytic, numeric)
            report.errors[f"grad fd {name}"] = relative_error(analytic, numeric, floor)
    elif truncate is not None:
        report.notes.append(f"truncate={truncate}: finite differences skipped (the truncated gradient is "
                            f"by design not the full derivative); compared with bptt truncated the same way")
    _check_structure(report, net, T, em, clamps)
    return report


def _layer_graph(G, t):
    suffix = f"@t{t}"
    return G.subgraph([n for n in G.nodes if n.endswith(suffix)])


def _check_structure(report, net, T, em, clamps):
    report.structure["layers"] = (
        len(em.layers) == T + 1 and all(set(layer) == set(net.groups) for layer in em.layers),
        f"{len(em.layers)} layers (t = 0..{len(em.layers) - 1}) for T={T}")
    fully = {(g, t) for g, st, units, _ in clamps if units is None for t in st}
    problems = []
    constraints = em.graph.constraints
    for name in net.weights:
        if name.startswith("init:"):
            g = name[5:]
            expected = [] if (g, 0) in fully else [0]
        else:
            g = name[5:] if name.startswith("bias:") else net.connections[name].dst
            expected = [t for t in range(1, T + 1) if (g, t) not in fully]
        copies = em.copies[name]
        if em.copy_steps[name] != expected:
            problems.append(f"{name} has copies at steps {em.copy_steps[name]}, expected {expected}")
        if any(c.value is not net.weights[name] for c in copies):
            problems.append(f"{name}: a copy does not share the net's storage")
        if len(copies) > 1:
            var = constraints.variable(copies[0])
            if len(var.members) != len(copies) or {id(m) for m in var.members} != {id(c) for c in copies}:
                problems.append(f"{name}: the tie group does not hold exactly its {len(copies)} copies")
    report.structure["ties"] = (not problems, "; ".join(problems) or
                                "every weight tied across exactly the steps that use it, one shared storage")
    # the layers of a data-free unroll are identical (as graphs) once the delays have filled up
    first = max(1, net.max_delay)
    T_iso = min(T, first + 4)
    if T_iso > first:
        G = net.unroll(T_iso).graph.to_networkx()
        ref = _layer_graph(G, first)
        same = all(nx.is_isomorphic(ref, _layer_graph(G, t), node_match=lambda a, b: a["op"] == b["op"])
                   for t in range(first + 1, T_iso + 1))
        report.structure["isomorphic layers"] = (
            same, f"layers {first}..{T_iso} of the unrolled net are {'' if same else 'NOT '}isomorphic")
