"""What `generate(..., return_dict_in_generate=True)` returns: dataclasses with the reference's class and field
names that also index like tuples (fields that are None are skipped), as the model outputs do.

Per-step fields are tuples with one entry per generated token: `scores` (the processed scores, (N, V) each),
`logits` (the raw last-position logits, (N, V) each), and, per step, one tensor per layer for attentions and hidden
states. N is the number of rows decoded side by side (B x num_return_sequences, or B x num_beams for beam search).
"""

from __future__ import annotations

from typing import Any

import torch

from ..modeling.outputs import ModelOutput, model_output

Steps = tuple[torch.Tensor, ...]
LayersPerStep = tuple[tuple[torch.Tensor, ...], ...]


@model_output
class GenerateDecoderOnlyOutput(ModelOutput):
    """Greedy decoding or sampling with a decoder-only model."""

    sequences: torch.LongTensor | None = None  # (N, S'): prompt + generated tokens
    scores: Steps | None = None  # output_scores: processed scores per step
    logits: Steps | None = None  # output_logits: raw logits per step
    attentions: LayersPerStep | None = None  # output_attentions: per step, per layer
    hidden_states: LayersPerStep | None = None  # output_hidden_states: per step, embeddings + per layer
    cache: Any = None  # the cache after the last step (None with use_cache=False); alias past_key_values


@model_output
class GenerateEncoderDecoderOutput(ModelOutput):
    """Greedy decoding or sampling with an encoder-decoder model."""

    sequences: torch.LongTensor | None = None  # (N, S'): decoder_start_token_id + generated tokens
    scores: Steps | None = None
    logits: Steps | None = None
    encoder_attentions: tuple[torch.Tensor, ...] | None = None  # the encoder's, once, (B, ...) per layer
    encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    decoder_attentions: LayersPerStep | None = None
    cross_attentions: LayersPerStep | None = None
    decoder_hidden_states: LayersPerStep | None = None
    cache: Any = None


@model_output
class GenerateBeamDecoderOnlyOutput(ModelOutput):
    """Beam search (or beam sampling) with a decoder-only model."""

    sequences: torch.LongTensor | None = None  # (B x num_return_sequences, S')
    sequences_scores: torch.Tensor | None = None  # output_scores: (B x num_return_sequences,) final beam scores
    scores: Steps | None = None  # output_scores: processed log-probabilities per step, (B x num_beams, V) each
    logits: Steps | None = None
    beam_indices: torch.Tensor | None = None  # (B x num_return_sequences, generated) int32, -1 past the end
    attentions: LayersPerStep | None = None
    hidden_states: LayersPerStep | None = None
    cache: Any = None


@model_output
class GenerateBeamEncoderDecoderOutput(ModelOutput):
    """Beam search (or beam sampling) with an encoder-decoder model."""

    sequences: torch.LongTensor | None = None
    sequences_scores: torch.Tensor | None = None
    scores: Steps | None = None
    logits: Steps | None = None
    beam_indices: torch.Tensor | None = None
    encoder_attentions: tuple[torch.Tensor, ...] | None = None
    encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    decoder_attentions: LayersPerStep | None = None
    cross_attentions: LayersPerStep | None = None
    decoder_hidden_states: LayersPerStep | None = None
    cache: Any = None
