"""Unit-level derivative inspection: which units, steps and weights the error
really flows through.

``inspect(net, steps, inputs, targets)`` runs the unrolled graph once and collects,
as numpy arrays: dE/d(state) and dE/d(total input) for every unit at every step,
each weight's per-step gradient contributions and their sum, the norm of
dE/d(state) per step, and the norm of d state_T / d state_t (how much the final
state still depends on step t: vanishing or exploding gradients made visible).
"""

import csv
import io

import numpy as np

from .data import DataError


class Inspection:
    """The numbers of one inspected run (see module doc); ``table()`` and ``to_csv()`` print them."""

    def __init__(self, net, steps, run):
        self.net = net
        self.steps = T = steps
        self.run = run
        em = run.emitted
        self.loss = run.loss
        self.states = {g: run.states(g) for g in net.groups}
        self.state_deltas = {g: run.deltas(g) for g in net.groups}
        self.total_deltas = {}
        for g in net.groups:
            rows = [np.zeros_like(self.states[g][0])]
            for t in range(1, T + 1):
                node = em.totals[t].get(g)
                d = np.zeros_like(self.states[g][0]) if node is None else np.broadcast_to(
                    run.grads[node], self.states[g][0].shape)
                rows.append(d)
            self.total_deltas[g] = np.stack(rows)
        self.weight_grads = dict(run.weight_grads)
        self.step_grads = {}
        for w in net.weights:
            per = run.step_grads(w)
            arr = np.zeros((T + 1,) + net.weights[w].shape)
            for t, gr in per.items():
                arr[t] = gr
            self.step_grads[w] = arr  # zero at steps that do not use the weight
        self.step_grad_norms = {w: np.sqrt((a.reshape(T + 1, -1) ** 2).sum(axis=1)) for w, a in self.step_grads.items()}
        self.delta_norms = np.sqrt(sum((d.reshape(T + 1, -1) ** 2).sum(axis=1) for d in self.state_deltas.values()))

    def jacobian_norms(self, group, source=None):
        """||d state_T[group] / d state_t[source]|| (Frobenius, averaged over the batch) for t = 0..T.

        One backward pass per unit of ``group``, so meant for the small nets one inspects.
        """
        source = group if source is None else source
        self.net.group(group, "jacobian_norms")
        self.net.group(source, "jacobian_norms")
        em = self.run.emitted
        acts = self.run.acts
        final = em.layers[self.steps][group]
        value = np.asarray(acts[final])
        squares = np.zeros(self.steps + 1)
        for i in range(value.shape[-1]):
            seed = np.zeros_like(value)
            seed[..., i] = 1.0
            grads = acts.backward(final, seed=seed)
            for t in range(self.steps + 1):
                gr = np.asarray(grads[em.layers[t][source]])
                squares[t] += float(np.sum(gr * gr)) / (value.shape[0] if value.ndim == 2 else 1)
        return np.sqrt(squares)

    def rows(self):
        """(t, group, unit, state, dE/dstate, dE/dtotal input) rows, averaged over the batch."""
        out = []
        for t in range(self.steps + 1):
            for g in self.net.groups:
                s = self.states[g][t].mean(axis=0)
                d = self.state_deltas[g][t].mean(axis=0)
                a = self.total_deltas[g][t].mean(axis=0)
                for u in range(s.shape[-1]):
                    out.append((t, g, u, float(s[u]), float(d[u]), float(a[u])))
        return out

    def table(self, max_rows=200):
        """A printable table of every unit at every step (batch means), plus per-step weight-gradient norms."""
        lines = [f"unit-level derivatives of net '{self.net.name}' over T={self.steps} steps (loss {self.loss:.6g}; "
                 f"batch means)",
                 f"{'t':>4} {'group':<8} {'unit':>4} {'state':>11} {'dE/dstate':>11} {'dE/dtotal':>11}"]
        rows = self.rows()
        for t, g, u, s, d, a in rows[:max_rows]:
            lines.append(f"{t:>4} {g:<8} {u:>4} {s:>11.4g} {d:>11.4g} {a:>11.4g}")
        if len(rows) > max_rows:
            lines.append(f"  ... {len(rows) - max_rows} more rows (to_csv writes all)")
        lines.append("")
        lines.append("per-step gradient norm of each weight (which steps its gradient comes from):")
        head = "".join(f"{t:>9}" for t in range(self.steps + 1))
        lines.append(f"{'weight':<12}{head}{'sum':>11}")
        for w, norms in self.step_grad_norms.items():
            total = float(np.linalg.norm(self.weight_grads[w]))
            lines.append(f"{w:<12}" + "".join(f"{v:>9.3g}" for v in norms) + f"{total:>11.4g}")
        lines.append(f"{'|dE/dstate|':<12}" + "".join(f"{v:>9.3g}" for v in self.delta_norms))
        return "\n".join(lines)

    __str__ = table

    def to_csv(self, path=None):
        """Write (or return, when ``path`` is None) the unit table as CSV."""
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["t", "group", "unit", "state", "dE_dstate", "dE_dtotal_input"])
        for row in self.rows():
            w.writerow(row)
        text = buf.getvalue()
        if path is None:
            return text
        from tinygraph.io import atomic_write
        atomic_write(path, lambda f: f.write(text.encode()))
        return path


def inspect(net, steps, inputs=(), targets=(), truncate=None):
    """Run the unrolled net once and collect its unit-level derivatives.

    Raises
    ------
    DataError when there are no targets (no loss, so no derivatives).
    """
    if not targets:
        raise DataError("inspect needs at least one rnn.Target: without a loss there are no derivatives")
    run = net.unroll(steps).run(inputs, targets, truncate=truncate)
    return Inspection(net, steps, run)
