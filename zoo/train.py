"""Fine-tuning: recipes, the optax optimizer they describe, a train state, and sharded train steps.

A :class:`Recipe` (``configs/finetune/*.json``) says how to train: AdamW, a warmup + cosine /
linear / constant schedule, gradient clipping, weight decay (masked off biases and norms),
BEiT-style layer-wise learning-rate decay, frozen parameters, gradient accumulation, the
compute dtype and a rematerialisation policy::

    recipe = zoo.train.Recipe.from_json("configs/finetune/text_classification.json")
    mesh = zoo.parallel.make_mesh("data=2,fsdp=2,tensor=2")
    state = zoo.train.TrainState.create(model, params, recipe, mesh=mesh)
    step = zoo.train.make_train_step(model, recipe, zoo.train.sequence_classification_loss, mesh=mesh)
    for batch in batches:                       # every array [batch, ...], labels included
        state, metrics = step(state, batch)     # metrics: loss, grad_norm, learning_rate

The step is one ``jax.jit`` with ``in_shardings`` / ``out_shardings`` (the pjit way): the
parameters, and the optimizer moments with them, sharded by :func:`zoo.parallel.param_shardings`
(:func:`state_shardings`), the batch split over ``("data", "fsdp")``; the input state is
donated. :func:`make_pmap_train_step` is the same step as a data-parallel ``jax.pmap``.

Rules, in terms of zoo parameter paths (``data2vec_text/encoder/layer_3/output/dense/kernel``):

* **weight decay** (:func:`decay_mask`, HF Trainer's rule): no decay for a path with ``bias``
  in a component (every ``bias`` leaf, BEiT's ``relative_position_bias`` tables), for ``scale``
  leaves (LayerNorm / GroupNorm / BatchNorm scales) and for ``weight`` leaves of a module whose
  name contains ``norm`` (IDEFICS' RMSNorms). Everything else decays: kernels, embeddings,
  CLS tokens, layer scales.
* **layer-wise learning-rate decay** (:func:`layer_ids`, BEiT's ``get_layer_id_for_vit``):
  layer id ``i + 1`` for anything under ``encoder/layer_i`` or ``encoder/layers_i`` (layer
  ``i`` of a stacked ``encoder/layers/...`` parameter of ``scan_layers=True``, along its
  leading axis); 0 for
  the input stem (a component ``embeddings``, ``embed_tokens``, ``pos_conv_embed``,
  ``masked_spec_embed``, ``feature_extractor``, ``feature_projection``, ``cls_token``,
  ``mask_token``); ``num_layers + 1`` for the rest (heads, poolers, final norms, a shared
  relative position bias). A parameter's learning rate is scaled by
  ``layer_decay ** (num_layers + 1 - layer_id)``.
* **frozen** parameters (regexes on the path, :func:`freeze`) get no update at all, weight
  decay included; their gradients are not computed (``stop_gradient``).
* **gradient accumulation**: the step takes ``accumulate_steps * micro`` rows, runs a
  ``lax.scan`` over the microbatches (microbatch ``a`` = rows ``a, a + A, a + 2A, ...``, so
  each stays split over the same devices) and averages their gradients and losses (as HF
  Trainer does: for losses that are means over rows, the big-batch loss).
* **bf16 compute**: ``compute_dtype="bfloat16"`` runs the model with ``dtype=bfloat16``;
  parameters (master weights), gradients and optimizer state stay float32.
* **remat**: a model with a per-layer hook (a ``remat_policy`` field, see :mod:`zoo.nn.scan`)
  gets the policy per encoder layer (``"full"`` keeps each layer's input only, ``"dots"`` its
  matmul outputs). For the others the policy wraps the whole loss in
  ``jax.checkpoint(loss, policy=...)``: ``"dots"`` keeps only matmul outputs for the backward
  pass and recomputes the rest; ``"full"`` saves nothing inside the loss, which changes where
  activations are computed but hardly the peak memory (per-layer remat is what pays off).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from zoo.initialization import abstract_variables
from zoo.parallel import LOGICAL_AXIS_RULES, activation_sharding, batch_sharding, param_shardings
from zoo.tree import as_dtype, check_variables


# ------------------------------------------------------------------------ paths & masks
def _path(key_path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in key_path)


def _by_path(fn: Callable[[str], Any], params):
    """``fn(path)`` for every leaf of ``params`` (paths ``/``-joined)."""
    return jax.tree_util.tree_map_with_path(lambda kp, _: fn(_path(kp)), params)


def trainable_labels(params, frozen: Sequence[str]):
    """``"frozen"`` for parameters whose ``/``-joined path matches one of the regexes, else ``"trainable"``."""
    patterns = [re.compile(p) for p in frozen]
    return _by_path(lambda path: "frozen" if any(p.search(path) for p in patterns) else "trainable", params)


def freeze(tx: optax.GradientTransformation, params, frozen: Sequence[str]) -> optax.GradientTransformation:
    """``tx`` for the trainable parameters; no update at all (no weight decay) for the frozen ones.

    Freezing the feature encoder of an audio model for fine-tuning, as HF's
    ``freeze_feature_encoder()``::

        tx = zoo.train.freeze(optax.adamw(3e-5), params, ["feature_extractor/"])

    (Alternatively build the model with ``freeze_feature_encoder=True``: its gradients are
    then zero, but weight decay would still move the weights.) ``params`` may be None: the
    labels are then computed from the tree ``tx.init`` / ``tx.update`` receive.
    """
    labels = (lambda tree: trainable_labels(tree, frozen)) if params is None else trainable_labels(params, frozen)
    return optax.multi_transform({"trainable": tx, "frozen": optax.set_to_zero()}, labels)


def decay_mask(params):
    """True for the parameters weight decay applies to (the rule is in the module docstring)."""

    def decays(path: str) -> bool:
        *modules, leaf = path.split("/")
        if any("bias" in part.lower() for part in path.split("/")) or leaf == "scale":
            return False
        return not (leaf == "weight" and modules and "norm" in modules[-1].lower())

    return _by_path(decays, params)


_LAYER = re.compile(r"(?:^|/)encoder/layers?_(\d+)/")
_STACKED = re.compile(r"(?:^|/)encoder/layers/")  # scan_layers=True: leaves [num_layers, ...]
_STEM = re.compile(r"(?:^|/)(embeddings|embed_tokens|pos_conv_embed|masked_spec_embed|feature_extractor|"
                   r"feature_projection|cls_token|mask_token)(?:/|$)")


def _layer_index(path: str, leaf, first: Mapping[str, int] | None = None):
    """The encoder layer of a parameter (an int), the layers of a stacked one (an index
    vector along its leading axis, from ``first[encoder path]``, default 0), or None."""
    if m := _STACKED.search(path):
        return (first or {}).get(path[:m.start()], 0) + np.arange(np.shape(leaf)[0])
    return int(m.group(1)) if (m := _LAYER.search(path)) else None


def _first_stacked(paths) -> dict[str, int]:
    """Per encoder (the path before ``encoder/``): the index of its first stacked layer, the
    number of layers it keeps per layer next to a stack (SEW-D's layer 0 before its conv
    branch, see :mod:`zoo.nn.scan`)."""
    paths = list(paths)
    stacks = {p[:m.start()] for p in paths if (m := _STACKED.search(p))}
    first: dict[str, int] = {}
    for p in paths:
        if (m := _LAYER.search(p)) and p[:m.start()] in stacks:
            first[p[:m.start()]] = max(first.get(p[:m.start()], 0), int(m.group(1)) + 1)
    return first


def layer_ids(params, num_layers: int | None = None):
    """``(layer id per parameter, num_layers)`` by BEiT's rule (module docstring);
    ``num_layers`` defaults to the number of encoder layers found in the tree. A stacked
    layer parameter (``encoder/layers/...`` of ``scan_layers=True``, leading axis = layers)
    gets the vector of its layers' ids (after the layers kept per layer next to it)."""
    leaves = [(_path(kp), leaf) for kp, leaf in jax.tree_util.tree_flatten_with_path(params)[0]]
    first = _first_stacked(path for path, _ in leaves)
    if num_layers is None:
        found = [np.max(i) for path, leaf in leaves if (i := _layer_index(path, leaf, first)) is not None]
        if not found:
            raise ValueError("layer-wise learning-rate decay needs encoder layers (paths with "
                             "'encoder/layer_<i>/', 'encoder/layers_<i>/' or 'encoder/layers/'); this model has none")
        num_layers = int(max(found)) + 1

    def layer_id(kp, leaf):
        path = _path(kp)
        i = _layer_index(path, leaf, first)
        return i + 1 if i is not None else 0 if _STEM.search(path) else num_layers + 1

    return jax.tree_util.tree_map_with_path(layer_id, params), num_layers


