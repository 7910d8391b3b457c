"""`PreTrainedModel`: the base class of every model — building, loading, saving, tying and resizing.

A family declares what the core needs once, as data (`ModelFacts`); the core never names a family.
The reference library's class attributes (`base_model_prefix`, `_no_split_modules`, `_tied_weights_keys`,
`_keep_in_fp32_modules`, `main_input_name`) are derived from those facts, so tools written against it work.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..checkpoint.files import find_checkpoint
from ..checkpoint.legacy import open_legacy, open_legacy_fallback
from ..checkpoint.reader import CheckpointReader, TensorInfo, read_converted
from ..checkpoint.shards import DEFAULT_MAX_SHARD_SIZE
from ..checkpoint.writer import save_checkpoint
from ..configuration import CONFIG_NAME, PretrainedConfig, naming_file
from ..dispatch.hooks import attach_hooks
from ..dispatch.offload import DiskStore
from ..dispatch.plan import STRATEGIES, available_memory, device_for, parse_device_map, plan_device_map, sizes_from_model
from ..errors import CheckpointNotFoundError, ConfigError, DeviceMapError, PretrainedError
from ..generation.config import GENERATION_CONFIG_NAME, GenerationConfig
from ..hub.push import PUSH_KWARGS, PushToHubMixin, folder_state, weights_names
from ..hub.resolve import pop_hub_kwargs
from ..layers.attention import check_implementation
from ..layers.pruning import attention_blocks, prune_attention_heads
from .dtype import as_dtype, module_dtype, resolve_dtype
from .embeddings import resized_embedding, resized_linear_rows
from .loading import check_config_fits, initialise_meta, load_into
from .neutral import check_config_class, resolve_config
from .utils import ModuleUtilsMixin

_SKIP_INIT = contextvars.ContextVar("pretrained_skip_init", default=False)


@dataclass(frozen=True)
class ModelFacts:
    """What the core needs to know about a family or class, declared in one place."""

    base_model_prefix: str = ""  # attribute holding the base model in task models ("model")
    no_split_modules: tuple[str, ...] = ()  # block classes a device map must not cut
    tied_weights: Mapping[str, str] = field(default_factory=dict)  # target -> source, when config ties embeddings
    keep_in_fp32_modules: tuple[str, ...] = ()  # module names kept float32 under float16
    main_input_name: str = "input_ids"
    input_embeddings: str = ""  # path of the input nn.Embedding inside the base model
    output_embeddings: str = ""  # path of the output projection inside the task model
    checkpoint_key_fixes: tuple[tuple[str, str], ...] = ()  # (regex, replacement) on checkpoint names
    ignore_unexpected: tuple[str, ...] = ()  # regexes (re.search) of known leftover checkpoint names: not reported
    attention_blocks: str = ""  # prunable attention blocks in the base model, "*" = layer ("encoder.layer.*.attention")
    supports_gradient_checkpointing: bool = False
    can_generate: bool = False

    def but(self, **changes: Any) -> ModelFacts:
        """A copy with some facts changed (a task class adds its ties to the family's facts)."""
        return dataclasses.replace(self, **changes)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


_TORCH_INITS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
                "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_")


@contextlib.contextmanager
def no_init_weights():
    """Inside, neither `post_init` nor torch's own `reset_parameters` initialise anything: the skeleton's values
    are about to be replaced by the checkpoint's. (Initialising on the meta device is not free: torch's first
    `normal_` there imports its meta kernels, ~1 s.) Not thread-safe: `torch.nn.init` is patched meanwhile."""
    token = _SKIP_INIT.set(True)
    saved = {name: getattr(nn.init, name) for name in _TORCH_INITS}
    for name in _TORCH_INITS:
        setattr(nn.init, name, _no_op_init)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)
        _SKIP_INIT.reset(token)


