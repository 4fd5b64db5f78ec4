"""IDEFICS (~1B parameters) generation speed: prefill and per-token latency, zoo (jax.jit) vs HF PyTorch.

    python -m benchmarks.idefics_decode [--prompt 128 --steps 16 --repeats 5]
    python -m benchmarks.idefics_decode --tiny --no-write  # a few seconds: smoke test
    python -m benchmarks.idefics_decode --device gpu --dtype bfloat16  # on a GPU: bf16 tokens/s

One process, random weights built here in torch (never downloaded) and converted to zoo
params through the family key table (``data2vec_vision_forward.convert_to_zoo``). The model
is ``IdeficsForVisionText2Text`` at about 1B parameters (the exact count is printed and
recorded): a LLaMA-style decoder (hidden 2048, intermediate 5632, 12 layers, 16 heads,
vocab 32000 + the 2 additional IDEFICS tokens ``<fake_token_around_image>`` / ``<image>``,
untied LM head) with a gated cross-attention block before every 4th layer (3 blocks), a
CLIP vision tower (embed 768, 12 layers, 12 heads, intermediate 3072, patch 14 at 224 px:
257 tokens) and a perceiver resampler (64 latents, depth 2, 16 heads x 96). 12 rather than
16 decoder layers keep it at ~0.99B (16 layers would be 1.24B).

HF initialises biases and norm weights to constants and the cross-attention gates
(``alpha_*``) to zero, which would make the images irrelevant: the constants are randomized
(``data2vec_vision_forward.randomize_constants``) and the gates drawn from N(0, 1) (as in
``tests/test_idefics_parity.py``), so the output check covers the image path too.

Inputs: batch 1, one image (random ``pixel_values`` ``[1, 1, 3, 224, 224]``) and a prompt of
``--prompt`` tokens including the image: ``<s> <fake> <image> <fake>`` and random text ids;
``image_attention_mask`` is 1 from the ``<image>`` token on (what IdeficsProcessor gives: the
first two tokens see no image, so their cross-attention is gated off).

Two workloads, both what ``generate`` does, greedy, batch 1:

- ``prefill``: the first call over the prompt with the image (vision tower + resampler +
  decoder over all prompt tokens, logits of the last position only, ``logits_to_keep=1``
  as HF's ``generate``), filling an empty cache;
- ``decode``: one single-token step after the prefill: HF with its ``DynamicCache`` (grown
  by one position per step), ``attention_mask`` grown by one, ``perceiver_embeddings`` =
  the prefill's ``image_hidden_states`` and the last row of ``image_attention_mask`` (HF's
  ``prepare_inputs_for_generation`` / ``_update_model_kwargs_for_generation``); the zoo with
  its fixed-size cache (``init_cache(1, max_length)``, ``attention_mask`` spanning
  ``max_length``) and the inputs ``module.decode_inputs(prefill_outputs, prefill_inputs)``,
  so the vision tower runs once. Each step includes the greedy arg-max of the logits and the
  mask update. The latency is the median over ``--steps`` consecutive steps (each
  implementation continuing its own greedy sequence), after ``--decode-warmup`` untimed ones.

Before timing, the outputs are compared with HF eager: the prefill's last-position logits and
image hidden states, then ``--check-steps`` decode steps teacher-forced on HF eager's greedy
tokens (max abs diff of every step's logits, and how often each implementation's own greedy
token equals HF eager's). The run stops if a difference exceeds ``--tolerance``.

HF runs one model, switched between ``attn_implementation="sdpa"`` and ``"eager"`` with
``set_attn_implementation`` before each call (one copy of the weights in memory). The zoo
functions are ``jax.jit``-compiled ahead of time (``harness.jax_compile``: the prefill once,
the decode step once, both compile times reported apart); torch runs under
``torch.inference_mode()`` with ``requires_grad`` off; timing is interleaved (round-robin),
with the machine load recorded (``harness.LoadMonitor``).

``--device gpu`` (jax on a GPU and torch with CUDA) with ``--dtype bfloat16`` measures bf16
tokens/s on an accelerator; on the CPU, bfloat16 only gets slower.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import numpy as np

from benchmarks import harness
from benchmarks.data2vec_vision_forward import (_loadavg, _max_diff, _to_numpy, convert_to_zoo,
                                                randomize_constants, timed)

DEFAULT_NAME = "idefics_decode"
IMPLS = ("zoo", "hf_sdpa", "hf_eager")
REFERENCE = "hf_eager"
IMAGE_SIZE = 224
CONFIG = dict(
    vocab_size=32000, additional_vocab_size=2, hidden_size=2048, intermediate_size=5632, num_hidden_layers=12,
    num_attention_heads=16, cross_layer_interval=4, use_resampler=True, max_position_embeddings=2048,
    vision_config=dict(embed_dim=768, image_size=IMAGE_SIZE, patch_size=14, num_hidden_layers=12,
                       num_attention_heads=12, intermediate_size=3072),
    perceiver_config=dict(resampler_n_latents=64, resampler_depth=2, resampler_n_heads=16, resampler_head_dim=96),
)
# --tiny: same code paths, seconds instead of minutes (smoke test of the script)
TINY = dict(
    vocab_size=99, additional_vocab_size=2, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
    num_attention_heads=4, cross_layer_interval=2, use_resampler=True, max_position_embeddings=64,
    vision_config=dict(embed_dim=24, image_size=28, patch_size=14, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=30),
    perceiver_config=dict(resampler_n_latents=4, resampler_depth=1, resampler_n_heads=2, resampler_head_dim=8),
)
TINY_RUN = dict(prompt=12, steps=4, check_steps=2, repeats=3, decode_warmup=1, quiet_wait=0.0)
FULL_RUN = dict(prompt=128, steps=16, check_steps=4, repeats=5, decode_warmup=2, quiet_wait=60.0)


def model_kwargs(tiny: bool) -> dict:
    kw = TINY if tiny else CONFIG
    return {**kw, "vision_config": dict(kw["vision_config"]), "perceiver_config": dict(kw["perceiver_config"])}


def describe(config, n_params: int, prompt: int) -> str:
    v, p = config.vision_config, config.perceiver_config
    return (f"IdeficsForVisionText2Text, {n_params / 1e9:.3f}B parameters ({n_params:,}): decoder hidden "
            f"{config.hidden_size}, intermediate {config.intermediate_size}, {config.num_hidden_layers} layers, "
            f"{config.num_attention_heads} heads, vocab {config.vocab_size} + {config.additional_vocab_size}, "
            f"cross-attention every {config.cross_layer_interval} layers; vision embed {v.embed_dim}, "
            f"{v.num_hidden_layers} layers, patch {v.patch_size} at {v.image_size} px; resampler "
            f"{p.resampler_n_latents} latents, depth {p.resampler_depth}. Batch 1, one image, prompt {prompt} tokens")


# ----------------------------------------------------------------------- setup
def build_hf_model(tiny: bool, seed: int = 0):
    """HF model (eval, no grads, constants randomized, gates N(0, 1)), attention = sdpa."""
    import torch
    import transformers

    config = transformers.IdeficsConfig(**model_kwargs(tiny))
    torch.manual_seed(seed)
    model = transformers.IdeficsForVisionText2Text._from_config(config, attn_implementation="sdpa").eval()
    model.requires_grad_(False)
    randomize_constants(model, seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # HF starts the gates at 0 (images ignored); trained ones are O(1)
        for name, p in model.named_parameters():
            if "alpha" in name:
                p.copy_(torch.randn(p.shape, generator=g))
    return model


def use_attention(model, impl: str) -> None:
    """Switch the one HF model to ``impl`` ("sdpa" / "eager"), vision tower included."""
    if model.config._attn_implementation != impl:
        model.set_attn_implementation(impl)
    if model.config.vision_config._attn_implementation != impl:  # pragma: no cover - HF changed
        raise RuntimeError(f"HF did not switch the vision tower to {impl!r}")


def make_inputs(config, prompt: int, seed: int = 0) -> dict:
    """``input_ids [1, P]`` (``<s> <fake> <image> <fake>`` + random text), ``pixel_values
    [1, 1, 3, H, W]``, ``image_attention_mask [1, P, 1]`` (1 from the ``<image>`` token on)."""
    if prompt < 5:
        raise ValueError(f"the prompt needs >= 5 tokens (<s> <fake> <image> <fake> text), got {prompt}")
    rng = np.random.default_rng(seed)
    fake, image = config.vocab_size, config.vocab_size + 1  # the two additional tokens
    ids = rng.integers(3, config.vocab_size, (1, prompt)).astype(np.int64)
    ids[0, :4] = [config.bos_token_id, fake, image, fake]
    image_mask = np.zeros((1, prompt, 1), np.int64)
    image_mask[0, 2:] = 1
    size = config.vision_config.image_size
    pixels = rng.standard_normal((1, 1, 3, size, size), dtype=np.float32)
    return {"input_ids": ids, "pixel_values": pixels, "image_attention_mask": image_mask}


# ------------------------------------------------------------------ zoo calls
def zoo_functions(module):
    """(prefill, step), pure functions to jit: the generation calls of the zoo model."""
    import jax
    import jax.numpy as jnp

    def prefill(variables, cache, attention_mask, inputs):
        return module.apply(variables, attention_mask=attention_mask, past_key_values=cache, use_cache=True,
                            logits_to_keep=1, **inputs)

    def step(variables, cache, attention_mask, token, inputs):
        attention_mask = jax.lax.dynamic_update_slice(  # the new position becomes visible
            attention_mask, jnp.ones((attention_mask.shape[0], 1), attention_mask.dtype), (0, cache.length))
        o = module.apply(variables, input_ids=token, attention_mask=attention_mask, past_key_values=cache,
                         use_cache=True, **inputs)
        logits = o.logits[:, -1]
        return jnp.argmax(logits, -1)[:, None].astype(token.dtype), logits, o.past_key_values, attention_mask

    return prefill, step


class ZooDecoder:
    """Single-token steps of the compiled zoo ``step``, continuing from a prefill output."""

    def __init__(self, step, variables, prefill_out, attention_mask, inputs):
        import jax.numpy as jnp

        self.step, self.variables, self.inputs = step, variables, inputs
        self.cache, self.mask = prefill_out.past_key_values, attention_mask
        self.token = jnp.argmax(prefill_out.logits[:, -1], -1)[:, None].astype(jnp.int32)

    def __call__(self, token=None):
        """One step on ``token`` (default: the previous greedy one); (next greedy token, logits)."""
        import jax.numpy as jnp

        tok = self.token if token is None else jnp.asarray(token, jnp.int32).reshape(1, 1)
        self.token, logits, self.cache, self.mask = self.step(self.variables, self.cache, self.mask, tok,
                                                              self.inputs)
        return self.token, logits


class HFDecoder:
    """Single-token steps of the HF model (one attention implementation), as ``generate``."""

    def __init__(self, model, impl: str, prefill_out, attention_mask, image_attention_mask):
        self.model, self.impl = model, impl
        self.cache, self.mask = prefill_out.past_key_values, attention_mask
        self.images = prefill_out.image_hidden_states
        self.image_mask = image_attention_mask[:, -1:]
        self.token = prefill_out.logits[:, -1].argmax(-1, keepdim=True)

    def __call__(self, token=None):
        import torch

        use_attention(self.model, self.impl)
        with torch.inference_mode():
            tok = self.token if token is None else torch.as_tensor(token, device=self.mask.device).reshape(1, 1)
            self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], 1)
            key = "perceiver_embeddings" if self.model.config.use_resampler else "image_encoder_embeddings"
            out = self.model(input_ids=tok, attention_mask=self.mask, past_key_values=self.cache,
                             image_attention_mask=self.image_mask, use_cache=True, **{key: self.images})
            logits = out.logits[:, -1]
            self.token = logits.argmax(-1, keepdim=True)
        return self.token, logits


# ------------------------------------------------------------------- the run
def run(args) -> dict:
    import jax
    import jax.numpy as jnp
    import torch
    from transformers import DynamicCache

    gpu = args.device_used == "gpu"
    tdev = "cuda" if gpu else "cpu"
    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    jdtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[args.dtype]
    t0 = time.perf_counter()
    hf = build_hf_model(args.tiny)
    config = hf.config
    n_params = sum(p.numel() for p in hf.parameters())
    module, variables = convert_to_zoo(hf)
    if args.dtype != "float32":
        module = module.clone(dtype=jdtype, param_dtype=jdtype)
        variables = jax.tree.map(lambda a: a.astype(jdtype), variables)
    if gpu or args.dtype != "float32":
        hf.to(device=tdev, dtype=tdtype)
    n_zoo = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(variables))
    desc = describe(config, n_params, args.prompt)
    print(f"{desc}\nbuilt in torch and converted in {time.perf_counter() - t0:.1f} s; zoo parameters {n_zoo:,}",
          flush=True)
    if n_zoo != n_params:
        raise SystemExit(f"the zoo model has {n_zoo} parameters, HF {n_params}")

    # ---- inputs
    x = make_inputs(config, args.prompt)
    max_length = args.prompt + args.check_steps + args.attempts * (args.decode_warmup + args.steps)
    mask0 = np.zeros((1, max_length), np.int32)
    mask0[:, :args.prompt] = 1
    z_inputs = {"input_ids": jnp.asarray(x["input_ids"], jnp.int32),
                "pixel_values": jnp.asarray(x["pixel_values"], jdtype),
                "image_attention_mask": jnp.asarray(x["image_attention_mask"], jnp.int32)}
    z_mask, z_cache = jnp.asarray(mask0), module.init_cache(1, max_length)
    t_inputs = {"input_ids": torch.from_numpy(x["input_ids"]).to(tdev),
                "pixel_values": torch.from_numpy(x["pixel_values"]).to(tdev, tdtype),
                "image_attention_mask": torch.from_numpy(x["image_attention_mask"]).to(tdev)}
    t_mask = torch.ones((1, args.prompt), dtype=torch.int64, device=tdev)

    # ---- zoo: compile prefill, first call, decode inputs, compile step
    prefill_fn, step_fn = zoo_functions(module)
    prefill, p_lower, p_compile = harness.jax_compile(prefill_fn, variables, z_cache, z_mask, z_inputs)
    t1 = time.perf_counter()
    z_pre = harness.block(prefill(variables, z_cache, z_mask, z_inputs))
    p_first = time.perf_counter() - t1
    rest = module.decode_inputs(z_pre, z_inputs)
    rest.pop("input_ids", None)
    token0 = jnp.zeros((1, 1), jnp.int32)
    step, s_lower, s_compile = harness.jax_compile(step_fn, variables, z_pre.past_key_values, z_mask, token0, rest)
    print(f"zoo prefill: trace+lower {p_lower:.2f} s, XLA compile {p_compile:.2f} s, first call {p_first:.2f} s; "
          f"decode step: trace+lower {s_lower:.2f} s, XLA compile {s_compile:.2f} s; cache max_length "
          f"{max_length}", flush=True)

    # ---- HF prefill (both attention implementations)
    def hf_prefill(impl):
        def call():
            use_attention(hf, impl)
            return hf(**t_inputs, attention_mask=t_mask, past_key_values=DynamicCache(config=hf.config),
                      use_cache=True, logits_to_keep=1)
        return harness.torch_callable(call)

    prefill_calls = {"zoo": functools.partial(prefill, variables, z_cache, z_mask, z_inputs),
                     "hf_sdpa": hf_prefill("sdpa"), "hf_eager": hf_prefill("eager")}
    pre = {"zoo": z_pre, **{n: prefill_calls[n]() for n in ("hf_sdpa", "hf_eager")}}
    switch = []  # what switching the HF model's attention costs inside every timed HF call
    for impl in ("sdpa", "eager") * 5:
        t1 = time.perf_counter()
        use_attention(hf, impl)
        switch.append(time.perf_counter() - t1)
    switch_ms = float(np.median(switch) * 1e3)
    print(f"HF set_attn_implementation switch: median {switch_ms:.2f} ms (inside every timed HF call)", flush=True)

    # ---- output check: prefill logits + image states, then teacher-forced decode steps
    decoders = {"zoo": ZooDecoder(step, variables, z_pre, z_mask, rest),
                **{n: HFDecoder(hf, n.split("_")[1], pre[n], t_mask, t_inputs["image_attention_mask"])
                   for n in ("hf_sdpa", "hf_eager")}}
    step_logits = {n: [_to_numpy(pre[n].logits[:, -1])] for n in IMPLS}
    images = {n: _to_numpy(pre[n].image_hidden_states) for n in IMPLS}
    for _ in range(args.check_steps):
        ref_token = int(np.argmax(step_logits[REFERENCE][-1]))
        for n in IMPLS:
            step_logits[n].append(_to_numpy(decoders[n](ref_token)[1]))
    checks = {}
    ref_tokens = [int(np.argmax(lg)) for lg in step_logits[REFERENCE]]
    for n in IMPLS:
        if n == REFERENCE:
            continue
        own = [int(np.argmax(lg)) for lg in step_logits[n]]
        checks[f"{n} vs {REFERENCE}"] = {
            "prefill_logits_max_abs_diff": _max_diff(step_logits[n][0], step_logits[REFERENCE][0]),
            "image_hidden_states_max_abs_diff": _max_diff(images[n], images[REFERENCE]),
            "decode_logits_max_abs_diff": max((_max_diff(a, b) for a, b in
                                               zip(step_logits[n][1:], step_logits[REFERENCE][1:])), default=0.0),
            "logits_max_abs": float(max(np.abs(lg).max() for lg in step_logits[REFERENCE])),
            "greedy_agreement": float(np.mean([a == b for a, b in zip(own, ref_tokens)])),
            "greedy_tokens_compared": len(own),
        }
    for k, v in checks.items():
        print(f"check {k}: " + ", ".join(f"{a} {b:.2e}" if isinstance(b, float) and a != "greedy_agreement"
                                         else f"{a} {b}" for a, b in v.items()), flush=True)
    print(f"HF eager greedy tokens (prefill + {args.check_steps} steps): {ref_tokens}", flush=True)
    keys = ("prefill_logits_max_abs_diff", "image_hidden_states_max_abs_diff", "decode_logits_max_abs_diff")
    bad = {k: v for k, v in checks.items() if not max(v[key] for key in keys) < args.tolerance}
    if bad:
        raise SystemExit(f"outputs disagree beyond {args.tolerance}: {bad}")
    del pre, step_logits, images

    # ---- timing
    syncs_note = "zoo: jax.block_until_ready; torch: " + ("cuda synchronize" if gpu else "synchronous (CPU)")
    results = {}
    print(f"\n== prefill: {args.repeats} timed runs each, {args.warmup} warm-up", flush=True)
    extra = {"zoo": {"compile_s": p_compile, "lower_s": p_lower, "extra": {"first_call_s": p_first}}}
    prefill_timing = _timed(prefill_calls, args, args.repeats, args.warmup, extra, gpu)
    results["prefill"] = prefill_timing
    print(f"\n== decode: {args.steps} timed steps each, {args.decode_warmup} warm-up, continuing the greedy "
          f"sequences at position {args.prompt + args.check_steps}", flush=True)
    decode_calls = {n: (lambda d=decoders[n]: d()[0]) for n in IMPLS}
    extra = {"zoo": {"compile_s": s_compile, "lower_s": s_lower}}
    results["decode"] = _timed(decode_calls, args, args.steps, args.decode_warmup, extra, gpu)
    for name, (timings, load) in results.items():
        by = {t.name: t for t in timings}
        results[name] = {"workload": name, "timings": timings, "load": load,
                         "speedup_of_zoo": {f"{n} / zoo": by[n].median_ms / by["zoo"].median_ms
                                            for n in by if n != "zoo"}}
    by = {t.name: t for t in results["decode"]["timings"]}
    tokens_per_s = {n: 1e3 / t.median_ms for n, t in by.items()}
    return {"description": desc, "n_params": n_params, "config": model_kwargs(args.tiny), "max_length": max_length,
            "checks": checks, "reference_greedy_tokens": ref_tokens, "sync": syncs_note,
            "hf_attention_switch_ms": switch_ms,
            "compile": {"prefill": {"lower_s": p_lower, "compile_s": p_compile, "first_call_s": p_first},
                        "decode_step": {"lower_s": s_lower, "compile_s": s_compile}},
            "workloads": [results["prefill"], results["decode"]], "decode_tokens_per_s": tokens_per_s}


def _timed(calls, args, repeats, warmup, extra, gpu):
    if not gpu:
        return timed(calls, args, repeats, warmup, extra)
    sync = harness.torch_sync("gpu")  # timed() leaves torch unsynchronised (CPU): sync inside the calls
    wrapped = {n: (c if n == "zoo" else (lambda c=c: sync(c()))) for n, c in calls.items()}
    return timed(wrapped, args, repeats, warmup, extra)


# ----------------------------------------------------------------------- output
def markdown(payload: dict) -> str:
    r, s = payload["result"], payload["setup"]
    pre, dec = ({t.name: t for t in w["timings"]} for w in r["workloads"])
    title = ("IDEFICS ~1B generation" + (" (TINY smoke-test model)" if s["tiny"] else "")
             + f", {s['dtype']}, {s['device']}")
    md = [f"### {title}", "", f"`{payload['command']}`", "", r["description"] + ".", "",
          "| implementation | prefill ms (min, IQR) | per-token ms (min, IQR) | tokens/s | prefill: this / zoo "
          "| per token: this / zoo |", "|---|---:|---:|---:|---:|---:|"]
    for n in s["impls"]:
        p, d = pre[n], dec[n]
        ratio = ("1.00 (reference)", "1.00 (reference)") if n == "zoo" else \
            (f"{p.median_ms / pre['zoo'].median_ms:.2f}x", f"{d.median_ms / dec['zoo'].median_ms:.2f}x")
        md.append(f"| {n} | {p.median_ms:.0f} ({p.min_ms:.0f}, {p.iqr_ms:.0f}) | {d.median_ms:.1f} ({d.min_ms:.1f}, "
                  f"{d.iqr_ms:.1f}) | {1e3 / d.median_ms:.2f} | {ratio[0]} | {ratio[1]} |")
    c = r["compile"]
    md += ["", f"this / zoo = implementation median / zoo median (> 1: zoo faster). Prefill: {s['prefill_repeats']} "
           f"timed runs each after the output check and {s['prefill_warmup']} warm-up, interleaved. Per token: median "
           f"of {s['steps']} consecutive greedy steps each (after {s['decode_warmup']} untimed), interleaved step by "
           f"step, KV cache at positions {s['prompt'] + s['check_steps']}..; the zoo's fixed cache holds "
           f"{r['max_length']} positions.", "",
           f"Zoo compile (apart from the timings): prefill trace+lower {c['prefill']['lower_s']:.2f} s + XLA "
           f"{c['prefill']['compile_s']:.2f} s (first call {c['prefill']['first_call_s']:.2f} s); decode step "
           f"trace+lower {c['decode_step']['lower_s']:.2f} s + XLA {c['decode_step']['compile_s']:.2f} s. "
           f"HF has no compile step; its timed calls include switching the one HF model's attention "
           f"(`set_attn_implementation`, {r['hf_attention_switch_ms']:.2f} ms).", "",
           f"| outputs vs {REFERENCE} | prefill logits max abs diff | image states max abs diff | decode logits max "
           "abs diff | max abs logit | greedy tokens equal |", "|---|---:|---:|---:|---:|---:|"]
    for k, v in r["checks"].items():
        md.append(f"| {k} | {v['prefill_logits_max_abs_diff']:.2e} | {v['image_hidden_states_max_abs_diff']:.2e} | "
                  f"{v['decode_logits_max_abs_diff']:.2e} | {v['logits_max_abs']:.2f} | "
                  f"{v['greedy_agreement']:.0%} of {v['greedy_tokens_compared']} |")
    md += ["", f"Decode steps of the check teacher-forced on {REFERENCE}'s greedy tokens ({s['check_steps']} steps "
           "after the prefill's token).", ""]
    if s["device"] == "cpu":
        md += ["No GPU was used (none lent to this run): no bf16 tokens/s on an accelerator here; "
               "`--device gpu --dtype bfloat16` measures them where there is one.", ""]
    for w in r["workloads"]:
        md += [f"#### {w['workload']}", "", harness.comparison_table(w["timings"], "zoo"), ""]
        note = harness.load_note(w["load"])
        if note:
            md += [note, ""]
    return "\n".join(md)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model and inputs: a smoke test of the script")
    parser.add_argument("--prompt", type=int, default=None, help="prompt tokens, image tokens included (128)")
    parser.add_argument("--steps", type=int, default=None, help="timed decode steps per implementation (16)")
    parser.add_argument("--decode-warmup", type=int, default=None, help="untimed decode steps before timing (2)")
    parser.add_argument("--check-steps", type=int, default=None,
                        help="teacher-forced decode steps of the output check (4)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="weights and compute dtype of both frameworks (bfloat16: for a GPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: all cores)")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="largest accepted max abs diff vs HF eager (default 1e-3; 0.5 for bfloat16)")
    parser.add_argument("--attempts", type=int, default=1,
                        help="time again, up to this many times, while other processes use more than "
                             "--max-load of the cores; the quietest attempt is reported")
    parser.add_argument("--max-load", type=float, default=0.05,
                        help="largest acceptable share of the cores used by other processes while timing")
    harness.add_common_args(parser, repeats=5, warmup=0)
    parser.set_defaults(repeats=None, quiet_wait=None)  # --repeats / --warmup: the prefill's (5 / 0)
    args = parser.parse_args(argv)
    for k, v in (TINY_RUN if args.tiny else FULL_RUN).items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    if args.tolerance is None:
        args.tolerance = 1e-3 if args.dtype == "float32" else 0.5

    loadavg_start = _loadavg()
    cores = harness.available_cores()
    threads = harness.setup_threads(args.threads or cores)
    import transformers

    transformers.logging.set_verbosity_error()
    args.device_used = harness.select_device(args.device)
    print(f"torch.set_num_threads({threads.get('torch_num_threads')}); {cores} cores available to this "
          f"process (os.cpu_count() {os.cpu_count()}); XLA: {threads['xla_threads']}; device "
          f"{args.device_used}; loadavg at start {loadavg_start}", flush=True)

    t_start = time.perf_counter()
    result = run(args)
    loadavg_end = _loadavg()
    wall_s = time.perf_counter() - t_start
    print(f"\nloadavg at end {loadavg_end}; benchmark wall time {wall_s:.0f} s", flush=True)

    machine = harness.machine_info(args.device_used)
    command = f"python -m benchmarks.{DEFAULT_NAME} " + " ".join(argv if argv is not None else sys.argv[1:])
    name = args.name or (DEFAULT_NAME + ("_tiny" if args.tiny else "")
                         + ("" if args.device_used == "cpu" else f"_{args.device_used}")
                         + ("" if args.dtype == "float32" else f"_{args.dtype}"))
    payload = {
        "benchmark": DEFAULT_NAME,
        "command": command.strip(),
        "setup": {"tiny": args.tiny, "dtype": args.dtype, "device": args.device_used, "impls": list(IMPLS),
                  "reference": REFERENCE, "batch": 1, "num_images": 1, "prompt": args.prompt, "steps": args.steps,
                  "decode_warmup": args.decode_warmup, "check_steps": args.check_steps,
                  "prefill_repeats": args.repeats, "prefill_warmup": args.warmup, "quiet_wait_s": args.quiet_wait,
                  "timing": "interleaved", "decoding": "greedy", "tolerance": args.tolerance,
                  "weights": "random (HF init, constants randomized, gates N(0, 1)), built in torch, never downloaded",
                  "gpu": "none lent to this run" if args.device_used == "cpu" else args.device_used},
        "machine": machine,
        "threads": threads,
        "loadavg_start": loadavg_start,
        "loadavg_end": loadavg_end,
        "wall_s": wall_s,
        "result": result,
    }
    return harness.finish_report(name, payload, [markdown(payload)], write=not args.no_write)


if __name__ == "__main__":
    main()
