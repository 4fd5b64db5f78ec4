"""`zoo finetune`: each task runs a few steps on tiny data it can learn, and the loss falls;
a stopped run resumes exactly; labels come from the data; bad settings are clear errors.

The runs go through ``zoo.cli.main`` in this process (one CPU device); the sharded and
many-process runs are in tests/test_multihost.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import zoo
from converters.errors import KeyMappingError
from zoo import cli
from zoo.models.data2vec_text import Data2VecTextConfig
from zoo.models.data2vec_vision import Data2VecVisionConfig
from zoo.preprocessing import write_wav

ASSETS = Path(zoo.__file__).parent / "assets"
RECIPES = Path(__file__).resolve().parents[1] / "configs" / "finetune"
# The shipped recipes, made tiny: a short schedule, a big learning rate, small batches.
FAST = ["warmup_steps=1", "total_steps=100", "learning_rate=0.003", "batch_size=8", "accumulate_steps=1",
        "compute_dtype=\"float32\"", "remat=\"none\""]


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    """Each `zoo finetune` call jits its step anew; runs of one test compile the same
    programs, so a persistent compilation cache (for this module only) compiles them once."""
    import jax

    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    saved = {name: getattr(jax.config, name) for name in names}
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax-cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    yield
    for name, value in saved.items():
        jax.config.update(name, value)


def run(*args) -> int:
    return cli.main(["finetune", *map(str, args), "--no-progress"])


def records(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


def falls(losses: list[float]) -> bool:
    return np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])


@pytest.fixture(scope="module")
def text_checkpoint(tmp_path_factory) -> Path:
    """A pretrained-body Data2VecText (no classifier), dropout off to compile fast."""
    path = tmp_path_factory.mktemp("text") / "ckpt"
    config = Data2VecTextConfig.from_dict(dict(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                               num_attention_heads=4, intermediate_size=64,
                                               max_position_embeddings=40, hidden_dropout_prob=0.0,
                                               attention_probs_dropout_prob=0.0))
    model = zoo.build_model(config, "Data2VecTextModel")
    zoo.save_pretrained(path, model, zoo.init_params(model, 0))
    return path


def text_data(path: Path, rows: int = 48, seed: int = 0) -> Path:
    """Label "low" for rows of tokens 8..35, "high" for tokens 36..63; 5 to 15 tokens a row."""
    r = np.random.RandomState(seed)
    with open(path, "w") as f:
        for i in range(rows):
            low = i % 2 == 0
            ids = [0, *r.randint(8 if low else 36, 36 if low else 64, r.randint(3, 14)).tolist(), 2]
            f.write(json.dumps({"input_ids": ids, "label": "low" if low else "high"}) + "\n")
    return path


def test_text_classification_learns_and_resumes(text_checkpoint, tmp_path, capsys):
    data = text_data(tmp_path / "train.jsonl")
    recipe = RECIPES / "text_classification.json"
    full, part = tmp_path / "full", tmp_path / "part"
    assert run("--recipe", recipe, "--checkpoint", text_checkpoint, "--data", data, "--output", full,
               "--max-steps", 24, "--save-every", 8, *sum((["--set", s] for s in FAST), [])) == 0
    out = capsys.readouterr()
    assert "Data2VecTextForSequenceClassification" in out.out and "metrics:" in out.out
    rows = records(full)
    assert [r["step"] for r in rows] == list(range(1, 25))
    losses = [r["loss"] for r in rows]
    assert falls(losses), losses
    assert {"loss", "grad_norm", "learning_rate", "accuracy", "epoch"} <= rows[1].keys()
    assert rows[1]["tokens_per_second"] > 0 and rows[1]["steps_per_second"] > 0
    assert "compile_and_first_steps_s" in rows[0]

    # the fine-tuned model: labels from the data, runnable
    model, _ = zoo.from_pretrained(full / "model")
    assert type(model).__name__ == "Data2VecTextForSequenceClassification"
    assert model.config.id2label == {0: "high", 1: "low"}
    assert sorted(p.name for p in (full / "checkpoints").iterdir() if p.name.isdigit()) == ["16", "24"]

    # stopped at 10, resumed to 24: the same losses, bit for bit
    common = ["--recipe", recipe, "--checkpoint", text_checkpoint, "--data", data, "--output", part,
              "--save-every", 5, *sum((["--set", s] for s in FAST), [])]
    assert run(*common, "--max-steps", 10) == 0
    assert run(*common, "--max-steps", 24) == 0
    assert "resuming from step 10" in capsys.readouterr().err
    assert [r["loss"] for r in records(part)] == losses

    # the run directory remembers its settings: another recipe cannot resume it
    assert run(*common, "--max-steps", 30, "--set", "learning_rate=0.1") == 1
    assert "holds a run with another recipe" in capsys.readouterr().err


def test_speech_recognition_ctc_learns(tmp_path):
    """Two 'words' (tones of two pitches) and their transcripts; the CTC loss falls."""
    data = tmp_path / "speech"
    data.mkdir()
    t = np.arange(8000) / 16000
    for i in range(16):
        word = "ab" if i % 2 else "ba"
        pitch = (300, 900) if word == "ab" else (900, 300)
        wave = np.concatenate([np.sin(2 * np.pi * pitch[0] * t), np.sin(2 * np.pi * pitch[1] * t)])
        wave = 0.5 * wave[: 12000 + 400 * (i % 4)] + 0.01 * np.random.RandomState(i).standard_normal(1)
        write_wav(data / f"utt{i}.wav", wave.astype(np.float32), 16000)
        (data / f"utt{i}.txt").write_text(word)
    output = tmp_path / "run"
    assert run("--recipe", RECIPES / "speech_recognition_ctc.json", "--checkpoint",
               ASSETS / "tiny-data2vec-audio-ctc", "--data", data, "--output", output, "--max-steps", 20,
               *sum((["--set", s] for s in FAST), []), "--set", "learning_rate=0.001") == 0
    rows = records(output)
    losses = [r["loss"] for r in rows]
    assert falls(losses), losses
    assert rows[-1]["audio_seconds_per_second"] > 0
    model, _ = zoo.from_pretrained(output / "model")
    assert type(model).__name__ == "Data2VecAudioForCTC"
    assert (output / "model" / "vocab.json").is_file()   # `zoo run --audio` decodes with it


@pytest.fixture(scope="module")
def vision_checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("vision") / "ckpt"
    config = Data2VecVisionConfig.from_dict(dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                 intermediate_size=64, image_size=32, patch_size=8,
                                                 use_mean_pooling=True, hidden_dropout_prob=0.0,
                                                 attention_probs_dropout_prob=0.0, drop_path_rate=0.0))
    model = zoo.build_model(config, "Data2VecVisionModel")
    zoo.save_pretrained(path, model, zoo.init_params(model, 0))
    return path


def test_image_classification_learns(vision_checkpoint, tmp_path):
    data = tmp_path / "images"
    r = np.random.RandomState(0)
    for name, channel in (("red", 0), ("blue", 2)):
        (data / name).mkdir(parents=True)
        for i in range(8):
            pixels = r.randint(0, 60, (40, 48, 3)).astype(np.uint8)
            pixels[..., channel] = 200 + r.randint(0, 50)
            Image.fromarray(pixels).save(data / name / f"{i}.png")
    output = tmp_path / "run"
    assert run("--recipe", RECIPES / "image_classification.json", "--checkpoint", vision_checkpoint,
               "--data", data, "--output", output, "--max-steps", 16, *sum((["--set", s] for s in FAST), []),
               "--set", "layer_decay=0.9") == 0
    losses = [r["loss"] for r in records(output)]
    assert falls(losses), losses
    model, _ = zoo.from_pretrained(output / "model")
    assert model.config.id2label == {0: "blue", 1: "red"}


def test_errors_name_the_problem(text_checkpoint, tmp_path, capsys):
    data = text_data(tmp_path / "train.jsonl", rows=8)
    recipe = RECIPES / "text_classification.json"
    base = ["--checkpoint", text_checkpoint, "--data", data, "--output", tmp_path / "out"]
    assert run("--recipe", recipe, *base, "--set", "learning_rat=1") == 1
    assert "unknown key 'learning_rat' (did you mean 'learning_rate'?)" in capsys.readouterr().err
    assert run("--recipe", recipe, *base, "--task", "speech_recognition_ctc") == 1
    assert "data2vec-text has no CTC head" in capsys.readouterr().err
    assert run("--recipe", recipe, *base, "--mesh", "data=3") == 1
    assert "data=3" in capsys.readouterr().err
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_another_label_count_replaces_the_classifier(text_checkpoint, tmp_path):
    """A classifier checkpoint loads with another number of labels only when asked, HF's way;
    a zoo directory of the bare body loads into the classifier (prefix added)."""
    body, variables = zoo.from_pretrained(text_checkpoint)
    config3 = body.config.replace(num_labels=3, id2label={0: "a", 1: "b", 2: "c"})
    clf3 = zoo.build_model(config3, "Data2VecTextForSequenceClassification")
    zoo.export_pytorch(tmp_path / "hf3", clf3, zoo.init_params(clf3, 1))  # a HF checkpoint with 3 labels
    zoo.save_pretrained(tmp_path / "zoo3", clf3, zoo.init_params(clf3, 1))  # a zoo directory with 3 labels
    config2 = body.config.replace(num_labels=2, id2label={0: "x", 1: "y"})
    head = "Data2VecTextForSequenceClassification"
    for source in (tmp_path / "hf3", tmp_path / "zoo3"):
        with pytest.raises(KeyMappingError, match="shape"):
            zoo.from_pretrained(source, head, config=config2)
        loaded = zoo.from_pretrained(source, head, config=config2, ignore_mismatched_sizes=True)
        model, report = loaded.model, loaded.report
        assert sorted(m.split()[0].replace(".", "/").replace("weight", "kernel") for m in report.mismatched) == \
            ["classifier/out_proj/bias", "classifier/out_proj/kernel"]
        assert model.config.id2label == {0: "x", 1: "y"}
        assert loaded.variables["params"]["classifier"]["out_proj"]["kernel"].shape == (32, 2)
        assert sorted(report.missing) == ["classifier/out_proj/bias", "classifier/out_proj/kernel"]
    # the body's own weights are the checkpoint's, the prefix added for the head model
    loaded = zoo.from_pretrained(text_checkpoint, "Data2VecTextForSequenceClassification")
    report = loaded.report
    assert report.prefix == "added" and all(m.startswith("classifier/") for m in report.missing)
    np.testing.assert_array_equal(loaded.variables["params"]["data2vec_text"]["embeddings"]["word_embeddings"]
                                  ["embedding"], variables["params"]["embeddings"]["word_embeddings"]["embedding"])
    with pytest.raises(zoo.registry.UnsupportedModelError, match="data2vec-audio"):
        zoo.from_pretrained(text_checkpoint, config=zoo.load_preset("data2vec-audio-base"))
