"""WAV reading and writing with the standard library ``wave`` module (numpy + stdlib only).

    x, sr = read_wav("speech.wav")   # float32 [T] (mono) or [T, C], sr in Hz
    x = to_mono(x)                    # float32 [T]
    write_wav("out.wav", x, sr)       # 16-bit PCM, written atomically

Integer PCM of 8 (unsigned), 16, 24 and 32 bits becomes float32 in [-1, 1), scaled like
soundfile: ``(u8 - 128) / 128``, ``i16 / 2**15``, ``i24 / 2**23``, ``i32 / 2**31`` (for 32-bit the
largest values round to 1.0 in float32, as with soundfile).
``WAVE_FORMAT_EXTENSIBLE`` files with a PCM sub-format are read too (``wave`` on Python
< 3.12 refuses them). Float and compressed WAVs (IEEE float, ADPCM, A-law, mu-law, MP3 in
WAV, ...) raise :class:`WavError` naming the file and suggesting a conversion to PCM.
No resampling is done here: a rate mismatch is reported by the feature extractor.
"""

from __future__ import annotations

import os
import struct
import sys
import tempfile
import warnings
import wave

import numpy as np

__all__ = ["WavError", "read_wav", "to_mono", "write_wav"]

_WAVE_FORMAT_PCM = 0x0001
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE
_FORMAT_NAMES = {
    0x0002: "Microsoft ADPCM",
    0x0003: "32/64-bit IEEE float",
    0x0006: "A-law",
    0x0007: "mu-law",
    0x0011: "IMA ADPCM",
    0x0031: "GSM 6.10",
    0x0050: "MPEG",
    0x0055: "MPEG layer 3 (MP3)",
}
_CONVERT_HINT = (
    "convert it to 16-bit PCM first, e.g. `ffmpeg -i IN -c:a pcm_s16le OUT.wav` or `sox IN -b 16 -e signed OUT.wav`"
)


class WavError(ValueError):
    """A file that is not a readable PCM WAV (the message names the file)."""


# ---------------------------------------------------------------------- reading
def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read a PCM WAV file.

    Returns ``(samples, sample_rate)``: ``samples`` is float32 in [-1, 1), shape ``[T]``
    for mono and ``[T, C]`` for ``C`` channels; ``sample_rate`` in Hz.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such audio file: {path!r}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a directory, not a WAV file")
    if os.path.getsize(path) == 0:
        raise WavError(f"{path!r} is empty (0 bytes), not a WAV file")

    format_tag, sub_tag = _sniff(path)
    pcm = format_tag == _WAVE_FORMAT_PCM or (format_tag == _WAVE_FORMAT_EXTENSIBLE and sub_tag == _WAVE_FORMAT_PCM)
    if not pcm:
        tag = sub_tag if format_tag == _WAVE_FORMAT_EXTENSIBLE and sub_tag is not None else format_tag
        name = _FORMAT_NAMES.get(tag, f"format tag 0x{tag:04x}")
        raise WavError(f"{path!r} is a {name} WAV, which is not supported (integer PCM only); {_CONVERT_HINT}.")

    try:
        with wave.open(path, "rb") as w:
            channels, width, rate, n_frames = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            raw = w.readframes(n_frames)
        if sys.byteorder == "big":  # `wave` hands out native-endian samples
            raw = _byteswap(raw, width)
    except wave.Error as e:
        if format_tag != _WAVE_FORMAT_EXTENSIBLE:
            raise WavError(f"{path!r} is not a readable PCM WAV file: {e}") from None
        # Python < 3.12: `wave` refuses WAVE_FORMAT_EXTENSIBLE even with a PCM sub-format.
        channels, width, rate, n_frames, raw = _read_pcm_chunks(path)
    except EOFError:
        raise WavError(f"{path!r} is truncated: its WAV header is incomplete") from None

    if channels < 1:
        raise WavError(f"{path!r} declares {channels} channels")
    if width not in (1, 2, 3, 4):
        raise WavError(f"{path!r} has {8 * width}-bit samples; only 8/16/24/32-bit PCM is supported; {_CONVERT_HINT}.")
    frame = channels * width
    got = len(raw) // frame
    if got < n_frames:
        warnings.warn(f"{path!r} is truncated: header says {n_frames} frames, file holds {got}.", stacklevel=2)
    raw = raw[: got * frame]
    samples = _pcm_to_float(raw, width).reshape(got, channels)
    return (samples[:, 0] if channels == 1 else samples), rate


def _sniff(path: str) -> tuple[int, int | None]:
    """Check the RIFF/WAVE header; return (format tag, extensible sub-format tag or None)."""
    with open(path, "rb") as f:
        head = f.read(12)
        if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            raise WavError(f"{path!r} is not a WAV file ({_guess_kind(head)}); {_CONVERT_HINT}.")
        while True:
            header = f.read(8)
            if len(header) < 8:
                raise WavError(f"{path!r} is not a valid WAV file: no 'fmt ' chunk")
            chunk_id, size = struct.unpack("<4sI", header)
            if chunk_id == b"fmt ":
                body = f.read(size)
                if len(body) < 16:
                    raise WavError(f"{path!r} is not a valid WAV file: 'fmt ' chunk too short")
                format_tag = struct.unpack("<H", body[:2])[0]
                sub_tag = None
                if format_tag == _WAVE_FORMAT_EXTENSIBLE and len(body) >= 26:
                    sub_tag = struct.unpack("<H", body[24:26])[0]  # first 2 bytes of the sub-format GUID
                return format_tag, sub_tag
            f.seek(size + (size & 1), os.SEEK_CUR)


