"""One script for a lent GPU (H100 / H200): zoo vs HF PyTorch forwards, the attention kernels,
and a training step with MFU, in one process, within a time budget (default 7 minutes).

    python -m benchmarks.accelerator [--tiny] [--out DIR] [--budget-s 420]
    python -m benchmarks.accelerator --tiny --no-write      # CPU smoke test, < 60 s

Sections (each guarded: an exception is recorded in the JSON as an error string and the next
section runs; every sweep point is guarded the same way):

1. ``forward``: every workload of :data:`benchmarks.forward.WORKLOADS` (each family's base-size
   model, the same inputs, weights and conversion as the CPU benchmark) through
   :func:`benchmarks.forward.run_workload` in ``--dtype`` (bfloat16) on this device: zoo with its
   default ``attention_kernel="auto"`` (cuDNN / Pallas on GPU) vs HF on the same card (``hf_sdpa``
   where the HF model has it, ``hf_eager`` always). ``zoo_vs_torch = torch median / zoo median``
   against ``hf_sdpa`` where present, else the HF implementation the zoo is checked against.
2. ``kernels``: the attention kernels alone at L = 1024 ... 16384 (B 1, H 12, D 64, bfloat16, a
   key-padding mask ``[B, 1, 1, L]`` with the last L/16 keys padded), ``fwd`` and ``fwd+bwd``
   (``value_and_grad`` of ``sum(out)`` w.r.t. q, k, v (+ pos_key, pos_query)): dense XLA / Pallas /
   cuDNN, block-sparse XLA / Pallas (block 64, 3 random blocks from ``sample_random_blocks``),
   disentangled XLA / Pallas (SEW-D base: 256 buckets, 512 max relative positions, c2p + p2c).
   All kernels of one (L, mode) are timed round-robin; memory: XLA's ``memory_analysis()`` temp
   bytes per executable and, on GPU, the device's ``peak_bytes_in_use`` (a process-wide high-water
   mark, monotone over the sweep: not per kernel).
3. ``train``: one Data2VecText base training step (sequence classification, 8 x 128 tokens,
   AdamW, the ``text_classification`` recipe, bfloat16 compute, dropout on) built from
   :mod:`benchmarks.train_throughput`'s pieces and ``zoo.train``; time per step and MFU =
   FLOPs / step time / peak, FLOPs from XLA's ``cost_analysis()`` of the compiled step, with
   ``6 * params * tokens`` and the analytic count of ``train_throughput.text_flops`` as cross-checks.

``--tiny``: tiny models, L in (64, 128), tiny kernel shapes, 1 warm-up + 2 timed rounds: runs on
a CPU in under a minute (Pallas kernels in interpret mode; cuDNN rows "not applicable on cpu";
the forward section runs the first workload of each family, in float32 when torch is on the
CPU, whose bfloat16 kernels are slow). The JSON says exactly what was timed (device kind,
dtype, shapes, kernels, threads, versions) and ``"gpu_measured": false`` unless JAX ran on a
GPU; the goals are judged (``met``) on a GPU run only.

Time budget (``--budget-s``, default 420 s from the start of ``main``): the forward section starts
no workload after ``--forward-share`` (0.4) of it, the train step starts only with 60 s left,
and the kernel sweep (last) starts no length once the budget is used or when twice the last
length's time would not fit; every skipped point is recorded with the reason.

cuDNN: ``dense/cudnn`` is the zoo's ``dot_product_attention(implementation="cudnn")`` with the
``[B, 1, 1, L]`` mask; ``dense/cudnn_seqlens`` the same padding as cuDNN's
``key_value_seq_lengths``, the reference of the ratios where ``dense/cudnn`` fails (jax 0.10's
cuDNN wrapper turns a mask into a bias and requires it to be ``[.., L, L]``).
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import time
import traceback

import numpy as np

from benchmarks import harness

NAME = "accelerator"
MODES = ("fwd", "fwd+bwd")
LENGTHS = (1024, 2048, 4096, 8192, 16384)
TINY_LENGTHS = (64, 128)
# Peak dense bf16 tensor FLOP/s by device_kind substring (first match wins); unknown -> None.
PEAK_BF16_FLOPS = (("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12))
KERNEL_SETUP = dict(batch=1, heads=12, head_dim=64, block_size=64, num_random_blocks=3, position_buckets=256,
                    max_relative_positions=512, pos_att_type=("c2p", "p2c"), padded_fraction=1 / 16)
TINY_KERNEL_SETUP = dict(KERNEL_SETUP, heads=2, head_dim=16, block_size=8, num_random_blocks=1, position_buckets=8,
                         max_relative_positions=16)
KERNELS = ("dense/xla", "dense/pallas", "dense/cudnn", "dense/cudnn_seqlens", "block_sparse/xla", "block_sparse/pallas",
           "disentangled/xla", "disentangled/pallas")
KERNEL_SOURCES = {
    "dense/xla": "zoo.attention.dense.dot_product_attention(implementation='xla')",
    "dense/pallas": "zoo.attention.pallas_dense.flash_attention",
    "dense/cudnn": "zoo.attention.dense.dot_product_attention(implementation='cudnn')",
    "dense/cudnn_seqlens": "jax.nn.dot_product_attention(implementation='cudnn', key_value_seq_lengths=valid "
                           "keys): the same key padding in cuDNN's own padding form; the cuDNN reference of the "
                           "ratios when dense/cudnn (a [B, 1, 1, L] mask, which jax's cuDNN wrapper turns into a "
                           "bias it refuses unless it is [.., L, L]) fails",
    "block_sparse/xla": "zoo.attention.block_sparse.block_sparse_attention",
    "block_sparse/pallas": "zoo.attention.pallas_block_sparse.block_sparse_flash_attention",
    "disentangled/xla": "zoo.attention.disentangled.disentangled_attention (relative_pos from "
                        "build_relative_position(L, L, buckets, max_relative_positions) inside the jit)",
    "disentangled/pallas": "zoo.attention.pallas_disentangled.disentangled_flash_attention "
                           "(position_buckets / max_relative_positions)",
}
GOALS = {"block_sparse_pallas_speedup_over_cudnn_dense_4096_fwd": ">= 3",
         "disentangled_pallas_over_cudnn_dense_L>=2048": "<= 1.5",
         "encoder_forward_zoo_vs_torch": ">= 1.3"}
NOT_ON_CPU = "not applicable on cpu"


def error_string(e: BaseException) -> str:
    msg = f"{type(e).__name__}: {e}"
    return msg if len(msg) <= 2000 else msg[:2000] + " ..."


class Budget:
    """Seconds since the start of the run, against ``total_s``."""

    def __init__(self, total_s: float):
        self.t0, self.total_s = time.perf_counter(), total_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.total_s - self.elapsed()


def guarded(fn, *args) -> dict:
    """``fn(*args)`` (a dict), or ``{"error": ..., "traceback": ...}``; ``wall_s`` added."""
    t0 = time.perf_counter()
    try:
        out = fn(*args)
    except (Exception, SystemExit) as e:  # forward.run_workload signals a failed check with SystemExit
        out = {"error": error_string(e), "traceback": traceback.format_exc()[-4000:]}
        print(f"  ERROR: {out['error']}", flush=True)
    out["wall_s"] = time.perf_counter() - t0
    return out


def peak_flops(device_kind: str, backend: str) -> float | None:
    if backend != "gpu":
        return None
    return next((v for k, v in PEAK_BF16_FLOPS if k.lower() in device_kind.lower()), None)


def device_memory_stats() -> dict | None:
    import jax

    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - not every backend has it
        return None
    if not stats:
        return None
    return {k: stats[k] for k in ("peak_bytes_in_use", "bytes_in_use", "bytes_limit") if k in stats}


def timing_row(t: harness.Timing) -> dict:
    return {"median_ms": t.median_ms, "min_ms": t.min_ms, "iqr_ms": t.iqr_ms, "repeats": t.repeats,
            "times_ms": t.times_ms}


# --------------------------------------------------------------- 1. forward
def zoo_attention_kernel(hf_class: str) -> str | None:
    """The zoo module's ``attention_kernel`` default (forward.run_workload does not override it)."""
    from zoo.registry import family_of_architecture

    try:
        return getattr(family_of_architecture(hf_class).architectures[hf_class], "attention_kernel", None)
    except Exception:  # noqa: BLE001 - recorded as None
        return None


