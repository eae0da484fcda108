"""The backward pass peeling the stack of activities, one frame per step, for one
binary-addition example; plus an animated GIF of the frames.

Writes OUT/peeling/peel_*.png (T+1 frames) and OUT/peeling.gif.
Run:  python visualizations/peeling.py [--out DIR]
"""

import argparse
from pathlib import Path

import rnn
from rnn import figures


def main(argv=None):
    p = argparse.ArgumentParser(description="Draw the backward pass of backpropagation through time peeling the "
                                            "stack, one PNG frame per step, and join the frames into a GIF.")
    p.add_argument("--out", default="./visualizations/out", help="output folder (default: %(default)s)")
    p.add_argument("--bits", type=int, default=8, help="bits per number to add (default: %(default)s)")
    p.add_argument("--example", type=int, default=0, help="which training pair to show (default: %(default)s)")
    p.add_argument("--duration", type=int, default=900, help="milliseconds per GIF frame (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the net's initial weights (default: %(default)s)")
    args = p.parse_args(argv)

    task = rnn.tasks.BinaryAddition(bits=args.bits, n_train=min(1000, 2 ** (2 * args.bits) // 2))
    net = task.net(seed=args.seed)
    pair = task.train_pairs[args.example]
    a, b = (int(x) for x in task.operands(pair))
    data = task.data(task.train_pairs[args.example:args.example + 1])
    note = f"Binary addition {a} + {b} = {a + b} (untrained net)."
    out = Path(args.out)
    frames = figures.peeling_frames(net, task.steps, data.inputs, data.targets, out / "peeling", example=0,
                                    note=note)
    gif = figures.frames_to_gif(frames, out / "peeling.gif", duration_ms=args.duration)
    print(f"wrote {len(frames)} frames to {out / 'peeling'}" + (f" and {gif}" if gif else " (no GIF: Pillow missing)"))
    return frames + ([gif] if gif else [])


if __name__ == "__main__":
    main()
