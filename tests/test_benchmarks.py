"""Smoke tests of the benchmarks: each runs at tiny sizes (``--tiny`` / ``--small``), writes its
JSON results into a temporary directory, and the test checks the JSON: what was timed (model,
inputs, precision, threads, load), the timings of every implementation, and that the parity
check inside the benchmark (zoo vs HF PyTorch on the same weights and inputs) holds."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import convert_memory, forward, idefics_decode, kernels, train_throughput



def _results(tmp_path, name: str) -> dict:
    data = json.loads((tmp_path / f"{name}.json").read_text())
    assert (tmp_path / f"{name}.md").is_file()
    assert data["machine"]["versions"]["jax"] and data["machine"]["date_utc"] and data["command"].startswith("python -m")
    return data


def _check_timings(timings: list[dict], names, repeats: int | None = None):
    assert [t["name"] for t in timings] == list(names)
    for t in timings:
        assert t["median_ms"] > 0 and t["min_ms"] <= t["median_ms"] and len(t["times_ms"]) == t["repeats"]
        assert repeats is None or t["repeats"] == repeats


@pytest.mark.parametrize("family", sorted(forward.WORKLOADS))
def test_forward_tiny(family, tmp_path):
    forward.main(["--family", family, "--tiny", "--out", str(tmp_path)])
    data = _results(tmp_path, "forward_" + family.replace("-", "_") + "_tiny")
    assert data["benchmark"] == "forward" and data["family"] == family and data["tiny"]
    assert data["dtype"] == "float32" and data["device"] == "cpu" and data["threads"]["torch_num_threads"] >= 1
    assert [w["workload"] for w in data["workloads"]] == list(forward.WORKLOADS[family])
    for w in data["workloads"]:
        spec = forward.WORKLOADS[family][w["workload"]]
        _check_timings(w["timings"], spec["impls"], repeats=3)
        assert w["head"] == spec["hf_class"] and w["model"].startswith(spec["hf_class"]) and w["inputs"]
        assert isinstance(w["quiet"], bool) and "foreign_cpu_fraction" in w["load"]
        assert set(w["speedup_of_zoo"]) == {f"{n} / zoo" for n in spec["impls"] if n != "zoo"}
        zoo_checks = {k: c for k, c in w["checks"].items() if k.startswith("zoo")}
        assert zoo_checks and all(set(spec["outputs"]) <= set(c) for c in zoo_checks.values())
        # the parity contract of tests/hf_parity.py: 1e-5, or one float32 spacing for values past 128
        bounds = {p: dict(b) for p, b in w["parity_bounds"].items()}
        if family == "groupvit" and w["workload"] == "seg":
            # The tiny GroupViT's segmentation logits reach 40 and are products of three stages of
            # assignment maps: measured, HF's own float32 result is 5.0e-5 from a float64 run of the
            # same model and inputs, the zoo's 3.4e-5 (zoo vs HF 3.8e-5..4.7e-5). Held to 1e-4; the
            # parity test (test_groupvit_parity.py) holds them to 1e-5 on a better-conditioned model.
            bounds["zoo vs hf_eager"]["segmentation_logits"] = 1e-4
        assert all(v <= bounds[p][f] for p, c in w["checks"].items() for f, v in c.items()), (w["checks"], bounds)
        assert w["within_parity_contract"] or (family, w["workload"]) == ("groupvit", "seg")


def test_idefics_decode_tiny(tmp_path):
    idefics_decode.main(["--tiny", "--out", str(tmp_path)])
    data = _results(tmp_path, "idefics_decode_tiny")
    assert data["benchmark"] == "idefics_decode" and data["tiny"] and data["dtype"] == "float32"
    for impl in ("zoo", "hf_sdpa"):
        c = data["checks"][f"{impl} vs hf_eager"]
        assert max(c["prefill_logits"], c["image_hidden_states"], c["decode_logits"]) < 1e-5, c
        assert c["greedy_agreement"] == 1.0
    assert data["checks"]["zoo vs hf_eager"]["decode_loop_greedy_agreement"] == 1.0  # zoo.generation.DecodeLoop
    for name, n in (("prefill", data["workloads"]["prefill"]), ("decode", data["workloads"]["decode"])):
        _check_timings(n["timings"], idefics_decode.IMPLS, repeats=3 if name == "prefill" else data["steps"])
        assert isinstance(n["quiet"], bool)
    assert all(v > 0 for v in data["decode_tokens_per_s"].values())
    assert data["compile"]["decode_loop"]["compile_s"] > 0


def test_train_throughput_small(tmp_path):
    train_throughput.main(["--small", "--out", str(tmp_path)])
    data = _results(tmp_path, "train_throughput_small")
    assert [t["task"] for t in data["tasks"]] == ["text", "audio"] and data["compute_dtype"] == "float32"
    for t, unit in zip(data["tasks"], ("tokens_per_s", "audio_s_per_s")):
        c = t["check"]  # dropout off, fp32: same loss and gradient norm
        # Relative 1e-4 on the gradient norm, not 1e-5: the audio task's CTC loss over 199 frames.
        # Measured: the zoo's backward without CTC (sum of squared logits) is 5e-8 from float64 in
        # global norm (torch float32: 1.5e-8), but the float32 CTC recursion over 199 frames alone is
        # 1.5e-5..1.6e-4 from float64 in both libraries (torch 1.5e-5..1.1e-4, optax 3e-5..1.6e-4,
        # by logit scale); this run shows 6e-5 (text, no CTC: 2.7e-6).
        # Gradient parity without CTC is tested at 1e-5 in test_data2vec_audio_parity.py.
        assert c["rel_diff_loss"] < 1e-5 and c["rel_diff_grad_norm"] < 1e-4 and c["zoo_grad_norm"] > 0, c
        _check_timings(t["timings"], ("zoo", "hf"), repeats=2)
        assert all(row[unit] > 0 and row["mfu"] is None for row in t["rows"].values())
        assert t["decayed_params"] > 0 and t["compile"]["compile_s"] > 0 and t["flops"]["total"] > 0
        assert all(math.isfinite(v) and v < 1e4 for v in t["after_timing"].values())  # it really trains


def test_flops_formulas():
    tt = train_throughput
    cfg = dict(hidden_size=768, num_hidden_layers=12, intermediate_size=3072, num_labels=2)
    n_layers = 12 * (4 * 768 ** 2 + 2 * 768 * 3072)
    assert tt.text_flops(cfg, batch=8, seq=128)["total"] == (6 * n_layers * 1024 + 12 * 12 * 128 ** 2 * 768 * 8
                                                             + 6 * (768 ** 2 + 768 * 2) * 8)
    acfg = tt.preset_dict("data2vec-audio-base")  # 4 s at 16 kHz through the 7 convs: 199 frames
    assert tt.conv_frames(acfg, 64000) == [12799, 6399, 3199, 1599, 799, 399, 199]
    a = tt.audio_flops(acfg, batch=1, samples=64000)
    assert a["conv_feature_encoder"] > 2 * 2 * 10 * 1 * 512 * 12799 and a["frames"] == 199
    assert a["total"] == sum(a[k] for k in ("conv_feature_encoder", "feature_projection", "positional_conv",
                                            "encoder_matmuls", "attention", "ctc_head"))


@pytest.mark.parametrize("kernel", ["disentangled", "block_sparse"])
def test_kernels_tiny(kernel, tmp_path):
    kernels.main(["--kernel", kernel, "--tiny", "--out", str(tmp_path)])
    data = _results(tmp_path, f"kernels_{kernel}_tiny")
    assert [r["mode"] for r in data["results"]] == ["fwd", "fwd+bwd"]
    for r in data["results"]:
        _check_timings(r["timings"], ("dense", kernel), repeats=2)
        assert r["ratio"] > 0 and "temp_mib" in r[f"{kernel}_memory"]


def test_plan_shards_greedy_in_order_big_tensor_alone():
    specs = [("a", (10,)), ("b", (10,)), ("big", (100,)), ("c", (5,)), ("d", (30,))]
    shards = convert_memory.plan_shards(specs, max_shard_bytes=50)  # bf16: 2 bytes per element
    assert [[n for n, _ in s] for s in shards] == [["a", "b"], ["big"], ["c"], ["d"]]


def test_convert_memory_sharded_tiny_keeps_bf16(tmp_path):
    work = tmp_path / "work"
    convert_memory.main(["--sharded", "--tiny", "--keep", "--workdir", str(work), "--out", str(tmp_path)])
    data = _results(tmp_path, "convert_memory_sharded_tiny")
    assert data["bf16_kept"] and data["spot_check_equal"] == "10/10" and not data["failures"]
    assert data["checkpoint"]["shards"] >= 3 and data["baseline_rss_mib"] > 50
    assert [r["step"] for r in data["rows"]] == ["zoo convert SRC OUT"] + ["zoo.from_pretrained(PATH, param_dtype=None)"] * 2
    assert all(r["exit_status"] == 0 and r["peak_rss_mib"] >= r["net_rss_mib"] for r in data["rows"])
    src = work / "hf_idefics_bf16"
    index = json.loads((src / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {p.name for p in src.glob("model-*-of-*.safetensors")}
    assert json.loads((src / "config.json").read_text())["dtype"] == "bfloat16"
    assert (work / "zoo_idefics_bf16" / "flax_model.safetensors").is_file()


def test_convert_memory_tiny(tmp_path):
    convert_memory.main(["--tiny", "--dtypes", "bfloat16", "--out", str(tmp_path)])
    data = _results(tmp_path, "convert_memory_tiny")
    assert [(r["source"], r["step"]) for r in data["rows"]] == [
        ("safetensors", "zoo convert SRC OUT --dtype bfloat16"), ("pytorch_model.bin", "zoo convert SRC OUT --dtype float32")]
    assert all(r["exit_status"] == 0 and r["output_mib"] > 0 and r["peak_rss_mib"] > 50 for r in data["rows"])



def test_accelerator_tiny(tmp_path):
    """The GPU script at --tiny on the CPU: every section present, what ran has timings, what
    could not run is an error string (a missing Pallas module), a present Pallas kernel runs."""
    import sys

    from benchmarks import accelerator, harness

    # present: the file is there (and not blocked in sys.modules); found without importing zoo,
    # whose import itself needs every Pallas module
    present = {f"{family}/pallas": (harness.REPO_ROOT / "zoo" / "attention" / f"{module}.py").is_file()
               and sys.modules.get(f"zoo.attention.{module}", "absent") is not None
               for family, module in (("dense", "pallas_dense"), ("block_sparse", "pallas_block_sparse"),
                                      ("disentangled", "pallas_disentangled"))}
    # zoo.attention.kernels imports the Pallas modules, so without one of them the zoo's models
    # (forward, train) and possibly the first XLA row fail too: then only "an error string" is asked
    complete = all(present.values())

    def ok_or_error(row: dict, must_run: bool) -> bool:
        if "error" in row:
            assert isinstance(row["error"], str) and row["error"] and not must_run, row["error"]
            return False
        return True

    accelerator.main(["--tiny", "--out", str(tmp_path)])
    data = _results(tmp_path, "accelerator_tiny")
    assert '"gpu_measured": false' in (tmp_path / "accelerator_tiny.json").read_text()
    assert data["benchmark"] == "accelerator" and data["tiny"] and data["gpu_measured"] is False
    assert data["jax_backend"] == "cpu" and data["device_kind"] and data["dtype"] == "bfloat16"
    assert data["machine"]["versions"]["torch"] and data["threads"]["torch_num_threads"] >= 1
    assert all(isinstance(data[s], dict) for s in ("forward", "train", "kernels", "goals"))

    fw = data["forward"]  # CPU: attention_kernel auto = XLA
    if ok_or_error(fw, complete):
        assert fw["dtype"] == "float32" and [r["family"] for r in fw["workloads"]] == list(forward.WORKLOADS)
        assert len(fw["skipped"]) == sum(len(w) - 1 for w in forward.WORKLOADS.values())
        for r in fw["workloads"]:
            if ok_or_error(r, complete):
                _check_timings(r["timings"], forward.WORKLOADS[r["family"]][r["workload"]]["impls"], repeats=2)
                assert r["outputs_agree"] and r["zoo_vs_torch"] > 0 and r["zoo_attention_kernel"] == "auto"

    tr = data["train"]
    if ok_or_error(tr, complete):
        assert tr["step_ms"] > 0 and tr["finite"] and tr["compute_dtype"] == "bfloat16" and tr["mfu"] is None
        assert tr["flops_per_step"]["xla_cost_analysis"] > 0 and tr["flops_per_step"]["6_params_tokens"] > 0

    kn = data["kernels"]
    assert "error" not in kn, kn.get("error")
    assert [(p["length"], p["mode"]) for p in kn["points"]] == [(64, "fwd"), (64, "fwd+bwd"), (128, "fwd"),
                                                                (128, "fwd+bwd")] and not kn["skipped"]
    for p in kn["points"]:
        assert set(p["kernels"]) == set(accelerator.KERNELS)
        for name, row in p["kernels"].items():
            if "cudnn" in name:
                assert row == {"skipped": "not applicable on cpu"}
            elif ok_or_error(row, must_run=complete or present.get(name, False)):
                assert row["median_ms"] > 0 and row["repeats"] == 2 and row["finite"] and row["temp_bytes"] >= 0
        assert p["ratios"]["block_sparse/pallas speedup over dense/cudnn"] is None
    for goal in data["goals"].values():
        assert goal.get("met") is None and goal.get("note")
