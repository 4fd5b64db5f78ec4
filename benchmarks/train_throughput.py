"""Fine-tuning throughput: one full training step, zoo (``zoo.train.make_train_step``) vs HF PyTorch.

    python -m benchmarks.train_throughput [--tasks text,audio] [--repeats 5 --warmup 2 --attempts 2]
    python -m benchmarks.train_throughput --small --no-write      # smoke test, tiny models
    python -m benchmarks.train_throughput --device gpu            # bf16 compute, MFU vs --peak-tflops

- ``text``: preset ``data2vec-text-base`` as ``Data2VecTextForSequenceClassification`` (2 labels),
  ``--text-batch`` 8 x ``--seq`` 128 random tokens, no padding; throughput in tokens/s.
- ``audio``: preset ``data2vec-audio-base`` as ``Data2VecAudioForCTC`` (32 symbols), ``--audio-batch``
  4 x ``--seconds`` 4 of 16 kHz noise, random CTC labels of ``--label-chars`` +- 1/6 padded with
  -100; throughput in seconds of audio per second. Equal work: layerdrop 0, SpecAugment off.

Both start from HF's random init, converted with ``zoo.from_state_dict``. One step = forward +
loss + backward + clipping + AdamW (no decay on biases / norms, HF Trainer's rule, counts
checked equal) + warmup/linear schedule, dropout on, hyper-parameters from
``configs/finetune/{text_classification,speech_recognition_ctc}.json``. Zoo: ``TrainState.create``
+ ``make_train_step`` on a 1-device mesh, compiled ahead of time, state donated; HF:
``model.train()``, ``loss.backward()``, ``clip_grad_norm_``, ``torch.optim.AdamW(fused=True)``,
``get_linear_schedule_with_warmup``. Checked first: loss and global gradient norm of both on the
same batch with dropout off, fp32 (relative ``--tolerance``). Model FLOPs per step are analytic
(matmuls and convolutions, training = 3 x forward: :func:`text_flops`, :func:`audio_flops`).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import time

import numpy as np

from benchmarks import harness

DEFAULT_NAME = "train_throughput"
TASKS = ("text", "audio")
IMPLS = ("zoo", "hf")
SAMPLE_RATE = 16_000
H100_BF16_DENSE_TFLOPS = 989.0
TEXT_PRESET, AUDIO_PRESET = "data2vec-text-base", "data2vec-audio-base"
TEXT_RECIPE, AUDIO_RECIPE = "text_classification.json", "speech_recognition_ctc.json"
# --small: a 2-layer tiny model of each family, same code paths (smoke test of the script)
SMALL_TEXT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=1000)
# (3 feature-encoder convs, not 7: the convolutions' gradients dominate the XLA compile time on a CPU)
SMALL_AUDIO = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                   conv_dim=[32] * 3, conv_kernel=[10, 3, 3], conv_stride=[5, 2, 2], num_feat_extract_layers=3)
SMALL_RUN = dict(text_batch=2, seq=32, audio_batch=2, seconds=0.25, label_chars=8, repeats=2, warmup=1,
                 quiet_wait=0.0)
FULL_RUN = dict(text_batch=8, seq=128, audio_batch=4, seconds=4.0, label_chars=60, repeats=5, warmup=2,
                quiet_wait=120.0)


# ----------------------------------------------------------------------- configs
def preset_dict(name: str) -> dict:
    from zoo.presets import preset_path

    return json.loads(preset_path(name).read_text())


def text_config_dict(args) -> dict:
    d = preset_dict(TEXT_PRESET)
    d.update(num_labels=2)
    if args.small:
        d.update(SMALL_TEXT)
    d.update(_size_overrides(args))
    return d


def audio_config_dict(args) -> dict:
    d = preset_dict(AUDIO_PRESET)
    # equal work on both sides: no random layer skipping, no SpecAugment masking
    d.update(layerdrop=0.0, apply_spec_augment=False, mask_time_prob=0.0, mask_feature_prob=0.0,
             ctc_loss_reduction="mean", vocab_size=32)
    if args.small:
        d.update(SMALL_AUDIO)
    d.update(_size_overrides(args))
    return d


def _size_overrides(args) -> dict:
    o = {}
    if args.layers is not None:
        o["num_hidden_layers"] = args.layers
    if args.hidden is not None:
        o["hidden_size"] = args.hidden
        o["intermediate_size"] = 4 * args.hidden
        o["num_attention_heads"] = max(1, args.hidden // 64) if args.hidden >= 64 else 1
    return o


def recipe_for(task: str, compute_dtype: str):
    from zoo.train import Recipe

    path = harness.REPO_ROOT / "configs" / "finetune" / (TEXT_RECIPE if task == "text" else AUDIO_RECIPE)
    data = json.loads(path.read_text())
    data.update(compute_dtype=compute_dtype, batch_size=None)
    if task == "audio":
        data.update(accumulate_steps=1, frozen=[])  # full fine-tuning: the same work on both sides
    return Recipe.from_dict(data, source=str(path)), path.name


# ------------------------------------------------------------------------ FLOPs
def text_flops(cfg: dict, batch: int, seq: int) -> dict:
    h, L, i, c = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"], cfg["num_labels"]
    n_layers = L * (4 * h * h + 2 * h * i)
    n_head = h * h + h * c
    matmul = 6 * n_layers * batch * seq + 6 * n_head * batch
    attention = 12 * L * seq * seq * h * batch
    return {"total": matmul + attention, "matmul_params": n_layers + n_head, "matmul": matmul,
            "attention": attention,
            "formula": "6 * N_layers * tokens + 12 * layers * seq^2 * hidden * batch + 6 * N_head * batch, "
                       "N_layers = layers * (4 h^2 + 2 h i), N_head = h^2 + h * num_labels"}


def conv_frames(cfg: dict, samples: int) -> list[int]:
    frames, t = [], samples
    for k, s in zip(cfg["conv_kernel"], cfg["conv_stride"]):
        t = (t - k) // s + 1
        frames.append(t)
    return frames


def audio_flops(cfg: dict, batch: int, samples: int) -> dict:
    h, L, i, v = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"], cfg["vocab_size"]
    frames = conv_frames(cfg, samples)
    f = frames[-1]
    conv, c_in = 0, 1
    for layer, (k, c_out, t) in enumerate(zip(cfg["conv_kernel"], cfg["conv_dim"], frames)):
        fwd = 2 * k * c_in * c_out * t
        conv += (2 if layer == 0 else 3) * fwd  # the waveform needs no gradient
        c_in = c_out
    proj = 6 * cfg["conv_dim"][-1] * h * f
    groups, k_pos = cfg["num_conv_pos_embedding_groups"], cfg["conv_pos_kernel_size"]
    pos = 6 * cfg["num_conv_pos_embeddings"] * k_pos * (h // groups) * h * f
    n_layers = L * (4 * h * h + 2 * h * i)
    enc = 6 * n_layers * f
    attention = 12 * L * f * f * h
    head = 6 * h * v * f
    per_seq = {"conv_feature_encoder": conv, "feature_projection": proj, "positional_conv": pos,
               "encoder_matmuls": enc, "attention": attention, "ctc_head": head}
    out = {k: batch * val for k, val in per_seq.items()}
    out["total"] = sum(out.values())
    out["frames"] = f
    out["formula"] = ("conv encoder sum_l (3 | 2 for l=0) * 2 k_l c_in c_out frames_l + 6 * 512 h F + "
                      "6 * pos_layers * k (h/groups) h F + 6 * N_layers * F + 12 * layers * F^2 * h + 6 h vocab F, "
                      "per sequence, x batch")
    return out


# ----------------------------------------------------------------------- inputs
def text_batch(cfg: dict, batch: int, seq: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, cfg["vocab_size"], (batch, seq)).astype(np.int64)
    ids[:, 0] = cfg.get("bos_token_id", 0)
    ids[:, -1] = cfg.get("eos_token_id", 2)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids),
            "labels": rng.integers(0, cfg["num_labels"], (batch,)).astype(np.int64)}


def audio_batch(cfg: dict, batch: int, seconds: float, label_chars: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    samples = int(round(seconds * SAMPLE_RATE))
    wave = rng.standard_normal((batch, samples), dtype=np.float32)
    frames = conv_frames(cfg, samples)[-1]
    spread = max(1, label_chars // 6)
    lengths = np.clip(rng.integers(label_chars - spread, label_chars + spread + 1, batch), 1, frames // 2)
    labels = np.full((batch, int(lengths.max())), -100, np.int64)
    for r, n in enumerate(lengths):
        labels[r, :n] = rng.integers(1, cfg["vocab_size"], n)
    return {"input_values": wave, "labels": labels, "_label_lengths": lengths.tolist(), "_frames": frames,
            "_samples": samples}


# ------------------------------------------------------------------------- torch
def build_hf(task: str, cfg: dict, seed: int = 0):
    import torch
    import transformers

    if task == "text":
        config, cls = transformers.Data2VecTextConfig(**cfg), transformers.Data2VecTextForSequenceClassification
    else:
        config, cls = transformers.Data2VecAudioConfig(**cfg), transformers.Data2VecAudioForCTC
    torch.manual_seed(seed)
    return cls._from_config(config)


def hf_decay_names(model) -> set[str]:
    """HF Trainer's ``get_decay_parameter_names``: not biases, not LayerNorm / norm parameters."""
    import torch
    from transformers.trainer_pt_utils import get_parameter_names

    patterns = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]
    return set(get_parameter_names(model, [torch.nn.LayerNorm], patterns))


