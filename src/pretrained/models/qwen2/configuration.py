from __future__ import annotations

from typing import Any

from ...errors import ConfigError
from ..llama.configuration import LlamaConfig

LAYER_TYPES = ("full_attention", "sliding_attention")


class Qwen2Config(LlamaConfig):
    """Qwen2 hyper-parameters: Llama's, with Qwen2-7B's defaults and optional sliding-window layers.

    `use_sliding_window`: when False (the default) `sliding_window` is set to None and every layer attends to
    all earlier positions. `layer_types`: per layer "full_attention" or "sliding_attention"; by default the
    layers from `max_window_layers` on slide when a window is in use. Qwen2 has no `attention_bias`, `mlp_bias`
    or `pretraining_tp`: q/k/v always have biases, o and the MLP never do.
    """

    model_type = "qwen2"
    value_rules = {"sliding_window": "size?", "use_sliding_window": "bool", "max_window_layers": "count"}

    def __init__(
        self,
        *,
        vocab_size: int = 151936,
        intermediate_size: int = 22016,
        num_key_value_heads: int | None = 32,
        max_position_embeddings: int = 32768,
        bos_token_id: int | None = None,
        eos_token_id: int | list[int] | None = None,
        use_sliding_window: bool = False,
        sliding_window: int | None = 4096,
        max_window_layers: int = 28,
        layer_types: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        self.use_sliding_window = use_sliding_window
        self.sliding_window = sliding_window if use_sliding_window else None
        self.max_window_layers = max_window_layers
        super().__init__(vocab_size=vocab_size, intermediate_size=intermediate_size,
                         num_key_value_heads=num_key_value_heads, max_position_embeddings=max_position_embeddings,
                         bos_token_id=bos_token_id, eos_token_id=eos_token_id, **kwargs)
        self._drop_unless_given(("attention_bias", "mlp_bias", "pretraining_tp"), kwargs)
        if layer_types is None:
            layer_types = ["sliding_attention" if self.sliding_window is not None and i >= max_window_layers
                           else "full_attention" for i in range(self.num_hidden_layers)]
        layer_types = ["full_attention" if t == "attention" else t for t in layer_types]  # the oldest spelling
        unknown = sorted(set(layer_types) - set(LAYER_TYPES))
        if unknown or len(layer_types) != self.num_hidden_layers:
            raise ConfigError(f"layer_types must name one of {LAYER_TYPES} for each of the {self.num_hidden_layers} "
                              f"layers; got {list(layer_types)}.")
        self.layer_types = list(layer_types)
