"""The printed table, the JSON file and benchmarks/RESULTS.md."""

import json
import os

from . import BUILD_GOAL_S, GOALS, MEMORY_GOAL, REFERENCE

IMPL_ORDER = ("numpy floor", "tinygraph", "torch loop", "torch nn.RNN")


def _impls(res):
    names = list(res["impls"])
    return sorted(names, key=lambda n: IMPL_ORDER.index(n) if n in IMPL_ORDER else len(IMPL_ORDER))


def goal_status(res):
    """For tinygraph in one (config, dtype) result: (ratio goal, ratio met, faster than every torch)."""
    cfg = res["config"]["name"]
    tg = res["impls"].get("tinygraph")
    if tg is None:
        return None, None, None
    goal = GOALS.get(cfg)
    met = None if goal is None else tg["ratio"] <= goal
    torch = [v["median_ms"] for k, v in res["impls"].items() if k.startswith("torch")]
    faster = None if not torch else all(tg["median_ms"] < t for t in torch)
    return goal, met, faster


def text_table(results):
    head = f"{'config':<8} {'dtype':<8} {'impl':<14} {'median ms':>11} {'q1..q3 ms':>19} {'ratio':>7}  goal"
    lines = [head, "-" * len(head)]
    for res in results:
        goal, met, faster = goal_status(res)
        for name in _impls(res):
            s = res["impls"][name]
            note = ""
            if name == "tinygraph" and goal is not None:
                note = f"<= {goal:g}x: {'met' if met else 'NOT met'}"
                if faster is not None:
                    note += f"; faster than torch: {'yes' if faster else 'no'}"
            ag = res.get("agreement", {}).get(name)
            if ag is not None and not ag["ok"]:
                note += f"  GRADIENTS DIFFER (rel {ag['max_rel']:.2g})"
            q = f"{s['q1_ms']:.3f}..{s['q3_ms']:.3f}"
            lines.append(f"{res['config']['name']:<8} {res['dtype']:<8} {name:<14} {s['median_ms']:>11.3f} "
                         f"{q:>19} {s['ratio']:>6.2f}x  {note}")
        lines.append("")
    return "\n".join(lines)


def write_json(path, payload):
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1, default=_jsonable)
    os.replace(tmp, path)


def _jsonable(o):
    try:
        import numpy as np
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:
        pass
    return str(o)


def _fmt_ms(s):
    return f"{s['median_ms']:.3f}" if s["median_ms"] < 10 else f"{s['median_ms']:.1f}"


