"""The user-facing quantization configs that are plain data: `TorchAoConfig` (the reference's weight-only forms,
run on our own int8/int4 layers, no torchao needed) and `CompressedTensorsConfig` (what a compressed-tensors
checkpoint's config.json carries)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from ..errors import QuantizationError

_TORCHAO_TYPES = {  # the reference's string forms and config-class names -> bits
    "int4_weight_only": 4, "int8_weight_only": 8,
    "Int4WeightOnlyConfig": 4, "Int8WeightOnlyConfig": 8,
}
_UNSUPPORTED_TORCHAO = ("int8_dynamic_activation_int8_weight", "int8_dynamic_activation_int4_weight",
                        "float8_weight_only", "float8_dynamic_activation_float8_weight", "autoquant")


class TorchAoConfig:
    """Weight-only int8 (per output channel) or int4 (group-wise, symmetric) quantization applied while loading.

    `TorchAoConfig("int4_weight_only", group_size=128)`, `TorchAoConfig("int8_weight_only")`, or with the
    reference's config objects (`Int4WeightOnlyConfig(group_size=64)`, `Int8WeightOnlyConfig()`: read by class name
    and `group_size`, torchao is never imported), or their serialized dict form.

    - `group_size`: int4 only; 32, 64, 128 (default) or 256.
    - `modules_to_not_convert`: module names (or `re:` patterns) left in float; default `["lm_head"]`.
    - `include_input_output_embeddings`: quantize the output head (`lm_head`) too, with the same scheme (input
      embeddings stay float: they are lookups, not matmuls). A head tied to the input embeddings is untied.
    - `lm_head_bits`: 8 or 4 quantizes the output head with that many bits whatever the body uses (e.g. int4 body,
      int8 head: most of the head's speed at little cost in accuracy). Our own option.
    - `symmetric`: int4 only. True (default): w ~= q * scale, each group's scale (its sign included) chosen by
      least squared error (per-layer cosine ~0.9952 at group 128 on Gaussian weights). False: asymmetric (an
      integer zero point per group, compressed-tensors' rule) with each group's range chosen among a few shrinkings
      by least squared error, then its scale refitted: ~0.9955, slower to load, saved with `weight_zero_point`
      (which transformers 5 cannot load). Our own option.
    """

    quant_method = "torchao"

    def __init__(self, quant_type: Any = "int4_weight_only", modules_to_not_convert: list[str] | None = None,
                 include_input_output_embeddings: bool = False, untie_embedding_weights: bool = False,
                 group_size: int | None = None, lm_head_bits: int | None = None, symmetric: bool = True,
                 **kwargs: Any) -> None:
        self.quant_type_kwargs = dict(kwargs.pop("quant_type_kwargs", None) or {})
        kwargs.pop("quant_method", None)
        self.quant_type, found_group = self._read_quant_type(quant_type)
        self.group_size = group_size or self.quant_type_kwargs.get("group_size") or found_group
        if self.bits == 4:
            self.group_size = int(self.group_size or 128)
        elif self.group_size not in (None, -1):
            self.group_size = None  # int8 weight-only is per channel
        self.modules_to_not_convert = (list(modules_to_not_convert) if modules_to_not_convert is not None
                                       else None)
        self.include_input_output_embeddings = bool(include_input_output_embeddings)
        self.untie_embedding_weights = bool(untie_embedding_weights)
        if lm_head_bits not in (None, 4, 8):
            raise QuantizationError(f"TorchAoConfig: lm_head_bits must be 4, 8 or None, got {lm_head_bits!r}.")
        self.lm_head_bits = lm_head_bits
        self.symmetric = bool(symmetric)
        unknown = sorted(k for k in kwargs if k not in ("layout", "use_hqq", "version", "zero_point_domain",
                                                          "set_inductor_config", "packing_format",
                                                          "int4_packing_format", "int4_choose_qparams_algorithm"))
        if unknown:
            raise QuantizationError(f"TorchAoConfig got arguments it does not know: {', '.join(unknown)}.")

    @staticmethod
    def _read_quant_type(quant_type: Any) -> tuple[str, int | None]:
        """A string, a config object of the reference (by class name), or its serialized form
        ({"default": {"_type": ..., "_data": {...}}}) -> (our string form, its group size if it names one)."""
        group = None
        if isinstance(quant_type, Mapping):
            entry = quant_type.get("default", quant_type) if "_type" not in quant_type else quant_type
            if not isinstance(entry, Mapping) or "_type" not in entry:
                raise QuantizationError(f"TorchAoConfig: cannot read quant_type {dict(quant_type)!r}; give "
                                        "'int4_weight_only' or 'int8_weight_only'.")
            name = entry["_type"]
            group = (entry.get("_data") or {}).get("group_size")
        elif isinstance(quant_type, str):
            name = quant_type
        else:
            name = type(quant_type).__name__
            group = getattr(quant_type, "group_size", None)
        if name in _UNSUPPORTED_TORCHAO:
            raise QuantizationError(f"TorchAoConfig quant_type '{name}' is not supported (activations are not "
                                    "quantized here); use 'int4_weight_only' or 'int8_weight_only'.")
        if name not in _TORCHAO_TYPES:
            raise QuantizationError(f"TorchAoConfig quant_type '{name}' is not supported; use 'int4_weight_only' "
                                    "(group_size 32/64/128/256) or 'int8_weight_only'.")
        bits = _TORCHAO_TYPES[name]
        return ("int4_weight_only" if bits == 4 else "int8_weight_only"), group

    @property
    def bits(self) -> int:
        return _TORCHAO_TYPES[self.quant_type]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TorchAoConfig:
        data = dict(data)
        data.pop("quant_method", None)
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        kwargs = dict(self.quant_type_kwargs)
        if self.group_size:
            kwargs["group_size"] = self.group_size
        out = {"quant_method": "torchao", "quant_type": self.quant_type, "quant_type_kwargs": kwargs,
               "modules_to_not_convert": self.modules_to_not_convert,
               "include_input_output_embeddings": self.include_input_output_embeddings,
               "untie_embedding_weights": self.untie_embedding_weights}
        if self.lm_head_bits:
            out["lm_head_bits"] = self.lm_head_bits
        if not self.symmetric:
            out["symmetric"] = False
        return out

    def __repr__(self) -> str:
        return f"TorchAoConfig({self.to_dict()})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TorchAoConfig) and other.to_dict() == self.to_dict()


class CompressedTensorsConfig:
    """The `quantization_config` of a compressed-tensors checkpoint, kept as the data it is (every key round-trips
    into the config.json we write). Only its weight schemes are read: see compressed.py."""

    quant_method = "compressed-tensors"

    def __init__(self, **data: Any) -> None:
        data.setdefault("quant_method", "compressed-tensors")
        self.data = copy.deepcopy(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompressedTensorsConfig:
        if not isinstance(data, Mapping):
            raise QuantizationError(f"A compressed-tensors quantization_config must be a JSON object, got "
                                    f"{type(data).__name__}.")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.data)

    @property
    def modules_to_not_convert(self) -> list[str]:
        return list(self.data.get("ignore") or [])

    def __repr__(self) -> str:
        return f"CompressedTensorsConfig({self.data})"
