"""BERT: a post-norm Transformer encoder over word + position + segment embeddings, with task heads.

Module names equal the checkpoint names (`bert.encoder.layer.0.attention.self.query.weight`, `cls.predictions.bias`).
Shapes: B batch, T tokens, H heads (fewer after pruning), D head size, C hidden, V vocabulary.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ...errors import ConfigError
from ...layers.mlp import activation
from ...layers.pruning import kept_rows, prune_linear, remaining_heads
from ...modeling.base import ModelFacts, PreTrainedModel
from ...modeling.losses import question_answering_loss, sequence_classification_loss, token_loss
from ...modeling.outputs import (
    BaseModelOutputWithPoolingAndCrossAttentions,
    MaskedLMOutput,
    ModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
    model_output,
)
from ...checkpoint.legacy import load_tf_weights
from .configuration import BertConfig


class BertEmbeddings(nn.Module):
    """LayerNorm(word + position + token type embeddings), then dropout."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        C = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, C, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, C)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, C)
        self.LayerNorm = nn.LayerNorm(C, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        # Computed, never saved (older checkpoints still carry position_ids: ignored on load).
        n = config.max_position_embeddings
        self.register_buffer("position_ids", torch.arange(n)[None], persistent=False)  # (1, max_positions)
        self.register_buffer("token_type_ids", torch.zeros(1, n, dtype=torch.long), persistent=False)

    def reset_buffers(self) -> None:
        """Recompute the buffers after the model was built on the meta device."""
        n = self.position_ids.shape[-1]
        self.position_ids.copy_(torch.arange(n)[None])
        self.token_type_ids.zero_()

    def forward(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None) -> torch.Tensor:
        x = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, C)
        B, T = x.shape[:2]
        if position_ids is None:
            if T > self.position_ids.shape[-1]:
                raise ValueError(f"Sequence length {T} exceeds max_position_embeddings "
                                 f"({self.position_ids.shape[-1]}); truncate the input.")
            position_ids = self.position_ids[:, :T]
        if token_type_ids is None:
            token_type_ids = self.token_type_ids[:, :T].expand(B, T)
        x = x + self.token_type_embeddings(token_type_ids) + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    """Multi-head scaled dot-product attention; `num_attention_heads` shrinks when heads are pruned."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = config.hidden_size // config.num_attention_heads
        self.all_head_size = self.num_attention_heads * self.attention_head_size
        self.scaling = self.attention_head_size**-0.5
        self.query = nn.Linear(config.hidden_size, self.all_head_size)
        self.key = nn.Linear(config.hidden_size, self.all_head_size)
        self.value = nn.Linear(config.hidden_size, self.all_head_size)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def forward(self, x, bias=None, head_mask=None, output_attentions=False):
        """x (B, T, C); bias additive (B, 1, 1|T, T) or None; head_mask (1|B, H, 1, 1) or None.
        Returns context (B, T, H*D) and, when asked, the attention probabilities (B, H, T, T)."""
        B, T, _ = x.shape
        H, D = self.num_attention_heads, self.attention_head_size
        q = self.query(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = self.key(x).view(B, T, H, D).transpose(1, 2)
        v = self.value(x).view(B, T, H, D).transpose(1, 2)
        p = self.dropout.p if self.training else 0.0
        eager = output_attentions or head_mask is not None or self.config._attn_implementation == "eager"
        if eager:
            scores = torch.matmul(q, k.transpose(2, 3)) * self.scaling  # (B, H, T, T)
            if bias is not None:
                scores = scores + bias
            probs = nn.functional.dropout(scores.softmax(dim=-1), p=p, training=self.training)
            if head_mask is not None:
                probs = probs * head_mask
            context = torch.matmul(probs, v)
        else:
            probs = None
            context = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p,
                                                                 scale=self.scaling)
        context = context.transpose(1, 2).reshape(B, T, H * D)
        return context, probs if output_attentions else None


class BertOutput(nn.Module):
    """LayerNorm(residual + dropout(dense(x))): closes both the attention block (x = attention context, width
    hidden) and the feed-forward block (x = intermediate activations)."""

    def __init__(self, config: BertConfig, in_features: int) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden)) + residual)


class BertAttention(nn.Module):
    """Self-attention + output projection: the block whose heads can be pruned (see layers/pruning.py)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertOutput(config, config.hidden_size)
        self.total_heads = config.num_attention_heads
        self.pruned_heads: set[int] = set()

    def prune_heads(self, heads) -> None:
        """Remove `heads` (original numbering, not yet removed): their rows of query/key/value, their columns of
        the output projection."""
        heads = set(heads) - self.pruned_heads
        if not heads:
            return
        attn = self.self
        index = kept_rows(self.total_heads, attn.attention_head_size, self.pruned_heads, heads)
        attn.query = prune_linear(attn.query, index)
        attn.key = prune_linear(attn.key, index)
        attn.value = prune_linear(attn.value, index)
        self.output.dense = prune_linear(self.output.dense, index, dim=1)
        attn.num_attention_heads -= len(heads)
        attn.all_head_size = attn.num_attention_heads * attn.attention_head_size
        self.pruned_heads |= heads

    def forward(self, x, bias=None, head_mask=None, output_attentions=False):
        if head_mask is not None and self.pruned_heads and head_mask.shape[-3] == self.total_heads:
            keep = torch.tensor(remaining_heads(self.total_heads, self.pruned_heads), device=head_mask.device)
            head_mask = head_mask.index_select(-3, keep)  # a mask over the original heads: keep those still here
        context, probs = self.self(x, bias, head_mask, output_attentions)
        return self.output(context, x), probs


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(x))


