"""Forward pass of BigBird: zoo block-sparse vs zoo dense vs HF PyTorch block_sparse / original_full.

    python -m benchmarks.big_bird_forward [--seq 4096 --batch 1 --repeats 3 --warmup 1] [--pad-frac 0.0]
        [--layers 12] [--impls zoo_block_sparse,zoo_dense,hf_block_sparse,hf_original_full] [--kernels]
        [--attempts 1 --max-load 0.05 --quiet-wait 300] [--name NAME]
    python -m benchmarks.big_bird_forward --sweep [--lengths 1024,2048,4096,8192,16384]
        [--sweep-layers 2] [--repeats 3 --warmup 1] [--mem-budget-gib 8] [--quiet-wait 300 --run-quiet-wait 15]
        [--name NAME]

**Main comparison** (default). BigBird at base size (HF ``BigBirdConfig()`` defaults:
hidden 768, 12 layers, 12 heads, intermediate 3072, block_size 64, num_random_blocks 3,
vocab 50358; ``max_position_embeddings`` = ``--seq``), random weights from
``transformers.BigBirdModel(config)``, batch 1 x 4096 tokens, fp32, eval. Four
implementations in one process, same weights and inputs (random ``input_ids``, an
``attention_mask`` of ones; ``--pad-frac`` pads that share of the tail):

- ``zoo_block_sparse``: ``zoo.models.big_bird.BigBirdModel`` with ``attention_type="block_sparse"``
  (the kernel of ``zoo/attention/block_sparse.py``), params converted from the HF model
  through the family key table (as ``tests/hf_parity.to_zoo``), ``jax.jit``, compiled ahead
  of time (trace + lower and XLA compile timed apart);
- ``zoo_dense``: the same params with ``attention_type="original_full"`` (dense kernel);
- ``hf_block_sparse``: ``transformers.BigBirdModel`` (eager, ``torch.inference_mode()``);
- ``hf_original_full``: a second HF instance with the same ``state_dict`` and
  ``attention_type="original_full"``, ``attn_implementation="eager"``.

In eval mode HF's random blocks are all 0, and so are the zoo's (HF-exact). The outputs
(``last_hidden_state``, ``pooler_output``) are compared first (zoo sparse vs HF sparse, zoo
dense vs HF full, HF full vs HF sparse), then all four are timed round-robin
(``harness.time_interleaved``); ``--attempts`` re-times while other processes used more
than ``--max-load`` of the cores. ``--kernels`` adds the attention kernels alone (one
layer's q/k/v, zoo jit vs HF's torch code) to show how much of a layer attention is.

Note: HF's ``BigBirdModel`` switches itself *permanently* to ``original_full`` when it
sees ``seq_len <= (5 + 2 * num_random_blocks) * block_size`` (704 tokens here); every
length used here is longer, and the attention type of each HF model is asserted after
the runs.

**Length sweep** (``--sweep``). Lengths 1024 ... 16384 with ``max_position_embeddings``
= the longest, **``--sweep-layers`` encoder layers (default 2, not 12)** to keep the run
short. Each (implementation, length) runs in a fresh subprocess (``--_worker``) that
builds the model, compiles (zoo), then measures: the time per forward (``--repeats`` after
``--warmup``), and the peak resident memory during those forwards minus the resident
memory just before them (the kernel's high-water mark is reset with
``/proc/self/clear_refs`` after setup, so imports, weight init and XLA compilation are
not counted; ``ru_maxrss`` is recorded as well). For the zoo, XLA's
``compiled.memory_analysis()`` (temp + argument + output bytes) is recorded too. Runs
whose estimated memory exceeds ``--mem-budget-gib`` (capped at MemAvailable - 4 GiB)
are skipped with the reason recorded: dense attention holds ``[B, H, L, L]`` fp32
scores (12 x 16384^2 x 4 B = 12 GiB per copy at 16384). Both dense implementations are
judged by ``2.5 x B x H x L^2 x 4`` bytes plus a ``[B, 1, L, L]`` mask (2.2 copies were
measured at 2048 for each; XLA's ``memory_analysis`` does not count the buffers inside
the fused dense attention, so it underestimates dense memory), block-sparse zoo runs by
their ``memory_analysis``. Time and memory vs length go into
``results/big_bird_length_sweep.png`` (log-log), with fitted log-log slopes (1 = linear).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import harness

DEFAULT_NAME = "big_bird_forward"
SWEEP_NAME = "big_bird_forward_sweep"
PLOT_NAME = "big_bird_length_sweep.png"
IMPLS = ("zoo_block_sparse", "zoo_dense", "hf_block_sparse", "hf_original_full")
REFERENCE = "zoo_block_sparse"
REPO_ROOT = Path(__file__).resolve().parent.parent
MIB = 2**20


# ----------------------------------------------------------------------- setup
def hf_config(layers: int, max_positions: int, attention_type: str):
    import transformers

    return transformers.BigBirdConfig(num_hidden_layers=layers, max_position_embeddings=max_positions,
                                      attention_type=attention_type)  # the rest: HF defaults (base)


def build_hf_models(layers: int, max_positions: int, types=("block_sparse", "original_full")) -> dict:
    """{attention_type: eval BigBirdModel}; every instance gets the first one's state_dict."""
    import torch
    import transformers

    torch.manual_seed(0)
    models, state = {}, None
    for attention_type in types:
        m = transformers.BigBirdModel._from_config(hf_config(layers, max_positions, attention_type),
                                                   attn_implementation="eager")
        if state is None:
            state = m.state_dict()
        else:
            m.load_state_dict(state)
        models[attention_type] = m.eval()
    return models


