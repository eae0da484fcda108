"""Measurement: interleaved timing, gradient agreement, peak memory, build scaling, machine info."""

import datetime
import gc
import json
import os
import platform
import subprocess
import sys
import time
import tracemalloc

import numpy as np

from .floor import PARAM_NAMES, FloorRNN, default_lr, init_params, make_data
from .impls import TinygraphRNN, TorchLoopRNN, TorchNNRNN, build_net, numpy_threads, torch_available

DTYPES = {"float32": np.float32, "float64": np.float64}
# gradient agreement with the floor, as max over params of ||g - g_floor|| / ||g_floor||
GRAD_TOL = {"float64": 1e-9, "float32": 1e-4}
# losses after the same sequence of SGD steps (same start, same data)
LOSS_TOL = {"float64": 1e-8, "float32": 1e-3}


# ----------------------------------------------------------------- the machine

def machine_info(use_torch=True):
    info = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "python": platform.python_version(), "platform": platform.platform(),
            "numpy": np.__version__}
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        cpu = platform.processor() or "unknown"
    info["cpu"] = cpu
    info["cores"] = os.cpu_count()
    try:
        info["cores_usable"] = len(os.sched_getaffinity(0))
    except AttributeError:
        info["cores_usable"] = os.cpu_count()
    blas = {}
    try:
        cfg = np.show_config(mode="dicts")
        b = cfg.get("Build Dependencies", {}).get("blas", {})
        blas = {k: b.get(k) for k in ("name", "version", "openblas configuration") if b.get(k)}
    except Exception as exc:  # older numpy
        blas = {"error": str(exc)}
    try:
        import threadpoolctl
        blas["threadpoolctl"] = [{k: i.get(k) for k in ("internal_api", "version", "num_threads", "threading_layer",
                                                        "architecture")}
                                 for i in threadpoolctl.threadpool_info()]
    except Exception:
        blas["threadpoolctl"] = None
    blas["threads"] = numpy_threads()
    info["blas"] = blas
    if use_torch and torch_available():
        import torch
        info["torch"] = {"version": torch.__version__, "threads": torch.get_num_threads(),
                         "blas": "MKL" if torch.backends.mkl.is_available() else "other"}
    else:
        info["torch"] = None
    try:
        info["loadavg_start"] = os.getloadavg()
    except OSError:
        info["loadavg_start"] = None
    return info


# ----------------------------------------------------------------- other processes' load

def _cpu_busy_s():
    """Seconds of CPU time all processes spent (busy jiffies in /proc/stat); None off Linux."""
    try:
        with open("/proc/stat") as f:
            parts = f.readline().split()
        user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in parts[1:9])
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _own_cpu_s():
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class LoadMeter:
    """How many cores *other* processes kept busy while we measured (machine busy minus our own CPU)."""

    def __init__(self):
        self.wall, self.busy, self.own = time.perf_counter(), _cpu_busy_s(), _own_cpu_s()

    def elapsed(self):
        return time.perf_counter() - self.wall

    def others(self):
        busy = _cpu_busy_s()
        if busy is None or self.busy is None:
            return None
        wall = time.perf_counter() - self.wall
        return max(0.0, ((busy - self.busy) - (_own_cpu_s() - self.own)) / wall) if wall > 0 else None


def wait_idle(max_wait, threshold=0.25, window=1.0, log=print):
    """Wait (at most ``max_wait`` s) until other processes use less than ``threshold`` cores over
    ``window`` s.  Returns the last reading (cores busy with other work), None when unknown."""
    deadline = time.perf_counter() + max_wait
    said = False
    while True:
        m = LoadMeter()
        time.sleep(window)
        load = m.others()
        if load is None or load < threshold or time.perf_counter() >= deadline:
            return load
        if not said and log:
            log(f"  (other processes keep {load:.1f} cores busy; waiting up to {max_wait:.0f} s for the machine to be idle)")
            said = True


# ----------------------------------------------------------------- timing

