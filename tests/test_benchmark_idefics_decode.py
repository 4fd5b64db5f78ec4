"""Smoke test of ``benchmarks/idefics_decode.py``: ``--tiny --no-write`` in a subprocess, the way
it is run by hand (about 25 s on the 2-core CPU, most of it imports and two small XLA compiles)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_idefics_decode_tiny_runs_and_checks_outputs():
    env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    before = set((ROOT / "benchmarks" / "results").glob("idefics_decode*"))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.idefics_decode", "--tiny", "--no-write"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    # outputs were compared with HF eager before timing, and agree
    for impl in ("zoo", "hf_sdpa"):
        row = re.search(rf"^\| {impl} vs hf_eager \| (\S+) \| (\S+) \| (\S+) \| \S+ \| (\d+)% of \d+ \|$", out, re.M)
        assert row, out[-3000:]
        assert max(float(v) for v in row.groups()[:3]) < 1e-5 and row.group(4) == "100", row.group(0)
    # both workloads timed for every implementation, zoo as the reference
    for impl in ("zoo", "hf_sdpa", "hf_eager"):
        assert re.search(rf"^\| {impl} \| \d+ \(\d+, \d+\) \| [\d.]+ \([\d.]+, [\d.]+\) \| [\d.]+ \|", out, re.M), impl
    assert out.count("| zoo | ") >= 3 and "#### prefill" in out and "#### decode" in out
    assert set((ROOT / "benchmarks" / "results").glob("idefics_decode*")) == before  # --no-write wrote nothing
