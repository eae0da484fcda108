"""Compiling a graph into an execution plan: the flat list of steps one run executes.

A plan is computed once per (graph version, requested outputs) and reused.  Besides
ordering the needed nodes it finds *batches*: nodes that compute the same op with
the same attributes on inputs of the same kind (e.g. ``in[x->h]@t`` for every step
t, all reading the one shared weight) and do not depend on each other.  A batch
runs as one numpy call on its members' inputs stacked along a new leading axis
(T small matmuls become one big one); every member still gets its own value and
gradient (a view into the stacked result), so the graph, its pictures and its
per-node numbers stay literal.

Members are independent when they sit at the same depth from the sources (level)
or the same distance to the sinks (reverse level); both are checked by contracting
the batches and sorting the result (Kahn's algorithm), falling back to fewer
batches if that ever finds a cycle.
"""

import heapq
from functools import partial
from itertools import count, repeat
from operator import attrgetter, is_

import numpy as np

from . import ops as _ops
from .errors import GraphError
from .rowbuffers import stacked_view

SINGLE, BATCH, PRESUM, BATCH_SUM = 0, 1, 2, 4  # (3 is fragments.FRAGMENT)
MIN_BATCH = 2
SLOPE_CHUNK = 1 << 18  # elements per chunk when a slope group computes its slopes
ROWS = "rows"  # the key of a run's rowbuffers.RowIndex in its batch store
FED = "fed"  # the key of a run's {(batch id, operand position): array fed whole} (Plan.fed_stacks)
DROPPED = "dropped"  # the key of a run's {batch id: still let go?} for outputs let go after forward (Plan.droppable)
NO_ROWS = (None, False, None)  # a slope group's (rows, shape, dtype) when its run has no buffer


# ops whose value may be its first input's array or a view of it: a run's value of such a node
# shares memory with a param or a fed array when that is where it comes from (viewed)
VIEW_OPS = frozenset({"identity", "stop_gradient", "getitem", "reshape", "transpose", "broadcast_like"})


def viewed(node):
    """The node whose array ``node``'s value may be (a view of): followed through VIEW_OPS."""
    while node.op in VIEW_OPS:
        node = node.inputs[0]
    return node


class Marker:
    """A VJP slot the backward loops handle themselves (compared by identity, never called)."""

    __slots__ = ("name", "why")

    def __init__(self, name, why):
        self.name, self.why = name, why

    def __repr__(self):
        return f"<VJP marker {self.name}: {self.why}>"


TIED_MATMUL_A = Marker("TIED_MATMUL_A", "a 2-D matmul's first operand when the second is a tied weight: "
                       "g @ W.T against one contiguous W.T per sweep")
TIED_OUTER = Marker("TIED_OUTER", "a 2-D matmul's tied weight: (a, g) collected, sum of a.T @ g over all "
                    "copies taken as a few large products at the end (autodiff._sum_outer)")
SOURCE_VIA_BATCH = Marker("SOURCE_VIA_BATCH", "a PreSum add_n's tied source: its gradient is read off the "
                          "member batch's stacked gradient in one reduction (Batch.source_grads)")


def _freeze(v):
    if isinstance(v, np.ndarray):
        return ("nd", v.dtype.str, v.shape, v.tobytes())
    if isinstance(v, (tuple, list)):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, slice):
        return ("slice", v.start, v.stop, v.step)
    return v


def _attrs_key(attrs):
    return tuple(sorted((k, _freeze(v)) for k, v in attrs.items())) if attrs else ()


class Batch:
    """Members computed together; ``inputs[p]`` says where position p's operand comes from:
    ("shared", j) one node for all; ("tied", js) tied copies sharing one storage;
    ("batch", b) exactly the members of batch b; ("stack", js) one node per member."""

    __slots__ = ("id", "members", "op", "attrs", "inputs", "rank", "in_ranks", "kind", "by_rlevel", "fed",
                 "from_singles", "source_grads", "fed_alone", "untied_stack", "lazy", "lifted", "forward",
                 "vjps", "fresh_vjps", "vjps_read_out", "caller_operands")

    def __init__(self, bid, members, op, attrs, by_rlevel):
        self.id = bid
        self.members = members
        self.op = op
        self.attrs = attrs
        self.kind = op.batch if isinstance(op.batch, str) else "dedicated"
        self.inputs = []
        self.by_rlevel = by_rlevel
        # [(a tied copy's index, member rows or None for all, its shape, the add_n indices)]: tied
        # sources of PreSum add_n nodes whose gradient is the sum of these members' gradients
        # (see _with_presums); the add_n nodes' own gradients serve when the batch did not stack
        self.source_grads = []


