"""Pictures of a recurrent net: folded (with its cycles), unrolled (one cluster per
time step, t = 0 at the bottom) and both side by side.

The pictures make the lecture's point visible: the unrolled net is a feed-forward
net with one layer per step, and every copy of one weight is drawn in that weight's
colour (one colour per tie group, the same colour in the folded net), so the ties
can be seen.  Like ``tinygraph.render`` this only builds a ``graphviz.Digraph``
(DOT text, testable without the ``dot`` program); ``tinygraph.render.write`` turns
it into SVG/PNG/PDF.
"""

import re

import graphviz
import numpy as np

from tinygraph.check import relative_error
from tinygraph.render import (FONT, GRAD_COLOUR, MONO, MUTED, RenderError, TooManyNodesError, _esc_string, _h,
                              full_text, node_id, palette, summarize)
from tinygraph.render import _lines as _html_lines

from .net import RecurrentNet
from .unroll import RunResult, Unrolled, initial_state

__all__ = ["render", "render_side_by_side", "tie_colours", "MAX_UNITS", "MAX_EDGES"]

MAX_UNITS = 40    # units=True: units per layer beyond which the classic picture is unreadable
MAX_EDGES = 400   # units=True: weight entries drawn beyond which dot gets slow and the picture a hairball

# Roles differ in fill *and* shape/corners (input: square box; hidden: ellipse in the folded net, rounded
# box unrolled; output: rounded box, thick border), so a greyscale print keeps them apart.  Double
# borders are kept free for "has a target", thick blue ones for "clamped".
ROLE_STYLE = {
    "input": dict(shape="box", style="filled", fillcolor="#CFE8F7", color="#0072B2"),
    "hidden": dict(shape="ellipse", style="filled", fillcolor="#F2F2F2", color="#444444"),
    "output": dict(shape="box", style="rounded,filled", fillcolor="#FCE3CF", color="#A04000", penwidth="1.6"),
}
UNIT_SHAPE = {"input": "box", "hidden": "circle", "output": "circle"}

# check colours: deliberately not Okabe-Ito hues, which the tie colours already use
CHECK_OK, CHECK_NEAR, CHECK_BAD = "#1A9850", "#F28E2B", "#D62728"
CHECK_FILL = {CHECK_OK: "#EAF5EA", CHECK_NEAR: "#FDF0DD", CHECK_BAD: "#FBE3E3"}
NEAR_FACTOR = 1e3  # beyond tol but within 1000 x tol: rounding-sized, orange; further: a wrong derivative, red
CUT_COLOUR = "#D62728"
CLAMP_COLOUR = "#0072B2"
TARGET_COLOUR = "#A04000"
CAPTION = ("A recurrent net is a feed-forward net with one layer per time step whose weights are tied.\n"
           "Each colour is one weight: drawn once on the left, once per step (its tied copies) on the right.\n"
           "A delay-d edge on the left goes from step t - d to step t on the right.")


# ----------------------------------------------------------------- small helpers

_tip = _esc_string  # text for a DOT tooltip (never read as an HTML label)


def _row(a):
    """A state's value for a label: the example itself when the batch holds one example."""
    a = np.asarray(a)
    return a[0] if a.ndim == 2 and a.shape[0] == 1 else a


def _units(n):
    return f"{n} unit" if n == 1 else f"{n} units"


def _err(e):
    return "0" if e == 0 else f"{e:.1e}"


def _lines(text, colour=None, size=9, face=MONO, prefix=""):
    """tinygraph.render's HTML-label lines, with this module's default size and face."""
    return _html_lines(text, colour, size, face, prefix)


def _table(rows):
    return '<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="1">' + "".join(rows) + "</TABLE>>"


def _cell(content):
    return f'<TR><TD ALIGN="LEFT" BALIGN="LEFT">{content}</TD></TR>'


def _edge_label(content):
    """An HTML edge label kept a few points clear of its edge."""
    return (f'<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="3"><TR>'
            f'<TD ALIGN="LEFT" BALIGN="LEFT">{content}</TD></TR></TABLE>>')


def _swatch_row(colour, content):
    """A row led by a small square of ``colour``: how a tied weight's colour shows inside a node."""
    return (f'<TR><TD ALIGN="LEFT" BALIGN="LEFT"><FONT COLOR="{colour}" POINT-SIZE="11">&#9632;</FONT> '
            f'{content}</TD></TR>')


def _check_colour(err, tol):
    if err is None:
        return None
    if not np.isfinite(err) or err > NEAR_FACTOR * tol:
        return CHECK_BAD
    return CHECK_OK if err <= tol else CHECK_NEAR


def _int_param(value, name, low, where="rnn.render"):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise RenderError(f"{where}: {name} must be an int >= {low}, got {value!r}")
    return int(value)


def tie_colours(net):
    """{weight name: colour}: one colour per tie group (= per entry of ``net.weights``),
    connections first so that the edges get the clearest colours, then biases, then
    learned initial states.  The same net always gets the same colours."""
    names = list(net.connections)
    names += [n for n in net.weights if n.startswith("bias:")]
    names += [n for n in net.weights if n not in names]
    return dict(zip(names, palette(len(names))))


def _describe_weight(net, name):
    if name.startswith("bias:"):
        return f"bias of {name[5:]}"
    if name.startswith("init:"):
        return f"learned initial state of {name[5:]}"
    c = net.connections[name]
    return f"{c.src} -> {c.dst}, delay {c.delay}"


def _initial_note(group):
    if group.learned:
        return f"initial state learned (init:{group.name})"
    if group.initial is None:
        return f"initial state {group.default_initial():g} (fixed)"
    if isinstance(group.initial, float):
        return f"initial state {group.initial:g} (fixed)"
    return f"initial state {summarize(group.initial, 6)} (fixed)"


def _n_entries(net, names):
    return sum(int(net.weights[n].size) for n in names)