def hf_optimizer(model, recipe, kind: str):
    import torch
    from transformers import get_linear_schedule_with_warmup

    decay = hf_decay_names(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if n in decay], "weight_decay": recipe.weight_decay},
              {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}]
    opt_kw = {"fused": True} if kind == "fused" else {"foreach": kind == "foreach"}
    opt = torch.optim.AdamW(groups, lr=recipe.learning_rate, betas=(recipe.b1, recipe.b2), eps=recipe.eps,
                            **opt_kw)
    if recipe.schedule != "linear":
        raise ValueError(f"the HF side implements the linear schedule only, the recipe has {recipe.schedule!r}")
    sched = get_linear_schedule_with_warmup(opt, recipe.warmup_steps, recipe.total_steps)
    n_decay = sum(p.numel() for n, p in named if n in decay)
    return opt, sched, n_decay


def hf_train_step(model, opt, sched, batch: dict, max_grad_norm, autocast):
    import torch

    params = [p for p in model.parameters() if p.requires_grad]

    def step():
        with autocast():
            loss = model(**batch).loss
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def hf_eval_loss_and_grad_norm(model, batch: dict) -> tuple[float, float]:
    """Loss and global gradient norm with dropout off (eval mode), fp32; grads cleared after."""
    import torch

    model.eval()
    try:
        loss = model(**batch).loss
        loss.backward()
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.double())
                                                     for p in model.parameters() if p.grad is not None]))
        return float(loss.detach()), float(norm)
    finally:
        model.zero_grad(set_to_none=True)
        model.train()


