"""The unrolled net has the structure the lecture draws, and bad nets or data are refused clearly.

* T + 1 layers (layer 0 holds the initial states), stable node names (``h@t3``, ``W[h->h]@t3``);
* one weight copy per step that uses it, all sharing the storage ``net.weights[name]`` (memory
  does not grow with T), tied so that an optimizer moves each shared weight once per update;
* the layers are isomorphic graphs (networkx);
* every error a user can cause is a ``tinygraph.GraphError`` whose message names the group
  and the shapes or steps involved.
"""

import networkx as nx
import numpy as np
import pytest

import rnn
import tinygraph as tg
from tinygraph.check import relative_error


def adder_net(learned=True, seed=0):
    net = rnn.RecurrentNet("adder", seed=seed)
    net.add_group("x", 2, role="input")
    net.add_group("h", 3, activation="logistic", initial="learned" if learned else None)
    net.add_group("y", 1, activation="logistic", role="output")
    net.connect("x", "h")
    net.connect("h", "h", delay=1)
    net.connect("h", "y")
    return net


def adder_data(T, B=4, seed=0):
    rng = np.random.default_rng(seed)
    return ([rnn.Clamp("x", rng.uniform(-1, 1, (T, B, 2)))],
            [rnn.Target("y", rng.uniform(0, 1, (T, B, 1)), steps="all")])


# ----------------------------------------------------------------------------- layers and names
@pytest.mark.parametrize("T", [1, 3, 8])
def test_unroll_has_T_plus_one_layers(T):
    net = adder_net()
    ff = net.unroll(T)
    assert ff.T == T
    for t in range(T + 1):
        layer = ff.layer(t)
        assert set(layer) == {"x", "h", "y"}
        for g, node in layer.items():
            assert node.name == f"{g}@t{t}"
            assert ff.graph[f"{g}@t{t}"] is node
    for bad in (-1, T + 1, 1.0, True):
        with pytest.raises(tg.GraphError, match=r"0\.\.%d" % T):
            ff.layer(bad)
    # after a run, the layers are those of the graph the run used
    inputs, targets = adder_data(T)
    out = ff.run(inputs, targets)
    assert out.states("h").shape == (T + 1, 4, 3)
    assert out.deltas("h").shape == (T + 1, 4, 3)
    assert len([t for t in range(T + 1) if ff.layer(t)]) == T + 1


def test_node_names_follow_the_step():
    T = 5
    net = adder_net()
    ff = net.unroll(T)
    g = ff.graph
    assert g["h@t3"] is ff.layer(3)["h"]
    assert g["W[h->h]@t3"] is ff.copies("h->h")[2]
    assert g["W[h->h]@t3"].op == "param"
    assert g["b[h]@t3"] is ff.copies("bias:h")[2]
    assert g["net[h]@t3"] is ff.total_input(3)["h"]
    for name in net.weights:
        for node, t in zip(ff.copies(name), ff.copy_steps(name)):
            assert node.name.endswith(f"@t{t}")
    for name, conn in net.connections.items():
        assert [c.name for c in ff.copies(name)] == [f"W[{name}]@t{t}" for t in range(1, T + 1)]
    # the same names every time: a second unroll emits the same node names in the same order
    assert [n.name for n in net.unroll(T).graph.nodes] == [n.name for n in g.nodes]


def test_copies_one_per_step_that_uses_the_weight():
    T = 6
    net = adder_net()
    ff = net.unroll(T)
    for name in ("x->h", "h->h", "h->y", "bias:h", "bias:y"):
        assert ff.copy_steps(name) == list(range(1, T + 1))
        assert len(ff.copies(name)) == T
    assert ff.copy_steps("init:h") == [0]  # a learned initial state is used once, at t = 0
    # a step where h is clamped (whole group) computes nothing for h: no copies of its weights there
    inputs, targets = adder_data(T)
    inputs.append(rnn.Clamp("h", np.full((1, 4, 3), 0.2), steps=[2]))
    ff.run(inputs, targets)
    steps = [t for t in range(1, T + 1) if t != 2]
    for name in ("x->h", "h->h", "bias:h"):
        assert ff.copy_steps(name) == steps
    assert ff.copy_steps("h->y") == list(range(1, T + 1))
    with pytest.raises(tg.GraphError, match="nope"):
        ff.copies("nope")


