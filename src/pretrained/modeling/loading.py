"""Streaming a checkpoint into a model built on the meta device.

1. Map checkpoint names to model names (base-model prefix added or stripped, legacy and family key fixes).
2. Check every shape from the file headers before reading a byte; mismatches raise (or are skipped with
   `ignore_mismatched_sizes`).
3. Read tensors one at a time, convert to the parameter's dtype, move to its device, and *assign* them in
   place of the meta parameters (no second copy, no init of loaded weights).
4. Whatever is still on meta afterwards (and is not tied) is missing: materialise it and run `_init_weights`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..checkpoint.reader import CheckpointReader
from ..checkpoint.report import LoadingInfo  # the report every framework gives (was defined here)
from ..dispatch.offload import DiskStore
from ..errors import ConfigError, CorruptCheckpointError, LoadingError, ShapeMismatchError

logger = logging.getLogger("pretrained")
# A load must take at least this share of the base model's own tensors from the checkpoint (a base->task load
# leaves only the new head to initialise, which is outside the base model); less means config and checkpoint
# describe different models, and the result would be mostly random.
MIN_SUPPLIED = 0.5
_INDEX_SEGMENT = re.compile(r"(?:^|\.)(\d+)(?=\.|$)")

_LEGACY_SUFFIXES = ((".gamma", ".weight"), (".beta", ".bias"))


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
    quantizer: Any = None,
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
    if quantizer is not None:  # a quantization handler (quantization/base.py): the low-bit names it expects
        quantizer.reader = reader  # its names, shapes and files (bitsandbytes keeps block sizes inside tensors)
        targets.update(quantizer.checkpoint_targets(model))
    to_model = key_mapper(model, list(reader.infos), set(targets))
    info = LoadingInfo()
    wanted, mismatches = _match(model, reader, targets, to_model, info)
    config_file = _config_file(model)
    if mismatches and not ignore_mismatched_sizes:
        lines = "\n".join(f"  - '{n}' in '{p}': checkpoint {list(c)}, model {list(m)}" for n, c, m, p in mismatches)
        raise ShapeMismatchError(
            f"{len(mismatches)} tensor(s) in the checkpoint do not fit the model:\n{lines}\nCheck that the config "
            f"({config_file}) matches the checkpoint, or pass ignore_mismatched_sizes=True to initialise those "
            "weights afresh."
        )
    _check_coverage(model, reader, targets, set(wanted.values()) | {n for n, _, _, _ in mismatches}, config_file)
    info.mismatched_keys = [(n, c, m) for n, c, m, _ in mismatches]
    _stream_into(model, reader, wanted, targets, where, disk, quantizer)
    loaded = set(wanted.values())
    if quantizer is not None:
        quantizer.finish(model, loaded)
    model._untied_weights = _untied_by_checkpoint(model, loaded)
    model.tie_weights()
    tied = {t for t, s in model.active_ties().items() if s in loaded}
    mismatched = {n for n, _, _ in info.mismatched_keys}  # in the checkpoint, reported as mismatched, not missing
    info.missing_keys = sorted(set(targets) - loaded - tied - mismatched)
    _check_damaged_names(reader, info, targets, to_model)
    _log_report(model, reader, info)
    _make_the_rest(model, where)
    return info


def _match(model: nn.Module, reader: CheckpointReader, targets: dict[str, torch.Tensor],
           to_model: Callable[[str], str], info: LoadingInfo) -> tuple[dict[str, str], list[tuple]]:
    """Pair checkpoint tensors with the model's: (checkpoint name -> model name for those that fit, [(model name,
    checkpoint shape, model shape, file)] for those whose shape does not). Unexpected names go to `info`; a tensor
    of the wrong kind of number (integer for float or the reverse) is refused, all of them in one error."""
    wanted: dict[str, str] = {}
    mismatches = []
    kinds: list[tuple[str, Any, torch.dtype]] = []
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
        target = targets[name]
        if isinstance(target, nn.Parameter) and tinfo.dtype.is_floating_point != target.is_floating_point():
            kinds.append((ckpt_name, tinfo, target.dtype))
            continue
        wanted[ckpt_name] = name
    if kinds:  # integers read as weights (or weights as integers) would load as garbage values
        lines = "\n".join(f"  - '{n}' in '{t.path}': {str(t.dtype).removeprefix('torch.')} in the checkpoint, "
                          f"{str(d).removeprefix('torch.')} in the model" for n, t, d in kinds)
        raise LoadingError(
            f"{len(kinds)} tensor(s) in the checkpoint are not of the model's kind of number (floating point or "
            f"integer):\n{lines}\nThe checkpoint is damaged or holds another kind of data (e.g. quantized "
            "weights); re-download or re-save it."
        )
    return wanted, mismatches


def _stream_into(model: nn.Module, reader: CheckpointReader, wanted: dict[str, str],
                 targets: dict[str, torch.Tensor], where: Callable[[str], Any], disk: DiskStore | None,
                 quantizer: Any) -> None:
    """Read the wanted tensors once each, in file order, into their places (a quantizer takes the ones it wants);
    disk tensors already in the model's dtype become views of the checkpoint file instead."""
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
        if quantizer is not None and place != "disk" and quantizer.load_tensor(model, name, tensor, place):
            continue
        if place == "disk":
            value = disk.put(name, tensor.to(dtype=target.dtype if target.is_floating_point() else None))
        else:
            value = tensor.to(device=place, dtype=target.dtype if target.is_floating_point() else None)
        _set_tensor(model, name, value)