def _unit_limits(net, n_edges, max_units, max_edges, what):
    n_units = sum(g.size for g in net.groups.values())
    if n_units > max_units:
        raise TooManyNodesError(
            f"rnn.render(units=True): net '{net.name}' has {n_units} units, more than max_units={max_units}; "
            f"one node per unit would be unreadable. Draw groups (units=False), or pass max_units={n_units} "
            f"if you really want every unit")
    if n_edges > max_edges:
        raise TooManyNodesError(
            f"rnn.render(units=True): {what} has {n_edges} weight entries to draw, more than "
            f"max_edges={max_edges}; draw groups (units=False), fewer steps (max_steps=, show_ends=), "
            f"or pass max_edges={n_edges}")


# ----------------------------------------------------------------- what to draw

class _Check:
    """An EquivalenceReport's numbers, looked up by (weight, step) and (group, step)."""

    def __init__(self, report, net, em=None):
        if not isinstance(getattr(report, "step_errors", None), dict) or not hasattr(report, "tol_bptt"):
            raise RenderError(f"rnn.render: check= takes the EquivalenceReport of rnn.check_equivalence, "
                              f"got {type(report).__name__}")
        if report.net is not net:
            raise RenderError(f"rnn.render: the check report is about net '{report.net.name}', not about the "
                              f"drawn net '{net.name}'")
        if em is not None and report.steps != em.T:
            raise RenderError(f"rnn.render: the check report covers T={report.steps} steps but the drawing "
                              f"has T={em.T}; unroll for {report.steps} steps (or draw report.run)")
        self.tol = report.tol_bptt
        self.steps = report.step_errors
        self.states = {}
        run, ref = report.run, report.reference
        # dE/dstate of every state node against the time-domain reference (only on the run the report made)
        if em is not None and run is not None and ref is not None and run.emitted is em and run.grads is not None:
            for t, layer in enumerate(em.layers):
                for g, node in layer.items():
                    got = np.asarray(run.grads[node])
                    want = np.asarray(ref.deltas[t][g])
                    if got.ndim == 1 and want.ndim == 2:  # a batch-free initial state sums over the batch
                        want = want.sum(axis=0)
                    self.states[(g, t)] = relative_error(got, want)

    def copy(self, name, t):
        return self.steps.get(name, {}).get(t)

    def worst(self, name):
        errs = list(self.steps.get(name, {}).values())
        return max(errs) if errs else None

    def step(self, t, names, groups):
        errs = [e for e in (self.copy(n, t) for n in names) if e is not None]
        errs += [self.states[(g, t)] for g in groups if (g, t) in self.states]
        return max(errs) if errs else None

    def colour(self, err):
        return _check_colour(err, self.tol)


def _resolve(obj, acts, grads):
    """(net, Emitted or None) for what the user passed, with acts/grads checked against it."""
    if isinstance(obj, RecurrentNet):
        if acts is not None or grads is not None:
            raise RenderError(f"rnn.render: acts/grads belong to an unrolled net; the folded net '{obj.name}' has "
                              f"no per-step values. Pass the Unrolled (net.unroll(T)) or the RunResult of ff.run")
        return obj, None
    graph = None
    for what, x in (("acts", acts), ("grads", grads)):
        if x is None:
            continue
        if not hasattr(x, "graph"):
            raise RenderError(f"rnn.render: {what} must be the {what} of a run (run.{what}), got {type(x).__name__}")
        if graph is not None and x.graph is not graph:
            raise RenderError("rnn.render: acts and grads come from two different runs (graphs)")
        graph = x.graph
    if isinstance(obj, RunResult):
        em = obj.emitted
        if graph is not None and graph is not em.graph:
            raise RenderError(f"rnn.render: acts/grads come from graph '{graph.name}', not from this run's graph "
                              f"(pass the run's own run.acts / run.grads)")
        return obj.unrolled.net, em
    if isinstance(obj, Unrolled):
        if graph is None:
            return obj.net, obj._current
        # runs with other clamps/targets emit other graphs: find the one the values come from
        for em in [obj._current] + list(obj._cache.values()):
            if em.graph is graph:
                return obj.net, em
        raise RenderError(f"rnn.render: acts/grads come from graph '{graph.name}', which this Unrolled did not "
                          f"emit; pass the RunResult of the run instead")
    raise RenderError(f"rnn.render: expected a RecurrentNet, an Unrolled (net.unroll(T)) or a RunResult "
                      f"(ff.run(...)), got {type(obj).__name__}")


def _feeds_by_state(em):
    """{(group, t): [(kind, units or None, fed node)]}: the clamped and targeted states, as
    Emitted recorded them when it made the feeds (None units = the whole group)."""
    out = {}
    for node, kind, _, _ in em.feeds:
        if kind == "mask":
            continue
        group, t, units = em.feed_at[node.index]
        out.setdefault((group, t), []).append((kind, units, node))
    return out


class _Steps:
    """Which steps are drawn: all, or the first and last ``show_ends`` around one elision."""

    def __init__(self, T, max_steps, show_ends):
        if T > max_steps and 2 * show_ends < T + 1:
            self.shown = list(range(show_ends)) + list(range(T - show_ends + 1, T + 1))
            self.gap = (show_ends, T - show_ends)  # inclusive
        else:
            self.shown = list(range(T + 1))
            self.gap = None
        self._shown = set(self.shown)

    def visible(self, t):
        return t in self._shown

    @property
    def elided(self):
        return 0 if self.gap is None else self.gap[1] - self.gap[0] + 1


# ----------------------------------------------------------------- the folded net

def _group_attrs(net, group, colours, check):
    attrs = dict(ROLE_STYLE[group.role])
    rows = [_cell(f'<FONT POINT-SIZE="13"><B>{_h(group.name)}</B></FONT>'),
            _cell(_lines(f"{_units(group.size)}, {group.activation}, {group.role}",
                         MUTED, 9, FONT)),
            _cell(_lines(_initial_note(group), MUTED, 9, FONT))]
    tip = [f"group {group.name}: {group.size} units, activation {group.activation}, role {group.role}",
           _initial_note(group)]
    for w in (f"bias:{group.name}", f"init:{group.name}"):
        if w in net.weights:
            colour, text = colours[w], w
            err = check.worst(w) if check is not None else None
            if err is not None:
                colour = check.colour(err)
                text += f"  err {_err(err)}"
            rows.append(_swatch_row(colour, _lines(text, "#000000", 9, FONT)))
            tip.append(f"{w}: {full_text(net.weights[w])}")
    tip.append("in: " + (", ".join(c.name for c in net.incoming(group.name)) or "none"))
    tip.append("out: " + (", ".join(c.name for c in net.connections.values() if c.src == group.name) or "none"))
    attrs["label"] = _table(rows)
    attrs["tooltip"] = _tip("\n".join(tip))
    return attrs


