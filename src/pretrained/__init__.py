"""pretrained: load, save, share and run pretrained models in the Hugging Face on-disk format.

Names are imported lazily: `import pretrained` costs almost nothing and pulls in torch only when a name that
needs it is first used.
"""

from __future__ import annotations

from ._lazy import lazy_exports


__version__ = "0.1.0"

_EXPORTS = {
    "PretrainedConfig": "configuration", "PreTrainedConfig": "configuration",
    "AutoConfig": "auto", "AutoModel": "auto", "AutoModelForCausalLM": "auto",
    "AutoModelForSequenceClassification": "auto", "AutoModelForQuestionAnswering": "auto",
    "AutoModelForTokenClassification": "auto", "AutoModelForMaskedLM": "auto", "AutoModelForSeq2SeqLM": "auto",
    "PreTrainedModel": "modeling.base", "ModelFacts": "modeling.base",
    "ModuleUtilsMixin": "modeling.utils",
    "load_sharded_checkpoint": "modeling.sharded",
    "infer_auto_device_map": "dispatch.plan",
    "DynamicCache": "generation.cache", "EncoderDecoderCache": "generation.cache", "StaticCache": "generation.cache",
    "GenerationConfig": "generation.config", "CompileConfig": "generation.config", "GenerationMixin": "generation.loop",
    "TextStreamer": "generation.streamers", "TokenStreamer": "generation.streamers",
    "GenerateDecoderOnlyOutput": "generation.outputs", "GenerateEncoderDecoderOutput": "generation.outputs",
    "GenerateBeamDecoderOnlyOutput": "generation.outputs", "GenerateBeamEncoderDecoderOutput": "generation.outputs",
    "errors": None,
}

_DECODER = ("Model", "ForCausalLM", "ForSequenceClassification", "ForQuestionAnswering", "ForTokenClassification")
_FAMILIES = {  # folder under models/ -> (class-name prefix, class-name suffixes besides Config and PreTrainedModel)
    "llama": ("Llama", _DECODER), "mistral": ("Mistral", _DECODER), "qwen2": ("Qwen2", _DECODER),
    "gemma": ("Gemma", _DECODER),
    "bert": ("Bert", ("Model", "ForMaskedLM", "ForSequenceClassification", "ForQuestionAnswering",
                      "ForTokenClassification")),
    "gpt2": ("GPT2", ("Model", "LMHeadModel")),
    "t5": ("T5", ("Model", "ForConditionalGeneration", "EncoderModel")),
}
for _folder, (_prefix, _suffixes) in _FAMILIES.items():
    for _suffix in ("Config", "PreTrainedModel", *_suffixes):
        _EXPORTS[_prefix + _suffix] = f"models.{_folder}"

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
