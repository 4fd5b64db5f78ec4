"""Smoke test of ``benchmarks/train_throughput.py``: ``--small --no-write`` in a subprocess, the way it
is run by hand (2-layer hidden-64 models of both families; most of the time goes to imports and
the XLA compiles of the two train steps and the two dropout-free checks)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_train_throughput_small_runs_and_checks_losses():
    # compile faster: the programs are tiny, LLVM's optimisations cost more than they save here
    xla_flags = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
                 " --xla_llvm_disable_expensive_passes=true")
    env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error",
               XLA_FLAGS=xla_flags.strip())
    before = set((ROOT / "benchmarks" / "results").glob("train_throughput*"))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.train_throughput", "--small", "--no-write"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    # the dropout-free loss and gradient norm of the zoo and HF agree on the same batch (same model, same data)
    checks = re.findall(r"^- check, same batch, eval mode \(dropout off\), fp32: loss zoo (\S+) / HF (\S+) "
                        r"\(rel diff (\S+)\); global grad norm zoo (\S+) / HF (\S+) \(rel diff (\S+)\)$", out, re.M)
    assert len(checks) == 2, out[-3000:]
    for zl, hl, rl, zg, hg, rg in checks:
        assert float(rl) < 1e-5 and float(rg) < 1e-4 and float(zg) > 0, (zl, hl, zg, hg)
    # both workloads timed for both implementations, with throughput and the zoo as the reference
    assert "#### text: Data2VecTextForSequenceClassification" in out and "#### audio: Data2VecAudioForCTC" in out
    assert "| ms/step median (min, IQR) | steps/s | tokens/s |" in out
    assert "| ms/step median (min, IQR) | steps/s | audio s/s |" in out
    assert len(re.findall(r"^\| zoo \| \d+ \(\d+, \d+\) \| [\d.]+ \| [\d.]+ \| [\d.]+ \| n/a \(CPU\) \| 1\.00 "
                          r"\(reference\) \|$", out, re.M)) == 2, out[-3000:]
    assert len(re.findall(r"^\| hf \| \d+ \(\d+, \d+\) \| [\d.]+ \| [\d.]+ \| [\d.]+ \| n/a \(CPU\) \| "
                          r"\*\*[\d.]+x\*\* \|$", out, re.M)) == 2, out[-3000:]
    assert len(re.findall(r"^- zoo compile \(apart from the timings\): trace\+lower [\d.]+ s \+ XLA [\d.]+ s", out,
                          re.M)) == 2
    # the train steps really train: finite losses after the timed steps
    after = re.findall(r"^after timing: zoo loss (\S+) .* HF loss (\S+)$", out, re.M)
    assert len(after) == 2 and all(float(v) == float(v) and float(v) < 1e4 for pair in after for v in pair), after
    assert set((ROOT / "benchmarks" / "results").glob("train_throughput*")) == before  # --no-write wrote nothing


def test_flops_formulas():
    from benchmarks import train_throughput as tt

    # text: 6 * N * tokens + 12 * L * s^2 * h * B + 6 * N_head * B
    cfg = dict(hidden_size=768, num_hidden_layers=12, intermediate_size=3072, num_labels=2)
    f = tt.text_flops(cfg, batch=8, seq=128)
    n_layers = 12 * (4 * 768 ** 2 + 2 * 768 * 3072)
    assert n_layers == 84_934_656
    assert f["total"] == 6 * n_layers * 1024 + 12 * 12 * 128 ** 2 * 768 * 8 + 6 * (768 ** 2 + 768 * 2) * 8
    # audio: 4 s at 16 kHz through data2vec-audio-base's convs is 199 frames
    acfg = tt.preset_dict("data2vec-audio-base")
    assert tt.conv_frames(acfg, 64000) == [12799, 6399, 3199, 1599, 799, 399, 199]
    a = tt.audio_flops(acfg, batch=1, samples=64000)
    first = 2 * 2 * 10 * 1 * 512 * 12799  # no gradient for the waveform: 2 x forward
    assert a["conv_feature_encoder"] > first and a["frames"] == 199
    assert a["total"] == sum(a[k] for k in ("conv_feature_encoder", "feature_projection", "positional_conv",
                                            "encoder_matmuls", "attention", "ctc_head"))