def make_impls(config, dtype, use_torch=True, lr=None, seed=0):
    """The floor, tinygraph and (optionally) the torch implementations, all from the same start."""
    dt = DTYPES[dtype] if isinstance(dtype, str) else dtype
    p = init_params(config.I, config.H, seed=seed, dtype=dt)
    X, Y = make_data(config.T, config.B, config.I, seed=seed + 1, dtype=dt)
    lr = default_lr(config.T, config.B) if lr is None else lr
    classes = [FloorRNN, TinygraphRNN]
    if use_torch and torch_available():
        classes += [TorchLoopRNN, TorchNNRNN]
    return [cls(p, X, Y, lr) for cls in classes]


def grad_agreement(impls, dtype):
    """{impl name: {"max_rel": ..., "per_param": {...}, "ok": bool}} against impls[0] (the floor)."""
    ref = impls[0].grads()
    out = {}
    for impl in impls[1:]:
        g = impl.grads()
        per = {}
        for k in PARAM_NAMES:
            a = np.asarray(g[k], dtype=np.float64)
            r = np.asarray(ref[k], dtype=np.float64)
            if a.shape != r.shape:
                per[k] = float("inf")
                continue
            den = np.linalg.norm(r)
            per[k] = float(np.linalg.norm(a - r) / den) if den > 0 else float(np.linalg.norm(a))
        worst = max(per.values())
        out[impl.name] = {"max_rel": worst, "per_param": per, "ok": bool(worst <= GRAD_TOL[dtype]),
                          "grad_dtypes": sorted({str(np.asarray(v).dtype) for v in g.values()})}
    return out


def time_interleaved(impls, repeats, warmup=1, pause=0.1, prime=1, idle=None, progress=None):
    """Interleaved timing: rounds of one run of each implementation in turn (A B C A B C ...),
    ``warmup`` rounds untimed, then ``repeats`` timed rounds.

    One run of an implementation: a full gc.collect() (so one implementation's garbage is not
    collected on another's clock), a ``pause`` (so the BLAS/OpenMP worker threads of the previous
    runtime stop spinning: on 2 cores they take a core from the next one), ``prime`` untimed steps
    (caches and thread pools warm with this implementation's working set, as in a training loop,
    where step follows step) and then the one timed step.  Every implementation takes the same
    number of SGD steps, so their losses can be compared step by step.

    ``idle``: None, or (threshold, max_wait, max_discard, budget): on a shared machine, wait (up
    to max_wait s) before each round until other processes use fewer than ``threshold`` cores, and
    discard a round during which they used more (at most ``max_discard`` rounds, and only while
    the time spent waiting and in discarded rounds stays under ``budget`` s; after that the rounds
    count whatever the load, which is reported).

    Returns ({name: [seconds of each timed step]}, {name: [loss of every step taken]}, stats)."""
    times = {i.name: [] for i in impls}
    losses = {i.name: [] for i in impls}
    stats = {"discarded": 0, "round_loads": [], "idle_s": 0.0}
    r = 0
    while r < warmup + repeats:
        patient = bool(idle) and stats["idle_s"] < idle[3]
        if patient and r >= warmup:
            a = time.perf_counter()
            wait_idle(min(idle[1], idle[3] - stats["idle_s"]), threshold=idle[0], window=0.3, log=None)
            stats["idle_s"] += time.perf_counter() - a
        meter = LoadMeter()
        round_times = {}
        for impl in impls:
            gc.collect()
            if pause:
                time.sleep(pause)
            for _ in range(prime):
                losses[impl.name].append(float(impl.step()))
            t0 = time.perf_counter()
            loss = impl.step()
            t1 = time.perf_counter()
            losses[impl.name].append(float(loss))
            round_times[impl.name] = t1 - t0
        load = meter.others()
        if r >= warmup:
            if patient and load is not None and load > idle[0] and stats["discarded"] < idle[2]:
                stats["discarded"] += 1
                stats["idle_s"] += meter.elapsed()
                continue
            stats["round_loads"].append(load)
            for name, t in round_times.items():
                times[name].append(t)
        r += 1
        if progress:
            progress(r, warmup + repeats)
    return times, losses, stats


