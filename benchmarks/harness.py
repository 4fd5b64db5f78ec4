"""The one harness of every zoo-vs-HF-PyTorch benchmark: timing, machine load, machine
description, peak memory of a subprocess, the HF -> zoo conversion and the results files.

- :func:`time_interleaved` times several zero-argument callables round-robin (the first one
  rotates each round), so every implementation sees the same machine conditions; each call
  is synchronised inside the timed region (``jax.block_until_ready``; ``torch.cuda.synchronize``
  on a GPU). Reported per implementation: median, min, mean, q1/q3, IQR (ms) and every run.
- :func:`jax_compile` times ``jax.jit(f).lower(...)`` and ``.compile()`` apart; the compiled
  executable is what is timed, so compilation never enters the run times.
- :func:`quietest_attempt` + :class:`LoadMonitor`: on a shared machine, time again while other
  processes use more than ``max_load`` of the cores and keep the quietest attempt; every
  result records that load (``quiet``: at most ``max_load``).
- :func:`convert` gives the zoo model of an HF PyTorch model through the public
  ``zoo.from_state_dict`` (the same weights on both sides).
- :func:`peak_rss` runs a command and returns its peak resident set size (``os.wait4``).
- :func:`finish_report` adds the machine description and writes ``results/<name>.json`` (+ a
  short ``.md``); ``speedup = this_median / zoo_median``, so > 1 means the zoo is faster.

Nothing here imports torch or jax at import time (subprocess benchmarks use it too).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------- timing
@dataclasses.dataclass
class Timing:
    """Wall-clock statistics of one implementation, in milliseconds."""

    name: str
    median_ms: float
    min_ms: float
    mean_ms: float
    q1_ms: float
    q3_ms: float
    iqr_ms: float
    repeats: int
    warmup: int
    times_ms: list[float]
    compile_s: float | None = None  # jax: XLA compile, measured apart from the runs
    lower_s: float | None = None  # jax: trace + lower
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def _quantile(s: list[float], q: float) -> float:
    pos = (len(s) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarize(name: str, times_s: list[float], warmup: int, **kwargs) -> Timing:
    ms = [t * 1e3 for t in times_s]
    s = sorted(ms)
    q1, q3 = _quantile(s, 0.25), _quantile(s, 0.75)
    return Timing(name, statistics.median(s), s[0], statistics.fmean(s), q1, q3, q3 - q1, len(s), warmup, ms,
                  **kwargs)


def block(x: Any) -> Any:
    """Wait for every jax array in ``x``."""
    import jax

    return jax.block_until_ready(x)


def torch_sync(device: str) -> Callable[[Any], Any] | None:
    """The sync of a torch call on ``device`` (None on the CPU: torch is synchronous there)."""
    if device != "gpu":
        return None
    import torch

    return lambda out: (torch.cuda.synchronize(), out)[1]


def torch_callable(fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` run under ``torch.inference_mode()``."""
    import torch

    def call():
        with torch.inference_mode():
            return fn()

    return call


