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
from typing import Any
from dataclasses import dataclass, field

import torch
from torch import nn

from ..checkpoint.reader import CheckpointReader
from ..dispatch.offload import DiskStore
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
    placement: Callable[[str], Any] | None = None,
    disk: DiskStore | None = None,
) -> LoadingInfo:
    """Assign checkpoint tensors to `model` (built on meta) in the dtypes its skeleton already has.

    Every tensor goes to `device`, or, with a `placement` (tensor name -> GPU index, "cpu" or "disk"), to its
    planned place: disk tensors stored in the wanted dtype become mapped views of the checkpoint file (not read
    at all); others are written once through `disk` (its offload folder).
    """

    def where(name: str) -> Any:
        planned = placement(name) if placement else device
        if planned == "disk":
            return "disk"
        return torch.device("cuda", planned) if isinstance(planned, int) else torch.device(planned)

    targets = model.state_dict(keep_vars=True)
    to_model = key_mapper(model, list(reader.infos), set(targets))
    info = LoadingInfo()
    wanted: dict[str, str] = {}  # checkpoint name -> model name
    mismatches = []
    leftovers = [re.compile(p) for p in model.facts.ignore_unexpected]
    for ckpt_name, tinfo in reader.infos.items():
        name = to_model(ckpt_name)
        if name not in targets:
            if not any(p.search(ckpt_name) for p in leftovers):
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
    convert = {c: targets[n].dtype for c, n in wanted.items()  # floating tensors whose dtype changes
               if targets[n].is_floating_point() and reader.infos[c].dtype.is_floating_point
               and reader.infos[c].dtype != targets[n].dtype}
    to_read = set(wanted)
    for ckpt_name, name in wanted.items():  # disk weights already in the right dtype: map the checkpoint itself
        if where(name) == "disk" and reader.format == "safetensors" and ckpt_name not in convert:
            _set_tensor(model, name, disk.view(reader.infos[ckpt_name]))
            to_read.discard(ckpt_name)
    for ckpt_name, tensor in reader.iter_tensors(to_read, convert):
        name = wanted[ckpt_name]
        target, place = targets[name], where(name)
        if place == "disk":
            value = disk.put(name, tensor.to(dtype=target.dtype if target.is_floating_point() else None))
        else:
            value = tensor.to(device=place, dtype=target.dtype if target.is_floating_point() else None)
        _set_tensor(model, name, value)
    loaded = set(wanted.values())
    model._untied_weights = _untied_by_checkpoint(model, loaded)
    model.tie_weights()
    tied = {t for t, s in model.active_ties().items() if s in loaded}
    mismatched = {n for n, _, _ in info.mismatched_keys}  # in the checkpoint, reported as mismatched, not missing
    info.missing_keys = sorted(set(targets) - loaded - tied - mismatched)
    def memory_device(name: str) -> torch.device:  # where a tensor made here (init, computed buffer) lives
        place = where(name)
        return torch.device("cpu") if place == "disk" else place

    initialise_meta(model, memory_device)
    for module_name, module in model.named_modules():  # computed buffers (rotary frequencies) were made on the CPU
        for name, buf in module.named_buffers(recurse=False):
            target = memory_device(f"{module_name}.{name}" if module_name else name)
            if buf is not None and buf.device != target:
                module._buffers[name] = buf.to(target)
    return info


def _untied_by_checkpoint(model: nn.Module, loaded: set[str]) -> set[str]:
    """Declared ties whose target and source were both in the checkpoint with different values: the file holds two
    separate weights (e.g. a T5 v1.1 head saved under a config that says "tied"), so, as the reference does, they
    stay untied rather than one silently replacing the other."""
    untied = set()
    for target, source in model.active_ties().items():
        if target in loaded and source in loaded:
            t, s = model.get_parameter(target), model.get_parameter(source)
            if t.shape != s.shape or not torch.equal(t, s.to(t.device)):
                untied.add(target)
    return untied


def initialise_meta(model: nn.Module, device: torch.device | str | Callable[[str], torch.device]) -> None:
    """Give every tensor still on the meta device real memory and initial values (`_init_weights`, or
    `reset_buffers` for computed buffers), leaving the module's already-loaded tensors untouched."""
    for module_name, module in model.named_modules():
        params = [n for n, p in module.named_parameters(recurse=False) if p.is_meta]
        buffers = [n for n, b in module.named_buffers(recurse=False) if b is not None and b.is_meta]
        if not params and not buffers:
            continue
        kept = {n: p.detach().clone() for n, p in module.named_parameters(recurse=False) if not p.is_meta}
        if callable(device):
            dev = device(module_name + ".x" if module_name else "x")
        else:
            dev = device
        for n in params:
            old = module._parameters[n]
            module._parameters[n] = nn.Parameter(torch.empty_like(old, device=dev), requires_grad=old.requires_grad)
        for n in buffers:
            module._buffers[n] = torch.empty_like(module._buffers[n], device=dev)
        with torch.no_grad():
            if buffers and hasattr(module, "reset_buffers"):
                module.reset_buffers()
            if params:
                model._init_weights(module)
                for n, value in kept.items():
                    module._parameters[n].copy_(value)
