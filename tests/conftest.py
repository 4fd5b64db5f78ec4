import os
import sys

# Tests run on the CPU even where a GPU is present, in fp32 and with exact matmuls.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, os.path.dirname(__file__))
# The test models are tiny: compiling dominates, and LLVM's optimisation passes cost more than
# they save. Same arithmetic (no fast-math), so parity is unaffected; subprocesses and notebook
# kernels inherit it. Benchmarks do not run under this.
_FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FAST_COMPILE}".strip()

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


# The longest test files first: with `-n 2 --dist loadfile` each worker takes whole files in
# this order, so the long ones start early instead of leaving one worker alone at the end.
_LONGEST_FIRST = ("test_readme.py", "test_notebooks.py", "test_big_bird_parity.py", "test_data2vec_vision_parity.py",
                  "test_multihost.py", "test_sew_d_parity.py", "test_finetune.py", "test_benchmarks.py", "test_idefics_parity.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(os.path.basename(str(item.fspath)), len(rank)))  # stable: order kept within