def _unit_attrs(net, group, i, colours):
    """One unit of the classic picture: its name, and its bias as a small swatch line."""
    style = ROLE_STYLE[group.role]
    attrs = dict(shape=UNIT_SHAPE[group.role], style="filled", fillcolor=style["fillcolor"],
                 color=style["color"], margin="0.02", width="0.45", height="0.45")
    if group.role == "output":
        attrs["penwidth"] = "1.6"
    rows = [_cell(f'<FONT POINT-SIZE="11"><B>{_h(group.name)}{i}</B></FONT>')]
    tip = [f"unit {i} of group {group.name} ({group.activation}, {group.role})"]
    bias = net.weights.get(f"bias:{group.name}")
    if bias is not None:
        rows.append(_swatch_row(colours[f"bias:{group.name}"], _lines(f"{bias[i]:.2g}", "#000000", 7, FONT)))
        tip.append(f"bias:{group.name}[{i}] = {bias[i]:.6g}")
    init = net.weights.get(f"init:{group.name}")
    tip.append(f"initial state: {init[i]:.6g} (learned)" if init is not None
               else f"initial state: {initial_state(group)[i]:.6g} (fixed)")
    return attrs, rows, tip


def _draw_folded(dg, net, colours, check, units, prefix, max_units, max_edges):
    def gid(g, i=None):
        return f"{prefix}{g}" if i is None else f"{prefix}{g}_{i}"

    n_entries = _n_entries(net, net.connections)
    if units:
        _unit_limits(net, n_entries, max_units, max_edges, f"net '{net.name}'")
        for g in net.groups.values():
            with dg.subgraph(name=f"cluster_{prefix}group_{g.name}") as sg:
                sg.attr(label=f"{g.name}: {g.size} {g.activation}", style="rounded,dashed", color="#AAAAAA",
                        fontsize="10", fontcolor=MUTED, rank="same", labelloc="b",
                        tooltip=_tip(f"group {g.name}: {_initial_note(g)}"))
                for i in range(g.size):
                    attrs, rows, tip = _unit_attrs(net, g, i, colours)
                    sg.node(gid(g.name, i), label=_table(rows), tooltip=_tip("\n".join(tip)), **attrs)
                for i in range(g.size - 1):  # units 0, 1, 2 ... left to right
                    sg.edge(gid(g.name, i), gid(g.name, i + 1), style="invis")
    else:
        for g in net.groups.values():
            dg.node(gid(g.name), **_group_attrs(net, g, colours, check))

    for c in net.connections.values():
        colour = colours[c.name]
        err = check.worst(c.name) if check is not None else None
        if err is not None:
            colour = check.colour(err)
        style = "dashed" if c.delay >= 1 else "solid"
        delay_text = f"delay {c.delay}" if c.delay >= 1 else "delay 0 (same step)"
        W = net.weights[c.name]
        if not units:
            text = (f'<FONT COLOR="{colour}" POINT-SIZE="12">&#9632;</FONT>'
                    f'<FONT POINT-SIZE="10"> <B>{_h(c.name)}</B>  {W.shape[0]}x{W.shape[1]}</FONT>'
                    '<BR ALIGN="LEFT"/>' + _lines(delay_text, "#000000", 9, FONT))
            if err is not None:
                text += _lines(f"max rel. err {_err(err)}", colour, 9, FONT)
            dg.edge(gid(c.src), gid(c.dst), label=_edge_label(text), color=colour, style=style, penwidth="2.2",
                    tooltip=_tip(f"connection {c.name} (the weight '{c.name}'), {delay_text}:\n"
                                 f"step t of {c.dst} reads step t - {c.delay} of {c.src}\n{full_text(W)}"),
                    **{"class": "connection"})
            continue
        scale = max(float(np.max(np.abs(W))), 1e-12)
        for i in range(W.shape[0]):
            for j in range(W.shape[1]):
                w = W[i, j]
                edge = dict(color=colour, style=style, penwidth=f"{0.6 + 2.4 * abs(w) / scale:.2f}",
                            arrowsize="0.5", tooltip=_tip(f"{c.name}[{i},{j}] = {w:.6g} ({delay_text})"),
                            **{"class": "connection entry"})
                if c.src == c.dst:  # within a group: let the units sit side by side
                    edge["constraint"] = "false"
                dg.edge(gid(c.src, i), gid(c.dst, j), **edge)


# ----------------------------------------------------------------- the unrolled net

