"""zoo.train: recipes, the optimizer they build, and the jit (sharded) and pmap train steps.

The multi-device checks run in one subprocess on 8 simulated CPU devices, started when the
first test of this file runs so that it overlaps the in-process tests (which see 1 device).
"""

from __future__ import annotations

import collections
import dataclasses
import re
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import zoo
from test_parallel import On8Devices
from zoo import train
from zoo.models.data2vec_text import Data2VecTextConfig
from zoo.models.data2vec_vision import Data2VecVisionConfig
from zoo.tree import flatten, unflatten
from zoo.initialization import param_shapes

RECIPES = Path(__file__).resolve().parents[1] / "configs" / "finetune"

# A tiny Data2VecText classifier whose sizes every mesh axis of 8 devices divides; no
# dropout, so that accumulated, sharded and pmapped steps must equal the plain one.
TEXT = dict(vocab_size=128, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
RECIPE = dict(learning_rate=1e-3, weight_decay=0.1, schedule="cosine", total_steps=10)


def text_model():
    return zoo.build_model(Data2VecTextConfig.from_dict(TEXT), "Data2VecTextForSequenceClassification")


def random_params(model, seed: int = 0) -> dict:
    """Flat random parameters (numpy: no initialiser to compile); norm scales around 1."""
    r = np.random.RandomState(seed)
    return {path: (1.0 + 0.1 * r.standard_normal(shape) if path.endswith("scale") else
                   0.05 * r.standard_normal(shape)).astype(np.float32)
            for path, shape in param_shapes(model).items()}


def text_batch(rows: int, seed: int = 0) -> dict:
    r = np.random.RandomState(seed)
    ids = r.randint(3, TEXT["vocab_size"], (rows, 16))
    mask = np.ones_like(ids)
    mask[1::3, 11:] = 0
    return {"input_ids": np.where(mask == 1, ids, 1), "attention_mask": mask, "labels": r.randint(0, 3, (rows,))}


# ARGS (TEXT, RECIPE, the file of the batches and params) is prepended by the fixture.
SCRIPT = """
import json, os, time
# compile faster (the programs are tiny; LLVM's optimisations cost more than they save here)
if "xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
import jax, numpy as np
start = time.time()
jax.config.update("jax_default_matmul_precision", "highest")
import zoo
from zoo import parallel, train
from zoo.models.data2vec_text import Data2VecTextConfig

TEXT, RECIPE = ARGS["text"], ARGS["recipe"]
model = zoo.build_model(Data2VecTextConfig.from_dict(TEXT), "Data2VecTextForSequenceClassification")
with np.load(ARGS["inputs"]) as f:
    batches = [{k: f[f"{i}/{k}"] for k in ("input_ids", "attention_mask", "labels")} for i in range(2)]
    params = zoo.tree.unflatten({k[len("params/"):]: f[k] for k in f.files if k.startswith("params/")})
flat = lambda tree: {k: np.asarray(v) for k, v in zoo.tree.flatten(tree).items()}
res = {"devices": len(jax.devices())}

def run(mesh, **kw):
    recipe = train.Recipe(**RECIPE, **kw)
    state = train.TrainState.create(model, {"params": params}, recipe, mesh=mesh)
    step = train.make_train_step(model, recipe, train.sequence_classification_loss, mesh=mesh)
    first, metrics = state, []
    for batch in batches:
        state, m = step(state, batch)
        metrics.append((float(m["loss"]), float(m["grad_norm"])))
    return first, state, metrics

_, ref, ref_metrics = run(None)
ref_params = flat(ref.params)

def compare(name, state, metrics):
    got = flat(state.params)
    res[name] = dict(loss=max(abs(a - b) for m, r in zip(metrics, ref_metrics) for a, b in zip(m, r)),
                     params=max(float(np.abs(got[k] - ref_params[k]).max()) for k in ref_params),
                     moved=max(float(np.abs(got[k] - np.asarray(v)).max()) for k, v in flat(params).items()))

for spec, kw in (("data=8", {}), ("fsdp=8", {}), ("tensor=8", {}), ("data=2,fsdp=2,tensor=2", dict(accumulate_steps=2))):
    mesh = parallel.make_mesh(spec)
    first, state, metrics = run(mesh, **kw)
    compare(spec, state, metrics)
    if spec == "fsdp=8":
        res["donated"] = all(x.is_deleted() for x in jax.tree.leaves(first))
        res["placed"] = jax.tree.map(lambda x: x.sharding, state) == train.state_shardings(
            model, train.Recipe(**RECIPE), mesh)
        adam = state.opt_state[0][1]
        res["moments_like_params"] = all(m.sharding == p.sharding for moments in (adam.mu, adam.nu)
                                         for m, p in zip(jax.tree.leaves(moments), jax.tree.leaves(state.params)))
        emb = ("data2vec_text", "embeddings", "word_embeddings", "embedding")
        query = ("data2vec_text", "encoder", "layer_0", "attention", "self", "query", "kernel")
        def fraction(tree, path):
            for key in path:
                tree = tree[key]
            return sorted({s.data.size / tree.size for s in tree.addressable_shards}), len(tree.addressable_shards)
        res["shards"] = {name: [fraction(t, p) for t in (state.params, adam.mu, adam.nu)]
                         for name, p in (("embedding", emb), ("query", query))}

# 256 rows on the mixed mesh: the embedding lookup keeps the batch split (no "Involuntary full
# rematerialization" of the looked-up vectors, which the table's fsdp split would cause)
mesh = parallel.make_mesh("data=2,fsdp=2,tensor=2")
big = {k: np.concatenate([v] * 16) for k, v in batches[0].items()}
state = train.TrainState.create(model, {"params": params}, train.Recipe(**RECIPE), mesh=mesh)
_, m = train.make_train_step(model, train.Recipe(**RECIPE), train.sequence_classification_loss, mesh=mesh)(state, big)
res["big_batch_loss"] = float(m["loss"])

recipe = train.Recipe(**RECIPE, batch_size=16)  # rows of all devices together
pstep = train.make_pmap_train_step(model, recipe, train.sequence_classification_loss)
state = train.replicate(train.TrainState.create(model, {"params": params}, recipe))
metrics = []
for batch in batches:
    state, m = pstep(state, train.split_batch(batch))
    m = train.unreplicate(m)
    metrics.append((float(m["loss"]), float(m["grad_norm"])))
compare("pmap", train.unreplicate(state), metrics)
res["pmap_steps"] = np.asarray(state.step).tolist()
res["seconds"] = time.time() - start
print("RESULT " + json.dumps(res))
"""


@pytest.fixture(scope="module", autouse=True)
def mesh_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("train8")
    np.savez(workdir / "inputs.npz", **{f"{i}/{k}": v for i, seed in enumerate((1, 2))
                                         for k, v in text_batch(16, seed).items()},
             **{f"params/{k}": v for k, v in random_params(text_model()).items()})
    args = dict(text=TEXT, recipe=RECIPE, inputs=str(workdir / "inputs.npz"))
    run = On8Devices(f"import json\nARGS = json.loads({json.dumps(args)!r})\n" + SCRIPT, workdir)
    yield run
    run.close()


@pytest.fixture(scope="module")
def on8(mesh_run):
    return mesh_run.result()


# ------------------------------------------------------------------ 1 device
@pytest.fixture(scope="module")
def text():
    model = text_model()
    return model, unflatten(random_params(model)), text_batch(8)


def one_step(text, **kw):
    """(params before as numpy, state after, metrics) of one step of RECIPE + kw."""
    model, params, batch = text
    recipe = train.Recipe(**{**RECIPE, **kw})
    state = train.TrainState.create(model, {"params": params}, recipe)
    before = jax.tree.map(np.asarray, state.params)  # the step donates state
    after, metrics = train.make_train_step(model, recipe, train.sequence_classification_loss)(state, batch)
    return before, after, metrics


FROZEN = ("embeddings/",)


@pytest.fixture(scope="module")
def plain(text):
    return one_step(text, frozen=FROZEN)


def assert_close(a, b, tol):
    diffs = jax.tree.map(lambda x, y: float(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)).max()), a, b)
    assert max(jax.tree.leaves(diffs)) <= tol, diffs