def test_delayed_connections_start_reading_layer_zero():
    """delay d at step t reads step max(t - d, 0): a delay-2 connection has a copy at every step."""
    net = rnn.RecurrentNet("d2")
    net.add_group("h", 2, activation="tanh")
    net.connect("h", "h", delay=2)
    ff = net.unroll(4)
    assert ff.copy_steps("h->h") == [1, 2, 3, 4]
    G = ff.graph.to_networkx()
    reads = {t: sorted(u for u, _ in G.in_edges(f"in[h->h]@t{t}")) for t in range(1, 5)}
    assert reads == {1: ["W[h->h]@t1", "h@t0"], 2: ["W[h->h]@t2", "h@t0"],
                     3: ["W[h->h]@t3", "h@t1"], 4: ["W[h->h]@t4", "h@t2"]}


# ----------------------------------------------------------------------------- shared storage
@pytest.mark.parametrize("T", [2, 40])
def test_all_copies_share_the_nets_storage(T):
    net = adder_net()
    ff = net.unroll(T)
    out = ff.run(*adder_data(T))
    for name, arr in net.weights.items():
        for copy in out.unrolled.copies(name):
            assert copy.value is arr
    storages = {id(p.value): p.value for p in out.graph.params}
    assert set(storages) == {id(a) for a in net.weights.values()}


def test_weight_memory_does_not_grow_with_T():
    net = adder_net()

    def param_bytes(T):
        g = net.unroll(T).run(*adder_data(T)).graph
        unique = {id(p.value): p.value for p in g.params}
        return sum(a.nbytes for a in unique.values()), len(g.params)

    small, n_small = param_bytes(2)
    big, n_big = param_bytes(50)
    assert small == big == sum(a.nbytes for a in net.weights.values())
    assert n_big > n_small  # many more copy nodes, no more weight memory


def test_editing_net_weights_in_place_is_seen_by_every_copy():
    T = 4
    net = adder_net()
    ff = net.unroll(T)
    inputs, targets = adder_data(T)
    before = ff.run(inputs, targets).loss
    net.weights["h->h"] *= 0.5
    after = ff.run(inputs, targets).loss
    assert after != before
    assert after == pytest.approx(rnn.bptt(net, T, inputs, targets).loss, rel=1e-12)


# ----------------------------------------------------------------------------- tied updates
def test_sgd_moves_each_shared_weight_once_per_step():
    T, lr = 5, 0.3
    net = adder_net()
    ff = net.unroll(T)
    inputs, targets = adder_data(T)
    for _ in range(3):
        out = ff.run(inputs, targets)
        old = {k: v.copy() for k, v in net.weights.items()}
        opt = tg.SGD(out.graph.params, lr=lr)
        opt.step(out.grads)
        for name, arr in net.weights.items():
            want = old[name] - lr * out.weight_grads[name]
            assert np.array_equal(arr, want), name  # exactly: one step of -lr * (sum over the copies)
            if name not in ("init:h",) and np.any(out.weight_grads[name]):
                # T copies moved T times would be T times as far
                assert not np.allclose(arr, old[name] - T * lr * out.weight_grads[name])
        for name in net.weights:
            assert all(c.value is net.weights[name] for c in out.unrolled.copies(name))


def test_sgd_step_equals_the_time_domain_gradient_step():
    """Training the unrolled graph trains the net: the update is the BPTT gradient (sum of copies)."""
    T, lr = 4, 0.1
    net = adder_net()
    inputs, targets = adder_data(T)
    ref = rnn.bptt(net, T, inputs, targets)
    old = {k: v.copy() for k, v in net.weights.items()}
    out = net.unroll(T).run(inputs, targets)
    tg.SGD(out.graph.params, lr=lr).step(out.grads)
    for name in net.weights:
        assert relative_error(net.weights[name], old[name] - lr * ref.grads[name]) <= 1e-12


