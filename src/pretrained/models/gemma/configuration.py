from __future__ import annotations

from typing import Any

from ..llama.configuration import LlamaConfig


class GemmaConfig(LlamaConfig):
    """Gemma hyper-parameters: Llama's, with Gemma-7B's defaults (explicit `head_dim`, tanh-approximated GELU,
    tied word embeddings, pad/eos/bos = 0/1/2). `hidden_act="gelu"` in old Gemma configs meant the tanh
    approximation and is read as "gelu_pytorch_tanh". Gemma has no `mlp_bias` or `pretraining_tp`."""

    model_type = "gemma"
    value_rules = {"use_bidirectional_attention": "bool?"}

    def __init__(
        self,
        *,
        vocab_size: int = 256000,
        hidden_size: int = 3072,
        intermediate_size: int = 24576,
        num_hidden_layers: int = 28,
        num_attention_heads: int = 16,
        num_key_value_heads: int | None = 16,
        head_dim: int | None = 256,
        hidden_act: str = "gelu_pytorch_tanh",
        max_position_embeddings: int = 8192,
        pad_token_id: int | None = 0,
        eos_token_id: int | list[int] | None = 1,
        bos_token_id: int | None = 2,
        tie_word_embeddings: bool = True,
        use_bidirectional_attention: bool | None = None,
        **kwargs: Any,
    ) -> None:
        self.use_bidirectional_attention = use_bidirectional_attention
        super().__init__(
            vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
            num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
            num_key_value_heads=num_key_value_heads, head_dim=head_dim,
            hidden_act="gelu_pytorch_tanh" if hidden_act == "gelu" else hidden_act,
            max_position_embeddings=max_position_embeddings, pad_token_id=pad_token_id, eos_token_id=eos_token_id,
            bos_token_id=bos_token_id, tie_word_embeddings=tie_word_embeddings, **kwargs,
        )
        self._drop_unless_given(("mlp_bias", "pretraining_tp"), kwargs)
