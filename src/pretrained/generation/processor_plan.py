"""Which logits processors a `GenerationConfig` asks for, as plain data: shared by the JAX and TensorFlow decoding
loops (the PyTorch loop picks its processors in `logits.processors_for`, by the same rules). No framework."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from .config import GenerationConfig


@dataclasses.dataclass(frozen=True)
class ProcessorPlan:
    """Which processors a config asks for, with their settings: hashable, so it can key a compiled program. Each
    framework subclasses it with a `__call__` that applies them in the PyTorch order."""

    repetition_penalty: float | None = None
    no_repeat_ngram_size: int = 0
    min_length: int = 0
    min_new_tokens: int = 0
    eos: tuple[int, ...] = ()
    prompt_length: int = 0
    temperature: float | None = None
    top_k: int = 0
    top_p: float | None = None
    min_p: float | None = None
    min_keep: int = 1
    custom: tuple[Callable, ...] = ()  # 4.x-style processors: (sequences, scores, cur_len) -> scores

    @classmethod
    def from_config(cls, config: GenerationConfig, prompt_length: int, beams: bool,
                    custom: Sequence[Callable] = ()) -> ProcessorPlan:
        """The processors `config` asks for, as `generation.logits.processors_for` picks them."""
        g, eos = config.get, tuple(config.eos_token_ids)
        kw: dict[str, Any] = {"eos": eos, "prompt_length": prompt_length, "custom": tuple(custom)}
        if g("repetition_penalty") != 1.0:
            kw["repetition_penalty"] = float(g("repetition_penalty"))
        kw["no_repeat_ngram_size"] = g("no_repeat_ngram_size")
        if eos:
            kw["min_length"] = g("min_length")
            kw["min_new_tokens"] = g("min_new_tokens") or 0
        if g("do_sample"):
            kw["min_keep"] = len(eos) + 1 if beams and eos else 2 if beams else 1
            if g("temperature") != 1.0:
                kw["temperature"] = float(g("temperature"))
            kw["top_k"] = g("top_k") or 0
            if g("top_p") < 1.0:
                kw["top_p"] = float(g("top_p"))
            if g("min_p") is not None:
                kw["min_p"] = float(g("min_p"))
        return cls(**kw)
