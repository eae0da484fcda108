"""Compiled execution: forward runs, stored activities, and reverse-mode gradients.

A graph is compiled once per set of requested outputs into a flat plan (the
needed nodes in topological order, with their input slots); later runs reuse it.
The backward pass walks the same plan in reverse, accumulating dE/d(node) for
every node the loss depends on (parameters, inputs and intermediates alike).
"""

from collections import deque
from functools import partial
from itertools import product, repeat
from operator import attrgetter, is_

import numpy as np

from . import ops as _ops
from .fragments import FRAGMENT
from .errors import FeedError, GraphError, NodeTypeError, NonFiniteError, ShapeError, UnknownNodeError
from .graph import param_writes
from .node import Node
from .plan import (BATCH, BATCH_SUM, DROPPED, FED, PRESUM, ROWS, SOURCE_VIA_BATCH, TIED_MATMUL_A, TIED_OUTER,
                   Plan, RowOut, SlopeRow, lift, stack_rows, viewed)
from .rowbuffers import RowIndex, runs, stacked_view
from .shapes import fmt

BATCH_ACROSS = True  # batch identical independent nodes (see plan.py); False runs node by node


def ancestors(graph, roots):
    """Sorted indices of ``roots`` and everything they depend on (one reverse sweep, no recursion)."""
    if roots is None:
        return list(range(len(graph.nodes)))
    mark = bytearray(len(graph.nodes))
    for r in roots:
        mark[r.index] = 1
    top = max(r.index for r in roots) if roots else -1
    nodes = graph.nodes
    for i in range(top, -1, -1):
        if mark[i]:
            for inp in nodes[i].inputs:
                mark[inp.index] = 1
    return [i for i in range(top + 1) if mark[i]]


def compile_plan(graph, outputs=None, batch=None):
    roots = None if outputs is None else tuple(graph.own(o, "outputs") for o in outputs)
    batch = BATCH_ACROSS if batch is None else bool(batch)
    key = (len(graph.nodes), graph.constraints.version, batch,
           None if roots is None else tuple(sorted(r.index for r in roots)))
    plan = graph._plans.get(key)
    if plan is not None and not plan.params_current():
        # a param's array was replaced since: the plan grouped params by the arrays they held
        # (batches, summed steps, one copy per array), and the ties' variables did too
        graph._plans.clear()
        graph.constraints._rebuild()
        return compile_plan(graph, outputs, batch)
    if plan is None:
        if len(graph._plans) > 32:
            graph._plans.clear()
        plan = graph._plans[key] = Plan(graph, ancestors(graph, roots), batch=batch)
    return plan


def _resolve_feeds(graph, plan, feeds):
    if not isinstance(feeds, dict):
        raise FeedError(f"feeds must be a dict of input name (or node) -> array, got {type(feeds).__name__}")
    resolved = {}
    for key, value in feeds.items():
        if isinstance(key, Node):
            node = graph.own(key, "feeds")
        elif isinstance(key, str):
            if key not in graph._by_name:
                names = [n.name for n in graph.inputs]
                raise FeedError(f"feed '{key}': graph '{graph.name}' has no input of that name (inputs: {names})")
            node = graph[key]
        else:
            raise FeedError(f"feed keys must be input names or input nodes, got {type(key).__name__}")
        if node.op != "input":
            raise FeedError(f"feed '{node.name}': it is a {node.op} node, only input nodes can be fed")
        resolved[node.index] = _check_feed(node, value)
    for node in plan.inputs:
        if node.index not in resolved:
            raise FeedError(
                f"missing feed for input '{node.name}' of shape {fmt(node.shape)} in graph '{graph.name}'; "
                f"pass it in feeds, e.g. {{'{node.name}': array}}")
    return resolved


def _trusted_feeds(graph, plan, feeds, values, bstore, eager=False):
    """Store trusted feeds.  An array fed whole for exactly the inputs of one batch operand
    that alone reads them (Plan.fed_stacks) is kept as it is, for the batch to read; their
    rows are made when asked (Activations.value).  Other arrays fed whole are adopted as row
    buffers; ``eager`` (check_finite runs) adopts every one."""
    size = len(values)
    stacks = {}
    keys = {}  # slot -> the key its array came with
    for key, value in feeds.items():
        if type(key) is tuple:
            if not key or max(key) >= size:
                continue
            slot = None if eager or len(value) != len(key) else plan.fed_stacks.get(key)
            if slot is None:
                deque(map(values.__setitem__, key, bstore[ROWS].adopt(value)), 0)
            else:
                stacks[slot], keys[slot] = value, key
        elif key.index < size:
            values[key.index] = value
    waiting = 0  # inputs whose values wait in ``stacks``
    for slot, key in keys.items():
        if all(map(is_, map(values.__getitem__, key), repeat(None))):  # (in C)
            waiting += len(key)
        else:  # an input also fed on its own: its own feed wins, the others take their rows
            del stacks[slot]
            for i, row in zip(key, bstore[ROWS].adopt(feeds[key])):
                if values[i] is None:
                    values[i] = row
    if sum(map(is_, map(values.__getitem__, plan.input_indices), repeat(None))) != waiting:
        missing = [n.name for n in plan.inputs if values[n.index] is None and
                   plan.fed_rows.get(n.index, (None,))[0] not in stacks]
        raise FeedError(f"missing feeds for inputs {missing[:5]} of graph '{graph.name}'")
    if stacks:
        bstore[FED] = stacks


def _fed_rows_now(b, values, bstore):
    """The rows of the arrays fed whole for batch b's operands, stored as the inputs' values
    (before b's members run one by one, which read them)."""
    stacks = bstore.get(FED)
    if stacks:
        for pos, (_, ref) in enumerate(b.inputs):
            arr = stacks.get((b.id, pos))
            if arr is not None:
                deque(map(values.__setitem__, ref, arr), 0)


