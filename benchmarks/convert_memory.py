"""Peak memory of converting and loading checkpoints: ``zoo convert`` and ``zoo.from_pretrained``.

    python -m benchmarks.convert_memory [--repeats 1]      # Data2VecText base, fp32, 418 MiB
    python -m benchmarks.convert_memory --sharded          # synthetic 3 GB sharded bf16 IDEFICS
    python -m benchmarks.convert_memory [--sharded] --tiny --no-write   # seconds: smoke test

Every measured step runs in a process of its own; its peak resident set size comes from
``os.wait4`` (``harness.peak_rss``); "net" subtracts the baseline
``python -c "import zoo, jax; jax.devices()"``.

- default: a random ``Data2VecTextForMaskedLM`` at base size written as ``model.safetensors``
  and as ``pytorch_model.bin``, converted with ``python -m zoo convert SRC OUT --dtype D``.
- ``--sharded``: a synthetic HF ``IdeficsForVisionText2Text`` (hidden 2048, 20 decoder layers,
  vision embed 1024 x 12 layers; 1.58 B parameters, 3022 MiB of bf16) in shards of at most
  ``--shard-mb`` (500), written one shard at a time by a generator process (names and shapes
  from a meta-device HF model, random N(0, 0.02) bf16 values); then ``zoo convert SRC OUT``
  (the checkpoint's bf16 kept), ``zoo.from_pretrained(PATH, param_dtype=None)`` from the shards
  and from the converted directory (``JAX_PLATFORMS=cpu``: params in host memory). Budget:
  output + largest shard. Checked: every output tensor bf16, and a few tensors bit for bit
  against the source, read with the ``safetensors`` package.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks import harness

ARCHITECTURE = "IdeficsForVisionText2Text"
IDEFICS = {  # ~1.59 B parameters: 3.17 GB in bfloat16
    False: dict(vocab_size=32000, additional_vocab_size=2, hidden_size=2048, intermediate_size=5632,
                num_hidden_layers=20, num_attention_heads=16, cross_layer_interval=4, use_resampler=True,
                vision_config=dict(embed_dim=1024, image_size=224, patch_size=14, num_hidden_layers=12,
                                   num_attention_heads=16, intermediate_size=4096),
                perceiver_config=dict(use_resampler=True, resampler_n_latents=64, resampler_depth=3,
                                      resampler_n_heads=16, resampler_head_dim=64)),
    # ~4.3 M parameters: the real vocabulary, so the 4 MB embeddings get shards of their own
    True: dict(vocab_size=32000, additional_vocab_size=2, hidden_size=64, intermediate_size=128,
               num_hidden_layers=4, num_attention_heads=4, cross_layer_interval=2, use_resampler=True,
               vision_config=dict(embed_dim=32, image_size=28, patch_size=14, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64),
               perceiver_config=dict(use_resampler=True, resampler_n_latents=4, resampler_depth=2,
                                     resampler_n_heads=2, resampler_head_dim=8))}
TINY_TEXT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=99)
SPOT_CHECK_KEYS = (  # compared bit for bit between source and output (those present)
    "model.embed_tokens.weight", "model.embed_tokens.additional_embedding.weight",
    "model.vision_model.embeddings.patch_embedding.weight",  # conv [o,i,kh,kw] -> [kh,kw,i,o]
    "model.vision_model.encoder.layers.0.self_attn.q_proj.weight",  # Linear -> kernel.T
    "model.perceiver_resampler.latents", "model.layers.1.mlp.down_proj.weight",
    "model.gated_cross_attn_layers.0.cross_attn.k_proj.weight", "model.gated_cross_attn_layers.0.alpha_cross_attn",
    "model.norm.weight", "lm_head.weight")
BASELINE = [sys.executable, "-c", "import zoo, jax; jax.devices()"]
LOAD = """
import json, sys, jax, zoo
from collections import Counter
model, variables = zoo.from_pretrained(sys.argv[1], param_dtype=None)
leaves = jax.block_until_ready(jax.tree_util.tree_leaves(variables))
json.dump({"dtypes": dict(Counter(str(x.dtype) for x in leaves)), "leaves": len(leaves),
           "parameters": sum(int(x.size) for x in leaves)}, open(sys.argv[2], "w"))
