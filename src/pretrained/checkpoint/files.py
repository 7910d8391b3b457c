"""Which files form a checkpoint. Framework-neutral: names and JSON only, no tensors.

Looked for in this order (the ecosystem's): `model.safetensors`, `model.safetensors.index.json` (+ shards),
then, unless `use_safetensors=True`, `pytorch_model.bin`, `pytorch_model.bin.index.json` (+ shards).
A `variant` inserts itself before the last suffix: `model.fp16.safetensors`, `model.safetensors.index.fp16.json`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import CheckpointNotFoundError, CorruptCheckpointError, UnsafePathError
from ..hub.resolve import resolve_file
from ..jsonfile import read_json_object
from .atomic import is_plain_name
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
    index = read_json_object(index_path, CorruptCheckpointError, "Index file", "Re-save the checkpoint.")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CorruptCheckpointError(
            f"Index file '{index_path}' has no 'weight_map' object mapping tensor names to shard files. "
            "Re-save the checkpoint."
        )
    if not weight_map:
        raise CorruptCheckpointError(
            f"Index file '{index_path}' has an empty 'weight_map': it names no tensor and no shard. Re-save the "
            "checkpoint, or restore its index."
        )
    for shard in sorted(set(weight_map.values())):
        if not is_plain_name(shard) or shard.startswith("."):
            raise UnsafePathError(
                f"Index file '{index_path}' names the shard {shard!r}, which is not a plain file name in its folder "
                "(absolute, '..', a separator, NUL or hidden); nothing was read. Re-save the checkpoint."
            )
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
    _check_shard_numbers(index_path, shard_names)
    weight_map = {name: paths[shard] for name, shard in index["weight_map"].items()}
    return CheckpointFiles(fmt, [paths[s] for s in shard_names], index, index_path, weight_map)


_NUMBERED = re.compile(r"^(?P<stem>.+)-(?P<i>\d+)-of-(?P<n>\d+)(?P<ext>\.[^-]+)$")


def _check_shard_numbers(index_path: str, shard_names: list[str]) -> None:
    """Shards named the ecosystem's way (`model-00002-of-00004.safetensors`) say how many there are: an index that
    names some of them but not all has lost the entries of a shard (its tensors would load as random weights)."""
    found = [_NUMBERED.match(name) for name in shard_names]
    if not found or not all(found):
        return
    if len({(m["stem"], m["n"], m["ext"], len(m["i"])) for m in found}) != 1:
        return  # not one numbered series: nothing to infer
    first = found[0]
    total = int(first["n"])
    missing = sorted(set(range(1, total + 1)) - {int(m["i"]) for m in found})
    if missing and total <= 100_000:
        names = [f"{first['stem']}-{i:0{len(first['i'])}d}-of-{first['n']}{first['ext']}" for i in missing]
        raise CorruptCheckpointError(
            f"The index '{index_path}' names {len(found)} of the {total} shards its file names count, but no tensor "
            f"in {', '.join(repr(n) for n in names[:5])}{' ...' if len(names) > 5 else ''}: entries of the index are "
            "lost. Re-download the index or re-save the checkpoint."
        )


def check_index(index_path: str, weight_map: dict[str, str], found: dict[str, str], limit: int = 5) -> None:
    """Check an index against the shards: `weight_map` (tensor name -> shard path, as the index says) and `found`
    (tensor name -> the shard that holds it, as the shard headers say) must agree on every tensor. Any
    disagreement — a tensor the index puts in a shard that lacks it, one it does not list, one in another shard —
    raises a CorruptCheckpointError naming the index and the shard files involved."""
    problems = []
    for name, claimed in weight_map.items():
        actual = found.get(name)
        if actual == claimed:
            continue
        if actual is None:
            problems.append(f"'{name}': the index puts it in '{claimed}', which does not hold it (no shard does)")
        else:
            problems.append(f"'{name}': the index puts it in '{claimed}', but it is in '{actual}'")
    for name, actual in found.items():
        if name not in weight_map:
            problems.append(f"'{name}': '{actual}' holds it, but the index does not list it")
    if problems:
        more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
        raise CorruptCheckpointError(
            f"The index '{index_path}' and its shards disagree about {len(problems)} tensor(s):\n  - "
            + "\n  - ".join(problems[:limit]) + more
            + "\nThe index or a shard is damaged or from another save: re-download or re-save the checkpoint."
        )


def find_single_or_index(name_or_path: str | os.PathLike, single: str, index: str, fmt: str, hub: Mapping[str, Any],
                         resolve: Callable[..., str | None] = resolve_file) -> CheckpointFiles | None:
    """`single` (e.g. `tf_model.h5`, `flax_model.msgpack`), or `index` and the shards it names, of a folder or repo
    (format `fmt`); None if it has neither. The index is followed, not the shard numbering (4.57 writes an empty first
    shard that counts in the "-of-N" names but that its index never names). A shard the index names but the folder
    lacks raises a CorruptCheckpointError naming the shard and the index. `resolve(source, filename, required=False,
    **hub)` finds one file (`hub.resolve.resolve_file`)."""
    source = os.fspath(name_or_path)
    path = resolve(source, single, required=False, **hub)
    if path is not None:
        return CheckpointFiles(fmt, [path])
    index_path = resolve(source, index, required=False, **hub)
    if index_path is None:
        return None
    parsed = read_index(index_path)
    paths = {}
    for shard in sorted(set(parsed["weight_map"].values())):
        found = resolve(source, shard, required=False, **hub)
        if found is None:
            raise CorruptCheckpointError(
                f"Shard '{shard}' is named in the index '{index_path}' but is missing. Copy or download the missing "
                "shard, or re-save the checkpoint.")
        paths[shard] = found
    weight_map = {name: paths[shard] for name, shard in parsed["weight_map"].items()}
    return CheckpointFiles(fmt, list(paths.values()), parsed, index_path, weight_map)
