"""The shard plan: pure functions over names and sizes (no tensors, no files).

    plan = plan_shards([("a", 10, "s1"), ("b", 10, "s2")], max_shard_size=15)   # [["a"], ["b"]]
    names = shard_filenames(2, "safetensors")  # ["model-00001-of-00002.safetensors", ...]
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

DEFAULT_MAX_SHARD_SIZE = "5GB"
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*$")


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string: "5GB" (decimal, 10^9), "2GiB" (binary, 2^30), "500MB", "10KB", "123".

    A lower-case trailing "b" after a decimal unit means bits ("5Gb" = 5e9 / 8 bytes), as the ecosystem reads it.
    """
    if isinstance(size, bool):
        raise ValueError(f"Size must be an int or a string like '5GB', got {size!r}.")
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"Size must be positive, got {size}.")
        return size
    match = _SIZE.match(str(size))
    if not match or match.group(2).upper() not in _UNITS:
        raise ValueError(
            f"Cannot read the size {size!r}: write an int (bytes) or a number with a unit among "
            "B, KB, MB, GB, TB (powers of 10) and KiB, MiB, GiB, TiB (powers of 2), e.g. '5GB' or '2GiB'."
        )
    number, unit = float(match.group(1)), match.group(2)
    value = int(number * _UNITS[unit.upper()])
    if unit.endswith("b") and not unit.upper().endswith("IB") and len(unit) == 2:
        value //= 8  # "5Gb": gigabits
    if value <= 0:
        raise ValueError(f"Size must be positive, got {size!r}.")
    return value


@dataclass(frozen=True)
class Entry:
    """One tensor to place: its name, its size in bytes, and an id shared by tensors that share storage."""

    name: str
    nbytes: int
    storage: Hashable


def plan_shards(entries: Sequence[Entry | tuple], max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE) -> list[list[str]]:
    """Split tensors into shards of at most `max_shard_size` bytes, in order.

    Tensors that share storage are kept in one shard (their storage counted once). A group larger than the
    limit gets a shard of its own. Never returns an empty shard; returns [[]] for no tensors.
    """
    limit = parse_size(max_shard_size)
    groups: dict[Hashable, list[str]] = {}
    sizes: dict[Hashable, int] = {}
    for entry in entries:
        name, nbytes, storage = entry if isinstance(entry, tuple) else (entry.name, entry.nbytes, entry.storage)
        groups.setdefault(storage, []).append(name)
        sizes[storage] = max(sizes.get(storage, 0), nbytes)
    shards: list[list[str]] = []
    current: list[str] = []
    used = 0
    for storage, names in groups.items():
        size = sizes[storage]
        if current and used + size > limit:
            shards.append(current)
            current, used = [], 0
        current.extend(names)
        used += size
    if current or not shards:
        shards.append(current)
    return shards


def add_variant(filename: str, variant: str | None) -> str:
    """'model.safetensors' + 'fp16' -> 'model.fp16.safetensors' (the ecosystem's rule: before the last suffix)."""
    if not variant:
        return filename
    stem, ext = filename.rsplit(".", 1)
    return f"{stem}.{variant}.{ext}"


def shard_filenames(count: int, weights_name: str) -> list[str]:
    """'model.safetensors', 3 -> ['model-00001-of-00003.safetensors', ...]; one shard keeps the plain name."""
    if count == 1:
        return [weights_name]
    stem, ext = weights_name.rsplit(".", 1)
    return [f"{stem}-{i:05d}-of-{count:05d}.{ext}" for i in range(1, count + 1)]


def is_shard_of(filename: str, weights_name: str) -> bool:
    """Whether `filename` is `weights_name` itself or one of its shards (any shard count)."""
    if filename == weights_name:
        return True
    stem, ext = weights_name.rsplit(".", 1)
    return re.fullmatch(re.escape(stem) + r"-\d{5}-of-\d{5}\." + re.escape(ext), filename) is not None


def build_index(shards: Sequence[Sequence[str]], filenames: Sequence[str], total_size: int,
                total_parameters: int | None = None) -> dict:
    """The index JSON exactly as the ecosystem writes it: metadata + weight_map sorted by tensor name."""
    metadata: dict = {"total_size": int(total_size)}
    if total_parameters is not None:
        metadata["total_parameters"] = int(total_parameters)
    weight_map = {name: fn for names, fn in zip(shards, filenames) for name in names}
    return {"metadata": dict(sorted(metadata.items())), "weight_map": dict(sorted(weight_map.items()))}
