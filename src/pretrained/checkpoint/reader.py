"""THE place tensors are read from disk.

Safetensors: the header is parsed and checked by the framework-neutral `header.py` (with safetensors' own rules), so
we know every tensor's name, dtype, shape and byte range without reading data, and a damaged file is reported, by
name, before loading; anything safetensors still raises while reading is reported the same way. Tensor data is then
taken from safetensors' private (copy-on-write) mapping of the file: no copy when the dtype already fits, one
conversion when it does not. Pickle (`.bin`): only `torch.load(weights_only=True)`; anything that would run
code is refused.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from safetensors import safe_open

from ..errors import CheckpointError, CorruptCheckpointError, PretrainedError, UnsafeCheckpointError
from .files import check_index
from .header import read_header

# safetensors dtype name -> torch dtype (those this torch has); the byte sizes come from header.DTYPE_BITS
SAFETENSORS_DTYPES = {
    name: getattr(torch, attr) for name, attr in {
        "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
        "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool", "F8_E4M3": "float8_e4m3fn",
        "F8_E5M2": "float8_e5m2", "F8_E8M0": "float8_e8m0fnu", "F8_E4M3FNUZ": "float8_e4m3fnuz",
        "F8_E5M2FNUZ": "float8_e5m2fnuz", "U16": "uint16", "U32": "uint32", "U64": "uint64", "C64": "complex64",
    }.items() if hasattr(torch, attr)
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    path: str
    start: int  # absolute byte offset in the file
    nbytes: int


def read_safetensors_header(path: str) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Tensor infos (torch dtypes, on-disk order) and the `__metadata__` of a safetensors file, after checking the
    file the way safetensors itself does (see `header.py`); every defect is a CorruptCheckpointError naming it."""
    header = read_header(path)
    infos = {}
    for name, entry in header.tensors.items():
        dtype = SAFETENSORS_DTYPES.get(entry.dtype)
        if dtype is None:
            raise CheckpointError(
                f"'{path}': tensor '{name}' has the dtype {entry.dtype}, which has no torch {torch.__version__} "
                "equivalent that pretrained reads. Convert the checkpoint to a supported dtype."
            )
        infos[name] = TensorInfo(name, dtype, entry.shape, header.path, entry.start, entry.nbytes)
    return infos, header.metadata


def read_tensor(info: TensorInfo, handle=None) -> torch.Tensor:
    """One tensor of a safetensors file, on CPU. `handle` is an open `safe_open` of its file (opened if None).

    safetensors maps the file privately (copy-on-write): the tensor shares pages with the page cache, costs no
    copy, and writing to it never changes the file. Our writer replaces files by rename, never in place, so a
    mapped checkpoint stays valid while a new one is saved over it.
    """
    if handle is None:
        with open_safetensors(info.path, info.name) as handle:
            return read_tensor(info, handle)
    try:
        return handle.get_tensor(info.name)
    except Exception as e:  # the file changed since its header was checked, or safetensors disagrees with us
        raise CorruptCheckpointError(
            f"'{info.path}': tensor '{info.name}' cannot be read ({type(e).__name__}: {e}). Re-download or re-save "
            "the checkpoint."
        ) from e


def open_safetensors(path: str, tensor: str | None = None):
    """`safe_open(path, framework="pt")`, with whatever it raises reported as a CorruptCheckpointError naming the file
    (and `tensor`, the one about to be read)."""
    try:
        return safe_open(path, framework="pt")
    except Exception as e:
        reading = f" to read tensor '{tensor}'" if tensor else ""
        raise CorruptCheckpointError(
            f"'{path}' cannot be opened as a safetensors file{reading} ({type(e).__name__}: {e}). Re-download or "
            "re-save it."
        ) from e


def read_converted(info: TensorInfo, dtype: torch.dtype, fd: int, scratch: list[torch.Tensor]) -> torch.Tensor:
    """Read one tensor into a reused scratch buffer and return it converted to `dtype` (a new tensor).

    Used when the dtype changes: the source bytes are only needed for the conversion, so they go through one
    buffer (as large as the largest tensor) instead of staying mapped; peak memory is the converted model plus
    that buffer.
    """
    if not scratch or scratch[0].numel() < info.nbytes:
        scratch[:] = [torch.empty(max(info.nbytes, 1), dtype=torch.uint8)]
    raw = scratch[0][: info.nbytes]
    view = memoryview(raw.numpy())
    done = 0
    while done < info.nbytes:  # preadv may return less than asked (2 GiB per call on Linux)
        got = os.preadv(fd, [view[done:]], info.start + done)
        if got <= 0:
            raise CorruptCheckpointError(f"'{info.path}' ended while reading tensor '{info.name}' (truncated?).")
        done += got
    return raw.view(info.dtype).reshape(info.shape).to(dtype)


