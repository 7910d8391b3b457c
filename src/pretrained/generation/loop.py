"""`GenerationMixin.generate`: greedy decoding, sampling and beam search over a growing key/value cache.

Shapes: B prompts, N = B x (beams or returned sequences) rows decoded side by side, S tokens so far, V vocabulary.
Decoder-only prompts may be left-padded: positions then count real tokens only (the attention mask's running
sum), as the reference computes them. Encoder-decoders run the encoder once and decode from
`decoder_start_token_id`.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import torch

from ..errors import ConfigError
from . import logits as lp
from .cache import DynamicCache, EncoderDecoderCache, StaticCache
from .compiled import compile_settings, compiled_step
from .config import GenerationConfig
from .outputs import (GenerateBeamDecoderOnlyOutput, GenerateBeamEncoderDecoderOutput, GenerateDecoderOnlyOutput,
                      GenerateEncoderDecoderOutput)

_OUTPUT_FLAGS = ("output_scores", "output_logits", "output_attentions", "output_hidden_states")


class _Decoder:
    """Runs the model on the tokens its cache has not seen yet and returns the last position's logits (N, V)."""

    def __init__(self, model, attention_mask: torch.Tensor, use_cache: bool, encoder=None,
                 encoder_mask: torch.Tensor | None = None) -> None:
        self.model, self.mask, self.use_cache = model, attention_mask, use_cache
        self.encoder, self.encoder_mask = encoder, encoder_mask
        self.cache = None
        params = inspect.signature(model.forward).parameters
        self.keep_one = "logits_to_keep" in params
        self.takes_position = "cache_position" in params  # can decode over a fixed-length cache
        self.fixed = False  # decoding over a fixed-length cache (see `fix`)
        self.filled = 0  # with `fixed`: positions written so far
        self.compiled: Any = None  # with `fixed`: the compiled one-token step, if any
        self.compile_optional = False  # compiling was a default (a GPU), not asked for: fall back if it fails
        self.flags: dict[str, bool] = {}  # output_attentions / output_hidden_states, set only when they are kept
        self.step: tuple[Any, Any, Any] | None = None  # the last call's (attentions, cross-attentions, hidden states)

    def seen(self) -> int:
        if self.fixed:
            return self.filled
        return self.cache.get_seq_length() if self.cache is not None else 0

    def fix(self, cache: StaticCache | EncoderDecoderCache, compiled: Any = None) -> None:
        """Decode over `cache` with the same shapes at every step: each call says where its tokens go
        (`cache_position`). For a decoder-only model the mask and the positions are laid out once for all the
        cache's `max_cache_len` positions (those after the prompt count as tokens: causality hides them until
        they are written); an encoder-decoder's cache is an EncoderDecoderCache whose self-attention part is the
        fixed one (its decoder inputs have no padding; the mask is the encoder's). One-token steps after the
        first call go through `compiled` when given (the first call fills the cache's buffers and, for an
        encoder-decoder, the cross-attention keys, eagerly: every compiled call then sees the same state)."""
        self.cache, self.fixed, self.compiled = cache, True, compiled
        if self.encoder is not None:
            return
        extra = cache.max_cache_len - self.mask.shape[1]
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], extra)], dim=1)
        self.positions = (self.mask.long().cumsum(-1) - 1).masked_fill(self.mask == 0, 1)

    def _fixed_step(self, ids: torch.Tensor) -> torch.Tensor:
        past, T = self.filled, ids.shape[1] - self.filled
        # fresh contiguous inputs: a slice of the growing `ids` would change strides (and recompile) every step
        new = ids[:, past:].clone(memory_format=torch.contiguous_format)
        kwargs: dict[str, Any] = dict(cache_position=torch.arange(past, past + T, device=ids.device),
                                      cache=self.cache, use_cache=True, return_dict=True)
        if self.encoder is not None:
            kwargs.update(decoder_input_ids=new, encoder_outputs=self.encoder, attention_mask=self.encoder_mask)
        else:
            kwargs.update(input_ids=new, attention_mask=self.mask, position_ids=self.positions[:, past:past + T])
        if self.keep_one:
            kwargs["logits_to_keep"] = 1
        compiled = self.compiled is not None and T == 1 and past > 0 and not self.flags
        if compiled:
            try:
                out = self.compiled(**kwargs)
            except Exception:
                if not self.compile_optional or self.compiled.failed is None:
                    raise
                warnings.warn(f"generate(): compiling the decoding step failed ({self.compiled.failed}); decoding "
                              "without compiling. disable_compile=True skips the attempt.", RuntimeWarning,
                              stacklevel=4)
                compiled, self.compiled = False, None
                out = self.model(**kwargs)
        else:
            out = self.model(**kwargs, **self.flags)
        self.filled = past + T
        if compiled:
            getattr(self.cache, "self_attention_cache", self.cache).set_length(self.filled)
        if self.flags:
            if self.encoder is not None:
                self.step = (out.decoder_attentions, out.cross_attentions, out.decoder_hidden_states)
            else:
                self.step = (out.attentions, None, out.hidden_states)
        return out.logits[:, -1, :].to(dtype=torch.float32, copy=True)

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        if self.fixed:
            return self._fixed_step(ids)
        past = self.seen()
        kwargs: dict[str, Any] = {"cache": self.cache, "use_cache": self.use_cache, "return_dict": True}
        if self.encoder is not None:
            kwargs.update(decoder_input_ids=ids[:, past:], encoder_outputs=self.encoder,
                          attention_mask=self.encoder_mask)
        else:
            if self.mask.shape[1] < ids.shape[1]:  # one more real token per step
                grow = ids.shape[1] - self.mask.shape[1]
                self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], grow)], dim=1)
            positions = (self.mask.long().cumsum(-1) - 1).masked_fill(self.mask == 0, 1)
            kwargs.update(input_ids=ids[:, past:], attention_mask=self.mask, position_ids=positions[:, past:])
            if self.keep_one:
                kwargs["logits_to_keep"] = 1
        out = self.model(**kwargs, **self.flags)
        if self.use_cache:
            self.cache = out.cache
        if self.flags:
            if self.encoder is not None:
                self.step = (out.decoder_attentions, out.cross_attentions, out.decoder_hidden_states)
            else:
                self.step = (out.attentions, None, out.hidden_states)
        return out.logits[:, -1, :].to(dtype=torch.float32, copy=True)

    def reorder(self, rows: torch.Tensor) -> None:
        if self.cache is not None:
            self.cache.reorder_cache(rows)
        if self.encoder is None:
            self.mask = self.mask.index_select(0, rows.to(self.mask.device))
            if self.fixed:
                self.positions = self.positions.index_select(0, rows.to(self.positions.device))