class _Unrolled:
    """Draws one Emitted graph (one unrolled structure); an object because the parts share lookups."""

    def __init__(self, net, em, colours, acts, grads, check, units, steps, max_units, max_edges):
        self.net, self.em, self.colours = net, em, colours
        self.acts, self.grads, self.check, self.units = acts, grads, check, units
        self.steps = steps
        self.copy_at = {(name, t): node for name in em.copies
                        for node, t in zip(em.copies[name], em.copy_steps[name])}
        self.feeds = _feeds_by_state(em)
        self.gap_id = "elided_steps"
        self.groups = list(net.groups)
        # edge width: each copy's gradient norm against the largest one drawn
        self.gnorm = {}
        if grads is not None:
            for (name, t), node in self.copy_at.items():
                if name in net.connections and steps.visible(t):
                    self.gnorm[(name, t)] = float(np.linalg.norm(grads[node]))
        self.gmax = max(self.gnorm.values(), default=0.0)
        if units:
            n_edges = _n_entries(net, [name for (name, t) in self.copy_at
                                       if name in net.connections and steps.visible(t)])
            _unit_limits(net, n_edges, max_units, max_edges, f"the unrolled net ({len(steps.shown)} steps drawn)")

    def _value(self, node):
        if self.acts is None or node not in self.acts:
            return None
        return self.acts[node]

    def _grad(self, node):
        return None if self.grads is None else self.grads[node]

    def sid(self, g, t, i=None):
        node = self.em.layers[t][g]
        return node_id(node) if i is None else f"{node_id(node)}_u{i}"

    def _cut_crossed(self, ts, t):
        cut = self.em.cut
        return cut is not None and ts <= cut < t

    # ---- state nodes
    def _marks(self, g, t):
        """[(kind, units, fed node, text)] for the clamps and targets of state (g, t)."""
        out = []
        for kind, units, fnode in self.feeds.get((g, t), []):
            which = "" if units is None else f" units {', '.join(map(str, units))}"
            if kind == "clamp":
                text = f"clamped{which}"
            else:
                tv = self._value(fnode)
                text = f"target{which}" + (f" = {summarize(_row(tv), 4)}" if tv is not None else "")
            out.append((kind, units, fnode, text))
        return out

    def state_attrs(self, g, t, node):
        group = self.net.groups[g]
        attrs = dict(ROLE_STYLE[group.role])
        attrs["shape"] = "box"
        if group.role != "input":
            attrs["style"] = "rounded,filled"
        attrs["group"] = f"g_{g}"  # one group's states in one column: the time axis reads straight up
        rows = [_cell(f'<FONT POINT-SIZE="11"><B>{_h(node.name)}</B></FONT>')]
        tip = [f"{node.name}: state of group {g} at step t={t} ({_units(group.size)}, {group.activation})"]
        if t == 0 and node.op != "input" and not self.feeds.get((g, 0)):
            rows.append(_cell(_lines(_initial_note(group), MUTED, 8, FONT)))
            tip.append(_initial_note(group))
        value, grad = self._value(node), self._grad(node)
        if value is not None:
            rows.append(_cell(_lines(summarize(_row(value), 6), "#000000", 9, MONO, "= ")))
            tip.append("value: " + full_text(value))
        if grad is not None:
            rows.append(_cell(_lines(summarize(_row(grad), 6), GRAD_COLOUR, 9, MONO, "grad ")))
            tip.append(f"gradient dE/d({node.name}): " + full_text(grad))
        for kind, units, fnode, text in self._marks(g, t):
            if kind == "clamp":
                rows.append(_cell(_lines(text, CLAMP_COLOUR, 9, FONT)))
                attrs.update(color=CLAMP_COLOUR, penwidth="2.6")
                tip.append(f"{text} (fed by {fnode.name}): takes the given value, passes no gradient to its "
                           f"total input")
            else:
                rows.append(_cell(_lines(text, TARGET_COLOUR, 9, FONT)))
                attrs.update(peripheries="2", color=TARGET_COLOUR)
                tv = self._value(fnode)
                tip.append(f"{text.split(' = ')[0]} (fed by {fnode.name})"
                           + (f": {full_text(tv)}" if tv is not None else ""))
        for w, what in ((f"bias:{g}", "bias"), (f"init:{g}", "learned initial state")):
            wnode = self.copy_at.get((w, t))
            if wnode is None:
                continue
            colour, text = self.colours[w], ("+ " if what == "bias" else "") + wnode.name
            wgrad = self._grad(wnode)
            err = self.check.copy(w, t) if self.check is not None else None
            if wgrad is not None:
                text += "\ngrad " + summarize(wgrad, 4)
            if err is not None:
                colour = self.check.colour(err)
                text += f"\nerr {_err(err)}"
            rows.append(_swatch_row(colour, _lines(text, "#000000", 8, MONO)))
            tip.append(f"{wnode.name}: the copy of the tied {what} '{w}' used at step {t}"
                       + (f"\n  this copy's own gradient: {full_text(wgrad)}" if wgrad is not None else "")
                       + (f"\n  rel. error vs bptt: {err:.3g}" if err is not None else ""))
        if self.check is not None and (g, t) in self.check.states:
            err = self.check.states[(g, t)]
            colour = self.check.colour(err)
            rows.append(_cell(_lines(f"dE/dstate err {_err(err)}", colour, 8, FONT)))
            attrs.update(color=colour, penwidth="2.6")
            tip.append(f"dE/dstate rel. error vs the time-domain bptt: {err:.3g} (tol {self.check.tol:g})")
        attrs["label"] = _table(rows)
        attrs["tooltip"] = _tip("\n".join(tip))
        return attrs

    def draw_units(self, sg, g, t, node):
        group = self.net.groups[g]
        value, grad = self._value(node), self._grad(node)
        per_unit = {}
        for kind, units, fnode, text in self._marks(g, t):
            for i in (range(group.size) if units is None else units):
                per_unit.setdefault(i, []).append((kind, fnode))
        ids = []
        with sg.subgraph() as same:
            same.attr(rank="same")
            for i in range(group.size):
                attrs, rows, tip = _unit_attrs(self.net, group, i, self.colours)
                attrs["group"] = f"g_{g}_{i}"
                tip.insert(0, f"unit {i} of {node.name}")
                if value is not None:
                    v = np.asarray(value)[..., i]
                    if v.size == 1:
                        rows.append(_cell(_lines(f"{float(v.ravel()[0]):.2f}", "#000000", 8, MONO)))
                    tip.append("value: " + full_text(v))
                if grad is not None:
                    tip.append("gradient dE/dstate: " + full_text(np.asarray(grad)[..., i]))
                for kind, fnode in per_unit.get(i, []):
                    if kind == "clamp":
                        attrs.update(color=CLAMP_COLOUR, penwidth="2.6")
                    else:
                        attrs.update(peripheries="2", color=TARGET_COLOUR)
                    tip.append(f"{'clamped' if kind == 'clamp' else 'target'} (fed by {fnode.name})")
                if self.check is not None and (g, t) in self.check.states:
                    attrs.update(color=self.check.colour(self.check.states[(g, t)]), penwidth="2.6")
                bias = f"bias:{g}"
                if bias in self.net.weights:  # row 1 is the bias swatch: only steps with a copy of it
                    bcopy = self.copy_at.get((bias, t))
                    err = self.check.copy(bias, t) if (self.check is not None and bcopy is not None) else None
                    if bcopy is None:
                        rows = rows[:1] + rows[2:]
                    elif err is not None:
                        rows[1] = _swatch_row(self.check.colour(err), _lines(
                            f"{self.net.weights[bias][i]:.2g}", "#000000", 7, FONT))
                same.node(self.sid(g, t, i), label=_table(rows), tooltip=_tip("\n".join(tip)), **attrs)
                ids.append(self.sid(g, t, i))
            for a, b in zip(ids, ids[1:]):  # units 0, 1, 2 ... left to right
                same.edge(a, b, style="invis")
        return ids

    # ---- edges
    def copy_edge(self, c, t, copy):
        """The edge drawing weight copy ``copy`` (connection ``c`` used at step ``t``)."""
        colour = self.colours[c.name]
        ts = max(t - c.delay, 0)
        rows = [f'<FONT COLOR="{colour}" POINT-SIZE="12">&#9632;</FONT>'
                f'<FONT POINT-SIZE="9"> {_h(copy.name)}</FONT><BR ALIGN="LEFT"/>']
        tip = [f"{copy.name}: the copy of the tied weight '{c.name}' ({_describe_weight(self.net, c.name)}) "
               f"used at step {t}", f"value (shared by every copy): {full_text(copy.value)}"]
        edge = dict(color=colour, penwidth="1.4", **{"class": "copy"})
        grad = self._grad(copy)
        if grad is not None:
            norm = self.gnorm[(c.name, t)]
            rows.append(_lines(f"|grad| {norm:.3g}", GRAD_COLOUR, 8, MONO))
            tip.append(f"this copy's own gradient (step {t} only), norm {norm:.6g}: {full_text(grad)}")
            if self.gmax > 0:
                edge["penwidth"] = f"{1.0 + 3.0 * norm / self.gmax:.2f}"
        if self.check is not None:
            err = self.check.copy(c.name, t)
            if err is not None:
                colour = edge["color"] = self.check.colour(err)
                rows.append(_lines(f"rel. err {_err(err)}", colour, 9, FONT))
                tip.append(f"rel. error of this copy's gradient vs the bptt step-{t} contribution: {err:.3g} "
                           f"(tol {self.check.tol:g})")
        if self._cut_crossed(ts, t):
            edge["style"] = "dashed"
            rows.append(_lines("no gradient back (cut)", CUT_COLOUR, 8, FONT))
            tip.append(f"crosses the truncation cut: activity flows forward, no gradient flows back to step {ts}")
        edge["label"] = _edge_label("".join(rows))
        edge["tooltip"] = _tip("\n".join(tip))
        return edge

    def unit_edges(self, dg, c, t, ts, copy):
        W = np.asarray(copy.value)
        grad = self._grad(copy)
        colour = self.colours[c.name]
        err = self.check.copy(c.name, t) if self.check is not None else None
        if err is not None:
            colour = self.check.colour(err)
        scale = max(float(np.max(np.abs(W))), 1e-12)
        style = "dashed" if self._cut_crossed(ts, t) else "solid"
        for i in range(W.shape[0]):
            for j in range(W.shape[1]):
                tip = f"{copy.name}[{i},{j}] = {W[i, j]:.6g} (the tied weight '{c.name}' at step {t})"
                if grad is not None:
                    tip += f"\nthis copy's gradient: {grad[i, j]:.6g}"
                if err is not None:
                    tip += f"\nrel. error of the copy's gradient vs bptt: {err:.3g}"
                dg.edge(self.sid(c.src, ts, i), self.sid(c.dst, t, j), color=colour,
                        penwidth=f"{0.5 + 2.0 * abs(W[i, j]) / scale:.2f}", arrowsize="0.5", style=style,
                        tooltip=_tip(tip), **{"class": "copy entry"})

    def gap_edge(self, dg, c, a, b, copy=None):
        text = (f"{copy.name}: reads a state in the elided steps" if copy is not None
                else f"'{c.name}' carries this state into the elided steps")
        edge = dict(color=self.colours[c.name], style="dotted", penwidth="1.2", tooltip=_tip(text),
                    **{"class": "elided"})
        if copy is not None:
            edge["label"] = f"<{_lines(copy.name, MUTED, 8, FONT)}>"
        dg.edge(a, b, **edge)

    def draw_edges(self, dg):
        em, net, steps = self.em, self.net, self.steps
        to_gap = set()
        first = 0 if self.units else None  # into / out of the elision node: one edge per weight, not per unit
        for t in range(1, em.T + 1):
            for c in net.connections.values():
                copy = self.copy_at.get((c.name, t))
                if copy is None:  # the destination is clamped at this step: no copy, no edge
                    continue
                ts = max(t - c.delay, 0)
                if not steps.visible(t):
                    if steps.visible(ts) and (c.name, ts) not in to_gap:
                        to_gap.add((c.name, ts))
                        self.gap_edge(dg, c, self.sid(c.src, ts, first), self.gap_id)
                elif not steps.visible(ts):
                    self.gap_edge(dg, c, self.gap_id, self.sid(c.dst, t, first), copy=copy)
                elif self.units:
                    self.unit_edges(dg, c, t, ts, copy)
                else:
                    dg.edge(self.sid(c.src, ts), self.sid(c.dst, t), **self.copy_edge(c, t, copy))

    def draw_time_axis(self, dg):
        """Invisible edges that stack the layers: each state (unit) to the same one a step later,
        so that every layer sits above the one before, even a clamped state with no incoming edge.
        With delay-0 connections a layer spans several ranks; then the top of each layer (groups
        feeding nothing within the step) also points at the bottom of the next (groups fed by
        nothing within it), or the layers would drift sideways into a staircase."""
        sizes = {g: (self.net.groups[g].size if self.units else 1) for g in self.groups}
        shown, gap = self.steps.shown, self.steps.gap

        for g in self.groups:
            for i in range(sizes[g]):
                prev = None
                for t in shown:
                    here = self.sid(g, t, i if self.units else None)
                    if prev is not None:
                        if gap is not None and t == gap[1] + 1:
                            dg.edge(prev, self.gap_id, style="invis")
                            prev = self.gap_id
                        dg.edge(prev, here, style="invis", weight="4")  # weight: keep the column straight
                    prev = here
        zero = [c for c in self.net.connections.values() if c.delay == 0]
        if zero:
            bottoms = [g for g in self.groups if not any(c.dst == g for c in zero)]
            # (one node a group: a group alone in its step, neither feeding nor fed within it, is
            # stacked by its own column above; as a top too, dot's newrank fails on it, "trouble
            # in init_rank".  Unit by unit the rows chain the groups, and it is needed there.)
            tops = [g for g in self.groups if not any(c.src == g and c.dst != g for c in zero)
                    and (self.units or g not in bottoms)]
            first = 0 if self.units else None
            prev = None
            for t in shown:
                if prev is not None:
                    lower = [self.gap_id] if gap is not None and t == gap[1] + 1 else prev
                    if lower == [self.gap_id]:
                        for a in prev:
                            dg.edge(a, self.gap_id, style="invis")
                    for a in lower:
                        for b in bottoms:
                            dg.edge(a, self.sid(b, t, first), style="invis")
                prev = [self.sid(g, t, first) for g in tops]

    # ---- clusters
    def draw_step(self, dg, t):
        names = [n for n in self.colours if (n, t) in self.copy_at]
        with dg.subgraph(name=f"cluster_t{t}") as sg:
            label = f"t = {t}" + (" (initial states)" if t == 0 else "")
            attrs = dict(style="rounded,filled", fillcolor="#FAFAFA", color="#BBBBBB", fontsize="11", penwidth="1",
                         fontcolor=MUTED, labeljust="l", labelloc="b")  # b: top, in rankdir=BT
            tip = f"time step {t}: layer {t} of the unrolled net"
            if self.check is not None:
                err = self.check.step(t, names, self.groups)
                if err is not None:
                    colour = self.check.colour(err)
                    attrs.update(color=colour, fillcolor=CHECK_FILL[colour], penwidth="2")
                    label += f"   worst rel. err {_err(err)}"
                    tip += f"; worst relative error of its gradients vs bptt: {err:.3g}"
            sg.attr(label=label, tooltip=_tip(tip), **attrs)
            # with no delay-0 connection every state of a step sits on one rank: keep it in the
            # net's group order (x, h, y left to right) with an invisible chain; else chain each group's units
            flat = all(c.delay >= 1 for c in self.net.connections.values())
            with sg.subgraph() as row:
                if flat:
                    row.attr(rank="same")
                chain = []
                for g in self.groups:
                    node = self.em.layers[t][g]
                    if self.units:
                        ids = self.draw_units(row if flat else sg, g, t, node)
                        chain.append(ids)
                    else:
                        row.node(self.sid(g, t), **self.state_attrs(g, t, node))
                        chain.append([self.sid(g, t)])
                if flat:  # (draw_units chains the units inside each group)
                    for a, b in zip(chain, chain[1:]):
                        row.edge(a[-1], b[0], style="invis")

    def draw_gap(self, dg):
        a, b = self.steps.gap
        cut = self.em.cut
        text = f"\u2026 {self.steps.elided} steps (t = {a} .. {b}) not drawn \u2026"
        if cut is not None and a <= cut < b:
            text += f"\ntruncation cut between t = {cut} and t = {cut + 1} in here:\nno gradient crosses it"
        dg.node(self.gap_id, label=text, shape="box", style="dashed,rounded", color="#888888", fontcolor=MUTED,
                fontsize="11", tooltip=_tip(f"steps {a}..{b} are left out (T = {self.em.T} > max_steps); each "
                                            f"is the same layer with the same tied weights"))

    def draw(self, dg):
        steps, cut = self.steps, self.em.cut
        gap_lo, gap_hi = steps.gap if steps.gap is not None else (None, None)
        # a truncation cut: the steps below it sit in a red dashed box whose top edge is the cut
        boxed = cut is not None and not (steps.gap is not None and gap_lo <= cut < gap_hi)
        if boxed:
            with dg.subgraph(name="cluster_cut") as box:
                box.attr(label=f"truncated BPTT: no gradient crosses this line from t = {cut + 1} down to "
                               f"t = {cut}", style="dashed", color=CUT_COLOUR, penwidth="2.5",
                         fontcolor=CUT_COLOUR, fontsize="12", labelloc="b", labeljust="r", fillcolor="none",
                         tooltip=_tip(f"truncated backpropagation through time: steps <= {cut} get no gradient "
                                      f"from steps > {cut}; activities still flow forward across the line"))
                for t in steps.shown:
                    if t <= cut:
                        self.draw_step(box, t)
                if steps.gap is not None and gap_hi <= cut:
                    self.draw_gap(box)
        for t in steps.shown:
            if not (boxed and t <= cut):
                self.draw_step(dg, t)
        if steps.gap is not None and not (boxed and gap_hi <= cut):
            self.draw_gap(dg)
        self.draw_edges(dg)
        self.draw_time_axis(dg)


