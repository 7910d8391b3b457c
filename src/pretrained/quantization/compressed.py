"""compressed-tensors checkpoints: loaded straight into our packed int8/int4 kernels, and what our quantized models
save (the portable format transformers and vLLM load).

Facts of the format (from the compressed-tensors package, read for its format only):
- config.json `quantization_config`: `quant_method: "compressed-tensors"`, `format` (global) and `config_groups`
  {group: {targets: [...], weights: {num_bits, type: "int", symmetric, strategy: "group"|"channel", group_size,
  ...}, input_activations, output_activations, format}}, `ignore` [...], `quantization_status: "compressed"`.
  A target is an exact module name, `re:<regex>` matched from the start of the name, or a class name ("Linear");
  when several groups match, an exact name wins over a regex, a regex over a class name. `ignore` uses the same
  forms.
- `pack-quantized`: per module `weight_packed` int32 [N, ceil(K * bits / 32)] (q + 2**(bits-1), element i of a
  row at bit i * bits, little-endian words), `weight_scale` [N, K / group] ([N, 1] per channel), `weight_shape`
  [2] = (N, K), `weight_zero_point` only when asymmetric. w = q * scale.
- `int-quantized` / `naive-quantized`: `weight` int8 [N, K] holding q itself, `weight_scale` as above.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import CorruptCheckpointError, QuantizationError
from .base import QuantizationHandler, replace_module
from .config import CompressedTensorsConfig
from .linear import DEFAULT_COMPUTE_DTYPE, INT4_GROUP_SIZES, QuantizedLinear, _cpu_int4_positions


PACKED_FORMATS = ("pack-quantized",)
INT_FORMATS = ("int-quantized", "naive-quantized")
SUPPORTED_FORMATS = PACKED_FORMATS + INT_FORMATS


# ---- packing -------------------------------------------------------------------------------------------------------
def pack_int32(q: torch.Tensor, bits: int) -> torch.Tensor:
    """q int8 [N, K] -> int32 [N, ceil(K * bits / 32)] (offset by 2**(bits-1), dense, little-endian)."""
    u = (q.to(torch.int16) + (1 << (bits - 1))).to(torch.uint8)
    n, k = u.shape
    if bits == 4:
        if k % 2:
            u = torch.nn.functional.pad(u, (0, 1))
        u = u[:, 0::2] | (u[:, 1::2] << 4)
    elif bits != 8:
        raise QuantizationError(f"Packing {bits}-bit values is not supported; use 4 or 8.")
    words = math.ceil(k * bits / 32)
    u = torch.nn.functional.pad(u, (0, words * 4 - u.shape[1])).contiguous()
    packed = u.view(torch.int32)
    return packed if sys.byteorder == "little" else packed.byteswap()  # pragma: no cover - big-endian hosts


def unpack_int32(packed: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """The inverse of pack_int32: int32 [N, W] -> q int8 [N, k]."""
    packed = packed.contiguous()
    raw = packed.view(torch.uint8) if sys.byteorder == "little" else packed.byteswap().view(torch.uint8)
    if bits == 4:
        raw = torch.stack([raw & 15, raw >> 4], dim=-1).reshape(raw.shape[0], -1)
    return (raw[:, :k].to(torch.int16) - (1 << (bits - 1))).to(torch.int8)


# ---- schemes -------------------------------------------------------------------------------------------------------
class Scheme:
    """One config group's weight scheme, checked against what our kernels run."""

    def __init__(self, group: str, data: Mapping[str, Any], default_format: str | None) -> None:
        weights = data.get("weights")
        self.group, self.targets = group, list(data.get("targets") or [])
        self.format = data.get("format") or default_format
        where = f"compressed-tensors config group '{group}'"
        if not isinstance(weights, Mapping):
            raise QuantizationError(f"The {where} quantizes no weights ({data.get('weights')!r}); only weight "
                                    "quantization (W4A16, W8A16) is supported.")
        if data.get("input_activations") or data.get("output_activations"):
            raise QuantizationError(f"The {where} also quantizes activations; pretrained runs weight-only "
                                    "schemes (W4A16, W8A16): use such a checkpoint, or its unquantized original.")
        self.bits = weights.get("num_bits")
        kind, self.strategy = weights.get("type", "int"), weights.get("strategy")
        self.group_size = weights.get("group_size")
        if kind != "int" or self.bits not in (4, 8):
            raise QuantizationError(f"The {where} holds {self.bits}-bit {kind} weights; supported: 4- and 8-bit int.")
        self.symmetric = bool(weights.get("symmetric", True))
        if not self.symmetric and (self.bits != 4 or self.strategy != "group" or self.format not in PACKED_FORMATS):
            raise QuantizationError(f"The {where} is asymmetric {self.bits}-bit {self.strategy} "
                                    f"'{self.format}'; asymmetric schemes are supported for 4-bit group-wise "
                                    "pack-quantized weights only.")
        if self.strategy not in ("group", "channel"):
            raise QuantizationError(f"The {where} uses strategy '{self.strategy}'; supported: 'group', 'channel'.")
        if self.strategy == "group" and self.bits == 8:
            raise QuantizationError(f"The {where} is 8-bit group-wise; torch's int8 kernel is per channel only.")
        if self.strategy == "group" and self.group_size not in INT4_GROUP_SIZES:
            raise QuantizationError(f"The {where} has group_size {self.group_size}; torch's int4 kernel takes "
                                    f"{', '.join(map(str, INT4_GROUP_SIZES))}.")
        if self.format not in SUPPORTED_FORMATS:
            raise QuantizationError(f"The {where} is stored as '{self.format}'; supported: "
                                    f"{', '.join(SUPPORTED_FORMATS)}.")

    def groups(self, in_features: int) -> int:
        return in_features // self.group_size if self.strategy == "group" else 1

    def kernel_group(self, in_features: int) -> int | None:
        """The int4 kernel's group size: a per-channel int4 scale is repeated over groups of the largest size
        that divides the row (exact)."""
        if self.bits == 8:
            return None
        if self.strategy == "group":
            return self.group_size
        for size in sorted(INT4_GROUP_SIZES, reverse=True):
            if in_features % size == 0:
                return size
        return INT4_GROUP_SIZES[-1]  # check_shape then names the layer


