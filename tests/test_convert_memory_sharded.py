"""Smoke test of ``benchmarks/convert_memory_sharded.py`` in its ``--tiny`` mode: a sharded bf16
IDEFICS checkpoint is generated, converted with ``zoo convert`` and loaded with
``from_pretrained``, each in a subprocess under ``/usr/bin/time -v``; bf16 must be kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.convert_memory_sharded import plan_shards

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1"}


def test_plan_shards_greedy_in_order_big_tensor_alone():
    specs = [("a", (10,)), ("b", (10,)), ("big", (100,)), ("c", (5,)), ("d", (30,))]
    shards = plan_shards(specs, max_shard_bytes=50)  # bf16: 2 bytes per element
    assert [[n for n, _ in s] for s in shards] == [["a", "b"], ["big"], ["c"], ["d"]]


@pytest.mark.skipif(not Path("/usr/bin/time").is_file(), reason="needs GNU time (/usr/bin/time)")
def test_tiny_run_keeps_bf16(tmp_path):
    workdir = tmp_path / "work"
    t0 = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.convert_memory_sharded", "--tiny", "--no-write", "--keep",
         "--workdir", str(workdir)],
        capture_output=True, text=True, cwd=REPO_ROOT, env=ENV, timeout=300)
    elapsed = time.perf_counter() - t0
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "bf16 kept: True" in result.stdout
    assert "10/10 tensors equal" in result.stdout
    print(f"tiny run: {elapsed:.1f} s")

    src, out = workdir / "hf_idefics_bf16", workdir / "zoo_idefics_bf16"
    index = json.loads((src / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in src.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 3 and set(index["weight_map"].values()) == set(shards)
    assert json.loads((src / "config.json").read_text())["dtype"] == "bfloat16"
    assert (out / "flax_model.safetensors").is_file() and (out / "config.json").is_file()
