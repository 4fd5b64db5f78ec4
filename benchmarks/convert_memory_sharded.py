"""Peak memory of ``zoo convert`` and ``from_pretrained`` on a multi-GB sharded bf16 IDEFICS checkpoint.

    python -m benchmarks.convert_memory_sharded [--tiny] [--shard-mb 500] [--keep] [--no-write]

1. Generates a synthetic Hugging Face ``IdeficsForVisionText2Text`` checkpoint (default
   ~3 GB in bfloat16; ``--tiny``: a few MB in seconds) in a temporary directory:
   ``config.json`` plus ``model-0000i-of-0000N.safetensors`` shards of about
   ``--shard-mb`` each and ``model.safetensors.index.json``. Tensor names and shapes come
   from the HF model built on the *meta* device (nothing allocated); the shards are
   written one at a time with the zoo's own writer (``converters.writers.save_safetensors``),
   so only one shard's random bf16 tensors are ever in memory. The generator runs in a
   subprocess of its own under ``/usr/bin/time -v``, so its peak RSS shows that too.
2. Runs ``/usr/bin/time -v python -m zoo convert SRC OUT`` (the CLI keeps the checkpoint's
   dtype unless ``--dtype`` is given) and records peak RSS, wall time, checkpoint size, largest shard
   and output size; then checks that every floating tensor of the output is bf16 and
   compares a few tensors bit for bit with the source (Linear weights transposed, the
   patch-embedding conv permuted), reading both with the ``safetensors`` package.
3. Runs ``zoo.pretrained.from_pretrained(PATH, param_dtype=None)`` (JAX on the CPU, so the
   params land in host memory) in a subprocess the same way, once from the HF sharded
   checkpoint (converted on the fly) and once from the converted zoo directory.

Peak RSS is compared with (output size + largest shard), the budget the conversion is
meant to stay within, and with the checkpoint size, after subtracting the import
baseline (``python -c "import zoo.pretrained, jax; jax.devices()"``), as
``benchmarks.convert_memory`` does (its ``time_v`` / ``dir_size`` helpers are reused).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks import harness
from benchmarks.convert_memory import TIME_BIN, dir_size, time_v

DEFAULT_NAME = "convert_memory_sharded"
ARCHITECTURE = "IdeficsForVisionText2Text"

# ~1.59 B parameters: 3.17 GB (2.95 GiB) in bfloat16.
PRESETS = {
    "default": dict(
        vocab_size=32000, additional_vocab_size=2, hidden_size=2048, intermediate_size=5632,
        num_hidden_layers=20, num_attention_heads=16, cross_layer_interval=4, use_resampler=True,
        vision_config=dict(embed_dim=1024, image_size=224, patch_size=14, num_hidden_layers=12,
                           num_attention_heads=16, intermediate_size=4096),
        perceiver_config=dict(use_resampler=True, resampler_n_latents=64, resampler_depth=3,
                              resampler_n_heads=16, resampler_head_dim=64),
    ),
    # ~4.3 M parameters (8.7 MB in bf16): the vocabulary keeps its real size, so the two
    # 4 MB embedding matrices are bigger than a --tiny shard and get shards of their own.
    "tiny": dict(
        vocab_size=32000, additional_vocab_size=2, hidden_size=64, intermediate_size=128,
        num_hidden_layers=4, num_attention_heads=4, cross_layer_interval=2, use_resampler=True,
        vision_config=dict(embed_dim=32, image_size=28, patch_size=14, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=64),
        perceiver_config=dict(use_resampler=True, resampler_n_latents=4, resampler_depth=2,
                              resampler_n_heads=2, resampler_head_dim=8),
    ),
}
TINY_SHARD_MB = 1.0

# Tensors compared bit for bit between the source and the converted output (those present).
SPOT_CHECK_KEYS = (
    "model.embed_tokens.weight",                                   # embedding, as is
    "model.embed_tokens.additional_embedding.weight",
    "model.vision_model.embeddings.patch_embedding.weight",        # conv [o,i,kh,kw] -> [kh,kw,i,o]
    "model.vision_model.encoder.layers.0.self_attn.q_proj.weight",  # Linear -> kernel.T
    "model.perceiver_resampler.latents",
    "model.layers.1.mlp.down_proj.weight",
    "model.gated_cross_attn_layers.0.cross_attn.k_proj.weight",
    "model.gated_cross_attn_layers.0.alpha_cross_attn",
    "model.norm.weight",                                            # RMSNorm weight, as is
    "lm_head.weight",
)


def _mib(nbytes: float) -> float:
    return nbytes / 2**20


# ------------------------------------------------------------------- generator
def hf_config(preset: str):
    import transformers

    config = transformers.IdeficsConfig(**PRESETS[preset])
    config.architectures = [ARCHITECTURE]
    config.dtype = "bfloat16"
    return config


def tensor_specs(config) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor HF saves, in state-dict order, from a meta-device model."""
    import torch
    import transformers

    with torch.device("meta"):
        model = transformers.IdeficsForVisionText2Text(config)
    specs = [(name, tuple(t.shape)) for name, t in model.state_dict().items()]
    for name, t in model.state_dict().items():
        if not t.is_floating_point():
            raise RuntimeError(f"unexpected non-floating tensor {name} ({t.dtype}) in the HF state dict")
    del model
    return specs