def test_accumulation_needs_whole_microbatches(text):
    # (accumulation equals the big batch: test_steps_equal_the_plain_step, on the mixed mesh)
    model, params, batch = text
    recipe = train.Recipe(**RECIPE, accumulate_steps=4)
    step = train.make_train_step(model, recipe, train.sequence_classification_loss)
    state = train.TrainState.create(model, {"params": params}, recipe)
    with pytest.raises(ValueError, match="a batch of 6 rows does not split into accumulate_steps=4"):
        step(state, jax.tree.map(lambda x: x[:6], batch))
    with pytest.raises(ValueError, match="the batch has 8 rows, the recipe's batch_size is 16"):
        train.make_train_step(model, train.Recipe(**RECIPE, batch_size=16), train.sequence_classification_loss)(
            state, batch)


def test_frozen_parameters_do_not_move(plain):
    before, after, metrics = plain
    before, after = flatten(before), flatten(after.params)
    frozen = [k for k in before if "embeddings/" in k]
    assert "data2vec_text/embeddings/word_embeddings/embedding" in frozen
    # no gradient step and no weight decay (the word embeddings decay when trainable)
    assert all(np.array_equal(before[k], after[k]) for k in frozen)
    # the rest moves (but the key bias: its gradient is zero, softmax ignores a constant shift)
    assert all(not np.array_equal(before[k], after[k]) for k in before if k not in frozen and "key/bias" not in k)
    assert float(metrics["learning_rate"]) == pytest.approx(RECIPE["learning_rate"])  # no warmup: the peak