def layer_decay_scales(params, layer_decay: float, num_layers: int | None = None):
    """The learning-rate factor of every parameter: ``layer_decay ** (num_layers + 1 - layer_id)``
    (a vector over the leading axis of stacked layer parameters)."""
    ids, num_layers = layer_ids(params, num_layers)
    return jax.tree.map(lambda i: layer_decay ** (num_layers + 1 - i), ids)


def _scale_by_layer(layer_decay: float) -> optax.GradientTransformation:
    """Multiply each update by its parameter's :func:`layer_decay_scales` factor (static, from
    the paths)."""

    def scale(u, s):
        s = np.asarray(s)
        return u * jnp.asarray(s, u.dtype).reshape(s.shape + (1,) * (u.ndim - s.ndim))

    def update(updates, state, params=None):
        del params
        return jax.tree.map(scale, updates, layer_decay_scales(updates, layer_decay)), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


# ------------------------------------------------------------------------------- recipe
SCHEDULES = ("cosine", "linear", "constant")
COMPUTE_DTYPES = ("float32", "bfloat16")
REMAT_POLICIES: dict[str, Callable | None] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How to fine-tune (defaults: HF ``TrainingArguments``' where they exist).

    optimizer: ``"adamw"`` with ``learning_rate`` (the peak), ``b1``, ``b2``, ``eps``,
      ``weight_decay`` (decoupled, on :func:`decay_mask` parameters).
    schedule: ``"cosine"``, ``"linear"`` (to ``end_learning_rate`` at ``total_steps``) or
      ``"constant"``, after ``warmup_steps`` of linear warmup from 0.
    max_grad_norm: clip gradients by their global norm (None: no clipping).
    layer_decay: BEiT layer-wise learning-rate decay factor (None: off).
    frozen: regexes of parameter paths that are not trained.
    accumulate_steps: microbatches per optimizer step (the step's batch has
      ``accumulate_steps * micro`` rows).
    batch_size: rows per optimizer step, all microbatches (and pmap devices) together
      (checked by the step when set; None: any).
    compute_dtype: ``"float32"`` or ``"bfloat16"`` (parameters stay float32).
    remat: ``"none"``, ``"full"``, ``"dots"`` or ``"dots_with_no_batch_dims"``.
    seed: the train state's rng (dropout, stochastic depth, ...) and the data order of
      ``zoo finetune``.
    task: what ``zoo finetune`` trains (a name in :data:`zoo.tasks.TASKS`, checked there; None
      for library use).
    description: free text.
    """

    optimizer: str = "adamw"
    learning_rate: float = 5e-5
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    schedule: str = "linear"
    warmup_steps: int = 0
    total_steps: int | None = None
    end_learning_rate: float = 0.0
    max_grad_norm: float | None = 1.0
    layer_decay: float | None = None
    frozen: tuple[str, ...] = ()
    accumulate_steps: int = 1
    batch_size: int | None = None
    compute_dtype: str = "float32"
    remat: str = "none"
    seed: int = 0
    task: str | None = None
    description: str = ""

    def __post_init__(self):
        object.__setattr__(self, "frozen", tuple(self.frozen))
        choices = {"optimizer": ("adamw",), "schedule": SCHEDULES, "compute_dtype": COMPUTE_DTYPES,
                   "remat": tuple(REMAT_POLICIES)}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"recipe {name}={getattr(self, name)!r} is not supported; "
                                 f"choose one of {', '.join(map(repr, allowed))}")
        if self.task is not None and not isinstance(self.task, str):
            raise ValueError(f"recipe task={self.task!r} must be a task name (a string) or null")
        if self.schedule != "constant" and self.total_steps is None:
            raise ValueError(f"recipe schedule={self.schedule!r} needs total_steps")
        if self.total_steps is not None and not 0 <= self.warmup_steps < self.total_steps:
            raise ValueError(f"recipe warmup_steps={self.warmup_steps} must be in [0, total_steps="
                             f"{self.total_steps})")
        if self.warmup_steps < 0:
            raise ValueError(f"recipe warmup_steps={self.warmup_steps} must be >= 0")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ValueError(f"recipe layer_decay={self.layer_decay} must be in (0, 1]")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"recipe max_grad_norm={self.max_grad_norm} must be > 0 (or null: no clipping)")
        if self.accumulate_steps < 1:
            raise ValueError(f"recipe accumulate_steps={self.accumulate_steps} must be >= 1")
        if self.batch_size is not None and self.batch_size % self.accumulate_steps:
            raise ValueError(f"recipe batch_size={self.batch_size} is not a multiple of "
                             f"accumulate_steps={self.accumulate_steps}")
        for pattern in self.frozen:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"recipe frozen pattern {pattern!r} is not a regex: {e}") from None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "recipe") -> "Recipe":
        """Build from a dict; an unknown key raises ValueError naming it (and the likely key)."""
        known = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"{source}: unknown key {key!r}{hint}; the keys are {', '.join(known)}")
        return cls(**data)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "Recipe":
        with open(path) as f:
            return cls.from_dict(json.load(f), source=str(path))

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "frozen": list(self.frozen)}


def make_schedule(recipe: Recipe) -> optax.Schedule:
    """Learning rate per step: linear warmup from 0 over ``warmup_steps``, then HF's
    cosine / linear decay to ``end_learning_rate`` at ``total_steps`` (or constant)."""
    lr, warmup, end = recipe.learning_rate, recipe.warmup_steps, recipe.end_learning_rate
    if recipe.schedule == "constant":
        decay = optax.constant_schedule(lr)
    elif recipe.schedule == "linear":
        decay = optax.linear_schedule(lr, end, recipe.total_steps - warmup)
    else:
        decay = optax.cosine_decay_schedule(lr, recipe.total_steps - warmup, alpha=end / lr if lr else 0.0)
    if not warmup:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """``optax.clip_by_global_norm`` (same rule, same empty state) with the clip applied as one
    scalar factor, ``g * min(1, max_norm / norm)``, as ``torch.nn.utils.clip_grad_norm_`` does.

    optax's ``select(norm < max_norm, g, g / norm * max_norm)`` makes XLA:CPU write every clipped
    gradient out once and read it again in the Adam moments' fusions; a scalar multiply fuses
    into them instead. Data2VecText base update: 245 -> 144 ms on 2 cores. The values differ from
    optax's by float32 rounding of ``max_norm / norm`` only (at most 1 ulp relative).
    """

    def update(updates, state, params=None):
        del params
        norm = optax.tree.norm(updates)
        factor = jnp.where(norm < max_norm, 1.0, max_norm / norm)
        return jax.tree.map(lambda g: g * factor.astype(g.dtype), updates), state

    return optax.GradientTransformation(optax.init_empty_state, update)


def make_optimizer(recipe: Recipe) -> optax.GradientTransformation:
    """clip (global norm) -> Adam -> decoupled weight decay (:func:`decay_mask`) -> layer-wise
    decay -> learning-rate schedule, for the trainable parameters; frozen ones get nothing.
    Every mask is computed from the parameter paths, so the same optimizer serves any tree."""
    parts = [clip_by_global_norm(recipe.max_grad_norm)] if recipe.max_grad_norm is not None else []
    parts.append(optax.scale_by_adam(recipe.b1, recipe.b2, recipe.eps))
    if recipe.weight_decay:
        parts.append(optax.add_decayed_weights(recipe.weight_decay, mask=decay_mask))
    tx = optax.chain(*parts)
    if recipe.frozen:
        tx = freeze(tx, None, recipe.frozen)
    # outside the freeze: these see the whole tree (layer ids count every layer, frozen or not)
    scale = [_scale_by_layer(recipe.layer_decay)] if recipe.layer_decay is not None else []
    return optax.chain(tx, *scale, optax.scale_by_learning_rate(make_schedule(recipe)))


# -------------------------------------------------------------------------------- state
@flax.struct.dataclass
class TrainState:
    """Everything a step changes, as one pytree (orbax saves it as is): ``step`` (int32),
    ``params`` (float32 master weights), ``batch_stats`` (batch-norm statistics, None for
    models without), ``opt_state`` and ``rng`` (a raw ``uint32[2]`` key)."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array

    @property
    def variables(self) -> dict:
        """The model's variables dict of this state: ``model.apply(state.variables, ...)``."""
        return {"params": self.params, **({} if self.batch_stats is None else {"batch_stats": self.batch_stats})}

    @classmethod
    def create(cls, module: nn.Module, variables, recipe: Recipe, *, mesh: Mesh | None = None,
               rules=LOGICAL_AXIS_RULES) -> "TrainState":
        """The initial state for ``variables`` (the model's variables dict, as
        :func:`zoo.from_pretrained` gives it): floating parameters cast to float32, the
        optimizer state of :func:`make_optimizer`, ``rng`` from ``recipe.seed``. With ``mesh``
        every array is placed by :func:`state_shardings` (what :func:`make_train_step` expects)."""
        variables = dict(nn.unbox(variables))
        check_variables(variables, type(module).__name__)
        tx = make_optimizer(recipe)

        def init(variables):
            p = jax.tree.map(_master, variables["params"])
            return cls(step=jnp.zeros((), jnp.int32), params=p, batch_stats=variables.get("batch_stats"),
                       opt_state=tx.init(p), rng=jax.random.PRNGKey(recipe.seed))

        shardings = None if mesh is None else state_shardings(module, recipe, mesh, rules)
        return jax.jit(init, out_shardings=shardings)(variables)


def _master(x):
    return x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x


def state_shardings(module: nn.Module, recipe: Recipe, mesh: Mesh, rules=LOGICAL_AXIS_RULES) -> TrainState:
    """A ``NamedSharding`` for every leaf of the :class:`TrainState` of ``module``: parameters
    by :func:`zoo.parallel.param_shardings`; every optimizer-state array that mirrors a
    parameter (Adam's ``mu`` / ``nu``) like that parameter (matched by path and shape);
    the rest (counters, rng, batch statistics) replicated. Nothing is allocated."""
    abstract = abstract_variables(module)
    variables = param_shardings(module, mesh, rules, abstract=abstract)
    params = nn.unbox(abstract)["params"]
    opt_state = jax.eval_shape(lambda p: make_optimizer(recipe).init(jax.tree.map(_master, p)), params)
    replicated = NamedSharding(mesh, PartitionSpec())
    return TrainState(step=replicated, params=variables["params"], batch_stats=variables.get("batch_stats"),
                      opt_state=_like_params(opt_state, params, variables["params"], replicated), rng=replicated)


def _like_params(tree, params, shardings, default):
    """For each leaf of ``tree``: the sharding of the parameter whose path its trailing dict
    keys spell, if the shapes agree, else ``default``."""
    table = {tuple(k.key for k in kp): (leaf.shape, sharding) for (kp, leaf), sharding in
             zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(shardings))}

    def pick(kp, leaf):
        keys = []
        for k in reversed(kp):
            if not isinstance(k, jax.tree_util.DictKey):
                break
            keys.append(k.key)
        shape, sharding = table.get(tuple(reversed(keys)), (None, default))
        return sharding if shape == tuple(leaf.shape) else default

    return jax.tree_util.tree_map_with_path(pick, tree)