# ----------------------------------------------------------------- legend

def _legend(net, colours, em=None, grads=None, check=None, units=False, folded_too=False):
    """An HTML-table node: one row per tied weight (colour, name, what it is, its copies, the
    tied gradient, the worst check error), then a key for the other marks the picture uses."""
    head = ["", "weight", "what it is"]
    if em is not None:
        head.append("tied copies")
    if grads is not None:
        head.append("tied gradient dE/dW")
    if check is not None:
        head.append("worst rel. err")
    th = "".join(f'<TD ALIGN="LEFT"><FONT POINT-SIZE="9" COLOR="{MUTED}">{_h(x)}</FONT></TD>' if x else "<TD></TD>"
                 for x in head)
    title = "tied weights: one colour per weight, on every copy" if em is not None else "weights: one colour each"
    if check is not None:
        title = "tied weights, coloured by their worst copy's gradient error"
    rows = [f'<TR><TD COLSPAN="{len(head)}" ALIGN="LEFT"><B>{_h(title)}</B></TD></TR>', f"<TR>{th}</TR>"]
    tip = ["legend"]
    cs = em.graph.constraints if (em is not None and grads is not None) else None
    for name, colour in colours.items():
        err = check.worst(name) if check is not None else None
        swatch = check.colour(err) if err is not None else colour
        shape = "x".join(map(str, net.weights[name].shape))
        cells = [f'<TD BGCOLOR="{swatch}" WIDTH="18" HEIGHT="12" FIXEDSIZE="TRUE"></TD>',
                 f'<TD ALIGN="LEFT"><FONT POINT-SIZE="10"><B>{_h(name)}</B></FONT></TD>',
                 f'<TD ALIGN="LEFT"><FONT POINT-SIZE="9">{_h(_describe_weight(net, name))}; {shape}</FONT></TD>']
        line = f"{name}: {_describe_weight(net, name)}, shape {shape}"
        if em is not None:
            steps = em.copy_steps[name]
            if not steps:
                where = "none"
            elif len(steps) > 1 and steps == list(range(steps[0], steps[-1] + 1)):
                where = f"{len(steps)}: t = {steps[0]}..{steps[-1]}"
            else:
                where = f"{len(steps)}: t = {', '.join(map(str, steps))}"
            cells.append(f'<TD ALIGN="LEFT"><FONT POINT-SIZE="9">{_h(where)}</FONT></TD>')
            line += f"; tied copies {where}"
        if grads is not None:
            copies = em.copies[name]
            if copies:
                var = cs.variable(copies[0])
                total = cs.raw_variable_grad(var, grads)
                how = "mean" if var.reduce == "mean" else "sum"
                cells.append(f'<TD ALIGN="LEFT" BALIGN="LEFT">{_lines(summarize(total, 9), GRAD_COLOUR, 8)}'
                             f'<FONT POINT-SIZE="7" COLOR="{MUTED}">{how} of the {len(copies)} copies\' '
                             f'gradients</FONT></TD>')
                line += f"\n  tied gradient ({how} of the copies' own gradients): {full_text(total)}"
            else:
                cells.append("<TD></TD>")
        if check is not None:
            text = "" if err is None else _err(err)
            cells.append(f'<TD ALIGN="LEFT"><FONT POINT-SIZE="9" COLOR="{swatch}"><B>{text}</B></FONT></TD>'
                         if text else "<TD></TD>")
            if err is not None:
                line += f"\n  worst relative error of a copy's gradient vs bptt: {err:.3g}"
        rows.append("<TR>" + "".join(cells) + "</TR>")
        tip.append(line)

    keys = []  # (colour or None, glyph, text)
    if check is not None:
        keys += [(CHECK_OK, "", f"gradient matches the time-domain bptt (rel. err <= {check.tol:g})"),
                 (CHECK_NEAR, "", f"beyond tolerance but within {NEAR_FACTOR:g} x (rounding?)"),
                 (CHECK_BAD, "", "far beyond tolerance: a wrong derivative")]
    if em is not None:
        kinds = {kind for v in _feeds_by_state(em).values() for kind, *_ in v}
        if "clamp" in kinds:
            keys.append((None, "clamped", "thick border: clamped (value given, no gradient to its input)"))
        if "target" in kinds:
            keys.append((None, "\u25ce", "double border: has a target at this step"))
        if grads is not None:
            keys.append((None, "grad", "dE/d(that value); edge width ~ the copy's gradient norm"))
        if em.cut is not None:
            keys.append((None, "- - -", f"truncation cut: no gradient from t >= {em.cut + 1} reaches t <= {em.cut}"))
        if units:
            keys.append((None, "\u2192", "one node per unit, one edge per weight entry (width ~ |w|)"))
        if folded_too:
            keys.append((None, "- - \u2192", "dashed (recurrent net): delay >= 1, from step t - d to step t"))
    else:
        keys.append((None, "- - \u2192", "dashed: delay >= 1, from step t - d to step t"))
        if units:
            keys.append((None, "\u2192", "one edge per weight entry (width ~ |w|); swatch in a unit: its bias"))
    for colour, glyph, text in keys:
        if colour:
            first = f'<TD BGCOLOR="{colour}" WIDTH="18" HEIGHT="12" FIXEDSIZE="TRUE"></TD>'
        elif glyph == "clamped":  # the mark itself: a thick blue border
            first = (f'<TD BORDER="3" COLOR="{CLAMP_COLOUR}" BGCOLOR="#FFFFFF" WIDTH="18" HEIGHT="12" '
                     f'FIXEDSIZE="TRUE"></TD>')
        else:
            first = f'<TD><FONT POINT-SIZE="9">{_h(glyph)}</FONT></TD>'
        rows.append(f'<TR>{first}<TD COLSPAN="{len(head) - 1}" ALIGN="LEFT"><FONT POINT-SIZE="9">'
                    f'{_h(text)}</FONT></TD></TR>')
    label = ('<<TABLE BORDER="1" COLOR="#BBBBBB" CELLBORDER="0" CELLSPACING="2" CELLPADDING="2">'
             + "".join(rows) + "</TABLE>>")
    return dict(label=label, shape="plaintext", tooltip=_tip("\n".join(tip)))


