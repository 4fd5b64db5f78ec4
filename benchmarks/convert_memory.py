"""Peak memory of ``zoo convert`` on a ~500 MB checkpoint, safetensors and pytorch_model.bin.

    python -m benchmarks.convert_memory [--repeats 1] [--keep]

Builds Data2VecTextForMaskedLM at the HF default (base) size with random weights, fp32,
and writes it twice into a temporary directory:

- ``safetensors/``: ``save_pretrained`` -> ``model.safetensors`` + ``config.json``
- ``bin/``: ``torch.save(model.state_dict(), "pytorch_model.bin")`` + ``config.json``

then runs ``/usr/bin/time -v python -m zoo convert SRC OUT`` on each as a subprocess and
reads "Maximum resident set size" (the peak RSS of the converter process), the wall time
and the exit status. Baselines: the peak RSS of ``python -c "import zoo, jax"`` and of
the same with the jax CPU backend started (``jax.devices()``), so the memory the
conversion itself adds (peak - baseline) is visible next to the checkpoint size.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import harness

DEFAULT_NAME = "convert_memory"
REPO_ROOT = Path(__file__).resolve().parent.parent
TIME_BIN = "/usr/bin/time"


def _mib(nbytes: float) -> float:
    return nbytes / 2**20


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def build_checkpoints(workdir: Path) -> dict[str, Path]:
    """Write the random base-size ForMaskedLM as safetensors and as pytorch_model.bin."""
    import torch
    import transformers

    config = transformers.Data2VecTextConfig()  # HF defaults = base size
    torch.manual_seed(0)
    model = transformers.Data2VecTextForMaskedLM(config).eval()
    st_dir, bin_dir = workdir / "safetensors", workdir / "bin"
    model.save_pretrained(st_dir)  # model.safetensors + config.json
    if not (st_dir / "model.safetensors").is_file():
        raise RuntimeError(f"save_pretrained wrote no model.safetensors in {st_dir}: {os.listdir(st_dir)}")
    bin_dir.mkdir()
    torch.save(model.state_dict(), bin_dir / "pytorch_model.bin")
    model.config.save_pretrained(bin_dir)
    del model
    gc.collect()
    return {"safetensors": st_dir, "pytorch_model.bin": bin_dir}


_FIELDS = {
    "max_rss_kib": r"Maximum resident set size \(kbytes\):\s*(\d+)",
    "exit_status": r"Exit status:\s*(\d+)",
    "user_s": r"User time \(seconds\):\s*([\d.]+)",
    "system_s": r"System time \(seconds\):\s*([\d.]+)",
    "elapsed": r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\):\s*([\d:.]+)",
}


def _elapsed_seconds(text: str) -> float:
    parts = [float(p) for p in text.split(":")]
    seconds = 0.0
    for p in parts:
        seconds = seconds * 60 + p
    return seconds


def time_v(cmd: list[str], timeout_s: float = 600.0) -> dict:
    """Run ``/usr/bin/time -v cmd``; peak RSS (MiB), wall/user/sys seconds, exit status."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.perf_counter()
    proc = subprocess.run([TIME_BIN, "-v", *cmd], capture_output=True, text=True, cwd=REPO_ROOT,
                          env=env, timeout=timeout_s)
    wall = time.perf_counter() - t0
    found = {k: re.search(rx, proc.stderr) for k, rx in _FIELDS.items()}
    if found["max_rss_kib"] is None:
        raise RuntimeError(f"no 'Maximum resident set size' in the output of {TIME_BIN} -v:\n{proc.stderr[-2000:]}")
    result = {
        "command": " ".join(cmd),
        "peak_rss_mib": int(found["max_rss_kib"].group(1)) / 1024,
        "exit_status": int(found["exit_status"].group(1)) if found["exit_status"] else proc.returncode,
        "wall_s": _elapsed_seconds(found["elapsed"].group(1)) if found["elapsed"] else wall,
        "user_s": float(found["user_s"].group(1)) if found["user_s"] else None,
        "system_s": float(found["system_s"].group(1)) if found["system_s"] else None,
    }
    if result["exit_status"] != 0:
        # keep the program's own output (time -v appends its report after it)
        result["stderr_tail"] = proc.stderr[-3000:]
        result["stdout_tail"] = proc.stdout[-2000:]
    return result