def results_md(payload):
    m = payload["machine"]
    blas = m.get("blas", {})
    L = []
    L.append("# Benchmark results")
    L.append("")
    L.append("One training step (forward, backpropagation through time, SGD update) of a tanh RNN with a "
             "learned initial state and squared error on every step (issue 7). The floor is the hand-written "
             "numpy BPTT in `benchmarks/floor.py` (input and output projections as one matmul each, only the "
             "recurrence in Python loops, preallocated buffers, same dtype as the data). Ratios are medians "
             "against the floor's median, measured in one process with the implementations interleaved "
             "(A B C D A B C D ...).")
    L.append("")
    L.append("Run from the repository root: `python -m benchmarks` (all configs, float32 and float64; `--help` for "
             "options; `--all` adds memory, build scaling and a profile; `--quick --no-torch` is a smoke run). "
             "PyTorch rows appear when `import torch` works (it is not a dependency). Step by step: "
             "`benchmarks/floor.py` (the floor), `benchmarks/impls.py` (tinygraph, PyTorch), "
             "`benchmarks/measure.py` (timing, agreement, memory, build scaling).")
    L.append("")
    L.append(f"- command: `{payload['command']}`")
    L.append(f"- date: {m['date']}")
    L.append(f"- machine: {m['cpu']}, {m['cores']} cores ({m.get('cores_usable')} usable), "
             f"Python {m['python']}, {m['platform']}")
    bl = blas.get("name", "?") + (" " + blas["version"] if blas.get("version") else "")
    L.append(f"- numpy {m['numpy']}, BLAS: {bl}, {blas.get('threads')} threads"
             + (f" ({blas['openblas configuration']})" if blas.get("openblas configuration") else ""))
    if m.get("torch"):
        t = m["torch"]
        L.append(f"- torch {t['version']} ({t['blas']}), torch.set_num_threads({t['threads']})")
    else:
        L.append("- torch: not installed (PyTorch rows omitted)")
    la, lb = m.get("loadavg_start"), payload.get("loadavg_end")
    if la:
        L.append(f"- load average at start {la[0]:.2f}, at end {lb[0]:.2f}" if lb else
                 f"- load average at start {la[0]:.2f}")
    o = payload["options"]
    if o.get("wait_idle"):
        L.append(f"- shared machine: before each timed round the harness waited (up to {o['wait_idle']:g} s) for other "
                 f"processes to use < {o['idle_threshold']:g} cores, and redid rounds during which they used more "
                 "(see 'others' load' and 'redone' in the table)")
    L.append(f"- {o['repeats']} timed steps per implementation after {o['warmup']} warm-up round(s); before each "
             f"timed step, outside the timer: gc.collect(), a {o['pause']} s pause (the previous runtime's "
             f"BLAS/OpenMP threads stop spinning) and {o.get('prime', 0)} untimed step(s) of the same "
             "implementation (caches warm, as in a training loop)")
    L.append("")
    L.append("## Step time (median ms) and ratio to the floor")
    L.append("")
    L.append("| config (H, B, T, I) | dtype | floor ms | tinygraph ms | tinygraph ratio | paired | goal | met | "
             "torch loop | torch nn.RNN | faster than torch | others' load | redone |")
    L.append("|---|---|---:|---:|---:|---:|---:|---|---:|---:|---|---:|---:|")
    for res in payload["results"]:
        c = res["config"]
        imp = res["impls"]
        goal, met, faster = goal_status(res)
        fl = imp["numpy floor"]
        tg = imp.get("tinygraph")
        cell = lambda n: (f"{_fmt_ms(imp[n])} ({imp[n]['ratio']:.2f}x)" if n in imp else "–")  # noqa: E731
        L.append(f"| {c['name']} ({c['H']}, {c['B']}, {c['T']}, {c['I']}) | {res['dtype']} | {_fmt_ms(fl)} | "
                 f"{_fmt_ms(tg) if tg else '–'} | **{tg['ratio']:.2f}x** | "
                 f"{format(tg['ratio_paired'], '.2f') + 'x' if 'ratio_paired' in tg else '–'} | <= {goal:g}x | "
                 f"{'yes' if met else '**no**'} | {cell('torch loop')} | {cell('torch nn.RNN')} | "
                 f"{'–' if faster is None else ('yes' if faster else '**no**')} | "
                 f"{'?' if res.get('other_load') is None else format(res['other_load'], '.2f')} | "
                 f"{res.get('rounds_discarded', 0)} |")
    L.append("")
    L.append("tinygraph ratio: its median over the floor's median (what the goals are judged on). paired: the "
             "median over rounds of tinygraph's time over the floor's in the same round, which the machine's speed "
             "drifting between rounds sways less. torch columns: median ms (ratio to the floor). others' load: cores kept busy by other processes "
             "during that row's timed rounds (median over rounds, from /proc/stat with our own CPU time "
             "subtracted); on this 2-core machine anything well above 0 slows the 2-thread BLAS and OpenMP runs "
             "(PyTorch's most: its OpenMP threads wait for a core) and makes that row noisy. redone: rounds "
             "measured under load and thrown away.")
    L.append("")
    L.append("Noise: this is a 2-core VM whose speed drifts with its host; absolute times moved by up to ~30% between "
             "runs minutes apart with the machine otherwise idle, so compare ratios from one run, not times across "
             "runs. Every timed step is in the JSON (`times_ms`), with quartiles.")
    L.append("")
    L.append("The issue's reference ratios (float32, 2 cores, against its floor): "
             + "; ".join(f"{k} " + " / ".join(f"{v[c]:g}x" for c in ("tiny", "medium", "large", "long"))
                         for k, v in REFERENCE.items()) + " (tiny / medium / large / long).")
    L.append("")
    L.append("## Gradient agreement (before timing, same weights)")
    L.append("")
    L.append("Max over parameters of ||g - g_floor|| / ||g_floor||; tolerance 1e-9 in float64, 1e-4 in float32. "
             "After the timed steps, the losses of every implementation along the same SGD trajectory are also "
             "compared with the floor's.")
    L.append("")
    L.append("| config | dtype | " + " | ".join(n for n in IMPL_ORDER[1:]) + " | losses along the run |")
    L.append("|---|---|" + "---|" * (len(IMPL_ORDER) - 1) + "---|")
    for res in payload["results"]:
        ag = res["agreement"]
        cells = [(f"{ag[n]['max_rel']:.1e}" + ("" if ag[n]["ok"] else " **FAIL**")) if n in ag else "–"
                 for n in IMPL_ORDER[1:]]
        la = res.get("loss_agreement", {})
        lw = max((v["max_rel"] for v in la.values()), default=0.0)
        lok = all(v["ok"] for v in la.values())
        L.append(f"| {res['config']['name']} | {res['dtype']} | " + " | ".join(cells)
                 + f" | max rel {lw:.1e}{'' if lok else ' **FAIL**'} |")
    L.append("")
    L.append("## dtype")
    L.append("")
    for res in payload["results"]:
        if res["dtype"] != "float32":
            continue
        d = res["tinygraph_dtypes"]
        wg = sorted(set(d["weight_grads"].values()))
        L.append(f"- {res['config']['name']}: float32 data and weights -> tinygraph states h {d['states h']}, "
                 f"y {d['states y']}, weight_grads {', '.join(wg)}; node values by dtype "
                 f"{d['node values by dtype']}" + (" (**upcast**)" if d["upcast"] else " (no upcast)"))
        break
    for f in payload.get("findings", []):
        L.append(f"- {f}")
    L.append("")
    if payload.get("memory"):
        L.append("## Peak memory at 'long'")
        L.append("")
        L.append("tracemalloc (numpy's array buffers and Python objects), traced from before the implementation "
                 "is built (the data and starting weights are not counted): persistent = held between steps "
                 "(graph, plans, buffers), step = extra peak during one step, peak = the two together. "
                 "\"numpy\" counts the numpy-array part of what is held plus the step's extra peak. "
                 f"Goal: tinygraph <= {MEMORY_GOAL:g}x the floor.")
        L.append("")
        L.append("| dtype | impl | persistent MB | of it numpy MB | step MB | peak MB | numpy peak MB | ratio (peak) | ratio (numpy) |")
        L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for mem in payload["memory"]:
            for name in ("floor", "tinygraph"):
                x = mem[name]
                r1 = "" if name == "floor" else f"**{mem['ratio_peak']:.2f}x**"
                r2 = "" if name == "floor" else f"**{mem['ratio_numpy_est']:.2f}x**"
                L.append(f"| {mem['dtype']} | {name} | {x['persistent'] / 1e6:.2f} | {x['numpy_persistent'] / 1e6:.2f} | "
                         f"{x['step_extra'] / 1e6:.2f} | {x['peak'] / 1e6:.2f} | {x['numpy_peak_est'] / 1e6:.2f} | {r1} | {r2} |")
        L.append("")
    if payload.get("build"):
        L.append("## Building and compiling the unrolled graph as T grows")
        L.append("")
        b0 = payload["build"][0]
        L.append(f"A small net (H={b0['H']}, B={b0['B']}, I={b0['I']}, float64), each T in a fresh process. "
                 "unroll: build the net and `net.unroll(T)`; first run: the first `ff.run` with clamps and "
                 "targets (emits that graph, compiles the plan, forward and backward); run: a later forward "
                 f"and backward. Goal: 100,000 steps built, run forward and backward in under {BUILD_GOAL_S:g} s, "
                 "linear in T.")
        L.append("")
        L.append("| T | nodes | unroll s | first run s | run s | total s | per step (total) | max RSS MB | others' load |")
        L.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in payload["build"]:
            if "error" in r:
                L.append(f"| {r['T']:,} | | | | | {r['error'][:80]} | | | |")
                continue
            tot = r["build_and_first_run_s"]
            L.append(f"| {r['T']:,} | {r['nodes']:,} | {r['unroll_s']:.2f} | {r['first_run_s']:.2f} | "
                     f"{r['run_s']:.2f} | **{tot:.2f}** | {tot / r['T'] * 1e6:.0f} µs | {r['maxrss_mb']:.0f} | "
                     f"{'?' if r.get('other_load') is None else format(r['other_load'], '.2f')} |")
        L.append("")
        L.append("total = unroll + first run (built, compiled, run forward and backward once).")
        L.append("")
    L.append("## Goals (issue 7) against this run")
    L.append("")
    for line in goals_summary(payload):
        L.append(f"- {line}")
    L.append("")
    if payload.get("profile"):
        L.append("## Where a tinygraph step spends its time")
        L.append("")
        cfg = payload.get("profile_config")
        L.append(f"At '{cfg}', after warm-up, median of 5: forward only (`ff.run(..., backward=False)`), forward "
                 "and backward (`ff.run`), and the SGD step (`opt.step(out.grads)`), in ms:")
        L.append("")
        L.append("| dtype | forward | forward+backward | SGD step |")
        L.append("|---|---:|---:|---:|")
        for d, p in payload.get("phases", {}).items():
            L.append(f"| {d} | {p['forward']:.2f} | {p['forward+backward']:.2f} | {p['SGD step']:.2f} |")
        L.append("")
        L.append(f"cProfile of one step ({payload.get('profile_dtype')}), top functions by own time. cProfile does "
                 "not see numpy ufuncs (np.matmul, np.tanh, ...): their time is counted in the function that calls "
                 "them.")
        L.append("")
        L.append("```")
        L.append(payload["profile"].strip())
        L.append("```")
        L.append("")
    return "\n".join(L)