def test_adam_moves_each_shared_weight_once_per_step():
    """Three Adam steps on the unrolled graph equal three Adam steps computed by hand, one per
    shared weight, from the tied gradients out.weight_grads."""
    T, lr, b1, b2, eps = 4, 0.05, 0.9, 0.999, 1e-8
    net = adder_net()
    ff = net.unroll(T)
    inputs, targets = adder_data(T)
    manual = {k: v.copy() for k, v in net.weights.items()}
    m = {k: np.zeros_like(v) for k, v in manual.items()}
    v2 = {k: np.zeros_like(v) for k, v in manual.items()}
    opt = None
    for step in range(1, 4):
        out = ff.run(inputs, targets)
        grads = {k: g.copy() for k, g in out.weight_grads.items()}
        if opt is None:
            opt = tg.Adam(out.graph.params, lr=lr, betas=(b1, b2), eps=eps)
        opt.step(out.grads)
        for k in manual:
            m[k] = b1 * m[k] + (1 - b1) * grads[k]
            v2[k] = b2 * v2[k] + (1 - b2) * grads[k] ** 2
            mhat = m[k] / (1 - b1 ** step)
            vhat = v2[k] / (1 - b2 ** step)
            manual[k] = manual[k] - lr * mhat / (np.sqrt(vhat) + eps)
        for k in manual:
            assert np.allclose(net.weights[k], manual[k], rtol=1e-12, atol=1e-14), (k, step)


# ----------------------------------------------------------------------------- isomorphic layers
def layer_subgraph(G, t):
    return G.subgraph([n for n in G.nodes if n.endswith(f"@t{t}")])


def same_ops(a, b):
    return a["op"] == b["op"]


@pytest.mark.parametrize("with_data", [False, True])
def test_layers_are_isomorphic(with_data):
    T = 6
    net = adder_net()
    ff = net.unroll(T)
    if with_data:
        ff.run(*adder_data(T))
    G = ff.graph.to_networkx()
    first = layer_subgraph(G, 1)
    assert first.number_of_nodes() > 0
    for t in range(2, T + 1):
        assert nx.is_isomorphic(first, layer_subgraph(G, t), node_match=same_ops), t
    # layer 0 holds only the initial states: not a computing layer
    assert not nx.is_isomorphic(first, layer_subgraph(G, 0), node_match=same_ops)


def test_layers_isomorphic_once_the_delays_have_filled_up():
    net = rnn.RecurrentNet("d2", seed=1)
    net.add_group("a", 2, activation="tanh")
    net.add_group("b", 1, activation="relu")
    net.connect("a", "a", delay=1)
    net.connect("a", "b", delay=0)
    net.connect("b", "a", delay=2)
    G = net.unroll(7).graph.to_networkx()
    ref = layer_subgraph(G, 2)
    for t in range(3, 8):
        assert nx.is_isomorphic(ref, layer_subgraph(G, t), node_match=same_ops), t
    report = rnn.check_equivalence(net, 7)
    assert report.structure["isomorphic layers"][0]
    assert all(ok for ok, _ in report.structure.values()), str(report)


# ----------------------------------------------------------------------------- refused nets
def test_zero_delay_cycle_is_refused_naming_the_cycle():
    net = rnn.RecurrentNet("cyc")
    net.add_group("a", 1)
    net.add_group("b", 2)
    net.add_group("c", 1)
    net.connect("a", "b", delay=0)
    net.connect("b", "c", delay=0)
    with pytest.raises(tg.GraphError) as exc:
        net.connect("c", "a", delay=0)
    msg = str(exc.value)
    assert "cycle" in msg and "delay" in msg
    assert any(path in msg for path in ("a -> b -> c -> a", "b -> c -> a -> b", "c -> a -> b -> c"))
    # the refused connection left nothing behind: the net still unrolls
    assert "c->a" not in net.connections and "c->a" not in net.weights
    net.unroll(2)
    net.connect("c", "a", delay=1)  # the same connection with a delay is fine
    net.unroll(2)


