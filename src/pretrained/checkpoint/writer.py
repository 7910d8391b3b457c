"""Writing a checkpoint: plan shards, write them (plus config files) into a staging folder, commit atomically.

Exactly what the ecosystem writes: `model.safetensors` or `model-0000i-of-0000n.safetensors` with
`model.safetensors.index.json` (`metadata.total_size`, `metadata.total_parameters`, `weight_map`), safetensors
metadata `{"format": "pt"}`; or the pickle twins with `safe_serialization=False`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import torch
from tqdm.auto import tqdm

from .atomic import AtomicSave, list_files
from .reader import SAFETENSORS_DTYPES
from .files import PT_INDEX, PT_WEIGHTS, SAFE_INDEX, SAFE_WEIGHTS
from .shards import DEFAULT_MAX_SHARD_SIZE, Entry, add_variant, build_index, is_shard_of, plan_shards, shard_filenames


_DTYPE_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}


def write_safetensors(path: str, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """Write one safetensors file straight from the tensors' memory (no intermediate bytes copy).

    Layout as the safetensors library writes it: 8-byte little-endian header length, JSON header (with
    `__metadata__`, padded with spaces to a multiple of 8), then each tensor's bytes, largest dtype first.
    """
    items = sorted(tensors.items(), key=lambda kv: (-kv[1].element_size(), kv[0]))
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, t in items:
        header[name] = {"dtype": _DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for _, t in items:
            if t.nbytes:
                f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))


def _storage_key(t: torch.Tensor) -> tuple:
    return (t.device.type, t.untyped_storage().data_ptr()) if t.device.type != "meta" else ("meta", id(t))


def dedupe_shared(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Drop tensors that are the very same view of the same memory as an earlier one; returns (kept, dropped->kept)."""
    seen: dict[tuple, str] = {}
    kept, dropped = {}, {}
    for name, t in state_dict.items():
        key = (*_storage_key(t), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if key in seen and t.numel():  # empty tensors hold no memory to share
            dropped[name] = seen[key]
        else:
            seen[key] = name
            kept[name] = t
    return kept, dropped


def _owned(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors that own their bytes (views sharing a storage are copied; the rest are not)."""
    count: dict[tuple, int] = {}
    for t in tensors.values():
        count[_storage_key(t)] = count.get(_storage_key(t), 0) + 1
    out = {}
    for name, t in tensors.items():
        t = t.detach().to("cpu")
        shared = count[_storage_key(t)] > 1 or t.untyped_storage().nbytes() != t.nbytes
        out[name] = t.clone(memory_format=torch.contiguous_format) if shared or not t.is_contiguous() else t
    return out


def save_checkpoint(
    folder: str | os.PathLike,
    state_dict: Mapping[str, torch.Tensor],
    *,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    safe_serialization: bool = True,
    variant: str | None = None,
    extra_files: Mapping[str, str] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> list[str]:
    """Write `state_dict` (and small text files such as config.json) into `folder` in one atomic commit.

    Weight files of the same format and variant left by an earlier save are removed in the same commit.
    Returns the names of the weight files written.
    """
    folder = os.fspath(folder)
    if os.path.isfile(folder):
        raise NotADirectoryError(f"save_directory '{folder}' is a file; give a folder.")
    tensors, dropped = dedupe_shared(state_dict)
    if dropped:  # writing one name would silently lose the other on load
        pairs = ", ".join(f"'{d}' is '{k}'" for d, k in dropped.items())
        raise ValueError(
            f"Some tensors to save are the same memory under two names ({pairs}). Each name is written once: "
            "declare the tie (e.g. config.tie_word_embeddings=True), drop one name, or save a .clone()."
        )
    for name, t in tensors.items():
        if t.device.type == "meta":
            raise ValueError(f"Tensor '{name}' is on the meta device (never loaded); it has no data to save.")
    weights_name = add_variant(SAFE_WEIGHTS if safe_serialization else PT_WEIGHTS, variant)
    index_name = add_variant(SAFE_INDEX if safe_serialization else PT_INDEX, variant)
    entries = [Entry(n, t.nbytes, _storage_key(t)) for n, t in tensors.items()]
    plan = plan_shards(entries, max_shard_size)
    filenames = shard_filenames(len(plan), weights_name)
    with AtomicSave(folder) as save:
        total = sum(t.nbytes for t in tensors.values())  # a bar only where a save takes a while
        bar = tqdm(total=len(plan), desc="Writing model shards", unit="shard", disable=len(plan) < 2 or total < 10**8)
        for names, filename in zip(plan, filenames):
            shard = _owned({n: tensors[n] for n in names})
            if safe_serialization:
                write_safetensors(save.path(filename), shard, {"format": "pt", **(metadata or {})})
            else:
                torch.save(shard, save.path(filename))
            save.finished(filename)
            bar.update(1)
        bar.close()
        if len(plan) > 1:
            total_params = sum(t.numel() for t in tensors.values())
            index = build_index(plan, filenames, total, total_params)
            save.write_text(index_name, json.dumps(index, indent=2) + "\n")
        for name, text in (extra_files or {}).items():
            save.write_text(name, text)
        existing = list_files(folder)
        stale = [n for n in existing if (is_shard_of(n, weights_name) or n == index_name) and n not in filenames]
        save.commit(remove=stale)
    return filenames