# ------------------------------------------------------------------------------- losses
RNG_STREAMS = ("dropout", "drop_path", "random_blocks", "gumbel")


def model_loss(variables, batch, rng, module: nn.Module, *, deterministic: bool = False, **apply_kwargs):
    """The model's own loss (the zoo heads compute HF's loss when ``batch`` has ``labels``):
    ``(loss, aux)``, aux holding updated ``batch_stats`` for models that have them. ``rng``
    feeds every stream a zoo model draws from (:data:`RNG_STREAMS`)."""
    out, aux = _apply(variables, batch, rng, module, deterministic, apply_kwargs)
    return out.loss, aux


def _apply(variables, batch, rng, module, deterministic, apply_kwargs):
    if "labels" not in batch:
        raise ValueError(f"the batch has no 'labels' (its keys: {', '.join(batch)}): {type(module).__name__} "
                         f"computes its loss from them")
    mutable = [c for c in variables if c != "params"] if not deterministic else []
    rngs = {name: jax.random.fold_in(rng, i) for i, name in enumerate(RNG_STREAMS)}
    out = module.apply(variables, **batch, deterministic=deterministic, rngs=rngs, mutable=mutable or False,
                       **apply_kwargs)
    return out if mutable else (out, {})


def sequence_classification_loss(variables, batch, rng, module: nn.Module, *, deterministic: bool = False,
                                 **apply_kwargs):
    """HF's classification loss of a ``...ForSequenceClassification`` / ``...ForImageClassification``
    head (cross entropy, regression or multi-label by ``problem_type``), with ``accuracy`` in aux
    for integer labels."""
    out, aux = _apply(variables, batch, rng, module, deterministic, apply_kwargs)
    labels = jnp.asarray(batch["labels"])
    if jnp.issubdtype(labels.dtype, jnp.integer) and labels.ndim == out.logits.ndim - 1:
        aux = {**aux, "accuracy": jnp.mean(jnp.argmax(out.logits, -1) == labels)}
    return out.loss, aux


