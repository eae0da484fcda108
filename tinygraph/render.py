"""Drawing a graph: one graphviz node per tinygraph node, with values and gradients.

Drawing is a separate layer: ``render`` only builds a ``graphviz.Digraph`` (DOT
text, testable without the ``dot`` program); ``write`` turns it into a file.
The helpers here (``summarize``, ``full_text``, ``palette``, ``node_attrs``,
``legend_label``, ``write``) are shared by the other renderers (``rnn``) so every
drawing of the package reads the same way.

Note: ``tinygraph.render`` is the *function* (the package re-exports it); import
the helpers with ``from tinygraph.render import summarize, write, ...``.
"""

import colorsys
import html
import shutil
from pathlib import Path

import graphviz
import numpy as np

from .errors import GraphError
from .io import atomic_write
from .node import Node
from .shapes import fmt

__all__ = ["render", "write", "summarize", "full_text", "palette", "node_id", "node_attrs", "legend_label",
           "RenderError", "TooManyNodesError", "GraphvizNotFoundError"]


class RenderError(GraphError, ValueError):
    """A drawing that cannot be made as asked (wrong graph, unknown file type, dot failed)."""


class TooManyNodesError(RenderError):
    """More nodes than ``max_nodes``: dot would be slow and the picture unreadable."""


class GraphvizNotFoundError(GraphError, RuntimeError):
    """Graphviz's ``dot`` program is needed for SVG/PNG/PDF output and is not installed."""


INSTALL_HINT = ("install Graphviz so that the 'dot' program is on PATH: `apt-get install graphviz` "
                "(Debian/Ubuntu), `brew install graphviz` (macOS), or see https://graphviz.org/download/. "
                "Writing a '.dot' (or '.gv') file still works without it.")

# ----------------------------------------------------------------- colours

# Okabe & Ito's colour-blind safe set (black left out: it makes a poor fill).
OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7")
# tab10 entries whose hues Okabe-Ito does not already cover.
_TAB10_EXTRA = ("#8C564B", "#9467BD", "#7F7F7F", "#BCBD22", "#17BECF")

# Node kinds: colour *and* shape differ, so the kinds stay apart in greyscale too.
KIND_STYLE = {
    "input": dict(shape="box", style="filled", fillcolor="#CFE8F7", color="#0072B2"),
    "param": dict(shape="box3d", style="filled", fillcolor="#FBE1A8", color="#A06E00"),
    "const": dict(shape="box", style="filled,dashed", fillcolor="#EEEEEE", color="#888888"),
    "op": dict(shape="box", style="rounded,filled", fillcolor="#FFFFFF", color="#444444"),
}
LOSS_BORDER = dict(peripheries="2", penwidth="1.6")
GRAD_COLOUR = "#B8450A"  # a darker Okabe-Ito vermillion: gradient text stays readable on light fills
MUTED = "#555555"
FONT = "Helvetica"
MONO = "Courier"  # fontconfig maps it to the system's monospace face