def torch_reference(spec: dict) -> str:
    impls = spec["impls"]
    if "hf_sdpa" in impls:
        return "hf_sdpa"
    return (spec.get("pairs") or {}).get("zoo") or next(n for n, v in impls.items() if v[0] == "hf")


def section_forward(args, budget: Budget, backend: str, torch_device: str) -> dict:
    from benchmarks import forward

    if backend == "gpu" and torch_device != "gpu":
        raise RuntimeError("JAX runs on a GPU but torch has no CUDA device: a zoo-on-GPU vs torch-on-CPU "
                           "comparison would be meaningless")
    # run_workload's own gate is opened (inf: only NaN stops it), so a disagreeing workload is still
    # timed; the verdict against --tolerance is this script's ``outputs_agree`` (goals count only agreeing rows)
    wargs = argparse.Namespace(batch=None, size=None, tiny=args.tiny, dtype=args.forward_dtype,
                               device_used=torch_device, tolerance=math.inf, repeats=args.repeats,
                               warmup=args.warmup, attempts=1, max_load=args.max_load, quiet_wait=0.0)
    cap = args.forward_share * budget.total_s
    rows, skipped = [], []
    for family, workloads in forward.WORKLOADS.items():
        for i, (workload, spec) in enumerate(workloads.items()):
            if args.tiny and i > 0:  # the smoke test's minute: one workload per family
                skipped.append({"family": family, "workload": workload,
                                "reason": "--tiny: the first workload of each family only"})
                continue
            if budget.elapsed() > cap:
                skipped.append({"family": family, "workload": workload,
                                "reason": f"time budget: {budget.elapsed():.0f} s used, forward section stops "
                                          f"starting workloads after {cap:.0f} s"})
                continue
            ref = torch_reference(spec)
            kernel = zoo_attention_kernel(spec["hf_class"])

            def one(family=family, workload=workload, ref=ref):
                r = forward.run_workload(family, workload, wargs)
                by = {t.name: t for t in r["timings"]}
                return {k: r[k] for k in ("model", "head", "input", "inputs", "batch", "size", "dtype", "padding",
                                          "impls", "checks", "max_abs_diff", "timings", "speedup_of_zoo", "load")} | {
                    "outputs_agree": r["max_abs_diff"] <= args.tolerance,
                    "zoo_vs_torch": by[ref].median_ms / by["zoo"].median_ms,
                    "medians_ms": {n: t.median_ms for n, t in by.items()}}

            row = {"family": family, "workload": workload, "torch_reference": ref, "zoo_attention_kernel": kernel,
                   **guarded(one)}
            rows.append(row)
            gc.collect()  # the workload's models and executables; torch's cached blocks back to the device
            if torch_device == "gpu":
                import torch

                torch.cuda.empty_cache()
    return {"what": "benchmarks.forward.run_workload per WORKLOADS entry: HF random init (constants randomized), "
                    "converted with zoo.from_state_dict, outputs checked against HF before timing",
            "dtype": args.forward_dtype, "dtype_note": args.forward_dtype_note, "torch_device": torch_device,
            "tolerance": args.tolerance, "tolerance_applies_to": "max abs diff of every output, zoo vs HF",
            "repeats": args.repeats, "warmup": args.warmup, "workloads": rows, "skipped": skipped}