def test_zero_delay_self_connection_is_refused():
    net = rnn.RecurrentNet("self")
    net.add_group("h", 2)
    with pytest.raises(tg.GraphError, match="h -> h"):
        net.connect("h", "h", delay=0)
    assert net.connections == {}


@pytest.mark.parametrize("src,dst", [("zz", "h"), ("h", "zz")])
def test_unknown_group_in_connect(src, dst):
    net = adder_net()
    with pytest.raises(tg.GraphError, match="zz") as exc:
        net.connect(src, dst)
    assert "groups: ['x', 'h', 'y']" in str(exc.value)  # and lists the groups there are


def test_unknown_group_in_clamp_and_target():
    T = 3
    net = adder_net()
    ff = net.unroll(T)
    with pytest.raises(tg.GraphError, match=r"Clamp\('zz'\).*no group 'zz'"):
        ff.run([rnn.Clamp("zz", np.zeros((T, 1, 2)))])
    with pytest.raises(tg.GraphError, match=r"Target\('zz'\).*no group 'zz'"):
        ff.run([], [rnn.Target("zz", np.zeros((T, 1, 1)))])
    with pytest.raises(tg.GraphError, match="zz"):
        rnn.bptt(net, T, [rnn.Clamp("zz", np.zeros((T, 1, 2)))])


@pytest.mark.parametrize("make,where,shape", [
    (lambda T: rnn.Clamp("x", np.zeros((T - 1, 4, 2))), "Clamp('x')", "(2, 4, 2)"),
    (lambda T: rnn.Clamp("x", np.zeros((T, 4, 3))), "Clamp('x')", "(3, 4, 3)"),
    (lambda T: rnn.Clamp("x", np.zeros((T, 4))), "Clamp('x')", "(3, 4)"),
    (lambda T: rnn.Clamp("h", np.zeros((1, 4, 3)), steps=[0], units=[0, 1]), "Clamp('h')", "(1, 4, 3)"),
    (lambda T: rnn.Target("y", np.zeros((T, 4, 2))), "Target('y')", "(3, 4, 2)"),
    (lambda T: rnn.Target("y", np.zeros((2, 4, 1)), steps="final"), "Target('y')", "(2, 4, 1)"),
    (lambda T: rnn.Target("h", np.zeros((2, 4, 3)), steps=("last", 2), units=[2]), "Target('h')", "(2, 4, 3)"),
])
def test_values_of_the_wrong_shape_are_refused(make, where, shape):
    T = 3
    net = adder_net()
    spec = make(T)
    inputs, targets = ([spec], []) if isinstance(spec, rnn.Clamp) else ([], [spec])
    with pytest.raises(tg.GraphError) as exc:
        net.unroll(T).run(inputs, targets)
    msg = str(exc.value)
    assert where in msg and shape in msg, msg
    with pytest.raises(tg.GraphError):
        rnn.bptt(net, T, inputs, targets)


def test_mask_of_the_wrong_shape_is_refused():
    T = 3
    net = adder_net()
    with pytest.raises(tg.GraphError, match=r"Target\('y'\) mask.*\(3, 4, 2\)"):
        net.unroll(T).run([], [rnn.Target("y", np.zeros((T, 4, 1)), mask=np.ones((T, 4, 2)))])


def test_batch_sizes_must_agree():
    T = 3
    net = adder_net()
    with pytest.raises(tg.GraphError, match=r"batch size.*\[2, 4\]"):
        net.unroll(T).run([rnn.Clamp("x", np.zeros((T, 4, 2)))], [rnn.Target("y", np.zeros((T, 2, 1)))])


