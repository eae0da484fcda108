"""Figures that make backpropagation through time visible (matplotlib).

Every function takes data objects (an ``Inspection``, a ``History``, arrays), writes
one file and returns its path as a string.  matplotlib is imported only inside the
functions, so ``import rnn`` works without it; a figure asked for without it raises
``MatplotlibNotFoundError`` saying ``pip install tinygraph[viz]``.  No function uses
pyplot: each draws on its own ``matplotlib.figure.Figure``, so nothing changes the
caller's backend or keeps figures alive.

- ``delta_heatmap``: dE/d(state) of every unit (rows) at every step (columns).
- ``gradient_norms_over_time`` (with ``norms_for_scales``): how much the last state
  depends on the state at step t, for a few weight scales: small weights vanish,
  large ones explode.
- ``peeling_frames`` (with ``frames_to_gif``): the backward pass peeling the stack
  of activities, one frame per step, with each tied weight's per-step pieces and
  their running sum.
- ``training_curves``: loss (and a metric such as accuracy) per epoch.
"""

import functools
import warnings
from pathlib import Path

import numpy as np

from tinygraph.errors import GraphError
from tinygraph.io import atomic_write

from .bptt import bptt
from .data import resolve_all
from .inspect import inspect
from .train import SequenceData

__all__ = ["delta_heatmap", "gradient_norms_over_time", "norms_for_scales", "peeling_frames", "frames_to_gif",
           "training_curves", "MatplotlibNotFoundError", "FigureError", "DPI"]

DPI = 110
INSTALL_HINT = "pip install tinygraph[viz]"

# Okabe & Ito's colour-blind safe colours (the same family tinygraph.render uses).
BLUE, VERMILION, GREY = "#0072B2", "#D55E00", "#777777"
DELTA_CMAP = "RdBu_r"   # diverging: red = positive dE/dstate, blue = negative, white = 0
STATE_CMAP = "Greys"    # activities: white = low, black = high (as in Hinton diagrams)

_RC = {
    "font.size": 11,
    "axes.titlesize": 13,
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
    "figure.titlesize": 14,
    "axes.spines.top": False,
    "axes.spines.right": False,
}




class MatplotlibNotFoundError(GraphError, ImportError):
    """matplotlib (the ``viz`` extra) is needed to draw a figure and is not installed.

    Also an ImportError, so ``except ImportError`` around optional plotting keeps working."""


class FigureError(GraphError, ValueError):
    """A figure that cannot be drawn from what was given (empty curves, unknown metric, bad path)."""


# ----------------------------------------------------------------- plumbing

def _matplotlib(where):
    try:
        import matplotlib
        from matplotlib.figure import Figure  # noqa: F401  (checks the part we use)
    except ImportError:
        raise MatplotlibNotFoundError(
            f"{where}: drawing figures needs matplotlib, which is not installed; install the viz extra with "
            f"`{INSTALL_HINT}` (or `pip install matplotlib pillow`)") from None
    return matplotlib


def _styled(func):
    """Run a drawing function inside matplotlib's rc_context with tinygraph's font sizes
    (restored afterwards, also on errors); a clear error first when matplotlib is missing."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        mpl = _matplotlib(func.__name__.lstrip("_"))
        with mpl.rc_context(_RC):
            return func(*args, **kwargs)
    return wrapper


def _figure(where, figsize, layout="constrained"):
    """A new Figure, without pyplot (so no global figure list, no backend change)."""
    _matplotlib(where)
    from matplotlib.figure import Figure
    return Figure(figsize=figsize, layout=layout)


def _save(fig, path, where):
    """Write ``fig`` to ``path`` (format from the extension) atomically; return the path."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    supported = fig.canvas.get_supported_filetypes()
    if fmt not in supported:
        raise FigureError(f"{where}: cannot write '{path}': the extension must be one of "
                          f"{', '.join('.' + k for k in sorted(supported))} (.png is the usual one)")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=DPI, facecolor="white"))
    return str(path)


def _groups(net, group, where):
    """The group names a figure shows: all of them (None), one name, or a list of names."""
    if group is None:
        return list(net.groups)
    names = [group] if isinstance(group, str) else list(group)
    if not names:
        raise FigureError(f"{where}: group selects no group (groups: {list(net.groups)})")
    for g in names:
        net.group(g, where)  # NetError naming the groups when unknown
    return names