def _make_the_rest(model: nn.Module, where: Callable[[str], Any]) -> None:
    """Initialise what the checkpoint did not fill and move computed buffers (rotary frequencies, made on the CPU)
    to the device their module was placed on (the CPU for disk-offloaded modules)."""
    def memory_device(name: str) -> torch.device:  # where a tensor made here (init, computed buffer) lives
        place = where(name)
        return torch.device("cpu") if place == "disk" else place

    initialise_meta(model, memory_device)
    for module_name, module in model.named_modules():
        for name, buf in module.named_buffers(recurse=False):
            target = memory_device(f"{module_name}.{name}" if module_name else name)
            if buf is not None and buf.device != target:
                module._buffers[name] = buf.to(target)


def _config_file(model: nn.Module) -> str:
    """How messages name the config a model was built from: its file when it was read from one."""
    path = getattr(getattr(model, "config", None), "_config_file", None)
    return f"'{path}'" if path else "the config"


def _files(reader: Any, limit: int = 3) -> str:
    paths = list(getattr(reader, "paths", []))
    shown = ", ".join(f"'{p}'" for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more file(s)" if len(paths) > limit else "")


def _some(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def check_config_fits(config: Any, reader: Any) -> None:
    """Before a skeleton is built: a config whose layer counts (the keys its class's `value_rules` call "layers")
    exceed twice the blocks the checkpoint's tensor names number cannot match it — more than half of its blocks
    would be random — so it fails here, at once, instead of after building (and initialising) them all."""
    rules: dict[str, str] = {}
    for klass in reversed(type(config).__mro__):
        rules.update(klass.__dict__.get("value_rules", {}))
    names = list(getattr(reader, "infos", {}))
    if not names:
        return  # an empty checkpoint is reported by load_into, with what it lacks
    blocks = 1 + max((int(m) for name in names for m in _INDEX_SEGMENT.findall(name)), default=-1)
    for key, kind in rules.items():
        value = config.__dict__.get(key)
        if kind.startswith("layers") and isinstance(value, int) and value > max(2 * blocks, 1):
            raise ConfigError(
                f"{_config_file_of(config)} sets {key}={value}, but the checkpoint ({_files(reader)}) holds "
                f"{'no numbered blocks' if blocks == 0 else f'at most {blocks} numbered blocks'}: most of the model "
                f"would be random. Fix {key} in the config, or load the checkpoint the config was written for."
            )


def _config_file_of(config: Any) -> str:
    path = getattr(config, "_config_file", None)
    return f"The config file '{path}'" if path else "The config"


def _check_coverage(model: nn.Module, reader: Any, targets: dict[str, Any], supplied: set[str],
                    config_file: str) -> None:
    """Refuse a load that would return a model mostly made of fresh random weights: when no checkpoint tensor is a
    weight of this model, or when the checkpoint supplies less than MIN_SUPPLIED of the base model's own tensors
    (tied copies aside). A task head missing from a base checkpoint is outside the base model: it only warns."""
    if not targets:
        return
    ckpt = list(reader.infos)
    prefix = model.facts.base_model_prefix
    core = [n for n in targets if model.base_model is model or n.startswith(prefix + ".")] or list(targets)
    tied = set(model.active_ties()) if hasattr(model, "active_ties") else set()
    core = [n for n in core if n not in tied] or core
    got = sum(n in supplied for n in core)
    if supplied and got >= MIN_SUPPLIED * len(core):
        return
    expected = sorted(set(targets) - supplied)
    if not ckpt:
        what = "holds no tensors at all"
    elif not supplied:
        what = f"holds {len(ckpt)} tensor(s), none of them a weight of {type(model).__name__} (it has {_some(ckpt)})"
    else:
        what = (f"supplies only {got} of the {len(core)} tensors of {type(model).__name__}'s base model (missing "
                f"{_some([n for n in core if n not in supplied])})")
    raise LoadingError(
        f"The checkpoint {_files(reader)} {what}; the model would come back mostly random. {type(model).__name__} "
        f"expects {_some(expected)}. Check that the config ({config_file}) and its model_type describe this "
        "checkpoint, and that every weight file is complete."
    )


def _check_damaged_names(reader: Any, info: LoadingInfo, targets: dict[str, Any], to_model: Callable) -> None:
    """A checkpoint tensor the model does not use whose name differs in exactly one character from a weight the
    model is missing, with that weight's shape, is the missing weight under a damaged name (a flipped bit in the
    header): refuse the load rather than return that weight random."""
    missing = {}
    for name in info.missing_keys:
        missing.setdefault(len(name), []).append(name)
    for ckpt_name in info.unexpected_keys:
        mapped = to_model(ckpt_name)
        tinfo = reader.infos[ckpt_name]
        for name in missing.get(len(mapped), ()):
            if sum(a != b for a, b in zip(mapped, name)) == 1 and tuple(targets[name].shape) == tuple(tinfo.shape):
                raise CorruptCheckpointError(
                    f"'{tinfo.path}' holds a tensor named {ckpt_name!r}, which the model does not have, and lacks "
                    f"the weight {name!r} of the same shape, one character away: the name was damaged. "
                    "Re-download or re-save the checkpoint."
                )


def _log_report(model: nn.Module, reader: Any, info: LoadingInfo) -> None:
    """Warn, as the reference does, about weights the checkpoint lacked (initialised afresh), tensors it held that
    the model does not use, and tensors of another shape (with ignore_mismatched_sizes)."""
    name, where = type(model).__name__, _files(reader)
    if info.missing_keys:
        logger.warning("Some weights of %s were not in the checkpoint %s and are newly initialised: %s. Train the "
                       "model before using it for predictions, or check the checkpoint.", name, where,
                       _some(info.missing_keys, 20))
    if info.unexpected_keys:
        logger.warning("Some tensors of the checkpoint %s were not used by %s: %s.", where, name,
                       _some(info.unexpected_keys, 20))
    if info.mismatched_keys:
        logger.warning("Some weights of %s had another shape in the checkpoint %s and are newly initialised: %s.",
                       name, where, ", ".join(f"'{n}' (checkpoint {list(c)}, model {list(m)})"
                                              for n, c, m in info.mismatched_keys[:20]))


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
