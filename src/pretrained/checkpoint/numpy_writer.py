"""Writing a checkpoint from numpy arrays (no torch): plan shards, write them and small text files into a staging
folder, commit atomically (`atomic.py`), as `writer.py` does for torch tensors.

`save_arrays` takes any per-file writer, so the same plan, index and crash-safe commit serve the PyTorch-layout
safetensors (`write_safetensors`, metadata `{"format": "pt"}`) and the 4.x Flax msgpack files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from .atomic import AtomicSave, list_files
from .numpy_reader import SAFETENSORS_NAMES
from .shards import DEFAULT_MAX_SHARD_SIZE, Entry, build_index, is_shard_of, plan_shards, shard_filenames


def safetensors_header(arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None) -> tuple[bytes, list]:
    """(8-byte length + JSON header padded to a multiple of 8, [(name, array)] in data order), laid out as the
    safetensors library does: largest dtype first, then by name."""
    items = sorted(arrays.items(), key=lambda kv: (-kv[1].dtype.itemsize, kv[0]))
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, a in items:
        if a.dtype not in SAFETENSORS_NAMES:
            raise ValueError(f"Tensor '{name}' has the dtype {a.dtype}, which safetensors cannot store.")
        header[name] = {"dtype": SAFETENSORS_NAMES[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw, items


def write_safetensors(path: str | os.PathLike, arrays: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> None:
    """Write numpy arrays as one safetensors file, straight from their memory (a non-contiguous view is copied
    one tensor at a time)."""
    head, items = safetensors_header(arrays, metadata)
    with open(path, "wb") as f:
        f.write(head)
        for _, a in items:
            if a.nbytes:
                a = a if a.flags.c_contiguous else a.copy(order="C")
                f.write(memoryview(a.reshape(-1).view(np.uint8)))


def save_arrays(
    folder: str | os.PathLike,
    arrays: Mapping[str, Any],
    write_file: Callable[[str, dict[str, np.ndarray]], None],
    *,
    weights_name: str,
    index_name: str,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    extra_files: Mapping[str, str] | None = None,
    remove: Iterable[tuple[str, str]] = (),
    total_parameters: bool = True,
    index_json: Callable[[dict], str] | None = None,
) -> list[str]:
    """Write `arrays` (name -> array-like with `nbytes`; converted with `np.asarray` one shard at a time) into
    `folder` in one atomic commit: `write_file(path, {name: array})` per shard (`weights_name`, or its
    `-0000i-of-0000n` shards plus `index_name` when there is more than one), then `extra_files` (name -> text).

    Stale files go in the same commit: earlier shards/index of `weights_name`, and of every (weights name, index
    name) pair in `remove` (other formats whose files would shadow or contradict this save). Returns the weight
    file names written.
    """
    folder = os.fspath(folder)
    if os.path.isfile(folder):
        raise NotADirectoryError(f"save_directory '{folder}' is a file; give a folder.")
    entries = [Entry(n, int(a.nbytes), n) for n, a in arrays.items()]
    plan = plan_shards(entries, max_shard_size)
    filenames = shard_filenames(len(plan), weights_name)
    with AtomicSave(folder) as save:
        for names, filename in zip(plan, filenames):
            write_file(save.path(filename), {n: np.asarray(arrays[n]) for n in names})
            save.finished(filename)
        if len(plan) > 1:
            total = sum(int(a.nbytes) for a in arrays.values())
            params = sum(int(np.prod(a.shape)) for a in arrays.values()) if total_parameters else None
            index = build_index(plan, filenames, total, params)
            text = index_json(index) if index_json else json.dumps(index, indent=2) + "\n"
            save.write_text(index_name, text)
        for name, text in (extra_files or {}).items():
            save.write_text(name, text)
        families = [(weights_name, index_name), *remove]
        stale = [n for n in list_files(folder) if n not in filenames
                 and any(is_shard_of(n, w) or n == i for w, i in families)]
        save.commit(remove=stale)
    return filenames