def convert_to_zoo(hf_model, attention_types=("block_sparse", "original_full")):
    """({attention_type: zoo BigBirdModel}, params): one params tree for both (tests/hf_parity.to_zoo)."""
    import jax.numpy as jnp

    from converters.mapping import torch_to_flax
    from zoo.pretrained import build_model, param_shapes, unflatten
    from zoo.registry import get_family

    family = get_family(hf_model.config.model_type)
    hf_dict = hf_model.config.to_dict()
    modules = {t: build_model(family.config_class.from_dict({**hf_dict, "attention_type": t}), "BigBirdModel")
               for t in attention_types}
    first = modules[attention_types[0]]
    for t, m in modules.items():  # the params tree does not depend on the attention type
        if param_shapes(m) != param_shapes(first):
            raise RuntimeError(f"zoo params of attention_type={t} differ from {attention_types[0]}")
    state = {k: v.detach().float().cpu().numpy() for k, v in hf_model.state_dict().items()}
    flat, report = torch_to_flax(state.keys(), state.__getitem__, family.key_table, param_shapes(first))
    if report.unused or report.missing:
        raise RuntimeError(report.summary())
    del state
    return modules, unflatten({k: jnp.asarray(v) for k, v in flat.items()})


def make_inputs(batch: int, seq: int, vocab: int, pad_id: int, pad_frac: float = 0.0, seed: int = 0):
    """Random ids (avoiding the special ids 0-4) and a mask of ones; ``pad_frac`` pads the tail."""
    rng = np.random.default_rng(seed)
    input_ids = rng.integers(5, vocab, size=(batch, seq), dtype=np.int64)
    attention_mask = np.ones((batch, seq), np.int64)
    n_pad = int(round(seq * pad_frac))
    if n_pad:
        attention_mask[:, seq - n_pad:] = 0
        input_ids[:, seq - n_pad:] = pad_id
    return input_ids, attention_mask


SOURCES = ("zoo/attention/block_sparse.py", "zoo/models/big_bird.py", "zoo/attention/dense.py", "zoo/nn/bert.py")


def source_fingerprint() -> dict:
    """sha256 (first 12 hex) of the files that make up the zoo model, and whether each differs
    from the checked-out commit: the kernel may change while benchmarks run."""
    import hashlib

    out = {}
    for rel in SOURCES:
        path = REPO_ROOT / rel
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        except OSError:
            continue
        try:
            changed = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", rel], cwd=REPO_ROOT,
                                     capture_output=True, timeout=10).returncode == 1
        except (OSError, subprocess.SubprocessError):
            changed = None
        out[rel] = {"sha256_12": digest, "modified_vs_HEAD": changed}
    return out


def source_note(fp: dict) -> str:
    changed = [k for k, v in fp.items() if v.get("modified_vs_HEAD")]
    return ("- zoo sources: " + ", ".join(f"`{k}` {v['sha256_12']}" for k, v in fp.items())
            + ("; **not committed (differ from HEAD): " + ", ".join(changed) + "**" if changed else
               "; all as committed"))


def zoo_forward(module, params, input_ids, attention_mask):
    o = module.apply({"params": params}, input_ids=input_ids, attention_mask=attention_mask)
    return o.last_hidden_state, o.pooler_output


def xla_memory(compiled) -> dict:
    """XLA's ``memory_analysis`` of an executable, in MiB (empty if unavailable)."""
    try:
        ma = compiled.memory_analysis()
    except Exception as e:  # noqa: BLE001 - backends without it
        return {"error": repr(e)}
    if ma is None:
        return {}
    return {
        "total_mib": (ma.temp_size_in_bytes + ma.argument_size_in_bytes + ma.output_size_in_bytes
                      - ma.alias_size_in_bytes) / MIB,
        "temp_mib": ma.temp_size_in_bytes / MIB,
        "argument_mib": ma.argument_size_in_bytes / MIB,
        "output_mib": ma.output_size_in_bytes / MIB,
        "alias_mib": ma.alias_size_in_bytes / MIB,
        "generated_code_mib": ma.generated_code_size_in_bytes / MIB,
    }


def _no_attention(query, key, value, **kwargs):
    """Attention replaced by ``out = value`` (to time everything else in the model)."""
    return value, None


def compile_zoo(module, params, ids, mask):
    compiled, lower_s, compile_s = harness.jax_compile(functools.partial(zoo_forward, module), params, ids, mask)
    return compiled, lower_s, compile_s


def _max_diff(a, b, where=None) -> float:
    d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    if where is not None:
        d = d[where]
    return float(d.max()) if d.size else 0.0


# ---------------------------------------------------------------- memory (Linux)
def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (VmHWM, and with it ru_maxrss) of this process."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def mem_available_mib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


# Copies of a [B, H, L, L] fp32 matrix held at the peak of a forward, from net peak RSS measured
# with 2 layers at 2048-8192 tokens: zoo dense 4.0-4.3 (XLA memory_analysis sees only about half
# of that), HF original_full 2.1; with a margin. HF block_sparse (transformers 5.x) always
# assembles the dense [B, H, L, L] attention_probs, even without output_attentions: >= 1 copy
# (1.46 measured at 8192).
DENSE_SCORE_COPIES = {"zoo_dense": 4.5, "hf_original_full": 2.5, "hf_block_sparse": 1.0}


def dense_estimate_bytes(impl: str, batch: int, heads: int, length: int) -> int:
    """Working memory of a dense-attention forward: copies of the scores plus a [B, 1, L, L] mask."""
    return int(DENSE_SCORE_COPIES[impl] * batch * heads * length * length * 4) + batch * length * length * 4


def extrapolate_mib(points: list[tuple[int, float]], length: int) -> float | None:
    """Net memory at ``length`` from the measured (length, MiB) of shorter runs: log-log through
    the last two points, never below linear growth."""
    points = sorted(p for p in points if p[1] and p[1] > 0)
    if not points:
        return None
    (l1, m1) = points[-1]
    slope = 1.0
    if len(points) >= 2:
        (l0, m0) = points[-2]
        slope = max(1.0, float(np.log(m1 / m0) / np.log(l1 / l0)))
    return m1 * (length / l1) ** slope


