"""`GenerationConfig`: how `generate` decodes, read from and written to `generation_config.json`.

Every field is None unless set; `generate` fills the unset ones from `DEFAULTS` (the reference's defaults), so a
saved file holds only what was chosen. Unknown keys are kept as attributes and written back.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from typing import Any, Callable

from ..configuration import check_key
from ..errors import ConfigError
from ..jsonfile import read_json_object

GENERATION_CONFIG_NAME = "generation_config.json"

DEFAULTS: dict[str, Any] = {
    "max_length": 20, "max_new_tokens": None, "min_length": 0, "min_new_tokens": None, "early_stopping": False,
    "do_sample": False, "num_beams": 1, "use_cache": True, "cache_implementation": None, "temperature": 1.0,
    "top_k": 50, "top_p": 1.0, "min_p": None, "repetition_penalty": 1.0, "length_penalty": 1.0,
    "no_repeat_ngram_size": 0, "num_return_sequences": 1, "stop_strings": None, "pad_token_id": None,
    "bos_token_id": None, "eos_token_id": None, "decoder_start_token_id": None, "output_attentions": False,
    "output_hidden_states": False, "output_scores": False, "output_logits": False, "return_dict_in_generate": False,
    "compile_config": None, "disable_compile": False,
}
NOT_SAVED = ("compile_config",)  # how to run, not how to decode: not written to generation_config.json
FIELDS = tuple(DEFAULTS)
# generation fields a model's config.json may still carry (older checkpoints), taken over when no
# generation_config.json says otherwise
LEGACY_FIELDS = ("max_length", "min_length", "do_sample", "early_stopping", "num_beams", "temperature", "top_k",
                 "top_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size", "num_return_sequences",
                 "bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
# defaults a legacy config.json writes for every field: not a choice, so not taken over
_LEGACY_NOOP = {"max_length": 20, "min_length": 0, "do_sample": False, "early_stopping": False, "num_beams": 1,
                "temperature": 1.0, "top_k": 50, "top_p": 1.0, "repetition_penalty": 1.0, "length_penalty": 1.0,
                "no_repeat_ngram_size": 0, "num_return_sequences": 1}
CACHE_IMPLEMENTATIONS = (None, "dynamic", "static")


@dataclasses.dataclass
class CompileConfig:
    """How `generate` compiles its decoding step (`torch.compile` arguments), with `cache_implementation="static"`.

    Giving one asks for compilation on any device; on a CUDA GPU a static cache compiles by default (as the
    reference does) unless `disable_compile=True`. `options` and `mode` go to torch.compile, which takes one of
    them: `options` wins when both are set.
    """

    fullgraph: bool = False
    dynamic: bool | None = None
    backend: str | Callable = "inductor"
    mode: str = "reduce-overhead"
    options: dict | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def compile_kwargs(self) -> dict[str, Any]:
        """The keyword arguments for torch.compile."""
        out: dict[str, Any] = {"fullgraph": self.fullgraph, "dynamic": self.dynamic, "backend": self.backend}
        if self.options:
            out["options"] = dict(self.options)
        else:
            out["mode"] = self.mode
        return out


class GenerationConfig:
    """Decoding settings. `GenerationConfig(max_new_tokens=20, do_sample=True, top_p=0.9)`."""

    def __init__(self, **kwargs: Any) -> None:
        for name in kwargs:
            check_key(type(self), name)
        for name in FIELDS:
            setattr(self, name, kwargs.pop(name, None))
        self._from_model_config = kwargs.pop("_from_model_config", None)
        self.transformers_version = kwargs.pop("transformers_version", None)
        kwargs.pop("_commit_hash", None)
        for name, value in kwargs.items():  # fields this library does not use: kept, written back
            setattr(self, name, value)
        self.validate()

    # ---- values ---------------------------------------------------------------------------------------
    def get(self, name: str) -> Any:
        """The value `generate` uses: the field if set, else the default."""
        value = getattr(self, name, None)
        return DEFAULTS.get(name) if value is None else value

    def update(self, **kwargs: Any) -> dict[str, Any]:
        """Set the keys that are attributes of this config; returns the others (not used)."""
        unused = {}
        for name, value in kwargs.items():
            if name in FIELDS or hasattr(self, name):
                setattr(self, name, value)
            else:
                unused[name] = value
        self.validate()
        return unused

    def validate(self) -> None:
        """Raise a ConfigError naming the first field whose value cannot work."""
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"GenerationConfig.{name}={getattr(self, name)!r} is invalid: {why}.")

        def check_int(name: str, low: int) -> None:
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
                raise bad(name, f"it must be an integer >= {low}")

        for name, low in (("max_length", 1), ("max_new_tokens", 1), ("min_length", 0), ("min_new_tokens", 0),
                          ("num_beams", 1), ("top_k", 0), ("no_repeat_ngram_size", 0),
                          ("num_return_sequences", 1)):
            check_int(name, low)
        if isinstance(self.compile_config, dict):
            try:
                self.compile_config = CompileConfig(**self.compile_config)
            except TypeError as e:
                raise bad("compile_config", f"it must hold CompileConfig's fields ({e})") from None
        if self.compile_config is not None and not isinstance(self.compile_config, CompileConfig):
            raise bad("compile_config", "it must be a CompileConfig (from pretrained import CompileConfig) or None")
        for name in ("do_sample", "use_cache", "output_attentions", "output_hidden_states", "output_scores",
                     "output_logits", "return_dict_in_generate", "disable_compile"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, bool):
                raise bad(name, "it must be True or False")
        if self.early_stopping is not None and self.early_stopping not in (True, False, "never"):
            raise bad("early_stopping", "it must be True, False or 'never'")
        for name in ("temperature", "repetition_penalty"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0):
                raise bad(name, "it must be a number > 0")
        if self.top_p is not None and not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise bad("top_p", "it must be in (0, 1]")
        if self.min_p is not None and not (isinstance(self.min_p, (int, float)) and 0 <= self.min_p <= 1):
            raise bad("min_p", "it must be in [0, 1]")
        if self.length_penalty is not None and not isinstance(self.length_penalty, (int, float)):
            raise bad("length_penalty", "it must be a number")
        if self.cache_implementation not in CACHE_IMPLEMENTATIONS:
            raise bad("cache_implementation", f"it must be one of {CACHE_IMPLEMENTATIONS}")
        eos = self.eos_token_id
        if eos is not None and not (isinstance(eos, int) or isinstance(eos, (list, tuple))
                                    and all(isinstance(e, int) for e in eos)):
            raise bad("eos_token_id", "it must be a token id or a list of token ids")
        if not self.get("do_sample") and self.get("num_return_sequences") > self.get("num_beams"):
            raise bad("num_return_sequences",
                      f"greedy and beam search can return at most num_beams={self.get('num_beams')} sequences")

    @property
    def eos_token_ids(self) -> list[int]:
        eos = self.eos_token_id
        return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)

    # ---- dicts and files ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every attribute, None included."""
        return copy.deepcopy({k: v for k, v in vars(self).items()})

    def to_diff_dict(self) -> dict[str, Any]:
        """Only what is set (what `generation_config.json` holds)."""
        return {k: v for k, v in self.to_dict().items() if v is not None and k not in NOT_SAVED}

    def to_json_string(self) -> str:
        data = self.to_diff_dict()
        data.setdefault("transformers_version", "5.0.0")
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], **kwargs: Any) -> GenerationConfig:
        return cls(**{**data, **kwargs})

    def copy(self, **changes: Any) -> GenerationConfig:
        """A deep copy with `changes` applied (validated); unknown names raise a ConfigError."""
        new = copy.deepcopy(self)
        unknown = [k for k in changes if k not in FIELDS and not hasattr(new, k)]
        if unknown:
            raise ConfigError(f"Unknown generation arguments: {', '.join(sorted(unknown))}. "
                              f"Known fields: {', '.join(FIELDS)}.")
        for k, v in changes.items():
            setattr(new, k, v)
        new.validate()
        return new

    @classmethod
    def from_model_config(cls, config: Any) -> GenerationConfig:
        """The generation fields a model config carries (token ids; legacy generation settings that differ from
        the defaults)."""
        data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        picked = {}
        for name in LEGACY_FIELDS:
            value = data.get(name)
            if value is None or (name in _LEGACY_NOOP and value == _LEGACY_NOOP[name]):
                continue
            picked[name] = value
        return cls(**picked, _from_model_config=True)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike,
                        config_file_name: str = GENERATION_CONFIG_NAME, **hub: Any) -> GenerationConfig:
        from ..hub.resolve import pop_hub_kwargs, resolve_file

        hub_kwargs = pop_hub_kwargs(dict(hub))
        path = resolve_file(pretrained_model_name_or_path, config_file_name, **hub_kwargs)
        return cls.from_json_file(path)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> GenerationConfig:
        """Read `generation_config.json`; every problem with it is a ConfigError naming the file."""
        data = read_json_object(path, ConfigError, "Generation config file",
                                "Fix it, or re-create it with GenerationConfig.save_pretrained().")
        try:
            return cls(**data)
        except ConfigError as e:
            raise ConfigError(f"Generation config file '{path}': {e}") from None
        except (TypeError, ValueError, ArithmeticError, AttributeError, LookupError) as e:
            raise ConfigError(f"Generation config file '{path}' holds a value that cannot be used "
                              f"({type(e).__name__}: {e}).") from e

    def save_pretrained(self, save_directory: str | os.PathLike,
                        config_file_name: str = GENERATION_CONFIG_NAME) -> None:
        os.makedirs(save_directory, exist_ok=True)
        with open(os.path.join(save_directory, config_file_name), "w", encoding="utf-8") as f:
            f.write(self.to_json_string())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GenerationConfig):
            return NotImplemented
        drop = ("transformers_version", "_from_model_config")
        a, b = self.to_diff_dict(), other.to_diff_dict()
        return {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}

    def __repr__(self) -> str:
        return f"GenerationConfig {json.dumps(self.to_diff_dict(), indent=2, sort_keys=True)}"