def time_interleaved(calls: dict[str, Callable[[], Any]], *, repeats: int, warmup: int,
                     syncs: dict[str, Callable | None] | None = None,
                     timing_kwargs: dict[str, dict] | None = None) -> list[Timing]:
    """``warmup`` untimed rounds, then ``repeats`` rounds in which every callable runs once,
    round-robin (the starting one rotates); ``syncs[name]`` defaults to :func:`block`."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    names, syncs, timing_kwargs = list(calls), syncs or {}, timing_kwargs or {}
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + repeats):
        for n in names[r % len(names):] + names[: r % len(names)]:
            sync = syncs.get(n, block)
            t0 = time.perf_counter()
            out = calls[n]()
            if sync is not None:
                sync(out)
            dt = time.perf_counter() - t0
            del out
            if r >= warmup:
                times[n].append(dt)
    return [summarize(n, times[n], warmup, **timing_kwargs.get(n, {})) for n in names]


def jax_compile(fn: Callable, *args, **kwargs):
    """``(compiled, lower_s, compile_s)`` of ``jax.jit(fn)`` for these arguments."""
    import jax

    t0 = time.perf_counter()
    lowered = jax.jit(fn).lower(*args, **kwargs)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    return compiled, t1 - t0, time.perf_counter() - t1


def ratios(timings: list[Timing], reference: str = "zoo") -> dict[str, float]:
    """``{"<name> / <reference>": median ratio}``: > 1 means the reference is faster."""
    by = {t.name: t for t in timings}
    return {f"{n} / {reference}": t.median_ms / by[reference].median_ms for n, t in by.items() if n != reference}


# ------------------------------------------------------------ machine load
def _proc_stat() -> tuple[float, float] | None:
    """(busy, steal) CPU seconds of the whole machine since boot, from /proc/stat."""
    try:
        v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]] + [0] * 8
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / hz, v[7] / hz


def _own_cpu() -> float:
    import resource

    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + c.ru_utime + c.ru_stime


def loadavg() -> list[float] | None:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return None


class LoadMonitor:
    """``result`` after the ``with`` block: ``foreign_cpu_fraction`` (CPU used by *other*
    processes, as a share of all cores over the block's wall time), ``steal_fraction``
    (hypervisor steal), ``loadavg`` and ``wall_s``."""

    def __enter__(self):
        self.result: dict[str, Any] = {}
        self._t0, self._own0, self._stat0 = time.perf_counter(), _own_cpu(), _proc_stat()
        return self

    def __exit__(self, *exc):
        wall, own, stat1 = time.perf_counter() - self._t0, _own_cpu() - self._own0, _proc_stat()
        ncpu = os.cpu_count() or 1
        self.result = {"wall_s": wall, "loadavg": loadavg()}
        if self._stat0 and stat1 and wall > 0:
            self.result["foreign_cpu_fraction"] = max(0.0, (stat1[0] - self._stat0[0] - own) / (wall * ncpu))
            self.result["steal_fraction"] = max(0.0, (stat1[1] - self._stat0[1]) / (wall * ncpu))
        return False


def wait_for_quiet(threshold: float = 0.10, window_s: float = 3.0, timeout_s: float = 600.0) -> dict:
    """Wait (up to ``timeout_s``) until other processes use < ``threshold`` of the cores."""
    t0 = time.perf_counter()
    while True:
        with LoadMonitor() as m:
            time.sleep(window_s)
        load, waited = m.result.get("foreign_cpu_fraction"), time.perf_counter() - t0
        if load is None or load < threshold or waited >= timeout_s:
            return {"waited_s": waited, "foreign_cpu_fraction": load, "quiet": load is None or load < threshold}


def quietest_attempt(run: Callable[[], Any], *, attempts: int, max_load: float, quiet_wait: float = 0.0,
                     describe: Callable[[Any], str] | None = None) -> tuple[Any, dict]:
    """``run()`` up to ``attempts`` times (each after waiting up to ``quiet_wait`` s for a quiet
    machine) until other processes used at most ``max_load`` of the cores during it;
    ``(result, load record)`` of the quietest attempt, the record saying ``quiet`` or not."""
    best = None
    for attempt in range(1, attempts + 1):
        waited = wait_for_quiet(timeout_s=quiet_wait) if quiet_wait > 0 else None
        with LoadMonitor() as monitor:
            result = run()
        foreign = monitor.result.get("foreign_cpu_fraction", 0.0)
        load = dict(monitor.result, quiet_wait=waited, attempt=attempt, max_load=max_load, quiet=foreign <= max_load)
        print(f"  attempt {attempt}: others used {foreign:.1%} of the cores"
              + (f"; {describe(result)}" if describe else ""), flush=True)
        if best is None or foreign < best[1].get("foreign_cpu_fraction", 0.0):
            best = (result, load)
        if foreign <= max_load:
            break
    return best


def timed(calls: dict, args, *, repeats: int | None = None, warmup: int | None = None, syncs=None,
          timing_kwargs=None) -> tuple[list[Timing], dict]:
    """:func:`time_interleaved` under :func:`quietest_attempt` with the common arguments."""
    timings, load = quietest_attempt(
        lambda: time_interleaved(calls, repeats=repeats or args.repeats, warmup=args.warmup if warmup is None
                                 else warmup, syncs=syncs, timing_kwargs=timing_kwargs),
        attempts=args.attempts, max_load=args.max_load, quiet_wait=args.quiet_wait,
        describe=lambda ts: ", ".join(f"{t.name} {t.median_ms:.1f} ms" for t in ts))
    return timings, load


# -------------------------------------------------------------- environment
def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def setup_threads(num_threads: int | None = None, keep_freed_memory: bool = False) -> dict:
    """torch gets ``num_threads`` (default: the available cores) intra-op threads; XLA keeps its
    default (one worker per core). ``keep_freed_memory``: :func:`zoo.host_memory.keep_freed_memory`
    first, for both sides of the process (call before anything runs JAX). Returns what is in
    effect, with ``XLA_FLAGS``."""
    kept = False
    if keep_freed_memory:
        from zoo import host_memory

        kept = host_memory.keep_freed_memory()
        if not kept:
            raise SystemExit("--keep-freed-memory: not applied (needs glibc, and JAX not yet started)")
    info: dict[str, Any] = {"available_cores": available_cores(), "os_cpu_count": os.cpu_count(),
                            "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""), "xla_threads": "default (all cores)",
                            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "keep_freed_memory": kept}
    import torch

    torch.set_num_threads(num_threads or available_cores())
    info["torch_num_threads"] = torch.get_num_threads()
    return info


def select_device(requested: str = "auto") -> str:
    """``"gpu"`` when JAX runs on a GPU and torch sees CUDA (``requested="gpu"`` insists), else ``"cpu"``."""
    if requested == "cpu":
        return "cpu"
    import jax
    import torch

    gpu = jax.default_backend() == "gpu" and torch.cuda.is_available()
    if requested == "gpu" and not gpu:
        raise SystemExit("--device gpu needs jax on a GPU backend and torch.cuda.is_available()")
    return "gpu" if gpu else "cpu"


def _cpuinfo(key: str) -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith(key))
    except (OSError, StopIteration):
        return ""


def _git_commit() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=REPO_ROOT, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=REPO_ROOT, timeout=10).stdout.strip()
        return (head + ("+dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info(device: str = "cpu") -> dict:
    """Date, platform, CPU model and SIMD flags, cores, memory, git commit, library versions."""
    def version(p):
        try:
            return metadata.version(p)
        except metadata.PackageNotFoundError:
            return None

    info: dict[str, Any] = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(), "python": sys.version.split()[0],
        "cpu_model": _cpuinfo("model name") or platform.processor(),
        "cpu_flags": sorted(f for f in _cpuinfo("flags").split() if f.startswith(("avx", "fma", "amx"))),
        "os_cpu_count": os.cpu_count(), "device": device, "git_commit": _git_commit(),
        "memory_gib": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1),
        "versions": {p: version(p) for p in ("jax", "jaxlib", "flax", "torch", "transformers", "numpy")},
    }
    if "jax" in sys.modules:
        import jax

        info["jax_devices"] = [str(d) for d in jax.devices()]
    if device == "gpu":
        import torch

        info["torch_cuda_device"] = torch.cuda.get_device_name(0)
    return info


# --------------------------------------------------------------- models
def convert(hf_model, architecture: str | None = None, config_overrides: dict | None = None, **kwargs):
    """``zoo.Loaded`` ``(model, variables)`` holding ``hf_model``'s weights, through the public
    ``zoo.from_state_dict`` (``config_overrides`` change zoo-only settings such as BigBird's
    ``attention_type``; ``kwargs``: ``dtype``, ``param_dtype``, module settings)."""
    import zoo

    state = {k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu().numpy()
             for k, v in hf_model.state_dict().items()}
    config = {**hf_model.config.to_dict(), **(config_overrides or {})}
    loaded = zoo.from_state_dict(state, config, architecture or type(hf_model).__name__, **kwargs)
    if loaded.report.missing or loaded.report.unused:  # both sides must hold the same weights
        raise RuntimeError(f"{type(hf_model).__name__}: {loaded.report.summary()}")
    return loaded


def randomize_constants(model, seed: int = 0) -> None:
    """Random values for the float tensors HF initialises to one constant (biases, norm weights,
    class tokens, relative-position tables, batch-norm statistics), so the output checks cover
    them; HF's random weights (std 0.02) stay, so activations keep their scale."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict(keep_vars=True).items():
            if not t.dtype.is_floating_point or t.numel() < 2 or not bool((t == t.flatten()[0]).all()):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith("relative_position_bias_table"):
                t.copy_(0.5 * torch.randn(t.shape, generator=g))
            elif name.endswith(("lambda_1", "lambda_2")) or ("norm" in name and name.endswith("weight")):
                t.copy_(t * (1 + 0.1 * torch.randn(t.shape, generator=g)))
            else:
                t.copy_(t + 0.02 * torch.randn(t.shape, generator=g))


def to_numpy(x):
    import numpy as np

    if hasattr(x, "detach"):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, np.float32)