# ----------------------------------------------------------------- kernels alone
def kernel_benchmarks(seq: int, config, pad_frac: float, repeats: int, warmup: int) -> list[dict]:
    """One layer's attention core alone, fp32, batch 1: zoo kernels (jit) vs HF's torch code."""
    import jax
    import torch
    import transformers

    from zoo.attention.block_sparse import block_sparse_attention
    from zoo.attention.dense import dot_product_attention

    heads, head_dim = config.num_attention_heads, config.hidden_size // config.num_attention_heads
    bs, r = config.block_size, config.num_random_blocks
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((1, seq, heads, head_dim), dtype=np.float32) for _ in range(3))
    _, am = make_inputs(1, seq, config.vocab_size, config.pad_token_id, pad_frac)
    jq, jk, jv = (jax.device_put(a) for a in (q, k, v))
    jmask = jax.device_put(am.astype(bool)[:, None, None, :])
    zoo_fns = {
        "block-sparse": lambda q, k, v, m: block_sparse_attention(q, k, v, mask=m, block_size=bs,
                                                                  num_random_blocks=r)[0],
        "dense": lambda q, k, v, m: dot_product_attention(q, k, v, mask=m)[0],
    }
    sparse_layer = transformers.models.big_bird.modeling_big_bird.BigBirdBlockSparseAttention(config).eval()
    tmask = torch.from_numpy(am).float()
    blocked, band, from_mask, to_mask = transformers.BigBirdModel.create_masks_for_block_sparse_attn(tmask, bs)
    tq, tk, tv = (torch.from_numpy(a).transpose(1, 2).contiguous() for a in (q, k, v))  # [B, H, L, D]
    ext = (1.0 - tmask[:, None, None, :]) * torch.finfo(torch.float32).min

    def hf_sparse():
        return sparse_layer.bigbird_block_sparse_attention(
            tq, tk, tv, band, from_mask, to_mask, blocked, blocked, heads, r, head_dim, bs, bs, 1, seq, seq,
            seed=None, plan_from_length=None, plan_num_rand_blocks=None)[0]

    def hf_full():  # BigBirdSelfAttention's core (eager)
        s = torch.matmul(tq, tk.transpose(-1, -2)) / (head_dim**0.5) + ext
        return torch.matmul(torch.softmax(s, dim=-1), tv)

    torch_fns = {"block-sparse": hf_sparse, "dense": hf_full}
    rows = []
    for label, fn in zoo_fns.items():
        compiled, _, _ = harness.jax_compile(fn, jq, jk, jv, jmask)
        mem = xla_memory(compiled)
        tj = harness.time_callable(lambda: compiled(jq, jk, jv, jmask), name="zoo", repeats=repeats, warmup=warmup)
        tt = harness.time_callable(harness.torch_callable(torch_fns[label]), name="hf", repeats=repeats,
                                   warmup=warmup, sync=None)
        rows.append({"kernel": label, "zoo_median_ms": tj.median_ms, "hf_median_ms": tt.median_ms,
                     "speedup": tt.median_ms / tj.median_ms, "zoo_temp_mib": mem.get("temp_mib"),
                     "zoo_times_ms": tj.times_ms, "hf_times_ms": tt.times_ms})
        print(f"  kernel {label}: zoo {tj.median_ms:.1f} ms, HF {tt.median_ms:.1f} ms "
              f"(speedup {tt.median_ms / tj.median_ms:.2f}x)", flush=True)
    return rows