"""


def mib(nbytes: float) -> float:
    return nbytes / 2**20


def dir_mib(path: Path) -> float | None:
    return mib(sum(p.stat().st_size for p in path.rglob("*") if p.is_file())) if path.exists() else None


# ---------------------------------------------------------- the checkpoints
def plan_shards(specs, max_shard_bytes: int, itemsize: int = 2) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Greedy split in state-dict order, like HF's ``save_pretrained(max_shard_size=...)``: a
    shard closes when the next tensor would pass ``max_shard_bytes`` (a bigger one gets its own)."""
    shards, size = [[]], 0
    for name, shape in specs:
        nbytes = math.prod(shape) * itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    return shards


def generate_idefics(directory: Path, tiny: bool, shard_mb: float, seed: int = 0) -> None:
    """config.json, bf16 shards and the index; one shard in memory at a time (run in its own process)."""
    import ml_dtypes
    import numpy as np
    import torch
    import transformers

    from converters.writers import save_safetensors

    directory.mkdir(parents=True, exist_ok=True)
    config = transformers.IdeficsConfig(**IDEFICS[tiny])
    config.architectures, config.dtype = [ARCHITECTURE], "bfloat16"
    with torch.device("meta"):
        specs = [(k, tuple(t.shape)) for k, t in transformers.IdeficsForVisionText2Text(config).state_dict().items()]
    config.save_pretrained(directory)
    shards = plan_shards(specs, int(shard_mb * 2**20))
    weight_map, total = {}, 0
    for i, group in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for key, shape in group:
            x = np.random.default_rng([seed, len(weight_map) + len(tensors)]).standard_normal(shape, np.float32)
            tensors[key] = (x * 0.02).astype(ml_dtypes.bfloat16)
        save_safetensors(tensors, directory / name, metadata={"format": "pt"})
        total += sum(t.nbytes for t in tensors.values())
        weight_map.update(dict.fromkeys(tensors, name))
        del tensors
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")


def write_text_checkpoints(workdir: Path, tiny: bool) -> dict[str, Path]:
    """A random Data2VecTextForMaskedLM (base, or tiny) as model.safetensors and as pytorch_model.bin."""
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.Data2VecTextForMaskedLM(transformers.Data2VecTextConfig(**(TINY_TEXT if tiny else {})))
    st, pt = workdir / "safetensors", workdir / "bin"
    model.save_pretrained(st)
    pt.mkdir()
    torch.save(model.state_dict(), pt / "pytorch_model.bin")
    model.config.save_pretrained(pt)
    return {"safetensors": st, "pytorch_model.bin": pt}


# ------------------------------------------------------------------ checks
def spot_check(src: Path, out: Path) -> list[dict]:
    """A few tensors bit for bit (as uint16) between HF source and zoo output, read with the
    ``safetensors`` package; the expected layout is spelled out here (2-d Linear weights
    transposed, the 4-d patch conv ``[o, i, kh, kw] -> [kh, kw, i, o]``, the rest as stored)."""
    import ml_dtypes  # noqa: F401  (bfloat16 for safetensors' numpy framework)
    import numpy as np
    from safetensors import safe_open

    from converters.mapping import torch_to_flax_path
    from zoo.registry import get_family

    table = get_family("idefics").key_table
    weight_map = json.loads((src / "model.safetensors.index.json").read_text())["weight_map"]
    rows = []
    with safe_open(str(out / "flax_model.safetensors"), framework="np") as fo:
        out_keys = set(fo.keys())
        for key in (k for k in SPOT_CHECK_KEYS if k in weight_map):
            with safe_open(str(src / weight_map[key]), framework="np") as fs:
                ref = fs.get_tensor(key)
            path = torch_to_flax_path(key, table, out_keys)
            got = fo.get_tensor(path) if path in out_keys else None
            want = (ref.transpose(2, 3, 1, 0) if ref.ndim == 4 else ref.T) if path.endswith("/kernel") else ref
            same = (got is not None and got.dtype.name == ref.dtype.name == "bfloat16" and got.shape == want.shape
                    and np.array_equal(got.view(np.uint16), np.ascontiguousarray(want).view(np.uint16)))
            rows.append({"key": key, "path": path, "bit_exact": bool(same)})
    return rows


def output_dtypes(out: Path) -> dict[str, int]:
    from collections import Counter

    from converters.readers import open_checkpoint

    with open_checkpoint(out / "flax_model.safetensors") as ckpt:
        return dict(Counter(str(ckpt.dtype(k)) for k in ckpt.keys()))