# --------------------------------------------------------------- 2. kernels
def kernel_builders(length: int, setup: dict, dtype, on_gpu: bool) -> dict:
    """{name: builder}; ``builder()`` -> ``(fn, diff_inputs, aux_inputs)`` with ``fn(*diff, *aux) -> out``,
    or a string saying why the kernel does not apply. Kernel modules are imported inside the
    builders, so a missing or broken module is that row's error."""
    import jax
    import jax.numpy as jnp

    b, h, d = setup["batch"], setup["heads"], setup["head_dim"]
    rng = np.random.default_rng(length)
    q, k, v = (jnp.asarray(rng.standard_normal((b, length, h, d), np.float32), dtype) for _ in range(3))
    valid = length - int(length * setup["padded_fraction"])
    mask = jnp.asarray(np.broadcast_to(np.arange(length) < valid, (b, 1, 1, length)))
    bs, r = setup["block_size"], setup["num_random_blocks"]
    buckets, max_rel = setup["position_buckets"], setup["max_relative_positions"]
    types = tuple(setup["pos_att_type"])

    def dense(impl):
        def build():
            if impl == "cudnn" and not on_gpu:
                return NOT_ON_CPU
            if impl == "pallas":
                from zoo.attention.pallas_dense import flash_attention

                return (lambda q, k, v, m: flash_attention(q, k, v, mask=m)[0]), (q, k, v), (mask,)
            from zoo.attention.dense import dot_product_attention

            return (lambda q, k, v, m: dot_product_attention(q, k, v, mask=m, implementation=impl)[0]), (q, k, v), (mask,)
        return build

    def block_sparse(impl):
        def build():
            from zoo.attention.block_sparse import sample_random_blocks

            rand_attn = sample_random_blocks(jax.random.PRNGKey(0), h, length, bs, r)
            if impl == "pallas":
                from zoo.attention.pallas_block_sparse import block_sparse_flash_attention as fn
            else:
                from zoo.attention.block_sparse import block_sparse_attention as fn
            return ((lambda q, k, v, m, ra: fn(q, k, v, mask=m, block_size=bs, rand_attn=ra)[0]), (q, k, v),
                    (mask, rand_attn))
        return build

    def disentangled(impl):
        def build():
            from zoo.attention.disentangled import relative_attention_span

            span = relative_attention_span(buckets, max_rel, max_rel)
            pos = tuple(jnp.asarray(rng.standard_normal((2 * span, h, d), np.float32) * 0.1, dtype) for _ in range(2))
            if impl == "pallas":
                from zoo.attention.pallas_disentangled import disentangled_flash_attention

                def fn(q, k, v, pk, pq, m):
                    return disentangled_flash_attention(q, k, v, pos_key=pk, pos_query=pq, att_span=span,
                                                        pos_att_type=types, position_buckets=buckets,
                                                        max_relative_positions=max_rel, mask=m)[0]
            else:
                from zoo.attention.disentangled import build_relative_position, disentangled_attention

                def fn(q, k, v, pk, pq, m):
                    rel = build_relative_position(length, length, buckets, max_rel)  # inside the jit, as a model
                    return disentangled_attention(q, k, v, pos_key=pk, pos_query=pq, relative_pos=rel, att_span=span,
                                                  pos_att_type=types, mask=m)[0]
            return fn, (q, k, v, *pos), (mask,)
        return build

    def cudnn_seqlens():
        if not on_gpu:
            return NOT_ON_CPU
        lengths = jnp.full((b,), valid, jnp.int32)
        return ((lambda q, k, v, n: jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=n,
                                                                 implementation="cudnn")), (q, k, v), (lengths,))

    return {"dense/xla": dense("xla"), "dense/pallas": dense("pallas"), "dense/cudnn": dense("cudnn"),
            "dense/cudnn_seqlens": cudnn_seqlens,
            "block_sparse/xla": block_sparse("xla"), "block_sparse/pallas": block_sparse("pallas"),
            "disentangled/xla": disentangled("xla"), "disentangled/pallas": disentangled("pallas")}


