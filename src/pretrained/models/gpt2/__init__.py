"""The gpt2 family. Names load lazily: the PyTorch classes import torch, the Flax ones jax and flax, the TF
ones tensorflow and keras, and `import pretrained.models.gpt2` imports none of them."""

from __future__ import annotations

from ..._lazy import lazy_exports

_EXPORTS = {
    "GPT2Config": "configuration",
    "GPT2LMHeadModel": "modeling",
    "GPT2Model": "modeling",
    "GPT2PreTrainedModel": "modeling",
    "FlaxGPT2LMHeadModel": "modeling_flax",
    "FlaxGPT2Model": "modeling_flax",
    "FlaxGPT2PreTrainedModel": "modeling_flax",
    "TFGPT2LMHeadModel": "modeling_tf",
    "TFGPT2Model": "modeling_tf",
    "TFGPT2PreTrainedModel": "modeling_tf",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
