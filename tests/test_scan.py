"""Encoder layers under ``nn.scan`` (``scan_layers=True``) and ``remat_policy``.

Scanned and per-layer models give equal outputs and gradients (dropout and LayerDrop
active with a fixed rng); checkpoints move between the per-layer and stacked layouts
bit-exactly; a HF checkpoint loads straight into a scanned model.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

import zoo
from zoo import parallel
from zoo.models.data2vec_audio import Data2VecAudioConfig
from zoo.models.data2vec_text import Data2VecTextConfig
from zoo.nn import scan
from zoo.pretrained import flatten, flatten_variables, unflatten

TOL = 1e-6
# Compile-bound tests: cheaper XLA CPU pipelines (3x, 6x faster to compile these models).
# Without the fusion emitters, two compilations of the audio feature encoder already differ
# by 1 ulp (2e-6 on values ~5) before the first layer: the audio comparisons keep them.
CHEAP_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
FAST_COMPILE = {**CHEAP_COMPILE, "xla_cpu_use_fusion_emitters": False}


def jit(f, options=FAST_COMPILE):
    return jax.jit(f, compiler_options=options)


TEXT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64)
AUDIO = dict(vocab_size=12, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
             conv_dim=(16, 24), conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=2,
             conv_pos_kernel_size=5, num_conv_pos_embedding_groups=2, layerdrop=0.3, mask_time_prob=0.0)
TEXT_LAYOUT = ("encoder/layer_{i}", "encoder/layers")
AUDIO_LAYOUT = ("encoder/layers_{i}", "encoder/layers")


def text_batch():
    rng = np.random.RandomState(0)
    ids = rng.randint(3, 99, (2, 9))
    mask = np.ones_like(ids)
    ids[1, -3:], mask[1, -3:] = 1, 0  # right padding
    labels = np.where(rng.rand(*ids.shape) < 0.5, ids, -100)
    return dict(input_ids=ids, attention_mask=mask, labels=labels)


def audio_batch():
    rng = np.random.RandomState(1)
    x = rng.randn(2, 1600).astype(np.float32)
    mask = np.ones((2, 1600), np.int32)
    x[1, 1100:], mask[1, 1100:] = 0.0, 0
    return dict(input_values=x, attention_mask=mask, labels=np.array([[1, 5, 7, 2], [3, 4, -100, -100]]))


CASES = {  # family -> (config, architecture, batch, per-layer and stacked prefixes)
    "text": (Data2VecTextConfig.from_dict(TEXT), "Data2VecTextForMaskedLM", text_batch, TEXT_LAYOUT),
    "audio": (Data2VecAudioConfig.from_dict(AUDIO), "Data2VecAudioForCTC", audio_batch, AUDIO_LAYOUT),
}


def random_params(model, seed=0) -> dict:
    """Parameters of ``model`` from its shapes alone (no init to compile)."""
    rng = np.random.RandomState(seed)
    return unflatten({p: ((1.0 if p.endswith("scale") else 0.0) + 0.1 * rng.randn(*shape)).astype(np.float32)
                      for p, shape in zoo.pretrained.param_shapes(model).items()})


def grad_fn(model, batch):
    """(gradients, outputs) of a loss in training mode, dropout (and LayerDrop) from a fixed
    key; the CTC loss is left out (it is not what is tested, and slow to compile), and so are
    the attentions (compared in the other tests)."""
    batch = {k: v for k, v in batch.items() if k != "labels" or "input_ids" in batch}

    def loss(params):
        out = model.apply({"params": params}, **batch, output_hidden_states=True, deterministic=False,
                          rngs={"dropout": jax.random.key(7)})
        return (out.loss if out.loss is not None else jnp.mean(jnp.square(out.logits))), out

    return jax.grad(loss, has_aux=True)


def max_abs_diff(a, b) -> float:
    diffs = jax.tree.map(lambda x, y: float(jnp.max(jnp.abs(x - y))), a, b)
    return max(jax.tree.leaves(diffs))


# (scan_layers, remat_policy) against the per-layer model without remat: every policy once,
# both layouts. Each is a model to compile (the test time); one jit per family.
VARIANTS = {"text": [(True, "full"), (False, "dots")], "audio": [(True, None), (True, "dots_with_no_batch_dims")]}


@functools.cache
def results(name: str):
    """(reference (gradients, outputs), {variant: (gradients, outputs)}) of one family."""
    config, arch, make_batch, layout = CASES[name]
    reference = zoo.build_model(config, arch)
    params, batch = random_params(reference), make_batch()
    stacked = unflatten(scan.stack_layers(flatten(params), *layout))
    models = {str(v): zoo.build_model(config, arch, scan_layers=v[0], remat_policy=v[1]) for v in VARIANTS[name]}
    for variant, model in models.items():
        if model.scan_layers:
            assert zoo.pretrained.param_shapes(model) == {k: v.shape for k, v in flatten(stacked).items()}

    def run(params, stacked):
        return grad_fn(reference, batch)(params), {
            v: grad_fn(m, batch)(stacked if m.scan_layers else params) for v, m in models.items()}

    return jit(run, FAST_COMPILE if name == "text" else CHEAP_COMPILE)(params, stacked)


@pytest.mark.parametrize("name,variant", [(n, v) for n, vs in VARIANTS.items() for v in vs],
                         ids=lambda x: x if isinstance(x, str) else f"{'scan' if x[0] else 'per_layer'}-{x[1]}")
def test_scanned_and_per_layer_give_equal_outputs_and_gradients(name, variant):
    config, _, _, layout = CASES[name]
    (ref_grads, ref_out), variants = results(name)
    grads, out = variants[str(variant)]
    assert len(out.hidden_states) == config.num_hidden_layers + 1
    assert max_abs_diff(out, ref_out) <= TOL
    flat_grads = scan.unstack_layers(flatten(grads), *layout)
    assert flat_grads.keys() == flatten(ref_grads).keys()
    assert max_abs_diff(flat_grads, flatten(ref_grads)) <= TOL


def test_decoder_cache_cross_attention_and_head_mask_under_scan():
    config = Data2VecTextConfig.from_dict(dict(TEXT, is_decoder=True, add_cross_attention=True))
    models = [zoo.build_model(config, "Data2VecTextForCausalLM", scan_layers=s) for s in (False, True)]
    params = random_params(models[0], 1)
    stacked = unflatten(scan.stack_layers(flatten(params)))
    rng = np.random.RandomState(2)
    ids = rng.randint(3, 99, (2, 5))
    kw = dict(encoder_hidden_states=rng.randn(2, 4, 32).astype(np.float32),
              encoder_attention_mask=np.array([[1, 1, 1, 1], [1, 1, 0, 0]]),
              head_mask=np.array([[1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.5, 1.0]]),
              output_hidden_states=True, output_attentions=True, use_cache=True)

    cache = models[0].init_cache(2, 8)  # holding 3 positions already: the 5 new ones go to 3..7
    cache = type(cache)(tuple(jnp.asarray(rng.randn(*k.shape), jnp.float32) for k in cache.keys),
                        tuple(jnp.asarray(rng.randn(*v.shape), jnp.float32) for v in cache.values),
                        jnp.asarray(3, jnp.int32))
    mask = np.array([[1] * 8, [0, 1, 1, 1, 1, 1, 1, 1]])

    @jit
    def decode(p, p_stacked):
        return [model.apply({"params": prm}, input_ids=ids, attention_mask=mask, past_key_values=cache, **kw)
                for model, prm in zip(models, (p, p_stacked))]

    per_layer, scanned = decode(params, stacked)
    assert len(scanned.past_key_values.keys) == 2 and len(scanned.cross_attentions) == 2
    assert int(scanned.past_key_values.length) == 8
    assert max_abs_diff(per_layer, scanned) <= TOL


def test_flat_layout_transforms():
    rng = np.random.RandomState(3)
    flat = {"emb/w": rng.randn(2, 3), "m/encoder/layer_1/a/kernel": rng.randn(4, 5),
            "m/encoder/layer_0/a/kernel": rng.randn(4, 5), "m/encoder/layer_0/b": rng.randn(5),
            "m/encoder/layer_1/b": rng.randn(5), "m/encoder/layer_norm/scale": rng.randn(5)}
    stacked = scan.stack_layers(flat)
    assert list(stacked) == ["emb/w", "m/encoder/layers/a/kernel", "m/encoder/layers/b", "m/encoder/layer_norm/scale"]
    assert stacked["m/encoder/layers/a/kernel"].shape == (2, 4, 5)
    assert scan.layout(stacked) == "stacked" and scan.layout(flat) == "per_layer" and scan.layout(["emb/w"]) is None
    back = scan.unstack_layers(stacked)
    assert back.keys() == flat.keys()
    assert all(np.array_equal(back[k], flat[k]) and back[k].dtype == flat[k].dtype for k in flat)
    with pytest.raises(ValueError, match="not 0..1"):
        scan.stack_layers({"encoder/layer_0/w": np.ones(2), "encoder/layer_2/w": np.ones(2)})
    with pytest.raises(ValueError, match="parameters of layer 0"):
        scan.stack_layers({"encoder/layer_0/w": np.ones(2), "encoder/layer_1/v": np.ones(2)})
    with pytest.raises(ValueError, match="both"):
        scan.layout(["encoder/layer_0/w", "encoder/layers/w"])
    with pytest.raises(ValueError, match="remat_policy"):
        zoo.pretrained.param_shapes(zoo.build_model(Data2VecTextConfig.from_dict(TEXT), remat_policy="some"))


def _assert_same(tree, reference):
    a, b = flatten_variables(tree), flatten_variables(reference)
    assert a.keys() == b.keys()
    for k in a:
        assert np.asarray(a[k]).dtype == np.asarray(b[k]).dtype and np.array_equal(a[k], b[k]), k


@pytest.mark.parametrize("name", sorted(CASES))
def test_checkpoint_round_trips_are_bit_exact(name, tmp_path):
    config, arch, _, layout = CASES[name]
    model = zoo.build_model(config, arch)
    scanned = zoo.build_model(config, arch, scan_layers=True)
    params = random_params(model)
    stacked = unflatten(scan.stack_layers(flatten(params), *layout))

    zoo.save_pretrained(tmp_path / "portable", scanned, stacked)  # default: per layer
    zoo.save_pretrained(tmp_path / "stacked", scanned, stacked, stacked=True)
    zoo.save_pretrained(tmp_path / "stacked_from_per_layer", model, params, stacked=True)
    files = {d: load_file(str(tmp_path / d / "flax_model.safetensors"))
             for d in ("portable", "stacked", "stacked_from_per_layer")}
    assert files["portable"].keys() == flatten(params).keys()
    assert scan.layout(files["stacked"], *layout) == "stacked"
    _assert_same(files["stacked"], files["stacked_from_per_layer"])
    for directory in ("portable", "stacked"):
        _assert_same(zoo.from_pretrained(tmp_path / directory, arch)[1], params)
        _assert_same(zoo.from_pretrained(tmp_path / directory, arch, scan_layers=True)[1], stacked)

    zoo.export_pytorch(tmp_path / "pt_scanned", scanned, stacked)
    zoo.export_pytorch(tmp_path / "pt", model, params)
    exported = load_file(str(tmp_path / "pt_scanned" / "model.safetensors"))
    _assert_same(exported, load_file(str(tmp_path / "pt" / "model.safetensors")))
    assert any(".layer.1." in k or ".layers.1." in k for k in exported)
    _assert_same(zoo.from_pretrained(tmp_path / "pt_scanned", arch, scan_layers=True)[1], stacked)

    # onto a mesh: stacked parameters get the "layers" axis, replicated
    mesh = parallel.make_mesh({"fsdp": len(jax.devices())})
    _, on_mesh = zoo.from_pretrained(tmp_path / "portable", arch, mesh=mesh, scan_layers=True)
    _assert_same(jax.device_get(on_mesh), stacked)
    specs = {k: v.sharding.spec for k, v in flatten(on_mesh).items() if "/layers/" in k}
    assert specs and all(spec[0] is None for spec in specs.values())


HF_ARCHITECTURES = {"text": "Data2VecTextForMaskedLM", "audio": "Data2VecAudioModel"}  # light to compile


@pytest.mark.parametrize("name", sorted(CASES))
def test_hf_checkpoint_into_scanned_model_matches_hf(name, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from hf_parity import assert_outputs_match, torch_inputs

    config, _, make_batch, _ = CASES[name]
    arch = HF_ARCHITECTURES[name]
    hf_config = getattr(transformers, type(config).__name__)(**config.to_dict(), attn_implementation="eager")
    torch.manual_seed(0)
    hf = getattr(transformers, arch)(hf_config).eval()
    hf.save_pretrained(tmp_path)
    model, params = zoo.from_pretrained(tmp_path, scan_layers=True, remat_policy="full")
    assert any("/layers/" in k for k in flatten(params))
    batch = make_batch()
    if name == "audio":
        del batch["labels"]
    with torch.no_grad():
        ref = hf(**torch_inputs(batch), output_hidden_states=True, output_attentions=True)
    got = jit(lambda p: model.apply({"params": p}, **batch, output_hidden_states=True,
                                    output_attentions=True))(params)
    assert_outputs_match(got, ref)
