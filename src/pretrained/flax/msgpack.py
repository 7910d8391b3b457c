"""`flax_model.msgpack` files, as the 4.x Flax classes wrote them, read and written with numpy and msgpack only.

The format (flax.serialization's, facts only): the file is one msgpack map of nested maps keyed by strings (the
parameter tree); each leaf is an ext value of type 1 whose payload is the msgpack array
`[shape (array of ints), dtype name (str, numpy's name: "float32", "bfloat16"), raw C-order bytes (bin)]`. An
array over 2**30 bytes is written as a map `{"__msgpack_chunked_array__": true, "shape": {"0": d0, ...},
"chunks": {"0": <leaf>, ...}}` of flat pieces. A sharded checkpoint is `flax_model-0000i-of-0000n.msgpack` files,
each a nested subset of the tree, and `flax_model.msgpack.index.json` whose `weight_map` keys are "/"-joined paths.

Reading walks the map structure in a read-only mapping of the file without decoding the tensors: each leaf becomes
an entry (dtype, shape, byte range), and `array()` is a numpy view of the mapped bytes, as for safetensors
(`checkpoint/numpy_reader.py`). Writing streams each leaf's bytes from its array, one shard at a time.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from ..checkpoint.files import check_index
from ..checkpoint.numpy_reader import MappedFiles
from ..errors import CheckpointError, CorruptCheckpointError

FLAX_WEIGHTS = "flax_model.msgpack"
FLAX_INDEX = "flax_model.msgpack.index.json"
EXT_NDARRAY = 1
EXT_NPSCALAR = 3  # a numpy scalar: the same payload as an ndarray of shape ()
CHUNK_KEY = "__msgpack_chunked_array__"
MAX_CHUNK_BYTES = 2**30
_FIX = "Re-download the checkpoint, or re-save it."


def numpy_dtype(name: str) -> np.dtype:
    """numpy's dtype for a dtype name as flax writes it (bfloat16 and float8 names through ml_dtypes)."""
    try:
        return np.dtype(name)
    except TypeError:
        import ml_dtypes

        if hasattr(ml_dtypes, name):
            return np.dtype(getattr(ml_dtypes, name))
        raise


@dataclass(frozen=True)
class MsgpackEntry:
    """One array of a msgpack checkpoint: its dtype, shape, file and the byte ranges of its data (one range; several
    for a chunked array, in order)."""

    name: str  # "/"-joined path
    dtype: np.dtype
    shape: tuple[int, ...]
    path: str
    pieces: tuple[tuple[int, int], ...]  # (offset, nbytes)

    @property
    def nbytes(self) -> int:
        return sum(n for _, n in self.pieces)

    @property
    def start(self) -> int:
        return self.pieces[0][0] if self.pieces else 0