def summarize(times):
    a = np.asarray(times)
    return {"median_ms": float(np.median(a) * 1e3), "min_ms": float(a.min() * 1e3),
            "q1_ms": float(np.percentile(a, 25) * 1e3), "q3_ms": float(np.percentile(a, 75) * 1e3),
            "n": int(a.size)}


def bench_config(config, dtype, repeats, warmup=1, use_torch=True, pause=0.1, prime=1, idle=None, torch_skip=(),
                 log=print):
    """Everything for one (config, dtype): agreement, interleaved timing, losses, dtype findings."""
    impls = make_impls(config, dtype, use_torch=use_torch)
    impls = [i for i in impls if not (i.name.startswith("torch") and config.name in torch_skip)]
    res = {"config": config._asdict(), "dtype": dtype, "lr": default_lr(config.T, config.B)}
    res["agreement"] = grad_agreement(impls, dtype)
    for name, a in res["agreement"].items():
        if not a["ok"]:
            log(f"  !! {config.name}/{dtype}: {name} gradients differ from the floor's: max rel {a['max_rel']:.3g} "
                f"(tolerance {GRAD_TOL[dtype]:g})")
    tgi = next(i for i in impls if i.name == "tinygraph")
    res["tinygraph_dtypes"] = tgi.dtype_report()
    meter = LoadMeter()
    times, losses, stats = time_interleaved(impls, repeats, warmup=warmup, pause=pause, prime=prime, idle=idle)
    res["other_load_overall"] = meter.others()
    loads = [x for x in stats["round_loads"] if x is not None]
    res["other_load"] = float(np.median(loads)) if loads else None   # median over the counted rounds
    res["other_load_max"] = float(max(loads)) if loads else None
    res["rounds_discarded"] = stats["discarded"]
    res["idle_wait_s"] = stats["idle_s"]
    floor_med = float(np.median(times[impls[0].name]))
    res["impls"] = {}
    for impl in impls:
        s = summarize(times[impl.name])
        s["ratio"] = float(np.median(times[impl.name]) / floor_med)
        # each round times every implementation back to back: the median of the per-round
        # ratios is less swayed by the machine's speed drifting between rounds
        s["ratio_paired"] = float(np.median(np.asarray(times[impl.name]) / np.asarray(times[impls[0].name])))
        s["times_ms"] = [t * 1e3 for t in times[impl.name]]
        res["impls"][impl.name] = s
    # all implementations took the same SGD steps from the same start: their losses must agree
    ref = np.asarray(losses[impls[0].name])
    res["loss_first_last"] = [float(ref[0]), float(ref[-1])]
    res["loss_agreement"] = {}
    for impl in impls[1:]:
        li = np.asarray(losses[impl.name])
        rel = float(np.max(np.abs(li - ref) / np.abs(ref)))
        res["loss_agreement"][impl.name] = {"max_rel": rel, "ok": bool(rel <= LOSS_TOL[dtype])}
        if rel > LOSS_TOL[dtype]:
            log(f"  !! {config.name}/{dtype}: {impl.name}'s losses over the timed SGD steps drift from the "
                f"floor's: max rel {rel:.3g}")
    return res


# ----------------------------------------------------------------- memory

