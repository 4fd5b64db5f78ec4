"""What every Pallas kernel of ``zoo.attention`` shares: backends, dispatch, padding, export.

A fused kernel is written once as a Pallas kernel body and launched in one of three ways
(``backend``):

* ``"tpu"``: Mosaic, grid specs with scalar prefetch where indices drive the blocks;
* ``"gpu"``: Triton (``jax.experimental.pallas.triton``), where indices are ordinary
  operands read inside the kernel;
* ``"interpret"``: the same kernels run by Pallas' interpreter on any backend (CPU tests:
  slow, exact).

``backend=None`` lets the lowering platform decide (:func:`by_platform`, built on
``lax.platform_dependent``): TPU -> ``"tpu"``, CUDA/ROCm -> ``"gpu"``, anything else ->
``"interpret"``. So ``jax.export.export(f, platforms=("cuda",))`` on a CPU machine lowers the
Triton kernels, which is how the tests check that every kernel compiles for chips this
machine does not have (:func:`export_for`).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array

BACKENDS = ("tpu", "gpu", "interpret")
TRITON_CUSTOM_CALL = "__gpu$xla.gpu.triton"  # what Pallas' Triton lowering emits


def check_backend(backend: str | None) -> str | None:
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"Pallas backend {backend!r} is not one of {BACKENDS} (or None: the lowering platform's)")
    return backend


def by_platform(launch: Callable[..., object], *args, backend: str | None = None):
    """``launch(*args, backend=...)`` with the backend of the platform being lowered for.

    ``launch`` is traced once per backend when ``backend`` is None (only the branch of the
    platform that is lowered is compiled); an explicit ``backend`` is used as given.
    """
    if check_backend(backend) is not None:
        return launch(*args, backend=backend)
    return jax.lax.platform_dependent(
        *args,
        tpu=lambda *a: launch(*a, backend="tpu"),
        cuda=lambda *a: launch(*a, backend="gpu"),
        rocm=lambda *a: launch(*a, backend="gpu"),
        default=lambda *a: launch(*a, backend="interpret"),
    )


def refuse_unfused(kernel: str, *, return_probs: bool, dropout_rate: float, deterministic: bool) -> None:
    """What no fused kernel does: return the probabilities (it never forms them) or attention
    dropout in training. A ValueError naming ``kernel`` and what was asked."""
    if return_probs:
        raise ValueError(f"{kernel} cannot return the attention probabilities (return_probs / output_attentions): "
                         "the fused kernel never forms them; use the XLA kernel (attention_kernel='xla')")
    if dropout_rate > 0.0 and not deterministic:
        raise ValueError(f"{kernel} has no attention dropout in training (dropout_rate > 0 with "
                         "deterministic=False); use the XLA kernel (attention_kernel='xla')")


def interpret_flag(backend: str) -> bool:
    """The ``interpret=`` argument of ``pl.pallas_call`` for a backend."""
    return backend == "interpret"


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def pad_axis(x: Array, axis: int, size: int, value=0) -> Array:
    """``x`` padded at the end of ``axis`` to ``size`` (unchanged if already that long)."""
    extra = size - x.shape[axis]
    if extra < 0:
        raise ValueError(f"cannot pad axis {axis} of shape {x.shape} down to {size}")
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths, constant_values=value)


def export_for(fn: Callable, platform: str, *args, **kwargs) -> jax.export.Exported:
    """``jax.export`` of ``jax.jit(fn)`` for ``platform`` ("tpu", "cuda", "rocm") from any machine.

    Pallas' Triton custom call carries no serialization-compatibility guarantee, so that
    check is disabled for it (we lower to see the kernels compile, not to store them).
    """
    disabled = [jax.export.DisabledSafetyCheck.custom_call(TRITON_CUSTOM_CALL)]
    return jax.export.export(jax.jit(fn, **kwargs), platforms=(platform,), disabled_checks=disabled)(*args)


__all__ = ["BACKENDS", "by_platform", "check_backend", "export_for", "interpret_flag", "pad_axis", "refuse_unfused",
           "round_up"]
