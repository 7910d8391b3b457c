"""Quantize while loading (`quantization_config=TorchAoConfig(...)` or a dict with quant_method "torchao"), on our
own QuantizedLinear: each float weight is quantized the moment it is read, so the float model never exists."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import QuantizationError
from .base import QuantizationHandler, linear_layers, matches, replace_module
from .compressed import _compute_dtype, compressed_state, dequantize_model
from .config import TorchAoConfig
from .linear import QuantizedLinear
from .loading import release_pages, trim_memory

logger = logging.getLogger("pretrained")


class TorchAoHandler(QuantizationHandler):
    method = "torchao"
    config_class = TorchAoConfig

    def __init__(self, config: TorchAoConfig, pre_quantized: bool = False) -> None:
        super().__init__(config, pre_quantized)
        if pre_quantized:
            raise QuantizationError(
                "This checkpoint was saved by torchao (its config.json says quant_method 'torchao'); its weights are "
                "torchao tensor subclasses, which pretrained does not read. Load the unquantized checkpoint with "
                "quantization_config=TorchAoConfig(...), or save it as compressed-tensors.")
        self.pending: dict[str, QuantizedLinear] = {}
        self.from_embeddings: str | None = None  # an untied head to quantize from the input embeddings

    @classmethod
    def parse_config(cls, value: Any) -> TorchAoConfig:
        if isinstance(value, TorchAoConfig):
            return value
        if isinstance(value, Mapping):
            return TorchAoConfig.from_dict(value)
        if hasattr(value, "quant_type"):  # the reference's TorchAoConfig object, read as data
            data = value.to_dict() if hasattr(value, "to_dict") else dict(vars(value))
            if not isinstance(data.get("quant_type"), (str, Mapping)):
                data["quant_type"] = value.quant_type
            return TorchAoConfig.from_dict(data)
        raise QuantizationError(f"Cannot read a torchao quantization_config from {value!r}.")

    @property
    def skip(self) -> tuple[str, ...]:
        names = self.config.modules_to_not_convert
        return tuple(names) if names is not None else ("lm_head",)

    def _head_name(self, model: nn.Module) -> str | None:
        get_out = getattr(model, "get_output_embeddings", None)
        head = get_out() if callable(get_out) else None
        if head is None:
            return None
        return next((n for n, m in model.named_modules() if m is head), None)

    def prepare(self, model: nn.Module) -> None:
        cfg = self.config
        compute = _compute_dtype(model)
        head = self._head_name(model)
        head_bits = cfg.lm_head_bits or (cfg.bits if cfg.include_input_output_embeddings else None)
        skip = tuple(s for s in self.skip if not (head_bits and head and matches(head, (s,))))
        facts = getattr(model, "facts", None)  # layers a family keeps in float32 stay float (as the reference does)
        skip += tuple(getattr(facts, "keep_in_fp32_modules", ()) or ())
        if head_bits and head and getattr(model.config, "tie_word_embeddings", False):
            model.config.tie_word_embeddings = False  # a quantized head is a separate weight (the reference unties)
            self.from_embeddings = head
        chosen = list(linear_layers(model, skip))
        chosen += [(n, m) for n, m in model.named_modules()  # GPT-2's Conv1D: a Linear stored transposed
                   if type(m).__name__ == "Conv1D" and hasattr(m, "nf") and not matches(n, skip)]
        if head_bits and head and all(n != head for n, _ in chosen):
            module = model.get_submodule(head)
            if type(module) is nn.Linear:
                chosen.append((head, module))
        for name, module in chosen:
            bits = head_bits if name == head and head_bits else cfg.bits
            conv = type(module) is not nn.Linear
            in_features, out_features = (module.nx, module.nf) if conv else (module.in_features, module.out_features)
            new = QuantizedLinear(in_features, out_features, module.bias is not None, bits=bits,
                                  group_size=cfg.group_size if bits == 4 else None, compute_dtype=compute,
                                  device="meta", dtype=module.weight.dtype, name=name, transposed=conv,
                                  symmetric=cfg.symmetric or bits == 8)
            new._float_dtype = module.weight.dtype
            new.__dict__["_float_module"] = module  # the meta original, not a child: for a layer not in the file
            replace_module(model, name, new)
            self.pending[name] = new
        if not self.pending:
            raise QuantizationError(f"{type(model).__name__} has no Linear layer to quantize (after "
                                    f"modules_to_not_convert={list(self.skip)}).")

    def load_tensor(self, model: nn.Module, name: str, tensor: torch.Tensor, device: torch.device) -> bool:
        prefix, _, leaf = name.rpartition(".")
        module = self.pending.get(prefix)
        if module is None or leaf != "weight":
            return False
        module.set_weight(tensor, device)
        release_pages(tensor)  # the float weight's file pages: not needed any more
        del self.pending[prefix]
        return True

    def finish(self, model: nn.Module, loaded: set[str]) -> None:
        if self.from_embeddings in self.pending:  # the untied head: quantized from the input embeddings
            source = model.get_input_embeddings().weight
            if not source.is_meta:
                module = self.pending.pop(self.from_embeddings)
                module.set_weight(source.detach(), source.device)
                loaded.add(f"{self.from_embeddings}.weight")
        for name, module in self.pending.items():  # not in the checkpoint: float, initialised and reported
            logger.warning("'%s.weight' is not in the checkpoint: the layer stays in float (it is initialised, not "
                           "quantized from random values).", name)
            replace_module(model, name, module._float_module)
        self.pending = {}
        trim_memory()
        for module in model.modules():
            if isinstance(module, QuantizedLinear) and hasattr(module, "_float_module"):
                module.__dict__["_float_module"] = type(module._float_module)  # the class only (for dequantize)

    def serialize(self, model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return compressed_state(model)

    def dequantize(self, model: nn.Module) -> None:
        dequantize_model(model)
