"""Streaming a checkpoint into a model built on the meta device.

1. Map checkpoint names to model names (base-model prefix added or stripped, legacy and family key fixes).
2. Check every shape from the file headers before reading a byte; mismatches raise (or are skipped with
   `ignore_mismatched_sizes`).
3. Read tensors one at a time, convert to the parameter's dtype, move to its device, and *assign* them in
   place of the meta parameters (no second copy, no init of loaded weights).
4. Whatever is still on meta afterwards (and is not tied) is missing: materialise it and run `_init_weights`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..checkpoint.reader import CheckpointReader
from ..errors import ShapeMismatchError

_LEGACY_SUFFIXES = ((".gamma", ".weight"), (".beta", ".bias"))


@dataclass
class LoadingInfo:
    """What a load did; `output_loading_info=True` hands this over as a dict."""

    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    mismatched_keys: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (name, ckpt, model shapes)
    error_msgs: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list]:
        return {"missing_keys": self.missing_keys, "unexpected_keys": self.unexpected_keys,
                "mismatched_keys": self.mismatched_keys, "error_msgs": self.error_msgs}


def key_mapper(model: nn.Module, checkpoint_keys: list[str], model_keys: set[str]) -> Callable[[str], str]:
    """A function from checkpoint names to this model's names."""
    prefix = model.facts.base_model_prefix
    fixes = [(re.compile(p), r) for p, r in model.facts.checkpoint_key_fixes]
    expects_prefix = bool(prefix) and model.base_model is not model
    has_prefix = bool(prefix) and any(k.startswith(prefix + ".") for k in checkpoint_keys)

    def to_model(key: str) -> str:
        for pattern, replacement in fixes:
            key = pattern.sub(replacement, key)
        if expects_prefix and not has_prefix:
            key = f"{prefix}.{key}"
        elif not expects_prefix and has_prefix and key.startswith(prefix + "."):
            key = key[len(prefix) + 1:]
        if key not in model_keys:
            for old, new in _LEGACY_SUFFIXES:
                if key.endswith(old) and key[: -len(old)] + new in model_keys:
                    return key[: -len(old)] + new
        return key

    return to_model


def _set_tensor(model: nn.Module, name: str, value: torch.Tensor) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name)
    if leaf in module._parameters:
        old = module._parameters[leaf]
        module._parameters[leaf] = nn.Parameter(value, requires_grad=old.requires_grad)
    else:
        module._buffers[leaf] = value


def load_into(
    model: nn.Module,
    reader: CheckpointReader,
    *,
    device: torch.device | str = "cpu",
    ignore_mismatched_sizes: bool = False,
) -> LoadingInfo:
    """Assign checkpoint tensors to `model` (built on meta) in the dtypes its skeleton already has."""
    targets = model.state_dict(keep_vars=True)
    to_model = key_mapper(model, list(reader.infos), set(targets))
    info = LoadingInfo()
    wanted: dict[str, str] = {}  # checkpoint name -> model name
    mismatches = []
    for ckpt_name, tinfo in reader.infos.items():
        name = to_model(ckpt_name)
        if name not in targets:
            info.unexpected_keys.append(ckpt_name)
            continue
        expected = tuple(targets[name].shape)
        if tinfo.shape != expected:
            mismatches.append((name, tinfo.shape, expected, tinfo.path))
            continue
        wanted[ckpt_name] = name
    if mismatches and not ignore_mismatched_sizes:
        lines = "\n".join(f"  - '{n}' in '{p}': checkpoint {list(c)}, model {list(m)}" for n, c, m, p in mismatches)
        raise ShapeMismatchError(
            f"{len(mismatches)} tensor(s) in the checkpoint do not fit the model:\n{lines}\nCheck that the config "
            "matches the checkpoint, or pass ignore_mismatched_sizes=True to initialise those weights afresh."
        )
    info.mismatched_keys = [(n, c, m) for n, c, m, _ in mismatches]
    convert = {c: targets[n].dtype for c, n in wanted.items()
               if targets[n].is_floating_point() and reader.infos[c].dtype.is_floating_point}
    for ckpt_name, tensor in reader.iter_tensors(set(wanted), convert):
        name = wanted[ckpt_name]
        target = targets[name]
        value = tensor.to(device=device, dtype=target.dtype if target.is_floating_point() else None)
        _set_tensor(model, name, value)
    model.tie_weights()
    loaded = set(wanted.values())
    tied = {t for t, s in model.active_ties().items() if s in loaded}
    mismatched = {n for n, _, _ in info.mismatched_keys}  # in the checkpoint, reported as mismatched, not missing
    info.missing_keys = sorted(set(targets) - loaded - tied - mismatched)
    initialise_meta(model, device)
    for module in model.modules():  # computed buffers (rotary frequencies) were made on the CPU
        for name, buf in module.named_buffers(recurse=False):
            if buf is not None and buf.device != torch.device(device):
                module._buffers[name] = buf.to(device)
    return info


def initialise_meta(model: nn.Module, device: torch.device | str) -> None:
    """Give every tensor still on the meta device real memory and initial values (`_init_weights`, or
    `reset_buffers` for computed buffers), leaving the module's already-loaded tensors untouched."""
    for module in model.modules():
        params = [n for n, p in module.named_parameters(recurse=False) if p.is_meta]
        buffers = [n for n, b in module.named_buffers(recurse=False) if b is not None and b.is_meta]
        if not params and not buffers:
            continue
        kept = {n: p.detach().clone() for n, p in module.named_parameters(recurse=False) if not p.is_meta}
        for n in params:
            old = module._parameters[n]
            module._parameters[n] = nn.Parameter(torch.empty_like(old, device=device), requires_grad=old.requires_grad)
        for n in buffers:
            module._buffers[n] = torch.empty_like(module._buffers[n], device=device)
        with torch.no_grad():
            if buffers and hasattr(module, "reset_buffers"):
                module.reset_buffers()
            if params:
                model._init_weights(module)
                for n, value in kept.items():
                    module._parameters[n].copy_(value)