def _no_op_init(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return tensor


class PreTrainedModel(nn.Module, ModuleUtilsMixin, PushToHubMixin):
    config_class: ClassVar[type[PretrainedConfig]] = PretrainedConfig
    facts: ClassVar[ModelFacts] = ModelFacts()
    _auto_class: ClassVar[str | None] = None  # set by register_for_auto_class: save_pretrained then saves the code
    tp_size: int | None = None  # ranks a tensor-parallel load (tp_plan=...) split this model over; None: whole

    @property
    def tp_plan(self) -> dict[str, str]:
        """The tensor-parallel plan, module pattern -> style: the one applied when split, else the family's."""
        tp = self.__dict__.get("_tp")
        if tp is not None:
            return dict(tp.plan)
        from ..distributed.plan import family_plan

        return family_plan(self.config, type(self), has_prefix=self.base_model is not self)

    @classmethod
    def register_for_auto_class(cls, auto_class: str | type = "AutoModel") -> None:
        """Make `save_pretrained` copy this class's module file (and the files it imports relatively) next to the
        checkpoint and name it in config.json's `auto_map` under `auto_class`, so the folder loads anywhere with
        `AutoModel*.from_pretrained(folder, trust_remote_code=True)`. For custom classes only."""
        from ..remote_code import check_auto_class

        cls._auto_class = check_auto_class(auto_class)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        f = cls.facts  # the reference's names, derived from the facts
        cls.base_model_prefix = f.base_model_prefix
        cls._no_split_modules = list(f.no_split_modules)
        cls._tied_weights_keys = dict(f.tied_weights)
        cls._keep_in_fp32_modules = list(f.keep_in_fp32_modules)
        cls._keys_to_ignore_on_load_unexpected = list(f.ignore_unexpected)
        cls.main_input_name = f.main_input_name
        cls.supports_gradient_checkpointing = f.supports_gradient_checkpointing

    def __init__(self, config: PretrainedConfig, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        if not isinstance(config, PretrainedConfig):
            raise ConfigError(
                f"{type(self).__name__} needs a PretrainedConfig, got {type(config).__name__}. Build one with "
                f"{self.config_class.__name__}(...) or AutoConfig.from_pretrained(...)."
            )
        config._attn_implementation = check_implementation(config._attn_implementation)
        self.config = config
        self.name_or_path = getattr(config, "_name_or_path", "")
        # decoding settings of a generative class: the model config's generation fields, replaced by the
        # checkpoint's generation_config.json when from_pretrained finds one
        self.generation_config = GenerationConfig.from_model_config(config) if self.can_generate() else None

    # ---- initialisation ----------------------------------------------------------------------
    def post_init(self) -> None:
        """Called at the end of a family's __init__: remove the heads `config.pruned_heads` names (so a pruned
        checkpoint finds its shapes), then initialise weights (skipped when about to load)."""
        if self.config.pruned_heads:
            self.prune_heads(dict(self.config.pruned_heads))
        if not _SKIP_INIT.get():
            self.init_weights()

    def init_weights(self) -> None:
        if any(p.is_meta for p in self.parameters()):
            return  # a skeleton: nothing to initialise yet
        with torch.no_grad():
            for module in self.modules():
                self._init_weights(module)
        self.tie_weights()

    def _init_weights(self, module: nn.Module) -> None:
        """Default initialisation: normal(0, initializer_range) for linear and embedding weights, zeros for
        biases and padding rows, ones for norm weights. Families override to differ."""
        std = getattr(self.config, "initializer_range", 0.02)
        if isinstance(module, nn.Linear):
            module.weight.normal_(0.0, std)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.normal_(0.0, std)
            if module.padding_idx is not None:
                module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm) or "Norm" in type(module).__name__:
            if getattr(module, "weight", None) is not None:
                module.weight.fill_(0.0 if getattr(module, "offset", 0.0) else 1.0)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()

    @classmethod
    def can_generate(cls) -> bool:
        return cls.facts.can_generate

    @property
    def base_model(self) -> nn.Module:
        return getattr(self, self.facts.base_model_prefix, self) if self.facts.base_model_prefix else self

    # ---- ties and embeddings -----------------------------------------------------------------
    def active_ties(self) -> dict[str, str]:
        """Declared ties in force for this config (target name -> source name), less those the loaded checkpoint
        stored as two different tensors (`_untied_weights`, set by loading)."""
        if not getattr(self.config, "tie_word_embeddings", False):
            return {}
        untied = getattr(self, "_untied_weights", ())
        return {t: s for t, s in self.facts.tied_weights.items() if t not in untied}

    def tie_weights(self) -> None:
        """Make each tied target the very same Parameter as its source."""
        for target, source in self.active_ties().items():
            module_name, _, leaf = target.rpartition(".")
            module, param = self.get_submodule(module_name), self.get_parameter(source)
            setattr(module, leaf, param)
            if leaf == "weight" and hasattr(module, "out_features"):  # a tied head follows a resized table
                module.out_features = param.shape[0]

    def get_input_embeddings(self) -> nn.Module:
        if not self.facts.input_embeddings:
            raise NotImplementedError(f"{type(self).__name__} declares no input embeddings.")
        return self.base_model.get_submodule(self.facts.input_embeddings)

    def set_input_embeddings(self, value: nn.Module) -> None:
        parent, _, leaf = self.facts.input_embeddings.rpartition(".")
        setattr(self.base_model.get_submodule(parent), leaf, value)

    def get_output_embeddings(self) -> nn.Module | None:
        return self.get_submodule(self.facts.output_embeddings) if self.facts.output_embeddings else None

    def set_output_embeddings(self, value: nn.Module) -> None:
        parent, _, leaf = self.facts.output_embeddings.rpartition(".")
        setattr(self.get_submodule(parent), leaf, value)

    def resize_token_embeddings(
        self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None, mean_resizing: bool = True
    ) -> nn.Embedding:
        """Resize the vocabulary to `new_num_tokens` (rounded up to `pad_to_multiple_of`): old rows kept, new rows
        around the old mean, `config.vocab_size` updated, ties kept. Returns the input embedding module."""
        old = self.get_input_embeddings()
        if new_num_tokens is None and pad_to_multiple_of is None:
            return old
        new_num = old.num_embeddings if new_num_tokens is None else int(new_num_tokens)
        if pad_to_multiple_of is not None:
            if not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of <= 0:
                raise ValueError(f"pad_to_multiple_of must be a positive int, got {pad_to_multiple_of!r}.")
            new_num = -(-new_num // pad_to_multiple_of) * pad_to_multiple_of
        if new_num <= 0:
            raise ValueError(f"new_num_tokens must be positive, got {new_num_tokens}.")
        std = getattr(self.config, "initializer_range", 0.02)
        self.set_input_embeddings(resized_embedding(old, new_num, mean_resizing, std))
        out = self.get_output_embeddings()
        if out is not None and f"{self.facts.output_embeddings}.weight" not in self.active_ties():
            self.set_output_embeddings(resized_linear_rows(out, new_num, mean_resizing, std))
        self.config.vocab_size = new_num
        if hasattr(self.get_input_embeddings(), "num_embeddings"):
            self.vocab_size = new_num
        self.tie_weights()
        return self.get_input_embeddings()

    # ---- head pruning ------------------------------------------------------------------------
    def prune_heads(self, heads_to_prune: Mapping[int, list[int]]) -> None:
        """Remove attention heads for good: `{layer: [heads]}`, heads numbered as in the unpruned model (pruning
        {0: [1]} after {0: [0, 2]} removes original head 1). Already-removed heads are ignored; the union is kept in
        `config.pruned_heads`, so a saved model reloads with the pruned shapes. Out-of-range layers or heads raise
        ValueError before anything changes."""
        if not self.facts.attention_blocks:
            raise NotImplementedError(f"{type(self).__name__} declares no prunable attention blocks.")
        prune_attention_heads(attention_blocks(self.base_model, self.facts.attention_blocks), heads_to_prune,
                              self.config.pruned_heads)

    # ---- a dispatched model stays where its plan put it ---------------------------------------
    def _refuse_if_dispatched(self, what: str) -> None:
        if getattr(self, "_dispatch_hooks", None):
            places = sorted({str(d) for d in self.hf_device_map.values()})
            raise DeviceMapError(
                f"This model is dispatched over {', '.join(places)} by its device_map; .{what}() would move or "
                "cast weights behind the hooks that run it there. Load it again with the device and dtype you "
                "want (device_map=..., dtype=...) instead."
            )

    def to(self, *args: Any, **kwargs: Any):
        self._refuse_if_dispatched("to")
        return super().to(*args, **kwargs)

    def cuda(self, *args: Any, **kwargs: Any):
        self._refuse_if_dispatched("cuda")
        return super().cuda(*args, **kwargs)

    def cpu(self):
        self._refuse_if_dispatched("cpu")
        return super().cpu()

    def half(self):
        self._refuse_if_dispatched("half")
        return super().half()

    def float(self):
        self._refuse_if_dispatched("float")
        return super().float()

    def bfloat16(self):
        self._refuse_if_dispatched("bfloat16")
        return super().bfloat16()

    # ---- gradient checkpointing --------------------------------------------------------------
    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        if not self.facts.supports_gradient_checkpointing:
            raise ValueError(f"{type(self).__name__} does not support gradient checkpointing.")
        kwargs = {"use_reentrant": False, **(gradient_checkpointing_kwargs or {})}
        for module in self.modules():
            if hasattr(module, "gradient_checkpointing"):
                module.gradient_checkpointing = True
                module.gradient_checkpointing_kwargs = kwargs

    def gradient_checkpointing_disable(self) -> None:
        for module in self.modules():
            if hasattr(module, "gradient_checkpointing"):
                module.gradient_checkpointing = False

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(getattr(m, "gradient_checkpointing", False) for m in self.modules())

    # ---- building ----------------------------------------------------------------------------
    @classmethod
    def _check_config(cls, config: PretrainedConfig) -> None:
        check_config_class(cls, config, "Auto classes")

    @classmethod
    def _skeleton(cls, config: PretrainedConfig, dtype: torch.dtype) -> PreTrainedModel:
        """The model on the meta device in `dtype` (fp32-kept modules in float32 under float16), weights not
        initialised."""
        with torch.device("meta"), _default_dtype(dtype), no_init_weights(), naming_file(
                getattr(config, "_config_file", None)):
            try:
                model = cls(config)
            except PretrainedError:
                raise
            except (TypeError, ValueError, ArithmeticError, LookupError, RuntimeError) as e:  # the config is the input
                raise ConfigError(f"{cls.__name__} cannot be built from its config ({type(e).__name__}: {e}). Fix "
                                  "the config value it names.") from e
        keep = tuple(cls.facts.keep_in_fp32_modules)
        if keep and dtype == torch.float16:
            for name, module in model.named_modules():
                if name and module_dtype(name, dtype, keep) == torch.float32:
                    module.to(torch.float32)
        return model

    @classmethod
    def from_config(cls, config: PretrainedConfig, **kwargs: Any) -> PreTrainedModel:
        """A freshly initialised model. `dtype`/`torch_dtype` and `attn_implementation` are honoured."""
        return cls._from_config(config, **kwargs)

    @classmethod
    def _from_config(cls, config: PretrainedConfig, **kwargs: Any) -> PreTrainedModel:
        dtype = kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None)
        if "attn_implementation" in kwargs:
            config._attn_implementation = kwargs.pop("attn_implementation")
        if kwargs:
            raise TypeError(f"from_config() got unexpected arguments: {', '.join(kwargs)}.")
        cls._check_config(config)
        dtype = as_dtype(dtype) if dtype is not None and dtype != "auto" else torch.get_default_dtype()
        model = cls._skeleton(config, dtype)
        initialise_meta(model, "cpu")
        model.tie_weights()
        config.dtype = dtype
        return model

    # ---- loading -----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike | None,
        *model_args: Any,
        config: PretrainedConfig | str | os.PathLike | None = None,
        ignore_mismatched_sizes: bool = False,
        use_safetensors: bool | None = None,
        weights_only: bool = True,
        **kwargs: Any,
    ):
        """Build the model on the meta device and stream a checkpoint into it.

        Args:
            pretrained_model_name_or_path: a folder, a weights file, or a Hub repo id (`org/name`).
            config: a config object, or where to read one (defaults to the checkpoint's own `config.json`).
            dtype / torch_dtype: a torch dtype, its name, or "auto" (default: config's dtype, else the weights').
            device_map: None (CPU), one device ("cpu", "cuda:0", 0, torch.device), a strategy ("auto", "balanced",
                "balanced_low_0", "sequential") planned against `max_memory`, or a dict module name -> GPU index,
                "cpu" or "disk". The plan is kept in `model.hf_device_map`.
            max_memory: device -> bytes or "20GiB"/"20GB" for the strategies (default: what is free now).
            offload_folder: where weights planned on "disk" are written when they cannot be mapped from the
                checkpoint itself (a dtype change, or a pickle checkpoint).
            offload_buffers: put the buffers of disk-planned modules on disk too (default: keep them in memory).
            disable_mmap: False/None (default): weights that need no conversion are zero-copy mappings of the
                checkpoint's files, which must then not be changed in place while the model lives (truncating one,
                e.g. `cp` or `rsync --inplace` over it, kills the process with SIGBUS at the next use; overwriting
                it changes the weights). True (the reference's name): every weight is read into memory of its own
                and no mapping of the files is kept; weights planned on "disk" are then written to
                `offload_folder` (required) and mapped from there instead of from the checkpoint. (A `state_dict`
                given instead of files is used as it is.)
            output_loading_info: also return {"missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"}.
            ignore_mismatched_sizes: initialise weights whose checkpoint shape differs instead of raising.
            use_safetensors: True = safetensors only; False = pickle only; None = safetensors first.
            variant: e.g. "fp16" for `model.fp16.safetensors`.
            attn_implementation: "sdpa" (default) or "eager".
            state_dict: load these tensors instead of reading files (the config must then come from `config`).
            from_tf / from_flax: read 4.x's `tf_model.h5` (or a TF 1 checkpoint: its `.index` path, with `config`) /
                `flax_model.msgpack` instead, without TensorFlow or JAX (checkpoint/legacy.py). Without either, a
                folder or repo holding only TF or Flax weights loads those (with a warning).
            revision, subfolder, cache_dir, token, local_files_only, force_download: where to find the files.
            Any other keyword that names a config attribute overrides it (e.g. `num_labels=3`).
        """
        if not weights_only:
            raise ValueError("weights_only=False would unpickle arbitrary code; pretrained only loads weights safely.")
        if model_args:
            raise TypeError("Positional model arguments are not supported; pass a config instead.")
        opts = _LoadOptions.pop_from(kwargs)
        hub = pop_hub_kwargs(kwargs)

        config = cls._resolve_config(pretrained_model_name_or_path, config, hub, kwargs)
        if opts.attn is not None:
            config._attn_implementation = check_implementation(opts.attn)

        reader = _open_reader(pretrained_model_name_or_path, config, hub, state_dict=opts.state_dict,
                              from_tf=opts.from_tf, from_flax=opts.from_flax, variant=opts.variant,
                              use_safetensors=use_safetensors, disable_mmap=opts.disable_mmap)
        config_dtype = None if getattr(reader, "dtype_from_weights", False) else config.dtype  # 4.57's Flax configs
        dtype = resolve_dtype(opts.dtype, config_dtype, reader.first_floating_dtype())
        check_config_fits(config, reader)  # before building: a config that cannot match the weights fails at once
        model = cls._skeleton(config, dtype)
        from ..quantization.loading import handler_for_load

        quantizer = handler_for_load(config, opts.quantization_config)  # quantization/base.py: what a handler does
        if quantizer is not None:
            quantizer.prepare(model)
        plan = _device_plan(model, opts.device_map, opts.max_memory)
        tp = None
        if any(v is not None for v in opts.tp_args.values()):  # tensor parallel: checked, then this rank's slices
            from ..distributed.tensor_parallel import prepare

            tp = prepare(model, **opts.tp_args, device_map=opts.device_map, disable_mmap=opts.disable_mmap)
            reader = tp.reader(reader, model) if tp is not None else reader
        store, placement = _placement(model, plan, opts, quantized=quantizer is not None)
        try:
            info = load_into(model, reader, placement=placement, disk=store,
                             ignore_mismatched_sizes=ignore_mismatched_sizes, quantizer=quantizer,
                             device=tp.device if tp is not None else "cpu")
        except BaseException:
            if tp is not None:
                tp.agree(failed=True)  # the other ranks learn of it (and raise) instead of waiting forever
            raise
        if tp is not None:
            tp.finish(model)  # every rank loaded; model.tp_size, model.tp_plan; save_pretrained gathers
        if quantizer is not None:
            from ..quantization.loading import attach

            attach(model, quantizer)
        config.dtype = dtype
        model.eval()
        if plan is not None:
            model.hf_device_map = plan
            model._disk_store = store
            model._dispatch_hooks = attach_hooks(model, plan, store)
        model.loading_info = info
        if model.can_generate() and pretrained_model_name_or_path is not None and opts.state_dict is None:
            found = _find_generation_config(pretrained_model_name_or_path, hub)
            if found is not None:
                model.generation_config = found
        return (model, info.as_dict()) if opts.output_loading_info else model

    @classmethod
    def _resolve_config(cls, source: Any, config: Any, hub: dict, overrides: dict) -> PretrainedConfig:
        return resolve_config(cls, source, config, hub, overrides)

    def dequantize(self):
        """A quantized model (from_pretrained with quantization_config, or a quantized checkpoint) back to float
        layers holding the dequantized weights; the model's config then has no quantization_config."""
        handler = getattr(self, "hf_quantizer", None)
        if handler is None:
            raise ValueError(f"This {type(self).__name__} is not quantized; there is nothing to dequantize.")
        from ..quantization.loading import detach

        handler.dequantize(self)
        detach(self)
        return self

    # ---- saving ------------------------------------------------------------------------------
    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        is_main_process: bool = True,
        state_dict: Mapping[str, torch.Tensor] | None = None,
        save_function: Any = None,
        push_to_hub: bool = False,
        max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
        safe_serialization: bool = True,
        variant: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Write config.json (+ generation_config.json) and the weights into `save_directory` in one atomic commit.

        Shards of at most `max_shard_size` ("5GB", "2GiB", or bytes) with an index when there is more than one;
        tied weights are written once; weight files of an earlier save in the folder are replaced. Only the main
        process (`is_main_process=True`) writes anything.

        With `push_to_hub=True`, the files this save wrote are then uploaded in one commit (see `push_to_hub`):
        `repo_id` defaults to the folder's name; `commit_message`, `token`, `private`, `revision`, `create_pr`,
        `commit_description` and `tags` are passed on.
        """
        if save_function is not None:
            raise ValueError("save_function is not supported: files are written atomically by pretrained itself.")
        tp = self.__dict__.get("_tp")
        if tp is not None and not tp.saving:  # split by tp_plan: every rank gathers, rank 0 writes, all wait
            return tp.save(self, save_directory, is_main_process=is_main_process, state_dict=state_dict,
                           push_to_hub=push_to_hub, max_shard_size=max_shard_size,
                           safe_serialization=safe_serialization, variant=variant, **kwargs)
        push = {k: kwargs.pop(k) for k in PUSH_KWARGS if k in kwargs}  # used with push_to_hub=True only
        if kwargs:
            raise TypeError(f"save_pretrained() got unexpected arguments: {', '.join(sorted(kwargs))}.")
        if not is_main_process:
            return
        before = folder_state(save_directory) if push_to_hub else {}
        own = state_dict is None
        if own and getattr(self, "hf_quantizer", None) is not None:  # low-bit tensors + the config describing them
            state_dict, self.config.quantization_config = self.hf_quantizer.serialize(self)
        state_dict = dict(self.state_dict() if state_dict is None else state_dict)
        for target, source in self.active_ties().items():  # written once, under its source's name
            t, s = state_dict.get(target), state_dict.get(source)
            if t is not None and (own or s is not None and t.data_ptr() == s.data_ptr() and t.shape == s.shape):
                del state_dict[target]
        self.config.architectures = [type(self).__name__]
        self.config.dtype = str(self.dtype).removeprefix("torch.")
        from ..remote_code import code_to_save

        code = code_to_save(self.config, type(self))  # custom classes: their files, and auto_map in the config
        extra = {CONFIG_NAME: self.config.to_json_string(), **code}
        if self.can_generate():
            generation_config = getattr(self, "generation_config", None) or GenerationConfig.from_model_config(
                self.config)
            extra[GENERATION_CONFIG_NAME] = generation_config.to_json_string()
        save_checkpoint(save_directory, state_dict, max_shard_size=max_shard_size,
                        safe_serialization=safe_serialization, variant=variant, extra_files=extra)
        if push_to_hub:
            self._push_after_save(save_directory, before, push, weights=weights_names(safe_serialization, variant))

    def _save_for_push(self, folder: str, *, max_shard_size: int | str, safe_serialization: bool,
                       variant: str | None) -> list[str]:
        """push_to_hub's save: the weights as asked; a push deletes remote shards of those names it no longer has."""
        self.save_pretrained(folder, max_shard_size=max_shard_size, safe_serialization=safe_serialization,
                             variant=variant)
        return weights_names(safe_serialization, variant)


