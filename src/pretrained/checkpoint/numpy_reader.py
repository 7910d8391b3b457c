"""Safetensors tensors as numpy arrays mapped from the file: no torch, no copy.

The header is parsed and checked by `header.py` (safetensors' own rules, every defect a CorruptCheckpointError
naming the file and tensor); the data is mapped read-only (`mmap`) and each tensor is a numpy view of its bytes, so
reading costs nothing until the bytes are used, and each framework copies a view straight into its own memory,
in its own layout (the Flax loader hands JAX transposed views: one pass, no intermediate copy). bfloat16 and the
float8 types come from `ml_dtypes`.

    reader = NumpyCheckpointReader(["model.safetensors"])
    reader.infos["lm_head.weight"].shape      # from the header, nothing read
    w = reader.array("lm_head.weight")         # np.ndarray view of the mapped file (read-only)
    reader.release("lm_head.weight")           # give its pages back (the view stays valid: pages fault in again)

The mapping is read-only and shared: the arrays cannot be written, and the file must not be changed in place while
they live (truncating it kills the process with SIGBUS at the next access). Our writer replaces files by rename,
never in place, so a checkpoint saved over the one being read is safe.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass

import numpy as np

from ..errors import CheckpointError
from .files import check_index
from .header import read_header

_PAGE = mmap.PAGESIZE


def _numpy_dtypes() -> dict[str, np.dtype]:
    """safetensors dtype name -> numpy dtype (those numpy and ml_dtypes have)."""
    found = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
             "I16": np.int16, "I8": np.int8, "U8": np.uint8, "U16": np.uint16, "U32": np.uint32, "U64": np.uint64,
             "BOOL": np.bool_, "C64": np.complex64}
    try:
        import ml_dtypes
    except ImportError:  # then bfloat16 / float8 files raise a CheckpointError naming ml_dtypes
        ml_dtypes = None
    if ml_dtypes is not None:
        for name, attr in (("BF16", "bfloat16"), ("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"),
                           ("F8_E8M0", "float8_e8m0fnu"), ("F8_E4M3FNUZ", "float8_e4m3fnuz"),
                           ("F8_E5M2FNUZ", "float8_e5m2fnuz")):
            if hasattr(ml_dtypes, attr):
                found[name] = getattr(ml_dtypes, attr)
    return {name: np.dtype(t) for name, t in found.items()}


NUMPY_DTYPES: dict[str, np.dtype] = _numpy_dtypes()
SAFETENSORS_NAMES: dict[np.dtype, str] = {dtype: name for name, dtype in NUMPY_DTYPES.items()}


@dataclass(frozen=True)
class ArrayInfo:
    """One tensor of a safetensors file: where its bytes are and how to view them."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    path: str
    start: int  # absolute byte offset in the file
    nbytes: int


class MappedFiles:
    """Read-only mappings of files, opened on first use and shared by every array taken from them."""

    def __init__(self) -> None:
        self._maps: dict[str, mmap.mmap | None] = {}

    def view(self, path: str, start: int, nbytes: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        if nbytes == 0:
            return np.zeros(shape, dtype)
        mm = self._maps.get(path)
        if mm is None:
            with open(path, "rb") as f:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self._maps[path] = mm
        return np.frombuffer(mm, dtype=dtype, count=nbytes // dtype.itemsize, offset=start).reshape(shape)

    def release(self, path: str, start: int, nbytes: int) -> None:
        """Drop the pages of [start, start + nbytes) from this process (they are read again if used)."""
        mm = self._maps.get(path)
        if mm is None or nbytes <= 0 or not hasattr(mm, "madvise"):
            return
        first = start - start % _PAGE
        try:
            mm.madvise(mmap.MADV_DONTNEED, first, start + nbytes - first)
        except (OSError, ValueError):  # a platform without it: the kernel reclaims the pages on its own
            pass

    def close(self) -> None:
        """Unmap what no array still uses (a mapping with live views stays until they are gone)."""
        for path, mm in list(self._maps.items()):
            try:
                mm.close()
            except BufferError:  # views exported: the mapping lives as long as they do
                pass
            self._maps.pop(path, None)


def read_array_infos(path: str) -> tuple[dict[str, ArrayInfo], dict[str, str]]:
    """Tensor infos (numpy dtypes, on-disk order) and the `__metadata__` of a safetensors file, after checking the
    header; a dtype numpy cannot hold raises a CheckpointError naming the tensor."""
    header = read_header(path)
    infos = {}
    for name, entry in header.tensors.items():
        dtype = NUMPY_DTYPES.get(entry.dtype)
        if dtype is None:
            hint = " Install ml_dtypes (pip install ml_dtypes)." if entry.dtype.startswith(("BF", "F8")) else ""
            raise CheckpointError(
                f"'{path}': tensor '{name}' has the dtype {entry.dtype}, which numpy cannot hold here.{hint} Or "
                "convert the checkpoint to a supported dtype.")
        infos[name] = ArrayInfo(name, dtype, entry.shape, header.path, entry.start, entry.nbytes)
    return infos, header.metadata


class NumpyCheckpointReader:
    """The tensors of one safetensors checkpoint (one file or shards) as numpy arrays mapped from the files.

    `infos` maps every tensor name to where it is (checked: no name in two shards; with an index, the index and the
    shards agree); `metadata` holds each file's `__metadata__`.
    """

    def __init__(self, paths: list[str], weight_map: dict[str, str] | None = None,
                 index_path: str | None = None) -> None:
        self.paths = list(paths)
        self.format = "safetensors"
        self.infos: dict[str, ArrayInfo] = {}
        self.metadata: dict[str, dict[str, str]] = {}
        for path in self.paths:
            infos, meta = read_array_infos(path)
            self.metadata[path] = meta
            for name, info in infos.items():
                if name in self.infos:
                    raise CheckpointError(
                        f"Tensor '{name}' appears in both '{self.infos[name].path}' and '{path}'. Re-save the "
                        "checkpoint.")
                self.infos[name] = info
        if weight_map is not None:
            check_index(index_path or "the index", weight_map, {n: i.path for n, i in self.infos.items()})
        self._files = MappedFiles()

    def saved_format(self) -> str | None:
        """The `format` the writer recorded in the metadata ("pt", "flax", "tf"), if any."""
        for meta in self.metadata.values():
            if meta.get("format"):
                return meta["format"]
        return None

    def array(self, name: str) -> np.ndarray:
        """A read-only numpy view of tensor `name`, mapped from its file."""
        info = self.infos[name]
        return self._files.view(info.path, info.start, info.nbytes, info.dtype, info.shape)

    def release(self, name: str) -> None:
        info = self.infos[name]
        self._files.release(info.path, info.start, info.nbytes)

    def names_on_disk(self) -> list[str]:
        """Every tensor name, file by file in on-disk order (the order that reads the files front to back)."""
        order = {p: i for i, p in enumerate(self.paths)}
        return sorted(self.infos, key=lambda n: (order[self.infos[n].path], self.infos[n].start))

    def close(self) -> None:
        self._files.close()
