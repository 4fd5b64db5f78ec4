"""Forward-pass speed of SEW-D (base size): zoo (jax.jit) vs HF PyTorch eager.

    python -m benchmarks.sew_d_forward [--batch 1|8] [--seconds 4] [--repeats 10]

HF's SEW-D has no sdpa path (its disentangled attention is eager only). One process,
one set of random weights (``transformers.SEWDModel(SEWDConfig())``: hidden 768, 12
layers, squeeze 2, position buckets 256, p2c + c2p), converted through the family key
table. Batches > 1 get rows of different lengths with an ``attention_mask``. Outputs are
compared before timing.
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks import harness

DEFAULT_NAME = "sew_d_forward"
SAMPLE_RATE = 16_000


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=4.0)
    harness.add_common_args(parser, repeats=10, warmup=2)
    args = parser.parse_args(argv)

    threads = harness.setup_threads()
    import jax
    import torch
    import transformers

    from converters.mapping import torch_to_flax
    from zoo.models.sew_d import KEY_TABLE, SEWDConfig, SEWDModel
    from zoo.pretrained import param_shapes, unflatten

    torch.manual_seed(0)
    hf_config = transformers.SEWDConfig()
    hf = transformers.SEWDModel(hf_config).eval()
    config = SEWDConfig.from_dict(hf_config.to_dict())
    module = SEWDModel(config)
    state = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    flat, _ = torch_to_flax(state.keys(), state.__getitem__, KEY_TABLE, param_shapes(module))
    params = unflatten({k: jax.numpy.asarray(v) for k, v in flat.items()})

    samples = int(args.seconds * SAMPLE_RATE)
    rng = np.random.RandomState(0)
    audio = rng.randn(args.batch, samples).astype(np.float32)
    mask = None
    if args.batch > 1:  # rows from full length down to 60 %
        mask = np.ones((args.batch, samples), np.int32)
        for row, frac in enumerate(np.linspace(1.0, 0.6, args.batch)):
            n = int(samples * frac)
            audio[row, n:] = 0.0
            mask[row, n:] = 0

    def zoo_fn(p, x, m):
        return module.apply({"params": p}, input_values=x, attention_mask=m).last_hidden_state

    compiled, lower_s, compile_s = harness.jax_compile(zoo_fn, params, audio, mask)
    torch_audio = torch.from_numpy(audio)
    torch_mask = None if mask is None else torch.from_numpy(mask)
    hf_call = harness.torch_callable(lambda: hf(torch_audio, attention_mask=torch_mask).last_hidden_state)

    got = np.asarray(compiled(params, audio, mask))
    ref = hf_call().numpy()
    max_diff = float(np.abs(got - ref).max())

    load = harness.wait_for_quiet(timeout_s=args.quiet_wait) if args.quiet_wait > 0 else None
    with harness.LoadMonitor() as monitor:
        timings = harness.time_interleaved(
            {"zoo": lambda: compiled(params, audio, mask), "hf_eager": hf_call},
            repeats=args.repeats, warmup=args.warmup, syncs={"hf_eager": None},
            timing_kwargs={"zoo": {"compile_s": compile_s}},
        )
    load = {**(load or {}), **monitor.result}
    machine = harness.machine_info("cpu")
    title = (f"### SEW-D base forward, batch {args.batch} x {args.seconds:g} s of 16 kHz audio, float32, cpu\n\n"
             f"`python -m benchmarks.sew_d_forward --batch {args.batch} --seconds {args.seconds:g} "
             f"--repeats {args.repeats}`\n")
    markdown = "\n".join([
        title,
        harness.comparison_table(timings, "zoo"),
        "",
        f"{args.repeats} timed runs each after {args.warmup} warm-up runs, interleaved. speedup = "
        f"implementation median / zoo median (> 1: zoo faster); compile s = XLA compilation "
        f"(tracing + lowering adds {lower_s:.2f} s). Goal: zoo >= 1.5x HF eager.",
        "",
        f"last_hidden_state max abs diff zoo vs hf_eager: {max_diff:.2e}",
        "",
        harness.environment_block(machine, threads, load),
    ])
    print(markdown)
    payload = dict(args=vars(args), timings=timings, max_abs_diff=max_diff, lower_s=lower_s,
                   compile_s=compile_s, machine=machine, threads=threads, load=load)
    if not args.no_write:
        harness.write_results(args.name or f"{DEFAULT_NAME}_b{args.batch}", payload, markdown)
    return payload


if __name__ == "__main__":
    main()