def palette(k):
    """``k`` distinct colours as '#RRGGBB' strings: Okabe-Ito first (colour-blind safe),
    then the tab10 hues it lacks, then generated hues (golden-angle steps).

    Beyond about 7 colours no palette stays distinguishable for every reader, which
    is why drawings also label what a colour means.
    """
    if int(k) != k or k < 0:
        raise ValueError(f"palette(k): k must be a non-negative integer, got {k!r}")
    out = list(OKABE_ITO + _TAB10_EXTRA)[:k]
    seen = set(out)
    i = 0
    while len(out) < k:
        hue = (0.11 + i * 0.381966) % 1.0
        light = (0.45, 0.62, 0.35)[(i // 7) % 3]
        sat = (0.75, 0.55)[(i // 21) % 2]
        r, g, b = colorsys.hls_to_rgb(hue, light, sat)
        colour = "#{:02X}{:02X}{:02X}".format(round(r * 255), round(g * 255), round(b * 255))
        if colour not in seen:
            seen.add(colour)
            out.append(colour)
        i += 1
    return out


def _luminance(colour):
    """WCAG relative luminance of '#RRGGBB', or None for a colour name we cannot read."""
    if not (isinstance(colour, str) and colour.startswith("#") and len(colour) in (7, 9)):
        return None
    try:
        rgb = [int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    except ValueError:
        return None
    lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def _text_on(fill):
    """Black or white text, whichever contrasts more with ``fill``."""
    lum = _luminance(fill)
    return "#FFFFFF" if lum is not None and lum < 0.179 else "#000000"


# ----------------------------------------------------------------- numbers as text

def _fmt_number(v):
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{float(v):.3g}"


def summarize(array, max_entries=12):
    """A short text for a value: the numbers themselves (3 significant digits) when
    the array has at most ``max_entries`` entries, else its shape, norm, min and max.

    Small arrays are worth reading in full; big ones only fit a label as statistics.
    May contain newlines (one per matrix row).
    """
    if array is None:
        return "(none)"
    a = np.asarray(array)
    if a.dtype == object:
        return repr(array)[:60]
    if a.size == 0:
        return f"shape {a.shape}, empty"
    if a.size <= max_entries:
        if a.ndim == 0:
            return _fmt_number(a.item())
        # pad to one width so a matrix's columns line up (labels use a monospace font)
        width = max(len(_fmt_number(v)) for v in a.flat)
        return np.array2string(a, separator=", ", max_line_width=10_000,
                               formatter={"all": lambda v: _fmt_number(v).rjust(width)})
    kind = "" if a.dtype.kind == "f" else f", {a.dtype}"
    f = a.astype(np.float64, copy=False)
    finite = np.isfinite(f)
    bad = int(f.size - np.count_nonzero(finite))
    ok = f[finite] if bad else f
    parts = [f"shape {a.shape}{kind}"]
    if ok.size:
        parts.append(f"norm {_fmt_number(np.sqrt(np.sum(ok * ok)))}")
        parts.append(f"min {_fmt_number(ok.min())} max {_fmt_number(ok.max())}")
    if bad:
        parts.append(f"{bad} non-finite")
    return ", ".join(parts[:2]) + "\n" + ", ".join(parts[2:]) if len(parts) > 2 else ", ".join(parts)


def full_text(array, threshold=100):
    """The tooltip text of a value: shape, dtype, statistics and the numbers
    (every entry up to ``threshold`` entries, numpy's ``...`` summary beyond)."""
    if array is None:
        return "(none)"
    a = np.asarray(array)
    if a.dtype == object:
        return repr(array)
    head = f"shape {a.shape}, {a.dtype}"
    if a.size > 1 and a.dtype.kind in "fiub":
        f = a.astype(np.float64, copy=False)
        with np.errstate(all="ignore"):
            head += (f", norm {np.sqrt(np.nansum(f * f)):.6g}, min {np.nanmin(f):.6g}, "
                     f"max {np.nanmax(f):.6g}") if not np.all(np.isnan(f)) else ", all NaN"
    body = np.array2string(a, threshold=threshold, edgeitems=3, precision=6, max_line_width=100,
                           separator=", ")
    return head + "\n" + body


# ----------------------------------------------------------------- DOT text

def node_id(node):
    """The DOT id of a node: stable across runs and free of ':' (a port separator in DOT)."""
    return f"n{node.index}"


def _esc_string(text):
    """Text for a DOT escString attribute (tooltip): backslashes and quotes made literal,
    newlines kept as graphviz's ``\\n``; ``nohtml`` so '<...>' is never read as HTML."""
    text = str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return graphviz.nohtml(text)


def _h(text):
    t = html.escape(str(text), quote=True)
    return t.replace("]", "&#93;") if t.strip() and set(t.strip()) == {"]"} else t  # (dot fails on a text of only ']')


def _lines(text, colour=None, size=None, face=None, prefix=""):
    """Escaped HTML-label lines, each left-aligned; continuation lines are indented
    by the width of ``prefix`` so a matrix keeps its columns under the first row."""
    text = prefix + str(text).replace("\n", "\n" + " " * len(prefix))
    attrs = ""
    if colour:
        attrs += f' COLOR="{colour}"'
    if size:
        attrs += f' POINT-SIZE="{size}"'
    if face:
        attrs += f' FACE="{face}"'
    body = '<BR ALIGN="LEFT"/>'.join(_h(line) for line in str(text).split("\n")) + '<BR ALIGN="LEFT"/>'
    return f"<FONT{attrs}>{body}</FONT>" if attrs else body


def _attrs_text(node, limit=28):
    if not node.attrs:
        return ""
    parts = []
    for k, v in node.attrs.items():
        r = repr(v) if not isinstance(v, np.ndarray) else f"array{v.shape}"
        parts.append(f"{k}={r}")
    text = ", ".join(parts)
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"


def _value_of(node, acts):
    """(value, note): the node's value from ``acts``, or why there is none."""
    if acts is not None:
        if node in acts:
            return acts[node], None
        return None, "not computed in this run"
    if node.op == "const":  # a const's value never changes; show it even without a run
        return node.value, None
    return None, None


def _grad_of(node, grads):
    if grads is None:
        return None, None
    if not grads.reached(node):
        return None, f"not reached from '{grads.loss.name}'"
    return grads[node], None


def node_attrs(node, acts=None, grads=None, *, colour=None, max_entries=12):
    """The graphviz attributes drawing ``node``: kind style, HTML label (name, op,
    static shape, value and gradient summaries) and a tooltip with the full numbers.

    ``colour`` overrides the fill (text switches to white on dark fills).  Shared
    with the ``rnn`` renderers so both draw nodes the same way.
    """
    kind = node.op if node.op in ("input", "param", "const") else "op"
    attrs = dict(KIND_STYLE[kind])
    text, muted, gcol = "#000000", MUTED, GRAD_COLOUR
    if colour is not None:
        attrs["fillcolor"] = colour
        if "filled" not in attrs["style"]:
            attrs["style"] += ",filled"
        text = _text_on(colour)
        muted = gcol = text  # the fixed accent colours may vanish on an arbitrary fill
    if grads is not None and node is grads.loss:
        attrs.update(LOSS_BORDER)

    value, vnote = _value_of(node, acts)
    grad, gnote = _grad_of(node, grads)

    rows = [f'<TR><TD ALIGN="LEFT"><FONT COLOR="{text}"><B>{_h(node.name)}</B></FONT></TD></TR>']
    desc = f"{node.op} {fmt(node.shape)}"
    extra = _attrs_text(node)
    if extra:
        desc += f"  {extra}"
    rows.append(f'<TR><TD ALIGN="LEFT" BALIGN="LEFT">{_lines(desc, muted, 10)}</TD></TR>')
    if value is not None or vnote:
        shown = summarize(value, max_entries) if vnote is None else vnote
        rows.append(f'<TR><TD ALIGN="LEFT" BALIGN="LEFT">{_lines(shown, text, 9, MONO, "= ")}</TD></TR>')
    if grad is not None or gnote:
        shown = summarize(grad, max_entries) if gnote is None else gnote
        rows.append(f'<TR><TD ALIGN="LEFT" BALIGN="LEFT">{_lines(shown, gcol, 9, MONO, "grad ")}</TD></TR>')
    attrs["label"] = ('<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="1">'
                      + "".join(rows) + "</TABLE>>")

    tip = [f"{node.name}: {node.op} {fmt(node.shape)}"]
    if node.attrs:
        tip.append("attrs: " + ", ".join(f"{k}={v!r}" for k, v in node.attrs.items())[:2000])
    if node.inputs:
        tip.append("inputs: " + ", ".join(i.name for i in node.inputs))
    if value is not None or vnote:
        tip.append("value: " + (full_text(value) if vnote is None else vnote))
    if grad is not None or gnote:
        what = f"gradient d({grads.loss.name})/d({node.name}): "
        tip.append(what + (full_text(grad) if gnote is None else gnote))
    attrs["tooltip"] = _esc_string("\n".join(tip))
    return attrs


def legend_label(title, entries):
    """An HTML graph label: a bold title over one swatch per (text, fill[, border[, text colour]]).

    A legend in the graph label takes no place in the layout and adds no nodes.
    """
    cells = []
    for entry in entries:
        text, fill = entry[0], entry[1]
        border = entry[2] if len(entry) > 2 else "#444444"
        ink = entry[3] if len(entry) > 3 else _text_on(fill)
        cells.append(f'<TD BGCOLOR="{_h(fill)}" COLOR="{_h(border)}" BORDER="1" CELLPADDING="3">'
                     f'<FONT COLOR="{_h(ink)}" POINT-SIZE="10">{_h(text)}</FONT></TD>')
    rows = []
    if title:
        rows.append(f'<TR><TD COLSPAN="{max(len(cells), 1)}"><B>{_h(title)}</B></TD></TR>')
    if cells:
        rows.append("<TR>" + "".join(cells) + "</TR>")
    if not rows:
        return ""
    return '<<TABLE BORDER="0" CELLSPACING="3" CELLPADDING="1">' + "".join(rows) + "</TABLE>>"


# ----------------------------------------------------------------- render

def _resolve(graph, key, what):
    try:
        return graph.own(key, what)
    except GraphError as exc:
        raise RenderError(str(exc)) from None


def render(graph, acts=None, grads=None, *, nodes=None, rankdir="BT", max_nodes=2000, title=None,
           highlight=None, legend=True, stub_span=6):
    """Draw ``graph`` as a ``graphviz.Digraph`` (DOT text; nothing is run).

    Parameters
    ----------
    graph : tinygraph.Graph
    acts : Activations, optional
        Show each node's value (the numbers when small, else shape/norm/min/max).
    grads : Gradients, optional
        Show dE/d(node) the same way; the loss node gets a double border.
    nodes : iterable of nodes or names, optional
        Draw only these (in graph order); inputs from outside the subset appear as
        small dashed stubs so cut edges stay visible.
    rankdir : str
        Graphviz rank direction; "BT" puts inputs at the bottom and the loss on top.
    max_nodes : int
        Refuse to draw more nodes than this: dot gets slow and the picture unreadable.
    title : str, optional
        Heading over the legend; default: the graph's name (and the loss).  "" for none.
    highlight : dict, optional
        {node or name: colour} fill overrides, e.g. one colour per tie group.
    legend : bool or list
        Show the swatches explaining the node kinds; a list of (text, colour) adds
        entries after them (e.g. what each ``highlight`` colour means).
    stub_span : int or None
        A source (input, param, const, or a node outside ``nodes``) whose uses lie more
        than this many layers apart is drawn in full once, and its far uses get a small
        dashed reference to it: dot's layout time grows with edge length squared, and a
        weight used at every step of a 300-step chain would otherwise take minutes.
        None draws every edge from the node itself.

    Returns
    -------
    graphviz.Digraph — write it with ``tinygraph.render.write`` or ``.pipe()``.

    Raises
    ------
    TooManyNodesError (a GraphError) past ``max_nodes``; RenderError when ``acts``,
    ``grads``, ``nodes`` or ``highlight`` name nodes of another graph or unknown names.
    """
    from .autodiff import Activations, Gradients
    from .graph import Graph
    if not isinstance(graph, Graph):
        raise RenderError(f"render: the first argument must be a tinygraph Graph, got {type(graph).__name__} "
                          f"{graph!r} (for a recurrent net use rnn.render)")
    if acts is not None and not isinstance(acts, Activations):
        raise RenderError(f"render: acts must be the Activations of graph.forward(...), got {type(acts).__name__}")
    if grads is not None and not isinstance(grads, Gradients):
        raise RenderError(f"render: grads must be the Gradients of acts.backward(...), got {type(grads).__name__}")
    if acts is not None and acts.graph is not graph:
        raise RenderError(f"render: acts come from graph '{acts.graph.name}', not from graph '{graph.name}'")
    if grads is not None and grads.graph is not graph:
        raise RenderError(f"render: grads come from graph '{grads.graph.name}', not from graph '{graph.name}'")

    if nodes is None:
        selected = list(graph.nodes)
    else:
        if isinstance(nodes, (Node, str)):
            nodes = [nodes]
        keep = {_resolve(graph, n, "render(nodes=...)").index for n in nodes}
        selected = [graph.nodes[i] for i in sorted(keep)]
    if len(selected) > max_nodes:
        raise TooManyNodesError(
            f"render: graph '{graph.name}' has {len(selected)} nodes to draw, more than max_nodes={max_nodes}; "
            f"pass nodes=[...] to draw a part of it (e.g. the ancestors of one output), "
            f"or raise max_nodes if you really want one picture of everything")

    colours = {}
    for key, colour in (highlight or {}).items():
        colours[_resolve(graph, key, "render(highlight=...)")] = colour

    dot = graphviz.Digraph(name=graph.name, comment=f"tinygraph graph '{graph.name}'")
    # ordering=in keeps a node's operands left to right in input order (a - b: a left of b)
    dot.attr("graph", rankdir=rankdir, ordering="in", nodesep="0.3", ranksep="0.35",
             fontname=FONT, labelloc="t", tooltip=_esc_string(f"tinygraph graph '{graph.name}'"))
    dot.attr("node", fontname=FONT, fontsize="11", margin="0.08,0.04")
    if len(selected) > 150:
        # cap dot's network-simplex passes: big drawings otherwise take minutes for little gain
        dot.attr("graph", nslimit="2", nslimit1="2", mclimit="0.5")
    dot.attr("edge", color="#555555", arrowsize="0.6", fontname=FONT, fontsize="9", fontcolor=MUTED,
             labeldistance="1.8", labelangle="-35")

    if title is None:
        title = f"graph '{graph.name}'"
        if len(selected) < len(graph.nodes):
            title += f" ({len(selected)} of {len(graph.nodes)} nodes)"
        if grads is not None:
            title += f", loss E = '{grads.loss.name}' = {summarize(grads.acts[grads.loss], 1)}"
    entries = []
    if legend is not False and legend is not None:
        for kind in ("input", "param", "const", "op"):
            style = KIND_STYLE[kind]
            entries.append((kind, style["fillcolor"], style["color"]))
        if grads is not None:
            entries.append(("grad = dE/d(node)", "#FFFFFF", GRAD_COLOUR, GRAD_COLOUR))
        if not isinstance(legend, bool):
            entries.extend(tuple(e) for e in legend)
    label = legend_label(title, entries)
    if label:
        dot.attr("graph", label=label)

    drawn = {n.index for n in selected}
    outside = sorted({i.index for n in selected for i in n.inputs if i.index not in drawn})
    for index in outside:
        o = graph.nodes[index]
        dot.node(node_id(o), label=_h(o.name), shape="box", style="dashed,rounded", color="#999999",
                 fontcolor="#777777", fontsize="9",
                 tooltip=_esc_string(f"{o.name}: {o.op} {fmt(o.shape)} (not in the drawn subset)"))
    for node in selected:
        dot.node(node_id(node), **node_attrs(node, acts, grads, colour=colours.get(node)))

    tails = _edge_tails(dot, graph, selected, drawn, stub_span, colours)
    for node in selected:
        many = len(node.inputs) > 1
        for pos, inp in enumerate(node.inputs):
            edge = dict(tooltip=_esc_string(f"{inp.name} -> {node.name} (input {pos})"))
            if many:
                # headlabel, not label: dot turns each edge label into an extra rank (slow, and tall)
                edge["headlabel"] = str(pos)
            if inp.index not in drawn:
                edge.update(style="dashed", color="#999999")
            dot.edge(tails.get((node.index, pos), node_id(inp)), node_id(node), **edge)
    return dot


def _depths(selected, drawn):
    """Longest-path layer of each drawn node (sources 0): a cheap stand-in for dot's ranks."""
    depth = {}
    for node in selected:
        ins = [depth[i.index] for i in node.inputs if i.index in drawn]
        depth[node.index] = 1 + max(ins, default=0) if node.inputs else 0
    return depth


def _edge_tails(dot, graph, selected, drawn, span, colours):
    """{(consumer index, input position): tail id} for the uses of a source that lie far
    from its first use; declares one small reference node per window of ``span`` layers."""
    if span is None:
        return {}
    depth = _depths(selected, drawn)
    uses = {}
    for node in selected:
        for pos, inp in enumerate(node.inputs):
            if inp.index not in drawn or inp.op in ("input", "param", "const"):
                uses.setdefault(inp.index, []).append((depth[node.index], node.index, pos))
    tails = {}
    for index, found in uses.items():
        found.sort()
        anchor, k = found[0][0], 0
        src = graph.nodes[index]
        for d, consumer, pos in found:
            if d - anchor > span:
                anchor, k = d, k + 1
                kind = KIND_STYLE.get(src.op, KIND_STYLE["op"]) if index in drawn else {}
                fill = colours.get(src, kind.get("fillcolor", "#FFFFFF"))
                dot.node(f"{node_id(src)}r{k}", label=_h(src.name), shape="box", style="dashed,rounded,filled",
                         fillcolor=fill, color=kind.get("color", "#999999"), fontcolor=_text_on(fill),
                         fontsize="9", tooltip=_esc_string(
                             f"{src.name}: {src.op} {fmt(src.shape)} (a reference: drawn in full once, "
                             f"nearer its first use)"))
            if k:
                tails[(consumer, pos)] = f"{node_id(src)}r{k}"
    return tails


# ----------------------------------------------------------------- files

_SOURCE_EXTS = ("dot", "gv")


def _atomic_write(path, data):
    atomic_write(path, lambda fh: fh.write(data))


def write(digraph, path):
    """Write a drawing to ``path`` in the format its extension names (.svg, .png,
    .pdf, or any other Graphviz output format); ``.dot``/``.gv`` write the DOT text
    and need no Graphviz install.  The file is replaced atomically.  Returns the path.

    Raises
    ------
    GraphvizNotFoundError (a GraphError) when the format needs the ``dot`` program
    and it is not installed (the message says how to install it); RenderError for a
    missing or unknown extension, or when dot rejects the drawing.
    """
    path = Path(path)
    ext = path.suffix.lower().lstrip(".")
    if not ext:
        raise RenderError(f"write: '{path}' has no extension; end it in .svg, .png, .pdf or .dot")
    if ext not in _SOURCE_EXTS and ext not in graphviz.FORMATS:
        raise RenderError(f"write: unknown output format '.{ext}' for '{path}'; use .svg, .png, .pdf or .dot")
    path.parent.mkdir(parents=True, exist_ok=True)
    if ext in _SOURCE_EXTS:
        _atomic_write(path, digraph.source.encode("utf-8"))
        return str(path)
    if shutil.which("dot") is None:
        raise GraphvizNotFoundError(f"write: cannot make '{path}': Graphviz's 'dot' program was not found; "
                                    + INSTALL_HINT)
    try:
        data = digraph.pipe(format=ext)
    except graphviz.ExecutableNotFound:
        raise GraphvizNotFoundError(f"write: cannot make '{path}': Graphviz's 'dot' program could not be run; "
                                    + INSTALL_HINT) from None
    except graphviz.CalledProcessError as exc:
        err = exc.stderr.decode("utf-8", "replace") if isinstance(exc.stderr, bytes) else str(exc.stderr)
        raise RenderError(f"write: dot failed to make '{path}': {err.strip() or exc}") from None
    _atomic_write(path, data)
    return str(path)
