"""The main job: train a recurrent net, prove it is the unrolled feed-forward net, and
draw it.  ``tinygraph demo`` calls ``run_demo``; everything it writes goes to one folder
with an ``index.html`` that explains each picture."""

import html
import json
import os
import sys
import time

from . import figures
from .check import check_equivalence
from .inspect import Inspection
from .render import render, render_side_by_side
from .tasks import Attractor, BinaryAddition
from .train import train
from tinygraph.render import write


def _say(msg, stream):
    stream.write(msg + "\n")
    stream.flush()


def _train_adder(task, stream, progress, max_seeds=3):
    """Train the lecture's adder; if a seed gets stuck, start again from the next one."""
    for seed in range(max_seeds):
        net = task.net(seed=seed)
        train_pairs = task.train_pairs

        def callback(epoch, n):
            return {"train acc": task.accuracy(n, train_pairs)}

        hist = train(net, task.train, task.steps, optimizer="adam", lr=0.05, epochs=80, batch_size=50,
                     progress=progress, callback=callback, stop=lambda m: m["train acc"] == 1.0, seed=seed)
        if hist.metrics and hist.metrics[-1]["train acc"] == 1.0:
            return net, hist, seed
        _say(f"  seed {seed} stalled at training accuracy {hist.metrics[-1]['train acc']:.3f}; "
             f"starting again from seed {seed + 1}", stream)
    return net, hist, seed


def _pictures(net, out, steps_shown, report_small):
    """The graphviz pictures: folded, unrolled (with values and gradients), side by side, units, check;
    the values and gradients are those of the small example's checked run."""
    paths = {}
    paths["folded"] = write(render(net, title=f"the recurrent net '{net.name}'"), os.path.join(out, "folded.svg"))
    run = report_small.run
    paths["unrolled"] = write(render(run, acts=run.acts, grads=run.grads,
                                     title=f"'{net.name}' unrolled for {steps_shown} steps"),
                              os.path.join(out, "unrolled.svg"))
    paths["side_by_side"] = write(render_side_by_side(net, steps=steps_shown), os.path.join(out, "side_by_side.svg"))
    paths["units"] = write(render(net, units=True, title="every unit and every weight"), os.path.join(out, "units.svg"))
    paths["check"] = write(render(report_small.run, check=report_small,
                                  title="gradient check drawn on the graph"), os.path.join(out, "check.svg"))
    return paths


EXPLAIN = {
    "side_by_side": "The same net twice. Left: the recurrent net, with its cycle. Right: the same net unrolled "
                    "in time, one layer per step from t = 0 (the initial states) at the bottom upward. Every "
                    "copy of a weight is drawn in that weight's colour: the copies are tied, so the unrolled "
                    "net is a feed-forward net whose layers all use the same weights.",
    "folded": "The recurrent net: groups of units and connections, each labelled with its weight and delay.",
    "unrolled": "The unrolled net after one forward and backward pass on one example: each state shows its "
                "value and dE/dstate; each weight copy shows its own per-step gradient, and the legend the "
                "tied gradient (the sum of the copies' gradients) that every copy is changed by.",
    "units": "The classic picture: one node per unit and one edge per weight.",
    "check": "The equivalence check drawn on the graph: each weight copy is coloured by how well its "
             "reverse-mode gradient matched the time-domain BPTT loop (green: within tolerance).",
    "heatmap": "dE/dstate for every unit (rows) at every time step (columns) of one example: where the error "
               "derivatives live, and how they spread backwards from the steps that have targets.",
    "norms": "How much the final state still depends on the state at step t (||d state_T / d state_t||), for "
             "the same layout with small and large recurrent weights (tanh hidden units, untrained): small "
             "weights make the gradient vanish going back in time, large ones make it explode.",
    "peeling": "The backward pass peeling the stack: the forward pass pushed each step's activities; the "
               "backward pass pops them from the last step down, turning each into error derivatives and "
               "adding that step's contribution to every weight's gradient.",
    "curves": "Training: the loss per sweep through the training set, and the accuracy.",
}


