"""Training curves of the binary-addition net: loss per epoch and accuracy on unseen pairs.

Writes OUT/training_curves.png.  Run:  python visualizations/training_curves.py [--out DIR]
"""

import argparse
from pathlib import Path

import rnn
from rnn import figures


def main(argv=None):
    p = argparse.ArgumentParser(description="Train the binary-addition net for a few epochs and plot its loss "
                                            "and its accuracy on pairs it never saw.")
    p.add_argument("--out", default="./visualizations/out", help="output folder (default: %(default)s)")
    p.add_argument("--bits", type=int, default=8, help="bits per number to add (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=20, help="epochs to train (default: %(default)s)")
    p.add_argument("--train", type=int, default=1000, help="training pairs (default: %(default)s)")
    p.add_argument("--test", type=int, default=1000, help="unseen pairs to measure accuracy on (default: %(default)s)")
    p.add_argument("--lr", type=float, default=0.05, help="Adam learning rate (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the net's initial weights (default: %(default)s)")
    args = p.parse_args(argv)

    task = rnn.tasks.BinaryAddition(bits=args.bits, n_train=min(args.train, 2 ** (2 * args.bits) // 2))
    net = task.net(seed=args.seed)
    unseen = task.test_pairs[:args.test]
    history = rnn.train(net, task.train, task.steps, epochs=args.epochs, lr=args.lr, seed=args.seed,
                        callback=lambda epoch, n: {"accuracy": task.accuracy(n, unseen)})
    note = (f"Adding {args.bits}-bit numbers, {len(task.train_pairs)} training pairs.  Accuracy: the "
            f"share of {len(unseen)} unseen pairs whose whole sum comes out right.")
    path = figures.training_curves(history, Path(args.out) / "training_curves.png", metric="accuracy", note=note)
    print(f"wrote {path}")
    return [path]


if __name__ == "__main__":
    main()
