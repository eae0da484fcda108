"""Helpers several test files use (pytest puts this folder on sys.path: `from shared import ...`)."""

import numpy as np

import rnn


def tanh_rnn(name, I, H):
    """x (I inputs) -> h (H tanh units, learned initial state, recurrent) -> y (I linear outputs):
    the benchmarks' model, built here so that tests do not depend on benchmarks/."""
    net = rnn.RecurrentNet(name)
    net.add_group("x", I, role="input")
    net.add_group("h", H, activation="tanh", initial="learned")
    net.add_group("y", I, activation="linear", role="output")
    net.connect("x", "h", delay=0)
    net.connect("h", "h", delay=1)
    net.connect("h", "y", delay=0)
    return net


def shared_fd(g, loss, feeds, arr, eps=1e-6):
    """d loss / d(one shared array) by central differences: perturbs every tied copy at once
    (written out here, independent of tinygraph.check)."""
    out = np.empty(arr.size)
    for i in range(arr.size):
        pos = np.unravel_index(i, arr.shape)
        old = arr[pos]
        arr[pos] = old + eps
        up = float(g.forward(feeds, outputs=[loss])[loss])
        arr[pos] = old - eps
        down = float(g.forward(feeds, outputs=[loss])[loss])
        arr[pos] = old
        out[i] = (up - down) / (2 * eps)
    return out.reshape(arr.shape)
