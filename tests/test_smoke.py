import numpy as np

import tinygraph as tg


def test_mlp_gradients_match_finite_differences():
    rng = np.random.default_rng(1)
    g = tg.Graph("mlp")
    x = g.input("x", shape=(None, 3))
    y = g.input("y", shape=(None, 4))
    W = g.param("W", rng.standard_normal((3, 4)))
    b = g.param("b", np.zeros(4))
    loss = tg.sum((tg.tanh(x @ W + b) - y) ** 2) / 2
    feeds = {"x": rng.standard_normal((5, 3)), "y": rng.standard_normal((5, 4))}
    assert tg.check_gradients(g, loss, feeds, inputs=True) < 1e-6
