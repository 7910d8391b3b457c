"""Generation: `GenerationConfig` (config.py), logits processors (logits.py), `GenerationMixin.generate` (loop.py),
its `return_dict_in_generate` outputs (outputs.py), streamers (streamers.py) and the key/value caches (cache.py).

The names below are imported lazily, so that `pretrained.generation.config` stays free of torch."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "GenerationConfig": "config", "CompileConfig": "config", "GenerationMixin": "loop",
    "DynamicCache": "cache", "EncoderDecoderCache": "cache", "StaticCache": "cache",
    "TextStreamer": "streamers", "TokenStreamer": "streamers",
    "GenerateDecoderOnlyOutput": "outputs", "GenerateEncoderDecoderOutput": "outputs",
    "GenerateBeamDecoderOnlyOutput": "outputs", "GenerateBeamEncoderDecoderOutput": "outputs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pretrained.generation' has no attribute '{name}'")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
