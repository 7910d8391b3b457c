"""The dtype plan (pure): which dtype the model's floating tensors get, from the user's argument, the config
and the checkpoint. `keep_in_fp32` modules stay float32 under float16."""

from __future__ import annotations

import torch

from ..errors import DtypeError

_ALIASES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float64": torch.float64, "double": torch.float64,
}


def as_dtype(value: torch.dtype | str, what: str = "dtype") -> torch.dtype:
    """A torch floating dtype from a dtype or a name ("bfloat16", "torch.float16", "fp16")."""
    if isinstance(value, torch.dtype):
        dtype = value
    elif isinstance(value, str) and value.removeprefix("torch.") in _ALIASES:
        dtype = _ALIASES[value.removeprefix("torch.")]
    else:
        raise DtypeError(
            f"{what}={value!r} is not a dtype: give a torch floating dtype (torch.bfloat16), its name "
            f"({', '.join(sorted(_ALIASES))}) or \"auto\"."
        )
    if not dtype.is_floating_point:
        raise DtypeError(f"{what}={value!r} is not a floating dtype; model weights load as a floating dtype.")
    return dtype


def resolve_dtype(
    requested: torch.dtype | str | None,
    config_dtype: torch.dtype | str | None,
    checkpoint_dtype: torch.dtype | None,
) -> torch.dtype:
    """The load dtype. `requested` None or "auto": the config's dtype, else the checkpoint's first floating
    tensor's dtype, else float32 (the 5.x rule; 5.x defaults to "auto")."""
    if requested is not None and requested != "auto":
        return as_dtype(requested)
    if config_dtype is not None:
        try:
            return as_dtype(config_dtype, "config.dtype")
        except DtypeError:
            pass  # an odd value in a config (e.g. "auto" written by a tool) falls through to the weights
    return checkpoint_dtype if checkpoint_dtype is not None and checkpoint_dtype.is_floating_point else torch.float32


def module_dtype(module_name: str, dtype: torch.dtype, keep_in_fp32: tuple[str, ...]) -> torch.dtype:
    """`dtype`, or float32 for a module named in `keep_in_fp32` (matched on whole name components) under float16.

    Only float16, as the reference does: its narrow range is what those modules (T5's `wo`) overflow; bfloat16
    has float32's range, and keeping them float32 there would change outputs against the reference.
    """
    if dtype == torch.float16 and keep_in_fp32:
        parts = module_name.split(".")
        if any(key in parts or module_name.endswith(key) for key in keep_in_fp32):
            return torch.float32
    return dtype
