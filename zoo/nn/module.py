"""``PretrainedModule``: the base of every architecture class (each family's ``ARCHITECTURES``).

Its ``apply`` checks, before Flax sees them, that the variables are the variables dict
(``{"params": ...}`` plus ``"batch_stats"`` where the model has batch norm) that
``zoo.from_pretrained`` / ``zoo.init`` / ``zoo.init_params`` return, and raises a message
that says what is wrong otherwise (see :func:`zoo.tree.check_variables`): the usual
mistakes are wrapping that dict once more, ``model.apply({"params": variables}, ...)``, and
passing a bare params tree. The check is Python on the dict's keys, so under ``jax.jit`` it
runs once, at trace time, and costs nothing in the compiled function. Everything else
(``method=``, ``mutable=``, ``rngs=``, ``init``, lifted transforms of inner layers) is Flax's.
"""

from __future__ import annotations

import flax.linen as nn

from zoo.tree import check_variables


class PretrainedModule(nn.Module):
    """``nn.Module`` whose ``apply`` checks its variables (a clear error instead of Flax's)."""

    @nn.nowrap
    def apply(self, variables, *args, **kwargs):
        check_variables(variables, type(self).__name__)
        return super().apply(variables, *args, **kwargs)


__all__ = ["PretrainedModule"]
