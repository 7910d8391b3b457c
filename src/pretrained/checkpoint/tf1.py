"""TensorFlow 1 checkpoints (`model.ckpt.index` + `model.ckpt.data-0000i-of-0000n`) read without TensorFlow.

The format (TensorFlow's "tensor bundle", facts from its tensor_bundle.proto and its LevelDB-derived table format):

- `<prefix>.index` is an immutable sorted table (an SSTable): data blocks, a metaindex block, an index block, and a
  48-byte footer at the end (two block handles, each two base-128 varints, zero padding to 40 bytes, then the magic
  number 0xdb4775248b80fb57, little-endian). A block handle is (offset, size); each block is followed by a 5-byte
  trailer (compression type: 0 none, 1 snappy; a masked CRC32C). A block holds prefix-compressed entries (varints
  shared, non_shared, value_length; the key's new bytes; the value) and ends with its restart offsets (uint32 each,
  then their count). The index block's values are the handles of the data blocks.
- The table maps tensor names to `BundleEntryProto` messages (dtype = 1, shape = 2, shard_id = 3, offset = 4,
  size = 5, crc32c = 6, slices = 7); the empty key holds the `BundleHeaderProto` (num_shards = 1, endianness = 2).
- Tensor bytes are raw, in the header's byte order, at `offset` in `<prefix>.data-{shard_id:05d}-of-{num:05d}`.

Arrays are numpy views of the mapped data files (nothing read until used). The CRC32C of each tensor is not checked
(no CRC32C in the standard library; a pure-Python one would cost minutes on a BERT-large checkpoint): sizes and
offsets are, so a truncated data file or a damaged index is reported by name.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import numpy as np

from ..errors import CheckpointError, CorruptCheckpointError
from .numpy_reader import MappedFiles

MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
_FIX = "Re-download the checkpoint (both the .index and every .data-* file)."
# TensorFlow DataType enum -> numpy (bfloat16 through ml_dtypes)
DTYPES = {1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 9: "int64", 10: "bool",
          14: "bfloat16", 17: "uint16", 19: "float16", 22: "uint32", 23: "uint64"}
DT_STRING = 7


@dataclass(frozen=True)
class TF1Entry:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    path: str  # the data file
    start: int
    nbytes: int


def _varint(buf: bytes, pos: int, where: str) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise CorruptCheckpointError(f"{where}: a varint runs past its end (the file is damaged). {_FIX}")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes, where: str) -> list[tuple[int, int, int | bytes]]:
    """A protobuf message as (field number, wire type, value): varints as ints, fixed32/64 as ints, length-delimited
    as bytes."""
    out, pos = [], 0
    while pos < len(buf):
        key, pos = _varint(buf, pos, where)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, where)
        elif wire == 1:
            if pos + 8 > len(buf):
                raise CorruptCheckpointError(f"{where}: a message ends inside a field. {_FIX}")
            value, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos, where)
            if pos + n > len(buf):
                raise CorruptCheckpointError(f"{where}: a message ends inside a field. {_FIX}")
            value, pos = bytes(buf[pos:pos + n]), pos + n
        elif wire == 5:
            if pos + 4 > len(buf):
                raise CorruptCheckpointError(f"{where}: a message ends inside a field. {_FIX}")
            value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        else:
            raise CorruptCheckpointError(f"{where}: a message has the unknown wire type {wire}. {_FIX}")
        out.append((number, wire, value))
    return out


def snappy_decompress(data: bytes, where: str) -> bytes:
    """Raw snappy (the table's compression type 1): a varint length, then literals and back-references."""
    n, pos = _varint(data, 0, where)
    out = bytearray()
    while pos < len(data):
        tag = data[pos]
        pos += 1
        kind = tag & 3
        if kind == 0:
            length = tag >> 2
            if length >= 60:
                extra = length - 59
                length = int.from_bytes(data[pos:pos + extra], "little")
                pos += extra
            length += 1
            out += data[pos:pos + length]
            pos += length
            continue
        if kind == 1:
            length, offset = ((tag >> 2) & 7) + 4, ((tag >> 5) << 8) | data[pos]
            pos += 1
        elif kind == 2:
            length, offset = (tag >> 2) + 1, int.from_bytes(data[pos:pos + 2], "little")
            pos += 2
        else:
            length, offset = (tag >> 2) + 1, int.from_bytes(data[pos:pos + 4], "little")
            pos += 4
        if offset == 0 or offset > len(out):
            raise CorruptCheckpointError(f"{where}: a compressed block is damaged. {_FIX}")
        for _ in range(length):  # may overlap itself
            out.append(out[-offset])
    if len(out) != n:
        raise CorruptCheckpointError(f"{where}: a compressed block is damaged. {_FIX}")
    return bytes(out)


def _block(buf: bytes, handle: tuple[int, int], where: str) -> bytes:
    offset, size = handle
    if offset + size + 5 > len(buf):
        raise CorruptCheckpointError(f"{where}: a block lies past the end of the file (truncated?). {_FIX}")
    data, kind = buf[offset:offset + size], buf[offset + size]
    if kind == 1:
        return snappy_decompress(bytes(data), where)
    if kind != 0:
        raise CorruptCheckpointError(f"{where}: a block has the unknown compression type {kind}. {_FIX}")
    return bytes(data)


def _entries(block: bytes, where: str) -> list[tuple[bytes, bytes]]:
    if len(block) < 4:
        raise CorruptCheckpointError(f"{where}: a block is too short. {_FIX}")
    restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    end = len(block) - 4 - 4 * restarts
    if end < 0:
        raise CorruptCheckpointError(f"{where}: a block's restart array is damaged. {_FIX}")
    out, pos, key = [], 0, b""
    while pos < end:
        shared, pos = _varint(block, pos, where)
        fresh, pos = _varint(block, pos, where)
        size, pos = _varint(block, pos, where)
        if shared > len(key) or pos + fresh + size > end:
            raise CorruptCheckpointError(f"{where}: a block entry is damaged. {_FIX}")
        key = key[:shared] + block[pos:pos + fresh]
        pos += fresh
        out.append((key, block[pos:pos + size]))
        pos += size
    return out


def read_table(path: str) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of an SSTable file, in key order."""
    try:
        with open(path, "rb") as f:
            buf = f.read()
    except OSError as e:
        raise CorruptCheckpointError(f"'{path}' cannot be read ({e.strerror or e}). {_FIX}") from e
    where = f"'{path}'"
    if len(buf) < FOOTER_SIZE or struct.unpack_from("<Q", buf, len(buf) - 8)[0] != MAGIC:
        raise CorruptCheckpointError(f"'{path}' is not a TensorFlow checkpoint index (no table footer: truncated, or "
                                     f"another kind of file). {_FIX}")
    footer = buf[len(buf) - FOOTER_SIZE:]
    pos = 0
    handles = []
    for _ in range(4):
        value, pos = _varint(footer, pos, where)
        handles.append(value)
    index_handle = (handles[2], handles[3])
    out = []
    for _, value in _entries(_block(buf, index_handle, where), where):
        offset, p = _varint(value, 0, where)
        size, _ = _varint(value, p, where)
        out += _entries(_block(buf, (offset, size), where), where)
    return out


class TF1CheckpointReader:
    """The tensors of a TF 1 checkpoint by variable name ("bert/encoder/layer_0/attention/self/query/kernel"), as
    numpy views of the mapped data files: `infos`, `array`, `release`, `names_on_disk`, `close`, `paths`."""

    format = "tf1"

    def __init__(self, prefix: str | os.PathLike) -> None:
        prefix = os.fspath(prefix)
        if prefix.endswith(".index"):
            prefix = prefix[: -len(".index")]
        self.prefix = prefix
        index = prefix + ".index"
        if not os.path.isfile(index):
            raise CheckpointError(f"No TensorFlow checkpoint index '{index}'. Give the path of the .index file.")
        header: dict[int, int | bytes] = {}
        raw: list[tuple[str, bytes]] = []
        for key, value in read_table(index):
            if key == b"":
                header = {n: v for n, _, v in _fields(value, f"'{index}' (header)")}
            else:
                raw.append((key.decode("utf-8", "replace"), value))
        num_shards = int(header.get(1, 1))
        if header.get(2, 0) not in (0,):
            raise CheckpointError(f"'{index}' is a big-endian checkpoint, which pretrained does not read. Re-save it "
                                  "on a little-endian machine.")
        self.data_files = [f"{prefix}.data-{i:05d}-of-{num_shards:05d}" for i in range(num_shards)]
        self.paths = [index, *self.data_files]
        sizes = {}
        self.infos: dict[str, TF1Entry] = {}
        self.strings: list[str] = []
        for name, value in raw:
            where = f"'{index}' (tensor '{name}')"
            fields = _fields(value, where)
            get = {n: v for n, _, v in fields}
            if any(n == 7 for n, _, _ in fields):
                raise CheckpointError(f"{where} is a partitioned (sliced) variable, which pretrained does not read. "
                                      "Re-save the checkpoint without partitioned variables.")
            code = int(get.get(1, 0))
            if code == DT_STRING:
                self.strings.append(name)
                continue
            if code not in DTYPES:
                raise CheckpointError(f"{where} has the TensorFlow dtype number {code}, which pretrained does not "
                                      "read. Convert the checkpoint to float32.")
            dtype = _numpy_dtype(DTYPES[code])
            shape = tuple(int({m: x for m, _, x in _fields(dim, where)}.get(1, 0))
                          for n, _, dim in _fields(get.get(2, b""), where) if n == 2)
            shard, offset, nbytes = int(get.get(3, 0)), int(get.get(4, 0)), int(get.get(5, 0))
            if shard >= num_shards:
                raise CorruptCheckpointError(f"{where} lies in shard {shard}, but the header says {num_shards}. {_FIX}")
            expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if nbytes != expected:
                raise CorruptCheckpointError(f"{where} has {nbytes} bytes, but its shape {list(shape)} and dtype "
                                             f"{dtype} need {expected}. {_FIX}")
            path = self.data_files[shard]
            if path not in sizes:
                if not os.path.isfile(path):
                    raise CorruptCheckpointError(f"The data file '{path}' of the checkpoint '{index}' is missing "
                                                 f"(tensor '{name}' is in it). {_FIX}")
                sizes[path] = os.path.getsize(path)
            if offset + nbytes > sizes[path]:
                raise CorruptCheckpointError(f"'{path}': tensor '{name}' ends at byte {offset + nbytes} but the file "
                                             f"has {sizes[path]} bytes (truncated?). {_FIX}")
            self.infos[name] = TF1Entry(name, dtype, shape, path, offset, nbytes)
        self._files = MappedFiles()

    def array(self, name: str) -> np.ndarray:
        e = self.infos[name]
        return self._files.view(e.path, e.start, e.nbytes, e.dtype, e.shape)

    def release(self, name: str) -> None:
        e = self.infos[name]
        self._files.release(e.path, e.start, e.nbytes)

    def names_on_disk(self) -> list[str]:
        order = {p: i for i, p in enumerate(self.data_files)}
        return sorted(self.infos, key=lambda n: (order[self.infos[n].path], self.infos[n].start))

    def close(self) -> None:
        self._files.close()


def _numpy_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)
