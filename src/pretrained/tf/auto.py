"""TensorFlow Auto classes: read `model_type` from a config and hand over to the family's TF class.

They read the same registry records as the PyTorch and Flax Auto classes (`registry.FAMILIES[...].tf_models`, under
the same task names) and take the same arguments; a checkpoint's own code (config.json's `auto_map`, under the TF
name: "TFAutoModelForCausalLM") is used only with `trust_remote_code=True`, as for PyTorch.
"""

from __future__ import annotations

from .. import registry
from ..auto import _AutoModel
from ..configuration import PretrainedConfig


class _TFAutoModel(_AutoModel):
    task = ""  # the TF Auto class's name, also its auto_map key

    @classmethod
    def model_class_for(cls, config: PretrainedConfig) -> type:
        return registry.model_class(type(config), cls.task.removeprefix("TF"), framework="tf")

    @classmethod
    def register(cls, config_class: type, model_class: type, exist_ok: bool = False) -> None:
        registry.register_model(cls.task.removeprefix("TF"), config_class, model_class, exist_ok, framework="tf")


def _auto(task: str, doc: str) -> type:
    return type(task, (_TFAutoModel,), {"task": task, "__doc__": doc})


TFAutoModel = _auto("TFAutoModel", "The base model (hidden states) of a checkpoint's family, in TensorFlow.")
TFAutoModelForCausalLM = _auto("TFAutoModelForCausalLM", "A next-token language model, in TensorFlow.")
TFAutoModelForMaskedLM = _auto("TFAutoModelForMaskedLM", "A masked language model, in TensorFlow.")
TFAutoModelForSeq2SeqLM = _auto("TFAutoModelForSeq2SeqLM", "An encoder-decoder language model, in TensorFlow.")
TFAutoModelForSequenceClassification = _auto("TFAutoModelForSequenceClassification",
                                             "A sequence classifier, in TensorFlow.")
TFAutoModelForQuestionAnswering = _auto("TFAutoModelForQuestionAnswering",
                                        "An extractive question-answering model, in TensorFlow.")
TFAutoModelForTokenClassification = _auto("TFAutoModelForTokenClassification", "A per-token classifier, in TensorFlow.")

__all__ = ["TFAutoModel", "TFAutoModelForCausalLM", "TFAutoModelForMaskedLM", "TFAutoModelForQuestionAnswering",
           "TFAutoModelForSeq2SeqLM", "TFAutoModelForSequenceClassification", "TFAutoModelForTokenClassification"]
