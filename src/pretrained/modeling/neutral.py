"""What `FlaxPreTrainedModel` and `TFPreTrainedModel` do the same way, written once and free of every framework.

Both base classes inherit `NeutralModelMixin`: the config checks and resolution of `from_pretrained`, reading a
checkpoint's generation_config.json, the files a save writes beside the weights, the weight file names, the push
plumbing. What touches parameters (jnp arrays, Keras variables) stays in `flax/base.py` and `tf/base.py`. A class
names its framework with two class attributes, which also go into the messages ("Use the Flax Auto classes ..."):

    class FlaxPreTrainedModel(NeutralModelMixin, ...):
        _framework_prefix = "Flax"  # the prefix of the framework's class names
        _native_weights = (FLAX_WEIGHTS, FLAX_INDEX, "msgpack")  # 4.x's own format: file, index, what to call it

This module imports no torch, jax, flax, tensorflow or keras (the Flax and TF classes work where torch is absent).
"""

from __future__ import annotations

import os
from dataclasses import fields
from typing import Any, ClassVar

from ..checkpoint.files import SAFE_INDEX, SAFE_WEIGHTS
from ..checkpoint.shards import add_variant
from ..configuration import CONFIG_NAME, PretrainedConfig
from ..errors import ConfigError, PretrainedError
from ..generation.config import GENERATION_CONFIG_NAME, GenerationConfig
from ..hub.push import PUSH_KWARGS
from ..hub.resolve import pop_hub_kwargs, resolve_file
from .outputs import ModelOutput


def check_config_class(cls: Any, config: PretrainedConfig, auto_classes: str) -> None:
    """Refuse a config of another family than `cls.config_class` (by class, or by name for a custom class whose
    config is a second copy of its class, and by model_type: a family's config may subclass another's, as
    MistralConfig is a LlamaConfig)."""
    expected = cls.config_class
    same = isinstance(config, expected) or type(config).__qualname__ == expected.__qualname__
    if expected is not PretrainedConfig and (not same or config.model_type != expected.model_type):
        raise ConfigError(
            f"{cls.__name__} needs a {expected.__name__} (model_type '{expected.model_type}'), but the config is a "
            f"{type(config).__name__} (model_type '{config.model_type}'). Use the {auto_classes} to pick the right "
            "class for a checkpoint.")


def resolve_config(cls: Any, source: Any, config: Any, hub: dict, overrides: dict, *,
                   beside_weights_file: bool = False) -> PretrainedConfig:
    """from_pretrained's config, for every framework: given, or read from `config`/`source`, with `overrides`
    applied (every one of them must name a config attribute), then checked by `cls._check_config`. With
    `beside_weights_file`, a weights file given as `source` means the config.json beside it."""
    if not isinstance(config, PretrainedConfig):
        where = config if config is not None else source
        if where is None:
            raise ValueError("Give a checkpoint location or a config.")
        if beside_weights_file and os.path.isfile(os.fspath(where)) and not os.fspath(where).endswith(".json"):
            where = os.path.dirname(os.fspath(where)) or "."  # a weights file given: its folder's config
        config, overrides = cls.config_class.from_pretrained(where, return_unused_kwargs=True, **hub, **overrides)
    elif overrides:
        config, overrides = cls.config_class.from_dict(config.to_dict(), return_unused_kwargs=True, **overrides)
    if overrides:
        raise TypeError(f"from_pretrained() got arguments that are neither loading options nor config "
                        f"attributes: {', '.join(sorted(overrides))}.")
    cls._check_config(config)
    if source is not None:
        config._name_or_path = os.fspath(source)
    return config


