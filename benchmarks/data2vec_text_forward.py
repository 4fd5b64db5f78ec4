"""Forward-pass speed of Data2VecText (base size): zoo (jax.jit) vs HF PyTorch eager and sdpa.

    python -m benchmarks.data2vec_text_forward [--batch 8 --seq 128 --repeats 20 --dtype float32]

One process, one set of random weights (``transformers.Data2VecTextModel(config)`` with
the HF default config: hidden 768, 12 layers, 12 heads, intermediate 3072, vocab 30522,
pooling layer on), converted to zoo params through the family key table. All
implementations get the same random ``input_ids`` and an ``attention_mask`` with padding.
Outputs are checked against each other (max abs diff of ``last_hidden_state`` and
``pooler_output``) before anything is timed.

``--zoo-variants`` adds zoo runs with other attention kernels / layouts (same params,
same inputs, same process), used to investigate where time goes; ``--micro`` adds
single-op timings (the layer's matmuls, GELU, LayerNorm, softmax) in both frameworks.
XLA CPU flags can only be set before jax starts: run the script again with
``XLA_FLAGS=...`` (it is recorded in the results) and ``--name`` for a separate file.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import sys

import numpy as np

from benchmarks import harness

DEFAULT_NAME = "data2vec_text_forward"


# ------------------------------------------------------------------ zoo variants
def _attention_jax_nn(query, key, value, *, mask=None, bias=None, head_mask=None, scale=None,
                      dropout_rate=0.0, dropout_rng=None, deterministic=True, return_probs=False):
    """``jax.nn.dot_product_attention(implementation="xla")`` behind the zoo signature."""
    import jax

    if return_probs or head_mask is not None or (dropout_rate > 0 and not deterministic):
        raise NotImplementedError("benchmark variant: inference without probs/head_mask only")
    out = jax.nn.dot_product_attention(query, key, value, bias=bias, mask=mask, scale=scale,
                                       implementation="xla")
    return out, None


def _attention_bhld(query, key, value, *, mask=None, bias=None, head_mask=None, scale=None,
                    dropout_rate=0.0, dropout_rng=None, deterministic=True, return_probs=False):
    """Proposed replacement of ``zoo.attention.dense.dot_product_attention`` (XLA path),
    same signature and semantics. Two changes only:

    1. q/k/v are transposed to ``[B, H, L, D]`` and the two products are batched
       ``matmul``s (the einsums on ``[B, L, H, D]`` make XLA CPU pick slower layouts);
    2. the boolean mask is applied as an additive ``0 / finfo.min`` bias (what HF's
       eager path does) instead of ``where``; a fully masked row still attends uniformly.
    """
    import jax
    import jax.numpy as jnp

    head_dim = query.shape[-1]
    scale = head_dim**-0.5 if scale is None else scale
    dropout_active = dropout_rate > 0.0 and not deterministic
    q, k, v = (jnp.swapaxes(x, 1, 2) for x in (query, key, value))  # [B, H, L, D]
    scores = jnp.matmul(q, jnp.swapaxes(k, -1, -2)) * jnp.asarray(scale, query.dtype)
    scores = scores.astype(jnp.promote_types(scores.dtype, jnp.float32))
    if bias is not None:
        scores = scores + bias.astype(scores.dtype)
    if mask is not None:
        min_value = jnp.finfo(scores.dtype).min
        scores = scores + jnp.where(mask, jnp.zeros((), scores.dtype), min_value)
    probs = jax.nn.softmax(scores, axis=-1).astype(query.dtype)
    if dropout_active:
        if dropout_rng is None:
            raise ValueError("attention dropout in training mode needs a dropout_rng")
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
        probs = jnp.where(keep, probs / (1.0 - dropout_rate), jnp.zeros_like(probs))
    if head_mask is not None:
        probs = probs * head_mask.astype(probs.dtype)
    out = jnp.swapaxes(jnp.matmul(probs, v), 1, 2)
    return out, (probs if return_probs else None)


def _attention_bhld_late(query, key, value, *, mask=None, bias=None, head_mask=None, scale=None,
                         dropout_rate=0.0, dropout_rng=None, deterministic=True, return_probs=False):
    """:func:`_attention_bhld` plus late normalisation when no probabilities are returned:
    ``out = (exp(s - max) @ v) / sum(exp(s - max))``, dividing the ``[B, H, Lq, D]`` output
    instead of the ``[B, H, Lq, Lk]`` scores (dropout and head_mask are linear, so they
    apply to the unnormalised weights). With ``return_probs`` it is :func:`_attention_bhld`.
    """
    import jax
    import jax.numpy as jnp

    if return_probs:
        return _attention_bhld(query, key, value, mask=mask, bias=bias, head_mask=head_mask, scale=scale,
                               dropout_rate=dropout_rate, dropout_rng=dropout_rng,
                               deterministic=deterministic, return_probs=True)
    head_dim = query.shape[-1]
    scale = head_dim**-0.5 if scale is None else scale
    dropout_active = dropout_rate > 0.0 and not deterministic
    q, k, v = (jnp.swapaxes(x, 1, 2) for x in (query, key, value))  # [B, H, L, D]
    scores = jnp.matmul(q, jnp.swapaxes(k, -1, -2)) * jnp.asarray(scale, query.dtype)
    scores = scores.astype(jnp.promote_types(scores.dtype, jnp.float32))
    if bias is not None:
        scores = scores + bias.astype(scores.dtype)
    if mask is not None:
        scores = scores + jnp.where(mask, jnp.zeros((), scores.dtype), jnp.finfo(scores.dtype).min)
    weights = jnp.exp(scores - jax.lax.stop_gradient(scores.max(axis=-1, keepdims=True)))
    denominator = weights.sum(axis=-1, keepdims=True)  # [B, H, Lq, 1]
    if dropout_active:
        if dropout_rng is None:
            raise ValueError("attention dropout in training mode needs a dropout_rng")
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
        weights = jnp.where(keep, weights / (1.0 - dropout_rate), jnp.zeros_like(weights))
    if head_mask is not None:
        weights = weights * head_mask.astype(weights.dtype)
    out = jnp.matmul(weights.astype(query.dtype), v).astype(denominator.dtype) / denominator
    return jnp.swapaxes(out.astype(query.dtype), 1, 2), None


def _gelu_erf(x):
    """torch's formula x/2 (1 + erf(x/sqrt 2)); jax.nn.gelu(approximate=False) uses erfc."""
    import jax

    return x * 0.5 * (1.0 + jax.lax.erf(x * 0.7071067811865476))


