"""Forward-pass speed, zoo (``jax.jit``) vs HF PyTorch, one family at a time, side by side.

    python -m benchmarks.forward --family data2vec-text [--batch 8 --size 128] [--workload ...]
    python -m benchmarks.forward --family big_bird --size 4096        # block-sparse vs dense, both sides
    python -m benchmarks.forward --family data2vec-vision --workload seg
    python -m benchmarks.forward --family sew-d --tiny --no-write     # seconds: smoke test

Families: data2vec-text, data2vec-audio, data2vec-vision (cls, seg), big_bird, groupvit
(logits, seg), sew-d. Each row of :data:`WORKLOADS` says what is timed: the HF class and its
config (HF defaults = base size, plus the overrides), the input builder, the outputs compared
and the implementations (zoo ones with their config, HF ones with their attention
implementation). One process: HF builds random weights (constants randomized so the checks
cover them), :func:`harness.convert` gives the zoo the same weights, every implementation
gets the same inputs; outputs are compared with the reference HF implementation before
timing (the run stops beyond ``--tolerance``); timing is interleaved, re-timed while the
machine is busy (``--attempts``). ``speedup = this / zoo``: > 1 means the zoo is faster.
"""

from __future__ import annotations

import argparse
import copy
import functools

import numpy as np

from benchmarks import harness

SAMPLE_RATE = 16_000


# ------------------------------------------------------------------- inputs
def text_inputs(config, batch: int, seq: int, rng) -> dict:
    """Random ids, right padding: row 0 full, the others 50-100 % long."""
    pad = getattr(config, "pad_token_id", 0) or 0
    ids = rng.integers(max(pad, 4) + 1, config.vocab_size, (batch, seq))
    lengths = rng.integers(seq // 2, seq + 1, batch)
    lengths[0] = seq
    mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int64)
    return {"input_ids": np.where(mask == 1, ids, pad), "attention_mask": mask}


