"""Repeated fragments: runs of unbatched steps that repeat with a short period, such as the
``matmul -> add_n -> tanh`` of every time step of an unrolled net, each executed by one
generated loop (forward and backward) instead of the generic per-step loop.

The generated code makes the same numpy calls and follows the same accumulation rules as
the generic loops in autodiff.py for these step kinds; it only removes the per-step
dispatch (unpacking the step, testing its kind, looking at each VJP marker), which is most
of what an unrolled recurrence costs beyond the arithmetic.  Fragments are found once per
plan; runs with check_finite, and a forward fragment that meets a runtime error, use the
generic loops (which name the node at fault).
"""

from collections import deque
from itertools import repeat
from operator import attrgetter
from operator import is_ as _is

import numpy as np

from . import ops as _ops
from .plan import PRESUM, SINGLE, SOURCE_VIA_BATCH, TIED_MATMUL_A, TIED_OUTER, RowOut, SlopeRow

FRAGMENT = 3
MAX_PERIOD = 6
MIN_REPEATS = 4

_CODE = {}  # shape of a fragment -> (forward, backward): generated once per shape


def _entry_kind(vjp, tie):
    """What the backward code does for one VJP entry, or None when only the generic loop can."""
    if vjp is SOURCE_VIA_BATCH:
        return ("svb",)
    if vjp is TIED_OUTER:
        return ("tout", id(tie))
    if tie is not None:
        return None  # other tied accumulations: generic loop
    if vjp is _ops.passthrough:
        return ("pass",)
    if type(vjp) is SlopeRow:
        return ("slope", id(vjp.group))
    if vjp is TIED_MATMUL_A:
        return ("tma",)
    return ("gen", id(vjp))


def _signature(step):
    if step[0] not in (SINGLE, PRESUM):
        return None
    kind, _, fwd, in_idx, vjps = step
    if kind == PRESUM:
        head = ("presum", id(fwd[0]), len(fwd[2]))
    elif type(fwd) is RowOut:
        head = ("rowout", id(fwd.ufunc), id(fwd.group))
    else:
        head = ("single", id(fwd))
    entries = tuple(_entry_kind(v, t) for _, v, t in vjps)
    if None in entries:
        return None
    return head, len(in_idx), entries


def find_fragments(steps, uses):
    """``steps`` with every run of at least MIN_REPEATS repetitions of a period of up to
    MAX_PERIOD unbatched steps replaced by one ``(FRAGMENT, Fragment)`` step.  ``uses``:
    node index -> how many inputs of the plan's nodes it is."""
    sigs = [_signature(s) for s in steps]
    out = []
    i, n = 0, len(steps)
    while i < n:
        found = None
        for period in range(1, MAX_PERIOD + 1):
            if i + period * MIN_REPEATS > n or sigs[i + period - 1] is None:
                break
            proto = sigs[i:i + period]
            reps = 1
            while i + (reps + 1) * period <= n and sigs[i + reps * period:i + (reps + 1) * period] == proto:
                reps += 1
            if reps >= MIN_REPEATS:
                found = period, reps
                break
        if found is None:
            out.append(steps[i])
            i += 1
            continue
        period, reps = found
        out.append((FRAGMENT, Fragment(steps[i:i + period * reps], period, uses)))
        i += period * reps
    return out