class CheckpointReader:
    """Read-only view over the weight files of one checkpoint.

    `infos` maps every tensor name to where it is; `iter_tensors()` yields `(name, tensor)` file by file, in
    on-disk order, so memory holds one tensor at a time beyond what the caller keeps.
    """

    def __init__(self, paths: list[str], fmt: str, weight_map: dict[str, str] | None = None,
                 index_path: str | None = None) -> None:
        """`weight_map` (tensor name -> local shard path) and `index_path`: the index of a sharded checkpoint,
        checked against what the shards hold (any disagreement raises a CorruptCheckpointError naming both)."""
        self.paths = paths
        self.format = fmt
        self.infos: dict[str, TensorInfo] = {}
        self.metadata: dict[str, dict[str, str]] = {}
        self._pickles: dict[str, dict[str, torch.Tensor]] = {}
        for path in paths:
            try:
                if fmt == "safetensors":
                    infos, meta = read_safetensors_header(path)
                    self.metadata[path] = meta
                else:
                    state = load_pickle(path)
                    self._pickles[path] = state
                    infos = {k: TensorInfo(k, v.dtype, tuple(v.shape), path, 0, v.nbytes) for k, v in state.items()}
            except CheckpointError as e:
                if index_path is None or index_path in str(e):
                    raise
                raise type(e)(f"{e} (It is read as a shard because the index '{index_path}' names it.)") from e
            for name, info in infos.items():
                if name in self.infos:
                    raise CorruptCheckpointError(
                        f"Tensor '{name}' appears in both '{self.infos[name].path}' and '{path}'. Re-save the checkpoint."
                    )
                self.infos[name] = info
        if weight_map is not None:
            check_index(index_path or "the index", weight_map, {n: i.path for n, i in self.infos.items()})

    def first_floating_dtype(self) -> torch.dtype | None:
        for info in self.infos.values():
            if info.dtype.is_floating_point:
                return info.dtype
        return None

    def read(self, name: str) -> torch.Tensor:
        info = self.infos[name]
        if self.format == "pickle":
            return self._pickles[info.path][name]
        return read_tensor(info)

    def iter_tensors(self, names: set[str] | None = None,
                     dtypes: dict[str, torch.dtype] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield `(name, tensor)` file by file in on-disk order; a tensor named in `dtypes` with another dtype
        comes back converted (read through a scratch buffer, see `read_converted`)."""
        dtypes = dtypes or {}
        scratch: list[torch.Tensor] = []
        for path in self.paths:
            mine = sorted((i for i in self.infos.values() if i.path == path and (names is None or i.name in names)),
                          key=lambda i: i.start)
            if self.format == "pickle":
                for info in mine:
                    yield info.name, self._pickles[path][info.name]
                self._pickles.pop(path, None)  # let the shard's memory go once consumed
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                with open_safetensors(path) as handle:
                    for info in mine:
                        want = dtypes.get(info.name, info.dtype)
                        if want != info.dtype and info.nbytes:
                            yield info.name, read_converted(info, want, fd, scratch)
                        else:
                            yield info.name, read_tensor(info, handle)
            finally:
                os.close(fd)


def load_pickle(path: str) -> dict[str, torch.Tensor]:
    """Load a `.bin` state dict with `weights_only=True`. A pickle that would import a global (run code, build
    objects) is refused with an UnsafeCheckpointError; anything else that is not a readable state dict (garbage,
    a text file, a truncated file) is a CorruptCheckpointError."""
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e) and "zip" not in str(e):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as e:
        inner = e.__context__ if isinstance(e.__context__, pickle.UnpicklingError) else e
        reason = str(inner).strip().splitlines()[0] if str(inner).strip() else type(inner).__name__
        if _REFUSED_GLOBAL.search(str(inner)):
            raise UnsafeCheckpointError(
                f"Refused to load '{path}': it holds Python objects or code that safe loading (weights_only=True) "
                f"does not run ({reason}). If you trust its source, convert it to safetensors in a separate, "
                "sandboxed process."
            ) from e
        raise CorruptCheckpointError(
            f"'{path}' is not a readable PyTorch checkpoint (its pickle stream is damaged or is not a state dict: "
            f"{reason}). Re-download or re-save it."
        ) from e
    except PretrainedError:
        raise
    except Exception as e:  # EOFError, KeyError (a text file), RuntimeError (a damaged zip), OSError, ...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CorruptCheckpointError(
            f"'{path}' is not a readable PyTorch checkpoint ({type(e).__name__}{': ' + reason if reason else ''}). "
            "Re-download or re-save it."
        ) from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise CorruptCheckpointError(
            f"'{path}' does not hold a state dict (a mapping of names to tensors). Re-download or re-save it.")
    return state


# how torch's weights-only unpickler words a refused import (the only way a pickle can reach code or objects)
_REFUSED_GLOBAL = re.compile(r"\bGLOBAL\b|[Uu]nsupported global|allowed global|safe_globals")