def test_remat_gives_the_same_loss_and_gradients(text, plain):
    _, state, metrics = plain
    _, remat, remat_metrics = one_step(text, frozen=FROZEN, remat="full")
    assert abs(float(remat_metrics["loss"]) - float(metrics["loss"])) <= 1e-6
    assert abs(float(remat_metrics["grad_norm"]) - float(metrics["grad_norm"])) <= 1e-6
    assert_close(remat.params, state.params, 1e-6)


def test_bf16_compute_keeps_fp32_master_weights(text, plain):
    _, _, metrics = plain
    _, state, bf16 = one_step(text, frozen=FROZEN, compute_dtype="bfloat16")
    floats = lambda tree: {x.dtype for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)}
    assert floats(state.params) == floats(state.opt_state) == {jnp.dtype(jnp.float32)}
    loss = float(bf16["loss"])
    # bf16 keeps 8 significant bits (relative rounding 2^-9 ~ 0.2% per operation); through
    # a layer and a softmax the loss of ~1.1 moves by well under 1%: 2e-2 absolute is loose.
    assert math.isfinite(loss) and abs(loss - float(metrics["loss"])) <= 2e-2
    assert math.isfinite(float(bf16["grad_norm"]))


# ------------------------------------------------------------ optimizer rules
def vision_params() -> dict:
    """The parameter tree of a tiny Data2VecVision classifier (L=2), zeros for values: the
    rules depend on the paths only."""
    config = Data2VecVisionConfig.from_dict(dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=16,
        patch_size=8, num_labels=5, use_absolute_position_embeddings=True, use_relative_position_bias=True,
        use_shared_relative_position_bias=True))
    return unflatten({path: 0.0 for path in param_shapes(zoo.build_model(config, "Data2VecVisionForImageClassification"))})


def test_weight_decay_mask_excludes_biases_and_norms(text):
    mask = flatten(train.decay_mask(text[1]))
    assert [k for k, v in mask.items() if v] == [k for k in mask if k.endswith(("kernel", "embedding"))]
    assert not mask["data2vec_text/encoder/layer_0/output/LayerNorm/scale"]
    assert not mask["data2vec_text/encoder/layer_0/attention/self/key/bias"]
    # RMSNorm weights (IDEFICS), BEiT's relative position tables; layer scales and CLS tokens decay
    other = flatten(train.decay_mask({
        "model": {"norm": {"weight": 0}, "layers_0": {"input_layernorm": {"weight": 0},
                                                      "mlp": {"gate_proj": {"kernel": 0}}}},
        "encoder": {"relative_position_bias": {"relative_position_bias_table": 0},
                    "layer_0": {"lambda_1": 0}}, "embeddings": {"cls_token": 0}}))
    assert other == {"model/norm/weight": False, "model/layers_0/input_layernorm/weight": False,
                     "model/layers_0/mlp/gate_proj/kernel": True,
                     "encoder/relative_position_bias/relative_position_bias_table": False,
                     "encoder/layer_0/lambda_1": True, "embeddings/cls_token": True}