def memory_of(compiled) -> dict:
    ma = compiled.memory_analysis()
    if ma is None:
        return {}
    return {"temp_bytes": int(ma.temp_size_in_bytes), "argument_bytes": int(ma.argument_size_in_bytes),
            "output_bytes": int(ma.output_size_in_bytes)}


def kernel_point(length: int, mode: str, builders: dict, args) -> dict:
    """Compile every kernel at (length, mode), run each once (guarded), time the good ones round-robin."""
    import jax
    import jax.numpy as jnp

    rows, calls, extra = {}, {}, {}
    for name, build in builders.items():
        try:
            built = build()
            if isinstance(built, str):
                rows[name] = {"skipped": built}
                continue
            fn, diff, aux = built
            nd = len(diff)
            f = fn if mode == "fwd" else jax.value_and_grad(
                lambda *a, fn=fn: fn(*a).astype(jnp.float32).sum(), argnums=tuple(range(nd)))
            exe, lower_s, compile_s = harness.jax_compile(f, *diff, *aux)
            inputs = (*diff, *aux)
            out = harness.block(exe(*inputs))  # runs once here: a runtime failure is this row's error
            leaves = jax.tree.leaves(out)
            finite = all(bool(jnp.isfinite(x.astype(jnp.float32)).all()) for x in leaves)
            del out, leaves
            rows[name] = {"lower_s": lower_s, "compile_s": compile_s, "finite": finite, **memory_of(exe)}
            calls[name] = lambda exe=exe, inputs=inputs: exe(*inputs)
            extra[name] = {"lower_s": lower_s, "compile_s": compile_s}
        except Exception as e:  # noqa: BLE001 - recorded, the other kernels still run
            rows[name] = {"error": error_string(e)}
            print(f"  L={length} {mode} {name}: ERROR {rows[name]['error'][:300]}", flush=True)
    if calls:
        try:
            timings = harness.time_interleaved(calls, repeats=args.repeats, warmup=args.warmup, timing_kwargs=extra)
            for t in timings:
                rows[t.name].update(timing_row(t))
        except Exception as e:  # noqa: BLE001
            for name in calls:
                rows[name]["error"] = "timing failed: " + error_string(e)
    del calls
    ms = {n: r["median_ms"] for n, r in rows.items() if "median_ms" in r}

    def ratio(a, b):
        return ms[a] / ms[b] if a in ms and b in ms else None

    cudnn = "dense/cudnn" if "dense/cudnn" in ms else "dense/cudnn_seqlens"
    ratios = {
        "block_sparse/pallas speedup over dense/cudnn": ratio(cudnn, "block_sparse/pallas"),
        "block_sparse/pallas speedup over dense/xla": ratio("dense/xla", "block_sparse/pallas"),
        "block_sparse/pallas speedup over block_sparse/xla": ratio("block_sparse/xla", "block_sparse/pallas"),
        "disentangled/pallas / dense/cudnn (time)": ratio("disentangled/pallas", cudnn),
        "disentangled/pallas / dense/xla (time)": ratio("disentangled/pallas", "dense/xla"),
        "disentangled/pallas speedup over disentangled/xla": ratio("disentangled/xla", "disentangled/pallas"),
        "dense/pallas speedup over dense/xla": ratio("dense/xla", "dense/pallas"),
        "dense/cudnn speedup over dense/xla": ratio("dense/xla", cudnn),
    }
    point = {"length": length, "mode": mode, "kernels": rows, "ratios": ratios,
             "cudnn_reference": cudnn if cudnn in ms else None,
             "device_memory_after": device_memory_stats()}
    print(f"L={length} {mode}: " + ", ".join(f"{n} {v:.2f} ms" for n, v in ms.items()), flush=True)
    return point


