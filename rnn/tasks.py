"""Tasks that show what recurrent nets learn: binary addition (the lecture's
example), an attractor that settles into a stored pattern, and a delayed echo."""

import numpy as np

from .data import Clamp, Target
from .net import RecurrentNet
from .train import SequenceData


def _bits(n, width):
    return (n[:, None] >> np.arange(width)) & 1  # lowest bit first


class BinaryAddition:
    """Add two binary numbers fed lowest bit first, one column per step.

    The lecture's net: 2 input units, 3 logistic hidden units, 1 output unit, every
    connection taking one step, so each bit of the sum is due ``delay`` = 2 steps
    after its column's inputs.  Step t = 1..bits holds column t - 1; the carry needs
    one more column, so T = bits + 1 + (delay - 1) ... the output steps run from
    delay + 1 to T.
    """

    def __init__(self, bits=8, delay=2, n_train=1000, seed=0):
        if delay < 1:
            raise ValueError("delay must be >= 1")
        self.bits, self.delay, self.seed = bits, delay, seed
        self.out_bits = bits + 1
        self.steps = self.out_bits + delay
        rng = np.random.default_rng(seed)
        pairs = np.arange(2 ** (2 * bits))
        rng.shuffle(pairs)
        self.train_pairs = pairs[:n_train]
        self.test_pairs = pairs[n_train:]  # every pair not seen in training

    def net(self, seed=0, hidden=3, activation="logistic", recurrent_scale=2.0):
        """The lecture's net (3 logistic hidden units); ``recurrent_scale`` sets the spread
        of the random hidden-to-hidden weights (std = scale / sqrt(hidden))."""
        net = RecurrentNet("binary-adder", seed=seed)
        net.add_group("x", 2, role="input")
        net.add_group("h", hidden, activation=activation)
        net.add_group("y", 1, activation="logistic", role="output")
        net.connect("x", "h", delay=1, scale=2.0)
        net.connect("h", "h", delay=1, scale=recurrent_scale)
        net.connect("h", "y", delay=self.delay - 1, scale=2.0)
        return net

    def data(self, pairs):
        a, b = self.operands(pairs)
        T, n = self.steps, len(pairs)
        x = np.zeros((T, n, 2))
        x[:self.bits, :, 0] = _bits(a, self.bits).T
        x[:self.bits, :, 1] = _bits(b, self.bits).T
        y = _bits(a + b, self.out_bits).T[:, :, None].astype(float)
        return SequenceData([Clamp("x", x, steps="all")],
                            [Target("y", y, steps=list(range(self.delay + 1, T + 1)))])

    def operands(self, pairs):
        """(a, b) of each pair (a pair is the number a * 2**bits + b)."""
        pairs = np.asarray(pairs)
        return pairs >> self.bits, pairs & (2 ** self.bits - 1)

    @property
    def train(self):
        return self.data(self.train_pairs)

    @property
    def test(self):
        return self.data(self.test_pairs)

    def predict(self, net, pairs):
        """The sums the net computes (thresholding the output at 0.5) for ``pairs``."""
        out = _unrolled(self, net).run(self.data(pairs).inputs, backward=False)
        y = out.states("y")[self.delay + 1:, :, 0] > 0.5
        return (y.astype(np.int64) << np.arange(self.out_bits)[:, None]).sum(axis=0)

    def accuracy(self, net, pairs=None):
        """Fraction of pairs whose whole sum is right (default: all unseen pairs)."""
        pairs = self.test_pairs if pairs is None else pairs
        a, b = self.operands(pairs)
        return float(np.mean(self.predict(net, pairs) == a + b))


