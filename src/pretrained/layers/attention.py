"""Attention kernels and masks.

A mask is built once per forward by `causal_mask` and shared by all layers: `None` when plain causal attention
suffices (sdpa then uses `is_causal`), otherwise a boolean (batch, 1, q, kv) tensor, True = may attend.
"""

from __future__ import annotations

import torch
from torch import nn

IMPLEMENTATIONS = ("sdpa", "eager")


def check_implementation(name: str | None) -> str:
    if name is None:
        return "sdpa"
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation='{name}' is not available here; choose one of {IMPLEMENTATIONS}.")
    return name


def causal_mask(
    attention_mask: torch.Tensor | None,  # (batch, kv_len) 1 = token, 0 = padding; or None
    q_len: int,
    kv_len: int,
    device: torch.device,
    sliding_window: int | None = None,
    q_positions: torch.Tensor | None = None,  # (q_len,) positions of the queries in a fixed-length cache
) -> torch.Tensor | None:
    """Boolean (batch, 1, q_len, kv_len) mask or None when `is_causal` alone is exact.

    Without `q_positions` the queries are the last q_len of the kv_len positions. With them (a cache of fixed
    length, see `cache_positions`), the mask is always built, from tensors only, so that a compiled step neither
    branches on data nor changes shape as the sequence grows; positions after the queries, written or not, are
    masked.
    """
    if q_positions is None:
        has_padding = attention_mask is not None and not bool(attention_mask.all())
        window_hits = sliding_window is not None and kv_len > sliding_window
        if not has_padding and not window_hits and q_len in (1, kv_len):
            return None
        q_pos = torch.arange(q_len, device=device)[:, None] + (kv_len - q_len)
    else:
        q_pos = q_positions.to(device)[:, None]
    kv_pos = torch.arange(kv_len, device=device)[None, :]
    allowed = kv_pos <= q_pos
    if sliding_window is not None:
        allowed = allowed & (kv_pos > q_pos - sliding_window)
    allowed = allowed[None, None]
    if attention_mask is not None:
        if attention_mask.shape[-1] < kv_len:  # a fixed-length cache: later positions are causally hidden
            attention_mask = nn.functional.pad(attention_mask, (0, kv_len - attention_mask.shape[-1]), value=1)
        allowed = allowed & attention_mask[:, None, None, -kv_len:].to(torch.bool)
    return allowed


def cache_positions(cache, q_len: int, device: torch.device,
                    cache_position: torch.Tensor | None = None) -> tuple[torch.Tensor, int, bool]:
    """Where a forward's q_len new tokens go: (cache_position (q_len,), kv_len, fixed).

    A cache of fixed length (one with `max_cache_len`, given `cache_position` as the reference's models take it)
    is written at those positions and attended over whole (`fixed`: the mask hides what is not written yet), so
    every decoding step has the same shapes. Otherwise the tokens follow the cache's current length and
    attention sees past + q_len positions.
    """
    length = getattr(cache, "max_cache_len", None) if cache_position is not None else None
    if length:
        return cache_position, length, True
    past = cache.get_seq_length() if cache is not None else 0
    if cache_position is None:
        cache_position = torch.arange(past, past + q_len, device=device)
    return cache_position, past + q_len, False


def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(batch, kv_heads, seq, d) -> (batch, kv_heads * groups, seq, d)."""
    if groups == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, groups, s, d).reshape(b, h * groups, s, d)


def attend(
    q: torch.Tensor,  # (batch, heads, q_len, d)
    k: torch.Tensor,  # (batch, kv_heads, kv_len, d)
    v: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float,
    implementation: str,
    dropout: float = 0.0,
    want_weights: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Returns (output of shape (batch, q_len, heads, d), attention weights or None)."""
    groups = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, groups), repeat_kv(v, groups)
    if implementation == "sdpa" and not want_weights:
        is_causal = mask is None and q.shape[2] > 1
        out = nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout, scale=scaling, is_causal=is_causal
        )
        return out.transpose(1, 2).contiguous(), None
    scores = torch.matmul(q, k.transpose(2, 3)) * scaling
    if mask is None and q.shape[2] > 1:
        mask = causal_mask(None, q.shape[2], k.shape[2], q.device) if q.shape[2] != k.shape[2] else torch.ones(
            q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril()[None, None]
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=dropout > 0)
    return torch.matmul(weights, v).transpose(1, 2).contiguous(), weights