image_classification_loss = sequence_classification_loss  # the same head loss on pooled image features


def ctc_loss(variables, batch, rng, module: nn.Module, *, deterministic: bool = False, **apply_kwargs):
    """HF's CTC loss of a ``...ForCTC`` head: ``batch`` holds ``input_values``, optionally
    ``attention_mask``, and ``labels [B, U]`` padded with -100 (``ctc_loss_reduction`` and
    ``ctc_zero_infinity`` from the model config)."""
    if "labels" in batch and np.ndim(batch["labels"]) != 2:
        raise ValueError(f"CTC labels must be [batch, max_label_length] padded with -100, got shape "
                         f"{np.shape(batch['labels'])}")
    return model_loss(variables, batch, rng, module, deterministic=deterministic, **apply_kwargs)


# ---------------------------------------------------------------------------- the step
def _grads(module, recipe: Recipe, loss_fn, params, batch_stats, batch, rng):
    """``(loss, scalar aux metrics, grads, batch_stats)`` of one (micro)batch."""
    frozen = trainable_labels(params, recipe.frozen) if recipe.frozen else None

    def loss(p, batch, rng, stats):
        if frozen is not None:
            p = jax.tree.map(lambda x, label: jax.lax.stop_gradient(x) if label == "frozen" else x, p, frozen)
        value, aux = loss_fn({"params": p} if stats is None else {"params": p, "batch_stats": stats}, batch, rng,
                             module)
        return jnp.asarray(value, jnp.float32), aux

    if recipe.remat != "none" and not _has_remat_hook(module):
        loss = jax.checkpoint(loss, policy=REMAT_POLICIES[recipe.remat])
    (value, aux), grads = jax.value_and_grad(loss, has_aux=True)(params, batch, rng, batch_stats)
    aux = dict(aux or {})
    batch_stats = aux.pop("batch_stats", batch_stats)
    metrics = {k: jnp.asarray(v, jnp.float32) for k, v in aux.items() if jnp.ndim(v) == 0}
    return value, metrics, grads, batch_stats


