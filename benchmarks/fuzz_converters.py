"""Fuzz the checkpoint converter: mutated files in, a correct conversion or one short error out.

    python -m benchmarks.fuzz_converters --cases 5000 --seed 0     # ~4 min on 2 CPU cores

Four tiny real checkpoints of a random HF ``Data2VecTextForMaskedLM`` are built first (needs
torch + transformers, like the tests): ``model.safetensors``, sharded safetensors (HF's
``save_pretrained``), ``pytorch_model.bin`` (``torch.save``) and a sharded ``.bin`` with its
index. Each case copies one, applies one seeded mutation and runs
``zoo.pretrained.convert(src, out)`` under a per-case time limit (SIGALRM). Mutations:

- ``bytes``: bit flips, truncation, byte insertion/deletion, random overwrites of a weights
  file, aimed at the safetensors header / the zip's central directory and ``data.pkl`` half
  of the time;
- ``st-header``: the safetensors header JSON edited (values of the wrong type, huge or
  negative sizes and offsets, deleted/added/duplicated keys, a wrong header length);
- ``zip-dir``: a field of a zip central-directory record, local header or end record set to
  a flipped, boundary or foreign value;
- ``pickle``: ``data.pkl`` edited at opcode level (arguments, deleted/duplicated/random
  opcodes, truncation) and re-zipped with a valid CRC, including deliberate code-execution
  payloads (``GLOBAL os system``, ``builtins exec``, ``STACK_GLOBAL``, ``INST``, ``OBJ``) that
  would create a marker file;
- ``index`` / ``config``: JSON edits of ``*.index.json`` / ``config.json``.

Outcomes: ``converted`` (checked: a ``.bin``'s tensors bit-identical to the unmutated
conversion, the tensors' CRC-32 protects them; a mutated safetensors file or pickle read the
same as the ``safetensors`` package / ``torch.load(weights_only=True)`` read it),
``refused:<Error>`` (an allowed type, one line naming a file, under 300 characters besides
the checkpoint directory's path), and the
failures: ``unexpected:<Type>``, ``bad-message``, ``hang``, ``leftover`` (output or temporary
left behind), ``code-executed``, ``silent-corruption``. ``converted-lenient``: converted although
the reference reader refuses the file (not a failure; counted).

Results: ``benchmarks/results/fuzz_converters.{json,md}``. The default test suite runs the same
generator (``tests/test_fuzz.py``) on a time budget.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pickletools
import random
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
FORMATS = ("st", "st_sharded", "bin", "bin_sharded")
MAX_MESSAGE = 300
FAILURES = ("unexpected", "bad-message", "hang", "leftover", "code-executed", "silent-corruption")


class CaseTimeout(BaseException):
    """Raised by SIGALRM in the main thread when a case runs past its time limit."""


@dataclass
class Case:
    index: int
    fmt: str
    kind: str
    description: str
    directory: Path
    target: str | None = None  # the file mutated (relative to directory)
    oracle: str = "identical"  # identical | safetensors | torch | none


@dataclass
class Outcome:
    kind: str  # converted | converted-lenient | refused:<Error> | <failure>[:<detail>]
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.kind.split(":")[0] in FAILURES


# ------------------------------------------------------------------ base checkpoints
def build_bases(root: Path) -> dict[str, Path]:
    """The four tiny checkpoints (directories with config.json) under ``root``."""
    import torch
    import transformers

    config = transformers.Data2VecTextConfig(vocab_size=40, hidden_size=8, num_hidden_layers=2,
                                             num_attention_heads=2, intermediate_size=12,
                                             max_position_embeddings=20)
    torch.manual_seed(0)
    model = transformers.Data2VecTextForMaskedLM(config).eval()
    with contextlib.redirect_stderr(io.StringIO()):
        model.save_pretrained(root / "st")
        model.save_pretrained(root / "st_sharded", max_shard_size="4KB")
    state = model.state_dict()
    for name in ("bin", "bin_sharded"):
        (root / name).mkdir()
        model.config.save_pretrained(root / name)
    torch.save(state, root / "bin" / "pytorch_model.bin")
    from huggingface_hub import split_torch_state_dict_into_shards

    split = split_torch_state_dict_into_shards(state, filename_pattern="pytorch_model{suffix}.bin",
                                               max_shard_size="4KB")
    for shard, keys in split.filename_to_tensors.items():
        torch.save({k: state[k] for k in keys}, root / "bin_sharded" / shard)
    (root / "bin_sharded" / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": split.metadata, "weight_map": split.tensor_to_filename}, indent=2))
    return {name: root / name for name in FORMATS}


def read_weights(directory: Path) -> dict:
    """The converted tensors of a zoo directory, read with the safetensors package."""
    from safetensors.numpy import load_file

    return load_file(str(directory / "flax_model.safetensors"))


# ------------------------------------------------------------------ byte helpers
def weight_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.suffix in (".safetensors", ".bin"))


def zip_data_offset(path: Path, entry_suffix: str) -> tuple[int, int]:
    """(file offset of the data, size) of the zip entry whose name ends with ``entry_suffix``."""
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(entry_suffix))
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        head = f.read(30)
    name_len, extra_len = struct.unpack("<HH", head[26:30])
    return info.header_offset + 30 + name_len + extra_len, info.compress_size


def _hot_region(path: Path, data: bytes, rng: random.Random) -> tuple[int, int]:
    """A region worth aiming at: the safetensors header, or a zip's data.pkl / directory."""
    if path.suffix == ".safetensors" and len(data) >= 8:
        header_len = struct.unpack("<Q", data[:8])[0]
        return 0, min(len(data), 8 + header_len)
    start = data.rfind(b"PK\x01\x02")
    if start > 0 and rng.random() < 0.5:
        first = data.find(b"PK\x01\x02")
        return first, len(data)
    try:
        offset, size = zip_data_offset(path, "/data.pkl")
    except Exception:  # noqa: BLE001 - not a readable zip: anywhere will do
        return 0, len(data)
    return offset - 80, offset + size


