"""The ``zoo`` command: convert, export, inspect, run, generate with and fine-tune checkpoints.

It parses arguments and prints; the work lives in the library (:mod:`zoo.pretrained`,
:mod:`zoo.info`, :mod:`zoo.inference`, :mod:`zoo.text_generation`, :mod:`zoo.verify`,
:mod:`zoo.finetune`). Errors print
one line on stderr (``zoo: error: ...``) and exit non-zero; an output directory is only
created when the command succeeds. Nothing in the library imports this module.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path


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
    p.add_argument("--input-ids", default=None,
                   help="text models: space-separated token ids in [0, vocab_size) (others are refused; "
                        "default: a sample sequence, taken modulo vocab_size)")
    p.add_argument("--text", help="text models: a text, tokenized with the checkpoint's tokenizer.json "
                                  "(instead of --input-ids)")
    p.add_argument("--audio", help="audio models: a PCM WAV file (CTC heads print the transcription)")
    p.add_argument("--image", help="vision models: an image file (classifiers print top labels, "
                                   "segmentation heads write a colour PNG)")
    p.add_argument("--output", help="segmentation heads: the PNG to write (default: IMAGE-segmentation.png "
                                    "in the current directory); GroupViT: write its zero-shot segmentation there")
    p.add_argument("--labels", help='GroupViT: comma-separated label texts, e.g. "a cat,a dog" (tokenized with '
                                    "the checkpoint's tokenizer.json; or give --input-ids \"ids, ids\")")
    p.add_argument("--architecture")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--attention-kernel", default="auto",
                   help="attention kernels: auto (XLA on CPU; cuDNN / Pallas on GPU and TPU), xla, pallas "
                        "(interpreted on CPU: slow), cudnn")

    p = sub.add_parser("generate", help="continue a prompt with a causal LM (IDEFICS with images, "
                                        "Data2VecText / BigBird ForCausalLM), streaming the text")
    p.add_argument("checkpoint", help="zoo or HF checkpoint directory with its tokenizer files")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--prompt", help=f"the prompt; IDEFICS: put {'<image>'} where each --image goes")
    group.add_argument("--prompts", metavar="FILE", help='a JSONL file, one {"prompt": ..., "images": [...]} per '
                                                         "line; prints one JSON line per generated sequence")
    p.add_argument("--image", action="append", default=[], metavar="FILE", help="IDEFICS: an image file; repeat "
                                                                              "for several images, in order")
    p.add_argument("--max-new-tokens", type=int, help="tokens to generate (default: generation_config.json, "
                                                       "else 32)")
    p.add_argument("--greedy", action="store_true", help="greedy decoding (the default unless the checkpoint's "
                                                         "generation_config.json samples or a sampling option is set)")
    p.add_argument("--temperature", type=float, help="sampling temperature (implies sampling)")
    p.add_argument("--top-k", type=int, help="sample from the k most likely tokens, 0 = off (default 50, as HF)")
    p.add_argument("--top-p", type=float, help="nucleus sampling threshold (default 1.0 = off)")
    p.add_argument("--seed", type=int, help="random seed for sampling (default 0)")
    p.add_argument("--repetition-penalty", type=float, help="HF's repetition penalty (1.0 = off)")
    p.add_argument("--min-new-tokens", type=int, help="no end-of-sequence before this many tokens")
    p.add_argument("--num-return-sequences", type=int, help="sampled continuations per prompt")
    p.add_argument("--batch-size", type=int, default=8, help="--prompts: prompts decoded together (default 8)")
    p.add_argument("--architecture")
    p.add_argument("--attention-kernel", default="auto", help="as for zoo run")

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

    p = sub.add_parser("demo", help="convert the tiny checkpoints shipped with the zoo and run them")
    p.add_argument("--family", help="the family to show: data2vec-text, data2vec-audio, data2vec-vision, big_bird, "
                                    "groupvit, idefics, sew-d, or all (default: data2vec-text and data2vec-audio)")
    p.add_argument("--output", help="keep the converted checkpoints in this directory (default: a temporary "
                                    "directory, removed at the end)")
    return parser


# ------------------------------------------------------------------------ commands
def _check_new_output(path: str) -> Path:
    out = Path(path)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: output already exists")
    return out


def cmd_convert(args) -> None:
    from zoo import pretrained
    from zoo.info import parameter_count
    from zoo.tree import as_dtype

    dtype = None if args.dtype is None else as_dtype(args.dtype)
    out = _check_new_output(args.out)
    if args.verify:
        from zoo.verify import require_pytorch

        require_pytorch()  # before anything is written
    src = pretrained.resolve_checkpoint(args.src)
    model, report = pretrained.convert(src, out, args.architecture, param_dtype=dtype, progress=True)
    import numpy as np

    stored = np.dtype(model.param_dtype).name
    print(f"converted {src} -> {out} ({type(model).__name__}, {parameter_count(model):,} parameters, "
          f"{stored}{'' if args.dtype else ', as stored'}); {report.summary()}")
    if args.verify:
        from zoo.verify import compare_with_pytorch

        try:
            model, variables = pretrained.from_pretrained(out)
            diffs = compare_with_pytorch(src, model, variables)
        except BaseException:  # a conversion that could not be verified is not kept
            shutil.rmtree(out, ignore_errors=True)
            raise
        for field, diff in diffs.items():
            print(f"verify {field}: max abs diff {diff:.3g}")


def cmd_export(args) -> None:
    from zoo import pretrained

    out = _check_new_output(args.out)
    src = pretrained.resolve_checkpoint(args.src)
    model, variables = pretrained.from_pretrained(src)
    pretrained.export_pytorch(out, model, variables, include_aliases=args.include_tied,
                              extra_files=pretrained.auxiliary_files(src))
    print(f"exported {args.src} -> {out}/model.safetensors ({type(model).__name__})")


def cmd_list(args) -> None:
    from zoo.registry import list_architectures

    for model_type, arch in list_architectures():
        print(f"{model_type:16s} {arch}")


def cmd_info(args) -> None:
    from zoo.info import checkpoint_info

    for k, v in checkpoint_info(args.path).items():
        print(f"{k:13s} {v}")


def _parse_ids(text: str, what: str = "--input-ids") -> list[int]:
    try:
        return [int(t) for t in text.split()]
    except ValueError:
        raise ValueError(f"{what} must be space-separated integers, got {text!r}") from None


def cmd_run(args) -> None:
    from zoo import inference, pretrained

    src = pretrained.resolve_checkpoint(args.checkpoint)
    loaded = pretrained.from_pretrained(src, args.architecture,
                                        attention_kernel=getattr(args, "attention_kernel", "auto"))
    model, variables = loaded
    name = type(model).__name__
    fresh = loaded.report.missing if loaded.report is not None else []
    if fresh:
        print(f"zoo: warning: {len(fresh)} parameters of {name} are not in the checkpoint and were initialised "
              f"at random ({', '.join(fresh[:2])}{', ...' if len(fresh) > 2 else ''}): its predictions are "
              "random until it is fine-tuned", file=sys.stderr)
    kind = inference.input_kind(model)
    if kind == "prompt":
        raise ValueError(f"{name} writes text about images: use `zoo generate {args.checkpoint} "
                         f"--prompt \"<image> ...\" --image FILE`")
    image, audio = getattr(args, "image", None), getattr(args, "audio", None)
    if kind in ("image", "image_text") and not image:
        raise ValueError(f"{name} takes images: pass --image FILE")
    if kind not in ("image", "image_text") and image:
        raise ValueError(f"{name} does not take images: pass " + ("--audio" if kind == "audio" else "--input-ids"))
    if kind == "audio" and not audio:
        raise ValueError(f"{name} takes audio: pass --audio FILE.wav")
    if kind != "audio" and audio:
        raise ValueError(f"{name} takes token ids, not audio: pass --input-ids" if kind == "text"
                         else f"{name} takes images, not audio: pass only --image")
    if kind != "text" and getattr(args, "text", None) is not None:
        raise ValueError(f"{name} does not take --text" + (" (GroupViT: --labels)" if kind == "image_text" else ""))
    top_k = args.top_k
    if kind == "image_text":
        return _run_zero_shot(src, model, variables, args)
    if kind == "image":
        from zoo.preprocessing import load_image, segmentation_to_png

        pred = inference.predict_image(model, variables, load_image(image), directory=src, top_k=top_k)
        (w, h), (pw, ph) = pred.image_size, pred.processed_size
        print(f"{name} on {image} ({w}x{h} -> {pw}x{ph})")
        if pred.label_map is not None:
            path = Path(args.output or f"{Path(image).stem}-segmentation.png")
            segmentation_to_png(pred.label_map, path)
            print(f"  segmentation {w}x{h} -> {path}; largest classes: {_shares(pred.segment_shares)}")
        return _print_prediction(pred)
    if kind == "audio":
        from zoo.preprocessing import read_wav

        samples, rate = read_wav(audio)
        pred = inference.predict_audio(model, variables, samples, rate, directory=src, top_k=top_k)
        print(f"{name} on {audio} ({len(samples) / rate:.2f} s at {rate} Hz)")
        return _print_prediction(pred)
    if getattr(args, "text", None) is not None:
        from zoo.preprocessing import Tokenizer

        tokenizer = Tokenizer.from_pretrained(src)
        ids = tokenizer(args.text)["input_ids"]
        if not ids:
            raise ValueError("--text tokenized to no tokens")
    elif args.input_ids is None:  # only the built-in sample is folded into the vocabulary
        ids = [i % model.config.vocab_size for i in _parse_ids(DEFAULT_INPUT_IDS)]
    else:
        ids = _parse_ids(args.input_ids)
        if not ids:
            raise ValueError("--input-ids is empty")
        from zoo.nn.inputs import check_inputs

        try:
            check_inputs(model.config, input_ids=[ids])
        except ValueError as e:
            raise ValueError(f"--input-ids: {e}") from None
    pred = inference.predict_text(model, variables, [ids], top_k=top_k)
    print(f"{name} on {pred.num_tokens} tokens")
    _print_prediction(pred, top_k)
    if getattr(args, "text", None) is not None and pred.token_top_ids is not None:
        _print_words(tokenizer, pred, masked=name.endswith("MaskedLM"))


def _print_words(tokenizer, pred, *, masked: bool) -> None:
    """--text: the top tokens as words; a masked LM's text with each mask filled by its top word."""
    def word(i):
        return tokenizer.decode([int(i)]).strip() or repr(tokenizer.convert_ids_to_tokens(int(i)))

    mask_id = tokenizer.convert_tokens_to_ids(tokenizer.special_token("mask_token") or "") if masked else None
    for pos, top in enumerate(pred.token_top_ids):
        if mask_id is None or pred.input_ids[pos] == mask_id:
            print(f"  position {pos:3d} {word(pred.input_ids[pos])!r}: " + " | ".join(word(i) for i in top))
    if mask_id is not None and mask_id in pred.input_ids:
        filled = [int(top[0]) if i == mask_id else int(i) for i, top in zip(pred.input_ids, pred.token_top_ids)]
        print(f"  filled: {tokenizer.decode(filled, skip_special_tokens=True).strip()!r}")


