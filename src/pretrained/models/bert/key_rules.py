"""BERT's exceptions to the generic PyTorch <-> Keras / Flax name rules (`pretrained.tf.convert`,
`pretrained.flax.convert`), as plain data: the TF and Flax classes use them, and the PyTorch loader reads 4.x's
`tf_model.h5` / `flax_model.msgpack` with them without importing either framework. Imports nothing."""

# 4.x named the masked-LM head `mlm___cls` in Keras and `cls` in PyTorch; its decoder is the word embedding table
# (no Keras weight while tied) and its bias `cls.predictions.bias`; checkpoints older than 4.31 carry the
# position_ids buffer.
TF_KEY_RULES = {
    "pytorch_names": {
        r"^mlm___cls/predictions/bias$": "cls.predictions.bias",
        r"^mlm___cls/predictions/transform/(dense|LayerNorm)/(kernel|gamma)$": r"cls.predictions.transform.\1.weight",
        r"^mlm___cls/predictions/transform/(dense|LayerNorm)/(bias|beta)$": r"cls.predictions.transform.\1.bias",
        r"^mlm___cls/predictions/decoder/kernel$": "cls.predictions.decoder.weight",  # untied only
        r"^mlm___cls/predictions/decoder/bias$": "cls.predictions.decoder.bias",
    },
    "tied": (r"^cls\.predictions\.decoder\.weight$", r"^cls\.predictions\.decoder\.bias$"),
    "ignore": (r"(^|[./])position_ids$",),
}

# What the generic PyTorch <-> Flax name mapping cannot infer from shapes alone.
FLAX_KEY_RULES = {
    # (LayerNorm gamma/beta of checkpoints converted from the original TensorFlow BERT: convert.py's generic
    # legacy spellings.)
    # The MLM decoder is the word embedding table transposed (no `decoder` parameter in the Flax tree while
    # tied) and its bias is `cls.predictions.bias`: PyTorch keys that carry no parameter of their own.
    "tied": (r"^cls\.predictions\.decoder\.weight$", r"^cls\.predictions\.decoder\.bias$"),
    # Old checkpoints save the position_ids buffer.
    "ignore": (r"(^|\.)position_ids$",),
}

# Google's original TensorFlow 1 BERT checkpoints (`bert_model.ckpt`): the generic Keras rule after "layer_N" is read
# as "layer_._N", plus the embedding tables (variables themselves, no leaf) and the pre-training heads, whose
# next-sentence weight `output_weights` is stored [2, hidden] as PyTorch keeps it (no transpose: it is no `kernel`).
TF1_KEY_RULES = {
    "pytorch_names": {
        r"^bert/embeddings/(word|position|token_type)_embeddings$": r"bert.embeddings.\1_embeddings.weight",
        r"^cls/predictions/output_bias$": "cls.predictions.bias",
        r"^cls/seq_relationship/output_weights$": "cls.seq_relationship.weight",
        r"^cls/seq_relationship/output_bias$": "cls.seq_relationship.bias",
    },
}