class BertLayer(nn.Module):
    """Attention block, then the feed-forward block (optionally in chunks of `chunk_size_feed_forward` tokens)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        if config.add_cross_attention:
            raise ConfigError("add_cross_attention=True (BERT as an encoder-decoder's decoder) is not implemented.")
        self.chunk_size_feed_forward = config.chunk_size_feed_forward
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config, config.intermediate_size)

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.intermediate(x), x)

    def forward(self, x, bias=None, head_mask=None, output_attentions=False):
        x, probs = self.attention(x, bias, head_mask, output_attentions)
        n = self.chunk_size_feed_forward
        if n and x.shape[1] > n:
            x = torch.cat([self.feed_forward(chunk) for chunk in x.split(n, dim=1)], dim=1)
        else:
            x = self.feed_forward(x)
        return x, probs


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))
        self.gradient_checkpointing = False

    def forward(self, x, bias, head_masks, output_attentions, output_hidden_states):
        hidden, attentions = [], []
        for layer, head_mask in zip(self.layer, head_masks):
            if output_hidden_states:
                hidden.append(x)
            if self.gradient_checkpointing and self.training:
                x, probs = checkpoint(layer, x, bias, head_mask, output_attentions,
                                      **self.gradient_checkpointing_kwargs)
            else:
                x, probs = layer(x, bias, head_mask, output_attentions)
            if output_attentions:
                attentions.append(probs)
        if output_hidden_states:
            hidden.append(x)
        return x, tuple(hidden) if output_hidden_states else None, tuple(attentions) if output_attentions else None


class BertPooler(nn.Module):
    """tanh(dense(hidden state of the first token))."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, C)
        return self.activation(self.dense(hidden[:, 0]))


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform_act_fn = activation(config.hidden_act)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.transform_act_fn(self.dense(x)))


