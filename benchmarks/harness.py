"""A small, reusable timing harness for zoo-vs-HF-PyTorch benchmarks.

Every benchmark of every family uses the same pieces:

- :func:`setup_threads` gives both frameworks the same number of threads
  (``torch.set_num_threads(os.cpu_count())``; XLA is left at its default, which uses
  every core) and records what was set.
- :func:`select_device` picks ``cpu`` or ``gpu`` (gpu only when JAX's default backend is
  a GPU *and* ``torch.cuda.is_available()``).
- :func:`jax_compile` lowers and compiles a jitted function ahead of time and times the
  two steps; the compiled executable is what :func:`time_callable` then times, so
  compilation never leaks into the measured runs.
- :func:`time_callable` times a zero-argument callable: warm-up runs excluded, ``repeats``
  timed runs with ``time.perf_counter``, each run synchronised (``jax.block_until_ready``
  on the outputs, ``torch.cuda.synchronize()`` on GPU) and reported as median, min, mean
  and the inter-quartile range (IQR, q3 - q1), all in milliseconds.
- :func:`time_interleaved` does the same for several callables round-robin, so each
  sees the same machine conditions (preferred on shared/noisy machines).
- :func:`torch_callable` wraps a PyTorch call in ``torch.inference_mode()``.
- :class:`LoadMonitor` / :func:`wait_for_quiet` measure (and wait out) CPU use by other
  processes, so a run on a shared machine says whether its numbers are trustworthy.
- :func:`machine_info` records platform, CPU model, core count and library versions.
- :func:`write_results` writes ``benchmarks/results/<name>.json`` and ``<name>.md``;
  :func:`comparison_table` renders timings as markdown with
  ``speedup = other_median / zoo_median`` (> 1 means the zoo is faster).

Nothing here imports torch or jax at module import time except where a function needs
it, so the harness can also drive subprocess benchmarks (see ``convert_memory``).
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
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


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
    compile_s: float | None = None  # jax: lower + compile, measured apart from the runs
    lower_s: float | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default method) of sorted values."""
    if not sorted_values:
        raise ValueError("no values")
    pos = (len(sorted_values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(name: str, times_s: Sequence[float], warmup: int, **kwargs) -> Timing:
    ms = [t * 1e3 for t in times_s]
    s = sorted(ms)
    q1, q3 = _quantile(s, 0.25), _quantile(s, 0.75)
    return Timing(
        name=name, median_ms=statistics.median(s), min_ms=s[0], mean_ms=statistics.fmean(s),
        q1_ms=q1, q3_ms=q3, iqr_ms=q3 - q1, repeats=len(s), warmup=warmup, times_ms=ms, **kwargs,
    )


def block(x: Any) -> Any:
    """Wait for every jax array in ``x`` (no-op on anything else)."""
    try:
        import jax
    except ImportError:  # pragma: no cover - jax is a hard dependency of the zoo
        return x
    return jax.block_until_ready(x)


def time_callable(
    fn: Callable[[], Any],
    *,
    name: str,
    repeats: int = 20,
    warmup: int = 3,
    sync: Callable[[Any], Any] | None = block,
    **timing_kwargs,
) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then ``repeats`` timed ones.

    ``sync(out)`` runs inside the timed region after every call so asynchronous work
    (jax dispatch, CUDA kernels) is counted: :func:`block` for jax, :func:`torch_sync`
    for torch on GPU, ``None`` for synchronous code.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    out = None
    for _ in range(warmup):
        out = fn()
        if sync is not None:
            sync(out)
    del out
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        if sync is not None:
            sync(out)
        times.append(time.perf_counter() - t0)
        del out
    return summarize(name, times, warmup, **timing_kwargs)


def time_interleaved(
    calls: dict[str, Callable[[], Any]],
    *,
    repeats: int = 20,
    warmup: int = 3,
    syncs: dict[str, Callable[[Any], Any] | None] | None = None,
    timing_kwargs: dict[str, dict] | None = None,
) -> list[Timing]:
    """Time several callables round-robin: ``warmup`` untimed rounds, then ``repeats``
    rounds in which every callable runs once (the starting one rotates each round).

    On a shared or thermally drifting machine this exposes every implementation to the
    same conditions, which timing them one block after the other does not.
    ``syncs[name]`` defaults to :func:`block`.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    names = list(calls)
    syncs = syncs or {}
    timing_kwargs = timing_kwargs or {}
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
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


def jax_compile(fn: Callable, *args, static_argnames=(), **kwargs):
    """``(compiled, lower_s, compile_s)``: ``jax.jit(fn).lower(*args, **kwargs).compile()``.

    Tracing + lowering and XLA compilation are timed separately; call ``compiled`` with
    the same (dynamic) arguments.
    """
    import jax

    jitted = jax.jit(fn, static_argnames=static_argnames)
    t0 = time.perf_counter()
    lowered = jitted.lower(*args, **kwargs)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    return compiled, t1 - t0, t2 - t1


def torch_sync(device: str) -> Callable[[Any], Any] | None:
    """The ``sync`` for :func:`time_callable` of a torch call on ``device``."""
    if device != "gpu":
        return None
    import torch

    def _sync(out):
        torch.cuda.synchronize()
        return out

    return _sync


def torch_callable(fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` run under ``torch.inference_mode()``."""
    import torch

    def _call():
        with torch.inference_mode():
            return fn()

    return _call


# ------------------------------------------------------------ machine load
def _proc_stat_seconds() -> tuple[float, float, float] | None:
    """(busy, steal, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if fields[0] != "cpu":
        return None
    v = [int(x) for x in fields[1:]]
    v += [0] * (8 - len(v))
    user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    busy = user + nice + system + irq + softirq
    return busy / hz, steal / hz, (busy + idle + iowait + steal) / hz


def _own_cpu_seconds() -> float:
    """CPU seconds of this process (all threads) and of its waited-for children."""
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


class LoadMonitor:
    """Measures how busy the machine was with *other* work during a ``with`` block.

    ``result`` after the block: ``foreign_cpu_fraction`` (CPU used by other processes,
    as a fraction of all cores over the block's wall time), ``steal_fraction`` (time
    the hypervisor gave the cores to other guests) and the load average. Timings taken
    while either is more than a few percent are not comparable with quiet-machine runs.
    """

    def __init__(self):
        self.result: dict[str, Any] = {}

    def __enter__(self):
        self._t0 = time.perf_counter()
        self._own0 = _own_cpu_seconds()
        self._stat0 = _proc_stat_seconds()
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self._t0
        own = _own_cpu_seconds() - self._own0
        stat1 = _proc_stat_seconds()
        ncpu = os.cpu_count() or 1
        self.result = {"wall_s": wall, "own_cpu_s": own, "loadavg": _loadavg()}
        if self._stat0 and stat1 and wall > 0:
            busy = stat1[0] - self._stat0[0]
            steal = stat1[1] - self._stat0[1]
            self.result["foreign_cpu_fraction"] = max(0.0, (busy - own) / (wall * ncpu))
            self.result["steal_fraction"] = max(0.0, steal / (wall * ncpu))
        return False


def _loadavg() -> list[float] | None:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return None


def foreign_load(window_s: float = 2.0) -> float | None:
    """Fraction of all cores used by other processes over the next ``window_s`` seconds."""
    with LoadMonitor() as m:
        time.sleep(window_s)
    return m.result.get("foreign_cpu_fraction")


def wait_for_quiet(threshold: float = 0.10, window_s: float = 3.0, timeout_s: float = 600.0,
                   verbose: bool = True) -> dict:
    """Wait (up to ``timeout_s``) until other processes use < ``threshold`` of the cores.

    Returns ``{"waited_s", "foreign_cpu_fraction", "quiet"}``; ``quiet`` is False when
    the timeout ran out (the benchmark then goes on and its load record says so).
    """
    t0 = time.perf_counter()
    last_print = -1e9
    while True:
        load = foreign_load(window_s)
        waited = time.perf_counter() - t0
        if load is None or load < threshold:
            return {"waited_s": waited, "foreign_cpu_fraction": load, "quiet": True}
        if waited >= timeout_s:
            if verbose:
                print(f"machine still busy ({load:.0%} of the cores used by others) after {waited:.0f} s; "
                      "going on, results will be noisy", flush=True)
            return {"waited_s": waited, "foreign_cpu_fraction": load, "quiet": False}
        if verbose and waited - last_print >= 30:
            last_print = waited
            print(f"waiting for a quiet machine: others use {load:.0%} of the cores "
                  f"({waited:.0f} s of at most {timeout_s:.0f} s)", flush=True)


def quietest_attempt(run: Callable[[], Any], *, attempts: int, max_load: float, quiet_wait: float = 0.0,
                     describe: Callable[[Any], str] | None = None) -> tuple[Any, dict]:
    """On a shared machine: ``run()`` (a timing) up to ``attempts`` times, each after waiting
    up to ``quiet_wait`` s for a quiet machine, until other processes used at most
    ``max_load`` of the cores during it; returns ``(result, load record)`` of the quietest
    attempt. Each attempt prints one line (its load, then ``describe(result)`` if given)."""
    best = None
    for attempt in range(1, attempts + 1):
        quiet = wait_for_quiet(timeout_s=quiet_wait) if quiet_wait > 0 else None
        with LoadMonitor() as monitor:
            result = run()
        load = dict(monitor.result, quiet_wait=quiet, attempt=attempt)
        print(f"  attempt {attempt}: " + load_note(load) + (f"; {describe(result)}" if describe else ""), flush=True)
        foreign = load.get("foreign_cpu_fraction", 0.0)
        if best is None or foreign < best[1].get("foreign_cpu_fraction", 0.0):
            best = (result, load)
        if foreign <= max_load:
            break
    return best


def load_note(load: dict | None, label: str = "load during timing") -> str:
    """One markdown line about machine load during the timing (empty when unknown)."""
    if not load or "foreign_cpu_fraction" not in load:
        return ""
    f, st = load["foreign_cpu_fraction"], load.get("steal_fraction", 0.0)
    flag = "" if f < 0.05 and st < 0.05 else " **(the machine was busy: these timings are noisy)**"
    return (f"- {label}: other processes used {f:.1%} of the cores, hypervisor steal {st:.1%}, "
            f"loadavg {load.get('loadavg')}{flag}")


# -------------------------------------------------------------- environment
def setup_threads(num_threads: int | None = None) -> dict:
    """Same thread count for both frameworks; returns what is in effect.

    torch gets ``os.cpu_count()`` intra-op threads (unless ``num_threads`` is given);
    XLA's CPU client is left at its default (one worker per core), and its flags
    (``XLA_FLAGS``) are recorded as they are.
    """
    info: dict[str, Any] = {
        "os_cpu_count": os.cpu_count(),
        "sched_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"),
        "xla_threads": "default (all cores)",
    }
    try:
        import torch
    except ImportError:
        return info
    torch.set_num_threads(num_threads or os.cpu_count() or 1)
    info["torch_num_threads"] = torch.get_num_threads()
    info["torch_num_interop_threads"] = torch.get_num_interop_threads()
    return info


def select_device(requested: str = "auto") -> str:
    """``"gpu"`` when JAX runs on a GPU and torch sees CUDA, else ``"cpu"``.

    ``requested="gpu"`` raises if that is not possible; ``"cpu"`` always gives cpu
    (JAX then still uses its default backend, so only ask for cpu on a CPU machine or
    with ``JAX_PLATFORMS=cpu``).
    """
    if requested not in ("auto", "cpu", "gpu"):
        raise ValueError(f"device must be auto, cpu or gpu, got {requested!r}")
    if requested == "cpu":
        return "cpu"
    import jax

    gpu_ok = jax.default_backend() == "gpu"
    try:
        import torch

        gpu_ok = gpu_ok and torch.cuda.is_available()
    except ImportError:
        gpu_ok = False
    if requested == "gpu" and not gpu_ok:
        raise RuntimeError("--device gpu needs jax on a GPU backend and torch.cuda.is_available()")
    return "gpu" if gpu_ok else "cpu"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return sorted(f for f in flags if f.startswith(("avx", "fma", "amx", "sse4")))
    except OSError:
        pass
    return []


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=10)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True,
                               cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info(device: str = "cpu") -> dict:
    """Platform, CPU, memory, accelerators and library versions."""
    info: dict[str, Any] = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_model": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "os_cpu_count": os.cpu_count(),
        "device": device,
        "git_commit": _git_commit(),
        "versions": {p: _version(p) for p in ("jax", "jaxlib", "flax", "torch", "transformers", "numpy")},
    }
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages * page_size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    if "jax" in sys.modules:
        import jax

        info["jax_backend"] = jax.default_backend()
        info["jax_devices"] = [str(d) for d in jax.devices()]
    if device == "gpu" and "torch" in sys.modules:
        import torch

        info["torch_cuda_device"] = torch.cuda.get_device_name(0)
    return info


# ------------------------------------------------------------------- output
def add_common_args(parser: argparse.ArgumentParser, *, repeats: int = 20, warmup: int = 3) -> None:
    parser.add_argument("--repeats", type=int, default=repeats, help="timed runs per implementation")
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed runs before timing")
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                        help="gpu when jax is on a GPU and torch has CUDA (auto), or force one")
    parser.add_argument("--name", default=None, help="results file stem (default: the benchmark's)")
    parser.add_argument("--no-write", action="store_true", help="print only, write no results files")
    parser.add_argument("--quiet-wait", type=float, default=300.0,
                        help="seconds to wait at most for other processes to leave the CPUs (0: do not wait)")


def comparison_table(timings: Sequence[Timing], reference: str) -> str:
    """Markdown table of ``timings``; ``speedup = row_median / reference_median``.

    With the zoo as ``reference``, the speedup column of a PyTorch row reads "how many
    times faster the zoo is than this implementation" (> 1: zoo faster).
    """
    ref = next((t for t in timings if t.name == reference), None)
    if ref is None:
        raise ValueError(f"no timing named {reference!r} among {[t.name for t in timings]}")
    lines = [
        f"| implementation | median ms | min ms | IQR ms | compile s | speedup of {reference} (this / {reference}) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for t in timings:
        compile_s = "" if t.compile_s is None else f"{t.compile_s:.2f}"
        speedup = "1.00 (reference)" if t is ref else f"{t.median_ms / ref.median_ms:.2f}x"
        lines.append(f"| {t.name} | {t.median_ms:.1f} | {t.min_ms:.1f} | {t.iqr_ms:.1f} | {compile_s} | {speedup} |")
    return "\n".join(lines)


def environment_block(machine: dict, threads: dict | None = None, load: dict | None = None) -> str:
    """A short markdown description of where the numbers were measured."""
    v = machine.get("versions", {})
    lines = [
        f"- machine: {machine.get('cpu_model')} ({machine.get('os_cpu_count')} logical cores, "
        f"{machine.get('memory_gib', '?')} GiB), {machine.get('platform')}, device `{machine.get('device')}`",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
        f"- date (UTC): {machine.get('date_utc')}, git {machine.get('git_commit')}",
    ]
    if threads:
        lines.append(
            f"- threads: torch {threads.get('torch_num_threads')} intra-op / "
            f"{threads.get('torch_num_interop_threads')} inter-op; XLA {threads.get('xla_threads')}; "
            f"XLA_FLAGS=`{threads.get('XLA_FLAGS') or '(unset)'}`"
        )
    note = load_note(load)
    if note:
        lines.append(note)
    return "\n".join(lines)


def _jsonable(x: Any) -> Any:
    if isinstance(x, Timing):
        return x.to_dict()
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return dataclasses.asdict(x)
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "item") and callable(x.item):  # numpy / jax scalars
        try:
            return x.item()
        except (TypeError, ValueError):
            pass
    return x


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def finish_report(name: str, payload: dict, md: list[str], *, write: bool) -> dict:
    """Append the machine / threads / load lines (``payload``'s ``machine``, ``threads``,
    ``loadavg_start``, ``loadavg_end``, ``wall_s``) to ``md``, print the markdown and, with
    ``write``, save it with the payload (:func:`write_results`). Returns ``payload``."""
    threads = payload["threads"]
    md = list(md) + [
        environment_block(payload["machine"], threads),
        f"- torch.set_num_threads({threads.get('torch_num_threads')}); {available_cores()} cores available",
        f"- os.getloadavg() at start {payload['loadavg_start']}, at end {payload['loadavg_end']}; "
        f"whole run {payload['wall_s']:.0f} s"]
    markdown = "\n".join(md)
    print()
    print(markdown)
    if write:
        print("wrote", *write_results(name, payload, markdown))
    return payload


def write_results(name: str, payload: dict, markdown: str, results_dir: Path | None = None) -> tuple[Path, Path]:
    """Write ``<results_dir>/<name>.json`` (payload) and ``<name>.md`` (markdown).

    Files are written to a temporary name and renamed, so a crash leaves no half file.
    """
    results_dir = Path(results_dir or RESULTS_DIR)
    results_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = results_dir / f"{name}.json", results_dir / f"{name}.md"
    for path, text in ((json_path, json.dumps(_jsonable(payload), indent=2) + "\n"),
                       (md_path, markdown.rstrip() + "\n")):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return json_path, md_path
