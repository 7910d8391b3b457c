"""bitsandbytes: 8-bit (LLM.int8) and 4-bit (nf4/fp4, optional double quantization) weights, on the bitsandbytes
library (CPU and CUDA), in the layout bitsandbytes defines for safetensors.

`BitsAndBytesConfig` takes the reference's arguments and writes the same `quantization_config` dict. The handler
(see base.py for when each method runs) swaps every quantized `nn.Linear` of the meta skeleton for a bitsandbytes
module and fills it one tensor at a time:

- quantize while loading: the float `weight` arrives (in the model's dtype), is quantized on its device by the
  library (`Int8Params` / `Params4bit`) and nothing else of it is kept;
- a pre-quantized checkpoint: the pieces of each layer are checked against the packed quant-state before a byte of
  them is read (their shapes follow from the layer's shape and the block sizes), then assembled into the library's
  objects without re-quantizing.

On-disk layout (per quantized Linear `L`):
    8-bit   `L.weight` int8 [out, in], `L.SCB` float32 [out] (row absmax; w = weight * SCB / 127),
            `L.weight_format` uint8 scalar 0 ("row")
    4-bit   `L.weight` packed 4-bit codes (two per byte, first in the high nibble), [ceil(out*in/2) / itemsize, 1]
            in the storage dtype; `L.weight.absmax` float32 [ceil(out*in/blocksize)] (uint8 codes with double
            quantization, plus `L.weight.nested_absmax` float32 and `L.weight.nested_quant_map` float32 [256]);
            `L.weight.quant_map` float32 [16]; `L.weight.quant_state.bitsandbytes__<nf4|fp4>` uint8: the JSON of
            {quant_type, blocksize, dtype, shape[, nested_blocksize, nested_dtype, nested_offset]}.

bitsandbytes' CPU forward (on processors with AVX512-BF16) repacks a 4-bit weight into a kernel layout the first
time it runs and keeps its block scales only as bfloat16, so a save after a forward could not give the file back;
our 4-bit module keeps the standard statistics it was loaded with (references: no copy until the repacking replaces
them) and undoes the weight's permutation itself, so `state_dict()` and `save_pretrained` always write the standard
layout, bit for bit, before or after any forward.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import CorruptCheckpointError, QuantizationError, QuantizationLibraryError
from .base import DEFAULT_SKIP, QuantizationHandler, linear_layers, matches, replace_module, split_piece
from .loading import release_pages, trim_memory

logger = logging.getLogger("pretrained")

MIN_VERSION = (0, 46)  # the first release whose 4-bit and 8-bit layers run on the CPU
QUANT_TYPES = ("nf4", "fp4")
BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
STORAGE_DTYPES = ("float16", "float32", "int8", "uint8", "float64", "bfloat16")
FLOAT_DTYPES = ("float16", "bfloat16", "float32")
STATE_KEY = "weight.quant_state.bitsandbytes__"  # + quant type
PIECES_4BIT = ("weight", "weight.absmax", "weight.quant_map", "weight.nested_absmax", "weight.nested_quant_map",
               STATE_KEY + "nf4", STATE_KEY + "fp4")
PIECES_8BIT = ("weight", "SCB", "weight_format")


def _dtype(value: Any, key: str, allowed: tuple[str, ...]) -> torch.dtype:
    name = str(value).removeprefix("torch.") if isinstance(value, (str, torch.dtype)) else None
    if name not in allowed:
        raise QuantizationError(f"BitsAndBytesConfig: {key}={value!r} is not one of {', '.join(allowed)} "
                                "(a torch dtype or its name).")
    return getattr(torch, name)


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class BitsAndBytesConfig:
    """Quantize with bitsandbytes: `load_in_8bit=True` (LLM.int8, per-row int8 with outlier columns in float16
    above `llm_int8_threshold`) or `load_in_4bit=True` (`bnb_4bit_quant_type` "fp4" (default) or "nf4", blocks of
    64 with their absmax, `bnb_4bit_use_double_quant=True` to quantize those absmax again, compute in
    `bnb_4bit_compute_dtype` (default float32; bfloat16 is faster on CPUs)). `llm_int8_skip_modules`: module names
    kept in float (default: the output head). The arguments and the dict are the reference's."""

    quant_method = "bitsandbytes"

    def __init__(self, load_in_8bit: bool = False, load_in_4bit: bool = False, llm_int8_threshold: float = 6.0,
                 llm_int8_skip_modules: list[str] | None = None, llm_int8_enable_fp32_cpu_offload: bool = False,
                 llm_int8_has_fp16_weight: bool = False, bnb_4bit_compute_dtype: Any = None,
                 bnb_4bit_quant_type: str = "fp4", bnb_4bit_use_double_quant: bool = False,
                 bnb_4bit_quant_storage: Any = None, **kwargs: Any) -> None:
        for key, value in (("load_in_8bit", load_in_8bit), ("load_in_4bit", load_in_4bit),
                           ("llm_int8_enable_fp32_cpu_offload", llm_int8_enable_fp32_cpu_offload),
                           ("llm_int8_has_fp16_weight", llm_int8_has_fp16_weight),
                           ("bnb_4bit_use_double_quant", bnb_4bit_use_double_quant)):
            if not isinstance(value, bool):
                raise QuantizationError(f"BitsAndBytesConfig: {key} must be True or False, not {value!r}.")
        if load_in_8bit and load_in_4bit:
            raise QuantizationError("BitsAndBytesConfig: load_in_8bit and load_in_4bit are both True; choose one.")
        if isinstance(llm_int8_threshold, bool) or not isinstance(llm_int8_threshold, (int, float)) \
                or not math.isfinite(llm_int8_threshold) or llm_int8_threshold < 0:
            raise QuantizationError(f"BitsAndBytesConfig: llm_int8_threshold must be a number >= 0 (0 turns the "
                                    f"outlier columns off), not {llm_int8_threshold!r}.")
        if llm_int8_skip_modules is not None and (
                not isinstance(llm_int8_skip_modules, (list, tuple))
                or not all(isinstance(m, str) for m in llm_int8_skip_modules)):
            raise QuantizationError("BitsAndBytesConfig: llm_int8_skip_modules must be a list of module names, not "
                                    f"{llm_int8_skip_modules!r}.")
        if bnb_4bit_quant_type not in QUANT_TYPES:
            raise QuantizationError(f"BitsAndBytesConfig: bnb_4bit_quant_type={bnb_4bit_quant_type!r} is not one "
                                    f"of {', '.join(QUANT_TYPES)}.")
        self._load_in_8bit = load_in_8bit
        self._load_in_4bit = load_in_4bit
        self.llm_int8_threshold = float(llm_int8_threshold)
        self.llm_int8_skip_modules = list(llm_int8_skip_modules) if llm_int8_skip_modules is not None else None
        self.llm_int8_enable_fp32_cpu_offload = llm_int8_enable_fp32_cpu_offload
        self.llm_int8_has_fp16_weight = llm_int8_has_fp16_weight
        self.bnb_4bit_quant_type = bnb_4bit_quant_type
        self.bnb_4bit_use_double_quant = bnb_4bit_use_double_quant
        self.bnb_4bit_compute_dtype = (torch.float32 if bnb_4bit_compute_dtype is None else
                                       _dtype(bnb_4bit_compute_dtype, "bnb_4bit_compute_dtype", FLOAT_DTYPES))
        self.bnb_4bit_quant_storage = (torch.uint8 if bnb_4bit_quant_storage is None else
                                       _dtype(bnb_4bit_quant_storage, "bnb_4bit_quant_storage", STORAGE_DTYPES))
        kwargs.pop("quant_method", None)
        self.extra = kwargs  # keys of a newer writer: kept, written back

    @property
    def load_in_8bit(self) -> bool:
        return self._load_in_8bit

    @property
    def load_in_4bit(self) -> bool:
        return self._load_in_4bit

    def quantization_method(self) -> str | None:
        """"llm_int8", "nf4", "fp4", or None when neither 8 nor 4 bits were asked for (as the reference)."""
        if self.load_in_8bit:
            return "llm_int8"
        return self.bnb_4bit_quant_type if self.load_in_4bit else None

    @property
    def modules_to_not_convert(self) -> list[str] | None:
        return self.llm_int8_skip_modules

    def to_dict(self) -> dict[str, Any]:
        return {"quant_method": self.quant_method, "_load_in_8bit": self.load_in_8bit,
                "_load_in_4bit": self.load_in_4bit, "llm_int8_threshold": self.llm_int8_threshold,
                "llm_int8_skip_modules": self.llm_int8_skip_modules,
                "llm_int8_enable_fp32_cpu_offload": self.llm_int8_enable_fp32_cpu_offload,
                "llm_int8_has_fp16_weight": self.llm_int8_has_fp16_weight,
                "bnb_4bit_quant_type": self.bnb_4bit_quant_type,
                "bnb_4bit_use_double_quant": self.bnb_4bit_use_double_quant,
                "bnb_4bit_compute_dtype": _name(self.bnb_4bit_compute_dtype),
                "bnb_4bit_quant_storage": _name(self.bnb_4bit_quant_storage),
                "load_in_4bit": self.load_in_4bit, "load_in_8bit": self.load_in_8bit, **self.extra}

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> BitsAndBytesConfig:
        d = dict(config)
        for key in ("load_in_8bit", "load_in_4bit"):  # the reference writes both spellings
            private = d.pop("_" + key, None)
            if key not in d and private is not None:
                d[key] = private
        return cls(**d)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BitsAndBytesConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"BitsAndBytesConfig {json.dumps(self.to_dict(), indent=2, sort_keys=True)}"