def _check_feed(node, value):
    if (type(value) is np.ndarray and value.dtype.kind == "f" and node.dtype.kind == "f"
            and value.ndim == len(node.shape)
            and all(w is None or w == g for w, g in zip(node.shape, value.shape))):
        return value  # the common case, checked without numpy's slower dtype machinery
    try:
        arr = np.asarray(value)
    except Exception as exc:  # ragged lists and the like
        raise FeedError(f"feed '{node.name}': cannot be read as an array ({exc})") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise FeedError(f"feed '{node.name}': expected numbers, got dtype {arr.dtype}")
    if np.issubdtype(node.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.integer):
            if not np.all(np.equal(np.mod(arr, 1), 0)):
                raise FeedError(f"feed '{node.name}': input is declared integer but got non-integer values")
            arr = arr.astype(np.int64)
    elif not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(node.dtype)
    if arr.ndim != len(node.shape):
        raise FeedError(
            f"feed '{node.name}': expected rank {len(node.shape)} with shape {fmt(node.shape)}, "
            f"got rank {arr.ndim} with shape {arr.shape}")
    for axis, (want, got) in enumerate(zip(node.shape, arr.shape)):
        if want is not None and want != got:
            raise FeedError(
                f"feed '{node.name}': expected shape {fmt(node.shape)}, got {arr.shape} "
                f"(axis {axis} must be {want})")
    return arr


def _not_finite(value):
    return isinstance(value, np.ndarray) and value.dtype.kind == "f" and not np.all(np.isfinite(value))


def _describe_inputs(node, values):
    parts = []
    for i in node.inputs:
        v = values[i.index]
        parts.append(f"'{i.name}' ({i.op}, shape {np.shape(v)}, finite={not _not_finite(np.asarray(v))})")
    return ", ".join(parts)


def run_forward(graph, feeds, outputs=None, check_finite=False, batch=None, trusted=False):
    """Graph.forward's work.  ``trusted``: feeds already checked by the caller (the rnn layer
    validates clamps and targets itself), {input node of this graph: array}, or {tuple of
    input node indices: array} where row k feeds input k (a batch then reads the array
    itself as the stacked inputs, see rowbuffers.py)."""
    plan = compile_plan(graph, outputs, batch)
    values = [None] * plan.size
    bstore = {ROWS: RowIndex()}  # batches' stacked results, slope groups' row buffers (plan.RowOut)
    nodes = graph.nodes
    deque(map(values.__setitem__, plan.const_indices, map(attrgetter("value"), plan.const_nodes)), 0)
    if trusted:
        _trusted_feeds(graph, plan, feeds, values, bstore, eager=check_finite)
    else:
        feeds = fed = _resolve_feeds(graph, plan, feeds)
        for node in plan.inputs:  # feeds the requested outputs do not need are checked, not stored
            values[node.index] = fed[node.index]
    copied = _place_params(plan, values, feeds)
    if check_finite:
        for index in sorted((*plan.const_indices, *plan.param_indices)):  # (in creation order)
            _check_value(nodes[index], values)
        for node in plan.inputs:
            _check_value(node, values)
    _run_steps(plan.steps if check_finite else plan.fast_steps, values, bstore, {}, nodes, check_finite)
    if not check_finite:
        copies = None  # a caller's memory read by a dropped output (_memory_key) -> the run's copy of it
        for bid in plan.droppable:
            got = bstore.get(bid)
            if got is not None and got[0].nbytes >= DROP_MIN_BYTES:
                if copies is None:
                    copies, fed_arrays = {}, [v for v in feeds.values() if type(v) is np.ndarray]
                _drop_output(plan.batches[bid], values, bstore, fed_arrays, copies)
    return Activations(graph, plan, values, bstore, copied)


DROP_MIN_BYTES = 1 << 16  # smaller batch outputs are kept: letting them go costs more time than it saves memory
KEEP_SHARE = 0.5  # copies of the caller's arrays that a dropped output is made again from: at most this share of it
PARAMS_COPIED_UP_TO = 1 << 20  # bytes of params a run always copies; more only when the feeds are as large


def _place_params(plan, values, feeds):
    """A run works on its own copy of the params (one per array, tied copies sharing it, in
    its memory layout), so that its values and gradients, stored or made when asked, are the
    run's after an optimizer step writes the params in place.  Params larger than 1 MiB and
    than the feeds are not copied: the run then reads the live arrays, answers only while no
    param has been written since (graph.note_param_write) and refuses otherwise.  True when
    copied."""
    arrays = list(map(attrgetter("value"), plan.param_firsts))  # (compile_plan checked the grouping)
    size = sum(a.nbytes for a in arrays)
    copied = size <= PARAMS_COPIED_UP_TO or size <= sum(getattr(v, "nbytes", 0) for v in feeds.values())
    if copied:
        arrays = [a.copy(order="K") for a in arrays]
    deque(map(values.__setitem__, plan.param_indices, map(arrays.__getitem__, plan.param_group_of)), 0)
    return copied


_STAND_INS = {}  # (shape, dtype) -> a read-only array of that shape without memory (all strides 0)


def _stand_in(shape, dtype):
    got = _STAND_INS.get((shape, dtype))
    if got is None:
        if len(_STAND_INS) >= 64:
            _STAND_INS.clear()
        got = _STAND_INS[(shape, dtype)] = np.broadcast_to(np.zeros((), dtype), shape)
    return got


def _copies_as_is(v):
    """True when a copy of v keeps its memory layout (so BLAS makes the same bits from it):
    a contiguous array, in C or Fortran order."""
    return type(v) is np.ndarray and (v.flags.c_contiguous or v.flags.f_contiguous)


def _memory_key(a):
    """What two views of the same numbers have in common (two batches may each view a fed
    array anew): where they start, their shape, strides and dtype."""
    return a.__array_interface__["data"][0], a.shape, a.strides, a.dtype.str