class BertLMPredictionHead(nn.Module):
    """transform, then `decoder` (tied to the word embeddings; its bias tied to `bias`) -> (B, T, V)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(x))


class BertOnlyMLMHead(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.predictions = BertLMPredictionHead(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictions(x)


class BertPreTrainedModel(PreTrainedModel):
    config_class = BertConfig
    facts = ModelFacts(
        base_model_prefix="bert",
        no_split_modules=("BertEmbeddings", "BertLayer"),
        input_embeddings="embeddings.word_embeddings",
        ignore_unexpected=(r"(^|\.)position_ids$",),  # a saved buffer in checkpoints older than 4.31
        attention_blocks="encoder.layer.*.attention",
        supports_gradient_checkpointing=True,
    )

    # Original TensorFlow 1 checkpoints (and 4.x tf_model.h5 files): load_tf_weights(model, config, path) reads
    # them into a built model without TensorFlow (checkpoint/legacy.py); from_pretrained(path, from_tf=True) too.
    load_tf_weights = staticmethod(load_tf_weights)

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, BertLMPredictionHead):
            module.bias.zero_()

    def _return(self, out, return_dict: bool | None):
        return out if (self.config.return_dict if return_dict is None else return_dict) else out.to_tuple()


class BertModel(BertPreTrainedModel):
    """The encoder: token ids (+ segment ids) -> hidden states (B, T, C) and, with the pooler, (B, C)."""

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True) -> None:
        super().__init__(config)
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, T) 1 token / 0 padding, or (B, T, T)
        token_type_ids: torch.LongTensor | None = None,  # (B, T) segment ids, default 0
        position_ids: torch.LongTensor | None = None,  # (1|B, T), default 0..T-1
        inputs_embeds: torch.Tensor | None = None,  # (B, T, C)
        head_mask: torch.Tensor | None = None,  # (H,) or (layers, H): 1 keep a head, 0 silence it
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ):
        cfg = self.config
        output_attentions = cfg.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = cfg.output_hidden_states if output_hidden_states is None else output_hidden_states
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Give exactly one of input_ids or inputs_embeds.")
        x = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds)
        bias = self._attention_bias(attention_mask, x)
        head_masks = self.get_head_mask(head_mask, cfg.num_hidden_layers)
        x, hidden, attentions = self.encoder(x, bias, head_masks, output_attentions, output_hidden_states)
        out = BaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=x, pooler_output=self.pooler(x) if self.pooler is not None else None,
            hidden_states=hidden, attentions=attentions,
        )
        return self._return(out, return_dict)

    def _attention_bias(self, attention_mask: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
        """Additive (B, 1, 1|T, T) bias, 0 = may attend, dtype-min = may not (causal too when `is_decoder`);
        None when nothing is masked."""
        B, T = x.shape[:2]
        if attention_mask is None:
            if not self.config.is_decoder:
                return None
            attention_mask = torch.ones(B, T, dtype=torch.long, device=x.device)
        elif attention_mask.dim() == 2 and not self.config.is_decoder and bool(attention_mask.all()):
            return None
        return self.get_extended_attention_mask(attention_mask.to(x.device), (B, T), dtype=x.dtype)


class _MaskedLMHead:
    """What a class with the masked-LM head (`cls.predictions`, decoder tied to the word embeddings and its bias to
    `cls.predictions.bias`) does on top of PreTrainedModel: BertForMaskedLM, BertForPreTraining."""

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.cls.predictions.decoder = value
        if value.bias is not None:
            self.cls.predictions.bias = value.bias

    def resize_token_embeddings(self, new_num_tokens=None, pad_to_multiple_of=None, mean_resizing=True):
        embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        old, n = self.cls.predictions.bias, self.config.vocab_size
        if old.shape[0] != n:  # the output bias follows the vocabulary (new entries 0)
            new = torch.zeros(n, dtype=old.dtype, device=old.device)
            keep = min(n, old.shape[0])
            new[:keep] = old.detach()[:keep]
            self.cls.predictions.bias = nn.Parameter(new, requires_grad=old.requires_grad)
            self.tie_weights()
        return embeddings


class BertForMaskedLM(_MaskedLMHead, BertPreTrainedModel):
    """Encoder + masked-language-model head: -> vocabulary logits (B, T, V)."""

    facts = BertPreTrainedModel.facts.but(
        tied_weights={"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
                      "cls.predictions.decoder.bias": "cls.predictions.bias"},
        output_embeddings="cls.predictions.decoder",
    )

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.cls = BertOnlyMLMHead(config)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels: torch.LongTensor | None = None,  # (B, T) token ids, -100 = not masked (ignored)
        head_mask=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ):
        base = self.bert(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, head_mask,
                         output_attentions, output_hidden_states, return_dict=True)
        logits = self.cls(base.last_hidden_state)
        loss = token_loss(logits, labels) if labels is not None else None
        out = MaskedLMOutput(loss=loss, logits=logits, hidden_states=base.hidden_states, attentions=base.attentions)
        return self._return(out, return_dict)


class BertForSequenceClassification(BertPreTrainedModel):
    """Encoder + pooler + linear classifier: -> (B, num_labels); regression when num_labels == 1."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config)
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(p)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels: torch.Tensor | None = None,  # (B,) class ids, or (B,)/(B, num_labels) floats
        head_mask=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ):
        base = self.bert(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, head_mask,
                         output_attentions, output_hidden_states, return_dict=True)
        logits = self.classifier(self.dropout(base.pooler_output))
        loss = sequence_classification_loss(logits, labels, self.config) if labels is not None else None
        out = SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=base.hidden_states,
                                       attentions=base.attentions)
        return self._return(out, return_dict)