# --------------------------------------------------------------------------- zoo
def zoo_eval_loss_and_grad_norm(model, variables, batch: dict, loss_fn) -> tuple[float, float, float]:
    """(loss, global gradient norm, compile s) with ``deterministic=True``, fp32, highest precision."""
    import jax
    import optax

    def f(v, b):
        value, grads = jax.value_and_grad(lambda v: loss_fn(v, b, jax.random.PRNGKey(0), model,
                                                            deterministic=True)[0])(v)
        return value, optax.tree.norm(grads)

    with jax.default_matmul_precision("highest"):
        t0 = time.perf_counter()
        compiled = jax.jit(f).lower(variables, batch).compile()
        compile_s = time.perf_counter() - t0
        value, norm = compiled(variables, batch)
    return float(value), float(norm), compile_s


def zoo_train_step(model, variables, recipe, loss_fn, batch, mesh):
    """(zero-argument call running one donated step on its own state, compile info)."""
    from zoo import train

    state = train.TrainState.create(model, variables, recipe, mesh=mesh)
    step = train.make_train_step(model, recipe, loss_fn, mesh=mesh)
    t0 = time.perf_counter()
    lowered = step.lower(state, batch)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    holder = {"state": state}
    del state

    def call():
        holder["state"], metrics = compiled(holder["state"], batch)  # the old state is donated
        return holder["state"], metrics

    _, m = harness.block(call())
    return call, {"lower_s": t1 - t0, "compile_s": t2 - t1, "first_step_s": time.perf_counter() - t2,
                  "first_loss": float(m["loss"])}


