from __future__ import annotations

from typing import Any

from ..llama.configuration import LlamaConfig


class MistralConfig(LlamaConfig):
    """Mistral hyper-parameters: Llama's, with Mistral-7B's defaults and sliding-window attention.

    `sliding_window`: each query attends to at most this many most recent positions (itself included), in every
    layer; None attends to all earlier positions. Mistral has no `attention_bias`, `mlp_bias` or
    `pretraining_tp` (its projections never have biases).
    """

    model_type = "mistral"
    value_rules = {"sliding_window": "size?"}

    def __init__(
        self,
        *,
        intermediate_size: int = 14336,
        num_key_value_heads: int | None = 8,
        max_position_embeddings: int = 4096 * 32,
        sliding_window: int | None = 4096,
        **kwargs: Any,
    ) -> None:
        self.sliding_window = sliding_window
        super().__init__(intermediate_size=intermediate_size, num_key_value_heads=num_key_value_heads,
                         max_position_embeddings=max_position_embeddings, **kwargs)
        self._drop_unless_given(("attention_bias", "mlp_bias", "pretraining_tp"), kwargs)