@dataclasses.dataclass
class _LoadOptions:
    """The loading options of `from_pretrained`, taken out of its keyword arguments (what is left are Hub options
    and config overrides)."""

    output_loading_info: bool = False
    dtype: Any = None
    device_map: Any = None
    max_memory: Any = None
    offload_folder: Any = None
    offload_buffers: bool = False
    disable_mmap: bool = False
    attn: str | None = None
    variant: str | None = None
    state_dict: Any = None
    from_tf: bool = False
    from_flax: bool = False
    tp_args: dict = dataclasses.field(default_factory=dict)
    quantization_config: Any = None

    @classmethod
    def pop_from(cls, kwargs: dict) -> "_LoadOptions":
        dtype = kwargs.pop("dtype", None)
        legacy_dtype = kwargs.pop("torch_dtype", None)  # the reference's older name
        opts = cls(
            output_loading_info=kwargs.pop("output_loading_info", False),
            dtype=dtype if dtype is not None else legacy_dtype,
            device_map=kwargs.pop("device_map", None),
            max_memory=kwargs.pop("max_memory", None),
            offload_folder=kwargs.pop("offload_folder", None),
            offload_buffers=kwargs.pop("offload_buffers", False),
            disable_mmap=bool(kwargs.pop("disable_mmap", None)),
            attn=kwargs.pop("attn_implementation", None),
            variant=kwargs.pop("variant", None),
            state_dict=kwargs.pop("state_dict", None),
            from_tf=bool(kwargs.pop("from_tf", False)),  # checkpoint/legacy.py
            from_flax=bool(kwargs.pop("from_flax", False)),
            tp_args={k: kwargs.pop(k, None) for k in ("tp_plan", "tp_size", "distributed_config")},  # distributed/
            quantization_config=kwargs.pop("quantization_config", None),
        )
        kwargs.pop("offload_state_dict", None)  # moot: weights stream one tensor at a time, never a second copy
        kwargs.pop("low_cpu_mem_usage", None)  # always low: the model is built on the meta device
        kwargs.pop("name_or_path", None)  # the reference's Auto classes pass these two to a custom class
        if "_adapter_model_path" in (kwargs.pop("adapter_kwargs", None) or {}):
            raise ValueError("This checkpoint is a PEFT adapter; load its base model and apply the adapter with peft.")
        return opts