def _bind_batch_rules(b):
    """What a batch calls, bound once: ``forward(*operands)``, ``vjps[p](G, out, *operands)``
    (the op's batched rule or its elementwise one, with the members' attributes), whether
    operands get lifted (plan.lift), and whether every VJP returns a new array (the built-in
    matmul: a product), so that its rows may take later contributions in place without a
    memory check, and whether a VJP reads the output (if none does, the output may be let
    go: Plan.droppable).  A missing rule fails when called: an operand whose gradient
    nobody needs (labels, fed data) needs none."""
    op, attrs = b.op, b.attrs
    b.lifted = b.kind == "elementwise" or (b.kind == "dedicated" and op.batch[1])
    fwd = op.batch[0] if b.kind == "dedicated" else op.forward
    b.forward = _bind(fwd, attrs)
    rules = []
    for pos in range(len(b.inputs)):
        if b.kind == "dedicated":
            fn = op.batch[2][pos] if pos < len(op.batch[2]) else None
        else:
            fn = _rule_for(op, pos)
        rules.append(_bind(fn, attrs) if fn is not None else partial(_no_rule, op.name, pos))
    b.vjps = tuple(rules)
    b.fresh_vjps = op is _ops.get("matmul")
    b.vjps_read_out = op.reads_out or b.kind == "dedicated"  # (a dedicated rule is not the op's own; Plan.droppable)


def _rule_for(op, pos):
    """The op's VJP rule for input ``pos`` (a variadic op's takes pos first), or None."""
    if op.variadic:
        return partial(op.vjps[0], pos)
    return op.vjps[pos] if pos < len(op.vjps) else None


def _bind(fn, attrs):
    return partial(fn, **attrs) if attrs else fn


def _no_rule(name, pos, *args):
    raise _ops.UnknownOpError(f"op '{name}' has no derivative rule for input {pos}")


def _levels(nodes, order):
    level = {}
    for i in order:
        ins = nodes[i].inputs
        level[i] = 1 + max(level[j.index] for j in ins) if ins else 0
    rlevel = dict.fromkeys(order, 0)
    for i in reversed(order):
        r = rlevel[i] + 1
        for j in nodes[i].inputs:
            if rlevel[j.index] < r:
                rlevel[j.index] = r
    return level, rlevel