@contextlib.contextmanager
def _patched_gelu():
    """Swap the zoo's "gelu" activation while a variant is traced (lowered)."""
    from zoo.nn import layers

    saved = layers.ACT2FN["gelu"]
    layers.ACT2FN["gelu"] = _gelu_erf
    try:
        yield
    finally:
        layers.ACT2FN["gelu"] = saved


# name -> (attention kernel or None, context manager active while tracing, or None)
ZOO_VARIANTS = {
    "jax_nn_dpa": (_attention_jax_nn, None),
    "bhld_matmul": (_attention_bhld, None),
    "bhld_late_norm": (_attention_bhld_late, None),
    "erf_gelu": (None, _patched_gelu),
}


# ----------------------------------------------------------------------- setup
def build_hf_models(batch_dtype, device: str):
    import torch
    import transformers

    config = transformers.Data2VecTextConfig()  # HF defaults = base size
    torch.manual_seed(0)
    # Separate config objects: the attention path is read from the model's config at call time.
    eager = transformers.Data2VecTextModel._from_config(copy.deepcopy(config), attn_implementation="eager")
    sdpa = transformers.Data2VecTextModel._from_config(copy.deepcopy(config), attn_implementation="sdpa")
    sdpa.load_state_dict(eager.state_dict())
    models = {}
    for name, m in (("hf_eager", eager), ("hf_sdpa", sdpa)):
        m.eval()
        m = m.to(dtype=batch_dtype)
        if device == "gpu":
            m = m.cuda()
        assert m.config._attn_implementation == name.split("_")[1], m.config._attn_implementation
        models[name] = m
    return config, models