def max_diff(a, b, where=None) -> float:
    """Max abs difference (float64) of two arrays / tensors, optionally over ``where`` only."""
    import numpy as np

    d = np.abs(np.asarray(to_numpy(a), np.float64) - np.asarray(to_numpy(b), np.float64))
    d = d if where is None else d[where]
    return float(d.max()) if d.size else 0.0


PARITY_ATOL = 1e-5


def parity_bound(reference, where=None) -> float:
    """The parity contract's bound for an output (tests/hf_parity.py): 1e-5, or one float32
    spacing at the output's largest magnitude where that is coarser (a value past 128)."""
    import numpy as np

    r = np.abs(np.asarray(to_numpy(reference), np.float64))
    r = r if where is None else r[where]
    r = r[np.isfinite(r)]
    return max(PARITY_ATOL, float(np.spacing(np.float32(r.max())))) if r.size else PARITY_ATOL


# ------------------------------------------------------------ peak memory
# A small launcher process runs the command and reports its rusage: Linux records, at exec, the
# resident size of the process image being replaced, so a command started straight from a big
# benchmark process would report the benchmark's own RSS as its peak.
_LAUNCHER = ("import json, os, sys; pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ); "
             "_, st, ru = os.wait4(pid, 0); json.dump([os.waitstatus_to_exitcode(st), ru.ru_maxrss, ru.ru_utime, "
             "ru.ru_stime], open(sys.argv[1], 'w'))")