@pytest.mark.parametrize("spec,bad", [
    (lambda T: rnn.Clamp("x", np.zeros((1, 2, 2)), steps=[T + 1]), "[4]"),
    (lambda T: rnn.Clamp("x", np.zeros((1, 2, 2)), steps=[-1]), "[-1]"),
    (lambda T: rnn.Clamp("x", np.zeros((2, 2, 2)), steps=range(T, T + 2)), "[4]"),
    (lambda T: rnn.Target("y", np.zeros((1, 2, 1)), steps=[T + 1]), "[4]"),
    (lambda T: rnn.Target("y", np.zeros((1, 2, 1)), steps=("last", T + 1)), "k=4"),
    (lambda T: rnn.Target("y", np.zeros((1, 2, 1)), steps=[0]), "step 0"),
    (lambda T: rnn.Target("y", np.zeros((1, 2, 1)), steps="initial"), "step 0"),
])
def test_steps_outside_the_unrolled_range_are_refused(spec, bad):
    T = 3
    net = adder_net()
    s = spec(T)
    inputs, targets = ([s], []) if isinstance(s, rnn.Clamp) else ([], [s])
    with pytest.raises(tg.GraphError) as exc:
        net.unroll(T).run(inputs, targets)
    msg = str(exc.value)
    assert bad in msg and f"('{s.group}')" in msg, msg


def test_units_outside_the_group_are_refused():
    net = adder_net()
    with pytest.raises(tg.GraphError, match=r"Clamp\('h'\).*units \[3\].*0\.\.2"):
        net.unroll(2).run([rnn.Clamp("h", np.zeros((1, 1, 1)), steps=[0], units=[3])])


@pytest.mark.parametrize("clamp_units,target_units,both", [
    (None, None, "[0, 1, 2]"), ([1], None, "[1]"), ([0, 2], [2], "[2]"), (None, [1], "[1]")])
def test_a_unit_clamped_and_targeted_at_one_step_is_refused(clamp_units, target_units, both):
    T, B = 3, 2
    net = adder_net()
    nc = 3 if clamp_units is None else len(clamp_units)
    nt = 3 if target_units is None else len(target_units)
    inputs = [rnn.Clamp("h", np.zeros((T, B, nc)), steps="all", units=clamp_units)]
    targets = [rnn.Target("h", np.zeros((1, B, nt)), steps="final", units=target_units)]
    with pytest.raises(tg.GraphError) as exc:
        net.unroll(T).run(inputs, targets)
    msg = str(exc.value)
    assert "Target('h')" in msg and both in msg and f"step {T}" in msg, msg


def test_clamped_and_targeted_at_different_units_or_steps_is_fine():
    T, B = 3, 2
    net = adder_net()
    inputs = [rnn.Clamp("h", np.zeros((T, B, 1)), steps="all", units=[0]),
              rnn.Clamp("y", np.zeros((1, B, 1)), steps=[1])]
    targets = [rnn.Target("h", np.zeros((T, B, 2)), steps="all", units=[1, 2]),
               rnn.Target("y", np.zeros((2, B, 1)), steps=[2, 3])]
    out = net.unroll(T).run(inputs, targets)
    assert np.isfinite(out.loss)


def test_a_unit_clamped_twice_at_one_step_is_refused():
    net = adder_net()
    inputs = [rnn.Clamp("h", np.zeros((1, 2, 2)), steps=[0], units=[0, 1]),
              rnn.Clamp("h", np.zeros((1, 2, 1)), steps=[0], units=[1])]
    with pytest.raises(tg.GraphError, match=r"Clamp\('h'\).*\[1\].*twice.*step 0"):
        net.unroll(2).run(inputs)


@pytest.mark.parametrize("steps", [0, -1, 2.0, True, None])
def test_steps_zero_is_refused(steps):
    net = adder_net()
    with pytest.raises(tg.GraphError, match="steps"):
        net.unroll(steps)
    with pytest.raises(tg.GraphError, match="steps"):
        rnn.bptt(net, steps, [], [rnn.Target("y", np.zeros((1, 1, 1)), steps="final")])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_infinity_in_the_data_is_refused(bad):
    T = 3
    net = adder_net()
    X = np.zeros((T, 2, 2))
    X[1, 1, 0] = bad
    with pytest.raises(tg.GraphError, match=r"Clamp\('x'\).*NaN.*\(1, 1, 0\)"):
        net.unroll(T).run([rnn.Clamp("x", X)])
    Y = np.zeros((T, 2, 1))
    Y[2, 0, 0] = bad
    with pytest.raises(tg.GraphError, match=r"Target\('y'\).*NaN.*\(2, 0, 0\)"):
        net.unroll(T).run([], [rnn.Target("y", Y)])
    with pytest.raises(tg.GraphError, match=r"Target\('y'\) mask.*NaN"):
        net.unroll(T).run([], [rnn.Target("y", np.zeros((T, 2, 1)), mask=np.where(Y == 0, 1.0, bad))])
    with pytest.raises(tg.GraphError, match=r"Clamp\('x'\)"):
        rnn.bptt(net, T, [rnn.Clamp("x", X)], [rnn.Target("y", np.zeros((T, 2, 1)))])


