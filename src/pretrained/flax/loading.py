"""Loading a checkpoint into Flax parameters: find the files, meet their names with the model's, stream each tensor
from the mapped file to its device array.

1. Files, in 4.57's order: `flax_model.msgpack`, `flax_model.msgpack.index.json` (+ shards), `model.safetensors`,
   `model.safetensors.index.json` (+ shards; 4.x could not read those at all). Safetensors whose metadata says
   `"format": "flax"` (4.x's `save_pretrained(safe_serialization=True)`) hold Flax paths joined by "."; the rest hold
   the PyTorch layout and go through `convert.py`.
2. Names: every Flax parameter path names one checkpoint tensor (`convert.slot`); base-model prefix added or
   stripped as the PyTorch loader does. Every shape is checked from the headers before a byte of data is read.
3. Data: each tensor is a view of the mapped file in the Flax layout (a transposed view where the layouts differ),
   copied once into memory of its own (`sharding._owned_copy`: the runtime's transposing copy, or an aligned copy
   JAX adopts); for a mesh, each device's slice is cut from the view (`sharding.mesh_placer`). The file's pages are released once the
   tensor is placed. A few tensors at a time, on threads (the copies run in native code), so the peak stays near
   one copy of the parameters.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..checkpoint.files import CheckpointFiles, find_checkpoint, find_single_or_index
from ..checkpoint.numpy_reader import NumpyCheckpointReader
from ..checkpoint.report import LoadingInfo  # noqa: F401 (the report every framework gives)
from ..errors import CheckpointNotFoundError, CorruptCheckpointError, ShapeMismatchError
from ..hub.resolve import resolve_file
from .convert import KeyRules, Slot, match, slots
from .msgpack import FLAX_INDEX, FLAX_WEIGHTS, MsgpackReader

Path = tuple[str, ...]


# ---- 1. files ------------------------------------------------------------------------------------------------------
def find_flax_checkpoint(name_or_path: str | os.PathLike, *, variant: str | None = None,
                         hub: dict[str, Any]) -> CheckpointFiles:
    """The weight files of a folder, repo or single file, in 4.57's order (msgpack first, then safetensors).
    Format "msgpack" or "safetensors"."""
    source = os.fspath(name_or_path)
    if os.path.isfile(source):
        return CheckpointFiles("msgpack" if source.endswith(".msgpack") else "safetensors", [source])
    found = find_single_or_index(source, FLAX_WEIGHTS, FLAX_INDEX, "msgpack", hub)
    if found is not None:
        return found
    try:
        return find_checkpoint(source, variant=variant, use_safetensors=True, **hub)
    except CheckpointNotFoundError as e:
        if type(e) is not CheckpointNotFoundError:  # a Hub error (repo, revision, offline): as it is
            raise
        pickle = resolve_file(source, "pytorch_model.bin", required=False, **hub) or resolve_file(
            source, "pytorch_model.bin.index.json", required=False, **hub)
        where = os.path.join(source, hub.get("subfolder") or "") if os.path.isdir(source) else source
        hint = (" It holds PyTorch pickle weights (pytorch_model.bin), which only torch can read: load it with the "
                "PyTorch class and save_pretrained() it again (safetensors), then load that here." if pickle
                else " Save the model with save_pretrained(), or check the path, the variant and the revision.")
        raise CheckpointNotFoundError(
            f"No weights a Flax class reads found in '{where}': looked for {FLAX_WEIGHTS}, {FLAX_INDEX}, "
            f"model.safetensors and model.safetensors.index.json.{hint}") from None


def open_reader(files: CheckpointFiles):
    """A reader over the files: `infos` (name -> dtype, shape, path, ...), `array(name)`, `release(name)`."""
    if files.format == "msgpack":
        return MsgpackReader(files.files, files.weight_map or None, files.index_path)
    return NumpyCheckpointReader(files.files, files.weight_map or None, files.index_path)


# ---- 2. names and shapes ---------------------------------------------------------------------------------------
@dataclass
class LoadPlan:
    """checkpoint name -> Slot (the Flax path and layout it fills), plus what the report says."""

    found: dict[str, Slot]
    unexpected: list[str]
    mismatched: list[tuple[Slot, tuple, tuple, str, str]]  # slot, checkpoint shape, model shape, name, file
    missing: list[Path]


def plan_load(reader: Any, shapes: Mapping[Path, Any], prefix: str, rules: KeyRules) -> LoadPlan:
    """Meet the checkpoint's tensors with the model's parameters (`shapes`: Flax path -> ShapeDtypeStruct)."""
    pytorch_layout = reader.saved_format() != "flax"
    if pytorch_layout:
        model = slots(shapes, rules)
        sep = "."
        names = list(reader.infos)
    else:  # Flax paths: "/"-joined in msgpack files, "."-joined in 4.x's flax-format safetensors
        model = {"/".join(p): Slot(p, "/".join(p), None) for p in shapes}
        sep = "/"
        names = [n.replace(".", "/") for n in reader.infos] if reader.format == "safetensors" else list(reader.infos)
    spelled = dict(zip(names, reader.infos))  # as matched -> as stored
    met = match(model, names, prefix, sep, rules, pytorch_layout=pytorch_layout)
    found, mismatched = {}, []
    for name, sl in met.found.items():
        stored = spelled[name]
        info = reader.infos[stored]
        expected = tuple(shapes[sl.path].shape)
        got = tuple(info.shape) if sl.perm is None else tuple(info.shape[i] for i in sl.perm)
        if got != expected:
            mismatched.append((sl, tuple(info.shape), expected, stored, info.path))
        else:
            found[stored] = sl
    filled = {sl.path for sl in found.values()} | {m[0].path for m in mismatched}
    missing = [p for p in shapes if p not in filled]
    return LoadPlan(found, [spelled[n] for n in met.unexpected], mismatched, missing)


def check_mismatches(plan: LoadPlan, ignore_mismatched_sizes: bool) -> None:
    if plan.mismatched and not ignore_mismatched_sizes:
        lines = "\n".join(
            f"  - '{name}' in '{path}': checkpoint {list(ckpt)}, model {'/'.join(sl.path)} {list(model)}"
            + (f" (the checkpoint's PyTorch layout, {list(sl.pytorch_shape(model))} expected)" if sl.perm else "")
            for sl, ckpt, model, name, path in plan.mismatched)
        raise ShapeMismatchError(
            f"{len(plan.mismatched)} tensor(s) in the checkpoint do not fit the model:\n{lines}\nCheck that the "
            "config matches the checkpoint, or pass ignore_mismatched_sizes=True to initialise those weights afresh.")


# ---- 3. data ------------------------------------------------------------------------------------------------------
def stream(reader: Any, plan: LoadPlan, place: Callable[[Slot, np.ndarray], Any],
           workers: int | None = None) -> dict[Path, Any]:
    """`place(slot, view)` each planned tensor (a numpy view of the mapped file, in the checkpoint's layout), file by
    file in on-disk order, releasing each tensor's pages once placed; returns Flax path -> placed array.

    Copies and transposes run in the runtime's native code, which releases the GIL: `workers` threads (default:
    twice the CPUs, at most 4, so reads overlap work) place tensors side by side, one each in flight, so memory stays
    near one copy."""
    names = [n for n in reader.names_on_disk() if n in plan.found]
    workers = workers or min(4, 2 * (os.cpu_count() or 1))

    def one(name: str) -> Any:
        try:
            view = reader.array(name)
        except (OSError, ValueError) as e:  # the file changed since its header was read
            raise CorruptCheckpointError(
                f"'{reader.infos[name].path}': tensor '{name}' cannot be read ({type(e).__name__}: {e}). "
                "Re-download or re-save the checkpoint.") from e
        placed = place(plan.found[name], view)
        reader.release(name)
        return placed

    out = {}
    try:
        if workers <= 1 or len(names) < 2:
            for name in names:
                out[plan.found[name].path] = one(name)
            return out
        with ThreadPoolExecutor(workers) as pool:
            pending: deque = deque()
            for name in names:
                pending.append((name, pool.submit(one, name)))
                if len(pending) >= workers:
                    done, future = pending.popleft()
                    out[plan.found[done].path] = future.result()
            while pending:
                done, future = pending.popleft()
                out[plan.found[done].path] = future.result()
    finally:
        reader.close()
    return out