def measure(cmd: list[str], repeats: int) -> dict:
    """``time_v`` ``repeats`` times; the run with the highest peak RSS is reported."""
    runs = [time_v(cmd) for _ in range(repeats)]
    worst = max(runs, key=lambda r: r["peak_rss_mib"])
    if repeats > 1:
        worst = dict(worst, all_peak_rss_mib=[r["peak_rss_mib"] for r in runs],
                     all_wall_s=[r["wall_s"] for r in runs])
    return worst


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=1, help="runs per measurement (max peak RSS kept)")
    parser.add_argument("--dtypes", default="float32,bfloat16",
                        help="comma list of --dtype values for the safetensors conversion "
                             "(the .bin one always uses float32)")
    parser.add_argument("--workdir", default=None, help="where checkpoints go (default: a fresh temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoints and outputs")
    parser.add_argument("--name", default=None, help="results file stem")
    parser.add_argument("--no-write", action="store_true", help="print only, write no results files")
    args = parser.parse_args(argv)

    if not Path(TIME_BIN).is_file():
        parser.error(f"{TIME_BIN} is needed (GNU time; apt-get install time)")
    py = sys.executable
    help_check = subprocess.run([py, "-m", "zoo", "convert", "--help"], capture_output=True, text=True, cwd=REPO_ROOT)
    if help_check.returncode != 0:
        parser.error(f"`python -m zoo convert --help` fails:\n{help_check.stderr[-2000:]}")

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="zoo_convert_memory_"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"workdir {workdir}", flush=True)
    try:
        t0 = time.perf_counter()
        sources = build_checkpoints(workdir)
        print(f"checkpoints written in {time.perf_counter() - t0:.1f} s", flush=True)

        baselines = {
            "python -c 'import zoo, jax'": measure([py, "-c", "import zoo, jax"], args.repeats),
            "python -c 'import zoo.cli, jax; jax.devices()'": measure(
                [py, "-c", "import zoo.cli, jax; jax.devices()"], args.repeats),
        }
        for k, v in baselines.items():
            print(f"baseline {k}: peak RSS {v['peak_rss_mib']:.0f} MiB", flush=True)
        base_rss = max(v["peak_rss_mib"] for v in baselines.values())

        cases = [("safetensors", d) for d in args.dtypes.split(",") if d] + [("pytorch_model.bin", "float32")]
        rows = []
        with harness.LoadMonitor() as monitor:
            for fmt, dtype in cases:
                src = sources[fmt]
                out = workdir / f"out_{fmt.replace('.', '_')}_{dtype}"
                cmd = [py, "-m", "zoo", "convert", str(src), str(out), "--dtype", dtype]
                runs = []
                for _ in range(args.repeats):
                    shutil.rmtree(out, ignore_errors=True)
                    runs.append(time_v(cmd))
                r = max(runs, key=lambda x: x["peak_rss_mib"])
                ckpt_files = [p for p in src.iterdir() if p.name != "config.json"]
                ckpt_bytes = sum(p.stat().st_size for p in ckpt_files)
                row = {
                    "format": fmt, "dtype": dtype, "checkpoint": [p.name for p in ckpt_files],
                    "checkpoint_mib": _mib(ckpt_bytes),
                    "output_mib": _mib(dir_size(out)) if out.exists() else None,
                    "peak_rss_mib": r["peak_rss_mib"],
                    "net_rss_mib": r["peak_rss_mib"] - base_rss,
                    "peak_over_size": r["peak_rss_mib"] / _mib(ckpt_bytes),
                    "net_over_size": (r["peak_rss_mib"] - base_rss) / _mib(ckpt_bytes),
                    "wall_s": r["wall_s"], "user_s": r["user_s"], "system_s": r["system_s"],
                    "exit_status": r["exit_status"], "command": "python -m zoo convert SRC OUT --dtype " + dtype,
                }
                if args.repeats > 1:
                    row["all_peak_rss_mib"] = [x["peak_rss_mib"] for x in runs]
                    row["all_wall_s"] = [x["wall_s"] for x in runs]
                if r["exit_status"] != 0:
                    row["error"] = r.get("stderr_tail", "")
                    print(f"!! {fmt} {dtype}: exit {r['exit_status']}\n{row['error']}", flush=True)
                rows.append(row)
                print(f"{fmt} ({dtype}): {row['checkpoint_mib']:.0f} MiB checkpoint, peak RSS "
                      f"{row['peak_rss_mib']:.0f} MiB (net {row['net_rss_mib']:.0f}), {row['wall_s']:.1f} s, "
                      f"exit {row['exit_status']}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    machine = harness.machine_info("cpu")
    payload = {"benchmark": DEFAULT_NAME,
               "command": ("python -m benchmarks.convert_memory " + " ".join(argv if argv is not None else sys.argv[1:])).strip(),
               "model": "Data2VecTextForMaskedLM base (HF default config), random weights, fp32",
               "baselines": baselines, "baseline_rss_mib": base_rss, "conversions": rows,
               "machine": machine, "load": monitor.result}
    md = [
        "### `zoo convert` peak memory, Data2VecTextForMaskedLM base (fp32 checkpoint)", "",
        f"`{payload['command']}`", "",
        "| source format | --dtype | checkpoint MiB | output MiB | peak RSS MiB | net MiB (peak - baseline) "
        "| peak / size | net / size | wall s | exit |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out_mib = "" if r["output_mib"] is None else f"{r['output_mib']:.0f}"
        md.append(f"| {r['format']} | {r['dtype']} | {r['checkpoint_mib']:.0f} | {out_mib} | {r['peak_rss_mib']:.0f} "
                  f"| {r['net_rss_mib']:.0f} | {r['peak_over_size']:.2f} | {r['net_over_size']:.2f} "
                  f"| {r['wall_s']:.1f} | {r['exit_status']} |")
    md += ["", "| baseline | peak RSS MiB |", "|---|---:|"]
    md += [f"| `{k}` | {v['peak_rss_mib']:.0f} |" for k, v in baselines.items()]
    md += ["", f"net = peak RSS - {base_rss:.0f} MiB (the larger baseline: interpreter, zoo, jax and its CPU "
           "backend). Peak RSS is the converter process's maximum resident set size from "
           "`/usr/bin/time -v`; page cache of the memory-mapped checkpoint counts when its pages are touched.",
           "", harness.environment_block(machine, None, dict(monitor.result))]
    markdown = "\n".join(md)
    print()
    print(markdown)
    if not args.no_write:
        paths = harness.write_results(args.name or DEFAULT_NAME, payload, markdown)
        print("wrote", *paths)
    return payload


if __name__ == "__main__":
    main()
