"""``zoo generate``: from a prompt (and images) to text, equal to HF ``generate`` greedily.

Data2VecTextForCausalLM and BigBirdForCausalLM are tiny random HF models saved with a
byte-level BPE trained here (no download); IDEFICS is the shipped tiny checkpoint
(``zoo/assets/tiny-idefics``: HF layout, its Llama tokenizer and image processor), read by
HF as well. The CLI runs in this process
(``zoo.cli.main``) except for one subprocess run of ``python -m zoo generate``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from zoo.assets import TINY_IDEFICS_CHECKPOINT
from zoo.cli import main

CORPUS = ["the cat sat on the mat", "a dog ran in the park", "what is in this picture", "describe the image",
          "hello world, this is a test.", "User: Assistant: yes no maybe"] * 5
NEW = 8


def byte_level_bpe(vocab_size: int, specials: list[str], roberta: bool = False) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if roberta:
        tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")),
                                                          ("<s>", tok.token_to_id("<s>")))
    return tok


def text_checkpoint(directory, family: str):
    tok = byte_level_bpe(300, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"], roberta=True)
    fast = transformers.RobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                             pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")
    torch.manual_seed(0)
    small = dict(vocab_size=len(fast), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=37, max_position_embeddings=64, is_decoder=True, pad_token_id=1, bos_token_id=0,
                 eos_token_id=2)
    if family == "big_bird":
        config = transformers.BigBirdConfig(**small, attention_type="original_full")
        model = transformers.BigBirdForCausalLM(config)
    else:
        model = transformers.Data2VecTextForCausalLM(transformers.Data2VecTextConfig(**small))
    model.eval().save_pretrained(directory)
    fast.save_pretrained(directory)
    return model, fast


def picture(path, seed: int, size=(40, 32)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(path)
    return Image.open(path).convert("RGB")


def zoo_generate(capsys, *args) -> tuple[str, str]:
    code = main(["generate", *map(str, args)])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out, err


def zoo_fails(capsys, *args) -> str:
    code = main(["generate", *map(str, args)])
    out, err = capsys.readouterr()
    assert code != 0 and err.startswith("zoo: error: ") and err.count("\n") == 1, err
    return err


@pytest.fixture(scope="module", params=["data2vec_text", "big_bird"])
def text_model(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    model, tokenizer = text_checkpoint(directory, request.param)
    return directory, model, tokenizer


def hf_greedy(model, encoded, **kwargs) -> list[list[int]]:
    with torch.no_grad():
        out = model.generate(**encoded, max_new_tokens=NEW, do_sample=False, **kwargs)
    return out[:, encoded["input_ids"].shape[1]:].tolist()


def test_text_greedy_equals_hf_generate(text_model, capsys):
    directory, model, tokenizer = text_model
    prompt = "the cat sat on"
    out, err = zoo_generate(capsys, directory, "--prompt", prompt, "--greedy", "--max-new-tokens", NEW)
    new = hf_greedy(model, tokenizer(prompt, return_tensors="pt"))[0]
    assert out == tokenizer.decode(new, skip_special_tokens=True) + "\n"
    assert "prefill" in err


def test_text_batch_from_prompts_file(text_model, capsys, tmp_path):
    directory, model, tokenizer = text_model
    prompts = ["the cat sat on", "a dog", "hello world, this is a test. what"]
    file = tmp_path / "prompts.jsonl"
    file.write_text("\n".join(json.dumps({"prompt": p}) for p in prompts) + "\n")
    out, err = zoo_generate(capsys, directory, "--prompts", file, "--greedy", "--max-new-tokens", NEW,
                            "--batch-size", 2)
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["prompt"] for r in rows] == prompts and err.count("zoo generate:") == 2
    tokenizer.padding_side = "left"
    for batch in (prompts[:2], prompts[2:]):
        encoded = tokenizer(batch, padding=True, return_tensors="pt")
        for row, new in zip([r for r in rows if r["prompt"] in batch], hf_greedy(model, encoded)):
            assert row["generated"] == tokenizer.decode(new, skip_special_tokens=True)


def test_text_generation_options_equal_hf(text_model, capsys):
    directory, model, tokenizer = text_model
    prompt = "a dog ran"
    out, _ = zoo_generate(capsys, directory, "--prompt", prompt, "--greedy", "--max-new-tokens", NEW,
                          "--repetition-penalty", 1.7, "--min-new-tokens", 5)
    new = hf_greedy(model, tokenizer(prompt, return_tensors="pt"), repetition_penalty=1.7, min_new_tokens=5)[0]
    assert out == tokenizer.decode(new, skip_special_tokens=True) + "\n"


def test_text_sampling_is_seeded(text_model, capsys):
    directory, _, _ = text_model
    args = [directory, "--prompt", "the cat", "--max-new-tokens", NEW, "--temperature", 1.5, "--top-k", 0]
    first, _ = zoo_generate(capsys, *args, "--seed", 3)
    again, _ = zoo_generate(capsys, *args, "--seed", 3)
    assert first == again
    rows, _ = zoo_generate(capsys, *args, "--seed", 3, "--num-return-sequences", 3)
    rows = [json.loads(line) for line in rows.splitlines()]
    assert [r["sequence"] for r in rows] == [0, 1, 2]


@pytest.fixture(scope="module")
def idefics(tmp_path_factory):
    """The shipped tiny IDEFICS (HF layout, made by scripts/make_tiny_checkpoint.py), read by HF too."""
    directory = tmp_path_factory.mktemp("idefics")
    shutil.copytree(TINY_IDEFICS_CHECKPOINT, directory, dirs_exist_ok=True)
    model = transformers.IdeficsForVisionText2Text.from_pretrained(directory).eval()
    processor = transformers.IdeficsProcessor.from_pretrained(directory)
    images = [picture(directory / f"image{i}.png", i, size) for i, size in enumerate([(40, 32), (30, 50)])]
    return directory, model, processor, images


def hf_idefics_greedy(model, processor, prompts) -> list[str]:
    processor.tokenizer.padding_side = "left"
    encoded = processor(text=prompts, padding="longest", return_tensors="pt")
    new = hf_greedy(model, encoded)
    return [processor.tokenizer.decode(n, skip_special_tokens=True) for n in new]


def test_idefics_prompt_with_two_images_equals_hf(idefics, capsys):
    directory, model, processor, images = idefics
    out, err = zoo_generate(capsys, directory, "--prompt", "User: <image> and <image> what is in this picture",
                            "--image", directory / "image0.png", "--image", directory / "image1.png",
                            "--greedy", "--max-new-tokens", NEW)
    expected = hf_idefics_greedy(model, processor, [["User: ", images[0], " and ", images[1],
                                                     " what is in this picture"]])[0]
    assert out == expected + "\n" and "prefill" in err


def test_idefics_batch_with_different_image_counts(idefics, capsys, tmp_path):
    directory, model, processor, images = idefics
    file = tmp_path / "prompts.jsonl"
    rows = [{"prompt": "User: <image> describe the image", "images": [str(directory / "image0.png")]},
            {"prompt": "<image><image> hello", "images": [str(directory / "image1.png"),
                                                          str(directory / "image0.png")]}]
    file.write_text("\n".join(map(json.dumps, rows)))
    out, _ = zoo_generate(capsys, directory, "--prompts", file, "--greedy", "--max-new-tokens", NEW)
    got = [json.loads(line)["generated"] for line in out.splitlines()]
    assert got == hf_idefics_greedy(model, processor, [["User: ", images[0], " describe the image"],
                                                       [images[1], images[0], " hello"]])


def test_bad_inputs_are_one_line_errors(text_model, idefics, capsys, tmp_path):
    text_dir = text_model[0]
    idefics_dir = idefics[0]
    assert "takes text only" in zoo_fails(capsys, text_dir, "--prompt", "<image> x", "--image",
                                          idefics_dir / "image0.png")
    assert "placeholder" in zoo_fails(capsys, idefics_dir, "--prompt", "<image> <image> x", "--image",
                                      idefics_dir / "image0.png")
    assert "no such image file" in zoo_fails(capsys, idefics_dir, "--prompt", "<image> x", "--image",
                                             tmp_path / "missing.png")
    assert "--greedy does not go with --temperature" in zoo_fails(capsys, text_dir, "--prompt", "x", "--greedy",
                                                                  "--temperature", 0.5)
    assert "--greedy does not go with --num-return-sequences" in zoo_fails(
        capsys, text_dir, "--prompt", "x", "--num-return-sequences", 2, "--greedy")
    assert "max_new_tokens must be >= 1" in zoo_fails(capsys, text_dir, "--prompt", "x", "--max-new-tokens", 0)
    assert "exceeds the model's max_position_embeddings=64" in zoo_fails(capsys, text_dir, "--prompt", "x",
                                                                         "--max-new-tokens", 200)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": 3}\n')
    assert "bad.jsonl:2" in zoo_fails(capsys, text_dir, "--prompts", bad)
    masked = tmp_path / "masked"
    transformers.Data2VecTextForMaskedLM(transformers.Data2VecTextConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=20)
    ).save_pretrained(masked)
    capsys.readouterr()  # HF's progress bar
    assert "does not generate text" in zoo_fails(capsys, masked, "--prompt", "x")


def test_python_m_zoo_generate_streams(text_model):
    directory, model, tokenizer = text_model
    done = subprocess.run([sys.executable, "-m", "zoo", "generate", str(directory), "--prompt", "hello world",
                           "--max-new-tokens", str(NEW)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    new = hf_greedy(model, tokenizer("hello world", return_tensors="pt"))[0]
    assert done.stdout == tokenizer.decode(new, skip_special_tokens=True) + "\n"
    assert "zoo generate: batch 1" in done.stderr


def test_readme_generate_example_runs_as_written():
    """The README's `zoo generate` line, with the installed `zoo` command, from the repository root."""
    import os
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    (line,) = [b.strip() for b in re.findall(r"```bash\n(.*?)```", (root / "README.md").read_text(), re.S)
               if b.startswith("zoo generate")]
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    done = subprocess.run(line, shell=True, cwd=root, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == " A red square on a blue sky.\n"
    assert re.search(r"zoo generate: batch 1, 44 prompt tokens; compile [\d.]+ s; prefill \d+ ms", done.stderr)