# -------------------------------------------------------------------- runs
def run_text(args, workdir: Path) -> dict:
    sources = write_text_checkpoints(workdir, args.tiny)
    rows = []
    for fmt, dtype in [("safetensors", d) for d in args.dtypes.split(",")] + [("pytorch_model.bin", "float32")]:
        src, out = sources[fmt], workdir / f"out_{fmt}_{dtype}"
        cmd = [sys.executable, "-m", "zoo", "convert", str(src), str(out), "--dtype", dtype]
        runs = []
        for _ in range(args.repeats):
            shutil.rmtree(out, ignore_errors=True)
            runs.append(harness.peak_rss(cmd))
        r = max(runs, key=lambda x: x["peak_rss_mib"])
        size = dir_mib(src) - mib((src / "config.json").stat().st_size)
        rows.append({**r, "step": f"zoo convert SRC OUT --dtype {dtype}", "source": fmt, "checkpoint_mib": size,
                     "output_mib": dir_mib(out), "all_peak_rss_mib": [x["peak_rss_mib"] for x in runs]})
    return {"model": "Data2VecTextForMaskedLM " + ("tiny" if args.tiny else "base (HF defaults)") + ", random fp32",
            "rows": rows, "failures": [f"{r['step']} ({r['source']}): exit {r['exit_status']}: {r.get('output_tail')}"
                                       for r in rows if r["exit_status"] != 0]}