def mutate_bytes(data: bytes, rng: random.Random, region: tuple[int, int] | None = None) -> tuple[bytes, str]:
    """One byte-level mutation of ``data`` (inside ``region`` when given)."""
    lo, hi = region or (0, len(data))
    lo, hi = max(0, lo), max(max(0, lo) + 1, min(len(data), hi))
    buf = bytearray(data)
    op = rng.choice(("flip", "flip", "flips", "truncate", "insert", "delete", "overwrite"))
    at = rng.randrange(lo, hi) if hi > lo and len(buf) else 0
    if op == "flip" and buf:
        bit = rng.randrange(8)
        buf[at] ^= 1 << bit
        return bytes(buf), f"flip bit {bit} of byte {at}"
    if op == "flips" and buf:
        n = rng.randint(2, 8)
        for _ in range(n):
            buf[rng.randrange(lo, hi)] ^= 1 << rng.randrange(8)
        return bytes(buf), f"flip {n} bits in [{lo}, {hi})"
    if op == "truncate":
        return bytes(buf[:at]), f"truncate to {at} bytes"
    if op == "insert":
        blob = bytes(rng.randrange(256) for _ in range(rng.choice((1, 1, 4, 17))))
        return bytes(buf[:at] + blob + buf[at:]), f"insert {len(blob)} bytes at {at}"
    if op == "delete":
        n = rng.choice((1, 1, 3, 16))
        return bytes(buf[:at] + buf[at + n:]), f"delete {n} bytes at {at}"
    n = rng.choice((2, 4, 8, 64))
    buf[at:at + n] = bytes(rng.randrange(256) for _ in range(n))[: len(buf[at:at + n])]
    return bytes(buf), f"overwrite {n} bytes at {at}"


# ------------------------------------------------------------------ JSON helpers
_WRONG = ("x", "", 1, 0, -1, 1.5, -2.5, 10**30, -(10**30), 2**63, 2**64, None, True, False, [], {}, [1, 2],
          {"a": 1}, [-1], ["a"], float("nan"), float("inf"), "../../etc/passwd", "/abs/path", "1" * 300)


def _paths(obj, prefix=()):
    """Every (path, value) of a JSON tree, containers included."""
    yield prefix, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _set(obj, path, value):
    for p in path[:-1]:
        obj = obj[p]
    obj[path[-1]] = value


