"""IDEFICS (~1B parameters) generation: prefill and per-token latency, zoo (jax.jit) vs HF PyTorch.

    python -m benchmarks.idefics_decode [--prompt 128 --steps 16 --repeats 5 --attempts 2 --quiet-wait 300]
    python -m benchmarks.idefics_decode --tiny --no-write                      # seconds: smoke test
    python -m benchmarks.idefics_decode --device gpu --dtype bfloat16          # bf16 tokens/s on a GPU

``IdeficsForVisionText2Text``: decoder hidden 2048, intermediate 5632, 12 layers, 16 heads,
vocab 32000 + 2, untied LM head, gated cross-attention every 4th layer; CLIP vision tower
embed 768, 12 layers, patch 14 at 224 px; perceiver resampler 64 latents, depth 2. Random HF
weights (constants randomized, the cross-attention gates drawn from N(0, 1), since HF starts
them at 0), converted with ``zoo.from_state_dict``. Batch 1, one image, a prompt
``<s> <fake> <image> <fake> text...`` with ``image_attention_mask`` 1 from ``<image>`` on.

The zoo side is what users run, ``zoo.generation.DecodeLoop`` (greedy): its compile time
(``DecodeLoop.compile``: trace, lower and XLA of the prefill and the step, reported apart from
the runs) and

- prefill: ``DecodeLoop.prefill`` (vision tower + resampler + decoder over the prompt into a
  fresh fixed cache, logits of the last position, first token), HF's first generation call
  into an empty ``DynamicCache`` (``logits_to_keep=1``);
- per token: ``DecodeLoop.step`` (state and KV cache donated: updated in place; the image
  states and the cross-attention keys/values of the prefill come with it through
  ``model.decode_inputs``), HF one greedy step as ``generate`` feeds it (``past_key_values``,
  grown mask, ``perceiver_embeddings``); median of ``--steps`` consecutive steps.

Checked before timing against HF eager: prefill logits and image states, then
``--check-steps`` decode steps teacher-forced on HF eager's greedy tokens (the same model
calls as the loop's, jitted by the benchmark), and DecodeLoop's own greedy tokens. One HF model is
switched between sdpa and eager (``set_attn_implementation``) inside each timed HF call.
"""

from __future__ import annotations

import argparse
import functools
import time

import numpy as np

from benchmarks import harness

IMPLS, REFERENCE = ("zoo", "hf_sdpa", "hf_eager"), "hf_eager"
CONFIG = dict(
    vocab_size=32000, additional_vocab_size=2, hidden_size=2048, intermediate_size=5632, num_hidden_layers=12,
    num_attention_heads=16, cross_layer_interval=4, use_resampler=True, max_position_embeddings=2048,
    vision_config=dict(embed_dim=768, image_size=224, patch_size=14, num_hidden_layers=12, num_attention_heads=12,
                       intermediate_size=3072),
    perceiver_config=dict(resampler_n_latents=64, resampler_depth=2, resampler_n_heads=16, resampler_head_dim=96))
TINY = dict(
    vocab_size=99, additional_vocab_size=2, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
    num_attention_heads=4, cross_layer_interval=2, use_resampler=True, max_position_embeddings=64,
    vision_config=dict(embed_dim=24, image_size=28, patch_size=14, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=30),
    perceiver_config=dict(resampler_n_latents=4, resampler_depth=1, resampler_n_heads=2, resampler_head_dim=8))
RUN = {True: dict(prompt=12, steps=4, check_steps=2, repeats=3, decode_warmup=1, quiet_wait=0.0),
       False: dict(prompt=128, steps=16, check_steps=4, repeats=5, decode_warmup=2, quiet_wait=60.0)}