def goals_summary(payload):
    out = []
    for res in payload["results"]:
        goal, met, faster = goal_status(res)
        tg = res["impls"].get("tinygraph")
        if tg is None or goal is None:
            continue
        s = (f"{res['config']['name']} {res['dtype']}: {tg['ratio']:.2f}x (goal <= {goal:g}x) "
             f"{'met' if met else 'NOT met'}")
        if faster is not None:
            s += f"; faster than both torch implementations: {'yes' if faster else 'no'}"
        out.append(s)
    for mem in payload.get("memory") or []:
        out.append(f"memory at long, {mem['dtype']}: {mem['ratio_peak']:.2f}x the floor's peak "
                   f"(numpy part {mem['ratio_numpy_est']:.2f}x; goal <= {MEMORY_GOAL:g}x) "
                   f"{'met' if mem['ratio_peak'] <= MEMORY_GOAL else 'NOT met'}")
    for r in payload.get("build") or []:
        if r["T"] == 100_000:
            if "error" in r:
                out.append(f"build at T=100,000: {r['error'][:80]} (goal {BUILD_GOAL_S:g} s) NOT met")
            else:
                tot = r["build_and_first_run_s"]
                g = r.get("per_step_growth", {})
                lin = ", ".join(f"{k} {v:.2f}" for k, v in g.items() if v)
                out.append(f"build, compile, forward and backward at T=100,000: {tot:.1f} s (goal < {BUILD_GOAL_S:g} s) "
                           f"{'met' if tot < BUILD_GOAL_S else 'NOT met'}; per-step time at 100k / at 1k: {lin}")
    return out