def _related(value, rng):
    """A plausible-but-wrong value near ``value``."""
    if type(value) is int:
        return rng.choice((value + 1, value - 1, -value, value * 1000, 0, -1, 2**40, 2**62, str(value), float(value)))
    if isinstance(value, str):
        return rng.choice((value + "x", value[:-1], value.upper(), "", value * 2, 7))
    if isinstance(value, list):
        return rng.choice((value[::-1], value + value[-1:], value[:-1], [str(v) for v in value], [value]))
    return rng.choice(_WRONG)


def mutate_json(obj, rng: random.Random, focus: str | None = None) -> tuple[object, str, bool]:
    """One edit of a JSON tree; returns (tree, description, duplicate_key_text). ``focus``
    prefers paths containing that key (e.g. "weight_map")."""
    obj = json.loads(json.dumps(obj))
    paths = [p for p, _ in _paths(obj) if p]
    if focus and rng.random() < 0.7:
        paths = [p for p in paths if focus in p] or paths
    if not paths or rng.random() < 0.04:
        return rng.choice(_WRONG + ([obj],)), "replace the whole document", False
    path = rng.choice(paths)
    parent = obj
    for p in path[:-1]:
        parent = parent[p]
    value = parent[path[-1]]
    op = rng.choice(("wrong", "related", "related", "delete", "add", "swap", "duplicate"))
    where = "/".join(map(str, path))
    if op == "delete":
        del parent[path[-1]]
        return obj, f"delete {where}", False
    if op == "add" and isinstance(parent, dict):
        parent[rng.choice(("ghost", "__metadata__", "weight_map", "total_size", "a" * 200))] = rng.choice(_WRONG)
        return obj, f"add a key next to {where}", False
    if op == "add" and isinstance(parent, list):
        parent.append(rng.choice(_WRONG))
        return obj, f"append to {path[:-1]}", False
    if op == "swap":
        other = rng.choice(paths)
        with contextlib.suppress(Exception):
            other_value = obj
            for p in other:
                other_value = other_value[p]
            parent[path[-1]] = json.loads(json.dumps(other_value))
            return obj, f"set {where} to the value at {'/'.join(map(str, other))}", False
    if op == "duplicate":
        return obj, f"duplicate key near {where}", True
    new = _related(value, rng) if op == "related" else rng.choice(_WRONG)
    parent[path[-1]] = new
    return obj, f"set {where} to {_short(new)}", False


def dump_json(obj, duplicate: bool, rng: random.Random) -> bytes:
    """JSON text of ``obj``; with ``duplicate``, one top-level member is written twice (the
    second time with another value)."""
    text = json.dumps(obj)
    if duplicate and isinstance(obj, dict) and obj:
        key = rng.choice(list(obj))
        member = json.dumps({key: rng.choice(_WRONG + (obj[key],))})[1:-1]
        text = "{" + member + ", " + text[1:] if rng.random() < 0.5 else text[:-1] + ", " + member + "}"
    return text.encode()


def _short(value, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------ format-aware mutators
def mutate_safetensors_header(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    header_len = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + header_len])
    body = data[8 + header_len:]
    new, what, dup = mutate_json(header, rng)
    raw = dump_json(new, dup, rng)
    if rng.random() < 0.8:
        raw += b" " * (-len(raw) % 8)
        size = len(raw)
    else:  # a header length that lies
        size = rng.choice((len(raw) + 1, len(raw) - 1, 0, 2**63, header_len, len(raw) + len(body)))
        what += f", header length {size}"
    return struct.pack("<Q", size % 2**64) + raw + body, "header: " + what


def _zip_records(data: bytes) -> list[tuple[str, int]]:
    """(kind, offset) of the zip records: central headers, local headers, end records."""
    out = []
    for sig, kind in ((b"PK\x01\x02", "central"), (b"PK\x03\x04", "local"), (b"PK\x05\x06", "eocd"),
                      (b"PK\x06\x06", "eocd64"), (b"PK\x06\x07", "locator64")):
        at = data.find(sig)
        while at >= 0:
            out.append((kind, at))
            at = data.find(sig, at + 1)
    return out