class _Record:
    """What `return_dict_in_generate=True` keeps, one entry per step: only the lists the config asks for exist, and
    generate() builds none of this unless asked (plain generate() records nothing)."""

    def __init__(self, config: GenerationConfig, encoder_decoder: bool) -> None:
        g = config.get
        self.encoder_decoder = encoder_decoder
        self.scores = [] if g("output_scores") else None
        self.logits = [] if g("output_logits") else None
        self.attentions = [] if g("output_attentions") else None
        self.cross_attentions = [] if g("output_attentions") and encoder_decoder else None
        self.hidden_states = [] if g("output_hidden_states") else None
        self.sequences_scores: torch.Tensor | None = None  # beam search: set at the end
        self.beam_indices: torch.Tensor | None = None

    def flags(self) -> dict[str, bool]:
        """The forward() flags the model must be called with."""
        out = {}
        if self.attentions is not None:
            out["output_attentions"] = True
        if self.hidden_states is not None:
            out["output_hidden_states"] = True
        return out

    def add(self, decoder: _Decoder, logits: torch.Tensor, scores: torch.Tensor) -> None:
        """One step: the raw `logits` (N, V), the processed `scores` (N, V), the decoder's attentions and states."""
        if self.scores is not None:
            self.scores.append(scores)
        if self.logits is not None:
            self.logits.append(logits)
        if decoder.step is not None:
            attentions, cross, hidden = decoder.step
            if self.attentions is not None:
                self.attentions.append(attentions)
            if self.cross_attentions is not None:
                self.cross_attentions.append(cross)
            if self.hidden_states is not None:
                self.hidden_states.append(hidden)

    def output(self, sequences: torch.Tensor, cache: Any, encoder: Any, beam: bool):
        def steps(kept):
            return tuple(kept) if kept is not None else None

        common = dict(sequences=sequences, scores=steps(self.scores), logits=steps(self.logits),
                      cache=cache)
        if beam:
            common.update(sequences_scores=self.sequences_scores if self.scores is not None else None,
                          beam_indices=self.beam_indices)
        if self.encoder_decoder:
            cls = GenerateBeamEncoderDecoderOutput if beam else GenerateEncoderDecoderOutput
            return cls(**common, encoder_attentions=encoder.attentions if self.attentions is not None else None,
                       encoder_hidden_states=encoder.hidden_states if self.hidden_states is not None else None,
                       decoder_attentions=steps(self.attentions), cross_attentions=steps(self.cross_attentions),
                       decoder_hidden_states=steps(self.hidden_states))
        cls = GenerateBeamDecoderOnlyOutput if beam else GenerateDecoderOnlyOutput
        return cls(**common, attentions=steps(self.attentions), hidden_states=steps(self.hidden_states))