# ------------------------------------------------------------------ main comparison
def run_main(args) -> dict:
    threads = harness.setup_threads()
    import jax
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    sources = source_fingerprint()
    commit_at_start = harness._git_commit()
    impls = [s for s in args.impls.split(",") if s]
    unknown = [i for i in impls if i not in IMPLS]
    if unknown:
        raise SystemExit(f"unknown implementation(s) {unknown}; choose from {IMPLS}")
    if REFERENCE not in impls:
        impls.insert(0, REFERENCE)
    print(f"batch={args.batch} seq={args.seq} layers={args.layers} pad_frac={args.pad_frac} threads={threads}",
          flush=True)

    t0 = time.perf_counter()
    hf = build_hf_models(args.layers, args.seq)
    zoo_modules, params = convert_to_zoo(hf["block_sparse"])
    cfg = hf["block_sparse"].config
    print(f"models built in {time.perf_counter() - t0:.1f} s", flush=True)
    input_ids, attention_mask = make_inputs(args.batch, args.seq, cfg.vocab_size, cfg.pad_token_id, args.pad_frac)
    valid = attention_mask.astype(bool)
    j_ids, j_mask = jax.device_put(input_ids.astype(np.int32)), jax.device_put(attention_mask.astype(np.int32))
    t_ids, t_mask = torch.from_numpy(input_ids), torch.from_numpy(attention_mask)

    calls, compile_info, outputs, memory = {}, {}, {}, {}
    for name, attention_type in (("zoo_block_sparse", "block_sparse"), ("zoo_dense", "original_full")):
        if name not in impls:
            continue
        compiled, lower_s, compile_s = compile_zoo(zoo_modules[attention_type], params, j_ids, j_mask)
        compile_info[name] = {"lower_s": lower_s, "compile_s": compile_s}
        memory[name] = xla_memory(compiled)
        calls[name] = functools.partial(compiled, params, j_ids, j_mask)
        t1 = time.perf_counter()
        outputs[name] = [np.asarray(a) for a in calls[name]()]
        first = time.perf_counter() - t1
        compile_info[name]["first_call_s"] = first
        print(f"{name}: trace+lower {lower_s:.2f} s, XLA compile {compile_s:.2f} s, first call {first:.2f} s, "
              f"XLA memory {memory[name].get('temp_mib', float('nan')):.0f} MiB temp", flush=True)
    for name, attention_type in (("hf_block_sparse", "block_sparse"), ("hf_original_full", "original_full")):
        if name not in impls:
            continue
        calls[name] = harness.torch_callable(functools.partial(hf[attention_type], input_ids=t_ids,
                                                               attention_mask=t_mask))
        t1 = time.perf_counter()
        o = calls[name]()
        outputs[name] = [o.last_hidden_state.numpy(), o.pooler_output.numpy()]
        print(f"{name}: first call {time.perf_counter() - t1:.2f} s", flush=True)
        del o

    # --- agreement, before timing
    checks = {}
    for a, b in (("zoo_block_sparse", "hf_block_sparse"), ("zoo_dense", "hf_original_full"),
                 ("hf_block_sparse", "hf_original_full"), ("zoo_block_sparse", "zoo_dense")):
        if a in outputs and b in outputs:
            checks[f"{a} vs {b}"] = {
                "last_hidden_state_max_abs_diff": _max_diff(outputs[a][0], outputs[b][0]),
                "last_hidden_state_max_abs_diff_unpadded": _max_diff(outputs[a][0], outputs[b][0], valid),
                "pooler_output_max_abs_diff": _max_diff(outputs[a][1], outputs[b][1]),
            }
    for k, v in checks.items():
        print(f"check {k}: " + ", ".join(f"{a}={b:.2e}" for a, b in v.items()), flush=True)
    del outputs

    # --- timing (round-robin), re-timed while the machine is busy
    syncs = {n: (None if n.startswith("hf_") else harness.block) for n in calls}
    timings, load = harness.quietest_attempt(
        lambda: harness.time_interleaved(
            calls, repeats=args.repeats, warmup=args.warmup, syncs=syncs,
            timing_kwargs={n: {"lower_s": c["lower_s"], "compile_s": c["compile_s"],
                               "extra": {"first_call_s": c["first_call_s"]}} for n, c in compile_info.items()}),
        attempts=args.attempts, max_load=args.max_load, quiet_wait=args.quiet_wait,
        describe=lambda timings: "medians " + ", ".join(f"{t.name} {t.median_ms:.0f} ms" for t in timings))
    for name, attention_type in (("hf_block_sparse", "block_sparse"), ("hf_original_full", "original_full")):
        if name in calls and hf[attention_type].attention_type != attention_type:
            raise RuntimeError(f"{name} switched itself to attention_type={hf[attention_type].attention_type}")

    kernels, kernel_load, floor, rusage = None, None, None, None
    if args.kernels:
        with harness.LoadMonitor() as monitor:
            rusage = {}
            for name, call in calls.items():  # one more call each: CPU time and page faults
                ru0 = resource.getrusage(resource.RUSAGE_SELF)
                t1 = time.perf_counter()
                out = call()
                if syncs[name] is not None:
                    syncs[name](out)
                wall = time.perf_counter() - t1
                del out
                ru1 = resource.getrusage(resource.RUSAGE_SELF)
                rusage[name] = {"wall_s": wall, "user_s": ru1.ru_utime - ru0.ru_utime,
                                "sys_s": ru1.ru_stime - ru0.ru_stime, "minor_faults": ru1.ru_minflt - ru0.ru_minflt}
                print(f"  {name}: one call {wall:.2f} s, user {rusage[name]['user_s']:.2f} s, "
                      f"sys {rusage[name]['sys_s']:.2f} s, {rusage[name]['minor_faults'] / 1e3:.0f}k page faults",
                      flush=True)
            kernels = kernel_benchmarks(args.seq, cfg, args.pad_frac, max(args.repeats, 5), args.warmup)
            # The same model with an attention that returns v unchanged: everything but attention
            # (embeddings, q/k/v/output projections, feed-forward, LayerNorms, pooler).
            no_attention = zoo_modules["original_full"].clone(attention_fn=_no_attention)
            compiled, lower_s, compile_s = compile_zoo(no_attention, params, j_ids, j_mask)
            floor = harness.time_callable(functools.partial(compiled, params, j_ids, j_mask),
                                          name="zoo, attention core removed", repeats=args.repeats,
                                          warmup=1, lower_s=lower_s, compile_s=compile_s)
            print(f"  zoo model without the attention core: {floor.median_ms:.0f} ms", flush=True)
        kernel_load = monitor.result
    sources_after = source_fingerprint()

    machine = harness.machine_info("cpu")
    by_name = {t.name: t for t in timings}
    ref = by_name[REFERENCE].median_ms
    ratios = {f"{n} / {REFERENCE}": t.median_ms / ref for n, t in by_name.items() if n != REFERENCE}
    goals = {}
    if "hf_block_sparse" in by_name:
        goals["zoo_block_sparse >= 3x faster than hf_block_sparse"] = by_name["hf_block_sparse"].median_ms / ref >= 3
    if "zoo_dense" in by_name:
        goals["zoo_block_sparse >= 1.5x faster than zoo_dense"] = by_name["zoo_dense"].median_ms / ref >= 1.5
    command = "python -m benchmarks.big_bird_forward " + " ".join(args.argv)
    payload = {
        "benchmark": DEFAULT_NAME, "command": command.strip(),
        "setup": {"batch": args.batch, "seq": args.seq, "layers": args.layers, "pad_frac": args.pad_frac,
                  "padding_tokens": int((attention_mask == 0).sum()), "dtype": "float32", "device": "cpu",
                  "repeats": args.repeats, "warmup": args.warmup, "timing": "interleaved",
                  "model": f"BigBirdModel base (HF BigBirdConfig defaults, {args.layers} layers, "
                           f"max_position_embeddings={args.seq}), random weights, pooling layer",
                  "block_size": cfg.block_size, "num_random_blocks": cfg.num_random_blocks},
        "machine": machine, "threads": threads, "timings": timings, "speedup_of_zoo_block_sparse": ratios,
        "goals_met": goals, "checks": checks, "xla_memory": memory, "load": load,
        "kernels": kernels, "kernel_load": kernel_load, "no_attention_floor": floor, "rusage_one_call": rusage,
        "sources": sources, "sources_changed_during_run": sources_after != sources,
        "git_commit_at_start": commit_at_start,
    }
    md = [f"### BigBird base forward, batch {args.batch} x seq {args.seq}, {args.layers} layers, fp32, cpu", "",
          f"`{payload['command']}`", "",
          harness.comparison_table(timings, REFERENCE), "",
          f"{args.repeats} timed runs each after {args.warmup} warm-up round(s), interleaved (round-robin). "
          f"speedup = implementation median / {REFERENCE} median (> 1: zoo block-sparse faster). "
          "compile s = XLA compilation; trace + lower: "
          + ", ".join(f"{n} {c['lower_s']:.2f} s" for n, c in compile_info.items()) + "; first call: "
          + ", ".join(f"{n} {c['first_call_s']:.2f} s" for n, c in compile_info.items()) + ".", ""]
    if goals:
        md += ["Goals: " + "; ".join(f"{k}: **{'met' if v else 'not met'}**" for k, v in goals.items()), ""]
    if memory:
        md += ["| zoo executable | XLA temp MiB | argument MiB | output MiB |", "|---|---:|---:|---:|"]
        md += [f"| {n} | {m.get('temp_mib', 0):.0f} | {m.get('argument_mib', 0):.0f} | {m.get('output_mib', 0):.0f} |"
               for n, m in memory.items()]
        md.append("")
    if checks:
        md += ["| outputs | last_hidden_state max abs diff | (unpadded positions) | pooler_output max abs diff |",
               "|---|---:|---:|---:|"]
        md += [f"| {k} | {v['last_hidden_state_max_abs_diff']:.2e} | {v['last_hidden_state_max_abs_diff_unpadded']:.2e} "
               f"| {v['pooler_output_max_abs_diff']:.2e} |" for k, v in checks.items()]
        md.append("")
    if kernels:
        md += ["Attention core alone (one layer's q/k/v [1, L, 12, 64]; zoo jit vs HF's torch code, same threads):", "",
               "| kernel | zoo median ms | HF median ms | speedup (HF / zoo) | zoo XLA temp MiB |",
               "|---|---:|---:|---:|---:|"]
        md += [f"| {k['kernel']} | {k['zoo_median_ms']:.1f} | {k['hf_median_ms']:.1f} | {k['speedup']:.2f}x | "
               f"{(k['zoo_temp_mib'] or 0):.0f} |" for k in kernels]
        if rusage:
            md += ["", "One more call of each, CPU time of all threads (system time is mostly the kernel "
                   "zeroing freshly mapped pages for buffers allocated on every call):", "",
                   "| implementation | wall s | user s | system s | minor page faults |", "|---|---:|---:|---:|---:|"]
            md += [f"| {n} | {r['wall_s']:.2f} | {r['user_s']:.2f} | {r['sys_s']:.2f} | {r['minor_faults']:,} |"
                   for n, r in rusage.items()]
        if floor is not None:
            layers_ms = {t.name: t.median_ms for t in timings}
            md += ["", f"The zoo model with the attention core replaced by `out = v` (everything else: embeddings, "
                   f"projections, feed-forward, LayerNorms, pooler): **{floor.median_ms:.0f} ms** "
                   f"(median of {floor.repeats}). Attention share of the forward: "
                   + ", ".join(f"{n} {(ms - floor.median_ms) / ms:.0%}" for n, ms in layers_ms.items()
                               if n.startswith("zoo")) + "; if HF's non-attention part costs the same, "
                   + (f"the best possible speedup over hf_block_sparse is "
                      f"{layers_ms['hf_block_sparse'] / floor.median_ms:.2f}x (attention in zero time)."
                      if "hf_block_sparse" in layers_ms else "")]
        md += ["", harness.load_note(kernel_load, "load during the kernel timings") or "", ""]
    md.append(harness.environment_block(machine, threads, load))
    if commit_at_start != machine.get("git_commit"):
        md.append(f"- git commit at the start of the run: {commit_at_start} (at the end: {machine.get('git_commit')})")
    md.append(source_note(sources) + ("" if sources_after == sources else
                                      " **(the sources changed during the run; the numbers are of the "
                                      "version at the start)**"))
    markdown = "\n".join(md)
    print()
    print(markdown)
    if not args.no_write:
        print("wrote", *harness.write_results(args.name or DEFAULT_NAME, payload, markdown))
    return payload


