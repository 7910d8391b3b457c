"""Where offloaded weights live between forwards.

Disk: a weight is a view of a private (copy-on-write) memory map of a safetensors file — the checkpoint's own
file when the tensor is stored there in the dtype the model wants (no copy at all), otherwise a file written
once into `offload_folder`. Pages come in when a block runs and are handed back to the kernel after
(`madvise`), so resident memory stays near the in-memory part of the model while the page cache keeps
re-reads cheap.

What makes that cheap is the page size. Where the page cache holds a file in 2 MB folios, the kernel maps each
of them with one page-table entry: a 1B Llama block's 92 MB come in with ~46 faults and go out with ~46 entries
cleared. In 4 KB pages it takes ~1,400 faults (the kernel maps 64 KB around each) and ~23,000 entries, which
cost a third of the forward's time on two cores. So the maps ask for
huge pages (MADV_HUGEPAGE: what is read from disk arrives in 2 MB folios), releases never cut a 2 MB page
(that would split its mapping into 512 small ones for good), and `DiskStore.settle` re-reads, once, the disk
blocks that the page cache holds in small folios (measured: 1B bf16 Llama, 14 blocks on disk, forward 0.147 s
with small folios and split mappings, 0.115 s after, 0.104 s with the whole model in memory).
"""

from __future__ import annotations

import ctypes
import mmap
import os
from dataclasses import dataclass, field

import torch

from ..checkpoint.reader import TensorInfo, read_safetensors_header
from ..checkpoint.writer import write_safetensors
from ..errors import DeviceMapError

_PAGE = mmap.PAGESIZE
_HUGE = 2 << 20  # the size one page-middle-directory entry maps with 4 KB base pages (x86-64, arm64)
_MADV_POPULATE_READ = 22  # Linux >= 5.14: map the pages now (reading them if they are not cached)
_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]


@dataclass(frozen=True)
class MappedRange:
    """Page-aligned address range of mapped file pages that back some tensors."""

    address: int
    length: int


def merged(ranges: list[MappedRange]) -> list[MappedRange]:
    """Overlapping or touching ranges joined (a block's tensors usually lie next to each other in a file)."""
    out: list[MappedRange] = []
    for r in sorted(ranges, key=lambda r: r.address):
        if out and r.address <= out[-1].address + out[-1].length:
            end = max(out[-1].address + out[-1].length, r.address + r.length)
            out[-1] = MappedRange(out[-1].address, end - out[-1].address)
        else:
            out.append(r)
    return out


