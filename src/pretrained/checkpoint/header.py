"""The safetensors header, parsed and checked without any deep-learning framework (no torch, no numpy).

A safetensors file is an 8-byte little-endian length N, N bytes of JSON (the header), then the tensor data. This
module accepts exactly the files the safetensors reader accepts, so that every defect is reported here, as a
`CorruptCheckpointError` naming the file (and the tensor), before a framework ever maps the file:

- N is at most 100,000,000 and 8 + N is at most the file size.
- The header is UTF-8 (no byte-order mark) holding one JSON object; whitespace may surround it (writers pad it with
  spaces). The JSON is read as strictly as safetensors' reader does: no NaN/Infinity, no number beyond the float
  range, no unpaired surrogate escape, at most 127 levels of nesting.
- `__metadata__` appears at most once: null, or an object whose values are all strings.
- Every other key names a tensor: an object with `dtype`, `shape` and `data_offsets`, each once (other fields are
  ignored), or the same three as an array. `dtype` is one of `DTYPE_BITS` (a name, or the object `{name: null}`);
  `shape` and `data_offsets` hold integers in [0, 2**64), `data_offsets` exactly two, begin <= end. A name given
  twice keeps its last entry, but every entry must be valid.
- Sorted by (begin, end), the tensors tile the data region from byte 0 with no gap and no overlap (only empty
  tensors may share an offset); each spans exactly numel * bits / 8 bytes (whole bytes, no 64-bit overflow), and the
  last one ends exactly at the end of the file.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from ..errors import CorruptCheckpointError

# bits per element of every dtype safetensors knows (the sub-byte ones pack several elements in a byte)
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32,
    "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}
MAX_HEADER_SIZE = 100_000_000
MAX_NESTING = 127
_U64 = 2**64
_FIELDS = ("dtype", "shape", "data_offsets")
_SURROGATE = re.compile("[\ud800-\udfff]")
_FIX = "Re-download or re-save the checkpoint."


@dataclass(frozen=True)
class HeaderEntry:
    """One tensor of a safetensors file: where its bytes are, and how to read them."""

    name: str
    dtype: str  # the safetensors dtype name ("BF16")
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int


@dataclass(frozen=True)
class SafetensorsHeader:
    path: str
    tensors: dict[str, HeaderEntry]  # in on-disk order
    metadata: dict[str, str]
    data_start: int  # 8 + N
    file_size: int


def read_header(path: str | os.PathLike) -> SafetensorsHeader:
    """Parse and check the header of the safetensors file at `path` (reads the header only, not the data)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) < 8:
            raise CorruptCheckpointError(
                f"'{path}' is {size} bytes, too short to be a safetensors file (truncated?). {_FIX}")
        n = int.from_bytes(head, "little")
        if n > MAX_HEADER_SIZE:
            raise CorruptCheckpointError(
                f"'{path}' declares a header of {n} bytes, more than safetensors allows ({MAX_HEADER_SIZE}): it is "
                f"not a safetensors file or its first bytes are damaged. {_FIX}")
        if 8 + n > size:
            raise CorruptCheckpointError(
                f"'{path}' declares a header of {n} bytes but the file is {size} bytes: it is truncated or not a "
                f"safetensors file. {_FIX}")
        raw = f.read(n)
    return parse_header(raw, size, path)


def parse_header(raw: bytes, file_size: int, path: str) -> SafetensorsHeader:
    """Check the header bytes `raw` (the N bytes after the length) of a file of `file_size` bytes."""
    n = len(raw)
    data = _loads(raw, path)
    pairs = data.pairs if isinstance(data, _Object) else None
    if pairs is None:
        raise CorruptCheckpointError(
            f"'{path}' has a safetensors header that is {_kind(data)}, not a JSON object. {_FIX}")
    metadata: dict[str, str] = {}
    entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
    seen_metadata = False
    for key, value in pairs:
        if key == "__metadata__":
            if seen_metadata:
                raise CorruptCheckpointError(f"'{path}' has two '__metadata__' entries in its header. {_FIX}")
            seen_metadata = True
            metadata = _metadata(value, path)
        else:
            entries[key] = _entry(key, value, path)  # a repeated name keeps its last entry, as safetensors does
    return _place(entries, metadata, n, file_size, path)


