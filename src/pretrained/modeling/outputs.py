"""Model outputs: dataclasses with the reference's field names that also index like tuples.

    out = model(input_ids)
    out.logits is out["logits"] is out[0]      # int indices skip fields that are None

The key/value cache is the field `cache` (transformers 5.24 renamed `past_key_values` to it). The old name stays
an alias everywhere a user meets it: `out.past_key_values`, `out["past_key_values"]`, `"past_key_values" in out`,
`Output(past_key_values=...)`, and every model `forward(past_key_values=...)` (see `accepts_past_key_values`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # annotations only: the base class is shared with the Flax outputs, which import no torch
    import torch

OLD_CACHE_NAME = "past_key_values"
_T = TypeVar("_T")


def _cache_alias(owner: str, kwargs: dict[str, Any]) -> None:
    """Move `past_key_values=` to `cache=` in `kwargs`; both at once is an error."""
    if OLD_CACHE_NAME in kwargs:
        old = kwargs.pop(OLD_CACHE_NAME)
        if kwargs.get("cache") is not None and old is not None:
            raise TypeError(f"{owner}() got both cache= and past_key_values= (two names for the same argument); "
                            "pass one of them.")
        if kwargs.get("cache") is None:
            kwargs["cache"] = old


def accepts_past_key_values(forward: Callable[..., _T]) -> Callable[..., _T]:
    """Decorate a `forward(..., cache=None, ...)` so that it also takes the pre-5.24 keyword `past_key_values=`."""

    @functools.wraps(forward)
    def wrapper(self, *args: Any, **kwargs: Any) -> _T:
        if OLD_CACHE_NAME in kwargs:
            _cache_alias(f"{type(self).__name__}.forward", kwargs)
        return forward(self, *args, **kwargs)

    return wrapper


def model_output(cls: type[_T]) -> type[_T]:
    """`@dataclass` for output classes; a class with a `cache` field also takes `past_key_values=` when built."""
    cls = dataclass(cls)
    names = {f.name for f in fields(cls)}
    if "cache" in names and OLD_CACHE_NAME not in names:
        init = cls.__init__

        @functools.wraps(init)
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            if OLD_CACHE_NAME in kwargs:
                _cache_alias(cls.__name__, kwargs)
            init(self, *args, **kwargs)

        cls.__init__ = __init__
    return cls


class ModelOutput:
    """Base of every output dataclass: attribute, key and tuple access (None fields are skipped in the tuple)."""

    def _field_name(self, name: str) -> str:
        """`past_key_values` means `cache` in a class that has the new field and not the old one."""
        if name == OLD_CACHE_NAME:
            own = self.__dataclass_fields__  # type: ignore[attr-defined]
            if "cache" in own and OLD_CACHE_NAME not in own:
                return "cache"
        return name

    def __getattr__(self, name: str) -> Any:  # only reached when normal lookup fails
        if name == OLD_CACHE_NAME and self._field_name(name) == "cache":
            return self.cache  # type: ignore[attr-defined]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, self._field_name(name) if name == OLD_CACHE_NAME else name, value)

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None)

    def keys(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def items(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in self.keys()]

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default

    def __getitem__(self, key: int | slice | str) -> Any:
        if isinstance(key, str):
            key = self._field_name(key)
            if key not in self.keys():
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]

    def __contains__(self, key: str) -> bool:
        return self._field_name(key) in self.keys()

    def __iter__(self):
        return iter(self.to_tuple())

    def __len__(self) -> int:
        return len(self.to_tuple())


@model_output
class BaseModelOutputWithPast(ModelOutput):
    last_hidden_state: torch.Tensor | None = None  # (batch, seq, hidden)
    cache: Any = None
    hidden_states: tuple[torch.Tensor, ...] | None = None  # embeddings + one per layer
    attentions: tuple[torch.Tensor, ...] | None = None  # (batch, heads, seq, kv_seq) per layer


@model_output
class CausalLMOutputWithPast(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None  # (batch, seq, vocab)
    cache: Any = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@model_output
class BaseModelOutput(ModelOutput):
    last_hidden_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@model_output
class BaseModelOutputWithPastAndCrossAttentions(ModelOutput):
    last_hidden_state: torch.Tensor | None = None
    cache: Any = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None


@model_output
class BaseModelOutputWithPoolingAndCrossAttentions(ModelOutput):
    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None  # (batch, hidden)
    hidden_states: tuple[torch.Tensor, ...] | None = None
    cache: Any = None
    attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None


@model_output
class CausalLMOutputWithCrossAttentions(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: Any = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None


@model_output
class MaskedLMOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@model_output
class SequenceClassifierOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None  # (batch, num_labels)
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@model_output
class SequenceClassifierOutputWithPast(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: Any = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@model_output
class TokenClassifierOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None  # (batch, seq, num_labels)
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@model_output
class QuestionAnsweringModelOutput(ModelOutput):
    loss: torch.Tensor | None = None
    start_logits: torch.Tensor | None = None  # (batch, seq)
    end_logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@model_output
class Seq2SeqModelOutput(ModelOutput):
    last_hidden_state: torch.Tensor | None = None
    cache: Any = None
    decoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    decoder_attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None
    encoder_last_hidden_state: torch.Tensor | None = None
    encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    encoder_attentions: tuple[torch.Tensor, ...] | None = None


@model_output
class Seq2SeqLMOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: Any = None
    decoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    decoder_attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None
    encoder_last_hidden_state: torch.Tensor | None = None
    encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    encoder_attentions: tuple[torch.Tensor, ...] | None = None
