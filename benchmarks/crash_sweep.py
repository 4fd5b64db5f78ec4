"""Crash safety under SIGKILL: ``zoo convert`` (of a sharded checkpoint), ``zoo export`` and
``zoo finetune`` killed at seeded random and at named points, then run again.

    python -m benchmarks.crash_sweep --points 50 --seed 0     # writes benchmarks/results/crash_sweep.{json,md}
    python -m benchmarks.crash_sweep --points 6 --no-write    # a smoke run

Every run is a real process (``python -m zoo ...``, ``JAX_PLATFORMS=cpu``) killed with
SIGKILL by one of (``KillPoint``):

- ``random:S``     S seconds after the process started (seeded, uniform over a clean run's time);
- ``at:LABEL[:N]`` ``ZOO_CRASH_AT=LABEL[:N]``: the library kills itself the N-th time it reaches
  that point (``converters.fileio.crash_point``: ``tensor-written``, ``file-before-rename``,
  ``dir-before-rename``, ``dir-after-rename``, ``train-step``, ``checkpoint-saved``,
  ``metrics-written``);
- ``watch:GLOB[+S]`` S seconds after a path matching GLOB (under the output's parent) appears,
  polled every millisecond: ``checkpoints/*.orbax-checkpoint-tmp*`` kills inside an orbax save
  (orbax writes a step into ``<step>.orbax-checkpoint-tmp/``, ``commit_success.txt`` last,
  then renames it to ``<step>/``).

A point is *recovered bit-exactly* when, after the kill(s):

- convert / export: the output path is absent or complete (every file equal, byte for byte,
  to a clean run's); running the command again gives the clean run's bytes (or, when the
  output was already complete, refuses to overwrite it and leaves it unchanged); nothing but
  the output is left in its parent directory;
- finetune: running the command again (after each kill of a chain) resumes and finishes; the
  metrics log's deterministic fields (step, loss, grad_norm, learning_rate, accuracy, epoch)
  equal a clean run's line for line (no line lost, duplicated or half-written), the model
  directory equals a clean run's byte for byte, and no orbax or zoo temporary is left.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "zoo" / "assets"
TEXT_CHECKPOINT = ASSETS / "tiny-data2vec-text"
FINETUNE_STEPS, SAVE_EVERY = 20, 4
FINETUNE = ["finetune", "--recipe", str(ROOT / "configs" / "finetune" / "text_classification.json"),
            "--checkpoint", str(TEXT_CHECKPOINT), "--data", str(ASSETS / "tiny-text-classification.jsonl"),
            "--max-steps", str(FINETUNE_STEPS), "--save-every", str(SAVE_EVERY), "--no-progress",
            "--set", "learning_rate=0.003", "--set", "warmup_steps=1", "--set", "batch_size=8"]
METRIC_FIELDS = ("step", "loss", "grad_norm", "learning_rate", "accuracy", "epoch")
CONVERT_LABELS = ("tensor-written", "file-before-rename", "dir-before-rename", "dir-after-rename")
FINETUNE_LABELS = ("train-step", "checkpoint-saved", "metrics-written", "tensor-written", "file-before-rename",
                   "dir-before-rename", "dir-after-rename")
HUNG = 124  # Runner.run's return code for a process that did not end within timeout_s
ORBAX_TMP = "checkpoints/*.orbax-checkpoint-tmp*"


@dataclasses.dataclass
class Outcome:
    """One trial: the kill points, which of them killed the process, and the verdict."""

    command: str
    points: list[str]
    killed: list[bool]
    recovered: bool
    detail: str = ""
    half_written: list[bool] = dataclasses.field(default_factory=list)  # finetune: an orbax tmp step was left


class Runner:
    """Runs ``python -m zoo`` processes in ``work`` with a shared JAX compilation cache."""

    def __init__(self, work: Path, timeout_s: float = 120.0):
        self.work, self.timeout_s = Path(work), timeout_s
        self.cache = self.work / "jax-cache"
        self.cache.mkdir(parents=True, exist_ok=True)

    def env(self, crash_at: str | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "ZOO_CRASH_AT"}
        env.update(JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(self.cache),
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
                   PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
                   TQDM_DISABLE="1", PYTHONFAULTHANDLER="1")
        if crash_at:
            env["ZOO_CRASH_AT"] = crash_at
        return env

    def run(self, args: list[str], point: str | None = None, watch_root: Path | None = None) -> tuple[int, str]:
        """Run ``zoo ARGS`` to its end or to the kill ``point``; ``(returncode, stderr)``
        (-9: killed by SIGKILL)."""
        kind, _, spec = (point or "none:").partition(":")
        crash_at = spec if kind == "at" else None
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen([sys.executable, "-m", "zoo", *args], cwd=ROOT, env=self.env(crash_at),
                                    stdout=subprocess.DEVNULL, stderr=err)
            began = time.monotonic()
            try:
                if kind == "random":
                    _wait_or_kill(proc, began + float(spec))
                elif kind == "watch":
                    pattern, _, extra = spec.partition("+")
                    while proc.poll() is None and not glob.glob(str(watch_root / pattern)):
                        if time.monotonic() - began > self.timeout_s:
                            break
                        time.sleep(0.001)
                    _wait_or_kill(proc, time.monotonic() + float(extra or 0))
                proc.wait(timeout=max(1.0, self.timeout_s - (time.monotonic() - began)))
            except subprocess.TimeoutExpired:  # hung: SIGABRT makes faulthandler print every thread's stack
                os.kill(proc.pid, signal.SIGABRT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
                err.seek(0)
                stacks = err.read().decode(errors="replace")[-3000:]
                return HUNG, f"hung: still running after {self.timeout_s:.0f} s; its stacks:\n{stacks}"
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            err.seek(0)
            return proc.returncode, err.read().decode(errors="replace")


def _why(rc: int, err: str) -> str:
    """What went wrong with a run: its last stderr line, or a hung run's stacks."""
    return err if rc == HUNG else f"rc {rc}: " + " ".join(err.strip().splitlines()[-1:])