def find_batches(graph, order):
    """Group identical, independent nodes of ``order`` into batches (see module doc)."""
    nodes = graph.nodes
    tie_of = graph.constraints._tie_of
    intern = {}
    members_of = {}
    for i in order:
        n = nodes[i]
        op = None
        if n.op == "input":
            key = ("input", n.shape, str(n.dtype))
        elif n.op == "param":
            key = ("param", id(n.value))
        elif n.op == "const":
            key = ("const", i)
        else:
            op = _ops.REGISTRY.get(n.op)
            if op is None or op.batch is None:
                key = ("solo", i)
            else:
                # what batching needs to be alike: op, attrs, shapes and which weights are
                # read; not the inputs' history (h@t and h@t+1 differ only by their past)
                key = (n.op, n.shape, _attrs_key(n.attrs),
                       tuple(("param", id(j.value)) if j.op == "param" else (j.op, j.shape) for j in n.inputs))
        c = intern.setdefault(key, len(intern))
        if op is not None and op.batch is not None:
            members_of.setdefault(c, []).append(i)
    candidates = [ms for ms in members_of.values() if len(ms) >= MIN_BATCH]
    if not candidates:
        return []
    level, rlevel = _levels(nodes, order)
    groups = []
    for ms in candidates:
        by_l, by_r = {}, {}
        for m in ms:
            by_l.setdefault(level[m], []).append(m)
            by_r.setdefault(rlevel[m], []).append(m)
        use_r = len(by_r) < len(by_l)
        for part in (by_r if use_r else by_l).values():
            if len(part) >= MIN_BATCH:
                groups.append((part, use_r))
    groups.sort(key=lambda g: g[0][0])
    batches = []
    by_members = {}
    for part, use_r in groups:
        first = nodes[part[0]]
        op = _ops.REGISTRY[first.op]
        b = Batch(len(batches), part, op, first.attrs, use_r)
        ok = True
        in_ranks = []
        for p in range(len(first.inputs)):
            js = [nodes[m].inputs[p].index for m in part]
            in_ranks.append(len(nodes[js[0]].shape))
            if all(j == js[0] for j in js):
                b.inputs.append(("shared", js[0]))
            elif (nodes[js[0]].op == "param" and all(nodes[j].op == "param" for j in js)
                  and all(nodes[j].value is nodes[js[0]].value for j in js)
                  and tie_of.get(nodes[js[0]]) is not None
                  and all(tie_of.get(nodes[j]) is tie_of.get(nodes[js[0]]) for j in js)):
                b.inputs.append(("tied", js))
            elif tuple(js) in by_members:
                b.inputs.append(("batch", by_members[tuple(js)]))
            else:
                b.inputs.append(("stack", js))
        if all(kind in ("shared", "tied") for kind, _ in b.inputs):
            ok = False  # nothing varies across members: no member axis to batch over
        if b.kind == "matmul" and (any(r < 2 for r in in_ranks) or any(
                kind in ("stack", "batch") and r < max(in_ranks) for (kind, _), r in zip(b.inputs, in_ranks))):
            ok = False  # (a stacked operand of lower rank: its member axis would meet the other's batch axis)
        if b.kind == "dedicated" and not op.batch[1] and any(k in ("shared", "tied") for k, _ in b.inputs):
            ok = False  # operands that do not broadcast elementwise must all carry the member axis
        if ok:
            b.in_ranks = in_ranks
            b.rank = max(in_ranks) if in_ranks else 0
            batches.append(b)
            by_members[tuple(part)] = b.id
    # renumber: a rejected group may have left gaps
    return batches


def schedule(graph, order, batches):
    """Topological order of units (single nodes and batches); None when contracting made a cycle."""
    nodes = graph.nodes
    unit_of = {}
    for b in batches:
        for m in b.members:
            unit_of[m] = ("b", b.id)
    units = {}
    for i in order:
        u = unit_of.get(i, ("n", i))
        units.setdefault(u, []).append(i)
    deps = {u: set() for u in units}
    users = {u: [] for u in units}
    for u, ms in units.items():
        for m in ms:
            for j in nodes[m].inputs:
                v = unit_of.get(j.index, ("n", j.index))
                if v != u and v not in deps[u]:
                    deps[u].add(v)
                    users[v].append(u)
    indeg = {u: len(d) for u, d in deps.items()}
    heap = [(units[u][0], u) for u, d in indeg.items() if d == 0]
    heapq.heapify(heap)
    out = []
    while heap:
        _, u = heapq.heappop(heap)
        out.append(u)
        for v in users[u]:
            indeg[v] -= 1
            if indeg[v] == 0:
                heapq.heappush(heap, (units[v][0], v))
    if len(out) != len(units):
        return None
    return out