_ZIP_FIELDS = {  # record kind -> (field name, offset, struct code)
    "central": [("method", 10, "H"), ("crc", 16, "I"), ("csize", 20, "I"), ("usize", 24, "I"),
                ("name_len", 28, "H"), ("extra_len", 30, "H"), ("comment_len", 32, "H"),
                ("disk", 34, "H"), ("local_offset", 42, "I"), ("flags", 8, "H"), ("name0", 46, "B"),
                ("name_last", None, "B")],
    "local": [("method", 8, "H"), ("crc", 14, "I"), ("csize", 18, "I"), ("usize", 22, "I"),
              ("name_len", 26, "H"), ("extra_len", 28, "H"), ("flags", 6, "H"), ("signature", 0, "I")],
    "eocd": [("disk", 4, "H"), ("entries_disk", 8, "H"), ("entries", 10, "H"), ("cd_size", 12, "I"),
             ("cd_offset", 16, "I"), ("comment_len", 20, "H")],
    "eocd64": [("entries", 32, "Q"), ("cd_size", 40, "Q"), ("cd_offset", 48, "Q"), ("record_size", 4, "Q")],
    "locator64": [("eocd64_offset", 8, "Q"), ("disks", 16, "I")],
}


def mutate_zip_directory(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    records = _zip_records(data)
    if not records:
        return mutate_bytes(data, rng)
    kind, at = rng.choice(records)
    name, offset, code = rng.choice(_ZIP_FIELDS[kind])
    if offset is None:  # last byte of a central record's file name
        offset = 46 + struct.unpack_from("<H", data, at + 28)[0] - 1
    size = struct.calcsize(code)
    if at + offset + size > len(data):
        return mutate_bytes(data, rng)
    old = struct.unpack_from("<" + code, data, at + offset)[0]
    top = 2 ** (8 * size) - 1
    new = rng.choice((old ^ (1 << rng.randrange(8 * size)), old + 1, (old - 1) % (top + 1), 0, top,
                      rng.randrange(top + 1), {"H": 8, "B": ord("1"), "I": 64, "Q": 64}[code],
                      12, 14, 99, len(data), len(data) - 22))
    new %= top + 1
    buf = bytearray(data)
    struct.pack_into("<" + code, buf, at + offset, new)
    return bytes(buf), f"{kind} record at {at}: {name} {old} -> {new}"


def malicious_payloads(marker: Path) -> list[tuple[str, bytes]]:
    """Pickle fragments that push the result of a code-executing call then POP it."""
    sh = f"touch {marker}".encode()
    py = f"open({str(marker)!r}, 'w').close()".encode()

    def s(b: bytes) -> bytes:
        return b"\x8c" + bytes([len(b)]) + b  # SHORT_BINUNICODE

    return [
        ("GLOBAL os.system", b"cos\nsystem\n(S'" + sh + b"'\ntR0"),
        ("GLOBAL posix.system", b"cposix\nsystem\n(S'" + sh + b"'\ntR0"),
        ("GLOBAL builtins.exec", b"cbuiltins\nexec\n(S\"" + py + b"\"\ntR0"),
        ("GLOBAL builtins.eval", b"cbuiltins\neval\n(S\"" + py + b"\"\ntR0"),
        ("GLOBAL __builtin__.eval", b"c__builtin__\neval\n(S\"" + py + b"\"\ntR0"),
        ("GLOBAL subprocess.Popen", b"csubprocess\nPopen\n((S'touch'\nS'" + str(marker).encode() + b"'\nltR0"),
        ("STACK_GLOBAL os.system", s(b"os") + s(b"system") + b"\x93(" + s(sh) + b"tR0"),
        ("INST os.system", b"(S'" + sh + b"'\nios\nsystem\n0"),
        ("OBJ os.system", b"(cos\nsystem\nS'" + sh + b"'\no0"),
        ("GLOBAL torch.load", b"ctorch\nload\n(S'" + str(marker).encode() + b"'\ntR0"),
        ("GLOBAL torch.storage._load_from_bytes", b"ctorch.storage\n_load_from_bytes\n(C\x01xtR0"),
        ("GLOBAL numpy.core.multiarray._reconstruct", b"cnumpy.core.multiarray\n_reconstruct\n(tR0"),
        ("allowed OrderedDict + BUILD with os.system", b"ccollections\nOrderedDict\n)R}S'x'\ncos\nsystem\nsb0"),
        ("REDUCE on an allowed rebuild with a crafted storage",
         b"ctorch._utils\n_rebuild_tensor\n(S'x'\nK\x00(K\x01tK\x01\x85tR0"),
    ]


def mutate_pickle(pkl: bytes, rng: random.Random, marker: Path) -> tuple[bytes, str]:
    """An opcode-level edit of a pickle stream."""
    ops = list(pickletools.genops(pkl))
    positions = [pos for _, _, pos in ops] + [len(pkl)]
    i = rng.randrange(len(ops))
    op, arg, pos = ops[i]
    end = positions[i + 1]
    choice = rng.choice(("malicious", "malicious", "arg", "arg", "delete", "duplicate", "random", "truncate"))
    if choice == "malicious":
        name, blob = rng.choice(malicious_payloads(marker))
        at = positions[rng.randrange(1, len(ops))]  # after PROTO
        return pkl[:at] + blob + pkl[at:], f"insert {name} at {at}"
    if choice == "delete":
        return pkl[:pos] + pkl[end:], f"delete {op.name} at {pos}"
    if choice == "duplicate":
        return pkl[:end] + pkl[pos:end] + pkl[end:], f"duplicate {op.name} at {pos}"
    if choice == "random":
        blob = bytes([rng.choice(b"(.0}]ltRbsuQN\x85\x86\x87\x93cihq\x88\x89KMJ")])
        return pkl[:pos] + blob + pkl[pos:], f"insert opcode {blob!r} at {pos}"
    if choice == "truncate":
        return pkl[:pos], f"truncate before {op.name} at {pos}"
    if op.name in ("BINPUT", "LONG_BINPUT", "BINGET", "LONG_BINGET"):
        new = rng.choice((0, 1, 255, 2**16, 2**28, 2**31, 2**32 - 1))
        code = b"r" if "PUT" in op.name else b"j"
        return pkl[:pos] + code + struct.pack("<I", new) + pkl[end:], f"{op.name} at {pos} -> index {new}"
    if op.name in ("BININT1", "BININT2", "BININT"):
        code = {"BININT1": "B", "BININT2": "H", "BININT": "i"}[op.name]
        new = rng.choice((0, 1, 2, 255, 2**16 - 1, 2**31 - 1, -1, -(2**31)))
        new = {"B": new % 256, "H": new % 2**16, "i": max(-(2**31), min(2**31 - 1, new))}[code]
        if code == "i" or rng.random() < 0.5:
            return pkl[:pos] + b"J" + struct.pack("<i", max(-(2**31), min(2**31 - 1, new))) + pkl[end:], \
                f"set int at {pos} to {new}"
        return pkl[:pos + 1] + struct.pack("<" + code, new) + pkl[end:], f"set int at {pos} to {new}"
    if op.name in ("BINUNICODE", "SHORT_BINUNICODE", "GLOBAL"):
        if op.name == "GLOBAL":
            new = rng.choice(("os system", "torch FloatStorage", "torch HalfStorage", "torch LongStorage",
                              "torch._utils _rebuild_tensor", "collections OrderedDict", "torch bfloat16",
                              "torch._utils _rebuild_parameter", "builtins getattr"))
            mod, name = new.split()
            return pkl[:pos] + f"c{mod}\n{name}\n".encode() + pkl[end:], f"GLOBAL at {pos} -> {new}"
        new = rng.choice(("0", "1", "2", "", "../x", "storage", "cpu", "cuda:0", "x" * 300, str(arg) + "x"))
        raw = new.encode()
        return pkl[:pos] + b"X" + struct.pack("<I", len(raw)) + raw + pkl[end:], f"string at {pos} -> {new!r}"
    blob = pkl[pos:end]
    if len(blob) > 1:
        j = rng.randrange(1, len(blob))
        blob = blob[:j] + bytes([blob[j] ^ (1 << rng.randrange(8))]) + blob[j + 1:]
        return pkl[:pos] + blob + pkl[end:], f"flip a bit in the argument of {op.name} at {pos}"
    return pkl[:pos] + pkl[end:], f"delete {op.name} at {pos}"


def rezip(path: Path, replace: dict[str, bytes], compression=zipfile.ZIP_STORED) -> None:
    """Rewrite a zip with some entries' bytes replaced (valid CRCs, no alignment)."""
    with zipfile.ZipFile(path) as zin:
        entries = [(info.filename, zin.read(info)) for info in zin.infolist()]
    with zipfile.ZipFile(path, "w", compression) as zout:
        for name, data in entries:
            suffix = next((s for s in replace if name.endswith(s)), None)
            zout.writestr(name, replace[suffix] if suffix else data)


# ------------------------------------------------------------------ the generator
KINDS = ("bytes", "st-header", "zip-dir", "pickle", "index", "config")


def make_case(index: int, rng: random.Random, bases: dict[str, Path], root: Path, marker: Path,
              kinds: tuple[str, ...] = KINDS) -> Case:
    """Copy a base checkpoint into ``root/case-<index>`` and mutate it once (one of ``kinds``)."""
    while True:
        fmt = rng.choice(FORMATS)
        choices = ["bytes", "bytes", "config", "config"]
        choices += ["st-header"] * 3 if fmt.startswith("st") else ["zip-dir", "zip-dir", "pickle", "pickle", "pickle"]
        if fmt.endswith("sharded"):
            choices += ["index", "index", "index"]
        choices = [k for k in choices if k in kinds]
        if choices:
            break
    kind = rng.choice(choices)
    case_dir = root / f"case-{index}"
    shutil.copytree(bases[fmt], case_dir)
    if kind in ("config", "index"):
        name = "config.json" if kind == "config" else next(p.name for p in case_dir.glob("*.index.json"))
        path = case_dir / name
        if rng.random() < 0.1:
            data, what = mutate_bytes(path.read_bytes(), rng)
        else:
            new, what, dup = mutate_json(json.loads(path.read_text()), rng,
                                         focus="weight_map" if kind == "index" and rng.random() < 0.6 else None)
            data = dump_json(new, dup, rng)
        path.write_bytes(data)
        return Case(index, fmt, kind, what, case_dir, name, "identical")
    name = rng.choice(weight_files(case_dir))
    path = case_dir / name
    data = path.read_bytes()
    if kind == "bytes":
        region = _hot_region(path, data, rng) if rng.random() < 0.5 else None
        data, what = mutate_bytes(data, rng, region)
        oracle = "safetensors" if fmt.startswith("st") else "identical"
    elif kind == "st-header":
        data, what = mutate_safetensors_header(data, rng)
        oracle = "safetensors"
    elif kind == "zip-dir":
        data, what = mutate_zip_directory(data, rng)
        oracle = "identical"
    else:
        with zipfile.ZipFile(path) as z:
            pkl = z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))
        new, what = mutate_pickle(pkl, rng, marker)
        path.write_bytes(data)
        rezip(path, {"/data.pkl": new}, zipfile.ZIP_DEFLATED if rng.random() < 0.2 else zipfile.ZIP_STORED)
        return Case(index, fmt, kind, what, case_dir, name, "torch")
    path.write_bytes(data)
    return Case(index, fmt, kind, what, case_dir, name, oracle)