class _Walker:
    """A msgpack reader over a buffer that decodes structure and small values, and reports where the bytes of
    `bin` / `ext` values are instead of copying them."""

    def __init__(self, buf: memoryview, path: str) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def fail(self, why: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(f"'{self.path}' is not a readable flax msgpack file: {why} (at byte "
                                      f"{self.pos}). {_FIX}")

    def take(self, n: int) -> int:
        start = self.pos
        if n < 0 or start + n > len(self.buf):
            raise self.fail("it ends in the middle of a value (truncated?)")
        self.pos += n
        return start

    def uint(self, n: int) -> int:
        start = self.take(n)
        return int.from_bytes(self.buf[start:start + n], "big")

    def value(self, depth: int = 0) -> Any:
        """The next value: dicts, lists, str, numbers, bool, None; bin -> ("bin", offset, n); ext -> ("ext", code,
        offset, n)."""
        if depth > 64:
            raise self.fail("maps nested more than 64 levels deep")
        b = self.buf[self.take(1)]
        if b <= 0x7F:
            return b
        if b >= 0xE0:
            return b - 0x100
        if 0x80 <= b <= 0x8F:
            return self._map(b & 0x0F, depth)
        if 0x90 <= b <= 0x9F:
            return [self.value(depth + 1) for _ in range(b & 0x0F)]
        if 0xA0 <= b <= 0xBF:
            return self._str(b & 0x1F)
        simple = {0xC0: None, 0xC2: False, 0xC3: True}
        if b in simple:
            return simple[b]
        if b in (0xC4, 0xC5, 0xC6):
            n = self.uint({0xC4: 1, 0xC5: 2, 0xC6: 4}[b])
            return ("bin", self.take(n), n)
        if b in (0xC7, 0xC8, 0xC9):
            n = self.uint({0xC7: 1, 0xC8: 2, 0xC9: 4}[b])
            code = struct.unpack(">b", self.buf[self.take(1):self.pos])[0]
            return ("ext", code, self.take(n), n)
        if 0xD4 <= b <= 0xD8:
            n = 1 << (b - 0xD4)
            code = struct.unpack(">b", self.buf[self.take(1):self.pos])[0]
            return ("ext", code, self.take(n), n)
        if b in (0xCA, 0xCB):
            n = 4 if b == 0xCA else 8
            return struct.unpack(">f" if n == 4 else ">d", self.buf[self.take(n):self.pos])[0]
        if 0xCC <= b <= 0xCF:
            return self.uint(1 << (b - 0xCC))
        if 0xD0 <= b <= 0xD3:
            n = 1 << (b - 0xD0)
            return int.from_bytes(self.buf[self.take(n):self.pos], "big", signed=True)
        if b in (0xD9, 0xDA, 0xDB):
            return self._str(self.uint({0xD9: 1, 0xDA: 2, 0xDB: 4}[b]))
        if b in (0xDC, 0xDD):
            return [self.value(depth + 1) for _ in range(self.uint(2 if b == 0xDC else 4))]
        if b in (0xDE, 0xDF):
            return self._map(self.uint(2 if b == 0xDE else 4), depth)
        raise self.fail(f"byte 0x{b:02x} starts no msgpack value")

    def _str(self, n: int) -> str:
        start = self.take(n)
        try:
            return bytes(self.buf[start:start + n]).decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail("a string is not UTF-8") from None

    def _map(self, n: int, depth: int) -> dict:
        out = {}
        for _ in range(n):
            key = self.value(depth + 1)
            if not isinstance(key, (str, int)):
                raise self.fail(f"a map key is {type(key).__name__}, not a string")
            out[str(key)] = self.value(depth + 1)
        return out


def _leaf(walker: _Walker, value: Any, name: str) -> tuple[np.dtype, tuple[int, ...], int, int]:
    """(dtype, shape, offset, nbytes) of an ndarray ext value."""
    if not (isinstance(value, tuple) and value[0] == "ext" and value[1] in (EXT_NDARRAY, EXT_NPSCALAR)):
        raise walker.fail(f"'{name}' is not an array (flax ndarray ext type {EXT_NDARRAY})")
    _, _, start, n = value
    inner = _Walker(walker.buf[start:start + n], walker.path)
    try:
        parts = inner.value()
    except CorruptCheckpointError:
        raise walker.fail(f"the array '{name}' has a damaged payload") from None
    if not (isinstance(parts, list) and len(parts) == 3 and isinstance(parts[0], list)
            and all(isinstance(d, int) and d >= 0 for d in parts[0]) and isinstance(parts[1], (str, tuple))
            and isinstance(parts[2], tuple) and parts[2][0] == "bin"):
        raise walker.fail(f"the array '{name}' is not [shape, dtype, bytes]")
    shape = tuple(parts[0])
    if isinstance(parts[1], str):
        dtype_name = parts[1]
    else:  # written as bytes (raw)
        dtype_name = bytes(inner.buf[parts[1][1]:parts[1][1] + parts[1][2]]).decode("utf-8", "replace")
    try:
        dtype = numpy_dtype(dtype_name)
    except (TypeError, ImportError):
        raise walker.fail(f"the array '{name}' has the unknown dtype '{dtype_name}'") from None
    _, offset, nbytes = parts[2]
    if nbytes != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
        raise walker.fail(f"the array '{name}' of shape {list(shape)} and dtype {dtype_name} holds {nbytes} bytes")
    return dtype, shape, start + offset, nbytes


def read_msgpack_entries(path: str) -> dict[str, MsgpackEntry]:
    """Every array of a flax msgpack file, by "/"-joined path, without reading the arrays' data."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise CorruptCheckpointError(f"'{path}' is empty: not a flax msgpack file. {_FIX}")
        import mmap

        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        buf = memoryview(mm)
        walker = _Walker(buf, path)
        tree = walker.value()
        if walker.pos != size:
            raise walker.fail(f"{size - walker.pos} bytes follow the parameter tree")
        if not isinstance(tree, dict):
            raise CorruptCheckpointError(f"'{path}' holds a msgpack {type(tree).__name__}, not a parameter tree "
                                         f"(a map). {_FIX}")
        entries: dict[str, MsgpackEntry] = {}

        def visit(node: dict, prefix: tuple[str, ...]) -> None:
            for key, value in node.items():
                where = prefix + (key,)
                name = "/".join(where)
                if isinstance(value, dict) and value.get(CHUNK_KEY) is True:
                    shape_map, chunks = value.get("shape"), value.get("chunks")
                    if not isinstance(shape_map, dict) or not isinstance(chunks, dict):
                        raise walker.fail(f"the chunked array '{name}' has no shape or chunks")
                    shape = tuple(shape_map[str(i)] for i in range(len(shape_map)))
                    pieces, dtype = [], None
                    for i in range(len(chunks)):
                        if str(i) not in chunks:
                            raise walker.fail(f"the chunked array '{name}' lacks chunk {i}")
                        dtype, _, offset, nbytes = _leaf(walker, chunks[str(i)], f"{name} (chunk {i})")
                        pieces.append((offset, nbytes))
                    dtype = dtype if dtype is not None else np.dtype(np.float32)
                    entries[name] = MsgpackEntry(name, dtype, shape, path, tuple(pieces))
                elif isinstance(value, dict):
                    visit(value, where)
                else:
                    dtype, shape, offset, nbytes = _leaf(walker, value, name)
                    entries[name] = MsgpackEntry(name, dtype, shape, path, ((offset, nbytes),))

        visit(tree, ())
        return entries
    finally:
        del buf
        try:
            mm.close()
        except BufferError:  # a view is still referenced (an error's traceback): unmapped when it goes
            pass


class MsgpackReader:
    """The arrays of a flax msgpack checkpoint (one file or shards + index) as numpy views of the mapped files;
    the same interface as `NumpyCheckpointReader` (`infos`, `array`, `release`, `names_on_disk`, `close`)."""

    def __init__(self, paths: list[str], weight_map: dict[str, str] | None = None,
                 index_path: str | None = None) -> None:
        self.paths = list(paths)
        self.format = "msgpack"
        self.infos: dict[str, MsgpackEntry] = {}
        for path in self.paths:
            for name, entry in read_msgpack_entries(path).items():
                if name in self.infos:
                    raise CheckpointError(f"Array '{name}' appears in both '{self.infos[name].path}' and '{path}'. "
                                          "Re-save the checkpoint.")
                self.infos[name] = entry
        if weight_map is not None:
            check_index(index_path or "the index", weight_map, {n: e.path for n, e in self.infos.items()})
        self._files = MappedFiles()

    def saved_format(self) -> str:
        return "flax"

    def array(self, name: str) -> np.ndarray:
        e = self.infos[name]
        if len(e.pieces) == 1:
            offset, nbytes = e.pieces[0]
            return self._files.view(e.path, offset, nbytes, e.dtype, e.shape)
        flat = [self._files.view(e.path, o, n, e.dtype, (n // e.dtype.itemsize,)) for o, n in e.pieces]
        return np.concatenate(flat).reshape(e.shape)

    def release(self, name: str) -> None:
        e = self.infos[name]
        for offset, nbytes in e.pieces:
            self._files.release(e.path, offset, nbytes)

    def names_on_disk(self) -> list[str]:
        order = {p: i for i, p in enumerate(self.paths)}
        return sorted(self.infos, key=lambda n: (order[self.infos[n].path], self.infos[n].start))

    def close(self) -> None:
        self._files.close()


# ---- writing --------------------------------------------------------------------------------------------------
def _ext_header(code: int, n: int) -> bytes:
    fixed = {1: 0xD4, 2: 0xD5, 4: 0xD6, 8: 0xD7, 16: 0xD8}
    if n in fixed:
        return bytes([fixed[n]]) + struct.pack(">b", code)
    if n < 2**8:
        return bytes([0xC7]) + struct.pack(">Bb", n, code)
    if n < 2**16:
        return bytes([0xC8]) + struct.pack(">Hb", n, code)
    return bytes([0xC9]) + struct.pack(">Ib", n, code)


def _bin_header(n: int) -> bytes:
    if n < 2**8:
        return bytes([0xC4, n])
    if n < 2**16:
        return bytes([0xC5]) + struct.pack(">H", n)
    return bytes([0xC6]) + struct.pack(">I", n)


def _map_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x80 | n])
    if n < 2**16:
        return bytes([0xDE]) + struct.pack(">H", n)
    return bytes([0xDF]) + struct.pack(">I", n)


def _write_array(f: BinaryIO, packb, array: np.ndarray) -> None:
    """One ndarray leaf: ext(1, [shape, dtype name, bytes]), its bytes streamed from the array's memory."""
    array = array if array.flags.c_contiguous else array.copy(order="C")  # (ascontiguousarray makes 0-d 1-d)
    head = bytes([0x93]) + packb(list(array.shape)) + packb(array.dtype.name) + _bin_header(array.nbytes)
    f.write(_ext_header(EXT_NDARRAY, len(head) + array.nbytes))
    f.write(head)
    if array.nbytes:
        f.write(memoryview(array.reshape(-1).view(np.uint8)))


def _write_node(f: BinaryIO, packb, node: Mapping[str, Any]) -> None:
    f.write(_map_header(len(node)))
    for key, value in node.items():
        f.write(packb(str(key)))
        if isinstance(value, Mapping):
            _write_node(f, packb, value)
            continue
        array = np.asarray(value)
        if array.nbytes > MAX_CHUNK_BYTES:  # flax's chunked form: flat pieces of at most 2**30 bytes
            flat = array.reshape(-1)
            step = max(1, MAX_CHUNK_BYTES // array.dtype.itemsize)
            pieces = [flat[i:i + step] for i in range(0, flat.size, step)]
            f.write(_map_header(3) + packb(CHUNK_KEY) + packb(True) + packb("shape"))
            f.write(_map_header(array.ndim))
            for i, d in enumerate(array.shape):
                f.write(packb(str(i)) + packb(int(d)))
            f.write(packb("chunks") + _map_header(len(pieces)))
            for i, piece in enumerate(pieces):
                f.write(packb(str(i)))
                _write_array(f, packb, piece)
        else:
            _write_array(f, packb, array)


def nest(flat: Iterable[tuple[tuple[str, ...], Any]]) -> dict:
    """{("a", "b"): x, ...} -> {"a": {"b": x}}."""
    tree: dict = {}
    for path, value in flat:
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree


def write_msgpack(path: str | os.PathLike, flat: Iterable[tuple[tuple[str, ...], Any]]) -> None:
    """Write arrays, given as (path tuple, array) in order, as one flax msgpack file (a nested map; flax's
    `from_bytes` / `msgpack_restore` read it back)."""
    import msgpack

    packb = msgpack.Packer(use_bin_type=True).pack
    with open(path, "wb") as f:
        _write_node(f, packb, nest(flat))