class Plan:
    """The steps one run executes: ``(BATCH, batch)``, or ``(kind, index, forward, input indices,
    VJP entries)`` for one node: SINGLE, PRESUM (see PreSum) or BATCH_SUM (an add_n of a
    whole batch; its forward slot holds the batch)."""

    def __init__(self, graph, needed, batch=True):
        self.graph = graph
        self.size = len(graph.nodes)
        nodes = graph.nodes
        self.order = [nodes[i] for i in needed]
        for node in self.order:  # creation order is topological; check it instead of trusting it
            for inp in node.inputs:
                if inp.index >= node.index:
                    raise GraphError(f"node '{node.name}' uses '{inp.name}', created after it")
        self.inputs = [n for n in self.order if n.op == "input"]
        self.input_indices = [n.index for n in self.inputs]
        batches = find_batches(graph, needed) if batch else []
        units = schedule(graph, needed, batches) if batches else None
        if batches and units is None:  # drop the reverse-level batches, then all, until acyclic
            batches = [b for b in batches if not b.by_rlevel]
            units = schedule(graph, needed, batches) if batches else None
            if units is None:
                batches = []
        self.batches = {b.id: b for b in batches}
        # where a batch member's gradient lives after backward: row k of its batch's stacked gradient
        self.member_of = {m: (b.id, k) for b in batches for k, m in enumerate(b.members)}
        nodes_ = graph.nodes
        for b in batches:
            # operands that are fed inputs: their gradient is needed by nobody upstream (deferred)
            b.fed = tuple(kind == "stack" and all(nodes_[j].op == "input" for j in ref) for kind, ref in b.inputs)
            b.from_singles = False  # do single (unbatched) nodes consume members? then gather their grads
        # a batch whose members also get gradient other than as a whole stacked operand of
        # another batch (from single nodes, or as a partial "stack"/"shared" operand) must
        # gather those per-member contributions in backward
        member_of = self.member_of
        uses = {}
        for n in self.order:
            for i in n.inputs:
                uses[i.index] = uses.get(i.index, 0) + 1
        # add_n nodes that sum exactly the members of one batch, which feed nothing else (the
        # loss of every time step): one reduction of the batch's stacked output, and in
        # backward one broadcast into the batch's stacked gradient
        by_members = {tuple(b.members): b for b in batches}
        self.batch_sums = {}
        for n in self.order:
            if n.op == "add_n" and n.index not in member_of:
                b = by_members.get(tuple(i.index for i in n.inputs))
                if b is not None and all(uses[m] == 1 for m in b.members):
                    self.batch_sums[n.index] = b
        for n in self.order:
            if n.index in member_of or n.index in self.batch_sums:
                continue
            for i in n.inputs:
                mb = member_of.get(i.index)
                if mb is not None:
                    self.batches[mb[0]].from_singles = True
        for b in batches:
            for kind, ref in b.inputs:
                if kind == "batch":
                    continue
                for j in ((ref,) if kind == "shared" else ref):
                    mb = member_of.get(j)
                    if mb is not None:
                        self.batches[mb[0]].from_singles = True
        tie_of = graph.constraints._tie_of
        self.tied = {}  # node index -> tie group, for params whose gradient accumulates in one buffer
        for n in self.order:
            if n.op == "param":
                t = tie_of.get(n)
                if t is not None:
                    self.tied[n.index] = t
        self.tie_shapes = {id(t): t.members[0].value.shape for t in set(self.tied.values())}
        # batches whose members only other batches read whole (or a BATCH_SUM): their members'
        # row views are made only when someone asks for a value (Activations.value)
        lazy = {b.id: True for b in batches}
        for n in self.order:
            if n.index in self.batch_sums:
                continue
            mb = self.member_of.get(n.index)
            for pos, i in enumerate(n.inputs):
                src = self.member_of.get(i.index)
                if src is not None and (mb is None or self.batches[mb[0]].inputs[pos] != ("batch", src[0])):
                    lazy[src[0]] = False
        for b in batches:
            b.lazy = lazy[b.id]
            # "stack" operands of distinct nodes none of which is a tied param
            b.untied_stack = tuple(kind == "stack" and len(set(ref)) == len(ref) and not any(j in self.tied for j in ref)
                                   for kind, ref in b.inputs)
            _bind_batch_rules(b)
        steps = []
        if units is None:
            units = [("n", i) for i in needed]
        # sources are filled before the run; only computing nodes become steps, each with
        # its forward and its VJPs bound to the node's attributes (no lookups while running)
        self.const_nodes = [n for n in self.order if n.op == "const"]
        self.const_indices = [n.index for n in self.const_nodes]
        # the params, grouped by the array they held when the plan was made (T tied copies share
        # one): a run works on its own copy of each array (autodiff._place_params)
        self.param_nodes = tuple(n for n in self.order if n.op == "param")
        self.param_indices = tuple(n.index for n in self.param_nodes)
        group, firsts = {}, []  # id(array) -> its number; a param of each array
        for n in self.param_nodes:
            if group.setdefault(id(n.value), len(firsts)) == len(firsts):
                firsts.append(n)
        self.param_group_of = tuple(group[id(n.value)] for n in self.param_nodes)
        self.param_firsts = tuple(firsts)
        for kind, ref in units:
            if kind == "b":
                steps.append((BATCH, self.batches[ref]))
                continue
            n = nodes[ref]
            if n.op in ("input", "param", "const"):
                continue
            op = _ops.get(n.op)
            in_idx = tuple(i.index for i in n.inputs)
            fwd = partial(op.forward, **n.attrs) if n.attrs else op.forward
            # (input index, bound VJP, tie group or None): the backward loop looks nothing up
            vjps = tuple((j, _bound_vjp(op, pos, n.attrs), self.tied.get(j)) for pos, j in enumerate(in_idx))
            if n.op == "matmul" and all(len(i.shape) == 2 for i in n.inputs):
                fwd = np.dot  # the same product for 2-D operands, with less call overhead
                (ja, _, tie_a), (jb, _, tie_b) = vjps
                if tie_b is not None:
                    # through a tied weight: g @ W.T against one contiguous W.T per sweep, and the
                    # weight's share a.T @ g deferred, so that all copies' shares become one matrix
                    # product at the end of the sweep (as hand-written BPTT does)
                    vjps = ((ja, TIED_MATMUL_A, None) if tie_a is None else vjps[0], (jb, TIED_OUTER, tie_b))
            if ref in self.batch_sums:
                steps.append((BATCH_SUM, ref, self.batch_sums[ref], in_idx, vjps))
                continue
            steps.append((SINGLE, ref, fwd, in_idx, vjps))
        # fed inputs that one batch operand alone consumes: their gradients are rows of that
        # operand's deferred gradient, found through here (no per-input bookkeeping per run)
        # fed_stacks: such an operand's inputs (distinct, in its order) -> (batch id, position):
        # a trusted run given them as one array (a tuple key) lets the batch read that array
        # and makes an input's own row only when asked (Activations.value)
        self.fed_rows = {}
        self.fed_stacks = {}
        for b in batches:
            b.fed_alone = tuple(fed and all(uses.get(j) == 1 for j in ref)
                                for fed, (_, ref) in zip(b.fed, b.inputs))
            for pos, (_, ref) in enumerate(b.inputs):
                if b.fed_alone[pos]:
                    slot = (b.id, pos)  # (one tuple for all its rows)
                    self.fed_rows.update(zip(ref, zip(repeat(slot), count())))
                    if len(set(ref)) == len(ref):
                        self.fed_stacks[tuple(ref)] = slot
        self.steps = _with_presums(_with_slope_groups(steps, nodes, batches), nodes, self.member_of,
                                   self.batches, self.tied, uses)
        from .fragments import FRAGMENT, find_fragments  # (fragments.py builds on this module's step kinds)
        self.fast_steps = find_fragments(self.steps, uses)  # what runs; check_finite runs use self.steps
        # fragments that may run lean (fragments.Chain), and how to make again what they do not keep
        self.lean_fragments = tuple(step[1] for step in self.fast_steps
                                    if step[0] == FRAGMENT and step[1].chain is not None)
        self.recompute = {}  # node index -> how to make its value again when a lean chain did not keep it
        for frag in self.lean_fragments:
            self.recompute.update(frag.chain.recompute)
        self._consumers = None
        self.droppable = self._droppable(batches)
        for b in batches:
            # operands that may be the caller's arrays (fed inputs, or views of them, stacked or
            # read whole): a run copies them before it lets go of what is made again from them
            # (the caller may refill them)
            b.caller_operands = tuple(
                pos for pos, (kind, ref) in enumerate(b.inputs) if b.fed[pos]
                or (kind in ("shared", "tied") and viewed(nodes[ref if kind == "shared" else ref[0]]).op == "input")
                or (kind == "stack" and any(viewed(nodes[j]).op == "input" for j in ref)))

    def _droppable(self, batches):
        """Batches whose stacked output a fast run lets go once forward is done (an unrolled
        net's input projections P_t = x_t @ U): every member is read only by the add_n nodes
        of its own PreSum group, whose sums forward made, and the op's VJPs do not read the
        output (the built-in matmul's).  Backward then holds three (T, B, H) arrays, as
        hand-written BPTT does; a member's value is made again, by the same batched call,
        when someone asks for it (Activations.value)."""
        candidates = {m: b.id for b in batches if not b.vjps_read_out for m in b.members}
        if not candidates:
            return ()
        presum_batch = {step[1]: step[2][0].batch for step in self.steps if step[0] == PRESUM}
        ok = dict.fromkeys(candidates.values(), True)
        read = set()
        for n in self.order:  # (no consumer map kept: it would cost a deep graph megabytes)
            for i in n.inputs:
                bid = candidates.get(i.index)
                if bid is not None:
                    read.add(i.index)
                    if presum_batch.get(n.index) != bid:
                        ok[bid] = False
        return tuple(bid for bid, good in ok.items()
                     if good and all(m in read for m in self.batches[bid].members))

    def params_current(self):
        """True while every param holds the array it held when the plan was made (shared as
        then): one pass in C."""
        arrays = list(map(attrgetter("value"), self.param_firsts))
        return all(map(is_, map(attrgetter("value"), self.param_nodes), map(arrays.__getitem__, self.param_group_of)))

    def consumers(self, index):
        """[(consumer index, input position)] of node ``index`` within this plan."""
        if self._consumers is None:
            cons = {}
            for n in self.order:
                for pos, i in enumerate(n.inputs):
                    cons.setdefault(i.index, []).append((n.index, pos))
            self._consumers = cons
        return self._consumers.get(index, [])


