"""The `tinygraph` command line."""

import argparse
import sys

import numpy as np


def _demo(args):
    import tinygraph as tg
    rng = np.random.default_rng(0)
    g = tg.Graph("mlp")
    x = g.input("x", shape=(None, 3))
    y = g.input("y", shape=(None, 4))
    W = g.param("W", rng.standard_normal((3, 4)))
    b = g.param("b", np.zeros(4))
    h = tg.tanh(x @ W + b, name="h")
    loss = tg.squared_error(h, y, name="loss")
    feeds = {"x": rng.standard_normal((5, 3)), "y": rng.standard_normal((5, 4))}
    grads = g.forward(feeds).backward(loss)
    print("loss", float(g.forward(feeds)[loss]))
    for node in (W, b, h):
        print(f"dE/d{node.name} =\n{np.array2string(grads[node], precision=4)}")
    print("finite-difference check:", tg.check_gradients(g, loss, feeds))
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="tinygraph", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="the main job")
    demo.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
