"""Crash safety: ``zoo convert`` (of a sharded checkpoint), ``zoo export`` and ``zoo finetune``
run as real processes, killed with SIGKILL at named points (``ZOO_CRASH_AT``), at the moment
an orbax save is under way and at seeded random times, then run again: the output is absent
or complete, the rerun is bit-identical to a clean run, nothing temporary is left, and a
resumed fine-tuning run logs the clean run's loss curve exactly. The longer sweep is
``python -m benchmarks.crash_sweep``; this runs a few points of each (about a minute)."""

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.crash_sweep import ORBAX_TMP, SAVE_EVERY, FinetuneCase, OutputCase, Runner, sharded_source
from converters import fileio
from converters.writers import _temporary_name, atomic_directory, remove_stale_temporaries, save_safetensors


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    return Runner(tmp_path_factory.mktemp("crash"))


@pytest.fixture(scope="module")
def convert_case(runner):
    return OutputCase(runner, "convert-sharded", ["convert", str(sharded_source(runner.work))])


def _check(outcome, must_kill=True):
    assert outcome.recovered, f"{outcome.command} {outcome.points}: {outcome.detail}"
    if must_kill:
        assert all(outcome.killed), f"{outcome.command} {outcome.points}: not every point killed the process"


def test_convert_of_shards_killed_then_rerun(convert_case):
    rng = random.Random(0)
    assert len(list(Path(convert_case.args[1]).glob("model-*-of-*.safetensors"))) > 1
    for point in ("at:tensor-written:3", "at:dir-before-rename"):
        _check(convert_case.trial(point))
    _check(convert_case.trial(f"random:{rng.uniform(0.3, 1.0) * convert_case.seconds:.3f}"), must_kill=False)


def test_export_killed_then_rerun(runner, convert_case):
    case = OutputCase(runner, "export", ["export", str(convert_case.reference_dir)])
    rng = random.Random(1)
    _check(case.trial("at:dir-after-rename"))  # complete: the rerun must refuse and change nothing
    _check(case.trial(f"random:{rng.uniform(0.3, 1.0) * case.seconds:.3f}"), must_kill=False)


def test_finetune_killed_in_training_and_in_a_save_resumes_bit_exactly(runner):
    case = FinetuneCase(runner, check_determinism=False)
    rng = random.Random(2)
    points = [f"watch:{ORBAX_TMP}",  # inside orbax's save of the first step
              "at:checkpoint-saved:1",  # a checkpoint finalized, its step's metrics just logged
              f"watch:checkpoints/{2 * SAVE_EVERY}+{rng.uniform(0, 0.2):.3f}",  # mid training
              "at:dir-before-rename"]  # model/ written but not renamed into place
    _check(case.trial(points))


# ------------------------------------------------------------------ in-process units
def test_a_rerun_removes_what_a_killed_writer_left(tmp_path):
    final = tmp_path / "out"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = Path(_temporary_name(str(final)).replace(f"-{os.getpid()}-", f"-{pid}-"))
    stale.mkdir()
    (stale / "flax_model.safetensors").write_bytes(b"partial")
    live = Path(_temporary_name(str(final)))  # this process's: still running, kept
    live.mkdir()
    foreign = tmp_path / f".out.some-other-host-{pid}-0123456789ab.tmp"  # another host's: kept
    foreign.mkdir()
    with atomic_directory(final) as tmp:
        save_safetensors({}, os.path.join(tmp, "model.safetensors"))
    assert not stale.exists() and live.exists() and foreign.exists()
    assert sorted(os.listdir(final)) == ["model.safetensors"]
    assert remove_stale_temporaries(final) == []


def test_crash_point_is_inert_when_unset():
    assert fileio._CRASH_LEFT is None or "ZOO_CRASH_AT" in os.environ
    fileio.crash_point("dir-before-rename")  # returns: nothing configured


def test_resumed_metrics_drop_a_half_written_line(tmp_path):
    from zoo.finetune import _kept_lines

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 0.7}\n{"step": 2, "loss": 0.6}\n{"step": 3, "loss": 0.5}\n{"step": 4, "lo')
    assert _kept_lines(path, 2) == ['{"step": 1, "loss": 0.7}', '{"step": 2, "loss": 0.6}']