def whole_huge_pages(ranges: list[MappedRange]) -> list[MappedRange]:
    """The 2 MB-aligned parts of `ranges`: what can be released without splitting a huge mapping. The cut edges
    (under 4 MB a range) stay resident; they are usually shared with the neighbouring block anyway."""
    out = []
    for r in ranges:
        first = -(-r.address // _HUGE) * _HUGE
        end = (r.address + r.length) // _HUGE * _HUGE
        if end > first:
            out.append(MappedRange(first, end - first))
    return out


def pmd_mapped_bytes(address: int) -> int | None:
    """Bytes of the mapping that holds `address` which the kernel maps with 2 MB entries (FilePmdMapped in
    /proc/self/smaps); None where that cannot be read."""
    try:
        with open("/proc/self/smaps") as f:
            inside = False
            for line in f:
                if not inside:
                    head = line.split(" ", 1)[0]
                    if "-" in head and ":" not in head:
                        lo, _, hi = head.partition("-")
                        try:
                            inside = int(lo, 16) <= address < int(hi, 16)
                        except ValueError:
                            inside = False
                elif line.startswith("FilePmdMapped:"):
                    return int(line.split()[1]) * 1024
                elif "-" in line.split(" ", 1)[0] and ":" not in line.split(" ", 1)[0]:
                    return None  # the next mapping began: this kernel does not report it
    except (OSError, ValueError):
        return None
    return None


class Pager:
    """The page work of disk blocks, done synchronously by the hooks around each block.

    - `bring_in(next block)`: a read-ahead hint (MADV_WILLNEED) unless its pages are cached already, so the disk
      reads of the next block run while this one computes; the block's pages are then mapped by the compute
      threads' first touches (with 2 MB folios, one fault per 2 MB; mapping them ahead in one call,
      MADV_POPULATE_READ, measured no faster);
    - `hand_back(this block)`: release its whole huge pages (MADV_DONTNEED).
    On the bench (1B bf16 Llama, 1.4 GB on disk) that is ~5 ms of mapping and ~3 ms of releasing per forward of
    ~102 ms. An earlier design did this on a background thread; on two cores that thread only competed with the
    compute threads (offloaded / in-memory forward 1.11-1.12 threaded, 1.08-1.10 synchronous, paired runs), and
    it kept one more block resident.
    """

    @staticmethod
    def _advise(ranges: list[MappedRange], advice: int) -> None:
        for r in ranges:
            _libc.madvise(r.address, r.length, advice)

    def bring_in(self, ranges: list[MappedRange]) -> None:
        if not self.cached(ranges):
            self._advise(ranges, mmap.MADV_WILLNEED)

    @staticmethod
    def cached(ranges: list[MappedRange], samples: int = 8) -> bool:
        """Whether a few pages spread over each range are in the page cache (mincore): then the read-ahead hint,
        which walks the page cache over the whole range (1.9 ms a forward on the bench), is skipped. Where mincore
        cannot tell (it reports only mapped pages of files the caller may not write), this says False and the
        hint is given."""
        flags = (ctypes.c_ubyte * 1)()
        for r in ranges:
            for i in range(samples):
                page = r.address + (r.length - 1) * i // max(samples - 1, 1)
                page -= page % _PAGE
                if _libc.mincore(page, _PAGE, flags) != 0 or not flags[0] & 1:
                    return False
        return True

    def hand_back(self, ranges: list[MappedRange]) -> None:
        """Release `ranges` (already cut to whole huge pages by the caller, see `whole_huge_pages`)."""
        self._advise(ranges, mmap.MADV_DONTNEED)


@dataclass
class DiskStore:
    """Memory maps of the files that back disk-offloaded weights, and the ranges each weight occupies."""

    offload_folder: str | None = None
    maps: dict[str, mmap.mmap] = field(default_factory=dict)
    bases: dict[str, int] = field(default_factory=dict)  # path -> address of its map
    ranges: dict[int, MappedRange] = field(default_factory=dict)  # data_ptr -> its pages (a Parameter
    #   wrapping a view shares the view's data pointer, not its id)
    written: list[str] = field(default_factory=list)
    pager: Pager = field(default_factory=Pager)

    def _map(self, path: str) -> mmap.mmap:
        if path not in self.maps:
            with open(path, "rb") as f:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
            if hasattr(mmap, "MADV_HUGEPAGE"):
                try:
                    mm.madvise(mmap.MADV_HUGEPAGE)
                except OSError:
                    pass
            self.maps[path] = mm
            self.bases[path] = ctypes.addressof(ctypes.c_char.from_buffer(mm))
        return self.maps[path]

    def view(self, info: TensorInfo) -> torch.Tensor:
        """The tensor `info` describes, as a view of its file's pages (no read, no copy)."""
        mm = self._map(info.path)
        numel = info.nbytes // info.dtype.itemsize
        if numel == 0 or info.start % info.dtype.itemsize:
            raise DeviceMapError(f"Tensor '{info.name}' in '{info.path}' is not aligned for mapping.")
        t = torch.frombuffer(mm, dtype=info.dtype, count=numel, offset=info.start).view(info.shape)
        address = t.data_ptr()
        first = address - address % _PAGE
        self.ranges[address] = MappedRange(first, address + info.nbytes - first)
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
        tmp = f"{path}.{os.getpid()}.{id(tensor):x}.tmp"  # a new file, renamed over the old one: another model that
        try:  # maps the old one (the same offload_folder) keeps its pages; writing in place would change or cut them
            write_safetensors(tmp, {name: tensor.contiguous()}, {"format": "pt"})
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self.written.append(path)
        infos, _ = read_safetensors_header(path)
        return self.view(infos[name])

    def pages(self, tensors: list[torch.Tensor]) -> list[MappedRange]:
        return merged([self.ranges[t.data_ptr()] for t in tensors if t.data_ptr() in self.ranges])

    def settle(self, ranges: list[MappedRange]) -> None:
        """Make one block's disk pages cheap to bring in and hand back: map them once; if the kernel could not map
        most of them with 2 MB entries (the page cache holds them in small folios, e.g. the file was read with
        small reads), drop them from the page cache and read them again, which brings them back in 2 MB folios.
        Pages another process maps are left as they are. Then release them. Nothing changes on disk."""
        for path, whole in self._by_file(whole_huge_pages(ranges)).items():
            if any(_libc.madvise(r.address, r.length, _MADV_POPULATE_READ) != 0 for r in whole):
                Pager._advise(whole, mmap.MADV_DONTNEED)  # an older kernel, or a read error: leave the cache
                continue
            mapped = pmd_mapped_bytes(whole[0].address)
            if mapped is not None and mapped < 0.9 * sum(r.length for r in whole):
                Pager._advise(whole, mmap.MADV_DONTNEED)
                fd = os.open(path, os.O_RDONLY)
                try:
                    for r in whole:
                        os.posix_fadvise(fd, r.address - self.bases[path], r.length, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)
                Pager._advise(whole, _MADV_POPULATE_READ)
            Pager._advise(whole, mmap.MADV_DONTNEED)

    def _by_file(self, ranges: list[MappedRange]) -> dict[str, list[MappedRange]]:
        out: dict[str, list[MappedRange]] = {}
        for r in ranges:
            for path, base in self.bases.items():
                if base <= r.address < base + len(self.maps[path]):
                    out.setdefault(path, []).append(r)
                    break
        return out

    def close(self) -> None:
        self.maps.clear()
        self.bases.clear()
        self.ranges.clear()

