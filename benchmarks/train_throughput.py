"""Fine-tuning throughput: one full training step, zoo (``zoo.train.make_train_step``) vs HF PyTorch.

    python -m benchmarks.train_throughput [--tasks text,audio] [--repeats 5 --warmup 2]
    python -m benchmarks.train_throughput --small --no-write      # smoke test of the script, ~30 s
    python -m benchmarks.train_throughput --device gpu            # bf16 compute, MFU vs --peak-tflops
    python -m benchmarks.train_throughput --tasks text --zoo-variants no_dropout,threefry_legacy  # RNG experiments

Two workloads, each side by side in one process, on the same machine, timed interleaved
(round-robin, ``harness.time_interleaved``):

- ``text``: Data2VecText base (preset ``configs/data2vec-text-base.json``: hidden 768, 12
  layers, 12 heads, intermediate 3072, vocab 50265) with a 2-label sequence-classification
  head (``Data2VecTextForSequenceClassification``), a batch of ``--text-batch`` (8) x
  ``--seq`` (128) random token ids (no padding, ``attention_mask`` all ones), random labels.
  Throughput in steps/s and tokens/s.
- ``audio``: Data2VecAudio base (preset ``configs/data2vec-audio-base.json``: conv feature
  encoder 7 x 512 channels, hidden 768, 12 layers, 5 positional conv layers) with a CTC head
  over ``vocab_size`` 32 (``Data2VecAudioForCTC``), ``--audio-batch`` (4) random 16 kHz
  waveforms of ``--seconds`` (4) each, all full length (no ``attention_mask``), random
  CTC label sequences of ``--label-chars`` (60) +- 10 characters from ids 1..31 (0 is the
  blank = ``pad_token_id``), padded with -100. Throughput in steps/s and seconds of audio
  per second.

The weights are HF's random init (``transformers.<Arch>._from_config``, never downloaded) of
a config built from the preset's dict, converted to zoo params through the family key table
(``data2vec_vision_forward.convert_to_zoo``), so both sides start from the same model.

**One step** = forward + loss + backward + gradient clipping at the recipe's
``max_grad_norm`` (1.0) + AdamW (decoupled weight decay, not on biases and LayerNorm
weights, HF Trainer's rule) + a warmup + linear-decay learning-rate schedule, with
**dropout on** on both sides (training mode, the preset's rates: hidden / attention /
activation / feature-projection / final dropout 0.1, classifier dropout = hidden dropout).
Hyper-parameters come from the fine-tuning recipes (``configs/finetune/text_classification.json``,
``speech_recognition_ctc.json``) with ``compute_dtype`` from ``--compute-dtype``,
``batch_size`` unset and, for CTC, ``accumulate_steps=1`` and nothing frozen (the feature
encoder is trained too, so both sides do the same, full work).

- zoo: ``zoo.train.TrainState.create`` + ``zoo.train.make_train_step(module, recipe,
  sequence_classification_loss / ctc_loss, mesh=<single-device mesh>)``: one ``jax.jit``
  donating the state, lowered and compiled ahead of time (trace + lower and XLA compile
  times reported apart); the batch is placed on the device once, the metrics (loss,
  grad_norm, learning_rate) stay on the device (each timed step waits for the new state
  and metrics with ``jax.block_until_ready``, nothing goes to the host).
- HF: ``model.train()``; forward with ``labels`` (the model's own loss), ``loss.backward()``,
  ``torch.nn.utils.clip_grad_norm_``, ``torch.optim.AdamW`` (``--torch-adamw``: ``fused``, the
  HF Trainer default ``adamw_torch_fused`` with torch >= 2.8, or ``foreach`` / ``loop``) with two
  parameter groups (HF Trainer's ``get_decay_parameter_names``), ``scheduler.step()``
  (``get_linear_schedule_with_warmup``), ``zero_grad(set_to_none=True)``; the loss is not
  read back (no ``.item()``). The attention kernel is HF's default (sdpa).

Work is made equal in the configs of **both** sides: ``layerdrop = 0`` and SpecAugment off
(``apply_spec_augment=False``, ``mask_time_prob = mask_feature_prob = 0``) for audio (the
preset has layerdrop 0.1 and mask_time_prob 0.05, which make the work per step random);
CTC loss reduction ``"mean"`` (as the recipe advises).

**Sanity check before timing**: on the same batch, with dropout off (eval mode /
``deterministic=True``) and fp32 (highest matmul precision), the loss and the global
gradient norm of zoo and HF are compared (the run stops beyond ``--tolerance``, relative).

**FLOPs** (model FLOPs per step, analytic, matmuls and convolutions only; embeddings,
norms, softmax, GELU, the optimizer not counted), training = 3 x forward (forward, and
the backward's input and weight gradients), written as:

- text: ``6 * N_layers * tokens + 12 * layers * seq^2 * hidden * batch + 6 * N_head * batch``
  with ``N_layers = layers * (4 h^2 + 2 h i)`` (q, k, v, output, intermediate, output dense
  weights) and ``N_head = h^2 + h * num_labels`` (the classification head runs on the
  first token only);
- audio: the conv feature encoder ``sum_l 2 * k_l * c_in * c_out * frames_l`` per forward
  (x 3 for training, x 2 for the first conv, whose input needs no gradient), the feature
  projection ``512 x h``, the positional convs ``2 * k * (h / groups) * h * frames`` each,
  ``6 * N_layers * frames + 12 * layers * frames^2 * h`` per sequence, the CTC head ``h x vocab``.

``model GFLOP/s = FLOPs / median step time``; on a GPU also **MFU** = that / ``--peak-tflops``
(default 989: H100 SXM / H200 bf16 dense, without sparsity). On the CPU MFU is not reported
(no well-founded peak for this shared 2-core VM; the model GFLOP/s compare with the
~150-170 GFLOP/s both frameworks reach on single base-size matmuls here, see the README).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import time

import numpy as np

from benchmarks import harness
from benchmarks.data2vec_vision_forward import _loadavg, convert_to_zoo

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
def _repo_root():
    from pathlib import Path

    return Path(__file__).resolve().parent.parent


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

    path = _repo_root() / "configs" / "finetune" / (TEXT_RECIPE if task == "text" else AUDIO_RECIPE)
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
def zoo_eval_loss_and_grad_norm(module, params, batch: dict, loss_fn) -> tuple[float, float, float]:
    """(loss, global gradient norm, compile s) with ``deterministic=True``, fp32, highest precision."""
    import jax
    import optax

    def f(p, b):
        value, grads = jax.value_and_grad(lambda p: loss_fn(p, b, jax.random.PRNGKey(0), module,
                                                            deterministic=True)[0])(p)
        return value, optax.tree.norm(grads)

    with jax.default_matmul_precision("highest"):
        t0 = time.perf_counter()
        compiled = jax.jit(f).lower(params, batch).compile()
        compile_s = time.perf_counter() - t0
        value, norm = compiled(params, batch)
    return float(value), float(norm), compile_s


def zoo_decay_count(params) -> int:
    import jax

    from zoo.train import decay_mask

    return int(sum(int(np.prod(x.shape)) for x, m in zip(jax.tree.leaves(params), jax.tree.leaves(decay_mask(params)))
                   if m))


ZOO_VARIANTS = ("no_dropout", "rbg", "unsafe_rbg", "threefry_legacy")


def variant_loss(name: str, loss_fn):
    """The loss of a ``--zoo-variants`` run (same params, batch and optimizer; experiments on the dropout RNG):

    - ``zoo[no_dropout]``: ``deterministic=True`` (no dropout at all: what the RNG and masks cost);
    - ``zoo[rbg]`` / ``zoo[unsafe_rbg]``: the state's threefry key turned into an ``rbg`` /
      ``unsafe_rbg`` key (XLA's RngBitGenerator) before the model draws its dropout masks;
    - ``zoo[threefry_legacy]``: the step traced with ``jax_threefry_partitionable=False``.
    """
    import functools

    import jax
    import jax.numpy as jnp

    if name in ("zoo", "zoo[threefry_legacy]"):
        return loss_fn
    if name == "zoo[no_dropout]":
        return functools.partial(loss_fn, deterministic=True)
    impl = {"zoo[rbg]": "rbg", "zoo[unsafe_rbg]": "unsafe_rbg"}.get(name)
    if impl is None:
        raise ValueError(f"unknown zoo variant {name!r}; choose from {', '.join(ZOO_VARIANTS)}")

    def loss(params, batch, rng, module):
        data = jnp.concatenate([rng, rng[::-1] ^ jnp.uint32(0x9E3779B9)])  # uint32[4]: an rbg key
        return loss_fn(params, batch, jax.random.wrap_key_data(data, impl=impl), module)

    return loss


def zoo_train_step(module, params, recipe, loss_fn, batch, mesh, *, legacy_threefry: bool = False):
    """(zero-argument call running one donated step on its own state, compile info)."""
    import jax

    from zoo import train

    state = train.TrainState.create(module, params, recipe, mesh=mesh)
    step = train.make_train_step(module, recipe, loss_fn, mesh=mesh)
    ctx = jax.threefry_partitionable(False) if legacy_threefry else contextlib.nullcontext()
    with ctx:
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

    t3 = time.perf_counter()
    _, m = harness.block(call())
    first = time.perf_counter() - t3
    return call, {"lower_s": t1 - t0, "compile_s": t2 - t1, "first_step_s": first, "first_loss": float(m["loss"])}


# ------------------------------------------------------------------- one task
def run_task(task: str, args) -> dict:
    import jax
    import torch

    from zoo import parallel, train

    gpu = args.device_used == "gpu"
    tdev = "cuda" if gpu else "cpu"
    cfg = text_config_dict(args) if task == "text" else audio_config_dict(args)
    recipe, recipe_file = recipe_for(task, args.compute_dtype)
    loss_fn = train.sequence_classification_loss if task == "text" else train.ctc_loss

    # ---- models: HF random init, converted to the zoo
    t0 = time.perf_counter()
    hf = build_hf(task, cfg)
    module, variables = convert_to_zoo(hf)
    params = variables["params"]
    n_params = sum(p.numel() for p in hf.parameters())
    n_zoo = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
    if n_zoo != n_params:
        raise SystemExit(f"{task}: the zoo model has {n_zoo} parameters, HF {n_params}")
    hf.to(tdev)
    hf.train()
    build_s = time.perf_counter() - t0

    # ---- the batch and the work
    if task == "text":
        b = text_batch(cfg, args.text_batch, args.seq)
        flops = text_flops(cfg, args.text_batch, args.seq)
        units = {"tokens": args.text_batch * args.seq}
        shape = f"batch {args.text_batch} x {args.seq} tokens"
    else:
        b = audio_batch(cfg, args.audio_batch, args.seconds, args.label_chars)
        flops = audio_flops(cfg, args.audio_batch, b["_samples"])
        units = {"audio_s": args.audio_batch * b["_samples"] / SAMPLE_RATE}
        shape = (f"batch {args.audio_batch} x {args.seconds:g} s of 16 kHz audio ({b['_frames']} frames each), "
                 f"CTC labels of {min(b['_label_lengths'])}-{max(b['_label_lengths'])} characters")
    arrays = {k: v for k, v in b.items() if not k.startswith("_")}
    arch = type(hf).__name__
    desc = (f"{arch}, {n_params / 1e6:.1f}M parameters ({n_params:,}): hidden {cfg['hidden_size']}, "
            f"{cfg['num_hidden_layers']} layers, {cfg['num_attention_heads']} heads, intermediate "
            f"{cfg['intermediate_size']}" + (f", vocab {cfg['vocab_size']}" if task == "text" else
                                               f", conv feature encoder {len(cfg['conv_dim'])} x "
                                               f"{cfg['conv_dim'][0]} channels, CTC vocab {cfg['vocab_size']}")
            + f"; {shape}")
    print(f"\n== {task}: {desc}\nbuilt in torch and converted in {build_s:.1f} s; model FLOPs per step "
          f"{flops['total'] / 1e12:.3f} TFLOP", flush=True)

    t_batch = {k: torch.from_numpy(v).to(tdev) for k, v in arrays.items()}
    mesh = parallel.make_mesh("", devices=jax.devices()[:1])
    z_batch = parallel.shard_batch({k: (v.astype(np.int32) if v.dtype == np.int64 else v)
                                    for k, v in arrays.items()}, mesh)

    # ---- sanity check: same model, same data (dropout off, fp32)
    z_loss, z_norm, check_compile_s = zoo_eval_loss_and_grad_norm(module, params, z_batch, loss_fn)
    h_loss, h_norm = hf_eval_loss_and_grad_norm(hf, t_batch)
    rel = {"loss": abs(z_loss - h_loss) / max(abs(h_loss), 1e-12),
           "grad_norm": abs(z_norm - h_norm) / max(abs(h_norm), 1e-12)}
    check = {"zoo_loss": z_loss, "hf_loss": h_loss, "zoo_grad_norm": z_norm, "hf_grad_norm": h_norm,
             "rel_diff_loss": rel["loss"], "rel_diff_grad_norm": rel["grad_norm"],
             "zoo_check_compile_s": check_compile_s}
    print(f"check (eval mode, dropout off, fp32): loss zoo {z_loss:.6f} / HF {h_loss:.6f} (rel diff "
          f"{rel['loss']:.1e}); grad norm zoo {z_norm:.6f} / HF {h_norm:.6f} (rel diff {rel['grad_norm']:.1e})",
          flush=True)
    if max(rel.values()) > args.tolerance:
        raise SystemExit(f"{task}: zoo and HF disagree beyond {args.tolerance} (relative): {check}")

    # ---- optimizers; the decayed parameter sets must agree
    opt, sched, hf_decayed = hf_optimizer(hf, recipe, args.torch_adamw)
    zoo_decayed = zoo_decay_count(params)
    print(f"weight decay on {zoo_decayed:,} (zoo) / {hf_decayed:,} (HF) parameters", flush=True)
    if zoo_decayed != hf_decayed:
        raise SystemExit(f"{task}: weight decay covers {zoo_decayed} parameters in the zoo, {hf_decayed} in HF")

    # ---- zoo train step: lower + compile apart (and the --zoo-variants, each with its own state)
    zoo_calls, zoo_extra = {}, {}
    for v in ["zoo"] + [f"zoo[{v}]" for v in args.zoo_variants]:
        call, info = zoo_train_step(module, params, recipe, variant_loss(v, loss_fn), z_batch, mesh,
                                    legacy_threefry=v == "zoo[threefry_legacy]")
        zoo_calls[v] = call
        zoo_extra[v] = {"compile_s": info["compile_s"], "lower_s": info["lower_s"],
                        "extra": {"first_step_s": info["first_step_s"], "first_loss": info["first_loss"]}}
        print(f"{v} train step: trace+lower {info['lower_s']:.2f} s, XLA compile {info['compile_s']:.2f} s, first "
              f"step {info['first_step_s']:.2f} s (loss {info['first_loss']:.4f})", flush=True)
    del params, variables
    zoo_step = zoo_calls["zoo"]
    lower_s, compile_s = zoo_extra["zoo"]["lower_s"], zoo_extra["zoo"]["compile_s"]
    first_s, first_loss = (zoo_extra["zoo"]["extra"][k] for k in ("first_step_s", "first_loss"))

    if args.compute_dtype == "bfloat16":
        autocast = lambda: torch.autocast(device_type=tdev, dtype=torch.bfloat16)  # noqa: E731
    else:
        autocast = contextlib.nullcontext
    hf_step = hf_train_step(hf, opt, sched, t_batch, recipe.max_grad_norm, autocast)
    t0 = time.perf_counter()
    h_first = hf_step()
    if gpu:
        torch.cuda.synchronize()
    hf_first_s = time.perf_counter() - t0
    print(f"HF first step {hf_first_s:.2f} s (loss {float(h_first):.4f}, dropout on)", flush=True)

    # ---- timing
    calls = {"zoo": zoo_step, "hf": hf_step, **{n: c for n, c in zoo_calls.items() if n != "zoo"}}
    syncs = {n: (harness.torch_sync(args.device_used) if n == "hf" else harness.block) for n in calls}
    extra = {**zoo_extra, "hf": {"extra": {"first_step_s": hf_first_s}}}
    timings, load = timed(calls, syncs, extra, args)
    by = {t.name: t for t in timings}
    unit_name = "tokens" if task == "text" else "audio_s"
    rows = {}
    for n, t in by.items():
        sps = 1e3 / t.median_ms
        rows[n] = {"median_ms": t.median_ms, "min_ms": t.min_ms, "iqr_ms": t.iqr_ms, "steps_per_s": sps,
                   f"{unit_name}_per_s": sps * units[unit_name],
                   "model_gflops_per_s": flops["total"] / (t.median_ms / 1e3) / 1e9,
                   "mfu": (flops["total"] / (t.median_ms / 1e3) / (args.peak_tflops * 1e12)) if gpu else None}
    speedup = by["hf"].median_ms / by["zoo"].median_ms
    # the state after the timed steps is still finite (the step really trains)
    _, m = harness.block(zoo_step())
    final = {"zoo_loss": float(m["loss"]), "zoo_grad_norm": float(m["grad_norm"]),
             "zoo_learning_rate": float(m["learning_rate"]), "hf_loss": float(hf_step())}
    print(f"after timing: zoo loss {final['zoo_loss']:.4f} (grad norm {final['zoo_grad_norm']:.3f}, lr "
          f"{final['zoo_learning_rate']:.3g}), HF loss {final['hf_loss']:.4f}", flush=True)
    result = {"task": task, "description": desc, "architecture": arch, "config": cfg, "n_params": n_params,
              "recipe_file": recipe_file, "recipe": recipe.to_dict(), "torch_adamw": args.torch_adamw,
              "hf_attn_implementation": hf.config._attn_implementation,
              "batch": {"shape": shape, **{k: list(v.shape) for k, v in arrays.items()},
                        **{k[1:]: v for k, v in b.items() if k.startswith("_")}},
              "units_per_step": units, "flops": flops, "check": check, "decayed_params": zoo_decayed,
              "compile": {"lower_s": lower_s, "compile_s": compile_s, "first_step_s": first_s,
                          "eval_check_compile_s": check_compile_s,
                          "variants": {n: {k: e[k] for k in ("lower_s", "compile_s")} for n, e in zoo_extra.items()
                                       if n != "zoo"}},
              "zoo_variants": list(args.zoo_variants),
              "first_step_loss": {"zoo": first_loss, "hf": float(h_first)}, "after_timing": final,
              "timings": timings, "load": load, "rows": rows, "speedup_of_zoo": speedup}
    del zoo_calls, zoo_step, calls, hf, opt, sched, t_batch, z_batch
    gc.collect()
    return result


def timed(calls, syncs, extra, args):
    """Interleaved timing, re-timed up to ``--attempts`` times while other processes use more than
    ``--max-load`` of the cores; (timings of the quietest attempt, its load record)."""
    best = harness.quietest_attempt(
        lambda: harness.time_interleaved(calls, repeats=args.repeats, warmup=args.warmup, syncs=syncs,
                                         timing_kwargs=extra),
        attempts=args.attempts, max_load=args.max_load, quiet_wait=args.quiet_wait)
    for t in best[0]:
        print(f"  {t.name}: median {t.median_ms:.1f} ms/step (min {t.min_ms:.1f}, IQR {t.iqr_ms:.1f}, "
              f"{t.repeats} steps)", flush=True)
    return best


# ------------------------------------------------------------------------ output
def markdown(payload: dict) -> str:
    s = payload["setup"]
    title = ("Training throughput" + (" (SMALL smoke-test models)" if s["small"] else "")
             + f", {s['compute_dtype']} compute, {s['device']}")
    md = [f"### {title}", "", f"`{payload['command']}`", ""]
    gpu = s["device"] == "gpu"
    for r in payload["result"]["tasks"]:
        unit = "tokens/s" if r["task"] == "text" else "audio s/s"
        key = "tokens_per_s" if r["task"] == "text" else "audio_s_per_s"
        md += [f"#### {r['task']}: {r['architecture']}", "", r["description"] + ".", "",
               f"| implementation | ms/step median (min, IQR) | steps/s | {unit} | model GFLOP/s | MFU "
               "| zoo throughput / this |", "|---|---:|---:|---:|---:|---:|---:|"]
        for n in ["zoo", "hf"] + [f"zoo[{v}]" for v in r["zoo_variants"]]:
            row = r["rows"][n]
            mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "n/a (CPU)"
            ratio = row["median_ms"] / r["rows"]["zoo"]["median_ms"]
            ratio = "1.00 (reference)" if n == "zoo" else f"**{ratio:.2f}x**" if n == "hf" else f"{ratio:.2f}x"
            md.append(f"| {n} | {row['median_ms']:.0f} ({row['min_ms']:.0f}, {row['iqr_ms']:.0f}) | "
                      f"{row['steps_per_s']:.3f} | {row[key]:.1f} | {row['model_gflops_per_s']:.1f} | {mfu} | "
                      f"{ratio} |")
        c, k = r["compile"], r["check"]
        variants = "".join(f"; {n}: {v['lower_s']:.2f} s + {v['compile_s']:.2f} s" for n, v in c["variants"].items())
        md += ["", f"- zoo compile (apart from the timings): trace+lower {c['lower_s']:.2f} s + XLA "
               f"{c['compile_s']:.2f} s; first step {c['first_step_s']:.2f} s (the dropout-free check's "
               f"forward+backward compiled in {c['eval_check_compile_s']:.2f} s){variants}",
               f"- check, same batch, eval mode (dropout off), fp32: loss zoo {k['zoo_loss']:.6f} / HF "
               f"{k['hf_loss']:.6f} (rel diff {k['rel_diff_loss']:.1e}); global grad norm zoo "
               f"{k['zoo_grad_norm']:.5f} / HF {k['hf_grad_norm']:.5f} (rel diff {k['rel_diff_grad_norm']:.1e})",
               f"- model FLOPs per step {r['flops']['total'] / 1e9:.1f} GFLOP ({r['flops']['formula']})",
               f"- recipe `configs/finetune/{r['recipe_file']}` (lr {r['recipe']['learning_rate']}, betas "
               f"({r['recipe']['b1']}, {r['recipe']['b2']}), eps {r['recipe']['eps']}, weight decay "
               f"{r['recipe']['weight_decay']} on {r['decayed_params']:,} parameters, clip "
               f"{r['recipe']['max_grad_norm']}, warmup {r['recipe']['warmup_steps']} / linear to "
               f"{r['recipe']['total_steps']}); HF: torch AdamW `{r['torch_adamw']}`, attention "
               f"`{r['hf_attn_implementation']}`",
               f"- {s['repeats']} timed steps each after {s['warmup']} warm-up, interleaved; zoo throughput / "
               "this = this median / zoo median (> 1: the zoo trains faster)"]
        note = harness.load_note(r["load"])
        if note:
            md.append(note)
        md.append("")
    md += [f"Dropout on in both (training mode); equal work: {payload['setup']['equal_work']}.",
           ("MFU = model FLOPs / step time / peak "
            f"{s['peak_tflops']:g} TFLOP/s." if gpu else
            "MFU is not given on the CPU (no well-founded peak for this shared VM); "
            "`--device gpu` reports it against `--peak-tflops` (default 989, H100/H200 bf16 dense)."), ""]
    return "\n".join(md)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated: text, audio")
    parser.add_argument("--small", action="store_true",
                        help="2-layer hidden-64 models (3 feature-encoder convs) and tiny batches: a smoke "
                             "test of the script")
    parser.add_argument("--layers", type=int, default=None, help="override num_hidden_layers of both models")
    parser.add_argument("--hidden", type=int, default=None,
                        help="override hidden_size (intermediate 4x, heads hidden/64) of both models")
    parser.add_argument("--text-batch", type=int, default=None, help="text rows per step (8)")
    parser.add_argument("--seq", type=int, default=None, help="tokens per text row (128)")
    parser.add_argument("--audio-batch", type=int, default=None, help="waveforms per step (4)")
    parser.add_argument("--seconds", type=float, default=None, help="seconds of 16 kHz audio per waveform (4)")
    parser.add_argument("--label-chars", type=int, default=None, help="mean CTC label length (60)")
    parser.add_argument("--compute-dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                        help="zoo Recipe.compute_dtype / HF torch.autocast (auto: bfloat16 on GPU, float32 on CPU)")
    parser.add_argument("--torch-adamw", choices=("fused", "foreach", "loop"), default="fused",
                        help="torch.optim.AdamW implementation (fused: HF Trainer's default with torch >= 2.8)")
    parser.add_argument("--zoo-variants", default="",
                        help="comma-separated extra zoo runs (dropout RNG experiments): " + ", ".join(ZOO_VARIANTS))
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS,
                        help="GPU peak for MFU (default 989: H100 SXM / H200 bf16 dense)")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="largest relative difference of the eval-mode loss / grad norm (1e-3; 1e-2 on GPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: all cores)")
    parser.add_argument("--attempts", type=int, default=1,
                        help="time again, up to this many times, while other processes use more than --max-load")
    parser.add_argument("--max-load", type=float, default=0.05,
                        help="largest acceptable share of the cores used by other processes while timing")
    harness.add_common_args(parser, repeats=5, warmup=2)
    parser.set_defaults(repeats=None, warmup=None, quiet_wait=None)
    args = parser.parse_args(argv)
    for k, v in (SMALL_RUN if args.small else FULL_RUN).items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    args.zoo_variants = [v.strip() for v in args.zoo_variants.split(",") if v.strip()]
    if sorted(set(args.zoo_variants) - set(ZOO_VARIANTS)):
        parser.error(f"--zoo-variants: choose from {', '.join(ZOO_VARIANTS)}")
    bad = sorted(set(tasks) - set(TASKS))
    if bad or not tasks:
        parser.error(f"--tasks: unknown {bad}; choose from {', '.join(TASKS)}")

    loadavg_start = _loadavg()
    cores = harness.available_cores()
    threads = harness.setup_threads(args.threads or cores)
    import transformers

    transformers.logging.set_verbosity_error()
    args.device_used = harness.select_device(args.device)
    gpu = args.device_used == "gpu"
    if args.compute_dtype == "auto":
        args.compute_dtype = "bfloat16" if gpu else "float32"
    if args.tolerance is None:
        args.tolerance = 1e-2 if gpu else 1e-3
    print(f"torch.set_num_threads({threads.get('torch_num_threads')}); {cores} cores available to this "
          f"process (os.cpu_count() {os.cpu_count()}); XLA: {threads['xla_threads']}; device "
          f"{args.device_used}; compute {args.compute_dtype}; loadavg at start {loadavg_start}", flush=True)

    t_start = time.perf_counter()
    results = [run_task(t, args) for t in tasks]
    loadavg_end = _loadavg()
    wall_s = time.perf_counter() - t_start
    print(f"\nloadavg at end {loadavg_end}; benchmark wall time {wall_s:.0f} s", flush=True)

    machine = harness.machine_info(args.device_used)
    command = f"python -m benchmarks.{DEFAULT_NAME} " + " ".join(argv if argv is not None else sys.argv[1:])
    name = args.name or (DEFAULT_NAME + ("_small" if args.small else "")
                         + ("" if args.device_used == "cpu" else f"_{args.device_used}")
                         + ("" if args.compute_dtype == "float32" else f"_{args.compute_dtype}"))
    payload = {
        "benchmark": DEFAULT_NAME,
        "command": command.strip(),
        "setup": {"small": args.small, "tasks": tasks, "compute_dtype": args.compute_dtype,
                  "device": args.device_used, "impls": list(IMPLS), "repeats": args.repeats, "warmup": args.warmup,
                  "quiet_wait_s": args.quiet_wait, "timing": "interleaved", "torch_adamw": args.torch_adamw,
                  "peak_tflops": args.peak_tflops if gpu else None, "tolerance": args.tolerance,
                  "dropout": "on in both (training mode)",
                  "equal_work": "audio layerdrop 0 and SpecAugment off (apply_spec_augment False, mask_time_prob 0, "
                                "mask_feature_prob 0) in both configs; nothing frozen; no padding",
                  "weights": "HF random init of the preset config, converted to the zoo (never downloaded)",
                  "gpu": "none lent to this run" if not gpu else args.device_used},
        "machine": machine,
        "threads": threads,
        "loadavg_start": loadavg_start,
        "loadavg_end": loadavg_end,
        "wall_s": wall_s,
        "result": {"tasks": results},
    }
    return harness.finish_report(name, payload, [markdown(payload)], write=not args.no_write)


if __name__ == "__main__":
    main()
