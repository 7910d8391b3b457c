"""`PretrainedConfig`: a model's hyper-parameters, as read from and written to `config.json`.

Framework-neutral: nothing here imports torch. A config is a plain attribute bag with class defaults;
keys it does not know are kept and written back. Two on-disk dialects exist in the ecosystem and both are
read; the modern one is written:

    v4: "torch_dtype": "bfloat16", "rope_theta": 1e4, "rope_scaling": {"type"|"rope_type": ..., ...}
    v5: "dtype": "bfloat16",       "rope_parameters": {"rope_type": ..., "rope_theta": ..., ...}
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import math
import os
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from .errors import ConfigError, PretrainedError
from .hub.push import PushToHubMixin, folder_state
from .jsonfile import read_json_object

CONFIG_NAME = "config.json"
FORMAT_VERSION = "5.0.0"  # written as "transformers_version": the dialect our files follow

# Keys every config has, with their defaults. Family configs add their own in __init__.
_COMMON_DEFAULTS: dict[str, Any] = {
    "return_dict": True,
    "output_hidden_states": False,
    "output_attentions": False,
    "dtype": None,
    "tie_word_embeddings": True,
    "is_encoder_decoder": False,
    "architectures": None,
    "pruned_heads": {},
    "problem_type": None,
    "chunk_size_feed_forward": 0,
    "bos_token_id": None,
    "eos_token_id": None,
    "pad_token_id": None,
    "decoder_start_token_id": None,
}


# The activation names the shared layers implement (`layers/mlp.py` holds the functions; a test keeps both equal).
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "swish")
MAX_SIZE = 2**31 - 1  # a width, a vocabulary or a head count beyond this is not a model torch can index
MAX_LAYERS = 10_000  # published models have at most a few hundred blocks; 10**9 would only hang the build


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int_like(k: Any) -> bool:
    return _is_int(k) or isinstance(k, str) and k.strip().lstrip("-").isdigit()


def _rope_ok(v: Any) -> bool:
    if v is None:
        return True
    if not isinstance(v, dict):
        return False
    kind = v.get("rope_type", v.get("type", "default"))
    positive = [v[k] for k in ("rope_theta", "factor") if k in v]
    return isinstance(kind, str) and all(_is_number(x) and x > 0 for x in positive)


def _auto_map_ok(v: Any) -> bool:
    return v is None or isinstance(v, dict) and all(
        isinstance(k, str) and (isinstance(x, str) or isinstance(x, list) and all(i is None or isinstance(i, str)
                                                                              for i in x))
        for k, x in v.items())


# What each kind of value must be: (test, description for messages). A config class names the kind of each of
# its keys in `value_rules`; the values are checked when a config is built, before any family code computes with
# them, so a bad value is a ConfigError naming the key (and, when read from a file, the file).
VALUE_KINDS: dict[str, tuple[Any, str]] = {
    "size": (lambda v: _is_int(v) and 1 <= v <= MAX_SIZE, f"an integer from 1 to {MAX_SIZE}"),
    "size?": (lambda v: v is None or _is_int(v) and 1 <= v <= MAX_SIZE, f"null or an integer from 1 to {MAX_SIZE}"),
    "layers": (lambda v: _is_int(v) and 1 <= v <= MAX_LAYERS, f"an integer from 1 to {MAX_LAYERS}"),
    "layers?": (lambda v: v is None or _is_int(v) and 1 <= v <= MAX_LAYERS,
                f"null or an integer from 1 to {MAX_LAYERS}"),
    "count": (lambda v: _is_int(v) and 0 <= v <= MAX_SIZE, "an integer >= 0"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "bool?": (lambda v: v is None or isinstance(v, bool), "null, true or false"),
    "positive": (lambda v: _is_number(v) and v > 0, "a finite number > 0"),
    "non-negative": (lambda v: _is_number(v) and v >= 0, "a finite number >= 0"),
    "probability": (lambda v: _is_number(v) and 0 <= v <= 1, "a number from 0 to 1"),
    "probability?": (lambda v: v is None or _is_number(v) and 0 <= v <= 1, "null or a number from 0 to 1"),
    "activation": (lambda v: v in ACTIVATIONS, f"one of {', '.join(ACTIVATIONS)}"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "str?": (lambda v: v is None or isinstance(v, str), "null or a string"),
    "str-list?": (lambda v: v is None or isinstance(v, list) and all(isinstance(x, str) for x in v),
                  "null or a list of strings"),
    "labels": (lambda v: v is None or isinstance(v, dict) and all(_int_like(k) for k in v),
               'an object mapping label ids to names ({"0": "NEGATIVE", "1": "POSITIVE"})'),
    "heads": (lambda v: v is None or isinstance(v, dict) and all(
        _int_like(k) and isinstance(x, list) and all(_is_int(h) and h >= 0 for h in x) for k, x in v.items()),
              'an object mapping layer numbers to lists of head numbers ({"0": [1, 2]})'),
    "auto_map": (_auto_map_ok, 'an object mapping Auto class names to "module.Class" strings'),
    "rope": (_rope_ok, 'null or an object such as {"rope_type": "default", "rope_theta": 10000.0} '
                       "(rope_theta and factor > 0)"),
}


def _dtype_name(value: Any) -> Any:
    """`torch.bfloat16` -> "bfloat16"; strings and None pass through (no torch import needed)."""
    if value is None or isinstance(value, str):
        return value
    return str(value).removeprefix("torch.")


class PretrainedConfig(PushToHubMixin):
    """Base class of every model configuration.

    Subclasses set `model_type` and take their own keyword arguments with defaults, then call
    `super().__init__(**kwargs)`. `attribute_map` maps legacy or family-specific names to canonical ones
    (GPT-2's `n_embd` -> `hidden_size`).
    """

    model_type: ClassVar[str] = ""
    attribute_map: ClassVar[dict[str, str]] = {}
    # A family that uses rotary embeddings sets its default theta; the v4 keys are then folded in.
    default_rope_theta: ClassVar[float | None] = None
    _auto_class: ClassVar[str | None] = None  # set by register_for_auto_class: save_pretrained then saves the code
    # key -> kind of value (see VALUE_KINDS); a family adds its own keys, merged along the class hierarchy
    value_rules: ClassVar[dict[str, str]] = {
        "model_type": "str?", "auto_map": "auto_map", "id2label": "labels", "pruned_heads": "heads",
        "num_labels": "count", "architectures": "str-list?", "tie_word_embeddings": "bool", "return_dict": "bool",
        "output_hidden_states": "bool", "output_attentions": "bool", "is_encoder_decoder": "bool",
        "rope_parameters": "rope", "rope_scaling": "rope",
    }

    @classmethod
    def register_for_auto_class(cls, auto_class: str | type = "AutoConfig") -> None:
        """Make `save_pretrained` copy this class's module file (and its relative imports) next to config.json and
        name it in `auto_map`, so the folder loads anywhere with `trust_remote_code=True`. Custom classes only."""
        from .remote_code import check_auto_class

        cls._auto_class = check_auto_class(auto_class)

    def __new__(cls, *args: Any, **kwargs: Any):
        # the keyword values are checked here, before the family's __init__ computes with them (a head count of 0
        # would otherwise surface as a ZeroDivisionError, a size "64" as a TypeError deep inside torch)
        cls.check_values(kwargs)
        return super().__new__(cls)

    @classmethod
    def check_values(cls, values: Mapping[str, Any]) -> None:
        """Raise a ConfigError naming the first key of `values` that this class cannot take: a name that would
        replace part of the class (`self`, `__class__`, a method such as `to_dict`), or a value of the wrong type or
        range for its kind in `value_rules` (a size that is not a positive integer, an unknown activation...)."""
        rules: dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            rules.update(klass.__dict__.get("value_rules", {}))
        for key, value in values.items():
            if key not in _CONSUMED_BY_INIT:
                check_key(cls, key)
            canonical = "dtype" if key == "torch_dtype" else cls.attribute_map.get(key, key)
            kind = rules.get(canonical)
            if kind is not None:
                test, description = VALUE_KINDS[kind]
                if not test(value):
                    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
                    raise ConfigError(f"{cls.__name__}: '{key}' is {shown}, but it must be {description}.")

    def __init__(self, **kwargs: Any) -> None:
        if "torch_dtype" in kwargs:  # v4 name of the same field
            legacy = kwargs.pop("torch_dtype")
            kwargs.setdefault("dtype", legacy)
        kwargs.pop("transformers_version", None)
        kwargs.pop("model_type", None)
        if self.default_rope_theta is not None or "rope_parameters" in kwargs:
            kwargs["rope_parameters"] = _rope_parameters(kwargs, self.default_rope_theta)
        id2label = kwargs.pop("id2label", None)
        num_labels = kwargs.pop("num_labels", None)
        kwargs.pop("label2id", None)
        self._attn_implementation: str | None = kwargs.pop("attn_implementation", None)
        for key, default in _COMMON_DEFAULTS.items():
            setattr(self, key, kwargs.pop(key, copy.deepcopy(default)))
        self.dtype = _dtype_name(self.dtype)
        self.pruned_heads = {int(k): list(v) for k, v in (self.pruned_heads or {}).items()}
        if id2label is not None:
            self.id2label = {int(k): v for k, v in id2label.items()}
        else:
            self.num_labels = 2 if num_labels is None else num_labels
        for key, value in kwargs.items():  # unknown keys are kept, and written back on save
            setattr(self, key, value)

    # ---- names -------------------------------------------------------------------------------
    def __setattr__(self, key: str, value: Any) -> None:
        key = type(self).attribute_map.get(key, key)
        super().__setattr__(key, value)

    def __getattr__(self, key: str) -> Any:  # only called when normal lookup failed
        mapped = type(self).attribute_map.get(key)
        if mapped is not None:
            return getattr(self, mapped)
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{key}'")

    @property
    def torch_dtype(self) -> Any:
        """The v4 name of `dtype`."""
        return self.dtype

    @torch_dtype.setter
    def torch_dtype(self, value: Any) -> None:
        self.dtype = value

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, n: int) -> None:
        if getattr(self, "id2label", None) is None or len(self.id2label) != n:
            self.id2label = {i: f"LABEL_{i}" for i in range(n)}

    @property
    def label2id(self) -> dict[str, int]:
        return {v: k for k, v in self.id2label.items()}

    @property
    def use_return_dict(self) -> bool:
        return self.return_dict

    # ---- dict / JSON -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every public attribute, JSON-ready, in the modern dialect."""
        out = {k: copy.deepcopy(v) for k, v in self.__dict__.items() if not k.startswith("_")}
        out["dtype"] = _dtype_name(out.get("dtype"))
        out["id2label"] = {str(k): v for k, v in self.id2label.items()}
        out["label2id"] = self.label2id
        out["pruned_heads"] = {str(k): v for k, v in self.pruned_heads.items()}
        if self.model_type:
            out["model_type"] = self.model_type
        out["transformers_version"] = FORMAT_VERSION
        return out

    def to_diff_dict(self) -> dict[str, Any]:
        """What `save_pretrained` writes: family keys, plus common keys that differ from the base defaults or
        from this class's own defaults (Llama's `tie_word_embeddings=False` must be written when True)."""
        common = PretrainedConfig().to_dict()
        try:
            own = type(self)().to_dict()
        except TypeError:  # a class without defaults for every argument: no class defaults to compare with
            own = {}
        return {
            k: v
            for k, v in self.to_dict().items()
            if k not in common or v != common[k] or (k in own and v != own[k])
            or k in ("model_type", "transformers_version")
        }

    def to_json_string(self, use_diff: bool = True) -> str:
        data = self.to_diff_dict() if use_diff else self.to_dict()
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], return_unused_kwargs: bool = False, **kwargs: Any):
        """Build a config from a dict; `kwargs` that name config attributes override it."""
        if not isinstance(config_dict, dict):
            raise ConfigError(f"A config must be a JSON object (a dict), got {type(config_dict).__name__}.")
        found = config_dict.get("model_type")
        if cls.model_type and found and found != cls.model_type:
            raise ConfigError(
                f"This config has model_type '{found}' but {cls.__name__} is for '{cls.model_type}'. "
                "Use AutoConfig, or the config class of that family."
            )
        try:
            config = cls(**config_dict)
        except PretrainedError:
            raise
        except (TypeError, ValueError, ArithmeticError, AttributeError, LookupError) as e:
            raise ConfigError(
                f"{cls.__name__} cannot be built from this config ({type(e).__name__}: {e}). Fix the value it "
                "names, or re-create the config with save_pretrained()."
            ) from e
        unused = {}
        for key, value in kwargs.items():
            canonical = cls.attribute_map.get(key, key)
            if key == "torch_dtype":
                canonical = "dtype"
            if canonical in config.__dict__ or canonical in ("num_labels", "dtype", "attn_implementation"):
                cls.check_values({key: value})
                if canonical == "attn_implementation":
                    canonical = "_attn_implementation"
                setattr(config, canonical, _dtype_name(value) if canonical == "dtype" else value)
            else:
                unused[key] = value
        return (config, unused) if return_unused_kwargs else config

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> PretrainedConfig:
        with naming_file(path):
            config = cls.from_dict(read_config_file(path))
        config._config_file = os.fspath(path)
        return config

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PretrainedConfig) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:  # by content, as __eq__ (JAX's jit keys compiled code on the modules' configs)
        return hash(self.to_json_string(use_diff=False))

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string(use_diff=False)}"

    # ---- files -------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any):
        """Read `config.json` from a folder, a file path, or a Hub repo id.

        Hub arguments (`revision`, `cache_dir`, `subfolder`, `local_files_only`, `token`, `force_download`)
        are honoured; remaining `kwargs` override config attributes (see `from_dict`).
        """
        path, config_dict, kwargs = cls.config_file_and_dict(pretrained_model_name_or_path, **kwargs)
        with naming_file(path):
            found = cls.from_dict(config_dict, **kwargs)
        config = found[0] if isinstance(found, tuple) else found
        config._config_file = path
        return found

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any):
        """Returns `(config_dict, remaining_kwargs)` with Hub arguments consumed."""
        _, config_dict, kwargs = cls.config_file_and_dict(pretrained_model_name_or_path, **kwargs)
        return config_dict, kwargs

    @classmethod
    def config_file_and_dict(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any):
        """Returns `(local path of the config file, config_dict, remaining_kwargs)` with Hub arguments consumed."""
        from .hub.resolve import pop_hub_kwargs, resolve_file

        hub = pop_hub_kwargs(kwargs)
        source = os.fspath(pretrained_model_name_or_path)
        path = source if os.path.isfile(source) else resolve_file(source, CONFIG_NAME, **hub)
        return os.fspath(path), read_config_file(path), kwargs

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs: Any) -> None:
        """Write `config.json` into `save_directory` (created if needed), atomically.

        With `push_to_hub=True`, then upload it (see `push_to_hub`; `repo_id` defaults to the folder's name, and
        `commit_message`, `token`, `private`, `revision`, `create_pr`, `commit_description`, `tags` are passed on).
        """
        from .checkpoint.atomic import write_text_atomic

        if os.path.isfile(save_directory):
            raise ConfigError(f"save_directory '{save_directory}' is a file; give a folder.")
        before = folder_state(save_directory) if push_to_hub else {}
        from .remote_code import code_to_save

        code = code_to_save(self)  # a custom class registered with register_for_auto_class: its files + auto_map
        os.makedirs(save_directory, exist_ok=True)
        for name, text in code.items():
            write_text_atomic(os.path.join(save_directory, name), text)
        write_text_atomic(os.path.join(save_directory, CONFIG_NAME), self.to_json_string())
        if push_to_hub:
            self._push_after_save(save_directory, before, kwargs)

    def get_text_config(self, decoder: bool = False) -> PretrainedConfig:
        return self


