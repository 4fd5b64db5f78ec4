"""``PretrainedModule``: the base of every architecture class (each family's ``ARCHITECTURES``).

Its ``apply`` checks, before Flax sees them, that the variables are the variables dict
(``{"params": ...}`` plus ``"batch_stats"`` where the model has batch norm) that
``zoo.from_pretrained`` / ``zoo.init`` / ``zoo.init_params`` return, and raises a message
that says what is wrong otherwise (see :func:`zoo.tree.check_variables`): the usual
mistakes are wrapping that dict once more, ``model.apply({"params": variables}, ...)``, and
passing a bare params tree. The check is Python on the dict's keys, so under ``jax.jit`` it
runs once, at trace time, and costs nothing in the compiled function. Everything else
(``method=``, ``mutable=``, ``rngs=``, ``init``, lifted transforms of inner layers) is Flax's.

Every architecture also has the fields ``attention_kernel`` (``"auto"``, ``"xla"``,
``"pallas"``, ``"cudnn"``: see :mod:`zoo.attention.kernels`) and ``attention_fn`` (a custom
dense kernel with the ``zoo.attention`` signature, which then replaces the choice for dense
attention). ``apply(..., attention_kernel=...)`` runs one call with another kernel.
"""

from __future__ import annotations

import flax.linen as nn

from zoo.attention.kernels import DenseAttention, check_kernel
from zoo.tree import check_variables


class PretrainedModule(nn.Module):
    """``nn.Module`` whose ``apply`` checks its variables (a clear error instead of Flax's)."""

    def __post_init__(self):
        if hasattr(self, "attention_kernel"):  # a bad name fails when the model is built, not at its first call
            check_kernel(self.attention_kernel)
        super().__post_init__()

    @nn.nowrap
    def apply(self, variables, *args, attention_kernel: str | None = None, **kwargs):
        check_variables(variables, type(self).__name__)
        module = self if attention_kernel is None else self.with_attention_kernel(attention_kernel)
        return nn.Module.apply(module, variables, *args, **kwargs)

    @nn.nowrap
    def with_attention_kernel(self, attention_kernel: str) -> "PretrainedModule":
        """This model with another ``attention_kernel`` (same parameters)."""
        check_kernel(attention_kernel)
        if not hasattr(self, "attention_kernel"):
            raise ValueError(f"{type(self).__name__} has no attention_kernel setting")
        return self.clone(attention_kernel=attention_kernel)

    @nn.nowrap
    def dense_attention(self):
        """The dense kernel this model's layers call: ``attention_fn`` if given, else the
        ``attention_kernel`` choice."""
        custom = getattr(self, "attention_fn", None)
        return custom if custom is not None else DenseAttention(self.attention_kernel)


__all__ = ["PretrainedModule"]
