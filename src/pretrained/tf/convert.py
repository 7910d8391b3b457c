"""PyTorch names and layouts <-> Keras weight paths and layouts: one generic rule, plus a family's exceptions as data.
numpy only (no framework): issue 19 lets PyTorch read `tf_model.h5` through it.

A Keras weight path is the 4.x TF weight name without the model's own first component and without `:0`
(`model/layers.0/self_attn/q_proj/kernel`, `bert/encoder/layer_._0/attention/self/query/kernel`). The rule, read
from the Keras side (every Keras weight names exactly one PyTorch tensor, so the mapping is exact both ways):

    Keras path component                    PyTorch name component
    "/"                                     "."
    layer_._N   (4.x's list items)          layer.N
    layers.0    (Mistral's list items)      layers.0        (already PyTorch's)
    leaf kernel                             weight, transposed ([in, out] <- [out, in]; a convolution kernel
                                            [*window, in, out] <- [out, in, *window])
    leaf embeddings                         weight
    leaf gamma / beta                       weight / bias
    leaf weight / bias / anything else      the same name

A family's exceptions (`tf_key_rules` on its TF class, a dict or `TFKeyRules`), the fields of the Flax side's
`KeyRules` (`flax/convert.py`, whose `match` meets the names the same way) plus one:
    renames:       {regex: replacement} on checkpoint (PyTorch) names when loading (legacy spellings);
    tied:          regexes of PyTorch names that have no Keras weight of their own while tied (`lm_head.weight`);
    ignore:        regexes of checkpoint names never reported as unexpected;
    keep_layout:   regexes of Keras paths whose kernel is stored in the PyTorch layout as is (GPT-2's Conv1D);
    pytorch_names: {regex on the Keras path: replacement} for paths the rule would name wrongly;
    squeeze:       regexes of Keras paths whose weight has leading size-1 dims the PyTorch tensor lacks (GPT-2's
                   Conv1D biases, (1, out) in Keras, (out,) in PyTorch).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..flax.convert import KeyRules, Match, match  # numpy only; shared with the Flax side

_LEAF = {"kernel": "weight", "embeddings": "weight", "gamma": "weight", "beta": "bias"}
_LIST_ITEM = re.compile(r"_\._(\d+)(?=/|$)")  # "layer_._3" -> "layer.3"


@dataclass(frozen=True)
class TFKeyRules(KeyRules):
    squeeze: tuple[str, ...] = ()

    @classmethod
    def of(cls, rules: Any) -> TFKeyRules:
        if rules is None:
            return cls()
        if isinstance(rules, TFKeyRules):
            return rules
        if isinstance(rules, KeyRules):
            return cls(**{f: getattr(rules, f) for f in KeyRules.__dataclass_fields__})
        unknown = set(rules) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"tf_key_rules has unknown keys {sorted(unknown)}; known: "
                             f"{', '.join(cls.__dataclass_fields__)}.")
        return cls(**{k: (dict(v) if isinstance(v, Mapping) else tuple(v)) for k, v in rules.items()})


def keras_path(weight_name: str) -> str:
    """A Keras variable path or 4.x weight name without the model's first component -> the path the rules read:
    the `:0` suffix removed ("model/norm/weight:0" -> "model/norm/weight")."""
    return weight_name[:-2] if weight_name.endswith(":0") else weight_name


@dataclass(frozen=True)
class TFSlot:
    """One Keras weight and the PyTorch tensor it is. `perm` turns the PyTorch array into the Keras layout
    (`np.transpose(pt, perm)`, None when the same), then it is reshaped to `keras_shape` (only ever dropping or
    adding leading size-1 dims: `squeeze` rules)."""

    path: str
    pytorch_name: str
    perm: tuple[int, ...] | None
    keras_shape: tuple[int, ...]
    squeezed: bool = False

    @property
    def pytorch_shape(self) -> tuple[int, ...]:
        shape = tuple(int(d) for d in self.keras_shape)
        if self.squeezed:
            while len(shape) > 1 and shape[0] == 1:
                shape = shape[1:]
        if self.perm is not None:
            inverse = np.argsort(self.perm)
            shape = tuple(shape[i] for i in inverse)
        return shape

    def transposed_shape(self, pytorch_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape a PyTorch tensor of `pytorch_shape` has after this slot's transpose (before any reshape)."""
        return tuple(pytorch_shape) if self.perm is None else tuple(pytorch_shape[i] for i in self.perm)

    def fits(self, pytorch_shape: tuple[int, ...]) -> bool:
        return tuple(pytorch_shape) == self.pytorch_shape

    def to_keras(self, array: np.ndarray) -> np.ndarray:
        out = array if self.perm is None else np.transpose(array, self.perm)
        return out.reshape(self.keras_shape) if tuple(out.shape) != tuple(self.keras_shape) else out

    def to_pytorch(self, array: np.ndarray) -> np.ndarray:
        if self.squeezed:
            array = array.reshape(self.transposed_shape(self.pytorch_shape))
        return array if self.perm is None else np.transpose(array, tuple(np.argsort(self.perm)))


