from __future__ import annotations

from typing import Any

from ...configuration import PretrainedConfig
from ...errors import ConfigError


class GPT2Config(PretrainedConfig):
    """GPT-2 hyper-parameters under the names OpenAI's checkpoints use; defaults are GPT-2 small's (124M).

    The common names read and write the GPT-2 ones through `attribute_map`: `hidden_size` is `n_embd`,
    `num_hidden_layers` is `n_layer`, `num_attention_heads` is `n_head`, `max_position_embeddings` is
    `n_positions`. `n_inner=None` means a feed-forward width of 4 * n_embd. The `summary_*` fields serve the
    reference's double-heads model; they are kept so configs round-trip unchanged.
    """

    model_type = "gpt2"
    value_rules = {
        "vocab_size": "size", "n_positions": "size", "n_embd": "size", "n_layer": "layers", "n_head": "size",
        "n_inner": "size?", "activation_function": "activation", "resid_pdrop": "probability",
        "embd_pdrop": "probability", "attn_pdrop": "probability", "layer_norm_epsilon": "non-negative",
        "initializer_range": "non-negative", "scale_attn_weights": "bool", "use_cache": "bool",
        "scale_attn_by_inverse_layer_idx": "bool", "reorder_and_upcast_attn": "bool", "add_cross_attention": "bool",
    }
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {
        "hidden_size": "n_embd",
        "max_position_embeddings": "n_positions",
        "num_attention_heads": "n_head",
        "num_hidden_layers": "n_layer",
    }

    def __init__(
        self,
        vocab_size: int = 50257,
        n_positions: int = 1024,
        n_embd: int = 768,
        n_layer: int = 12,
        n_head: int = 12,
        n_inner: int | None = None,
        activation_function: str = "gelu_new",
        resid_pdrop: float = 0.1,
        embd_pdrop: float = 0.1,
        attn_pdrop: float = 0.1,
        layer_norm_epsilon: float = 1e-5,
        initializer_range: float = 0.02,
        summary_type: str = "cls_index",
        summary_use_proj: bool = True,
        summary_activation: str | None = None,
        summary_proj_to_labels: bool = True,
        summary_first_dropout: float = 0.1,
        scale_attn_weights: bool = True,  # scores / sqrt(head_dim)
        use_cache: bool = True,
        bos_token_id: int | None = 50256,
        eos_token_id: int | list[int] | None = 50256,
        pad_token_id: int | None = None,
        scale_attn_by_inverse_layer_idx: bool = False,  # scores additionally / (layer_idx + 1)
        reorder_and_upcast_attn: bool = False,  # eager attention scores and softmax in float32
        add_cross_attention: bool = False,
        tie_word_embeddings: bool = True,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.n_positions = n_positions
        self.n_embd = n_embd
        self.n_layer = n_layer
        self.n_head = n_head
        self.n_inner = n_inner
        self.activation_function = activation_function
        self.resid_pdrop = resid_pdrop
        self.embd_pdrop = embd_pdrop
        self.attn_pdrop = attn_pdrop
        self.layer_norm_epsilon = layer_norm_epsilon
        self.initializer_range = initializer_range
        self.summary_type = summary_type
        self.summary_use_proj = summary_use_proj
        self.summary_activation = summary_activation
        self.summary_proj_to_labels = summary_proj_to_labels
        self.summary_first_dropout = summary_first_dropout
        self.scale_attn_weights = scale_attn_weights
        self.use_cache = use_cache
        self.scale_attn_by_inverse_layer_idx = scale_attn_by_inverse_layer_idx
        self.reorder_and_upcast_attn = reorder_and_upcast_attn
        self.add_cross_attention = add_cross_attention
        super().__init__(
            bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
            tie_word_embeddings=tie_word_embeddings, **kwargs,
        )
        # checked after super(): a common name in kwargs (hidden_size=...) may have set a GPT-2 one
        if self.n_head <= 0 or self.n_embd % self.n_head:
            raise ConfigError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head}).")