def _accumulated(module, recipe: Recipe, loss_fn, state: TrainState, batch, rng, constrain, replicas: int = 1):
    """:func:`_grads` averaged over ``recipe.accumulate_steps`` microbatches (a ``lax.scan``);
    ``replicas``: the number of pmap devices sharing the step's rows."""
    rows = {int(np.shape(x)[0]) if np.ndim(x) else None for x in jax.tree.leaves(batch)}
    if None in rows or len(rows) != 1:
        raise ValueError(f"every batch array needs the same leading (batch) dimension, got sizes {rows}")
    (size,) = rows
    if recipe.batch_size is not None and size * replicas != recipe.batch_size:
        raise ValueError(f"the batch has {size * replicas} rows, the recipe's batch_size is {recipe.batch_size}")
    steps = recipe.accumulate_steps
    grads_of = functools.partial(_grads, module, recipe, loss_fn)
    if steps == 1:
        return grads_of(state.params, state.batch_stats, batch, rng)
    if size % steps:
        raise ValueError(f"a batch of {size} rows does not split into accumulate_steps={steps} microbatches")
    # microbatch a = rows a, a + steps, ...: each keeps the batch's split over the devices
    micro = jax.tree.map(lambda x: jnp.swapaxes(x.reshape(size // steps, steps, *x.shape[1:]), 0, 1), batch)
    micro = constrain["micro"](micro)

    def body(carry, xs):
        total, stats = carry
        mb, i = xs
        value, metrics, grads, stats = grads_of(state.params, stats, mb, jax.random.fold_in(rng, i))
        total = jax.tree.map(jnp.add, total, (value, metrics, constrain["grads"](grads)))
        return (total, stats), None

    first = jax.tree.map(lambda x: x[0], micro)
    shapes = jax.eval_shape(lambda: grads_of(state.params, state.batch_stats, first, rng)[:3])
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    (total, stats), _ = jax.lax.scan(body, (zeros, state.batch_stats), (micro, jnp.arange(steps)))
    value, metrics, grads = jax.tree.map(lambda x: x / steps, total)
    return value, metrics, grads, stats


def _update(tx, schedule, state: TrainState, value, metrics, grads, batch_stats, rng):
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    metrics = {"loss": value, "grad_norm": optax.tree.norm(grads),
               "learning_rate": jnp.asarray(schedule(state.step), jnp.float32), **metrics}
    new = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                        batch_stats=batch_stats, opt_state=opt_state, rng=rng)
    return new, metrics


def _has_remat_hook(module: nn.Module) -> bool:
    return "remat_policy" in {f.name for f in dataclasses.fields(module)}


def _for_recipe(module: nn.Module, recipe: Recipe) -> nn.Module:
    """``module`` with the recipe's compute dtype, and its remat policy where it has the hook."""
    dtype = as_dtype(recipe.compute_dtype)
    if not hasattr(module, "dtype"):
        raise ValueError(f"{type(module).__name__} has no dtype field: compute_dtype cannot be set")
    changes = {} if jnp.dtype(module.dtype) == jnp.dtype(dtype) else {"dtype": dtype}
    if recipe.remat != "none" and _has_remat_hook(module):
        changes["remat_policy"] = recipe.remat
    return module.clone(**changes) if changes else module


def make_train_step(module: nn.Module, recipe: Recipe, loss_fn: Callable, *, mesh: Mesh | None = None,
                    rules=LOGICAL_AXIS_RULES) -> Callable:
    """``step(state, batch) -> (state, metrics)``, one ``jax.jit`` donating ``state``.

    loss_fn: ``loss_fn(variables, batch, rng, module) -> (loss, aux)`` (``aux`` a dict: scalar
      entries become metrics, ``batch_stats`` updates the state's); :func:`model_loss`,
      :func:`sequence_classification_loss`, :func:`image_classification_loss`, :func:`ctc_loss`.
    mesh: shard the step: ``state`` must be placed by :func:`state_shardings` (as
      ``TrainState.create(..., mesh=mesh)`` does), every batch array has a leading batch
      dimension, split over ``("data", "fsdp")`` (numpy arrays are placed on the way in).
      None: a single-device ``jax.jit``.
    metrics: ``loss`` (the mean over microbatches), ``grad_norm`` (global norm of the
      gradients before clipping), ``learning_rate`` (this step's, before layer-wise decay).
    """
    module = _for_recipe(module, recipe)
    tx, schedule = make_optimizer(recipe), make_schedule(recipe)
    identity = lambda tree: tree
    constrain = {"micro": identity, "grads": identity}
    shardings = {}
    if mesh is not None:
        state_sh = state_shardings(module, recipe, mesh, rules)
        batch_sh = batch_sharding(mesh)
        micro_sh = NamedSharding(mesh, PartitionSpec(None, *batch_sh.spec))
        constrain = {"micro": lambda tree: jax.lax.with_sharding_constraint(tree, micro_sh),
                     "grads": lambda tree: jax.lax.with_sharding_constraint(tree, state_sh.params)}
        shardings = dict(in_shardings=(state_sh, batch_sh),
                         out_shardings=(state_sh, NamedSharding(mesh, PartitionSpec())))

    def step(state: TrainState, batch):
        rng, step_rng = jax.random.split(state.rng)
        value, metrics, grads, stats = _accumulated(module, recipe, loss_fn, state, batch, step_rng, constrain)
        return _update(tx, schedule, state, value, metrics, constrain["grads"](grads), stats, rng)

    jitted = jax.jit(step, donate_argnums=(0,), **shardings)
    if mesh is None:
        return jitted

    @functools.wraps(step)
    def sharded_step(state: TrainState, batch):
        with activation_sharding(mesh):  # the models' activation sharding hints resolve on this mesh
            return jitted(state, batch)

    sharded_step.lower = jitted.lower  # keep the jit API that callers inspect
    return sharded_step


# ------------------------------------------------------------------------------- pmap
def make_pmap_train_step(module: nn.Module, recipe: Recipe, loss_fn: Callable, *, axis_name: str = "batch",
                         devices: Sequence[jax.Device] | None = None) -> Callable:
    """The step of :func:`make_train_step` as a data-parallel ``jax.pmap`` (donating the
    state): ``step(replicate(state), split_batch(batch)) -> (state, metrics)``, every output
    with a leading device axis (:func:`unreplicate` takes device 0's). Gradients, metrics and
    batch statistics are averaged over ``axis_name`` (``lax.pmean``); each device draws its
    own dropout from the shared rng."""
    module = _for_recipe(module, recipe)
    tx, schedule = make_optimizer(recipe), make_schedule(recipe)
    identity = {"micro": lambda t: t, "grads": lambda t: t}
    replicas = len(jax.local_devices() if devices is None else devices)

    def step(state: TrainState, batch):
        rng, step_rng = jax.random.split(state.rng)
        step_rng = jax.random.fold_in(step_rng, jax.lax.axis_index(axis_name))
        out = _accumulated(module, recipe, loss_fn, state, batch, step_rng, identity, replicas)
        value, metrics, grads, stats = jax.tree.map(
            lambda x: jax.lax.pmean(x, axis_name) if jnp.issubdtype(x.dtype, jnp.floating) else x, out)
        return _update(tx, schedule, state, value, metrics, grads, stats, rng)

    return jax.pmap(step, axis_name=axis_name, devices=devices, donate_argnums=(0,))


def _replica_mesh(devices: Sequence[jax.Device] | None) -> Mesh:
    return Mesh(np.array(list(jax.local_devices() if devices is None else devices)), ("replica",))


def replicate(tree, devices: Sequence[jax.Device] | None = None):
    """Every array of ``tree`` copied to each device (default: the local ones), stacked along
    a new leading device axis: the input :func:`make_pmap_train_step` takes. (Copied through
    the host: a single transfer per device, nothing to compile.)"""
    mesh = _replica_mesh(devices)
    sharding = NamedSharding(mesh, PartitionSpec("replica"))
    return jax.tree.map(lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (mesh.size, *np.shape(x))), sharding),
                        tree)


