"""A growing key/value cache: one (key, value) pair per layer, concatenated along the sequence axis."""

from __future__ import annotations

import torch


class DynamicCache:
    """Keys and values of shape (batch, kv_heads, seq, head_dim) per layer, grown by `update`."""

    def __init__(self, config=None) -> None:
        self.keys: list[torch.Tensor | None] = []
        self.values: list[torch.Tensor | None] = []

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int,
               cache_position: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this step's key/value for `layer_idx`; returns the whole cached key/value of that layer.
        (`cache_position` is for fixed-length caches; a growing cache always appends.)"""
        while len(self.keys) <= layer_idx:
            self.keys.append(None)
            self.values.append(None)
        if self.keys[layer_idx] is None:
            self.keys[layer_idx], self.values[layer_idx] = key, value
        else:
            self.keys[layer_idx] = torch.cat([self.keys[layer_idx], key], dim=-2)
            self.values[layer_idx] = torch.cat([self.values[layer_idx], value], dim=-2)
        return self.keys[layer_idx], self.values[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        if layer_idx >= len(self.keys) or self.keys[layer_idx] is None:
            return 0
        return self.keys[layer_idx].shape[-2]

    def __len__(self) -> int:
        return len(self.keys)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        for i in range(len(self.keys)):
            if self.keys[i] is not None:
                self.keys[i] = self.keys[i].index_select(0, beam_idx.to(self.keys[i].device))
                self.values[i] = self.values[i].index_select(0, beam_idx.to(self.values[i].device))


class EncoderDecoderCache:
    """The cache of an encoder-decoder's decoder: a `DynamicCache` grown by its self-attention, and one holding
    the cross-attention keys/values of the encoder output, computed on the first step and reused after
    (`is_updated[layer_idx]` says whether a layer's are there)."""

    def __init__(self, self_attention_cache: DynamicCache | None = None,
                 cross_attention_cache: DynamicCache | None = None) -> None:
        self.self_attention_cache = self_attention_cache if self_attention_cache is not None else DynamicCache()
        self.cross_attention_cache = cross_attention_cache if cross_attention_cache is not None else DynamicCache()
        self.is_updated: dict[int, bool] = {
            i: k is not None for i, k in enumerate(self.cross_attention_cache.keys)}

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Decoder tokens seen so far (the self-attention cache's length)."""
        return self.self_attention_cache.get_seq_length(layer_idx)

    def __len__(self) -> int:
        return len(self.self_attention_cache)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.self_attention_cache.reorder_cache(beam_idx)
        self.cross_attention_cache.reorder_cache(beam_idx)


class StaticCache:
    """A pre-allocated key/value cache: one (batch, kv_heads, max_cache_len, head_dim) buffer per layer, allocated
    on the first `update` (its batch, heads, dtype and device are known then) and written in place.

    Two ways to write it. Given `cache_position` (the positions of the new tokens, as models that support a fixed
    cache pass it), `update` writes there and returns the whole buffers: every decoding step then has the same
    shapes, which is what lets a compiled step run without recompiling (the model's mask hides the positions not
    written yet). Without it, `update` appends after what it holds and returns the filled part as a view."""

    def __init__(self, config=None, max_cache_len: int = 0) -> None:
        self.max_cache_len = max_cache_len
        self.keys: list[torch.Tensor | None] = []
        self.values: list[torch.Tensor | None] = []
        self.lengths: list[int | torch.Tensor] = []  # per layer: a count, or the last positions written (a
        #   tensor, read only when asked, so that writing never waits for the device)

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int,
               cache_position: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        while len(self.keys) <= layer_idx:
            self.keys.append(None)
            self.values.append(None)
            self.lengths.append(0)
        if self.keys[layer_idx] is None:
            B, H, _, D = key.shape
            self.keys[layer_idx] = key.new_zeros(B, H, self.max_cache_len, D)
            self.values[layer_idx] = value.new_zeros(B, value.shape[1], self.max_cache_len, value.shape[-1])
            if key.is_cuda:  # fixed addresses: CUDA graphs of a compiled step may then write them in place
                torch._dynamo.mark_static_address(self.keys[layer_idx])
                torch._dynamo.mark_static_address(self.values[layer_idx])
        if cache_position is not None:
            self.keys[layer_idx].index_copy_(2, cache_position, key)
            self.values[layer_idx].index_copy_(2, cache_position, value)
            if not torch.compiler.is_compiling():  # a compiled step's caller records it (`set_length`)
                self.lengths[layer_idx] = cache_position
            return self.keys[layer_idx], self.values[layer_idx]
        start, T = self.get_seq_length(layer_idx), key.shape[-2]
        if start + T > self.max_cache_len:
            raise ValueError(f"StaticCache is full: {start} + {T} tokens > max_cache_len={self.max_cache_len}.")
        self.keys[layer_idx][:, :, start:start + T] = key
        self.values[layer_idx][:, :, start:start + T] = value
        self.lengths[layer_idx] = start + T
        return self.keys[layer_idx][:, :, :start + T], self.values[layer_idx][:, :, :start + T]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        if layer_idx >= len(self.lengths):
            return 0
        n = self.lengths[layer_idx]
        return n if isinstance(n, int) else int(n[-1]) + 1

    def set_length(self, n: int) -> None:
        """Record that every layer holds `n` positions (after a compiled step, which cannot record it itself)."""
        self.lengths = [n] * len(self.keys)

    def __len__(self) -> int:
        return len(self.keys)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Rows reordered in place: the buffers stay the same tensors (a compiled step keeps working on them)."""
        for i, k in enumerate(self.keys):
            if k is not None:
                idx = beam_idx.to(k.device)
                k.copy_(k.index_select(0, idx))
                self.values[i].copy_(self.values[i].index_select(0, idx))