def _placement(model: nn.Module, plan: dict | None, opts: _LoadOptions, quantized: bool):
    """(the disk store or None, tensor name -> planned place or None without a device map), after refusing the
    plans that cannot work."""
    if not plan:
        return None, None
    on_disk = "disk" in plan.values()
    if quantized and on_disk:
        raise DeviceMapError("Quantized layers cannot be offloaded to disk: raise max_memory, or give a "
                             "device_map without 'disk' (quantized weights take a quarter to half the memory).")
    if opts.disable_mmap and on_disk and not opts.offload_folder:
        raise DeviceMapError(
            "disable_mmap=True keeps no mapping of the checkpoint's files, so the weights planned on 'disk' are "
            "copied into an offload folder of their own: pass offload_folder=..., or drop disable_mmap to map "
            "them from the checkpoint, or raise max_memory so they fit in memory."
        )
    store = DiskStore(opts.offload_folder) if on_disk else None
    buffers = {n for n, _ in model.named_buffers()}
    in_memory = next((d for d in plan.values() if d != "disk"), "cpu")  # for what a map leaves out

    def placement(name: str):
        planned = device_for(name, plan)
        if planned is None:  # a computed (non-persistent) buffer that a user's map does not name
            return in_memory
        return "cpu" if planned == "disk" and name in buffers and not opts.offload_buffers else planned

    return store, placement


