"""The `tinygraph` command line: demo (the main job), render, check, inspect.

NET arguments are a saved net (.npz, from ``net.save``) or a JSON spec (.json, the
format ``net.spec()`` returns; see rnn/examples/adder.json).  ``check`` and
``inspect`` feed seeded random data: every input group clamped at every step,
every output group (or, if none, every non-input group) given a target at every step.
"""

import argparse
import sys

import numpy as np

from tinygraph.errors import GraphError


def _load(path):
    from .persist import load_any
    return load_any(path)


def _random_data(net, steps, batch, seed):
    from .data import Clamp, Target
    rng = np.random.default_rng(seed)
    inputs = [Clamp(g.name, rng.integers(0, 2, size=(steps, batch, g.size)).astype(float))
              for g in net.groups.values() if g.role == "input"]
    outs = [g for g in net.groups.values() if g.role == "output"] or \
           [g for g in net.groups.values() if g.role != "input"]
    targets = []
    for g in outs:
        if g.activation == "softmax":
            targets.append(Target(g.name, rng.integers(0, g.size, size=(steps, batch)), loss="cross_entropy"))
        else:
            targets.append(Target(g.name, rng.uniform(0.1, 0.9, size=(steps, batch, g.size))))
    return inputs, targets


def _cmd_demo(args):
    from .demo import run_demo
    code, _ = run_demo(task=args.task, out=args.out, progress=not args.quiet)
    return code


def _cmd_render(args):
    from tinygraph.render import write
    from .render import render, render_side_by_side
    net = _load(args.net)
    if args.view == "folded":
        dg = render(net, units=args.units)
    elif args.view == "unrolled":
        ff = net.unroll(args.steps)
        if args.values:
            run = ff.run(*_random_data(net, args.steps, 1, args.seed))
            dg = render(run, acts=run.acts, grads=run.grads, units=args.units)
        else:
            dg = render(ff, units=args.units)
    else:
        dg = render_side_by_side(net, steps=args.steps, units=args.units)
    print(write(dg, args.output))
    return 0


def _cmd_check(args):
    from .check import check_equivalence
    net = _load(args.net)
    inputs, targets = _random_data(net, args.steps, args.batch, args.seed)
    report = check_equivalence(net, args.steps, inputs, targets, seed=args.seed)
    print(report)
    return 0 if report.passed else 1


def _cmd_inspect(args):
    from .inspect import inspect
    net = _load(args.net)
    inputs, targets = _random_data(net, args.steps, args.batch, args.seed)
    ins = inspect(net, args.steps, inputs, targets)
    print(ins.table(max_rows=args.max_rows))
    if args.csv:
        print(f"wrote {ins.to_csv(args.csv)}", file=sys.stderr)
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="tinygraph",
        description="A recurrent net is a feed-forward net with one layer per time step whose weights are tied: "
                    "train one, check the equivalence, draw it.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="the main job: train, check, draw, report",
                       description="Train the lecture's binary-addition net (or an attractor net), check that the "
                                   "unrolled graph, the time-domain BPTT loop and finite differences agree, draw the "
                                   "recurrent and unrolled nets and the derivative plots, and write an index.html "
                                   "that explains them. Exit 1 when the check fails or the net does not learn.")
    p.add_argument("--task", choices=["adder", "attractor"], default="adder", help="which net to train (default adder)")
    p.add_argument("--out", default="tinygraph-demo", help="output folder (default ./tinygraph-demo)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_demo)

    def net_args(p):
        p.add_argument("net", metavar="NET", help="a saved net (.npz) or a JSON spec (.json)")
        p.add_argument("--steps", type=int, required=True, metavar="T", help="number of time steps to unroll")
        p.add_argument("--seed", type=int, default=0, help="seed of the random data (default 0)")

    p = sub.add_parser("render", help="draw a net (folded, unrolled or side by side) to SVG/PNG/PDF/DOT",
                       description="Draw NET. The output format follows the file extension "
                                   "(.svg .png .pdf need Graphviz's dot; .dot/.gv write the source).")
    net_args(p)
    p.add_argument("--units", action="store_true", help="one node per unit and one edge per weight")
    p.add_argument("--view", choices=["side-by-side", "folded", "unrolled"], default="side-by-side")
    p.add_argument("--values", action="store_true", help="(unrolled) run random data and show values and gradients")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="e.g. net.svg")
    p.set_defaults(func=_cmd_render)

    p = sub.add_parser("check", help="equivalence and gradient check; exit 1 on failure",
                       description="Compare the unrolled graph's gradients with the time-domain BPTT loop and "
                                   "with finite differences on seeded random data, and check the unrolled "
                                   "graph's structure. Prints the figures; exit status 1 when any fails.")
    net_args(p)
    p.add_argument("--batch", type=int, default=2, help="examples in the random batch (default 2)")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("inspect", help="unit-level derivative table",
                       description="Print dE/dstate and dE/d(total input) of every unit at every step (batch "
                                   "means) and each weight's per-step gradient norms, on seeded random data.")
    net_args(p)
    p.add_argument("--batch", type=int, default=2, help="examples in the random batch (default 2)")
    p.add_argument("--csv", metavar="FILE", help="also write the whole table as CSV")
    p.add_argument("--max-rows", type=int, default=200, help="rows to print (default 200)")
    p.set_defaults(func=_cmd_inspect)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if getattr(args, "steps", 1) is not None and getattr(args, "steps", 1) < 1:
        print("tinygraph: error: --steps must be >= 1", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except (GraphError, OSError) as exc:
        print(f"tinygraph {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
