"""Forward-pass speed of Data2VecAudio (base size): zoo (jax.jit) vs HF PyTorch eager and sdpa.

    python -m benchmarks.data2vec_audio_forward [--batch 1|8] [--seconds 4] [--repeats N]

One process, one set of random weights (``transformers.Data2VecAudioModel(config)`` with
the HF default config: conv feature encoder 7 x 512 channels, hidden 768, 12 layers,
12 heads, intermediate 3072, 5 positional conv layers of kernel 19 / 16 groups),
converted to zoo params through the family key table. Every implementation gets the
same random 16 kHz waveform (``--seconds`` long, unit variance). With ``--batch`` > 1
the rows have different lengths (row 0 full, the others 50-100 %, zero-padded) and an
``attention_mask`` is passed, as a padded batch from the feature extractor would be;
batch 1 passes no mask (``--mask always`` adds an all-ones one). Outputs
(``last_hidden_state``, all frames and unpadded frames only) are checked against HF
eager before anything is timed.

``--zoo-variants`` adds zoo runs in which parts of the model are swapped for local
re-implementations (same params, same inputs, same process), used to find where time
goes:

- ``im2col``: the feature-encoder convs as strided slices -> concat ``[B, F, k*C]`` -> one matmul;
- ``strided``: the feature-encoder convs as a free reshape ``[B, T/s, s*C]`` and
  ``ceil(k/s)`` shifted matmuls (no patch copy);
- ``im2col_first``: im2col for the 1-channel first conv only, XLA convs for the rest;
- ``pos_im2col`` / ``pos_taps``: the grouped positional conv as a grouped im2col einsum,
  or as a sum over the 19 taps of grouped einsums.

(The attention kernel and GELU are the zoo's own: ``benchmarks.data2vec_text_forward``
covers their variants.)

``--stages`` also times the model's stages alone in both frameworks (feature encoder,
positional conv stack, one transformer layer), for the zoo and for every variant
that touches the stage; ``--conv-layers`` times each feature-encoder conv alone (XLA
convolution, im2col, strided reshape, and a plain matmul on pre-built patches as the
one-GEMM ceiling, vs torch ``conv1d`` and torch matmul).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import sys

import numpy as np

from benchmarks import harness

DEFAULT_NAME = "data2vec_audio_forward"
SAMPLE_RATE = 16_000


# ------------------------------------------------------------------ zoo variants
def _conv_taps_im2col(x, kernel, stride):
    """VALID 1-D conv ``x [B, T, C]`` * ``kernel [k, C, O]`` as im2col: k strided slices,
    concatenated k-major into ``[B, F, k*C]``, then one matmul with ``[k*C, O]``."""
    import jax
    import jax.numpy as jnp

    k, c, o = kernel.shape
    frames = (x.shape[1] - k) // stride + 1
    cols = [jax.lax.slice_in_dim(x, j, j + stride * (frames - 1) + 1, stride, axis=1) for j in range(k)]
    patches = cols[0] if k == 1 else jnp.concatenate(cols, axis=-1)
    return patches @ kernel.reshape(k * c, o)


def _conv_strided_reshape(x, kernel, stride):
    """VALID 1-D conv as a free reshape ``[B, T, C] -> [B, T/s, s*C]`` (row f holds samples
    f*s .. f*s+s-1) and ceil(k/s) matmuls of shifted rows with kernel chunks of s taps."""
    import jax.numpy as jnp

    k, c, o = kernel.shape
    b, t, _ = x.shape
    frames = (t - k) // stride + 1
    rows = -(-t // stride)
    if rows * stride != t:
        x = jnp.pad(x, ((0, 0), (0, rows * stride - t), (0, 0)))
    xr = x.reshape(b, rows, stride * c)
    out = None
    for j in range(-(-k // stride)):
        taps = min(stride, k - j * stride)
        part = xr[:, j:j + frames, : taps * c] @ kernel[j * stride: j * stride + taps].reshape(taps * c, o)
        out = part if out is None else out + part
    return out


def _conv_first_im2col(x, kernel, stride):
    """im2col for the 1-channel first layer only (a ``[B, F, k] x [k, O]`` matmul), the
    XLA convolution (what ``nn.Conv`` emits) for the others."""
    import jax

    if kernel.shape[1] == 1:
        return _conv_taps_im2col(x, kernel, stride)
    return jax.lax.conv_general_dilated(x, kernel, (stride,), "VALID", dimension_numbers=("NWC", "WIO", "NWC"))


def _make_conv_layer(conv_fn):
    """A drop-in for ``zoo.nn.audio.ConvLayer`` computing its conv with ``conv_fn``
    (same param tree: ``conv/kernel [k, in, out]``, ``conv/bias``, ``layer_norm/...``)."""
    import flax.linen as nn
    import jax.numpy as jnp

    from zoo.nn import audio
    from zoo.nn.layers import LayerNorm, activation, ones_init, zeros_init

    class _ConvParams(nn.Module):
        in_dim: int
        out_dim: int
        kernel: int
        use_bias: bool
        param_dtype: object = jnp.float32

        @nn.compact
        def __call__(self):
            kernel = self.param("kernel", audio._conv_init(), (self.kernel, self.in_dim, self.out_dim),
                                self.param_dtype)
            bias = self.param("bias", zeros_init(("conv_out",)), (self.out_dim,), self.param_dtype) \
                if self.use_bias else None
            return kernel, bias

    class MatmulConvLayer(audio.ConvLayer):
        @nn.compact
        def __call__(self, x):
            kernel, bias = _ConvParams(self.in_dim, self.out_dim, self.kernel, self.use_bias, self.param_dtype,
                                       name="conv")()
            x = conv_fn(x.astype(self.dtype), kernel.astype(self.dtype), self.stride)
            if bias is not None:
                x = x + bias.astype(self.dtype)
            if self.norm == "layer":
                x = LayerNorm(1e-5, axis_name="conv_out", dtype=self.dtype, param_dtype=self.param_dtype,
                              name="layer_norm")(x)
            elif self.norm == "group":
                x = nn.GroupNorm(num_groups=self.out_dim, epsilon=1e-5, use_fast_variance=False, dtype=self.dtype,
                                 param_dtype=self.param_dtype, scale_init=ones_init(("conv_out",)),
                                 bias_init=zeros_init(("conv_out",)), name="layer_norm")(x)
            return activation(self.act)(x)

    return MatmulConvLayer


def _grouped_conv_im2col(x, kernel, groups, pad):
    """Same-padded grouped conv ``x [B, L, C]`` * flax kernel ``[k, C/g, O]`` as one grouped
    im2col einsum ``[B, L', g, k*C/g] x [g, k*C/g, O/g]``."""
    import jax
    import jax.numpy as jnp

    k, cg, o = kernel.shape
    b, length, c = x.shape
    og = o // groups
    xp = jnp.pad(x, ((0, 0), (pad, pad), (0, 0)))
    out_len = length + 2 * pad - k + 1
    taps = jnp.stack([jax.lax.slice_in_dim(xp, j, j + out_len, axis=1) for j in range(k)], axis=2)  # [B,L,k,C]
    taps = taps.reshape(b, out_len, k, groups, cg).transpose(0, 1, 3, 2, 4).reshape(b, out_len, groups, k * cg)
    w = kernel.reshape(k, cg, groups, og).transpose(2, 0, 1, 3).reshape(groups, k * cg, og)
    return jnp.einsum("blgi,gio->blgo", taps, w).reshape(b, out_len, o)


def _grouped_conv_taps(x, kernel, groups, pad):
    """Same-padded grouped conv as the sum over the k taps of ``[B, L, g, C/g] x [g, C/g, O/g]``."""
    import jax
    import jax.numpy as jnp

    k, cg, o = kernel.shape
    b, length, c = x.shape
    og = o // groups
    xp = jnp.pad(x, ((0, 0), (pad, pad), (0, 0))).reshape(b, length + 2 * pad, groups, cg)
    out_len = length + 2 * pad - k + 1
    w = kernel.reshape(k, cg, groups, og).transpose(0, 2, 1, 3)  # [k, g, C/g, O/g]
    out = None
    for j in range(k):
        part = jnp.einsum("blgi,gio->blgo", jax.lax.slice_in_dim(xp, j, j + out_len, axis=1), w[j])
        out = part if out is None else out + part
    return out.reshape(b, out_len, o)


def _make_pos_conv_layer(conv_fn):
    """A drop-in for ``zoo.nn.audio.PositionalConvLayer`` (params ``conv/kernel``, ``conv/bias``)."""
    import flax.linen as nn
    import jax.numpy as jnp

    from zoo.nn import audio
    from zoo.nn.layers import activation, zeros_init

    class _GroupedConvParams(nn.Module):
        features: int
        kernel: int
        in_per_group: int
        param_dtype: object = jnp.float32

        @nn.compact
        def __call__(self):
            kernel = self.param("kernel", audio._conv_init(), (self.kernel, self.in_per_group, self.features),
                                self.param_dtype)
            return kernel, self.param("bias", zeros_init(("conv_out",)), (self.features,), self.param_dtype)

    class MatmulPositionalConvLayer(audio.PositionalConvLayer):
        @nn.compact
        def __call__(self, x):
            cfg = self.config
            k, groups = cfg.conv_pos_kernel_size, cfg.num_conv_pos_embedding_groups
            kernel, bias = _GroupedConvParams(cfg.hidden_size, k, x.shape[-1] // groups, self.param_dtype,
                                              name="conv")()
            x = conv_fn(x.astype(self.dtype), kernel.astype(self.dtype), groups, k // 2) + bias.astype(self.dtype)
            if k % 2 == 0:
                x = x[:, :-1]
            x = nn.LayerNorm(epsilon=1e-5, use_scale=False, use_bias=False, use_fast_variance=False,
                             dtype=self.dtype)(x)
            return activation(cfg.feat_extract_activation)(x)

    return MatmulPositionalConvLayer


@contextlib.contextmanager
def _patched(attr, factory):
    """Swap ``zoo.nn.audio.<attr>`` while a variant is traced (lowered)."""
    from zoo.nn import audio

    saved = getattr(audio, attr)
    setattr(audio, attr, factory())
    try:
        yield
    finally:
        setattr(audio, attr, saved)


def _variants():
    return {
        # name -> (attention kernel or None, context manager active while tracing or None,
        #          stage it touches: feature_encoder / pos_conv / layer, None for every stage)
        "im2col": (None, functools.partial(_patched, "ConvLayer",
                                           lambda: _make_conv_layer(_conv_taps_im2col)), "feature_encoder"),
        "strided": (None, functools.partial(_patched, "ConvLayer",
                                            lambda: _make_conv_layer(_conv_strided_reshape)), "feature_encoder"),
        "im2col_first": (None, functools.partial(_patched, "ConvLayer",
                                                 lambda: _make_conv_layer(_conv_first_im2col)), "feature_encoder"),
        "pos_im2col": (None, functools.partial(_patched, "PositionalConvLayer",
                                               lambda: _make_pos_conv_layer(_grouped_conv_im2col)), "pos_conv"),
        "pos_taps": (None, functools.partial(_patched, "PositionalConvLayer",
                                             lambda: _make_pos_conv_layer(_grouped_conv_taps)), "pos_conv"),
    }


VARIANT_NAMES = ("im2col", "strided", "im2col_first", "pos_im2col", "pos_taps")


# ----------------------------------------------------------------------- setup
def build_hf_models(device: str):
    import torch
    import transformers

    config = transformers.Data2VecAudioConfig()  # HF defaults = base size
    torch.manual_seed(0)
    eager = transformers.Data2VecAudioModel._from_config(copy.deepcopy(config), attn_implementation="eager")
    sdpa = transformers.Data2VecAudioModel._from_config(copy.deepcopy(config), attn_implementation="sdpa")
    sdpa.load_state_dict(eager.state_dict())
    models = {}
    for name, m in (("hf_eager", eager), ("hf_sdpa", sdpa)):
        m.eval()
        if device == "gpu":
            m = m.cuda()
        assert m.config._attn_implementation == name.split("_")[1], m.config._attn_implementation
        models[name] = m
    return config, models


def convert_to_zoo(hf_model, **module_kwargs):
    """(module, params) equal to ``hf_model`` (the logic of tests/hf_parity.to_zoo)."""
    import jax.numpy as jnp

    from converters.mapping import torch_to_flax
    from zoo.pretrained import build_model, param_shapes, unflatten
    from zoo.registry import get_family

    family = get_family(hf_model.config.model_type)
    config = family.config_class.from_dict(hf_model.config.to_dict())
    module = build_model(config, type(hf_model).__name__, **module_kwargs)
    state = {k: v.detach().float().cpu().numpy() for k, v in hf_model.state_dict().items()}
    flat, report = torch_to_flax(state.keys(), state.__getitem__, family.key_table, param_shapes(module))
    if report.unused or report.missing:
        raise RuntimeError(report.summary())
    return module, unflatten({k: jnp.asarray(v) for k, v in flat.items()})


def make_inputs(batch: int, samples: int, with_mask: bool, seed: int = 0):
    """Unit-variance noise ``[B, T]``; rows after the first keep 50-100 % of the samples
    (zero beyond), with a 1/0 ``attention_mask`` (None when ``with_mask`` is False)."""
    rng = np.random.default_rng(seed)
    audio = rng.standard_normal((batch, samples)).astype(np.float32)
    lengths = rng.integers(samples // 2, samples + 1, size=batch)
    lengths[0] = samples
    if not with_mask:
        lengths[:] = samples
    mask = (np.arange(samples)[None, :] < lengths[:, None]).astype(np.int64)
    audio = np.where(mask == 1, audio, 0.0).astype(np.float32)
    return audio, (mask if with_mask else None), lengths


def frame_lengths(config, lengths):
    for k, s in zip(config.conv_kernel, config.conv_stride):
        lengths = (lengths - k) // s + 1
    return lengths


def _max_diff(a, b, where=None) -> float:
    d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    if where is not None:
        d = d[where]
    return float(d.max()) if d.size else 0.0


# --------------------------------------------------------------------- stages
def stage_benchmarks(zoo_config, params, hf_model, audio, variants, all_variants, repeats, warmup, device):
    """Each stage alone (batch shapes of the run), zoo jit (plus the variants touching it) vs
    HF torch (sdpa model), interleaved; outputs compared (max abs diff) before timing."""
    import jax
    import jax.numpy as jnp
    import torch

    from zoo.nn import audio as zaudio

    batch = audio.shape[0]
    frames = int(frame_lengths(zoo_config, np.array([audio.shape[1]]))[0])
    rng = np.random.default_rng(2)
    hidden = rng.standard_normal((batch, frames, zoo_config.hidden_size)).astype(np.float32)
    dev = "cuda" if device == "gpu" else "cpu"
    stages = {
        "feature_encoder": dict(
            zoo=lambda: zaudio.FeatureEncoder(zoo_config),
            params=params["feature_extractor"], x=audio,
            hf=lambda t: hf_model.feature_extractor(t).transpose(1, 2),
            desc=f"conv feature encoder [{batch}, {audio.shape[1]}] -> [{batch}, {frames}, 512]"),
        "pos_conv": dict(
            zoo=lambda: zaudio.PositionalConvStack(zoo_config),
            params=params["encoder"]["pos_conv_embed"], x=hidden,
            hf=lambda t: hf_model.encoder.pos_conv_embed(t),
            desc=f"positional conv stack (5 x grouped conv k19 g16) on [{batch}, {frames}, 768]"),
        "layer": dict(
            zoo=lambda attention_fn=None: (zaudio.EncoderLayer(zoo_config) if attention_fn is None
                                           else zaudio.EncoderLayer(zoo_config, attention_fn)),
            params=params["encoder"]["layers_0"], x=hidden,
            hf=lambda t: hf_model.encoder.layers[0](t),
            desc=f"one transformer layer (of 12) on [{batch}, {frames}, 768], no mask"),
    }
    rows = []
    sync = harness.torch_sync(device)
    for stage, spec in stages.items():
        names = ["zoo"] + [v for v in variants
                           if any(all_variants[p][2] in (stage, None) for p in v.split("+"))]
        calls, outs, compile_s = {}, {}, {}
        jx = jax.device_put(spec["x"])
        for name in names:
            parts = [] if name == "zoo" else name.split("+")
            attention_fn = next((all_variants[p][0] for p in parts if all_variants[p][0] is not None), None)
            mod = spec["zoo"](attention_fn) if stage == "layer" else spec["zoo"]()
            with contextlib.ExitStack() as stack:
                for p in parts:
                    if all_variants[p][1] is not None:
                        stack.enter_context(all_variants[p][1]())
                fn = (lambda m: (lambda p, x: m.apply({"params": p}, x, None)[0]))(mod) if stage == "layer" \
                    else (lambda m: (lambda p, x: m.apply({"params": p}, x)))(mod)
                compiled, _, c = harness.jax_compile(fn, spec["params"], jx)
            compile_s[name] = c
            calls[name] = functools.partial(compiled, spec["params"], jx)
            outs[name] = np.asarray(calls[name]())
        tx = torch.from_numpy(spec["x"]).to(dev)
        calls["torch"] = harness.torch_callable(functools.partial(spec["hf"], tx))
        outs["torch"] = calls["torch"]().float().cpu().numpy()
        timings = harness.time_interleaved(calls, repeats=repeats, warmup=warmup,
                                           syncs={"torch": sync})
        by = {t.name: t for t in timings}
        for name in names:
            rows.append({"stage": stage, "desc": spec["desc"], "impl": name,
                         "jax_median_ms": by[name].median_ms, "torch_median_ms": by["torch"].median_ms,
                         "speedup": by["torch"].median_ms / by[name].median_ms,
                         "compile_s": compile_s[name],
                         "max_abs_diff_vs_torch": _max_diff(outs[name], outs["torch"])})
            print(f"  stage {stage} {name}: jax {by[name].median_ms:.1f} ms, torch {by['torch'].median_ms:.1f} ms "
                  f"(torch / jax {rows[-1]['speedup']:.2f}x), diff {rows[-1]['max_abs_diff_vs_torch']:.1e}",
                  flush=True)
    return rows


def conv_layer_benchmarks(config, batch, samples, repeats, warmup, device):
    """Each feature-encoder conv alone (no norm / activation), random data of the run's
    shapes: XLA convolution (what ``nn.Conv`` emits), im2col, strided reshape, and a plain
    matmul on pre-built im2col patches (the FLOP-rate ceiling of the conv as one GEMM), vs
    torch ``conv1d`` and torch matmul on the same patches; interleaved."""
    import jax
    import jax.numpy as jnp
    import torch

    rng = np.random.default_rng(3)
    dims = [1] + list(config.conv_dim)
    length = samples
    rows = []
    sync = harness.torch_sync(device)
    dev = "cuda" if device == "gpu" else "cpu"
    for i, (k, s) in enumerate(zip(config.conv_kernel, config.conv_stride)):
        c, o = dims[i], dims[i + 1]
        frames = (length - k) // s + 1
        x = rng.standard_normal((batch, length, c)).astype(np.float32)
        w = (rng.standard_normal((k, c, o)) / np.sqrt(k * c)).astype(np.float32)
        patches = np.concatenate([x[:, j: j + s * (frames - 1) + 1: s] for j in range(k)], -1)
        patches = patches.reshape(batch * frames, k * c)
        jx, jw, jp = jax.device_put(x), jax.device_put(w), jax.device_put(patches)
        fns = {
            "xla_conv": (lambda x, w, s=s: jax.lax.conv_general_dilated(
                x, w, (s,), "VALID", dimension_numbers=("NWC", "WIO", "NWC")), (jx, jw)),
            "im2col": (functools.partial(_conv_taps_im2col, stride=s), (jx, jw)),
            "strided": (functools.partial(_conv_strided_reshape, stride=s), (jx, jw)),
            "jax_matmul_on_patches": (lambda p, w: p @ w.reshape(-1, w.shape[-1]), (jp, jw)),
        }
        calls, outs = {}, {}
        for name, (fn, a) in fns.items():
            compiled, _, _ = harness.jax_compile(fn, *a)
            calls[name] = functools.partial(compiled, *a)
            outs[name] = np.asarray(calls[name]()).reshape(batch, frames, o)
        tx = torch.from_numpy(x).transpose(1, 2).contiguous().to(dev)
        tw = torch.from_numpy(w).permute(2, 1, 0).contiguous().to(dev)
        tp, tw2 = torch.from_numpy(patches).to(dev), torch.from_numpy(w.reshape(k * c, o)).to(dev)
        calls["torch_conv1d"] = harness.torch_callable(
            lambda tx=tx, tw=tw, s=s: torch.nn.functional.conv1d(tx, tw, stride=s))
        calls["torch_matmul_on_patches"] = harness.torch_callable(lambda tp=tp, tw2=tw2: tp @ tw2)
        ref = calls["torch_conv1d"]().transpose(1, 2).float().cpu().numpy()
        timings = harness.time_interleaved(calls, repeats=repeats, warmup=warmup,
                                           syncs={"torch_conv1d": sync, "torch_matmul_on_patches": sync})
        gflop = 2 * batch * frames * k * c * o / 1e9
        row = {"layer": i, "kernel": k, "stride": s, "in": [batch, length, c], "out": [batch, frames, o],
               "gflop": gflop, "median_ms": {t.name: t.median_ms for t in timings},
               "max_abs_diff_vs_torch_conv1d": {n: _max_diff(v, ref) for n, v in outs.items()}}
        rows.append(row)
        print(f"  conv {i} k{k} s{s} {c}->{o} [{batch},{length}]->{frames}: " + ", ".join(
            f"{t.name} {t.median_ms:.1f} ms" for t in timings), flush=True)
        length = frames
    return rows


def conv_layer_table(rows) -> str:
    names = list(rows[0]["median_ms"])
    lines = ["| conv | shape | GFLOP | " + " | ".join(f"{n} ms" for n in names) + " | xla_conv GFLOP/s |",
             "|---|---|---:|" + "---:|" * len(names) + "---:|"]
    for r in rows:
        m = r["median_ms"]
        lines.append(f"| {r['layer']} (k{r['kernel']} s{r['stride']}) | {r['in'][2]}x{r['in'][1]} -> "
                     f"{r['out'][2]}x{r['out'][1]} | {r['gflop']:.2f} | "
                     + " | ".join(f"{m[n]:.1f}" for n in names) + f" | {r['gflop'] / m['xla_conv'] * 1e3:.0f} |")
    return "\n".join(lines)


def stage_table(rows) -> str:
    lines = ["| stage | zoo implementation | jax median ms | torch median ms | torch / jax | max abs diff |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['desc']} | {r['impl']} | {r['jax_median_ms']:.1f} | {r['torch_median_ms']:.1f} | "
                     f"{r['speedup']:.2f}x | {r['max_abs_diff_vs_torch']:.1e} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------- main
def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=4.0, help="audio length per row at 16 kHz")
    parser.add_argument("--mask", choices=("auto", "always", "never"), default="auto",
                        help="pass an attention_mask: auto = only for batch > 1 (rows of different lengths)")
    parser.add_argument("--impls", default="zoo,hf_eager,hf_sdpa",
                        help="comma list of zoo, hf_eager, hf_sdpa (zoo is always the reference)")
    parser.add_argument("--zoo-variants", default="",
                        help=f"comma list of extra zoo variants, each one name or several joined by '+': "
                             f"{', '.join(VARIANT_NAMES)}")
    parser.add_argument("--timing", choices=("interleaved", "sequential"), default="interleaved")
    parser.add_argument("--stages", action="store_true",
                        help="also time feature encoder / positional conv / one layer alone in both frameworks")
    parser.add_argument("--conv-layers", action="store_true",
                        help="also time each feature-encoder conv alone (XLA conv / im2col / matmul vs torch)")
    harness.add_common_args(parser, repeats=10, warmup=2)
    args = parser.parse_args(argv)

    threads = harness.setup_threads()
    import jax
    import torch

    device = harness.select_device(args.device)
    impls = [s for s in args.impls.split(",") if s]
    variants = [s for s in args.zoo_variants.split(",") if s]
    unknown = [p for v in variants for p in v.split("+") if p not in VARIANT_NAMES] + \
              [i for i in impls if i not in ("zoo", "hf_eager", "hf_sdpa")]
    if unknown:
        parser.error(f"unknown implementation(s) {unknown}")
    if "zoo" not in impls:
        impls.insert(0, "zoo")
    all_variants = _variants()
    samples = int(round(args.seconds * SAMPLE_RATE))
    with_mask = args.mask == "always" or (args.mask == "auto" and args.batch > 1)

    print(f"device={device} batch={args.batch} samples={samples} mask={with_mask} threads={threads}", flush=True)
    hf_config, hf_models = build_hf_models(device)
    audio, attention_mask, lengths = make_inputs(args.batch, samples, with_mask)
    n_frames = int(frame_lengths(hf_config, np.array([samples]))[0])
    valid_frames = np.arange(n_frames)[None, :] < frame_lengths(hf_config, lengths)[:, None]

    # --- zoo: same weights, jitted forward, compiled ahead of time
    module, params = convert_to_zoo(hf_models["hf_eager"])
    j_audio = jax.device_put(audio)
    j_mask = None if attention_mask is None else jax.device_put(attention_mask.astype(np.int32))

    def zoo_forward(module, params, x, mask):
        return module.apply({"params": params}, input_values=x, attention_mask=mask).last_hidden_state

    zoo_fns = {"zoo": (module, [])}
    for v in variants:
        mod, contexts = module, []
        for part in v.split("+"):
            attention_fn, context, _ = all_variants[part]
            if attention_fn is not None:
                mod = mod.clone(attention_fn=attention_fn)
            if context is not None:
                contexts.append(context)
        zoo_fns[f"zoo[{v}]"] = (mod, contexts)

    outputs, compiled_fns = {}, {}
    for name, (mod, contexts) in zoo_fns.items():
        with contextlib.ExitStack() as stack:
            for context in contexts:
                stack.enter_context(context())
            compiled, lower_s, compile_s = harness.jax_compile(functools.partial(zoo_forward, mod), params,
                                                               j_audio, j_mask)
        compiled_fns[name] = (compiled, lower_s, compile_s)
        outputs[name] = np.asarray(compiled(params, j_audio, j_mask), np.float32)
        print(f"{name}: lower {lower_s:.2f} s, compile {compile_s:.2f} s", flush=True)

    t_audio = torch.from_numpy(audio)
    t_mask = None if attention_mask is None else torch.from_numpy(attention_mask)
    if device == "gpu":
        t_audio = t_audio.cuda()
        t_mask = None if t_mask is None else t_mask.cuda()
    torch_calls = {}
    for name in ("hf_eager", "hf_sdpa"):
        if name not in impls:
            continue
        call = harness.torch_callable(functools.partial(hf_models[name], input_values=t_audio,
                                                        attention_mask=t_mask))
        torch_calls[name] = call
        outputs[name] = call().last_hidden_state.float().cpu().numpy()

    # --- agreement (before timing)
    checks = {}
    ref = outputs.get("hf_eager")
    for name, last in outputs.items():
        if ref is None or name == "hf_eager":
            continue
        checks[f"{name} vs hf_eager"] = {
            "last_hidden_state_max_abs_diff": _max_diff(last, ref),
            "last_hidden_state_max_abs_diff_unpadded": _max_diff(last, ref, valid_frames),
        }
        if name.startswith("zoo["):  # a variant against the zoo as it is
            checks[f"{name} vs zoo"] = {
                "last_hidden_state_max_abs_diff": _max_diff(last, outputs["zoo"]),
                "last_hidden_state_max_abs_diff_unpadded": _max_diff(last, outputs["zoo"], valid_frames),
            }
    for k, v in checks.items():
        print(f"check {k}: " + ", ".join(f"{a}={b:.2e}" for a, b in v.items()), flush=True)

    # --- timing
    calls = {name: functools.partial(compiled, params, j_audio, j_mask)
             for name, (compiled, _, _) in compiled_fns.items()}
    calls.update(torch_calls)
    syncs = {name: harness.torch_sync(device) for name in torch_calls}
    extra = {name: {"compile_s": c, "lower_s": lo} for name, (_, lo, c) in compiled_fns.items()}
    quiet = harness.wait_for_quiet(timeout_s=args.quiet_wait) if args.quiet_wait > 0 else None
    with harness.LoadMonitor() as monitor:
        if args.timing == "interleaved":
            timings = harness.time_interleaved(calls, repeats=args.repeats, warmup=args.warmup, syncs=syncs,
                                               timing_kwargs=extra)
        else:
            timings = [harness.time_callable(call, name=name, repeats=args.repeats, warmup=args.warmup,
                                             sync=syncs.get(name, harness.block), **extra.get(name, {}))
                       for name, call in calls.items()]
    load = dict(monitor.result, quiet_wait=quiet)
    print(harness.load_note(load), flush=True)
    for t in timings:
        print(f"{t.name}: median {t.median_ms:.1f} ms (min {t.min_ms:.1f}, IQR {t.iqr_ms:.1f})", flush=True)

    stages, stages_load = None, None
    if args.stages:
        zoo_config = module.config
        with harness.LoadMonitor() as monitor:
            stages = stage_benchmarks(zoo_config, params, hf_models.get("hf_sdpa", hf_models["hf_eager"]), audio,
                                      variants, all_variants, args.repeats, args.warmup, device)
        stages_load = monitor.result

    convs, convs_load = None, None
    if args.conv_layers:
        with harness.LoadMonitor() as monitor:
            convs = conv_layer_benchmarks(module.config, args.batch, samples, args.repeats, args.warmup, device)
        convs_load = monitor.result

    machine = harness.machine_info(device)
    by_name = {t.name: t for t in timings}
    ratios = {f"{name} / zoo": by_name[name].median_ms / by_name["zoo"].median_ms
              for name in by_name if name != "zoo"}
    command = "python -m benchmarks.data2vec_audio_forward " + " ".join(argv if argv is not None else sys.argv[1:])
    payload = {
        "benchmark": DEFAULT_NAME,
        "command": command.strip(),
        "setup": {"batch": args.batch, "seconds": args.seconds, "samples": samples, "frames": n_frames,
                  "attention_mask": with_mask, "row_lengths_samples": lengths.tolist(),
                  "row_lengths_frames": frame_lengths(hf_config, lengths).tolist(), "device": device,
                  "dtype": "float32", "timing": args.timing, "repeats": args.repeats, "warmup": args.warmup,
                  "model": "Data2VecAudioModel base (HF default config, random weights)"},
        "machine": machine,
        "threads": threads,
        "timings": timings,
        "speedup_of_zoo": ratios,
        "checks": checks,
        "load": load,
        "stages": stages,
        "stages_load": stages_load,
        "conv_layers": convs,
        "conv_layers_load": convs_load,
    }
    mask_note = (f"attention_mask on, row lengths {lengths.tolist()} samples "
                 f"({frame_lengths(hf_config, lengths).tolist()} frames)" if with_mask else "no attention_mask")
    md = [f"### Data2VecAudio base forward, batch {args.batch} x {args.seconds:g} s "
          f"({samples} samples -> {n_frames} frames), float32, {device}", "",
          f"`{payload['command']}`", "",
          harness.comparison_table(timings, "zoo"), "",
          (f"{args.repeats} timed runs each after {args.warmup} warm-up runs, interleaved "
           "(round-robin over the implementations)" if args.timing == "interleaved" else
           f"{args.repeats} timed runs each after {args.warmup} warm-up runs, one implementation after the other")
          + f"; {mask_note}.", "",
          "speedup = implementation median / zoo median (> 1: zoo faster). "
          "compile s = XLA compilation (tracing + lowering adds "
          + ", ".join(f"{t.lower_s:.2f} s" for t in timings if t.lower_s is not None) + ").", ""]
    if checks:
        md += ["| outputs | last_hidden_state max abs diff | (unpadded frames) |", "|---|---:|---:|"]
        md += [f"| {k} | {v['last_hidden_state_max_abs_diff']:.2e} | "
               f"{v['last_hidden_state_max_abs_diff_unpadded']:.2e} |" for k, v in checks.items()]
        md.append("")
    if stages:
        md += ["Stages alone (jit vs HF torch modules of the sdpa model, same threads, interleaved):", "",
               stage_table(stages), "", harness.load_note(stages_load) or "", ""]
    if convs:
        md += ["Feature-encoder convs alone (no norm / activation; median ms, interleaved, batch shapes of the run):",
               "", conv_layer_table(convs), "", harness.load_note(convs_load) or "", ""]
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
