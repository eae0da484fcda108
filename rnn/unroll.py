"""Unrolling: a recurrent net written out as a layered feed-forward tinygraph Graph.

Layer 0 holds the initial states; step t has its own nodes for every group
(``h@t3``, its total input ``net[h]@t3``) and its own copy of every weight it uses
(``W[h->h]@t3``, ``b[h]@t3``).  All copies of one weight are parameters that share
the net's array as storage and are tied through the engine's tie mechanism, so
backprop on this graph *is* backpropagation through time.

Clamps and targets change the structure (which units are replaced, where losses
attach), so each distinct structure is emitted once and cached; the values are fed
as graph inputs, so one emitted graph runs any batch of data of that structure.
"""

import numpy as np

import tinygraph as tg
from tinygraph.autodiff import run_forward

from .data import DataError, check_truncate, refuse_overlaps, resolve_all
from .net import NetError

_ACT = {"logistic": tg.logistic, "tanh": tg.tanh, "relu": tg.relu, "linear": tg.identity,
        "softmax": lambda x, name: tg.softmax(x, axis=-1, name=name)}


class Emitted:
    """One emitted graph with the bookkeeping that maps it back to the net."""

    def __init__(self, net, T, reduce, clamps, targets, truncate, batched=False):
        self.net = net
        self.T = T
        self.truncate = truncate
        self.graph = g = tg.Graph(f"{net.name} unrolled T={T}")
        self.layers = [dict() for _ in range(T + 1)]
        self.totals = [dict() for _ in range(T + 1)]
        self.copies = {name: [] for name in net.weights}
        self.copy_steps = {name: [] for name in net.weights}
        self.feeds = []  # (input node, "clamp"|"target"|"mask", record index, position in its steps)
        self.feed_at = {}  # input node index -> (group, step, units or None for all): what it feeds
        self._records = None  # self.feeds grouped by record (see feed_dict)
        self._initials = {}  # group -> the Group.initial its constant initial state was made from
        # what emitting it again needs (the arrays only for their rank and presence: empty ones)
        self.structure = ([(g, s, u, np.empty((0,) * np.ndim(v))) for g, s, u, v in clamps],
                          [(g, s, u, np.empty((0,) * np.ndim(v)), None if m is None else np.empty(0), loss)
                           for g, s, u, v, m, loss in targets], truncate)
        self.cut = None if truncate is None else T - truncate
        order = net.group_order()

        clamp_at = {}
        for r, (grp, steps, units, _) in enumerate(clamps):
            for pos, t in enumerate(steps):
                clamp_at.setdefault((grp, t), []).append((r, pos, units))

        def full_clamp(grp, t):
            entries = clamp_at.get((grp, t), [])
            return next(((r, pos) for r, pos, units in entries if units is None), None)

        def apply_clamps(grp, t, state):
            entries = clamp_at.get((grp, t), [])
            for k, (r, pos, units) in enumerate(entries):
                suffix = "" if len(entries) == 1 else f"#{k}"
                inp = g.input(f"clamp[{grp}]{suffix}@t{t}", (None, len(units)))
                self._feed(inp, "clamp", r, pos, grp, t, units)
                last = k == len(entries) - 1
                state = tg.clamp(state, inp, units, name=f"{grp}@t{t}" if last else f"clamped{k}[{grp}]@t{t}")
            return state

        # layer 0: the initial states (a learned one is a parameter), repeated over the
        # batch when the run has one, so that every example has its own dE/dstate at t = 0
        self.batch_node = g.input("batch", (None, 0)) if batched else None
        for grp in order:
            G = net.groups[grp]
            full = full_clamp(grp, 0)
            if full is not None:
                node = g.input(f"{grp}@t0", (None, G.size))
                self._feed(node, "clamp", full[0], full[1], grp, 0, None)
            else:
                partial = bool(clamp_at.get((grp, 0)))
                final = partial or batched
                base_name = f"init[{grp}]@t0" if final else f"{grp}@t0"
                if G.learned:
                    base = g.param(base_name, net.weights[f"init:{grp}"])
                    self.copies[f"init:{grp}"].append(base)
                    self.copy_steps[f"init:{grp}"].append(0)
                else:
                    base = g.const(initial_state(G, net.dtype), name=base_name)
                    self._initials[grp] = G.initial  # (set_initial replaces it: see storage_current)
                if batched:
                    base = tg.broadcast_like(base, self.batch_node,
                                             name=f"rows[{grp}]@t0" if partial else f"{grp}@t0")
                node = apply_clamps(grp, 0, base) if partial else base
            self.layers[0][grp] = node

        incoming = {grp: net.incoming(grp) for grp in order}
        cut_nodes = {}
        for t in range(1, T + 1):
            for grp in order:
                G = net.groups[grp]
                full = full_clamp(grp, t)
                if full is not None:
                    node = g.input(f"{grp}@t{t}", (None, G.size))
                    self._feed(node, "clamp", full[0], full[1], grp, t, None)
                    self.layers[t][grp] = node
                    continue
                terms = []
                for c in incoming[grp]:
                    ts = max(t - c.delay, 0)
                    src = self.layers[ts][c.src]
                    if self.cut is not None and ts <= self.cut < t:
                        src = cut_nodes.get(src)
                        if src is None:
                            orig = self.layers[ts][c.src]
                            src = cut_nodes[orig] = tg.stop_gradient(orig, name=f"cut[{c.src}]@t{ts}")
                    W = g.param(f"W[{c.name}]@t{t}", net.weights[c.name])
                    self.copies[c.name].append(W)
                    self.copy_steps[c.name].append(t)
                    terms.append(tg.matmul(src, W, name=f"in[{c.name}]@t{t}"))
                if G.bias:
                    b = g.param(f"b[{grp}]@t{t}", net.weights[f"bias:{grp}"])
                    self.copies[f"bias:{grp}"].append(b)
                    self.copy_steps[f"bias:{grp}"].append(t)
                    terms.append(b)
                # a total no batched state reaches (a bias-only group) is repeated over the batch,
                # as the initial states are, so every example has its own dE/dtotal and dE/dstate
                shared = self.batch_node is not None and all(len(x.shape) < 2 for x in terms)
                name = f"shared[net[{grp}]]@t{t}" if shared else f"net[{grp}]@t{t}"
                if terms:
                    total = tg.add_n(terms, name=name)
                else:
                    total = g.const(np.zeros(G.size, dtype=net.dtype), name=name)
                if shared:
                    total = tg.broadcast_like(total, self.batch_node, name=f"net[{grp}]@t{t}")
                self.totals[t][grp] = total
                partial = bool(clamp_at.get((grp, t)))
                state = _ACT[G.activation](total, name=f"act[{grp}]@t{t}" if partial else f"{grp}@t{t}")
                self.layers[t][grp] = apply_clamps(grp, t, state) if partial else state

        for name, copies in self.copies.items():
            if len(copies) > 1:
                g.tie(*copies, reduce=reduce)

        losses = []
        targeted = {}  # (group, step) -> how many targets meet there (their nodes need distinct names)
        for grp, steps, *_ in targets:
            for t in steps:
                targeted[(grp, t)] = targeted.get((grp, t), 0) + 1
        for r, (grp, steps, units, values, mask, loss) in enumerate(targets):
            for pos, t in enumerate(steps):
                state = self.layers[t][grp]
                tag = f"{grp}@t{t}" if targeted[(grp, t)] == 1 else f"{grp}#{r}@t{t}"
                if loss == "cross_entropy":
                    onehot = values.ndim == 3
                    lab = g.input(f"target[{tag}]", (None, net.groups[grp].size) if onehot else (None,),
                                  dtype=np.float64 if onehot else np.int64)
                    self._feed(lab, "target", r, pos, grp, t, None)
                    losses.append(tg.cross_entropy(self.totals[t][grp], lab, name=f"loss[{tag}]"))
                    continue
                sel = state if units is None else tg.getitem(state, (Ellipsis, units), name=f"sel[{tag}]")
                tgt = g.input(f"target[{tag}]", (None, len(units) if units is not None else net.groups[grp].size))
                self._feed(tgt, "target", r, pos, grp, t, units)
                if mask is None:
                    losses.append(tg.squared_error(sel, tgt, name=f"loss[{tag}]"))
                else:
                    m = g.input(f"mask[{tag}]", tgt.shape)
                    self._feed(m, "mask", r, pos, grp, t, units)
                    losses.append(tg.weighted_squared_error(sel, tgt, m, name=f"loss[{tag}]"))
        self.loss = tg.add_n(losses, name="loss") if losses else None

    def _feed(self, node, kind, record, pos, group, t, units):
        self.feeds.append((node, kind, record, pos))
        self.feed_at[node.index] = (group, t, None if units is None else [int(u) for u in units])

    def feed_dict(self, clamps, targets, batch):
        """The feeds of one run (run_forward's trusted form): a record whose input nodes take
        its rows 0, 1, ... in order is fed whole, keyed by the tuple of their indices, so the
        engine can read it stacked instead of copying T rows back together."""
        feeds = {}
        if self.batch_node is not None:
            feeds[self.batch_node] = np.empty((batch, 0))
        for kind, r, nodes, stacked in self._feed_records():
            arr = clamps[r][3] if kind == "clamp" else targets[r][3] if kind == "target" else targets[r][4]
            if stacked:
                feeds[stacked] = arr
            else:
                for node, pos in nodes:
                    feeds[node] = arr[pos]
        return feeds

    def _feed_records(self):
        if self._records is None:
            by = {}
            for node, kind, r, pos in self.feeds:
                by.setdefault((kind, r), []).append((node, pos))
            self._records = [(kind, r, nodes, tuple(n.index for n, _ in nodes)
                              if [pos for _, pos in nodes] == list(range(len(nodes))) else None)
                             for (kind, r), nodes in by.items()]
        return self._records

    def storage_current(self):
        """False when the net changed since this graph was emitted: an array in net.weights
        replaced (copies would read the old one), a weight or group added, or a fixed initial
        state set anew (it is a constant of this graph)."""
        for name, copies in self.copies.items():
            if copies and copies[0].value is not self.net.weights.get(name):
                return False
        groups = self.net.groups
        return (len(self.copies) == len(self.net.weights) and len(self.layers[0]) == len(groups)
                and all(groups[g].initial is init for g, init in self._initials.items()))


