"""The glue between `from_pretrained` / `save_pretrained` and a quantization handler (see base.py)."""

from __future__ import annotations

import ctypes
import logging
import mmap
import sys
from typing import Any

import torch
from torch import nn

from ..errors import QuantizationError
from .base import QuantizationHandler, method_of, quantizer_for

logger = logging.getLogger("pretrained")


def handler_for_load(config: Any, requested: Any) -> QuantizationHandler | None:
    """The handler of a load: config.json's `quantization_config` (a pre-quantized checkpoint), else the user's
    `quantization_config=` (quantize while loading), else None. A user's config for a pre-quantized checkpoint is
    ignored with a warning when it names the same method, refused when it names another (re-quantizing low-bit
    weights is not a thing we do silently)."""
    stored = getattr(config, "quantization_config", None)
    if stored is not None and not isinstance(stored, QuantizationHandler):
        if requested is not None:
            if method_of(requested) != method_of(stored):
                raise QuantizationError(
                    f"This checkpoint is already quantized with '{method_of(stored)}' (its config.json carries a "
                    f"quantization_config); it cannot be loaded as '{method_of(requested)}'. Drop "
                    "quantization_config=, or quantize the unquantized checkpoint.")
            handler = quantizer_for(stored, pre_quantized=True)
            if not handler.take_loading_options(requested):  # e.g. fp8's dequantize= / requantize=
                logger.warning("The checkpoint is already quantized ('%s'); the quantization_config passed to "
                               "from_pretrained is ignored in favour of its own.", method_of(stored))
            return handler
        return quantizer_for(stored, pre_quantized=True)
    if requested is not None:
        return quantizer_for(requested, pre_quantized=False)
    return None


def attach(model: nn.Module, handler: QuantizationHandler) -> None:
    """After a load: the model knows its handler and its config says how it is quantized."""
    if getattr(handler, "float_after_load", False):  # e.g. fp8 dequantized at load: a plain float model
        detach(model)
        return
    model.hf_quantizer = handler
    model.is_quantized = True
    model.quantization_method = handler.method
    model.config.quantization_config = handler.to_dict()


def detach(model: nn.Module) -> None:
    """After `dequantize()`: a plain float model again."""
    for attr in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attr):
            delattr(model, attr)
    model.is_quantized = False
    if "quantization_config" in model.config.__dict__:
        del model.config.__dict__["quantization_config"]


def state_for_save(model: nn.Module) -> tuple[dict, dict] | None:
    """(state dict, quantization_config) to save for a quantized model; None for a float one."""
    handler = getattr(model, "hf_quantizer", None)
    if handler is None:
        return None
    return handler.serialize(model)


# ---- giving back a checkpoint's pages once a weight is quantized ---------------------------------------------------
_PAGE = mmap.PAGESIZE
_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def _file_mapped(start: int, end: int) -> bool:
    """Whether [start, end) lies in a private mapping of a file (a safetensors checkpoint mapped by the reader)."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                fields = line.split()
                low, _, high = fields[0].partition("-")
                if int(low, 16) <= start and end <= int(high, 16):
                    return len(fields) >= 6 and fields[4] != "0" and fields[1].endswith("p")
    except OSError:
        pass
    return False


def release_pages(tensor: torch.Tensor) -> None:
    """Drop the resident pages of a tensor that is a view of a mapped checkpoint file, after its last use (the
    float weight once quantized): the process's memory then holds the quantized model plus one tensor, not the
    whole file. Pages of memory the process owns (a converted copy, a user's state_dict) are never touched."""
    if tensor.device.type != "cpu" or not tensor.numel() or sys.platform != "linux":
        return
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    first, last = -(-start // _PAGE) * _PAGE, end // _PAGE * _PAGE
    if last > first and _file_mapped(start, end):
        _libc.madvise(first, last - first, mmap.MADV_DONTNEED)


def trim_memory() -> None:
    """Hand the C heap's free memory back to the system (glibc's malloc_trim) once a load's quantization
    temporaries are gone: freed float copies otherwise stay in the process's resident memory."""
    trim = getattr(_libc, "malloc_trim", None)
    if trim is not None:
        trim(0)
