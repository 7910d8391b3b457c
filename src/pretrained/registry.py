"""One record per `model_type`: its config class and its model class per task and framework, as import paths (loaded
lazily, so `import pretrained` imports no family and no framework). The Flax and TensorFlow classes are kept under
the same task names as the PyTorch ones (`FlaxAutoModelForCausalLM` reads `flax_models["AutoModelForCausalLM"]`,
`TFAutoModelForCausalLM` reads `tf_models["AutoModelForCausalLM"]`). Users add their own classes with
`AutoConfig.register` / `AutoModel*.register` / `FlaxAutoModel*.register` / `TFAutoModel*.register`; that is the only
way records change, and registering a name twice is an error."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from .errors import UnknownModelTypeError

TASKS = (
    "AutoModel", "AutoModelForCausalLM", "AutoModelForSequenceClassification", "AutoModelForQuestionAnswering",
    "AutoModelForTokenClassification", "AutoModelForMaskedLM", "AutoModelForSeq2SeqLM",
)
FLAX_TASKS = tuple(f"Flax{task}" for task in TASKS)  # the Flax Auto classes (config.json's auto_map keys too)
TF_TASKS = tuple(f"TF{task}" for task in TASKS)  # the TensorFlow Auto classes
FRAMEWORKS = ("pt", "flax", "tf")
_PREFIX = {"pt": "", "flax": "Flax", "tf": "TF"}  # how a framework's Auto class names spell a task


@dataclass
class Family:
    model_type: str
    config: str | type  # "module:Class" or the class itself
    models: dict[str, str | type] = field(default_factory=dict)  # task -> "module:Class" or class
    flax_models: dict[str, str | type] = field(default_factory=dict)  # the same task names -> Flax classes
    tf_models: dict[str, str | type] = field(default_factory=dict)  # the same task names -> TensorFlow classes

    def classes(self, framework: str = "pt") -> dict[str, str | type]:
        if framework not in FRAMEWORKS:
            raise ValueError(f"framework must be one of {FRAMEWORKS}, got {framework!r}.")
        return {"pt": self.models, "flax": self.flax_models, "tf": self.tf_models}[framework]


def _family(model_type: str, module: str, config: str, models: dict[str, str],
            flax_models: dict[str, str] | None = None, tf_models: dict[str, str] | None = None) -> Family:
    path = f"pretrained.models.{module}"
    return Family(model_type, f"{path}.configuration:{config}", {t: f"{path}.modeling:{c}" for t, c in models.items()},
                  {t: f"{path}.modeling_flax:{c}" for t, c in (flax_models or {}).items()},
                  {t: f"{path}.modeling_tf:{c}" for t, c in (tf_models or {}).items()})


def _decoder(name: str) -> dict[str, str]:
    """The classes every Llama-family decoder has."""
    return {"AutoModel": f"{name}Model", "AutoModelForCausalLM": f"{name}ForCausalLM",
            "AutoModelForSequenceClassification": f"{name}ForSequenceClassification",
            "AutoModelForQuestionAnswering": f"{name}ForQuestionAnswering",
            "AutoModelForTokenClassification": f"{name}ForTokenClassification"}


def _flax_decoder(name: str) -> dict[str, str]:
    """The Flax classes every Llama-family decoder has."""
    return {"AutoModel": f"Flax{name}Model", "AutoModelForCausalLM": f"Flax{name}ForCausalLM"}


def _tf_decoder(name: str) -> dict[str, str]:
    """The TensorFlow classes every Llama-family decoder has."""
    return {"AutoModel": f"TF{name}Model", "AutoModelForCausalLM": f"TF{name}ForCausalLM",
            "AutoModelForSequenceClassification": f"TF{name}ForSequenceClassification"}


_BERT = {"AutoModel": "BertModel", "AutoModelForMaskedLM": "BertForMaskedLM",
         "AutoModelForSequenceClassification": "BertForSequenceClassification",
         "AutoModelForQuestionAnswering": "BertForQuestionAnswering",
         "AutoModelForTokenClassification": "BertForTokenClassification"}
_GPT2 = {"AutoModel": "GPT2Model", "AutoModelForCausalLM": "GPT2LMHeadModel"}
_T5 = {"AutoModel": "T5Model", "AutoModelForSeq2SeqLM": "T5ForConditionalGeneration"}

FAMILIES: dict[str, Family] = {
    "llama": _family("llama", "llama", "LlamaConfig", _decoder("Llama"), _flax_decoder("Llama"), _tf_decoder("Llama")),
    "mistral": _family("mistral", "mistral", "MistralConfig", _decoder("Mistral"), _flax_decoder("Mistral"),
                       _tf_decoder("Mistral")),
    "qwen2": _family("qwen2", "qwen2", "Qwen2Config", _decoder("Qwen2"), _flax_decoder("Qwen2"), _tf_decoder("Qwen2")),
    "gemma": _family("gemma", "gemma", "GemmaConfig", _decoder("Gemma"), _flax_decoder("Gemma"), _tf_decoder("Gemma")),
    "bert": _family("bert", "bert", "BertConfig", {**_BERT, "AutoModelForPreTraining": "BertForPreTraining"},
                    {t: f"Flax{c}" for t, c in _BERT.items()},
                    {t: f"TF{c}" for t, c in _BERT.items()}),
    "gpt2": _family("gpt2", "gpt2", "GPT2Config", _GPT2, {t: f"Flax{c}" for t, c in _GPT2.items()},
                    {t: f"TF{c}" for t, c in _GPT2.items()}),
    "t5": _family("t5", "t5", "T5Config", _T5, {t: f"Flax{c}" for t, c in _T5.items()},
                  {t: f"TF{c}" for t, c in _T5.items()}),
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


def model_class(config_cls: type, task: str, framework: str = "pt") -> type:
    """The class for `task` of the family whose config class is `config_cls` (found by its `model_type`), in
    `framework` ("pt", "flax" or "tf")."""
    fam = FAMILIES.get(getattr(config_cls, "model_type", ""))
    prefix = _PREFIX.get(framework, "")
    shown = f"{prefix}{task}"
    if fam is None or _load(fam.config) is not config_cls:
        raise UnknownModelTypeError(
            f"No family is registered for the config class {config_cls.__name__}. Register one with "
            f"AutoConfig.register(...) and {shown}.register(...)."
        )
    classes = fam.classes(framework)
    if task not in classes:
        has = ", ".join(sorted(f"{prefix}{t}" for t in classes)) or "none"
        raise UnknownModelTypeError(f"model_type '{fam.model_type}' has no class for {shown}; it has: {has}.")
    return _load(classes[task])


def register_config(model_type: str, config_cls: type, exist_ok: bool = False) -> None:
    if getattr(config_cls, "model_type", model_type) != model_type:
        raise ValueError(f"{config_cls.__name__}.model_type is '{config_cls.model_type}', not '{model_type}'.")
    if model_type in FAMILIES and not exist_ok:
        raise ValueError(f"model_type '{model_type}' is already registered; pick another name or pass exist_ok=True.")
    old = FAMILIES.get(model_type)
    FAMILIES[model_type] = Family(model_type, config_cls, dict(old.models) if old else {},
                                  dict(old.flax_models) if old else {}, dict(old.tf_models) if old else {})


def register_model(task: str, config_cls: type, model_cls: type, exist_ok: bool = False,
                   framework: str = "pt") -> None:
    model_type = getattr(config_cls, "model_type", "")
    if model_type not in FAMILIES:
        raise ValueError(f"Register the config first: AutoConfig.register('{model_type}', {config_cls.__name__}).")
    if getattr(model_cls, "config_class", config_cls) is not config_cls:
        raise ValueError(f"{model_cls.__name__}.config_class is {model_cls.config_class.__name__}, "
                         f"not {config_cls.__name__}.")
    classes = FAMILIES[model_type].classes(framework)
    if task in classes and not exist_ok:
        shown = f"{_PREFIX.get(framework, '')}{task}"
        raise ValueError(f"{shown} already has a class for model_type '{model_type}'; pass exist_ok=True to "
                         "replace it.")
    classes[task] = model_cls
