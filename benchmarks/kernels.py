"""Attention kernels alone (no model), against the dense kernel on the same q, k, v: time and memory.

    python -m benchmarks.kernels --kernel disentangled [--lengths 512,2048,4096 --modes fwd,fwd+bwd]
    python -m benchmarks.kernels --kernel block_sparse [--lengths 1024,4096,8192]
    python -m benchmarks.kernels --kernel disentangled --tiny --no-write    # seconds: smoke test

- ``disentangled``: ``zoo.attention.disentangled.disentangled_attention`` (SEW-D base shapes:
  position_buckets 256, max_relative_positions 512, so 512 position rows, c2p + p2c), the
  relative positions built inside the jitted function as a model does;
- ``block_sparse``: ``zoo.attention.block_sparse.block_sparse_attention`` (BigBird base: block
  64, 3 random blocks, all zero as at inference).

Both against ``zoo.attention.dense.dot_product_attention``; batch 1, 12 heads, head_dim 64,
fp32, no mask. Modes: ``fwd`` and ``fwd+bwd`` (``value_and_grad`` of ``sum(out)`` w.r.t. every
input). Each (length, mode) is compiled ahead of time and both kernels are timed round-robin;
``ratio = kernel / dense`` of the medians. Memory: XLA's ``memory_analysis()`` of each executable.
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks import harness

MODES = ("fwd", "fwd+bwd")


def memory(compiled) -> dict[str, float]:
    ma = compiled.memory_analysis()
    if ma is None:
        return {}
    return {"temp_mib": ma.temp_size_in_bytes / 2**20,
            "total_mib": (ma.temp_size_in_bytes + ma.argument_size_in_bytes + ma.output_size_in_bytes
                          - ma.alias_size_in_bytes) / 2**20}


def functions(kernel: str, length: int, args):
    """{"dense": (fn, inputs), kernel: (fn, inputs)} at ``length``."""
    import jax.numpy as jnp

    from zoo.attention.dense import dot_product_attention

    rng = np.random.default_rng(0)
    shape = (args.batch, length, args.heads, args.head_dim)
    q, k, v = (jnp.asarray(rng.standard_normal(shape, np.float32)) for _ in range(3))
    fns = {"dense": (lambda q, k, v: dot_product_attention(q, k, v)[0], (q, k, v))}
    if kernel == "disentangled":
        from zoo.attention.disentangled import build_relative_position, disentangled_attention, relative_attention_span

        span = relative_attention_span(args.position_buckets, args.max_relative_positions, args.max_relative_positions)
        pos = tuple(jnp.asarray(rng.standard_normal((2 * span, args.heads, args.head_dim), np.float32) * 0.1)
                    for _ in range(2))

        def disentangled(q, k, v, pos_key, pos_query):
            rel = build_relative_position(length, length, args.position_buckets, args.max_relative_positions)
            return disentangled_attention(q, k, v, pos_key=pos_key, pos_query=pos_query, relative_pos=rel,
                                          att_span=span, pos_att_type=("p2c", "c2p"))[0]

        fns[kernel] = (disentangled, (q, k, v, *pos))
    else:
        from zoo.attention.block_sparse import block_sparse_attention

        fns[kernel] = (lambda q, k, v: block_sparse_attention(q, k, v, block_size=args.block_size,
                                                              num_random_blocks=args.random_blocks)[0], (q, k, v))
    return fns


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernel", choices=("disentangled", "block_sparse"), required=True)
    parser.add_argument("--lengths", default=None, help="comma list (disentangled 512,2048,4096; "
                                                         "block_sparse 1024,4096,8192)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma list of fwd, fwd+bwd")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--position-buckets", type=int, default=256)
    parser.add_argument("--max-relative-positions", type=int, default=512)
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--random-blocks", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="small shapes: a smoke test, seconds")
    harness.add_common_args(parser, repeats=3, warmup=1, quiet_wait=30.0)
    args = parser.parse_args(argv)
    if args.tiny:
        args.heads, args.head_dim, args.position_buckets, args.max_relative_positions = 2, 8, 8, 16
        args.block_size, args.random_blocks, args.repeats, args.quiet_wait = 8, 2, 2, 0.0
        args.lengths = args.lengths or ("64" if args.kernel == "disentangled" else "128")
    lengths = [int(x) for x in (args.lengths or ("512,2048,4096" if args.kernel == "disentangled"
                                                 else "1024,4096,8192")).split(",")]
    modes = args.modes.split(",")
    if set(modes) - set(MODES):
        parser.error(f"--modes: choose from {MODES}")
    threads = harness.setup_threads(args.threads, args.keep_freed_memory)
    import jax

    device = harness.select_device(args.device)
    results = []
    for length in lengths:
        fns = functions(args.kernel, length, args)
        for mode in modes:
            calls, extra, record = {}, {}, {"length": length, "mode": mode}
            for name, (fn, inputs) in fns.items():
                f = fn if mode == "fwd" else jax.value_and_grad(lambda *a, fn=fn: fn(*a).sum(),
                                                                argnums=tuple(range(len(inputs))))
                exe, lower_s, compile_s = harness.jax_compile(f, *inputs)
                calls[name] = lambda exe=exe, inputs=inputs: exe(*inputs)
                extra[name] = {"lower_s": lower_s, "compile_s": compile_s}
                record[f"{name}_memory"] = memory(exe)
            repeats = max(args.repeats, 10) if length <= 1024 and not args.tiny else args.repeats
            timings, load = harness.timed(calls, args, repeats=repeats, timing_kwargs=extra)
            by = {t.name: t for t in timings}
            record.update(timings=timings, load=load, quiet=load["quiet"],
                          ratio=by[args.kernel].median_ms / by["dense"].median_ms)
            results.append(record)
            print(f"L={length} {mode}: dense {by['dense'].median_ms:.1f} ms, {args.kernel} "
                  f"{by[args.kernel].median_ms:.1f} ms, ratio {record['ratio']:.2f}", flush=True)

    md = [f"### {args.kernel} attention kernel vs dense, fp32, {device}" + (" (TINY)" if args.tiny else ""), "",
          f"batch {args.batch}, {args.heads} heads, head_dim {args.head_dim}, no mask; ratio = {args.kernel} / dense",
          "", f"| L | mode | dense ms | {args.kernel} ms | ratio | XLA temp MiB dense / {args.kernel} | others' load |",
          "|---:|---|---:|---:|---:|---:|---:|"]
    for r in results:
        t = {x.name: x for x in r["timings"]}
        mem = " / ".join(f"{r[f'{n}_memory'].get('temp_mib', float('nan')):.0f}" for n in ("dense", args.kernel))
        md.append(f"| {r['length']} | {r['mode']} | {t['dense'].median_ms:.1f} | {t[args.kernel].median_ms:.1f} | "
                  f"{r['ratio']:.2f}x | {mem} | {r['load'].get('foreign_cpu_fraction', 0):.0%} |")
    payload = {"argv": argv, "module": "benchmarks.kernels", "benchmark": "kernels", "kernel": args.kernel, "tiny": args.tiny,
               "setup": {k: getattr(args, k) for k in ("batch", "heads", "head_dim", "position_buckets",
                                                      "max_relative_positions", "block_size", "random_blocks")},
               "dtype": "float32", "device": device, "results": results}
    return harness.finish_report(args.name or f"kernels_{args.kernel}" + ("_tiny" if args.tiny else ""), payload, md,
                                 write=not args.no_write, threads=threads, device=device, results_dir=args.out)


if __name__ == "__main__":
    main()
