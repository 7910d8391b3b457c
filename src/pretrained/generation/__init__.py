"""Generation: `GenerationConfig` (config.py), logits processors (logits.py), `GenerationMixin.generate` (loop.py),
its `return_dict_in_generate` outputs (outputs.py), streamers (streamers.py) and the key/value caches (cache.py).

The names below are imported lazily, so that `pretrained.generation.config` stays free of torch."""

from __future__ import annotations

from .._lazy import lazy_exports


_EXPORTS = {
    "GenerationConfig": "config", "CompileConfig": "config", "GenerationMixin": "loop",
    "DynamicCache": "cache", "EncoderDecoderCache": "cache", "StaticCache": "cache",
    "TextStreamer": "streamers", "TokenStreamer": "streamers",
    "GenerateDecoderOnlyOutput": "outputs", "GenerateEncoderDecoderOutput": "outputs",
    "GenerateBeamDecoderOnlyOutput": "outputs", "GenerateBeamEncoderDecoderOutput": "outputs",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
