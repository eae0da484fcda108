"""Vanishing and exploding gradients: ||d state_T / d state_t|| per step for a few
recurrent weight scales, on the binary-addition net's layout and data.

Writes OUT/gradient_norms.png.  Run:  python visualizations/gradient_norms.py [--out DIR]
"""

import argparse
from pathlib import Path

import rnn
from rnn import figures


def main(argv=None):
    p = argparse.ArgumentParser(description="Plot how much the last hidden state depends on the hidden state "
                                            "at each earlier step, for several recurrent weight scales.")
    p.add_argument("--out", default="./visualizations/out", help="output folder (default: %(default)s)")
    p.add_argument("--bits", type=int, default=8, help="bits per number to add (default: %(default)s)")
    p.add_argument("--hidden", type=int, default=8, help="hidden units (default: %(default)s)")
    p.add_argument("--activation", default="tanh", choices=["tanh", "logistic"],
                   help="hidden units' activation (default: %(default)s; logistic units have slope <= 1/4, so "
                        "they saturate before their gradients can explode)")
    p.add_argument("--scales", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0],
                   help="scales of the random hidden-to-hidden weights (default: %(default)s)")
    p.add_argument("--examples", type=int, default=32, help="examples averaged over (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: %(default)s)")
    args = p.parse_args(argv)

    task = rnn.tasks.BinaryAddition(bits=args.bits, n_train=min(1000, 2 ** (2 * args.bits) // 2))
    data = task.data(task.train_pairs[:args.examples])

    def net_at(scale):
        # the binary-addition layout; only the recurrent weights' scale changes
        return task.net(seed=args.seed, hidden=args.hidden, activation=args.activation, recurrent_scale=scale)

    curves = figures.norms_for_scales(net_at, task.steps, data.inputs, data.targets, args.scales, group="h")
    note = (f"Binary-addition net with {args.hidden} {args.activation} hidden units, untrained; hidden-to-hidden "
            f"weights drawn with std = scale / sqrt({args.hidden}); mean over {len(data)} examples.  At t = T every "
            f"curve starts at sqrt({args.hidden}) = {args.hidden ** 0.5:.2f}, the norm of d state_T / d state_T "
            f"(the identity).")
    path = figures.gradient_norms_over_time(curves, Path(args.out) / "gradient_norms.png", note=note)
    for label, norms in curves.items():
        print(f"{label:>10}: ||dS_T/dS_0|| = {norms[0]:.3g}")
    print(f"wrote {path}")
    return [path]


if __name__ == "__main__":
    main()
