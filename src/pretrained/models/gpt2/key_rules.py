"""GPT-2's exceptions to the generic PyTorch <-> Keras / Flax name rules (`pretrained.tf.convert`,
`pretrained.flax.convert`), as plain data: the TF and Flax classes use them, and the PyTorch loader reads 4.x's
`tf_model.h5` / `flax_model.msgpack` with them without importing either framework. Imports nothing."""

TF_KEY_RULES = {
    # Conv1D biases are (1, out) in Keras (4.x's TF layout) and (out,) in PyTorch. (Their `weight` is no `kernel`:
    # the rule keeps it as it is, (in, out) on both sides.)
    "squeeze": (r"/(c_attn|c_proj|c_fc)/bias$",),
    # The head is the token embedding table: `lm_head.weight` has no Keras weight of its own while tied.
    "tied": (r"^lm_head\.weight$",),
    # Older PyTorch checkpoints save each block's causal-mask buffers.
    "ignore": (r"(^|\.)(attn|crossattention)\.(masked_)?bias$",),
}

FLAX_KEY_RULES = {
    # Conv1D weights are stored (in, out) in PyTorch and 4.x's Flax kernel is (out, in): the generic transpose
    # applies unchanged (listed for the record).
    "conv1d": (r"\.(c_attn|c_proj|c_fc)\.weight$",),
    # The head is the token embedding table: `lm_head.weight` has no Flax parameter of its own while tied.
    "tied": (r"^lm_head\.weight$",),
    # Older PyTorch checkpoints save each block's causal-mask buffers.
    "ignore": (r"(^|\.)attn\.(masked_)?bias$",),
}
