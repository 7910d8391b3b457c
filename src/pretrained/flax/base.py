"""`FlaxPreTrainedModel`: the base of every Flax class, with 4.x's API, on the same checkpoints as PyTorch.

A Flax class is a wrapper around a `flax.linen` module: the module holds the math, the wrapper holds the config,
the parameters (`params`, a nested dict) and everything around them: initialisation, loading, saving, casting,
sharding over devices. A family's class sets `config_class`, `base_model_prefix`, `module_class`,
`main_input_name`, and optionally `flax_key_rules` (see `convert.py`), and builds its module in `__init__`:

    class FlaxLlamaPreTrainedModel(FlaxPreTrainedModel):
        config_class, base_model_prefix, module_class = LlamaConfig, "model", None
        def __init__(self, config, input_shape=(1, 1), seed=0, dtype=jnp.float32, _do_init=True, **kwargs):
            module = self.module_class(config=config, dtype=dtype, **kwargs)
            super().__init__(config, module, input_shape=input_shape, seed=seed, dtype=dtype, _do_init=_do_init)

`dtype` is the computation dtype (4.x's meaning); parameters keep the checkpoint's dtype unless `param_dtype` says
otherwise, and `to_bf16` / `to_fp16` / `to_fp32` cast them.

Loading (`from_pretrained`) reads PyTorch-layout safetensors (one file or shards), 4.x's `flax_model.msgpack` (one
file or shards + index) and 4.x's flax-format safetensors, streaming each tensor from the mapped file straight to
its device (or, with `mesh=`, each device's slice to that device). Saving writes PyTorch-layout safetensors by
default (they load in our PyTorch classes, in transformers and everywhere else), msgpack on request.

What this class does exactly as `TFPreTrainedModel` does (config checks and resolution, generation_config.json, the
files a save writes beside the weights, weight file names) lives once, framework-free, in `modeling/neutral.py`.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax.core import FrozenDict, unfreeze
from flax.traverse_util import flatten_dict, unflatten_dict

from ..checkpoint.files import SAFE_INDEX, SAFE_WEIGHTS
from ..checkpoint.numpy_writer import save_arrays, write_safetensors
from ..checkpoint.shards import DEFAULT_MAX_SHARD_SIZE
from ..configuration import PretrainedConfig
from ..errors import ConfigError, LoadingError
from ..generation.config import GenerationConfig
from ..hub.push import PushToHubMixin, folder_state
from ..modeling.neutral import NeutralModelMixin
from .convert import KeyRules, slot, slots
from .generation import FlaxGenerationMixin
from .loading import LoadingInfo, check_mismatches, find_flax_checkpoint, open_reader, plan_load, stream
from .msgpack import FLAX_INDEX, FLAX_WEIGHTS, write_msgpack
from .sharding import device_placer, mesh_placer, partition_plan, spec_for, tp_axis

logger = logging.getLogger(__name__)
Path = tuple[str, ...]


def _as_dtype(dtype: Any) -> Any:
    """A jnp dtype from a dtype, its name ("bfloat16") or None."""
    if dtype is None:
        return None
    try:
        return jnp.dtype(dtype)
    except TypeError as e:
        raise ConfigError(f"{dtype!r} is not a dtype; give a jnp dtype (jnp.bfloat16) or its name.") from e


def _flat(params: Any) -> dict[Path, Any]:
    return flatten_dict(unfreeze(params) if isinstance(params, FrozenDict) else params)


class FlaxPreTrainedModel(NeutralModelMixin, PushToHubMixin, FlaxGenerationMixin):
    config_class: ClassVar[type[PretrainedConfig]] = PretrainedConfig
    _framework_prefix: ClassVar[str] = "Flax"
    _native_weights: ClassVar[tuple[str, str, str]] = (FLAX_WEIGHTS, FLAX_INDEX, "msgpack")
    base_model_prefix: ClassVar[str] = ""
    main_input_name: ClassVar[str] = "input_ids"
    module_class: ClassVar[type | None] = None
    flax_key_rules: ClassVar[Any] = None  # see convert.KeyRules
    tp_plan: ClassVar[dict[str, str]] = {}  # the task head's partition plan (the base's comes from the config)
    _auto_class: ClassVar[str | None] = None

    def __init__(self, config: PretrainedConfig, module: Any, input_shape: tuple = (1, 1), seed: int = 0,
                 dtype: Any = jnp.float32, _do_init: bool = True) -> None:
        self._check_config(config)
        self._config = config
        self._module = module
        self.key = jax.random.PRNGKey(seed)
        self.dtype = dtype
        self.input_shape = tuple(input_shape)
        self.name_or_path = getattr(config, "_name_or_path", "")
        self.generation_config = GenerationConfig.from_model_config(config) if self.can_generate() else None
        self._missing_keys: set[Path] = set()
        self.loading_info = LoadingInfo()
        self._is_initialized = _do_init
        self._params = None
        if _do_init:
            params = jax.jit(lambda rng: self.init_weights(rng, self.input_shape))(self.key)
            shape_tree = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
        else:
            params = None
            shape_tree = jax.eval_shape(lambda rng: self.init_weights(rng, self.input_shape), self.key)
        self._params_shape_tree = shape_tree
        self._required_params = set(_flat(shape_tree))
        if _do_init:
            self.params = params

    # ---- what a model is --------------------------------------------------------------------------------------
    @property
    def config(self) -> PretrainedConfig:
        return self._config

    @property
    def module(self):
        return self._module

    @property
    def framework(self) -> str:
        return "flax"

    @property
    def params(self) -> dict:
        if not self._is_initialized:
            raise ValueError(
                "`params` cannot be accessed from a model built with `_do_init=False`: from_pretrained(..., "
                "_do_init=False) returned them as (model, params); pass them to the model: model(ids, params=params).")
        return self._params

    @params.setter
    def params(self, params: Any) -> None:
        if not self._is_initialized:
            raise ValueError("`params` cannot be set on a model built with `_do_init=False`; keep them in a "
                             "variable and pass them to the model: model(ids, params=params).")
        if isinstance(params, FrozenDict):
            params = unfreeze(params)
        missing = self._required_params - set(_flat(params))
        if missing:
            raise LoadingError(
                f"These params lack {len(missing)} parameter(s) {type(self).__name__} needs: "
                f"{', '.join(sorted('/'.join(p) for p in missing)[:5])}{' ...' if len(missing) > 5 else ''}. "
                "Initialise them with model.init_weights(rng, input_shape, params).")
        self._params = params

    @property
    def params_shape_tree(self) -> dict:
        return self._params_shape_tree

    @property
    def required_params(self) -> set[Path]:
        return self._required_params

    @classmethod
    def from_config(cls, config: PretrainedConfig, **kwargs: Any):
        """A freshly initialised model (`seed`, `dtype`, `input_shape`, `_do_init` as the constructor's)."""
        return cls(config, **kwargs)

    @classmethod
    def register_for_auto_class(cls, auto_class: str | type = "FlaxAutoModel") -> None:
        """Make `save_pretrained` copy this class's module file next to the checkpoint and name it in config.json's
        `auto_map` under `auto_class` (a Flax Auto class name), so the folder loads anywhere with
        `FlaxAutoModel*.from_pretrained(folder, trust_remote_code=True)`. For custom classes only."""
        from ..remote_code import check_auto_class

        cls._auto_class = check_auto_class(auto_class)

    def enable_gradient_checkpointing(self) -> None:
        """Rebuild the module with `gradient_checkpointing=True` (its blocks are rematerialised in the backward
        pass: less memory, more compute). The parameters do not change."""
        if "gradient_checkpointing" not in getattr(self._module, "__dataclass_fields__", {}):
            raise ValueError(f"{type(self).__name__} does not support gradient checkpointing.")
        self._module = self._module.clone(gradient_checkpointing=True)

    def num_parameters(self, params: Any = None, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """The number of parameters (of `params`, default the model's own or its shapes); `exclude_embeddings`
        leaves out the embedding tables. Every Flax parameter is trainable (`only_trainable` changes nothing)."""
        source = params if params is not None else (self._params if self._is_initialized else self._params_shape_tree)
        return sum(int(np.prod(a.shape)) for p, a in _flat(source).items()
                   if not (exclude_embeddings and p[-1] == "embedding"))

    # ---- initialisation ------------------------------------------------------------------------------------------
    def init_weights(self, rng: jax.Array, input_shape: tuple, params: Any = None) -> dict:
        """Random parameters of the module (initialised by a forward on zeros of `input_shape`); with `params`,
        those params with the ones they lack (`_missing_keys`, set by a load) filled from the random ones.
        Families whose module takes other inputs override this."""
        input_ids = jnp.zeros(input_shape, dtype="i4")
        params_rng, dropout_rng = jax.random.split(rng)
        random = self.module.init({"params": params_rng, "dropout": dropout_rng}, input_ids, jnp.ones_like(input_ids),
                                  return_dict=False)["params"]
        return self._fill_missing(random, params) if params is not None else random

    def _fill_missing(self, random: Any, params: Any) -> dict:
        """`params` completed with the parameters it lacks, taken from `random`."""
        random, flat = _flat(random), _flat(params)
        for path in (self._missing_keys or set(random) - set(flat)):
            flat[path] = random[path]
        self._missing_keys = set()
        return unflatten_dict(flat)

    def _init_only(self, paths: list[Path], rng: jax.Array) -> dict[Path, jax.Array]:
        """Initial values of just these parameters: the random init compiled with only them as outputs, so the
        others are never computed (no second copy of the model)."""
        wanted = list(paths)

        def pick(rng):
            flat = _flat(self.init_weights(rng, self.input_shape))
            return ["/".join(p) for p in wanted], [flat[p] for p in wanted]

        values = jax.jit(lambda r: pick(r)[1])(rng)
        return dict(zip(wanted, values))

    def init_cache(self, batch_size: int, max_length: int) -> dict:
        """A zero cache (the linen "cache" collection) for decoding up to `max_length` tokens: per attention layer
        `cached_key`, `cached_value` (batch, max_length, kv heads, head_dim) and `cache_index`, as 4.x lays it out.
        Built from shapes alone (no forward, no parameters)."""
        ids = jnp.ones((batch_size, max_length), dtype="i4")
        shapes = jax.eval_shape(lambda: self.module.init(jax.random.PRNGKey(0), ids, jnp.ones_like(ids),
                                                         return_dict=False, init_cache=True))["cache"]
        return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), unfreeze(shapes))

    def _params_or_own(self, params: Any) -> Any:
        """The params to run with: those given (checked once for the ones a `_do_init=False` load could not fill),
        else the model's own."""
        if params is None:
            return self.params
        if self._missing_keys:
            lacking = self._missing_keys - set(_flat(params))
            if lacking:
                names = sorted("/".join(p) for p in lacking)
                raise LoadingError(
                    f"The params lack {len(names)} weight(s) the checkpoint did not have: {', '.join(names[:5])}"
                    f"{' ...' if len(names) > 5 else ''}. Initialise them with "
                    "params = model.init_weights(jax.random.PRNGKey(0), model.input_shape, params).")
        return params

    # ---- casting -------------------------------------------------------------------------------------------------
    def _cast_floating_to(self, params: Any, dtype: Any, mask: Any = None) -> Any:
        """`params` with its floating-point leaves cast to `dtype`; with `mask` (a tree of bools shaped like
        `params`), only where the mask is True. Returns a new tree; `params` is not changed."""
        def cast(x):
            return x.astype(dtype) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) else x

        if mask is None:
            return jax.tree_util.tree_map(cast, params)
        flat, flat_mask = _flat(params), _flat(mask)
        absent = sorted("/".join(p) for p in flat if p not in flat_mask)
        if absent:
            raise ValueError(f"The mask has no entry for {len(absent)} parameter(s): {', '.join(absent[:5])}"
                             f"{' ...' if len(absent) > 5 else ''}. Give a bool for every parameter (a tree shaped "
                             "like params).")
        return unflatten_dict({p: cast(x) if flat_mask[p] else x for p, x in flat.items()})

    def to_bf16(self, params: Any, mask: Any = None) -> Any:
        """Cast the floating-point `params` to bfloat16 (all, or where `mask` is True); returns a new tree."""
        return self._cast_floating_to(params, jnp.bfloat16, mask)

    def to_fp16(self, params: Any, mask: Any = None) -> Any:
        """Cast the floating-point `params` to float16 (all, or where `mask` is True); returns a new tree."""
        return self._cast_floating_to(params, jnp.float16, mask)

    def to_fp32(self, params: Any, mask: Any = None) -> Any:
        """Cast the floating-point `params` to float32 (all, or where `mask` is True); returns a new tree."""
        return self._cast_floating_to(params, jnp.float32, mask)

    # ---- loading -------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        dtype: Any = jnp.float32,
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
            dtype: the computation dtype (jnp.float32 default, jnp.bfloat16, ...; 4.x's meaning). The parameters
                keep the checkpoint's dtype unless `param_dtype` is given.
            param_dtype: cast every floating parameter to this dtype while loading (one tensor at a time).
            config: a config object, or where to read one (default: the checkpoint's config.json). Keywords that
                name config attributes override them (`num_labels=3`).
            revision, subfolder, cache_dir, token, local_files_only, force_download: where the files come from.
            ignore_mismatched_sizes: initialise weights whose checkpoint shape differs instead of raising
                ShapeMismatchError.
            output_loading_info: also return {"missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"}.
            _do_init: False builds no parameters on the model and returns `(model, params)`; weights the checkpoint
                lacks are then not initialised (reported, and `model.init_weights(rng, input_shape, params)` fills
                them); True (default) initialises them.
            mesh: a `jax.sharding.Mesh`: each parameter is placed in its NamedSharding by the family's partition
                plan (`mesh_axis` names the axis that splits weights; default: the mesh's only axis, or "model"),
                each device reading only its slice from the file.
            variant: e.g. "fp16" for `model.fp16.safetensors`.
            from_pt, trust_remote_code, use_auth_token: accepted (PyTorch-layout safetensors are read as they are;
                custom code is chosen by the Flax Auto classes).
            seed, input_shape, gradient_checkpointing: passed to the class.

        Returns the model; `(model, params)` with `_do_init=False`; and the loading info last with
        `output_loading_info=True`.
        """
        if model_args:
            raise TypeError("Positional model arguments are not supported; pass a config instead.")
        kwargs.pop("from_pt", None)
        kwargs.pop("from_flax", None)
        do_init = kwargs.pop("_do_init", True)
        output_loading_info = kwargs.pop("output_loading_info", False)
        mesh = kwargs.pop("mesh", None)
        mesh_axis = kwargs.pop("mesh_axis", None)
        param_dtype = _as_dtype(kwargs.pop("param_dtype", None))
        variant = kwargs.pop("variant", None)
        kwargs.pop("use_safetensors", None)
        model_kwargs = {k: kwargs.pop(k) for k in ("seed", "input_shape", "gradient_checkpointing") if k in kwargs}
        config, hub = cls._config_and_hub(pretrained_model_name_or_path, config, kwargs, cache_dir=cache_dir,
                                          force_download=force_download, local_files_only=local_files_only,
                                          token=token, revision=revision)
        files = find_flax_checkpoint(pretrained_model_name_or_path, variant=variant, hub=hub)
        reader = open_reader(files)

        model = cls(config, dtype=_as_dtype(dtype), _do_init=False, **model_kwargs)
        shapes = _flat(model.params_shape_tree)
        rules = KeyRules.of(cls.flax_key_rules)
        plan = plan_load(reader, shapes, cls.base_model_prefix, rules)
        check_mismatches(plan, ignore_mismatched_sizes)
        tp = None
        if mesh is not None:
            has_prefix = bool(cls.base_model_prefix) and any(p[0] == cls.base_model_prefix for p in shapes)
            tp = partition_plan(cls, config, has_prefix)
            place = mesh_placer(mesh, tp, mesh_axis, param_dtype)
        else:  # 4.x keeps `_do_init=False` params on the CPU (the caller places them)
            place = device_placer(None if do_init else jax.local_devices(backend="cpu")[0], param_dtype)
        flat = stream(reader, plan, place)

        info = LoadingInfo(
            missing_keys=sorted("/".join(p) for p in plan.missing),
            unexpected_keys=list(plan.unexpected),
            mismatched_keys=[("/".join(sl.path), ckpt, model_shape) for sl, ckpt, model_shape, _, _ in plan.mismatched],
        )
        # to initialise: what the checkpoint lacks, and what it has in another shape (ignore_mismatched_sizes)
        missing = list(plan.missing) + [sl.path for sl, *_ in plan.mismatched]
        if missing and do_init:
            fresh = model._init_only(missing, model.key)
            flat.update(fresh if mesh is None else _on_mesh(fresh, mesh, mesh_axis, tp, rules))
        elif missing:
            model._missing_keys = set(missing)
            logger.warning(
                "%s: the checkpoint '%s' lacks %d weight(s) (%s%s); with _do_init=False they are not initialised: "
                "call model.init_weights(rng, input_shape, params) to add them.", cls.__name__,
                pretrained_model_name_or_path, len(missing), ", ".join(info.missing_keys[:5]),
                " ..." if len(missing) > 5 else "")
        params = unflatten_dict(flat)
        model.loading_info = info
        model._adopt_generation_config(pretrained_model_name_or_path, hub)
        if do_init:
            model._is_initialized = True
            model.params = params
            return (model, info.as_dict()) if output_loading_info else model
        return (model, params, info.as_dict()) if output_loading_info else (model, params)

    # ---- saving --------------------------------------------------------------------------------------------------
    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        params: Any = None,
        push_to_hub: bool = False,
        max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
        token: str | bool | None = None,
        safe_serialization: bool = True,
        variant: str | None = None,
        is_main_process: bool = True,
        **kwargs: Any,
    ) -> None:
        """Write config.json (+ generation_config.json) and the weights into `save_directory` in one atomic commit.

        `safe_serialization=True` (default): PyTorch-layout safetensors (`model.safetensors`, or shards of at most
        `max_shard_size` + `model.safetensors.index.json`, metadata `{"format": "pt"}`), which our PyTorch classes,
        transformers and every other tool load. `False`: 4.x's `flax_model.msgpack` (or its shards +
        `flax_model.msgpack.index.json`). Weight files of either format left by an earlier save are removed in the
        same commit, so the folder holds exactly the model saved (a Flax loader would read a stale msgpack first,
        a PyTorch one stale safetensors). `params`: save these instead of the model's own.

        With `push_to_hub=True` the files this save wrote are uploaded in one commit (`repo_id` defaults to the
        folder's name; `commit_message`, `private`, `revision`, `create_pr`, `commit_description`, `tags`, `token`).
        """
        push = self._push_options(kwargs, token)
        if not is_main_process:
            return
        before = folder_state(save_directory) if push_to_hub else {}
        params = self._params_or_own(params)
        flat = _flat(params)
        self.config.architectures = [self._architecture()]
        floating = next((a.dtype for a in flat.values() if jnp.issubdtype(a.dtype, jnp.floating)), None)
        if floating is not None:
            self.config.dtype = jnp.dtype(floating).name
        extra = self._files_beside_weights()
        weights = self._weights_names(safe_serialization, variant)
        if safe_serialization:
            layout = slots({p: a.shape for p, a in flat.items()}, KeyRules.of(self.flax_key_rules))
            arrays = {name: _HostArray(flat[sl.path], None if sl.perm is None else tuple(np.argsort(sl.perm)))
                      for name, sl in layout.items()}
            save_arrays(save_directory, arrays, lambda path, shard: write_safetensors(path, shard, {"format": "pt"}),
                        weights_name=weights[0], index_name=weights[1], max_shard_size=max_shard_size,
                        extra_files=extra, remove=[(FLAX_WEIGHTS, FLAX_INDEX)])
        else:
            arrays = {"/".join(p): _HostArray(a) for p, a in flat.items()}

            def write(path: str, shard: dict) -> None:
                write_msgpack(path, [(tuple(k.split("/")), a) for k, a in shard.items()])

            save_arrays(save_directory, arrays, write, weights_name=weights[0], index_name=weights[1],
                        max_shard_size=max_shard_size, extra_files=extra, remove=[(SAFE_WEIGHTS, SAFE_INDEX)],
                        total_parameters=False,  # 4.x's msgpack index: total_size only, keys sorted
                        index_json=lambda index: json.dumps(index, indent=2, sort_keys=True) + "\n")
        if push_to_hub:
            self._push_after_save(save_directory, before, push, weights=weights)


def _on_mesh(fresh: dict[Path, jax.Array], mesh: Any, mesh_axis: str | None, tp: Any, rules: Any) -> dict:
    """Freshly initialised parameters placed in the shardings the partition plan gives them on `mesh`."""
    from jax.sharding import NamedSharding

    axis = tp_axis(mesh, mesh_axis)
    placed = {}
    for p, value in fresh.items():
        spec, _ = spec_for(slot(p, value.ndim, rules), value.shape, tp, axis, mesh.shape[axis])
        placed[p] = jax.device_put(value, NamedSharding(mesh, spec))
    return placed


class _HostArray:
    """A parameter on its way to a file: shape and size known without copying; the host copy (transposed by `perm`
    into the file's layout) is made when the writer asks for it (`np.asarray`), one shard at a time."""

    def __init__(self, array: Any, perm: tuple[int, ...] | None = None) -> None:
        self._array, self._perm = array, perm
        shape = tuple(array.shape)
        self.shape = shape if perm is None else tuple(shape[i] for i in perm)
        self.dtype = np.dtype(array.dtype)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.asarray(jax.device_get(self._array))
        if self._perm is not None:
            out = np.ascontiguousarray(np.transpose(out, self._perm))
        return out if dtype is None else out.astype(dtype)


__all__ = ["FlaxPreTrainedModel"]