def build_hf_model(tiny: bool, seed: int = 0):
    import torch
    import transformers

    config = transformers.IdeficsConfig(**{k: (dict(v) if isinstance(v, dict) else v)
                                           for k, v in (TINY if tiny else CONFIG).items()})
    torch.manual_seed(seed)
    model = transformers.IdeficsForVisionText2Text._from_config(config, attn_implementation="sdpa").eval()
    model.requires_grad_(False)
    harness.randomize_constants(model, seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "alpha" in name:
                p.copy_(torch.randn(p.shape, generator=g))
    return model


def use_attention(model, impl: str) -> None:
    if model.config._attn_implementation != impl:
        model.set_attn_implementation(impl)


def make_inputs(config, prompt: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    fake, image = config.vocab_size, config.vocab_size + 1  # the two additional tokens
    ids = rng.integers(3, config.vocab_size, (1, prompt)).astype(np.int64)
    ids[0, :4] = [config.bos_token_id, fake, image, fake]
    image_mask = np.zeros((1, prompt, 1), np.int64)
    image_mask[0, 2:] = 1
    size = config.vision_config.image_size
    return {"input_ids": ids, "image_attention_mask": image_mask,
            "pixel_values": rng.standard_normal((1, 1, 3, size, size), dtype=np.float32)}


def zoo_functions(model):
    """(prefill, step): the generation calls of the zoo model, to jit."""
    import jax
    import jax.numpy as jnp

    def prefill(variables, cache, attention_mask, inputs):
        return model.apply(variables, attention_mask=attention_mask, past_key_values=cache, use_cache=True,
                           logits_to_keep=1, **inputs)

    def step(variables, cache, attention_mask, token, inputs):
        attention_mask = jax.lax.dynamic_update_slice(  # the new position becomes visible
            attention_mask, jnp.ones((attention_mask.shape[0], 1), attention_mask.dtype), (0, cache.length))
        o = model.apply(variables, input_ids=token, attention_mask=attention_mask, past_key_values=cache,
                        use_cache=True, **inputs)
        logits = o.logits[:, -1]
        return jnp.argmax(logits, -1)[:, None].astype(token.dtype), logits, o.past_key_values, attention_mask

    return prefill, step


class ZooDecoder:
    def __init__(self, step, variables, prefill_out, attention_mask, inputs):
        import jax.numpy as jnp

        self.step, self.variables, self.inputs = step, variables, inputs
        self.cache, self.mask = prefill_out.past_key_values, attention_mask
        self.token = jnp.argmax(prefill_out.logits[:, -1], -1)[:, None].astype(jnp.int32)

    def __call__(self, token=None):
        """One step on ``token`` (default: the previous greedy one): (next greedy token, logits)."""
        import jax.numpy as jnp

        tok = self.token if token is None else jnp.asarray(token, jnp.int32).reshape(1, 1)
        self.token, logits, self.cache, self.mask = self.step(self.variables, self.cache, self.mask, tok, self.inputs)
        return self.token, logits


class LoopDecoder:
    """``zoo.generation.DecodeLoop.step`` on one state (donated and replaced at every call)."""

    def __init__(self, loop, state):
        self.loop, self.state = loop, state

    def __call__(self, token=None):
        if token is not None:
            raise ValueError("LoopDecoder runs DecodeLoop's own greedy tokens")
        self.state = self.loop.step(self.state)
        return self.state.tokens, None


class HFDecoder:
    def __init__(self, model, impl: str, prefill_out, attention_mask, image_attention_mask):
        self.model, self.impl = model, impl
        self.cache, self.mask, self.images = prefill_out.past_key_values, attention_mask, prefill_out.image_hidden_states
        self.image_mask = image_attention_mask[:, -1:]
        self.token = prefill_out.logits[:, -1].argmax(-1, keepdim=True)

    def __call__(self, token=None):
        import torch

        use_attention(self.model, self.impl)
        with torch.inference_mode():
            tok = self.token if token is None else torch.as_tensor(token, device=self.mask.device).reshape(1, 1)
            self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], 1)
            out = self.model(input_ids=tok, attention_mask=self.mask, past_key_values=self.cache, use_cache=True,
                             image_attention_mask=self.image_mask, perceiver_embeddings=self.images)
            logits = out.logits[:, -1]
            self.token = logits.argmax(-1, keepdim=True)
        return self.token, logits


