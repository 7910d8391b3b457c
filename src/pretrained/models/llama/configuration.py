from __future__ import annotations

from typing import Any, ClassVar

from ...configuration import PretrainedConfig
from ...errors import ConfigError


class LlamaConfig(PretrainedConfig):
    """Llama hyper-parameters; defaults are Llama-2-7B's. `head_dim` defaults to hidden_size / heads and
    `num_key_value_heads` to `num_attention_heads` (no grouped-query attention).

    Families built on Llama (Mistral, Qwen2, Gemma) subclass this config, override its defaults, add their own
    keys, and drop the Llama keys they do not have with `_drop_unless_given`, so that their `config.json` holds
    the keys their ecosystem's files hold.
    """

    model_type = "llama"
    default_rope_theta = 10000.0
    # Partition plan (tensor parallelism), shared by the PyTorch and the Flax classes (`flax/sharding.py`): module
    # pattern of the base model ("*" = a layer index) -> "colwise" (split output features) | "rowwise" (input
    # features) | "embedding_rowwise" (vocabulary rows); styles in `distributed/plan.py`. The reference's plan for
    # Llama, Mistral, Qwen2 and Gemma, which inherit it, plus the embedding. A class attribute: it is not written
    # to config.json.
    base_model_tp_plan: ClassVar[dict[str, str]] = {
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
        "layers.*.mlp.gate_proj": "colwise",
        "layers.*.mlp.up_proj": "colwise",
        "layers.*.mlp.down_proj": "rowwise",
        "embed_tokens": "embedding_rowwise",  # ours: the table split by vocabulary (a tied lm_head follows it)
    }
    value_rules = {
        "vocab_size": "size", "hidden_size": "size", "intermediate_size": "size", "num_hidden_layers": "layers",
        "num_attention_heads": "size", "num_key_value_heads": "size?", "head_dim": "size?",
        "max_position_embeddings": "size", "hidden_act": "activation", "rms_norm_eps": "non-negative",
        "initializer_range": "non-negative", "attention_dropout": "probability", "attention_bias": "bool",
        "mlp_bias": "bool", "pretraining_tp": "size", "use_cache": "bool",
    }

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 4096,
        intermediate_size: int = 11008,
        num_hidden_layers: int = 32,
        num_attention_heads: int = 32,
        num_key_value_heads: int | None = None,
        hidden_act: str = "silu",
        max_position_embeddings: int = 2048,
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-6,
        use_cache: bool = True,
        pad_token_id: int | None = None,
        bos_token_id: int | None = 1,
        eos_token_id: int | list[int] | None = 2,
        pretraining_tp: int = 1,
        tie_word_embeddings: bool = False,
        rope_parameters: dict | None = None,
        attention_bias: bool = False,
        attention_dropout: float = 0.0,
        mlp_bias: bool = False,
        head_dim: int | None = None,
        **kwargs: Any,
    ) -> None:
        if num_attention_heads <= 0 or (head_dim is None and hidden_size % num_attention_heads):
            raise ConfigError(
                f"hidden_size ({hidden_size}) must be a multiple of num_attention_heads ({num_attention_heads}), "
                "or give head_dim explicitly."
            )
        num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        if num_attention_heads % num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads ({num_attention_heads}) must be a multiple of num_key_value_heads "
                f"({num_key_value_heads})."
            )
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.pretraining_tp = pretraining_tp
        self.attention_bias = attention_bias
        self.attention_dropout = attention_dropout
        self.mlp_bias = mlp_bias
        self.head_dim = hidden_size // num_attention_heads if head_dim is None else head_dim
        super().__init__(
            pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings, rope_parameters=rope_parameters, **kwargs,
        )

    def _drop_unless_given(self, keys: tuple[str, ...], given: dict[str, Any]) -> None:
        """Forget Llama keys this family does not have, unless the caller passed them (then they are kept, like
        any unknown key, and written back)."""
        for key in keys:
            if key not in given:
                del self.__dict__[key]
