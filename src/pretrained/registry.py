"""One record per `model_type`: its config class and its model class per task, as import paths (loaded lazily,
so `import pretrained` imports no family). Users add their own classes with `AutoConfig.register` /
`AutoModel*.register`; that is the only way records change, and registering a name twice is an error."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from .errors import UnknownModelTypeError

TASKS = (
    "AutoModel", "AutoModelForCausalLM", "AutoModelForSequenceClassification", "AutoModelForQuestionAnswering",
    "AutoModelForTokenClassification", "AutoModelForMaskedLM", "AutoModelForSeq2SeqLM",
)


@dataclass
class Family:
    model_type: str
    config: str | type  # "module:Class" or the class itself
    models: dict[str, str | type] = field(default_factory=dict)  # task -> "module:Class" or class


def _family(model_type: str, module: str, config: str, models: dict[str, str]) -> Family:
    path = f"pretrained.models.{module}"
    return Family(model_type, f"{path}.configuration:{config}", {t: f"{path}.modeling:{c}" for t, c in models.items()})


def _decoder(name: str) -> dict[str, str]:
    """The classes every Llama-family decoder has."""
    return {"AutoModel": f"{name}Model", "AutoModelForCausalLM": f"{name}ForCausalLM",
            "AutoModelForSequenceClassification": f"{name}ForSequenceClassification",
            "AutoModelForQuestionAnswering": f"{name}ForQuestionAnswering",
            "AutoModelForTokenClassification": f"{name}ForTokenClassification"}


FAMILIES: dict[str, Family] = {
    "llama": _family("llama", "llama", "LlamaConfig", _decoder("Llama")),
    "mistral": _family("mistral", "mistral", "MistralConfig", _decoder("Mistral")),
    "qwen2": _family("qwen2", "qwen2", "Qwen2Config", _decoder("Qwen2")),
    "gemma": _family("gemma", "gemma", "GemmaConfig", _decoder("Gemma")),
    "bert": _family("bert", "bert", "BertConfig", {
        "AutoModel": "BertModel", "AutoModelForMaskedLM": "BertForMaskedLM",
        "AutoModelForSequenceClassification": "BertForSequenceClassification",
        "AutoModelForQuestionAnswering": "BertForQuestionAnswering",
        "AutoModelForTokenClassification": "BertForTokenClassification"}),
    "gpt2": _family("gpt2", "gpt2", "GPT2Config", {"AutoModel": "GPT2Model", "AutoModelForCausalLM": "GPT2LMHeadModel"}),
    "t5": _family("t5", "t5", "T5Config", {"AutoModel": "T5Model", "AutoModelForSeq2SeqLM": "T5ForConditionalGeneration"}),
}


def _load(ref: str | type) -> type:
    if isinstance(ref, type):
        return ref
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def family(model_type: str) -> Family:
    if model_type not in FAMILIES:
        raise UnknownModelTypeError(
            f"Unknown model_type '{model_type}'. Known model types: {', '.join(sorted(FAMILIES))}. Register your own "
            "with AutoConfig.register(model_type, ConfigClass)."
        )
    return FAMILIES[model_type]


def config_class(model_type: str) -> type:
    return _load(family(model_type).config)


def model_class(config_cls: type, task: str) -> type:
    """The class for `task` of the family whose config class is `config_cls` (found by its `model_type`)."""
    fam = FAMILIES.get(getattr(config_cls, "model_type", ""))
    if fam is None or _load(fam.config) is not config_cls:
        raise UnknownModelTypeError(
            f"No family is registered for the config class {config_cls.__name__}. Register one with "
            f"AutoConfig.register(...) and {task}.register(...)."
        )
    if task not in fam.models:
        raise UnknownModelTypeError(
            f"model_type '{fam.model_type}' has no class for {task}; it has: {', '.join(sorted(fam.models)) or 'none'}."
        )
    return _load(fam.models[task])


def register_config(model_type: str, config_cls: type, exist_ok: bool = False) -> None:
    if getattr(config_cls, "model_type", model_type) != model_type:
        raise ValueError(f"{config_cls.__name__}.model_type is '{config_cls.model_type}', not '{model_type}'.")
    if model_type in FAMILIES and not exist_ok:
        raise ValueError(f"model_type '{model_type}' is already registered; pick another name or pass exist_ok=True.")
    FAMILIES[model_type] = Family(model_type, config_cls, dict(FAMILIES[model_type].models) if model_type in FAMILIES else {})


def register_model(task: str, config_cls: type, model_cls: type, exist_ok: bool = False) -> None:
    model_type = getattr(config_cls, "model_type", "")
    if model_type not in FAMILIES:
        raise ValueError(f"Register the config first: AutoConfig.register('{model_type}', {config_cls.__name__}).")
    if getattr(model_cls, "config_class", config_cls) is not config_cls:
        raise ValueError(f"{model_cls.__name__}.config_class is {model_cls.config_class.__name__}, not {config_cls.__name__}.")
    fam = FAMILIES[model_type]
    if task in fam.models and not exist_ok:
        raise ValueError(f"{task} already has a class for model_type '{model_type}'; pass exist_ok=True to replace it.")
    fam.models[task] = model_cls
