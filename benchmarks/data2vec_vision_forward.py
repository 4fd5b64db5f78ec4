"""Forward-pass speed of Data2VecVision (base size): zoo (jax.jit) vs HF PyTorch eager and sdpa.

    python -m benchmarks.data2vec_vision_forward [--workloads cls,seg] [--repeats 10 --seg-repeats 3]
    python -m benchmarks.data2vec_vision_forward --breakdown [--convs]  # segmentation: encoder vs heads
    python -m benchmarks.data2vec_vision_forward --tiny --no-write # a few seconds: smoke test

One process, random weights built here (never downloaded), base size as the released
data2vec-vision-base checkpoints: HF ``Data2VecVisionConfig`` defaults (hidden 768,
12 layers, 12 heads, intermediate 3072, patch 16, layer scale 0.1) with
``use_relative_position_bias=True``. Two workloads, forward in inference mode, fp32:

- ``cls``: ``Data2VecVisionForImageClassification`` (``use_mean_pooling=True``,
  1000 labels), batch 4 at 224 px (197 tokens);
- ``seg``: ``Data2VecVisionForSemanticSegmentation`` in facebook/data2vec-vision-base's
  ADE20k setup (``image_size=640``, 150 labels, ``out_indices=[3, 5, 7, 11]``, UperNet
  decode head + auxiliary FCN head with 256 channels, ``use_mean_pooling=False``),
  batch 1 at 640 px (1601 tokens, logits ``[1, 150, 160, 160]``).

HF initialises the class token, relative-position tables, biases and batch-norm
statistics to constants; those are randomized first (as in the parity tests) so the
output check compares them too. The HF eager model's weights are loaded into a second HF
instance built with ``attn_implementation="sdpa"`` and converted to zoo variables through
the family key table (the logic of ``tests/hf_parity.to_zoo``). Every implementation gets
the same random ``pixel_values`` (NCHW); logits are compared (max abs diff vs HF eager)
before anything is timed. The zoo forward is ``jax.jit``-compiled ahead of time
(``harness.jax_compile``; compile time reported apart); torch runs under
``torch.inference_mode()``; timing is interleaved (round-robin).

Note: HF's segmentation forward always runs the auxiliary head and throws its logits
away at inference (no ``labels``); the zoo computes them only for the loss, so under
``jax.jit`` XLA drops that head. Both return the same ``logits``; ``--breakdown`` shows
what the auxiliary head costs.

``--breakdown`` times the segmentation model's parts alone, zoo (jit) vs HF, same weights
and inputs: the encoder (``Data2VecVisionModel`` at 640 with the hidden states the heads
need; zoo vs HF eager vs HF sdpa), the FPN necks (4 hidden states -> 4 scales), the UperNet
``decode_head`` and the ``auxiliary_head`` (the heads have no attention: one HF model).
Each part's output is checked against HF's before it is timed. ``--convs`` adds the decode
head's two largest 3x3 convolutions alone (``fpn_bottleneck`` 3072 -> 768 and
``fpn_convs_0`` 768 -> 768, both on the 160 x 160 map): Winograd F(2x2, 3x3) (what the zoo
runs on CPU), XLA's convolution, the same conv as 9 shifted matmuls, and torch ``conv2d``.

Defaults keep a run to a few minutes on a quiet 2-core CPU: 10 timed runs for ``cls``,
3 for ``seg`` (a 640 px segmentation forward takes 15-40 s here), after the output check,
which is every implementation's first call (plus ``--warmup`` / ``--seg-warmup`` more).
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

DEFAULT_NAME = "data2vec_vision_forward"
IMPLS = ("zoo", "hf_eager", "hf_sdpa")

# config overrides on top of HF's Data2VecVisionConfig defaults (= base size)
BASE = dict(use_relative_position_bias=True)
WORKLOADS = {
    "cls": dict(arch="Data2VecVisionForImageClassification", batch=4, image=224,
                config=dict(BASE, image_size=224, num_labels=1000, use_mean_pooling=True)),
    "seg": dict(arch="Data2VecVisionForSemanticSegmentation", batch=1, image=640,
                config=dict(BASE, image_size=640, num_labels=150, out_indices=[3, 5, 7, 11],
                            use_auxiliary_head=True, auxiliary_channels=256, use_mean_pooling=False)),
}
# --tiny: same code paths, seconds instead of minutes (smoke test of the script)
TINY = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=37, patch_size=8)
TINY_WORKLOADS = {
    "cls": dict(batch=2, image=32, config=dict(image_size=32, num_labels=5)),
    "seg": dict(batch=1, image=64, config=dict(image_size=64, num_labels=5, out_indices=[2, 3, 4, 5],
                                               auxiliary_channels=16)),
}


def workload_spec(name: str, tiny: bool) -> dict:
    spec = copy.deepcopy(WORKLOADS[name])
    if tiny:
        t = TINY_WORKLOADS[name]
        spec.update(batch=t["batch"], image=t["image"])
        spec["config"].update(TINY, **t["config"])
    return spec


def describe(spec: dict) -> str:
    c = spec["config"]
    return (f"{spec['arch']} (hidden {c.get('hidden_size', 768)}, {c.get('num_hidden_layers', 12)} layers, "
            f"patch {c.get('patch_size', 16)}), batch {spec['batch']} x {spec['image']} px")


# ----------------------------------------------------------------------- setup
def randomize_constants(model, seed: int = 0) -> None:
    """Random values for the float tensors HF initialises to a constant (class token,
    relative-position tables, biases, norm weights, batch-norm statistics): the random
    Linear / conv weights stay as HF draws them (std 0.02), so activations keep their scale."""
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


def build_hf_models(spec: dict, seed: int = 0) -> dict:
    """{"hf_eager": model, "hf_sdpa": model}, eval, the same (randomized) state_dict."""
    import torch
    import transformers

    config = transformers.Data2VecVisionConfig(**spec["config"])
    cls = getattr(transformers, spec["arch"])
    torch.manual_seed(seed)
    eager = cls._from_config(copy.deepcopy(config), attn_implementation="eager").eval()
    randomize_constants(eager, seed)
    sdpa = cls._from_config(copy.deepcopy(config), attn_implementation="sdpa").eval()
    sdpa.load_state_dict(eager.state_dict())
    for name, m in (("hf_eager", eager), ("hf_sdpa", sdpa)):
        assert m.config._attn_implementation == name.split("_")[1], m.config._attn_implementation
    return {"hf_eager": eager, "hf_sdpa": sdpa}


def convert_to_zoo(hf_model):
    """(module, variables) equal to ``hf_model`` (the logic of tests/hf_parity.to_zoo);
    ``variables`` is what ``module.apply`` takes (``{"params", "batch_stats"}`` for segmentation)."""
    import jax.numpy as jnp

    from converters.mapping import torch_to_flax
    from zoo.pretrained import as_variables, build_model, pack_variables, param_shapes
    from zoo.registry import get_family

    family = get_family(hf_model.config.model_type)
    config = family.config_class.from_dict(hf_model.config.to_dict())
    module = build_model(config, type(hf_model).__name__)
    state = {k: v.detach().float().cpu().numpy() for k, v in hf_model.state_dict().items()}
    flat, report = torch_to_flax(state.keys(), state.__getitem__, family.key_table, param_shapes(module))
    if report.unused or report.missing:
        raise RuntimeError(report.summary())
    return module, as_variables(pack_variables({k: jnp.asarray(v) for k, v in flat.items()}))


def make_pixels(batch: int, image: int, seed: int = 0) -> np.ndarray:
    """Normalised-image-like noise ``[B, 3, H, W]`` float32."""
    return np.random.default_rng(seed).standard_normal((batch, 3, image, image), dtype=np.float32)


def _max_diff(a, b) -> float:
    d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    return float(d.max()) if d.size else 0.0


def _to_numpy(x):
    return x.detach().float().cpu().numpy() if hasattr(x, "detach") else np.asarray(x, np.float32)


def _loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


# --------------------------------------------------------------------- timing
def timed(calls: dict, args, repeats: int, warmup: int, extra: dict | None = None):
    """Interleaved timing of ``calls`` (torch ones named ``hf_*``), re-timed up to
    ``--attempts`` times while other processes use more than ``--max-load`` of the
    cores; returns (timings of the quietest attempt, its load record)."""
    syncs = {n: (None if n.startswith("hf") else harness.block) for n in calls}
    best = harness.quietest_attempt(
        lambda: harness.time_interleaved(calls, repeats=repeats, warmup=warmup, syncs=syncs,
                                         timing_kwargs=extra or {}),
        attempts=args.attempts, max_load=args.max_load, quiet_wait=args.quiet_wait)
    for t in best[0]:
        print(f"  {t.name}: median {t.median_ms:.1f} ms (min {t.min_ms:.1f}, IQR {t.iqr_ms:.1f}, "
              f"{t.repeats} runs)", flush=True)
    return best


# ------------------------------------------------------------------ workloads
def run_workload(name: str, args, impls: list[str]) -> dict:
    import jax
    import torch

    spec = workload_spec(name, args.tiny)
    print(f"\n== {name}: {describe(spec)}", flush=True)
    t0 = time.perf_counter()
    hf = build_hf_models(spec)
    module, variables = convert_to_zoo(hf["hf_eager"])
    print(f"models built and converted in {time.perf_counter() - t0:.1f} s", flush=True)
    pixels = make_pixels(spec["batch"], spec["image"])
    j_pixels, t_pixels = jax.device_put(pixels), torch.from_numpy(pixels)

    def zoo_forward(variables, pixel_values):
        return module.apply(variables, pixel_values).logits

    compiled, lower_s, compile_s = harness.jax_compile(zoo_forward, variables, j_pixels)
    calls = {"zoo": functools.partial(compiled, variables, j_pixels)}
    t1 = time.perf_counter()
    outputs = {"zoo": np.asarray(calls["zoo"]())}
    first_call_s = time.perf_counter() - t1
    print(f"zoo: trace+lower {lower_s:.2f} s, XLA compile {compile_s:.2f} s, first call {first_call_s:.2f} s",
          flush=True)
    for n in ("hf_eager", "hf_sdpa"):
        if n in impls:
            calls[n] = harness.torch_callable(lambda m=hf[n]: m(pixel_values=t_pixels).logits)
            outputs[n] = _to_numpy(calls[n]())

    ref = outputs["hf_eager"] if "hf_eager" in outputs else None
    checks = {}
    for n, o in outputs.items():
        if ref is not None and n != "hf_eager":
            checks[f"{n} vs hf_eager"] = {"logits_max_abs_diff": _max_diff(o, ref),
                                          "logits_max_abs": float(np.abs(ref).max()),
                                          "shape": list(o.shape)}
    for k, v in checks.items():
        print(f"check {k}: logits max abs diff {v['logits_max_abs_diff']:.2e} "
              f"(max |logit| {v['logits_max_abs']:.2f}, shape {v['shape']})", flush=True)
    bad = {k: v for k, v in checks.items() if not v["logits_max_abs_diff"] < args.tolerance}
    if bad:
        raise SystemExit(f"outputs disagree beyond {args.tolerance}: {bad}")
    del outputs

    repeats, warmup = (args.seg_repeats, args.seg_warmup) if name == "seg" else (args.repeats, args.warmup)
    extra = {"zoo": {"compile_s": compile_s, "lower_s": lower_s, "extra": {"first_call_s": first_call_s}}}
    timings, load = timed(calls, args, repeats, warmup, extra)
    by = {t.name: t for t in timings}
    return {"workload": name, "description": describe(spec), "arch": spec["arch"], "batch": spec["batch"],
            "image": spec["image"], "config_overrides": spec["config"], "repeats": repeats, "warmup": warmup,
            "timings": timings, "checks": checks, "load": load,
            "speedup_of_zoo": {f"{n} / zoo": by[n].median_ms / by["zoo"].median_ms for n in by if n != "zoo"}}


# ------------------------------------------------------------------ breakdown
def _zoo_fpn_module(hidden: int):
    """The FPN necks of ``Data2VecVisionForSemanticSegmentation`` as a module of their own,
    with the same parameter names (``fpn1_0``, ``fpn1_1``, ``fpn1_3``, ``fpn2_0``)."""
    import flax.linen as nn

    from zoo.nn.layers import gelu
    from zoo.nn.resize import max_pool
    from zoo.nn.upernet import BatchNorm, ConvTranspose2x2

    class FPN(nn.Module):
        @nn.compact
        def __call__(self, features):
            f1 = gelu(BatchNorm(name="fpn1_1")(ConvTranspose2x2(hidden, name="fpn1_0")(features[0])))
            return [ConvTranspose2x2(hidden, name="fpn1_3")(f1), ConvTranspose2x2(hidden, name="fpn2_0")(features[1]),
                    features[2], max_pool(features[3], 2)]

    return FPN()


def _subtree(variables: dict, names) -> dict:
    return {c: {n: tree[n] for n in names if n in tree} for c, tree in variables.items()}


def run_breakdown(args, impls: list[str]) -> list[dict]:
    """The segmentation model's parts alone: encoder (3 implementations), FPN necks,
    decode head, auxiliary head (zoo vs HF); each checked against HF, then timed interleaved."""
    import jax
    import torch

    from zoo.models.data2vec_vision import Data2VecVisionModel
    from zoo.nn.upernet import FCNHead, UperHead

    spec = workload_spec("seg", args.tiny)
    print(f"\n== breakdown of {describe(spec)}", flush=True)
    hf = build_hf_models(spec)
    module, variables = convert_to_zoo(hf["hf_eager"])
    cfg = module.config
    pixels = make_pixels(spec["batch"], spec["image"])
    j_pixels, t_pixels = jax.device_put(pixels), torch.from_numpy(pixels)
    idx = sorted(cfg.out_indices)
    batch, grid = spec["batch"], spec["image"] // cfg.patch
    heads = hf["hf_eager"]
    parts = []

    # ---- encoder: the 4 hidden states the heads take
    encoder = Data2VecVisionModel(cfg, add_pooling_layer=False)
    enc_vars = {"params": variables["params"]["data2vec_vision"]}

    def zoo_encoder(v, x):
        hs = encoder.apply(v, x, output_hidden_states=True).hidden_states
        return [hs[i - 1] for i in idx]

    def hf_encoder(m):
        hs = m.data2vec_vision(pixel_values=t_pixels, output_hidden_states=True).hidden_states
        return [hs[i - 1] for i in idx]

    enc_calls = {}
    compiled, lower_s, compile_s = harness.jax_compile(zoo_encoder, enc_vars, j_pixels)
    enc_calls["zoo"] = functools.partial(compiled, enc_vars, j_pixels)
    for n in ("hf_eager", "hf_sdpa"):
        if n in impls:
            enc_calls[n] = harness.torch_callable(functools.partial(hf_encoder, hf[n]))
    hidden = [_to_numpy(h) for h in harness.torch_callable(functools.partial(hf_encoder, hf["hf_eager"]))()]
    parts.append(dict(part="encoder", desc=f"Data2VecVisionModel, {cfg.num_hidden_layers} layers on "
                      f"[{batch}, {1 + grid * grid}, {cfg.hidden_size}] (hidden states {idx})",
                      calls=enc_calls, compile=(lower_s, compile_s), ref="hf_eager"))

    # ---- heads, on the HF encoder's hidden states (the same arrays for both frameworks)
    hidden_t = [torch.from_numpy(h) for h in hidden]

    def hf_fpn(hs):
        fs = [x[:, 1:, :].permute(0, 2, 1).reshape(batch, -1, grid, grid) for x in hs]
        return [op(f) for op, f in zip((heads.fpn1, heads.fpn2, heads.fpn3, heads.fpn4), fs)]

    fpn_t = harness.torch_callable(lambda: hf_fpn(hidden_t))()
    fpn_j = [jax.device_put(np.ascontiguousarray(f.numpy().transpose(0, 2, 3, 1))) for f in fpn_t]

    fpn = _zoo_fpn_module(cfg.hidden_size)
    fpn_vars = _subtree(variables, ("fpn1_0", "fpn1_1", "fpn1_3", "fpn2_0"))
    uper = UperHead(cfg.hidden_size, cfg.num_labels, cfg.pool_scales)
    uper_vars = _subtree(variables, ("decode_head",))
    uper_vars = {c: t["decode_head"] for c, t in uper_vars.items()}
    fcn = FCNHead(cfg.auxiliary_channels, cfg.num_labels, cfg.auxiliary_num_convs, cfg.auxiliary_concat_input)
    fcn_vars = {c: t["auxiliary_head"] for c, t in _subtree(variables, ("auxiliary_head",)).items()}

    head_specs = [
        ("fpn", f"FPN necks: 4 hidden states -> maps of {4 * grid}, {2 * grid}, {grid}, {grid // 2} px "
                "(2 ConvTranspose + BN + GELU; 1 ConvTranspose; identity; max-pool)",
         lambda v, hs: fpn.apply(v, [h[:, 1:].reshape(batch, grid, grid, -1) for h in hs]),
         fpn_vars, [jax.device_put(h) for h in hidden], lambda: hf_fpn(hidden_t)),
        ("decode_head", f"UperNet decode head (PSP + FPN, {cfg.hidden_size} channels) on the 4 maps -> logits",
         lambda v, fs: uper.apply(v, fs), uper_vars, fpn_j, lambda: heads.decode_head(fpn_t)),
        ("auxiliary_head", f"auxiliary FCN head ({cfg.auxiliary_channels} channels) on the third map "
                           "(HF runs it at inference; the zoo model's jit drops it)",
         lambda v, fs: fcn.apply(v, fs), fcn_vars, fpn_j, lambda: heads.auxiliary_head(fpn_t)),
    ]
    for part, desc, fn, v, x, hf_fn in head_specs:
        compiled, lower_s, compile_s = harness.jax_compile(fn, v, x)
        calls = {"zoo": functools.partial(compiled, v, x), "hf": harness.torch_callable(hf_fn)}
        parts.append(dict(part=part, desc=desc, calls=calls, compile=(lower_s, compile_s), ref="hf"))

    rows = []
    for p in parts:
        print(f"-- part {p['part']}: {p['desc']}", flush=True)
        outs = {}
        for n, call in p["calls"].items():
            o = call()
            o = o if isinstance(o, (list, tuple)) else [o]
            o = [_to_numpy(a) for a in o]
            if not n.startswith("hf"):  # zoo maps are channels-last; HF's NCHW (the encoder's are [B, L, C])
                o = [a.transpose(0, 3, 1, 2) if a.ndim == 4 else a for a in o]
            outs[n] = o
        diffs = {f"{n} vs {p['ref']}": max(_max_diff(a, b) for a, b in zip(o, outs[p["ref"]]))
                 for n, o in outs.items() if n != p["ref"]}
        scale = max(float(np.abs(a).max()) for a in outs[p["ref"]])
        print("  check " + ", ".join(f"{k}: max abs diff {d:.2e}" for k, d in diffs.items())
              + f" (max |value| {scale:.2f})", flush=True)
        bad = {k: d for k, d in diffs.items() if not d < args.tolerance}
        if bad:
            raise SystemExit(f"part {p['part']}: outputs disagree beyond {args.tolerance}: {bad}")
        del outs
        lower_s, compile_s = p["compile"]
        timings, load = timed(p["calls"], args, args.seg_repeats, args.seg_warmup,
                              {"zoo": {"compile_s": compile_s, "lower_s": lower_s}})
        by = {t.name: t for t in timings}
        rows.append({"part": p["part"], "desc": p["desc"], "timings": timings, "checks": diffs, "load": load,
                     "speedup_of_zoo": {f"{n} / zoo": by[n].median_ms / by["zoo"].median_ms
                                        for n in by if n != "zoo"}})
    return rows


def conv_benchmarks(args, channels: int, grid: int) -> list[dict]:
    """The decode head's largest 3x3 convolutions alone (random data of the model's shapes,
    batch 1, stride 1, pad 1, no bias): Winograd F(2x2, 3x3) (what ``zoo.nn.conv`` runs on
    CPU at these sizes), XLA's convolution, the same conv as 9 shifted matmuls summed, and
    torch ``conv2d`` (NCHW, what HF runs); interleaved, outputs compared first."""
    import jax
    import jax.numpy as jnp
    import torch

    size = 4 * grid  # the largest FPN scale
    cases = [("fpn_bottleneck", 4 * channels, channels, size), ("fpn_convs_0", channels, channels, size)]
    rows = []
    for label, c_in, c_out, hw in cases:
        rng = np.random.default_rng(4)
        x = rng.standard_normal((1, hw, hw, c_in), dtype=np.float32)
        w = rng.standard_normal((3, 3, c_in, c_out), dtype=np.float32) * (2.0 / (9 * c_in)) ** 0.5
        jx, jw = jax.device_put(x), jax.device_put(w)

        def xla_conv(x, w):
            return jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))

        def shifted_matmuls(x, w):
            xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
            out = None
            for i in range(3):
                for j in range(3):
                    part = xp[:, i:i + hw, j:j + hw, :] @ w[i, j]
                    out = part if out is None else out + part
            return out

        calls, outs = {}, {}
        from zoo.nn.conv import winograd_conv3x3

        for n, fn in (("zoo (Winograd, its default here)", winograd_conv3x3), ("zoo[XLA conv]", xla_conv),
                      ("zoo[9 shifted matmuls]", shifted_matmuls)):
            compiled, _, _ = harness.jax_compile(fn, jx, jw)
            calls[n] = functools.partial(compiled, jx, jw)
            outs[n] = np.asarray(calls[n]())
        tx = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        tw = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1)))
        calls["hf (torch conv2d)"] = harness.torch_callable(lambda: torch.nn.functional.conv2d(tx, tw, padding=1))
        outs["hf (torch conv2d)"] = calls["hf (torch conv2d)"]().numpy().transpose(0, 2, 3, 1)
        ref = outs["hf (torch conv2d)"]
        diffs = {n: _max_diff(o, ref) for n, o in outs.items() if not n.startswith("hf")}
        desc = f"{label}: 3x3 conv {c_in} -> {c_out} channels on {hw} x {hw}"
        print(f"-- conv {desc}; max abs diff vs torch: "
              + ", ".join(f"{n} {d:.1e}" for n, d in diffs.items()), flush=True)
        del outs
        timings, load = timed(calls, args, args.seg_repeats, args.seg_warmup)
        gflop = 2 * hw * hw * 9 * c_in * c_out / 1e9
        rows.append({"conv": label, "desc": desc, "gflop": gflop, "timings": timings, "checks": diffs, "load": load,
                     "gflops": {t.name: gflop / t.median_ms * 1e3 for t in timings}})
    return rows


# ----------------------------------------------------------------------- output
def _workload_md(r: dict) -> list[str]:
    md = [f"#### {r['workload']}: {r['description']}", "",
          harness.comparison_table(r["timings"], "zoo"), "",
          f"{r['repeats']} timed runs each after the output-check call and {r['warmup']} more warm-up runs, "
          "interleaved. "
          "speedup = implementation median / zoo median (> 1: zoo faster). compile s = XLA "
          "compilation (trace + lower adds "
          + ", ".join(f"{t.lower_s:.2f} s" for t in r["timings"] if t.lower_s is not None)
          + f"; first call {r['timings'][0].extra.get('first_call_s', float('nan')):.2f} s).", ""]
    if r["checks"]:
        md += ["| outputs | logits max abs diff | max abs logit (HF eager) | shape |", "|---|---:|---:|---|"]
        md += [f"| {k} | {v['logits_max_abs_diff']:.2e} | {v['logits_max_abs']:.2f} | {v['shape']} |"
               for k, v in r["checks"].items()]
        md.append("")
    note = harness.load_note(r["load"])
    if note:
        md += [note, ""]
    return md


def _breakdown_md(rows: list[dict]) -> list[str]:
    md = ["| part | implementation | median ms | min ms | IQR ms | compile s | speedup of zoo (this / zoo) "
          "| max abs diff vs HF (eager) | load by others |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    totals: dict[str, float] = {}
    for r in rows:
        by = {t.name: t for t in r["timings"]}
        zoo = by["zoo"]
        for t in r["timings"]:
            speed = "1.00 (reference)" if t.name == "zoo" else f"{t.median_ms / zoo.median_ms:.2f}x"
            diff = next((f"{d:.1e}" for k, d in r["checks"].items() if k.startswith(t.name + " ")), "reference")
            load = r["load"].get("foreign_cpu_fraction")
            md.append(f"| {r['part']} | {t.name} | {t.median_ms:.1f} | {t.min_ms:.1f} | {t.iqr_ms:.1f} | "
                      f"{'' if t.compile_s is None else f'{t.compile_s:.2f}'} | {speed} | {diff} | "
                      f"{'' if load is None else f'{load:.1%}'} |")
    for r in rows:
        by = {t.name: t.median_ms for t in r["timings"]}
        for n, v in by.items():
            key = "hf_sdpa" if n == "hf" else n  # the heads are the same for both HF models
            totals.setdefault(key, 0.0)
            totals[key] += v
            if n == "hf":
                totals.setdefault("hf_eager", 0.0)
                totals["hf_eager"] += v
    md += ["", "Parts described:", ""] + [f"- **{r['part']}**: {r['desc']}" for r in rows]
    zoo_no_aux = totals.get("zoo", 0.0) - next((t.median_ms for r in rows if r["part"] == "auxiliary_head"
                                                 for t in r["timings"] if t.name == "zoo"), 0.0)
    md += ["", "Sum of the parts' medians (ms; HF heads counted for both HF models): "
           + ", ".join(f"{n} {v:.0f}" for n, v in totals.items())
           + f"; zoo without the auxiliary head (what its jitted segmentation forward runs) {zoo_no_aux:.0f}.", ""]
    return md


def _convs_md(rows: list[dict]) -> list[str]:
    md = ["| conv | implementation | GFLOP | median ms | min ms | GFLOP/s | torch / this | max abs diff vs torch |",
          "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        by = {t.name: t for t in r["timings"]}
        ref = by["hf (torch conv2d)"]
        for t in r["timings"]:
            diff = f"{r['checks'][t.name]:.1e}" if t.name in r["checks"] else "reference"
            md.append(f"| {r['conv']} | {t.name} | {r['gflop']:.4g} | {t.median_ms:.0f} | {t.min_ms:.0f} | "
                      f"{r['gflops'][t.name]:.0f} | {ref.median_ms / t.median_ms:.2f}x | {diff} |")
    md += [""] + [f"- {r['desc']}; " + harness.load_note(r["load"], "load").lstrip("- ") for r in rows]
    return md + [""]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="cls,seg", help="comma list of cls, seg")
    parser.add_argument("--impls", default="zoo,hf_eager,hf_sdpa",
                        help="comma list of zoo, hf_eager, hf_sdpa (zoo is always the reference)")
    parser.add_argument("--seg-repeats", type=int, default=3, help="timed runs per implementation, segmentation")
    parser.add_argument("--seg-warmup", type=int, default=0,
                        help="untimed runs before timing, segmentation (beyond the output check, which is "
                             "every implementation's first call already)")
    parser.add_argument("--breakdown", action="store_true",
                        help="time the segmentation model's parts instead (encoder, FPN, decode head, aux head)")
    parser.add_argument("--convs", action="store_true",
                        help="with --breakdown: also time the decode head's two largest 3x3 convs alone "
                             "(Winograd, XLA conv, 9 shifted matmuls, torch conv2d)")
    parser.add_argument("--tiny", action="store_true", help="tiny models and images: a smoke test of the script")
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
    threads = harness.setup_threads(cores)
    import transformers

    transformers.logging.set_verbosity_error()
    device = harness.select_device(args.device)
    if device != "cpu":
        raise SystemExit("this benchmark is written for the CPU (no .cuda() of the HF models)")
    impls = [s for s in args.impls.split(",") if s]
    workloads = [s for s in args.workloads.split(",") if s]
    unknown = [i for i in impls if i not in IMPLS] + [w for w in workloads if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown implementation(s) / workload(s) {unknown}")
    if "zoo" not in impls:
        impls.insert(0, "zoo")
    print(f"torch.set_num_threads({threads.get('torch_num_threads')}) = the {cores} cores available to this "
          f"process (os.cpu_count() {os.cpu_count()}); XLA: {threads['xla_threads']}; "
          f"loadavg at start {loadavg_start}", flush=True)

    t_start = time.perf_counter()
    results, breakdown, convs = [], None, None
    if args.breakdown:
        breakdown = run_breakdown(args, impls)
        if args.convs:
            spec = workload_spec("seg", args.tiny)
            c = spec["config"]
            convs = conv_benchmarks(args, c.get("hidden_size", 768), spec["image"] // c.get("patch_size", 16))
    else:
        results = [run_workload(w, args, impls) for w in workloads]
    loadavg_end = _loadavg()
    wall_s = time.perf_counter() - t_start
    print(f"\nloadavg at end {loadavg_end}; benchmark wall time {wall_s:.0f} s", flush=True)

    machine = harness.machine_info(device)
    command = f"python -m benchmarks.{DEFAULT_NAME} " + " ".join(argv if argv is not None else sys.argv[1:])
    name = args.name or (DEFAULT_NAME + ("_breakdown" if args.breakdown else "") + ("_tiny" if args.tiny else ""))
    payload = {
        "benchmark": DEFAULT_NAME,
        "command": command.strip(),
        "setup": {"mode": "breakdown" if args.breakdown else "forward", "tiny": args.tiny, "dtype": "float32",
                  "device": device, "impls": impls, "repeats": args.repeats, "warmup": args.warmup,
                  "seg_repeats": args.seg_repeats, "seg_warmup": args.seg_warmup, "timing": "interleaved",
                  "weights": "random (HF init, constants randomized), never downloaded",
                  "tolerance": args.tolerance},
        "machine": machine,
        "threads": threads,
        "loadavg_start": loadavg_start,
        "loadavg_end": loadavg_end,
        "wall_s": wall_s,
        "workloads": results,
        "breakdown": breakdown,
        "convs": convs,
    }
    title = "Data2VecVision base " + ("segmentation breakdown" if args.breakdown else "forward") \
        + (" (TINY smoke-test models)" if args.tiny else "") + ", fp32, " + device
    md = [f"### {title}", "", f"`{payload['command']}`", ""]
    for r in results:
        md += _workload_md(r)
    if breakdown:
        md += [f"Parts of the segmentation model alone, {args.seg_repeats} timed runs each after the "
               f"output-check call and {args.seg_warmup} more warm-up runs, interleaved per part; speedup = implementation median / "
               "zoo median (> 1: zoo faster).", ""] + _breakdown_md(breakdown)
    if convs:
        md += ["The decode head's largest convolutions alone (random data, the model's shapes), "
               f"{args.seg_repeats} timed runs each, interleaved:", ""] + _convs_md(convs)
    return harness.finish_report(name, payload, md, write=not args.no_write)


if __name__ == "__main__":
    main()
