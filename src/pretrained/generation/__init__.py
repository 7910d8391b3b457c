"""Generation: `GenerationConfig` (config.py), logits processors (logits.py), `GenerationMixin.generate` (loop.py),
streamers (streamers.py) and the key/value caches (cache.py)."""