def _index_html(out, title, summary_lines, items):
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "figure{margin:2em 0;border-top:1px solid #ddd;padding-top:1em}figcaption{margin:.5em 0 1em;"
             "line-height:1.4}img{max-width:100%;border:1px solid #eee}pre{background:#f6f6f6;padding:1em;white-space:pre-wrap;"
             "overflow-x:auto}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             "<p><b>A recurrent net is a feed-forward net with one layer per time step whose weights are "
             "tied.</b> Backpropagation through time is backprop on that layered net: the derivatives of "
             "all the copies of a weight are added, and every copy is changed by the same amount.</p>",
             "<pre>" + html.escape("\n".join(summary_lines)) + "</pre>"]
    for key, rel, caption in items:
        parts.append(f"<figure><h2>{html.escape(caption[0])}</h2><figcaption>{html.escape(caption[1])}"
                     f"</figcaption><img src='{html.escape(rel)}' alt='{html.escape(caption[0])}'></figure>")
    parts.append("</body></html>")
    path = os.path.join(out, "index.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(parts))
    return path


def run_demo(task="adder", out="tinygraph-demo", progress=True, stream=None):
    """Train, check, draw and report.  Returns (exit code, {name: path})."""
    stream = stream or sys.stdout
    if task not in ("adder", "attractor"):
        raise ValueError(f"task must be 'adder' or 'attractor', got {task!r}")
    os.makedirs(out, exist_ok=True)
    start = time.perf_counter()
    summary = []

    def say(line=""):
        _say(line, stream)
        summary.append(line)

    if task == "adder":
        t = BinaryAddition(bits=8, n_train=1000, seed=0)
        say(f"task: add two 8-bit numbers fed lowest bit first; the lecture's net (2 input, 3 logistic hidden, "
            f"1 output unit, every connection one step), unrolled for T = {t.steps} steps")
        say(f"training on {len(t.train_pairs)} of the {2 ** 16} pairs; testing on the other {len(t.test_pairs)}")
        net, hist, seed = _train_adder(t, stream, progress)
        acc = t.accuracy(net)
        say(f"trained in {hist.epochs} sweeps ({hist.updates} updates, {hist.seconds:.1f} s, seed {seed}); "
            f"accuracy on the {len(t.test_pairs)} unseen pairs: {100 * acc:.2f}%")
        example_pairs = t.test_pairs[:4]
        data = t.data(example_pairs)
        small = BinaryAddition(bits=2, delay=t.delay, n_train=4, seed=0)
        sd = small.data(small.train_pairs[:1])
        example_small = (sd.inputs, sd.targets)
        steps_small = small.steps
        metric = "train acc"
        factory = lambda scale: t.net(seed=0, hidden=8, activation="tanh", recurrent_scale=scale)  # noqa: E731
    else:
        t = Attractor(units=8, patterns=3, steps=8, k=3, flips=1, n_train=256, seed=0)
        say(f"task: settle into one of {len(t.patterns)} stored patterns of {t.units} units from a corrupted "
            f"start ({t.flips} unit flipped), targets on the last {t.k} of {t.steps} steps")
        net = t.net(seed=0)
        hist = t.fit(net, progress=progress, callback=lambda e, n: {"recall": t.evaluate(n)[0]})
        recall, change = t.evaluate(net)
        acc = recall
        say(f"trained in {hist.epochs} sweeps ({hist.seconds:.1f} s); unseen corrupted starts recalled: "
            f"{100 * recall:.1f}%; largest state change over the last {t.k} steps: {change:.2g}")
        data = t.data(4, seed=99)
        sd = t.data(1, seed=7)
        example_small = (sd.inputs, sd.targets)
        steps_small = t.steps
        metric = "recall"
        factory = lambda scale: _scaled_attractor(t, scale)  # noqa: E731

    say("")
    report = check_equivalence(net, t.steps, data.inputs, data.targets)
    say(f"equivalence check (unrolled graph vs time-domain BPTT vs finite differences, T = {t.steps}): "
        f"{'PASS' if report.passed else 'FAIL'}")
    worst_bptt = max(v for k, v in report.errors.items() if not k.startswith("grad fd"))
    worst_fd = max((v for k, v in report.errors.items() if k.startswith("grad fd")), default=0.0)
    say(f"  largest relative difference, graph vs BPTT: {worst_bptt:.1e}; graph vs finite differences: "
        f"{worst_fd:.1e}")
    for k, (ok, detail) in report.structure.items():
        say(f"  structure, {k}: {'ok' if ok else 'FAIL'} ({detail})")
    if not report.passed:
        say(str(report))

    paths = {}
    report_small = check_equivalence(net, steps_small, *example_small)
    paths.update(_pictures(net, out, steps_small, report_small))
    ins = Inspection(net, t.steps, report.run)  # the checked run is the one to inspect
    with open(os.path.join(out, "derivatives.txt"), "w") as f:
        f.write(ins.table(max_rows=10_000))
    ins.to_csv(os.path.join(out, "derivatives.csv"))
    try:
        paths["heatmap"] = figures.delta_heatmap(ins, os.path.join(out, "heatmap.png"), example=0,
                                                 targets=data.targets)
        curves = figures.norms_for_scales(factory, t.steps, data.inputs, data.targets, [0.5, 1.0, 2.0, 4.0],
                                          group="h")
        paths["norms"] = figures.gradient_norms_over_time(curves, os.path.join(out, "gradient_norms.png"))
        frames = figures.peeling_frames(net, steps_small, *example_small, os.path.join(out, "peeling"))
        gif = figures.frames_to_gif(frames, os.path.join(out, "peeling.gif"))
        paths["peeling"] = gif or frames[0]
        paths["curves"] = figures.training_curves(hist, os.path.join(out, "training.png"), metric=metric)
    except ImportError as exc:  # matplotlib missing: the graphviz pictures still tell the story
        say(f"(plots skipped: {exc})")
    net.save(os.path.join(out, f"{task}.npz"))
    with open(os.path.join(out, f"{task}.json"), "w") as f:
        json.dump(net.spec(), f, indent=2)

    order = ["side_by_side", "unrolled", "folded", "units", "check", "heatmap", "norms", "peeling", "curves"]
    titles = {"side_by_side": "The recurrent net and its unrolled twin", "folded": "The recurrent net",
              "unrolled": "The unrolled net, with values and gradients", "units": "Unit by unit",
              "check": "The check, on the picture", "heatmap": "Error derivatives per unit and step",
              "norms": "Vanishing and exploding gradients", "peeling": "The backward pass peels the stack",
              "curves": "Training curves"}
    items = [(k, os.path.relpath(paths[k], out), (titles[k], EXPLAIN[k])) for k in order if k in paths]
    index = _index_html(out, f"tinygraph demo: {task}", summary, items)
    _say(f"\nwrote {len(paths)} pictures, derivatives.txt/.csv, {task}.npz and {task}.json to {out}/", stream)
    _say(f"open {index} in a browser ({time.perf_counter() - start:.0f} s in all)", stream)
    ok = report.passed and acc >= (1.0 if task == "adder" else 0.9)
    return (0 if ok else 1), paths


def _scaled_attractor(task, scale):
    net = task.net(seed=0)
    net.weights["h->h"] *= scale
    return net
