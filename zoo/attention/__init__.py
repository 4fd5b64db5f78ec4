"""Attention kernels sharing one signature (see ``zoo.attention.dense``).

``dense``, ``block_sparse`` (BigBird) and ``disentangled`` (DeBERTa-v2 / SEW-D) are XLA
compositions; ``pallas_dense``, ``pallas_block_sparse`` and ``pallas_disentangled`` are the
same kernels fused in Pallas (Mosaic on TPU, Triton on GPU, interpreted elsewhere), on the
helpers of ``pallas_support``; ``kernels`` chooses between them (the models'
``attention_kernel`` setting).
"""

from zoo.attention.dense import dot_product_attention

__all__ = ["dot_product_attention"]
