"""Heatmap of dE/dstate (units x time steps) for the binary-addition net.

Writes OUT/delta_heatmap.png.  Run:  python visualizations/heatmap.py [--out DIR]
"""

import argparse
from pathlib import Path

import rnn
from rnn import figures


def main(argv=None):
    p = argparse.ArgumentParser(description="Draw dE/dstate of every unit at every time step (a heatmap) "
                                            "for the binary-addition net.")
    p.add_argument("--out", default="./visualizations/out", help="output folder (default: %(default)s)")
    p.add_argument("--bits", type=int, default=8, help="bits per number to add (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=0,
                   help="train this many epochs first (default: %(default)s, an untrained net)")
    p.add_argument("--example", type=int, default=0, help="which training pair to show (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the net's initial weights (default: %(default)s)")
    args = p.parse_args(argv)

    task = rnn.tasks.BinaryAddition(bits=args.bits, n_train=min(1000, 2 ** (2 * args.bits) // 2))
    net = task.net(seed=args.seed)
    if args.epochs:
        rnn.train(net, task.train, task.steps, epochs=args.epochs, lr=0.05, progress=False)
    pair = task.train_pairs[args.example]
    a, b = (int(x) for x in task.operands(pair))
    data = task.data(task.train_pairs[args.example:args.example + 1])
    inspection = rnn.inspect(net, task.steps, data.inputs, data.targets)
    trained = f"net trained for {args.epochs} epochs" if args.epochs else "untrained net"
    note = (f"Binary addition {a} + {b} = {a + b}, bits fed lowest first; each sum bit is due "
            f"{task.delay} steps after its column ({trained}).")
    path = figures.delta_heatmap(inspection, Path(args.out) / "delta_heatmap.png", example=0,
                                 targets=data.targets, note=note)
    print(f"wrote {path}")
    return [path]


if __name__ == "__main__":
    main()
