"""The t5 family. Names load lazily: the PyTorch classes import torch, the Flax ones jax and flax, the TF
ones tensorflow and keras, and `import pretrained.models.t5` imports none of them."""

from __future__ import annotations

from ..._lazy import lazy_exports

_EXPORTS = {
    "T5Config": "configuration",
    "T5EncoderModel": "modeling",
    "T5ForConditionalGeneration": "modeling",
    "T5Model": "modeling",
    "T5PreTrainedModel": "modeling",
    "FlaxT5EncoderModel": "modeling_flax",
    "FlaxT5ForConditionalGeneration": "modeling_flax",
    "FlaxT5Model": "modeling_flax",
    "FlaxT5PreTrainedModel": "modeling_flax",
    "TFT5EncoderModel": "modeling_tf",
    "TFT5ForConditionalGeneration": "modeling_tf",
    "TFT5Model": "modeling_tf",
    "TFT5PreTrainedModel": "modeling_tf",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
