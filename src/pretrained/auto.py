"""Auto classes: read `model_type` from a config and hand over to the registered class."""

from __future__ import annotations

import os
from typing import Any

from . import registry, remote_code
from .configuration import PretrainedConfig, naming_file
from .errors import ConfigError, UnknownModelTypeError
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
        """The config of a folder or repo. A config whose `auto_map` names its own config class is read with that
        class only under `trust_remote_code=True` (see `pretrained.remote_code`); otherwise the library's class for
        its `model_type` is used, or, if there is none, an UntrustedCodeError says which files would run."""
        trust = kwargs.pop("trust_remote_code", None)
        code_revision = kwargs.pop("code_revision", None)
        kwargs = dict(kwargs)
        hub = {k: kwargs.pop(k) for k in HUB_KWARGS if k in kwargs}
        hub.setdefault("_pin", {})
        path, config_dict, rest = PretrainedConfig.config_file_and_dict(pretrained_model_name_or_path, **hub, **kwargs)
        with naming_file(path):
            config = cls._from_config_dict(pretrained_model_name_or_path, path, config_dict, rest, trust,
                                           code_revision, hub)
        (config[0] if isinstance(config, tuple) else config)._config_file = path  # (config, unused) on request
        return config

    @classmethod
    def _from_config_dict(cls, pretrained_model_name_or_path, path, config_dict, rest, trust, code_revision, hub):
        PretrainedConfig.check_values({k: config_dict[k] for k in ("model_type", "auto_map") if k in config_dict})
        model_type = config_dict.get("model_type")
        auto_map = config_dict.get("auto_map") or {}
        if "AutoConfig" in auto_map:
            source = os.fspath(pretrained_model_name_or_path)
            if remote_code.check_trust(source, auto_map, trust, has_local=model_type in registry.FAMILIES,
                                       what="its config", hub=hub):
                config_cls = remote_code.get_class(auto_map["AutoConfig"], source, code_revision=code_revision,
                                                   hub=hub)
                if hasattr(config_cls, "register_for_auto_class"):  # saving it again carries its code along
                    config_cls.register_for_auto_class()
                config = config_cls.from_dict(config_dict, **rest)
                config._name_or_path = source
                config._commit_hash = remote_code.loaded_commit(hub)  # from_config reads the code there too
                return config
        if not model_type:
            raise ConfigError(
                f"The config file '{path}' has no 'model_type' key, so its family is unknown. "
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
    def _class_for(cls, config: PretrainedConfig, source: Any, trust: bool | None, code_revision: str | None,
                   hub: dict[str, Any]) -> type:
        """The checkpoint's own class under trust (config.auto_map names one for this task), else the library's."""
        auto_map = getattr(config, "auto_map", None) or {}
        if cls.task in auto_map and source is not None:
            has_local = True
            try:
                local = cls.model_class_for(config)
            except UnknownModelTypeError:
                has_local = False
            if not remote_code.check_trust(os.fspath(source), auto_map, trust, has_local=has_local, what=cls.task,
                                           hub=hub):
                return local
            model_cls = remote_code.get_class(auto_map[cls.task], source, code_revision=code_revision, hub=hub)
            if hasattr(model_cls, "register_for_auto_class"):  # saving it again carries its code along
                model_cls.register_for_auto_class(cls.task)
            return model_cls
        return cls.model_class_for(config)

    @classmethod
    def from_config(cls, config: PretrainedConfig, **kwargs: Any):
        """A freshly initialised model for `config`; with `trust_remote_code=True` and an `auto_map` entry for this
        task, the class comes from the code of the checkpoint the config was read from (`config._name_or_path`)."""
        trust = kwargs.pop("trust_remote_code", None)
        code_revision = kwargs.pop("code_revision", None)
        source = getattr(config, "_name_or_path", None) or None
        commit = getattr(config, "_commit_hash", None)
        hub = {"revision": commit} if commit else {}
        return cls._class_for(config, source, trust, code_revision, hub).from_config(config, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *model_args: Any, **kwargs: Any):
        """Load a checkpoint with its family's class, or, with `trust_remote_code=True`, with the class its config's
        `auto_map` names. `revision` pins config and weights; `code_revision` pins the custom code (default: the
        commit the config came from, for code in the same repo)."""
        config = kwargs.pop("config", None)
        trust = kwargs.pop("trust_remote_code", None)
        code_revision = kwargs.pop("code_revision", None)
        kwargs.setdefault("_pin", {})  # one record for config and weights: both come from the same commit
        hub = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
        if not isinstance(config, PretrainedConfig):
            config = AutoConfig.from_pretrained(config or pretrained_model_name_or_path, trust_remote_code=trust,
                                                code_revision=code_revision, **hub)
        with naming_file(getattr(config, "_config_file", None)):
            model_cls = cls._class_for(config, pretrained_model_name_or_path, trust, code_revision, hub)
        return model_cls.from_pretrained(pretrained_model_name_or_path, *model_args, config=config, **kwargs)

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
AutoModelForPreTraining = _auto("AutoModelForPreTraining", "A model with its pre-training heads (BERT: masked LM + "
                                "next sentence).")