def _metadata(value: Any, path: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CorruptCheckpointError(
            f"'{path}': the header's '__metadata__' is {_kind(value)}; it must be an object mapping strings to "
            f"strings. {_FIX}")
    for k, v in value.items():
        if not isinstance(v, str):
            raise CorruptCheckpointError(
                f"'{path}': the header's '__metadata__' maps '{k}' to {_kind(v)}; safetensors metadata values must "
                f"be strings. {_FIX}")
    return dict(value)


def _entry(name: str, value: Any, path: str) -> tuple[str, tuple[int, ...], int, int]:
    """(dtype, shape, begin, end) of one tensor's header entry."""

    def bad(why: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(f"'{path}': the header entry of tensor '{name}' {why}. {_FIX}")

    if isinstance(value, _Object):
        counts = Counter(k for k, _ in value.pairs if k in _FIELDS)
        repeated = sorted(k for k, c in counts.items() if c > 1)
        if repeated:
            raise bad(f"gives '{repeated[0]}' twice")
        missing = [f for f in _FIELDS if f not in value]
        if missing:
            raise bad(f"has no '{missing[0]}'")
        dtype, shape, offsets = (value[f] for f in _FIELDS)
    elif isinstance(value, list):
        if len(value) != 3:
            raise bad(f"is an array of {len(value)} values, not an object with {', '.join(_FIELDS)}")
        dtype, shape, offsets = value
    else:
        raise bad(f"is {_kind(value)}, not an object with {', '.join(_FIELDS)}")
    if isinstance(dtype, dict) and len(dtype) == 1 and next(iter(dtype.values())) is None:
        dtype = next(iter(dtype))  # {"F32": null}: serde's spelling of the same name
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise bad(f"has the unknown dtype {dtype!r} (known: {', '.join(DTYPE_BITS)})")
    if not isinstance(shape, list) or not all(_is_u64(d) for d in shape):
        raise bad(f"has the shape {_show(shape)}; a shape is an array of integers >= 0")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_u64(o) for o in offsets):
        raise bad(f"has the data_offsets {_show(offsets)}; they must be two integers [begin, end] >= 0")
    return dtype, tuple(shape), offsets[0], offsets[1]


def _place(entries: dict[str, tuple[str, tuple[int, ...], int, int]], metadata: dict[str, str], n: int,
           file_size: int, path: str) -> SafetensorsHeader:
    """Check that the tensors tile the data region exactly; their entries in on-disk order."""
    data_start = 8 + n
    tensors: dict[str, HeaderEntry] = {}
    position = 0
    for name, (dtype, shape, begin, end) in sorted(entries.items(), key=lambda kv: (kv[1][2], kv[1][3])):
        if end < begin:
            raise CorruptCheckpointError(
                f"'{path}': tensor '{name}' has data_offsets [{begin}, {end}], which end before they begin. {_FIX}")
        if begin != position:
            how = "overlaps the tensor before it" if begin < position else "leaves a gap after the tensor before it"
            raise CorruptCheckpointError(
                f"'{path}': tensor '{name}' starts at data byte {begin} but the tensors before it end at {position}: "
                f"it {how}. {_FIX}")
        position = end
        numel = 1
        for d in shape:
            numel *= d
            if numel >= _U64:
                raise CorruptCheckpointError(
                    f"'{path}': tensor '{name}' has the shape {list(shape)}, whose size overflows 64 bits. {_FIX}")
        bits = numel * DTYPE_BITS[dtype]
        if bits >= _U64:
            raise CorruptCheckpointError(
                f"'{path}': tensor '{name}' of shape {list(shape)} and dtype {dtype} would take more than 2**64 "
                f"bytes. {_FIX}")
        if bits % 8:
            raise CorruptCheckpointError(
                f"'{path}': tensor '{name}' of shape {list(shape)} and dtype {dtype} does not fill whole bytes "
                f"({bits} bits). {_FIX}")
        if end - begin != bits // 8:
            raise CorruptCheckpointError(
                f"'{path}': tensor '{name}' of shape {list(shape)} and dtype {dtype} should take {bits // 8} bytes "
                f"but its data_offsets give {end - begin}. {_FIX}")
        tensors[name] = HeaderEntry(name, dtype, shape, data_start + begin, end - begin)
    if data_start + position != file_size:
        if data_start + position > file_size:
            raise CorruptCheckpointError(
                f"'{path}' is truncated: its tensors need {data_start + position} bytes but the file has {file_size}. "
                f"{_FIX}")
        raise CorruptCheckpointError(
            f"'{path}' has {file_size - data_start - position} bytes after its last tensor that no tensor covers "
            f"(the file is {file_size} bytes, its header and tensors {data_start + position}). {_FIX}")
    return SafetensorsHeader(path, tensors, metadata, data_start, file_size)


# ---- JSON, read as strictly as serde_json (safetensors' reader) does ------------------------------------------


class _Object(dict):
    """A JSON object that remembers its (key, value) pairs in order, repeats included."""

    pairs: list[tuple[str, Any]]


def _object(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object(pairs)
    obj.pairs = pairs
    return obj


def _float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"the number {text[:20]}... is beyond the float range")
    return value


def _int(text: str) -> int | float:
    if text == "-0":
        return -0.0  # serde_json reads it as a float, which no size or offset may be
    if len(text) > 300 and math.isinf(float(text)):
        raise ValueError(f"the number {text[:20]}... is beyond the float range")
    return int(text)


def _constant(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


def _loads(raw: bytes, path: str) -> Any:
    def bad(why: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(f"'{path}' has an unreadable safetensors header: {why}. {_FIX}")

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise bad(f"byte {e.start} of the header is not UTF-8") from None
    if text.startswith("\ufeff"):
        raise bad("it starts with a byte-order mark")
    try:
        data = json.loads(text, object_pairs_hook=_object, parse_float=_float, parse_int=_int,
                          parse_constant=_constant)
    except json.JSONDecodeError as e:
        raise bad(f"not valid JSON ({e.msg} at byte {e.pos})") from None
    except RecursionError:
        raise bad(f"JSON nested more than {MAX_NESTING} levels deep") from None
    except ValueError as e:
        raise bad(str(e)) from None
    _check_strings_and_depth(data, bad)
    return data


def _check_strings_and_depth(data: Any, bad) -> None:
    stack = [(data, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise bad(f"the string {item[:40]!r} holds an unpaired surrogate escape")
            continue
        if isinstance(item, dict):
            children = [v for pair in item.pairs for v in pair] if isinstance(item, _Object) else list(item.items())
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > MAX_NESTING:
            raise bad(f"JSON nested more than {MAX_NESTING} levels deep")
        stack.extend((child, depth + 1) for child in children)


def _is_u64(value: Any) -> bool:
    return type(value) is int and 0 <= value < _U64


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "an object"
    return {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__)
