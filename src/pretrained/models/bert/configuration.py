from __future__ import annotations

from typing import Any

from ...configuration import PretrainedConfig
from ...errors import ConfigError


class BertConfig(PretrainedConfig):
    """BERT hyper-parameters; defaults are bert-base-uncased's.

    `type_vocab_size` is the number of segment ids (`token_type_ids`); `classifier_dropout` defaults to
    `hidden_dropout_prob` in the classification heads; `is_decoder=True` makes self-attention causal.
    Checkpoints written by 4.x carry `position_embedding_type`; only "absolute" is implemented.
    """

    model_type = "bert"
    value_rules = {
        "vocab_size": "size", "hidden_size": "size", "num_hidden_layers": "layers", "num_attention_heads": "size",
        "intermediate_size": "size", "hidden_act": "activation", "hidden_dropout_prob": "probability",
        "attention_probs_dropout_prob": "probability", "max_position_embeddings": "size", "type_vocab_size": "count",
        "initializer_range": "non-negative", "layer_norm_eps": "non-negative", "classifier_dropout": "probability?",
        "is_decoder": "bool", "add_cross_attention": "bool", "use_cache": "bool",
    }

    def __init__(
        self,
        vocab_size: int = 30522,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.1,
        max_position_embeddings: int = 512,
        type_vocab_size: int = 2,
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-12,
        pad_token_id: int | None = 0,
        use_cache: bool = True,
        classifier_dropout: float | None = None,
        is_decoder: bool = False,
        add_cross_attention: bool = False,
        **kwargs: Any,
    ) -> None:
        if num_attention_heads <= 0 or hidden_size % num_attention_heads:
            raise ConfigError(
                f"hidden_size ({hidden_size}) must be a positive multiple of num_attention_heads "
                f"({num_attention_heads})."
            )
        kind = kwargs.get("position_embedding_type", "absolute")
        if kind != "absolute":
            raise ConfigError(
                f"position_embedding_type '{kind}' is not implemented; only 'absolute' position embeddings are."
            )
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.use_cache = use_cache
        self.classifier_dropout = classifier_dropout
        self.is_decoder = is_decoder
        self.add_cross_attention = add_cross_attention
        super().__init__(pad_token_id=pad_token_id, **kwargs)
