"""`PretrainedConfig`: a model's hyper-parameters, as read from and written to `config.json`.

Framework-neutral: nothing here imports torch. A config is a plain attribute bag with class defaults;
keys it does not know are kept and written back. Two on-disk dialects exist in the ecosystem and both are
read; the modern one is written:

    v4: "torch_dtype": "bfloat16", "rope_theta": 1e4, "rope_scaling": {"type"|"rope_type": ..., ...}
    v5: "dtype": "bfloat16",       "rope_parameters": {"rope_type": ..., "rope_theta": ..., ...}
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any, ClassVar

from .errors import ConfigError
from .hub.push import PushToHubMixin, folder_state

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

    @classmethod
    def register_for_auto_class(cls, auto_class: str | type = "AutoConfig") -> None:
        """Make `save_pretrained` copy this class's module file (and its relative imports) next to config.json and
        name it in `auto_map`, so the folder loads anywhere with `trust_remote_code=True`. Custom classes only."""
        from .remote_code import check_auto_class

        cls._auto_class = check_auto_class(auto_class)

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
        config = cls(**config_dict)
        unused = {}
        for key, value in kwargs.items():
            canonical = cls.attribute_map.get(key, key)
            if key == "torch_dtype":
                canonical = "dtype"
            if canonical in config.__dict__ or canonical in ("num_labels", "dtype", "attn_implementation"):
                if canonical == "attn_implementation":
                    canonical = "_attn_implementation"
                setattr(config, canonical, _dtype_name(value) if canonical == "dtype" else value)
            else:
                unused[key] = value
        return (config, unused) if return_unused_kwargs else config

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> PretrainedConfig:
        return cls.from_dict(read_config_file(path))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PretrainedConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string(use_diff=False)}"

    # ---- files -------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any):
        """Read `config.json` from a folder, a file path, or a Hub repo id.

        Hub arguments (`revision`, `cache_dir`, `subfolder`, `local_files_only`, `token`, `force_download`)
        are honoured; remaining `kwargs` override config attributes (see `from_dict`).
        """
        config_dict, kwargs = cls.get_config_dict(pretrained_model_name_or_path, **kwargs)
        return cls.from_dict(config_dict, **kwargs)

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any):
        """Returns `(config_dict, remaining_kwargs)` with Hub arguments consumed."""
        from .hub.resolve import pop_hub_kwargs, resolve_file

        hub = pop_hub_kwargs(kwargs)
        source = os.fspath(pretrained_model_name_or_path)
        path = source if os.path.isfile(source) else resolve_file(source, CONFIG_NAME, **hub)
        return read_config_file(path), kwargs

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
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError as e:
        raise ConfigError(f"No config file at '{path}'.") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"Config file '{path}' is not UTF-8 text: {e}. Re-save it as UTF-8 JSON.") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"Config file '{path}' is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}. "
            "Fix the file, or re-create it with config.save_pretrained()."
        ) from e
    if not isinstance(data, dict):
        raise ConfigError(f"Config file '{path}' must hold a JSON object, but holds a {type(data).__name__}.")
    return data


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