def section_kernels(args, budget: Budget, backend: str) -> dict:
    import jax.numpy as jnp

    setup = TINY_KERNEL_SETUP if args.tiny else KERNEL_SETUP
    lengths = [int(x) for x in args.lengths.split(",")] if args.lengths else list(TINY_LENGTHS if args.tiny else LENGTHS)
    dtype = getattr(jnp, args.dtype)
    points, skipped, last = [], [], 0.0
    for length in lengths:
        # stop once the budget is used, or when this length (costlier than the last) would not fit
        need = 2.0 * last
        if budget.left() <= need:
            skipped += [{"length": length, "mode": m, "reason": f"time budget: {budget.elapsed():.0f} s of "
                         f"{budget.total_s:.0f} s used, the last length took {last:.0f} s"} for m in MODES]
            continue
        t0 = time.perf_counter()
        try:
            builders = kernel_builders(length, setup, dtype, backend == "gpu")
            for mode in MODES:
                points.append(kernel_point(length, mode, builders, args))
        except Exception as e:  # noqa: BLE001 - e.g. the inputs themselves do not fit
            points.append({"length": length, "error": error_string(e)})
        last = time.perf_counter() - t0
    return {"setup": {**setup, "dtype": args.dtype, "lengths": lengths, "modes": list(MODES),
                      "mask": "key padding [B, 1, 1, L], bool, last int(L * padded_fraction) keys padded",
                      "random_blocks": "sample_random_blocks(jax.random.PRNGKey(0), H, L, block_size, num_random_blocks)",
                      "att_span": "relative_attention_span(position_buckets, max_relative_positions, ...)",
                      "fwd+bwd": "jax.value_and_grad(sum(out in float32)) w.r.t. q, k, v (+ pos_key, pos_query)",
                      "timing": "all kernels of one (L, mode) round-robin (harness.time_interleaved), "
                                f"{args.warmup} warm-up + {args.repeats} timed rounds",
                      "memory": "temp_bytes: compiled.memory_analysis(); device_memory_after: "
                                "jax.devices()[0].memory_stats() after the point (peak_bytes_in_use is a "
                                "process-wide high-water mark, not per kernel)"},
            "kernels": KERNEL_SOURCES, "points": points, "skipped": skipped}