def _open_reader(source: Any, config: PretrainedConfig, hub: dict, *, state_dict: Any, from_tf: bool,
                 from_flax: bool, variant: str | None, use_safetensors: bool | None, disable_mmap: bool) -> Any:
    """What `from_pretrained` reads tensors from: a given state dict; TF / Flax files read without either framework
    (`checkpoint/legacy.py`), asked for or found when a folder holds nothing else (logged there); else the
    safetensors / pickle files (`disable_mmap`: read into memory of their own)."""
    if state_dict is not None:
        return _StateDictReader(state_dict)
    if from_tf or from_flax:
        return open_legacy(source, config.model_type, from_tf=from_tf, from_flax=from_flax, hub=hub)
    try:
        files = find_checkpoint(source, variant=variant, use_safetensors=use_safetensors, **hub)
    except CheckpointNotFoundError as e:
        reader = open_legacy_fallback(source, config.model_type, hub) if (
            type(e) is CheckpointNotFoundError and not use_safetensors) else None
        if reader is None:
            raise
        return reader
    reader = CheckpointReader(files.files, files.format, files.weight_map or None, files.index_path)
    return _OwnedReader(reader) if disable_mmap else reader


def _find_generation_config(source: Any, hub: dict) -> GenerationConfig | None:
    """The checkpoint's generation_config.json, if it has one."""
    from ..hub.resolve import resolve_file

    if not os.path.isdir(source) and os.path.isfile(source):  # a single weights file: look beside it
        source = os.path.dirname(os.fspath(source)) or "."
    try:
        path = resolve_file(source, GENERATION_CONFIG_NAME, required=False, **hub)
    except (OSError, PretrainedError):
        return None
    return GenerationConfig.from_json_file(path) if path else None