def test_errors_also_subclass_the_builtin_exceptions():
    net = adder_net()
    with pytest.raises(ValueError):
        net.connect("zz", "h")
    with pytest.raises(ValueError):
        net.unroll(0)
    with pytest.raises(ValueError):
        net.unroll(2).run([rnn.Clamp("x", np.zeros((1, 1, 2)))])


def test_unsorted_steps_keep_their_values():
    """Clamp values follow the steps as given: steps=[3, 1] with values (v3, v1) puts v3 at step 3.
    (Refusing unsorted steps with a DataError would also be correct.)"""
    T = 4
    net = adder_net()
    V = np.random.default_rng(0).uniform(-1, 1, (2, 3, 2))
    targets = [rnn.Target("y", np.zeros((T, 3, 1)))]
    try:
        out = net.unroll(T).run([rnn.Clamp("x", V, steps=[3, 1])], targets)
    except rnn.DataError:
        return
    assert np.array_equal(out.states("x")[3], V[0])
    assert np.array_equal(out.states("x")[1], V[1])


# ----------------------------------------------------------------- the net changing after unroll

@pytest.mark.parametrize("new", [5.0, "zero", [0.1, 0.2], None])
def test_set_initial_after_unroll_is_seen_by_the_next_run(new):
    """A fixed initial state is a constant of the emitted graph: setting it anew must make the
    next run emit again (as replacing a weight does), never run on the old constant."""
    net = rnn.RecurrentNet("init", seed=0)
    net.add_group("h", 2, activation="linear", initial=0.3)
    net.connect("h", "h", delay=1, weight=np.eye(2))
    Y = np.ones((2, 1, 2))
    ff = net.unroll(2)
    before = ff.run([], [rnn.Target("h", Y, steps="all")])
    net.set_initial("h", new)
    after = ff.run([], [rnn.Target("h", Y, steps="all")])
    ref = rnn.bptt(net, 2, [], [rnn.Target("h", Y, steps="all")])
    assert np.array_equal(after.states("h")[0], ref.states[0]["h"])
    assert after.loss == pytest.approx(ref.loss, rel=1e-12)
    assert np.array_equal(before.states("h")[0], np.full((1, 2), 0.3))  # the earlier run keeps its numbers


def test_a_group_added_after_unroll_is_seen_by_the_next_run():
    net = rnn.RecurrentNet("grow", seed=0)
    net.add_group("h", 2, activation="tanh")
    ff = net.unroll(2)
    ff.run([], [rnn.Target("h", np.zeros((2, 1, 2)), steps="all")])
    net.add_group("k", 1, activation="linear", bias=False)  # adds no weight
    out = ff.run([], [rnn.Target("k", np.ones((2, 1, 1)), steps="all")])
    assert "k" in out.layer(1)
    assert out.loss == pytest.approx(rnn.bptt(net, 2, [], [rnn.Target("k", np.ones((2, 1, 1)), steps="all")]).loss)


@pytest.mark.parametrize("name", ["bias:c", "init:b"])
def test_connection_names_cannot_take_a_bias_or_initial_state_name(name):
    net = rnn.RecurrentNet("names", seed=0)
    net.add_group("a", 2)
    net.add_group("b", 3)
    with pytest.raises(rnn.NetError, match="kept for the groups' biases"):
        net.connect("a", "b", name=name)
    assert name not in net.connections and set(net.weights) == {"bias:a", "bias:b"}