class PreSum:
    """Unbatched add_n nodes that each add one member of the same batch to the same source
    values (a tied bias copy, a constant) and to nodes computed one by one, e.g. the total
    input ``in[x->h]@t + in[h->h]@t + b[h]@t`` of every time step.  The member-plus-source
    part of all of them is one call on the batch's stacked output after the batch has run;
    each node then adds only its own live operands (the same numbers, summed in another
    order, so they may differ in the last bit)."""

    __slots__ = ("batch", "sources")

    def __init__(self, batch, sources):
        self.batch = batch      # batch id whose stacked output holds the members
        self.sources = sources  # node indices of the source operands (one value object each)

    def compute(self, values, bstore):
        """The stacked member-plus-source sums, or None when the batch ran member by member
        or a source would broadcast across the member axis."""
        if self.batch not in bstore:
            return None
        total = bstore[self.batch][0]
        if any(np.ndim(values[j]) >= total.ndim for j in self.sources):
            return None
        return self.plus_sources(total, values)

    def plus_sources(self, total, values):
        """total + each source in turn: the one order of this sum (stacked members in a run,
        one member when Activations remakes a lean chain's sum)."""
        for j in self.sources:
            total = total + values[j]
        return total

    def rows(self, out, values):
        """The stacked sums made one row at a time, on request (``rows(...)[k]``), from the
        batch's stacked output: the same bits as row k of ``compute``."""
        return _RowSums(self, out, values)