def initial_state(group, dtype=np.float64):
    """The fixed initial state of an unclamped, unlearned group, as a (units,) array."""
    init = group.initial
    if init is None:
        init = group.default_initial()
    return np.broadcast_to(np.asarray(init, dtype=dtype), (group.size,)).copy()


def _signature(clamps, targets, truncate):
    def units_key(u):
        return None if u is None else tuple(u.tolist())
    return (tuple((g, tuple(s), units_key(u)) for g, s, u, _ in clamps),
            tuple((g, tuple(s), units_key(u), loss, v.ndim, m is not None) for g, s, u, v, m, loss in targets),
            truncate)


class RunResult:
    """What one ``ff.run`` computed: loss, activations, gradients and the tied weight gradients."""

    def __init__(self, unrolled, emitted, acts, grads):
        self.unrolled = unrolled
        self.emitted = emitted
        self.graph = emitted.graph
        self.acts = acts
        self.grads = grads
        self.loss = float(acts[emitted.loss]) if emitted.loss is not None else None
        self._weight_grads = None

    @property
    def weight_grads(self):
        """{name in net.weights: gradient of the shared weight} (sum or mean over its copies)."""
        if self._weight_grads is None:
            if self.grads is None:
                raise DataError("this run had no targets, so there is no loss and no gradient")
            cs = self.graph.constraints
            out = {}
            for name, copies in self.emitted.copies.items():  # (the weights this run's graph had)
                out[name] = (cs.raw_variable_grad(cs.variable(copies[0]), self.grads) if copies
                             else np.zeros_like(self.unrolled.net.weights.get(name)))
            self._weight_grads = out
        return self._weight_grads

    def layer(self, t):
        """{group: state node} at step t of this run's graph (``ff.layer(t)`` is the latest run's)."""
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= t <= self.emitted.T:
            raise NetError(f"layer: t must be an int in 0..{self.emitted.T}, got {t!r}")
        return dict(self.emitted.layers[t])

    def step_grads(self, name):
        """{step: that step's copy's gradient} for weight ``name`` (per-step contributions)."""
        return {t: self.grads[c] for t, c in zip(self.emitted.copy_steps[name], self.emitted.copies[name])}

    def states(self, group):
        """The states of ``group`` at steps 0..T as one (T+1, batch, units) array."""
        return self._per_step(self.acts, group)

    def deltas(self, group):
        """dE/d(state) of ``group`` at steps 0..T as one (T+1, batch, units) array."""
        return self._per_step(self.grads, group)

    def _per_step(self, source, group):
        """source[state of group at t] for t = 0..T, stacked (a batch-free step repeated over the batch)."""
        vals = [np.asarray(source[layer[group]]) for layer in self.emitted.layers]
        batch = max((v.shape[0] for v in vals if v.ndim == 2), default=1)
        return np.stack([np.broadcast_to(v, (batch, v.shape[-1])) for v in vals])


