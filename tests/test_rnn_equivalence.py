"""The unrolled feed-forward graph and backpropagation through time are the same computation.

Two independent routes must agree on every random net we can build:

* the unrolled tinygraph graph (``net.unroll(T).run``), whose tied weight copies give the
  gradients through the engine's tie mechanism, and
* ``rnn.bptt``, the time-domain loop that pushes and pops a stack of activities,

to 1e-10 (relative), and both agree with central finite differences to 1e-6.  The random nets
cover every activation, bias on/off, delays 0..2 (no zero-delay cycle), self connections,
every kind of initial state, every input mode of the lecture (initial state of all units, of a
subset, a subset of units at every step, mixes) and every target mode (final states, the last
k steps, output units at every step, unit subsets, masks, cross-entropy on softmax groups).
"""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import rnn
from tinygraph.check import relative_error

from shared import central_difference

TOL_BPTT = 1e-10
TOL_FD = 1e-6
ACTIVATIONS = ("logistic", "tanh", "linear", "relu", "softmax")
INITIALS = ("default", "zero", "float", "array", "learned")
INPUT_MODES = ("none", "initial_all", "initial_subset", "every_step_subset", "mix")
TARGET_MODES = ("final", "last_list", "last_range", "last_tuple", "all", "some_steps")


# A fixed (derandomized) set of examples per property keeps the suite stable, as in
# test_properties.py; TINYGRAPH_STRESS_EXAMPLES=1000 explores fresh random examples.
_STRESS = int(os.environ.get("TINYGRAPH_STRESS_EXAMPLES", "0") or 0)
SETTINGS = dict(max_examples=_STRESS or 25, derandomize=not _STRESS, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


# ----------------------------------------------------------------------------- helpers
def fd_floor(loss):
    """The scale below which central differences cannot resolve a derivative to TOL_FD.

    (f(w + eps) - f(w - eps)) / (2 eps) carries rounding noise of about 1e-16 |loss| / eps =
    1e-10 |loss| for eps = 1e-6; measured against max(|analytic|, |numeric|, floor) that noise
    stays below TOL_FD / 2 when floor = 2e-4 |loss|.  (check_equivalence uses 1e-6 |loss|, too
    small: see test_check_equivalence_fd_floor_allows_for_rounding_noise.)"""
    return max(1e-8, 2e-4 * abs(loss))


def own_fd_check(net, T, inputs, targets, rng, entries=3, eps=1e-6):
    """Our own central differences on a few entries of every weight, the loss computed by the
    time-domain ``rnn.bptt`` (no graph), compared with the unrolled graph's tied gradients."""
    out = net.unroll(T).run(inputs, targets)

    def loss():
        return rnn.bptt(net, T, inputs, targets).loss

    floor = fd_floor(out.loss)
    worst = {}
    for name, arr in net.weights.items():
        flat_idx = rng.choice(arr.size, size=min(entries, arr.size), replace=False)
        idx = [np.unravel_index(i, arr.shape) for i in flat_idx]
        numeric = np.array([central_difference(loss, arr, i, eps) for i in idx])
        analytic = np.array([out.weight_grads[name][i] for i in idx])
        worst[name] = relative_error(analytic, numeric, floor)
    return worst


def assert_equivalent(report, info=""):
    """Every figure of an rnn.check_equivalence report within tolerance, with the finite-difference
    figures judged against the rounding-noise floor (fd_floor) rather than the report's own."""
    others = [f for f in report.failures if not f.startswith("grad fd")]
    assert not others, f"{report}\n{info}"
    floor = fd_floor(report.run.loss)
    for name, (analytic, numeric) in report.fd_errors.items():
        assert relative_error(analytic, numeric, floor) <= TOL_FD, f"{name}\n{report}\n{info}"


def _subset(draw, size):
    """A non-empty proper-or-full subset of range(size), sorted, as a list."""
    k = draw(st.integers(1, size))
    return sorted(draw(st.permutations(list(range(size))))[:k])


# ----------------------------------------------------------------------------- random nets
@st.composite
def random_nets(draw, max_steps=4):
    seed = draw(st.integers(0, 2 ** 31 - 1))
    rng = np.random.default_rng(seed)
    n_groups = draw(st.integers(2, 4))
    net = rnn.RecurrentNet("random", seed=seed)
    for i in range(n_groups):
        size = draw(st.integers(1, 3))
        act = draw(st.sampled_from(ACTIVATIONS))
        bias = draw(st.booleans())
        kind = draw(st.sampled_from(INITIALS))
        initial = {"default": None, "zero": "zero", "float": float(rng.uniform(-0.8, 0.8)),
                   "array": rng.uniform(-0.8, 0.8, size), "learned": "learned"}[kind]
        net.add_group(f"g{i}", size, activation=act, bias=bias, initial=initial)
        if bias:  # the biases start at zero: give them values so their gradients are not trivial
            net.weights[f"bias:g{i}"][...] = rng.normal(0.0, 0.5, size)
    names = list(net.groups)
    for i, src in enumerate(names):
        for j, dst in enumerate(names):
            if not draw(st.booleans()):
                continue
            # delay 0 only "forward" in the group order: no zero-delay cycle, self connections delayed
            delays = [0, 1, 2] if i < j else [1, 2]
            delay = draw(st.sampled_from(delays))
            s, d = net.groups[src].size, net.groups[dst].size
            net.connect(src, dst, delay=delay, weight=rng.normal(0.0, 0.9 / np.sqrt(s), (s, d)))
            if i == j and draw(st.booleans()):  # a second self connection with the other delay
                net.connect(src, dst, delay=3 - delay, weight=rng.normal(0.0, 0.5 / np.sqrt(s), (s, d)))
    T = draw(st.integers(1, max_steps))
    return net, T, rng


@st.composite
def nets_with_data(draw, input_modes=INPUT_MODES, max_steps=4):
    net, T, rng = draw(random_nets(max_steps=max_steps))
    B = draw(st.integers(1, 3))
    names = list(net.groups)
    mode = draw(st.sampled_from(input_modes))
    inputs = []
    clamped = {}  # (group, step) -> set of clamped units

    def clamp(group, steps, units, T_steps):
        size = net.groups[group].size
        n = size if units is None else len(units)
        values = rng.uniform(-1.0, 1.0, (len(T_steps), B, n))
        inputs.append(rnn.Clamp(group, values, steps=steps, units=units))
        for t in T_steps:
            clamped.setdefault((group, t), set()).update(range(size) if units is None else units)

    def step_units(g):
        """Units to clamp at steps >= 1 (a subset, softmax groups included)."""
        return _subset(draw, net.groups[g].size)

    if mode == "initial_all":  # the feed-forward view: the initial state of every unit
        for g in names:
            clamp(g, [0], None, [0])
    elif mode == "initial_subset":
        for g in names:
            if draw(st.booleans()):
                clamp(g, [0], _subset(draw, net.groups[g].size), [0])
    elif mode == "every_step_subset":  # sequential data: some units at every step
        for g in draw(st.lists(st.sampled_from(names), min_size=1, max_size=2, unique=True)):
            clamp(g, "all", step_units(g), list(range(1, T + 1)))
    elif mode == "mix":
        for g in names:
            choice = draw(st.sampled_from(["none", "initial", "initial_subset", "steps", "both"]))
            size = net.groups[g].size
            if choice in ("initial", "both"):
                clamp(g, [0], None, [0])
            if choice == "initial_subset":
                clamp(g, [0], _subset(draw, size), [0])
            if choice in ("steps", "both"):
                steps = sorted(draw(st.lists(st.integers(1, T), min_size=1, max_size=T, unique=True)))
                units = None if draw(st.booleans()) else step_units(g)
                clamp(g, steps, units, steps)

    targets = []
    for g in names:
        G = net.groups[g]
        for _ in range(draw(st.integers(0, 2))):
            tmode = draw(st.sampled_from(TARGET_MODES))
            k = draw(st.integers(1, T))
            spec, steps = {
                "final": ("final", [T]),
                "last_list": (list(range(T - k + 1, T + 1)), list(range(T - k + 1, T + 1))),
                "last_range": (range(T - k + 1, T + 1), list(range(T - k + 1, T + 1))),
                "last_tuple": (("last", k), list(range(T - k + 1, T + 1))),
                "all": ("all", list(range(1, T + 1))),
                "some_steps": (None, None),
            }[tmode]
            if tmode == "some_steps":
                steps = sorted(draw(st.lists(st.integers(1, T), min_size=1, max_size=T, unique=True)))
                spec = steps
            busy = set().union(*[clamped.get((g, t), set()) for t in steps])
            free = [u for u in range(G.size) if u not in busy]
            if not free:
                continue
            whole = len(free) == G.size
            if whole and G.activation == "softmax" and draw(st.booleans()):
                if draw(st.booleans()):
                    values = rng.integers(0, G.size, (len(steps), B))          # class labels
                else:
                    values = np.eye(G.size)[rng.integers(0, G.size, (len(steps), B))]  # one-hot rows
                targets.append(rnn.Target(g, values, steps=spec, loss="cross_entropy"))
                continue
            units = None if whole and draw(st.booleans()) else sorted(
                draw(st.permutations(free))[:draw(st.integers(1, len(free)))])
            n = G.size if units is None else len(units)
            values = rng.uniform(0.0, 1.0, (len(steps), B, n))
            mask = None
            if draw(st.booleans()):
                mask = rng.choice([0.0, 0.5, 1.0, 2.0], size=values.shape)
            targets.append(rnn.Target(g, values, steps=spec, units=units, mask=mask))
    assume(targets)
    return net, T, inputs, targets, rng


def describe(net, T, inputs, targets):
    return f"{net!r}\nT={T}\ninputs={inputs}\ntargets={targets}"


# ----------------------------------------------------------------------------- the main property
@settings(**SETTINGS)
@given(nets_with_data())
def test_random_nets_unrolled_equals_bptt_and_finite_differences(case):
    net, T, inputs, targets, rng = case
    info = describe(net, T, inputs, targets)

    # our own comparison of the two routes
    out = net.unroll(T).run(inputs, targets)
    ref = rnn.bptt(net, T, inputs, targets)
    assert relative_error(out.loss, ref.loss) <= TOL_BPTT, info
    for g in net.groups:
        want = np.stack([ref.states[t][g] for t in range(T + 1)])
        assert relative_error(out.states(g), want) <= TOL_BPTT, (g, info)
        for t in range(T + 1):
            got = np.asarray(out.grads[out.emitted.layers[t][g]])
            want = ref.deltas[t][g]
            if got.ndim == 1:  # a batch-free state (constant initial state, or no input at all):
                want = want.sum(axis=0)  # shared by the batch, so its gradient sums over the batch
            assert relative_error(got, want) <= TOL_BPTT, (g, t, info)
    for name in net.weights:
        assert relative_error(out.weight_grads[name], ref.grads[name]) <= TOL_BPTT, (name, info)
        # each copy's gradient is that step's contribution, and the copies add up to the tied gradient
        per_step = out.step_grads(name)
        assert sorted(per_step) == sorted(ref.step_grads[name]), (name, info)
        for t, gr in per_step.items():
            assert relative_error(gr, ref.step_grads[name][t]) <= TOL_BPTT, (name, t, info)
        if per_step:
            assert relative_error(sum(per_step.values()), out.weight_grads[name]) <= 1e-12, (name, info)

    # the library's own check (autodiff vs bptt vs finite differences, and structure)
    report = rnn.check_equivalence(net, T, inputs, targets)
    assert_equivalent(report, info)
    assert all(ok for ok, _ in report.structure.values()), f"{report}\n{info}"

    # and a few central differences of our own, through the time-domain loop
    for name, err in own_fd_check(net, T, inputs, targets, rng).items():
        assert err <= TOL_FD, (name, err, info)


@settings(**SETTINGS)
@given(nets_with_data(input_modes=("initial_all",)))
def test_initial_state_of_all_units_is_a_feed_forward_net(case):
    """With every unit's initial state given, the net is a plain layered feed-forward net: no
    initial-state parameter receives a gradient, and everything else still agrees."""
    net, T, inputs, targets, rng = case
    out = net.unroll(T).run(inputs, targets)
    for name in net.weights:
        if name.startswith("init:"):
            assert out.unrolled.copies(name) == []
            assert np.all(out.weight_grads[name] == 0.0)
    assert_equivalent(rnn.check_equivalence(net, T, inputs, targets))


# ----------------------------------------------------------------------------- learned initial states
def small_net(initial="learned", act="tanh", seed=3):
    net = rnn.RecurrentNet("small", seed=seed)
    net.add_group("x", 2, role="input")
    net.add_group("h", 3, activation=act, initial=initial)
    net.add_group("y", 2, activation="logistic", role="output")
    net.connect("x", "h", delay=0)
    net.connect("h", "h", delay=1)
    net.connect("h", "y", delay=0)
    rng = np.random.default_rng(seed)
    net.weights["bias:h"][...] = rng.normal(0, 0.3, 3)
    net.weights["bias:y"][...] = rng.normal(0, 0.3, 2)
    return net


def small_data(T, B=4, seed=0):
    rng = np.random.default_rng(seed)
    inputs = [rnn.Clamp("x", rng.uniform(-1, 1, (T, B, 2)))]
    targets = [rnn.Target("y", rng.uniform(0, 1, (T, B, 2)), steps="all")]
    return inputs, targets


@pytest.mark.parametrize("act", ["logistic", "tanh", "relu", "linear", "softmax"])
def test_learned_initial_state_gets_the_finite_difference_gradient(act):
    T = 5
    net = small_net(act=act)
    inputs, targets = small_data(T)
    init = net.weights["init:h"]
    out = net.unroll(T).run(inputs, targets)
    grad = out.weight_grads["init:h"]
    assert grad.shape == init.shape == (3,)
    assert np.max(np.abs(grad)) > 1e-6  # the gradient reaches back all the way to t = 0

    ff = net.unroll(T)
    numeric_graph = np.array([central_difference(lambda: ff.run(inputs, targets, backward=False).loss, init, i)
                              for i in range(3)])
    numeric_loop = np.array([central_difference(lambda: rnn.bptt(net, T, inputs, targets).loss, init, i)
                             for i in range(3)])
    assert relative_error(grad, numeric_graph) <= TOL_FD
    assert relative_error(grad, numeric_loop) <= TOL_FD
    ref = rnn.bptt(net, T, inputs, targets)
    assert relative_error(grad, ref.grads["init:h"]) <= TOL_BPTT
    # dE/d(init) is dE/d(state at t=0) summed over the batch (the initial state is shared)
    assert relative_error(grad, ref.deltas[0]["h"].sum(axis=0)) <= TOL_BPTT


def test_learned_initial_state_partly_clamped():
    """Clamping some units at t=0 overrides their learned initial value: their gradient is 0
    (and so is the finite difference); the free units still get the right gradient."""
    T, B = 4, 3
    net = small_net()
    inputs, targets = small_data(T, B)
    inputs = inputs + [rnn.Clamp("h", np.full((1, B, 1), 0.3), steps=[0], units=[1])]
    out = net.unroll(T).run(inputs, targets)
    grad = out.weight_grads["init:h"]
    init = net.weights["init:h"]
    numeric = np.array([central_difference(lambda: rnn.bptt(net, T, inputs, targets).loss, init, i)
                        for i in range(3)])
    assert grad[1] == 0.0 and numeric[1] == 0.0
    assert abs(grad[0]) > 1e-6 and abs(grad[2]) > 1e-6
    assert relative_error(grad, numeric) <= TOL_FD
    assert rnn.check_equivalence(net, T, inputs, targets).passed


def test_learned_initial_state_fully_clamped_gets_no_gradient():
    T, B = 3, 2
    net = small_net()
    inputs, targets = small_data(T, B)
    inputs = inputs + [rnn.Clamp("h", np.full((1, B, 3), 0.3), steps=[0])]
    out = net.unroll(T).run(inputs, targets)
    assert np.all(out.weight_grads["init:h"] == 0.0)
    assert rnn.check_equivalence(net, T, inputs, targets).passed


def test_training_the_learned_initial_state_lowers_the_loss():
    """Following the initial-state gradient downhill (a plain SGD step on init:h only)."""
    T = 4
    net = small_net()
    inputs, targets = small_data(T)
    ff = net.unroll(T)
    before = ff.run(inputs, targets)
    net.weights["init:h"] -= 0.05 * before.weight_grads["init:h"]  # in place: the same storage
    after = ff.run(inputs, targets, backward=False)
    assert after.loss < before.loss


# ----------------------------------------------------------------------------- truncated BPTT
@settings(**SETTINGS)
@given(nets_with_data(max_steps=5), st.data())
def test_truncated_run_equals_truncated_bptt(case, data):
    net, T, inputs, targets, rng = case
    k = data.draw(st.integers(1, T))
    out = net.unroll(T).run(inputs, targets, truncate=k)
    ref = rnn.bptt(net, T, inputs, targets, truncate=k)
    for name in net.weights:
        assert relative_error(out.weight_grads[name], ref.grads[name]) <= TOL_BPTT, (name, k)
    report = rnn.check_equivalence(net, T, inputs, targets, truncate=k)
    assert report.passed, str(report)
    if k == T:  # truncating at T is no truncation at all
        full = net.unroll(T).run(inputs, targets)
        for name in net.weights:
            assert np.array_equal(out.weight_grads[name], full.weight_grads[name])


def recurrent_chain(T, seed=0):
    net = small_net(act="tanh", initial=0.5, seed=seed)  # h@t0 != 0: h->h at step 1 matters
    inputs, targets = small_data(T, seed=seed)
    targets = [rnn.Target("y", targets[0].values[-1:], steps="final")]
    return net, inputs, targets


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_truncation_changes_the_gradient_when_k_below_T(k):
    T = 6
    net, inputs, targets = recurrent_chain(T)
    full = net.unroll(T).run(inputs, targets)
    cut = net.unroll(T).run(inputs, targets, truncate=k)
    ref = rnn.bptt(net, T, inputs, targets, truncate=k)
    assert relative_error(cut.weight_grads["h->h"], ref.grads["h->h"]) <= TOL_BPTT
    assert relative_error(cut.weight_grads["h->h"], full.weight_grads["h->h"]) > 1e-6
    assert relative_error(cut.weight_grads["x->h"], full.weight_grads["x->h"]) > 1e-6
    # the loss itself is the same: truncation only changes the backward pass
    assert cut.loss == full.loss
    # weights after the cut only (h->y at the final step) are unaffected
    assert relative_error(cut.weight_grads["h->y"], full.weight_grads["h->y"]) <= 1e-12


@pytest.mark.parametrize("k", [1, 2, 4])
def test_truncated_gradient_is_the_gradient_of_the_last_k_steps_from_a_frozen_state(k):
    """An independent statement of truncated BPTT: with the target at the final step only, the
    truncated gradient equals the full gradient of a k-step run started from the (frozen) state
    the net had at step T - k."""
    T = 6
    net, inputs, targets = recurrent_chain(T)
    X = inputs[0].values
    cut = net.unroll(T).run(inputs, targets, truncate=k)
    h_at_cut = cut.states("h")[T - k]
    short_inputs = [rnn.Clamp("x", X[T - k:]), rnn.Clamp("h", h_at_cut[None], steps=[0])]
    short = net.unroll(k).run(short_inputs, targets)
    assert relative_error(short.loss, cut.loss) <= 1e-12
    for name in ("x->h", "h->h", "h->y", "bias:h", "bias:y"):
        assert relative_error(cut.weight_grads[name], short.weight_grads[name]) <= 1e-10, name


# ----------------------------------------------------------------------------- reduce="mean"
@settings(**SETTINGS)
@given(nets_with_data())
def test_reduce_mean_is_the_mean_of_the_per_step_contributions(case):
    net, T, inputs, targets, rng = case
    out_sum = net.unroll(T).run(inputs, targets)
    out_mean = net.unroll(T, reduce="mean").run(inputs, targets)
    ref = rnn.bptt(net, T, inputs, targets, reduce="mean")
    for name in net.weights:
        per_step = out_mean.step_grads(name)
        if not per_step:
            assert np.all(out_mean.weight_grads[name] == 0.0)
            continue
        mean = sum(per_step.values()) / len(per_step)
        assert relative_error(out_mean.weight_grads[name], mean) <= 1e-12, name
        assert relative_error(out_mean.weight_grads[name], out_sum.weight_grads[name] / len(per_step)) <= 1e-12
        assert relative_error(out_mean.weight_grads[name], ref.grads[name]) <= TOL_BPTT, name
    assert_equivalent(rnn.check_equivalence(net, T, inputs, targets, reduce="mean"))


def test_reduce_mean_by_hand():
    T = 5
    net = small_net()
    inputs, targets = small_data(T)
    out = net.unroll(T, reduce="mean").run(inputs, targets)
    steps = out.unrolled.copy_steps("h->h")
    assert steps == [1, 2, 3, 4, 5]
    contributions = [out.step_grads("h->h")[t] for t in steps]
    assert np.allclose(out.weight_grads["h->h"], np.mean(contributions, axis=0), rtol=1e-12, atol=0)


# ----------------------------------------------------------------------------- unit-level == group-level
GROUPS = {"x": (2, "linear", "input"), "h": (3, None, "hidden"), "y": (2, None, "output")}
CONNECTIONS = [("x", "h", 0), ("h", "h", 1), ("h", "y", 0), ("y", "h", 2)]


def group_level_net(act, seed=7):
    rng = np.random.default_rng(seed)
    net = rnn.RecurrentNet("groups", seed=seed)
    net.add_group("x", 2, role="input")
    net.add_group("h", 3, activation=act, initial="learned")
    net.add_group("y", 2, activation=act, role="output", initial=0.4)
    for src, dst, delay in CONNECTIONS:
        net.connect(src, dst, delay=delay)
    net.weights["bias:h"][...] = rng.normal(0, 0.3, 3)
    net.weights["bias:y"][...] = rng.normal(0, 0.3, 2)
    return net


def unit_level_net(gnet):
    """One single-unit group per unit, connected unit by unit, as in the lecture's picture,
    with the group-level net's weights copied entry by entry."""
    net = rnn.RecurrentNet("units")
    for g, G in gnet.groups.items():
        for i in range(G.size):
            if isinstance(G.initial, str):  # "learned"
                initial = G.initial
            elif isinstance(G.initial, np.ndarray):
                initial = float(G.initial[i])
            else:
                initial = G.initial
            net.add_group(f"{g}{i}", 1, activation=G.activation, role=G.role, bias=G.bias, initial=initial)
            if G.bias:
                net.weights[f"bias:{g}{i}"][0] = gnet.weights[f"bias:{g}"][i]
            if isinstance(G.initial, str):
                net.weights[f"init:{g}{i}"][0] = gnet.weights[f"init:{g}"][i]
    for c in gnet.connections.values():
        W = gnet.weights[c.name]
        for i in range(gnet.groups[c.src].size):
            for j in range(gnet.groups[c.dst].size):
                net.connect(f"{c.src}{i}", f"{c.dst}{j}", delay=c.delay, weight=[[W[i, j]]])
    return net


@pytest.mark.parametrize("act", ["logistic", "tanh", "linear", "relu"])
def test_unit_level_net_equals_group_level_net(act):
    T, B = 5, 3
    rng = np.random.default_rng(11)
    X = rng.uniform(-1, 1, (T, B, 2))
    Y = rng.uniform(0, 1, (T, B, 2))
    H0 = rng.uniform(0, 1, (1, B, 1))
    gnet = group_level_net(act)
    unet = unit_level_net(gnet)
    g_in = [rnn.Clamp("x", X), rnn.Clamp("h", H0, steps=[0], units=[2])]
    g_tg = [rnn.Target("y", Y, steps="all"), rnn.Target("h", Y[-2:, :, :1], steps=("last", 2), units=[1])]
    u_in = [rnn.Clamp("x0", X[..., [0]]), rnn.Clamp("x1", X[..., [1]]), rnn.Clamp("h2", H0, steps=[0])]
    u_tg = [rnn.Target("y0", Y[..., [0]]), rnn.Target("y1", Y[..., [1]]),
            rnn.Target("h1", Y[-2:, :, :1], steps=("last", 2))]
    g_out = gnet.unroll(T).run(g_in, g_tg)
    u_out = unet.unroll(T).run(u_in, u_tg)

    # equal up to the order of floating-point sums (a matmul vs a sum of one-unit terms)
    assert u_out.loss == pytest.approx(g_out.loss, rel=1e-12)
    for g, G in gnet.groups.items():
        unit_states = np.concatenate([u_out.states(f"{g}{i}") for i in range(G.size)], axis=-1)
        assert relative_error(unit_states, g_out.states(g)) <= 1e-12, g
        unit_deltas = np.concatenate([u_out.deltas(f"{g}{i}") for i in range(G.size)], axis=-1)
        assert relative_error(unit_deltas, g_out.deltas(g)) <= 1e-12, g
    for c in gnet.connections.values():
        W = g_out.weight_grads[c.name]
        unit_W = np.array([[u_out.weight_grads[f"{c.src}{i}->{c.dst}{j}"][0, 0] for j in range(W.shape[1])]
                           for i in range(W.shape[0])])
        assert relative_error(unit_W, W) <= 1e-12, c.name
    for g, G in gnet.groups.items():
        for kind in ("bias", "init"):
            name = f"{kind}:{g}"
            if name in gnet.weights:
                unit = np.array([u_out.weight_grads[f"{kind}:{g}{i}"][0] for i in range(G.size)])
                assert relative_error(unit, g_out.weight_grads[name]) <= 1e-12, name
    assert rnn.check_equivalence(unet, T, u_in, u_tg).passed


# ----------------------------------------------------------------------------- bugs found
def test_per_unit_initial_state_array():
    T, B = 3, 2
    net = small_net(initial=np.array([0.1, -0.2, 0.3]))
    inputs, targets = small_data(T, B)
    out = net.unroll(T).run(inputs, targets)
    assert np.array_equal(out.states("h")[0], np.tile([0.1, -0.2, 0.3], (B, 1)))
    assert rnn.check_equivalence(net, T, inputs, targets).passed

def test_deltas_at_step_zero_are_per_example():
    T, B = 3, 3
    net = small_net(initial=None)
    inputs, targets = small_data(T, B)
    out = net.unroll(T).run(inputs, targets)
    ref = rnn.bptt(net, T, inputs, targets)
    want = np.stack([ref.deltas[t]["h"] for t in range(T + 1)])
    assert relative_error(out.deltas("h"), want) <= TOL_BPTT


@pytest.mark.parametrize("T", [1, 3])
def test_a_group_no_batched_state_reaches_has_per_example_deltas(T):
    """A bias-only group (and one it alone feeds) has the same state for every example, but
    each example's error is its own: dE/dstate and dE/dtotal must be per example, as in bptt,
    not the batch's total repeated (the graph repeats such a total over the batch)."""
    net = rnn.RecurrentNet("shared", seed=1)
    net.add_group("h", 2, activation="linear")           # no incoming connection: its state is its bias
    net.add_group("k", 1, activation="tanh")
    net.connect("h", "k", delay=0)                        # fed by h alone: shared by the batch too
    net.weights["bias:h"][...] = [0.2, -0.4]
    rng = np.random.default_rng(0)
    targets = [rnn.Target("h", rng.normal(size=(T, 3, 2)), steps="all"),
               rnn.Target("k", rng.normal(size=(T, 3, 1)), steps="all")]
    out = net.unroll(T).run([], targets)
    ref = rnn.bptt(net, T, [], targets)
    for g in ("h", "k"):
        want = np.stack([ref.deltas[t][g] for t in range(T + 1)])
        assert out.deltas(g).shape == want.shape
        assert relative_error(out.deltas(g), want) <= TOL_BPTT
    insp = rnn.inspect(net, T, [], targets)
    assert relative_error(insp.state_deltas["h"][1:], np.stack([ref.deltas[t]["h"] for t in range(1, T + 1)])) <= TOL_BPTT
    for name in net.weights:
        assert relative_error(out.weight_grads[name], ref.grads[name]) <= TOL_BPTT
    assert rnn.check_equivalence(net, T, [], targets).passed


# ----------------------------------------------------------------------------- several targets add up
def test_several_targets_add_their_derivatives():
    T = 4
    net = small_net()
    inputs, _ = small_data(T)
    rng = np.random.default_rng(5)
    t1 = rnn.Target("y", rng.uniform(0, 1, (T, 4, 2)), steps="all")
    t2 = rnn.Target("h", rng.uniform(-1, 1, (2, 4, 3)), steps=("last", 2))
    t3 = rnn.Target("y", rng.uniform(0, 1, (1, 4, 1)), steps="final", units=[1])
    ff = net.unroll(T)
    both = ff.run(inputs, [t1, t2, t3])
    parts = [ff.run(inputs, [t]) for t in (t1, t2, t3)]
    assert both.loss == pytest.approx(sum(p.loss for p in parts), rel=1e-12)
    for name in net.weights:
        assert relative_error(both.weight_grads[name], sum(p.weight_grads[name] for p in parts)) <= 1e-12


def test_mask_weights_the_squared_error():
    T = 3
    net = small_net()
    inputs, targets = small_data(T)
    Y = targets[0].values
    mask = np.zeros_like(Y)
    mask[:, :, 0] = 1.0  # only unit 0 counts
    ff = net.unroll(T)
    masked = ff.run(inputs, [rnn.Target("y", Y, mask=mask)])
    subset = ff.run(inputs, [rnn.Target("y", Y[..., :1], units=[0])])
    assert masked.loss == pytest.approx(subset.loss, rel=1e-12)
    for name in net.weights:
        assert relative_error(masked.weight_grads[name], subset.weight_grads[name]) <= 1e-12


def test_cross_entropy_matches_bptt_and_finite_differences():
    T, B = 4, 5
    net = rnn.RecurrentNet("ce", seed=2)
    net.add_group("x", 3, role="input")
    net.add_group("h", 4, activation="tanh")
    net.add_group("y", 3, activation="softmax", role="output")
    net.connect("x", "h", delay=0)
    net.connect("h", "h", delay=1)
    net.connect("h", "y", delay=0)
    rng = np.random.default_rng(0)
    inputs = [rnn.Clamp("x", rng.uniform(-1, 1, (T, B, 3)))]
    labels = rng.integers(0, 3, (T, B))
    for tgt in (rnn.Target("y", labels, loss="cross_entropy"),
                rnn.Target("y", np.eye(3)[labels], loss="cross_entropy")):
        out = net.unroll(T).run(inputs, [tgt])
        ref = rnn.bptt(net, T, inputs, [tgt])
        probs = out.states("y")[1:]
        nll = -np.sum(np.log(np.take_along_axis(probs, labels[..., None], axis=-1)))
        assert out.loss == pytest.approx(nll, rel=1e-12)
        for name in net.weights:
            assert relative_error(out.weight_grads[name], ref.grads[name]) <= TOL_BPTT
        assert rnn.check_equivalence(net, T, inputs, [tgt]).passed


def test_softmax_group_partly_clamped():
    """The unrolled graph is the exact derivative of the forward pass (finite differences agree);
    the time-domain reference must be too."""
    T, B = 4, 2
    net = rnn.RecurrentNet("softclamp", seed=4)
    net.add_group("x", 2, role="input")
    net.add_group("s", 3, activation="softmax")
    net.connect("x", "s", delay=0)
    net.connect("s", "s", delay=1)
    rng = np.random.default_rng(4)
    inputs = [rnn.Clamp("x", rng.uniform(-1, 1, (T, B, 2))), rnn.Clamp("s", rng.uniform(0, 1, (T, B, 1)), units=[0])]
    targets = [rnn.Target("s", rng.uniform(0, 1, (1, B, 2)), steps="final", units=[1, 2])]
    out = net.unroll(T).run(inputs, targets)
    W = net.weights["s->s"]
    numeric = np.array([[central_difference(lambda: rnn.bptt(net, T, inputs, targets).loss, W, (i, j))
                         for j in range(3)] for i in range(3)])
    assert relative_error(out.weight_grads["s->s"], numeric) <= TOL_FD  # the graph is right
    ref = rnn.bptt(net, T, inputs, targets)
    assert relative_error(ref.grads["s->s"], numeric) <= TOL_FD      # the reference is not


def softmax_prior_net():
    """A softmax group fed by nothing but its bias: its states are shared by the whole batch."""
    net = rnn.RecurrentNet("prior", seed=0)
    net.add_group("x", 1, role="input")
    net.add_group("s", 2, activation="softmax")
    net.weights["bias:s"][...] = [0.3, -0.4]
    return net


@pytest.mark.parametrize("T,kind", [(1, "onehot"), (2, "labels"), (3, "labels"), (3, "onehot")])
def test_cross_entropy_on_a_batch_free_group(T, kind):
    B = 3
    net = softmax_prior_net()
    labels = np.random.default_rng(T).integers(0, 2, (T, B))
    values = labels if kind == "labels" else np.eye(2)[labels]
    inputs = [rnn.Clamp("x", np.zeros((T, B, 1)))]
    targets = [rnn.Target("s", values, loss="cross_entropy")]
    out = net.unroll(T).run(inputs, targets)
    ref = rnn.bptt(net, T, inputs, targets)
    assert relative_error(out.loss, ref.loss) <= TOL_BPTT
    assert relative_error(out.weight_grads["bias:s"], ref.grads["bias:s"]) <= TOL_BPTT


def test_add_n_broadcasts_a_later_term():
    """A group whose first two incoming terms are batch-free (from groups no connection reaches)
    and whose third has the batch axis."""
    T, B = 3, 2
    net = rnn.RecurrentNet("addn", seed=0)
    net.add_group("x", 1, role="input")
    net.add_group("a", 2, activation="tanh")
    net.add_group("c", 2, activation="tanh")
    net.add_group("b", 2, activation="tanh", bias=False)
    net.connect("a", "b", delay=0)
    net.connect("c", "b", delay=0)
    net.connect("x", "b", delay=0)
    rng = np.random.default_rng(0)
    net.weights["bias:a"][...] = rng.normal(0, 0.5, 2)
    net.weights["bias:c"][...] = rng.normal(0, 0.5, 2)
    inputs = [rnn.Clamp("x", rng.uniform(-1, 1, (T, B, 1)))]
    targets = [rnn.Target("b", rng.uniform(-1, 1, (T, B, 2)))]
    out = net.unroll(T).run(inputs, targets)
    ref = rnn.bptt(net, T, inputs, targets)
    for name in net.weights:
        assert relative_error(out.weight_grads[name], ref.grads[name]) <= TOL_BPTT


def test_check_equivalence_fd_floor_allows_for_rounding_noise():
    """A big error on one output (loss 3e4) next to a weight with an ordinary gradient (0.1):
    the gradient is right (bptt agrees to 1e-16), so the check must pass."""
    net = rnn.RecurrentNet("floor", seed=0)
    net.add_group("x", 1, role="input")
    net.add_group("a", 1, activation="linear")
    net.add_group("b", 1, activation="logistic")
    net.connect("x", "b", delay=0, weight=[[0.7]])
    T, B = 2, 3
    rng = np.random.default_rng(0)
    inputs = [rnn.Clamp("x", rng.uniform(-1, 1, (T, B, 1)))]
    rng.uniform(0, 1, (T, B, 1)), rng.uniform(0, 1, (T, B, 1))  # (the draws the bug was found with)
    targets = [rnn.Target("a", np.full((T, B, 1), 100.0)), rnn.Target("b", rng.uniform(0, 1, (T, B, 1)))]
    report = rnn.check_equivalence(net, T, inputs, targets)
    assert report.errors["grad bptt x->b"] <= TOL_BPTT
    assert_equivalent(report)  # judged against the rounding noise: fine
    assert report.passed       # the library's own verdict