class _RowSums:
    __slots__ = ("presum", "out", "values")

    def __init__(self, presum, out, values):
        self.presum, self.out, self.values = presum, out, values

    def __getitem__(self, k):
        return self.presum.plus_sources(self.out[k], self.values)


def _with_presums(steps, nodes, member_of, batches, tied, uses):
    """add_n steps of one shape of operands (one batch member, sources shared by value,
    the rest computed singly), two or more of them per batch, become PRESUM steps
    ``(PRESUM, index, (group, row, live indices), in_idx, vjps)``: backward treats them as
    the add_n they are, forward adds the live operands to the group's precomputed row.
    When each member feeds nothing but its add_n and a source is a tied parameter that
    broadcasts to the member's shape, that source's gradient comes from the batch."""
    groups = {}
    for k, step in enumerate(steps):
        if step[0] != SINGLE or nodes[step[1]].op != "add_n":
            continue
        in_idx = step[3]
        members = [(p, member_of[j]) for p, j in enumerate(in_idx) if j in member_of]
        sources = [p for p, j in enumerate(in_idx) if nodes[j].op in ("param", "const")]
        live = [p for p, j in enumerate(in_idx) if j not in member_of and nodes[j].op not in ("param", "const")]
        if len(members) != 1 or not sources or not live:
            continue
        (mpos, (bid, row)), = members
        key = (bid, mpos, tuple(sources), tuple(id(nodes[in_idx[p]].value) for p in sources), tuple(live))
        groups.setdefault(key, []).append((k, row))
    steps = list(steps)
    for (bid, mpos, sources, _, live), ks in groups.items():
        if len(ks) < MIN_BATCH:
            continue
        group = PreSum(bid, tuple(steps[ks[0][0]][3][p] for p in sources))
        via_batch = _sources_via_batch(steps, ks, nodes, mpos, sources, tied, uses, batches)
        for k, row in ks:
            _, index, _, in_idx, vjps = steps[k]
            if via_batch:
                vjps = tuple((j, SOURCE_VIA_BATCH, t) if p in via_batch else (j, v, t)
                             for p, (j, v, t) in enumerate(vjps))
            steps[k] = (PRESUM, index, (group, row, tuple(in_idx[p] for p in live)), in_idx, vjps)
        if via_batch:
            b = batches[bid]
            rows = [row for _, row in ks]
            rows = None if rows == list(range(len(b.members))) else rows
            adds = tuple(steps[k][1] for k, _ in ks)
            for p in via_batch:
                j = steps[ks[0][0]][3][p]  # one copy of the tie, in this plan: its gradient goes to the tie's sum
                b.source_grads.append((j, rows, nodes[j].value.shape, adds))
    return steps