class NeutralModelMixin:
    """The framework-free half of the Flax and TF base classes (see the module's doc)."""

    config_class: ClassVar[type[PretrainedConfig]] = PretrainedConfig
    _framework_prefix: ClassVar[str] = ""  # "Flax" / "TF"
    _native_weights: ClassVar[tuple[str, str, str]] = ("", "", "")  # 4.x's format: weights file, index, its name
    # a weights file given to from_pretrained: read the config.json beside it (TF) instead of the file itself (Flax)
    _config_beside_weights_file: ClassVar[bool] = False

    # ---- what a model is ---------------------------------------------------------------------------------------------
    @classmethod
    def _check_config(cls, config: Any) -> None:
        if not isinstance(config, PretrainedConfig):
            raise ConfigError(
                f"{cls.__name__} needs a PretrainedConfig, got {type(config).__name__}. Build one with "
                f"{cls.config_class.__name__}(...) or AutoConfig.from_pretrained(...).")
        check_config_class(cls, config, f"{cls._framework_prefix} Auto classes")

    @classmethod
    def can_generate(cls) -> bool:
        """Whether `generate` works: the class has a language-model head (it defines
        `prepare_inputs_for_generation`, 4.x's rule)."""
        return callable(getattr(cls, "prepare_inputs_for_generation", None))

    # ---- loading -----------------------------------------------------------------------------------------------------
    @classmethod
    def _config_and_hub(cls, source: Any, config: Any, kwargs: dict, **file_options: Any) -> tuple[PretrainedConfig,
                                                                                                     dict]:
        """from_pretrained's (config, hub options): `file_options` (cache_dir, revision, token, ...) and the hub
        keywords among `kwargs` are where the files come from; every other keyword left in `kwargs` must name a
        config attribute (see `_resolve_config`)."""
        kwargs.update(file_options)
        hub = pop_hub_kwargs(kwargs)
        return cls._resolve_config(source, config, hub, kwargs), hub

    @classmethod
    def _resolve_config(cls, source: Any, config: Any, hub: dict, overrides: dict) -> PretrainedConfig:
        return resolve_config(cls, source, config, hub, overrides, beside_weights_file=cls._config_beside_weights_file)

    def _adopt_generation_config(self, source: Any, hub: dict) -> None:
        """A model that can generate takes the checkpoint's generation_config.json, if it has one."""
        if self.can_generate():
            found = find_generation_config(source, hub)
            if found is not None:
                self.generation_config = found

    # ---- saving ------------------------------------------------------------------------------------------------------
    @staticmethod
    def _push_options(kwargs: dict, token: Any, create_pr: bool = False) -> dict:
        """save_pretrained's options for the push (taken out of `kwargs`, which must then be empty)."""
        push = {k: kwargs.pop(k) for k in PUSH_KWARGS if k in kwargs}
        if token is not None:
            push["token"] = token
        if create_pr:
            push["create_pr"] = True
        if kwargs:
            raise TypeError(f"save_pretrained() got unexpected arguments: {', '.join(sorted(kwargs))}.")
        return push

    def _architecture(self) -> str:
        """The class's name without the framework prefix, as config.json's `architectures` records it."""
        return type(self).__name__.removeprefix(self._framework_prefix)

    def _files_beside_weights(self) -> dict[str, str]:
        """{file name: text} a save writes with the weights: config.json, generation_config.json (models that can
        generate) and, for a class registered for an Auto class, its code."""
        from ..remote_code import code_to_save

        extra = {**code_to_save(self.config, type(self))}
        extra[CONFIG_NAME] = self.config.to_json_string()
        if self.can_generate():
            generation_config = self.generation_config or GenerationConfig.from_model_config(self.config)
            extra[GENERATION_CONFIG_NAME] = generation_config.to_json_string()
        return extra

    @classmethod
    def _weights_names(cls, safe_serialization: bool, variant: str | None) -> list[str]:
        if safe_serialization:
            return [add_variant(SAFE_WEIGHTS, variant), add_variant(SAFE_INDEX, variant)]
        weights, index, name = cls._native_weights
        if variant:
            raise ValueError(f"variant applies to safetensors files; 4.x's {name} files have no variants.")
        return [weights, index]

    def _save_for_push(self, folder: str, *, max_shard_size: int | str, safe_serialization: bool,
                       variant: str | None) -> list[str]:
        self.save_pretrained(folder, max_shard_size=max_shard_size, safe_serialization=safe_serialization,
                             variant=variant)
        return self._weights_names(safe_serialization, variant)


def find_generation_config(source: Any, hub: dict) -> GenerationConfig | None:
    """The checkpoint's generation_config.json, if it has one."""
    source = os.fspath(source)
    if os.path.isfile(source):
        source = os.path.dirname(source) or "."
    try:
        path = resolve_file(source, GENERATION_CONFIG_NAME, required=False, **hub)
    except (OSError, PretrainedError):
        return None
    return GenerationConfig.from_json_file(path) if path else None


class SettableModelOutput(ModelOutput):
    """The base of the Flax and TF outputs: a `ModelOutput` whose fields can also be set by key, as 4.x's wrappers
    do after a cached call (`out["past_key_values"] = cache`)."""

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in {f.name for f in fields(self)}:
            raise KeyError(f"{type(self).__name__} has no field '{key}'")
        setattr(self, key, value)


__all__ = ["NeutralModelMixin", "SettableModelOutput", "find_generation_config"]
