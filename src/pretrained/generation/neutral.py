"""What the compiled decoding loops of the Flax and TF classes (`flax/generation.py`, `tf/generation.py`) do the same
way, written once and free of every framework: generate()'s argument checks, the prompt as int32 arrays, the
settings derived from the config (lengths, token ids, beams, fill value), the plan that keys a compiled program, and
the order the logits processors run in. Each loop adds its own ops and switches (`trace`, `jit_compile`, ...).
`loop` arguments name the framework as the messages do: "Flax" or "TF".

This module imports no torch, jax, flax, tensorflow or keras.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

from ..errors import ConfigError
from .config import GenerationConfig
from .processor_plan import ProcessorPlan


# ---- generate()'s arguments ------------------------------------------------------------------------------------------
def take_input_ids(model: Any, input_ids: Any, overrides: dict, loop: str) -> Any:
    """generate()'s first checks: the model can generate, input ids are given (also as `inputs=`, 4.x's name, taken
    out of `overrides`), no streamer (the compiled loop runs in one call)."""
    if not model.can_generate():
        raise TypeError(f"{type(model).__name__} cannot generate: it has no language-model head. Use a class "
                        f"such as {loop}AutoModelForCausalLM.")
    if input_ids is None:
        input_ids = overrides.pop("inputs", None)
    if input_ids is None:
        raise ValueError("generate() needs input_ids (B, S).")
    if overrides.pop("streamer", None) is not None:
        raise ValueError(f"generate(): the {loop} loop runs compiled, in one call: it cannot stream. Use the PyTorch "
                         "class for a streamer.")
    return input_ids


def request_config(model: Any, generation_config: GenerationConfig | None, overrides: dict,
                   loop: str) -> GenerationConfig:
    """The config of this call: `generation_config` (default: the model's own) copied with `overrides` applied, as
    in PyTorch; stop strings refused (they need a tokenizer at every step)."""
    base = generation_config or getattr(model, "generation_config", None) \
        or GenerationConfig.from_model_config(model.config)
    config = base.copy(**overrides)
    if config.get("stop_strings"):
        raise ValueError(f"generate(): stop_strings need a tokenizer at every step; the {loop} loop runs compiled. "
                         "Use eos_token_id, or the PyTorch class.")
    return config


def special_tokens(config: GenerationConfig) -> tuple[tuple[int, ...], int | None]:
    """(EOS ids, pad id): the pad token defaults to the first EOS, as in PyTorch."""
    eos = tuple(config.eos_token_ids)
    return eos, config.pad_token_id if config.pad_token_id is not None else (eos[0] if eos else None)


def mask_pad(pad: int | None, eos: tuple[int, ...], encoder_decoder: bool) -> int | None:
    """The token a missing attention mask is inferred from: the pad token, for decoder-only models and when it is no
    EOS token, as the PyTorch loop does; else None (no inference)."""
    return None if encoder_decoder or pad in eos else pad


def prompt_arrays(input_ids: Any, attention_mask: Any, pad: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(ids, mask), int32 numpy (B, S), from arrays, lists or tensors; without a mask, one is inferred from `pad`
    (None: not inferred) when the prompts hold it."""
    ids = np.asarray(input_ids)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"generate(): input_ids must be integer token ids of shape (B, S); got {ids.dtype} "
                         f"{ids.shape}.")
    ids = ids.astype(np.int32)
    if attention_mask is None:
        mask = np.ones_like(ids)
        if pad is not None and (ids == pad).any():
            mask = (ids != pad).astype(np.int32)
    else:
        mask = np.asarray(attention_mask).astype(np.int32)
        if mask.ndim == 1:
            mask = mask[None]
        if mask.shape != ids.shape:
            raise ValueError(f"generate(): attention_mask has shape {mask.shape}; input_ids has {ids.shape}.")
    return ids, mask


# ---- what one call decodes -------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DecodingPlan:
    """Everything static about one compiled decoding program (hashable: it keys the program kept on the model).
    Each loop subclasses it with its own switches."""

    max_length: int
    expand: int  # rows per prompt: beams, or returned sequences
    eos: tuple[int, ...]
    pad: int | None  # written after a row's EOS (greedy / sampling)
    fill: int  # the value of positions nothing was written to
    processors: ProcessorPlan
    sample: bool
    beams: int
    returned: int
    length_penalty: float
    early_stopping: bool | str
    encoder_decoder: bool
    start: int | None  # decoder_start_token_id (encoder-decoders)


