"""THE place tensors are read from disk.

Safetensors: the header is parsed here (it is 8 bytes of length + JSON), so we know every tensor's name, dtype,
shape and byte range without reading data, and can check a truncated file before loading. Tensor data is then
taken from safetensors' private (copy-on-write) mapping of the file: no copy when the dtype already fits, one
conversion when it does not. Pickle (`.bin`): only `torch.load(weights_only=True)`; anything that would run
code is refused.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from safetensors import safe_open

from ..errors import CorruptCheckpointError, UnsafeCheckpointError

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
}
_MAX_HEADER = 100 * 2**20


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    path: str
    start: int  # absolute byte offset in the file
    nbytes: int


def read_safetensors_header(path: str) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Tensor infos and the `__metadata__` of a safetensors file; checks the file is long enough for every tensor."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CorruptCheckpointError(f"'{path}' is {size} bytes, too short to be a safetensors file (truncated?).")
        n = int.from_bytes(head, "little")
        if n > _MAX_HEADER or 8 + n > size:
            raise CorruptCheckpointError(
                f"'{path}' has a header length of {n} bytes but the file is {size} bytes: it is truncated or not a "
                "safetensors file. Re-download or re-save it."
            )
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CorruptCheckpointError(f"'{path}' has an unreadable safetensors header ({e}).") from e
    if not isinstance(header, dict):
        raise CorruptCheckpointError(f"'{path}' has a safetensors header that is not a JSON object.")
    metadata = header.pop("__metadata__", None) or {}
    infos = {}
    for name, entry in header.items():
        try:
            begin, end = entry["data_offsets"]
            dtype = SAFETENSORS_DTYPES[entry["dtype"]]
            shape = tuple(int(d) for d in entry["shape"])
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptCheckpointError(f"'{path}': the header entry of tensor '{name}' is malformed ({e!r}).") from e
        if 8 + n + end > size:
            raise CorruptCheckpointError(
                f"'{path}' is truncated: tensor '{name}' needs bytes up to {8 + n + end} but the file has {size}. "
                "Re-download or re-save the checkpoint."
            )
        numel = 1
        for d in shape:
            numel *= d
        if end - begin != numel * dtype.itemsize:
            raise CorruptCheckpointError(
                f"'{path}': tensor '{name}' of shape {list(shape)} and dtype {entry['dtype']} should take "
                f"{numel * dtype.itemsize} bytes but its header gives {end - begin}."
            )
        infos[name] = TensorInfo(name, dtype, shape, path, 8 + n + begin, end - begin)
    return infos, metadata


def read_tensor(info: TensorInfo, handle=None) -> torch.Tensor:
    """One tensor of a safetensors file, on CPU. `handle` is an open `safe_open` of its file (opened if None).

    safetensors maps the file privately (copy-on-write): the tensor shares pages with the page cache, costs no
    copy, and writing to it never changes the file. Our writer replaces files by rename, never in place, so a
    mapped checkpoint stays valid while a new one is saved over it.
    """
    if handle is None:
        with safe_open(info.path, framework="pt") as handle:
            return handle.get_tensor(info.name)
    return handle.get_tensor(info.name)


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

    def __init__(self, paths: list[str], fmt: str) -> None:
        self.paths = paths
        self.format = fmt
        self.infos: dict[str, TensorInfo] = {}
        self.metadata: dict[str, dict[str, str]] = {}
        self._pickles: dict[str, dict[str, torch.Tensor]] = {}
        for path in paths:
            if fmt == "safetensors":
                infos, meta = read_safetensors_header(path)
                self.metadata[path] = meta
            else:
                state = load_pickle(path)
                self._pickles[path] = state
                infos = {k: TensorInfo(k, v.dtype, tuple(v.shape), path, 0, v.nbytes) for k, v in state.items()}
            for name, info in infos.items():
                if name in self.infos:
                    raise CorruptCheckpointError(
                        f"Tensor '{name}' appears in both '{self.infos[name].path}' and '{path}'. Re-save the checkpoint."
                    )
                self.infos[name] = info

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
                with safe_open(path, framework="pt") as handle:
                    for info in mine:
                        want = dtypes.get(info.name, info.dtype)
                        if want != info.dtype and info.nbytes:
                            yield info.name, read_converted(info, want, fd, scratch)
                        else:
                            yield info.name, read_tensor(info, handle)
            finally:
                os.close(fd)


def load_pickle(path: str) -> dict[str, torch.Tensor]:
    """Load a `.bin` state dict with `weights_only=True`; a pickle that would run code or build objects is refused."""
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e) and "zip" not in str(e):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"Refused to load '{path}': it holds Python objects or code that safe loading (weights_only=True) does "
            f"not run ({str(e).splitlines()[0]}). If you trust its source, convert it to safetensors in a separate, "
            "sandboxed process."
        ) from e
    except (EOFError, RuntimeError, OSError) as e:
        raise CorruptCheckpointError(f"'{path}' is not a readable PyTorch checkpoint ({e}). Re-download or re-save it.") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CorruptCheckpointError(f"'{path}' does not hold a state dict (a mapping of names to tensors).")
    return state
