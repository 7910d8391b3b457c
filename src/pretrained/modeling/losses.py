"""Task losses shared by every family (pure functions of logits and labels; -100 labels are ignored)."""

from __future__ import annotations

import torch
from torch import nn

IGNORE = -100


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE) -> torch.Tensor:
    """Mean cross-entropy of predicting token t+1 from position t. logits (B, T, V), labels (B, T)."""
    shifted = nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    return nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                       shifted.reshape(-1).to(logits.device), ignore_index=ignore_index)


def token_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE) -> torch.Tensor:
    """Mean cross-entropy per position, no shift (masked LM, token classification, seq2seq decoder)."""
    return nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                       labels.reshape(-1).to(logits.device), ignore_index=ignore_index)


def sequence_classification_loss(logits: torch.Tensor, labels: torch.Tensor, config) -> torch.Tensor:
    """Regression (MSE), single-label (CE) or multi-label (BCE with logits), chosen as the ecosystem does:
    `config.problem_type` if set, else from num_labels and the labels' dtype (and recorded in the config)."""
    num_labels = config.num_labels
    if config.problem_type is None:
        if num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    labels = labels.to(logits.device)
    if config.problem_type == "regression":
        if num_labels == 1:
            return nn.functional.mse_loss(logits.squeeze().float(), labels.squeeze().float())
        return nn.functional.mse_loss(logits.float(), labels.float())
    if config.problem_type == "single_label_classification":
        return nn.functional.cross_entropy(logits.float().view(-1, num_labels), labels.view(-1))
    return nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float())


def question_answering_loss(start_logits: torch.Tensor, end_logits: torch.Tensor,
                            start_positions: torch.Tensor, end_positions: torch.Tensor) -> torch.Tensor:
    """Mean of start and end cross-entropies; positions outside the sequence are clamped to it and ignored."""
    seq = start_logits.shape[1]
    start = start_positions.reshape(-1).clamp(0, seq).to(start_logits.device)
    end = end_positions.reshape(-1).clamp(0, seq).to(end_logits.device)
    ce = nn.CrossEntropyLoss(ignore_index=seq)
    return (ce(start_logits.float(), start) + ce(end_logits.float(), end)) / 2
