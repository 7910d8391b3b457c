"""Resizing embedding tables: old rows kept, new rows drawn around the old rows' mean (mean resizing)."""

from __future__ import annotations

import torch
from torch import nn


def _new_rows(old: torch.Tensor, count: int, mean_resizing: bool, std: float) -> torch.Tensor:
    """(count, dim) initial rows: sampled from N(mean, 1e-9 * covariance) of the old rows, or N(0, std)."""
    if count <= 0:
        return old.new_empty(0, old.shape[1])
    if not mean_resizing:
        return torch.randn(count, old.shape[1], dtype=torch.float32).mul_(std).to(old)
    rows = old.detach().float()
    mean = rows.mean(0)
    centered = rows - mean
    covariance = centered.T @ centered / rows.shape[0]
    try:
        dist = torch.distributions.MultivariateNormal(mean, covariance_matrix=1e-9 * covariance)
        return dist.sample((count,)).to(old)
    except ValueError:  # covariance not positive definite (tiny or degenerate tables): use the mean
        return mean.expand(count, -1).to(old)


def resized_embedding(old: nn.Embedding, new_num: int, mean_resizing: bool, std: float) -> nn.Embedding:
    """`old` with a table of `new_num` rows, the first min(old, new) copied from it. The module itself is kept,
    with its class and state (a scaled embedding keeps its scale); a padding row that no longer exists is dropped."""
    keep = min(old.num_embeddings, new_num)
    weight = torch.empty(new_num, old.embedding_dim, dtype=old.weight.dtype, device=old.weight.device)
    with torch.no_grad():
        weight[:keep] = old.weight[:keep]
        weight[keep:] = _new_rows(old.weight, new_num - keep, mean_resizing, std)
    old.weight = nn.Parameter(weight, requires_grad=old.weight.requires_grad)
    old.num_embeddings = new_num
    if old.padding_idx is not None and old.padding_idx >= new_num:
        old.padding_idx = None
    return old


def resized_linear_rows(old: nn.Linear, new_num: int, mean_resizing: bool, std: float) -> nn.Linear:
    """An output projection (out_features = vocab) resized to `new_num` rows, bias padded with zeros."""
    keep = min(old.out_features, new_num)
    new = nn.Linear(old.in_features, new_num, bias=old.bias is not None, device="meta")
    weight = torch.empty(new_num, old.in_features, dtype=old.weight.dtype, device=old.weight.device)
    with torch.no_grad():
        weight[:keep] = old.weight[:keep]
        weight[keep:] = _new_rows(old.weight, new_num - keep, mean_resizing, std)
        new.weight = nn.Parameter(weight, requires_grad=old.weight.requires_grad)
        if old.bias is not None:
            bias = torch.zeros(new_num, dtype=old.bias.dtype, device=old.bias.device)
            bias[:keep] = old.bias[:keep]
            new.bias = nn.Parameter(bias, requires_grad=old.bias.requires_grad)
    return new