def run_sharded(args, workdir: Path) -> dict:
    py, src, out = sys.executable, workdir / "hf_idefics_bf16", workdir / "zoo_idefics_bf16"
    gen = harness.peak_rss([py, "-m", "benchmarks.convert_memory", "--generate-only", str(src),
                            "--shard-mb", str(args.shard_mb)] + (["--tiny"] if args.tiny else []))
    if gen["exit_status"] != 0:
        raise SystemExit(f"generating the checkpoint failed:\n{gen.get('output_tail')}")
    shards = sorted(src.glob("model-*-of-*.safetensors"))
    weight_map = json.loads((src / "model.safetensors.index.json").read_text())["weight_map"]
    ckpt = {"tensors": len(weight_map), "shards": len(shards), "shard_mb_limit": args.shard_mb,
            "checkpoint_mib": mib(sum(p.stat().st_size for p in shards)),
            "largest_shard_mib": mib(max(p.stat().st_size for p in shards)), "generator": gen}

    def load(label, path):
        report = workdir / f"load_{path.name}.json"
        r = harness.peak_rss([py, "-c", LOAD, str(path), str(report)], env={"JAX_PLATFORMS": "cpu"})
        loaded = json.loads(report.read_text()) if report.exists() else {}
        return {**r, "step": "zoo.from_pretrained(PATH, param_dtype=None)", "source": label, "loaded": loaded,
                "output_dtypes": loaded.get("dtypes", {})}

    # --tiny runs independent steps side by side (speed); the full run one process at a time
    with ThreadPoolExecutor(2 if args.tiny else 1) as pool:
        conv = pool.submit(harness.peak_rss, [py, "-m", "zoo", "convert", str(src), str(out)])
        from_src = None if args.skip_load else pool.submit(load, "HF shards (converted on the fly)", src)
        conv = conv.result()
        rows = [{**conv, "step": "zoo convert SRC OUT", "source": "HF shards", "output_mib": dir_mib(out),
                 "output_dtypes": output_dtypes(out) if out.exists() else {}}]
        from_out = None if args.skip_load or not out.exists() else pool.submit(load, "converted zoo dir", out)
        spots = spot_check(src, out) if out.exists() else []
        rows += [f.result() for f in (from_src, from_out) if f is not None]
    budget = (rows[0]["output_mib"] or ckpt["checkpoint_mib"]) + ckpt["largest_shard_mib"]
    failures = [f"{r['step']} ({r['source']}): exit {r['exit_status']}: {r.get('output_tail')}"
                for r in rows if r["exit_status"] != 0]
    for r in rows:
        r["bf16_kept"] = set(r["output_dtypes"]) == {"bfloat16"}
        r["peak_over_budget"] = r["peak_rss_mib"] / budget
        if not r["bf16_kept"]:
            failures.append(f"{r['step']} ({r['source']}): dtypes {r['output_dtypes']}, expected only bfloat16")
    if not spots or not all(s["bit_exact"] for s in spots):
        failures.append(f"spot check failed: {[s for s in spots if not s['bit_exact']] or 'nothing compared'}")
    return {"model": f"{ARCHITECTURE}, synthetic random bf16 weights ({'tiny' if args.tiny else 'default'})",
            "checkpoint": ckpt, "budget_mib": budget, "rows": rows, "spot_check": spots,
            "spot_check_equal": f"{sum(s['bit_exact'] for s in spots)}/{len(spots)}",
            "bf16_kept": all(r["bf16_kept"] for r in rows), "failures": failures}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sharded", action="store_true", help="the sharded bf16 IDEFICS checkpoint")
    parser.add_argument("--tiny", action="store_true", help="tiny checkpoints: a smoke test, seconds")
    parser.add_argument("--repeats", type=int, default=1, help="runs per conversion (max peak RSS kept)")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="--dtype values of the safetensors conversion")
    parser.add_argument("--shard-mb", type=float, default=None, help="max shard MiB (500; 1 with --tiny)")
    parser.add_argument("--skip-load", action="store_true", help="--sharded: do not measure from_pretrained")
    parser.add_argument("--workdir", default=None, help="where checkpoints go (default: a fresh temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoints and outputs")
    parser.add_argument("--name", default=None, help="results file stem")
    parser.add_argument("--no-write", action="store_true", help="print only, write no results files")
    parser.add_argument("--out", default=None, help="directory of the results files (default benchmarks/results)")
    parser.add_argument("--generate-only", metavar="DIR", help=argparse.SUPPRESS)  # the generator process
    args = parser.parse_args(argv)
    args.shard_mb = args.shard_mb or (1.0 if args.tiny else 500.0)
    if args.generate_only:
        return generate_idefics(Path(args.generate_only), args.tiny, args.shard_mb)

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="zoo_convert_memory_"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        with harness.LoadMonitor() as monitor, ThreadPoolExecutor(1) as pool:
            base = pool.submit(harness.peak_rss, BASELINE)  # next to the generator: peak RSS is per process
            result = run_sharded(args, workdir) if args.sharded else run_text(args, workdir)
            baseline = base.result()
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    for r in result["rows"]:
        r["net_rss_mib"] = r["peak_rss_mib"] - baseline["peak_rss_mib"]
        size = result.get("checkpoint", {}).get("checkpoint_mib") or r.get("checkpoint_mib")
        r["peak_over_checkpoint"], r["net_over_checkpoint"] = r["peak_rss_mib"] / size, r["net_rss_mib"] / size
    md = [f"### Peak memory: {result['model']}", "", "| step | source | peak RSS MiB | net MiB | net / checkpoint "
          "| output MiB | wall s | exit |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    md += [f"| `{r['step']}` | {r['source']} | {r['peak_rss_mib']:.0f} | {r['net_rss_mib']:.0f} | "
           f"{r['net_over_checkpoint']:.2f} | {r.get('output_mib') or 0:.0f} | {r['wall_s']:.1f} | {r['exit_status']} |"
           for r in result["rows"]]
    md += ["", f"- baseline `{' '.join(BASELINE[1:])}`: {baseline['peak_rss_mib']:.0f} MiB; peak RSS: `os.wait4` "
           f"ru_maxrss of each step's process; {harness.load_note(monitor.result)}"]
    if args.sharded:
        md += [f"- budget (output + largest shard) {result['budget_mib']:.0f} MiB; spot check "
               f"{result['spot_check_equal']} tensors equal; bf16 kept: {result['bf16_kept']}"]
    md += [f"- FAILED: {f}" for f in result["failures"]]
    name = args.name or "convert_memory" + ("_sharded" if args.sharded else "") + ("_tiny" if args.tiny else "")
    payload = {"argv": argv, "module": "benchmarks.convert_memory", "benchmark": "convert_memory", "sharded": args.sharded,
               "tiny": args.tiny, "baseline": baseline, "baseline_rss_mib": baseline["peak_rss_mib"], **result,
               "load": monitor.result}
    payload = harness.finish_report(name, payload, md, write=not args.no_write, results_dir=args.out)
    if result["failures"]:
        raise SystemExit("FAILED:\n" + "\n".join(result["failures"]))
    return payload


if __name__ == "__main__":
    main()