def _drop_output(b, values, bstore, fed_arrays, copies):
    """Let go of batch b's stacked output (Plan.droppable) when copies of the caller's arrays it
    is made again from (operands that may be fed inputs or views of them, Batch.caller_operands,
    and do share memory with an array fed to this run: the caller may refill those) take at
    most KEEP_SHARE of it (``copies``: made once a run per array); its params are the run's
    own copies (_place_params).  What backward reads in its place has its shape and dtype and
    no memory (its VJPs do not read it), and so do the members' values, which
    Activations.value makes again when asked."""
    out, args = bstore[b.id]
    caller = [pos for pos in b.caller_operands
              if any(np.may_share_memory(args[pos], f) for f in fed_arrays)]  # (a stack made here is the run's)
    keys = {pos: _memory_key(args[pos]) for pos in caller}
    if (KEEP_SHARE * out.size < sum(args[pos].size for pos in caller if keys[pos] not in copies)
            or not all(_copies_as_is(args[pos]) for pos in caller)):
        return
    args = list(args)
    for pos in caller:
        c = copies.get(keys[pos])
        if c is None:
            c = copies[keys[pos]] = args[pos].copy(order="K")
        args[pos] = c
    stand_in = _stand_in(out.shape, out.dtype)
    bstore[b.id] = (stand_in, args)
    bstore.setdefault(DROPPED, {})[b.id] = True  # (True while let go; its operands stay the run's copies)
    deque(map(values.__setitem__, b.members, repeat(stand_in[0] if out.ndim > 1 else stand_in[0, ...])), 0)


def _run_steps(steps, values, bstore, presums, nodes, check_finite):
    """The forward loop over plan steps (``presums``: PreSum group -> its stacked
    member-plus-source sums, or None when they cannot be used this run)."""
    for step in steps:
        if step[0] == BATCH:
            b = step[1]
            if not _forward_batch(b, values, bstore, check_finite):
                _fed_rows_now(b, values, bstore)
                for m in b.members:  # runtime shapes differ: run the members one by one
                    _forward_single(nodes[m], values)
            if check_finite:
                for m in b.members:
                    _check_value(nodes[m], values)
            continue
        if step[0] == FRAGMENT:
            if not _forward_fragment(step[1], values, bstore, presums):
                _run_steps(step[1].steps, values, bstore, presums, nodes, check_finite)
            continue
        kind, index, fwd, in_idx, _ = step
        try:
            if kind == BATCH_SUM:
                got = bstore.get(fwd.id)
                values[index] = (_ops._add_n(*[values[j] for j in in_idx]) if got is None
                                 else np.add.reduce(got[0], axis=0))
            elif kind == PRESUM:
                group, row, live = fwd
                pre = _presum(group, values, bstore, presums)
                if pre is None:  # no precomputed sums this run: the plain add_n
                    values[index] = _ops._add_n(*[values[j] for j in in_idx])
                else:
                    total = pre[row] + values[live[0]]
                    for j in live[1:]:
                        total = total + values[j]
                    values[index] = total
            elif type(fwd) is RowOut:
                values[index] = fwd.run(values[in_idx[0]], bstore)
            elif len(in_idx) == 1:  # the common arities without building an argument list
                values[index] = fwd(values[in_idx[0]])
            elif len(in_idx) == 2:
                values[index] = fwd(values[in_idx[0]], values[in_idx[1]])
            else:
                values[index] = fwd(*[values[j] for j in in_idx])
        except (ValueError, IndexError) as exc:
            _run_error(nodes[index], values, exc)
        if check_finite:
            _check_value(nodes[index], values)


def _presum(group, values, bstore, presums):
    pre = presums.get(group, False)
    if pre is False:
        pre = presums[group] = group.compute(values, bstore)
    return pre


def _forward_fragment(frag, values, bstore, presums):
    """Run a repeated fragment with its generated loop; False when the generic loop must
    (a PreSum without its sums this run, or a runtime error to be reported by node)."""
    ch = frag.chain
    if ch is not None and ch.run_lean_in_rows(values, frag.proto[0][2][0], frag.groups[1], frag.F[1],
                                              bstore, presums):
        bstore[frag] = True  # ran lean (as below)
        return True
    P = []
    for kind, _, fwd, _, _ in frag.proto:
        if kind == PRESUM:
            pre = _presum(fwd[0], values, bstore, presums)
            if pre is None:
                return False
            P.append(pre)
        else:
            P.append(None)
    if frag.chain is not None and frag.chain.run_lean(values, P[0], frag.groups[1], frag.F[1], bstore):
        bstore[frag] = True  # ran lean: its sums and products are made again when asked (Activations.value)
        return True
    R = tuple(None if grp is None else (bstore.get(grp, (None, None, None)), partial(grp.value_rows, bstore=bstore))
              for grp in frag.groups)
    try:
        frag.forward(values, frag.rows, frag.F, P, R, np.ndarray)
    except (ValueError, IndexError):
        return False
    return True


def _run_error(node, values, exc):
    shapes = ", ".join(f"'{i.name}' {np.shape(values[i.index])}" for i in node.inputs)
    raise ShapeError(f"{node.op} '{node.name}' failed at run time on inputs {shapes}: {exc}") from None


def _check_value(node, values):
    if _not_finite(values[node.index]):
        raise NonFiniteError(
            f"forward: node '{node.name}' ({node.op}) is the first to produce NaN or infinity; "
            f"its inputs: {_describe_inputs(node, values) or 'none (a source node)'}")


def _forward_single(node, values):
    ins = [values[i.index] for i in node.inputs]
    try:
        values[node.index] = _ops.get(node.op).forward(*ins, **node.attrs)
    except (ValueError, IndexError) as exc:
        _run_error(node, values, exc)