class BertForTokenClassification(BertPreTrainedModel):
    """Encoder + linear classifier per token: -> (B, T, num_labels)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(p)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels: torch.LongTensor | None = None,  # (B, T), -100 = ignore
        head_mask=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ):
        base = self.bert(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, head_mask,
                         output_attentions, output_hidden_states, return_dict=True)
        logits = self.classifier(self.dropout(base.last_hidden_state))
        loss = token_loss(logits, labels) if labels is not None else None
        out = TokenClassifierOutput(loss=loss, logits=logits, hidden_states=base.hidden_states,
                                    attentions=base.attentions)
        return self._return(out, return_dict)


class BertForQuestionAnswering(BertPreTrainedModel):
    """Encoder + span head: start and end logits (B, T) of the answer span."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        start_positions: torch.LongTensor | None = None,  # (B,) token index of the answer's start
        end_positions: torch.LongTensor | None = None,  # (B,) token index of the answer's end
        head_mask=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ):
        base = self.bert(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, head_mask,
                         output_attentions, output_hidden_states, return_dict=True)
        start, end = self.qa_outputs(base.last_hidden_state).split(1, dim=-1)
        start, end = start.squeeze(-1).contiguous(), end.squeeze(-1).contiguous()
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = question_answering_loss(start, end, start_positions, end_positions)
        out = QuestionAnsweringModelOutput(loss=loss, start_logits=start, end_logits=end,
                                           hidden_states=base.hidden_states, attentions=base.attentions)
        return self._return(out, return_dict)


# ---- pre-training (issue 19: Google's original checkpoints hold both heads) -------------------------------------
@model_output
class BertForPreTrainingOutput(ModelOutput):
    loss: torch.Tensor | None = None  # masked-LM loss + next-sentence loss
    prediction_logits: torch.Tensor | None = None  # (B, T, V)
    seq_relationship_logits: torch.Tensor | None = None  # (B, 2): 0 = B follows A, 1 = B is random
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class BertPreTrainingHeads(nn.Module):
    """The masked-LM head (`predictions`) and the next-sentence head (`seq_relationship`, on the pooled output)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.predictions = BertLMPredictionHead(config)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)

    def forward(self, hidden: torch.Tensor, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.predictions(hidden), self.seq_relationship(pooled)


class BertForPreTraining(_MaskedLMHead, BertPreTrainedModel):
    """Encoder + both pre-training heads, as Google's original BERT checkpoints hold them: vocabulary logits
    (B, T, V) and next-sentence logits (B, 2). Names as the reference's (`cls.predictions.*`,
    `cls.seq_relationship.*`)."""

    facts = BertForMaskedLM.facts

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        self.bert = BertModel(config)
        self.cls = BertPreTrainingHeads(config)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels: torch.LongTensor | None = None,  # (B, T) token ids, -100 = not masked (ignored)
        next_sentence_label: torch.LongTensor | None = None,  # (B,) 0 = B follows A, 1 = B is random
        head_mask=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ):
        base = self.bert(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, head_mask,
                         output_attentions, output_hidden_states, return_dict=True)
        prediction_logits, seq_logits = self.cls(base.last_hidden_state, base.pooler_output)
        loss = None
        if labels is not None and next_sentence_label is not None:
            loss = token_loss(prediction_logits, labels) + token_loss(seq_logits, next_sentence_label.reshape(-1))
        out = BertForPreTrainingOutput(loss=loss, prediction_logits=prediction_logits,
                                       seq_relationship_logits=seq_logits, hidden_states=base.hidden_states,
                                       attentions=base.attentions)
        return self._return(out, return_dict)
