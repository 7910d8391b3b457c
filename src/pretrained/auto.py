"""Auto classes: read `model_type` from a config and hand over to the registered class."""

from __future__ import annotations

import os
from typing import Any

from . import registry
from .configuration import PretrainedConfig
from .errors import ConfigError
from .hub.resolve import HUB_KWARGS


class AutoConfig:
    """`AutoConfig.from_pretrained(path)` returns the config class its `model_type` names."""

    def __init__(self) -> None:
        raise OSError("AutoConfig is not instantiated; use AutoConfig.from_pretrained(...) or AutoConfig.for_model(...).")

    @classmethod
    def for_model(cls, model_type: str, **kwargs: Any) -> PretrainedConfig:
        return registry.config_class(model_type)(**kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any):
        config_dict, rest = PretrainedConfig.get_config_dict(pretrained_model_name_or_path, **kwargs)
        model_type = config_dict.get("model_type")
        if not model_type:
            raise ConfigError(
                f"The config of '{pretrained_model_name_or_path}' has no 'model_type' key, so its family is unknown. "
                f"Add one (known: {', '.join(sorted(registry.FAMILIES))}) or load it with the family's config class."
            )
        return registry.config_class(model_type).from_dict(config_dict, **rest)

    @staticmethod
    def register(model_type: str, config: type, exist_ok: bool = False) -> None:
        registry.register_config(model_type, config, exist_ok)


class _AutoModel:
    task = ""

    def __init__(self) -> None:
        raise OSError(f"{type(self).__name__} is not instantiated; use .from_pretrained(...) or .from_config(...).")

    @classmethod
    def model_class_for(cls, config: PretrainedConfig) -> type:
        return registry.model_class(type(config), cls.task)

    @classmethod
    def from_config(cls, config: PretrainedConfig, **kwargs: Any):
        return cls.model_class_for(config).from_config(config, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *model_args: Any, **kwargs: Any):
        config = kwargs.pop("config", None)
        kwargs.setdefault("_pin", {})  # one record for config and weights: both come from the same commit
        if not isinstance(config, PretrainedConfig):
            hub = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
            config = AutoConfig.from_pretrained(config or pretrained_model_name_or_path, **hub)
        return cls.model_class_for(config).from_pretrained(pretrained_model_name_or_path, *model_args, config=config,
                                                           **kwargs)

    @classmethod
    def register(cls, config_class: type, model_class: type, exist_ok: bool = False) -> None:
        registry.register_model(cls.task, config_class, model_class, exist_ok)


def _auto(task: str, doc: str) -> type:
    return type(task, (_AutoModel,), {"task": task, "__doc__": doc})


AutoModel = _auto("AutoModel", "The base model (hidden states) of a checkpoint's family.")
AutoModelForCausalLM = _auto("AutoModelForCausalLM", "A next-token language model.")
AutoModelForSequenceClassification = _auto("AutoModelForSequenceClassification", "A sequence classifier.")
AutoModelForQuestionAnswering = _auto("AutoModelForQuestionAnswering", "An extractive question-answering model.")
AutoModelForTokenClassification = _auto("AutoModelForTokenClassification", "A per-token classifier.")
AutoModelForMaskedLM = _auto("AutoModelForMaskedLM", "A masked language model.")
AutoModelForSeq2SeqLM = _auto("AutoModelForSeq2SeqLM", "An encoder-decoder language model.")
