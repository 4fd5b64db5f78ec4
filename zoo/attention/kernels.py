"""Which attention kernel runs: the ``attention_kernel`` setting of every model.

``attention_kernel`` is a field of every architecture (``zoo.from_pretrained(path,
attention_kernel="pallas")``, ``model.apply(variables, ..., attention_kernel="xla")``):

============  =====================================================================
``"auto"``    GPU: cuDNN's fused kernel where it applies (dense, half precision, no
              head mask / probabilities / dropout), else the Pallas kernel where it
              applies, else XLA. TPU: Pallas where it applies, else XLA. CPU: XLA.
``"xla"``     the XLA compositions of ``zoo.attention.{dense,block_sparse,disentangled}``.
``"pallas"``  the fused Pallas kernels (``pallas_dense``, ``pallas_block_sparse``,
              ``pallas_disentangled``), lowered for the platform: Mosaic on TPU, Triton
              on GPU, Pallas' interpreter on CPU (slow; for tests). Asking them for what
              they cannot do (probabilities, attention dropout in training) is an error.
``"cudnn"``   dense attention through ``jax.nn.dot_product_attention(implementation="cudnn")``
              (GPU only); the block-sparse and disentangled kernels have no cuDNN form, so
              they raise.
============  =====================================================================

"Where it applies" is decided at trace time from static facts (shapes, dtypes, whether
probabilities or dropout are asked for), so ``auto`` never fails where XLA would work.
Each selector is a small frozen dataclass with the kernel signature of ``zoo.attention``,
so it is a valid (hashable) field of a Flax module.
"""

from __future__ import annotations

import dataclasses

import jax

from zoo.attention import pallas_block_sparse, pallas_dense, pallas_disentangled
from zoo.attention.block_sparse import BigBirdBlockSparse, block_sparse_attention
from zoo.attention.dense import cudnn_applies, dot_product_attention
from zoo.attention.disentangled import disentangled_attention

Array = jax.Array

ATTENTION_KERNELS = ("auto", "xla", "pallas", "cudnn")


def check_kernel(kind: str, family: str | None = None) -> str:
    """``kind`` if it is a kernel setting (and, for ``family``, one that family has)."""
    if kind not in ATTENTION_KERNELS:
        raise ValueError(f"attention_kernel {kind!r} is not one of {ATTENTION_KERNELS}")
    if kind == "cudnn" and family not in (None, "dense"):
        raise ValueError(f"attention_kernel='cudnn' has no {family} kernel (cuDNN fuses dense attention only); "
                         "use 'auto', 'pallas' or 'xla'")
    return kind


def _platform() -> str:
    return jax.default_backend()


def _dropout_active(kwargs: dict) -> bool:
    return kwargs.get("dropout_rate", 0.0) > 0.0 and not kwargs.get("deterministic", True)


def _per_head(head_mask) -> bool:
    """The fused kernels take a head mask that scales whole heads ([B, H, 1, 1]-broadcastable)."""
    return head_mask is None or (head_mask.ndim <= 4 and head_mask.shape[-2:] in ((1, 1), (1,), ()))


def _fused_applies(kwargs: dict) -> bool:
    """What the Pallas kernels do: no probabilities, no attention dropout, per-head masks."""
    return (not kwargs.get("return_probs", False) and not _dropout_active(kwargs)
            and _per_head(kwargs.get("head_mask")))


def _fused_or_xla(kernel: str, kwargs: dict) -> str:
    """The choice of a kernel family without a cuDNN form: Pallas on GPU/TPU where it applies."""
    if kernel != "auto":
        return kernel
    return "pallas" if _platform() in ("gpu", "tpu") and _fused_applies(kwargs) else "xla"


@dataclasses.dataclass(frozen=True)
class DenseAttention:
    """Dense attention with the kernel ``kernel`` (see the module docstring)."""

    kernel: str = "auto"

    def __post_init__(self):
        check_kernel(self.kernel, "dense")

    def choose(self, query: Array, kwargs: dict) -> str:
        """The kernel that runs for these inputs: "xla", "pallas" or "cudnn"."""
        if self.kernel != "auto":
            return self.kernel
        platform = _platform()
        if platform == "gpu" and cudnn_applies(query, kwargs.get("return_probs", False), _dropout_active(kwargs),
                                            kwargs.get("head_mask")):
            return "cudnn"
        if platform in ("gpu", "tpu") and _fused_applies(kwargs):
            return "pallas"
        return "xla"

    def __call__(self, query, key, value, **kwargs):
        kind = self.choose(query, kwargs)
        if kind == "pallas":
            return pallas_dense.flash_attention(query, key, value, **kwargs)
        return dot_product_attention(query, key, value, implementation=kind, **kwargs)


@dataclasses.dataclass(frozen=True)
class BlockSparseAttention(BigBirdBlockSparse):
    """BigBird's block-sparse attention (random blocks drawn per call, as
    :class:`~zoo.attention.block_sparse.BigBirdBlockSparse`) with the kernel ``kernel``."""

    kernel: str = "auto"

    def __post_init__(self):
        check_kernel(self.kernel, "block-sparse")

    def choose(self, kwargs: dict) -> str:
        return _fused_or_xla(self.kernel, kwargs)

    def __call__(self, query, key, value, *, rng=None, layer=0, dropout_rate=0.0, **kwargs):
        rand_attn = self.random_blocks(rng, query.shape[2], query.shape[1], layer)
        kwargs.update(block_size=self.block_size, rand_attn=rand_attn,
                      dropout_rate=dropout_rate if self.attention_dropout else 0.0)
        if self.choose(kwargs) == "pallas":
            return pallas_block_sparse.block_sparse_flash_attention(query, key, value, **kwargs)
        return block_sparse_attention(query, key, value, **kwargs)


@dataclasses.dataclass(frozen=True)
class DisentangledAttention:
    """DeBERTa-v2 disentangled attention with the kernel ``kernel``; the relative positions
    come from the bucket settings (``position_buckets``, ``max_relative_positions``), from which
    both kernels compute them (no ``[L, L]`` position array is passed around)."""

    kernel: str = "auto"

    def __post_init__(self):
        check_kernel(self.kernel, "disentangled")

    def choose(self, kwargs: dict) -> str:
        return _fused_or_xla(self.kernel, kwargs)

    def __call__(self, query, key, value, **kwargs):
        if self.choose(kwargs) == "pallas":
            return pallas_disentangled.disentangled_flash_attention(query, key, value, **kwargs)
        return disentangled_attention(query, key, value, **kwargs)


__all__ = ["ATTENTION_KERNELS", "BlockSparseAttention", "DenseAttention", "DisentangledAttention", "check_kernel"]