def run(args) -> dict:
    import jax
    import jax.numpy as jnp
    import torch
    from transformers import DynamicCache

    gpu = args.device_used == "gpu"
    tdev, tdtype, jdtype = "cuda" if gpu else "cpu", getattr(torch, args.dtype), getattr(jnp, args.dtype)
    hf = build_hf_model(args.tiny)
    config, n_params = hf.config, sum(p.numel() for p in hf.parameters())
    model, variables = harness.convert(hf, dtype=jdtype, param_dtype=jdtype)
    hf.to(device=tdev, dtype=tdtype)
    print(f"IdeficsForVisionText2Text, {n_params:,} parameters, prompt {args.prompt} tokens", flush=True)

    x = make_inputs(config, args.prompt)
    max_length = args.prompt + args.check_steps + args.attempts * (args.decode_warmup + args.steps)
    mask0 = np.zeros((1, max_length), np.int32)
    mask0[:, :args.prompt] = 1
    z_in = {k: jnp.asarray(v, jdtype if v.dtype == np.float32 else jnp.int32) for k, v in x.items()}
    z_mask, z_cache = jnp.asarray(mask0), model.init_cache(1, max_length)
    t_in = {k: torch.from_numpy(v).to(tdev, tdtype if v.dtype == np.float32 else None) for k, v in x.items()}
    t_mask = torch.ones((1, args.prompt), dtype=torch.int64, device=tdev)

    # what users run: zoo.generation.DecodeLoop, a jitted prefill and a jitted step (state donated)
    from zoo.generation import DecodeLoop

    ids = z_in["input_ids"]
    loop_inputs = {k: v for k, v in z_in.items() if k != "input_ids"}
    loop = DecodeLoop(model, variables, max_new_tokens=max_length - args.prompt)
    loop_compile = loop.compile(ids, z_mask[:, :args.prompt], **loop_inputs)
    t0 = time.perf_counter()
    loop_tokens = [int(harness.block(loop.prefill(ids, z_mask[:, :args.prompt], **loop_inputs)).tokens[0])]
    p_first = time.perf_counter() - t0
    # the logits check runs the same model calls, jitted here (not timed)
    prefill_fn, step_fn = zoo_functions(model)
    prefill, p_lower, p_compile = harness.jax_compile(prefill_fn, variables, z_cache, z_mask, z_in)
    z_pre = harness.block(prefill(variables, z_cache, z_mask, z_in))
    rest = model.decode_inputs(z_pre, z_in)
    rest.pop("input_ids", None)
    step, s_lower, s_compile = harness.jax_compile(step_fn, variables, z_pre.past_key_values, z_mask,
                                                   jnp.zeros((1, 1), jnp.int32), rest)
    compile_info = {"decode_loop": {"compile_s": loop_compile, "first_prefill_s": p_first},
                    "check_prefill": {"lower_s": p_lower, "compile_s": p_compile},
                    "check_step": {"lower_s": s_lower, "compile_s": s_compile}}
    print(f"zoo compile: {compile_info}", flush=True)

    def hf_prefill(impl):
        def call():
            use_attention(hf, impl)
            return hf(**t_in, attention_mask=t_mask, past_key_values=DynamicCache(config=hf.config), use_cache=True,
                      logits_to_keep=1)
        return harness.torch_callable(call)

    prefill_calls = {"zoo": lambda: loop.prefill(ids, z_mask[:, :args.prompt], **loop_inputs).tokens,
                     "hf_sdpa": hf_prefill("sdpa"), "hf_eager": hf_prefill("eager")}
    pre = {"zoo": z_pre, **{n: prefill_calls[n]() for n in ("hf_sdpa", "hf_eager")}}

    # --- outputs agree: prefill logits + image states, then teacher-forced decode steps
    decoders = {"zoo": ZooDecoder(step, variables, z_pre, z_mask, rest),
                **{n: HFDecoder(hf, n.split("_")[1], pre[n], t_mask, t_in["image_attention_mask"])
                   for n in ("hf_sdpa", "hf_eager")}}
    logits = {n: [harness.to_numpy(pre[n].logits[:, -1])] for n in IMPLS}
    for _ in range(args.check_steps):
        ref_token = int(np.argmax(logits[REFERENCE][-1]))
        for n in IMPLS:
            logits[n].append(harness.to_numpy(decoders[n](ref_token)[1]))
    ref_tokens = [int(np.argmax(lg)) for lg in logits[REFERENCE]]
    state = loop.prefill(ids, z_mask[:, :args.prompt], **loop_inputs)  # DecodeLoop's own greedy tokens
    loop_tokens = [int(state.tokens[0])]
    for _ in range(args.check_steps):
        state = loop.step(state)
        loop_tokens.append(int(state.tokens[0]))
    del state
    checks = {}
    for n in IMPLS[:-1]:
        own = [int(np.argmax(lg)) for lg in logits[n]]
        checks[f"{n} vs {REFERENCE}"] = {
            "prefill_logits": harness.max_diff(logits[n][0], logits[REFERENCE][0]),
            "image_hidden_states": harness.max_diff(pre[n].image_hidden_states, pre[REFERENCE].image_hidden_states),
            "decode_logits": max(harness.max_diff(a, b) for a, b in zip(logits[n][1:], logits[REFERENCE][1:])),
            "greedy_agreement": float(np.mean([a == b for a, b in zip(own, ref_tokens)]))}
        if n == "zoo":
            checks[f"{n} vs {REFERENCE}"]["decode_loop_greedy_agreement"] = float(
                np.mean([a == b for a, b in zip(loop_tokens, ref_tokens)]))
        print(f"check {n} vs {REFERENCE}: {checks[f'{n} vs {REFERENCE}']}", flush=True)
    worst = max(v for c in checks.values() for k, v in c.items() if not k.endswith("greedy_agreement"))
    if not worst < args.tolerance:
        raise SystemExit(f"outputs disagree beyond {args.tolerance}: {checks}")
    del pre, logits

    decoders["zoo"] = LoopDecoder(loop, loop.prefill(ids, z_mask[:, :args.prompt], **loop_inputs))

    # --- timing (torch on a GPU is synchronised inside its calls)
    sync = harness.torch_sync(args.device_used) or (lambda out: out)
    wrap = lambda calls: {n: (c if n == "zoo" else (lambda c=c: sync(c()))) for n, c in calls.items()}  # noqa: E731
    workloads = {}
    for name, calls, repeats, warmup, info in (  # DecodeLoop.compile: prefill + step, one figure
            ("prefill", prefill_calls, args.repeats, args.warmup, {"compile_s": loop_compile}),
            ("decode", {n: (lambda d=decoders[n]: d()[0]) for n in IMPLS}, args.steps, args.decode_warmup,
             {"compile_s": None})):
        print(f"\n== {name}", flush=True)
        timings, load = harness.timed(wrap(calls), args, repeats=repeats, warmup=warmup,
                                      syncs={n: None for n in IMPLS if n != "zoo"},
                                      timing_kwargs={"zoo": info})
        workloads[name] = {"timings": timings, "load": load, "quiet": load["quiet"],
                           "speedup_of_zoo": harness.ratios(timings)}
    dec = {t.name: t for t in workloads["decode"]["timings"]}
    return {"model": f"IdeficsForVisionText2Text, {n_params:,} parameters", "head": "IdeficsForVisionText2Text",
            "n_params": n_params, "config": TINY if args.tiny else CONFIG, "max_length": max_length,
            "input": f"batch 1, one image, prompt {args.prompt} tokens, greedy", "checks": checks,
            "max_abs_diff": worst, "reference_greedy_tokens": ref_tokens, "compile": compile_info,
            "workloads": workloads, "decode_tokens_per_s": {n: 1e3 / t.median_ms for n, t in dec.items()}}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model and inputs: a smoke test, seconds")
    parser.add_argument("--prompt", type=int, default=None, help="prompt tokens, image tokens included (128)")
    parser.add_argument("--steps", type=int, default=None, help="timed decode steps per implementation (16)")
    parser.add_argument("--decode-warmup", type=int, default=None, help="untimed decode steps before timing (2)")
    parser.add_argument("--check-steps", type=int, default=None, help="teacher-forced steps of the check (4)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="bfloat16: for a GPU")
    parser.add_argument("--tolerance", type=float, default=None, help="max abs diff vs HF eager (1e-3; bf16 0.5)")
    harness.add_common_args(parser, repeats=None, warmup=0)
    parser.set_defaults(quiet_wait=None)
    args = parser.parse_args(argv)
    for k, v in RUN[args.tiny].items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    args.tolerance = args.tolerance or (1e-3 if args.dtype == "float32" else 0.5)
    threads = harness.setup_threads(args.threads, args.keep_freed_memory)
    import transformers

    transformers.logging.set_verbosity_error()
    args.device_used = harness.select_device(args.device)
    r = run(args)
    pre, dec = ({t.name: t for t in r["workloads"][w]["timings"]} for w in ("prefill", "decode"))
    md = [f"### IDEFICS generation, {args.dtype}, {args.device_used}" + (" (TINY model)" if args.tiny else ""), "",
          f"{r['model']}; {r['input']}", "",
          "| implementation | prefill ms (min) | per-token ms (min) | tokens/s | prefill: this / zoo | token: this / zoo |",
          "|---|---:|---:|---:|---:|---:|"]
    md += [f"| {n} | {pre[n].median_ms:.0f} ({pre[n].min_ms:.0f}) | {dec[n].median_ms:.1f} ({dec[n].min_ms:.1f}) | "
           f"{1e3 / dec[n].median_ms:.2f} | {pre[n].median_ms / pre['zoo'].median_ms:.2f}x | "
           f"{dec[n].median_ms / dec['zoo'].median_ms:.2f}x |" for n in IMPLS]
    md += ["", *[f"- {k}: " + ", ".join(f"{f} {v:.2g}" for f, v in c.items()) for k, c in r["checks"].items()],
           "- zoo compile (s): " + "; ".join(f"{k} " + ", ".join(f"{f} {v:.2f}" for f, v in c.items())
                                             for k, c in r["compile"].items()),
           *[f"- {w}: " + harness.load_note(v["load"]) for w, v in r["workloads"].items()]]
    name = args.name or "idefics_decode" + ("_tiny" if args.tiny else "") + (
        "" if args.device_used == "cpu" else f"_{args.device_used}_{args.dtype}")
    payload = {"argv": argv, "module": "benchmarks.idefics_decode", "benchmark": "idefics_decode", "tiny": args.tiny, "device": args.device_used,
               "dtype": args.dtype, "tolerance": args.tolerance, "steps": args.steps, "prompt": args.prompt,
               "weights": "HF random init, constants randomized, gates N(0, 1), converted with zoo.from_state_dict",
               **r}
    return harness.finish_report(name, payload, md, write=not args.no_write, threads=threads, device=args.device_used,
                                 results_dir=args.out)


if __name__ == "__main__":
    main()