def test_layer_decay_factors_beit_style():
    params = vision_params()
    decay, layers = 0.5, 2
    scales = flatten(train.layer_decay_scales(params, decay))
    expected = {}
    for path in scales:
        if path.startswith("data2vec_vision/embeddings/"):   # CLS token, patch and position embeddings
            expected[path] = decay ** (layers + 1)
        elif path.startswith("data2vec_vision/encoder/layer_"):
            expected[path] = decay ** (layers - int(path.split("/")[2].split("_")[1]))
        else:                                                # head, pooler norm, shared relative bias
            expected[path] = 1.0
    assert scales == expected
    spot = {"data2vec_vision/embeddings/cls_token": decay ** 3,
            "data2vec_vision/embeddings/position_embeddings": decay ** 3,
            "data2vec_vision/embeddings/patch_embeddings/projection/kernel": decay ** 3,
            "data2vec_vision/encoder/layer_0/attention/attention/query/kernel": decay ** 2,
            "data2vec_vision/encoder/layer_1/intermediate/dense/kernel": decay,
            "data2vec_vision/encoder/relative_position_bias/relative_position_bias_table": 1.0,
            "data2vec_vision/pooler/layernorm/scale": 1.0, "classifier/kernel": 1.0}
    assert {k: scales[k] for k in spot} == spot
    text_ids, n = train.layer_ids({"data2vec_text": {"embeddings": {"LayerNorm": {"scale": 0}},
                                                     "encoder": {"layer_11": {"output": {"dense": {"kernel": 0}}}},
                                                     "pooler": {"dense": {"kernel": 0}}}})
    assert n == 12 and jax.tree.leaves(text_ids) == [0, 12, 13]


def test_layer_decay_of_stacked_layers():
    """scan_layers=True stacks the layers on a leading axis: each slice gets its layer's factor."""
    d = 0.5
    params = {"data2vec_text": {"embeddings": {"word_embeddings": {"embedding": np.ones((4, 2), np.float32)}},
                                "encoder": {"layers": {"output": {"dense": {"kernel": np.ones((3, 2, 2), np.float32)}}}}},
              "classifier": {"kernel": np.ones((2, 2), np.float32)}}
    scales = flatten(train.layer_decay_scales(params, d))
    assert scales["data2vec_text/embeddings/word_embeddings/embedding"] == d ** 4
    assert list(scales["data2vec_text/encoder/layers/output/dense/kernel"]) == [d ** 3, d ** 2, d]
    assert scales["classifier/kernel"] == 1.0
    # in the optimizer: with zero gradients only the weight decay moves, by lr * wd * factor
    tx = train.make_optimizer(train.Recipe(learning_rate=0.1, weight_decay=0.5, schedule="constant", layer_decay=d))
    updates, _ = jax.jit(tx.update)(jax.tree.map(np.zeros_like, params), tx.init(params), params)
    stacked = np.asarray(updates["data2vec_text"]["encoder"]["layers"]["output"]["dense"]["kernel"])
    assert np.allclose(stacked, -0.05 * np.array([d ** 3, d ** 2, d])[:, None, None], rtol=1e-6, atol=0)


