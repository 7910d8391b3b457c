"""Each rank reads only its slice of a split tensor, straight from the safetensors file.

`SlicedReader` wraps a checkpoint reader: its `infos` give the split tensors their local shapes, so `load_into`
checks and assigns local tensors exactly as it does whole ones; its `iter_tensors` hands the whole tensors over to
the wrapped reader and reads the slices itself:
- a slice along dim 0 (colwise weights and biases, vocabulary rows) is one contiguous byte range: in the file's
  dtype it is a view of the mapped file (no copy; only its pages are ever touched), otherwise one positioned read
  of its bytes into a scratch buffer, converted from there (`read_converted`);
- a slice along dim 1 (rowwise weights) is one byte segment per row: positioned reads put those segments straight
  into memory of its own (the other ranks' bytes between them pass through one small scratch row), then converted.
Other readers (pickle checkpoints, in-memory state dicts, TF / Flax files) have no byte layout to read from: the
slice is cut from the whole tensor they give and copied.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator, Mapping

import torch

from ..checkpoint.reader import TensorInfo, open_safetensors, read_converted, read_tensor
from ..errors import CorruptCheckpointError

Slice = tuple[int, int, int]  # (dim, start, stop)


def local_info(info: TensorInfo, cut: Slice) -> TensorInfo:
    dim, start, stop = cut
    shape = list(info.shape)
    shape[dim] = stop - start
    return dataclasses.replace(info, shape=tuple(shape), nbytes=math.prod(shape) * info.dtype.itemsize)


def _pread_into(fd: int, view: memoryview, offset: int, info: TensorInfo) -> None:
    done = 0
    while done < len(view):  # preadv may return less than asked
        got = os.preadv(fd, [view[done:]], offset + done)
        if got <= 0:
            raise CorruptCheckpointError(f"'{info.path}' ended while reading tensor '{info.name}' (truncated?).")
        done += got


def read_rows(info: TensorInfo, start: int, stop: int, dtype: torch.dtype, fd: int, handle, scratch: list,
              mapped: bool) -> torch.Tensor:
    """Rows [start, stop) (dim 0) of a safetensors tensor, in `dtype`."""
    row = math.prod(info.shape[1:]) * info.dtype.itemsize
    part = local_info(info, (0, start, stop))
    if dtype == info.dtype and mapped and handle is not None:
        return read_tensor(info, handle)[start:stop]  # a view of the mapped file: only these rows' pages are read
    part = dataclasses.replace(part, start=info.start + start * row)
    if dtype == info.dtype:
        scratch = []  # a buffer of its own: it becomes the tensor
    return read_converted(part, dtype, fd, scratch)


_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024


def read_columns(info: TensorInfo, start: int, stop: int, dtype: torch.dtype, fd: int) -> torch.Tensor:
    """Columns [start, stop) (dim 1) of a 2-D safetensors tensor, in `dtype`.

    Each row's segment of the slice goes straight into the result; the bytes between two segments (the other ranks'
    columns) go into one small scratch buffer, reused: one `preadv` covers up to IOV_MAX / 2 rows (one positioned
    read per row would cost a system call each, ~80,000 for a 1B Llama). Memory never holds more than the slice."""
    rows, cols = info.shape[0], info.shape[1]
    size = info.dtype.itemsize
    seg, gap = (stop - start) * size, (cols - (stop - start)) * size
    out = torch.empty((rows, stop - start), dtype=info.dtype)
    view = memoryview(out.view(torch.uint8).numpy()).cast("B")
    junk = memoryview(bytearray(max(gap, 1)))[:gap]
    base = info.start + start * size  # the first row's segment
    step = max(1, (_IOV_MAX + 1) // 2)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        iov = []
        for r in range(r0, r1):
            iov.append(view[r * seg:(r + 1) * seg])
            if r + 1 < r1 and gap:
                iov.append(junk)
        want = (r1 - r0) * seg + (r1 - r0 - 1) * gap
        got = os.preadv(fd, iov, base + r0 * cols * size) if want else 0
        if got != want:  # a short read (or a truncated file): row by row, which reports truncation
            for r in range(r0, r1):
                _pread_into(fd, view[r * seg:(r + 1) * seg], base + r * cols * size, info)
    return out if dtype == info.dtype else out.to(dtype)


class SlicedReader:
    """A checkpoint reader whose tensors named in `cuts` (checkpoint name -> (dim, start, stop)) are read as
    slices. `mapped=False` (disable_mmap): slices in the file's dtype are read into memory of their own too."""

    def __init__(self, inner, cuts: Mapping[str, Slice], mapped: bool = True) -> None:
        self._inner, self._cuts, self._mapped = inner, dict(cuts), mapped
        self.paths, self.format, self.metadata = inner.paths, inner.format, inner.metadata
        self.infos = {n: local_info(i, self._cuts[n]) if n in self._cuts else i for n, i in inner.infos.items()}
        self._files = str(inner.format).startswith("safetensors")

    def first_floating_dtype(self) -> torch.dtype | None:
        return self._inner.first_floating_dtype()

    def iter_tensors(self, names: set[str] | None = None,
                     dtypes: dict[str, torch.dtype] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        dtypes = dtypes or {}
        names = set(self._inner.infos) if names is None else set(names)
        whole = names - set(self._cuts)
        if not self._files:  # pickle, a state dict, a TF/Flax file: the whole tensor as that reader gives it, cut
            for name, t in self._inner.iter_tensors(names, {n: d for n, d in dtypes.items() if n in whole}):
                if name in self._cuts:  # (one pass: a pickle reader lets a file go once it is read)
                    dim, start, stop = self._cuts[name]
                    t = t.narrow(dim, start, stop - start)
                    t = t.to(dtypes.get(name, t.dtype), copy=True).contiguous()
                yield name, t
            return
        if whole:
            yield from self._inner.iter_tensors(whole, {n: d for n, d in dtypes.items() if n in whole})
        split = [self._inner.infos[n] for n in names if n in self._cuts]
        scratch: list[torch.Tensor] = []
        for path in self.paths:
            mine = sorted((i for i in split if i.path == path), key=lambda i: i.start)
            if not mine:
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                with open_safetensors(path) as handle:
                    for info in mine:
                        dim, start, stop = self._cuts[info.name]
                        want = dtypes.get(info.name, info.dtype)
                        if dim == 0:
                            yield info.name, read_rows(info, start, stop, want, fd, handle, scratch, self._mapped)
                        elif dim == 1 and len(info.shape) == 2:
                            yield info.name, read_columns(info, start, stop, want, fd)
                        else:
                            raise ValueError(f"'{info.name}' in '{path}': cannot split dim {dim} of a tensor of "
                                             f"shape {list(info.shape)}.")
            finally:
                os.close(fd)