# ----------------------------------------------------------------- 3. train
def section_train(args, backend: str) -> dict:
    import jax

    from benchmarks import train_throughput as tt
    from zoo import parallel, train

    targs = argparse.Namespace(small=args.tiny, layers=None, hidden=None)
    run = tt.SMALL_RUN if args.tiny else tt.FULL_RUN
    batch, seq = run["text_batch"], run["seq"]
    cfg = tt.text_config_dict(targs)
    recipe, recipe_file = tt.recipe_for("text", args.dtype)
    hf = tt.build_hf("text", cfg)
    model, variables = harness.convert(hf)
    n_params = sum(p.numel() for p in hf.parameters())
    arch = type(hf).__name__
    del hf
    arrays = tt.text_batch(cfg, batch, seq)
    mesh = parallel.make_mesh("", devices=jax.devices()[:1])
    z_batch = parallel.shard_batch({k: (v.astype(np.int32) if v.dtype == np.int64 else v) for k, v in arrays.items()},
                                   mesh)
    state = train.TrainState.create(model, variables, recipe, mesh=mesh)
    del variables
    step = train.make_train_step(model, recipe, train.sequence_classification_loss, mesh=mesh)
    t0 = time.perf_counter()
    with parallel.activation_sharding(mesh):  # as make_train_step's own call traces it
        lowered = step.lower(state, z_batch)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    xla_flops = float(cost["flops"]) if cost and cost.get("flops") is not None else None
    holder = {"state": state}
    del state

    def call():
        holder["state"], metrics = compiled(holder["state"], z_batch)  # the old state is donated
        return holder["state"], metrics

    _, m = harness.block(call())
    first_loss = float(m["loss"])
    timing = harness.time_interleaved({"zoo_train_step": call}, repeats=args.repeats, warmup=args.warmup)[0]
    _, m = harness.block(call())
    tokens = batch * seq
    flops = {"xla_cost_analysis": xla_flops, "6_params_tokens": 6.0 * n_params * tokens,
             "analytic_text_flops": float(tt.text_flops(cfg, batch, seq)["total"])}
    device_kind = jax.devices()[0].device_kind
    peak = peak_flops(device_kind, backend)
    step_s = timing.median_ms / 1e3
    mfu = {k: (v / step_s / peak if v is not None and peak else None) for k, v in flops.items()}
    return {"model": f"{arch} ({n_params / 1e6:.1f}M parameters: hidden {cfg['hidden_size']}, "
                     f"{cfg['num_hidden_layers']} layers)", "head": arch, "n_params": n_params,
            "input": f"batch {batch} x {seq} tokens, no padding", "batch": batch, "seq": seq, "tokens": tokens,
            "compute_dtype": recipe.compute_dtype, "param_dtype": "float32 (master weights)", "recipe_file": recipe_file,
            "optimizer": f"{recipe.optimizer} (lr {recipe.learning_rate}, weight decay {recipe.weight_decay}, "
                         f"clip {recipe.max_grad_norm}, {recipe.schedule} schedule)",
            "dropout": "on (training mode); so attention_kernel='auto' takes the XLA kernel (no fused kernel "
                       "does attention dropout)",
            "lower_s": t1 - t0, "compile_s": t2 - t1, "timing": timing_row(timing), "step_ms": timing.median_ms,
            "tokens_per_s": tokens / step_s, "flops_per_step": flops,
            "achieved_flops_per_s": {k: (v / step_s if v is not None else None) for k, v in flops.items()},
            "device_kind": device_kind, "peak_bf16_flops": peak,
            "peak_source": "dense bf16 tensor peak by device_kind (H100 SXM / H200 989e12, H100 PCIe 756e12, "
                           "A100 312e12); None: unknown device or not a GPU",
            "mfu": mfu["xla_cost_analysis"], "mfu_by_flops": mfu, "first_loss": first_loss,
            "loss_after_timing": float(m["loss"]), "finite": bool(math.isfinite(float(m["loss"])))}


# ----------------------------------------------------------------- goals / md
def goals(payload: dict) -> dict:
    out = {}
    pts = [p for p in payload.get("kernels", {}).get("points", []) if "mode" in p]
    bs = [p["ratios"]["block_sparse/pallas speedup over dense/cudnn"] for p in pts
          if p["length"] == 4096 and p["mode"] == "fwd"]
    v = bs[0] if bs else None
    out["block_sparse_pallas_speedup_over_cudnn_dense_4096_fwd"] = {
        "goal": GOALS["block_sparse_pallas_speedup_over_cudnn_dense_4096_fwd"], "value": v,
        "met": None if v is None else v >= 3}
    dis = {f"L={p['length']} {p['mode']}": p["ratios"]["disentangled/pallas / dense/cudnn (time)"] for p in pts
           if p["length"] >= 2048}
    vals = [x for x in dis.values() if x is not None]
    out["disentangled_pallas_over_cudnn_dense_L>=2048"] = {
        "goal": GOALS["disentangled_pallas_over_cudnn_dense_L>=2048"], "values": dis,
        "worst": max(vals) if vals else None, "met": all(x <= 1.5 for x in vals) if vals else None}
    rows = payload.get("forward", {}).get("workloads", [])
    enc = {f"{w['family']}/{w['workload']} vs {w['torch_reference']}": w.get("zoo_vs_torch") for w in rows}
    vals = [w["zoo_vs_torch"] for w in rows if w.get("zoo_vs_torch") is not None and w.get("outputs_agree")]
    out["encoder_forward_zoo_vs_torch"] = {
        "goal": GOALS["encoder_forward_zoo_vs_torch"], "values": enc, "worst": min(vals) if vals else None,
        "met": (all(x >= 1.3 for x in vals) and len(vals) == len(rows)) if vals else None,
        "not_counted": [f"{w['family']}/{w['workload']}: " + ("error" if "error" in w else "outputs disagree")
                        for w in rows if not w.get("outputs_agree")]}
    out["train_mfu"] = {"value": payload.get("train", {}).get("mfu")}
    for g in out.values():
        if not payload["gpu_measured"] and "met" in g:
            g["met"], g["note"] = None, "not a GPU run: the goals are for a GPU, these values are not evidence"
            continue
        if g.get("value", g.get("worst")) is None:
            g["note"] = "not measured here (needs a GPU, the lengths of a full run, or the section failed)"
    return out