class Unrolled:
    """A net unrolled for T steps: ``graph``, ``layer(t)``, ``copies(name)``, ``run(...)``."""

    def __init__(self, net, steps, reduce="sum"):
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
            raise NetError(f"unroll: steps must be an int >= 1, got {steps!r} (layer 0 holds the initial "
                           f"states; steps counts the layers after it)")
        if reduce not in ("sum", "mean"):
            raise NetError(f"unroll: reduce must be 'sum' or 'mean', got {reduce!r}")
        net.group_order()  # refuse a zero-delay cycle before emitting anything
        self.net = net
        self.steps = self.T = int(steps)
        self.reduce = reduce
        self._cache = {}
        self._latest = None  # emitted when first needed: run() emits the graph its data needs

    @property
    def _current(self):
        """The latest emitted graph (before any run: the one without clamps or targets),
        emitted again with the same structure when the net changed since."""
        if self._latest is None:
            self._latest = self._emit([], [], None)
        elif not self._latest.storage_current():
            self._latest = self._emit(*self._latest.structure)
        return self._latest

    def _emit(self, clamps, targets, truncate):
        key = _signature(clamps, targets, truncate)
        em = self._cache.get(key)
        if em is None:
            refuse_overlaps(self.net, clamps, targets)  # a structure seen before has passed this
        if em is None or not em.storage_current():
            if len(self._cache) >= 8:
                self._cache.pop(next(iter(self._cache)))
            em = self._cache[key] = Emitted(self.net, self.T, self.reduce, clamps, targets, truncate,
                                            batched=bool(clamps or targets))
        return em

    @property
    def graph(self):
        """The tinygraph Graph emitted for the latest run (before any run: no clamps or targets)."""
        return self._current.graph

    @property
    def loss(self):
        return self._current.loss

    def layer(self, t):
        """{group: state node} at step t (0 = initial states)."""
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= t <= self.T:
            raise NetError(f"layer: t must be an int in 0..{self.T}, got {t!r}")
        return dict(self._current.layers[t])

    def total_input(self, t):
        """{group: total-input node} at step t >= 1 (fully clamped groups have none)."""
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 1 <= t <= self.T:
            raise NetError(f"total_input: t must be an int in 1..{self.T}, got {t!r}")
        return dict(self._current.totals[t])

    def copies(self, name):
        """The tied copy nodes of weight ``name`` (one per step that uses it), in step order."""
        if name not in self.net.weights:
            raise NetError(f"copies: net '{self.net.name}' has no weight {name!r} (weights: {list(self.net.weights)})")
        return list(self._current.copies[name])

    def copy_steps(self, name):
        """The steps that use weight ``name``, matching ``copies(name)``."""
        self.copies(name)
        return list(self._current.copy_steps[name])

    def run(self, inputs=(), targets=(), truncate=None, check_finite=False, backward=True):
        """Forward (and, with targets, backward) through the unrolled graph.

        Parameters
        ----------
        inputs : list of rnn.Clamp
        targets : list of rnn.Target
        truncate : int, optional
            Truncated BPTT: gradients flow back only through the last ``truncate``
            steps (a stop-gradient cut between steps T - truncate and T - truncate + 1).
        check_finite : bool
            Stop at the first node (and so time step) producing NaN or infinity.
        backward : bool
            False skips the backward pass (``grads`` is None).

        Returns
        -------
        RunResult with ``loss``, ``acts``, ``grads``, ``weight_grads``.

        Raises
        ------
        DataError for clamps or targets that do not fit the net or T; NonFiniteError.
        """
        clamps, tgts, batch = resolve_all(self.net, self.T, inputs, targets, check_overlaps=False)
        truncate = check_truncate(truncate, self.T)
        em = self._latest = self._emit(clamps, tgts, truncate)
        # the clamps and targets were checked against the net above: feed them as they are
        acts = run_forward(em.graph, em.feed_dict(clamps, tgts, batch), check_finite=check_finite, trusted=True)
        grads = (acts.backward(em.loss, check_finite=check_finite)
                 if em.loss is not None and backward else None)
        return RunResult(self, em, acts, grads)
