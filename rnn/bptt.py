"""Backpropagation through time in the time domain: the reference that uses no graph.

The forward pass pushes each step's activities (total inputs and states) on a
stack.  The backward pass pops them, last step first, computing dE/d(state) and
dE/d(total input) for every group, adding in each step's target derivatives as it
passes them, and sending derivatives to the states the step read (delay d reads
step max(t - d, 0)).  Each weight's derivative is computed once per step (its
per-step contribution) and the contributions are added up: the same sum the tie
mechanism forms over the unrolled graph's copies.
"""

import numpy as np

from tinygraph.ops import _logistic

from .data import check_truncate, resolve_all
from .unroll import initial_state


def activation(name, a):
    if name == "logistic":
        return _logistic(a)
    if name == "tanh":
        return np.tanh(a)
    if name == "relu":
        return np.maximum(a, 0.0)
    if name == "linear":
        return a.copy()
    if name == "softmax":
        e = np.exp(a - a.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    raise ValueError(f"unknown activation {name!r}")


def activation_backward(name, dS, s, a):
    """dE/d(total input) from dE/d(state), written from the stored state where possible."""
    if name == "logistic":
        return dS * s * (1.0 - s)
    if name == "tanh":
        return dS * (1.0 - s * s)
    if name == "relu":
        return dS * (a > 0)
    if name == "linear":
        return dS.copy()
    if name == "softmax":
        return s * (dS - np.sum(dS * s, axis=-1, keepdims=True))
    raise ValueError(f"unknown activation {name!r}")


def _log_softmax(a):
    z = a - a.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


class BPTTResult:
    """states[t][g], totals[t][g] (total input), deltas[t][g] (dE/dstate),
    total_deltas[t][g] (dE/d total input), grads[w], step_grads[w][t], loss."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


def bptt(net, steps, inputs=(), targets=(), truncate=None, reduce="sum"):
    """Run the net for ``steps`` steps and backpropagate through time, without a graph.

    Same semantics, inputs, targets and truncation as ``net.unroll(steps).run(...)``.

    Raises
    ------
    DataError (via the same checks as ``run``) for data that does not fit.
    """
    T = steps
    clamps, tgts, batch = resolve_all(net, T, inputs, targets)
    B = batch or 1
    order = net.group_order()
    truncate = check_truncate(truncate, T)
    cut = None if truncate is None else T - truncate
    W = net.weights
    incoming = {g: net.incoming(g) for g in order}

    clamp_at = {}
    for grp, st, units, values in clamps:
        for pos, t in enumerate(st):
            clamp_at.setdefault((grp, t), []).append((units, values[pos]))

    def fully_clamped(grp, t):
        return next((v for u, v in clamp_at.get((grp, t), []) if u is None), None)

    def clamped_units(grp, t):
        size = net.groups[grp].size
        mask = np.zeros(size, dtype=bool)
        for u, _ in clamp_at.get((grp, t), []):
            mask[slice(None) if u is None else u] = True
        return mask

    def apply_clamps(grp, t, s):
        for u, v in clamp_at.get((grp, t), []):
            if u is None:
                s[...] = v
            else:
                s[:, u] = v
        return s

    # ------------------------------------------------------------ forward: push the stack
    stack = []
    pre = {}
    layer0 = {}
    for grp in order:
        G = net.groups[grp]
        base = W[f"init:{grp}"] if G.learned else initial_state(G)
        layer0[grp] = apply_clamps(grp, 0, np.broadcast_to(base, (B, G.size)).copy())
    stack.append((layer0, {}))
    for t in range(1, T + 1):
        st, tot = {}, {}
        for grp in order:
            G = net.groups[grp]
            full = fully_clamped(grp, t)
            if full is not None:
                st[grp] = np.array(full, dtype=np.float64)
                continue
            a = np.zeros((B, G.size))
            if G.bias:
                a += W[f"bias:{grp}"]
            for c in incoming[grp]:
                ts = max(t - c.delay, 0)
                src = st[c.src] if ts == t else stack[ts][0][c.src]
                a += src @ W[c.name]
            tot[grp] = a
            out = activation(G.activation, a)
            if clamp_at.get((grp, t)):
                pre[(grp, t)] = out  # the activation before clamping: its derivative needs it
                out = out.copy()
            st[grp] = apply_clamps(grp, t, out)
        stack.append((st, tot))
    states = [s for s, _ in stack]
    totals = [a for _, a in stack]

    # ------------------------------------------------------------ loss and target derivatives
    loss = 0.0
    dS = [{g: np.zeros((B, net.groups[g].size)) for g in order} for _ in range(T + 1)]
    dA_extra = {}
    for grp, st, units, values, mask, kind in tgts:
        for pos, t in enumerate(st):
            if kind == "cross_entropy":
                a = totals[t][grp]
                y = values[pos]
                onehot = y if y.ndim == 2 else np.eye(a.shape[-1])[y]
                loss += float(-np.sum(onehot * _log_softmax(a)))
                s = activation("softmax", a)
                dA_extra[(grp, t)] = dA_extra.get((grp, t), 0.0) + (s - onehot)
                continue
            s = states[t][grp] if units is None else states[t][grp][:, units]
            w = 1.0 if mask is None else mask[pos]
            err = s - values[pos]
            loss += float(0.5 * np.sum(w * err * err))
            if units is None:
                dS[t][grp] += w * err
            else:
                dS[t][grp][:, units] += w * err

    # ------------------------------------------------------------ backward: peel the stack
    step_grads = {name: {} for name in W}
    dA_all = [dict() for _ in range(T + 1)]
    t = T
    while len(stack) > 1:
        st, tot = stack.pop()
        for grp in reversed(order):
            if grp not in tot:  # fully clamped: nothing computed, nothing to send back
                continue
            G = net.groups[grp]
            dS_free = dS[t][grp]
            if (grp, t) in pre:  # clamped units ignore what their inputs computed
                dS_free = dS_free.copy()
                dS_free[:, clamped_units(grp, t)] = 0.0
            dA = activation_backward(G.activation, dS_free, pre.get((grp, t), st[grp]), tot[grp])
            if (grp, t) in dA_extra:
                dA = dA + dA_extra[(grp, t)]
            dA_all[t][grp] = dA
            if G.bias:
                step_grads[f"bias:{grp}"][t] = dA.sum(axis=0)
            for c in incoming[grp]:
                ts = max(t - c.delay, 0)
                src = st[c.src] if ts == t else stack[ts][0][c.src]
                step_grads[c.name][t] = src.T @ dA
                if cut is not None and ts <= cut < t:
                    continue  # truncated: no derivative crosses the cut
                dS[ts][c.src] += dA @ W[c.name].T
        t -= 1
    for grp in order:
        if net.groups[grp].learned and fully_clamped(grp, 0) is None:
            d0 = dS[0][grp].copy()
            d0[:, clamped_units(grp, 0)] = 0.0
            step_grads[f"init:{grp}"][0] = d0.sum(axis=0)

    grads = {}
    for name, arr in W.items():
        contribs = step_grads[name]
        total = sum(contribs.values()) if contribs else np.zeros_like(arr)
        if reduce == "mean" and contribs:
            total = total / len(contribs)
        grads[name] = np.asarray(total, dtype=np.float64).reshape(arr.shape)
    return BPTTResult(states=states, totals=totals, deltas=dS, total_deltas=dA_all, grads=grads,
                      step_grads=step_grads, loss=loss, steps=T, batch=B)
