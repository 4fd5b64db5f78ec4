"""Keep freed host memory in the process, so that XLA:CPU's buffers are not faulted in anew each step.

Each run of a compiled XLA:CPU program takes its temporary buffer (1.3 GB for the Data2VecText
base fine-tuning step, 8 x 128 tokens) and its outputs from ``malloc``. glibc hands allocations
this large to ``mmap`` and gives them back to the kernel with ``munmap`` when they are freed, so
the next step touches fresh pages: 318,000 page faults and about 0.5 s of kernel time per step on
2 cores (``getrusage``), for pages the kernel must also zero. :func:`keep_freed_memory` sets
glibc's ``mallopt`` so that freed memory stays in the process for the next step:

- ``M_ARENA_MAX = 1``: one arena. In a thread's own arena glibc serves a request larger than a
  heap (64 MB) with ``mmap`` whatever ``M_MMAP_MAX`` says, and XLA allocates on its worker threads.
- ``M_MMAP_MAX = 0``: large blocks come from the heap, not from ``mmap``.
- ``M_TRIM_THRESHOLD = -1``: the heap is never trimmed back to the kernel.

The process then keeps its peak heap for its lifetime (a training process does reach a steady
state), and all threads share one arena lock (XLA allocates per program run, not per element, so
this costs nothing measurable on the zoo's steps). Results are unchanged: only where the bytes live.

Measured (benchmarks/README.md, "Host memory"): the Data2VecText base step 2.7-2.8 -> 2.3-2.5 s alone;
torch's own step gains as much (2.5-2.7 -> 2.3-2.4 s). ``zoo finetune`` calls it; library users call
it first thing, before any JAX computation (later, XLA's threads already have their own arenas).
"""

from __future__ import annotations

import ctypes
import platform
import sys
import warnings

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))

_applied = False


def _jax_started() -> bool:
    """Whether JAX has created its backends (and with them XLA's worker threads)."""
    if "jax" not in sys.modules:
        return False
    from jax._src import xla_bridge

    return bool(xla_bridge.backends_are_initialized())


def keep_freed_memory(*, warn_if_late: bool = True) -> bool:
    """Make glibc keep freed memory in the process (see the module docstring).

    Returns True when the settings are in force (also on a second call), False where they cannot
    apply: a C library other than glibc (macOS, musl), or JAX already started, which also warns
    unless ``warn_if_late=False``.
    """
    global _applied
    if _applied:
        return True
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    if _jax_started():
        if warn_if_late:
            warnings.warn("keep_freed_memory() does nothing once JAX has started: XLA's worker threads already "
                          "have their own malloc arenas. Call it before the first JAX computation.",
                          stacklevel=2)
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    for option, value in _SETTINGS:
        if mallopt(option, value) != 1:
            raise OSError(f"glibc mallopt({option}, {value}) failed")
    _applied = True
    return True