def generate(seed: int, bases: dict[str, Path], root: Path, marker: Path, kinds: tuple[str, ...] = KINDS):
    """The endless, seeded stream of cases (each is its own directory under ``root``)."""
    rng = random.Random(seed)
    index = 0
    while True:
        yield make_case(index, random.Random(rng.getrandbits(64)), bases, root, marker, kinds)
        index += 1


# ------------------------------------------------------------------ running a case
def allowed_errors() -> tuple[type, ...]:
    from converters.errors import CheckpointError
    from zoo.config import UnsupportedConfigError
    from zoo.registry import UnsupportedModelError

    return CheckpointError, UnsupportedConfigError, UnsupportedModelError


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextlib.contextmanager
def time_limit(seconds: float, max_extra_rss: int = 4 << 30):
    """Raise :class:`CaseTimeout` in the block past ``seconds`` or when the process grows by
    ``max_extra_rss`` bytes (checked 20 times a second; Python-level work only)."""
    start, base = time.perf_counter(), _rss_bytes()

    def on_alarm(signum, frame):
        if time.perf_counter() - start > seconds:
            raise CaseTimeout(f"ran past {seconds} s")
        if _rss_bytes() - base > max_extra_rss:
            raise CaseTimeout(f"grew past {max_extra_rss >> 30} GiB of memory")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_case(case: Case, reference: dict[str, dict], marker: Path, limit_s: float = 10.0) -> Outcome:
    """Convert ``case.directory`` into a fresh sibling output and classify what happened."""
    from zoo.pretrained import convert

    out_parent = case.directory.parent / f"{case.directory.name}-out"
    out_parent.mkdir()
    out = out_parent / "converted"
    try:
        with time_limit(limit_s), contextlib.redirect_stderr(io.StringIO()):
            _, report = convert(case.directory, out)
    except CaseTimeout as exc:
        return Outcome("hang", str(exc))
    except allowed_errors() as exc:
        outcome = _check_error(case, exc)
    except Exception as exc:  # noqa: BLE001 - classifying is the point
        tb = traceback.extract_tb(exc.__traceback__)[-1]
        return Outcome(f"unexpected:{type(exc).__name__}",
                       f"{_short(str(exc), 160)} at {Path(tb.filename).name}:{tb.lineno}")
    else:
        outcome = _check_conversion(case, out, report, reference)
    finally:
        if marker.exists():
            marker.unlink()
            return Outcome("code-executed", case.description)  # noqa: B012 - the worst outcome wins
    if outcome.kind.startswith("refused") and any(out_parent.iterdir()):
        return Outcome("leftover", ", ".join(p.name for p in out_parent.iterdir()))
    return outcome