def _f(x, fmt=".2f", none="-"):
    return none if x is None else format(x, fmt)


def markdown(payload: dict, args) -> list[str]:
    md = [f"### Accelerator run: {payload['device_kind']} ({payload['jax_backend']}), {args.dtype}"
          + (" (TINY smoke-test shapes)" if args.tiny else ""), "",
          f"gpu_measured: {payload['gpu_measured']}; {payload['wall_s']:.0f} s of a {args.budget_s:.0f} s budget", ""]
    fw = payload["forward"]
    md += ["#### 1. Base encoder forward, zoo (attention_kernel auto) vs HF PyTorch", ""]
    if "workloads" not in fw:
        md.append(f"- {'error: ' + fw['error'] if 'error' in fw else 'skipped: ' + str(fw.get('skipped'))}")
    else:
        md += [f"{fw['dtype']} ({fw['dtype_note']}), torch on {fw['torch_device']}; outputs agree: max abs diff "
               f"<= {fw['tolerance']}", "",
               "| family | workload | zoo ms | torch ref | torch ms | torch / zoo | max abs diff | all medians ms |",
               "|---|---|---:|---|---:|---:|---:|---|"]
        for w in fw["workloads"]:
            if "error" in w:
                md.append(f"| {w['family']} | {w['workload']} | error: {w['error'][:120]} | | | | | |")
                continue
            m = w["medians_ms"]
            md.append(f"| {w['family']} | {w['workload']} | {m['zoo']:.2f} | {w['torch_reference']} | "
                      f"{m[w['torch_reference']]:.2f} | {w['zoo_vs_torch']:.2f}x | {w['max_abs_diff']:.1e}"
                      + ("" if w["outputs_agree"] else " **(disagree)**") + " | "
                      + ", ".join(f"{n} {v:.2f}" for n, v in m.items()) + " |")
        md += [f"- skipped: {s['family']}/{s['workload']} ({s['reason']})" for s in fw["skipped"]]
    kn = payload["kernels"]
    md += ["", "#### 2. Attention kernels (median ms; XLA temp MiB)", ""]
    if "points" not in kn:
        md.append(f"- {'error: ' + kn['error'] if 'error' in kn else 'skipped: ' + str(kn.get('skipped'))}")
    else:
        s = kn["setup"]
        md += [f"B {s['batch']}, H {s['heads']}, D {s['head_dim']}, {s['dtype']}, block {s['block_size']} x "
               f"{s['num_random_blocks']} random, buckets {s['position_buckets']} / {s['max_relative_positions']}", "",
               "| L | mode | " + " | ".join(KERNELS) + " | bs pallas vs cudnn | dis pallas / cudnn |",
               "|---:|---|" + "---:|" * (len(KERNELS) + 2)]
        for p in kn["points"]:
            if "mode" not in p:
                md.append(f"| {p['length']} | error: {p['error'][:120]} |")
                continue
            cells = []
            for n in KERNELS:
                r = p["kernels"].get(n, {})
                cells.append(f"{r['median_ms']:.2f} ({r.get('temp_bytes', 0) / 2**20:.0f})" if "median_ms" in r
                             else "n/a" if "skipped" in r else "error")
            rt = p["ratios"]
            md.append(f"| {p['length']} | {p['mode']} | " + " | ".join(cells) + " | "
                      f"{_f(rt['block_sparse/pallas speedup over dense/cudnn'])} | "
                      f"{_f(rt['disentangled/pallas / dense/cudnn (time)'])} |")
        errs = sorted({f"{n}: {r['error'][:200]}" for p in kn["points"] for n, r in p.get("kernels", {}).items()
                       if "error" in r})
        md += [f"- error {e}" for e in errs]
        md += [f"- skipped L={s['length']} {s['mode']}: {s['reason']}" for s in kn["skipped"]]
    tr = payload["train"]
    md += ["", "#### 3. Training step", ""]
    if "step_ms" not in tr:
        md.append(f"- {'error: ' + tr['error'] if 'error' in tr else 'skipped: ' + str(tr.get('skipped'))}")
    else:
        fl = tr["flops_per_step"]
        md += ["| model | input | ms/step | tokens/s | XLA GFLOP/step | 6NT GFLOP | MFU (XLA) | MFU (6NT) |",
               "|---|---|---:|---:|---:|---:|---:|---:|",
               f"| {tr['model']} | {tr['input']} | {tr['step_ms']:.2f} | {tr['tokens_per_s']:.0f} | "
               f"{_f(fl['xla_cost_analysis'] and fl['xla_cost_analysis'] / 1e9, '.1f')} | "
               f"{fl['6_params_tokens'] / 1e9:.1f} | {_f(tr['mfu'], '.1%', 'n/a')} | "
               f"{_f(tr['mfu_by_flops']['6_params_tokens'], '.1%', 'n/a')} |"]
    md += ["", "#### Goals", ""]
    for k, g in payload["goals"].items():
        v = g.get("value", g.get("worst"))
        md.append(f"- {k} ({g.get('goal', '')}): " + (f"{_f(v, '.3f')}, met {g.get('met')}" if v is not None else "-")
                  + (f"; {g['note']}" if g.get("note") else ""))
    return md


