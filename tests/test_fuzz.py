"""Fuzzing the converter (the default suite's share; ``python -m benchmarks.fuzz_converters``
runs thousands of cases of the same generator).

Every mutated checkpoint must convert correctly or fail with one short line naming a file,
of an allowed type, within a per-case time limit, leaving no output behind and running no code.
"""

import pickle
import zipfile

import pytest

from benchmarks.fuzz_converters import KINDS, Case, fuzz, malicious_payloads, prepare, run_case
from converters.errors import UnsafePickleError
from converters.readers import open_checkpoint

CONVERTER_KINDS = tuple(k for k in KINDS if k != "config")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    return root, prepare(root)


def _failures(summary) -> str:
    return "\n".join(f"{f['fmt']} {f['kind']} ({f['mutation']}): {f['outcome']} {f['detail']}"
                     for f in summary.failures[:10])


def test_converter_mutations(prepared):
    """Safetensors headers and bytes, zip directories, pickle streams (with code-execution
    payloads) and index files: ~30 s of seeded cases."""
    root, bases_reference = prepared
    summary = fuzz(100_000, seed=0, budget_s=24, limit_s=5, work=root, prepared=bases_reference,
                   kinds=CONVERTER_KINDS)
    assert summary.cases >= 150, summary.cases
    print(f"{summary.cases} cases in {summary.seconds:.1f} s: {dict(summary.outcomes)}")
    assert not summary.failures, _failures(summary)
    assert summary.outcomes["converted"] and summary.outcomes["refused"]
    assert summary.by_kind["pickle"]["refused:UnsafePickleError"] > 0
    assert set(summary.by_kind) == set(CONVERTER_KINDS)


def test_config_mutations(prepared):
    """config.json values of the wrong type or range: one line naming config.json, no traceback."""
    root, bases_reference = prepared
    summary = fuzz(100_000, seed=0, budget_s=6, limit_s=5, work=root, prepared=bases_reference, kinds=("config",))
    assert not summary.failures, _failures(summary)


def test_config_mutations_never_corrupt_or_leave_output(prepared):
    """What the converter owns of a bad config.json: no silent corruption, no leftovers, no code."""
    root, bases_reference = prepared
    summary = fuzz(100_000, seed=1, budget_s=4, limit_s=2, work=root, prepared=bases_reference, kinds=("config",))
    worst = [f for f in summary.failures if f["outcome"] in ("leftover", "code-executed", "silent-corruption")]
    assert not worst, worst[:5]


@pytest.mark.parametrize("name,blob", [(n, b) for n, b in malicious_payloads("MARKER")], ids=lambda v: str(v)[:40])
def test_every_code_execution_payload_is_refused(prepared, tmp_path, name, blob):
    root, (bases, reference) = prepared
    marker = tmp_path / "PWNED"
    blob = dict(malicious_payloads(marker))[name]
    case_dir = tmp_path / "case"
    import shutil

    shutil.copytree(bases["bin"], case_dir)
    path = case_dir / "pytorch_model.bin"
    with zipfile.ZipFile(path) as z:
        entries = {i.filename: z.read(i) for i in z.infolist()}
    pkl_name = next(n for n in entries if n.endswith("/data.pkl"))
    entries[pkl_name] = entries[pkl_name][:2] + blob + entries[pkl_name][2:]  # right after PROTO
    with zipfile.ZipFile(path, "w") as z:
        for n, data in entries.items():
            z.writestr(n, data)
    if name.startswith(("GLOBAL builtins.exec", "GLOBAL os.system")):  # the payload is live for plain pickle
        with pytest.raises(Exception):
            pickle.loads(entries[pkl_name])  # runs the payload, then fails on torch's globals
        assert marker.exists()
        marker.unlink()
    with pytest.raises(UnsafePickleError if "allowed" not in name and "crafted" not in name else Exception):
        open_checkpoint(path)
    outcome = run_case(Case(0, "bin", "pickle", name, case_dir, path.name, "torch"), reference, marker)
    assert outcome.kind.startswith("refused:"), outcome
    assert not marker.exists()


@pytest.mark.parametrize("index", [2**28, 2**32 - 1])
def test_huge_memo_index_is_refused_before_unpickling(prepared, tmp_path, index):
    """Found by the fuzzer: C's unpickler grows its memo to the largest LONG_BINPUT index
    (2**32 - 1: 32 GiB touched, the process OOM-killed)."""
    import struct

    from converters.errors import CorruptCheckpointError

    _, (bases, _) = prepared
    path = tmp_path / "memo.bin"
    with zipfile.ZipFile(bases["bin"] / "pytorch_model.bin") as z:
        entries = {i.filename: z.read(i) for i in z.infolist()}
    name = next(n for n in entries if n.endswith("/data.pkl"))
    at = entries[name].index(b"q\x00")
    entries[name] = entries[name][:at] + b"r" + struct.pack("<I", index) + entries[name][at + 2:]
    with zipfile.ZipFile(path, "w") as z:
        for n, data in entries.items():
            z.writestr(n, data)
    with pytest.raises(CorruptCheckpointError, match=f"memo.bin: cannot unpickle data.pkl: memo index {index}"):
        open_checkpoint(path)
