"""Forward-pass speed of GroupViT (base size): zoo (jax.jit) vs HF PyTorch eager.

    python -m benchmarks.groupvit_forward [--workloads logits,seg] [--repeats 10 --warmup 1]
    python -m benchmarks.groupvit_forward --tiny --no-write  # a few seconds: smoke test

One process, random weights built here (never downloaded), base size as the released
nvidia/groupvit-gcc-yfcc checkpoint: HF ``GroupViTConfig()`` defaults (text: hidden 256,
12 layers, 4 heads, 77 positions, vocab 49408; vision: hidden 384, 6 heads, patch 16 at
224 px, depths [6, 3, 3], group tokens [64, 8, 0], output groups [64, 8, 8]; projection
256 with a 4096-wide projection MLP, BatchNorm1d in the projections). ``GroupViTModel``,
batch 8 images (224 px, 196 patches) + 8 texts (77 tokens, CLIP's ``padding="max_length"``:
text lengths 77, 60, 41, 25, 16, 11, 8 and 5 with ``attention_mask`` zeros after them, the
end-of-text id 49407 closing each text and filling the padding). Two workloads, forward in
inference mode, fp32:

- ``logits``: the plain forward, ``logits_per_image`` ``[8, 8]``;
- ``seg``: the same forward with ``output_segmentation=True`` (HF's grouping attention maps
  turned into ``segmentation_logits`` ``[8 images, 8 texts, 224, 224]``).

HF initialises biases, norm weights, the batch-norm statistics and other tensors to
constants; those are randomized first (``data2vec_vision_forward.randomize_constants``, the
parity tests' idea) so the output check compares them too. GroupViT's HF attention is
written out by hand (``torch.bmm``) and its model class does not declare sdpa support: HF
is run with ``attn_implementation="eager"`` only; the script tries to build an sdpa model
and records why there is none. The eager model is converted to zoo variables
(``{"params", "batch_stats"}``) through the family key table (the logic of
``tests/hf_parity.to_zoo``). ``logits_per_image`` (and, for ``seg``, the segmentation
logits) are compared before anything is timed. The zoo forward is ``jax.jit``-compiled
ahead of time (``harness.jax_compile``; compile time reported apart); torch runs under
``torch.inference_mode()``; timing is interleaved (round-robin).

Defaults keep a run to a couple of minutes on a quiet 2-core CPU: 10 timed runs per
workload after the output check, which is every implementation's first call (plus
``--warmup`` more).
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import sys
import time

import numpy as np

from benchmarks import harness
from benchmarks.data2vec_vision_forward import (_loadavg, _max_diff, _to_numpy, convert_to_zoo,
                                                randomize_constants, timed)

DEFAULT_NAME = "groupvit_forward"
IMPLS = ("zoo", "hf_eager")
WORKLOADS = {"logits": dict(output_segmentation=False), "seg": dict(output_segmentation=True)}
BATCH, IMAGE, TEXT_LEN = 8, 224, 77
TEXT_LENGTHS = [77, 60, 41, 25, 16, 11, 8, 5]
# --tiny: same code paths, seconds instead of minutes (smoke test of the script)
TINY = dict(
    text_config=dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                     num_attention_heads=4, max_position_embeddings=16, eos_token_id=98),
    vision_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, image_size=32, patch_size=4,
                       num_hidden_layers=4, depths=[2, 1, 1], num_group_tokens=[8, 4, 0],
                       num_output_groups=[8, 4, 4]),
    projection_dim=16, projection_intermediate_dim=24)
TINY_SHAPES = dict(batch=3, image=32, text_len=16, lengths=[16, 7, 5])


def shapes(tiny: bool) -> dict:
    return dict(TINY_SHAPES) if tiny else dict(batch=BATCH, image=IMAGE, text_len=TEXT_LEN, lengths=TEXT_LENGTHS)


def hf_config(tiny: bool, attn: str):
    import transformers

    kw = copy.deepcopy(TINY) if tiny else {}
    return transformers.GroupViTConfig(**kw, attn_implementation=attn)


def describe(config, s: dict) -> str:
    t, v = config.text_config, config.vision_config
    return (f"GroupViTModel (text hidden {t.hidden_size}, {t.num_hidden_layers} layers; vision hidden "
            f"{v.hidden_size}, depths {list(v.depths)}, group tokens {list(v.num_group_tokens)}, output groups "
            f"{list(v.num_output_groups)}; projection {config.projection_dim}/{config.projection_intermediate_dim}), "
            f"{s['batch']} images x {s['image']} px + {s['batch']} texts x {s['text_len']} tokens")


# ----------------------------------------------------------------------- setup
def build_hf_model(tiny: bool, seed: int = 0):
    """(eager model, eval, constants randomized; why there is no sdpa model)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    eager = transformers.GroupViTModel._from_config(hf_config(tiny, "eager"), attn_implementation="eager").eval()
    randomize_constants(eager, seed)
    assert eager.config._attn_implementation == "eager", eager.config._attn_implementation
    try:
        sdpa = transformers.GroupViTModel._from_config(hf_config(tiny, "sdpa"), attn_implementation="sdpa")
        sdpa_note = (f"built with attn_implementation='sdpa' (config says {sdpa.config._attn_implementation!r}), "
                     "but GroupViTAttention has no sdpa path: it always runs torch.bmm + softmax")
        del sdpa
    except Exception as e:  # noqa: BLE001 - recorded as the reason
        sdpa_note = f"HF refuses attn_implementation='sdpa': {type(e).__name__}: {str(e).split('. ')[0]}"
    return eager, sdpa_note