def _impl_memory(cls, params, X, Y, lr):
    """Traced bytes of one implementation (tracemalloc: numpy's data buffers and Python objects).

    Tracing starts before the implementation is built (the data and starting weights exist
    already and are not counted).  persistent: what it holds between steps (graph, plans,
    buffers); step_extra: the peak during one training step above that; peak: persistent +
    step_extra.  numpy_persistent is the part of persistent held in numpy arrays."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        impl = cls(params, X, Y, lr)
        impl.step()  # warm-up: tinygraph emits the graph and compiles its plan here
        impl.step()
        gc.collect()
        snap = tracemalloc.take_snapshot()
        held = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        impl.step()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    dom = np.lib.tracemalloc_domain
    numpy_held = sum(s.size for s in snap.filter_traces([tracemalloc.DomainFilter(True, dom)]).statistics("filename"))
    out = {"persistent": held - base, "numpy_persistent": int(numpy_held), "step_extra": peak - held,
           "peak": peak - base}
    out["numpy_peak_est"] = out["numpy_persistent"] + out["step_extra"]
    del impl
    gc.collect()
    return out


def measure_memory(config, dtype):
    """Peak traced memory of tinygraph against the floor's (torch allocates outside tracemalloc's view)."""
    dt = DTYPES[dtype]
    p = init_params(config.I, config.H, dtype=dt)
    X, Y = make_data(config.T, config.B, config.I, seed=1, dtype=dt)
    lr = default_lr(config.T, config.B)
    floor = _impl_memory(FloorRNN, p, X, Y, lr)
    tg = _impl_memory(TinygraphRNN, p, X, Y, lr)
    return {"config": config._asdict(), "dtype": dtype, "floor": floor, "tinygraph": tg,
            "data_bytes": int(X.nbytes + Y.nbytes),
            "ratio_peak": tg["peak"] / floor["peak"],
            "ratio_numpy_est": tg["numpy_peak_est"] / floor["numpy_peak_est"]}


# ----------------------------------------------------------------- build scaling

BUILD_NET = dict(H=16, B=1, I=4)


def build_probe(T, H, B, I, dtype="float64"):
    """Run in a fresh process: time building the net, unrolling it, the first run (emits the
    graph for the run's clamps and targets, compiles the plan, runs forward and backward) and
    two more runs (forward and backward only), plus one SGD step.  Returns a dict."""
    import rnn
    import tinygraph as tg
    dt = DTYPES[dtype]
    X, Y = make_data(T, B, I, seed=1, dtype=dt)
    p = init_params(I, H, dtype=dt)
    out = {"T": T, "H": H, "B": B, "I": I, "dtype": dtype}
    t0 = time.perf_counter()
    net = build_net(I, H)
    for k in PARAM_NAMES:
        net.weights[k] = np.array(p[k], dtype=dt)
    ff = net.unroll(T)
    t1 = time.perf_counter()
    inputs, targets = [rnn.Clamp("x", X)], [rnn.Target("y", Y, steps="all")]
    r = ff.run(inputs, targets)
    t2 = time.perf_counter()
    runs = []
    for _ in range(2):
        del r
        gc.collect()
        a = time.perf_counter()
        r = ff.run(inputs, targets)
        runs.append(time.perf_counter() - a)
    a = time.perf_counter()
    tg.SGD(r.graph.params, default_lr(T, B)).step(r.grads)
    sgd_first = time.perf_counter() - a
    out.update(unroll_s=t1 - t0, first_run_s=t2 - t1, run_s=min(runs), runs_s=runs,
               sgd_first_step_s=sgd_first, nodes=len(r.graph.nodes), loss=r.loss,
               build_and_first_run_s=t2 - t0,
               compile_est_s=(t2 - t1) - min(runs),
               maxrss_mb=_peak_rss_mb())
    return out


def _peak_rss_mb():
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited from the parent)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_scaling(steps=(1_000, 10_000, 100_000), timeout=600, dtype="float64", wait=0, log=print):
    """build_probe for each T in its own process (a timeout or crash is recorded, not fatal);
    ``wait``: seconds to wait at most for an idle machine before each."""
    results = []
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for T in steps:
        args = dict(BUILD_NET, T=T, dtype=dtype)
        if wait:
            wait_idle(wait, log=None)
        meter = LoadMeter()
        code = ("import json, sys; from benchmarks.measure import build_probe; "
                f"print('RESULT ' + json.dumps(build_probe(**{args!r})))")
        a = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                                  timeout=timeout, env=dict(os.environ, PYTHONPATH=root + os.pathsep +
                                                            os.environ.get("PYTHONPATH", "")))
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode == 0 and line:
                r = json.loads(line[-1][len("RESULT "):])
            else:
                r = dict(args, error=f"exit {proc.returncode}: {proc.stderr.strip()[-800:]}")
        except subprocess.TimeoutExpired:
            r = dict(args, error=f"timeout after {timeout} s")
        r["wall_s"] = time.perf_counter() - a
        r["other_load"] = meter.others()
        results.append(r)
        if "error" in r:
            log(f"  T={T}: {r['error']}")
        else:
            log(f"  T={T:>7}: unroll {r['unroll_s']:.2f} s, first run {r['first_run_s']:.2f} s, "
                f"later run {r['run_s']:.2f} s; built+compiled+run once {r['build_and_first_run_s']:.2f} s, "
                f"{r['nodes']} nodes, max RSS {r['maxrss_mb']:.0f} MB")
    ok = [r for r in results if "error" not in r]
    if len(ok) >= 2:
        a, b = ok[0], ok[-1]
        for key in ("unroll_s", "first_run_s", "run_s"):
            per_a, per_b = a[key] / a["T"], b[key] / b["T"]
            a.setdefault("per_step_growth", {})
            b.setdefault("per_step_growth", {})[key] = per_b / per_a if per_a > 0 else None
    return results


# ----------------------------------------------------------------- dtype

def mixed_dtype_matmul(B, H, repeats=7):
    """Best-of times (ms) of a (B, H) @ (H, H) matmul with the operand dtypes tinygraph's float32 runs
    mix (float64 activations against float32 weights) and the pure ones."""
    import timeit
    rng = np.random.default_rng(0)
    a64, w64 = rng.standard_normal((B, H)), rng.standard_normal((H, H))
    a32, w32 = a64.astype(np.float32), w64.astype(np.float32)
    out = {}
    for name, (x, w) in {"f64 @ f64": (a64, w64), "f64 @ f32": (a64, w32), "f32 @ f32": (a32, w32)}.items():
        n = max(3, int(2e7 / (B * H * H)))
        out[name] = min(timeit.repeat(lambda: np.matmul(x, w), number=n, repeat=repeats)) / n * 1e3
    return out


# ----------------------------------------------------------------- profile

def profile_tinygraph(config, dtype="float64", top=12, repeats=5):
    """Where one tinygraph training step spends its time: the phases (forward only, forward and
    backward, SGD step; medians of ``repeats``) and cProfile's top functions by own time (numpy
    ufuncs such as matmul and tanh are not seen by cProfile: their time is their caller's).
    Returns (phases dict in ms, stats text)."""
    import cProfile
    import io
    import pstats

    import rnn
    impl = make_impls(config, dtype, use_torch=False)[1]
    impl.step()
    impl.step()
    inputs, targets = [rnn.Clamp("x", impl.X)], [rnn.Target("y", impl.Y, steps="all")]
    ph = {"forward": [], "forward+backward": [], "SGD step": []}
    for _ in range(repeats):
        gc.collect()
        a = time.perf_counter()
        impl.ff.run(inputs, targets, backward=False)
        b = time.perf_counter()
        out = impl.ff.run(inputs, targets)
        c = time.perf_counter()
        impl.opt.step(out.grads)
        d = time.perf_counter()
        del out
        ph["forward"].append(b - a)
        ph["forward+backward"].append(c - b)
        ph["SGD step"].append(d - c)
    phases = {k: float(np.median(v) * 1e3) for k, v in ph.items()}
    gc.collect()
    pr = cProfile.Profile()
    pr.enable()
    impl.step()
    pr.disable()
    st = pstats.Stats(pr, stream=io.StringIO())
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
    rows = []
    total = 0.0
    for (fname, line, func), (cc, nc, tt, ct, _) in st.stats.items():
        total += tt
        where = f"{fname.replace(root, '')}:{line}({func})" if fname != "~" else func
        rows.append((tt, ct, nc, where))
    rows.sort(reverse=True)
    lines = [f"one step: {total * 1e3:.2f} ms under cProfile; top {top} by own time",
             f"{'calls':>7} {'own ms':>8} {'cum ms':>8}  function"]
    lines += [f"{nc:>7} {tt * 1e3:>8.2f} {ct * 1e3:>8.2f}  {where}" for tt, ct, nc, where in rows[:top]]
    text = "\n".join(lines)
    return phases, text