def import_bnb():
    """The bitsandbytes module, or a QuantizationLibraryError saying how to install it."""
    try:
        import bitsandbytes
    except ImportError as e:
        raise QuantizationLibraryError(
            "BitsAndBytesConfig and bitsandbytes checkpoints run on the bitsandbytes library, which is not "
            "installed: pip install 'bitsandbytes>=0.46' (or pip install 'pretrained[bnb]').") from e
    version = tuple(int(p) for p in bitsandbytes.__version__.split(".")[:2] if p.isdigit())
    if version < MIN_VERSION:
        raise QuantizationLibraryError(
            f"bitsandbytes {bitsandbytes.__version__} is too old (its layers need a GPU); "
            "pip install -U 'bitsandbytes>=0.46'.")
    return bitsandbytes


# ---- the 4-bit module ------------------------------------------------------------------------------------------
@dataclass
class StandardState:
    """A 4-bit layer's statistics in the standard layout (what the file holds), whatever the kernel did since."""
    absmax: torch.Tensor
    code: torch.Tensor
    blocksize: int
    quant_type: str
    dtype: torch.dtype
    shape: tuple[int, int]
    offset: torch.Tensor | None = None  # double quantization: absmax = dequant(absmax codes) + offset
    nested_absmax: torch.Tensor | None = None
    nested_code: torch.Tensor | None = None
    nested_blocksize: int | None = None
    nested_dtype: torch.dtype | None = None

    @classmethod
    def of(cls, qs: Any) -> StandardState:
        nested = qs.state2 if getattr(qs, "nested", False) else None
        return cls(qs.absmax, qs.code, int(qs.blocksize), qs.quant_type, qs.dtype, tuple(qs.shape), qs.offset,
                   nested.absmax if nested else None, nested.code if nested else None,
                   int(nested.blocksize) if nested else None, nested.dtype if nested else None)

    def quant_state(self, bnb: Any) -> Any:
        """A fresh bitsandbytes QuantState of these statistics (the module's own one may be repacked)."""
        qs_cls = bnb.functional.QuantState
        state2 = None
        if self.nested_absmax is not None:
            state2 = qs_cls(absmax=self.nested_absmax, code=self.nested_code, blocksize=self.nested_blocksize,
                            dtype=self.nested_dtype)
        return qs_cls(absmax=self.absmax, shape=torch.Size(self.shape), code=self.code, blocksize=self.blocksize,
                      quant_type=self.quant_type, dtype=self.dtype, offset=self.offset, state2=state2)

    def pieces(self) -> dict[str, torch.Tensor]:
        """The statistics as the file holds them (names relative to the layer's `weight`)."""
        packed: dict[str, Any] = {"quant_type": self.quant_type, "blocksize": self.blocksize,
                                  "dtype": _name(self.dtype), "shape": list(self.shape)}
        out = {"absmax": self.absmax, "quant_map": self.code}
        if self.nested_absmax is not None:
            out["nested_absmax"] = self.nested_absmax
            out["nested_quant_map"] = self.nested_code.clone()  # never shared with another layer's map
            packed.update(nested_blocksize=self.nested_blocksize, nested_dtype=_name(self.nested_dtype),
                          nested_offset=float(self.offset))
        blob = torch.frombuffer(bytearray(json.dumps(packed).encode()), dtype=torch.uint8)
        out[f"quant_state.bitsandbytes__{self.quant_type}"] = blob
        return {k: v.detach().to("cpu").contiguous() for k, v in out.items()}


