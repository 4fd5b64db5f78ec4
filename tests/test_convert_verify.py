"""`zoo convert --verify` for the families whose inputs are not token ids alone (audio, SEW-D,
GroupViT's two towers, IDEFICS' images), and what a failed verification leaves behind."""

import importlib.util

import pytest
import torch
import transformers

from zoo.cli import main

TINY_AUDIO = dict(vocab_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  conv_dim=(32, 32), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=2,
                  num_conv_pos_embedding_groups=4)


def _data2vec_audio():
    return transformers.Data2VecAudioForCTC(transformers.Data2VecAudioConfig(**TINY_AUDIO, conv_pos_kernel_size=5))


def _sew_d():
    return transformers.SEWDForCTC(transformers.SEWDConfig(**TINY_AUDIO, squeeze_factor=2, max_position_embeddings=32,
                                                           position_buckets=8))


def _groupvit():
    return transformers.GroupViTModel(transformers.GroupViTConfig(
        text_config=dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, bos_token_id=0, eos_token_id=2),
        vision_config=dict(hidden_size=32, intermediate_size=37, depths=[1, 1], num_group_tokens=[4, 0],
                           num_output_groups=[4, 2], num_attention_heads=4, image_size=32, patch_size=8,
                           num_hidden_layers=2),
        projection_dim=16, projection_intermediate_dim=32))


def _idefics():
    return transformers.IdeficsForVisionText2Text(transformers.IdeficsConfig(
        vocab_size=100, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        cross_layer_interval=1, perceiver_config=dict(use_resampler=False),
        vision_config=dict(embed_dim=32, image_size=28, patch_size=14, num_hidden_layers=1, num_attention_heads=4,
                           intermediate_size=37)))


@pytest.mark.parametrize("make,fields", [
    (_data2vec_audio, {"logits", "hidden_states"}),
    (_sew_d, {"logits", "hidden_states"}),
    (_groupvit, {"logits_per_image", "logits_per_text", "text_embeds", "image_embeds",
                 "text_model_output.pooler_output", "vision_model_output.hidden_states"}),
    (_idefics, {"logits", "hidden_states", "image_hidden_states"}),
], ids=["data2vec-audio", "sew-d", "groupvit", "idefics"])
def test_verify_runs_every_family(tmp_path, capsys, make, fields):
    torch.manual_seed(0)
    make().eval().save_pretrained(tmp_path / "hf")
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "out"), "--verify"]) == 0
    diffs = {line.split()[1].rstrip(":"): float(line.rsplit(None, 1)[-1])
             for line in capsys.readouterr().out.splitlines() if line.startswith("verify ")}
    assert fields <= set(diffs), diffs
    assert max(diffs.values()) <= 1e-5, diffs


def test_a_failed_verification_keeps_no_output(tmp_path, capsys, monkeypatch):
    torch.manual_seed(0)
    _data2vec_audio().save_pretrained(tmp_path / "hf")

    def broken(*args, **kwargs):
        raise RuntimeError("transformers could not build the model")

    monkeypatch.setattr("zoo.verify.compare_with_pytorch", broken)
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "out"), "--verify"]) == 1
    assert "could not build the model" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    monkeypatch.undo()
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "out"), "--verify"]) == 0  # a rerun works


def test_verify_without_torch_says_so_before_writing(tmp_path, capsys, monkeypatch):
    torch.manual_seed(0)
    _data2vec_audio().save_pretrained(tmp_path / "hf")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "out"), "--verify"]) == 1
    captured = capsys.readouterr()
    assert "needs torch" in captured.err and "converted" not in captured.out
    assert not (tmp_path / "out").exists()


def test_run_warns_when_a_head_is_freshly_initialised(capsys):
    from zoo.assets import TINY_TEXT_CHECKPOINT

    assert main(["run", str(TINY_TEXT_CHECKPOINT), "--architecture", "Data2VecTextForQuestionAnswering",
                 "--input-ids", "0 5 6 2"]) == 0
    err = capsys.readouterr().err
    assert "zoo: warning: 2 parameters of Data2VecTextForQuestionAnswering are not in the checkpoint" in err
    assert "predictions are random until it is fine-tuned" in err and len(err.splitlines()) == 1
    assert main(["run", str(TINY_TEXT_CHECKPOINT), "--input-ids", "0 5 6 2"]) == 0
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("extra", [[], ["--image", "PICTURE"]])
def test_run_points_idefics_to_generate(capsys, extra):
    from zoo.assets import TINY_IDEFICS_CHECKPOINT, TINY_PICTURE

    extra = [str(TINY_PICTURE) if a == "PICTURE" else a for a in extra]
    assert main(["run", str(TINY_IDEFICS_CHECKPOINT), *extra]) == 1
    err = capsys.readouterr().err
    assert err.startswith("zoo: error: IdeficsForVisionText2Text writes text about images: use `zoo generate ")
    assert len(err.splitlines()) == 1
