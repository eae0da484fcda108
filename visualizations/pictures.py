"""Write the README's pictures of the lecture's binary adder (x(2) -> h(3) -> y(1), every delay 1).

    python visualizations/pictures.py [--out DIR] [--format svg|png|pdf]

adder_folded      the recurrent net, with its cycle
adder_unrolled    unrolled for 4 steps, with the values and gradients of one example (1 + 1)
adder_side_by_side  both, one colour per tied weight
adder_units       both again, one node per unit and one edge per weight entry
"""

import argparse
import os
import sys

import numpy as np

import rnn
from tinygraph.render import write

STEPS = 4


def example(steps=STEPS):
    """1 + 1, lowest bit first: the inputs at t = 1, the sum's bits (0, 1) due at t = 3 and 4."""
    x = np.zeros((steps, 1, 2))
    x[0, 0] = 1.0
    y = np.array([0.0, 1.0]).reshape(2, 1, 1)
    return [rnn.Clamp("x", x)], [rnn.Target("y", y, steps=[3, 4])]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)), help="output folder")
    p.add_argument("--format", default="svg", choices=["svg", "png", "pdf", "dot"])
    args = p.parse_args(argv)

    net = rnn.tasks.BinaryAddition(bits=1).net()
    run = net.unroll(STEPS).run(*example())
    pictures = {
        "adder_folded": rnn.render(net),
        "adder_unrolled": rnn.render(run, acts=run.acts, grads=run.grads),
        "adder_side_by_side": rnn.render_side_by_side(run),
        "adder_units": rnn.render_side_by_side(run, units=True),
    }
    for name, dg in pictures.items():
        print(write(dg, os.path.join(args.out, f"{name}.{args.format}")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