PreTrainedConfig = PretrainedConfig  # the 5.x spelling


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Parse a config JSON file; every failure names the file and what is wrong with it."""
    try:
        return read_json_object(path, ConfigError, "Config file",
                                "Fix the file, or re-create it with config.save_pretrained().")
    except FileNotFoundError as e:
        raise ConfigError(f"No config file at '{path}'.") from e


# keys PretrainedConfig.__init__ takes apart itself (some share a name with a read-only property, as label2id does)
_CONSUMED_BY_INIT = frozenset({"label2id", "id2label", "num_labels", "torch_dtype", "transformers_version",
                               "model_type", "attn_implementation", "rope_theta", "rope_scaling"})


def check_key(cls: type, key: Any) -> None:
    """Raise a ConfigError if `key` cannot be a config attribute of `cls`: not a string, `self`, a dunder name, or
    the name of a method or read-only property (`to_dict`, `use_return_dict`), which the value would replace."""
    if not isinstance(key, str) or key == "self" or key.startswith("__"):
        raise ConfigError(f"{cls.__name__}: the key {key!r} cannot be a config attribute. Remove it.")
    found = inspect.getattr_static(cls, key, None)
    if isinstance(found, property):
        if found.fset is None:
            raise ConfigError(f"{cls.__name__}: the key '{key}' names a read-only property. Remove it.")
    elif callable(found) or isinstance(found, (classmethod, staticmethod)):
        raise ConfigError(f"{cls.__name__}: the key '{key}' names a method of the class. Remove it.")


@contextlib.contextmanager
def naming_file(path: str | os.PathLike | None) -> Iterator[None]:
    """A ConfigError raised inside (a bad value, an unknown model_type) is raised again, of the same type, with
    the config file's path in front of its message, so every config-caused error names the file to fix."""
    try:
        yield
    except ConfigError as e:
        if path is None or os.fspath(path) in str(e):
            raise
        try:
            named = type(e)(f"Config file '{os.fspath(path)}': {e}")
        except TypeError:  # a subclass with another constructor: keep it as it is
            raise e from None
        raise named from e


def _rope_parameters(kwargs: dict[str, Any], default_theta: float | None) -> dict[str, Any]:
    """Fold the v4 keys (`rope_theta`, `rope_scaling`) into the v5 `rope_parameters` dict (popping them)."""
    theta = kwargs.pop("rope_theta", None)
    scaling = kwargs.pop("rope_scaling", None)
    params = kwargs.get("rope_parameters")
    if params is None:
        params = dict(scaling or {})
    else:
        params = dict(params)
    if not isinstance(params, dict):
        raise ConfigError(f"rope_parameters must be a dict, got {params!r}.")
    if "type" in params:  # oldest spelling
        params.setdefault("rope_type", params.pop("type"))
    params.setdefault("rope_type", "default")
    if theta is not None:
        params.setdefault("rope_theta", theta)
    if "rope_theta" not in params and default_theta is not None:
        params["rope_theta"] = default_theta
    return params