def _pick_example(arr, example, where):
    """(T+1, units) from a (T+1, batch, units) array: one example, or the batch mean when example is None."""
    if example is None:
        return arr.mean(axis=1)
    batch = arr.shape[1]
    if isinstance(example, bool) or not isinstance(example, (int, np.integer)) or not -batch <= example < batch:
        raise FigureError(f"{where}: example must be an int in 0..{batch - 1} (the batch has {batch}), "
                          f"or None for the batch mean; got {example!r}")
    return arr[:, example]


def _target_cells(net, steps, targets):
    """{(group, t, unit)} for every unit that has a target at step t."""
    cells = set()
    for tg in targets or ():
        t_steps, units, _values, _mask = tg.resolve(net, steps)
        size = net.groups[tg.group].size
        us = range(size) if units is None else [int(u) for u in units]
        for t in t_steps:
            for u in us:
                cells.add((tg.group, t, u))
    return cells


def _sym_limit(*arrays):
    m = max((float(np.max(np.abs(a))) for a in arrays if np.size(a)), default=0.0)
    return m if m > 0 else 1.0


def _titles(fig, ax, title, sub, width_in):
    """A bold figure title and, under it, a smaller explanation wrapped to the figure's width."""
    import textwrap
    fig.suptitle(title, x=0.01, ha="left", fontweight="bold")
    chars = max(40, int(width_in * 72 / 9.5 * 1.6))  # ~ characters of 9.5 pt text per line
    wrapped = "\n".join(textwrap.fill(part, chars, break_on_hyphens=False) for part in sub.split("\n"))
    ax.set_title(wrapped, loc="left", fontsize=9.5, color="#333333")


def _fmt(v):
    """A short number for a table cell: 3 significant digits, scientific when tiny or huge."""
    if v == 0:
        return "0"
    if 1e-3 <= abs(v) < 1e4:
        return f"{v:.3g}"
    return f"{v:.2e}"


# ----------------------------------------------------------------- dE/dstate heatmap