def full_text_inputs(config, batch: int, seq: int, rng) -> dict:
    ids = rng.integers(5, config.vocab_size, (batch, seq))
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def audio_inputs(config, batch: int, samples: int, rng) -> dict:
    """Unit noise; with batch > 1 rows after the first are 50-100 % long (zeros, mask 0 after)."""
    audio = rng.standard_normal((batch, samples), dtype=np.float32)
    if batch == 1:
        return {"input_values": audio}
    lengths = rng.integers(samples // 2, samples + 1, batch)
    lengths[0] = samples
    mask = (np.arange(samples)[None] < lengths[:, None]).astype(np.int64)
    return {"input_values": np.where(mask == 1, audio, 0.0).astype(np.float32), "attention_mask": mask}


def image_inputs(config, batch: int, image: int, rng) -> dict:
    return {"pixel_values": rng.standard_normal((batch, 3, image, image), dtype=np.float32)}


def groupvit_inputs(config, batch: int, image: int, rng) -> dict:
    """Images plus CLIP-style texts padded to max length: lengths from full down to 1/16."""
    t = config.text_config
    seq = t.max_position_embeddings
    ids = rng.integers(3, t.eos_token_id - 1, (batch, seq))
    mask = np.ones_like(ids)
    for row, n in enumerate(np.geomspace(seq, max(2, seq // 16), batch).astype(int)):
        ids[row, n - 1:] = t.eos_token_id  # end of text, then padding with the same id
        mask[row, n:] = 0
    return {**image_inputs(config, batch, image, rng), "input_ids": ids, "attention_mask": mask}


# ---------------------------------------------------------------- the table
# impls: name -> ("zoo", zoo config overrides) | ("hf", attn_implementation, HF config overrides).
# The first HF implementation is the reference of the output check, unless "pairs" says otherwise.
DENSE_IMPLS = {"zoo": ("zoo", {}), "hf_eager": ("hf", "eager", {}), "hf_sdpa": ("hf", "sdpa", {})}
TINY_TEXT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=99)
TINY_AUDIO = dict(TINY_TEXT, conv_dim=[16, 16, 24], conv_kernel=[10, 3, 3], conv_stride=[5, 2, 2],
                  num_conv_pos_embedding_groups=2, vocab_size=12)
VISION = dict(use_relative_position_bias=True)
TINY_VISION = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=37, patch_size=8)
WORKLOADS = {
    "data2vec-text": {"model": dict(
        hf_class="Data2VecTextModel", hf_config="Data2VecTextConfig", config={}, tiny=TINY_TEXT,
        inputs=text_inputs, batch=8, size=128, tiny_batch=2, tiny_size=16, size_unit="tokens",
        outputs=("last_hidden_state", "pooler_output"), impls=DENSE_IMPLS)},
    "data2vec-audio": {"model": dict(
        hf_class="Data2VecAudioModel", hf_config="Data2VecAudioConfig", config={},
        tiny=dict(TINY_AUDIO, num_conv_pos_embeddings=2, conv_pos_kernel_size=5), inputs=audio_inputs, batch=1, size=4 * SAMPLE_RATE,
        tiny_batch=2, tiny_size=1600, size_unit="samples at 16 kHz", outputs=("last_hidden_state",),
        impls=DENSE_IMPLS)},
    "sew-d": {"model": dict(
        hf_class="SEWDModel", hf_config="SEWDConfig", config={},
        tiny=dict(TINY_AUDIO, num_conv_pos_embeddings=4, squeeze_factor=2, position_buckets=8,
                  max_position_embeddings=64), inputs=audio_inputs, batch=1, size=4 * SAMPLE_RATE,
        tiny_batch=2, tiny_size=1600, size_unit="samples at 16 kHz", outputs=("last_hidden_state",),
        impls={"zoo": ("zoo", {}), "hf_eager": ("hf", "eager", {})})},  # HF SEW-D has no sdpa path
    "data2vec-vision": {
        "cls": dict(hf_class="Data2VecVisionForImageClassification", hf_config="Data2VecVisionConfig",
                    config=dict(VISION, image_size=224, num_labels=1000, use_mean_pooling=True),
                    tiny=dict(TINY_VISION, image_size=32, num_labels=5), inputs=image_inputs, batch=4, size=224,
                    tiny_batch=2, tiny_size=32, size_unit="px", outputs=("logits",), impls=DENSE_IMPLS),
        "seg": dict(hf_class="Data2VecVisionForSemanticSegmentation", hf_config="Data2VecVisionConfig",
                    config=dict(VISION, image_size=640, num_labels=150, out_indices=[3, 5, 7, 11],
                                use_auxiliary_head=True, auxiliary_channels=256, use_mean_pooling=False),
                    tiny=dict(TINY_VISION, image_size=64, num_labels=5, out_indices=[2, 3, 4, 5],
                              auxiliary_channels=16),
                    inputs=image_inputs, batch=1, size=640, tiny_batch=1, tiny_size=64, size_unit="px",
                    outputs=("logits",), impls=DENSE_IMPLS)},
    "big_bird": {"model": dict(
        hf_class="BigBirdModel", hf_config="BigBirdConfig", config={}, size_config="max_position_embeddings",
        tiny=dict(TINY_TEXT, block_size=8, num_random_blocks=2),
        inputs=full_text_inputs, batch=1, size=4096, tiny_batch=1, tiny_size=128, size_unit="tokens",
        outputs=("last_hidden_state", "pooler_output"),
        impls={"zoo": ("zoo", {"attention_type": "block_sparse"}),
               "zoo_dense": ("zoo", {"attention_type": "original_full"}),
               "hf_block_sparse": ("hf", "eager", {"attention_type": "block_sparse"}),
               "hf_original_full": ("hf", "eager", {"attention_type": "original_full"})},
        pairs={"zoo": "hf_block_sparse", "zoo_dense": "hf_original_full"})},
    "groupvit": {
        name: dict(hf_class="GroupViTModel", hf_config="GroupViTConfig", config={},
                   tiny=dict(text_config=dict(vocab_size=99, hidden_size=32, intermediate_size=37,
                                              num_hidden_layers=2, num_attention_heads=4,
                                              max_position_embeddings=16, eos_token_id=98),
                             vision_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                                image_size=32, patch_size=4, num_hidden_layers=4, depths=[2, 1, 1],
                                                num_group_tokens=[8, 4, 0], num_output_groups=[8, 4, 4]),
                             projection_dim=16, projection_intermediate_dim=24),
                   inputs=groupvit_inputs, batch=8, size=224, tiny_batch=3, tiny_size=32, size_unit="px",
                   call=dict(output_segmentation=seg),
                   outputs=("logits_per_image",) + (("segmentation_logits",) if seg else ()),
                   # HF refuses sdpa for GroupViT (hand-written bmm + softmax attention)
                   impls={"zoo": ("zoo", {}), "hf_eager": ("hf", "eager", {})})
        for name, seg in (("logits", False), ("seg", True))},
}


# -------------------------------------------------------------------- one run
def build_hf(spec: dict, tiny: bool, size: int, device: str, dtype) -> dict:
    """{name: eval HF model} of the spec's HF implementations, all with the first one's weights."""
    import torch
    import transformers

    kw = copy.deepcopy(spec["config"])
    for k, v in (spec["tiny"] if tiny else {}).items():
        kw[k] = {**kw.get(k, {}), **v} if isinstance(v, dict) else v
    if "size_config" in spec:  # BigBird: as many positions as the input is long
        kw[spec["size_config"]] = size
    models, state = {}, None
    for name, (kind, *rest) in spec["impls"].items():
        if kind != "hf":
            continue
        attn, overrides = rest
        config = getattr(transformers, spec["hf_config"])(**kw, **overrides)
        torch.manual_seed(0)
        m = getattr(transformers, spec["hf_class"])._from_config(config, attn_implementation=attn).eval()
        if state is None:
            harness.randomize_constants(m)
            state = m.state_dict()
        else:
            m.load_state_dict(state)
        models[name] = m.to(device="cuda" if device == "gpu" else "cpu", dtype=dtype)
    return models


def describe(config) -> str:
    sub = [getattr(config, k) for k in ("text_config", "vision_config") if hasattr(config, k)] or [config]
    return "; ".join(f"hidden {c.hidden_size}, {c.num_hidden_layers} layers, {c.num_attention_heads} heads"
                     for c in sub)


def run_workload(family: str, workload: str, args) -> dict:
    import jax.numpy as jnp
    import torch

    spec = WORKLOADS[family][workload]
    batch = args.batch or (spec["tiny_batch"] if args.tiny else spec["batch"])
    size = args.size or (spec["tiny_size"] if args.tiny else spec["size"])
    tdtype, jdtype = getattr(torch, args.dtype), getattr(jnp, args.dtype)
    hf = build_hf(spec, args.tiny, size, args.device_used, tdtype)
    first = next(iter(hf.values()))
    inputs = spec["inputs"](first.config, batch, size, np.random.default_rng(0))
    call_kw = spec.get("call", {})
    desc = {"model": f"{spec['hf_class']} ({describe(first.config)})", "head": spec["hf_class"],
            "inputs": {k: list(v.shape) for k, v in inputs.items()}, "dtype": args.dtype,
            "input": f"batch {batch} x {size} {spec['size_unit']}", "call": call_kw,
            "padding": int((inputs["attention_mask"] == 0).sum()) if "attention_mask" in inputs else 0}
    print(f"\n== {family} {workload}: {desc['model']}, {desc['input']}", flush=True)

    calls, outputs, compiled_info, syncs = {}, {}, {}, {}
    j_in = {k: jnp.asarray(v.astype(np.int32) if v.dtype == np.int64 else v, jdtype if v.dtype == np.float32
                           else None) for k, v in inputs.items()}
    for name, (kind, *rest) in spec["impls"].items():
        if kind == "zoo":
            model, variables = harness.convert(first, config_overrides=rest[0], dtype=jdtype, param_dtype=jdtype)

            def forward(variables, inputs, model=model):
                o = model.apply(variables, **inputs, **call_kw)
                return tuple(getattr(o, f) for f in spec["outputs"])

            exe, lower_s, compile_s = harness.jax_compile(forward, variables, j_in)
            calls[name] = functools.partial(exe, variables, j_in)
            compiled_info[name] = {"lower_s": lower_s, "compile_s": compile_s}
            print(f"{name}: trace+lower {lower_s:.2f} s, XLA compile {compile_s:.2f} s", flush=True)
        else:
            dev = "cuda" if args.device_used == "gpu" else "cpu"
            t_in = {k: torch.from_numpy(v).to(dev, tdtype if v.dtype == np.float32 else None)
                    for k, v in inputs.items()}
            m = hf[name]
            calls[name] = harness.torch_callable(
                lambda m=m, t_in=t_in: tuple(getattr(m(**t_in, **call_kw), f) for f in spec["outputs"]))
            syncs[name] = harness.torch_sync(args.device_used)
        outputs[name] = [harness.to_numpy(o) for o in calls[name]()]
    for name in hf:  # HF BigBird falls back to original_full (with a warning) when a sequence is too short
        want = spec["impls"][name][2].get("attention_type")
        if want and hf[name].attention_type != want:
            raise SystemExit(f"{name}: HF switched to attention_type={hf[name].attention_type}; use a longer --size")

    # --- outputs agree, before timing
    hf_names = [n for n in spec["impls"] if spec["impls"][n][0] == "hf"]
    pairs = spec.get("pairs") or {n: hf_names[0] for n in spec["impls"] if n != hf_names[0]}
    valid = inputs.get("attention_mask", None)
    checks, bounds = {}, {}
    for a, b in pairs.items():
        checks[f"{a} vs {b}"] = {f: harness.max_diff(x, y) for f, x, y in zip(spec["outputs"], outputs[a], outputs[b])}
        bounds[f"{a} vs {b}"] = {f: harness.parity_bound(y) for f, y in zip(spec["outputs"], outputs[b])}
        if valid is not None and outputs[a][0].shape[:2] == valid.shape:
            checks[f"{a} vs {b}"][f"{spec['outputs'][0]} (unpadded)"] = harness.max_diff(
                outputs[a][0], outputs[b][0], valid.astype(bool))
            bounds[f"{a} vs {b}"][f"{spec['outputs'][0]} (unpadded)"] = harness.parity_bound(
                outputs[b][0], valid.astype(bool))
        print(f"check {a} vs {b}: " + ", ".join(f"{k} {v:.1e}" for k, v in checks[f"{a} vs {b}"].items()))
    worst = max(v for c in checks.values() for v in c.values())
    if not worst <= args.tolerance:
        raise SystemExit(f"outputs disagree beyond --tolerance {args.tolerance}: {checks}")
    del outputs

    timings, load = harness.timed(calls, args, syncs=syncs, timing_kwargs=compiled_info)
    return {"family": family, "workload": workload, **desc, "batch": batch, "size": size,
            "impls": {n: list(v) for n, v in spec["impls"].items()}, "checks": checks, "max_abs_diff": worst,
            "parity_bounds": bounds,  # fp32: 1e-5 or the float32 spacing of the largest value (tests/hf_parity.py)
            "within_parity_contract": all(v <= bounds[p][f] for p, c in checks.items() for f, v in c.items()),
            "timings": timings, "speedup_of_zoo": harness.ratios(timings), "load": load, "quiet": load["quiet"]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", required=True, choices=sorted(WORKLOADS))
    parser.add_argument("--workload", default=None, help="comma list (default: all of the family's)")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--size", type=int, default=None, help="tokens, audio samples or image pixels per side")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="bfloat16: for a GPU")
    parser.add_argument("--tiny", action="store_true", help="tiny models and inputs: a smoke test, seconds")
    parser.add_argument("--tolerance", type=float, default=None, help="max abs diff allowed (1e-3; bf16 0.5)")
    harness.add_common_args(parser, repeats=10, warmup=2, attempts=3)
    args = parser.parse_args(argv)
    if args.tiny:
        args.repeats, args.warmup, args.attempts, args.quiet_wait = min(args.repeats, 3), 1, 1, 0.0
    if args.tolerance is None:
        args.tolerance = 1e-3 if args.dtype == "float32" else 0.5
    workloads = args.workload.split(",") if args.workload else list(WORKLOADS[args.family])
    bad = set(workloads) - set(WORKLOADS[args.family])
    if bad:
        parser.error(f"--workload {sorted(bad)}: {args.family} has {list(WORKLOADS[args.family])}")

    threads = harness.setup_threads(args.threads, args.keep_freed_memory)
    import transformers

    transformers.logging.set_verbosity_error()
    args.device_used = harness.select_device(args.device)
    results = [run_workload(args.family, w, args) for w in workloads]
    md = [f"### {args.family} forward, zoo vs HF PyTorch, {args.dtype}, {args.device_used}"
          + (" (TINY smoke-test models)" if args.tiny else "")]
    for r in results:
        md += ["", f"#### {r['workload']}: {r['model']}, {r['input']}", "", harness.comparison_table(r["timings"]), "",
               "- max abs diff vs HF: " + "; ".join(f"{k}: " + ", ".join(f"{f} {v:.1e}" for f, v in c.items())
                                                     for k, c in r["checks"].items()),
               f"- {args.repeats} timed runs each after {args.warmup} warm-up, interleaved; "
               + harness.load_note(r["load"])]
    name = args.name or "forward_" + args.family.replace("-", "_") + ("_tiny" if args.tiny else "")
    payload = {"argv": argv, "module": "benchmarks.forward", "benchmark": "forward", "family": args.family, "tiny": args.tiny,
               "device": args.device_used, "dtype": args.dtype, "tolerance": args.tolerance,
               "weights": "HF random init, constants randomized, converted with zoo.from_state_dict",
               "workloads": results}
    return harness.finish_report(name, payload, md, write=not args.no_write, threads=threads,
                                 device=args.device_used,
                                 results_dir=args.out)


if __name__ == "__main__":
    main()
