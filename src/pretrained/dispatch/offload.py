"""Where offloaded weights live between forwards.

Disk: a weight is a view of a private (copy-on-write) memory map of a safetensors file — the checkpoint's own
file when the tensor is stored there in the dtype the model wants (no copy at all), otherwise a file written
once into `offload_folder`. Pages come in when a block runs and are handed back to the kernel after
(`madvise`), so resident memory stays near the in-memory part of the model while the page cache keeps
re-reads cheap.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field

import torch

from ..checkpoint.reader import TensorInfo, read_safetensors_header
from ..checkpoint.writer import write_safetensors
from ..errors import DeviceMapError

_PAGE = mmap.PAGESIZE


@dataclass
class MappedRange:
    """Page-aligned byte range of one mapped file that backs some tensors."""

    mm: mmap.mmap
    start: int
    length: int


@dataclass
class DiskStore:
    """Memory maps of the files that back disk-offloaded weights, and the ranges each weight occupies."""

    offload_folder: str | None = None
    maps: dict[str, mmap.mmap] = field(default_factory=dict)
    ranges: dict[int, MappedRange] = field(default_factory=dict)  # data_ptr -> its pages (a Parameter
    #   wrapping a view shares the view's data pointer, not its id)
    written: list[str] = field(default_factory=list)

    def _map(self, path: str) -> mmap.mmap:
        if path not in self.maps:
            with open(path, "rb") as f:
                self.maps[path] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        return self.maps[path]

    def view(self, info: TensorInfo) -> torch.Tensor:
        """The tensor `info` describes, as a view of its file's pages (no read, no copy)."""
        mm = self._map(info.path)
        numel = info.nbytes // info.dtype.itemsize
        if numel == 0 or info.start % info.dtype.itemsize:
            raise DeviceMapError(f"Tensor '{info.name}' in '{info.path}' is not aligned for mapping.")
        t = torch.frombuffer(mm, dtype=info.dtype, count=numel, offset=info.start).view(info.shape)
        first = info.start - info.start % _PAGE
        self.ranges[t.data_ptr()] = MappedRange(mm, first, info.start + info.nbytes - first)
        return t

    def put(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """Write `tensor` once into `offload_folder` and return a mapped view of it."""
        if not self.offload_folder:
            raise DeviceMapError(
                f"'{name}' is planned on 'disk' but cannot be mapped from the checkpoint (it needs a dtype change, "
                "or the checkpoint is not safetensors). Pass offload_folder=... to give these weights a place on "
                "disk, or raise max_memory so they fit in memory."
            )
        os.makedirs(self.offload_folder, exist_ok=True)
        path = os.path.join(self.offload_folder, f"{name}.safetensors")
        write_safetensors(path, {name: tensor.contiguous()}, {"format": "pt"})
        self.written.append(path)
        infos, _ = read_safetensors_header(path)
        return self.view(infos[name])

    def pages(self, tensors: list[torch.Tensor]) -> list[MappedRange]:
        return [self.ranges[t.data_ptr()] for t in tensors if t.data_ptr() in self.ranges]

    def close(self) -> None:
        self.maps.clear()
        self.ranges.clear()


def advise(ranges: list[MappedRange], advice: int) -> None:
    for r in ranges:
        r.mm.madvise(advice, r.start, min(r.length, len(r.mm) - r.start))
