"""python -m benchmarks [options]: time one RNN training step against the numpy floor.

Examples (from the repository root)::

    python -m benchmarks                                  # all configs, float32 and float64, table + JSON + RESULTS.md
    python -m benchmarks --all                            # also build scaling, memory and a profile
    python -m benchmarks --configs tiny,medium --dtype float32 --repeats 20
    python -m benchmarks --quick --no-torch               # seconds; writes no files unless --json/--results
"""

import argparse
import gc
import os
import shlex
import sys
import time

from . import CONFIGS, QUICK_CONFIGS
from .impls import torch_available
from .measure import (BUILD_NET, bench_config, build_scaling, machine_info, measure_memory,
                      mixed_dtype_matmul, profile_tinygraph, wait_idle)
from .report import results_md, text_table, write_json

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="tiny,medium,large,long",
                    help="comma-separated subset of tiny,medium,large,long (default: all)")
    ap.add_argument("--dtype", choices=("float32", "float64", "both"), default="both")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed steps per implementation after warm-up (default 10; 3 with --quick)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed rounds before the timed ones (default 1)")
    ap.add_argument("--prime", type=int, default=1,
                    help="untimed steps of an implementation right before each of its timed steps (default 1)")
    ap.add_argument("--pause", type=float, default=None,
                    help="seconds of idle before each timed step, so the other runtime's BLAS/OpenMP threads stop "
                         "spinning (default 0.1 when PyTorch runs, else 0)")
    ap.add_argument("--json", default=None, metavar="PATH",
                    help="where to write the JSON results (default benchmarks/results.json; not written with --quick "
                         "unless given)")
    ap.add_argument("--results", default=None, metavar="PATH",
                    help="where to write the markdown results (default benchmarks/RESULTS.md; not written with "
                         "--quick unless given)")
    ap.add_argument("--wait-idle", type=float, default=0, metavar="SECONDS",
                    help="on a shared machine: before each timed round wait up to this long for other processes to "
                         "leave the cores idle, and redo rounds during which they did not (default 0: off)")
    ap.add_argument("--idle-threshold", type=float, default=0.25, metavar="CORES",
                    help="with --wait-idle: other processes' CPU use (in cores) that counts as idle (default 0.25)")
    ap.add_argument("--idle-budget", type=float, default=180, metavar="SECONDS",
                    help="with --wait-idle: at most this much time per config and dtype spent waiting and redoing "
                         "(default 180)")
    ap.add_argument("--max-discard", type=int, default=None,
                    help="with --wait-idle: at most this many rounds redone per config and dtype (default 3 x repeats)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes of every config (a smoke run)")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch implementations")
    ap.add_argument("--torch-skip", default="", metavar="CONFIGS",
                    help="configs at which the PyTorch implementations are skipped (e.g. large)")
    ap.add_argument("--build-scaling", action="store_true",
                    help="time building+unrolling and forward+backward at 1k, 10k, 100k steps of a small net")
    ap.add_argument("--build-steps", default=None, metavar="T,T,...",
                    help="the step counts for --build-scaling (default 1000,10000,100000; 100,1000 with --quick)")
    ap.add_argument("--build-timeout", type=float, default=600, help="seconds per build-scaling process")
    ap.add_argument("--memory", action="store_true", help="peak traced memory of tinygraph vs the floor at 'long'")
    ap.add_argument("--profile", default=None, metavar="CONFIG",
                    help="cProfile one tinygraph step (float64) at this config; top functions in the report")
    ap.add_argument("--all", action="store_true", help="= --build-scaling --memory --profile medium")
    a = ap.parse_args(argv)
    if a.all:
        a.build_scaling = a.memory = True
        a.profile = a.profile or "medium"
    table = QUICK_CONFIGS if a.quick else CONFIGS
    names = [c.strip() for c in a.configs.split(",") if c.strip()]
    bad = [c for c in names if c not in table]
    if bad or not names:
        ap.error(f"unknown config(s) {bad}; choose from {list(table)}")
    a.config_list = [table[c] for c in names]
    a.table = table
    a.dtypes = ["float32", "float64"] if a.dtype == "both" else [a.dtype]
    a.repeats = a.repeats if a.repeats is not None else (3 if a.quick else 10)
    a.warmup = a.warmup if a.warmup is not None else 1
    if a.repeats < 1 or a.warmup < 0 or (a.pause or 0) < 0 or a.prime < 0:
        ap.error("--repeats must be >= 1, --warmup, --prime and --pause >= 0")
    if a.profile and a.profile not in table:
        ap.error(f"--profile: unknown config {a.profile!r}")
    steps = a.build_steps or ("100,1000" if a.quick else "1000,10000,100000")
    try:
        a.build_steps = [int(s) for s in steps.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--build-steps: comma-separated ints, got {steps!r}")
    if a.json is None and not a.quick:
        a.json = os.path.join(HERE, "results.json")
    if a.results is None and not a.quick:
        a.results = os.path.join(HERE, "RESULTS.md")
    a.torch_skip = {c.strip() for c in a.torch_skip.split(",") if c.strip()}
    return a


def findings(results, table):
    out = []
    f32 = [r for r in results if r["dtype"] == "float32"]
    if f32:
        d = f32[0]["tinygraph_dtypes"]
        if d["upcast"]:
            out.append("tinygraph silently upcasts float32 to float64: with float32 net.weights and float32 "
                       f"clamp/target data, the states are {d['states h']} and out.weight_grads are "
                       f"{sorted(set(d['weight_grads'].values()))}; the fed inputs are {d['fed inputs']} (the rnn "
                       "data layer, rnn/data.py _values, converts Clamp and Target values with "
                       "np.asarray(values, dtype=np.float64)); first non-empty float64 node: "
                       f"{d['first non-empty node of each dtype'].get('float64', '?')}. net.weights stay float32 "
                       "(SGD subtracts float64 steps from them in place). So tinygraph's float32 rows compute "
                       "mostly in float64 while the floor and torch compute in float32.")
            for name in ("medium", "large"):
                c = table[name]
                mm = mixed_dtype_matmul(c.B, c.H)
                out.append(f"what the upcast costs: the {name} recurrence's ({c.B}, {c.H}) @ ({c.H}, {c.H}) matmul takes "
                           + ", ".join(f"{k} {v:.3f} ms" for k, v in mm.items())
                           + " (best of 7; with mixed operands numpy casts the float32 one on every call)")
        else:
            out.append("tinygraph keeps float32 throughout (states and weight gradients are float32).")
    bad = [(r["config"]["name"], r["dtype"], n, a["max_rel"]) for r in results
           for n, a in r["agreement"].items() if not a["ok"]]
    for c, d, n, e in bad:
        out.append(f"{c} {d}: {n}'s gradients differ from the floor's (max rel {e:.2g})")
    return out


def main(argv=None):
    a = parse_args(sys.argv[1:] if argv is None else argv)
    # what exists before the run (modules, torch, a test runner's heap) goes to the permanent
    # generation, so the gc.collect() before each timed step only walks what the benchmark made
    gc.collect()
    gc.freeze()
    try:
        return _main(a, argv)
    finally:
        gc.unfreeze()


def _main(a, argv):
    use_torch = not a.no_torch and torch_available()
    if a.pause is None:
        a.pause = 0.1 if use_torch else 0.0
    if not a.no_torch and not use_torch:
        print("(torch is not installed: PyTorch rows omitted)")
    info = machine_info(use_torch)
    print(f"{info['cpu']}, {info['cores']} cores; numpy {info['numpy']} ({info['blas'].get('name')}, "
          f"{info['blas'].get('threads')} threads)" + (f"; torch {info['torch']['version']}" if info["torch"] else ""))
    results = []
    failed = False
    t_start = time.perf_counter()
    for cfg in a.config_list:
        for dtype in a.dtypes:
            t0 = time.perf_counter()
            print(f"{cfg.name} (H={cfg.H}, B={cfg.B}, T={cfg.T}, I={cfg.I}) {dtype} ...", flush=True)
            idle = None
            if a.wait_idle:
                wait_idle(min(a.wait_idle, a.idle_budget), threshold=a.idle_threshold)
                idle = (a.idle_threshold, a.wait_idle,
                        3 * a.repeats if a.max_discard is None else a.max_discard, a.idle_budget)
            res = bench_config(cfg, dtype, a.repeats, warmup=a.warmup, use_torch=use_torch, pause=a.pause,
                               prime=a.prime, idle=idle, torch_skip=a.torch_skip)
            failed |= not all(x["ok"] for x in res["agreement"].values())
            failed |= not all(x["ok"] for x in res["loss_agreement"].values())
            results.append(res)
            load = res.get("other_load")
            print(text_table([res]).split("\n", 2)[2].rstrip() + f"   ({time.perf_counter() - t0:.0f} s"
                  + (f"; other processes: {load:.2f} cores busy (median of rounds), "
                     f"{res['rounds_discarded']} rounds redone" if load is not None else "") + ")", flush=True)
    payload = {"command": "python -m benchmarks " + " ".join(shlex.quote(x) for x in (sys.argv[1:] if argv is None else argv)),
               "machine": info, "quick": a.quick,
               "options": {"wait_idle": a.wait_idle, "idle_threshold": a.idle_threshold, "idle_budget": a.idle_budget, "repeats": a.repeats, "warmup": a.warmup, "pause": a.pause, "prime": a.prime, "torch": use_torch,
                           "torch_skip": sorted(a.torch_skip)},
               "results": results, "findings": findings(results, a.table)}
    if a.memory:
        print("memory at 'long' ...", flush=True)
        payload["memory"] = []
        for dtype in a.dtypes:
            m = measure_memory(a.table["long"], dtype)
            payload["memory"].append(m)
            print(f"  {dtype}: floor peak {m['floor']['peak'] / 1e6:.2f} MB, tinygraph peak "
                  f"{m['tinygraph']['peak'] / 1e6:.2f} MB ({m['ratio_peak']:.2f}x; numpy part "
                  f"{m['ratio_numpy_est']:.2f}x)", flush=True)
    if a.build_scaling:
        print(f"build scaling (H={BUILD_NET['H']}, B={BUILD_NET['B']}, I={BUILD_NET['I']}), T = {a.build_steps} ...",
              flush=True)
        payload["build"] = build_scaling(a.build_steps, timeout=a.build_timeout, wait=a.wait_idle and a.idle_budget)
    if a.profile:
        if a.wait_idle:
            wait_idle(min(a.wait_idle, a.idle_budget), threshold=a.idle_threshold, log=None)
        payload["profile_config"] = a.profile
        payload["phases"] = {}
        for dtype in a.dtypes:
            phases, text = profile_tinygraph(a.table[a.profile], dtype)
            payload["phases"][dtype] = phases
            if dtype == "float64" or len(a.dtypes) == 1:
                payload["profile"] = text
                payload["profile_dtype"] = dtype
        print(f"tinygraph step phases at {a.profile} (median ms): " +
              "; ".join(f"{d}: " + ", ".join(f"{k} {v:.2f}" for k, v in p.items()) for d, p in payload["phases"].items()))
        print(f"cProfile of one tinygraph step at {a.profile} ({payload['profile_dtype']}):")
        print("\n".join(payload["profile"].splitlines()[:30]))
    try:
        payload["loadavg_end"] = os.getloadavg()
    except OSError:
        payload["loadavg_end"] = None
    print()
    print(text_table(results))
    for f in payload["findings"]:
        print("finding:", f)
    if a.json:
        write_json(a.json, payload)
        print(f"JSON: {a.json}")
    if a.results:
        with open(a.results + ".tmp", "w") as f:
            f.write(results_md(payload))
        os.replace(a.results + ".tmp", a.results)
        print(f"markdown: {a.results}")
    print(f"({time.perf_counter() - t_start:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