# -------------------------------------------------------------------- main
def main(argv=None) -> dict:
    budget = Budget(420.0)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models and L in (64, 128): a CPU smoke test")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16",
                        help="compute dtype of every section (forward: see --forward-dtype)")
    parser.add_argument("--forward-dtype", choices=("bfloat16", "float32"), default=None,
                        help="dtype of the forward section (default --dtype; --tiny with torch on a CPU: float32, "
                             "torch's CPU bfloat16 kernels would take most of the smoke test's minute)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="seconds after which no new sweep point starts (default 420; --tiny 300)")
    parser.add_argument("--forward-share", type=float, default=0.4,
                        help="the forward section starts no workload after this share of the budget")
    parser.add_argument("--lengths", default=None, help="comma list of kernel lengths (default 1024..16384)")
    parser.add_argument("--sections", default="forward,train,kernels", help="comma list, run in this order")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="forward: max abs diff zoo vs HF before timing (bf16 0.5, fp32 1e-3)")
    harness.add_common_args(parser, repeats=10, warmup=2, attempts=1, quiet_wait=0.0)
    args = parser.parse_args(argv)
    if args.tiny:
        args.repeats, args.warmup = min(args.repeats, 2), 1
    args.budget_s = args.budget_s or (300.0 if args.tiny else 420.0)
    budget.total_s = args.budget_s
    args.forward_dtype_note = "--forward-dtype" if args.forward_dtype else "--dtype"
    sections = [s for s in args.sections.split(",") if s]
    if set(sections) - {"forward", "train", "kernels"}:
        parser.error("--sections: choose from forward, train, kernels")

    threads = harness.setup_threads(args.threads, args.keep_freed_memory)
    import jax
    import transformers

    transformers.logging.set_verbosity_error()
    backend = jax.default_backend()
    try:
        torch_device = harness.select_device(args.device)
    except SystemExit as e:
        torch_device, device_error = "cpu", error_string(e)
    else:
        device_error = None
    device_kind = jax.devices()[0].device_kind
    if args.forward_dtype is None:
        tiny_cpu = args.tiny and torch_device == "cpu"
        args.forward_dtype = "float32" if tiny_cpu else args.dtype
        args.forward_dtype_note = "--tiny on a CPU: float32" if tiny_cpu else "--dtype"
    if args.tolerance is None:
        args.tolerance = 1e-3 if args.forward_dtype == "float32" else 0.5
    print(f"== accelerator: jax {backend} ({device_kind}), torch {torch_device}, {args.dtype}, "
          f"budget {args.budget_s:.0f} s", flush=True)
    payload = {"argv": argv, "module": "benchmarks.accelerator", "benchmark": "accelerator", "tiny": args.tiny,
               "gpu_measured": backend == "gpu", "jax_backend": backend, "device_kind": device_kind,
               "torch_device": torch_device, "device_error": device_error, "dtype": args.dtype,
               "budget_s": args.budget_s, "sections_order": sections,
               "env": {k: os.environ.get(k) for k in ("XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION",
                                                      "XLA_PYTHON_CLIENT_ALLOCATOR", "CUDA_VISIBLE_DEVICES")}}
    runners = {"forward": lambda: section_forward(args, budget, backend, torch_device),
               "train": lambda: section_train(args, backend),
               "kernels": lambda: section_kernels(args, budget, backend)}
    for name in ("forward", "train", "kernels"):
        payload.setdefault(name, {"skipped": "not in --sections"})
    for name in sections:
        print(f"\n== section {name} ({budget.elapsed():.0f} s used)", flush=True)
        if name == "train" and budget.left() <= 60:
            payload[name] = {"skipped": f"time budget: {budget.elapsed():.0f} s used"}
            continue
        payload[name] = guarded(runners[name])
    payload["wall_s"] = budget.elapsed()
    payload["goals"] = goals(payload)
    md = markdown(payload, args)
    device = "gpu" if torch_device == "gpu" else "cpu"
    return harness.finish_report(args.name or NAME + ("_tiny" if args.tiny else ""), payload, md,
                                 write=not args.no_write, threads=threads, device=device, results_dir=args.out)


if __name__ == "__main__":
    main()
