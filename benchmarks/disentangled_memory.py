"""Disentangled attention: XLA temp memory and time of the unblocked, the query-blocked and the
key-tiled paths, against the dense kernel (``implementation="xla"``), at SEW-D base shapes.

    python -m benchmarks.disentangled_memory [--lengths 1024,2048,4096 --blocks 128 --repeats 5]

Kernels: ``dense``; ``unblocked`` (``query_block=0``); ``blocked<n>`` (the query-blocked forward,
``query_block=n, key_block=0``); ``keytiled<tq>x<tk>`` (the default, ``query_block=None``: the
key-tiled forward with the query-blocked backward).

Batch 1, 12 heads, head_dim 64, fp32, no mask, position_buckets 256, max_relative_positions 512
(512 position rows), c2p + p2c, positions built from the bucket settings inside the jitted
function. Modes ``fwd`` and ``fwd+bwd`` (``value_and_grad`` of ``sum(out)`` w.r.t. every input).
Memory: ``compile().memory_analysis().temp_size_in_bytes``. Time: medians over ``--repeats``
calls, the variants interleaved round-robin (the machine may be shared). Writes
``benchmarks/results/disentangled_memory.{json,md}`` unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="1024,2048,4096")
    parser.add_argument("--blocks", default="128", help="query tiles of the query-blocked path")
    parser.add_argument("--modes", default="fwd,fwd+bwd")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-time", action="store_true", help="memory only")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args(argv)

    import jax
    import jax.numpy as jnp

    from zoo.attention import disentangled as dis
    from zoo.attention.dense import dot_product_attention
    from zoo.attention.disentangled import disentangled_attention

    heads, dim, span = 12, 64, 256
    rng = np.random.default_rng(0)
    rows = []
    for length in [int(x) for x in args.lengths.split(",")]:
        q, k, v = (jnp.asarray(rng.standard_normal((1, length, heads, dim), np.float32)) for _ in range(3))
        pos = tuple(jnp.asarray(rng.standard_normal((2 * span, heads, dim), np.float32) * 0.1) for _ in range(2))
        fns = {"dense": (lambda q, k, v: dot_product_attention(q, k, v, implementation="xla")[0], (q, k, v))}
        tiled = dis._choose_block(None, None, length, False, None, None, False)
        variants = [("unblocked", 0, 0)] + [(f"blocked{b}", int(b), 0) for b in args.blocks.split(",")]
        if tiled[1]:
            variants.append((f"keytiled{tiled[0]}x{tiled[1]}", None, None))
        for name, qb, kb in variants:
            fns[name] = (
                lambda q, k, v, pk, pq, qb=qb, kb=kb: disentangled_attention(
                    q, k, v, pos_key=pk, pos_query=pq, att_span=span, pos_att_type=("c2p", "p2c"),
                    position_buckets=256, max_relative_positions=512, query_block=qb, key_block=kb)[0],
                (q, k, v, *pos))
        for mode in args.modes.split(","):
            exes = {}
            for name, (fn, inputs) in fns.items():
                f = fn if mode == "fwd" else jax.value_and_grad(lambda *a, fn=fn: fn(*a).sum(),
                                                                argnums=tuple(range(len(inputs))))
                exe = jax.jit(f).lower(*inputs).compile()
                exes[name] = (exe, inputs)
            times = {name: [] for name in exes}
            if not args.no_time:
                for name, (exe, inputs) in exes.items():  # warm-up
                    jax.block_until_ready(exe(*inputs))
                for _ in range(args.repeats):
                    for name, (exe, inputs) in exes.items():
                        t0 = time.perf_counter()
                        jax.block_until_ready(exe(*inputs))
                        times[name].append(time.perf_counter() - t0)
            for name, (exe, _) in exes.items():
                row = {"length": length, "mode": mode, "kernel": name,
                       "temp_mib": exe.memory_analysis().temp_size_in_bytes / 2**20,
                       "median_ms": float(np.median(times[name]) * 1e3) if times[name] else None,
                       "times_ms": [t * 1e3 for t in times[name]]}
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "times_ms"}), flush=True)

    md = ["### disentangled attention: unblocked vs query-blocked vs key-tiled vs dense (xla), fp32, CPU", "",
          f"batch 1, {heads} heads, head_dim {dim}, 512 position rows (buckets 256 / max_rel 512), c2p + p2c, "
          f"no mask; medians of {args.repeats} interleaved calls; temp = XLA memory_analysis temp_size", "",
          "| L | mode | kernel | temp MiB | median ms |", "|---:|---|---|---:|---:|"]
    for r in rows:
        ms = "-" if r["median_ms"] is None else f"{r['median_ms']:.0f}"
        md.append(f"| {r['length']} | {r['mode']} | {r['kernel']} | {r['temp_mib']:.0f} | {ms} |")
    print("\n".join(md))
    payload = {"argv": argv, "module": "benchmarks.disentangled_memory", "device": jax.default_backend(),
               "jax": jax.__version__, "cpu_count": os.cpu_count(), "loadavg": os.getloadavg(), "results": rows}
    if not args.no_write:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "disentangled_memory.json"), "w") as f:
            json.dump(payload, f, indent=1)
        with open(os.path.join(args.out, "disentangled_memory.md"), "w") as f:
            f.write("\n".join(md) + "\n")
    return payload


if __name__ == "__main__":
    main()
