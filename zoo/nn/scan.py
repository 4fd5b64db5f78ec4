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
is kept) and :func:`layout` tells which one a set of paths is in. ``first > 0`` keeps layers
``0..first-1`` per layer in both layouts (run outside the scan, e.g. SEW-D's first layer
when a conv branch follows it) and stacks ``first..N-1``. Models that support scanning
declare their ``layer_layout`` ``(per_layer_prefix, stacked_prefix[, first])`` (a class
attribute, or a property when it depends on the config) and a ``scan_layers`` field;
``zoo.from_pretrained`` / ``save_pretrained`` / ``export_pytorch`` convert through
:func:`module_layer_layout`.
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
def _reseed(fn: Callable) -> Callable:
    """``fn(module, *args)`` -> ``g(module, keys, *args)`` where ``module``'s rng of each stream
    in ``keys`` (``{stream: key}``) is that raw key (no path folded in): the same key gives
    the same random numbers whether the module is ``layer_3`` or the body of a scan."""

    def transform(core_fn):
        def inner(scope_fn, repack_fn, variable_groups, rng_groups, keys, *args):
            rng_groups = tuple(tuple({**rngs, **keys} for rngs in group) for group in rng_groups)
            scope = scope_fn(variable_groups, rng_groups)
            # fresh counters: a scan traces its body more than once with the same scope counters
            for inner_scope in scope:  # one scope per module argument
                inner_scope.rng_counters = {name: 0 for name in inner_scope.rngs}
            return core_fn(scope, *args), repack_fn(scope)

        return lift.pack(inner, (True,), (True,), (True,), name="reseed")

    return nn.transforms.lift_transform(transform, fn)


def layer_rngs(module: nn.Module, deterministic: bool, streams: Sequence[str | None] = ("dropout",),
               required: Sequence[str] = ()) -> dict[str, jax.Array] | None:
    """``{stream: key}`` drawn in ``module`` (call from its compact method) for
    :func:`run_layers`'s ``rng``: each of ``streams`` the module has (None entries skipped),
    and each of ``required`` (flax's error names a missing one); None when ``deterministic``
    or there is none."""
    if deterministic:
        return None
    keys = {s: module.make_rng(s) for s in streams if s is not None and module.has_rng(s)}
    keys.update({s: module.make_rng(s) for s in required})
    return keys or None


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
    rng: jax.Array | Mapping[str, jax.Array] | None = None,
    name: str = "layer_{i}",
    stacked_name: str = "layers",
    first: int = 0,
) -> tuple[Any, list[Any]]:
    """Run ``num_layers`` layers over ``carry``; call from a compact method.

    make_layer: ``name -> layer module`` (unbound; ``name`` is ``name.format(i=first + i)``
      per layer, or ``stacked_name`` for the one scanned layer).
    step: ``(layer, carry, x, *consts) -> (carry, y)``; ``x`` is ``xs[i]`` (``xs``: one
      pytree of arrays per layer, or None; stacked for the scan); ``consts`` are the same
      for every layer; static settings (``deterministic``, ...) are closed over.
    rng: a key (the encoder's ``"dropout"`` draw) split into one ``"dropout"`` key per
      layer, or ``{stream: key}`` split per layer for each stream; None when deterministic.
    first: the index of the first layer run here (layers ``0..first-1`` ran before, per
      layer, see the module docstring).
    Returns the final carry and the per-layer ``y`` as a list of ``num_layers`` pytrees,
    equal in both layouts.
    """
    check_remat_policy(remat_policy)
    layer_step = step
    if remat_policy is not None:
        layer_step = nn.remat(step, policy=REMAT_POLICIES[remat_policy], prevent_cse=not scan_layers)
    if rng is not None and not isinstance(rng, Mapping):
        rng = {"dropout": rng}
    keys = None if not rng else {stream: jax.random.split(key, num_layers) for stream, key in rng.items()}
    reseeded = None if keys is None else _reseed(layer_step)

    def body(layer, carry, key_x, *consts):  # key_x: (this layer's {stream: key} or None, xs[i])
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
        kx = (None if keys is None else {s: k[i] for s, k in keys.items()}, None if xs is None else xs[i])
        carry, y = body(make_layer(name.format(i=first + i)), carry, kx, *consts)
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
           stacked_prefix: str = "encoder/layers", first: int = 0) -> str | None:
    """``"stacked"``, ``"per_layer"`` or None (no layer path at all) for flat ``paths``
    (layers below ``first`` are per layer in both layouts and not counted).
    Raises ValueError when both layouts are present."""
    per_layer, stacked = _patterns(prefix_per_layer, stacked_prefix)
    found = set()
    for path in paths:
        if stacked.match(path):
            found.add("stacked")
        elif _match_layer(per_layer, path, first):
            found.add("per_layer")
    if len(found) > 1:
        raise ValueError(f"parameters hold both {prefix_per_layer!r} and {stacked_prefix!r} layers")
    return found.pop() if found else None