@dataclasses.dataclass(frozen=True)
class Decoding:
    """The settings of one generate call, derived from its config as the PyTorch loop derives them (`of`)."""

    config: GenerationConfig
    eos: tuple[int, ...]
    pad: int | None
    encoder_decoder: bool
    beams: int
    sample: bool
    returned: int
    start: int | None
    prompt_length: int  # 1 for an encoder-decoder (the decoder start token)
    max_length: int

    @classmethod
    def of(cls, model_config: Any, config: GenerationConfig, eos: tuple[int, ...], pad: int | None,
           encoder_decoder: bool, prompt_width: int) -> Decoding:
        """The settings for prompts `prompt_width` tokens long; an invalid combination raises ConfigError."""
        beams, sample = config.get("num_beams"), config.get("do_sample")
        returned = config.get("num_return_sequences")
        if beams > 1 and returned > beams:
            raise ConfigError(f"GenerationConfig.num_return_sequences={returned} is invalid: beam search returns at "
                              f"most num_beams={beams} sequences.")
        start = None
        if encoder_decoder:
            start = next((s for s in (config.decoder_start_token_id,
                                      getattr(model_config, "decoder_start_token_id", None), config.bos_token_id)
                          if s is not None), None)
            if start is None:
                raise ConfigError("GenerationConfig.decoder_start_token_id=None is invalid: an encoder-decoder "
                                  "needs the token its decoder starts from.")
        prompt_length = 1 if encoder_decoder else prompt_width
        max_length = (config.max_new_tokens + prompt_length if config.max_new_tokens is not None
                      else config.get("max_length"))
        return cls(config=config, eos=eos, pad=pad, encoder_decoder=encoder_decoder, beams=beams, sample=sample,
                   returned=returned, start=start, prompt_length=prompt_length, max_length=max_length)

    @property
    def expand(self) -> int:
        """Rows decoded per prompt: the beams, or the returned sequences."""
        return self.beams if self.beams > 1 else self.returned

    @property
    def nothing_to_generate(self) -> bool:
        """The prompt already fills max_length (the loops then return it, as the PyTorch loop does)."""
        return self.prompt_length >= self.max_length

    @property
    def fill(self) -> int:
        """The value of the positions nothing was written to (the PyTorch beam search's for beams)."""
        if self.beams > 1:
            return (self.pad or self.eos[0]) if self.eos else -1
        return self.pad if self.pad is not None else 0

    def plan(self, plan_class: type[DecodingPlan], processors_class: type[ProcessorPlan],
             logits_processor: Sequence[Callable] | None, **switches: Any) -> DecodingPlan:
        """The loop's plan (`plan_class`, with its own `switches`) for these settings."""
        config = self.config
        return plan_class(
            max_length=self.max_length, expand=self.expand, eos=self.eos, pad=self.pad, fill=self.fill,
            processors=processors_class.from_config(config, self.prompt_length, self.beams > 1, logits_processor or ()),
            sample=self.sample, beams=self.beams, returned=self.returned,
            length_penalty=float(config.get("length_penalty")), early_stopping=config.get("early_stopping"),
            encoder_decoder=self.encoder_decoder, start=self.start, **switches)


# ---- the logits processors, in the PyTorch order ---------------------------------------------------------------------
class ProcessorSteps(ProcessorPlan):
    """A `ProcessorPlan` that applies its processors in the PyTorch order with the loop's own functions: a
    subclass sets `ops` to a namespace (its module) with `repetition_penalty`, `no_repeat_ngram`, `min_length`,
    `min_new_tokens`, `temperature`, `top_k`, `top_p` and `min_p`, each (sequences (N, L), scores (N, V), cur,
    settings...) -> scores (N, V)."""

    ops: ClassVar[Any] = None

    def __call__(self, sequences: Any, scores: Any, cur: Any, counted: Any = None) -> Any:
        """Apply them in the PyTorch order; `counted` (N, L) marks the positions the repetition penalty counts
        (prompt padding excluded)."""
        ops = self.ops
        if self.repetition_penalty is not None:
            scores = ops.repetition_penalty(sequences, scores, cur, self.repetition_penalty, counted)
        if self.no_repeat_ngram_size > 0:
            scores = ops.no_repeat_ngram(sequences, scores, cur, self.no_repeat_ngram_size)
        if self.eos and self.min_length > 0:
            scores = ops.min_length(sequences, scores, cur, self.min_length, self.eos)
        if self.eos and self.min_new_tokens:
            scores = ops.min_new_tokens(sequences, scores, cur, self.prompt_length, self.min_new_tokens, self.eos)
        if self.temperature is not None:
            scores = ops.temperature(sequences, scores, cur, self.temperature)
        if self.top_k:
            scores = ops.top_k(sequences, scores, cur, self.top_k, self.min_keep)
        if self.top_p is not None:
            scores = ops.top_p(sequences, scores, cur, self.top_p, self.min_keep)
        if self.min_p is not None:
            scores = ops.min_p(sequences, scores, cur, self.min_p, self.min_keep)
        for process in self.custom:
            scores = process(sequences, scores, cur)
        return scores


__all__ = ["Decoding", "DecodingPlan", "ProcessorSteps", "mask_pad", "prompt_arrays", "request_config",
           "special_tokens", "take_input_ids"]