def _wait_or_kill(proc: subprocess.Popen, deadline: float) -> None:
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)


def tree_digest(path: Path) -> dict[str, str]:
    """``relative path -> sha256`` of every file under ``path`` (empty when it is absent)."""
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- convert / export
class OutputCase:
    """``zoo convert`` or ``zoo export`` of a fixed source into a fresh directory."""

    def __init__(self, runner: Runner, name: str, args: list[str]):
        self.runner, self.name, self.args = runner, name, args
        self.trials = 0
        ref = runner.work / f"{name}-reference" / "out"
        began = time.monotonic()
        rc, err = runner.run([*args, str(ref)])
        self.seconds = time.monotonic() - began
        if rc != 0:
            raise RuntimeError(f"the clean `zoo {' '.join(args)}` failed: {_why(rc, err)}")
        self.reference = tree_digest(ref)
        self.reference_dir = ref

    def trial(self, point: str) -> Outcome:
        self.trials += 1
        parent = self.runner.work / f"{self.name}-{self.trials}"
        parent.mkdir()
        out = parent / "out"
        rc, err = self.runner.run([*self.args, str(out)], point, parent)
        killed = rc == -signal.SIGKILL
        problems = []
        if not killed and rc != 0:
            problems.append(f"the killed run failed instead: {_why(rc, err)}")
        after_kill = tree_digest(out)
        complete = after_kill == self.reference
        if after_kill and not complete:
            problems.append(f"after the kill {out.name} exists but differs from a clean run's")
        rc2, err2 = self.runner.run([*self.args, str(out)])
        if complete:
            if rc2 == 0 or "already exists" not in err2:
                problems.append(f"the rerun onto the complete output did not refuse (rc {rc2})")
        elif rc2 != 0:
            problems.append(f"the rerun failed: {_why(rc2, err2)}")
        if tree_digest(out) != self.reference:
            problems.append("the rerun's output differs from a clean run's")
        left = sorted(set(os.listdir(parent)) - {"out"})
        if left:
            problems.append(f"left next to the output: {left}")
        shutil.rmtree(parent, ignore_errors=True)
        return Outcome(self.name, [point], [killed], not problems, "; ".join(problems))

    def random_point(self, rng: random.Random) -> str:
        draw = rng.random()
        if draw < 0.5:
            return f"random:{rng.uniform(0, self.seconds):.3f}"
        if draw < 0.6:
            return f"watch:.out.*.tmp/{'flax_model' if self.name.startswith('convert') else 'model'}.safetensors"
        label = rng.choice(CONVERT_LABELS)
        if label == "tensor-written":
            return f"at:{label}:{rng.randint(1, 20)}"
        return f"at:{label}"


# ------------------------------------------------------------------------------------ finetune
def _metrics(output: Path) -> list[dict] | str:
    """The deterministic fields of every line of ``metrics.jsonl``, or what is wrong with it."""
    path = output / "metrics.jsonl"
    if not path.is_file():
        return "no metrics.jsonl"
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            return f"metrics.jsonl line {i} is not JSON: {line[:60]!r}"
        rows.append({k: record.get(k) for k in METRIC_FIELDS})
    return rows