def plan_shards(specs, max_shard_bytes: int, itemsize: int = 2) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Greedy split in state-dict order, like HF's ``save_pretrained(max_shard_size=...)``:
    a shard is closed when the next tensor would push it past ``max_shard_bytes`` (a bigger
    tensor gets a shard of its own)."""
    shards, size = [[]], 0
    for name, shape in specs:
        nbytes = math.prod(shape) * itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    return shards


def random_bf16(rng, shape):
    """N(0, 0.02^2) values in bfloat16 (drawn in float32, one tensor at a time)."""
    import ml_dtypes
    import numpy as np

    x = rng.standard_normal(shape, dtype=np.float32)
    x *= 0.02
    return x.astype(ml_dtypes.bfloat16)


def generate(directory: Path, preset: str, shard_mb: float, seed: int = 0) -> dict:
    """Write config.json, the bf16 shards and the index into ``directory``; one shard in memory at a time."""
    import gc

    import numpy as np

    from converters.writers import save_safetensors

    directory.mkdir(parents=True, exist_ok=True)
    config = hf_config(preset)
    specs = tensor_specs(config)
    shards = plan_shards(specs, int(shard_mb * 2**20))
    config.save_pretrained(directory)
    weight_map, total = {}, 0
    for i, group in enumerate(shards, 1):
        shard_name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for name, shape in group:
            rng = np.random.default_rng([seed, len(weight_map) + len(tensors)])
            tensors[name] = random_bf16(rng, shape)
        save_safetensors(tensors, directory / shard_name, metadata={"format": "pt"})
        total += sum(t.nbytes for t in tensors.values())
        weight_map.update(dict.fromkeys(tensors, shard_name))
        del tensors
        gc.collect()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    tmp = directory / "model.safetensors.index.json.tmp"
    tmp.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    tmp.replace(directory / "model.safetensors.index.json")
    return {"tensors": len(specs), "parameters": sum(math.prod(s) for _, s in specs), "shards": len(shards),
            "total_bytes": total}


# ------------------------------------------------------------------ checks
def output_dtypes(out: Path) -> dict[str, int]:
    """dtype name -> number of tensors in the converted ``flax_model.safetensors`` (headers only)."""
    from collections import Counter

    from converters.readers import open_checkpoint

    with open_checkpoint(out / "flax_model.safetensors") as ckpt:
        return dict(Counter(str(ckpt.dtype(k)) for k in ckpt.keys()))


def spot_check(src: Path, out: Path) -> list[dict]:
    """Compare a few tensors bit for bit (as uint16) between the HF source and the zoo output.

    Both files are read with the ``safetensors`` package (numpy framework, bfloat16 from
    ml_dtypes), not with the zoo's readers; the Flax path of each key comes from the
    converter's key rules (``torch_to_flax_path`` with the IDEFICS key table), the expected
    layout is spelled out here: 2-d Linear weights transposed, the 4-d patch-embedding conv
    ``[o, i, kh, kw] -> [kh, kw, i, o]``, everything else as stored.
    """
    import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, for safetensors' numpy framework)
    import numpy as np
    from safetensors import safe_open

    from converters.mapping import torch_to_flax_path
    from zoo.registry import get_family

    table = get_family("idefics").key_table
    weight_map = json.loads((src / "model.safetensors.index.json").read_text())["weight_map"]
    rows = []
    with safe_open(str(out / "flax_model.safetensors"), framework="np") as fo:
        out_keys = set(fo.keys())
        for key in SPOT_CHECK_KEYS:
            if key not in weight_map:
                continue
            with safe_open(str(src / weight_map[key]), framework="np") as fs:
                ref = fs.get_tensor(key)
            path = torch_to_flax_path(key, table, out_keys)
            if path not in out_keys:
                rows.append({"key": key, "path": path, "bit_exact": False, "error": "not in the output"})
                continue
            got = fo.get_tensor(path)
            if path.endswith("/kernel"):
                expected = ref.transpose(2, 3, 1, 0) if ref.ndim == 4 else ref.T
            else:
                expected = ref
            same = (got.dtype.name == ref.dtype.name == "bfloat16" and got.shape == expected.shape
                    and np.array_equal(got.view(np.uint16), np.ascontiguousarray(expected).view(np.uint16)))
            rows.append({"key": key, "path": path, "source_shape": list(ref.shape), "output_shape": list(got.shape),
                         "dtype": got.dtype.name, "bit_exact": bool(same)})
    return rows


class RssTrace:
    """Samples, every ``interval_s`` seconds in a thread, the RSS of the python processes whose
    command line contains ``match`` (the step's subprocess; /usr/bin/time itself excluded),
    to show *when* a step holds its memory. ``samples``: ``[(seconds since start, MiB)]``."""

    def __init__(self, match: str, interval_s: float = 0.25):
        import threading

        self.match, self.interval_s = match.encode(), interval_s
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss_mib(self) -> float | None:
        total = None
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes()
                if self.match not in cmdline or cmdline.startswith(TIME_BIN.encode()):
                    continue
                for line in (proc / "status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total = (total or 0.0) + int(line.split()[1]) / 1024
            except OSError:
                continue
        return total

    def _run(self):
        t0 = time.perf_counter()
        while not self._stop.wait(self.interval_s):
            rss = self._rss_mib()
            if rss is not None:
                self.samples.append((round(time.perf_counter() - t0, 2), round(rss, 1)))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False


def traced(match: str, fn, *args):
    """``fn(*args)`` (a ``time_v`` run, a dict) with ``rss_trace`` added: the sampled RSS of its process."""
    with RssTrace(match) as trace:
        result = fn(*args)
    return {**result, "rss_trace": trace.samples}


def rss_profile(samples, points=(0.2, 0.4, 0.6, 0.8, 1.0)) -> str:
    """``"a / b / c / d / e"``: the sampled RSS (MiB) at those fractions of the sampled time."""
    if not samples:
        return "no samples"
    end = samples[-1][0]
    picked = [next(rss for t, rss in samples if t >= f * end) for f in points]
    return " / ".join(f"{v:.0f}" for v in picked) + f" (max sampled {max(v for _, v in samples):.0f}, {end:.1f} s)"


_LOAD_SNIPPET = """
import json, sys
from collections import Counter
import jax
from zoo import pretrained
module, params = pretrained.from_pretrained(sys.argv[1], param_dtype=None)
leaves = jax.tree_util.tree_leaves(params)
jax.block_until_ready(leaves)
json.dump({"dtypes": dict(Counter(str(x.dtype) for x in leaves)), "leaves": len(leaves),
           "parameters": sum(int(x.size) for x in leaves), "nbytes": sum(int(x.nbytes) for x in leaves),
           "backend": jax.default_backend(), "module": type(module).__name__}, open(sys.argv[2], "w"))
"""


# ------------------------------------------------------------------- main
def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a ~9 MB checkpoint with ~1 MB shards (smoke test)")
    parser.add_argument("--shard-mb", type=float, default=None,
                        help=f"max shard size in MiB (default 500, {TINY_SHARD_MB} with --tiny)")
    parser.add_argument("--workdir", default=None, help="where checkpoints go (default: a fresh temp dir in /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoints and outputs")
    parser.add_argument("--skip-load", action="store_true", help="do not measure from_pretrained")
    parser.add_argument("--name", default=None, help="results file stem")
    parser.add_argument("--no-write", action="store_true", help="print only, write no results files")
    parser.add_argument("--generate-only", metavar="DIR", help=argparse.SUPPRESS)  # the generator subprocess
    args = parser.parse_args(argv)
    preset = "tiny" if args.tiny else "default"
    shard_mb = args.shard_mb or (TINY_SHARD_MB if args.tiny else 500.0)

    if args.generate_only:
        info = generate(Path(args.generate_only), preset, shard_mb)
        print(json.dumps(info))
        return info

    if not Path(TIME_BIN).is_file():
        parser.error(f"{TIME_BIN} is needed (GNU time; apt-get install time)")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # time_v's subprocesses inherit it: params in host memory
    py = sys.executable
    parent = Path(args.workdir).parent if args.workdir else Path(tempfile.gettempdir())
    free = shutil.disk_usage(parent).free
    need = 1e8 if args.tiny else 2 * 3.3e9 + 1e9  # checkpoint + bf16 output + slack
    if free < need:
        parser.error(f"{parent}: {free / 1e9:.1f} GB free, need about {need / 1e9:.1f} GB")
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="zoo_convert_sharded_"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"workdir {workdir} ({free / 2**30:.0f} GiB free)", flush=True)
    src, out = workdir / "hf_idefics_bf16", workdir / "zoo_idefics_bf16"
    failures = []
    try:
        # 1. the synthetic checkpoint, in a subprocess of its own, next to the import baselines
        #    (peak RSS is per process, so running them side by side changes none of them)
        gen_cmd = [py, "-m", "benchmarks.convert_memory_sharded", "--generate-only", str(src), "--shard-mb", str(shard_mb)]
        gen_cmd += ["--tiny"] if args.tiny else []
        baseline_cmds = {
            "python -c 'import zoo.pretrained, jax; jax.devices()'": [py, "-c", "import zoo.pretrained, jax; jax.devices()"],
        }
        with ThreadPoolExecutor(1 + len(baseline_cmds)) as pool:
            gen_future = pool.submit(time_v, gen_cmd, 1800)
            base_futures = {k: pool.submit(time_v, c) for k, c in baseline_cmds.items()}
            gen = gen_future.result()
            baselines = {k: f.result() for k, f in base_futures.items()}
        if gen["exit_status"] != 0:
            raise RuntimeError(f"generating the checkpoint failed:\n{gen.get('stderr_tail', '')}")
        base_rss = max(v["peak_rss_mib"] for v in baselines.values())
        for k, v in baselines.items():
            print(f"baseline {k}: peak RSS {v['peak_rss_mib']:.0f} MiB", flush=True)
        from converters.readers import open_checkpoint

        shard_files = sorted(src.glob("model-*-of-*.safetensors"))
        with open_checkpoint(src) as ckpt:
            parameters = sum(math.prod(ckpt.shape(k)) for k in ckpt.keys())
            n_tensors = len(ckpt)
            src_dtypes = sorted({str(ckpt.dtype(k)) for k in ckpt.keys()})
        checkpoint = {
            "preset": preset, "config": PRESETS[preset], "parameters": parameters, "tensors": n_tensors,
            "dtypes": src_dtypes, "shards": len(shard_files), "shard_mb_limit": shard_mb,
            "checkpoint_mib": _mib(sum(p.stat().st_size for p in shard_files)),
            "largest_shard_mib": _mib(max(p.stat().st_size for p in shard_files)),
            "generator": {"peak_rss_mib": gen["peak_rss_mib"], "wall_s": gen["wall_s"]},
        }
        print(f"checkpoint: {parameters:,} parameters, {n_tensors} tensors {src_dtypes}, {len(shard_files)} shards, "
              f"{checkpoint['checkpoint_mib']:.0f} MiB (largest shard {checkpoint['largest_shard_mib']:.0f} MiB); "
              f"generator peak RSS {gen['peak_rss_mib']:.0f} MiB, {gen['wall_s']:.1f} s", flush=True)

        def load(label: str, path: Path) -> dict:
            report = workdir / f"load_{path.name}.json"
            r = traced(str(report), time_v, [py, "-c", _LOAD_SNIPPET, str(path), str(report)], 1800)
            loaded = json.loads(report.read_text()) if report.exists() else {}
            return {"step": "from_pretrained(PATH, param_dtype=None)", "source": label, **r,
                    "loaded": loaded, "output_dtypes": loaded.get("dtypes", {})}

        # --tiny runs the independent steps side by side (smoke-test speed: the load from the HF
        # checkpoint next to the conversion, the spot check next to the load of the output); the
        # full run measures one process at a time, so their memory and wall times do not mix.
        spots = []
        with harness.LoadMonitor() as monitor, ThreadPoolExecutor(2 if args.tiny else 1) as pool:
            # 2. zoo convert, keeping bf16
            conv_future = pool.submit(
                traced, f"convert\x00{src}\x00", time_v,
                [py, "-m", "zoo", "convert", str(src), str(out)], 1800)
            # 3. from_pretrained into JAX host memory, from the HF shards and from the converted directory
            load_src = None if args.skip_load else pool.submit(load, "hf sharded (converted on the fly)", src)
            conv = conv_future.result()
            out_mib = _mib(dir_size(out)) if out.exists() else None
            rows = [{"step": "zoo convert SRC OUT", "source": "hf sharded", **conv,
                     "output_mib": out_mib, "output_dtypes": output_dtypes(out) if out.exists() else {}}]
            load_out = None if args.skip_load or not out.exists() else pool.submit(load, "zoo dir (converted)", out)
            if args.tiny and out.exists():
                spots = spot_check(src, out)
            rows += [f.result() for f in (load_src, load_out) if f is not None]
        if not args.tiny and out.exists():
            spots = spot_check(src, out)
        for r in rows:
            if r["exit_status"] != 0:
                failures.append(f"{r['step']} ({r['source']}) exited {r['exit_status']}: "
                                f"{r.get('stderr_tail', '')[-1500:]}")
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    ckpt_mib, shard_mib = checkpoint["checkpoint_mib"], checkpoint["largest_shard_mib"]
    convert_row = rows[0]
    budget_mib = (convert_row["output_mib"] or ckpt_mib) + shard_mib
    for r in rows:
        r["net_rss_mib"] = r["peak_rss_mib"] - base_rss
        r["peak_over_budget"] = r["peak_rss_mib"] / budget_mib
        r["net_over_budget"] = r["net_rss_mib"] / budget_mib
        r["peak_over_checkpoint"] = r["peak_rss_mib"] / ckpt_mib
        r["net_over_checkpoint"] = r["net_rss_mib"] / ckpt_mib
        r["bf16_kept"] = bool(r["output_dtypes"]) and set(r["output_dtypes"]) == {"bfloat16"}
        if not r["bf16_kept"] and r["exit_status"] == 0:
            failures.append(f"{r['step']} ({r['source']}): dtypes {r['output_dtypes']}, expected only bfloat16")
    if not spots or not all(s["bit_exact"] for s in spots):
        failures.append(f"spot check failed: {[s for s in spots if not s['bit_exact']] or 'nothing compared'}")
    bf16_kept = all(r["bf16_kept"] for r in rows)

    machine = harness.machine_info("cpu")
    command = ("python -m benchmarks.convert_memory_sharded " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    payload = {"benchmark": DEFAULT_NAME, "command": command,
               "model": f"{ARCHITECTURE}, synthetic random bf16 weights ({preset} preset)",
               "checkpoint": checkpoint, "budget_mib": budget_mib, "baselines": baselines,
               "baseline_rss_mib": base_rss, "runs": rows, "spot_check": spots, "bf16_kept": bf16_kept,
               "failures": failures, "machine": machine, "load": monitor.result}
    md = [
        f"### `zoo convert` / `from_pretrained` peak memory, sharded bf16 IDEFICS ({preset})", "",
        f"`{command}`", "",
        f"Checkpoint: {ARCHITECTURE}, {parameters:,} parameters ({n_tensors} tensors, all bfloat16), "
        f"{len(shard_files)} shards of <= {shard_mb:g} MiB, {ckpt_mib:.0f} MiB in all, largest shard "
        f"{shard_mib:.0f} MiB; written by a generator that peaked at {gen['peak_rss_mib']:.0f} MiB RSS "
        f"in {gen['wall_s']:.0f} s. Budget = output + largest shard = {budget_mib:.0f} MiB.", "",
        "| step | source | peak RSS MiB | net MiB (peak - baseline) | peak / budget | net / budget "
        "| peak / checkpoint | net / checkpoint | output MiB | dtypes | wall s | exit |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        out_cell = "" if r.get("output_mib") is None else f"{r['output_mib']:.0f}"
        md.append(f"| `{r['step']}` | {r['source']} | {r['peak_rss_mib']:.0f} | {r['net_rss_mib']:.0f} "
                  f"| {r['peak_over_budget']:.2f} | {r['net_over_budget']:.2f} | {r['peak_over_checkpoint']:.2f} "
                  f"| {r['net_over_checkpoint']:.2f} | {out_cell} | {r['output_dtypes']} | {r['wall_s']:.1f} "
                  f"| {r['exit_status']} |")
    md += ["", "RSS over each run (sampled every 0.25 s; MiB at 20/40/60/80/100 % of the sampled time):", ""]
    md += [f"- `{r['step']}` ({r['source']}): {rss_profile(r.get('rss_trace', []))}" for r in rows]
    md += ["", "| baseline | peak RSS MiB |", "|---|---:|"]
    md += [f"| `{k}` | {v['peak_rss_mib']:.0f} |" for k, v in baselines.items()]
    md += ["", f"Spot check (source vs converted, bit for bit): "
           f"{sum(s['bit_exact'] for s in spots)}/{len(spots)} tensors equal "
           f"({', '.join(s['key'] for s in spots)}). bf16 kept: {bf16_kept}.",
           "", f"net = peak RSS - {base_rss:.0f} MiB (the baseline: interpreter, zoo, flax, jax and its CPU backend). Peak RSS is the process's maximum "
           "resident set size from `/usr/bin/time -v`; `from_pretrained` ran with `JAX_PLATFORMS=cpu`, so "
           "the params are in host memory.",
           "", harness.environment_block(machine, None, dict(monitor.result))]
    if failures:
        md += ["", "**Failures:**", *[f"- {f}" for f in failures]]
    markdown = "\n".join(md)
    print()
    print(markdown)
    print(f"\nbf16 kept: {bf16_kept}")
    if not args.no_write:
        paths = harness.write_results(args.name or DEFAULT_NAME + ("_tiny" if args.tiny else ""), payload, markdown)
        print("wrote", *paths)
    if failures:
        print("FAILED:", *failures, sep="\n", file=sys.stderr)
        raise SystemExit(1)
    return payload


if __name__ == "__main__":
    main()
