"""Window training (truncated BPTT in training): windows of k1 steps, gradients k2 steps back,
the state carried forward between windows."""

import numpy as np
import pytest

import rnn
from rnn.train import SequenceData, train, windows
from rnn.tasks import Echo
from tinygraph import GraphError


def _echo_net():
    return Echo(lag=2, steps=12).net(seed=3)


def test_windows_carry_the_state_exactly():
    """Running window after window, each starting from the previous window's final states,
    gives the same states as one run over all steps (the forward pass is not truncated)."""
    net = _echo_net()
    T, k1 = 12, 4
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (T, 3, 1))
    full = net.unroll(T).run([rnn.Clamp("x", X)], backward=False)
    carried = None
    for w, (ins, _) in enumerate(windows(net, T, [rnn.Clamp("x", X)], [], k1)):
        if carried is not None:
            ins = ins + [rnn.Clamp(g, s[None], steps=[0]) for g, s in carried.items()]
        out = net.unroll(k1).run(ins, backward=False)
        for g in net.groups:
            np.testing.assert_allclose(out.states(g)[1:], full.states(g)[1 + w * k1:1 + (w + 1) * k1],
                                       rtol=1e-12, atol=1e-12)
        carried = {g: out.states(g)[-1].copy() for g in net.groups}


def test_window_update_equals_truncated_bptt_on_the_window():
    """The first update of window training uses the truncated BPTT gradient of the first window."""
    import tinygraph as tg
    from tinygraph.check import relative_error
    net = _echo_net()
    T, k1, k2 = 12, 6, 3
    rng = np.random.default_rng(1)
    X = rng.uniform(-1, 1, (T, 2, 1))
    Y = rng.uniform(-1, 1, (T, 2, 1))
    data = SequenceData([rnn.Clamp("x", X)], [rnn.Target("y", Y)])
    ref = rnn.bptt(net, k1, [rnn.Clamp("x", X[:k1])], [rnn.Target("y", Y[:k1])], truncate=k2)
    seen = []

    def sgd(params):
        opt = tg.SGD(params, lr=0.01)
        step = opt.step

        def record(grads):
            if not seen:  # the first window, before any update: map each tied gradient to its weight
                cs = grads.graph.constraints
                by_storage = {id(v.storages[0]): cs.raw_variable_grad(v, grads) for v in cs.variables(params)}
                seen.append({k: by_storage[id(w)] for k, w in net.weights.items() if id(w) in by_storage})
            return step(grads)
        opt.step = record
        return opt

    train(net, data, T, optimizer=sgd, epochs=1, batch_size=2, progress=False, window=k1, truncate=k2)
    assert set(seen[0]) == set(net.weights)
    for k, g in seen[0].items():
        assert relative_error(g, ref.grads[k]) < 1e-10, k


def test_window_must_divide_steps_and_delays_must_be_short():
    net = _echo_net()
    X = np.zeros((12, 1, 1))
    data = SequenceData([rnn.Clamp("x", X)], [rnn.Target("y", X)])
    with pytest.raises(GraphError, match="window"):
        train(net, data, 12, window=5, progress=False, epochs=1)
    net.connect("x", "y", delay=2, name="x->y late")
    with pytest.raises(GraphError, match="delays up to 2"):
        train(net, data, 12, window=4, progress=False, epochs=1)


def test_window_training_learns_the_echo():
    t = Echo(lag=2, steps=40, n_train=128)
    net = t.net(seed=0)
    hist = train(net, t.train, t.steps, lr=0.02, epochs=15, batch_size=32, progress=False, window=10, truncate=5)
    assert hist.loss[-1] < hist.loss[0] / 50


@pytest.mark.parametrize("N", [3, 5])
def test_sequence_data_slices_examples_of_a_single_step_one_hot_target(N):
    """One step of one-hot rows (N, classes), which Target accepts, keeps its rows with their
    examples when SequenceData takes a subset (the batch axis, never the classes)."""
    X = np.arange(2 * N, dtype=float).reshape(2, N, 1)
    classes = np.arange(N) % 3
    onehot = np.eye(3)[classes]
    data = SequenceData([rnn.Clamp("x", X)], [rnn.Target("y", onehot, steps="final", loss="cross_entropy")])
    order = np.arange(N)[::-1]
    ins, tgts = data.subset(order)
    assert np.array_equal(np.asarray(ins[0].values)[0, :, 0], X[0, order, 0])
    assert np.array_equal(np.asarray(tgts[0].values)[0], onehot[order])
    labels = SequenceData([rnn.Clamp("x", X)], [rnn.Target("y", classes, steps="final", loss="cross_entropy")])
    assert np.array_equal(np.asarray(labels.subset(order)[1][0].values)[0], classes[order])
