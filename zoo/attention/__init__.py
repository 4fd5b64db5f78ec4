"""Attention kernels sharing one signature (see ``zoo.attention.dense``)."""

from zoo.attention.dense import dot_product_attention

__all__ = ["dot_product_attention"]