def _check_error(case: Case, exc: BaseException) -> Outcome:
    message = str(exc)
    names = {case.directory.name, *(p.name for p in case.directory.iterdir())}
    # The limit is on the words, not on where the user keeps the checkpoint (CI's temporary
    # directories are deeper than a laptop's).
    words = message.replace(str(case.directory), "DIR")
    if "\n" in message or len(words) >= MAX_MESSAGE or not any(n in message for n in names):
        return Outcome("bad-message", f"{type(exc).__name__}: {_short(message, 200)}")
    return Outcome(f"refused:{type(exc).__name__}", _short(message, 200))


def _check_conversion(case: Case, out: Path, report, reference: dict[str, dict]) -> Outcome:
    import numpy as np

    got = read_weights(out)
    fresh = set(report.missing) | set(report.mismatched)
    if case.oracle == "identical":
        ref = reference[case.fmt]
        for key, value in got.items():
            if key in fresh or key not in ref or ref[key].shape != value.shape:
                continue
            if ref[key].dtype != value.dtype or ref[key].tobytes() != value.tobytes():
                return Outcome("silent-corruption", f"{key} differs from the unmutated conversion")
        return Outcome("converted")
    try:
        expected = _reference_read(case)
    except Exception:  # noqa: BLE001 - the reference refuses the file; we converted it
        return Outcome("converted-lenient", case.description)
    from converters.readers import open_checkpoint

    with open_checkpoint(case.directory / case.target) as ckpt:
        for key in ckpt.keys():
            mine = ckpt.get(key)
            theirs = expected.get(key)
            if theirs is None or theirs.shape != mine.shape or theirs.tobytes() != np.ascontiguousarray(mine).tobytes():
                return Outcome("silent-corruption", f"{key} reads differently from the reference reader")
    return Outcome("converted")


