from __future__ import annotations

import math

import torch
from torch import nn


def _gelu_new(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of GELU written out op by op, as GPT-2 and the ecosystem's "gelu_new" compute it.
    Equal to torch's fused `gelu(approximate="tanh")` in float32 (~1e-7), but in bf16/fp16 each op rounds, and
    matching those roundings is what keeps half-precision outputs identical to the reference's."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


ACTIVATIONS = {
    "silu": nn.functional.silu,
    "swish": nn.functional.silu,
    "gelu": nn.functional.gelu,
    "relu": nn.functional.relu,
    "gelu_pytorch_tanh": lambda x: nn.functional.gelu(x, approximate="tanh"),
    "gelu_new": _gelu_new,
}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"Unknown activation '{name}'; known: {', '.join(sorted(ACTIVATIONS))}.")
    return ACTIVATIONS[name]


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)) — the Llama-family feed-forward block."""

    def __init__(self, hidden_size: int, intermediate_size: int, act: str, bias: bool = False) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)
        self.act_fn = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))
