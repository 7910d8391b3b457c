"""What the Flax and TF layers (`flax/layers.py`, `tf/layers.py`) compute the same way, in numpy: free of every
framework (no torch, jax, flax, tensorflow or keras). Both modules re-export these names."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import ConfigError


# ---- activations ----------------------------------------------------------------------------------------------------
def activation_table(silu: Callable, gelu: Callable, relu: Callable, tanh: Callable,
                     power: Callable) -> dict[str, Callable]:
    """The activations a config may name, from a framework's ops (`gelu(x, approximate=bool)`, `power(x, p)`)."""

    def gelu_new(x: Any) -> Any:
        """GELU's tanh approximation written out op by op, as GPT-2's "gelu_new" computes it."""
        return 0.5 * x * (1.0 + tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * power(x, 3.0))))

    return {
        "silu": silu,
        "swish": silu,
        "gelu": lambda x: gelu(x, approximate=False),
        "relu": relu,
        "gelu_pytorch_tanh": lambda x: gelu(x, approximate=True),
        "gelu_new": gelu_new,
        "tanh": tanh,
    }


def pick_activation(table: dict[str, Callable], name: str) -> Callable:
    """`table[name]`, or a ConfigError naming the activations there are."""
    if name not in table:
        raise ConfigError(f"Unknown activation '{name}'; known: {', '.join(sorted(table))}.")
    return table[name]


# ---- rotary positions -------------------------------------------------------------------------------------------------
def inverse_frequencies(rope: dict, head_dim: int) -> tuple[np.ndarray, float]:
    """(inv_freq (head_dim/2,) float32, attention scaling) for the rope types the PyTorch side implements
    (`layers/rotary.py`: default, linear, llama3), computed the same way in float32."""
    base = float(rope["rope_theta"])
    dim = int(head_dim * rope.get("partial_rotary_factor", 1.0))
    exponent = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    inv_freq = (np.float32(1.0) / np.power(np.float32(base), exponent)).astype(np.float32)
    kind = rope.get("rope_type", "default")
    if kind == "default":
        return inv_freq, 1.0
    if kind == "linear":
        return (inv_freq / np.float32(rope["factor"])).astype(np.float32), 1.0
    if kind == "llama3":
        factor, low, high = (np.float32(rope[k]) for k in ("factor", "low_freq_factor", "high_freq_factor"))
        old_len = np.float32(rope["original_max_position_embeddings"])
        wavelen = np.float32(2 * math.pi) / inv_freq
        scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        return np.where(medium, smoothed, scaled).astype(np.float32), 1.0
    raise ConfigError(
        f"rope_type '{kind}' is not implemented (known: default, linear, llama3). Use a checkpoint with one of "
        "those, or open an issue naming the model.")


__all__ = ["activation_table", "inverse_frequencies", "pick_activation"]