def _batch_args(b, values, bstore):
    """The stacked operands of a batch, or None when the members' runtime shapes differ."""
    lifted = b.lifted
    args = []
    stacks = bstore.get(FED)
    for pos, (kind, ref) in enumerate(b.inputs):
        if kind == "shared":
            a = np.asarray(values[ref])
            stacked = False
        elif kind == "tied":
            a = np.asarray(values[ref[0]])
            stacked = False
        elif kind == "batch":
            if ref in bstore:
                a = bstore[ref][0]
            else:  # that batch ran member by member (its runtime shapes differed)
                return None
            stacked = True
        else:
            a = stacks.get((b.id, pos)) if stacks else None  # fed whole (_trusted_feeds)
            if a is None:
                vals = [values[j] for j in ref]
                a = stacked_view(vals, bstore.get(ROWS))  # (no copy when they are rows of one buffer)
                if a is None:
                    a = stack_rows(vals)
                    if a is None:
                        return None
            stacked = True
        args.append(lift(a, b.rank, stacked) if lifted else a)
    return args


def _forward_batch(b, values, bstore, eager=False):
    args = _batch_args(b, values, bstore)
    if args is None:
        return False
    try:
        out = b.forward(*args)
    except (ValueError, IndexError):
        return False  # run member by member, which names the node that fails
    bstore[b.id] = (out, args)
    if b.lazy and not eager:
        return True  # only other batches read these members: Activations.value makes their rows when asked
    _store_rows(b, out, values)
    return True


def _store_rows(b, out, values):
    """Every member's value: its row of the batch's output, a view (0-d views out[k, ...],
    not copied scalars, for members without axes)."""
    if out.ndim > 1:
        deque(map(values.__setitem__, b.members, out), 0)
    else:
        deque(map(values.__setitem__, b.members, map(out.__getitem__, product(range(len(out)), (Ellipsis,)))), 0)


class Activations:
    """The stored value (activity) of every node computed by one forward run."""

    def __init__(self, graph, plan, values, bstore=None, params_copied=True):
        self.graph = graph
        self.plan = plan
        self._values = values
        self._bstore = bstore or {}
        self._params_copied = params_copied  # (autodiff._place_params: else the live params, while unwritten)
        self._writes = param_writes()

    def value(self, i):
        """The value of node index i, or None when it was not computed.  Members of a batch
        that only other batches read (plan.Batch.lazy) get their row view here, when asked,
        and so do inputs fed whole to one batch (_trusted_feeds); the sums and products a
        lean chain did not keep (fragments.Chain) are made again."""
        v = self._values[i] if i < len(self._values) else None
        if not self._params_copied and viewed(self.graph.nodes[i]).op == "param":  # (a live array, or a view)
            self._as_run(i)
        dropped = self._bstore.get(DROPPED)
        mb = self.plan.member_of.get(i) if v is None or dropped else None
        if dropped and mb is not None and dropped.get(mb[0]):  # its batch's output was let go: made again, all of it
            self._remake_batch(mb[0])
            v = self._values[i]
        if v is None:
            if mb is not None and mb[0] in self._bstore:
                out = self._bstore[mb[0]][0]
                v = self._values[i] = out[mb[1]] if out.ndim > 1 else out[mb[1], ...]
            elif i in self.plan.recompute:
                v = self._values[i] = self._remake(i)
            else:
                fr = self.plan.fed_rows.get(i)
                arr = None if fr is None else self._bstore.get(FED, {}).get(fr[0])
                if arr is not None:  # an input fed whole with others (_trusted_feeds): its row
                    v = self._values[i] = arr[fr[1]]
        return v

    def _as_run(self, i, what="value"):
        """Refuse to make node i's ``what`` again when the run did not copy its params and one
        has been written since (graph.note_param_write): it would read the new values."""
        if not self._params_copied and param_writes() != self._writes:
            node = self.graph.nodes[i]
            raise GraphError(
                f"the {what} of '{node.name}' ({node.op}) comes from its run's parameters, which the run did not "
                f"copy (they are larger than 1 MiB and than its feeds) and which were written since (an optimizer "
                f"step, a tie or load_params). Ask for it before updating, or run again")

    def _remake_batch(self, bid):
        """A dropped batch output (_drop_output), made by the same call on the same operands
        (so the same bits), and its members' rows."""
        b = self.plan.batches[bid]
        self._as_run(b.members[0])
        args = self._bstore[bid][1]
        out = b.forward(*args)
        self._bstore[bid] = (out, args)
        self._bstore[DROPPED][bid] = False
        _store_rows(b, out, self._values)

    def _remake(self, i):
        """A chain's sum or product, with the numpy calls that made it in the run: a product is
        ``np.dot(state, weight)`` (both kept); a sum is ``((member + sources...) + live)``,
        the order of PreSum and the fragment, where the live operand may be such a product."""
        how = self.plan.recompute[i]
        values = self._values
        self._as_run(i)
        if how[0] == "dot":
            return np.dot(values[how[1]], values[how[2]])
        _, group, member, live = how
        total = group.plus_sources(self.value(member), {j: values[j] for j in group.sources})
        x = values[live]
        if x is None:  # a product not kept either (its inputs are)
            x = values[live] = self._remake(live)
        return total + x

    def _node(self, key):
        node = self.graph.own(key, "activations")
        if self.value(node.index) is None:
            raise UnknownNodeError(
                f"node '{node.name}' was not computed in this run (it was built after the run, "
                f"or is not needed by the requested outputs)")
        return node

    def __getitem__(self, key):
        return self._values[self._node(key).index]

    def computed(self, node):
        """``node in self`` for a Node, without the name lookup and error of ``__contains__``,
        and without making anything (value() would) or reading a param to say so."""
        if node.graph is not self.graph:
            return False
        i = node.index
        if i < len(self._values) and self._values[i] is not None:
            return True
        mb = self.plan.member_of.get(i)
        if mb is not None:
            return mb[0] in self._bstore  # (its batch ran whole: a row of its output, or made again)
        if i in self.plan.recompute:
            return True
        fr = self.plan.fed_rows.get(i)
        return fr is not None and fr[0] in self._bstore.get(FED, {})

    def __contains__(self, key):
        try:
            return self.computed(self.graph.own(key, "activations"))
        except GraphError:
            return False

    def items(self):
        return [(n, self.value(n.index)) for n in self.plan.order]

    def backward(self, loss, seed=None, check_finite=False):
        """Reverse mode from ``loss``: dloss/d(node) for every node ``loss`` depends on.

        A non-scalar ``loss`` needs an explicit ``seed`` of its shape (dE/d(loss)).

        Raises
        ------
        GraphError if ``loss`` is not scalar and no seed is given, or the seed's shape is wrong;
        NonFiniteError with ``check_finite`` at the first non-finite gradient.
        """
        loss = self._node(loss)
        self._as_run(loss.index, "gradient")  # (backward reads the params: the run's, or refused)
        out = np.asarray(self._values[loss.index])
        if seed is None:
            if out.size != 1:
                raise GraphError(
                    f"backward from '{loss.name}' of shape {out.shape}: it is not a scalar; reduce it "
                    f"(tg.sum) or pass seed= an array of shape {out.shape} holding dE/d('{loss.name}')")
            seed = np.ones_like(out, dtype=out.dtype if out.dtype.kind == "f" else np.float64)
        else:
            try:
                seed = np.asarray(seed, dtype=np.float64 if out.dtype.kind != "f" else out.dtype)
            except (TypeError, ValueError):
                raise NodeTypeError(f"backward from '{loss.name}': the seed must be numbers of shape "
                                    f"{out.shape}, got {seed!r}") from None
            if seed.shape != out.shape:
                raise ShapeError(f"backward: seed shape {seed.shape} does not match '{loss.name}' shape {out.shape}")
        if check_finite:  # the generic loops read every value: make what a lean chain did not keep
            deque(map(self.value, self.plan.recompute), 0)  # (dropped batch outputs: no VJP reads them)
        grads, tsum, lazy, finals = backward_pass(self, loss, seed, check_finite)
        out = Gradients(self, loss, grads, tsum, lazy, finals)
        if check_finite:  # the loop checks what it propagates; sources end it, so check them here
            for n in self.plan.order:
                if n.op in ("input", "param", "const") and n.index not in self.plan.tied and \
                        _not_finite(out._raw(n.index)):
                    _nonfinite_grad(n)
            for t in self.plan.tied.values():
                if _not_finite(tsum.get(id(t))):
                    _nonfinite_grad(t.members[0])
        return out


