"""The `zoo` command, run as a subprocess the way users run it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from zoo.assets import TINY_AUDIO_CTC_CHECKPOINT, TINY_SPEECH_WAV, TINY_TEXT_BIN_CHECKPOINT
from zoo.assets import TINY_TEXT_CHECKPOINT as TINY_CHECKPOINT
from zoo.registry import list_architectures

BIN_CHECKPOINT = TINY_TEXT_BIN_CHECKPOINT
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1"}


def zoo(*args, env=None, prelude: str | None = None):
    """Run ``zoo ARGS`` (via ``python -m zoo``, or with ``prelude`` executed first)."""
    if prelude is None:
        cmd = [sys.executable, "-m", "zoo", *args]
    else:
        code = f"{prelude}\nimport sys\nfrom zoo.cli import main\nsys.exit(main({list(args)!r}))"
        cmd = [sys.executable, "-c", code]
    return subprocess.run(cmd, capture_output=True, text=True, env=env or ENV, timeout=300)


def test_list_matches_registry_and_console_script():
    result = zoo("list")
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.strip().splitlines()]
    assert [tuple(r) for r in rows] == list_architectures()
    script = Path(sys.executable).parent / "zoo"
    same = subprocess.run([str(script), "list"], capture_output=True, text=True, env=ENV)
    assert same.stdout == result.stdout


def test_convert_bin_without_torch_then_info_run_export(tmp_path):
    out = tmp_path / "converted"
    blocker = "import sys\nsys.modules['torch'] = None  # torch is not importable in this process"
    result = zoo("convert", str(BIN_CHECKPOINT), str(out), prelude=blocker)
    assert result.returncode == 0, result.stderr
    assert "Data2VecTextForMaskedLM" in result.stdout and "tied duplicates dropped" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "flax_model.safetensors"]

    info = zoo("info", str(out))
    assert info.returncode == 0, info.stderr
    fields = dict(line.split(None, 1) for line in info.stdout.strip().splitlines())
    assert fields["family"] == "data2vec-text" and fields["format"] == "zoo"
    assert int(fields["parameters"]) == 23808 and fields["bytes"] == str(23808 * 4)

    run = zoo("run", str(out), "--input-ids", "0 5 6 7 2", "--top-k", "3")
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("top-3 ids") == 5

    exported = tmp_path / "exported"
    result = zoo("export", str(out), str(exported))
    assert result.returncode == 0, result.stderr
    original = transformers.Data2VecTextForMaskedLM.from_pretrained(TINY_CHECKPOINT)
    reloaded = transformers.Data2VecTextForMaskedLM.from_pretrained(exported)
    for key, value in original.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key


def test_convert_verify_prints_small_differences(tmp_path):
    result = zoo("convert", str(TINY_CHECKPOINT), str(tmp_path / "out"), "--verify")
    assert result.returncode == 0, result.stderr
    diffs = {line.split()[1].rstrip(":"): float(line.split()[-1])
             for line in result.stdout.splitlines() if line.startswith("verify")}
    assert set(diffs) == {"logits", "hidden_states"}
    assert max(diffs.values()) <= 1e-5


def test_convert_bfloat16(tmp_path):
    out = tmp_path / "bf16"
    result = zoo("convert", str(TINY_CHECKPOINT), str(out), "--dtype", "bfloat16")
    assert result.returncode == 0, result.stderr
    info = zoo("info", str(out))
    assert "{'bfloat16': 42}" in info.stdout


def test_run_audio_transcribes_the_shipped_wav(tmp_path):
    audio_ckpt = TINY_AUDIO_CTC_CHECKPOINT
    wav = TINY_SPEECH_WAV
    out = tmp_path / "audio"
    assert zoo("convert", str(audio_ckpt), str(out)).returncode == 0
    assert (out / "vocab.json").is_file() and (out / "preprocessor_config.json").is_file()
    result = zoo("run", str(out), "--audio", str(wav))
    assert result.returncode == 0, result.stderr
    transcription = result.stdout.split("transcription: ")[1].strip().strip("'")
    # The same pipeline in PyTorch: HF feature extractor, model and tokenizer.
    from zoo.preprocessing import read_wav

    samples, rate = read_wav(wav)
    fe = transformers.Wav2Vec2FeatureExtractor.from_pretrained(audio_ckpt)
    tok = transformers.Wav2Vec2CTCTokenizer.from_pretrained(audio_ckpt)
    model = transformers.Data2VecAudioForCTC.from_pretrained(audio_ckpt).eval()
    inputs = fe(samples, sampling_rate=rate, return_tensors="pt", return_attention_mask=True)
    with torch.no_grad():
        ids = model(**inputs).logits.argmax(-1)
    assert transcription == tok.batch_decode(ids)[0]
    wrong = zoo("run", str(out), "--input-ids", "1 2 3")
    assert wrong.returncode == 1 and "takes audio" in wrong.stderr


def test_demo_runs():
    result = zoo("demo")
    assert result.returncode == 0, result.stderr
    assert "verify logits" in result.stdout and "top-5 ids" in result.stdout


# -------------------------------------------------------------------------- errors
class Hostile:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = Path("/tmp/zoo_cli_test_pwned")


def _bad_checkpoints(tmp_path: Path) -> dict[str, tuple[Path, list[str], str]]:
    cases = {}
    hostile = tmp_path / "hostile"
    shutil.copytree(BIN_CHECKPOINT, hostile)
    torch.save({"weight": torch.zeros(2), "payload": Hostile()}, hostile / "pytorch_model.bin")
    cases["hostile pickle"] = (hostile, [], "refusing to unpickle global 'posix.system'")

    truncated = tmp_path / "truncated"
    shutil.copytree(TINY_CHECKPOINT, truncated)
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[:5000])
    cases["truncated file"] = (truncated, [], "model.safetensors")

    truncated_bin = tmp_path / "truncated_bin"
    shutil.copytree(BIN_CHECKPOINT, truncated_bin)
    data = (truncated_bin / "pytorch_model.bin").read_bytes()
    (truncated_bin / "pytorch_model.bin").write_bytes(data[: len(data) // 3])
    cases["truncated bin"] = (truncated_bin, [], "pytorch_model.bin")

    corrupt_config = tmp_path / "corrupt_config"
    shutil.copytree(TINY_CHECKPOINT, corrupt_config)
    (corrupt_config / "config.json").write_text("{not json")
    cases["corrupt config"] = (corrupt_config, [], "not valid JSON")

    family = tmp_path / "family"
    shutil.copytree(TINY_CHECKPOINT, family)
    cfg = json.loads((family / "config.json").read_text())
    (family / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    cases["unsupported family"] = (family, [], "model_type 'gpt2' is not supported")

    value = tmp_path / "value"
    shutil.copytree(TINY_CHECKPOINT, value)
    (value / "config.json").write_text(json.dumps({**cfg, "hidden_act": "mish_v9"}))
    cases["config value not implemented"] = (value, [], "hidden_act='mish_v9' is not supported")

    cases["wrong dtype argument"] = (TINY_CHECKPOINT, ["--dtype", "int8"], "dtype 'int8' is not supported")
    cases["missing directory"] = (tmp_path / "nowhere", [], "no such checkpoint directory")
    cases["wrong architecture"] = (TINY_CHECKPOINT, ["--architecture", "GroupViTModel"],
                                   "architecture 'GroupViTModel' is not a data2vec-text architecture")
    return cases


def test_errors_are_one_line_and_leave_nothing_behind(tmp_path):
    MARKER.unlink(missing_ok=True)
    for name, (src, extra, message) in _bad_checkpoints(tmp_path).items():
        out = tmp_path / f"out_{name.replace(' ', '_')}"
        result = zoo("convert", str(src), str(out), *extra)
        assert result.returncode != 0, name
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("zoo: error: "), (name, result.stderr)
        assert message in lines[0], (name, lines[0])
        assert not out.exists(), name
        assert not list(tmp_path.glob(f".{out.name}*")), f"{name}: temporary files left behind"
    assert not MARKER.exists(), "the hostile pickle was executed"


def test_existing_output_is_refused(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    result = zoo("convert", str(TINY_CHECKPOINT), str(out))
    assert result.returncode == 1 and "already exists" in result.stderr
    assert (out / "keep.txt").read_text() == "precious"


def test_usage_errors_are_one_line():
    result = zoo("convert")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("zoo: error:")


def test_the_work_of_zoo_run_is_a_library_call(tmp_path):
    """What `zoo run` prints comes from zoo.inference (no CLI needed), with the checkpoint's
    preprocessors from zoo.preprocessing; bad inputs are clear errors."""
    import zoo as zoo_lib
    from zoo import inference
    from zoo.assets import asset_path
    from zoo.info import checkpoint_info, parameter_count
    from zoo.preprocessing import ctc_decoder_for, image_processor_for, pad_token_sequences, read_wav

    model, variables = zoo_lib.from_pretrained(TINY_CHECKPOINT)
    assert inference.input_kind(model) == "text" and parameter_count(model) == 23808
    pred = inference.predict_text(model, variables, [0, 31, 7, 2], top_k=3)
    assert pred.architecture == "Data2VecTextForMaskedLM" and pred.token_top_ids.shape == (4, 3)
    with pytest.raises(ValueError, match="vocab_size"):
        inference.predict_text(model, variables, [[0, 10_000]])
    assert checkpoint_info(TINY_CHECKPOINT)["architecture"] == "Data2VecTextForMaskedLM"

    audio_model, audio_variables = zoo_lib.from_pretrained(TINY_AUDIO_CTC_CHECKPOINT)
    assert inference.input_kind(audio_model) == "audio"
    samples, rate = read_wav(asset_path("tiny-speech.wav"))
    pred = inference.predict_audio(audio_model, audio_variables, samples, rate, directory=TINY_AUDIO_CTC_CHECKPOINT)
    cli = zoo("run", str(TINY_AUDIO_CTC_CHECKPOINT), "--audio", str(TINY_SPEECH_WAV))
    assert cli.returncode == 0 and f"transcription: {pred.transcription!r}" in cli.stdout
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        inference.predict_audio(audio_model, audio_variables, samples, rate, directory=tmp_path)
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        ctc_decoder_for(tmp_path)
    with pytest.raises(FileNotFoundError, match="no shipped asset"):
        asset_path("tiny-nothing")

    ids, mask = pad_token_sequences([[5, 6, 7], [8]], pad_token_id=1)
    assert ids.tolist() == [[5, 6, 7], [8, 1, 1]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    vision = zoo_lib.load_preset("data2vec-vision-base")
    assert image_processor_for(None, vision).size == {"height": 224, "width": 224}


def test_run_with_the_fused_attention_kernels_and_a_bad_kernel_name():
    default = zoo("run", str(TINY_CHECKPOINT))
    fused = zoo("run", str(TINY_CHECKPOINT), "--attention-kernel", "pallas")  # interpreted on CPU
    assert default.returncode == 0 and fused.returncode == 0, fused.stderr
    assert fused.stdout == default.stdout  # the printed top-5 ids of every position
    bad = zoo("run", str(TINY_CHECKPOINT), "--attention-kernel", "flash")
    assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1] == (
        "zoo: error: attention_kernel 'flash' is not one of ('auto', 'xla', 'pallas', 'cudnn')")