def make_inputs(config, s: dict, seed: int = 0):
    """(pixel_values [B, 3, H, W] float32, input_ids [B, L] int64, attention_mask [B, L] int64)."""
    rng = np.random.default_rng(seed)
    pixels = rng.standard_normal((s["batch"], 3, s["image"], s["image"]), dtype=np.float32)
    eos = config.text_config.eos_token_id
    ids = rng.integers(3, eos - 1, (s["batch"], s["text_len"])).astype(np.int64)
    mask = np.ones_like(ids)
    for row, n in enumerate(s["lengths"]):
        ids[row, n - 1:] = eos  # end-of-text, then padding with it (CLIP's pad token is the same id)
        mask[row, n:] = 0
    return pixels, ids, mask


# ------------------------------------------------------------------ workloads
def run_workload(name: str, args, hf, sdpa_note: str, module, variables, inputs, config, s) -> dict:
    import jax
    import torch

    seg = WORKLOADS[name]["output_segmentation"]
    print(f"\n== {name}: output_segmentation={seg}", flush=True)
    pixels, ids, mask = inputs
    j_in = [jax.device_put(a) for a in (pixels, ids.astype(np.int32), mask.astype(np.int32))]
    t_pixels, t_ids, t_mask = (torch.from_numpy(a) for a in (pixels, ids, mask))

    def zoo_forward(variables, pixel_values, input_ids, attention_mask):
        out = module.apply(variables, input_ids=input_ids, pixel_values=pixel_values,
                           attention_mask=attention_mask, output_segmentation=seg)
        return (out.logits_per_image, out.segmentation_logits) if seg else (out.logits_per_image,)

    def hf_forward():
        out = hf(input_ids=t_ids, pixel_values=t_pixels, attention_mask=t_mask, output_segmentation=seg)
        return (out.logits_per_image, out.segmentation_logits) if seg else (out.logits_per_image,)

    compiled, lower_s, compile_s = harness.jax_compile(zoo_forward, variables, *j_in)
    calls = {"zoo": functools.partial(compiled, variables, *j_in)}
    t1 = time.perf_counter()
    outputs = {"zoo": [np.asarray(o) for o in calls["zoo"]()]}
    first_call_s = time.perf_counter() - t1
    print(f"zoo: trace+lower {lower_s:.2f} s, XLA compile {compile_s:.2f} s, first call {first_call_s:.2f} s",
          flush=True)
    calls["hf_eager"] = harness.torch_callable(hf_forward)
    outputs["hf_eager"] = [_to_numpy(o) for o in calls["hf_eager"]()]

    ref = outputs["hf_eager"]
    o = outputs["zoo"]
    check = {"logits_max_abs_diff": _max_diff(o[0], ref[0]), "logits_max_abs": float(np.abs(ref[0]).max()),
             "shape": list(o[0].shape)}
    if seg:
        check.update(seg_max_abs_diff=_max_diff(o[1], ref[1]), seg_max_abs=float(np.abs(ref[1]).max()),
                     seg_shape=list(o[1].shape),
                     seg_argmax_agree=float((o[1].argmax(1) == ref[1].argmax(1)).mean()))
    checks = {"zoo vs hf_eager": check}
    print("check zoo vs hf_eager: " + ", ".join(f"{k} {v:.2e}" if isinstance(v, float) else f"{k} {v}"
                                                for k, v in check.items()), flush=True)
    diffs = [check["logits_max_abs_diff"]] + ([check["seg_max_abs_diff"]] if seg else [])
    if not max(diffs) < args.tolerance:
        raise SystemExit(f"outputs disagree beyond {args.tolerance}: {checks}")
    del outputs

    extra = {"zoo": {"compile_s": compile_s, "lower_s": lower_s, "extra": {"first_call_s": first_call_s}}}
    timings, load = timed(calls, args, args.repeats, args.warmup, extra)
    by = {t.name: t for t in timings}
    return {"workload": name, "description": describe(config, s) + f", output_segmentation={seg}",
            "output_segmentation": seg, "repeats": args.repeats, "warmup": args.warmup,
            "timings": timings, "checks": checks, "load": load, "sdpa": sdpa_note,
            "speedup_of_zoo": {f"{n} / zoo": by[n].median_ms / by["zoo"].median_ms for n in by if n != "zoo"}}