def _match_layer(pattern: re.Pattern, path: str, first: int = 0) -> re.Match | None:
    """``pattern``'s match of ``path``, None for a per-layer path of a layer below ``first``."""
    m = pattern.match(path)
    return None if m is None or ("i" in m.re.groupindex and int(m["i"]) < first) else m


def _group_layers(flat: Mapping[str, Any], pattern: re.Pattern, key: Callable[[re.Match], Any], first: int = 0):
    """``flat`` in order as ``(path, value)`` for paths ``pattern`` does not match (or layers
    below ``first``), and ``(lead, {key(match): value})`` once per group of matching paths,
    at its first path."""
    items: list[tuple[str, Any]] = []
    groups: dict[str, dict] = {}
    for path, value in flat.items():
        m = _match_layer(pattern, path, first)
        if m is None:
            items.append((path, value))
            continue
        if m["lead"] not in groups:
            groups[m["lead"]] = {}
            items.append((m["lead"], groups[m["lead"]]))
        groups[m["lead"]][key(m)] = value
    return items, groups


def stack_layers(flat: Mapping[str, Any], prefix_per_layer: str = "encoder/layer_{i}",
                 stacked_prefix: str = "encoder/layers", first: int = 0, *,
                 stack: Callable = np.stack) -> dict[str, Any]:
    """Per-layer -> stacked: ``{lead}{prefix_per_layer}/{rest}`` for ``i = first..N-1`` become
    one ``{lead}{stacked_prefix}/{rest}`` of shape ``[N - first, ...]`` (``stack``, numpy by
    default); other paths (layers below ``first`` included) are kept as they are, in order.
    Raises ValueError when the layer indices are not ``first..N-1`` or the layers do not
    hold the same parameters."""
    per_layer, _ = _patterns(prefix_per_layer, stacked_prefix)
    items, groups = _group_layers(flat, per_layer, lambda m: (int(m["i"]), m["rest"]), first)
    out: dict[str, Any] = {}
    for path, value in items:
        if path not in groups or value is not groups[path]:
            out[path] = value
            continue
        where = f"{path}{prefix_per_layer}"
        layers: dict[int, dict[str, Any]] = {}
        for (i, rest), leaf in value.items():
            layers.setdefault(i, {})[rest] = leaf
        indices = list(range(first, first + len(layers)))
        if sorted(layers) != indices:
            raise ValueError(f"{where}: layer indices {sorted(layers)} are not {first}..{indices[-1]}")
        names = list(layers[first])
        for i, params in layers.items():
            if set(params) != set(names):
                diff = sorted(set(params) ^ set(names))
                raise ValueError(f"{where.format(i=i)} does not hold the parameters of layer {first}: {diff[:4]}")
        for rest in names:
            values = [layers[i][rest] for i in indices]
            shapes = {tuple(np.shape(v)) for v in values}
            if len(shapes) > 1:
                raise ValueError(f"{where}/{rest}: the layers have different shapes {sorted(shapes)}")
            out[f"{path}{stacked_prefix}/{rest}"] = stack(values)
    return out


def unstack_layers(flat: Mapping[str, Any], prefix_per_layer: str = "encoder/layer_{i}",
                   stacked_prefix: str = "encoder/layers", first: int = 0) -> dict[str, Any]:
    """Stacked -> per-layer, the inverse of :func:`stack_layers` (``value[i]`` becomes layer
    ``first + i``; views for numpy arrays, bit-exact); the per-layer paths are ordered by layer."""
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
            prefix = path + prefix_per_layer.format(i=first + i)
            out.update({f"{prefix}/{rest}": leaf[i] for rest, leaf in value.items()})
    return out


def to_layout(flat: Mapping[str, Any], target: str, prefix_per_layer: str, stacked_prefix: str,
              first: int = 0, **kwargs) -> dict[str, Any]:
    """``flat`` in the ``target`` layout (``"stacked"`` or ``"per_layer"``), converted if needed."""
    current = layout(flat, prefix_per_layer, stacked_prefix, first)
    if current is None or current == target:
        return dict(flat)
    if target == "stacked":
        return stack_layers(flat, prefix_per_layer, stacked_prefix, first, **kwargs)
    return unstack_layers(flat, prefix_per_layer, stacked_prefix, first)


def module_layer_layout(module: nn.Module) -> tuple[str, str, str, int] | None:
    """``(layout, prefix_per_layer, stacked_prefix, first)`` of a model that can scan its
    layers (``layout``: the one its parameters are in), None for other models."""
    prefixes = getattr(module, "layer_layout", None)
    if prefixes is None:
        return None
    prefix_per_layer, stacked_prefix, *first = prefixes
    return ("stacked" if module.scan_layers else "per_layer", prefix_per_layer, stacked_prefix, *(first or [0]))