def _device_plan(model: nn.Module, device_map: Any, max_memory: Any) -> dict[str, Any] | None:
    """The device map to load `model` (a meta skeleton in its final dtypes) onto; None for plain CPU loading."""
    if device_map is None:
        if max_memory is not None:
            raise DeviceMapError("max_memory only applies with a device_map; pass device_map='auto' as well.")
        return None
    if isinstance(device_map, str) and device_map in STRATEGIES:
        budgets = available_memory() if max_memory is None else max_memory
        sizes = sizes_from_model(model)
        return plan_device_map(sizes, budgets, model._no_split_modules, strategy=device_map).device_map
    return parse_device_map(device_map, model)


class _OwnedReader:
    """`disable_mmap=True`: a checkpoint's tensors, each read into memory of its own (safetensors: `preadv` into a
    fresh buffer, never mapped; pickle: a copy of the tensor `torch.load` mapped, which is then dropped). Its
    `format` is not "safetensors", so `load_into` writes disk-planned weights to the offload folder rather than
    mapping the checkpoint."""

    def __init__(self, reader: CheckpointReader) -> None:
        self._reader = reader
        self.paths, self.infos, self.metadata = reader.paths, reader.infos, reader.metadata
        self.format = f"{reader.format}, read into memory"

    def first_floating_dtype(self) -> torch.dtype | None:
        return self._reader.first_floating_dtype()

    def iter_tensors(self, names: set[str] | None = None, dtypes: dict[str, torch.dtype] | None = None):
        dtypes = dtypes or {}
        if self._reader.format != "safetensors":
            for name, t in self._reader.iter_tensors(names, dtypes):
                want = dtypes.get(name, t.dtype)
                yield name, (t.to(want) if want != t.dtype else t.clone())
            return
        scratch: list[torch.Tensor] = []  # for conversions: the converted tensor is new memory anyway
        for path in self.paths:
            mine = sorted((i for i in self.infos.values() if i.path == path and (names is None or i.name in names)),
                          key=lambda i: i.start)
            fd = os.open(path, os.O_RDONLY)
            try:
                for info in mine:
                    want = dtypes.get(info.name, info.dtype)
                    yield info.name, read_converted(info, want, fd, scratch if want != info.dtype else [])
            finally:
                os.close(fd)


class _StateDictReader(CheckpointReader):
    """A reader over tensors already in memory (`from_pretrained(..., state_dict=...)`)."""

    def __init__(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        self.paths, self.format, self.metadata = ["<state_dict>"], "memory", {}
        self._tensors = dict(state_dict)
        self.infos = {k: TensorInfo(k, v.dtype, tuple(v.shape), "<state_dict>", 0, v.nbytes)
                      for k, v in self._tensors.items()}

    def read(self, name: str) -> torch.Tensor:
        return self._tensors[name]

    def iter_tensors(self, names=None, dtypes=None):  # conversion happens in load_into
        for name, t in self._tensors.items():
            if names is None or name in names:
                yield name, t
