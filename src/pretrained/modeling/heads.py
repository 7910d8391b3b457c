"""Task heads for decoder-only families, written once and shared by every family that has them.

A family gets a task class by naming its base model; the head brings its layers, facts and forward:

    class LlamaForSequenceClassification(DecoderForSequenceClassification, LlamaPreTrainedModel):
        base_class = LlamaModel

The head is a mixin and comes first among the bases; the family's PreTrainedModel comes second and supplies the
config class, the facts and `_init_weights`. The base model is stored under the attribute the facts'
`base_model_prefix` names ("model", or "transformer" where old checkpoints use that), so parameter names equal
the ecosystem's (`model.layers.0...`, `score.weight`, `qa_outputs.bias`).

The base model's forward takes (input_ids, attention_mask, position_ids, cache, inputs_embeds,
use_cache, output_attentions, output_hidden_states, return_dict) and returns a `BaseModelOutputWithPast`.
Shapes: B batch, T tokens, C hidden, V vocabulary, L labels.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ..generation.loop import GenerationMixin
from .losses import causal_lm_loss, question_answering_loss, sequence_classification_loss, token_loss
from .outputs import (
    accepts_past_key_values,
    CausalLMOutputWithPast,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutputWithPast,
    TokenClassifierOutput,
)


class DecoderHead:
    """What every decoder task class shares: building the base model and running it."""

    base_class: ClassVar[type[nn.Module]]  # the family's base model class, e.g. LlamaModel

    def __init__(self, config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        setattr(self, self.facts.base_model_prefix, self.base_class(config))

    def _run_base(self, input_ids, attention_mask, position_ids, cache, inputs_embeds, use_cache,
                  output_attentions, output_hidden_states, cache_position=None):
        extra = {} if cache_position is None else {"cache_position": cache_position}
        return self.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               cache=cache, inputs_embeds=inputs_embeds, use_cache=use_cache,
                               output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                               return_dict=True, **extra)

    def _finish(self, out, return_dict: bool | None):
        return out if (self.config.return_dict if return_dict is None else return_dict) else out.to_tuple()


class DecoderForCausalLM(DecoderHead, GenerationMixin):
    """Base model + `lm_head` (no bias): next-token logits (B, T, V). The head is tied to the input embeddings
    when `config.tie_word_embeddings` is set."""

    # tensor parallelism (distributed/plan.py): the head splits the vocabulary, its output gathered (full logits)
    _tp_plan: ClassVar[dict[str, str]] = {"lm_head": "colwise_gather_output"}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        f = cls.facts  # the family's facts, plus the tie and the output embeddings this head brings
        cls.facts = f.but(tied_weights={"lm_head.weight": f"{f.base_model_prefix}.{f.input_embeddings}.weight"},
                          output_embeddings="lm_head", can_generate=True)
        super().__init_subclass__(**kwargs)

    def __init__(self, config) -> None:
        super().__init__(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @accepts_past_key_values
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, S): 1 token, 0 padding
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,  # (B, T, C)
        labels: torch.LongTensor | None = None,  # (B, T), -100 = ignore; shifted inside
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int = 0,  # 0 = all positions; n = only the last n
        cache_position: torch.LongTensor | None = None,  # (T,) where the new tokens go in a fixed-length cache
    ):
        base = self._run_base(input_ids, attention_mask, position_ids, cache, inputs_embeds, use_cache,
                              output_attentions, output_hidden_states, cache_position)
        hidden = base.last_hidden_state if not logits_to_keep else base.last_hidden_state[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = causal_lm_loss(logits, labels) if labels is not None else None
        return self._finish(CausalLMOutputWithPast(loss=loss, logits=logits, cache=base.cache,
                                                   hidden_states=base.hidden_states, attentions=base.attentions),
                            return_dict)


class DecoderForSequenceClassification(DecoderHead):
    """Base model + `score` (no bias), read at each sequence's last non-padding token: logits (B, L).

    The last token is the rightmost one that is not `config.pad_token_id` (left and right padding both work).
    Without a pad token only a batch of one can be classified (its last position); with `inputs_embeds` the
    last position is used.
    """

    def __init__(self, config) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()

    @accepts_past_key_values
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,  # (B,) class ids, (B, L) multi-label floats, or (B,) regression targets
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ):
        base = self._run_base(input_ids, attention_mask, position_ids, cache, inputs_embeds, use_cache,
                              output_attentions, output_hidden_states)
        logits = self.score(base.last_hidden_state)  # (B, T, L)
        batch = logits.shape[0]
        pad = self.config.pad_token_id
        if pad is None and batch != 1:
            raise ValueError(
                f"Cannot classify a batch of {batch} sequences without a padding token: set config.pad_token_id so "
                "that the last real token of each sequence can be found."
            )
        if pad is None or input_ids is None:
            last = torch.full((batch,), logits.shape[1] - 1, device=logits.device)
        else:  # rightmost position that is not padding (0 when a row is all padding)
            real = (input_ids != pad).to(device=logits.device, dtype=torch.int32)
            positions = torch.arange(input_ids.shape[-1], device=logits.device, dtype=torch.int32)
            last = (positions * real).argmax(-1)
        pooled = logits[torch.arange(batch, device=logits.device), last]  # (B, L)
        loss = sequence_classification_loss(pooled, labels, self.config) if labels is not None else None
        return self._finish(SequenceClassifierOutputWithPast(
            loss=loss, logits=pooled, cache=base.cache, hidden_states=base.hidden_states,
            attentions=base.attentions), return_dict)


class DecoderForQuestionAnswering(DecoderHead):
    """Base model + `qa_outputs` (C -> 2, with bias): start and end logits (B, T) of the answer span."""

    def __init__(self, config) -> None:
        super().__init__(config)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.post_init()

    @accepts_past_key_values
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        start_positions: torch.LongTensor | None = None,  # (B,); positions outside the sequence are ignored
        end_positions: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ):
        base = self._run_base(input_ids, attention_mask, position_ids, cache, inputs_embeds, use_cache,
                              output_attentions, output_hidden_states)
        start, end = self.qa_outputs(base.last_hidden_state).split(1, dim=-1)  # (B, T, 1) each
        start, end = start.squeeze(-1).contiguous(), end.squeeze(-1).contiguous()
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = question_answering_loss(start, end, start_positions, end_positions)
        return self._finish(QuestionAnsweringModelOutput(loss=loss, start_logits=start, end_logits=end,
                                                         hidden_states=base.hidden_states,
                                                         attentions=base.attentions), return_dict)


class DecoderForTokenClassification(DecoderHead):
    """Base model + dropout + `score` (bias unless `config.token_classification_bias` is False): logits (B, T, L).

    Dropout is `config.classifier_dropout`, else `config.hidden_dropout`, else 0.1.
    """

    def __init__(self, config) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        p = next((v for v in (getattr(config, "classifier_dropout", None), getattr(config, "hidden_dropout", None))
                  if v is not None), 0.1)
        self.dropout = nn.Dropout(p)
        self.score = nn.Linear(config.hidden_size, config.num_labels,
                               bias=getattr(config, "token_classification_bias", True))
        self.post_init()

    @accepts_past_key_values
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,  # (B, T), -100 = ignore
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ):
        base = self._run_base(input_ids, attention_mask, position_ids, cache, inputs_embeds, use_cache,
                              output_attentions, output_hidden_states)
        logits = self.score(self.dropout(base.last_hidden_state))
        loss = token_loss(logits, labels) if labels is not None else None
        return self._finish(TokenClassifierOutput(loss=loss, logits=logits, hidden_states=base.hidden_states,
                                                  attentions=base.attentions), return_dict)