def _run_zero_shot(src: Path, model, variables, args) -> None:
    """GroupViT: label scores for the image, and the zero-shot segmentation with ``--output``."""
    from zoo import inference
    from zoo.preprocessing import load_image, pad_token_sequences, segmentation_to_png, tokenize_texts

    labels = [t.strip() for t in (args.labels or "").split(",") if t.strip()]
    pad_id = model.config.text.pad_token_id or 0
    if labels:
        ids, mask = tokenize_texts(src, labels, pad_id,
                                   hint='pass --input-ids "ids, ids" (one id sequence per label) instead')
    elif args.input_ids in (None, DEFAULT_INPUT_IDS):
        raise ValueError('pass --labels "a cat,a dog" (with a tokenizer.json) or --input-ids "ids, ids"')
    else:
        sequences = [_parse_ids(part, "--input-ids (comma-separated sequences)") for part in args.input_ids.split(",")]
        ids, mask = pad_token_sequences(sequences, pad_id)
    names = labels or [f"text {i}" for i in range(len(ids))]
    image = load_image(args.image)
    pred = inference.zero_shot(model, variables, image, ids, mask, names=names, directory=src, top_k=args.top_k,
                               segment=bool(args.output))
    (w, h), (pw, ph) = pred.image_size, pred.processed_size
    print(f"{pred.architecture} on {args.image} ({w}x{h} -> {pw}x{ph}), {len(names)} labels")
    _print_prediction(pred)
    if pred.label_map is not None:
        segmentation_to_png(pred.label_map, args.output)
        print(f"  segmentation {w}x{h} -> {args.output}; largest: {_shares(pred.segment_shares)}")