def _matches(name: str, module: nn.Module, target: str) -> int | None:
    """How specifically `target` names this module: 0 exact name, 1 regex, 2 class name; None when it does not."""
    if target.startswith("re:"):
        return 1 if re.match(target[3:], name) else None
    if target == name:
        return 0
    if any(klass.__name__ == target for klass in type(module).__mro__):
        return 2
    return None


def _ignored(name: str, module: nn.Module, ignore: list[str]) -> bool:
    return any(_matches(name, module, t) is not None for t in ignore)


def schemes_of(config: Mapping[str, Any]) -> list[Scheme]:
    groups = config.get("config_groups")
    if not isinstance(groups, Mapping) or not groups:
        raise QuantizationError("The compressed-tensors quantization_config has no config_groups; the checkpoint's "
                                "config.json is damaged or not a quantized checkpoint.")
    status = config.get("quantization_status", "compressed")
    if status != "compressed":
        raise QuantizationError(f"The compressed-tensors checkpoint has quantization_status '{status}': its weights "
                                "are not stored compressed. Save it compressed (compressed-tensors), or load the "
                                "float original.")
    return [Scheme(g, data, config.get("format")) for g, data in groups.items()]


def scheme_for(name: str, module: nn.Module, schemes: list[Scheme], ignore: list[str]) -> Scheme | None:
    if _ignored(name, module, ignore):
        return None
    best = None
    for scheme in schemes:
        for target in scheme.targets:
            rank = _matches(name, module, target)
            if rank is not None and (best is None or rank < best[0]):
                best = (rank, scheme)
    return best[1] if best else None


# ---- the handler ---------------------------------------------------------------------------------------------------
def _compute_dtype(model: nn.Module) -> torch.dtype:
    dtype = getattr(model, "dtype", torch.float32)
    return dtype if dtype in (torch.float16, torch.bfloat16) else DEFAULT_COMPUTE_DTYPE


