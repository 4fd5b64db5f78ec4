"""Encoder layers under ``nn.scan`` (``scan_layers=True``) and ``remat_policy``.

Scanned and per-layer models give equal outputs and gradients (dropout, LayerDrop,
drop-path and BigBird's random blocks active with a fixed rng); checkpoints move between the
per-layer and stacked layouts bit-exactly; a HF checkpoint loads straight into a scanned
model and exports back bit-exactly. Families: Data2Vec text / audio / vision, SEW-D (with
DeBERTa's conv branch: layer 0 outside the stack) and BigBird.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

import zoo
from zoo import parallel, train
from zoo.models.big_bird import BigBirdConfig
from zoo.models.data2vec_audio import Data2VecAudioConfig
from zoo.models.data2vec_text import Data2VecTextConfig
from zoo.models.data2vec_vision import Data2VecVisionConfig
from zoo.models.sew_d import SEWDConfig
from zoo.nn import scan
from zoo.tree import flatten, flatten_variables, unflatten

TOL = 1e-6
TOL_BLOCK_SPARSE = 1e-5  # two compilations of the block-sparse kernel: its gathers fuse differently
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
VISION = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37, image_size=16,
              patch_size=4, use_relative_position_bias=True, use_shared_relative_position_bias=True,
              drop_path_rate=0.5, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, num_labels=3,
              out_indices=[1, 2, 3, 4], auxiliary_channels=16)
SEW_D = dict(vocab_size=12, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
             conv_dim=(32,), conv_stride=(5,), conv_kernel=(10,), num_conv_pos_embeddings=2,
             num_conv_pos_embedding_groups=2, max_position_embeddings=16, position_buckets=8, mask_time_prob=0.0,
             conv_kernel_size=3)  # DeBERTa's conv branch after layer 0: layer 0 per layer, layer 1 stacked
BIG_BIRD = dict(TEXT, attention_type="original_full", block_size=2, num_random_blocks=1)
TEXT_LAYOUT = ("encoder/layer_{i}", "encoder/layers")
AUDIO_LAYOUT = ("encoder/layers_{i}", "encoder/layers")
SEW_D_LAYOUT = ("encoder/layer_{i}", "encoder/layers", 1)


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


def image_batch():
    return dict(pixel_values=np.random.RandomState(2).randn(2, 3, 16, 16).astype(np.float32))


CASES = {  # family -> (config, architecture, batch, per-layer and stacked prefixes[, first stacked layer])
    "text": (Data2VecTextConfig.from_dict(TEXT), "Data2VecTextForMaskedLM", text_batch, TEXT_LAYOUT),
    "audio": (Data2VecAudioConfig.from_dict(AUDIO), "Data2VecAudioForCTC", audio_batch, AUDIO_LAYOUT),
    "vision": (Data2VecVisionConfig.from_dict(VISION), "Data2VecVisionForImageClassification", image_batch,
               TEXT_LAYOUT),
    "sew_d": (SEWDConfig.from_dict(SEW_D), "SEWDForCTC", audio_batch, SEW_D_LAYOUT),
    "big_bird": (BigBirdConfig.from_dict(BIG_BIRD), "BigBirdForMaskedLM", text_batch, TEXT_LAYOUT),
}


def random_params(model, seed=0) -> dict:
    """Parameters of ``model`` from its shapes alone (no init to compile)."""
    rng = np.random.RandomState(seed)
    return unflatten({p: ((1.0 if p.endswith("scale") else 0.0) + 0.1 * rng.randn(*shape)).astype(np.float32)
                      for p, shape in zoo.initialization.param_shapes(model).items()})


RNGS = ("dropout", "drop_path", "random_blocks")


def grad_fn(model, batch, output_attentions=False):
    """(gradients, outputs) of a loss in training mode, dropout (LayerDrop, drop-path, random
    blocks) from fixed keys; the CTC loss is left out (it is not what is tested, and slow to
    compile), and so are the attentions unless asked for (else compared in the other tests)."""
    batch = {k: v for k, v in batch.items() if k != "labels" or "input_ids" in batch}

    def loss(params):
        out = model.apply({"params": params}, **batch, output_hidden_states=True, deterministic=False,
                          output_attentions=output_attentions,
                          rngs={name: jax.random.key(7 + i) for i, name in enumerate(RNGS)})
        return (out.loss if out.loss is not None else jnp.mean(jnp.square(out.logits))), out

    return jax.grad(loss, has_aux=True)


def max_abs_diff(a, b) -> float:
    diffs = jax.tree.map(lambda x, y: float(jnp.max(jnp.abs(x - y))), a, b)
    return max(jax.tree.leaves(diffs))


# (scan_layers, remat_policy) against the per-layer model without remat: every policy once,
# both layouts. Each is a model to compile (the test time); one jit per family.
VARIANTS = {"text": [(True, "full"), (False, "dots")], "audio": [(True, None), (True, "dots_with_no_batch_dims")],
            "vision": [(True, "dots")], "sew_d": [(True, "full")], "big_bird": [(True, "dots_with_no_batch_dims")]}
WITH_ATTENTIONS = {"vision", "sew_d", "big_bird"}  # their attentions are compared here too
# the conv feature encoder's backward pass is no part of the layers (and slow to compile)
MODEL_KWARGS = {"sew_d": dict(freeze_feature_encoder=True)}


@functools.cache
def results(name: str):
    """(reference (gradients, outputs), {variant: (gradients, outputs)}) of one family."""
    config, arch, make_batch, layout = CASES[name]
    kwargs = MODEL_KWARGS.get(name, {})
    reference = zoo.build_model(config, arch, **kwargs)
    params, batch = random_params(reference), make_batch()
    stacked = unflatten(scan.stack_layers(flatten(params), *layout))
    models = {str(v): zoo.build_model(config, arch, scan_layers=v[0], remat_policy=v[1], **kwargs)
              for v in VARIANTS[name]}
    for variant, model in models.items():
        if model.scan_layers:
            assert zoo.initialization.param_shapes(model) == {k: v.shape for k, v in flatten(stacked).items()}

    attentions = name in WITH_ATTENTIONS

    def run(params, stacked):
        return grad_fn(reference, batch, attentions)(params), {
            v: grad_fn(m, batch, attentions)(stacked if m.scan_layers else params) for v, m in models.items()}

    return jit(run, CHEAP_COMPILE if name in ("audio", "sew_d") else FAST_COMPILE)(params, stacked)


@pytest.mark.parametrize("name,variant", [(n, v) for n, vs in VARIANTS.items() for v in vs],
                         ids=lambda x: x if isinstance(x, str) else f"{'scan' if x[0] else 'per_layer'}-{x[1]}")
def test_scanned_and_per_layer_give_equal_outputs_and_gradients(name, variant):
    config, _, _, layout = CASES[name]
    (ref_grads, ref_out), variants = results(name)
    grads, out = variants[str(variant)]
    assert len(out.hidden_states) == config.num_hidden_layers + 1
    if name in WITH_ATTENTIONS:
        assert len(out.attentions) == config.num_hidden_layers
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
        zoo.initialization.param_shapes(zoo.build_model(Data2VecTextConfig.from_dict(TEXT), remat_policy="some"))


def _assert_same(tree, reference):
    a, b = flatten(tree), flatten(reference)
    assert a.keys() == b.keys()
    for k in a:
        assert np.asarray(a[k]).dtype == np.asarray(b[k]).dtype and np.array_equal(a[k], b[k]), k


# vision and big_bird: the layouts of text (their HF round trip is in the next test)
@pytest.mark.parametrize("name", ["audio", "sew_d", "text"])
def test_checkpoint_round_trips_are_bit_exact(name, tmp_path):
    config, arch, _, layout = CASES[name]
    model = zoo.build_model(config, arch)
    scanned = zoo.build_model(config, arch, scan_layers=True)
    params = {"params": random_params(model)}
    stacked = {"params": unflatten(scan.stack_layers(flatten(params["params"]), *layout))}

    zoo.save_pretrained(tmp_path / "portable", scanned, stacked)  # default: per layer
    zoo.save_pretrained(tmp_path / "stacked", scanned, stacked, stacked=True)
    zoo.save_pretrained(tmp_path / "stacked_from_per_layer", model, params, stacked=True)
    files = {d: load_file(str(tmp_path / d / "flax_model.safetensors"))
             for d in ("portable", "stacked", "stacked_from_per_layer")}
    assert files["portable"].keys() == flatten(params["params"]).keys()
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


HF_ARCHITECTURES = {  # light to compile, but the segmentation head (out_indices from the stacked hidden states)
    "text": "Data2VecTextForMaskedLM", "audio": "Data2VecAudioModel",
    "vision": "Data2VecVisionForSemanticSegmentation", "big_bird": "BigBirdForMaskedLM",
}


@pytest.mark.parametrize("name", sorted(HF_ARCHITECTURES))
def test_hf_checkpoint_into_scanned_model_matches_hf(name, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from hf_parity import assert_outputs_match, torch_inputs

    config, _, make_batch, _ = CASES[name]
    arch = HF_ARCHITECTURES[name]
    hf_config = getattr(transformers, type(config).__name__)(**config.to_dict(), attn_implementation="eager")
    torch.manual_seed(0)
    hf = getattr(transformers, arch)(hf_config).eval()
    if name == "vision":  # HF starts relative-position tables, layer scales, BN statistics at constants
        from test_data2vec_vision_parity import randomize

        randomize(hf)
    hf.save_pretrained(tmp_path)
    model, params = zoo.from_pretrained(tmp_path, scan_layers=True, remat_policy="full")
    assert any("/layers/" in k for k in flatten_variables(params))
    batch = make_batch()
    if not arch.endswith("MaskedLM"):
        batch.pop("labels", None)
    with torch.no_grad():
        ref = hf(**torch_inputs(batch), output_hidden_states=True, output_attentions=True)
    got = jit(lambda p: model.apply(p, **batch, output_hidden_states=True,
                                    output_attentions=True))(params)
    assert_outputs_match(got, ref)

    # and back to HF's keys, bit-exact
    zoo.export_pytorch(tmp_path / "pt", model, params)
    exported, original = (load_file(str(d / "model.safetensors")) for d in (tmp_path / "pt", tmp_path))
    assert exported.keys() == original.keys()
    _assert_same(exported, original)


def test_big_bird_block_sparse_draws_the_same_blocks_in_both_layouts():
    """Each layer draws its own random blocks from its own key of the "random_blocks" stream
    (training), or from ``inference_random_seed`` folded with its (scanned) layer index."""
    config = BigBirdConfig.from_dict(dict(BIG_BIRD, attention_type="block_sparse"))
    models = [zoo.build_model(config, "BigBirdModel", scan_layers=s, remat_policy="full" if s else None,
                              inference_random_seed=3) for s in (False, True)]
    params = random_params(models[0], 2)
    stacked = unflatten(scan.stack_layers(flatten(params)))
    ids = np.random.RandomState(4).randint(3, 99, (2, 19))  # > (5 + 2 * 1) * 2 tokens: block-sparse

    @jit
    def run(p, p_stacked):
        return [[model.apply({"params": prm}, ids, output_hidden_states=True, deterministic=not training,
                             rngs={"dropout": jax.random.key(0), "random_blocks": jax.random.key(1)})
                 for training in (True, False)] for model, prm in zip(models, (p, p_stacked))]

    (train, infer), (train_scanned, infer_scanned) = run(params, stacked)
    assert max_abs_diff(train, train_scanned) <= TOL_BLOCK_SPARSE
    assert max_abs_diff(infer, infer_scanned) <= TOL_BLOCK_SPARSE


@pytest.mark.parametrize("name", ["vision", "sew_d"])
def test_layer_decay_ids_are_the_same_in_both_layouts(name):
    config, arch, _, layout = CASES[name]
    shapes = zoo.initialization.param_shapes(zoo.build_model(config, arch))
    params = unflatten({p: np.zeros(shape, np.float32) for p, shape in shapes.items()})
    ids, num_layers = train.layer_ids(params)
    stacked_ids, stacked_num_layers = train.layer_ids(unflatten(scan.stack_layers(flatten(params), *layout)))
    assert num_layers == stacked_num_layers == config.num_hidden_layers
    expected = scan.stack_layers(flatten(ids), *layout)
    assert expected.keys() == flatten(stacked_ids).keys()
    assert all(np.array_equal(expected[k], v) for k, v in flatten(stacked_ids).items())