class Fragment:
    """``steps`` (whole repetitions of a ``period``), their index rows and generated loops."""

    __slots__ = ("steps", "proto", "rows", "forward", "backward", "F", "G", "groups", "chain", "backward_lean",
                 "S", "O", "slope_entries", "outer_entries")

    def __init__(self, steps, period, uses):
        self.steps = steps
        self.proto = steps[:period]
        self.rows = []
        for r in range(0, len(steps), period):
            row = []
            for kind, index, fwd, in_idx, vjps in steps[r:r + period]:
                row.append(index)
                row.extend(in_idx)
                if kind == PRESUM:
                    row.append(fwd[1])
                    row.extend(fwd[2])
                row.extend(v.k for _, v, _ in vjps if type(v) is SlopeRow)
            self.rows.append(tuple(row))
        # per statement and input: does that input feed nothing else in every repetition? Then
        # its gradient has no other source and is still None when this statement reaches it
        sole = tuple(tuple(all(uses.get(st[3][p]) == 1 for st in steps[m::period]) for p in range(len(step[3])))
                     for m, step in enumerate(self.proto))
        self.chain = Chain.find(steps, period, uses)
        # after a lean forward the products feeding each sum are not stored: their gradient
        # entry skips the shape test (the chain checked the shapes)
        lean = None if self.chain is None else (0, self.chain.live_pos)
        # the generated code depends only on the shape of the fragment (kinds, arities), not
        # on which functions or groups it calls: those are passed in, so the cache stays small
        key = (tuple((head[0], head[2] if head[0] == "presum" else None, arity, tuple(e[0] for e in entries))
                     for head, arity, entries in map(_signature, self.proto)), sole)
        if key not in _CODE:
            _CODE[key] = _generate(self.proto, sole)
        self.forward, self.backward = _CODE[key]
        self.backward_lean = None
        if lean is not None:
            if (key, lean) not in _CODE:  # (which entry skips the test is part of the code's shape)
                _CODE[(key, lean)] = _generate(self.proto, sole, lean=lean)
            self.backward_lean = _CODE[(key, lean)][1]
        # the callables the generated code calls: forward functions and VJPs, per statement
        self.F = tuple(None if kind == PRESUM else fwd.ufunc if type(fwd) is RowOut else fwd
                       for kind, _, fwd, _, _ in self.proto)
        # slope groups whose members' outputs go into the run's row buffer (plan.RowOut)
        self.groups = tuple(fwd.group if type(fwd) is RowOut else None for _, _, fwd, _, _ in self.proto)
        self.G = tuple(tuple(v for _, v, _ in vjps) for *_, vjps in self.proto)
        # per statement and entry, what the backward loop gets: a slope group's slopes (made
        # once per sweep) and a tied weight's deferred outer products; these defaults elsewhere
        self.S = tuple((_NO_SLOPES,) * len(vjps) for *_, vjps in self.proto)
        self.O = tuple(((None, None),) * len(vjps) for *_, vjps in self.proto)
        self.slope_entries = tuple((m, p, v.group) for m, (*_, vjps) in enumerate(self.proto)
                                   for p, (_, v, _) in enumerate(vjps) if type(v) is SlopeRow)
        self.outer_entries = tuple((m, p, id(t)) for m, (*_, vjps) in enumerate(self.proto)
                                   for p, (_, v, t) in enumerate(vjps) if v is TIED_OUTER)


_NO_SLOPES = (None, None, False, None)  # (slopes, product rows, shape, dtype) of an entry without a slope group