class CompressedTensorsHandler(QuantizationHandler):
    """Pre-quantized compressed-tensors checkpoints (W4A16 / W8A16, symmetric int) into QuantizedLinear."""

    method = "compressed-tensors"
    config_class = CompressedTensorsConfig

    def __init__(self, config: Any, pre_quantized: bool = False) -> None:
        super().__init__(config, pre_quantized)
        if not pre_quantized:
            raise QuantizationError("A compressed-tensors quantization_config describes a checkpoint that is already "
                                    "quantized; to quantize while loading, pass TorchAoConfig('int4_weight_only') "
                                    "or TorchAoConfig('int8_weight_only').")
        self.schemes = schemes_of(config.data)
        self.ignore = list(config.data.get("ignore") or [])
        self.layers: dict[str, tuple[Scheme, dict[str, torch.Tensor]]] = {}

    def prepare(self, model: nn.Module) -> None:
        compute = _compute_dtype(model)
        for name, module in list(model.named_modules()):
            if type(module) is not nn.Linear:
                continue
            scheme = scheme_for(name, module, self.schemes, self.ignore)
            if scheme is None:
                continue
            new = QuantizedLinear(module.in_features, module.out_features, module.bias is not None,
                                  bits=scheme.bits, group_size=scheme.kernel_group(module.in_features),
                                  compute_dtype=compute, device="meta", dtype=module.weight.dtype,
                                  placeholder=False, name=name, symmetric=scheme.symmetric)
            new._float_dtype = module.weight.dtype
            replace_module(model, name, new)
            self.layers[name] = (scheme, {})

    def checkpoint_targets(self, model: nn.Module) -> dict[str, torch.Tensor]:
        out = {}
        for name, (scheme, _) in self.layers.items():
            module = model.get_submodule(name)
            n, k = module.out_features, module.in_features
            scale = torch.empty(n, scheme.groups(k), dtype=torch.float32, device="meta")
            if scheme.format in PACKED_FORMATS:
                out[f"{name}.weight_packed"] = torch.empty(n, math.ceil(k * scheme.bits / 32), dtype=torch.int32,
                                                           device="meta")
                out[f"{name}.weight_shape"] = torch.empty(2, dtype=torch.int64, device="meta")
                if not scheme.symmetric:  # packed along the output dimension
                    out[f"{name}.weight_zero_point"] = torch.empty(math.ceil(n * scheme.bits / 32), scheme.groups(k),
                                                                   dtype=torch.int32, device="meta")
            else:
                out[f"{name}.weight"] = torch.empty(n, k, dtype=torch.int8, device="meta")
            out[f"{name}.weight_scale"] = scale
        return out

    def _needed(self, scheme: Scheme) -> set[str]:
        if scheme.format not in PACKED_FORMATS:
            return {"weight", "weight_scale"}
        return {"weight_packed", "weight_shape", "weight_scale"} | (set() if scheme.symmetric
                                                                   else {"weight_zero_point"})

    def load_tensor(self, model: nn.Module, name: str, tensor: torch.Tensor, device: torch.device) -> bool:
        prefix, _, leaf = name.rpartition(".")
        layer = self.layers.get(prefix)
        if layer is None or leaf not in self._needed(layer[0]):
            return False
        scheme, pieces = layer
        pieces[leaf] = tensor
        if set(pieces) == self._needed(scheme):
            self._build(model.get_submodule(prefix), prefix, scheme, pieces, device)
            pieces.clear()
            pieces["done"] = True
        return True

    def _build(self, module: QuantizedLinear, name: str, scheme: Scheme, pieces: dict, device: torch.device) -> None:
        n, k = module.out_features, module.in_features
        if scheme.format in PACKED_FORMATS:
            shape = [int(v) for v in pieces["weight_shape"].tolist()]
            if shape != [n, k]:
                raise CorruptCheckpointError(f"'{name}.weight_shape' says {shape}, but the layer is [{n}, {k}]: the "
                                             "checkpoint does not belong to this config. Re-download it.")
            q = unpack_int32(pieces["weight_packed"], scheme.bits, k)
        else:
            q = pieces["weight"]
        low, high = -(1 << (scheme.bits - 1)), (1 << (scheme.bits - 1)) - 1
        if q.numel() and (int(q.min()) < low or int(q.max()) > high):
            raise CorruptCheckpointError(f"'{name}' holds values outside the {scheme.bits}-bit range: the checkpoint "
                                         "is damaged or its config describes another scheme.")
        scale = pieces["weight_scale"].float()
        zero = None
        if not scheme.symmetric:
            zero = unpack_int32(pieces["weight_zero_point"].t(), scheme.bits, n).t().contiguous()
        groups = k // module.group_size if module.bits == 4 else 1
        if scale.shape[1] != groups:  # per-channel int4: one scale repeated over the kernel's groups
            scale = scale.repeat_interleave(groups // scale.shape[1], dim=1)
        module.set_quantized(q, scale, device, zero)

    def finish(self, model: nn.Module, loaded: set[str]) -> None:
        for name, (scheme, pieces) in self.layers.items():
            if pieces.get("done"):
                continue
            if pieces:
                missing = sorted(f"{name}.{leaf}" for leaf in self._needed(scheme) - set(pieces))
                raise CorruptCheckpointError(f"The checkpoint holds part of the quantized layer '{name}' but lacks "
                                             f"{', '.join(missing)}. Re-download or re-save the checkpoint.")
            module = model.get_submodule(name)  # not in the checkpoint: a float layer, initialised and reported
            replace_module(model, name, _meta_linear(module))
        self.layers = {n: v for n, v in self.layers.items() if v[1].get("done")}
        from .loading import trim_memory

        trim_memory()

    def serialize(self, model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return compressed_state(model)

    def dequantize(self, model: nn.Module) -> None:
        dequantize_model(model)

    def to_dict(self) -> dict[str, Any]:
        return self.config.to_dict()


def _meta_linear(module: QuantizedLinear) -> nn.Linear:
    dtype = getattr(module, "_float_dtype", None) or (module.bias.dtype if module.bias is not None else None)
    return nn.Linear(module.in_features, module.out_features, bias=module.bias is not None, device="meta",
                     dtype=dtype)


# ---- saving and dequantizing (every handler built on QuantizedLinear) ----------------------------------------------
def quantized_layers(model: nn.Module) -> list[tuple[str, QuantizedLinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QuantizedLinear)]


def _scheme_dict(bits: int, group_size: int | None, symmetric: bool = True) -> dict[str, Any]:
    return {"num_bits": bits, "type": "int", "symmetric": symmetric,
            "strategy": "channel" if bits == 8 else "group", "group_size": None if bits == 8 else group_size,
            "block_structure": None, "dynamic": False, "actorder": None, "observer": "minmax",
            "observer_kwargs": {}}


def compressed_config(model: nn.Module) -> dict[str, Any]:
    """The `quantization_config` describing `model`'s QuantizedLinear layers in compressed-tensors terms."""
    layers = quantized_layers(model)
    if not layers:
        raise QuantizationError("The model holds no quantized layers; there is no quantized checkpoint to write.")
    transposed = [n for n, m in layers if m.transposed]
    if transposed:
        raise QuantizationError(f"Quantized layers stored transposed (GPT-2's Conv1D: {', '.join(transposed[:3])}) "
                                "have no compressed-tensors form that other libraries read; call model.dequantize() "
                                "and save in float, or keep the model in memory.")
    counts: dict[tuple[int, int | None, bool], list[str]] = {}
    for name, module in layers:
        counts.setdefault((module.bits, module.group_size, module.symmetric), []).append(name)
    main = max(counts, key=lambda key: len(counts[key]))
    groups = {"group_0": {"targets": ["Linear"], "weights": _scheme_dict(*main), "input_activations": None,
                          "output_activations": None, "format": "pack-quantized"}}
    for i, key in enumerate(k for k in counts if k != main):
        groups[f"group_{i + 1}"] = {"targets": sorted(counts[key]), "weights": _scheme_dict(*key),
                                    "input_activations": None, "output_activations": None,
                                    "format": "pack-quantized"}
    ignore = sorted(n for n, m in model.named_modules() if type(m) is nn.Linear)
    return {"quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
            "config_groups": groups, "ignore": ignore, "kv_cache_scheme": None, "global_compression_ratio": None,
            "sparsity_config": {}, "transform_config": {}}  # no "version": it names the library that wrote it


def compressed_tensors_of(module: QuantizedLinear) -> dict[str, torch.Tensor]:
    """One layer's tensors in the `pack-quantized` layout (local names)."""
    q, scale = module.int_weight()
    out = {"weight_packed": pack_int32(q, module.bits), "weight_scale": scale.contiguous(),
           "weight_shape": torch.tensor([module.out_features, module.in_features], dtype=torch.int64)}
    zero = module.zero_point()
    if zero is not None:  # packed along the output dimension, as compressed-tensors does
        out["weight_zero_point"] = pack_int32(zero.t().contiguous(), module.bits).t().contiguous()
    if module.bias is not None:
        out["bias"] = module.bias.detach().cpu()
    return out


def compressed_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, quantization_config) of a model with QuantizedLinear layers, in the `pack-quantized` layout."""
    config = compressed_config(model)
    state = model.state_dict()
    for name, module in quantized_layers(model):
        for leaf in list(module.state_dict()):
            state.pop(f"{name}.{leaf}", None)
        for leaf, tensor in compressed_tensors_of(module).items():
            state[f"{name}.{leaf}"] = tensor
    _cpu_int4_positions.cache_clear()  # up to a few hundred MB for a big model's shapes
    return state, config


def dequantize_model(model: nn.Module) -> None:
    for name, module in quantized_layers(model):
        dtype = getattr(module, "_float_dtype", None) or module.compute_dtype
        linear = module.to_linear(dtype)
        if module.transposed:  # back to the family's own transposed layer (GPT-2's Conv1D)
            original = module._float_module
            with torch.device("meta"):
                float_module = original(module.out_features, module.in_features)
            float_module.weight = nn.Parameter(linear.weight.detach().t().contiguous())
            float_module.bias = linear.bias
            linear = float_module
        replace_module(model, name, linear)