def backward_pass(acts, loss, seed, check_finite=False):
    """The reverse sweep.  Returns (grads indexed by node, {id(tie group): summed gradient}).

    Tied parameters get no per-copy gradient here: their contributions add straight
    into one buffer per tie group (T copies of a weight cost one gradient, not T);
    ``Gradients`` computes a copy's own gradient on demand.
    """
    values = acts._values
    bstore = acts._bstore
    plan = acts.plan
    nodes = acts.graph.nodes
    tied = plan.tied
    grads = [None] * len(values)
    grads[loss.index] = seed
    tsum = {}
    bgrads = {}
    lazy = {}
    finals = {}
    seed_batch = plan.member_of.get(loss.index, (None,))[0]
    guard = None if acts._params_copied else acts._as_run  # (for gradients made when asked)
    unbroadcast = _ops.unbroadcast
    passthrough = _ops.passthrough
    outer = {}  # id(tie group) -> ([a], [g]): deferred shares a.T @ g of tied matmul weights
    slopes = {}  # slope group -> (its members' slopes, rows for their products g * slope), see _slopes
    rows = RowIndex(bstore.get(ROWS))  # this sweep's row buffers (and the forward run's)
    transposed = {}  # id(shared weight array) -> its transpose, contiguous (one per sweep)
    dot, multiply, ndarray = np.dot, np.multiply, np.ndarray

    # Buffers this sweep created itself (sums of two contributions) may take further
    # contributions in place; any other gradient array may be shared and is never written.
    owned = set()
    # A tie group's contributions that still carry a broadcast (batch) axis are summed
    # unreduced, per shape, and reduced once at the end: one reduction instead of T.
    wide = {}

    def accumulate(j, gi, fresh=False):
        """Add gi into dE/d(node j).  ``fresh``: gi is a new array nobody else holds, so it
        may become j's own buffer (and take j's later contributions in place)."""
        t = tied.get(j)
        shape = values[j].shape
        if t is not None:
            store, key = (wide, (id(t), gi.shape)) if gi.shape != shape else (tsum, id(t))
            cur = store.get(key)
            if cur is None:  # owned: later contributions add in place
                store[key] = gi if fresh and type(gi) is ndarray else np.array(gi, copy=True)
            elif cur.dtype == gi.dtype:
                cur += gi
            else:  # (in place, a wider contribution would be rounded to the buffer's dtype)
                store[key] = cur + gi
            return
        if gi.shape != shape:
            gi = unbroadcast(gi, shape)
        prev = grads[j]
        if prev is None:
            grads[j] = gi
            if fresh:
                owned.add(j)
        elif j in owned and (prev.dtype == gi.dtype or type(prev) is not ndarray):
            prev += gi
            grads[j] = prev  # (a numpy scalar does not add in place: keep the new object)
        elif fresh and prev.shape == gi.shape and prev.dtype == gi.dtype:
            gi += prev
            grads[j] = gi
            owned.add(j)
        else:
            grads[j] = prev + gi  # a new buffer: gi and prev may be shared with other nodes
            owned.add(j)

    for step in reversed(plan.steps if check_finite else plan.fast_steps):
        if step[0] == FRAGMENT:
            _backward_fragment(step[1], values, grads, owned, slopes, outer, transposed, accumulate, bstore, rows)
            continue
        if step[0] == BATCH:
            b = step[1]
            if b.id in bstore:
                _backward_batch(b, values, grads, bstore, bgrads, accumulate, nodes, lazy, finals, tied,
                                check_finite, seed_batch, rows, owned, guard)
            else:
                for m in reversed(b.members):
                    _backward_single(nodes[m], values, grads, accumulate, check_finite)
                _source_grads_one_by_one(b, grads, accumulate)
            continue
        kind, index, fwd, in_idx, vjps = step
        g = grads[index]
        if g is None:
            continue
        if kind == BATCH_SUM and fwd.id in bstore:  # into the batch's stacked gradient: g for every member
            if check_finite and _not_finite(g):
                _nonfinite_grad(nodes[index])
            out = bstore[fwd.id][0]
            G = np.empty(out.shape, np.result_type(g))
            G[...] = g
            prev = bgrads.get(fwd.id)
            bgrads[fwd.id] = G if prev is None else prev + G
            continue
        if check_finite and _not_finite(g):
            _nonfinite_grad(nodes[index])
        ins = None
        for j, vjp, t in vjps:
            if vjp is passthrough:
                gi = g
            elif vjp is SOURCE_VIA_BATCH:
                continue  # the batch of this add_n's member adds it for all steps at once
            elif type(vjp) is SlopeRow:
                S, GR, shape, dtype = _slopes(vjp.group, values, bstore, slopes, rows)
                if type(g) is ndarray and g.shape == shape and g.dtype == dtype:
                    gi = GR[vjp.k]  # the slope's own row: the product replaces it
                    multiply(g, gi, out=gi)
                else:
                    gi = g * S[vjp.k]
            elif vjp is TIED_MATMUL_A:
                w = values[in_idx[1]]
                wT = transposed.get(id(w))
                if wT is None:
                    wT = transposed[id(w)] = np.ascontiguousarray(w.T)
                accumulate(j, dot(g, wT), True)  # a fresh array: it may become j's own buffer
                continue
            elif vjp is TIED_OUTER:
                pair = outer.get(id(t))
                if pair is None:
                    pair = outer[id(t)] = ([], [])
                pair[0].append(values[in_idx[0]])
                pair[1].append(g)
                continue
            else:
                if ins is None:
                    ins = [values[k] for k in in_idx]
                gi = vjp(g, values[index], *ins)
                if gi is None:
                    continue
            accumulate(j, gi)
    for tid, (As, Gs) in outer.items():
        if not As:  # a fragment prepared the lists, but no gradient reached these copies
            continue
        total = _sum_outer(As, Gs, rows)
        cur = tsum.get(tid)
        tsum[tid] = total if cur is None else cur + total
    if wide:
        for (tid, _), total in wide.items():
            total = unbroadcast(total, plan.tie_shapes[tid])
            cur = tsum.get(tid)
            tsum[tid] = total if cur is None else cur + total
    return grads, tsum, lazy, finals