# ----------------------------------------------------------------- entry points

def _new_digraph(name, title, caption=None, ranksep="0.45"):
    dg = graphviz.Digraph(name=re.sub(r"\W+", "_", name) or "net", comment=f"rnn picture of net '{name}'")
    dg.attr("graph", rankdir="BT", fontname=FONT, labelloc="t", fontsize="14", nodesep="0.35", ranksep=ranksep,
            newrank="true", tooltip=_tip(title or name))
    dg.attr("node", fontname=FONT, fontsize="11")
    dg.attr("edge", fontname=FONT, fontsize="9", arrowsize="0.7")
    label = f"<B>{_h(title)}</B>" if title else ""
    if caption:
        label += ('<BR/><FONT POINT-SIZE="11" COLOR="#333333">'
                  + '<BR/>'.join(_h(line) for line in caption.split("\n")) + "</FONT>")
    if label:
        dg.attr("graph", label=f"<{label}>")
    return dg


def _draw(dg, net, em, colours, chk, acts, grads, units, max_steps, show_ends, max_units, max_edges):
    """Draw the folded net (``em`` None) or the emitted unrolled graph ``em`` into ``dg`` (a Digraph
    or a cluster of one); the callers resolve the object, the colours and the check once."""
    if em is None:
        _draw_folded(dg, net, colours, chk, units, "f_", max_units, max_edges)
        return
    if acts is None and grads is not None:
        acts = grads.acts
    _Unrolled(net, em, colours, acts, grads, chk, units, _Steps(em.T, max_steps, show_ends), max_units,
              max_edges).draw(dg)


