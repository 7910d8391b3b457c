"""The contract between loading/saving and each quantization method.

A *method* is what a `quantization_config`'s `quant_method` names ("torchao", "compressed-tensors",
"bitsandbytes", "fp8"). Each is served by one `QuantizationHandler` subclass, found through `METHODS` (method ->
"module:Class" inside `pretrained.quantization`, imported only when that method is used). `quantizer_for(config,
pre_quantized)` turns whatever the user or config.json gave (a config object, or a dict with `quant_method`) into a
handler instance, or raises `QuantizationError` naming the method and the supported ones.

How `from_pretrained` drives a handler (in this order):

1. ``handler = quantizer_for(quantization_config, pre_quantized=<config.json carried it>)``
   (a config object passed by the user wins over none; config.json's wins over the user's, as in the reference,
   except that a user's config of the same method may adjust loading-only options).
2. ``handler.prepare(model)`` on the skeleton built on the meta device. It swaps the modules it quantizes for its
   own modules (use `linear_layers(model, handler.skip)` and `replace_module`), still on meta. A swapped module
   keeps a meta **placeholder** for each checkpoint tensor it will receive (quantize-while-loading: a meta
   `weight` of the float shape and the model's dtype, so load_into's shape checks, coverage and dtype conversion
   work unchanged), or declares the checkpoint's own low-bit tensors (see 3). It must refuse, with a
   QuantizationError naming the layer and why, any layer it cannot take (nothing skipped silently).
3. ``handler.checkpoint_targets(model)`` -> {model-side tensor name: meta tensor of the shape and dtype the
   checkpoint must hold}. These are added to (or replace) the model's state_dict entries in load_into's checks:
   that is how a pre-quantized checkpoint's names (`...weight_packed`, `...weight.absmax`, `...SCB`) are expected
   and shape-checked before a byte is read. Default: {} (the placeholders of 2 are enough). Floating targets get
   the checkpoint tensor converted to their dtype before `load_tensor` sees it; integer targets come as stored.
4. For every tensor read, load_into calls ``handler.load_tensor(model, name, tensor, device) -> bool`` first:
   True means the handler took it (quantized it and/or stored it in its module, on `device`, a torch.device); False
   means load it as usual. A handler must take every name it declared in 3 (they are not model tensors). `device`
   is never "disk": from_pretrained refuses a device_map with "disk" for a quantized load.
5. ``handler.finish(model, loaded)`` once all tensors were read (`loaded`: the model-side names that came from
   the checkpoint, including those of 3). Repack what needed every piece (e.g. packed int32 -> kernel layout, a
   bitsandbytes quant state), and make sure *no tensor of a swapped module is left on meta*: a layer the
   checkpoint did not supply is turned back into a plain float module on meta (it is then initialised and
   reported missing like any other weight) — never quantized from random values, never silently dropped.
6. The model gets ``model.hf_quantizer = handler`` and ``model.is_quantized = True``; ``config.quantization_config``
   becomes ``handler.to_dict()``.

Afterwards:

- ``handler.serialize(model) -> (state_dict, quantization_config dict)``: what save_pretrained writes (names and
  layout of the ecosystem's format for that method) and the config.json entry that describes it. A handler that
  cannot write its format raises QuantizationError (never writes low-bit tensors without their config).
- ``handler.dequantize(model)``: every swapped module back to an nn.Linear (or the family's float module) holding
  the dequantized weight in the handler's compute dtype; the model is then a plain float model.

A new method: subclass QuantizationHandler in its own module, set `method` and `config_class`, implement the
methods above (prepare, load_tensor, finish, serialize, dequantize; checkpoint_targets when pre-quantized
checkpoints hold names other than the placeholders), and add one line to METHODS. Nothing else is needed.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Container, Iterable, Iterator, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import QuantizationError

# quant_method -> "module:HandlerClass" inside pretrained.quantization (imported on first use)
METHODS: dict[str, str] = {
    "torchao": "torchao:TorchAoHandler",
    "compressed-tensors": "compressed:CompressedTensorsHandler",
    "bitsandbytes": "bnb:BitsAndBytesHandler",
    "fp8": "fp8:Fp8Handler",
}
# names the reference writes in config.json for a method, and what we call it
ALIASES = {"compressed_tensors": "compressed-tensors", "bnb": "bitsandbytes", "bitsandbytes_4bit": "bitsandbytes",
           "bitsandbytes_8bit": "bitsandbytes", "torch_ao": "torchao"}

DEFAULT_SKIP = ("lm_head",)  # output heads stay in float unless asked; embeddings are never nn.Linear


def supported_methods() -> str:
    return ", ".join(f"'{m}'" for m in METHODS)


def method_of(config: Any) -> str:
    """The `quant_method` of a config object or dict, normalised (raises QuantizationError if there is none)."""
    if isinstance(config, Mapping):
        method = config.get("quant_method")
    else:
        method = getattr(config, "quant_method", None)
    method = getattr(method, "value", method)  # an enum member
    if not isinstance(method, str) or not method:
        raise QuantizationError(
            f"The quantization_config {_short(config)} has no 'quant_method'; give one of {supported_methods()} "
            "(e.g. TorchAoConfig('int4_weight_only') or {'quant_method': 'torchao', 'quant_type': "
            "'int8_weight_only'}).")
    method = method.strip().lower()
    return ALIASES.get(method, method)


def handler_class(method: str) -> type[QuantizationHandler]:
    if method not in METHODS:
        raise QuantizationError(
            f"quant_method '{method}' is not supported; pretrained supports {supported_methods()}. Load the "
            "unquantized checkpoint, or convert it with the tool that made it.")
    module, _, name = METHODS[method].partition(":")
    try:
        return getattr(importlib.import_module(f".{module}", __package__), name)
    except (ImportError, AttributeError) as e:
        raise QuantizationError(f"quant_method '{method}' cannot be used here: {e}") from e


def quantizer_for(config: Any, pre_quantized: bool = False) -> QuantizationHandler:
    """A handler for `config` (a config object of any method, or a dict with `quant_method`)."""
    if isinstance(config, QuantizationHandler):
        return config
    method = method_of(config)
    cls = handler_class(method)
    return cls(cls.parse_config(config), pre_quantized=pre_quantized)


def _short(config: Any, limit: int = 200) -> str:
    text = repr(dict(config)) if isinstance(config, Mapping) else repr(config)
    return text if len(text) <= limit else text[:limit] + "..."


class QuantizationHandler:
    """One quantization method; see the module docstring for when each method is called."""

    method: ClassVar[str] = ""
    config_class: ClassVar[type | None] = None  # the user-facing config class (parse_config builds one)
    reader: Any = None  # set by load_into before checkpoint_targets: the checkpoint's reader (`.infos`, `.read`)

    def __init__(self, config: Any, pre_quantized: bool = False) -> None:
        self.config = config
        self.pre_quantized = pre_quantized

    # -- config --------------------------------------------------------------------------------
    @classmethod
    def parse_config(cls, value: Any) -> Any:
        """`value` (this method's config object, or a dict with `quant_method`) -> this method's config object.
        Default: a dict goes through `config_class.from_dict`, an instance of config_class is kept."""
        if cls.config_class is not None and isinstance(value, cls.config_class):
            return value
        if isinstance(value, Mapping) and cls.config_class is not None and hasattr(cls.config_class, "from_dict"):
            return cls.config_class.from_dict(dict(value))
        if cls.config_class is not None and hasattr(value, "to_dict"):
            return cls.config_class.from_dict(dict(value.to_dict()))
        raise QuantizationError(f"Cannot read a '{cls.method}' quantization_config from {_short(value)}.")

    def take_loading_options(self, requested: Any) -> bool:
        """A pre-quantized checkpoint loaded with a `quantization_config=` of the same method: take its
        loading-only options (fp8: `dequantize`, `requantize`) and return True, or False to have it ignored."""
        return False

    def to_dict(self) -> dict[str, Any]:
        """The `quantization_config` entry of config.json for the model as loaded."""
        return dict(self.config.to_dict()) if hasattr(self.config, "to_dict") else dict(self.config)

    @property
    def skip(self) -> tuple[str, ...]:
        """Module names (or name patterns) left in float: the config's `modules_to_not_convert`, else DEFAULT_SKIP."""
        names = getattr(self.config, "modules_to_not_convert", None)
        return tuple(names) if names is not None else DEFAULT_SKIP

    # -- loading -------------------------------------------------------------------------------
    def prepare(self, model: nn.Module) -> None:
        raise NotImplementedError

    def checkpoint_targets(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {}

    def load_tensor(self, model: nn.Module, name: str, tensor: torch.Tensor, device: torch.device) -> bool:
        raise NotImplementedError

    def finish(self, model: nn.Module, loaded: set[str]) -> None:
        pass

    # -- afterwards ----------------------------------------------------------------------------
    def serialize(self, model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        raise QuantizationError(f"Models quantized with '{self.method}' cannot be saved by pretrained yet; "
                                "call model.dequantize() first to save them in float.")

    def dequantize(self, model: nn.Module) -> None:
        raise NotImplementedError


# ---- helpers for handlers --------------------------------------------------------------------------------------
def matches(name: str, patterns: tuple[str, ...] | list[str]) -> bool:
    """True when module `name` is named by one of `patterns`: equal, a dotted suffix/prefix of it (`lm_head`,
    `model.layers.0.mlp`), or a regular expression (`re:...`) that matches it."""
    for pattern in patterns:
        if pattern.startswith("re:"):
            if re.match(pattern[3:], name):
                return True
        elif name == pattern or name.endswith("." + pattern) or name.startswith(pattern + ".") or (
                "." + pattern + ".") in ("." + name + "."):
            return True
    return False


def linear_layers(model: nn.Module,
                  skip: tuple[str, ...] | list[str] = DEFAULT_SKIP) -> Iterator[tuple[str, nn.Linear]]:
    """(name, module) for every nn.Linear of `model` not named by `skip`, and not the model's output embeddings
    when those are tied to the input embeddings (quantizing one side of a tie would untie it)."""
    tied_out = None
    get_out = getattr(model, "get_output_embeddings", None)
    if callable(get_out) and getattr(getattr(model, "config", None), "tie_word_embeddings", False):
        tied_out = get_out()
    for name, module in list(model.named_modules()):
        if type(module) is nn.Linear and module is not tied_out and not matches(name, tuple(skip)):
            yield name, module


def split_piece(name: str, pieces: Iterable[str], layers: Container[str]) -> tuple[str, str] | None:
    """(layer, piece) when checkpoint tensor `name` is `<layer>.<piece>` for one of `layers` and `pieces`
    (`model.layers.0.mlp.up_proj.weight.absmax` -> ("model.layers.0.mlp.up_proj", "weight.absmax")), else None."""
    for piece in pieces:
        layer = name[: -len(piece) - 1]
        if name.endswith("." + piece) and layer in layers:
            return layer, piece
    return None


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, leaf, new)


def module_and_leaf(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module a tensor name belongs to and the tensor's own name (`a.b.weight` -> (a.b, 'weight'))."""
    module_name, _, leaf = name.rpartition(".")
    return (model.get_submodule(module_name) if module_name else model), leaf