def unreplicate(tree):
    """Device 0's copy of every array of a replicated tree (its shard as is, where it is one)."""

    def first(x):
        if isinstance(x, jax.Array) and x.ndim:
            for shard in x.addressable_shards:
                if shard.data.shape[0] == 1 and (shard.index[0].start or 0) == 0:
                    return shard.data.reshape(x.shape[1:])
        return x[0]

    return jax.tree.map(first, tree)


def split_batch(batch, devices: Sequence[jax.Device] | None = None):
    """Every ``[B, ...]`` array of ``batch`` as ``[devices, B / devices, ...]``, each device's
    rows on it (contiguous blocks). Raises ValueError when B does not split evenly."""
    mesh = _replica_mesh(devices)
    n = mesh.size

    def put(x):
        x = np.asarray(x)
        if not x.ndim or x.shape[0] % n:
            raise ValueError(f"an input of shape {x.shape} cannot be split over {n} devices along its first axis")
        return jax.device_put(x.reshape(n, x.shape[0] // n, *x.shape[1:]),
                              NamedSharding(mesh, PartitionSpec("replica")))

    return jax.tree.map(put, batch)


__all__ = [
    "COMPUTE_DTYPES", "REMAT_POLICIES", "RNG_STREAMS", "Recipe", "SCHEDULES", "TrainState", "clip_by_global_norm", "ctc_loss",
    "decay_mask", "freeze", "image_classification_loss", "layer_decay_scales", "layer_ids", "make_optimizer",
    "make_pmap_train_step", "make_schedule", "make_train_step", "model_loss", "replicate",
    "sequence_classification_loss", "split_batch", "state_shardings", "trainable_labels", "unreplicate",
]