class Attractor:
    """Settle into a stored pattern from a corrupted start and stay there.

    Input: the initial state of every unit (a stored pattern with some units
    flipped).  Targets: the pattern over the last ``k`` steps, which trains the net
    to reach the pattern and remain in it (an attractor), not merely pass through.
    """

    def __init__(self, units=8, patterns=3, steps=8, k=3, flips=1, n_train=256, seed=0):
        rng = np.random.default_rng(seed)
        self.units, self.steps, self.k, self.flips = units, steps, k, flips
        self.patterns = rng.integers(0, 2, size=(patterns, units)).astype(float)
        self.n_train = n_train

    def net(self, seed=0):
        net = RecurrentNet("attractor", seed=seed)
        net.add_group("h", self.units, activation="logistic")
        net.connect("h", "h", delay=1)
        return net

    def corrupt(self, n, rng):
        which = rng.integers(0, len(self.patterns), size=n)
        start = self.patterns[which].copy()
        for i in range(n):
            flip = rng.choice(self.units, size=self.flips, replace=False)
            start[i, flip] = 1.0 - start[i, flip]
        return which, start

    def data(self, n, seed, k=None):
        """n corrupted starts (seeded) with the pattern as target over the last k steps (default self.k)."""
        k = self.k if k is None else k
        which, start = self.corrupt(n, np.random.default_rng(seed))
        goal = np.broadcast_to(self.patterns[which], (k, n, self.units))
        return SequenceData([Clamp("h", start[None], steps=[0])],
                            [Target("h", goal, steps=("last", k))])

    @property
    def train(self):
        return self.data(self.n_train, seed=1)

    def fit(self, net, progress=False, lr=0.05, warmup_epochs=30, epochs=40, batch_size=32, callback=None):
        """Train in two stages: first with the pattern as target at *every* step (reach it
        fast), then on the task itself (targets on the last k steps only: stay there).
        Trained on the task alone from the start, the net tends to settle on the mean
        pattern or to oscillate; the warm-up gets it into the right basin."""
        from .train import train
        first = train(net, self.data(self.n_train, seed=1, k=self.steps), self.steps, optimizer="adam", lr=lr,
                      epochs=warmup_epochs, batch_size=batch_size, progress=progress, callback=callback)
        second = train(net, self.train, self.steps, optimizer="adam", lr=lr, epochs=epochs,
                       batch_size=batch_size, progress=progress, callback=callback)
        second.loss = first.loss + second.loss
        second.metrics = first.metrics + second.metrics
        second.seconds += first.seconds
        second.updates += first.updates
        return second

    def evaluate(self, net, n=200, seed=12345):
        """(fraction recalled, largest state change over the last k steps) on unseen corrupted starts."""
        which, start = self.corrupt(n, np.random.default_rng(seed))
        out = _unrolled(self, net).run([Clamp("h", start[None], steps=[0])], backward=False)
        s = out.states("h")
        recalled = np.all((s[-1] > 0.5) == (self.patterns[which] > 0.5), axis=1)
        change = float(np.max(np.abs(np.diff(s[-self.k:], axis=0)))) if self.k > 1 else 0.0
        return float(np.mean(recalled)), change


class Echo:
    """Continuous output: the output unit repeats its input signal ``lag`` steps later."""

    def __init__(self, lag=2, steps=20, n_train=256, seed=0):
        self.lag, self.steps, self.n_train, self.seed = lag, steps, n_train, seed

    def net(self, seed=0, hidden=8):
        net = RecurrentNet("echo", seed=seed)
        net.add_group("x", 1, role="input")
        net.add_group("h", hidden, activation="tanh")
        net.add_group("y", 1, activation="linear", role="output")
        net.connect("x", "h", delay=0)
        net.connect("h", "h", delay=1)
        net.connect("h", "y", delay=0)
        return net

    def data(self, n, seed):
        rng = np.random.default_rng(seed)
        x = rng.uniform(-1, 1, size=(self.steps, n, 1))
        y = np.zeros_like(x)
        y[self.lag:] = x[:-self.lag]
        return SequenceData([Clamp("x", x)], [Target("y", y[self.lag:], steps=range(self.lag + 1, self.steps + 1))])

    @property
    def train(self):
        return self.data(self.n_train, self.seed + 1)


def _unrolled(task, net):
    """The task's unrolled net for ``net``, kept between calls (accuracy runs after every
    epoch); Unrolled re-emits its graph by itself when the net's weights were replaced."""
    cached = getattr(task, "_unrolled_for", None)
    if cached is None or cached[0] is not net:
        cached = task._unrolled_for = (net, net.unroll(task.steps))
    return cached[1]