def peak_rss(cmd: list[str], timeout_s: float = 1800.0, env: dict | None = None) -> dict:
    """Run ``cmd``; its peak resident set size (``ru_maxrss`` from ``os.wait4``: the process and
    the children it waited for), wall / user / system seconds, exit status and, on failure, the
    tail of its output."""
    import shutil
    import tempfile

    env = {**os.environ, **(env or {}), "PYTHONPATH": str(REPO_ROOT)}
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "rusage.json"
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-S", "-c", _LAUNCHER, str(report), shutil.which(cmd[0]) or cmd[0],
                               *cmd[1:]], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
        wall = time.perf_counter() - t0
        if not report.exists():
            raise RuntimeError(f"the launcher of {cmd} failed: {proc.stderr[-2000:]}")
        code, maxrss_kib, user_s, system_s = json.loads(report.read_text())
    result = {"command": " ".join(cmd), "peak_rss_mib": maxrss_kib / 1024, "exit_status": code, "wall_s": wall,
              "user_s": user_s, "system_s": system_s}
    if code != 0:
        result["output_tail"] = (proc.stdout + proc.stderr)[-3000:]
    return result


# ------------------------------------------------------------------- output
def add_common_args(parser: argparse.ArgumentParser, *, repeats: int = 10, warmup: int = 2,
                    attempts: int = 1, quiet_wait: float = 60.0) -> None:
    parser.add_argument("--repeats", type=int, default=repeats, help="timed runs per implementation")
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed runs before timing")
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: all cores)")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="zoo.host_memory.keep_freed_memory() first: freed memory stays in the process, "
                             "for the zoo and torch alike (glibc)")
    parser.add_argument("--attempts", type=int, default=attempts,
                        help="time again, up to this many times, while others use more than --max-load")
    parser.add_argument("--max-load", type=float, default=0.05,
                        help="largest share of the cores other processes may use for a quiet timing")
    parser.add_argument("--quiet-wait", type=float, default=quiet_wait,
                        help="seconds to wait at most for a quiet machine before timing (0: do not wait)")
    parser.add_argument("--name", default=None, help="results file stem (default: the benchmark's)")
    parser.add_argument("--no-write", action="store_true", help="print only, write no results files")
    parser.add_argument("--out", default=None, help="directory of the results files (default benchmarks/results)")


