"""Encoder layers run one by one or as one ``nn.scan``, with optional rematerialisation.

Two parameter layouts of the same stack of ``N`` identical layers:

* **per-layer** (the default, the portable one): one subtree per layer,
  ``encoder/layer_0/attention/self/query/kernel`` ... ``encoder/layer_{N-1}/...``, the
  layout of HF's PyTorch checkpoints;
* **stacked** (``scan_layers=True``): one subtree whose leaves carry a leading layer axis
  (logical axis name ``"layers"``), ``encoder/layers/attention/self/query/kernel [N, ...]``.
  The stack compiles once instead of ``N`` times (compile time flat in depth).

:func:`run_layers` runs a stack in either layout. In both, a layer's dropout keys derive
from one key per layer (``jax.random.split`` of a key the encoder draws from its
``"dropout"`` stream), so the two layouts give the same outputs in training too.
``remat_policy`` recomputes activations in the backward pass instead of keeping them:
``"full"`` keeps only each layer's input, ``"dots"`` keeps the matmul outputs,
``"dots_with_no_batch_dims"`` keeps the matmuls without batch dimensions (the weight
matmuls, not the attention scores).

:func:`stack_layers` / :func:`unstack_layers` convert flat ``{path: array}`` dicts between
the layouts (numpy by default, no jit; a leading model prefix such as ``data2vec_text/``
is kept) and :func:`layout` tells which one a set of paths is in. Models that support
scanning declare their ``layer_layout`` ``(per_layer_prefix, stacked_prefix)`` and a
``scan_layers`` field; ``zoo.from_pretrained`` / ``save_pretrained`` / ``export_pytorch``
convert through :func:`module_layer_layout`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import lift

REMAT_POLICIES: dict[str, Callable | None] = {
    "full": None,  # jax.checkpoint's default: nothing saved, everything recomputed
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
LAYERS_AXIS = "layers"  # logical axis name of the stacked layer dimension


def check_remat_policy(remat_policy: str | None) -> None:
    if remat_policy is not None and remat_policy not in REMAT_POLICIES:
        raise ValueError(f"remat_policy={remat_policy!r} is not supported; choose one of "
                         f"{', '.join(map(repr, REMAT_POLICIES))} or None")


# ------------------------------------------------------------------ running a stack
def _reseed(fn: Callable, stream: str = "dropout") -> Callable:
    """``fn(module, *args)`` -> ``g(module, key, *args)`` where ``module``'s ``stream`` rng is
    ``key`` (a raw key, no path folded in): the same key gives the same random numbers
    whether the module is ``layer_3`` or the body of a scan."""

    def transform(core_fn):
        def inner(scope_fn, repack_fn, variable_groups, rng_groups, key, *args):
            rng_groups = tuple(tuple({**rngs, stream: key} for rngs in group) for group in rng_groups)
            scope = scope_fn(variable_groups, rng_groups)
            # fresh counters: a scan traces its body more than once with the same scope counters
            for inner_scope in scope:  # one scope per module argument
                inner_scope.rng_counters = {name: 0 for name in inner_scope.rngs}
            return core_fn(scope, *args), repack_fn(scope)

        return lift.pack(inner, (True,), (True,), (True,), name="reseed")

    return nn.transforms.lift_transform(transform, fn)


def run_layers(
    make_layer: Callable[[str], nn.Module],
    step: Callable,
    carry: Any,
    xs: Sequence[Any] | None = None,
    consts: Sequence[Any] = (),
    *,
    num_layers: int,
    scan_layers: bool = False,
    remat_policy: str | None = None,
    rng: jax.Array | None = None,
    name: str = "layer_{i}",
    stacked_name: str = "layers",
) -> tuple[Any, list[Any]]:
    """Run ``num_layers`` layers over ``carry``; call from a compact method.

    make_layer: ``name -> layer module`` (unbound; ``name`` is ``name.format(i=i)`` per
      layer, or ``stacked_name`` for the one scanned layer).
    step: ``(layer, carry, x, *consts) -> (carry, y)``; ``x`` is ``xs[i]`` (``xs``: one
      pytree of arrays per layer, or None; stacked for the scan); ``consts`` are the same
      for every layer; static settings (``deterministic``, ...) are closed over.
    rng: a key (the encoder's ``"dropout"`` draw) split into one ``"dropout"`` key per
      layer; None when deterministic.
    Returns the final carry and the per-layer ``y`` as a list of ``num_layers`` pytrees,
    equal in both layouts.
    """
    check_remat_policy(remat_policy)
    layer_step = step
    if remat_policy is not None:
        layer_step = nn.remat(step, policy=REMAT_POLICIES[remat_policy], prevent_cse=not scan_layers)
    keys = None if rng is None else jax.random.split(rng, num_layers)
    reseeded = None if rng is None else _reseed(layer_step)

    def body(layer, carry, key_x, *consts):  # key_x: (this layer's dropout key or None, xs[i])
        key, x = key_x
        if reseeded is None:
            return layer_step(layer, carry, x, *consts)
        return reseeded(layer, key, carry, x, *consts)

    if scan_layers:
        scanned = nn.scan(body, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                          in_axes=(0,) + (nn.broadcast,) * len(consts), length=num_layers,
                          metadata_params={nn.PARTITION_NAME: LAYERS_AXIS})
        stacked = None if xs is None else jax.tree.map(lambda *a: jnp.stack(a), *xs)
        carry, ys = scanned(make_layer(stacked_name), carry, (keys, stacked), *consts)
        return carry, [jax.tree.map(lambda a: a[i], ys) for i in range(num_layers)]
    ys = []
    for i in range(num_layers):
        kx = (None if keys is None else keys[i], None if xs is None else xs[i])
        carry, y = body(make_layer(name.format(i=i)), carry, kx, *consts)
        ys.append(y)
    return carry, ys


# ------------------------------------------------------------------ parameter layouts
def _patterns(prefix_per_layer: str, stacked_prefix: str) -> tuple[re.Pattern, re.Pattern]:
    if prefix_per_layer.count("{i}") != 1:
        raise ValueError(f"prefix_per_layer must contain '{{i}}' once, got {prefix_per_layer!r}")
    before, after = (re.escape(part) for part in prefix_per_layer.split("{i}"))
    lead = r"^(?P<lead>(?:.+/)?)"
    per_layer = re.compile(lead + before + r"(?P<i>\d+)" + after + r"/(?P<rest>.+)$")
    stacked = re.compile(lead + re.escape(stacked_prefix) + r"/(?P<rest>.+)$")
    return per_layer, stacked


def layout(paths: Iterable[str], prefix_per_layer: str = "encoder/layer_{i}",
           stacked_prefix: str = "encoder/layers") -> str | None:
    """``"stacked"``, ``"per_layer"`` or None (no layer path at all) for flat ``paths``.
    Raises ValueError when both layouts are present."""
    per_layer, stacked = _patterns(prefix_per_layer, stacked_prefix)
    found = set()
    for path in paths:
        if stacked.match(path):
            found.add("stacked")
        elif per_layer.match(path):
            found.add("per_layer")
    if len(found) > 1:
        raise ValueError(f"parameters hold both {prefix_per_layer!r} and {stacked_prefix!r} layers")
    return found.pop() if found else None


def _group_layers(flat: Mapping[str, Any], pattern: re.Pattern, key: Callable[[re.Match], Any]):
    """``flat`` in order as ``(path, value)`` for paths ``pattern`` does not match, and
    ``(lead, {key(match): value})`` once per group of matching paths, at its first path."""
    items: list[tuple[str, Any]] = []
    groups: dict[str, dict] = {}
    for path, value in flat.items():
        m = pattern.match(path)
        if m is None:
            items.append((path, value))
            continue
        if m["lead"] not in groups:
            groups[m["lead"]] = {}
            items.append((m["lead"], groups[m["lead"]]))
        groups[m["lead"]][key(m)] = value
    return items, groups


def stack_layers(flat: Mapping[str, Any], prefix_per_layer: str = "encoder/layer_{i}",
                 stacked_prefix: str = "encoder/layers", *, stack: Callable = np.stack) -> dict[str, Any]:
    """Per-layer -> stacked: ``{lead}{prefix_per_layer}/{rest}`` for ``i = 0..N-1`` become one
    ``{lead}{stacked_prefix}/{rest}`` of shape ``[N, ...]`` (``stack``, numpy by default);
    other paths are kept as they are, in order. Raises ValueError when the layer indices
    are not ``0..N-1`` or the layers do not hold the same parameters."""
    per_layer, _ = _patterns(prefix_per_layer, stacked_prefix)
    items, groups = _group_layers(flat, per_layer, lambda m: (int(m["i"]), m["rest"]))
    out: dict[str, Any] = {}
    for path, value in items:
        if path not in groups or value is not groups[path]:
            out[path] = value
            continue
        where = f"{path}{prefix_per_layer}"
        layers: dict[int, dict[str, Any]] = {}
        for (i, rest), leaf in value.items():
            layers.setdefault(i, {})[rest] = leaf
        if sorted(layers) != list(range(len(layers))):
            raise ValueError(f"{where}: layer indices {sorted(layers)} are not 0..{len(layers) - 1}")
        names = list(layers[0])
        for i, params in layers.items():
            if set(params) != set(names):
                diff = sorted(set(params) ^ set(names))
                raise ValueError(f"{where.format(i=i)} does not hold the parameters of layer 0: {diff[:4]}")
        for rest in names:
            values = [layers[i][rest] for i in range(len(layers))]
            shapes = {tuple(np.shape(v)) for v in values}
            if len(shapes) > 1:
                raise ValueError(f"{where}/{rest}: the layers have different shapes {sorted(shapes)}")
            out[f"{path}{stacked_prefix}/{rest}"] = stack(values)
    return out


def unstack_layers(flat: Mapping[str, Any], prefix_per_layer: str = "encoder/layer_{i}",
                   stacked_prefix: str = "encoder/layers") -> dict[str, Any]:
    """Stacked -> per-layer, the inverse of :func:`stack_layers` (``value[i]``: views for
    numpy arrays, bit-exact); the per-layer paths are ordered by layer."""
    _, stacked = _patterns(prefix_per_layer, stacked_prefix)
    items, groups = _group_layers(flat, stacked, lambda m: m["rest"])
    out: dict[str, Any] = {}
    for path, value in items:
        if path not in groups or value is not groups[path]:
            out[path] = value
            continue
        lengths = {np.shape(v)[0] if np.ndim(v) else None for v in value.values()}
        if len(lengths) != 1 or None in lengths:
            raise ValueError(f"{path}{stacked_prefix}: leaves have no common leading layer axis ({lengths})")
        for i in range(lengths.pop()):
            prefix = path + prefix_per_layer.format(i=i)
            out.update({f"{prefix}/{rest}": leaf[i] for rest, leaf in value.items()})
    return out


def to_layout(flat: Mapping[str, Any], target: str, prefix_per_layer: str, stacked_prefix: str,
              **kwargs) -> dict[str, Any]:
    """``flat`` in the ``target`` layout (``"stacked"`` or ``"per_layer"``), converted if needed."""
    current = layout(flat, prefix_per_layer, stacked_prefix)
    if current is None or current == target:
        return dict(flat)
    if target == "stacked":
        return stack_layers(flat, prefix_per_layer, stacked_prefix, **kwargs)
    return unstack_layers(flat, prefix_per_layer, stacked_prefix)


def module_layer_layout(module: nn.Module) -> tuple[str, str, str] | None:
    """``(layout, prefix_per_layer, stacked_prefix)`` of a model that can scan its layers
    (``layout``: the one its parameters are in), None for other models."""
    prefixes = getattr(type(module), "layer_layout", None)
    if prefixes is None:
        return None
    return ("stacked" if module.scan_layers else "per_layer", *prefixes)