def _backward_fragment(frag, values, grads, owned, slopes, outer, transposed, accumulate, bstore, rows):
    """A repeated fragment's generated backward loop, given what its markers need."""
    S, O = [list(x) for x in frag.S], [list(x) for x in frag.O]  # (what every entry gets by default)
    for m, p, group in frag.slope_entries:
        S[m][p] = _slopes(group, values, bstore, slopes, rows)
    for m, p, tid in frag.outer_entries:
        O[m][p] = outer.setdefault(tid, ([], []))
    lean = bstore.get(frag)
    if lean and frag.chain.run_backward(values, grads, owned, S[1][0], O[2][1], transposed):
        return
    (frag.backward_lean if lean else frag.backward)(
        values, grads, owned, frag.rows, frag.G, S, O, transposed, accumulate, _ops.unbroadcast,
        np.dot, np.ascontiguousarray, np.multiply, np.ndarray, np.empty_like)


def _slopes(group, values, bstore, slopes, rows):
    """(slopes, product rows, shape, dtype) of a slope group, computed once per sweep: a
    member's product g * slope replaces its slope in place (each is used once) when g has
    the slopes' shape and dtype, so the products, which tied weights and batches read
    stacked, are rows of one array; product rows are None when the slopes are not one
    float array."""
    sl = slopes.get(group)
    if sl is None:
        S = group.compute(values, bstore)
        if type(S) is np.ndarray and S.ndim >= 2 and S.dtype.kind == "f":
            sl = (S, rows.adopt(S), S.shape[1:], S.dtype)
        else:
            sl = (S, None, False, None)
        slopes[group] = sl
    return sl


OUTER_CHUNK = 1 << 18  # elements of the stacked operands per product: bounds _sum_outer's extra memory
OUTER_SMALL = 1 << 12  # up to this many elements in all, the operands are simply stacked (cheaper than finding rows)