def convert_to_zoo(hf_model, dtype, param_dtype, **module_kwargs):
    """(module, params) equal to ``hf_model`` (the logic of tests/hf_parity.to_zoo)."""
    import jax.numpy as jnp

    from converters.mapping import torch_to_flax
    from zoo.pretrained import build_model, param_shapes, unflatten
    from zoo.registry import get_family

    family = get_family(hf_model.config.model_type)
    config = family.config_class.from_dict(hf_model.config.to_dict())
    module = build_model(config, type(hf_model).__name__, dtype=dtype, param_dtype=param_dtype,
                         **module_kwargs)
    state = {k: v.detach().float().cpu().numpy() for k, v in hf_model.state_dict().items()}
    flat, report = torch_to_flax(state.keys(), state.__getitem__, family.key_table, param_shapes(module))
    if report.unused or report.missing:
        raise RuntimeError(report.summary())
    params = unflatten({k: jnp.asarray(v, dtype=param_dtype) for k, v in flat.items()})
    return module, params


def make_inputs(batch: int, seq: int, vocab: int, pad_id: int, seed: int = 0):
    """Random ids and a right-padded mask; row 0 is full, the others keep 50-100 %."""
    rng = np.random.default_rng(seed)
    input_ids = rng.integers(pad_id + 2, vocab, size=(batch, seq), dtype=np.int64)
    lengths = rng.integers(seq // 2, seq + 1, size=batch)
    lengths[0] = seq
    attention_mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    input_ids = np.where(attention_mask == 1, input_ids, pad_id)
    return input_ids, attention_mask


def _max_diff(a, b, where=None) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    d = np.abs(a - b)
    if where is not None:
        d = d[where]
    return float(d.max()) if d.size else 0.0


# ---------------------------------------------------------------------- micro
def micro_benchmarks(batch, seq, config, repeats, warmup, device):
    """The layer's building blocks alone, jax (jit) vs torch eager, fp32 (one layer's shapes)."""
    import jax
    import jax.numpy as jnp
    import torch

    tokens, h, inter = batch * seq, config.hidden_size, config.intermediate_size
    heads = config.num_attention_heads
    rng = np.random.default_rng(1)
    x = rng.standard_normal((tokens, h), dtype=np.float32)
    w_qkv = rng.standard_normal((h, h), dtype=np.float32) * 0.02
    w_up = rng.standard_normal((h, inter), dtype=np.float32) * 0.02
    w_down = rng.standard_normal((inter, h), dtype=np.float32) * 0.02
    y = rng.standard_normal((tokens, inter), dtype=np.float32)
    s = rng.standard_normal((batch, heads, seq, seq), dtype=np.float32)
    dev = "cuda" if device == "gpu" else "cpu"
    T = lambda a: torch.from_numpy(a).to(dev)
    J = lambda a: jax.device_put(a)

    cases = {
        f"matmul [{tokens},{h}]x[{h},{h}] (q/k/v/out proj)": (lambda a, b: a @ b, (x, w_qkv)),
        f"matmul [{tokens},{h}]x[{h},{inter}] (intermediate)": (lambda a, b: a @ b, (x, w_up)),
        f"matmul [{tokens},{inter}]x[{inter},{h}] (output)": (lambda a, b: a @ b, (y, w_down)),
    }
    from zoo.attention.dense import dot_product_attention

    head_dim = h // heads
    q, k, v = (rng.standard_normal((batch, seq, heads, head_dim), dtype=np.float32) for _ in range(3))
    _, am = make_inputs(batch, seq, config.vocab_size, config.pad_token_id)
    mask = np.broadcast_to(am.astype(bool)[:, None, None, :], (batch, 1, seq, seq)).copy()
    layer_norm = lambda a: (a - a.mean(-1, keepdims=True)) * jax.lax.rsqrt(
        ((a - a.mean(-1, keepdims=True)) ** 2).mean(-1, keepdims=True) + 1e-12)
    jax_fns = {
        "gelu (erf), jax.nn.gelu as in zoo today": (functools.partial(jax.nn.gelu, approximate=False), (y,)),
        "gelu (erf), x/2 (1 + lax.erf(x/sqrt 2)) (proposed)": (_gelu_erf, (y,)),
        "layernorm on [tokens, hidden]": (layer_norm, (x,)),
        "softmax on [B, H, L, L]": (lambda a: jax.nn.softmax(a, axis=-1), (s,)),
        "attention, zoo dense.py today (torch: sdpa)": (
            lambda q, k, v, m: dot_product_attention(q, k, v, mask=m)[0], (q, k, v, mask)),
        "attention, proposed [B,H,L,D] matmul + additive mask (torch: sdpa)": (
            lambda q, k, v, m: _attention_bhld(q, k, v, mask=m)[0], (q, k, v, mask)),
        "attention, proposed + late normalisation (torch: sdpa)": (
            lambda q, k, v, m: _attention_bhld_late(q, k, v, mask=m)[0], (q, k, v, mask)),
    }
    torch_sdpa = lambda q, k, v, m: torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=m).transpose(1, 2)
    torch_fns = {
        "gelu (erf), jax.nn.gelu as in zoo today": lambda a: torch.nn.functional.gelu(a),
        "gelu (erf), x/2 (1 + lax.erf(x/sqrt 2)) (proposed)": lambda a: torch.nn.functional.gelu(a),
        "layernorm on [tokens, hidden]": lambda a: torch.nn.functional.layer_norm(a, (a.shape[-1],), eps=1e-12),
        "softmax on [B, H, L, L]": lambda a: torch.softmax(a, dim=-1),
        "attention, zoo dense.py today (torch: sdpa)": torch_sdpa,
        "attention, proposed [B,H,L,D] matmul + additive mask (torch: sdpa)": torch_sdpa,
        "attention, proposed + late normalisation (torch: sdpa)": torch_sdpa,
    }
    rows = []
    sync = harness.torch_sync(device)
    for label, (fn, args) in list(cases.items()) + list(jax_fns.items()):
        jargs = [J(a) for a in args]
        compiled, _, _ = harness.jax_compile(fn, *jargs)
        tj = harness.time_callable(lambda: compiled(*jargs), name="zoo (jax)", repeats=repeats, warmup=warmup)
        targs = [T(a) for a in args]
        tfn = torch_fns.get(label, fn)
        tt = harness.time_callable(harness.torch_callable(lambda: tfn(*targs)), name="torch",
                                   repeats=repeats, warmup=warmup, sync=sync)
        flops = None
        if label.startswith("matmul"):
            m, k = args[0].shape
            n = args[1].shape[1]
            flops = 2 * m * k * n
        rows.append({"op": label, "jax_median_ms": tj.median_ms, "torch_median_ms": tt.median_ms,
                     "speedup": tt.median_ms / tj.median_ms,
                     "jax_gflops": flops / tj.median_ms / 1e6 if flops else None,
                     "torch_gflops": flops / tt.median_ms / 1e6 if flops else None})
        print(f"  micro {label}: jax {tj.median_ms:.2f} ms, torch {tt.median_ms:.2f} ms "
              f"(speedup {tt.median_ms / tj.median_ms:.2f}x)", flush=True)
    return rows