# ---------------------------------------------------------------------- sweep worker
def run_worker(spec: dict) -> dict:
    """One (implementation, length) in this fresh process: time per forward and peak memory."""
    threads = harness.setup_threads()
    import jax
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    impl, length, layers = spec["impl"], spec["length"], spec["layers"]
    batch, budget_mib = spec["batch"], spec["budget_mib"]
    attention_type = "block_sparse" if impl.endswith("block_sparse") else "original_full"
    result = {"impl": impl, "length": length, "layers": layers, "threads": threads,
              "sources": source_fingerprint()}
    t0 = time.perf_counter()
    hf = build_hf_models(layers, spec["max_positions"], (attention_type,))[attention_type]
    cfg = hf.config
    input_ids, attention_mask = make_inputs(batch, length, cfg.vocab_size, cfg.pad_token_id)
    if impl.startswith("zoo"):
        modules, params = convert_to_zoo(hf, (attention_type,))
        del hf
        gc.collect()
        ids, mask = jax.device_put(input_ids.astype(np.int32)), jax.device_put(attention_mask.astype(np.int32))
        compiled, lower_s, compile_s = compile_zoo(modules[attention_type], params, ids, mask)
        mem = xla_memory(compiled)
        result.update(lower_s=lower_s, compile_s=compile_s, xla_memory=mem)
        # what the forward adds to the resident weights: XLA temp + outputs
        estimate_mib = (mem["temp_mib"] + mem["output_mib"]) if "temp_mib" in mem else None
        if attention_type == "original_full":
            estimate_mib = max(estimate_mib or 0.0,
                               dense_estimate_bytes(impl, batch, cfg.num_attention_heads, length) / MIB)
        fn = functools.partial(compiled, params, ids, mask)
        sync = harness.block
    else:
        t_ids, t_mask = torch.from_numpy(input_ids), torch.from_numpy(attention_mask)
        estimate_mib = dense_estimate_bytes(impl, batch, cfg.num_attention_heads, length) / MIB
        fn = harness.torch_callable(functools.partial(hf, input_ids=t_ids, attention_mask=t_mask))
        sync = None
    result["setup_s"] = time.perf_counter() - t0
    result["estimate_mib"] = estimate_mib
    if estimate_mib is not None and estimate_mib > budget_mib:
        result["skipped"] = (f"estimated {estimate_mib / 1024:.1f} GiB > budget {budget_mib / 1024:.1f} GiB"
                             + (f" ({DENSE_SCORE_COPIES[impl]} x [B,H,L,L] fp32 + [B,1,L,L] mask)"
                                if impl in DENSE_SCORE_COPIES else " (XLA memory_analysis)"))
        return result
    gc.collect()
    result["setup_ru_maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["hwm_reset"] = reset_peak_rss()
    base_kib = _status_kib("VmRSS")
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    with harness.LoadMonitor() as monitor:
        timing = harness.time_callable(fn, name=impl, repeats=spec["repeats"], warmup=spec["warmup"], sync=sync)
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    peak_kib = _status_kib("VmHWM")
    calls = spec["repeats"] + spec["warmup"]
    result["per_forward_rusage"] = {  # CPU seconds of all threads and page faults, per forward
        "user_s": (ru1.ru_utime - ru0.ru_utime) / calls, "sys_s": (ru1.ru_stime - ru0.ru_stime) / calls,
        "minor_faults": (ru1.ru_minflt - ru0.ru_minflt) / calls}
    result["ru_maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["baseline_rss_mib"] = base_kib / 1024 if base_kib else None
    result["peak_rss_mib"] = peak_kib / 1024 if peak_kib else None
    if base_kib and peak_kib and result["hwm_reset"]:
        result["net_peak_rss_mib"] = (peak_kib - base_kib) / 1024
    else:  # no high-water reset: ru_maxrss minus the setup's
        result["net_peak_rss_mib"] = result["ru_maxrss_mib"] - result["setup_ru_maxrss_mib"]
    result["timing"] = timing.to_dict()
    result["load"] = monitor.result
    if impl.startswith("hf_") and hf.attention_type != attention_type:
        result["warning"] = f"HF switched itself to attention_type={hf.attention_type}"
    return result


def _rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None


def _spawn_worker(spec: dict, timeout_s: float, kill_rss_mib: float) -> dict:
    """Run one (impl, length) in a fresh process; kill it if its RSS passes ``kill_rss_mib``."""
    import tempfile

    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "benchmarks.big_bird_forward", "--_worker", json.dumps(spec)]
    t0 = time.perf_counter()
    killed, max_rss = None, 0.0
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, cwd=REPO_ROOT, env=env)
        while proc.poll() is None:
            rss = _rss_mib(proc.pid) or 0.0
            max_rss = max(max_rss, rss)
            if rss > kill_rss_mib:
                killed = f"killed: its RSS reached {rss / 1024:.1f} GiB > {kill_rss_mib / 1024:.1f} GiB"
            elif time.perf_counter() - t0 > timeout_s:
                killed = f"killed: ran longer than {timeout_s:.0f} s"
            if killed:
                proc.kill()
                proc.wait()
                break
            time.sleep(0.2)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    wall = time.perf_counter() - t0
    if killed:
        return {**spec, "skipped": killed, "wall_s": wall, "max_rss_seen_mib": max_rss}
    lines = [ln for ln in stdout.splitlines() if ln.startswith("WORKER_RESULT ")]
    if proc.returncode != 0 or not lines:
        return {**spec, "error": f"worker exit {proc.returncode}", "stderr_tail": stderr[-3000:],
                "skipped": f"worker failed (exit {proc.returncode})", "wall_s": wall}
    return dict(json.loads(lines[-1][len("WORKER_RESULT "):]), wall_s=wall, max_rss_seen_mib=max_rss)