def _reference_read(case: Case) -> dict:
    path = case.directory / case.target
    if case.oracle == "safetensors":
        from safetensors.numpy import load_file

        return load_file(str(path))
    import torch

    state = torch.load(path, weights_only=True, map_location="cpu")
    return {k: (v.view(torch.int16) if v.dtype == torch.bfloat16 else v).numpy() for k, v in state.items()
            if isinstance(v, torch.Tensor)}


# ------------------------------------------------------------------ the campaign
@dataclass
class Summary:
    cases: int = 0
    seconds: float = 0.0
    outcomes: Counter = field(default_factory=Counter)
    by_kind: dict = field(default_factory=dict)
    failures: list = field(default_factory=list)
    lenient: list = field(default_factory=list)
    slowest_s: float = 0.0

    def add(self, case: Case, outcome: Outcome, seconds: float) -> None:
        self.cases += 1
        self.slowest_s = max(self.slowest_s, seconds)
        head = outcome.kind.split(":")[0] if outcome.kind.startswith("refused") else outcome.kind
        self.outcomes[head] += 1
        self.by_kind.setdefault(case.kind, Counter())[outcome.kind] += 1
        if outcome.kind == "converted-lenient":
            self.lenient.append(dict(case=case.index, fmt=case.fmt, kind=case.kind, mutation=case.description))
        if outcome.failed:
            self.failures.append(dict(case=case.index, fmt=case.fmt, kind=case.kind, mutation=case.description,
                                      outcome=outcome.kind, detail=outcome.detail))


