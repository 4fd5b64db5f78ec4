"""Many hosts for real: `zoo finetune` as two local CPU processes joined by jax.distributed
(a 127.0.0.1 coordinator, gloo collectives), two devices each, against one process with the
same four devices. Same losses, one checkpoint written by both and restored by both, one
model directory written by process 0.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import zoo
from test_finetune import text_data
from zoo.models.data2vec_text import Data2VecTextConfig

REPO = Path(__file__).resolve().parents[1]
# No dropout: the two runs must compute the same numbers (their dropout masks would agree
# too, but a deterministic model makes the comparison about the sharding alone).
TEXT = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=40, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
RECIPE = dict(task="text_classification", learning_rate=3e-3, weight_decay=0.01, schedule="linear",
              warmup_steps=1, total_steps=6, batch_size=8, max_grad_norm=1.0, seed=3)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("multihost")
    model = zoo.build_model(Data2VecTextConfig.from_dict(TEXT), "Data2VecTextModel")
    zoo.save_pretrained(root / "ckpt", model, zoo.init_params(model, 0))
    text_data(root / "train.jsonl", rows=40)
    (root / "recipe.json").write_text(json.dumps(RECIPE))
    return root


def _launch(root: Path, output: str, max_steps: int, devices: int, process: tuple[int, int, int] | None = None):
    # (cheaper compiles: the programs are tiny, LLVM's optimisations cost more than they save)
    flags = f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0 " \
            "--xla_llvm_disable_expensive_passes=true"
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags,
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    # the resumed leg compiles what the first leg compiled: a shared persistent cache
    env.update(JAX_COMPILATION_CACHE_DIR=str(root / "jax-cache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    for key in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "zoo", "finetune", "--recipe", str(root / "recipe.json"),
           "--checkpoint", str(root / "ckpt"), "--data", str(root / "train.jsonl"), "--output", str(root / output),
           "--mesh", "data=2,fsdp=2", "--max-steps", str(max_steps), "--save-every", "3", "--no-progress"]
    if process is not None:
        port, pid, count = process
        # one via flags, one via the environment: both ways of joining are exercised
        if pid == 0:
            cmd += ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(count), "--process-id", str(pid)]
        else:
            env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(count),
                       JAX_PROCESS_ID=str(pid))
    return subprocess.Popen(cmd, env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(*procs, timeout=300) -> list[str]:
    outs = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        outs.append(out)
        assert proc.returncode == 0, f"zoo finetune failed:\n{out[-5000:]}"
    return outs


def _two_processes(root: Path, output: str, max_steps: int) -> list[str]:
    port = _free_port()
    return _finish(*(_launch(root, output, max_steps, 2, (port, pid, 2)) for pid in (0, 1)))


def _losses(path: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, path.read_text().splitlines())}


def test_two_processes_train_as_one(setup):
    root = setup
    single = _launch(root, "one", 6, 4)
    first = _two_processes(root, "two", 3)          # runs while the single process compiles
    _finish(single)
    assert "resuming" not in first[0]
    second = _two_processes(root, "two", 6)         # both processes restore step 3 and go on
    assert "resuming from step 3" in second[0], second[0][-2000:]

    one, two = _losses(root / "one" / "metrics.jsonl"), _losses(root / "two" / "metrics.jsonl")
    assert sorted(one) == sorted(two) == [1, 2, 3, 4, 5, 6]
    diffs = [abs(one[s] - two[s]) for s in one]
    assert max(diffs) <= 1e-5, (one, two)
    assert one[6] < one[1]

    # one checkpoint per saved step, written once by the two processes together
    assert sorted(p.name for p in (root / "two" / "checkpoints").iterdir() if p.name.isdigit()) == ["3", "6"]
    _, a = zoo.from_pretrained(root / "one" / "model")
    model, b = zoo.from_pretrained(root / "two" / "model")
    assert model.config.id2label == {0: "high", 1: "low"}
    flat_a, flat_b = zoo.tree.flatten_variables(a), zoo.tree.flatten_variables(b)
    assert flat_a.keys() == flat_b.keys()
    assert max(float(np.max(np.abs(np.asarray(flat_a[k]) - np.asarray(flat_b[k])))) for k in flat_a) <= 1e-5