def _sources_via_batch(steps, ks, nodes, mpos, sources, tied, uses, batches):
    """Positions of the tied sources whose gradient a PreSum group can take from its batch:
    every member feeds only its add_n (so its gradient is the add_n's), and the source
    broadcasts into the member's shape (so summing the member's gradient over the source's
    broadcast axes gives the source's share)."""
    for k, _ in ks:
        member = steps[k][3][mpos]
        if uses.get(member) != 1 or nodes[member].shape != nodes[steps[k][1]].shape:
            return ()
    out = []
    for p in sources:
        js = [steps[k][3][p] for k, _ in ks]
        t = tied.get(js[0])
        if t is None or any(tied.get(j) is not t for j in js):
            continue
        src = nodes[js[0]].value.shape
        member_shape = nodes[steps[ks[0][0]][3][mpos]].shape
        if len(src) > len(member_shape) or any(
                d != 1 and d != m for d, m in zip(reversed(src), reversed(member_shape))):
            continue  # (an unknown axis m=None of the member accepts only d=1)
        out.append(p)
    return tuple(out)


def _with_slope_groups(steps, nodes, batches):
    """Steps whose single nodes of a slope op (see ops.OpDef.slope) of one shape, two or
    more of them, get SlopeRow VJPs sharing one SlopeGroup."""
    stacks = {tuple(ref): (b.id, pos) for b in batches for pos, (kind, ref) in enumerate(b.inputs)
              if kind == "stack"}
    groups = {}
    for k, step in enumerate(steps):
        if step[0] != BATCH:
            n = nodes[step[1]]
            op = _ops.REGISTRY.get(n.op)
            if op is not None and op.slope is not None and len(n.inputs) == 1:
                groups.setdefault((n.op, n.shape, str(n.dtype)), []).append(k)
    steps = list(steps)
    for (opname, _, _), ks in groups.items():
        if len(ks) < MIN_BATCH:
            continue
        members = [steps[k][1] for k in ks]
        group = SlopeGroup(members, _ops.REGISTRY[opname].slope, stacks.get(tuple(members)))
        for row, k in enumerate(ks):
            kind, index, fwd, in_idx, ((j, _, t),) = steps[k]
            if isinstance(fwd, np.ufunc):  # its output can go straight into the group's buffer
                fwd = RowOut(fwd, group, row)
            steps[k] = (kind, index, fwd, in_idx, ((j, SlopeRow(group, row), t),))
    return steps


def _bound_vjp(op, pos, attrs):
    if op.name == "add_n" or (not op.variadic and pos < len(op.vjps) and op.vjps[pos] is _ops.passthrough):
        return _ops.passthrough  # the backward loop hands g on without calling anything
    fn = _rule_for(op, pos)
    if fn is None:
        _no_rule(op.name, pos)
    return _bind(fn, attrs)


def stack_rows(vals):
    """np.stack for many small arrays, with less per-array overhead; None if shapes or dtypes
    differ (a stack of mixed dtypes would compute the narrower members in the wider one)."""
    shape = np.shape(vals[0])
    for v in vals:
        if v.shape != shape:
            return None
    if len(set(map(attrgetter("dtype"), vals))) > 1:
        return None
    if shape:
        return np.concatenate(vals).reshape((len(vals),) + shape)
    return np.array(vals)