def _guess_kind(head: bytes) -> str:
    if head.startswith(b"ID3") or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "it looks like an MP3"
    kinds = {b"fLaC": "FLAC", b"OggS": "Ogg (Vorbis/Opus)", b"RIFX": "big-endian RIFX WAV", b"RF64": "RF64 WAV",
             b"FORM": "AIFF"}
    for magic, kind in kinds.items():
        if head.startswith(magic):
            return f"it looks like {kind}"
    if head[4:8] == b"ftyp":
        return "it looks like MP4/M4A"
    return "no RIFF/WAVE header"


def _read_pcm_chunks(path: str) -> tuple[int, int, int, int, bytes]:
    """Minimal reader for WAVE_FORMAT_EXTENSIBLE PCM: (channels, width, rate, n_frames, raw)."""
    fmt = data = None
    with open(path, "rb") as f:
        f.seek(12)
        while fmt is None or data is None:
            header = f.read(8)
            if len(header) < 8:
                break
            chunk_id, size = struct.unpack("<4sI", header)
            if chunk_id == b"fmt ":
                fmt = f.read(size)
                if size & 1:
                    f.seek(1, os.SEEK_CUR)
            elif chunk_id == b"data":
                data = f.read(size)
            else:
                f.seek(size + (size & 1), os.SEEK_CUR)
    if fmt is None or data is None:
        raise WavError(f"{path!r} is not a valid WAV file: missing {'fmt ' if fmt is None else 'data'} chunk")
    _, channels, rate, _, block_align, bits = struct.unpack("<HHIIHH", fmt[:16])
    width = (bits + 7) // 8
    if channels < 1 or block_align != channels * width:
        raise WavError(f"{path!r} has an inconsistent 'fmt ' chunk ({channels} channels, {bits} bits, "
                       f"block align {block_align})")
    return channels, width, rate, len(data) // block_align if data else 0, data


def _pcm_to_float(raw: bytes, width: int) -> np.ndarray:
    """Little-endian PCM bytes -> float32 in [-1, 1) (flat)."""
    if width == 1:
        return ((np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0).astype(np.float32)
    if width == 2:
        return (np.frombuffer(raw, "<i2").astype(np.float32) / np.float32(2**15)).astype(np.float32)
    if width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        ints = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        ints = np.where(ints >= 2**23, ints - 2**24, ints)
        return (ints.astype(np.float64) / 2**23).astype(np.float32)
    return (np.frombuffer(raw, "<i4").astype(np.float64) / 2**31).astype(np.float32)


def _byteswap(raw: bytes, width: int) -> bytes:
    raw = raw[: len(raw) - len(raw) % width]
    if width == 1 or not raw:
        return raw
    return np.frombuffer(raw, np.uint8).reshape(-1, width)[:, ::-1].tobytes()


# ---------------------------------------------------------------------- helpers
def to_mono(x) -> np.ndarray:
    """Mix ``[T, C]`` down to ``[T]`` (mean over channels); ``[T]`` passes through. float32."""
    x = np.asarray(x)
    if x.ndim == 1:
        return x.astype(np.float32, copy=False)
    if x.ndim != 2:
        raise ValueError(f"expected audio [T] or [T, C], got shape {x.shape}")
    return x.mean(axis=1, dtype=np.float64).astype(np.float32)


# ---------------------------------------------------------------------- writing
def write_wav(path: str | os.PathLike, samples, sample_rate: int, sample_width: int = 2) -> None:
    """Write float samples in [-1, 1] (``[T]`` or ``[T, C]``) as integer PCM, atomically.

    ``sample_width`` is bytes per sample: 1 (8-bit unsigned), 2, 3 or 4. Values are scaled
    by ``2**(bits-1)``, rounded and clipped to the integer range, so ``read_wav`` returns
    exactly the samples that are multiples of ``2**-(bits-1)``.
    """
    path = os.fspath(path)
    x = np.asarray(samples)
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"write_wav expects float samples in [-1, 1], got dtype {x.dtype}")
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"samples must be [T] or [T, C], got shape {np.shape(samples)}")
    if not np.all(np.isfinite(x)):
        raise ValueError("samples contain NaN or infinity")
    if sample_width not in (1, 2, 3, 4):
        raise ValueError(f"sample_width must be 1, 2, 3 or 4 bytes, got {sample_width!r}")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer (Hz), got {sample_rate!r}")

    scale = 2.0 ** (8 * sample_width - 1)
    ints = np.clip(np.rint(x.astype(np.float64) * scale), -scale, scale - 1).astype(np.int64)
    if sample_width == 1:
        raw = (ints + 128).astype(np.uint8).tobytes()
    elif sample_width == 2:
        raw = ints.astype("<i2").tobytes()
    elif sample_width == 3:
        raw = ints.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    else:
        raw = ints.astype("<i4").tobytes()

    if sys.byteorder == "big":  # `wave` expects native-endian samples
        raw = _byteswap(raw, sample_width)

    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files
        with os.fdopen(fd, "wb") as f, wave.open(f, "wb") as w:
            w.setnchannels(x.shape[1])
            w.setsampwidth(sample_width)
            w.setframerate(int(sample_rate))
            w.writeframes(raw)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