def micro_table(rows) -> str:
    lines = ["| op | jax median ms | torch median ms | speedup (torch / jax) | jax GFLOP/s | torch GFLOP/s |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        g = lambda v: "" if v is None else f"{v:.0f}"
        lines.append(f"| {r['op']} | {r['jax_median_ms']:.2f} | {r['torch_median_ms']:.2f} | "
                     f"{r['speedup']:.2f}x | {g(r['jax_gflops'])} | {g(r['torch_gflops'])} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------- main
def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="compute dtype of every implementation (bf16 is meant for GPU)")
    parser.add_argument("--impls", default="zoo,hf_eager,hf_sdpa",
                        help="comma list of zoo, hf_eager, hf_sdpa (zoo is always the reference)")
    parser.add_argument("--zoo-variants", default="",
                        help=f"comma list of extra zoo variants, each one name or several joined by '+': "
                             f"{', '.join(ZOO_VARIANTS)}")
    parser.add_argument("--timing", choices=("interleaved", "sequential"), default="interleaved",
                        help="round-robin over implementations (default) or one block after the other")
    parser.add_argument("--micro", action="store_true", help="also time single ops in both frameworks")
    parser.add_argument("--attempts", type=int, default=3,
                        help="time again, up to this many times, while other processes use more than "
                             "--max-load of the cores; the quietest attempt is reported")
    parser.add_argument("--max-load", type=float, default=0.05,
                        help="largest acceptable share of the cores used by other processes while timing")
    harness.add_common_args(parser)
    args = parser.parse_args(argv)

    threads = harness.setup_threads()
    import jax
    import jax.numpy as jnp
    import torch

    device = harness.select_device(args.device)
    impls = [s for s in args.impls.split(",") if s]
    variants = [s for s in args.zoo_variants.split(",") if s]
    unknown = [p for v in variants for p in v.split("+") if p not in ZOO_VARIANTS] + [i for i in impls if i not in ("zoo", "hf_eager", "hf_sdpa")]
    if unknown:
        parser.error(f"unknown implementation(s) {unknown}")
    if "zoo" not in impls:
        impls.insert(0, "zoo")
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    jax_dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[args.dtype]

    print(f"device={device} batch={args.batch} seq={args.seq} dtype={args.dtype} threads={threads}", flush=True)
    hf_config, hf_models = build_hf_models(torch_dtype, device)
    input_ids, attention_mask = make_inputs(args.batch, args.seq, hf_config.vocab_size, hf_config.pad_token_id)
    valid = attention_mask.astype(bool)

    # --- zoo: same weights, jitted forward, compiled ahead of time
    module, params = convert_to_zoo(hf_models["hf_eager"], jax_dtype, jax_dtype)
    j_ids, j_mask = jax.device_put(input_ids.astype(np.int32)), jax.device_put(attention_mask.astype(np.int32))

    def zoo_forward(module, params, ids, mask):
        o = module.apply({"params": params}, input_ids=ids, attention_mask=mask)
        return o.last_hidden_state, o.pooler_output

    zoo_fns = {"zoo": (module, [])}
    for v in variants:
        mod, contexts = module, []
        for part in v.split("+"):
            attention_fn, context = ZOO_VARIANTS[part]
            if attention_fn is not None:
                mod = mod.clone(attention_fn=attention_fn)
            if context is not None:
                contexts.append(context)
        zoo_fns[f"zoo[{v}]"] = (mod, contexts)

    timings, outputs, compiled_fns = [], {}, {}
    for name, (mod, contexts) in zoo_fns.items():
        with contextlib.ExitStack() as stack:
            for context in contexts:
                stack.enter_context(context())
            compiled, lower_s, compile_s = harness.jax_compile(functools.partial(zoo_forward, mod), params,
                                                               j_ids, j_mask)
        compiled_fns[name] = (compiled, lower_s, compile_s)
        outputs[name] = [np.asarray(a, np.float32) for a in compiled(params, j_ids, j_mask)]
        print(f"{name}: lower {lower_s:.2f} s, compile {compile_s:.2f} s", flush=True)

    t_ids, t_mask = torch.from_numpy(input_ids), torch.from_numpy(attention_mask)
    if device == "gpu":
        t_ids, t_mask = t_ids.cuda(), t_mask.cuda()
    torch_calls = {}
    for name in ("hf_eager", "hf_sdpa"):
        if name not in impls:
            continue
        m = hf_models[name]
        call = harness.torch_callable(functools.partial(m, input_ids=t_ids, attention_mask=t_mask))
        torch_calls[name] = call
        o = call()
        outputs[name] = [o.last_hidden_state.float().cpu().numpy(), o.pooler_output.float().cpu().numpy()]

    # --- agreement (before timing)
    checks = {}
    ref = outputs["hf_eager"] if "hf_eager" in outputs else None
    for name, (last, pooled) in outputs.items():
        if ref is None or name == "hf_eager":
            continue
        checks[f"{name} vs hf_eager"] = {
            "last_hidden_state_max_abs_diff": _max_diff(last, ref[0]),
            "last_hidden_state_max_abs_diff_unpadded": _max_diff(last, ref[0], valid),
            "pooler_output_max_abs_diff": _max_diff(pooled, ref[1]),
        }
    for k, v in checks.items():
        print(f"check {k}: " + ", ".join(f"{a}={b:.2e}" for a, b in v.items()), flush=True)

    # --- timing
    calls = {name: functools.partial(compiled, params, j_ids, j_mask) for name, (compiled, _, _) in compiled_fns.items()}
    calls.update(torch_calls)
    syncs = {name: harness.torch_sync(device) for name in torch_calls}
    extra = {name: {"compile_s": c, "lower_s": lo} for name, (_, lo, c) in compiled_fns.items()}
    def run_timing():
        if args.timing == "interleaved":
            return harness.time_interleaved(calls, repeats=args.repeats, warmup=args.warmup, syncs=syncs,
                                            timing_kwargs=extra)
        return [harness.time_callable(call, name=name, repeats=args.repeats, warmup=args.warmup,
                                      sync=syncs.get(name, harness.block), **extra.get(name, {}))
                for name, call in calls.items()]

    # On a shared machine: time again (up to --attempts) while other processes used more than
    # --max-load of the cores during the timing; keep the quietest attempt.
    timings, load = harness.quietest_attempt(run_timing, attempts=args.attempts, max_load=args.max_load,
                                             quiet_wait=args.quiet_wait)
    for t in timings:
        print(f"{t.name}: median {t.median_ms:.1f} ms (min {t.min_ms:.1f}, IQR {t.iqr_ms:.1f})", flush=True)

    micro, micro_load = None, None
    if args.micro:
        with harness.LoadMonitor() as monitor:
            micro = micro_benchmarks(args.batch, args.seq, hf_config, args.repeats, args.warmup, device)
        micro_load = monitor.result

    machine = harness.machine_info(device)
    by_name = {t.name: t for t in timings}
    ratios = {f"{name} / zoo": by_name[name].median_ms / by_name["zoo"].median_ms
              for name in by_name if name != "zoo"}
    command = "python -m benchmarks.data2vec_text_forward " + " ".join(argv if argv is not None else sys.argv[1:])
    payload = {
        "benchmark": DEFAULT_NAME,
        "command": command.strip(),
        "setup": {"batch": args.batch, "seq": args.seq, "dtype": args.dtype, "device": device,
                  "timing": args.timing, "repeats": args.repeats, "warmup": args.warmup,
                  "model": "Data2VecTextModel base (HF default config, random weights, pooling layer)",
                  "padding_tokens": int((attention_mask == 0).sum()), "total_tokens": int(attention_mask.size)},
        "machine": machine,
        "threads": threads,
        "timings": timings,
        "speedup_of_zoo": ratios,
        "checks": checks,
        "load": load,
        "micro": micro,
        "micro_load": micro_load,
    }
    md = [f"### Data2VecText base forward, batch {args.batch} x seq {args.seq}, {args.dtype}, {device}", "",
          f"`{payload['command']}`", "",
          harness.comparison_table(timings, "zoo"), "",
          f"{args.repeats} timed runs each after {args.warmup} warm-up runs, {args.timing} "
          "(round-robin over the implementations)" if args.timing == "interleaved" else
          f"{args.repeats} timed runs each after {args.warmup} warm-up runs, one implementation after the other.",
          "",
          "speedup = implementation median / zoo median (> 1: zoo faster). "
          "compile s = XLA compilation (tracing + lowering adds "
          + ", ".join(f"{t.lower_s:.2f} s" for t in timings if t.lower_s is not None) + ").", ""]
    if checks:
        md += ["| outputs | last_hidden_state max abs diff | (unpadded positions) | pooler_output max abs diff |",
               "|---|---:|---:|---:|"]
        md += [f"| {k} | {v['last_hidden_state_max_abs_diff']:.2e} | {v['last_hidden_state_max_abs_diff_unpadded']:.2e} "
               f"| {v['pooler_output_max_abs_diff']:.2e} |" for k, v in checks.items()]
        md.append("")
    if micro:
        md += ["Single ops (jit vs torch eager, same threads):", "", micro_table(micro), "",
               harness.load_note(micro_load, "load during the single-op timings") or "", ""]
    md += [harness.environment_block(machine, threads, load)]
    markdown = "\n".join(md)
    print()
    print(markdown)
    if not args.no_write:
        paths = harness.write_results(args.name or DEFAULT_NAME, payload, markdown)
        print("wrote", *paths)
    return payload


if __name__ == "__main__":
    main()