def test_clip_by_global_norm_is_optax_rule_as_one_factor():
    """zoo's clip is optax's rule (untouched below max_norm, scaled to max_norm above) with one
    scalar factor per step: equal to optax's within float32 rounding, same (empty) state."""
    rng = np.random.default_rng(0)
    tree = {"a": rng.standard_normal((3, 5)).astype(np.float32), "b": {"c": rng.standard_normal(7).astype(np.float32)}}
    norm = float(np.sqrt(sum(float(np.sum(x.astype(np.float64) ** 2)) for x in jax.tree.leaves(tree))))
    for max_norm in (norm * 2, norm / 3, norm / 1000):
        ours, theirs = train.clip_by_global_norm(max_norm), optax.clip_by_global_norm(max_norm)
        assert jax.tree.structure(ours.init(tree)) == jax.tree.structure(theirs.init(tree))
        got, _ = jax.jit(ours.update)(tree, ours.init(tree))
        want, _ = jax.jit(theirs.update)(tree, theirs.init(tree))
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            if max_norm > norm:
                assert np.array_equal(np.asarray(g), np.asarray(w))
            else:  # one rounding of max_norm / norm apart: 2 float32 ulps of each value at most
                np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=2.5e-7, atol=0)
        got_norm = float(optax.tree.norm(got))
        assert got_norm == pytest.approx(min(norm, max_norm), rel=1e-6)


def test_remat_wraps_the_loss_of_a_model_without_a_per_layer_hook():
    """Traced only (nothing compiled): Data2VecVision has no remat_policy field, so the step
    wraps the whole loss in jax.checkpoint."""
    config = Data2VecVisionConfig.from_dict(dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                                 intermediate_size=64, image_size=16, patch_size=8, num_labels=5))
    model = zoo.build_model(config, "Data2VecVisionForImageClassification")
    params = unflatten({p: jax.ShapeDtypeStruct(shape, jnp.float32) for p, shape in param_shapes(model).items()})
    batch = {"pixel_values": jax.ShapeDtypeStruct((2, 3, 16, 16), jnp.float32),
             "labels": jax.ShapeDtypeStruct((2,), jnp.int32)}

    def jaxpr(remat):
        recipe = train.Recipe(**RECIPE, remat=remat)
        state = jax.eval_shape(lambda p: train.TrainState.create(model, {"params": p}, recipe), params)
        return str(train.make_train_step(model, recipe, train.image_classification_loss).trace(state, batch).jaxpr)

    count = lambda text: collections.Counter(re.findall(r"= (\w+)", text))
    plain, remat = count(jaxpr("none")), count(jaxpr("dots"))
    # "dots": the backward pass recomputes the GELU (erf) and the softmax (exp) of the forward
    # pass, and no matmul (their outputs are saved)
    assert remat["erf"] == 2 * plain["erf"] == 2 and remat["exp"] > plain["exp"]
    assert remat["dot_general"] == plain["dot_general"]


def test_optimizer_applies_decay_mask_and_layer_factors(text):
    """A zero loss leaves only the weight decay: a parameter p becomes
    p * (1 - lr * layer_factor * weight_decay) if it decays, else stays p; frozen ones stay p."""
    model, params, _ = text
    lr, wd, decay = 0.1, 0.5, 0.5
    recipe = train.Recipe(learning_rate=lr, weight_decay=wd, schedule="constant", layer_decay=decay,
                          frozen=("layer_0/attention/",))
    zero_loss = lambda p, batch, rng, module: (0.0 * jax.tree.leaves(p)[0].sum(), {})
    step = train.make_train_step(model, recipe, zero_loss)
    state, metrics = step(train.TrainState.create(model, {"params": params}, recipe), {"x": np.zeros((2, 1))})
    got, before = flatten(state.params), flatten(params)
    scales, mask = flatten(train.layer_decay_scales(params, decay)), flatten(train.decay_mask(params))
    assert sorted(set(scales.values())) == [decay ** 2, decay, 1.0]   # embeddings, layer_0, head (L=1)
    for path, value in got.items():
        factor = 0.0 if "layer_0/attention/" in path or not mask[path] else lr * scales[path] * wd
        assert np.allclose(value, before[path] * (1 - factor), rtol=1e-6, atol=0), path
    assert float(metrics["grad_norm"]) == 0.0