class Chain:
    """A fragment that is a recurrence ``h_t = f(S_t)``, ``S_t = P_t + h_{t-1} @ W``: per
    repetition a PreSum add_n with one live operand, a slope-group ufunc on it (plan.RowOut),
    and the 2-D ``np.dot`` by a weight that is the next repetition's live operand, where the
    sum and the product feed nothing else.  Such a chain can run *lean* (run_lean): the
    product is written straight into the next state's row and the sum and the state are
    made there in place, as hand-written BPTT does, so the sums and products are not kept;
    Activations.value recomputes one when asked, with the same numpy calls on the same
    numbers (so the same bits).  Ufuncs and IEEE addition give the same bits in place."""

    __slots__ = ("sums", "states", "products", "pre_rows", "ks", "first_live", "weights", "live_pos",
                 "recompute", "members", "fast", "pre_span")

    # run_backward's checks cost about what it saves below a few hundred steps (measured: 4%
    # slower at 20 steps, even at 200, 13-16% faster at 2,000): shorter chains use the generated loop
    MIN_STEPS_LEAN_BACKWARD = 500

    @staticmethod
    def find(steps, period, uses):
        if period != 3:
            return None
        (ka, _, fa, ia, _), (kb, _, fb, ib, _), (kc, _, fc, ic, _) = steps[:3]
        if not (ka == PRESUM and len(fa[2]) == 1 and kb == SINGLE and type(fb) is RowOut
                and kc == SINGLE and fc is np.dot and len(ic) == 2):
            return None
        live_pos = ia.index(fa[2][0])
        group = fa[0]
        rest = [p for p, j in enumerate(ia) if p != live_pos and j not in group.sources]
        if len(rest) != 1:
            return None
        member_pos = rest[0]
        reps = [steps[r:r + 3] for r in range(0, len(steps), 3)]
        for r, (a, b, c) in enumerate(reps):
            if (b[3] != (a[1],) or c[3][0] != b[1] or a[2][2][0] != a[3][live_pos] or uses.get(a[1]) != 1
                    or (r > 0 and a[2][2][0] != reps[r - 1][2][1])
                    or (r < len(reps) - 1 and uses.get(c[1]) != 1) or b[2].group is not fb.group):
                return None
        ch = Chain()
        ch.sums = tuple(a[1] for a, _, _ in reps)
        ch.states = tuple(b[1] for _, b, _ in reps)
        ch.products = tuple(c[1] for _, _, c in reps)
        ch.pre_rows = tuple(a[2][1] for a, _, _ in reps)
        ch.ks = tuple(b[2].k for _, b, _ in reps)
        ch.first_live = reps[0][0][2][2][0]
        ch.weights = tuple(c[3][1] for _, _, c in reps)
        ch.live_pos = live_pos
        ch.members = tuple(a[3][member_pos] for a, _, _ in reps)
        # consecutive member-plus-source rows feeding consecutive state rows: (first sum row,
        # first state row, count), for run_lean_in_rows
        P, K = ch.pre_rows, ch.ks
        ch.pre_span = ((P[0], K[0], len(K)) if P == tuple(range(P[0], P[0] + len(P)))
                       and K == tuple(range(K[0], K[0] + len(K))) else None)
        # run_backward applies when the VJP entries are the plain ones (checked on the first
        # repetition: every repetition has the same signature) and no member repeats
        (_, _, _, _, va), (_, _, _, _, vb), (_, _, _, _, vc) = steps[:3]
        ch.fast = (all(v is (_ops.passthrough if p in (live_pos, member_pos) else SOURCE_VIA_BATCH)
                       for p, (_, v, _) in enumerate(va))
                   and len(vb) == 1 and type(vb[0][1]) is SlopeRow
                   and tuple(v for _, v, _ in vc) == (TIED_MATMUL_A, TIED_OUTER)
                   and len(set(ch.members)) == len(ch.members))
        # how Activations.value remakes a dropped node: the sum exactly as PreSum and the
        # fragment made it, ((member + sources...) + live); the product as np.dot
        ch.recompute = {}
        for a, _, c in reps:
            ch.recompute[a[1]] = ("sum", group, a[3][member_pos], a[3][live_pos])
        for _, _, c in reps[:-1]:
            ch.recompute[c[1]] = ("dot",) + tuple(c[3])
        return ch

    def _operands(self, v, sums):
        """(first live operand, weight) when this run can go lean: both float arrays of one
        dtype, a square weight that every step's copy shares, and ``sums`` (the stacked
        member-plus-sources, or the batch output they are made from) of that dtype with
        rows of the live operand's shape; else None."""
        x0, W = v[self.first_live], v[self.weights[0]]
        if (type(x0) is np.ndarray and type(sums) is np.ndarray and type(W) is np.ndarray
                and x0.ndim >= 1 and x0.dtype.kind == "f" and x0.dtype == sums.dtype == W.dtype
                and sums.shape[1:] == x0.shape and W.shape == (x0.shape[-1], x0.shape[-1])
                and all(map(_is, map(v.__getitem__, self.weights), repeat(W)))):
            return x0, W
        return None

    def run_lean(self, v, pre, group, ufunc, bstore):
        """The lean forward, or False (nothing written) when this run's shapes, dtypes or
        weights do not allow it."""
        got = self._operands(v, pre)
        if got is None:
            return False
        x0, W = got
        rows, shape, dtype = group.value_rows(x0, bstore)
        if shape != x0.shape or dtype != x0.dtype:
            return False
        r = rows[self.ks[0]]
        np.add(pre[self.pre_rows[0]], x0, out=r)  # the first sum, P_1 + its live operand
        self._recur(v, rows, r, W, ufunc, pre)
        return True

    def _recur(self, v, rows, r, W, ufunc, pre=None):
        """From the first sum, in row r: each state made in its row, ``f`` of the sum of the
        step's member-plus-sources (``pre``'s row, or already in the row when ``pre`` is None)
        and the product of the previous state and W; then the states stored, and the last
        product, which feeds steps outside the fragment."""
        dot, ks, P = np.dot, self.ks, self.pre_rows
        ufunc(r, out=r)
        states = [r]
        scratch = None if pre is not None else np.empty(r.shape, r.dtype)
        for i in range(1, len(ks)):
            nxt = rows[ks[i]]
            if pre is not None:
                dot(r, W, out=nxt)  # the product feeding step i, straight into its row
                nxt += pre[P[i]]     # its sum (the same bits as P_i + product)
            else:
                dot(r, W, out=scratch)  # the product, added to the sums already in the row
                nxt += scratch
            ufunc(nxt, out=nxt)
            states.append(nxt)
            r = nxt
        deque(map(v.__setitem__, self.states, states), 0)
        v[self.products[-1]] = dot(r, W)

    def run_lean_in_rows(self, v, psum, group, ufunc, bstore, presums):
        """The lean forward with the member-plus-source sums (plan.PreSum) written straight
        into the rows of the states' buffer, where each state is then made in place:
        ``dot(h, W)`` into a small scratch array, added to the row, ``f`` of the row.  No
        separate array of sums: what hand-written BPTT does with its projection buffer.  The
        same numpy calls on the same numbers as PreSum.compute and run_lean (IEEE addition
        commutes), so the same bits.  Other steps of the PreSum group then get their sum a row
        at a time (PreSum.rows).  False, with nothing written, unless this run's shapes,
        dtypes and weights allow it and no step computed the group's sums already."""
        if self.pre_span is None or psum in presums or psum.batch not in bstore:
            return False
        out = bstore[psum.batch][0]
        srcs = [v[j] for j in psum.sources]
        got = self._operands(v, out)
        if got is None or not all(type(x) is np.ndarray and x.dtype == out.dtype and x.ndim < out.ndim
                                  for x in srcs):
            return False  # (sources of one dtype: the sums keep it; numpy checks their shapes below)
        x0, W = got
        rows, shape, dtype = group.value_rows(x0, bstore)
        p0, k0, n = self.pre_span
        buf = rows[0].base if rows else None
        if (shape != x0.shape or dtype != x0.dtype or buf is None or buf.shape != (len(rows),) + shape
                or p0 + n > len(out) or k0 + n > len(rows)):
            return False
        sums = buf[k0:k0 + n]
        if srcs:  # (out[rows] + s0) + s1 ...: the order of PreSum.plus_sources
            try:  # (a source that would broadcast the sums beyond the rows' shape: refused, nothing written)
                np.add(out[p0:p0 + n], srcs[0], out=sums)
                for x in srcs[1:]:
                    sums += x
            except ValueError:
                return False
        else:
            np.copyto(sums, out[p0:p0 + n])
        presums[psum] = psum.rows(out, v)
        r = rows[self.ks[0]]
        r += x0  # the first sum, its member-plus-sources + its live operand
        self._recur(v, rows, r, W, ufunc)
        return True

    def run_backward(self, v, grads, owned, slopes, outer, transposed):
        """The backward of a chain that ran lean, as hand-written BPTT does it: per step,
        ``dot(g, W.T)`` added into the state's gradient, multiplied by its slope in place,
        three numpy calls and no per-step bookkeeping; the gradients of the sums, members
        and products (the slope rows) are stored afterwards in bulk.  The same calls on the
        same arrays as the generated loop, so the same bits.  False (nothing done) unless
        the last product's gradient and every state's gradient are float arrays of the
        slopes' shape and dtype, the states' owned by this sweep, the members' values have
        that shape and no gradient of theirs exists yet: the generated loop then runs."""
        S, GR, shape, dtype = slopes
        if GR is None or not self.fast or len(self.states) < self.MIN_STEPS_LEAN_BACKWARD:
            return False
        g = grads[self.products[-1]]
        if type(g) is not np.ndarray or g.shape != shape or g.dtype != dtype:
            return False
        states, members = self.states, self.members
        prevs = list(map(grads.__getitem__, states))
        mvals = list(map(v.__getitem__, members))
        if not (all(map(owned.__contains__, states)) and set(map(type, prevs)) == _ND
                and set(map(attrgetter("shape"), prevs)) == {shape}
                and set(map(attrgetter("dtype"), prevs)) == {dtype}
                and set(map(type, mvals)) == _ND and set(map(attrgetter("shape"), mvals)) == {shape}
                and all(map(_is, map(grads.__getitem__, members), repeat(None)))):
            return False
        W = v[self.weights[0]]
        WT = transposed.get(id(W))
        if WT is None:
            WT = transposed[id(W)] = np.ascontiguousarray(W.T)
        K = list(map(GR.__getitem__, self.ks))  # row r: the slope of state r, then dE/d(sum r)
        G = [g] + K[:0:-1]  # dE/d(product r), last step first
        scratch = np.empty(shape, dtype)
        dot, multiply = np.dot, np.multiply
        for g, prev, k in zip(G, reversed(prevs), reversed(K)):
            dot(g, WT, out=scratch)
            prev += scratch
            multiply(prev, k, out=k)
        # what the generated loop would have stored on the way: sum r's gradient is its row,
        # passed through to the member and to the live operand (product r-1, or the first)
        deque(map(grads.__setitem__, self.sums, K), 0)
        deque(map(grads.__setitem__, members, K), 0)
        deque(map(grads.__setitem__, self.products[:-1], K[1:]), 0)
        j, gi = self.first_live, K[0]
        prev = grads[j]
        if prev is None:
            grads[j] = gi
        elif j in owned:
            prev += gi
            grads[j] = prev
        else:
            grads[j] = prev + gi
            owned.add(j)
        # the tied weight's deferred outer products, in the order the loop would add them
        outer[0].extend(reversed(list(map(v.__getitem__, states))))
        outer[1].extend(G)
        return True