# ----------------------------------------------------------------------- output
def _workload_md(r: dict) -> list[str]:
    md = [f"#### {r['workload']}: {r['description']}", "",
          harness.comparison_table(r["timings"], "zoo"), "",
          f"{r['repeats']} timed runs each after the output-check call and {r['warmup']} more warm-up runs, "
          "interleaved. speedup = implementation median / zoo median (> 1: zoo faster). compile s = XLA "
          "compilation (trace + lower adds "
          + ", ".join(f"{t.lower_s:.2f} s" for t in r["timings"] if t.lower_s is not None)
          + f"; first call {r['timings'][0].extra.get('first_call_s', float('nan')):.2f} s).", ""]
    head = "| outputs | logits_per_image max abs diff | max abs logit (HF eager) | shape |"
    sep = "|---|---:|---:|---|"
    if r["output_segmentation"]:
        head += " segmentation_logits max abs diff | max abs (HF) | argmax over texts agrees |"
        sep += "---:|---:|---:|"
    md += [head, sep]
    for k, v in r["checks"].items():
        row = f"| {k} | {v['logits_max_abs_diff']:.2e} | {v['logits_max_abs']:.2f} | {v['shape']} |"
        if r["output_segmentation"]:
            row += f" {v['seg_max_abs_diff']:.2e} | {v['seg_max_abs']:.2f} | {v['seg_argmax_agree']:.2%} |"
        md.append(row)
    md.append("")
    note = harness.load_note(r["load"])
    if note:
        md += [note, ""]
    return md


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="logits,seg", help="comma list of logits, seg")
    parser.add_argument("--tiny", action="store_true", help="tiny model and inputs: a smoke test of the script")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--tolerance", type=float, default=1e-3,
                        help="largest accepted max abs diff of the outputs vs HF eager (else stop before timing)")
    parser.add_argument("--attempts", type=int, default=1,
                        help="time again, up to this many times, while other processes use more than "
                             "--max-load of the cores; the quietest attempt is reported")
    parser.add_argument("--max-load", type=float, default=0.05,
                        help="largest acceptable share of the cores used by other processes while timing")
    harness.add_common_args(parser, repeats=10, warmup=1)
    parser.set_defaults(quiet_wait=60.0)
    args = parser.parse_args(argv)

    loadavg_start = _loadavg()
    cores = harness.available_cores()
    threads = harness.setup_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    device = harness.select_device(args.device)
    if device != "cpu":
        raise SystemExit("this benchmark is written for the CPU (no .cuda() of the HF model)")
    workloads = [w for w in args.workloads.split(",") if w]
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s) {unknown}")
    print(f"torch.set_num_threads({threads.get('torch_num_threads')}); {cores} cores available to this "
          f"process (os.cpu_count() {os.cpu_count()}); XLA: {threads['xla_threads']}; "
          f"loadavg at start {loadavg_start}", flush=True)

    t_start = time.perf_counter()
    s = shapes(args.tiny)
    hf, sdpa_note = build_hf_model(args.tiny)
    module, variables = convert_to_zoo(hf)
    config = hf.config
    print(f"{describe(config, s)}\nmodel built and converted in {time.perf_counter() - t_start:.1f} s; "
          f"variables {sorted(variables)}; sdpa: {sdpa_note}", flush=True)
    inputs = make_inputs(config, s)
    results = [run_workload(w, args, hf, sdpa_note, module, variables, inputs, config, s) for w in workloads]
    loadavg_end = _loadavg()
    wall_s = time.perf_counter() - t_start
    print(f"\nloadavg at end {loadavg_end}; benchmark wall time {wall_s:.0f} s", flush=True)

    machine = harness.machine_info(device)
    command = f"python -m benchmarks.{DEFAULT_NAME} " + " ".join(argv if argv is not None else sys.argv[1:])
    name = args.name or (DEFAULT_NAME + ("_tiny" if args.tiny else ""))
    payload = {
        "benchmark": DEFAULT_NAME,
        "command": command.strip(),
        "setup": {"tiny": args.tiny, "dtype": "float32", "device": device, "impls": list(IMPLS),
                  "batch": s["batch"], "image": s["image"], "text_len": s["text_len"],
                  "text_lengths": s["lengths"], "repeats": args.repeats, "warmup": args.warmup,
                  "timing": "interleaved", "weights": "random (HF init, constants randomized), never downloaded",
                  "tolerance": args.tolerance, "sdpa": sdpa_note},
        "machine": machine,
        "threads": threads,
        "loadavg_start": loadavg_start,
        "loadavg_end": loadavg_end,
        "wall_s": wall_s,
        "workloads": results,
    }
    title = "GroupViT base forward" + (" (TINY smoke-test model)" if args.tiny else "") + ", fp32, " + device
    md = [f"### {title}", "", f"`{payload['command']}`", "",
          f"HF sdpa: {sdpa_note}. HF runs eager only.", ""]
    for r in results:
        md += _workload_md(r)
    return harness.finish_report(name, payload, md, write=not args.no_write)


if __name__ == "__main__":
    main()
