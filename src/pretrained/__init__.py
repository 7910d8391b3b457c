"""pretrained: load, save, share and run pretrained models in the Hugging Face on-disk format.

Names are imported lazily: `import pretrained` costs almost nothing and imports no framework; a PyTorch name pulls
in torch when first used, a Flax name (`FlaxAutoModelForCausalLM`, `FlaxLlamaForCausalLM`, ...) jax and flax only, a
TensorFlow name (`TFAutoModelForCausalLM`, `TFLlamaForCausalLM`, ...) tensorflow and keras only.
"""

from __future__ import annotations

from ._lazy import lazy_exports


__version__ = "0.1.0"

_EXPORTS = {
    "PretrainedConfig": "configuration", "PreTrainedConfig": "configuration",
    "AutoConfig": "auto", "AutoModel": "auto", "AutoModelForCausalLM": "auto",
    "AutoModelForSequenceClassification": "auto", "AutoModelForQuestionAnswering": "auto",
    "AutoModelForTokenClassification": "auto", "AutoModelForMaskedLM": "auto", "AutoModelForSeq2SeqLM": "auto",
    "AutoModelForPreTraining": "auto",
    "PreTrainedModel": "modeling.base", "ModelFacts": "modeling.base",
    "DistributedConfig": "distributed.config",
    "ModuleUtilsMixin": "modeling.utils",
    "load_sharded_checkpoint": "modeling.sharded",
    "infer_auto_device_map": "dispatch.plan",
    "DynamicCache": "generation.cache", "EncoderDecoderCache": "generation.cache", "StaticCache": "generation.cache",
    "GenerationConfig": "generation.config", "CompileConfig": "generation.config", "GenerationMixin": "generation.loop",
    "TextStreamer": "generation.streamers", "TokenStreamer": "generation.streamers",
    "GenerateDecoderOnlyOutput": "generation.outputs", "GenerateEncoderDecoderOutput": "generation.outputs",
    "GenerateBeamDecoderOnlyOutput": "generation.outputs", "GenerateBeamEncoderDecoderOutput": "generation.outputs",
    "FlaxPreTrainedModel": "flax.base", "FlaxGenerationMixin": "flax.generation",
    "FlaxAutoModel": "flax.auto", "FlaxAutoModelForCausalLM": "flax.auto", "FlaxAutoModelForMaskedLM": "flax.auto",
    "FlaxAutoModelForSeq2SeqLM": "flax.auto", "FlaxAutoModelForSequenceClassification": "flax.auto",
    "FlaxAutoModelForQuestionAnswering": "flax.auto", "FlaxAutoModelForTokenClassification": "flax.auto",
    "TFPreTrainedModel": "tf.base", "TFModelUtilsMixin": "tf.base", "TFGenerationMixin": "tf.generation",
    "TFAutoModel": "tf.auto", "TFAutoModelForCausalLM": "tf.auto", "TFAutoModelForMaskedLM": "tf.auto",
    "TFAutoModelForSeq2SeqLM": "tf.auto", "TFAutoModelForSequenceClassification": "tf.auto",
    "TFAutoModelForQuestionAnswering": "tf.auto", "TFAutoModelForTokenClassification": "tf.auto",
    "errors": None,
    "TorchAoConfig": "quantization.config", "CompressedTensorsConfig": "quantization.config",
    "BitsAndBytesConfig": "quantization.bnb", "FineGrainedFP8Config": "quantization.fp8",
}

_DECODER = ("Model", "ForCausalLM", "ForSequenceClassification", "ForQuestionAnswering", "ForTokenClassification")
_FAMILIES = {  # folder under models/ -> (class-name prefix, class-name suffixes besides Config and PreTrainedModel)
    "llama": ("Llama", _DECODER), "mistral": ("Mistral", _DECODER), "qwen2": ("Qwen2", _DECODER),
    "gemma": ("Gemma", _DECODER),
    "bert": ("Bert", ("Model", "ForMaskedLM", "ForSequenceClassification", "ForQuestionAnswering",
                      "ForTokenClassification", "ForPreTraining")),
    "gpt2": ("GPT2", ("Model", "LMHeadModel")),
    "t5": ("T5", ("Model", "ForConditionalGeneration", "EncoderModel")),
}
_TF_DECODER = ("PreTrainedModel", "Model", "ForCausalLM", "ForSequenceClassification")
_TF_FAMILIES = {  # folder under models/ -> the suffixes of its TensorFlow classes (`TF` + prefix + suffix)
    "llama": _TF_DECODER, "mistral": _TF_DECODER, "qwen2": _TF_DECODER, "gemma": _TF_DECODER,
    "bert": ("PreTrainedModel", "Model", "ForMaskedLM", "ForSequenceClassification", "ForQuestionAnswering",
             "ForTokenClassification"),
    "gpt2": ("PreTrainedModel", "Model", "LMHeadModel"),
    "t5": ("PreTrainedModel", "Model", "ForConditionalGeneration", "EncoderModel"),
}
_FLAX_FAMILIES = {  # folder under models/ -> the suffixes of its Flax classes (`Flax` + prefix + suffix)
    "llama": ("PreTrainedModel", "Model", "ForCausalLM"), "mistral": ("PreTrainedModel", "Model", "ForCausalLM"),
    "qwen2": ("PreTrainedModel", "Model", "ForCausalLM"), "gemma": ("PreTrainedModel", "Model", "ForCausalLM"),
    "bert": ("PreTrainedModel", "Model", "ForMaskedLM", "ForSequenceClassification", "ForQuestionAnswering",
             "ForTokenClassification"),
    "gpt2": ("PreTrainedModel", "Model", "LMHeadModel"),
    "t5": ("PreTrainedModel", "Model", "ForConditionalGeneration", "EncoderModel"),
}
for _folder, (_prefix, _suffixes) in _FAMILIES.items():
    for _suffix in ("Config", "PreTrainedModel", *_suffixes):
        _EXPORTS[_prefix + _suffix] = f"models.{_folder}"
    for _suffix in _FLAX_FAMILIES[_folder]:
        _EXPORTS["Flax" + _prefix + _suffix] = f"models.{_folder}"
    for _suffix in _TF_FAMILIES[_folder]:
        _EXPORTS["TF" + _prefix + _suffix] = f"models.{_folder}"

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