class GenerationMixin:
    """`generate` for the classes whose facts say they can generate (`can_generate()`)."""

    @torch.no_grad()
    def generate(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                 generation_config: GenerationConfig | None = None, streamer=None,
                 generator: torch.Generator | None = None, tokenizer: Any = None,
                 **overrides: Any):
        """Continue `input_ids` (B, S); returns (B x num_return_sequences, S') token ids, prompt included for
        decoder-only models and `decoder_start_token_id` first for encoder-decoders.

        With `return_dict_in_generate=True` it returns an output dataclass instead (see `generation.outputs`):
        `GenerateDecoderOnlyOutput` / `GenerateEncoderDecoderOutput`, or their `GenerateBeam...` forms for beam
        search, holding `sequences`, the cache (`cache`, alias `past_key_values`) and what `output_scores`, `output_logits`,
        `output_attentions` and `output_hidden_states` ask for, one entry per step.

        `generation_config` (default: the model's own) is copied and `overrides` (any of its fields, e.g.
        `max_new_tokens=20, do_sample=True, top_p=0.9`) applied to the copy. `generator` seeds sampling.
        `cache=` (or its pre-5.24 name `past_key_values=`) continues from a cache that already holds the first
        tokens of `input_ids` (e.g. a shared prefix): only the tokens it has not seen are run.
        `streamer` gets `put(tokens)` with the prompt, then each new token (one per row), and `end()`.
        `stop_strings` (a string or list of strings) stop a row once its text ends with one of them, the match
        overlapping the last token (as the reference's StopStringCriteria); they need `tokenizer=` to read tokens.
        """
        if not self.can_generate():
            raise TypeError(f"{type(self).__name__} cannot generate: it has no language-model head. Use a class "
                            "such as AutoModelForCausalLM.")
        if input_ids is None:
            input_ids = overrides.pop("inputs", None)
        if input_ids is None:
            raise ValueError("generate() needs input_ids (B, S).")
        given_cache = _given_cache(overrides)
        base = generation_config or getattr(self, "generation_config", None) \
            or GenerationConfig.from_model_config(self.config)
        config = base.copy(**overrides)
        record = None
        encoder_decoder = bool(getattr(self.config, "is_encoder_decoder", False))
        if config.get("return_dict_in_generate"):
            record = _Record(config, encoder_decoder)
        elif any(config.get(name) for name in _OUTPUT_FLAGS):
            asked = ", ".join(name for name in _OUTPUT_FLAGS if config.get(name))
            warnings.warn(f"generate(): {asked} is ignored unless return_dict_in_generate=True (then generate() "
                          "returns an output object holding it).", UserWarning, stacklevel=3)
        device = next(self.parameters()).device
        input_ids = input_ids.to(device)
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        eos = config.eos_token_ids
        pad = config.pad_token_id if config.pad_token_id is not None else (eos[0] if eos else None)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
            # inferred from padding for decoder-only models only, as the reference does (an encoder-decoder's
            # prompt is read whole unless a mask is given)
            if pad is not None and pad not in eos and not encoder_decoder and bool((input_ids == pad).any()):
                attention_mask = input_ids.ne(pad).long()
        attention_mask = attention_mask.to(device)

        beams, sample = config.get("num_beams"), config.get("do_sample")
        expand = beams if beams > 1 else config.get("num_return_sequences")
        flags = record.flags() if record is not None else {}
        decoder, ids, encoder, prompt_ignore = self._start_decoding(config, input_ids, attention_mask, expand, flags)
        prompt_length = ids.shape[1]
        max_length = (config.max_new_tokens + prompt_length if config.max_new_tokens is not None
                      else config.get("max_length"))
        if given_cache is not None:
            _start_from(decoder, given_cache, config)
        elif config.get("cache_implementation") == "static" and decoder.use_cache:
            self._use_static_cache(decoder, config, max_length, prompt_length, device)
        processors = lp.processors_for(config, prompt_length, prompt_ignore, beams=beams > 1)
        stops = None
        if config.get("stop_strings"):
            if tokenizer is None:
                raise ValueError("generate(): stop_strings need the model's tokenizer to read the generated tokens: "
                                 "pass it as generate(..., stop_strings=[...], tokenizer=tokenizer).")
            stops = _StopStrings(config.get("stop_strings"), tokenizer)
        if beams > 1:
            if streamer is not None:
                raise ValueError("generate(): a streamer cannot follow beam search (num_beams > 1).")
            ids = _beam_search(decoder, ids, processors, config, eos, pad, max_length, input_ids.shape[0],
                               beams, sample, generator, stops, record)
        else:
            if streamer is not None:
                streamer.put(ids.cpu())
            ids = _decode(decoder, ids, processors, sample, eos, pad, max_length, streamer, generator, stops, record)
        if record is None:
            return ids
        return record.output(ids, decoder.cache, encoder, beam=beams > 1)

    def _start_decoding(self, config: GenerationConfig, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        expand: int, flags: dict[str, bool]):
        """(decoder, first ids (B x expand, S), encoder output or None, prompt padding or None): an
        encoder-decoder runs its encoder once and decodes from `decoder_start_token_id`; a decoder-only model
        continues its prompt. Each prompt is repeated `expand` times (beams or returned sequences)."""
        mask = attention_mask.repeat_interleave(expand, dim=0)
        if not getattr(self.config, "is_encoder_decoder", False):
            decoder = _Decoder(self, mask, config.get("use_cache"))
            decoder.flags = flags
            return decoder, input_ids.repeat_interleave(expand, dim=0), None, attention_mask == 0
        start = next((s for s in (config.decoder_start_token_id, getattr(self.config, "decoder_start_token_id",
                                                                          None), config.bos_token_id)
                      if s is not None), None)
        if start is None:
            raise ConfigError("GenerationConfig.decoder_start_token_id=None is invalid: an encoder-decoder "
                              "needs the token its decoder starts from.")
        encoder = self.get_encoder()(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **flags)
        encoder.last_hidden_state = encoder.last_hidden_state.repeat_interleave(expand, dim=0)
        decoder = _Decoder(self, mask, config.get("use_cache"), encoder, mask)
        decoder.flags = flags
        ids = torch.full((input_ids.shape[0] * expand, 1), start, dtype=torch.long, device=input_ids.device)
        return decoder, ids, encoder, None

    def _use_static_cache(self, decoder: _Decoder, config: GenerationConfig, max_length: int, prompt_length: int,
                          device: torch.device) -> None:
        """`cache_implementation="static"`: a cache of max_length - 1 positions (the last token is never fed back;
        the reference sizes it so). Models that take `cache_position` decode over it with fixed shapes, through
        the compiled step when `compile_settings` says so; others fill it as it grows. An encoder-decoder's
        self-attention cache is the static one (its cross-attention cache is filled once, on the first step)."""
        length = max(max_length - 1, prompt_length)
        encoder_decoder = bool(self.config.is_encoder_decoder)

        def cache(n: int):
            static = StaticCache(max_cache_len=n)
            return EncoderDecoderCache(static, DynamicCache()) if encoder_decoder else static

        if not decoder.takes_position:
            decoder.cache = cache(length)
            return
        settings = compile_settings(self, config, device)
        step = compiled_step(self, settings) if settings is not None else None
        decoder.compile_optional = config.get("compile_config") is None
        if step is not None and step.failed and decoder.compile_optional:
            step = None  # it failed before on this machine: do not try again by default
        decoder.fix(cache(step.cache_length(length) if step else length), step)

    def get_encoder(self):
        return getattr(self, "encoder")