def pytorch_name(path: str, rules: TFKeyRules | None = None) -> str:
    """The PyTorch name of the Keras weight at `path` (see the module's table)."""
    rules = rules or TFKeyRules()
    for pattern, replacement in rules.pytorch_names.items():
        if re.search(pattern, path):
            return re.sub(pattern, replacement, path)
    *parents, leaf = _LIST_ITEM.sub(r".\1", path).split("/")
    return ".".join((*parents, _LEAF.get(leaf, leaf)))


def slot(path: str, shape: tuple[int, ...], rules: TFKeyRules | None = None) -> TFSlot:
    """Where the Keras weight at `path` (of `shape`) sits in a PyTorch-layout checkpoint."""
    rules = rules or TFKeyRules()
    path = keras_path(path)
    leaf = path.rsplit("/", 1)[-1]
    ndim = len(shape)
    perm = None
    if leaf == "kernel" and ndim >= 2 and not any(re.search(p, path) for p in rules.keep_layout):
        perm = (1, 0) if ndim == 2 else (*range(2, ndim), 1, 0)
    squeezed = any(re.search(p, path) for p in rules.squeeze)
    return TFSlot(path, pytorch_name(path, rules), perm, tuple(int(d) for d in shape), squeezed)


def slots(shapes: Mapping[str, Any], rules: TFKeyRules | None = None) -> dict[str, TFSlot]:
    """PyTorch name -> TFSlot for every Keras weight (`shapes`: Keras path -> shape or anything with `.shape`)."""
    out: dict[str, TFSlot] = {}
    for path, s in shapes.items():
        sl = slot(path, tuple(getattr(s, "shape", s)), rules)
        if sl.pytorch_name in out:
            raise ValueError(f"Keras weights {out[sl.pytorch_name].path} and {sl.path} both map to the PyTorch name "
                             f"'{sl.pytorch_name}'; add a pytorch_names rule for one of them.")
        out[sl.pytorch_name] = sl
    return out


def pytorch_state(weights: Mapping[str, np.ndarray], rules: TFKeyRules | None = None) -> dict[str, np.ndarray]:
    """The PyTorch-layout state dict of Keras weights (Keras path -> array): names by the rule, arrays laid out
    back (views where possible)."""
    return {name: sl.to_pytorch(np.asarray(weights[sl.path]))
            for name, sl in slots({keras_path(p): np.shape(a) for p, a in weights.items()}, rules).items()}


def keras_state(state: Mapping[str, np.ndarray], shapes: Mapping[str, Any],
                rules: TFKeyRules | None = None) -> dict[str, np.ndarray]:
    """Keras weights (path -> array) from a PyTorch state dict, for the Keras paths and shapes in `shapes`
    (PyTorch names that meet no Keras weight are left out; see `match` for prefixes and renames)."""
    table = slots(shapes, rules)
    return {table[name].path: table[name].to_keras(np.asarray(state[name])) for name in state if name in table}


__all__ = ["KeyRules", "Match", "TFKeyRules", "TFSlot", "keras_path", "keras_state", "match", "pytorch_name",
           "pytorch_state", "slot", "slots"]
