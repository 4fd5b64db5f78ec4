"""The ``zoo`` command: convert, export, inspect and run checkpoints.

Errors print one line on stderr (``zoo: error: ...``) and exit non-zero; an output
directory is only created when the command succeeds.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

ASSETS = Path(__file__).parent / "assets"
TINY_CHECKPOINT = ASSETS / "tiny-data2vec-text"
TINY_AUDIO_CHECKPOINT = ASSETS / "tiny-data2vec-audio-ctc"
TINY_WAV = ASSETS / "tiny-speech.wav"
DEFAULT_INPUT_IDS = "0 31415 232 328 740 1140 12695 69 46078 1588 2"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        self.exit(2, f"zoo: error: {message} (see `zoo {self.prog.split()[-1]} --help`)\n"
                  if " " in self.prog else f"zoo: error: {message} (see `zoo --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="zoo", description="JAX/Flax model zoo: convert and run HF PyTorch checkpoints.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("convert", help="HF PyTorch checkpoint (dir or hub id) -> zoo directory")
    p.add_argument("src", help="local HF checkpoint directory or hub repo id")
    p.add_argument("out", help="output directory (must not exist)")
    p.add_argument("--dtype", default=None,
                   help="float32 | bfloat16 | float16 (parameter storage; default: the checkpoint's)")
    p.add_argument("--architecture", help="head to build (default: the config's architectures[0])")
    p.add_argument("--verify", action="store_true",
                   help="run HF PyTorch and the zoo on a random input and print max abs differences")

    p = sub.add_parser("export", help="zoo directory -> HF PyTorch safetensors checkpoint")
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("--include-tied", action="store_true", help="also write tied duplicate keys")

    sub.add_parser("list", help="supported architectures")

    p = sub.add_parser("info", help="family, architecture, parameter count, dtype, bytes")
    p.add_argument("path")

    p = sub.add_parser("run", help="run a checkpoint on token ids, audio or an image and print its predictions")
    p.add_argument("checkpoint")
    p.add_argument("--input-ids", default=DEFAULT_INPUT_IDS,
                   help="text models: space-separated token ids (ids >= vocab_size are folded into range)")
    p.add_argument("--audio", help="audio models: a PCM WAV file (CTC heads print the transcription)")
    p.add_argument("--image", help="vision models: an image file (classifiers print top labels, "
                                   "segmentation heads write a colour PNG)")
    p.add_argument("--output", help="segmentation heads: the PNG to write (default: IMAGE-segmentation.png "
                                    "in the current directory); GroupViT: write its zero-shot segmentation there")
    p.add_argument("--labels", help='GroupViT: comma-separated label texts, e.g. "a cat,a dog" (tokenized with '
                                    "the checkpoint's tokenizer.json; or give --input-ids \"ids, ids\")")
    p.add_argument("--architecture")
    p.add_argument("--top-k", type=int, default=5)

    p = sub.add_parser("finetune", help="fine-tune a checkpoint on a data set as a recipe says (sharded, resumable)")
    p.add_argument("--recipe", required=True, help="recipe JSON (configs/finetune/NAME.json)")
    p.add_argument("--checkpoint", required=True, help="HF PyTorch checkpoint dir, zoo directory or hub repo id")
    p.add_argument("--data", required=True, help="text: a JSONL file; CTC: a directory of WAV + transcripts; "
                                                 "images: a directory with a folder per class")
    p.add_argument("--output", required=True, help="run directory (metrics, checkpoints, model); rerun to resume")
    p.add_argument("--task", help="override the recipe's task")
    p.add_argument("--mesh", help='mesh axis sizes, e.g. "data=2,fsdp=2,tensor=2" (default: data over all devices)')
    p.add_argument("--max-steps", type=int, help="stop after this step (default: the recipe's total_steps)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", dest="overrides",
                   help="replace a recipe field (JSON value), e.g. --set learning_rate=1e-4; repeatable")
    p.add_argument("--save-every", type=int, help="checkpoint every N steps (default: every 10%% of the run)")
    p.add_argument("--keep", type=int, default=2, help="checkpoints kept (default 2)")
    p.add_argument("--log-every", type=int, default=1, help="metrics line every N steps")
    p.add_argument("--max-length", type=int, help="text: tokens per row; audio: samples per row (default: longest)")
    p.add_argument("--scan-layers", action="store_true",
                   help="run the encoder layers as one nn.scan (Data2Vec, BigBird, SEW-D)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--coordinator", help="many hosts: HOST:PORT of process 0 (with --num-processes, --process-id)")
    p.add_argument("--num-processes", type=int)
    p.add_argument("--process-id", type=int)

    p = sub.add_parser("demo", help="convert the tiny checkpoint shipped with the zoo and run it")
    p.add_argument("--output", help="keep the converted checkpoints in this directory (default: a temp dir)")
    return parser


# ------------------------------------------------------------------------ commands
def cmd_convert(args) -> None:
    from zoo import pretrained

    dtype = None if args.dtype is None else pretrained.as_dtype(args.dtype)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: output already exists")
    src = pretrained.resolve_checkpoint(args.src)
    module, report = pretrained.convert(src, out, args.architecture, param_dtype=dtype, progress=True)
    count = sum(math.prod(s) for s in pretrained.param_shapes(module, state=False).values())
    import numpy as np

    stored = np.dtype(module.param_dtype).name
    print(f"converted {src} -> {out} ({type(module).__name__}, {count:,} parameters, "
          f"{stored}{'' if args.dtype else ', as stored'}); {report.summary()}")
    if args.verify:
        _, params = pretrained.from_pretrained(out)
        _verify(src, module, params)


def _verify(src: Path, module, params) -> None:
    try:
        import torch
        import transformers
    except ImportError:
        raise RuntimeError("--verify needs torch and transformers: pip install 'zoo[test]'") from None
    import numpy as np

    transformers.logging.disable_progress_bar()
    name = type(module).__name__
    hf_cls = getattr(transformers, name)
    hf = hf_cls.from_pretrained(str(src), attn_implementation="eager").eval()
    inputs = module.dummy_inputs(module.config)
    rng = np.random.RandomState(0)
    if "pixel_values" in inputs:
        x = rng.randn(2, *np.asarray(inputs["pixel_values"]).shape[1:]).astype(np.float32)
        with torch.no_grad():
            ref = hf(pixel_values=torch.from_numpy(x), output_hidden_states=True)
        from zoo.pretrained import as_variables

        got = module.apply(as_variables(params), x, output_hidden_states=True)
        return _print_diffs(got, ref)
    ids = np.asarray(inputs["input_ids"])
    shape = ids.shape[:-1] + (16,)
    ids = rng.randint(module.config.pad_token_id + 1, module.config.vocab_size, shape)
    mask = np.ones_like(ids)
    mask[..., -3:] = 0
    ids[..., -3:] = module.config.pad_token_id
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                 output_hidden_states=True)
    got = module.apply({"params": params}, input_ids=ids, attention_mask=mask, output_hidden_states=True)
    _print_diffs(got, ref)


def _print_diffs(got, ref) -> None:
    import numpy as np

    for field, value in ref.items():
        if value is None or field == "past_key_values":
            continue
        ours = getattr(got, field)
        pairs = zip(ours, value) if isinstance(value, tuple) else [(ours, value)]
        diff = max(float(np.max(np.abs(np.asarray(a, np.float64) - b.double().numpy()))) for a, b in pairs)
        print(f"verify {field}: max abs diff {diff:.3g}")


def cmd_export(args) -> None:
    from zoo import pretrained

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: output already exists")
    src = pretrained.resolve_checkpoint(args.src)
    module, params = pretrained.from_pretrained(src)
    pretrained.export_pytorch(out, module, params, include_aliases=args.include_tied,
                              extra_files=pretrained.auxiliary_files(src))
    print(f"exported {args.src} -> {out}/model.safetensors ({type(module).__name__})")


def cmd_list(args) -> None:
    from zoo.registry import list_architectures

    for model_type, arch in list_architectures():
        print(f"{model_type:16s} {arch}")


def cmd_info(args) -> None:
    from collections import Counter

    from converters.readers import open_checkpoint
    from zoo import pretrained

    src = pretrained.resolve_checkpoint(args.path)
    family, config = pretrained.read_config(src)
    arch = pretrained.choose_architecture(family, config, None)
    weights = src / pretrained.ZOO_WEIGHTS
    with open_checkpoint(weights if weights.exists() else src) as ckpt:
        keys = ckpt.keys()
        count = sum(math.prod(ckpt.shape(k)) for k in keys)
        dtypes = Counter(str(ckpt.dtype(k)) for k in keys)
        info = {
            "path": str(src), "family": family.model_type, "architecture": arch,
            "format": "zoo" if weights.exists() else ckpt.format, "tensors": len(keys),
            "parameters": count, "dtype": dict(dtypes), "bytes": ckpt.nbytes,
        }
    for k, v in info.items():
        print(f"{k:13s} {v}")


def cmd_run(args) -> None:
    from zoo import pretrained

    src = pretrained.resolve_checkpoint(args.checkpoint)
    module, params = pretrained.from_pretrained(src, args.architecture)
    inputs = module.dummy_inputs(module.config)
    name = type(module).__name__
    image, audio = getattr(args, "image", None), getattr(args, "audio", None)
    if "pixel_values" in inputs:
        if not image:
            raise ValueError(f"{name} takes images: pass --image FILE")
        if "input_ids" in inputs:
            return _run_zero_shot(src, module, params, args)
        return _run_image(src, module, params, args)
    if image:
        raise ValueError(f"{name} does not take images: pass " + ("--audio" if "input_values" in inputs
                                                                   else "--input-ids"))
    if "input_values" in inputs:
        if not audio:
            raise ValueError(f"{name} takes audio: pass --audio FILE.wav")
        return _run_audio(src, module, params, args)
    if audio:
        raise ValueError(f"{name} takes token ids, not audio: pass --input-ids")
    _run_text(module, params, args)


def image_processor_for(src: Path, config):
    """The checkpoint's ``preprocessor_config.json``, else the family's processor (BEiT's, or
    CLIP's for GroupViT) with its defaults at the config's image size."""
    from zoo.nn.vision import as_pair
    from zoo.preprocessing import BeitImageProcessor, CLIPImageProcessor

    clip = config.model_type == "groupvit"
    processor = CLIPImageProcessor if clip else BeitImageProcessor
    if (src / "preprocessor_config.json").is_file():
        return processor.from_pretrained(src)
    height, width = as_pair(config.vision.image_size if clip else config.image_size, "image_size")
    if clip:
        return CLIPImageProcessor(size={"shortest_edge": min(height, width)},
                                  crop_size={"height": height, "width": width})
    return BeitImageProcessor(size={"height": height, "width": width})


def _label_token_ids(src: Path, labels: list[str] | None, input_ids: str | None, pad_id: int):
    """``(ids [T, L], attention_mask [T, L])`` from label texts (tokenizer.json) or id lists."""
    import numpy as np

    if labels:
        path = src / "tokenizer.json"
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise RuntimeError("--labels needs the `tokenizers` package (pip install tokenizers), or pass "
                               "--input-ids") from None
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no tokenizer.json next to the checkpoint; pass --input-ids "
                                    '"ids, ids" (one id sequence per label) instead')
        sequences = [e.ids for e in Tokenizer.from_file(str(path)).encode_batch(labels)]
    else:
        try:
            sequences = [[int(t) for t in part.split()] for part in input_ids.split(",")]
        except ValueError:
            raise ValueError(f"--input-ids must be comma-separated sequences of integers, got {input_ids!r}") from None
    if not sequences or not all(sequences):
        raise ValueError("every label needs at least one token")
    length = max(len(seq) for seq in sequences)
    ids = np.full((len(sequences), length), pad_id, np.int32)
    mask = np.zeros((len(sequences), length), np.int32)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)], mask[row, : len(seq)] = seq, 1
    return ids, mask


def _run_zero_shot(src: Path, module, params, args) -> None:
    """GroupViT: label scores for the image, and the zero-shot segmentation with ``--output``."""
    import jax
    import numpy as np

    from zoo.nn.resize import resize
    from zoo.pretrained import as_variables
    from zoo.preprocessing import load_image, segmentation_to_png

    labels = [t.strip() for t in (args.labels or "").split(",") if t.strip()]
    if not labels and args.input_ids in (None, DEFAULT_INPUT_IDS):
        raise ValueError('pass --labels "a cat,a dog" (with a tokenizer.json) or --input-ids "ids, ids"')
    cfg = module.config.text
    ids, mask = _label_token_ids(src, labels, args.input_ids, cfg.pad_token_id or 0)
    names = labels or [f"text {i}" for i in range(len(ids))]
    image = load_image(args.image)
    pixel_values = image_processor_for(src, module.config)(image)["pixel_values"]
    segment = bool(args.output)
    out = jax.jit(lambda v, i, m, x: module.apply(v, input_ids=i, attention_mask=m, pixel_values=x,
                                                  output_segmentation=segment))(
        as_variables(params), ids, mask, pixel_values)
    logits = np.asarray(out.logits_per_image[0], np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    print(f"{type(module).__name__} on {args.image} ({image.width}x{image.height} -> "
          f"{pixel_values.shape[3]}x{pixel_values.shape[2]}), {len(names)} labels")
    for i in np.argsort(-probs)[: args.top_k]:
        print(f"  {names[i]}: {probs[i]:.4f}")
    if segment:
        seg = resize(out.segmentation_logits[0], (image.height, image.width), axes=(1, 2))  # [T, H, W]
        label_map = np.asarray(seg).argmax(0)
        segmentation_to_png(label_map, args.output)
        counts = np.bincount(label_map.ravel(), minlength=len(names))
        share = ", ".join(f"{names[i]} {counts[i] / label_map.size:.1%}" for i in np.argsort(-counts)[: args.top_k])
        print(f"  segmentation {image.width}x{image.height} -> {args.output}; largest: {share}")


def _run_image(src: Path, module, params, args) -> None:
    import jax
    import numpy as np

    from zoo.pretrained import as_variables
    from zoo.preprocessing import load_image, segmentation_to_png

    image = load_image(args.image)
    processor = image_processor_for(src, module.config)
    pixel_values = processor(image)["pixel_values"]
    out = jax.jit(lambda v, x: module.apply(v, x))(as_variables(params), pixel_values)
    name = type(module).__name__
    print(f"{name} on {args.image} ({image.width}x{image.height} -> {pixel_values.shape[3]}x{pixel_values.shape[2]})")
    if name.endswith("ImageClassification"):
        _print_top_labels(module.config, np.asarray(out.logits[0]), args.top_k)
    elif name.endswith("SemanticSegmentation"):
        label_map = processor.post_process_semantic_segmentation(
            np.asarray(out.logits), target_sizes=[(image.height, image.width)])[0]
        path = Path(args.output or f"{Path(args.image).stem}-segmentation.png")
        segmentation_to_png(label_map, path)
        labels = module.config.id2label or {}
        classes, counts = np.unique(label_map, return_counts=True)
        order = np.argsort(-counts)[: args.top_k]
        share = ", ".join(f"{labels.get(int(classes[i]), int(classes[i]))} {counts[i] / label_map.size:.1%}"
                          for i in order)
        print(f"  segmentation {label_map.shape[1]}x{label_map.shape[0]} -> {path}; largest classes: {share}")
    else:
        h = np.asarray(out.last_hidden_state)
        print(f"  last_hidden_state {h.shape}, mean {h.mean():.5f}, std {h.std():.5f}")


def _run_audio(src: Path, module, params, args) -> None:
    import numpy as np

    from zoo.preprocessing import AudioFeatureExtractor, CTCDecoder, read_wav, to_mono

    config_file = src / "preprocessor_config.json"
    extractor = AudioFeatureExtractor.from_pretrained(src) if config_file.is_file() else AudioFeatureExtractor()
    samples, rate = read_wav(args.audio)
    inputs = extractor(to_mono(samples), sampling_rate=rate, return_attention_mask=True)
    out = module.apply({"params": params}, input_values=inputs["input_values"],
                       attention_mask=inputs["attention_mask"])
    name = type(module).__name__
    print(f"{name} on {args.audio} ({len(samples) / rate:.2f} s at {rate} Hz)")
    if name.endswith("ForCTC"):
        if not (src / "vocab.json").is_file():
            raise FileNotFoundError(f"{src}: no vocab.json next to the CTC checkpoint, cannot decode")
        print(f"  transcription: {CTCDecoder.from_pretrained(src).decode_logits(np.asarray(out.logits))[0]!r}")
    elif name.endswith(("SequenceClassification", "XVector")):
        _print_top_labels(module.config, np.asarray(out.logits[0]), args.top_k)
    elif name.endswith("AudioFrameClassification"):
        labels = module.config.id2label or {}
        pred = np.asarray(out.logits[0]).argmax(-1)
        print("  frames: " + " ".join(str(labels.get(int(p), p)) for p in pred))
    else:
        h = np.asarray(out.last_hidden_state)
        print(f"  last_hidden_state {h.shape}, mean {h.mean():.5f}, std {h.std():.5f}")


def _print_top_labels(config, logits, top_k: int) -> None:
    import numpy as np

    logits = logits.astype(np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    labels = config.id2label or {}
    for i in np.argsort(-probs)[:top_k]:
        print(f"  {labels.get(int(i), i)}: {probs[i]:.4f}")


def _run_text(module, params, args) -> None:
    import numpy as np

    cfg = module.config
    try:
        ids = np.array([[int(t) for t in args.input_ids.split()]])
    except ValueError:
        raise ValueError(f"--input-ids must be space-separated integers, got {args.input_ids!r}") from None
    if ids.size == 0:
        raise ValueError("--input-ids is empty")
    ids = ids % cfg.vocab_size
    name = type(module).__name__
    if name.endswith("ForMultipleChoice"):
        ids = ids[:, None]
    out = module.apply({"params": params}, input_ids=ids)
    print(f"{name} on {ids.shape[-1]} tokens")
    if hasattr(out, "logits") and name.endswith(("MaskedLM", "CausalLM")):
        logits = np.asarray(out.logits[0])
        for pos in range(logits.shape[0]):
            top = np.argsort(-logits[pos])[: args.top_k]
            print(f"  position {pos:3d} (id {ids[0, pos]:6d}): top-{args.top_k} ids {top.tolist()}")
    elif name.endswith(("SequenceClassification", "MultipleChoice")):
        _print_top_labels(cfg, np.asarray(out.logits[0]), args.top_k)
    elif name.endswith("TokenClassification"):
        labels = cfg.id2label or {}
        pred = np.asarray(out.logits[0]).argmax(-1)
        print("  " + " ".join(f"{t}/{labels.get(int(p), p)}" for t, p in zip(ids[0], pred)))
    elif name.endswith("QuestionAnswering"):
        start, end = int(np.argmax(out.start_logits[0])), int(np.argmax(out.end_logits[0]))
        print(f"  answer span: tokens {start}..{end}")
    else:
        h = np.asarray(out.last_hidden_state)
        print(f"  last_hidden_state {h.shape}, mean {h.mean():.5f}, std {h.std():.5f}")


def cmd_finetune(args) -> None:
    from zoo import distributed

    # before anything touches jax: many hosts join here (a no-op for one process)
    distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    from zoo import finetune

    result = finetune.finetune(args.recipe, args.checkpoint, args.data, output=args.output, task=args.task,
                               mesh=args.mesh, max_steps=args.max_steps,
                               overrides=finetune.parse_overrides(args.overrides), save_every=args.save_every,
                               keep=args.keep, log_every=args.log_every, max_length=args.max_length,
                               scan_layers=args.scan_layers, progress=not args.no_progress)
    if distributed.is_primary():
        losses = result.losses
        if losses:
            print(f"{result.architecture}: steps {result.start_step} -> {result.end_step}, loss {losses[0]:.4f} -> "
                  f"{losses[-1]:.4f}")
        else:
            print(f"{result.architecture}: nothing to do, {result.output} is at step {result.end_step}")
        print(f"metrics: {Path(result.output) / finetune.METRICS_FILE}")
        if result.model_dir is not None:
            print(f"model: {result.model_dir}")


def cmd_demo(args) -> None:
    out = Path(args.output or tempfile.mkdtemp(prefix="zoo-demo-")) / "converted"
    print(f"# zoo convert {TINY_CHECKPOINT} {out}")
    import importlib.util

    verify = all(importlib.util.find_spec(m) for m in ("torch", "transformers"))
    cmd_convert(argparse.Namespace(src=str(TINY_CHECKPOINT), out=str(out), dtype="float32",
                                   architecture=None, verify=verify))
    print(f"# zoo info {out}")
    cmd_info(argparse.Namespace(path=str(out)))
    print(f"# zoo run {out}")
    cmd_run(argparse.Namespace(checkpoint=str(out), architecture=None, top_k=5,
                               input_ids="0 31 7 4 58 100 9 2", audio=None))
    audio_out = out.parent / "converted-audio"
    print(f"# zoo convert {TINY_AUDIO_CHECKPOINT} {audio_out}")
    cmd_convert(argparse.Namespace(src=str(TINY_AUDIO_CHECKPOINT), out=str(audio_out), dtype="float32",
                                   architecture=None, verify=False))
    print(f"# zoo run {audio_out} --audio {TINY_WAV}")
    cmd_run(argparse.Namespace(checkpoint=str(audio_out), architecture=None, top_k=5, input_ids=None,
                               audio=str(TINY_WAV)))


COMMANDS = {"convert": cmd_convert, "export": cmd_export, "list": cmd_list, "info": cmd_info,
            "run": cmd_run, "finetune": cmd_finetune, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("zoo: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one line for people; ZOO_DEBUG=1 re-raises for developers
        if os.environ.get("ZOO_DEBUG"):
            raise
        message = str(e).strip().splitlines()[0] if str(e).strip() else ""
        if isinstance(e, KeyError):
            message = f"missing key {message}"
        elif not isinstance(e, (ValueError, OSError, RuntimeError)):
            message = f"internal error ({type(e).__name__}: {message}); ZOO_DEBUG=1 shows the traceback"
        print(f"zoo: error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
