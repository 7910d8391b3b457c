"""Task losses of the TF classes, equal to the PyTorch classes' (`modeling/losses.py`): -100 labels are ignored and
the mean is taken over the rest. As 4.x's TF losses, each returns a tensor of shape (1,) (Keras reduces it further)."""

from __future__ import annotations

import tensorflow as tf

IGNORE = -100


def _masked_cross_entropy(logits: tf.Tensor, labels: tf.Tensor, ignore_index: int = IGNORE) -> tf.Tensor:
    """Mean cross-entropy over the labels that are not `ignore_index`; logits (N, V), labels (N,)."""
    logits = tf.cast(logits, tf.float32)
    labels = tf.cast(labels, tf.int32)
    keep = tf.not_equal(labels, ignore_index)
    safe = tf.where(keep, labels, tf.zeros_like(labels))
    per = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe, logits=logits)
    weights = tf.cast(keep, per.dtype)
    # an all-ignored batch gives 0 / 0 = nan, as PyTorch's mean over no element does
    return tf.reshape(tf.reduce_sum(per * weights) / tf.reduce_sum(weights), (1,))


def causal_lm_loss(logits: tf.Tensor, labels: tf.Tensor, ignore_index: int = IGNORE) -> tf.Tensor:
    """Predicting token t+1 from position t: logits (B, T, V), labels (B, T) (shifted inside)."""
    V = tf.shape(logits)[-1]
    return _masked_cross_entropy(tf.reshape(logits[:, :-1], (-1, V)), tf.reshape(labels[:, 1:], (-1,)), ignore_index)


def token_loss(logits: tf.Tensor, labels: tf.Tensor, ignore_index: int = IGNORE) -> tf.Tensor:
    """Per position, no shift (masked LM, token classification, a seq2seq decoder): logits (..., V)."""
    V = tf.shape(logits)[-1]
    return _masked_cross_entropy(tf.reshape(logits, (-1, V)), tf.reshape(labels, (-1,)), ignore_index)


def sequence_classification_loss(logits: tf.Tensor, labels: tf.Tensor, config) -> tf.Tensor:
    """Regression (MSE), single-label (CE) or multi-label (BCE with logits), chosen as the PyTorch classes do:
    `config.problem_type` if set, else from num_labels and the labels' dtype (and recorded in the config)."""
    num_labels = config.num_labels
    labels = tf.convert_to_tensor(labels)
    if config.problem_type is None:
        if num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype.is_integer:
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    logits = tf.cast(logits, tf.float32)
    if config.problem_type == "regression":
        if num_labels == 1:
            logits, labels = tf.reshape(logits, (-1,)), tf.reshape(labels, (-1,))
        return tf.reshape(tf.reduce_mean(tf.square(logits - tf.cast(labels, tf.float32))), (1,))
    if config.problem_type == "single_label_classification":
        return _masked_cross_entropy(tf.reshape(logits, (-1, num_labels)), tf.reshape(labels, (-1,)))
    per = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.cast(labels, tf.float32), logits=logits)
    return tf.reshape(tf.reduce_mean(per), (1,))


def question_answering_loss(start_logits: tf.Tensor, end_logits: tf.Tensor, start_positions: tf.Tensor,
                            end_positions: tf.Tensor) -> tf.Tensor:
    """Mean of the start and end cross-entropies; positions outside the sequence are clamped to it and ignored."""
    seq = tf.shape(start_logits)[1]
    start = tf.clip_by_value(tf.reshape(tf.cast(start_positions, tf.int32), (-1,)), 0, seq)
    end = tf.clip_by_value(tf.reshape(tf.cast(end_positions, tf.int32), (-1,)), 0, seq)
    start = tf.where(start == seq, IGNORE, start)
    end = tf.where(end == seq, IGNORE, end)
    return (_masked_cross_entropy(start_logits, start) + _masked_cross_entropy(end_logits, end)) / 2


__all__ = ["IGNORE", "causal_lm_loss", "question_answering_loss", "sequence_classification_loss", "token_loss"]