def render(net_or_unrolled, acts=None, grads=None, *, units=False, check=None, max_steps=12, show_ends=3,
           title=None, max_units=MAX_UNITS, max_edges=MAX_EDGES):
    """Draw a recurrent net, folded or unrolled, as a ``graphviz.Digraph`` (nothing is run).

    Parameters
    ----------
    net_or_unrolled : RecurrentNet, Unrolled or RunResult
        A RecurrentNet draws the folded net: one node per group, one edge per
        connection labelled with its weight and delay (dashed when delay >= 1),
        self-loops for recurrent connections.  An Unrolled (``net.unroll(T)``) or a
        RunResult (``ff.run(...)``) draws the unrolled net: one cluster per step
        (``cluster_t0`` .. ``cluster_tT``, t = 0 at the bottom), each weight copy in
        its weight's colour, clamped and targeted states marked, a legend mapping
        colours to weights.
    acts, grads : the run's ``acts`` / ``grads``, optional
        State values and dE/dstate on the nodes; each copy's own gradient on its
        edge (edge width ~ its norm; the full array in the tooltip) and the tied
        gradient in the legend.
    units : bool
        One node per unit and one edge per weight entry (the classic picture).
    check : EquivalenceReport, optional
        Colour each copy, state and step by its gradient's relative error against
        the time-domain BPTT (green within tolerance, orange near, red wrong).
    max_steps, show_ends : int
        With T > max_steps, draw the first and last ``show_ends`` steps and one
        "... k steps ..." node for the rest.
    title : str, optional
        Heading; default names the net (and the loss when grads are given).  "" for none.
    max_units, max_edges : int
        Limits for ``units=True``: units per layer, weight entries drawn.

    Returns
    -------
    graphviz.Digraph; write it with ``tinygraph.render.write(dg, "net.svg")``.

    Raises
    ------
    RenderError (a GraphError and ValueError) for an object that is not a net, acts/grads
    from another graph, a check report of another net or T, bad max_steps/show_ends;
    TooManyNodesError (a RenderError) when ``units=True`` exceeds max_units/max_edges.
    """
    max_steps = _int_param(max_steps, "max_steps", 1)
    show_ends = _int_param(show_ends, "show_ends", 1)
    net, em = _resolve(net_or_unrolled, acts, grads)
    if title is None:
        if em is None:
            title = f"the recurrent net '{net.name}'" + (": every unit and every weight" if units else "")
        else:
            title = f"'{net.name}' unrolled for {em.T} steps: one layer per step, the weights tied across steps"
            run_acts = acts if acts is not None else (grads.acts if grads is not None else None)
            if grads is not None and em.loss is not None and em.loss in run_acts:
                title += f"   (E = {float(run_acts[em.loss]):.4g})"
    dg = _new_digraph(net.name, title, ranksep="1.2" if units else "0.45")
    colours = tie_colours(net)
    chk = None if check is None else _Check(check, net, em)
    _draw(dg, net, em, colours, chk, acts, grads, units, max_steps, show_ends, max_units, max_edges)
    dg.node("legend", **(_legend(net, colours, check=chk, units=units) if em is None else
                         _legend(net, colours, em, grads, chk, units)))
    return dg