def test_results_of_one_run_index_by_that_runs_layer():
    """Runs with different clamp or target structures emit different graphs (of one name):
    ``out.layer(t)`` gives this run's nodes, and a node of another run is refused, saying so."""
    net = rnn.RecurrentNet("two", seed=0)
    net.add_group("x", 1, role="input")
    net.add_group("h", 2, activation="tanh")
    net.connect("x", "h", delay=0)
    ff = net.unroll(2)
    X = np.ones((2, 3, 1))
    o1 = ff.run([rnn.Clamp("x", X)], [rnn.Target("h", np.zeros((2, 3, 2)), steps="all")])
    o2 = ff.run([rnn.Clamp("x", X)], [rnn.Target("h", np.zeros((1, 3, 2)), steps="final")])
    assert o1.grads[o1.layer(1)["h"]].shape == (3, 2)
    with pytest.raises(tg.GraphError, match="another graph that is also named"):
        o1.grads[o2.layer(1)["h"]]
    with pytest.raises(rnn.NetError, match="0..2"):
        o1.layer(3)


def test_check_equivalence_default_targets_leave_clamped_units_alone():
    net = rnn.RecurrentNet("forced", seed=0)
    net.add_group("h", 3, activation="tanh")
    net.add_group("y", 1, role="output")
    net.connect("h", "y", delay=0)
    net.connect("h", "h", delay=1)
    rng = np.random.default_rng(0)
    every = [rnn.Clamp("h", rng.normal(size=(3, 2, 3)))]                         # h fixed at every step
    some = [rnn.Clamp("h", rng.normal(size=(2, 2, 2)), steps=[1, 3], units=[0, 2])]  # two units at two steps
    for clamps in (every, some):
        rep = rnn.check_equivalence(net, 3, clamps)
        assert rep.passed, rep


def test_the_latest_graph_follows_the_net_before_the_next_run():
    net = rnn.RecurrentNet("later", seed=0)
    net.add_group("h", 2, activation="tanh", initial=0.5)
    ff = net.unroll(2)
    ff.run([], [rnn.Target("h", np.zeros((2, 3, 2)), steps="all")])
    first = ff.graph
    net.set_initial("h", 0.9)
    net.add_group("k", 1, activation="linear", bias=False)
    assert ff.graph is not first and set(ff.layer(1)) == {"h", "k"}
    assert "target[h@t1]" in ff.graph  # the same clamps and targets as the latest run
    init = ff.layer(0)["h"]
    np.testing.assert_array_equal(ff.graph.forward({"batch": np.empty((3, 0)), **{
        n.name: np.zeros((3, 2)) for n in ff.graph.inputs if n.name.startswith("target")}})[init],
        np.full((3, 2), 0.9))


def test_a_refused_set_initial_leaves_a_learned_state_and_its_weight():
    net = rnn.RecurrentNet("keep", seed=0)
    net.add_group("h", 3, activation="tanh", initial="learned")
    before = net.weights["init:h"].copy()
    with pytest.raises(rnn.NetError, match=r"shape \(3,\)"):
        net.set_initial("h", [1.0, 2.0])
    assert net.groups["h"].initial == "learned" and np.array_equal(net.weights["init:h"], before)
    net.unroll(2).run([], [rnn.Target("h", np.zeros((2, 1, 3)), steps="all")])


def test_weight_grads_of_a_run_after_the_net_grew():
    net = rnn.RecurrentNet("grew", seed=0)
    net.add_group("x", 2, role="input")
    net.add_group("h", 3, activation="tanh")
    net.connect("x", "h", delay=1)
    rng = np.random.default_rng(0)
    out = net.unroll(3).run([rnn.Clamp("x", rng.standard_normal((3, 2, 2)))],
                            [rnn.Target("h", rng.standard_normal((1, 2, 3)), steps="final")])
    net.connect("h", "h", delay=1)
    assert sorted(out.weight_grads) == ["bias:h", "x->h"]
