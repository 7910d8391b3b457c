from __future__ import annotations

from typing import Any

from ...configuration import ACTIVATIONS, PretrainedConfig
from ...errors import ConfigError


class T5Config(PretrainedConfig):
    """T5 hyper-parameters; defaults are t5-small's.

    `feed_forward_proj` is `"{act}"` (the original T5: relu) or `"gated-{act}"` (T5 v1.1, flan-t5: gated-gelu); it
    sets the derived `dense_act_fn` and `is_gated_act` ("gated-gelu" means the tanh approximation, `gelu_new`).

    `tie_word_embeddings` says whether `lm_head` shares the `shared` table (the stacks' `embed_tokens` always do).
    `scale_decoder_outputs` (the 5.x key; by default equal to `tie_word_embeddings`) says whether the decoder output
    is multiplied by d_model**-0.5 before the head, as the original tied T5 does. The 5.x reference always writes
    `tie_word_embeddings: true` and lets `scale_decoder_outputs` carry the difference, untying the head when a
    checkpoint stores its own `lm_head.weight`; both dialects read back to the same model here.
    """

    model_type = "t5"
    value_rules = {
        "vocab_size": "size", "d_model": "size", "d_kv": "size", "d_ff": "size", "num_layers": "layers",
        "num_decoder_layers": "layers?", "num_heads": "size", "relative_attention_num_buckets": "size",
        "relative_attention_max_distance": "size", "dropout_rate": "probability", "layer_norm_epsilon": "non-negative",
        "initializer_factor": "non-negative", "feed_forward_proj": "str", "is_encoder_decoder": "bool",
        "use_cache": "bool", "classifier_dropout": "probability", "is_decoder": "bool",
        "scale_decoder_outputs": "bool?",
    }
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "num_heads",
        "num_hidden_layers": "num_layers",
        "head_dim": "d_kv",
    }

    def __init__(
        self,
        vocab_size: int = 32128,
        d_model: int = 512,
        d_kv: int = 64,
        d_ff: int = 2048,
        num_layers: int = 6,
        num_decoder_layers: int | None = None,
        num_heads: int = 8,
        relative_attention_num_buckets: int = 32,
        relative_attention_max_distance: int = 128,
        dropout_rate: float = 0.1,
        layer_norm_epsilon: float = 1e-6,
        initializer_factor: float = 1.0,
        feed_forward_proj: str = "relu",
        is_encoder_decoder: bool = True,
        use_cache: bool = True,
        pad_token_id: int | None = 0,
        eos_token_id: int | list[int] | None = 1,
        decoder_start_token_id: int | None = 0,
        classifier_dropout: float = 0.0,
        is_decoder: bool = False,
        tie_word_embeddings: bool = True,
        scale_decoder_outputs: bool | None = None,
        **kwargs: Any,
    ) -> None:
        parts = feed_forward_proj.split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated") or not parts[-1]:
            raise ConfigError(
                f"feed_forward_proj='{feed_forward_proj}' is not a T5 feed-forward type: give '{{act}}' or "
                "'gated-{act}', e.g. 'relu' (original T5) or 'gated-gelu' (T5 v1.1)."
            )
        kwargs.pop("dense_act_fn", None)  # derived from feed_forward_proj (written by the reference, recomputed here)
        kwargs.pop("is_gated_act", None)
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.d_kv = d_kv
        self.d_ff = d_ff
        self.num_layers = num_layers
        self.num_decoder_layers = num_layers if num_decoder_layers is None else num_decoder_layers
        self.num_heads = num_heads
        self.relative_attention_num_buckets = relative_attention_num_buckets
        self.relative_attention_max_distance = relative_attention_max_distance
        self.dropout_rate = dropout_rate
        self.layer_norm_epsilon = layer_norm_epsilon
        self.initializer_factor = initializer_factor
        self.feed_forward_proj = feed_forward_proj
        self.is_gated_act = parts[0] == "gated" and len(parts) == 2
        self.dense_act_fn = "gelu_new" if feed_forward_proj == "gated-gelu" else parts[-1]
        if self.dense_act_fn not in ACTIVATIONS:
            raise ConfigError(f"feed_forward_proj='{feed_forward_proj}' names the activation '{parts[-1]}', which is "
                              f"not one of {', '.join(ACTIVATIONS)}.")
        self.use_cache = use_cache
        self.classifier_dropout = classifier_dropout
        self.is_decoder = is_decoder
        self.scale_decoder_outputs = bool(tie_word_embeddings) if scale_decoder_outputs is None else scale_decoder_outputs
        super().__init__(
            pad_token_id=pad_token_id, eos_token_id=eos_token_id, decoder_start_token_id=decoder_start_token_id,
            is_encoder_decoder=is_encoder_decoder, tie_word_embeddings=tie_word_embeddings, **kwargs,
        )