_ND = {np.ndarray}


def _names(proto):
    """Per statement m: the variable names of its row fields."""
    out = []
    for m, (kind, _, fwd, in_idx, vjps) in enumerate(proto):
        d = {"o": f"o{m}", "i": [f"i{m}_{p}" for p in range(len(in_idx))], "r": None, "l": [], "k": {}}
        if kind == PRESUM:
            d["r"] = f"r{m}"
            d["l"] = [f"l{m}_{q}" for q in range(len(fwd[2]))]
        for p, (_, v, _) in enumerate(vjps):
            if type(v) is SlopeRow:
                d["k"][p] = f"k{m}_{p}"
        out.append(d)
    return out


def _row_vars(names):
    flat = []
    for d in names:
        flat.append(d["o"])
        flat.extend(d["i"])
        if d["r"]:
            flat.append(d["r"])
            flat.extend(d["l"])
        flat.extend(d["k"][p] for p in sorted(d["k"]))
    return "(" + ", ".join(flat) + ",)"


def _untied_accumulate(j, pad, check_shape=True, sole=False):
    """Lines adding gi into grads[j] as backward_pass's accumulate does (``sole``: j's only
    gradient source is this one, so grads[j] is still None and simply becomes gi)."""
    head = [f"{pad}shape = v[{j}].shape",
            f"{pad}if gi.shape != shape:",
            f"{pad}    gi = UB(gi, shape)"] * check_shape
    if sole:
        return head + [f"{pad}grads[{j}] = gi"]
    return head + [
            f"{pad}prev = grads[{j}]",
            f"{pad}if prev is None:",
            f"{pad}    grads[{j}] = gi",
            f"{pad}elif {j} in owned and prev.dtype == gi.dtype:",
            f"{pad}    prev += gi",
            f"{pad}    grads[{j}] = prev",
            f"{pad}else:",
            f"{pad}    grads[{j}] = prev + gi",
            f"{pad}    owned.add({j})"]


