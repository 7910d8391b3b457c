"""Shared fixtures: tiny configs and reference ("oracle") models built from the same config dict.

The reference library (`transformers`) is a test dependency only; the library under test never imports it.
"""

from __future__ import annotations

import pytest
import torch

# Small enough that a model builds in milliseconds, large enough to exercise grouped-query attention
# (4 heads, 2 kv heads), several layers and rotary embeddings (head_dim 8). initializer_range is 10x the usual
# 0.02 so that attention is sharp and logits are O(1): a wrong position, mask or scale then moves the logits far
# more than the 1e-5 parity tolerance, instead of hiding in near-uniform attention.
TINY_LLAMA = {
    "vocab_size": 128,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
    "tie_word_embeddings": False,
    "initializer_range": 0.2,
}


@pytest.fixture
def tiny_llama_config():
    """Factory: `tiny_llama_config(**overrides)` -> a fresh config dict (keyword arguments of a Llama config)."""

    def make(**overrides) -> dict:
        return {**TINY_LLAMA, **overrides}

    return make


@pytest.fixture
def reference_llama():
    """Factory: `reference_llama(config_dict, seed=0, base=False, **config_kwargs)` -> a seeded reference
    `transformers.LlamaForCausalLM` (or `LlamaModel` with base=True), in eval mode."""
    transformers = pytest.importorskip("transformers")

    def make(config: dict, seed: int = 0, base: bool = False, **config_kwargs):
        torch.manual_seed(seed)
        cls = transformers.LlamaModel if base else transformers.LlamaForCausalLM
        return cls(transformers.LlamaConfig(**config, **config_kwargs)).eval()

    return make


@pytest.fixture
def token_ids():
    """Factory: `token_ids(batch, seq, vocab=128, seed=0)` -> a (batch, seq) LongTensor of random ids."""

    def make(batch: int = 2, seq: int = 7, vocab: int = TINY_LLAMA["vocab_size"], seed: int = 0) -> torch.Tensor:
        return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))

    return make
