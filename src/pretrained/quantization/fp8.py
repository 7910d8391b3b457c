"""fp8 block-wise checkpoints (`quant_method: "fp8"`: DeepSeek-V3/R1, Qwen3-FP8 and the reference's
`FineGrainedFP8Config`).

On disk, per quantized Linear `L`: `L.weight` float8_e4m3fn [out, in] and `L.weight_scale_inv` [ceil(out/bm),
ceil(in/bn)] for `weight_block_size` [bm, bn] (a scalar when the config has no block size: one scale per tensor),
float32 (bfloat16 also read; "ue8m0" checkpoints store powers of two as float8_e8m0fnu or as their uint8 exponent
bytes). `weight_scale_inv` is the multiplier that gives the real values back: w[i, j] = weight[i, j] *
weight_scale_inv[i // bm, j // bn] — the last block of a row or column may be partial. `L.activation_scale` (the
"static" activation scheme) is read and not needed: activations are never quantized here except on the GPU path,
which scales them dynamically.

What a load does with each layer, decided when its tensors arrive on their device:
- "dequantize" (CPUs, and GPUs without the kernel): w in the model's dtype (the product taken in float32, then
  rounded once, as the reference does). A model whose layers all went this way is a plain float model afterwards:
  no `quantization_config`, saves as float (a portable checkpoint, exactly the weights it holds).
- "int8" (`quantization_config=FineGrainedFP8Config(requantize="int8")`, or the dict `{"quant_method": "fp8",
  "requantize": "int8"}`): dequantized as above, then quantized per output channel into our int8 Linear (torch's
  packed kernel, half the memory of bf16); it then saves as compressed-tensors int8, like every int8 model of ours.
- "fp8" (CUDA GPUs whose torch.nn.functional.scaled_mm takes 128x128 weight blocks, i.e. Hopper with CUDA >= 12.9,
  for [128, 128] blocks and layer sizes that are multiples of 128): the fp8 weight stays as it is and runs through
  `scaled_mm` with activations quantized per 1x128 group; saves back in this layout, byte for byte. The kernel is
  checked once per load against the dequantized product; a GPU where it fails or disagrees dequantizes instead,
  with a warning that says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import CorruptCheckpointError, QuantizationError
from .base import DEFAULT_SKIP, QuantizationHandler, linear_layers, replace_module, split_piece
from .loading import release_pages, trim_memory

logger = logging.getLogger("pretrained")

FP8_MAX = 448.0  # largest finite float8_e4m3fn
WEIGHT_DTYPES = {getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n)}
E8M0 = getattr(torch, "float8_e8m0fnu", None)
SCALE_DTYPES = {torch.float32, torch.bfloat16, torch.float16, torch.uint8} | ({E8M0} if E8M0 is not None else set())
PIECES = ("weight", "weight_scale_inv", "activation_scale")
REQUANTIZE = (None, "int8")


class FineGrainedFP8Config:
    """The reference's `FineGrainedFP8Config` (what an fp8 checkpoint's config.json holds), plus `requantize="int8"`,
    a loading option of ours: re-quantize the fp8 weights into int8 per channel instead of dequantizing them.
    Quantizing a float checkpoint to fp8 while loading is not offered (use TorchAoConfig or BitsAndBytesConfig)."""

    quant_method = "fp8"

    def __init__(self, activation_scheme: str = "dynamic", weight_block_size: Any = (128, 128),
                 dequantize: bool = False, modules_to_not_convert: list[str] | None = None,
                 modules_to_convert: list[str] | None = None, scale_fmt: str = "float", expert_dtype: str = "fp8",
                 requantize: str | None = None, **kwargs: Any) -> None:
        if modules_to_not_convert is None and "ignored_layers" in kwargs:  # another writer's name for it
            modules_to_not_convert = kwargs.pop("ignored_layers")
        if not isinstance(activation_scheme, str) or activation_scheme.lower() not in ("dynamic", "static"):
            raise QuantizationError(f"fp8 quantization_config: activation_scheme={activation_scheme!r} is not "
                                    "'dynamic' or 'static'.")
        if weight_block_size is not None:
            if (not isinstance(weight_block_size, (list, tuple)) or len(weight_block_size) != 2
                    or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in weight_block_size)):
                raise QuantizationError(f"fp8 quantization_config: weight_block_size={weight_block_size!r} must be "
                                        "two positive integers [rows, columns] (or null: one scale per tensor).")
            weight_block_size = (int(weight_block_size[0]), int(weight_block_size[1]))
        if not isinstance(dequantize, bool):
            raise QuantizationError(f"fp8 quantization_config: dequantize must be true or false, not {dequantize!r}.")
        for key, value in (("modules_to_not_convert", modules_to_not_convert),
                           ("modules_to_convert", modules_to_convert)):
            if value is not None and (not isinstance(value, (list, tuple))
                                      or not all(isinstance(m, str) for m in value)):
                raise QuantizationError(f"fp8 quantization_config: {key} must be a list of module names, not "
                                        f"{value!r}.")
        if scale_fmt not in ("float", "ue8m0"):
            raise QuantizationError(f"fp8 quantization_config: scale_fmt={scale_fmt!r} is not 'float' or 'ue8m0'.")
        if expert_dtype not in ("fp8", "fp4"):
            raise QuantizationError(f"fp8 quantization_config: expert_dtype={expert_dtype!r} is not 'fp8' or 'fp4'.")
        if requantize not in REQUANTIZE:
            raise QuantizationError(f"fp8 quantization_config: requantize={requantize!r}; the choices are None "
                                    "(dequantize on CPUs, fp8 kernels on GPUs that have them) and 'int8'.")
        kwargs.pop("quant_method", None)
        self.activation_scheme = activation_scheme.lower()
        self.weight_block_size = weight_block_size
        self.dequantize = dequantize
        self.modules_to_not_convert = list(modules_to_not_convert) if modules_to_not_convert is not None else None
        self.modules_to_convert = list(modules_to_convert) if modules_to_convert is not None else None
        self.scale_fmt = scale_fmt
        self.expert_dtype = expert_dtype
        self.requantize = requantize
        self.extra = kwargs  # keys of other writers ("fmt": "e4m3", ...): kept, written back

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"quant_method": self.quant_method, "activation_scheme": self.activation_scheme,
                               "weight_block_size": list(self.weight_block_size) if self.weight_block_size else None}
        if self.modules_to_not_convert is not None:
            out["modules_to_not_convert"] = list(self.modules_to_not_convert)
        if self.modules_to_convert is not None:
            out["modules_to_convert"] = list(self.modules_to_convert)
        if self.scale_fmt != "float":
            out["scale_fmt"] = self.scale_fmt
        if self.expert_dtype != "fp8":
            out["expert_dtype"] = self.expert_dtype
        return {**out, **self.extra}

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> FineGrainedFP8Config:
        return cls(**dict(config))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FineGrainedFP8Config) and self.to_dict() == other.to_dict() and \
            (self.dequantize, self.requantize) == (other.dequantize, other.requantize)

    def __repr__(self) -> str:
        return f"FineGrainedFP8Config({self.to_dict()})"


# ---- numerics ----------------------------------------------------------------------------------------------------
def scale_values(scale: torch.Tensor) -> torch.Tensor:
    """A `weight_scale_inv` as float32 multipliers (ue8m0 exponent bytes: 2 ** (byte - 127))."""
    if scale.dtype == torch.uint8:
        return torch.exp2(scale.to(torch.float32) - 127.0)
    return scale.to(torch.float32)


def dequantize_fp8(weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype,
                   block: tuple[int, int] | None = None) -> torch.Tensor:
    """weight (fp8 [out, in]) times its block's multiplier, in float32, rounded once to `dtype`. `block`: the
    config's weight_block_size (the last block of a row or column may be partial); without it, the blocks are
    taken to divide the weight exactly."""
    out, inp = weight.shape
    s = scale_values(scale)
    w = weight.to(torch.float32)
    if s.numel() == 1:
        return (w * s.reshape(())).to(dtype)
    rows, cols = s.shape
    bm, bn = block if block is not None else (out // rows, inp // cols)
    if rows != -(-out // bm) or cols != -(-inp // bn):
        raise QuantizationError(f"fp8 scales {list(s.shape)} do not fit a [{out}, {inp}] weight in blocks of "
                                f"{[bm, bn]}.")
    if out == rows * bm and inp == cols * bn:  # whole blocks: a broadcast over a view, no expanded copy
        return (w.reshape(rows, bm, cols, bn) * s[:, None, :, None]).reshape(out, inp).to(dtype)
    full = s.repeat_interleave(bm, 0)[:out].repeat_interleave(bn, 1)[:, :inp]
    return (w * full).to(dtype)


def _scaled_mm_available(device: torch.device) -> bool:
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    F = torch.nn.functional
    if not hasattr(F, "scaled_mm") or not hasattr(F, "ScalingType"):
        return False
    cuda = tuple(int(p) for p in (torch.version.cuda or "0.0").split(".")[:2])
    return torch.cuda.get_device_capability(device)[0] == 9 and cuda >= (12, 9)


def _quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [m, k] -> (float8_e4m3fn [m, k], multipliers [m, k/128] in the column-major layout scaled_mm wants)."""
    m, k = x.shape
    groups = x.float().reshape(m, k // 128, 128)
    scale = groups.abs().amax(dim=-1).clamp(min=1e-12) / FP8_MAX
    q = (groups / scale[..., None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).reshape(m, k)
    return q, scale.t().contiguous().t()


class Fp8Linear(nn.Module):
    """y = x Wᵀ + b with W kept in float8_e4m3fn and 128x128 block multipliers, on `torch.nn.functional.scaled_mm`
    (activations quantized per 1x128 group as they come). CUDA (Hopper) only; see the module docstring."""

    def __init__(self, weight: torch.Tensor, scale_inv: torch.Tensor, bias: nn.Parameter | None,
                 dtype: torch.dtype) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.weight_scale_inv = nn.Parameter(scale_inv.to(torch.float32), requires_grad=False)
        self.bias = bias
        self.dtype = dtype
        cols = self.weight_scale_inv.shape[1]
        padded = torch.zeros(self.weight_scale_inv.shape[0], -(-cols // 4) * 4, device=weight.device)
        padded[:, :cols] = self.weight_scale_inv
        # [round_up(k/128, 4), n/128], column-major: how scaled_mm reads 128x128 block scales (moves with .to())
        self.register_buffer("_scale_b", padded.t(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        F = torch.nn.functional
        shape = x.shape
        xq, scale_a = _quantize_activations(x.reshape(-1, self.in_features))
        y = F.scaled_mm(xq, self.weight.t(), scale_a, F.ScalingType.BlockWise1x128, self._scale_b,
                        F.ScalingType.BlockWise128x128, output_dtype=torch.bfloat16)
        y = y.to(x.dtype).reshape(*shape[:-1], self.out_features)
        return y + self.bias.to(y.dtype) if self.bias is not None else y

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        return dequantize_fp8(self.weight, self.weight_scale_inv, dtype, (128, 128))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8 blocks 128x128"


# ---- the handler -------------------------------------------------------------------------------------------------
@dataclass
class Layer:
    original: nn.Linear
    expected: frozenset[str]
    pieces: dict[str, torch.Tensor] = field(default_factory=dict)
    mode: str | None = None  # "dequantize" | "int8" | "fp8" once assembled


class Fp8Handler(QuantizationHandler):
    method = "fp8"
    config_class = FineGrainedFP8Config

    def __init__(self, config: FineGrainedFP8Config, pre_quantized: bool = False) -> None:
        super().__init__(config, pre_quantized)
        if not pre_quantized:
            raise QuantizationError(
                "quant_method 'fp8' reads fp8 checkpoints (config.json with an fp8 quantization_config); it does "
                "not quantize a float checkpoint while loading. Use TorchAoConfig('int8_weight_only' or "
                "'int4_weight_only') or BitsAndBytesConfig for that.")
        self.layers: dict[str, Layer] = {}
        self._gpu_ok: dict[torch.device, bool] = {}
        self._converted: dict[str, Any] | None = None

    @property
    def skip(self) -> tuple[str, ...]:
        names = self.config.modules_to_not_convert
        return tuple(names) if names is not None else DEFAULT_SKIP

    def take_loading_options(self, requested: Any) -> bool:
        options = requested if isinstance(requested, dict) else getattr(requested, "__dict__", {})
        self.config.dequantize = bool(options.get("dequantize", False)) or self.config.dequantize
        requantize = options.get("requantize")
        if requantize not in REQUANTIZE:
            raise QuantizationError(f"requantize={requantize!r}; the choices are None and 'int8'.")
        self.config.requantize = requantize
        return True

    @property
    def float_after_load(self) -> bool:
        """Every fp8 layer was dequantized: the model is a plain float model (see attach in loading.py)."""
        return all(layer.mode == "dequantize" for layer in self.layers.values())

    # -- loading -------------------------------------------------------------------------------
    def prepare(self, model: nn.Module) -> None:
        pass  # which layers are fp8 is the checkpoint's to say: see checkpoint_targets

    def _checkpoint_name(self, name: str, model: nn.Module) -> str | None:
        infos = self.reader.infos
        if name in infos:
            return name
        prefix = getattr(getattr(model, "facts", None), "base_model_prefix", "") or ""
        if prefix and f"{prefix}.{name}" in infos:
            return f"{prefix}.{name}"
        if prefix and name.startswith(prefix + ".") and name[len(prefix) + 1:] in infos:
            return name[len(prefix) + 1:]
        return None

    def checkpoint_targets(self, model: nn.Module) -> dict[str, torch.Tensor]:
        targets: dict[str, torch.Tensor] = {}
        block = self.config.weight_block_size
        for name, linear in linear_layers(model, ()):  # the checkpoint's dtypes say which layers are fp8
            weight = self._checkpoint_name(f"{name}.weight", model)
            if weight is None or self.reader.infos[weight].dtype not in WEIGHT_DTYPES:
                continue
            info = self.reader.infos[weight]
            scale = self._checkpoint_name(f"{name}.weight_scale_inv", model)
            if scale is None:
                raise CorruptCheckpointError(
                    f"'{weight}' in '{info.path}' is {str(info.dtype).removeprefix('torch.')} but the checkpoint "
                    f"has no '{weight.removesuffix('weight')}weight_scale_inv' to turn it back into real values "
                    f"(layer '{name}'). The checkpoint is incomplete: re-download or re-save it.")
            sinfo = self.reader.infos[scale]
            out, inp = linear.out_features, linear.in_features
            if block is None:
                want = sinfo.shape if sinfo.shape in ((), (1,)) else ()
            else:
                want = (-(-out // block[0]), -(-inp // block[1]))
            if sinfo.shape != tuple(want):
                raise CorruptCheckpointError(
                    f"'{scale}' in '{sinfo.path}' has shape {list(sinfo.shape)}, but layer '{name}' ([{out}, {inp}]) "
                    f"with weight_block_size {list(block) if block else None} needs {list(want)}. The checkpoint "
                    "and its config.json disagree: fix weight_block_size, or re-save the checkpoint.")
            if sinfo.dtype not in SCALE_DTYPES:
                raise CorruptCheckpointError(
                    f"'{scale}' in '{sinfo.path}' is {str(sinfo.dtype).removeprefix('torch.')}; fp8 block scales "
                    "are float32, bfloat16, float16 or ue8m0 (float8_e8m0fnu / uint8 exponents). Re-save it.")
            targets[f"{name}.weight"] = torch.empty(out, inp, dtype=info.dtype, device="meta")
            targets[f"{name}.weight_scale_inv"] = torch.empty(sinfo.shape, dtype=sinfo.dtype, device="meta")
            expected = {"weight", "weight_scale_inv"}
            act = self._checkpoint_name(f"{name}.activation_scale", model)
            if act is not None:
                ainfo = self.reader.infos[act]
                targets[f"{name}.activation_scale"] = torch.empty(ainfo.shape, dtype=ainfo.dtype, device="meta")
                expected.add("activation_scale")
            self.layers[name] = Layer(linear, frozenset(expected))
        return targets

    def load_tensor(self, model: nn.Module, name: str, tensor: torch.Tensor, device: torch.device) -> bool:
        found = split_piece(name, PIECES, self.layers)
        if found is None:
            return False
        layer_name, piece = found
        layer = self.layers[layer_name]
        layer.pieces[piece] = tensor
        if set(layer.pieces) == layer.expected:
            self._assemble(model, layer_name, layer, device)
        return True

    def _mode(self, layer: Layer, device: torch.device) -> str:
        if self.config.requantize == "int8":
            return "int8"
        if self.config.dequantize or self.config.weight_block_size != (128, 128):
            return "dequantize"
        w = layer.pieces["weight"]
        if w.dtype != torch.float8_e4m3fn or w.shape[0] % 128 or w.shape[1] % 128 \
                or layer.pieces["weight_scale_inv"].dtype not in (torch.float32, torch.bfloat16):
            return "dequantize"
        return "fp8" if self._kernel_ok(device) else "dequantize"

    def _kernel_ok(self, device: torch.device) -> bool:
        """Whether scaled_mm with 128x128 weight blocks runs on `device` and agrees with the dequantized product
        (checked once per device and load, on a random 256x256 layer)."""
        if device in self._gpu_ok:
            return self._gpu_ok[device]
        ok = False
        if _scaled_mm_available(device):
            try:
                g = torch.Generator(device=device).manual_seed(0)
                w = (torch.randn(256, 256, device=device, generator=g) * 100).to(torch.float8_e4m3fn)
                s = torch.rand(2, 2, device=device, generator=g) + 0.5
                x = torch.randn(4, 256, device=device, generator=g, dtype=torch.bfloat16)
                got = Fp8Linear(w, s, None, torch.bfloat16)(x).float()
                want = x.float() @ dequantize_fp8(w, s, torch.float32).t()
                ok = bool(((got - want).norm() / want.norm()) < 0.05)
                if not ok:
                    logger.warning("fp8: scaled_mm on %s disagrees with the dequantized product; fp8 layers are "
                                   "dequantized instead.", device)
            except (RuntimeError, TypeError, ValueError) as e:
                logger.warning("fp8: scaled_mm with 128x128 blocks does not run on %s (%s); fp8 layers are "
                               "dequantized instead.", device, e)
        self._gpu_ok[device] = ok
        return ok

    def _assemble(self, model: nn.Module, name: str, layer: Layer, device: torch.device) -> None:
        weight, scale = layer.pieces["weight"], layer.pieces["weight_scale_inv"]
        current = model.get_submodule(name)  # still the float nn.Linear of the skeleton
        dtype = layer.original.weight.dtype
        block = self.config.weight_block_size
        mode = layer.mode = self._mode(layer, device)
        if mode == "fp8":
            replace_module(model, name, Fp8Linear(weight.to(device, copy=True), scale_values(scale).to(device),
                                                  current.bias, dtype))
        elif mode == "int8":
            from .linear import QuantizedLinear

            module = QuantizedLinear.from_linear(current, bits=8, group_size=None, name=name)
            module._float_dtype = dtype
            module.set_weight(dequantize_fp8(weight.to(device), scale.to(device), torch.float32, block), device)
            replace_module(model, name, module)
        else:
            value = dequantize_fp8(weight.to(device), scale.to(device), dtype, block)
            current._parameters["weight"] = nn.Parameter(value, requires_grad=current.weight.requires_grad)
        release_pages(weight)  # the fp8 bytes' file pages: copied, dequantized or re-quantized by now
        layer.pieces = {}

    def finish(self, model: nn.Module, loaded: set[str]) -> None:
        for name, layer in self.layers.items():
            if layer.mode is None:
                got, want = sorted(layer.pieces), sorted(layer.expected)
                raise CorruptCheckpointError(f"fp8 layer '{name}' got {got} of {want} from the checkpoint; it is "
                                             "incomplete: re-download or re-save it.")
        trim_memory()
        if any(layer.mode == "int8" for layer in self.layers.values()):
            from .compressed import compressed_config

            self._converted = compressed_config(model)

    # -- afterwards ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        if self._converted is not None:
            return dict(self._converted)
        out = self.config.to_dict()
        floats = sorted(n for n, layer in self.layers.items() if layer.mode == "dequantize")
        if floats and not self.float_after_load:  # some layers run in float now: the file will say so
            out["modules_to_not_convert"] = sorted(set(out.get("modules_to_not_convert") or []) | set(floats))
        return out

    def serialize(self, model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        if self._converted is not None:  # re-quantized to int8: our int8 layout (compressed-tensors)
            from .compressed import compressed_state

            return compressed_state(model)
        return {k: v.detach() for k, v in model.state_dict().items()}, self.to_dict()

    def dequantize(self, model: nn.Module) -> None:
        for name, layer in self.layers.items():
            module = model.get_submodule(name)
            dtype = layer.original.weight.dtype
            if isinstance(module, Fp8Linear):
                new = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                                device="meta")
                new.weight = nn.Parameter(module.dequantized_weight(dtype), requires_grad=False)
                new.bias = module.bias
                replace_module(model, name, new)
        if self._converted is not None:
            from .compressed import dequantize_model

            dequantize_model(model)
        self.layers.clear()
        self._converted = None
