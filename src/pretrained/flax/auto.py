"""Flax Auto classes: read `model_type` from a config and hand over to the family's Flax class.

They read the same registry records as the PyTorch Auto classes (`registry.FAMILIES[...].flax_models`, under the
same task names) and take the same arguments; a checkpoint's own code (config.json's `auto_map`, under the Flax
name: "FlaxAutoModelForCausalLM") is used only with `trust_remote_code=True`, as for PyTorch.
"""

from __future__ import annotations

from .. import registry
from ..auto import _AutoModel
from ..configuration import PretrainedConfig


class _FlaxAutoModel(_AutoModel):
    task = ""  # the Flax Auto class's name, also its auto_map key

    @classmethod
    def model_class_for(cls, config: PretrainedConfig) -> type:
        return registry.model_class(type(config), cls.task.removeprefix("Flax"), framework="flax")

    @classmethod
    def register(cls, config_class: type, model_class: type, exist_ok: bool = False) -> None:
        registry.register_model(cls.task.removeprefix("Flax"), config_class, model_class, exist_ok, framework="flax")


def _auto(task: str, doc: str) -> type:
    return type(task, (_FlaxAutoModel,), {"task": task, "__doc__": doc})


FlaxAutoModel = _auto("FlaxAutoModel", "The base model (hidden states) of a checkpoint's family, in Flax.")
FlaxAutoModelForCausalLM = _auto("FlaxAutoModelForCausalLM", "A next-token language model, in Flax.")
FlaxAutoModelForMaskedLM = _auto("FlaxAutoModelForMaskedLM", "A masked language model, in Flax.")
FlaxAutoModelForSeq2SeqLM = _auto("FlaxAutoModelForSeq2SeqLM", "An encoder-decoder language model, in Flax.")
FlaxAutoModelForSequenceClassification = _auto("FlaxAutoModelForSequenceClassification",
                                               "A sequence classifier, in Flax.")
FlaxAutoModelForQuestionAnswering = _auto("FlaxAutoModelForQuestionAnswering",
                                          "An extractive question-answering model, in Flax.")
FlaxAutoModelForTokenClassification = _auto("FlaxAutoModelForTokenClassification", "A per-token classifier, in Flax.")

__all__ = ["FlaxAutoModel", "FlaxAutoModelForCausalLM", "FlaxAutoModelForMaskedLM", "FlaxAutoModelForQuestionAnswering",
           "FlaxAutoModelForSeq2SeqLM", "FlaxAutoModelForSequenceClassification", "FlaxAutoModelForTokenClassification"]
