"""`TFPreTrainedModel`: the base of every TensorFlow class, a Keras 3 model with 4.x's TF API, on the same
checkpoints as PyTorch and Flax.

A family's class sets `config_class`, `base_model_prefix` ("model", "bert", "transformer", ...),
`main_input_name`, optionally `tf_key_rules` (see `convert.py`), and names its layers so that every weight's Keras
path is 4.x's TF weight name: `tf_mistral_for_causal_lm/model/layers.0/self_attn/q_proj/kernel` (the model's own
name, then the main layer named `base_model_prefix`, then layer names). It builds its layers in `__init__` and,
preferably, creates their variables in an explicit `build(input_shape=None)` (children built from their parent's
`build`, as 4.x's classes do); without one, `build` runs the model once on `dummy_inputs`.

Loading (`from_pretrained`) reads, in this order: PyTorch-layout safetensors (`model.safetensors`, or shards +
`model.safetensors.index.json`), then 4.x's `tf_model.h5` (or `tf_model.h5.index.json` + shards). 4.57 looked for
`tf_model.h5` first (safetensors only with `from_pt=True`); we prefer safetensors when a folder has both, because it
is the format every framework shares and the one our saves write by default (a save also removes the other format's
files, so a folder we wrote holds one). `use_safetensors=False` reads only h5, `True` only safetensors; a weights file
can be given directly. 4.x's TF-layout safetensors (metadata `{"format": "tf"}`, Keras names) are read too.

The model is built without running any initialiser over the weights the checkpoint has: its variables are created
inside `keras.StatelessScope` (empty, deferred) and each one is then initialised with its checkpoint value (cast and
transposed one tensor at a time, read from the mapped file), so the peak stays near one copy of the parameters;
only the weights the checkpoint lacks get their random initial values.

Saving writes PyTorch-layout safetensors by default (they load in our PyTorch classes, in transformers and
everywhere else), `tf_model.h5` (Keras 2's layout, as 4.x wrote it, loadable by 4.57's TF classes) with
`safe_serialization=False`, and with `saved_model=True` also a TensorFlow SavedModel under `saved_model/<version>`
whose `serving_default` signature takes the `input_signature` tensors and returns the output's tensors.

What this class does exactly as `FlaxPreTrainedModel` does (config checks and resolution, generation_config.json, the
files a save writes beside the weights, weight file names) lives once, framework-free, in `modeling/neutral.py`.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import re
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar

import keras
import numpy as np
import tensorflow as tf

from ..checkpoint.files import SAFE_INDEX, SAFE_WEIGHTS, CheckpointFiles, find_checkpoint
from ..checkpoint.h5 import TF_INDEX, TF_WEIGHTS, find_h5_checkpoint, open_h5, save_h5
from ..checkpoint.numpy_reader import NumpyCheckpointReader
from ..checkpoint.numpy_writer import save_arrays, write_safetensors
from ..checkpoint.report import LoadingInfo
from ..checkpoint.shards import DEFAULT_MAX_SHARD_SIZE, add_variant
from ..configuration import PretrainedConfig
from ..errors import CheckpointNotFoundError, ConfigError, CorruptCheckpointError, LoadingError, ShapeMismatchError
from ..generation.config import GenerationConfig
from ..hub.push import PushToHubMixin, folder_state
from ..hub.resolve import resolve_file
from ..modeling.neutral import NeutralModelMixin
from .convert import TFKeyRules, TFSlot, keras_path, match, slots
from .layers import replace_variable, skip_init

try:
    from .generation import TFGenerationMixin
except ModuleNotFoundError as _e:  # tf/generation.py (another part of the TF work) not written yet
    if _e.name != f"{__package__}.generation":
        raise

    class TFGenerationMixin:  # type: ignore[no-redef]
        """Placeholder until `pretrained.tf.generation` exists."""

logger = logging.getLogger(__name__)

SERVING_DIR = "saved_model"
_DUMMY_IDS = [[7, 6, 0, 0, 1], [1, 2, 3, 0, 0], [0, 0, 0, 4, 5]]  # 4.x's dummy batch
_INTERNAL_LOSS = (None, "auto", "auto_with_warning", "passthrough")


def keras2_name(class_name: str) -> str:
    """The Keras 2 default name of a model of this class ("TFMistralForCausalLM" -> "tf_mistral_for_causal_lm"):
    the first component of every weight name 4.x wrote."""
    name = re.sub(r"(.)([A-Z][a-z0-9]+)", r"\1_\2", class_name)
    name = re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()
    return name if not name.startswith("_") else "private" + name


def _as_dtype(dtype: Any) -> str | None:
    if dtype is None:
        return None
    try:
        return tf.as_dtype(dtype).name
    except TypeError as e:
        raise ConfigError(f"{dtype!r} is not a dtype; give a tf dtype (tf.bfloat16) or its name.") from e


@contextlib.contextmanager
def _dtype_policy(dtype: str | None) -> Iterator[None]:
    """Layers constructed inside take `dtype` as their dtype policy (variables and computation)."""
    if dtype is None:
        yield
        return
    old = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(old)


# ---- deferred variables: created empty, initialised once with their value -------------------------------------
def _is_deferred(variable: Any) -> bool:
    return getattr(variable, "_value", 0) is None and hasattr(variable, "_deferred_initialize")


def _initialise(variable: Any, make: Any = None) -> None:
    """Give a variable its first value (`make()`, or its own initialiser's when None); a variable that already has
    one (built outside a stateless scope) is assigned. The value is made inside the variable's creation, so nothing
    else holds it and TensorFlow can take its buffer instead of copying it."""
    if _is_deferred(variable):
        if make is not None:
            variable._initializer = lambda shape, dtype=None: make()
        variable._deferred_initialize()
    elif make is not None:
        variable.assign(make())


def _forget_deferred(variables: list[Any]) -> None:
    """Take a load's variables off Keras's list of deferred ones: the next stateless scope would initialise them
    again (raising for those that have their value), and a failed load's would live on through the list."""
    try:
        from keras.src.backend.common import global_state
    except ImportError:  # pragma: no cover
        return
    ours = {id(v) for v in variables}
    pending = global_state.get_global_attribute("uninitialized_variables")
    if pending:
        global_state.set_global_attribute("uninitialized_variables", [v for v in pending if id(v) not in ours])


def _relative(path: str) -> str:
    """A variable path without the model's own first component."""
    return path.split("/", 1)[1] if "/" in path else path


@dataclass
class _Planned:
    variable: Any
    slot: TFSlot | None  # PyTorch layout: how the checkpoint tensor becomes the variable; None: Keras layout


class TFModelUtilsMixin:
    """4.x's `TFModelUtilsMixin`: a Keras model that can count its parameters."""

    def num_parameters(self, only_trainable: bool = False) -> int:
        """The number of parameters (of the trainable variables only, with `only_trainable`)."""
        weights = self.trainable_weights if only_trainable else self.weights
        return int(sum(int(np.prod(w.shape)) for w in weights))


class TFPreTrainedModel(keras.Model, TFModelUtilsMixin, NeutralModelMixin, TFGenerationMixin, PushToHubMixin):
    config_class: ClassVar[type[PretrainedConfig]] = PretrainedConfig
    _framework_prefix: ClassVar[str] = "TF"
    _native_weights: ClassVar[tuple[str, str, str]] = (TF_WEIGHTS, TF_INDEX, "tf_model.h5")
    _config_beside_weights_file: ClassVar[bool] = True
    base_model_prefix: ClassVar[str] = ""
    main_input_name: ClassVar[str] = "input_ids"
    tf_key_rules: ClassVar[Any] = None  # see convert.TFKeyRules
    _auto_class: ClassVar[str | None] = None
    _requires_load_weight_prefix: ClassVar[bool] = False

    def __init__(self, config: PretrainedConfig, *inputs: Any, **kwargs: Any) -> None:
        if inputs:
            raise TypeError(f"{type(self).__name__} takes the config only; pass other options as keywords.")
        self._check_config(config)
        super().__init__(**kwargs)
        self.config = config
        self.name_or_path = getattr(config, "_name_or_path", "")
        self.generation_config = GenerationConfig.from_model_config(config) if self.can_generate() else None
        self.loading_info = LoadingInfo()
        self._internal_loss = False

    # ---- what a model is --------------------------------------------------------------------------------------
    @property
    def framework(self) -> str:
        return "tf"

    def get_config(self) -> dict:
        return self.config.to_dict()

    @classmethod
    def from_config(cls, config: PretrainedConfig, **kwargs: Any):
        """A freshly initialised, built model (`dtype` for its variables and computation, default float32)."""
        with _dtype_policy(_as_dtype(kwargs.pop("dtype", None))):
            model = cls(config, **kwargs)
        model.build_in_name_scope()
        return model

    @classmethod
    def _from_config(cls, config: PretrainedConfig, **kwargs: Any):
        return cls.from_config(config, **kwargs)

    @classmethod
    def register_for_auto_class(cls, auto_class: str | type = "TFAutoModel") -> None:
        """Make `save_pretrained` copy this class's module file next to the checkpoint and name it in config.json's
        `auto_map` under `auto_class` (a TF Auto class name), so the folder loads anywhere with
        `TFAutoModel*.from_pretrained(folder, trust_remote_code=True)`. For custom classes only."""
        from ..remote_code import check_auto_class

        cls._auto_class = check_auto_class(auto_class)

    # ---- building ----------------------------------------------------------------------------------------------
    @property
    def dummy_inputs(self) -> dict[str, tf.Tensor]:
        """A small batch the model can run on (4.x's: 3 rows of 5 token ids)."""
        return {self.main_input_name: tf.constant(_DUMMY_IDS, dtype=tf.int32)}

    def build(self, input_shape: Any = None) -> None:
        """Create the variables by running the model once on `dummy_inputs` (families override this with an
        explicit build that runs nothing)."""
        if self.built:
            return
        self.built = True  # the call below must not try to build again
        self(self.dummy_inputs, training=False)

    def build_in_name_scope(self) -> None:
        """Create every variable (4.x's name); a no-op for a built model."""
        if not self.built:
            self.build(None)

    def __call__(self, *args: Any, **kwargs: Any):
        """Keras's call, also with the inputs as one dict (what `fit` and 4.x users pass): `model({"input_ids": ids,
        "attention_mask": mask})`."""
        if args and isinstance(args[0], Mapping):
            inputs = dict(args[0])
            clash = sorted(set(inputs) & set(kwargs))
            if clash:
                raise TypeError(f"{type(self).__name__} got {', '.join(clash)} both in the inputs dict and as "
                                "keywords.")
            kwargs = {**inputs, **kwargs}
            args = args[1:]
        return super().__call__(*args, **kwargs)

    # ---- embeddings, heads ---------------------------------------------------------------------------------------
    def _main_layer(self):
        main = getattr(self, self.base_model_prefix, None) if self.base_model_prefix else None
        return main if main is not None else self

    def get_input_embeddings(self) -> keras.layers.Layer:
        """The token embedding layer."""
        main = self._main_layer()
        if main is not self and hasattr(main, "get_input_embeddings"):
            return main.get_input_embeddings()
        raise NotImplementedError(f"{type(self).__name__} does not say where its input embeddings are.")

    def set_input_embeddings(self, value: Any) -> None:
        """Give the token embeddings a new table (an array or variable of shape (vocab, hidden)); the vocabulary
        size follows it."""
        variable = self._embedding_variable(self.get_input_embeddings())
        value = tf.convert_to_tensor(value)
        replace_variable(variable, value)
        self._set_vocab_size(int(value.shape[0]))

    def get_output_embeddings(self) -> keras.layers.Layer | None:
        """The language-model head layer (the input embedding layer when the head reuses it), or None."""
        return None

    def get_bias(self) -> dict[str, Any] | None:
        """The head's vocabulary-sized bias variables, by name (4.x's hook; None when the head has none)."""
        return None

    @staticmethod
    def _embedding_variable(layer: Any) -> Any:
        for name in ("embeddings", "weight"):
            variable = getattr(layer, name, None)
            if variable is not None and len(variable.shape) == 2:
                return variable
        found = [w for w in getattr(layer, "weights", []) if len(w.shape) == 2]
        if len(found) != 1:
            raise NotImplementedError(f"Cannot find the embedding table of {layer!r}.")
        return found[0]

    def _set_vocab_size(self, vocab_size: int) -> None:
        self.config.vocab_size = vocab_size
        for layer in self._flatten_layers(include_self=True):
            if isinstance(layer, keras.layers.Embedding) and layer is self.get_input_embeddings():
                layer.input_dim = vocab_size
        if hasattr(self, "vocab_size"):
            self.vocab_size = vocab_size

    def resize_token_embeddings(self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None,
                                mean_resizing: bool = True) -> keras.layers.Layer:
        """Resize the vocabulary to `new_num_tokens` (rounded up to `pad_to_multiple_of`): old rows kept, new rows
        at the old rows' mean (plus noise of 1e-9 of their covariance, as the PyTorch classes), or N(0,
        initializer_range) without `mean_resizing`; an untied head and its bias follow (the bias padded with zeros);
        `config.vocab_size` updated. Returns the input embedding layer."""
        self.build_in_name_scope()
        layer = self.get_input_embeddings()
        table = self._embedding_variable(layer)
        old_num = int(table.shape[0])
        if new_num_tokens is None and pad_to_multiple_of is None:
            return layer
        new_num = old_num if new_num_tokens is None else int(new_num_tokens)
        if pad_to_multiple_of is not None:
            if not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of <= 0:
                raise ValueError(f"pad_to_multiple_of must be a positive int, got {pad_to_multiple_of!r}.")
            new_num = -(-new_num // pad_to_multiple_of) * pad_to_multiple_of
        if new_num <= 0:
            raise ValueError(f"new_num_tokens must be positive, got {new_num_tokens}.")
        std = float(getattr(self.config, "initializer_range", 0.02))
        rng = np.random.default_rng()
        replace_variable(table, _resized_rows(table.numpy(), new_num, mean_resizing, std, rng))
        head = self.get_output_embeddings()
        if head is not None and head is not layer:
            kernel = self._head_kernel(head)
            values = kernel.numpy()
            if values.shape[-1] == old_num and values.ndim == 2 and values.shape[0] != old_num:  # Dense [C, V]
                replace_variable(kernel, _resized_rows(values.T, new_num, mean_resizing, std, rng).T)
                if hasattr(head, "units"):
                    head.units = new_num
            else:
                replace_variable(kernel, _resized_rows(values, new_num, mean_resizing, std, rng))
        for bias in (self.get_bias() or {}).values():
            old = bias.numpy()
            new = np.zeros((*old.shape[:-1], new_num), old.dtype)
            keep = min(old.shape[-1], new_num)
            new[..., :keep] = old[..., :keep]
            replace_variable(bias, new)
        self._set_vocab_size(new_num)
        return self.get_input_embeddings()

    @staticmethod
    def _head_kernel(head: Any) -> Any:
        for name in ("kernel", "weight", "embeddings"):
            variable = getattr(head, name, None)
            if variable is not None and len(variable.shape) == 2:
                return variable
        raise NotImplementedError(f"Cannot find the weight of the head {head!r}.")

    def prune_heads(self, heads_to_prune: Mapping[int, list[int]]) -> None:
        """Remove attention heads for good: `{layer: [heads]}`, heads numbered as in the unpruned model. Heads
        already removed are ignored; the union is kept in `config.pruned_heads`, so a saved model reloads with the
        pruned shapes. Out-of-range layers or heads raise ValueError before anything changes. The family does the
        cutting (`_prune_heads`); 4.x's TF classes could not prune at all."""
        self.build_in_name_scope()
        layers = int(self.config.num_hidden_layers)
        heads = int(self.config.num_attention_heads)
        done = {int(k): set(map(int, v)) for k, v in (getattr(self.config, "pruned_heads", None) or {}).items()}
        plan: dict[int, list[int]] = {}
        for layer, chosen in heads_to_prune.items():
            layer = int(layer)
            if not 0 <= layer < layers:
                raise ValueError(f"Layer {layer} does not exist: the model has layers 0..{layers - 1}.")
            bad = sorted(int(h) for h in chosen if not 0 <= int(h) < heads)
            if bad:
                raise ValueError(f"Heads {bad} of layer {layer} do not exist: the layer has heads 0..{heads - 1}.")
            new = sorted(set(map(int, chosen)) - done.get(layer, set()))
            if len(done.get(layer, set())) + len(new) >= heads:
                raise ValueError(f"Pruning {sorted(set(map(int, chosen)))} would remove every head of layer {layer}.")
            if new:
                plan[layer] = new
        if not plan:
            return
        self._prune_heads({layer: (new, sorted(done.get(layer, set()))) for layer, new in plan.items()})
        for layer, new in plan.items():
            done.setdefault(layer, set()).update(new)
        self.config.pruned_heads = {k: sorted(v) for k, v in sorted(done.items())}

    def _prune_heads(self, plan: dict[int, tuple[list[int], list[int]]]) -> None:
        """Cut heads: `plan` maps a layer to (heads to remove now, heads removed earlier), both in the unpruned
        model's numbering. Families with prunable attention implement this."""
        raise NotImplementedError(f"{type(self).__name__} has no prunable attention heads.")

    # ---- training (Keras) ------------------------------------------------------------------------------------
    def compile(self, optimizer: Any = "rmsprop", loss: Any = "auto", metrics: Any = None, **kwargs: Any) -> None:
        """Keras's compile; with no loss (the default, or "auto", 4.x's spellings "auto_with_warning",
        "passthrough"), training uses the model's own loss, computed from the labels in the inputs (`labels`, or
        the task's names such as `start_positions`; a target `y` given apart is moved into the inputs as labels).
        Metrics and a Keras loss see the main output (the logits)."""
        self._internal_loss = loss in _INTERNAL_LOSS if isinstance(loss, (str, type(None))) else False
        super().compile(optimizer=optimizer, loss=None if self._internal_loss else loss, metrics=metrics, **kwargs)

    def _label_names(self) -> list[str]:
        params = inspect.signature(self.call).parameters
        return [n for n in ("labels", "start_positions", "end_positions", "next_sentence_label") if n in params]

    def _labels_into_inputs(self, x: Any, y: Any) -> tuple[Any, Any]:
        if not self._internal_loss or y is None:
            return x, y
        if not isinstance(x, Mapping):
            x = {self.main_input_name: x}
        x = dict(x)
        names = self._label_names()
        if isinstance(y, Mapping):
            x.update({k: v for k, v in y.items() if k in names})
        elif names and names[0] not in x:
            x[names[0]] = y
        return x, y

    @staticmethod
    def _main_output(y_pred: Any) -> Any:
        if hasattr(y_pred, "logits") and y_pred.logits is not None:
            return y_pred.logits
        if hasattr(y_pred, "start_logits"):
            return (y_pred.start_logits, y_pred.end_logits)
        if hasattr(y_pred, "to_tuple"):
            fields = [v for k, v in y_pred.items() if k != "loss"]
            return fields[0] if fields else None
        return y_pred

    def compute_loss(self, x: Any = None, y: Any = None, y_pred: Any = None, sample_weight: Any = None,
                     training: bool = True) -> Any:
        if self._internal_loss:
            loss = getattr(y_pred, "loss", None)
            if loss is None:
                raise ValueError(
                    f"{type(self).__name__} was compiled without a loss, so it trains on its own loss, but the "
                    f"batch has no labels: give them as inputs ({', '.join(self._label_names()) or 'labels'}) or as "
                    "the target y, or compile(loss=...) with a Keras loss.")
            total = tf.reduce_mean(loss)
            if self.losses:
                total = total + tf.add_n([tf.cast(v, total.dtype) for v in self.losses])
            return total
        return super().compute_loss(x=x, y=y, y_pred=self._main_output(y_pred), sample_weight=sample_weight,
                                    training=training)

    def compute_metrics(self, x: Any, y: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        return super().compute_metrics(x, y, self._main_output(y_pred), sample_weight)

    def train_step(self, data: Any) -> Any:
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x, y = self._labels_into_inputs(x, y)
        return super().train_step(keras.utils.pack_x_y_sample_weight(x, y, sample_weight))

    def test_step(self, data: Any) -> Any:
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x, y = self._labels_into_inputs(x, y)
        return super().test_step(keras.utils.pack_x_y_sample_weight(x, y, sample_weight))

    def predict_step(self, data: Any) -> dict[str, Any]:
        """One batch of `predict`: the output's tensors (no cache), gathered by Keras batch by batch."""
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        if not isinstance(x, Mapping):
            x = {self.main_input_name: x}
        extra = {"use_cache": False} if "use_cache" in inspect.signature(self.call).parameters else {}
        out = self(x, training=False, **extra)
        self._predict_output_class = type(out)
        return {k: v for k, v in out.items() if tf.is_tensor(v)}

    def predict(self, *args: Any, **kwargs: Any) -> Any:
        """Keras's predict, returning the model's output class (numpy fields: logits, ...) as 4.x did."""
        out = super().predict(*args, **kwargs)
        cls = getattr(self, "_predict_output_class", None)
        return cls(**out) if cls is not None and isinstance(out, Mapping) else out

    # ---- serving --------------------------------------------------------------------------------------------
    @property
    def input_signature(self) -> dict[str, tf.TensorSpec]:
        """The serving inputs: the token ids and the masks the model's `call` takes, (batch, length) int32."""
        params = inspect.signature(self.call).parameters
        names = [self.main_input_name] + [n for n in ("attention_mask", "token_type_ids", "decoder_input_ids",
                                                      "decoder_attention_mask") if n in params]
        return {n: tf.TensorSpec((None, None), tf.int32, name=n) for n in dict.fromkeys(names)}

    def serving_output(self, output: Any) -> dict[str, tf.Tensor]:
        """The tensors of an output a serving signature returns (caches and per-layer tuples left out)."""
        return {k: v for k, v in output.items() if tf.is_tensor(v) and k != "loss"}

    def serving(self, inputs: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        out = self.call(**inputs, training=False, use_cache=False, return_dict=True) \
            if "use_cache" in inspect.signature(self.call).parameters else \
            self.call(**inputs, training=False, return_dict=True)
        return self.serving_output(out)

    @property
    def _default_save_signature(self) -> None:
        """Keras's implicit serving function, traced from the build shapes, means nothing for these models (their
        inputs are token ids): the SavedModel gets our signatures only."""
        return None

    def export_saved_model(self, path: str | os.PathLike, signatures: Any = None) -> None:
        """Write a TensorFlow SavedModel: `serving_default` (int32 inputs, `input_signature`) and `int64_serving`
        (the same with int64 ids), or the `signatures` given."""
        self.build_in_name_scope()
        export = keras.export.ExportArchive()
        export.track(self)
        if signatures is None:
            spec = self.input_signature
            export.add_endpoint("serving_default", lambda inputs: self.serving(inputs), input_signature=[spec])
            spec64 = {k: tf.TensorSpec(s.shape, tf.int64, name=k) for k, s in spec.items()}
            export.add_endpoint("int64_serving",
                                lambda inputs: self.serving({k: tf.cast(v, tf.int32) for k, v in inputs.items()}),
                                input_signature=[spec64])
        else:
            for name, fn in (signatures.items() if isinstance(signatures, Mapping) else [("serving_default",
                                                                                             signatures)]):
                export.add_endpoint(name, fn)
        export.write_out(os.fspath(path), verbose=False)

    # ---- loading -------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *model_args: Any,
        config: PretrainedConfig | str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
        ignore_mismatched_sizes: bool = False,
        force_download: bool = False,
        local_files_only: bool = False,
        token: str | bool | None = None,
        revision: str | None = None,
        **kwargs: Any,
    ):
        """Load a checkpoint into this class.

        Args:
            pretrained_model_name_or_path: a folder, a weights file, or a Hub repo id (`org/name`).
            config: a config object, or where to read one (default: the checkpoint's config.json). Keywords that
                name config attributes override them (`num_labels=3`).
            revision, subfolder, cache_dir, token, local_files_only, force_download: where the files come from.
            ignore_mismatched_sizes: initialise weights whose checkpoint shape differs instead of raising
                ShapeMismatchError.
            output_loading_info: also return {"missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"}
                (Keras paths such as "model/norm/weight" for the model's weights).
            dtype: the variables' and computation dtype (default float32, as 4.x; "bfloat16", tf.float16, ...).
            use_safetensors: True reads only safetensors, False only tf_model.h5 (default: safetensors first).
            variant: e.g. "fp16" for `model.fp16.safetensors`.
            from_pt, trust_remote_code, use_auth_token, load_weight_prefix: accepted (PyTorch-layout safetensors
                are read as they are; custom code is chosen by the TF Auto classes).

        Returns the model, and the loading info with `output_loading_info=True`.
        """
        if model_args:
            raise TypeError("Positional model arguments are not supported; pass a config instead.")
        for ignored in ("from_pt", "from_flax", "load_weight_prefix", "tf_to_pt_weight_rename", "mirror"):
            kwargs.pop(ignored, None)
        output_loading_info = kwargs.pop("output_loading_info", False)
        dtype = kwargs.pop("dtype", None)
        variant = kwargs.pop("variant", None)
        use_safetensors = kwargs.pop("use_safetensors", None)
        config, hub = cls._config_and_hub(pretrained_model_name_or_path, config, kwargs, cache_dir=cache_dir,
                                          force_download=force_download, local_files_only=local_files_only,
                                          token=token, revision=revision)
        if isinstance(dtype, str) and dtype == "auto":
            dtype = getattr(config, "dtype", None) or "float32"
        files = find_tf_checkpoint(pretrained_model_name_or_path, variant=variant, use_safetensors=use_safetensors,
                                   hub=hub)
        reader = open_h5(files) if files.format == "h5" else NumpyCheckpointReader(
            files.files, files.weight_map or None, files.index_path)
        model = None
        try:
            with _dtype_policy(_as_dtype(dtype)), skip_init(), keras.StatelessScope(initialize_variables=False):
                model = cls(config)
                model.build_in_name_scope()
            info = model._load_weights(reader, ignore_mismatched_sizes)
        finally:
            reader.close()
            if model is not None:
                _forget_deferred(model.variables)
        model.loading_info = info
        model.name_or_path = os.fspath(pretrained_model_name_or_path)
        if info.missing_keys or info.mismatched_keys:
            fresh = info.missing_keys + [m[0] for m in info.mismatched_keys]
            logger.warning("%s: %d weight(s) were not in the checkpoint '%s' (or did not fit) and are newly "
                           "initialised: %s%s. Train the model before using it for predictions.", cls.__name__,
                           len(fresh), pretrained_model_name_or_path, ", ".join(fresh[:5]),
                           " ..." if len(fresh) > 5 else "")
        model._adopt_generation_config(pretrained_model_name_or_path, hub)
        return (model, info.as_dict()) if output_loading_info else model

    def _variables_by_path(self) -> dict[str, Any]:
        """Keras path without the model's own name -> variable, for every weight (a shared one once)."""
        out: dict[str, Any] = {}
        for v in self.weights:
            out.setdefault(_relative(v.path), v)
        return out

    def _load_weights(self, reader: Any, ignore_mismatched_sizes: bool) -> LoadingInfo:
        """Give every variable its value from `reader` (or its initialiser's when the checkpoint lacks it)."""
        variables = self._variables_by_path()
        rules = TFKeyRules.of(self.tf_key_rules)
        layout = reader.saved_format()
        if layout == "flax":
            raise LoadingError(
                f"The safetensors file(s) of this checkpoint hold Flax parameter paths ({reader.paths[0]}): load it "
                "with the Flax class and save_pretrained() it again (PyTorch layout), then load that here.")
        if layout == "tf" or reader.format == "h5":  # Keras names (4.x's TF weights)
            model = {p: _Planned(v, None) for p, v in variables.items()}
            names = {keras_path(n): n for n in reader.infos}
            met = match(model, list(names), self.base_model_prefix, "/", rules, pytorch_layout=False)
            found = {names[k]: planned for k, planned in met.found.items()}
            unexpected = [names[k] for k in met.unexpected]
        else:  # PyTorch names and layouts
            table = slots({p: tuple(v.shape) for p, v in variables.items()}, rules)
            model = {name: _Planned(variables[sl.path], sl) for name, sl in table.items()}
            met = match(model, list(reader.infos), self.base_model_prefix, ".", rules, pytorch_layout=True)
            found, unexpected = met.found, met.unexpected
        planned, mismatched = {}, []
        for name, p in found.items():
            info = reader.infos[name]
            shape = tuple(info.shape)
            fits = p.slot.fits(shape) if p.slot is not None else _same_size(shape, tuple(p.variable.shape))
            if fits:
                planned[name] = p
            else:
                mismatched.append((name, info.path, shape, p))
        if mismatched and not ignore_mismatched_sizes:
            lines = "\n".join(
                f"  - '{name}' in '{path}': checkpoint {list(shape)}, model {_relative(p.variable.path)} "
                f"{list(p.variable.shape)}" + (f" (PyTorch layout {list(p.slot.pytorch_shape)} expected)"
                                                if p.slot is not None else "")
                for name, path, shape, p in mismatched)
            raise ShapeMismatchError(
                f"{len(mismatched)} tensor(s) in the checkpoint do not fit the model:\n{lines}\nCheck that the config "
                "matches the checkpoint, or pass ignore_mismatched_sizes=True to initialise those weights afresh.")
        done = set()
        for name, value in _converted(reader, planned):
            p = planned[name]
            _initialise(p.variable, value.pop)  # the list gives up the tensor: the variable holds the only reference
            done.add(id(p.variable))
        missing = []
        for path, v in variables.items():
            if id(v) not in done:
                missing.append(path)
                _initialise(v)  # its own initialiser (random), now that skip_init is over
        for v in self.variables:  # state that is no weight (a dropout's seed): its own initial value
            if _is_deferred(v):
                _initialise(v)
        return LoadingInfo(
            missing_keys=sorted(p for p in missing if p not in {_relative(m[3].variable.path) for m in mismatched}),
            unexpected_keys=sorted(unexpected),
            mismatched_keys=[(_relative(p.variable.path), shape, tuple(p.variable.shape))
                             for _, _, shape, p in mismatched],
        )

    # ---- saving --------------------------------------------------------------------------------------------------
    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        saved_model: bool = False,
        version: int = 1,
        push_to_hub: bool = False,
        signatures: Any = None,
        max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
        create_pr: bool = False,
        safe_serialization: bool = True,
        token: str | bool | None = None,
        variant: str | None = None,
        is_main_process: bool = True,
        **kwargs: Any,
    ) -> None:
        """Write config.json (+ generation_config.json) and the weights into `save_directory` in one atomic commit.

        `safe_serialization=True` (default): PyTorch-layout safetensors (`model.safetensors`, or shards of at most
        `max_shard_size` + `model.safetensors.index.json`, metadata `{"format": "pt"}`), which our PyTorch and Flax
        classes, transformers and every other tool load. `False`: 4.x's `tf_model.h5` (Keras 2's layout; shards +
        `tf_model.h5.index.json` past `max_shard_size`), which 4.57's TF classes load. Weight files of the other
        format left by an earlier save are removed in the same commit, so the folder holds exactly the model saved.
        `saved_model=True` first exports a TensorFlow SavedModel to `saved_model/<version>` (`signatures`: your own
        serving functions, default `serving_default` and `int64_serving`).

        With `push_to_hub=True` the files this save wrote are uploaded in one commit (`repo_id` defaults to the
        folder's name; `commit_message`, `private`, `revision`, `create_pr`, `commit_description`, `tags`, `token`).
        """
        push = self._push_options(kwargs, token, create_pr)
        if not is_main_process:
            return
        self.build_in_name_scope()
        save_directory = os.fspath(save_directory)
        if os.path.isfile(save_directory):
            raise NotADirectoryError(f"save_directory '{save_directory}' is a file; give a folder.")
        before = folder_state(save_directory) if push_to_hub else {}
        if saved_model:
            self.export_saved_model(os.path.join(save_directory, SERVING_DIR, str(version)), signatures)
        self.config.architectures = [self._architecture()]
        floating = next((w.dtype for w in self.weights if tf.as_dtype(w.dtype).is_floating), None)
        if floating is not None:
            self.config.dtype = tf.as_dtype(floating).name
        extra = self._files_beside_weights()
        weights = self._weights_names(safe_serialization, variant)
        variables = self._variables_by_path()
        if safe_serialization:
            table = slots({p: tuple(v.shape) for p, v in variables.items()}, TFKeyRules.of(self.tf_key_rules))
            arrays = {n: _HostArray(variables[sl.path], sl) for n, sl in table.items()}
            save_arrays(save_directory, arrays, lambda path, shard: write_safetensors(path, shard, {"format": "pt"}),
                        weights_name=weights[0], index_name=weights[1], max_shard_size=max_shard_size,
                        extra_files=extra, remove=[(TF_WEIGHTS, TF_INDEX)])
        else:
            model_name = keras2_name(type(self).__name__)
            full = {p: f"{model_name}/{p}:0" for p in variables}
            by_id = {id(v): p for p, v in variables.items()}
            layers = [(layer.name, [full[by_id[id(w)]] for w in layer.weights if id(w) in by_id])
                      for layer in self.layers]
            arrays = {full[p]: _HostArray(v) for p, v in variables.items()}
            save_h5(save_directory, layers, arrays, max_shard_size=max_shard_size, extra_files=extra,
                    remove=[(SAFE_WEIGHTS, SAFE_INDEX)])
        if push_to_hub:
            self._push_after_save(save_directory, before, push, weights=weights)


# ---- helpers -----------------------------------------------------------------------------------------------------
def find_tf_checkpoint(name_or_path: str | os.PathLike, *, variant: str | None = None,
                       use_safetensors: bool | None = None, hub: dict[str, Any]) -> CheckpointFiles:
    """The weight files a TF class reads from a folder, repo or single file: PyTorch-layout safetensors (one file
    or shards) first, then `tf_model.h5` (one file or shards); see the module's doc for why this order."""
    source = os.fspath(name_or_path)
    if os.path.isfile(source):
        if source.endswith(".h5"):
            return CheckpointFiles("h5", [source])
        return CheckpointFiles("safetensors", [source])
    if use_safetensors is not False:
        try:
            return find_checkpoint(source, variant=variant, use_safetensors=True, **hub)
        except CheckpointNotFoundError as e:
            if type(e) is not CheckpointNotFoundError:  # a Hub error (repo, revision, offline): as it is
                raise
    if use_safetensors is not True:
        found = find_h5_checkpoint(source, resolve_file, hub)
        if found is not None:
            return found
    pickle = resolve_file(source, "pytorch_model.bin", required=False, **hub) or resolve_file(
        source, "pytorch_model.bin.index.json", required=False, **hub)
    where = os.path.join(source, hub.get("subfolder") or "") if os.path.isdir(source) else source
    looked = [add_variant(SAFE_WEIGHTS, variant), add_variant(SAFE_INDEX, variant)] if use_safetensors is not False \
        else []
    looked += [TF_WEIGHTS, TF_INDEX] if use_safetensors is not True else []
    hint = (" It holds PyTorch pickle weights (pytorch_model.bin), which only torch can read: load it with the "
            "PyTorch class and save_pretrained() it again (safetensors), then load that here." if pickle
            else " Save the model with save_pretrained(), or check the path, the variant and the revision.")
    raise CheckpointNotFoundError(
        f"No weights a TF class reads found in '{where}': looked for {', '.join(looked)}.{hint}")


def _same_size(a: tuple, b: tuple) -> bool:
    """A Keras-layout checkpoint tensor fits a variable of the same shape (4.x also accepted a reshape of the same
    size, as for GPT-2's (1, out) biases)."""
    return a == b or (int(np.prod(a)) == int(np.prod(b)) and [d for d in a if d != 1] == [d for d in b if d != 1])


def _converted(reader: Any, planned: Mapping[str, _Planned], workers: int | None = None):
    """(name, [value]) for every planned tensor (a variable shared by two names once), in on-disk order. Reading,
    transposing and casting run in TensorFlow's native code, which releases the GIL: `workers` threads (default: the
    CPUs, at most 4; more only added float32 temporaries to the peak here) convert tensors side by side, one each in
    flight, while the caller assigns them in order."""
    order, seen = [], set()
    for name in reader.names_on_disk():
        p = planned.get(name)
        if p is not None and id(p.variable) not in seen:
            seen.add(id(p.variable))
            order.append(name)

    def one(name: str) -> list:
        try:
            view = reader.array(name)
        except (OSError, ValueError) as e:
            if isinstance(e, CorruptCheckpointError):
                raise
            raise CorruptCheckpointError(
                f"'{reader.infos[name].path}': tensor '{name}' cannot be read ({type(e).__name__}: {e}). "
                "Re-download or re-save the checkpoint.") from e
        value = _to_variable(view, planned[name])
        del view
        reader.release(name)
        return [value]

    workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        try:
            for name in order:
                pending.append((name, pool.submit(one, name)))
                if len(pending) >= workers:
                    done, future = pending.popleft()
                    yield done, future.result()
            while pending:
                done, future = pending.popleft()
                yield done, future.result()
        finally:
            for _, future in pending:
                future.cancel()


def _to_variable(view: np.ndarray, planned: _Planned) -> tf.Tensor:
    """A checkpoint tensor (numpy view of the file) as the variable's value: laid out, reshaped, cast."""
    variable = planned.variable
    value = tf.constant(view)
    if planned.slot is not None and planned.slot.perm is not None:
        value = tf.transpose(value, planned.slot.perm)
    target = tuple(variable.shape)
    if tuple(value.shape) != target:
        value = tf.reshape(value, target)
    if value.dtype != tf.as_dtype(variable.dtype):
        value = tf.cast(value, variable.dtype)
    return value


def _resized_rows(old: np.ndarray, new_num: int, mean_resizing: bool, std: float,
                  rng: np.random.Generator) -> np.ndarray:
    """`old` (rows, dim) with `new_num` rows: the first min(rows, new_num) kept, new ones drawn as the PyTorch
    classes draw them (around the old rows' mean with 1e-9 of their covariance, or N(0, std))."""
    keep = min(old.shape[0], new_num)
    out = np.empty((new_num, old.shape[1]), old.dtype)
    out[:keep] = old[:keep]
    count = new_num - keep
    if count > 0:
        rows = old.astype(np.float64)
        if mean_resizing:
            mean = rows.mean(0)
            centered = rows - mean
            covariance = 1e-9 * (centered.T @ centered) / rows.shape[0]
            try:
                new = rng.multivariate_normal(mean, covariance, size=count, check_valid="raise", method="cholesky")
            except (ValueError, np.linalg.LinAlgError):
                new = np.broadcast_to(mean, (count, old.shape[1]))
        else:
            new = rng.standard_normal((count, old.shape[1])) * std
        out[keep:] = new.astype(old.dtype)
    return out


class _HostArray:
    """A variable on its way to a file: shape and size known without copying; the host copy, laid out as the file
    wants (`slot`: PyTorch layout), is made when the writer asks for it, one shard at a time."""

    def __init__(self, variable: Any, slot: TFSlot | None = None) -> None:
        self._variable, self._slot = variable, slot
        self.shape = slot.pytorch_shape if slot is not None else tuple(int(d) for d in variable.shape)
        self.dtype = np.dtype(tf.as_dtype(variable.dtype).as_numpy_dtype)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.asarray(self._variable.numpy())
        if self._slot is not None:
            out = np.ascontiguousarray(self._slot.to_pytorch(out))
        return out if dtype is None else out.astype(dtype)


__all__ = ["TFModelUtilsMixin", "TFPreTrainedModel", "find_tf_checkpoint", "keras2_name"]