def _generate(proto, sole, lean=None):
    names = _names(proto)
    row = _row_vars(names)
    fw = ["def forward(v, rows, F, P, R, ND):"]
    for m in range(len(proto)):
        fw.append(f"    F{m} = F[{m}]")
        fw.append(f"    P{m} = P[{m}]")
        if type(proto[m][2]) is RowOut:
            fw.append(f"    (RR{m}, RS{m}, RD{m}), START{m} = R[{m}]")
    fw.append(f"    for {row} in rows:")
    for m, (kind, _, fwd, in_idx, _) in enumerate(proto):
        d = names[m]
        if kind == PRESUM:
            fw.append(f"        t = P{m}[{d['r']}] + v[{d['l'][0]}]")
            for lq in d["l"][1:]:
                fw.append(f"        t = t + v[{lq}]")
            fw.append(f"        v[{d['o']}] = t")
        elif type(fwd) is RowOut:  # into row k of the group's buffer when the input fits
            fw += [f"        x = v[{d['i'][0]}]",
                   f"        if RS{m} is None:",
                   f"            RR{m}, RS{m}, RD{m} = START{m}(x)",
                   f"        if type(x) is ND and x.shape == RS{m} and x.dtype == RD{m}:",
                   f"            r = RR{m}[{d['k'][0]}]",
                   f"            F{m}(x, out=r)",
                   f"            v[{d['o']}] = r",
                   "        else:",
                   f"            v[{d['o']}] = F{m}(x)"]
        else:
            args = ", ".join(f"v[{x}]" for x in d["i"])
            fw.append(f"        v[{d['o']}] = F{m}({args})")
    bw = ["def backward(v, grads, owned, rows, G, S, O, TR, ACC, UB, DOT, ASC, MUL, ND, EMPTY_LIKE):"]
    for m, (_, _, _, _, vjps) in enumerate(proto):
        for p in range(len(vjps)):
            bw.append(f"    G{m}_{p} = G[{m}][{p}]")
            bw.append(f"    S{m}_{p}, GR{m}_{p}, SS{m}_{p}, SD{m}_{p} = S[{m}][{p}]")
            bw.append(f"    OA{m}_{p}, OG{m}_{p} = O[{m}][{p}]")
            bw.append(f"    LW{m}_{p} = LT{m}_{p} = SC{m}_{p} = None")
    bw.append(f"    for {row} in reversed(rows):")
    for m in range(len(proto) - 1, -1, -1):
        kind, _, _, in_idx, vjps = proto[m]
        d = names[m]
        bw.append(f"        g = grads[{d['o']}]")
        bw.append("        if g is not None:")
        pad = " " * 12
        bw.append(f"{pad}pass")
        for p, (_, v, t) in enumerate(vjps):
            j = d["i"][p]
            ek = _entry_kind(v, t)[0]
            if ek == "svb":
                continue
            if ek == "tout":
                bw.append(f"{pad}OA{m}_{p}.append(v[{d['i'][0]}])")
                bw.append(f"{pad}OG{m}_{p}.append(g)")
                continue
            if ek == "tma":
                w = d["i"][1]
                lw, lt = f"LW{m}_{p}", f"LT{m}_{p}"  # the last weight seen and its transpose
                bw += [f"{pad}w = v[{w}]",
                       f"{pad}if w is not {lw}:",
                       f"{pad}    {lw} = w",
                       f"{pad}    {lt} = TR.get(id(w))",
                       f"{pad}    if {lt} is None:",
                       f"{pad}        {lt} = TR[id(w)] = ASC(w.T)",
                       f"{pad}prev = grads[{j}]",
                       # into an owned gradient: the product goes through one scratch array (np.dot
                       # refuses an out= of another shape or dtype than its result: then as below)
                       f"{pad}if prev is not None and {j} in owned:",
                       f"{pad}    if SC{m}_{p} is None:",
                       f"{pad}        SC{m}_{p} = EMPTY_LIKE(prev)",
                       f"{pad}    try:",
                       f"{pad}        DOT(g, {lt}, out=SC{m}_{p})",
                       f"{pad}    except ValueError:",
                       f"{pad}        ACC({j}, DOT(g, {lt}), True)",
                       f"{pad}    else:",
                       f"{pad}        prev += SC{m}_{p}",
                       f"{pad}else:",
                       f"{pad}    gi = DOT(g, {lt})",
                       f"{pad}    if prev is None:",
                       f"{pad}        grads[{j}] = gi",
                       f"{pad}        owned.add({j})",
                       f"{pad}    elif prev.shape == gi.shape and prev.dtype == gi.dtype:",
                       f"{pad}        gi += prev",
                       f"{pad}        grads[{j}] = gi",
                       f"{pad}        owned.add({j})",
                       f"{pad}    else:",
                       f"{pad}        ACC({j}, gi)"]
                continue
            if ek == "pass":
                bw.append(f"{pad}gi = g")
                bw += _untied_accumulate(j, pad, check_shape=(m, p) != lean, sole=sole[m][p])
            elif ek == "slope":  # into the product's row of one buffer when g fits (autodiff._slopes)
                # (GR's rows are the slopes' rows: the product replaces the slope; an elementwise
                # unary op's input has its output's shape, so gi needs no unbroadcast)
                k = d['k'][p]
                bw += [f"{pad}if type(g) is ND and g.shape == SS{m}_{p} and g.dtype == SD{m}_{p}:",
                       f"{pad}    gi = GR{m}_{p}[{k}]",
                       f"{pad}    MUL(g, gi, out=gi)",
                       f"{pad}else:",
                       f"{pad}    gi = g * S{m}_{p}[{k}]"]
                bw += _untied_accumulate(j, pad, check_shape=False, sole=sole[m][p])
            else:
                args = ", ".join(f"v[{x}]" for x in d["i"])
                bw.append(f"{pad}gi = G{m}_{p}(g, v[{d['o']}], {args})")
                bw.append(f"{pad}if gi is not None:")
                bw += _untied_accumulate(j, pad + "    ", sole=sole[m][p])
    scope = {}
    exec(compile("\n".join(fw) + "\n\n" + "\n".join(bw) + "\n", "<tinygraph fragment>", "exec"), scope)
    return scope["forward"], scope["backward"]