def _given_cache(overrides: dict[str, Any]) -> Any:
    """The cache passed to generate() as `cache=` or `past_key_values=` (removed from `overrides`), or None."""
    cache, old = overrides.pop("cache", None), overrides.pop("past_key_values", None)
    if cache is not None and old is not None:
        raise TypeError("generate() got both cache= and past_key_values= (two names for the same argument); pass "
                        "one of them.")
    return cache if cache is not None else old


def _start_from(decoder: _Decoder, cache: Any, config: GenerationConfig) -> None:
    """Decode on from a cache the caller passed (it holds the first `cache.get_seq_length()` prompt tokens)."""
    if not decoder.use_cache:
        raise ValueError("generate(): a cache was passed (cache= / past_key_values=) but use_cache=False.")
    if config.get("cache_implementation") is not None:
        raise ValueError(f"generate(): pass either a cache (cache= / past_key_values=) or "
                         f"cache_implementation={config.get('cache_implementation')!r}, not both.")
    if isinstance(cache, StaticCache) and decoder.takes_position:
        seen = cache.get_seq_length()
        decoder.fix(cache)
        decoder.filled = seen
    else:
        decoder.cache = cache


class _StopStrings:
    """Which rows end with a stop string. As the reference's StopStringCriteria, a row matches when a stop string
    occurs in the text of its tokens (each token's own text, prompt included) and overlaps its last token: it may
    overhang the last token's end, but removing the last token must break it."""

    PREFIX = "abcdef"  # decoded in front of each token, so that leading spaces and word-start markers survive

    def __init__(self, stop_strings: str | list[str], tokenizer: Any) -> None:
        self.strings = [stop_strings] if isinstance(stop_strings, str) else list(stop_strings)
        if not self.strings or not all(isinstance(s, str) and s for s in self.strings):
            raise ValueError(f"generate(): stop_strings={stop_strings!r} must be a non-empty string or list of them.")
        self.tokenizer, self.texts = tokenizer, {}
        self.window = max(len(s) for s in self.strings)  # tokens: each non-empty token holds one character or more
        encoded = self._encode(self.PREFIX)
        self.prefix_ids = encoded if self._decode(encoded) == self.PREFIX else None

    def _encode(self, text: str) -> list[int]:
        try:
            out = self.tokenizer.encode(text, add_special_tokens=False)
        except TypeError:  # a `tokenizers.Tokenizer` has no add_special_tokens keyword of that name
            out = self.tokenizer.encode(text)
        return list(getattr(out, "ids", out))

    def _decode(self, ids: list[int]) -> str:
        try:
            return self.tokenizer.decode(ids, skip_special_tokens=False)
        except TypeError:
            return self.tokenizer.decode(ids)

    def text(self, token: int) -> str:
        if token not in self.texts:
            if self.prefix_ids is not None:
                full = self._decode(self.prefix_ids + [token])
                at = full.find(self.PREFIX)
                self.texts[token] = full[at + len(self.PREFIX):] if at >= 0 else self._decode([token])
            else:
                self.texts[token] = self._decode([token])
        return self.texts[token]

    def __call__(self, ids: torch.Tensor, running: torch.Tensor) -> torch.Tensor:
        """(N,) bool: the running rows of `ids` (N, S) that now end with a stop string."""
        hit = torch.zeros_like(running)
        tails = ids[:, -self.window:].tolist()
        for row in running.nonzero().flatten().tolist():
            pieces = [self.text(t) for t in tails[row]]
            text, last = "".join(pieces), len(pieces[-1])
            if last and any(s in text[max(0, len(text) - last - len(s) + 1):] for s in self.strings):
                hit[row] = True
        return hit