def run_task(task: str, args) -> dict:
    import jax
    import torch

    from zoo import parallel, train

    gpu = args.device_used == "gpu"
    tdev = "cuda" if gpu else "cpu"
    cfg = text_config_dict(args) if task == "text" else audio_config_dict(args)
    recipe, recipe_file = recipe_for(task, args.compute_dtype)
    loss_fn = train.sequence_classification_loss if task == "text" else train.ctc_loss

    hf = build_hf(task, cfg)
    model, variables = harness.convert(hf)
    n_params = sum(p.numel() for p in hf.parameters())
    n_zoo = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(variables["params"]))
    if n_zoo != n_params:
        raise SystemExit(f"{task}: the zoo model has {n_zoo} parameters, HF {n_params}")
    hf.to(tdev).train()
    if task == "text":
        b = text_batch(cfg, args.text_batch, args.seq)
        flops, units = text_flops(cfg, args.text_batch, args.seq), args.text_batch * args.seq
        shape = f"batch {args.text_batch} x {args.seq} tokens"
    else:
        b = audio_batch(cfg, args.audio_batch, args.seconds, args.label_chars)
        flops, units = audio_flops(cfg, args.audio_batch, b["_samples"]), args.audio_batch * b["_samples"] / SAMPLE_RATE
        shape = (f"batch {args.audio_batch} x {args.seconds:g} s of 16 kHz audio ({b['_frames']} frames), CTC labels "
                 f"of {min(b['_label_lengths'])}-{max(b['_label_lengths'])} characters")
    arrays = {k: v for k, v in b.items() if not k.startswith("_")}
    arch = type(hf).__name__
    desc = (f"{arch}, {n_params / 1e6:.1f}M parameters: hidden {cfg['hidden_size']}, {cfg['num_hidden_layers']} "
            f"layers, intermediate {cfg['intermediate_size']}; {shape}")
    print(f"\n== {task}: {desc}; {flops['total'] / 1e9:.1f} GFLOP per step", flush=True)
    t_batch = {k: torch.from_numpy(v).to(tdev) for k, v in arrays.items()}
    mesh = parallel.make_mesh("", devices=jax.devices()[:1])
    z_batch = parallel.shard_batch({k: (v.astype(np.int32) if v.dtype == np.int64 else v)
                                    for k, v in arrays.items()}, mesh)

    # ---- same model, same data: dropout off, fp32
    z_loss, z_norm, check_compile_s = zoo_eval_loss_and_grad_norm(model, variables, z_batch, loss_fn)
    h_loss, h_norm = hf_eval_loss_and_grad_norm(hf, t_batch)
    check = {"zoo_loss": z_loss, "hf_loss": h_loss, "zoo_grad_norm": z_norm, "hf_grad_norm": h_norm,
             "rel_diff_loss": abs(z_loss - h_loss) / max(abs(h_loss), 1e-12),
             "rel_diff_grad_norm": abs(z_norm - h_norm) / max(abs(h_norm), 1e-12)}
    print(f"check (eval mode, fp32): {check}", flush=True)
    if max(check["rel_diff_loss"], check["rel_diff_grad_norm"]) > args.tolerance:
        raise SystemExit(f"{task}: zoo and HF disagree beyond {args.tolerance} (relative): {check}")
    opt, sched, hf_decayed = hf_optimizer(hf, recipe, args.torch_adamw)
    zoo_decayed = int(sum(int(np.prod(x.shape)) for x, m in zip(
        jax.tree.leaves(variables["params"]), jax.tree.leaves(train.decay_mask(variables["params"]))) if m))
    if zoo_decayed != hf_decayed:
        raise SystemExit(f"{task}: weight decay covers {zoo_decayed} parameters in the zoo, {hf_decayed} in HF")

    zoo_step, info = zoo_train_step(model, variables, recipe, loss_fn, z_batch, mesh)
    del variables
    autocast = ((lambda: torch.autocast(device_type=tdev, dtype=torch.bfloat16)) if args.compute_dtype == "bfloat16"
                else contextlib.nullcontext)
    hf_step = hf_train_step(hf, opt, sched, t_batch, recipe.max_grad_norm, autocast)
    hf_first = float(hf_step())
    timings, load = harness.timed({"zoo": zoo_step, "hf": hf_step}, args,
                                  syncs={"zoo": harness.block, "hf": harness.torch_sync(args.device_used)},
                                  timing_kwargs={"zoo": {"lower_s": info["lower_s"], "compile_s": info["compile_s"]}})
    unit = "tokens_per_s" if task == "text" else "audio_s_per_s"
    rows = {t.name: {"median_ms": t.median_ms, "min_ms": t.min_ms, "iqr_ms": t.iqr_ms, "steps_per_s": 1e3 / t.median_ms,
                     unit: 1e3 / t.median_ms * units, "model_gflops_per_s": flops["total"] / t.median_ms / 1e6,
                     "mfu": flops["total"] / (t.median_ms / 1e3) / (args.peak_tflops * 1e12) if gpu else None}
            for t in timings}
    _, m = harness.block(zoo_step())  # the step really trains: finite losses after the timed steps
    final = {"zoo_loss": float(m["loss"]), "zoo_grad_norm": float(m["grad_norm"]), "hf_loss": float(hf_step())}
    print(f"after timing: {final}", flush=True)
    result = {"task": task, "model": desc, "head": arch, "input": shape, "config": cfg, "n_params": n_params,
              "recipe_file": recipe_file, "recipe": recipe.to_dict(), "torch_adamw": args.torch_adamw,
              "hf_attn_implementation": hf.config._attn_implementation, "flops": flops, "check": check,
              "decayed_params": zoo_decayed, "compile": {**info, "eval_check_compile_s": check_compile_s},
              "hf_first_loss": hf_first, "after_timing": final, "timings": timings, "load": load,
              "quiet": load["quiet"], "rows": rows, "speedup_of_zoo": harness.ratios(timings)["hf / zoo"]}
    del zoo_step, hf, opt, sched, t_batch, z_batch
    gc.collect()
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated: text, audio")
    parser.add_argument("--small", action="store_true", help="2-layer hidden-64 models and tiny batches: smoke test")
    parser.add_argument("--layers", type=int, default=None, help="override num_hidden_layers of both models")
    parser.add_argument("--hidden", type=int, default=None, help="override hidden_size (intermediate 4x, heads h/64)")
    for flag, what in (("--text-batch", "text rows per step (8)"), ("--seq", "tokens per text row (128)"),
                       ("--audio-batch", "waveforms per step (4)"), ("--label-chars", "mean CTC label length (60)")):
        parser.add_argument(flag, type=int, default=None, help=what)
    parser.add_argument("--seconds", type=float, default=None, help="seconds of 16 kHz audio per waveform (4)")
    parser.add_argument("--compute-dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                        help="zoo Recipe.compute_dtype / HF torch.autocast (auto: bfloat16 on GPU, float32 on CPU)")
    parser.add_argument("--torch-adamw", choices=("fused", "foreach", "loop"), default="fused")
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS, help="GPU peak for MFU")
    parser.add_argument("--tolerance", type=float, default=None, help="relative loss / grad norm diff (1e-3; GPU 1e-2)")
    harness.add_common_args(parser, repeats=None, warmup=None, quiet_wait=None)
    args = parser.parse_args(argv)
    for k, v in (SMALL_RUN if args.small else FULL_RUN).items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    tasks = [t for t in args.tasks.split(",") if t]
    if set(tasks) - set(TASKS) or not tasks:
        parser.error(f"--tasks: choose from {', '.join(TASKS)}")
    threads = harness.setup_threads(args.threads, args.keep_freed_memory)
    import transformers

    transformers.logging.set_verbosity_error()
    args.device_used = harness.select_device(args.device)
    gpu = args.device_used == "gpu"
    args.compute_dtype = args.compute_dtype if args.compute_dtype != "auto" else "bfloat16" if gpu else "float32"
    args.tolerance = args.tolerance or (1e-2 if gpu else 1e-3)
    results = [run_task(t, args) for t in tasks]

    md = [f"### Training throughput, {args.compute_dtype}, {args.device_used}" + (" (SMALL models)" if args.small else "")]
    for r in results:
        unit = "tokens_per_s" if r["task"] == "text" else "audio_s_per_s"
        md += ["", f"#### {r['task']}: {r['model']}", "",
               f"| implementation | ms/step median (min, IQR) | steps/s | {unit} | model GFLOP/s | MFU | this / zoo |",
               "|---|---:|---:|---:|---:|---:|---:|"]
        for n, row in r["rows"].items():
            md.append(f"| {n} | {row['median_ms']:.0f} ({row['min_ms']:.0f}, {row['iqr_ms']:.0f}) | "
                      f"{row['steps_per_s']:.3f} | {row[unit]:.1f} | {row['model_gflops_per_s']:.1f} | "
                      f"{'n/a' if row['mfu'] is None else format(row['mfu'], '.1%')} | "
                      f"{row['median_ms'] / r['rows']['zoo']['median_ms']:.2f}x |")
        md += ["", f"- check, eval mode, fp32: {r['check']}", f"- zoo compile: {r['compile']}",
               f"- {args.repeats} timed steps each after {args.warmup} warm-up, interleaved; " + harness.load_note(r["load"])]
    name = args.name or "train_throughput" + ("_small" if args.small else "") + ("" if not gpu else "_gpu") + (
        "" if args.compute_dtype == "float32" else f"_{args.compute_dtype}")
    payload = {"argv": argv, "module": "benchmarks.train_throughput", "benchmark": "train_throughput", "small": args.small,
               "device": args.device_used, "compute_dtype": args.compute_dtype, "tolerance": args.tolerance,
               "dropout": "on in both (training mode)", "peak_tflops": args.peak_tflops if gpu else None,
               "tasks": results}
    return harness.finish_report(name, payload, md, write=not args.no_write, threads=threads, device=args.device_used,
                                 results_dir=args.out)


if __name__ == "__main__":
    main()