class FinetuneCase:
    """``zoo finetune`` of the README's tiny text classification, killed and resumed."""

    name = "finetune"

    def __init__(self, runner: Runner, check_determinism: bool = True):
        self.runner, self.trials = runner, 0
        ref = runner.work / "finetune-reference"
        began = time.monotonic()
        rc, err = runner.run([*FINETUNE, "--output", str(ref)])
        self.seconds = time.monotonic() - began
        if rc != 0:
            raise RuntimeError(f"the clean zoo finetune failed: {_why(rc, err)}")
        self.metrics, self.model = _metrics(ref), tree_digest(ref / "model")
        if check_determinism:  # a second clean run (its programs now in the compilation cache)
            began = time.monotonic()
            rc, err = runner.run([*FINETUNE, "--output", str(runner.work / "finetune-reference-2")])
            self.seconds = time.monotonic() - began
            if rc != 0 or _metrics(runner.work / "finetune-reference-2") != self.metrics:
                raise RuntimeError("two clean zoo finetune runs differ: the run is not deterministic")

    def trial(self, points: list[str]) -> Outcome:
        self.trials += 1
        output = self.runner.work / f"finetune-{self.trials}"
        killed, problems, tried, half = [], [], [], []
        for point in points:  # a chain: each run resumes what the killed one left
            rc, err = self.runner.run([*FINETUNE, "--output", str(output)], point, output)
            tried.append(point)
            killed.append(rc == -signal.SIGKILL)
            half.append(bool(glob.glob(str(output / ORBAX_TMP))))
            if rc != -signal.SIGKILL:  # it finished first: the rest of the chain has nothing to kill
                if rc != 0:
                    problems.append(f"a run after {tried[:-1]} failed: {_why(rc, err)}")
                break
        rc, err = self.runner.run([*FINETUNE, "--output", str(output)])
        if rc != 0:
            problems.append(f"the final rerun failed: {_why(rc, err)}")
        metrics = _metrics(output)
        if isinstance(metrics, str):
            problems.append(metrics)
        elif metrics != self.metrics:
            steps = [r["step"] for r in metrics]
            diff = next((r["step"] for r, s in zip(metrics, self.metrics) if r != s), None)
            problems.append(f"the metrics differ from a clean run's (steps {steps}; first differing step {diff})")
        if tree_digest(output / "model") != self.model:
            problems.append("model/ differs from a clean run's")
        stray = [p.name for p in output.rglob("*") if ".orbax-checkpoint-tmp" in p.name or p.name.endswith(".tmp")]
        if stray:
            problems.append(f"temporaries left: {stray}")
        shutil.rmtree(output, ignore_errors=True)
        return Outcome(self.name, tried, killed, not problems, "; ".join(problems), half)

    def random_point(self, rng: random.Random) -> str:
        draw = rng.random()
        if draw < 0.3:
            return f"random:{rng.uniform(0, self.seconds):.3f}"
        if draw < 0.45:
            return f"watch:{ORBAX_TMP}"  # inside an orbax save
        if draw < 0.6:
            return f"watch:checkpoints/{SAVE_EVERY}+{rng.uniform(0, 0.5):.3f}"  # during training
        label = rng.choice(FINETUNE_LABELS)
        counts = {"train-step": FINETUNE_STEPS, "metrics-written": FINETUNE_STEPS,
                  "checkpoint-saved": FINETUNE_STEPS // SAVE_EVERY, "tensor-written": 20}
        return f"at:{label}:{rng.randint(1, counts[label])}" if label in counts else f"at:{label}"


def sharded_source(work: Path) -> Path:
    """The tiny data2vec-text checkpoint rewritten as HF shards (``model-0000i-of-0000N``)."""
    from converters.safetensors_io import SafetensorsFile
    from converters.writers import save_safetensors_sharded

    out = work / "sharded-source"
    out.mkdir()
    f = SafetensorsFile(str(TEXT_CHECKPOINT / "model.safetensors"))
    try:
        tensors = {k: f.read(k) for k in f.keys()}
    finally:
        f.close()
    save_safetensors_sharded(tensors, out, max_shard_bytes=20_000, metadata={"format": "pt"})
    shutil.copyfile(TEXT_CHECKPOINT / "config.json", out / "config.json")
    return out


def cases(runner: Runner) -> tuple[OutputCase, OutputCase, FinetuneCase]:
    source = sharded_source(runner.work)
    convert = OutputCase(runner, "convert-sharded", ["convert", str(source)])
    export = OutputCase(runner, "export", ["export", str(convert.reference_dir)])
    return convert, export, FinetuneCase(runner)


# -------------------------------------------------------------------------------------- sweep
def sweep(points: int, seed: int, work: Path, chain: int = 3) -> dict:
    rng = random.Random(seed)
    runner = Runner(work)
    convert, export, finetune = cases(runner)
    outcomes: list[Outcome] = []
    budget = {"convert-sharded": points // 3, "export": points // 3}
    budget["finetune"] = points - 2 * (points // 3)
    for case in (convert, export):
        for _ in range(budget[case.name]):
            outcomes.append(case.trial(case.random_point(rng)))
            _say(outcomes[-1])
    left = budget["finetune"]
    while left > 0:
        n = min(chain, left)
        outcomes.append(finetune.trial([finetune.random_point(rng) for _ in range(n)]))
        _say(outcomes[-1])
        left -= len(outcomes[-1].points)  # a chain stops at a run that ends before its kill
    rows = {}
    for name in budget:
        mine = [o for o in outcomes if o.command == name]
        rows[name] = {"points": sum(len(o.points) for o in mine), "killed": sum(sum(o.killed) for o in mine),
                      "trials": len(mine), "trials_recovered": sum(o.recovered for o in mine),
                      "points_recovered": sum(len(o.points) for o in mine if o.recovered),
                      "half_written_steps_left": sum(sum(o.half_written) for o in mine)}
    return {"seed": seed, "points": points, "finetune_chain": chain, "summary": rows,
            "clean_run_s": {"convert-sharded": convert.seconds, "export": export.seconds,
                            "finetune": finetune.seconds},
            "outcomes": [dataclasses.asdict(o) for o in outcomes]}


def _say(outcome: Outcome) -> None:
    verdict = "ok" if outcome.recovered else f"FAILED: {outcome.detail}"
    print(f"{outcome.command}: {outcome.points} killed={outcome.killed} {verdict}", flush=True)


def markdown(result: dict) -> list[str]:
    md = ["# Crash sweep: SIGKILL at seeded random and named points, then rerun", "",
          "| command | kill points tried | killed | recovered bit-exactly |", "|---|---|---|---|"]
    total = [0, 0, 0]
    for name, row in result["summary"].items():
        md.append(f"| zoo {name} | {row['points']} | {row['killed']} | {row['points_recovered']} |")
        total = [total[0] + row["points"], total[1] + row["killed"], total[2] + row["points_recovered"]]
    md.append(f"| all | {total[0]} | {total[1]} | {total[2]} |")
    failed = [o for o in result["outcomes"] if not o["recovered"]]
    md += ["", f"- seed {result['seed']}; finetune trials chain up to {result['finetune_chain']} kills "
           f"(each followed by a resume) before a final run; a point that did not kill (the run ended "
           f"first) still counts as tried. Clean runs: "
           + ", ".join(f"{k} {v:.1f} s" for k, v in result["clean_run_s"].items())]
    halves = [o for o in result["outcomes"] if any(o["half_written"])]
    md.append(f"- finetune kills that left a half-written orbax step (`<step>.orbax-checkpoint-tmp`) behind: "
              f"{sum(sum(o['half_written']) for o in halves)}, in {len(halves)} trials, of which "
              f"{sum(o['recovered'] for o in halves)} resumed bit-exactly from the previous complete step")
    md += [f"- FAILED: {o['command']} {o['points']}: {o['detail']}" for o in failed] or ["- no failures"]
    return md


def main(argv: list[str] | None = None) -> int:
    from benchmarks import harness

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=50, help="kill points over the three commands")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chain", type=int, default=3, help="finetune: kills per trial before the final run")
    parser.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/crash_sweep.*")
    args = parser.parse_args(argv)
    if args.points < 3:
        parser.error("--points must be at least 3 (one per command)")
    with tempfile.TemporaryDirectory(prefix="zoo-crash-sweep-") as work:
        result = sweep(args.points, args.seed, Path(work), args.chain)
    payload = {**result, "module": "benchmarks.crash_sweep", "argv": sys.argv[1:] if argv is None else argv}
    harness.finish_report("crash_sweep", payload, markdown(result), write=not args.no_write)
    return 0 if all(o["recovered"] for o in result["outcomes"]) else 1


if __name__ == "__main__":
    sys.exit(main())