def unpack_cpu_layout(packed: torch.Tensor, shape: tuple[int, int], block_n: int = 32) -> torch.Tensor:
    """bitsandbytes' CPU kernel layout of a 4-bit weight back to the standard layout (the codes of the [N, K]
    matrix in row-major order, two per byte, the first in the high nibble, as [N*K/2, 1]). The kernel layout takes
    the rows in groups of `block_n` and, for each group and each pair of columns, lists the group's 2*block_n codes
    row by row (two columns each); byte i of those block_n bytes holds code i in its low nibble and code block_n+i
    in its high one. A pure permutation of 4-bit codes: exact."""
    n, k = shape
    p = packed.reshape(-1, block_n)  # each row: the low nibbles are codes 0..block_n-1, the high ones the next
    codes = torch.cat([p & 0xF, p >> 4], dim=1)  # [-1, 2*block_n]: (row-in-group, k-pair slot) interleaved pairs
    codes = codes.reshape(n // block_n, k // 2, block_n, 2).transpose(1, 2).reshape(n, k)
    flat = codes.reshape(-1)
    return ((flat[0::2] << 4) | flat[1::2]).to(torch.uint8).reshape(-1, 1)


_CLASSES: dict[str, type] = {}


def linear4bit_class(bnb: Any) -> type:
    """Our subclass of bitsandbytes' Linear4bit (made once the library is imported): it keeps the layer's standard
    statistics and saves them, never the kernel's repacked copy."""
    if "4bit" in _CLASSES:
        return _CLASSES["4bit"]

    class Linear4bit(bnb.nn.Linear4bit):
        standard: StandardState | None = None

        def keep_standard(self) -> None:
            qs = getattr(self.weight, "quant_state", None)
            if qs is not None and not getattr(qs, "packing_format_for_cpu", False):
                self.standard = StandardState.of(qs)

        def standard_weight(self) -> torch.Tensor:
            """The packed codes in the standard layout and storage dtype."""
            data = self.weight.data
            qs = self.weight.quant_state
            if getattr(qs, "packing_format_for_cpu", False):
                data = unpack_cpu_layout(data, self.standard.shape)
                storage = getattr(qs, "original_storage_type", None)
                if storage is not None and storage != torch.uint8:
                    data = data.reshape(-1).view(storage).reshape(-1, 1)
            return data

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.standard is None:
                self.keep_standard()
            return super().forward(x)

        def _save_to_state_dict(self, destination, prefix, keep_vars):
            nn.Module._save_to_state_dict(self, destination, prefix, keep_vars)  # bias (and the weight, replaced)
            if getattr(self.weight, "quant_state", None) is None:
                return  # not quantized yet: the float placeholder of a load
            if self.standard is None:
                self.keep_standard()
            destination[prefix + "weight"] = self.standard_weight().detach().contiguous()
            for key, value in self.standard.pieces().items():
                destination[prefix + "weight." + key] = value

        @property
        def logical_weight_numel(self) -> int:
            """num_parameters() counts the packed weight (two codes a byte) among the parameters already and adds
            this for quantized layers: together, the layer's real in*out."""
            return self.in_features * self.out_features - self.weight.numel()

        def dequantized_weight(self) -> torch.Tensor:
            qs = self.standard.quant_state(bnb)
            return bnb.functional.dequantize_4bit(self.standard_weight(), qs).reshape(self.standard.shape)

    Linear4bit.__module__, Linear4bit.__qualname__ = __name__, "Linear4bit"  # importable by that name (pickle)
    _CLASSES["4bit"] = Linear4bit
    return Linear4bit


def __getattr__(name: str) -> Any:
    if name == "Linear4bit":  # made on first use, once bitsandbytes is imported
        return linear4bit_class(import_bnb())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---- the handler -----------------------------------------------------------------------------------------------
def _is_conv1d(module: nn.Module) -> bool:
    """GPT-2's Conv1D (y = x @ weight + bias, weight [in, out]): bitsandbytes quantizes it as the Linear it is."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "nx")


def _features(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an nn.Linear or a Conv1D."""
    return (module.nx, module.nf) if _is_conv1d(module) else (module.in_features, module.out_features)


@dataclass
class Layer:
    """One swapped Linear: its float original (on meta, to put back if the checkpoint lacks it)."""
    original: nn.Module  # an nn.Linear, or GPT-2's Conv1D (a Linear whose float weight is stored [in, out])
    dtype: torch.dtype
    conv: bool = False
    pieces: dict[str, torch.Tensor] | None = None  # pre-quantized pieces read so far
    expected: frozenset[str] = frozenset()  # pre-quantized pieces the checkpoint has (declared targets)
    state: dict[str, Any] | None = None  # the parsed quant-state JSON (4-bit, pre-quantized)
    done: bool = False


class BitsAndBytesHandler(QuantizationHandler):
    method = "bitsandbytes"
    config_class = BitsAndBytesConfig

    def __init__(self, config: BitsAndBytesConfig, pre_quantized: bool = False) -> None:
        super().__init__(config, pre_quantized)
        if not (config.load_in_8bit or config.load_in_4bit):
            raise QuantizationError("BitsAndBytesConfig asks for neither load_in_8bit=True nor load_in_4bit=True; "
                                    "set one of them.")
        import_bnb()  # fails early, with what to install
        self.bits = 8 if config.load_in_8bit else 4
        self.layers: dict[str, Layer] = {}

    @property
    def bnb(self) -> Any:  # not kept on the handler: a model holding it can then be copied and pickled
        return import_bnb()

    @property
    def skip(self) -> tuple[str, ...]:
        names = self.config.llm_int8_skip_modules
        return tuple(names) if names is not None else DEFAULT_SKIP

    # -- building ------------------------------------------------------------------------------
    def _module(self, linear: nn.Module) -> nn.Module:
        c, bias = self.config, linear.bias is not None
        inp, out = _features(linear)
        if self.bits == 8:
            new = self.bnb.nn.Linear8bitLt(inp, out, bias, has_fp16_weights=c.llm_int8_has_fp16_weight,
                                           threshold=c.llm_int8_threshold, device="meta")
        else:
            new = linear4bit_class(self.bnb)(
                inp, out, bias, compute_dtype=c.bnb_4bit_compute_dtype,
                compress_statistics=c.bnb_4bit_use_double_quant, quant_type=c.bnb_4bit_quant_type,
                quant_storage=c.bnb_4bit_quant_storage, device="meta")
        new.weight = linear.weight  # the float placeholder (meta, the file's shape) until the checkpoint's arrives
        new.bias = linear.bias
        new.requires_grad_(False)
        return new

    def prepare(self, model: nn.Module) -> None:
        skip = self.skip + tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
        chosen = list(linear_layers(model, skip))
        chosen += [(n, m) for n, m in model.named_modules() if _is_conv1d(m) and not matches(n, skip)]
        for name, linear in chosen:
            replace_module(model, name, self._module(linear))
            self.layers[name] = Layer(linear, linear.weight.dtype, conv=_is_conv1d(linear))

    def _restore(self, model: nn.Module, name: str) -> None:
        """Put the float Linear back (keeping a bias already loaded): the checkpoint holds this layer in float."""
        layer = self.layers.pop(name)
        current = model.get_submodule(name)
        if current.bias is not None and current.bias.device.type != "meta":
            layer.original.bias = current.bias
        replace_module(model, name, layer.original)

    # -- pre-quantized checkpoints: what each layer's tensors must be -------------------------------------
    def _checkpoint_name(self, name: str, model: nn.Module) -> str | None:
        infos = self.reader.infos
        if name in infos:
            return name
        prefix = getattr(getattr(model, "facts", None), "base_model_prefix", "") or ""
        if prefix:
            if f"{prefix}.{name}" in infos:
                return f"{prefix}.{name}"
            if name.startswith(prefix + ".") and name[len(prefix) + 1:] in infos:
                return name[len(prefix) + 1:]
        return None

    def _missing(self, layer_name: str, piece: str, weight_ckpt: str) -> CorruptCheckpointError:
        path = self.reader.infos[weight_ckpt].path
        return CorruptCheckpointError(
            f"The bitsandbytes {self.bits}-bit checkpoint has '{weight_ckpt}' but no "
            f"'{weight_ckpt.removesuffix('weight')}{piece}' (in '{path}' or any other file): layer '{layer_name}' "
            "cannot be rebuilt without it. The checkpoint is incomplete: re-download or re-save it.")

    def checkpoint_targets(self, model: nn.Module) -> dict[str, torch.Tensor]:
        if not self.pre_quantized:
            return {}
        targets: dict[str, torch.Tensor] = {}
        for name in list(self.layers):
            layer = self.layers[name]
            weight = self._checkpoint_name(f"{name}.weight", model)
            if weight is None:
                continue  # finish() puts the float layer back; it is reported missing like any weight
            info = self.reader.infos[weight]
            inp, out = _features(layer.original)  # quantized pieces are [out, in] for Conv1D too (as written)
            float_shape = (inp, out) if layer.conv else (out, inp)
            if info.dtype.is_floating_point and tuple(info.shape) == float_shape:  # (4-bit codes: [n, 1])
                logger.info("'%s' is stored in float in the bitsandbytes checkpoint; kept in float.", weight)
                self._restore(model, name)
                continue
            base = weight.removesuffix("weight")
            have = {p for p in (PIECES_8BIT if self.bits == 8 else PIECES_4BIT)
                    if self._checkpoint_name(f"{name}.{p}", model) is not None}
            meta = dict(device="meta")
            if self.bits == 8:
                if "SCB" not in have:
                    raise self._missing(name, "SCB", weight)
                targets[f"{name}.weight"] = torch.empty(out, inp, dtype=torch.int8, **meta)
                targets[f"{name}.SCB"] = torch.empty(out, dtype=torch.float32, **meta)
                if "weight_format" in have:
                    targets[f"{name}.weight_format"] = torch.empty((), dtype=torch.uint8, **meta)
            else:
                keys = [p for p in have if p.startswith(STATE_KEY)]
                if not keys:
                    raise self._missing(name, STATE_KEY + self.config.bnb_4bit_quant_type, weight)
                if len(keys) > 1:
                    both = " and ".join(repr(base + k) for k in keys)
                    raise CorruptCheckpointError(f"Layer '{name}' has both {both} "
                                            f"in '{info.path}'; a layer has one quant type. Re-save the checkpoint.")
                state = self._read_state(name, base + keys[0], keys[0].removeprefix(STATE_KEY), (out, inp), model)
                nested = "nested_blocksize" in state
                for piece in ("weight.absmax", "weight.quant_map") + (
                        ("weight.nested_absmax", "weight.nested_quant_map") if nested else ()):
                    if piece not in have:
                        raise self._missing(name, piece, weight)
                n = out * inp
                blocks = -(-n // state["blocksize"])
                storage = info.dtype
                per = 2 * storage.itemsize
                targets[f"{name}.weight"] = torch.empty((n + 1) // per, 1, dtype=storage, **meta)
                targets[f"{name}.weight.absmax"] = torch.empty(blocks, dtype=torch.uint8 if nested else torch.float32,
                                                               **meta)
                targets[f"{name}.weight.quant_map"] = torch.empty(16, dtype=torch.float32, **meta)
                targets[f"{name}.{keys[0]}"] = torch.empty(self.reader.infos[base + keys[0]].shape,
                                                           dtype=torch.uint8, **meta)
                if nested:
                    targets[f"{name}.weight.nested_absmax"] = torch.empty(
                        -(-blocks // state["nested_blocksize"]), dtype=torch.float32, **meta)
                    targets[f"{name}.weight.nested_quant_map"] = torch.empty(256, dtype=torch.float32, **meta)
                layer.state = state
            layer.expected = frozenset(k.removeprefix(name + ".") for k in targets if k.startswith(name + "."))
            layer.pieces = {}
        return targets

    def _read_state(self, layer: str, ckpt: str, quant_type: str, shape: tuple[int, int], model) -> dict[str, Any]:
        """The packed quant-state of a 4-bit layer, checked: the JSON bitsandbytes writes, for this layer."""
        info = self.reader.infos[ckpt]

        def bad(why: str) -> CorruptCheckpointError:
            return CorruptCheckpointError(f"'{ckpt}' in '{info.path}' {why}; layer '{layer}' cannot be loaded. The "
                                     "checkpoint is damaged or was not written by bitsandbytes: re-save it.")

        if info.dtype != torch.uint8 or len(info.shape) != 1 or not 0 < info.shape[0] <= 4096:
            raise bad(f"should be a short uint8 vector (the JSON of the quant state), not {_name(info.dtype)} "
                      f"{list(info.shape)}")
        try:
            state = json.loads(bytes(self.reader.read(ckpt).tolist()).decode())
        except (UnicodeDecodeError, ValueError) as e:
            raise bad(f"does not hold JSON ({e})") from e
        if not isinstance(state, dict):
            raise bad("does not hold a JSON object")
        if state.get("quant_type") != quant_type:
            raise bad(f"says quant_type {state.get('quant_type')!r} under a name for {quant_type!r}")
        if state.get("blocksize") not in BLOCKSIZES:
            raise bad(f"has blocksize {state.get('blocksize')!r}, not one of {BLOCKSIZES}")
        if state.get("dtype") not in FLOAT_DTYPES:
            raise bad(f"has dtype {state.get('dtype')!r}, not one of {', '.join(FLOAT_DTYPES)}")
        if state.get("shape") != list(shape):
            raise bad(f"is for a weight of shape {state.get('shape')!r}, but the layer's is {list(shape)}")
        if "nested_blocksize" in state or "nested_offset" in state:
            if state.get("nested_blocksize") not in BLOCKSIZES:
                raise bad(f"has nested_blocksize {state.get('nested_blocksize')!r}, not one of {BLOCKSIZES}")
            if state.get("nested_dtype") not in FLOAT_DTYPES + ("float64",):
                raise bad(f"has nested_dtype {state.get('nested_dtype')!r}")
            offset = state.get("nested_offset")
            if isinstance(offset, bool) or not isinstance(offset, (int, float)) or not math.isfinite(offset):
                raise bad(f"has nested_offset {offset!r}, not a finite number")
        return state

    # -- loading -------------------------------------------------------------------------------
    def load_tensor(self, model: nn.Module, name: str, tensor: torch.Tensor, device: torch.device) -> bool:
        found = split_piece(name, PIECES_8BIT if self.bits == 8 else PIECES_4BIT, self.layers)
        if found is None:
            return False
        layer_name, piece = found
        layer, module = self.layers[layer_name], model.get_submodule(layer_name)
        if not self.pre_quantized:
            if piece != "weight":
                return False
            self._quantize(module, tensor.t() if layer.conv else tensor, device)  # Conv1D: [in, out] on disk
            release_pages(tensor)  # the float weight's file pages: not needed any more
            layer.done = True
            return True
        layer.pieces[piece] = tensor
        if set(layer.pieces) == layer.expected:
            self._assemble(layer_name, layer, module, device)
        return True

    def _quantize(self, module: nn.Module, tensor: torch.Tensor, device: torch.device) -> None:
        bnb, c = self.bnb, self.config
        if self.bits == 8:
            param = bnb.nn.Int8Params(tensor.to("cpu"), requires_grad=False,
                                      has_fp16_weights=c.llm_int8_has_fp16_weight).to(device)
        else:
            param = bnb.nn.Params4bit(tensor, requires_grad=False, compress_statistics=c.bnb_4bit_use_double_quant,
                                      quant_type=c.bnb_4bit_quant_type, quant_storage=c.bnb_4bit_quant_storage,
                                      module=module).to(device)
        module._parameters["weight"] = param
        if self.bits == 4:
            module.keep_standard()

    def _assemble(self, layer_name: str, layer: Layer, module: nn.Module, device: torch.device) -> None:
        bnb, p = self.bnb, layer.pieces
        weight = p["weight"].to(device, copy=True)  # a fresh allocation: kernels may need aligned data
        release_pages(p["weight"])
        if self.bits == 8:
            if "weight_format" in p and p["weight_format"].item() != 0:
                raise QuantizationError(
                    f"'{layer_name}.weight_format' is {p['weight_format'].item()}: only 0 (row-major int8, what "
                    "bitsandbytes writes since 0.45) can be read. Re-save the checkpoint with a current bitsandbytes.")
            scb = p["SCB"].to(device=device, dtype=torch.float32)
            param = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False, CB=weight, SCB=scb)
        else:
            s = layer.state
            nested = "nested_blocksize" in s
            std = StandardState(
                absmax=p["weight.absmax"].to(device), code=p["weight.quant_map"].to(device),
                blocksize=s["blocksize"], quant_type=s["quant_type"], dtype=getattr(torch, s["dtype"]),
                shape=tuple(s["shape"]),
                offset=torch.tensor(float(s["nested_offset"]), device=device) if nested else None,
                nested_absmax=p["weight.nested_absmax"].to(device) if nested else None,
                nested_code=p["weight.nested_quant_map"].to(device) if nested else None,
                nested_blocksize=s.get("nested_blocksize"),
                nested_dtype=getattr(torch, s["nested_dtype"]) if nested else None)
            qs = std.quant_state(bnb)
            param = bnb.nn.Params4bit(weight, requires_grad=False, quant_state=qs, blocksize=std.blocksize,
                                      compress_statistics=nested, quant_type=std.quant_type,
                                      quant_storage=weight.dtype, module=module, bnb_quantized=True)
            module.quant_state = qs
            module.standard = std
        module._parameters["weight"] = param
        layer.pieces, layer.done = None, True

    def finish(self, model: nn.Module, loaded: set[str]) -> None:
        for name in list(self.layers):
            layer = self.layers[name]
            if not layer.done:
                if layer.pieces:  # declared pieces that never came (cannot happen with a consistent reader)
                    missing = sorted(layer.expected - set(layer.pieces))
                    raise CorruptCheckpointError(f"Layer '{name}' got {sorted(layer.pieces)} but not {missing} from "
                                                 "the checkpoint; it is incomplete: re-download or re-save it.")
                self._restore(model, name)
        setattr(model, f"is_loaded_in_{self.bits}bit", True)
        trim_memory()

    # -- afterwards ----------------------------------------------------------------------------
    def serialize(self, model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        # bitsandbytes' Linear8bitLt and our Linear4bit write their own layout (weight + SCB + weight_format;
        # weight + absmax + quant_map + quant_state (+ nested)), never the kernel's
        state = {k: v.detach() for k, v in model.state_dict().items()}
        return state, self.to_dict()

    def dequantize(self, model: nn.Module) -> None:
        for name in list(self.layers):
            layer, module = self.layers.pop(name), model.get_submodule(name)
            if self.bits == 8:
                w = module.weight.data
                scb = module.weight.SCB if module.weight.SCB is not None else module.state.SCB
                weight = w.float() * (scb.float()[:, None] / 127.0) if w.dtype == torch.int8 else w.float()
            else:
                weight = module.dequantized_weight()
            original = layer.original
            inp, out = _features(original)
            if layer.conv:  # the family's own module again, its weight stored [in, out]
                new = type(original)(out, inp)
                new.weight = nn.Parameter(weight.t().contiguous().to(layer.dtype), requires_grad=False)
            else:
                new = nn.Linear(inp, out, bias=module.bias is not None, device="meta")
                new.weight = nn.Parameter(weight.to(layer.dtype), requires_grad=False)
            if module.bias is not None:
                new.bias = nn.Parameter(module.bias.data.to(layer.dtype), requires_grad=False)
            replace_module(model, name, new)
        for bits in (4, 8):
            if hasattr(model, f"is_loaded_in_{bits}bit"):
                delattr(model, f"is_loaded_in_{bits}bit")