def comparison_table(timings: list[Timing], reference: str = "zoo") -> str:
    """Markdown: median, min, IQR, compile time and ``this / reference`` (> 1: reference faster)."""
    ref = next(t for t in timings if t.name == reference)
    lines = [f"| implementation | median ms | min ms | IQR ms | compile s | this / {reference} |",
             "|---|---:|---:|---:|---:|---:|"]
    for t in timings:
        c = "" if t.compile_s is None else f"{t.compile_s:.2f} (+{t.lower_s:.2f})"
        r = "1.00" if t is ref else f"{t.median_ms / ref.median_ms:.2f}x"
        lines.append(f"| {t.name} | {t.median_ms:.1f} | {t.min_ms:.1f} | {t.iqr_ms:.1f} | {c} | {r} |")
    return "\n".join(lines)


def load_note(load: dict | None) -> str:
    if not load or "foreign_cpu_fraction" not in load:
        return ""
    f = load["foreign_cpu_fraction"]
    return (f"others used {f:.1%} of the cores while timing, steal {load.get('steal_fraction', 0):.1%}"
            + ("" if load.get("quiet", f < 0.05) else " **(busy: these timings are noisy)**"))


def _jsonable(x: Any) -> Any:
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return _jsonable(dataclasses.asdict(x))
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    return x.item() if hasattr(x, "item") and callable(x.item) else x


def finish_report(name: str, payload: dict, md: list[str], *, write: bool, threads: dict | None = None,
                  device: str = "cpu", results_dir: str | Path | None = None) -> dict:
    """Add ``machine`` and ``threads`` to ``payload``, print the markdown and, with ``write``,
    write ``<results_dir>/<name>.json`` and ``.md`` (default ``benchmarks/results``; temporary
    name, then rename). Returns the payload
    as written (plain JSON types)."""
    argv = payload.pop("argv", None)
    argv = sys.argv[1:] if argv is None else argv
    payload = {**payload, "command": " ".join(["python -m", payload.pop("module", "benchmarks"), *argv]),
               "machine": machine_info(device), "threads": threads}
    m = payload["machine"]
    md = list(md) + ["", f"- `{payload['command']}`; {m['date_utc']}, git {m['git_commit']}; {m['cpu_model']} "
                     f"({m['os_cpu_count']} cores, {m['memory_gib']} GiB), device {device}; "
                     + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)]
    if threads:
        md.append(f"- threads: torch {threads.get('torch_num_threads')}, XLA {threads['xla_threads']}, "
                  f"XLA_FLAGS=`{threads['XLA_FLAGS'] or '(unset)'}`; host memory: "
                  + ("freed memory kept (zoo.host_memory)" if threads.get("keep_freed_memory") else "glibc default"))
    markdown = "\n".join(md).rstrip() + "\n"
    print("\n" + markdown, flush=True)
    payload = _jsonable(payload)
    if write:
        out = Path(results_dir or RESULTS_DIR)
        out.mkdir(parents=True, exist_ok=True)
        for path, text in ((out / f"{name}.json", json.dumps(payload, indent=2) + "\n"), (out / f"{name}.md", markdown)):
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text)
            tmp.replace(path)
            print("wrote", path)
    return payload
