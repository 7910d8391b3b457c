"""Rotary position embeddings (RoPE): inverse frequencies from `rope_parameters`, cos/sin per position."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ConfigError


def inverse_frequencies(rope: dict, head_dim: int, max_positions: int) -> tuple[torch.Tensor, float]:
    """(inv_freq of shape (head_dim/2,), attention scaling) for the rope types we implement.

    Always computed on the CPU, even inside a meta-device context: these few floats are needed for real, and
    meta-device arithmetic here would make torch import its compiler stack (~1 s) on first use.
    """
    base = float(rope["rope_theta"])
    dim = int(head_dim * rope.get("partial_rotary_factor", 1.0))
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim))
    kind = rope.get("rope_type", "default")
    if kind == "default":
        return inv_freq, 1.0
    if kind == "linear":
        return inv_freq / float(rope["factor"]), 1.0
    if kind == "llama3":
        factor, low, high = float(rope["factor"]), float(rope["low_freq_factor"]), float(rope["high_freq_factor"])
        old_len = float(rope["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        return torch.where(medium, smoothed, scaled), 1.0
    raise ConfigError(
        f"rope_type '{kind}' is not implemented (known: default, linear, llama3). Use a checkpoint with one of "
        "those, or open an issue naming the model."
    )


class RotaryEmbedding(nn.Module):
    """Gives (cos, sin) of shape (batch, seq, head_dim) for position ids of shape (batch, seq)."""

    def __init__(self, rope: dict, head_dim: int, max_positions: int) -> None:
        super().__init__()
        self.rope, self.head_dim, self.max_positions = dict(rope), head_dim, max_positions
        inv_freq, self.attention_scaling = inverse_frequencies(self.rope, head_dim, max_positions)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def reset_buffers(self) -> None:
        """Recompute the (non-persistent) inverse frequencies, e.g. after building on the meta device."""
        inv_freq, self.attention_scaling = inverse_frequencies(self.rope, self.head_dim, self.max_positions)
        self.inv_freq = inv_freq.to(self.inv_freq.device if self.inv_freq.device.type != "meta" else "cpu")

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float32)
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """q, k: (batch, heads, seq, head_dim); cos, sin: (batch, seq, head_dim)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
