"""PyTorch names and layouts <-> Flax parameter paths and layouts: one generic rule, plus a family's exceptions as
data. numpy only (the TensorFlow classes reuse it), no framework.

The rule, read from the Flax side (every Flax parameter path names exactly one PyTorch tensor):

    Flax path                                  PyTorch name                          layout
    ("model", "layers", "0", "q_proj", "kernel") "model.layers.0.q_proj.weight"      transposed: [in, out] <- [out, in]
    (..., "embedding")                          "....weight"                          as is
    (..., "scale")  (LayerNorm)                 "....weight"                          as is
    (..., "weight") (RMSNorm), (..., "bias")    same name                             as is

A convolution kernel (more than 2 dims) is [*window, in, out] in Flax and [out, in, *window] in PyTorch. Going
from the Flax paths makes the mapping exact both ways (a square Linear is never ambiguous), and the Flax model's
expected paths come from `jax.eval_shape` of its init (no memory).

A family's exceptions (`flax_key_rules` on its Flax class, a dict or a `KeyRules`):
    renames: {regex: replacement} applied to checkpoint (PyTorch) names when loading (legacy spellings);
    tied:    regexes of checkpoint names that have no Flax parameter of their own while weights are tied (e.g.
             `lm_head.weight` when the head reuses the embedding): dropped silently when loading;
    ignore:  regexes of checkpoint names never reported as unexpected (old buffers);
    conv1d:  regexes of PyTorch names stored (in, out) (GPT-2's Conv1D): their Flax kernel is (out, in), so the
             rule's transpose applies to them unchanged; listed for the record;
    keep_layout: regexes of "/"-joined Flax paths whose kernel is stored in the PyTorch layout as is (no transpose).
    pytorch_names: {regex on the "/"-joined Flax path: replacement} for paths the rule would name wrongly.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

T = TypeVar("T")
_PYTORCH_LEAF = {"kernel": "weight", "embedding": "weight", "scale": "weight"}
_LEGACY_SUFFIXES = ((".gamma", ".weight"), (".beta", ".bias"))


@dataclass(frozen=True)
class KeyRules:
    renames: Mapping[str, str] = field(default_factory=dict)
    tied: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    conv1d: tuple[str, ...] = ()
    keep_layout: tuple[str, ...] = ()
    pytorch_names: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, rules: KeyRules | Mapping[str, Any] | None) -> KeyRules:
        if rules is None:
            return cls()
        if isinstance(rules, KeyRules):
            return rules
        unknown = set(rules) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ValueError(f"flax_key_rules has unknown keys {sorted(unknown)}; known: "
                             f"{', '.join(cls.__dataclass_fields__)}.")
        return cls(**{k: (dict(v) if isinstance(v, Mapping) else tuple(v)) for k, v in rules.items()})

    def is_tied(self, name: str) -> bool:
        return any(re.search(p, name) for p in self.tied)

    def is_ignored(self, name: str) -> bool:
        return any(re.search(p, name) for p in self.ignore)


@dataclass(frozen=True)
class Slot:
    """One Flax parameter and the PyTorch tensor it is: `perm` turns the PyTorch array into the Flax one
    (`np.transpose(pt, perm)`), None when the layouts are the same."""

    path: tuple[str, ...]
    pytorch_name: str
    perm: tuple[int, ...] | None

    def to_flax(self, array: np.ndarray) -> np.ndarray:
        return array if self.perm is None else np.transpose(array, self.perm)

    def to_pytorch(self, array: np.ndarray) -> np.ndarray:
        return array if self.perm is None else np.transpose(array, tuple(np.argsort(self.perm)))

    def pytorch_shape(self, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
        if self.perm is None:
            return tuple(flax_shape)
        inverse = np.argsort(self.perm)
        return tuple(int(flax_shape[i]) for i in inverse)


def slot(path: tuple[str, ...], ndim: int, rules: KeyRules | None = None) -> Slot:
    """Where the Flax parameter `path` (of `ndim` dims) sits in a PyTorch-layout checkpoint."""
    rules = rules or KeyRules()
    joined = "/".join(path)
    leaf = path[-1]
    name = ".".join((*path[:-1], _PYTORCH_LEAF.get(leaf, leaf)))
    for pattern, replacement in rules.pytorch_names.items():
        if re.search(pattern, joined):
            name = re.sub(pattern, replacement, joined)
            break
    perm = None
    if leaf == "kernel" and ndim >= 2 and not any(re.search(p, joined) for p in rules.keep_layout):
        perm = (1, 0) if ndim == 2 else (*range(2, ndim), 1, 0)
    return Slot(tuple(path), name, perm)


def slots(shapes: Mapping[tuple[str, ...], Any], rules: KeyRules | None = None) -> dict[str, Slot]:
    """PyTorch name -> Slot for every Flax parameter (`shapes`: path -> anything with `.shape`, or a shape)."""
    out = {}
    for path, s in shapes.items():
        ndim = len(getattr(s, "shape", s))
        sl = slot(path, ndim, rules)
        if sl.pytorch_name in out:
            raise ValueError(f"Flax parameters {'/'.join(out[sl.pytorch_name].path)} and {'/'.join(path)} both map "
                             f"to the PyTorch name '{sl.pytorch_name}'; add a pytorch_names rule for one of them.")
        out[sl.pytorch_name] = sl
    return out


@dataclass
class Match(Generic[T]):
    """How a checkpoint's names meet a model's: `found` checkpoint name -> model entry; `unexpected` checkpoint
    names that meet nothing (less the tied and ignored ones)."""

    found: dict[str, T]
    unexpected: list[str]


def match(model: Mapping[str, T], checkpoint: Iterable[str], prefix: str, sep: str,
          rules: KeyRules | None = None, pytorch_layout: bool = True) -> Match[T]:
    """Meet checkpoint names with a model's names (both spelled with `sep`), as the PyTorch loader does: the
    base-model `prefix` is added when the model has it and the checkpoint does not (a base checkpoint into a task
    model) and stripped in the opposite case; for PyTorch-layout names, the family's renames apply first and the
    legacy `.gamma`/`.beta` spell `.weight`/`.bias`."""
    rules = rules or KeyRules()
    checkpoint = list(checkpoint)
    fixes = [(re.compile(p), r) for p, r in rules.renames.items()] if pytorch_layout else []
    head = prefix + sep if prefix else None
    expects = bool(head) and any(k.startswith(head) for k in model)
    has = bool(head) and any(k.startswith(head) for k in checkpoint)
    found: dict[str, T] = {}
    unexpected: list[str] = []
    for original in checkpoint:
        key = original
        for pattern, replacement in fixes:
            key = pattern.sub(replacement, key)
        if expects and not has:
            key = head + key
        elif has and not expects and key.startswith(head):
            key = key[len(head):]
        if key not in model and pytorch_layout:
            for old, new in _LEGACY_SUFFIXES:
                if key.endswith(old) and key[: -len(old)] + new in model:
                    key = key[: -len(old)] + new
        if key in model:
            found[original] = model[key]
        elif not (pytorch_layout and rules.is_tied(original)) and not rules.is_ignored(original):
            unexpected.append(original)
    return Match(found, unexpected)


def pytorch_state(flat: Mapping[tuple[str, ...], np.ndarray], rules: KeyRules | None = None) -> dict[str, np.ndarray]:
    """The PyTorch-layout state dict of flat Flax parameters: names by the rule, arrays transposed back (views)."""
    out = {}
    for name, sl in slots({p: np.shape(a) for p, a in flat.items()}, rules).items():
        out[name] = sl.to_pytorch(np.asarray(flat[sl.path]))
    return out