def test_schedules_match_hf_formulas():
    """HF's get_{cosine,linear,constant}_schedule_with_warmup, written out."""
    lr, warmup, total, end = 3e-4, 10, 110, 3e-5
    steps = [0, 1, 5, 9, 10, 11, 40, 60, 109, 110, 200]
    warm = lambda s: lr * s / warmup
    progress = lambda s: min(1.0, (s - warmup) / (total - warmup))
    formulas = {
        "cosine": lambda s: warm(s) if s < warmup else end + (lr - end) * 0.5 * (1 + math.cos(math.pi * progress(s))),
        "linear": lambda s: warm(s) if s < warmup else lr + (end - lr) * progress(s),
        "constant": lambda s: warm(s) if s < warmup else lr,
    }
    for name, formula in formulas.items():
        schedule = train.make_schedule(train.Recipe(learning_rate=lr, schedule=name, warmup_steps=warmup,
                                                    total_steps=total, end_learning_rate=end))
        for s in steps:
            assert float(schedule(s)) == pytest.approx(formula(s), rel=1e-5, abs=1e-12), (name, s)
    # HF's default end value 0, no warmup: optax's own schedule
    cosine = train.make_schedule(train.Recipe(learning_rate=lr, schedule="cosine", total_steps=total))
    reference = optax.cosine_decay_schedule(lr, total)
    assert [float(cosine(s)) for s in steps] == pytest.approx([float(reference(s)) for s in steps], rel=1e-6)


# ----------------------------------------------------------------- recipes
def test_recipes_load_and_reject_unknown_keys(tmp_path):
    recipes = {path.stem: train.Recipe.from_json(path) for path in sorted(RECIPES.glob("*.json"))}
    assert set(recipes) == {"text_classification", "speech_recognition_ctc", "image_classification"}
    image = recipes["image_classification"]
    assert (image.layer_decay, image.schedule) == (0.65, "cosine") and image.warmup_steps > 0
    assert recipes["speech_recognition_ctc"].frozen == ("feature_extractor/",)
    for recipe in recipes.values():
        assert train.Recipe.from_dict(recipe.to_dict()) == recipe
    (tmp_path / "bad.json").write_text(json.dumps({**RECIPE, "learning_rat": 1e-3}))
    with pytest.raises(ValueError, match=r"bad.json: unknown key 'learning_rat' \(did you mean 'learning_rate'\?\)"):
        train.Recipe.from_json(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="schedule='step' is not supported"):
        train.Recipe(schedule="step", total_steps=10)
    with pytest.raises(ValueError, match="schedule='cosine' needs total_steps"):
        train.Recipe(schedule="cosine")
    with pytest.raises(ValueError, match="remat='some'"):
        dataclasses.replace(image, remat="some")


# ------------------------------------------------------------------- 8 devices
@pytest.mark.parametrize("name", ["data=8", "fsdp=8", "tensor=8", "data=2,fsdp=2,tensor=2", "pmap"])
def test_steps_equal_the_plain_step(on8, name):
    """2 steps on each mesh, the mixed one accumulating 2 microbatches of 8 rows (gradient
    accumulation = the big batch), and 2 pmap steps: the same losses, gradient norms and
    updated params as 2 plain single-device steps on 16 rows."""
    assert on8["devices"] == 8
    assert on8[name]["loss"] <= 1e-5 and on8[name]["params"] <= 1e-5, on8[name]
    assert on8[name]["moved"] > 1e-3  # the parameters did change
    if name == "pmap":
        assert on8["pmap_steps"] == [2] * 8


def test_fsdp_really_shards_params_and_optimizer_state(on8):
    assert on8["placed"] and on8["moments_like_params"]
    # word embeddings [128, 32] and a query kernel [32, 32]: 1/8 of each on each of 8 devices,
    # for the parameter and for Adam's mu and nu
    assert on8["shards"] == {"embedding": [[[0.125], 8]] * 3, "query": [[[0.125], 8]] * 3}


def test_the_input_state_is_donated(on8):
    assert on8["donated"]


def test_sharded_step_keeps_the_batch_split(on8, mesh_run):
    """XLA warns when it must replicate a tensor to reshard it; the zoo's step never makes it."""
    assert math.isfinite(on8["big_batch_loss"])
    assert "Involuntary full rematerialization" not in mesh_run.stderr()