def _shares(shares) -> str:
    return ", ".join(f"{name} {share:.1%}" for name, share in shares)


def _print_prediction(pred, top_k: int | None = None) -> None:
    """The head's predictions, one per line, indented under the "X on INPUT" line."""
    if pred.labels is not None:
        for name, prob in pred.labels:
            print(f"  {name}: {prob:.4f}")
    if pred.token_top_ids is not None:
        for pos, top in enumerate(pred.token_top_ids):
            print(f"  position {pos:3d} (id {pred.input_ids[pos]:6d}): top-{top_k} ids {top.tolist()}")
    if pred.token_labels is not None:
        print("  " + " ".join(f"{t}/{label}" for t, label in zip(pred.input_ids, pred.token_labels)))
    if pred.frame_labels is not None:
        print("  frames: " + " ".join(str(label) for label in pred.frame_labels))
    if pred.answer_span is not None:
        print(f"  answer span: tokens {pred.answer_span[0]}..{pred.answer_span[1]}")
    if pred.transcription is not None:
        print(f"  transcription: {pred.transcription!r}")
    if pred.hidden is not None:
        shape, mean, std = pred.hidden
        print(f"  last_hidden_state {shape}, mean {mean:.5f}, std {std:.5f}")


def cmd_generate(args) -> None:
    import json

    from zoo.text_generation import Prompt, Stats, TextGenerator, read_prompts_file

    sampling = [f"--{n.replace('_', '-')}" for n in ("temperature", "top_k", "top_p", "seed", "num_return_sequences")
                if getattr(args, n) is not None]
    if args.greedy and sampling:
        raise ValueError(f"--greedy does not go with {', '.join(sampling)} (sampling options)")
    if args.prompts and args.image:
        raise ValueError('--image goes with --prompt; in a --prompts file give "images": [...] per line')
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    # read what can be wrong before the (slow) model load
    prompts = read_prompts_file(args.prompts) if args.prompts else [Prompt(args.prompt, tuple(args.image))]
    for path in [i for p in prompts for i in p.images]:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such image file")
    generator = TextGenerator.from_pretrained(args.checkpoint, args.architecture,
                                              attention_kernel=args.attention_kernel)
    settings = generator.settings(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        seed=args.seed, repetition_penalty=args.repetition_penalty, min_new_tokens=args.min_new_tokens,
        num_return_sequences=args.num_return_sequences,
        do_sample=False if args.greedy else (True if sampling else None))
    if not args.prompts and settings.num_return_sequences == 1:
        stats = Stats()
        for piece in generator.stream(prompts, settings, stats=stats):
            print(piece.text, end="", flush=True)
        print(flush=True)
        print(f"zoo generate: {stats.summary()}", file=sys.stderr)
        return
    for start in range(0, len(prompts), args.batch_size):
        batch = prompts[start:start + args.batch_size]
        result = generator.generate(batch, settings)
        for row, text in enumerate(result.texts):
            prompt = batch[row // settings.num_return_sequences]
            print(json.dumps({"prompt": prompt.text, "images": list(map(str, prompt.images)),
                              "sequence": row % settings.num_return_sequences, "generated": text},
                             ensure_ascii=False), flush=True)
        print(f"zoo generate: prompts {start}..{start + len(batch) - 1}: {result.stats.summary()}", file=sys.stderr)


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
    from zoo import demo
    from zoo.verify import missing_pytorch

    names = demo.families(args.family)  # an unknown family fails before anything runs
    verify = not missing_pytorch()
    parser = build_parser()
    with demo.workspace(args.output) as workdir:
        for family in names:
            for step in demo.steps(family, workdir, verify=verify):
                print(f"# {step.shell()}", flush=True)
                COMMANDS[step.command](parser.parse_args([step.command, *step.argv]))


COMMANDS = {"convert": cmd_convert, "export": cmd_export, "list": cmd_list, "info": cmd_info,
            "run": cmd_run, "generate": cmd_generate, "finetune": cmd_finetune, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.command == "finetune" and argv is None:  # the `zoo` command itself, a fresh process (not
        from zoo import host_memory                    # a caller's main([...])): before anything runs JAX

        host_memory.keep_freed_memory(warn_if_late=False)
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
