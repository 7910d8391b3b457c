"""The compiled decoding step: one `torch.compile`d call of the model per new token, over a fixed-length cache.

With `cache_implementation="static"` every decoding step has the same shapes (the cache is attended over whole,
the mask hides what is not written yet), so the step compiles once and then runs as a few fused kernels.

One rewrite makes the difference on CPUs. A decoding step of one sequence multiplies one row by every weight
matrix: a matrix-vector product, bound by how fast the weights stream from memory. Inside the compiled graph a
linear layer would still call the BLAS matrix product with M = 1, which on CPUs reaches well under half the memory
bandwidth; written as a multiply-and-sum over the weight's rows (`RowVectorLinear`), inductor emits one fused,
vectorised, multi-threaded reduction per layer that streams the weights at close to memory speed. Measured on the
bench's 134M-parameter fp32 Llama on 2 cores: the linear layers of one step take 28 ms as BLAS calls, 12 ms as
compiled reductions. The sums run in another order than BLAS's, so logits differ in the last bits.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from .config import CompileConfig


class RowVectorLinear(TorchFunctionMode):
    """`F.linear` of a single row on the CPU computed as `(x * W).sum(-1)` (see the module's docstring); every
    other call passes through unchanged. (GPT-2's Conv1D, `torch.addmm(bias, x, W)` with W stored (in, out), is
    left to BLAS: that layout already streams at ~20 GB/s here, and inductor's column reduction was no faster.) Meant to be active while a decoding step is traced by torch.compile (in
    eager mode the product would be materialised, which is slower)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight = args[0], args[1]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if x.device.type == "cpu" and weight.dim() == 2 and x.numel() == x.shape[-1]:
                y = (x.unsqueeze(-2) * weight).sum(-1)
                return y if bias is None else y + bias
        return func(*args, **kwargs)


class CompiledStep:
    """A model's compiled decoding step. It remembers the longest cache it has run over: later calls allocate at
    least that much (`cache_length`), so a shorter generation reuses the compiled code instead of recompiling for
    a new shape."""

    def __init__(self, model: torch.nn.Module, kwargs: dict[str, Any]) -> None:
        ref = weakref.ref(model)  # held weakly: caching the step does not keep the model alive

        def step(**inputs: Any):
            with RowVectorLinear():
                return ref()(**inputs)

        self.run = torch.compile(step, **kwargs)
        self.longest = 0
        self.ran = False  # a call has succeeded (compilation worked)
        self.failed: str | None = None  # why compiling failed, when it did before any call succeeded

    def cache_length(self, needed: int) -> int:
        self.longest = max(self.longest, needed)
        return self.longest

    def __call__(self, **inputs: Any):
        try:
            out = self.run(**inputs)
        except Exception as e:
            if not self.ran:
                self.failed = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}"
            raise
        self.ran = True
        return out


_STEPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {compile settings: CompiledStep}


def compiled_step(model: torch.nn.Module, config: CompileConfig) -> CompiledStep:
    """The model's compiled decoding step for `config`, made once per model and settings and reused by later
    `generate` calls."""
    kwargs = config.compile_kwargs()
    key = repr(sorted(kwargs.items(), key=lambda kv: kv[0]))
    steps = _STEPS.setdefault(model, {})
    if key not in steps:
        steps[key] = CompiledStep(model, kwargs)
    return steps[key]


def compile_settings(model: torch.nn.Module, config, device: torch.device) -> CompileConfig | None:
    """The compile settings `generate` uses, or None to run the step eagerly: compiled when asked for with a
    `compile_config`, or by default on a CUDA GPU (as the reference); never with `disable_compile=True`, nor for
    a model spread over several devices or offloaded (its hooks move weights between calls)."""
    if config.get("disable_compile"):
        return None
    settings = config.get("compile_config")
    if settings is None and device.type != "cuda":
        return None
    if settings is None and getattr(model, "tp_size", None):  # split over ranks (tp_plan): eager unless asked
        return None
    placed = getattr(model, "hf_device_map", None) or {}
    if len(set(placed.values())) > 1 or "disk" in placed.values():
        return None
    return settings or CompileConfig()