@_styled
def delta_heatmap(inspection, path, group=None, example=None, targets=None, note=None, annotate=None):
    """Draw dE/d(state) as a heatmap: units (rows, grouped by group) x time steps t = 0..T (columns).

    Parameters
    ----------
    inspection : rnn.Inspection (from ``rnn.inspect``)
    path : where to write the figure (.png, .svg, .pdf)
    group : None (every group), a group name, or a list of names
    example : int or None
        Which example of the batch to show; None shows the mean over the batch.
    targets : the run's list of rnn.Target, optional; cells with a target get a dot.
    note : str, optional; one more line under the title (say what the data is).
    annotate : bool or None; write each cell's value in it (None: when the grid is small).

    Returns
    -------
    str, the path written.

    Raises
    ------
    MatplotlibNotFoundError when matplotlib is missing; NetError for an unknown group;
    FigureError for a bad example index or file extension.
    """
    where = "delta_heatmap"
    net, T = inspection.net, inspection.steps
    names = _groups(net, group, where)
    blocks = [_pick_example(np.asarray(inspection.state_deltas[g]), example, where).T for g in names]
    M = np.concatenate(blocks, axis=0)  # (units, T+1)
    n_rows, n_cols = M.shape
    batch = np.asarray(inspection.state_deltas[names[0]]).shape[1]
    cells = _target_cells(net, T, targets)
    if annotate is None:
        annotate = n_rows * n_cols <= 160

    width = min(4.5 + 0.55 * n_cols, 16)
    height = min(2.6 + 0.42 * n_rows, 12)
    fig = _figure(where, (width, height))
    ax = fig.add_subplot()
    lim = _sym_limit(M)
    im = ax.imshow(M, cmap=DELTA_CMAP, vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")

    # unit labels, group separators and group names
    labels, starts, row = [], [], 0
    for g, block in zip(names, blocks):
        starts.append(row)
        labels += [f"{g}[{u}]" for u in range(block.shape[0])]
        row += block.shape[0]
    if n_rows <= 40:
        ax.set_yticks(range(n_rows), labels)
    else:
        ax.set_yticks([s + b.shape[0] / 2 - 0.5 for s, b in zip(starts, blocks)], names)
    for s in starts[1:]:
        ax.axhline(s - 0.5, color="black", lw=2)
    for g, s, b in zip(names, starts, blocks):
        role = net.groups[g].role
        ax.annotate(f"{role}\ngroup '{g}'", xy=(n_cols - 0.5, s + b.shape[0] / 2 - 0.5),
                    xytext=(8, 0), textcoords="offset points", va="center", ha="left", fontsize=10,
                    color="#333333", annotation_clip=False)
    ax.set_ylim(n_rows - 0.5, -0.5)

    step_ticks = range(n_cols) if n_cols <= 30 else range(0, n_cols, max(1, n_cols // 15))
    ax.set_xticks(list(step_ticks))
    ax.set_xlabel("time step t  (= layer t of the unrolled net; t = 0 holds the initial states)")
    ax.set_ylabel("unit")
    for side in ("top", "right"):
        ax.spines[side].set_visible(True)

    if annotate:
        for r in range(n_rows):
            for c in range(n_cols):
                v = M[r, c]
                strong = abs(v) > 0.55 * lim
                ax.text(c, r, "0" if v == 0 else f"{v:.2f}" if abs(v) >= 0.005 else "~0",
                        ha="center", va="center", fontsize=7.5, color="white" if strong else "#222222")
    if cells:
        row = 0
        for g, block in zip(names, blocks):
            for u in range(block.shape[0]):
                for t in range(n_cols):
                    if (g, t, u) in cells:
                        ax.plot(t + 0.36, row + u - 0.3, marker="o", ms=4, color="black", mec="white", mew=0.6)
            row += block.shape[0]

    cb = fig.colorbar(im, ax=ax, pad=0.10 if n_cols < 20 else 0.07, shrink=0.95)
    cb.set_label("dE/dstate\nred: raising the state raises the error\nblue: raising it lowers the error",
                 fontsize=10)
    which = ("one example" if batch == 1 else f"example {example} of {batch}" if example is not None
             else f"mean over a batch of {batch}")
    sub = (f"net '{net.name}', {which}, loss {inspection.loss:.4g}.  The backward pass fills these columns "
           f"from right (t = {T}) to left (t = 0).")
    if cells:
        sub += "  A dot marks a unit that has a target at that step."
    if note:
        sub = note + "  " + sub
    _titles(fig, ax, "How the error depends on each unit's state at each step (dE/dstate)", sub, width)
    return _save(fig, path, where)


# ----------------------------------------------------------------- vanishing and exploding gradients

def _recurrent_group(net):
    """The group whose state carries information through time: one with a connection to itself,
    else the largest group that is not an input."""
    for c in net.connections.values():
        if c.src == c.dst:
            return c.src
    inner = [g for g in net.groups.values() if g.role != "input"] or list(net.groups.values())
    return max(inner, key=lambda g: g.size).name


def norms_for_scales(net_factory, steps, inputs, targets, scales, group=None, measure="jacobian"):
    """For nets built at several weight scales, how much the last state depends on each step's state.

    Parameters
    ----------
    net_factory : callable(scale) -> RecurrentNet
    steps, inputs, targets : as for ``rnn.inspect``
    scales : iterable of numbers
    group : the group whose state is followed; default: a group connected to itself
        (the recurrent one), else the largest non-input group.
    measure : "jacobian" (default): ``||d state_T[group] / d state_t[group]||`` for t = 0..T
        (Inspection.jacobian_norms), which shrinks (vanishes) or grows (explodes)
        geometrically as t goes back; "delta": ``||dE/dstate_t||`` over every unit
        (Inspection.delta_norms), which mixes in where the targets are.

    Returns
    -------
    dict {f"scale {s:g}": array of T+1 norms}, in the order of ``scales``.

    Raises
    ------
    FigureError for no scales or an unknown measure; whatever ``net_factory`` or
    ``rnn.inspect`` raise for nets or data that do not fit.
    """
    if measure not in ("jacobian", "delta"):
        raise FigureError(f"norms_for_scales: measure must be 'jacobian' or 'delta', got {measure!r}")
    scales = list(scales)
    if not scales:
        raise FigureError("norms_for_scales: give at least one scale")
    out = {}
    for s in scales:
        net = net_factory(s)
        ins = inspect(net, steps, inputs, targets)
        if measure == "delta":
            out[f"scale {s:g}"] = np.asarray(ins.delta_norms, dtype=np.float64)
        else:
            g = _recurrent_group(net) if group is None else group
            out[f"scale {s:g}"] = np.asarray(ins.jacobian_norms(g), dtype=np.float64)
    return out


@_styled
def gradient_norms_over_time(curves, path, title=None, ylabel=None, note=None):
    """Plot norms per time step on a log scale, one line per curve.

    Parameters
    ----------
    curves : dict {label: array of norms for t = 0..T} (e.g. from ``norms_for_scales``)
    path : where to write the figure
    title, ylabel : override the defaults (which describe ``||d state_T / d state_t||``)
    note : str, optional; a line under the title.

    Returns
    -------
    str, the path written.

    Raises
    ------
    MatplotlibNotFoundError; FigureError for no curves or a curve that is not a 1-D array.
    """
    where = "gradient_norms_over_time"
    if not curves:
        raise FigureError(f"{where}: curves is empty; give {{label: norms per step}}")
    data = {}
    for label, v in curves.items():
        arr = np.asarray(v, dtype=np.float64)
        if arr.ndim != 1 or arr.size == 0:
            raise FigureError(f"{where}: curve {label!r} must be a 1-D array of norms per step, got shape {arr.shape}")
        data[str(label)] = np.where((arr > 0) & np.isfinite(arr), arr, np.nan)  # log scale: no zeros
    T = max(len(a) for a in data.values()) - 1

    fig = _figure(where, (10.5, 6.2))
    ax = fig.add_subplot()
    mpl = _matplotlib(where)
    cmap = mpl.colormaps["viridis"]
    n = len(data)
    for i, (label, arr) in enumerate(data.items()):
        color = cmap(0.05 + 0.8 * i / max(n - 1, 1))
        ax.plot(np.arange(len(arr)), arr, marker="o", ms=4.5, lw=2.2, color=color, label=label)
        last = np.flatnonzero(np.isfinite(arr))
        if last.size:
            k = last[0]  # label each line at its earliest step, where the lines are furthest apart
            ax.annotate(label, (k, arr[k]), xytext=(-6, 0), textcoords="offset points", ha="right",
                        va="center", fontsize=9.5, color=color, fontweight="bold")
    ax.set_yscale("log")
    ax.axhline(1.0, color=GREY, lw=1.2, ls="--", label="1: no shrinking, no growing")
    ax.set_xlim(-0.12 * max(T, 1) - 0.6, T + 0.4)
    ax.set_xticks(range(0, T + 1, 1 if T <= 30 else max(1, T // 15)))
    ax.set_xlabel("time step t   (the backward pass starts at t = T on the right and goes left, back in time)")
    ax.set_ylabel(ylabel or "||d state_T / d state_t||   (log scale)")
    ax.grid(True, which="major", axis="y", color="#DDDDDD", lw=0.8)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, title="recurrent weight scale")
    sub = ("Each step back multiplies the gradient by the recurrent weights and the units' slopes: "
           "small weights make it vanish, large ones make it explode.")
    if note:
        sub = sub + "\n" + note
    _titles(fig, ax, title or "How much the last state still depends on the state at step t", sub, 10.5)
    return _save(fig, path, where)


# ----------------------------------------------------------------- the backward pass peeling the stack

def peeling_frames(net, steps, inputs, targets, out_dir, example=0, note=None, prefix="peel"):
    """Draw the backward pass peeling the stack: one PNG frame per backward step t = T, T-1, ..., 0.

    Each frame shows the unrolled layers as a column of boxes (t = 0 at the bottom).
    Layers still on the stack show their activities (states); the layer being peeled
    is highlighted; layers already peeled show their dE/dstate.  A side panel lists,
    for every tied weight, the piece of its gradient that step t adds and the running
    sum, which after t = 0 is the gradient every copy of the weight is changed by.
    The numbers come from ``rnn.bptt`` (the time-domain backward pass, literally a stack).

    Parameters
    ----------
    net : RecurrentNet; steps : T; inputs, targets : lists of rnn.Clamp / rnn.Target
    out_dir : folder for the frames (created if missing)
    example : int or None
        The example of the batch to run (the frames then show one example and its
        gradients); None runs the whole batch, shows its first example's units and
        the batch's summed gradients.
    note : str, optional; a line under the title (say what the example is).
    prefix : file name prefix; frames are ``{prefix}_{k}_t{t}.png``, k = 0..T.

    Returns
    -------
    list of T+1 paths (str), in backward order (t = T first).

    Raises
    ------
    MatplotlibNotFoundError; DataError / NetError (from ``rnn.bptt``) for data that does
    not fit; FigureError for a bad example index.
    """
    where = "peeling_frames"
    _matplotlib(where)
    inputs, targets = list(inputs or []), list(targets or [])
    _, _, batch = resolve_all(net, steps, inputs, targets)  # checks the data, gives the batch size
    if example is not None:
        if isinstance(example, bool) or not isinstance(example, (int, np.integer)) or not 0 <= example < batch:
            raise FigureError(f"{where}: example must be an int in 0..{batch - 1} (the batch has "
                              f"{batch}), or None for the whole batch; got {example!r}")
        if batch > 1:
            inputs, targets = SequenceData(inputs, targets).subset(slice(int(example), int(example) + 1))
    ref = bptt(net, steps, inputs, targets)
    T = steps
    order = list(net.groups)
    shown = 0  # which row of the batch the unit squares show
    S = {g: np.stack([ref.states[t][g][shown] for t in range(T + 1)]) for g in order}   # (T+1, units)
    D = {g: np.stack([ref.deltas[t][g][shown] for t in range(T + 1)]) for g in order}
    cells = _target_cells(net, T, targets)
    weights = list(net.weights)
    # per-step pieces and running sums, in backward order
    piece = {w: {t: np.asarray(ref.step_grads[w].get(t, 0.0)) for t in range(T + 1)} for w in weights}
    has = {w: set(ref.step_grads[w]) for w in weights}

    s_all = np.concatenate([S[g].ravel() for g in order])
    s_lo, s_hi = float(s_all.min()), float(s_all.max())
    if s_hi - s_lo < 1e-12:
        s_lo, s_hi = s_lo - 0.5, s_hi + 0.5
    d_lim = _sym_limit(*[D[g] for g in order])

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    width = max(2, len(str(T)))
    paths = []
    running = {w: np.zeros_like(np.asarray(net.weights[w], dtype=np.float64)) for w in weights}
    for k, t in enumerate(range(T, -1, -1)):
        for w in weights:
            if t in has[w]:
                running[w] = running[w] + piece[w][t]
        path = out_dir / f"{prefix}_{k:0{width}d}_t{t:0{width}d}.png"
        paths.append(_peel_frame(net, T, t, k, S, D, (s_lo, s_hi), d_lim, cells, weights, piece, has, running,
                                 ref, example, note, path))
    return paths


@_styled
def _peel_frame(net, T, t, k, S, D, s_range, d_lim, cells, weights, piece, has, running, ref, example, note, path):
    where = "peeling_frames"
    mpl = _matplotlib(where)
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

    order = list(net.groups)
    sizes = [net.groups[g].size for g in order]
    gap = 0.8
    x0 = {}
    x = 0.0
    for g, n in zip(order, sizes):
        x0[g] = x
        x += n + gap
    row_w = x - gap
    n_rows = T + 1
    many = sum(sizes) > 14 or n_rows > 18

    fig_h = min(max(6.0, 1.6 + 0.5 * n_rows), 13)
    # fixed size and no tight bbox: every frame has the same pixels (a GIF needs that)
    fig = _figure(where, (13.5, fig_h), layout=None)
    mpl_norm_s = Normalize(*s_range)
    mpl_norm_d = Normalize(-d_lim, d_lim)
    cmap_s = mpl.colormaps[STATE_CMAP]
    cmap_d = mpl.colormaps[DELTA_CMAP]

    ax = fig.add_axes([0.075, 0.115, 0.47, 0.745])
    ax.set_xlim(-1.6, row_w + 4.6)
    ax.set_ylim(-0.7, n_rows + 0.3)
    ax.axis("off")
    for g in order:
        n = net.groups[g].size
        ax.text(x0[g] + n / 2 - 0.5 + 0.5, n_rows - 0.05, f"{g}\n({net.groups[g].role})", ha="center",
                va="bottom", fontsize=9.5, fontweight="bold")
    for layer in range(n_rows):
        y = layer
        peeled = layer > t
        current = layer == t
        edge = VERMILION if current else (BLUE if peeled else GREY)
        face = "#FFF1E0" if current else ("#EEF5FB" if peeled else "#F7F7F7")
        ax.add_patch(Rectangle((-0.25, y + 0.06), row_w + 0.5, 0.88, facecolor=face, edgecolor=edge,
                               lw=3.2 if current else 1.2, zorder=1))
        ax.text(-0.45, y + 0.5, f"t = {layer}", ha="right", va="center", fontsize=10,
                fontweight="bold" if current else "normal", color=VERMILION if current else "#333333")
        status = "peeling now" if current else ("peeled: dE/dstate" if peeled else "on the stack: states")
        ax.text(row_w + 0.45, y + 0.5, status, ha="left", va="center", fontsize=9.5,
                color=VERMILION if current else (BLUE if peeled else GREY),
                fontweight="bold" if current else "normal")
        for g in order:
            vals = D[g][layer] if (peeled or current) else S[g][layer]
            for u, v in enumerate(vals):
                color = cmap_d(mpl_norm_d(v)) if (peeled or current) else cmap_s(mpl_norm_s(v))
                ax.add_patch(Rectangle((x0[g] + u + 0.1, y + 0.16), 0.8, 0.68, facecolor=color,
                                       edgecolor="#555555", lw=0.6, zorder=2))
                if not many:
                    lum = np.dot(color[:3], [0.299, 0.587, 0.114])
                    ax.text(x0[g] + u + 0.5, y + 0.5, _cell(v), ha="center", va="center", fontsize=7.5,
                            color="white" if lum < 0.5 else "black", zorder=3)
                if (g, layer, u) in cells:
                    ax.plot(x0[g] + u + 0.82, y + 0.78, marker="o", ms=4.5, color="black", mec="white",
                            mew=0.7, zorder=4)

    # colour keys
    from matplotlib.cm import ScalarMappable
    cax_s = fig.add_axes([0.10, 0.04, 0.19, 0.016])
    cax_d = fig.add_axes([0.34, 0.04, 0.19, 0.016])
    cb = fig.colorbar(ScalarMappable(mpl_norm_s, cmap_s), cax=cax_s, orientation="horizontal")
    cb.ax.tick_params(labelsize=8)
    cb.set_label("state (activity) of a unit still on the stack", fontsize=9.5)
    cb.ax.xaxis.set_label_position("top")
    cb = fig.colorbar(ScalarMappable(mpl_norm_d, cmap_d), cax=cax_d, orientation="horizontal")
    cb.ax.tick_params(labelsize=8)
    cb.set_label("dE/dstate of a peeled unit", fontsize=9.5)
    cb.ax.xaxis.set_label_position("top")

    # titles
    which = ("" if example is None else f"example {example}; ")
    fig.text(0.02, 0.975, f"Backpropagation through time, backward step {k + 1} of {T + 1}: "
             f"peeling layer t = {t} off the stack", fontsize=14, fontweight="bold", va="top")
    sub = (f"net '{net.name}', {which}loss {ref.loss:.4g}.  Each box is one layer (time step) of the unrolled "
           f"net; each square is a unit; a dot marks a unit with a target at that step.")
    if note:
        sub = note + "  " + sub
    import textwrap
    fig.text(0.02, 0.94, textwrap.fill(sub, 165, break_on_hyphens=False), fontsize=9.5, color="#333333", va="top", linespacing=1.3)

    # side panel: the tied weights' pieces
    side = fig.add_axes([0.575, 0.115, 0.41, 0.745])
    side.axis("off")
    side.set_xlim(0, 1)
    side.set_ylim(0, 1)
    side.text(0, 1.0, "Tied weights: one gradient piece per step", fontsize=12, fontweight="bold", va="top")
    first = (f"Peeling layer {t} gives each weight the piece from its copy at step {t}.\n" if t > 0 else
             "Layer 0 holds no copies of the connection weights; the sums are final.\n")
    side.text(0, 0.945, first +
              "The pieces are added up. Sizes are norms ||.||; pieces of opposite\n"
              "sign cancel, so a sum can be smaller than one of its pieces.", fontsize=9.5, va="top",
              color="#333333", linespacing=1.3)
    inch = 1.0 / (0.745 * fig_h)           # one inch in the side panel's axes units
    text_h = 10 / 72 * inch                 # height of a 10 pt line
    top = 0.945 - 0.66 * inch
    side.text(0.0, top, "weight", fontsize=10, fontweight="bold", va="top", family="monospace")
    side.text(0.40, top, f"added at t = {t}", fontsize=10, fontweight="bold", va="top", family="monospace",
              color=VERMILION)
    side.text(0.72, top, f"sum t = {T}..{t}", fontsize=10, fontweight="bold", va="top", family="monospace",
              color=BLUE)
    line_h = min(0.50 * inch, 0.5 / max(len(weights), 1))
    sum_norms = {w: float(np.linalg.norm(running[w])) for w in weights}
    biggest = max(max(sum_norms.values(), default=0.0),
                  max((float(np.linalg.norm(piece[w][t])) for w in weights if t in has[w]), default=0.0), 1e-300)
    for i, w in enumerate(weights):
        y = top - 0.3 * inch - i * line_h
        name = w if len(w) <= 14 else w[:13] + "…"
        side.text(0.0, y, name, fontsize=10, va="top", family="monospace")
        if t in has[w]:
            pn = float(np.linalg.norm(piece[w][t]))
            side.text(0.40, y, _fmt(pn), fontsize=10, va="top", family="monospace", color=VERMILION)
            if pn > 0:
                side.add_patch(Rectangle((0.40, y - text_h * 1.8), 0.27 * pn / biggest, text_h * 0.35,
                                         color=VERMILION, alpha=0.8))
        else:
            side.text(0.40, y, "-", fontsize=10, va="top", family="monospace", color=GREY)
        side.text(0.72, y, _fmt(sum_norms[w]), fontsize=10, va="top", family="monospace", color=BLUE)
        if sum_norms[w] > 0:
            side.add_patch(Rectangle((0.72, y - text_h * 1.8), 0.27 * sum_norms[w] / biggest, text_h * 0.35,
                                     color=BLUE, alpha=0.8))
    y = top - 0.3 * inch - len(weights) * line_h - 0.1 * inch
    if t == 0:
        if any(0 in has[w] for w in weights):
            msg = ("Layer 0 holds the initial states. They are learned here, so they get\n"
                   "their gradient now. The backward pass is done: every copy of each\n"
                   "weight is changed by the same amount, the sum on the right.")
        else:
            msg = ("Layer 0 holds the initial states: nothing computed them, so no weight\n"
                   "gets a piece here. The backward pass is done: every copy of each\n"
                   "weight is changed by the same amount, the sum on the right.")
    else:
        msg = (f"dE/dstate at t = {t} is now complete: it got the derivatives sent\n"
               f"back from the layers above, plus the error derivative of any target\n"
               f"at this step. From it come the weight pieces, and the derivatives\n"
               f"sent down to the states that step {t} read.")
    side.text(0.0, y, msg, fontsize=9.5, va="top", color="#222222", linespacing=1.35)
    side.text(0.0, 0.0, "One backward step = backprop through one layer of the\n"
              "feed-forward net whose layers share (tie) their weights.", fontsize=9.5, va="bottom",
              color=GREY, style="italic")
    return _save(fig, path, where)


def _cell(v):
    if v == 0:
        return "0"
    if abs(v) >= 0.00995:  # shows as 0.01 or more
        return f"{v:.2f}"
    return f"{v:.0e}".replace("e-0", "e-")


def frames_to_gif(frame_paths, gif_path, duration_ms=700, last_ms=None):
    """Join PNG frames into an animated GIF (looping) with Pillow.

    ``last_ms`` (default 3 x ``duration_ms``) holds the last frame longer.  Returns the
    path written, or None (with a warning) when Pillow is not installed.

    Raises
    ------
    FigureError for no frames, a non-positive duration, or frames of different sizes.
    """
    where = "frames_to_gif"
    frame_paths = [str(p) for p in frame_paths]
    if not frame_paths:
        raise FigureError(f"{where}: no frames given")
    if not duration_ms or duration_ms <= 0:
        raise FigureError(f"{where}: duration_ms must be > 0, got {duration_ms!r}")
    try:
        from PIL import Image
    except ImportError:
        warnings.warn(f"{where}: Pillow is not installed, so no GIF was written ({INSTALL_HINT} installs it); "
                      f"the {len(frame_paths)} PNG frames are there", RuntimeWarning, stacklevel=2)
        return None
    images = []
    for p in frame_paths:
        with Image.open(p) as im:
            images.append(im.convert("RGB"))
    sizes = {im.size for im in images}
    if len(sizes) != 1:
        raise FigureError(f"{where}: the frames differ in size ({sorted(sizes)}); a GIF needs equal frames")
    frames = [im.quantize(colors=255, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
              for im in images]
    durations = [int(duration_ms)] * len(frames)
    durations[-1] = int(last_ms if last_ms is not None else 3 * duration_ms)
    gif_path = Path(gif_path)
    gif_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(gif_path, lambda f: frames[0].save(f, format="GIF", save_all=True, append_images=frames[1:],
                                                    duration=durations, loop=0, disposal=1))
    return str(gif_path)


# ----------------------------------------------------------------- training curves

@_styled
def training_curves(history, path, metric=None, title=None, note=None):
    """Plot the loss per epoch, and optionally a metric (e.g. "accuracy") on a second axis.

    Parameters
    ----------
    history : rnn.train.History (``.loss``: one mean loss per epoch; ``.metrics``: dicts)
    path : where to write the figure
    metric : key of the dicts in ``history.metrics`` to plot on the right axis, optional
    title, note : override the title; add a line under it.

    Returns
    -------
    str, the path written.

    Raises
    ------
    MatplotlibNotFoundError; FigureError when the history has no epochs or lacks the metric.
    """
    where = "training_curves"
    loss = np.asarray(getattr(history, "loss", []), dtype=np.float64)
    if loss.ndim != 1 or loss.size == 0:
        raise FigureError(f"{where}: the history has no epochs (history.loss is empty)")
    epochs = np.arange(1, loss.size + 1)
    mvals = None
    if metric is not None:
        metrics = list(getattr(history, "metrics", []) or [])
        have = sorted({k for m in metrics for k in (m or {})})
        if metric not in have:
            raise FigureError(f"{where}: the history has no metric {metric!r} (it has: {have or 'none'}); "
                              f"pass a callback to rnn.train that returns it")
        mvals = np.array([np.nan if not m or metric not in m else float(m[metric]) for m in metrics])

    fig = _figure(where, (9.0, 5.2))
    ax = fig.add_subplot()
    positive = np.all(loss > 0)
    log = positive and loss.max() / loss.min() > 30
    ax.plot(epochs, loss, color=BLUE, lw=2.2, marker="o" if loss.size <= 40 else None, ms=4, label="loss")
    if log:
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("epoch (one pass over the training examples)")
    ax.set_ylabel("mean loss per example" + ("  (log scale)" if log else ""), color=BLUE)
    ax.tick_params(axis="y", colors=BLUE)
    ax.grid(True, axis="y", color="#E3E3E3", lw=0.8)
    if loss.size <= 25:
        ax.set_xticks(epochs)
    else:
        from matplotlib.ticker import MaxNLocator
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0.5, loss.size + 0.5)
    handles = ax.get_lines()[:1]
    if mvals is not None:
        ax2 = ax.twinx()
        ax2.spines["right"].set_visible(True)
        frac = np.nanmin(mvals) >= 0 and np.nanmax(mvals) <= 1
        shown = mvals * 100 if frac else mvals
        ax2.plot(epochs, shown, color=VERMILION, lw=2.2, ls="-", marker="s" if loss.size <= 40 else None, ms=4,
                 label=metric)
        if frac:
            ax2.set_ylim(-3, 103)
        ax2.set_ylabel(f"{metric}" + (" (%)" if frac else ""), color=VERMILION)
        ax2.tick_params(axis="y", colors=VERMILION)
        handles = handles + ax2.get_lines()[:1]
    ax.legend(handles, [h.get_label() for h in handles], loc="center right", frameon=True)
    sub = ("Each epoch changes every copy of a tied weight by the same amount: the sum of its copies' "
           "gradients.")
    if note:
        sub = note + "\n" + sub
    _titles(fig, ax, title or "Training: the error falls as the tied weights learn", sub, 9.0)
    return _save(fig, path, where)
