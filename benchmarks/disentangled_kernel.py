"""Disentangled (c2p + p2c) attention kernel vs the dense kernel: time and memory.

    python -m benchmarks.disentangled_kernel [--lengths 512,2048,4096 --repeats 3 --warmup 1]

Kernels alone, no model: ``zoo.attention.disentangled.disentangled_attention`` (SEW-D base
shapes: position_buckets 256, max_relative_positions 512, so att_span 256 and
``2 * att_span = 512`` position rows, ``pos_att_type=("p2c", "c2p")``) against
``zoo.attention.dense.dot_product_attention`` on the same ``q, k, v`` (batch 1, 12 heads,
head_dim 64, fp32, no mask). The relative positions are built inside the jitted function
(``build_relative_position``), as a model does.

Two modes per sequence length, each jitted and compiled ahead of time (``harness.jax_compile``):

- ``fwd``: the attention output;
- ``fwd+bwd``: ``jax.value_and_grad`` of ``sum(out)`` w.r.t. every input (dense: q, k, v;
  disentangled: q, k, v, pos_key, pos_query).

Dense and disentangled runs of one (length, mode) are timed round-robin
(``harness.time_interleaved``) after waiting for a quiet machine, so both see the same
conditions; the ratio disentangled / dense of the medians is the headline number.

Memory: XLA's ``compiled.memory_analysis()`` of each executable: temporary buffers, and
temporaries + arguments + outputs (what one call needs besides the code). Resident-set
peaks were tried and dropped: with both kernels in one process they depend on which ran
first (the allocator reuses freed pages), so they did not measure either kernel.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from benchmarks import harness

DEFAULT_NAME = "disentangled_kernel"
MODES = ("fwd", "fwd+bwd")


def _memory(compiled) -> dict[str, float]:
    ma = compiled.memory_analysis()
    if ma is None:
        return {}
    mib = 2**20
    return {
        "total_mib": (ma.temp_size_in_bytes + ma.argument_size_in_bytes + ma.output_size_in_bytes
                      - ma.alias_size_in_bytes) / mib,
        "temp_mib": ma.temp_size_in_bytes / mib,
        "argument_mib": ma.argument_size_in_bytes / mib,
        "output_mib": ma.output_size_in_bytes / mib,
        "alias_mib": ma.alias_size_in_bytes / mib,
        "generated_code_mib": ma.generated_code_size_in_bytes / mib,
    }


def build_functions(length: int, args):
    """{name: (fn, inputs)} for the dense and disentangled kernels at ``length``."""
    import jax.numpy as jnp

    from zoo.attention.dense import dot_product_attention
    from zoo.attention.disentangled import build_relative_position, disentangled_attention, relative_attention_span

    span = relative_attention_span(args.position_buckets, args.max_relative_positions, args.max_relative_positions)
    rng = np.random.default_rng(0)
    shape = (args.batch, length, args.heads, args.head_dim)
    q, k, v = (jnp.asarray(rng.standard_normal(shape, np.float32)) for _ in range(3))
    pos_key, pos_query = (jnp.asarray(rng.standard_normal((2 * span, args.heads, args.head_dim), np.float32) * 0.1)
                          for _ in range(2))

    def dense(q, k, v):
        return dot_product_attention(q, k, v)[0]

    def disentangled(q, k, v, pos_key, pos_query):
        rel = build_relative_position(length, length, args.position_buckets, args.max_relative_positions)
        out, _ = disentangled_attention(q, k, v, pos_key=pos_key, pos_query=pos_query, relative_pos=rel,
                                        att_span=span, pos_att_type=("p2c", "c2p"))
        return out

    return {"dense": (dense, (q, k, v)), "disentangled": (disentangled, (q, k, v, pos_key, pos_query))}, span


def _with_grad(fn, n_args):
    import jax

    return jax.value_and_grad(lambda *a: fn(*a).sum(), argnums=tuple(range(n_args)))


def _mem(memory: dict) -> str:
    if "temp_mib" not in memory:
        return "n/a"
    return f"{memory['temp_mib']:.0f} / {memory['total_mib']:.0f}"


def _mem_ratio(record: dict) -> str:
    dense, dis = record["dense_memory"].get("total_mib"), record["disentangled_memory"].get("total_mib")
    return "n/a" if not dense or dis is None else f"{dis / dense:.2f}x"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="512,2048,4096", help="comma list of sequence lengths")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--position-buckets", type=int, default=256)
    parser.add_argument("--max-relative-positions", type=int, default=512)
    parser.add_argument("--modes", default=",".join(MODES), help="comma list of fwd, fwd+bwd")
    parser.add_argument("--short-repeats", type=int, default=10,
                        help="timed runs for lengths <= 1024 (cheap; --repeats applies to the others)")
    harness.add_common_args(parser, repeats=3, warmup=1)
    # six timed blocks: wait less per block than the harness default, to stay within minutes
    parser.set_defaults(quiet_wait=30.0)
    args = parser.parse_args(argv)
    lengths = [int(x) for x in args.lengths.split(",") if x]
    modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in modes if m not in MODES]
    if bad:
        parser.error(f"unknown modes {bad}; choose from {MODES}")

    threads = harness.setup_threads()

    device = harness.select_device(args.device)
    results, loads = [], []
    for length in lengths:
        fns, span = build_functions(length, args)
        for mode in modes:
            compiled, record = {}, {"length": length, "mode": mode}
            for name, (fn, inputs) in fns.items():
                f = fn if mode == "fwd" else _with_grad(fn, len(inputs))
                exe, lower_s, compile_s = harness.jax_compile(f, *inputs)
                compiled[name] = (exe, inputs, lower_s, compile_s)
                record[f"{name}_memory"] = _memory(exe)
                print(f"L={length} {mode} {name}: compiled in {compile_s:.2f} s, "
                      f"temp {record[f'{name}_memory'].get('temp_mib', float('nan')):.0f} MiB", flush=True)
            repeats = args.short_repeats if length <= 1024 else args.repeats
            quiet = harness.wait_for_quiet(timeout_s=args.quiet_wait) if args.quiet_wait > 0 else None
            with harness.LoadMonitor() as monitor:
                timings = harness.time_interleaved(
                    {name: (lambda exe=exe, inputs=inputs: exe(*inputs))
                     for name, (exe, inputs, _, _) in compiled.items()},
                    repeats=repeats, warmup=args.warmup,
                    timing_kwargs={name: {"lower_s": lo, "compile_s": c} for name, (_, _, lo, c) in compiled.items()},
                )
            load = dict(monitor.result, quiet_wait=quiet, length=length, mode=mode)
            loads.append(load)
            by_name = {t.name: t for t in timings}
            record.update(timings=timings, load=load,
                          ratio=by_name["disentangled"].median_ms / by_name["dense"].median_ms)
            results.append(record)
            print(f"L={length} {mode}: dense {by_name['dense'].median_ms:.1f} ms, disentangled "
                  f"{by_name['disentangled'].median_ms:.1f} ms, ratio {record['ratio']:.2f} "
                  f"({harness.load_note(load).lstrip('- ')})", flush=True)

    machine = harness.machine_info(device)
    command = "python -m benchmarks.disentangled_kernel " + " ".join(argv if argv is not None else sys.argv[1:])
    payload = {
        "benchmark": DEFAULT_NAME,
        "command": command.strip(),
        "setup": {"batch": args.batch, "heads": args.heads, "head_dim": args.head_dim, "dtype": "float32",
                  "position_buckets": args.position_buckets, "max_relative_positions": args.max_relative_positions,
                  "att_span": span, "pos_att_type": ["p2c", "c2p"], "mask": None, "lengths": lengths,
                  "modes": modes, "repeats": args.repeats, "short_repeats": args.short_repeats,
                  "warmup": args.warmup, "device": device},
        "machine": machine,
        "threads": threads,
        "results": results,
    }
    md = [f"### Disentangled attention kernel vs dense kernel, {device}, fp32", "",
          f"`{payload['command']}`", "",
          f"batch {args.batch}, {args.heads} heads, head_dim {args.head_dim}; disentangled: "
          f"position_buckets {args.position_buckets}, max_relative_positions {args.max_relative_positions} "
          f"(att_span {span}, {2 * span} position rows), pos_att_type (p2c, c2p), no mask. "
          "fwd+bwd = value_and_grad of sum(out) w.r.t. all inputs. Medians of "
          f"{args.short_repeats} (L <= 1024) or {args.repeats} timed runs after {args.warmup} warm-up, "
          "dense and disentangled round-robin. ratio = disentangled / dense.", "",
          "| L | mode | dense ms | disentangled ms | ratio | dense MiB temp / total "
          "| disentangled MiB temp / total | memory ratio (total) | compile s (dense / dis.) | other load |",
          "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        t = {x.name: x for x in r["timings"]}
        md.append(
            f"| {r['length']} | {r['mode']} | {t['dense'].median_ms:.1f} | {t['disentangled'].median_ms:.1f} "
            f"| {r['ratio']:.2f}x | {_mem(r['dense_memory'])} | {_mem(r['disentangled_memory'])} "
            f"| {_mem_ratio(r)} "
            f"| {t['dense'].compile_s:.2f} / {t['disentangled'].compile_s:.2f} "
            f"| {r['load'].get('foreign_cpu_fraction', float('nan')):.0%} |")
    md += ["", "MiB: XLA's memory analysis of the compiled executable, temporary buffers / temporaries + "
           "arguments + outputs. other load: share of the cores used by other processes while timing "
           "(both kernels of a row were timed round-robin, so they shared it).", ""]
    worst = max((r["load"].get("foreign_cpu_fraction", 0.0) for r in results), default=0.0)
    md += [harness.environment_block(machine, threads, max(loads, key=lambda x: x.get("foreign_cpu_fraction", 0.0))
                                     if loads else None)]
    if worst >= 0.05:
        md += ["- the worst block is shown above; per-block loads are in the table and the JSON"]
    markdown = "\n".join(md)
    print()
    print(markdown)
    if not args.no_write:
        paths = harness.write_results(args.name or DEFAULT_NAME, payload, markdown)
        print("wrote", *paths)
    return payload


if __name__ == "__main__":
    main()
