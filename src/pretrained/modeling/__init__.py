"""PreTrainedModel and what it is made of: loading, dtype planning, module utilities, embeddings, outputs."""
