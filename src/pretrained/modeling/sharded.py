"""`load_sharded_checkpoint`: `nn.Module.load_state_dict` for a checkpoint folder, one shard in memory at a time."""

from __future__ import annotations

import os

import torch
from torch import nn

from ..checkpoint.files import find_checkpoint
from ..checkpoint.reader import CheckpointReader
from ..errors import LoadingError


def load_sharded_checkpoint(model: nn.Module, folder: str | os.PathLike, strict: bool = True, prefer_safe: bool = True):
    """Copy the tensors of the checkpoint in `folder` into `model`'s existing parameters (keeping their dtype and
    device). Works for sharded and single-file checkpoints, safetensors first unless `prefer_safe=False`.

    Returns `(missing_keys, unexpected_keys)` as torch's `load_state_dict` does; with `strict=True` any of either
    raises before a single tensor is read. Tied weights absent from the file (written once) are not missing.
    """
    folder = os.fspath(folder)
    files = None
    if not prefer_safe:
        try:
            files = find_checkpoint(folder, use_safetensors=False)
        except FileNotFoundError:
            files = None
    files = files or find_checkpoint(folder)
    reader = CheckpointReader(files.files, files.format, files.weight_map or None, files.index_path)
    model_keys = list(model.state_dict().keys())
    loaded = set(reader.infos)
    ties = model.active_ties() if hasattr(model, "active_ties") else {}
    missing = [k for k in model_keys if k not in loaded and not (k in ties and ties[k] in loaded)]
    unexpected = [k for k in reader.infos if k not in set(model_keys)]
    if strict and (missing or unexpected):
        raise LoadingError(
            f"Checkpoint '{folder}' does not match {type(model).__name__}: "
            + (f"missing {', '.join(missing)}. " if missing else "")
            + (f"unexpected {', '.join(unexpected)}. " if unexpected else "")
            + "Pass strict=False to load the tensors that do match."
        )
    wanted = {k for k in reader.infos if k not in unexpected}
    state = model.state_dict()
    with torch.no_grad():
        for name, tensor in reader.iter_tensors(wanted):
            if tuple(state[name].shape) != tuple(tensor.shape):
                raise LoadingError(f"'{name}' has shape {list(tensor.shape)} in '{reader.infos[name].path}' but "
                                   f"{list(state[name].shape)} in the model.")
            state[name].copy_(tensor)
    return nn.modules.module._IncompatibleKeys(missing, unexpected)