class SlopeGroup:
    """Single (unbatched) nodes of one op with a slope rule and one shape, e.g. the tanh of
    every time step: they depend on each other, so they run one by one, but once forward is
    done their slopes (tanh: 1 - out^2) are computed in one call for the backward pass."""

    __slots__ = ("members", "slope", "stacked_as")

    def __init__(self, members, slope, stacked_as=None):
        self.members = members
        self.slope = slope
        self.stacked_as = stacked_as  # (batch id, operand position) that stacks exactly these members

    def value_rows(self, x, bstore):
        """This run's buffer for the members' outputs (see RowOut): ``(rows, shape, dtype)``,
        allocated when the first member is computed, from its input; NO_ROWS when that
        input is not a float array with at least one axis."""
        got = bstore.get(self)
        if got is None:
            if type(x) is np.ndarray and x.ndim >= 1 and x.dtype.kind == "f" and ROWS in bstore:
                got = (bstore[ROWS].new(len(self.members), x.shape, x.dtype), x.shape, x.dtype)
            else:
                got = NO_ROWS
            bstore[self] = got
        return got

    def compute(self, values, bstore=None):
        """Every member's slope: rows of one array (or one array each if runtime shapes or
        dtypes differ).  Computed a chunk of members at a time, so the temporaries stay small;
        the members' values are read as one array when they are rows of the run's buffer
        or a batch stacked them in forward."""
        outs = [values[m] for m in self.members]
        first = outs[0]
        n = len(outs)
        stacked = stacked_view(outs, bstore.get(ROWS)) if bstore else None  # (rows of one buffer: one shape)
        if stacked is None and not all(o.shape == first.shape and o.dtype == first.dtype for o in outs):
            return [self.slope(o) for o in outs]
        if stacked is None and self.stacked_as is not None and bstore and self.stacked_as[0] in bstore:
            arr = bstore[self.stacked_as[0]][1][self.stacked_as[1]]
            if arr.dtype == first.dtype and arr.size == n * first.size:
                stacked = arr.reshape((n,) + first.shape)
        if stacked is not None and n * first.size <= 4 * SLOPE_CHUNK:
            slopes = self.slope(stacked)  # one call; its temporaries are as large as the stack itself
            # a fresh array: backward overwrites slopes with products (exp's slope is its output)
            return slopes.copy() if np.may_share_memory(slopes, stacked) else slopes
        slopes = None
        per = max(1, SLOPE_CHUNK // max(1, first.size))
        for lo in range(0, n, per):
            part = self.slope(stack_rows(outs[lo:lo + per]) if stacked is None else stacked[lo:lo + per])
            if slopes is None:
                slopes = np.empty((len(outs),) + part.shape[1:], part.dtype)
            slopes[lo:lo + per] = part
        return slopes


class RowOut:
    """The forward of a slope-group member whose op is a numpy ufunc (tanh, exp): it writes
    the output into row k of the group's buffer for this run (SlopeGroup.value_rows) when
    the input has the buffer's shape and dtype, so the chain's values are one array."""

    __slots__ = ("ufunc", "group", "k")

    def __init__(self, ufunc, group, k):
        self.ufunc, self.group, self.k = ufunc, group, k

    def run(self, x, bstore):
        rows, shape, dtype = self.group.value_rows(x, bstore)
        if type(x) is np.ndarray and x.shape == shape and x.dtype == dtype:
            out = rows[self.k]
            self.ufunc(x, out=out)
            return out
        return self.ufunc(x)


class SlopeRow:
    """The VJP marker of a slope-group member: g * (row k of the group's slopes)."""

    __slots__ = ("group", "k")

    def __init__(self, group, k):
        self.group = group
        self.k = k


def lift(arr, rank, stacked):
    """Reshape an operand for a batched call whose members have rank ``rank``:
    a stacked operand (members first) gets 1s after the member axis, a shared one
    gets 1s in front, so numpy broadcasting lines the axes up as in a single member."""
    if stacked:
        q = arr.ndim - 1
        return arr if q == rank else arr.reshape(arr.shape[:1] + (1,) * (rank - q) + arr.shape[1:])
    q = arr.ndim
    return arr if q == rank + 1 else arr.reshape((1,) * (rank + 1 - q) + arr.shape)
