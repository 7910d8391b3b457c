"""pretrained: load, save, share and run pretrained models in the Hugging Face on-disk format.

Names are imported lazily: `import pretrained` costs almost nothing and pulls in torch only when a name that
needs it is first used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "PretrainedConfig": "configuration", "PreTrainedConfig": "configuration",
    "AutoConfig": "auto", "AutoModel": "auto", "AutoModelForCausalLM": "auto",
    "AutoModelForSequenceClassification": "auto", "AutoModelForQuestionAnswering": "auto",
    "AutoModelForTokenClassification": "auto", "AutoModelForMaskedLM": "auto", "AutoModelForSeq2SeqLM": "auto",
    "PreTrainedModel": "modeling.base", "ModelFacts": "modeling.base",
    "ModuleUtilsMixin": "modeling.utils",
    "load_sharded_checkpoint": "modeling.sharded",
    "LlamaConfig": "models.llama", "LlamaModel": "models.llama", "LlamaForCausalLM": "models.llama",
    "LlamaPreTrainedModel": "models.llama",
    "DynamicCache": "generation.cache",
    "errors": None,
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pretrained' has no attribute '{name}'")
    module = _EXPORTS[name]
    if module is None:
        return importlib.import_module(f".{name}", __name__)
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