def render_side_by_side(net, steps=None, *, title=None, acts=None, grads=None, check=None, units=False,
                        max_steps=12, show_ends=3, max_units=MAX_UNITS, max_edges=MAX_EDGES):
    """The recurrent net and the same net unrolled for ``steps`` steps in one picture:
    two clusters ("recurrent net" and "unrolled for T steps"), one shared legend and a
    caption stating the equivalence.  A weight has the same colour on its folded edge
    and on every unrolled copy.

    ``net`` may also be an Unrolled or a RunResult (then ``steps`` is its T).  The
    other keywords are those of ``render``; units applies to both sides.

    Raises
    ------
    RenderError for a missing or bad ``steps`` or a wrong object; TypeError for an
    unknown keyword; see ``render`` for the rest.
    """
    where = "render_side_by_side"
    if isinstance(net, RecurrentNet):
        if steps is None:
            raise RenderError(f"{where}: pass steps=T, the number of steps to unroll net '{net.name}' for")
        net = net.unroll(_int_param(steps, "steps", 1, where))
    elif not isinstance(net, (Unrolled, RunResult)):
        raise RenderError(f"{where}: expected a RecurrentNet (with steps=T), an Unrolled or a RunResult, "
                          f"got {type(net).__name__}")
    rnet, em = _resolve(net, acts, grads)
    if steps is not None and steps != em.T:
        raise RenderError(f"{where}: steps={steps!r} but the unrolled net has T={em.T}")
    max_steps = _int_param(max_steps, "max_steps", 1, where)
    show_ends = _int_param(show_ends, "show_ends", 1, where)
    colours = tie_colours(rnet)
    chk = None if check is None else _Check(check, rnet, em)
    if title is None:
        title = f"'{rnet.name}': the recurrent net and the same net unrolled for {em.T} steps"
    dg = _new_digraph(rnet.name, title, CAPTION, ranksep="1.2" if units else "0.45")
    with dg.subgraph(name="cluster_folded") as left:
        left.attr(label="<<B>recurrent net</B>>", style="rounded", color="#888888", fontsize="13",
                  labelloc="b",  # with rankdir=BT dot flips labelloc: "b" is the top
                  tooltip=_tip("the recurrent net: groups and their (delayed) connections"))
        _draw(left, rnet, None, colours, chk, None, None, units, max_steps, show_ends, max_units, max_edges)
    with dg.subgraph(name="cluster_unrolled") as right:
        right.attr(label=f"<<B>unrolled for {em.T} steps</B>>", style="rounded", color="#888888", fontsize="13",
                   labelloc="b",
                   tooltip=_tip(f"the same net unrolled for {em.T} steps: layer t holds the states at step t"))
        _draw(right, rnet, em, colours, chk, acts, grads, units, max_steps, show_ends, max_units, max_edges)
    dg.node("legend", **_legend(rnet, colours, em, grads, chk, units, folded_too=True))
    return dg
