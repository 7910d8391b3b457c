"""Which files form a checkpoint. Framework-neutral: names and JSON only, no tensors.

Looked for in this order (the ecosystem's): `model.safetensors`, `model.safetensors.index.json` (+ shards),
then, unless `use_safetensors=True`, `pytorch_model.bin`, `pytorch_model.bin.index.json` (+ shards).
A `variant` inserts itself before the last suffix: `model.fp16.safetensors`, `model.safetensors.index.fp16.json`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from ..errors import CheckpointNotFoundError, CorruptCheckpointError
from ..hub.resolve import resolve_file
from .shards import add_variant

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
PT_WEIGHTS = "pytorch_model.bin"
PT_INDEX = "pytorch_model.bin.index.json"


@dataclass
class CheckpointFiles:
    """The weight files of one checkpoint, resolved to local paths."""

    format: str  # "safetensors" | "pickle"
    files: list[str]  # local paths, in shard order
    index: dict[str, Any] | None = None  # the parsed index, when sharded
    index_path: str | None = None
    weight_map: dict[str, str] = field(default_factory=dict)  # tensor name -> local path (sharded only)


def candidates(variant: str | None, use_safetensors: bool | None) -> list[tuple[str, str, bool]]:
    """(filename, format, is_index) in the order they are looked for."""
    found = []
    if use_safetensors is not False:
        found += [(add_variant(SAFE_WEIGHTS, variant), "safetensors", False),
                  (add_variant(SAFE_INDEX, variant), "safetensors", True)]
    if not use_safetensors:
        found += [(add_variant(PT_WEIGHTS, variant), "pickle", False), (add_variant(PT_INDEX, variant), "pickle", True)]
    return found


def find_checkpoint(
    name_or_path: str | os.PathLike,
    *,
    variant: str | None = None,
    use_safetensors: bool | None = None,
    **hub: Any,
) -> CheckpointFiles:
    """Locate the weights of a checkpoint in a folder or repo, downloading shards named by an index if needed."""
    if os.path.isfile(name_or_path):  # a weights file given directly
        path = os.fspath(name_or_path)
        return CheckpointFiles("safetensors" if path.endswith(".safetensors") else "pickle", [path])
    looked = []
    for filename, fmt, is_index in candidates(variant, use_safetensors):
        looked.append(filename)
        path = resolve_file(name_or_path, filename, required=False, **hub)
        if path is None:
            continue
        if not is_index:
            return CheckpointFiles(fmt, [path])
        return _from_index(name_or_path, path, fmt, hub)
    where = os.path.join(name_or_path, hub.get("subfolder") or "") if os.path.isdir(name_or_path) else name_or_path
    hint = " use_safetensors=True was given, so pickle (.bin) files were not considered." if use_safetensors else ""
    raise CheckpointNotFoundError(
        f"No weights found in '{where}': looked for {', '.join(looked)}.{hint} "
        "Save the model with save_pretrained(), or check the path, the variant and the revision."
    )


def read_index(index_path: str) -> dict[str, Any]:
    """Parse and check an index file; errors name the file."""
    try:
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
    except json.JSONDecodeError as e:
        raise CorruptCheckpointError(
            f"Index file '{index_path}' is not valid JSON ({e.msg}, line {e.lineno}). Re-save the checkpoint."
        ) from e
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CorruptCheckpointError(
            f"Index file '{index_path}' has no 'weight_map' object mapping tensor names to shard files. "
            "Re-save the checkpoint."
        )
    for shard in set(weight_map.values()):
        if os.sep in shard or shard.startswith(".") or "/" in shard:
            raise CorruptCheckpointError(f"Index file '{index_path}' names the shard '{shard}' outside its folder.")
    return index


def _from_index(name_or_path: str | os.PathLike, index_path: str, fmt: str, hub: dict) -> CheckpointFiles:
    index = read_index(index_path)
    shard_names = sorted(set(index["weight_map"].values()))
    paths = {}
    for shard in shard_names:
        path = resolve_file(name_or_path, shard, required=False, **hub)
        if path is None:
            raise CorruptCheckpointError(
                f"Shard '{shard}' is named in the index '{index_path}' but is missing. Copy or download the "
                "missing shard, or re-save the checkpoint."
            )
        paths[shard] = path
    weight_map = {name: paths[shard] for name, shard in index["weight_map"].items()}
    return CheckpointFiles(fmt, [paths[s] for s in shard_names], index, index_path, weight_map)