def prepare(root: Path) -> tuple[dict[str, Path], dict[str, dict]]:
    """Build the base checkpoints under ``root`` and convert each once (the reference)."""
    from zoo.pretrained import convert

    bases = build_bases(root / "bases")
    reference = {}
    for fmt, path in bases.items():
        with contextlib.redirect_stderr(io.StringIO()):
            convert(path, root / "reference" / fmt)
        reference[fmt] = read_weights(root / "reference" / fmt)
    return bases, reference


def fuzz(cases: int, seed: int = 0, *, budget_s: float | None = None, limit_s: float = 10.0,
         work: Path | None = None, prepared=None, kinds: tuple[str, ...] = KINDS, keep: bool = False) -> Summary:
    """Run up to ``cases`` seeded cases of ``kinds`` (fewer when ``budget_s`` runs out), in
    ``work`` (default: a temporary directory, removed); ``prepared``: :func:`prepare`'s result."""
    root = Path(work or tempfile.mkdtemp(prefix="zoo-fuzz-"))
    bases, reference = prepared or prepare(root)
    marker = root / "PWNED"
    summary = Summary()
    cases_root = Path(tempfile.mkdtemp(prefix="cases-", dir=root))
    start = time.perf_counter()
    try:
        for case in generate(seed, bases, cases_root, marker, kinds):
            t0 = time.perf_counter()
            outcome = run_case(case, reference, marker, limit_s)
            summary.add(case, outcome, time.perf_counter() - t0)
            if not keep:
                shutil.rmtree(case.directory, ignore_errors=True)
                shutil.rmtree(f"{case.directory}-out", ignore_errors=True)
            if summary.cases >= cases or (budget_s is not None and time.perf_counter() - start > budget_s):
                break
    finally:
        summary.seconds = time.perf_counter() - start
        if not keep and work is None:
            shutil.rmtree(root, ignore_errors=True)
    return summary


def report(summary: Summary, seed: int) -> tuple[dict, str]:
    payload = dict(cases=summary.cases, seed=seed, seconds=round(summary.seconds, 1),
                   cases_per_s=round(summary.cases / max(summary.seconds, 1e-9), 1),
                   slowest_case_s=round(summary.slowest_s, 2), outcomes=dict(summary.outcomes),
                   by_mutation={k: dict(v) for k, v in sorted(summary.by_kind.items())},
                   failures=summary.failures, lenient=summary.lenient)
    failed = len(summary.failures)
    config = sum(summary.by_kind.get("config", Counter()).values())
    config_failed = sum(1 for f in summary.failures if f["kind"] == "config")
    md = [f"# Converter fuzzing: {summary.cases} cases, seed {seed}", "",
          f"{summary.cases} mutated checkpoints in {summary.seconds:.0f} s "
          f"({payload['cases_per_s']} cases/s, slowest case {summary.slowest_s:.2f} s): {failed} failures. "
          f"Mutations of the weights and index files: {summary.cases - config} cases, "
          f"{failed - config_failed} failures; of config.json (zoo.config's checks): {config} cases, "
          f"{config_failed} failures.", "", "| outcome | cases |", "|---|---|"]
    md += [f"| {k} | {v} |" for k, v in summary.outcomes.most_common()]
    md += ["", "| mutation | outcomes |", "|---|---|"]
    md += [f"| {k} | {', '.join(f'{o} {n}' for o, n in v.most_common())} |" for k, v in sorted(summary.by_kind.items())]
    if summary.failures:
        md += ["", "## Failures", ""] + [f"- case {f['case']} ({f['fmt']}, {f['mutation']}): {f['outcome']} {f['detail']}"
                                         for f in summary.failures[:50]]
    return payload, "\n".join(md) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit-s", type=float, default=10.0, help="per-case time limit")
    parser.add_argument("--no-write", action="store_true", help="print, do not write benchmarks/results")
    args = parser.parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    summary = fuzz(args.cases, args.seed, limit_s=args.limit_s)
    payload, md = report(summary, args.seed)
    print(md)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "fuzz_converters.json").write_text(json.dumps(payload, indent=2) + "\n")
        (RESULTS / "fuzz_converters.md").write_text(md)
    return 1 if summary.failures else 0


if __name__ == "__main__":
    sys.exit(main())