def _decode(decoder: _Decoder, ids, processors, sample: bool, eos: list[int], pad, max_length: int, streamer,
            generator, stops: _StopStrings | None = None, record: _Record | None = None) -> torch.LongTensor:
    """Greedy decoding or sampling, one token per row per step until every row has hit EOS or max_length."""
    running = torch.ones(ids.shape[0], dtype=torch.bool, device=ids.device)
    eos_t = torch.tensor(eos, device=ids.device)
    try:
        while ids.shape[1] < max_length:
            logits = decoder(ids)
            scores = lp.apply(processors, ids, logits)
            if record is not None:
                record.add(decoder, logits, scores)
            if sample:
                nxt = torch.multinomial(scores.softmax(dim=-1), 1, generator=generator).squeeze(1)
            else:
                nxt = scores.argmax(dim=-1)
            if eos:
                nxt = torch.where(running, nxt, torch.full_like(nxt, pad))
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            if streamer is not None:
                streamer.put(nxt.cpu())
            if eos:
                running &= ~torch.isin(nxt, eos_t)
            if stops is not None:
                running &= ~stops(ids, running)
            if (eos or stops is not None) and not bool(running.any()):
                break
    finally:
        if streamer is not None:
            streamer.end()
    return ids


NEG = -1.0e9  # the score of a slot that must not be chosen


