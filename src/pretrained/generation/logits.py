"""Logits processors as small pure functions: (ids (N, S), scores (N, V), settings) -> new scores (N, V).

None changes its inputs. `processors_for(config, ...)` lists those a generation config asks for, in the order
`generate` applies them (penalties and constraints first, then, when sampling, the warpers).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch

NEG_INF = -float("inf")
Processor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _ban(scores: torch.Tensor, token_ids: Sequence[int]) -> torch.Tensor:
    mask = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
    ids = [t for t in token_ids if 0 <= t < scores.shape[-1]]
    mask[ids] = True
    return scores.masked_fill(mask, NEG_INF)


def repetition_penalty(ids: torch.Tensor, scores: torch.Tensor, penalty: float,
                       ignore: torch.Tensor | None = None) -> torch.Tensor:
    """Make every token already in `ids` less likely: its score is divided by `penalty` when positive, multiplied
    when negative. `ignore` (N, S) bool marks positions that do not count (left padding)."""
    V = scores.shape[-1]
    if ignore is not None:
        ids = ids.masked_fill(ignore, V)  # a spare column past the vocabulary
    wide = torch.cat([scores, scores.new_zeros(scores.shape[0], 1)], dim=-1)
    seen = wide.gather(1, ids)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return wide.scatter(1, ids, seen)[:, :V]


def no_repeat_ngram(ids: torch.Tensor, scores: torch.Tensor, n: int) -> torch.Tensor:
    """Forbid each token that would complete an n-gram already present in its row."""
    S = ids.shape[-1]
    if n <= 0 or S < n:
        return scores
    out = scores.clone()
    for row, seq in enumerate(ids.tolist()):
        prefix = tuple(seq[S - n + 1:]) if n > 1 else ()
        banned = {seq[i + n - 1] for i in range(S - n + 1) if tuple(seq[i:i + n - 1]) == prefix}
        banned = [t for t in banned if t < scores.shape[-1]]
        if banned:
            out[row, banned] = NEG_INF
    return out


def min_length(ids: torch.Tensor, scores: torch.Tensor, length: int, eos: Sequence[int]) -> torch.Tensor:
    """No EOS while the sequences (prompt included) are shorter than `length`."""
    return _ban(scores, eos) if ids.shape[-1] < length else scores


def min_new_tokens(ids: torch.Tensor, scores: torch.Tensor, prompt_length: int, count: int,
                   eos: Sequence[int]) -> torch.Tensor:
    """No EOS before `count` tokens have been generated after the `prompt_length` prompt tokens."""
    return _ban(scores, eos) if ids.shape[-1] - prompt_length < count else scores


def temperature(ids: torch.Tensor, scores: torch.Tensor, value: float) -> torch.Tensor:
    return scores / value


def top_k(ids: torch.Tensor, scores: torch.Tensor, k: int, min_keep: int = 1) -> torch.Tensor:
    """Keep the k highest scores (ties with the k-th included)."""
    k = min(max(k, min_keep), scores.shape[-1])
    kth = torch.topk(scores, k).values[..., -1:]
    return scores.masked_fill(scores < kth, NEG_INF)


def top_p(ids: torch.Tensor, scores: torch.Tensor, p: float, min_keep: int = 1) -> torch.Tensor:
    """Keep the most likely tokens whose probabilities add up to `p` (nucleus sampling)."""
    ordered, order = torch.sort(scores, descending=False)
    cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
    drop = cumulative <= (1 - p)
    drop[..., -min_keep:] = False
    return scores.masked_fill(drop.scatter(1, order, drop), NEG_INF)


def min_p(ids: torch.Tensor, scores: torch.Tensor, p: float, min_keep: int = 1) -> torch.Tensor:
    """Drop the tokens less likely than `p` times the most likely one."""
    probs = scores.softmax(dim=-1)
    drop = probs < p * probs.amax(dim=-1, keepdim=True)
    keep = torch.topk(probs, min(min_keep, probs.shape[-1]), dim=-1).indices
    drop = drop.scatter(-1, keep, False)
    return scores.masked_fill(drop, NEG_INF)


def processors_for(config, prompt_length: int, ignore: torch.Tensor | None = None,
                   beams: bool = False) -> list[Processor]:
    """The processors `config` (a GenerationConfig) asks for, in the reference's order. `prompt_length` is the
    decoder prompt's length; `ignore` marks prompt padding for the repetition penalty."""
    g, eos, out = config.get, config.eos_token_ids, []
    if g("repetition_penalty") != 1.0:
        def penalise(ids, scores, _penalty=g("repetition_penalty")):
            mask = None
            if ignore is not None:  # prompt padding, repeated for beams or return sequences, none after
                rows = ignore.repeat_interleave(ids.shape[0] // ignore.shape[0], dim=0)
                mask = torch.nn.functional.pad(rows, (0, ids.shape[1] - rows.shape[1]), value=False)
            return repetition_penalty(ids, scores, _penalty, mask)
        out.append(penalise)
    if g("no_repeat_ngram_size") > 0:
        out.append(functools.partial(no_repeat_ngram, n=g("no_repeat_ngram_size")))
    if eos and g("min_length") > 0:
        out.append(functools.partial(min_length, length=g("min_length"), eos=eos))
    if eos and g("min_new_tokens"):
        out.append(functools.partial(min_new_tokens, prompt_length=prompt_length, count=g("min_new_tokens"),
                                     eos=eos))
    if g("do_sample"):
        keep = len(eos) + 1 if beams and eos else 2 if beams else 1
        if g("temperature") != 1.0:
            out.append(functools.partial(temperature, value=g("temperature")))
        if g("top_k"):
            out.append(functools.partial(top_k, k=g("top_k"), min_keep=keep))
        if g("top_p") < 1.0:
            out.append(functools.partial(top_p, p=g("top_p"), min_keep=keep))
        if g("min_p") is not None:
            out.append(functools.partial(min_p, p=g("min_p"), min_keep=keep))
    return out


def apply(processors: Sequence[Processor], ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    for process in processors:
        scores = process(ids, scores)
    return scores