def _sum_outer(As, Gs, rows=None):
    """sum_k As[k].T @ Gs[k] as a few large matrix products (one BLAS call instead of one
    per time step; the order of the sum differs, by rounding only).  Where both are
    consecutive rows of row buffers the product reads them in place; the rest is stacked
    in chunks, which bounds the extra memory."""
    As, Gs = As[::-1], Gs[::-1]  # backward collected them last step first
    if len(As) * (As[0].size + Gs[0].size) <= OUTER_SMALL:
        rows = None  # (one product of the stacked operands, below)
    pa, pg = ((runs(x, rows) if rows is not None else [(0, len(x), None)]) for x in (As, Gs))
    cuts = sorted({c for lo, hi, _ in pa + pg for c in (lo, hi)})
    total = None
    per = max(1, OUTER_CHUNK // max(1, As[0].size + Gs[0].size))
    for lo, hi in zip(cuts, cuts[1:]):
        va, vg = _view_of(pa, lo, hi), _view_of(pg, lo, hi)
        step = hi - lo if va is not None and vg is not None else per  # what is copied goes in chunks
        for c in range(lo, hi, step):
            e = min(hi, c + step)
            a = va[c - lo:e - lo] if va is not None else As[c] if e - c == 1 else np.concatenate(As[c:e])
            g = vg[c - lo:e - lo] if vg is not None else Gs[c] if e - c == 1 else np.concatenate(Gs[c:e])
            part = _flat_outer(a, g)
            total = part if total is None else total + part
    return total


def _view_of(pieces, lo, hi):
    """Items [lo, hi) as a view of a row buffer when one piece of ``runs`` holds them, else None."""
    for s, e, v in pieces:
        if s <= lo and hi <= e:
            return None if v is None else v[lo - s:hi - s]
    return None


def _flat_outer(a, g):
    """a.T @ g for 2-D operands, or for stacks of them (members first) as one product."""
    if a.ndim == 3:
        a = a.reshape(a.shape[0] * a.shape[1], a.shape[2])
    if g.ndim == 3:
        g = g.reshape(g.shape[0] * g.shape[1], g.shape[2])
    return a.T @ g


def _nonfinite_grad(node):
    raise NonFiniteError(f"backward: the gradient at node '{node.name}' ({node.op}) is the first "
                         f"to hold NaN or infinity")


def _backward_single(node, values, grads, accumulate, check_finite):
    g = grads[node.index]
    if g is None:
        return
    if check_finite and _not_finite(g):
        _nonfinite_grad(node)
    op = _ops.get(node.op)
    ins = [values[i.index] for i in node.inputs]
    for pos, i in enumerate(node.inputs):
        gi = op.vjp(pos, g, values[node.index], ins, node.attrs)
        if gi is not None:
            accumulate(i.index, _ops.unbroadcast(gi, np.shape(values[i.index])))


def _backward_batch(b, values, grads, bstore, bgrads, accumulate, nodes, lazy, finals, tied, check_finite=False,
                    seed_batch=None, rows=None, owned=None, guard=None):
    """One batched VJP per input.  Members' gradients stay rows of the stacked gradient
    (``lazy``: index -> (array, row)), handed out when asked; so do the gradients of
    source nodes fed stacked, unless something else also contributes to them (``guard``:
    Activations._as_run of a run that did not copy its params, which such a deferred gradient
    asks first; None when the run copied them)."""
    out, args = bstore[b.id]
    G = bgrads.pop(b.id, None)
    members = b.members
    if b.from_singles or b.id == seed_batch:  # contributions left in grads[member] (or the seed)
        per = [grads[m] for m in members]
        some = not all(map(is_, per, repeat(None)))
    else:
        per, some = None, False
    if G is None and not some:
        return
    if G is None:
        G = stacked_view(per, rows)  # (no copy when they are rows of one buffer)
        if G is None:
            zero = np.zeros(out.shape[1:], _grad_dtype(out))
            G = stack_rows([zero if p is None else p for p in per])  # (out[k]: member k)
    elif some:
        G = np.array(G, copy=True)
        for k, p in enumerate(per):
            if p is not None:
                G[k] += p
    finals[b.id] = G  # member k's gradient is row k (plan.member_of): handed out when asked
    if b.id == seed_batch:  # the seed is in G too, and it is no add_n's gradient
        _source_grads_one_by_one(b, grads, accumulate)
    else:
        for j, rows, shape, _ in b.source_grads:  # tied sources of PreSum add_n nodes (plan.SOURCE_VIA_BATCH)
            accumulate(j, _ops.unbroadcast(G if rows is None else G[rows], shape), True)  # (a sum: fresh)
    if check_finite and _not_finite(G):
        for k, m in enumerate(members):
            if _not_finite(G[k]):
                _nonfinite_grad(nodes[m])
    unbroadcast = _ops.unbroadcast
    for pos, (kind, ref) in enumerate(b.inputs):
        if b.fed[pos]:
            # gradients of fed inputs: nothing upstream needs them, so compute them when asked
            first = values[ref[0]]
            deferred = _Deferred(b, pos, G, out, args, guard,
                                 np.shape(first) if first is not None else bstore[FED][(b.id, pos)].shape[1:])
            if b.fed_alone[pos]:
                lazy[(b.id, pos)] = deferred  # input k's gradient: row k (plan.fed_rows)
                continue
            for k, j in enumerate(ref):
                if grads[j] is None and j not in lazy:
                    lazy[j] = (deferred, k)
                else:
                    accumulate(j, deferred[k])
            continue
        gi = b.vjps[pos](G, out, *args)
        if gi is None:
            continue
        if kind == "shared" or kind == "tied":
            j = ref if kind == "shared" else ref[0]
            shape = np.shape(values[j])
            # fresh: a new product (built-in matmul), or summed over the stacked axes here
            accumulate(j, unbroadcast(gi, shape), b.fresh_vjps or (type(gi) is np.ndarray and gi.shape != shape))
        elif kind == "batch":
            natural = bstore[ref][0].shape
            gi = unbroadcast(gi, args[pos].shape)
            if gi.shape != natural:
                gi = gi.reshape(natural)
            prev = bgrads.get(ref)
            bgrads[ref] = gi if prev is None else prev + gi
        else:
            gi = unbroadcast(gi, args[pos].shape)
            natural = gi.shape[:1] + np.shape(values[ref[0]])
            if gi.shape != natural:
                gi = gi.reshape(natural)
            if b.untied_stack[pos] and all(map(is_, map(grads.__getitem__, ref), repeat(None))):
                deque(map(grads.__setitem__, ref, gi), 0)  # first contributions: views
                if owned is not None and (b.fresh_vjps or _fresh(gi, G, out, args)):
                    owned.update(ref)  # nobody else holds these rows: later contributions add in place
                continue
            for j, row in zip(ref, gi):
                if grads[j] is None and j not in tied:
                    grads[j] = row  # the first contribution: a view, not owned (accumulate copies on the next)
                else:
                    accumulate(j, row)


def _grad_dtype(v):
    """The dtype of a zero gradient for value v: its own float dtype (float32 stays float32)."""
    dt = getattr(v, "dtype", None)
    return dt if dt is not None and dt.kind == "f" else np.float64


def _fresh(gi, G, out, args):
    """True when the VJP result ``gi`` shares no memory with the batch's gradient, output or
    operands (a product, not a view of something another node's gradient may hold)."""
    may = np.may_share_memory
    return not (may(gi, G) or may(gi, out) or any(may(gi, a) for a in args))


def _source_grads_one_by_one(b, grads, accumulate):
    """What SOURCE_VIA_BATCH left to batch b, from each add_n's own gradient."""
    for j, _, shape, adds in b.source_grads:
        for a in adds:
            if grads[a] is not None:
                accumulate(j, _ops.unbroadcast(grads[a], shape))


class _Deferred:
    """The stacked gradient of one batched operand, computed on first access."""

    __slots__ = ("b", "pos", "G", "out", "args", "member_shape", "guard", "_value")

    def __init__(self, b, pos, G, out, args, guard, member_shape):
        self.b, self.pos, self.G, self.out, self.args = b, pos, G, out, args
        self.member_shape = tuple(member_shape)
        self.guard = guard  # None, or the run's Activations._as_run: see _backward_batch
        self._value = None

    def __getitem__(self, k):
        if self._value is None:
            if self.guard is not None:
                self.guard(self.b.inputs[self.pos][1][k], "gradient")
            gi = self.b.vjps[self.pos](self.G, self.out, *self.args)
            natural = self.G.shape[:1] + self.member_shape
            if gi is None:
                gi = np.zeros(natural, _grad_dtype(self.args[self.pos]))
            else:
                gi = _ops.unbroadcast(gi, self.args[self.pos].shape)
                if gi.shape != natural:
                    gi = gi.reshape(natural)
            self._value = gi
            self.G = self.out = self.args = self.guard = None  # computed: let the operands go
        return self._value[k]


class Gradients:
    """dE/d(node) for every node; zeros for nodes the loss does not depend on.

    ``grads[W]`` is the raw gradient of one parameter, as if it were unconstrained
    (for a tied copy: its own contribution, computed on demand);
    ``grads.constrained()`` applies the graph's ties and linear constraints.
    """

    def __init__(self, acts, loss, grads, tied_sums=None, lazy=None, finals=None):
        self.acts = acts
        self.graph = acts.graph
        self.loss = loss
        self._grads = grads
        self._tied_sums = tied_sums or {}
        self._lazy = lazy or {}
        self._finals = finals or {}
        self._copy_cache = {}

    def _raw(self, i):
        """The stored gradient of node index i, or None: a batch member's row of the
        stacked gradient, plus (for a fed input) any contribution stored separately."""
        mb = self.acts.plan.member_of.get(i)
        if mb is not None and mb[0] in self._finals:
            return self._finals[mb[0]][mb[1]]  # a batch member: its row of the batch's gradient
        lz = self._lazy.get(i)
        if lz is None:
            fr = self.acts.plan.fed_rows.get(i)
            if fr is not None and fr[0] in self._lazy:
                lz = (self._lazy[fr[0]], fr[1])
        if lz is None:
            return self._grads[i] if i < len(self._grads) else None
        row = lz[0][lz[1]]
        node = self.graph.nodes[i]
        if node.op == "input" and self._grads[i] is not None:
            return row + self._grads[i]
        return row

    def __getitem__(self, key):
        node = self.graph.own(key, "gradients")
        i = node.index
        if i in self.acts.plan.tied:
            g = self._copy_cache.get(i)
            if g is None:
                g = self._copy_cache[i] = self._copy_grad(node)
            return g
        g = self._raw(i)
        if g is not None:
            return g
        values = self.acts._values
        v = values[i] if i < len(values) else None  # (a dropped member's stand-in has its shape)
        if v is None:
            v = self.acts.value(i)
        if v is not None:
            return np.zeros(np.shape(v), _grad_dtype(v))
        if node.op == "param":
            return np.zeros_like(node.value)
        raise UnknownNodeError(f"node '{node.name}' was not computed in the forward run, so it has no gradient")

    def _copy_grad(self, node):
        """One tied copy's own gradient: the sum of its consumers' VJPs (computed when asked,
        from the run's values: its own params, or refused once uncopied ones were written)."""
        self.acts._as_run(node.index, "gradient")
        value = self.acts.value
        nodes = self.graph.nodes
        total = None
        for c, pos in self.acts.plan.consumers(node.index):
            g = self._raw(c)
            if g is None:
                continue
            cn = nodes[c]
            op = _ops.get(cn.op)
            gi = op.vjp(pos, g, value(c) if op.reads_out else None, [value(i.index) for i in cn.inputs], cn.attrs)
            if gi is None:
                continue
            gi = _ops.unbroadcast(gi, node.value.shape)
            total = gi if total is None else total + gi
        return np.zeros_like(node.value) if total is None else total

    def tied_sum(self, tie):
        """The sum of a tie group's raw gradients, accumulated in one buffer during backward;
        None when the run did not know this group (tied, or merged with another, after it ran:
        then its members' own gradients are what there is)."""
        if id(tie) not in self.acts.plan.tie_shapes:  # (the plan holds the groups it knew: no id is reused)
            return None
        s = self._tied_sums.get(id(tie))
        return np.zeros_like(tie.members[0].value) if s is None else s

    def reached(self, key):
        """True when a gradient reached this node: the loss depends on it, or (a member of a
        batched step, e.g. one time step's input) its batch received a gradient, in which
        case its row may be all zeros."""
        node = self.graph.own(key, "gradients")
        if node.index in self.acts.plan.tied:
            return any(self._raw(c) is not None for c, _ in self.acts.plan.consumers(node.index))
        return node.index < len(self._grads) and self._raw(node.index) is not None

    def params(self):
        """{param node: raw gradient} for every parameter of the graph."""
        return {p: self[p] for p in self.graph.params}

    def constrained(self):
        """{param node: gradient} after the ties and linear constraints are applied."""
        return self.graph.constraints.constrained_grads(self)