def _gather(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """t[b, idx[b, j], ...] for a [batch, slots, ...] tensor and [batch, picks] indices."""
    idx = idx.view(*idx.shape, *([1] * (t.dim() - idx.dim()))).expand(*idx.shape, *t.shape[idx.dim():])
    return t.gather(1, idx)


class _Beams:
    """One set of `beams` hypotheses per batch row: tokens [batch, beams, max_length], scores, generated lengths and,
    when recorded, the flat beam row each generated token came from (-1 where nothing was generated)."""

    def __init__(self, tokens: torch.Tensor, scores: torch.Tensor, lengths: torch.Tensor,
                 origins: torch.Tensor | None) -> None:
        self.tokens, self.scores, self.lengths, self.origins = tokens, scores, lengths, origins

    def pick(self, idx: torch.Tensor) -> "_Beams":
        return _Beams(_gather(self.tokens, idx), _gather(self.scores, idx), _gather(self.lengths, idx),
                      None if self.origins is None else _gather(self.origins, idx))

    def joined(self, other: "_Beams", scores: torch.Tensor) -> "_Beams":
        """Both sets side by side, with `scores` for the whole."""
        origins = None if self.origins is None else torch.cat([self.origins, other.origins], dim=1)
        return _Beams(torch.cat([self.tokens, other.tokens], dim=1), scores,
                      torch.cat([self.lengths, other.lengths], dim=1), origins)


def _beam_search(decoder: _Decoder, ids, processors, config: GenerationConfig, eos: list[int], pad,
                 max_length: int, batch: int, beams: int, sample: bool, generator,
                 stop_strings: _StopStrings | None = None, record: _Record | None = None) -> torch.LongTensor:
    """Vectorised beam search as the reference runs it: 2 x beams candidates per step (more with several EOS),
    finished hypotheses scored by sum of log-probabilities / generated_length ** length_penalty.

    A candidate stops (and becomes a finished hypothesis if it is among the best `beams`) on EOS, at max_length, or
    when its tokens end with a stop string. With `record`, the beam each generated token came from is tracked
    (as a flat row index, -1 past a hypothesis' end) and kept with the final scores in `record`."""
    length_penalty, early_stopping = config.get("length_penalty"), config.get("early_stopping")
    returned = config.get("num_return_sequences")
    if returned > beams:
        raise ConfigError(f"GenerationConfig.num_return_sequences={returned} is invalid: beam search returns at "
                          f"most num_beams={beams} sequences.")
    device, prompt = ids.device, ids.shape[1]
    keep = max(2, 1 + len(eos)) * beams
    fill = (pad or eos[0]) if eos else -1  # the reference's fill value, pad 0 included
    eos_t = torch.tensor(eos, device=device, dtype=torch.long)

    tokens = torch.full((batch, beams, max_length), fill, dtype=torch.long, device=device)
    tokens[:, :, :prompt] = ids.view(batch, beams, prompt)
    origins = None  # the reference's beam_indices: int32, -1 where nothing was generated
    if record is not None:
        origins = torch.full((batch, beams, max_length - prompt), -1, dtype=torch.int32, device=device)
    lengths = torch.zeros(batch, beams, dtype=torch.long, device=device)  # tokens generated per beam
    running = _Beams(tokens, torch.zeros(batch, beams, device=device), lengths, origins)
    running.scores[:, 1:] = NEG
    finished = _Beams(tokens.clone(), torch.full((batch, beams), NEG, device=device), lengths.clone(),
                      None if origins is None else origins.clone())
    done = torch.zeros(batch, beams, dtype=torch.bool, device=device)
    improvable = torch.ones(batch, 1, dtype=torch.bool, device=device)
    top_mask = torch.arange(keep, device=device) < beams
    row_offset = torch.arange(batch, device=device)[:, None] * beams

    cur = prompt
    while True:
        flat = running.tokens[:, :, :cur].reshape(batch * beams, cur)
        logits = decoder(flat)
        log_probs = lp.apply(processors, flat, logits.log_softmax(dim=-1))
        if record is not None:
            record.add(decoder, logits, log_probs)
        V = log_probs.shape[-1]
        total = (log_probs.view(batch, beams, V) + running.scores[:, :, None]).view(batch, beams * V)
        if sample:
            picked = torch.multinomial(total.softmax(dim=-1), keep, generator=generator)
            top_scores = total.gather(1, picked)
        else:
            top_scores, picked = torch.topk(total, keep)
        from_beam, token = picked // V, picked % V
        cand = running.pick(from_beam)
        cand.tokens[:, :, cur] = token
        cand.lengths = cand.lengths + 1
        cand.scores = top_scores
        if cand.origins is not None:
            cand.origins[:, :, cur - prompt] = (from_beam + row_offset).to(torch.int32)
        stops = torch.zeros_like(token, dtype=torch.bool) if not eos else torch.isin(token, eos_t)
        stops |= cur + 1 >= max_length
        if stop_strings is not None:
            texts = cand.tokens[:, :, :cur + 1].reshape(batch * keep, cur + 1)
            stops |= stop_strings(texts, torch.ones(batch * keep, dtype=torch.bool, device=device)).view(batch, keep)

        # the next running beams: the best candidates that did not just stop
        alive = top_scores + stops.float() * NEG
        nxt = torch.topk(alive, beams).indices
        running = cand.pick(nxt)
        running.scores = _gather(alive, nxt)
        rows = (_gather(from_beam, nxt) + row_offset).view(-1)

        # finished hypotheses: merge those that just stopped (among the top `beams`) into the kept ones
        just = stops & top_mask[None, :]
        scored = top_scores / ((cur + 1 - prompt) ** length_penalty)
        full = done.all(dim=-1, keepdim=True) & (early_stopping is True)
        scored = scored + full.float() * NEG + (~improvable).float() * NEG + (~just).float() * NEG
        merged_scores = torch.cat([finished.scores, scored], dim=1)
        best = torch.topk(merged_scores, beams).indices
        finished = finished.joined(cand, merged_scores).pick(best)
        done = _gather(torch.cat([done, just], dim=1), best)

        decoder.reorder(rows)
        cur += 1
        length = (max_length - prompt) if early_stopping == "never" and length_penalty > 0.0 else (cur - prompt)
        best_running = running.scores[:, :1] / (length ** length_penalty)
        worst_done = torch.where(done, finished.scores.min(dim=1, keepdim=True).values, NEG)
        improvable = improvable & (best_running > worst_done).any(dim=-1, keepdim=True)
        if not (bool(improvable.any()) and not (bool(done.all()) and early_stopping is True)
                and not bool(stops.all())):
            break

    generated = int(finished.lengths[:, :returned].max())
    if record is not None:
        record.sequences_scores = finished.scores[:, :returned].reshape(batch * returned)
        record.beam_indices = finished.origins[:, :returned].reshape(batch * returned, -1)[:, :generated]
    out = finished.tokens[:, :returned].reshape(batch * returned, max_length)
    return out[:, :prompt + generated]