def _slope(xs, ys) -> float | None:
    pts = [(x, y) for x, y in zip(xs, ys) if y is not None and y > 0]
    if len(pts) < 2:
        return None
    lx, ly = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(lx, ly, 1)[0])


def _plot(rows: list[dict], lengths: list[int], layers: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 4.8))
    styles = {"zoo_block_sparse": ("C0", "o"), "zoo_dense": ("C1", "s"),
              "hf_block_sparse": ("C2", "^"), "hf_original_full": ("C3", "v")}
    for impl in IMPLS:
        pts = [r for r in rows if r["impl"] == impl and "timing" in r]
        if not pts:
            continue
        color, marker = styles[impl]
        ax_t.plot([r["length"] for r in pts], [r["timing"]["median_ms"] for r in pts], marker=marker,
                  color=color, label=impl)
        ax_m.plot([r["length"] for r in pts], [max(r["net_peak_rss_mib"], 1e-1) for r in pts], marker=marker,
                  color=color, label=f"{impl} (peak RSS - baseline)")
        if impl.startswith("zoo"):
            xla = [r for r in rows if r["impl"] == impl and r.get("xla_memory", {}).get("temp_mib")]
            ax_m.plot([r["length"] for r in xla], [r["xla_memory"]["temp_mib"] for r in xla], marker=marker,
                      color=color, linestyle="--", fillstyle="none", label=f"{impl} (XLA temp)")
    ref = [r for r in rows if r["impl"] == "zoo_block_sparse" and "timing" in r]
    if ref:  # a linear guide through the first zoo block-sparse point
        x0, y0 = ref[0]["length"], ref[0]["net_peak_rss_mib"]
        ax_m.plot(lengths, [y0 * x / x0 for x in lengths], color="grey", linestyle=":", label="linear guide")
    for ax, title, ylabel in ((ax_t, "time per forward", "median ms"),
                              (ax_m, "memory of the forward", "MiB")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(lengths)
        ax.set_xticklabels([str(x) for x in lengths])
        ax.set_xlabel("sequence length (tokens)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"BigBird base width, {layers} layers, batch 1, fp32 CPU: {title}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
    plt.close(fig)


def run_sweep(args) -> dict:
    lengths = [int(x) for x in args.lengths.split(",") if x]
    impls = [s for s in args.sweep_impls.split(",") if s]
    unknown = [i for i in impls if i not in IMPLS]
    if unknown:
        raise SystemExit(f"unknown implementation(s) {unknown}; choose from {IMPLS}")
    max_positions = max(lengths)
    avail = mem_available_mib()
    budget_mib = args.mem_budget_gib * 1024
    if avail is not None:  # leave at least 4 GiB to everything else on the machine
        budget_mib = min(budget_mib, avail - 4096)
    # a worker is killed when its whole RSS (imports, weights, compiled code and the forward)
    # passes the budget plus 3 GiB of set-up, or what the machine has available minus 2 GiB
    kill_rss_mib = budget_mib + 3072 if avail is None else min(budget_mib + 3072, avail - 2048)
    print(f"sweep: lengths {lengths}, {args.sweep_layers} layers, impls {impls}, memory budget "
          f"{budget_mib / 1024:.1f} GiB for the forward, workers killed above {kill_rss_mib / 1024:.1f} GiB RSS "
          f"(MemAvailable {avail and avail / 1024:.1f} GiB)", flush=True)
    rows = []
    commit_at_start = harness._git_commit()
    quiet = harness.wait_for_quiet(timeout_s=args.quiet_wait) if args.quiet_wait > 0 else None
    with harness.LoadMonitor() as monitor:
        for length in lengths:
            for impl in impls:
                spec = {"impl": impl, "length": length, "layers": args.sweep_layers, "batch": 1,
                        "max_positions": max_positions, "repeats": args.repeats, "warmup": args.warmup,
                        "budget_mib": budget_mib}
                # decide before starting the process: dense by formula, the others by extrapolating
                # their own shorter runs
                est = extrapolate_mib([(r["length"], r.get("net_peak_rss_mib")) for r in rows
                                       if r["impl"] == impl and "timing" in r], length)
                how = "extrapolated log-log from the shorter runs"
                if impl in DENSE_SCORE_COPIES:
                    formula = dense_estimate_bytes(impl, 1, 12, length) / MIB
                    if est is None or formula > est:
                        est, how = formula, f"{DENSE_SCORE_COPIES[impl]} x [B,H,L,L] fp32 + [B,1,L,L] mask"
                if est is not None and est > budget_mib:
                    rows.append({**spec, "estimate_mib": est, "skipped":
                                 f"estimated {est / 1024:.1f} GiB > budget {budget_mib / 1024:.1f} GiB ({how})"})
                    print(f"{impl} @ {length}: skipped, {rows[-1]['skipped']}", flush=True)
                    continue
                if args.quiet_wait > 0:  # a short wait per run; its load is recorded either way
                    harness.wait_for_quiet(timeout_s=min(args.quiet_wait, args.run_quiet_wait), verbose=False)
                r = _spawn_worker(spec, args.worker_timeout, kill_rss_mib)
                rows.append(r)
                if "timing" in r:
                    xla = r.get("xla_memory", {})
                    print(f"{impl} @ {length}: median {r['timing']['median_ms']:.0f} ms, net peak RSS "
                          f"{r['net_peak_rss_mib']:.0f} MiB"
                          + (f", XLA temp {xla['temp_mib']:.0f} MiB, compile {r['lower_s']:.1f}+{r['compile_s']:.1f} s"
                             if xla.get("temp_mib") is not None else "")
                          + f", others used {r['load'].get('foreign_cpu_fraction', 0):.0%} of the cores", flush=True)
                else:
                    print(f"{impl} @ {length}: {r.get('skipped')} {r.get('stderr_tail', '')[-500:]}", flush=True)
    load = dict(monitor.result, quiet_wait=quiet)

    slopes = {}
    for impl in impls:
        pts = [r for r in rows if r["impl"] == impl and "timing" in r]
        xs = [r["length"] for r in pts]
        slopes[impl] = {
            "time": _slope(xs, [r["timing"]["median_ms"] for r in pts]),
            "net_peak_rss": _slope(xs, [r["net_peak_rss_mib"] for r in pts]),
            "xla_temp": _slope(xs, [r.get("xla_memory", {}).get("temp_mib") for r in pts]) if impl.startswith("zoo") else None,
            "lengths_fitted": xs,
        }
    plot_path = harness.RESULTS_DIR / PLOT_NAME
    if not args.no_write:
        harness.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        _plot(rows, lengths, args.sweep_layers, plot_path)

    machine = harness.machine_info("cpu")
    command = ("python -m benchmarks.big_bird_forward " + " ".join(args.argv)).strip()
    payload = {"benchmark": SWEEP_NAME, "command": command,
               "setup": {"lengths": lengths, "layers": args.sweep_layers, "batch": 1, "dtype": "float32",
                         "max_position_embeddings": max_positions, "repeats": args.repeats, "warmup": args.warmup,
                         "memory_budget_mib": budget_mib, "kill_rss_mib": kill_rss_mib,
                         "mem_available_mib_at_start": avail,
                         "model": f"BigBirdModel base width (HF BigBirdConfig defaults) with {args.sweep_layers} "
                                  "layers, random weights, attention_mask of ones"},
               "git_commit_at_start": commit_at_start, "rows": rows, "loglog_slopes": slopes,
               "plot": str(plot_path), "machine": machine, "load": load}

    def cell(impl, length, key):
        r = next((r for r in rows if r["impl"] == impl and r["length"] == length), None)
        if r is None:
            return "n/a"
        if "timing" not in r:
            return "skipped"
        if key == "time":
            return f"{r['timing']['median_ms']:.0f}"
        if key == "mem":
            return f"{r['net_peak_rss_mib']:.0f}"
        xla = r.get("xla_memory", {})
        return f"{xla.get('temp_mib', float('nan')):.0f}" if xla else ""

    md = [f"### BigBird length sweep: base width, **{args.sweep_layers} layers**, batch 1, fp32, cpu", "",
          f"`{command}`", "",
          "Median ms per forward (" + f"{args.repeats} runs after {args.warmup} warm-up, each (impl, length) in a "
          "fresh process):", "",
          "| length | " + " | ".join(impls) + " | " + " | ".join(
              f"{i} / zoo_block_sparse" for i in impls if i != "zoo_block_sparse") + " |",
          "|---:|" + "---:|" * (2 * len(impls) - 1)]
    for length in lengths:
        ratios = []
        ref = next((r for r in rows if r["impl"] == "zoo_block_sparse" and r["length"] == length and "timing" in r), None)
        for i in impls:
            if i == "zoo_block_sparse":
                continue
            o = next((r for r in rows if r["impl"] == i and r["length"] == length and "timing" in r), None)
            ratios.append(f"{o['timing']['median_ms'] / ref['timing']['median_ms']:.2f}x" if o and ref else "")
        md.append(f"| {length} | " + " | ".join(cell(i, length, "time") for i in impls) + " | " + " | ".join(ratios) + " |")
    md += ["", "Memory of the forward, MiB: peak RSS during the runs minus RSS just before them "
           "(XLA `memory_analysis` temp bytes in brackets for the zoo):", "",
           "| length | " + " | ".join(impls) + " |", "|---:|" + "---:|" * len(impls)]
    for length in lengths:
        cells = []
        for i in impls:
            c = cell(i, length, "mem")
            if i.startswith("zoo") and c not in ("skipped", "n/a"):
                c += f" ({cell(i, length, 'xla')})"
            cells.append(c)
        md.append(f"| {length} | " + " | ".join(cells) + " |")
    md += ["", "CPU time per forward, all threads: user s / system s (minor page faults, thousands). System "
           "time is mostly the kernel zeroing fresh pages for buffers allocated (mmap) on every call:", "",
           "| length | " + " | ".join(impls) + " |", "|---:|" + "---:|" * len(impls)]
    for length in lengths:
        cells = []
        for i in impls:
            r = next((r for r in rows if r["impl"] == i and r["length"] == length and "per_forward_rusage" in r), None)
            ru = r and r["per_forward_rusage"]
            cells.append(f"{ru['user_s']:.2f} / {ru['sys_s']:.2f} ({ru['minor_faults'] / 1e3:.0f}k)" if ru else "")
        md.append(f"| {length} | " + " | ".join(cells) + " |")
    zoo_compiles = [r for r in rows if "compile_s" in r]
    if zoo_compiles:
        md += ["", "Zoo compile time, s (trace + lower / XLA compile):", "",
               "| length | " + " | ".join(i for i in impls if i.startswith("zoo")) + " |",
               "|---:|" + "---:|" * len([i for i in impls if i.startswith("zoo")])]
        for length in lengths:
            cs = []
            for i in impls:
                if not i.startswith("zoo"):
                    continue
                r = next((r for r in zoo_compiles if r["impl"] == i and r["length"] == length), None)
                cs.append(f"{r['lower_s']:.1f} / {r['compile_s']:.1f}" if r else "")
            md.append(f"| {length} | " + " | ".join(cs) + " |")
    skipped = [r for r in rows if "timing" not in r]
    if skipped:
        md += ["", "Skipped:", ""] + [f"- {r['impl']} @ {r['length']}: {r.get('skipped')}" for r in skipped]
    md += ["", "Log-log slopes over the measured lengths (1.0 = linear, 2.0 = quadratic):", "",
           "| implementation | time | net peak RSS | XLA temp |", "|---|---:|---:|---:|"]
    f = lambda v: "" if v is None else f"{v:.2f}"
    md += [f"| {i} | {f(s['time'])} | {f(s['net_peak_rss'])} | {f(s['xla_temp'])} |" for i, s in slopes.items()]
    noisy = [f"{r['impl']}@{r['length']} {r['load'].get('foreign_cpu_fraction', 0):.0%}" for r in rows
             if "load" in r and r["load"].get("foreign_cpu_fraction", 0) >= 0.05]
    prints = {json.dumps(r["sources"], sort_keys=True) for r in rows if "sources" in r}
    sources = [json.loads(p) for p in sorted(prints)]
    payload["sources"] = sources
    md += ["", f"Plot: `results/{PLOT_NAME}`.", "",
           "- per-run load: " + ("every run had other processes below 5 % of the cores" if not noisy else
                                 "other processes used >= 5 % of the cores during: " + ", ".join(noisy)
                                 + " **(noisy)**"),
           harness.environment_block(machine, None, load)]
    if commit_at_start != machine.get("git_commit"):
        md.append(f"- git commit at the start of the sweep: {commit_at_start} (at the end: {machine.get('git_commit')})")
    md += [source_note(fp) for fp in sources]
    if len(sources) > 1:
        md.append("- **the zoo sources changed between the runs of this sweep** (one line per version above)")
    markdown = "\n".join(md)
    print()
    print(markdown)
    if not args.no_write:
        print("wrote", *harness.write_results(args.name or SWEEP_NAME, payload, markdown), plot_path)
    return payload


# ----------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--_worker"]:
        result = run_worker(json.loads(argv[1]))
        print("WORKER_RESULT " + json.dumps(harness._jsonable(result)), flush=True)
        return result
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--layers", type=int, default=12, help="encoder layers of the main comparison")
    parser.add_argument("--pad-frac", type=float, default=0.0, help="share of the tail that is padding")
    parser.add_argument("--impls", default=",".join(IMPLS), help=f"comma list of {', '.join(IMPLS)}")
    parser.add_argument("--kernels", action="store_true", help="also time the attention kernels alone")
    parser.add_argument("--attempts", type=int, default=1,
                        help="re-time, up to this many times, while others use more than --max-load of the cores")
    parser.add_argument("--max-load", type=float, default=0.05)
    parser.add_argument("--sweep", action="store_true", help="length sweep instead of the main comparison")
    parser.add_argument("--lengths", default="1024,2048,4096,8192,16384")
    parser.add_argument("--sweep-layers", type=int, default=2, help="encoder layers in the sweep")
    parser.add_argument("--sweep-impls", default=",".join(IMPLS))
    parser.add_argument("--mem-budget-gib", type=float, default=8.0,
                        help="skip sweep runs estimated to need more (also capped at MemAvailable - 4 GiB)")
    parser.add_argument("--run-quiet-wait", type=float, default=15.0,
                        help="sweep: seconds to wait at most for a quiet machine before each run")
    parser.add_argument("--worker-timeout", type=float, default=900.0, help="seconds per sweep subprocess")
    harness.add_common_args(parser, repeats=3, warmup=1)
    args = parser.parse_args(argv)
    args.argv = argv
    if args.device == "gpu":
        parser.error("this benchmark is CPU-only (fp32)")
    return run_sweep(args) if args.sweep else run_main(args)


if __name__ == "__main__":
    main()
