"""Configurations: dict/JSON round trips, both on-disk dialects, the reference library in both directions,
malformed files, and the Auto registry (including users' own classes)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

import pretrained
from pretrained import registry
from pretrained.configuration import PretrainedConfig
from pretrained.errors import ConfigError, UnknownModelTypeError
from pretrained.modeling.base import PreTrainedModel

TINY = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2)

# keys whose values must agree between us and the reference library after a round trip through disk
MAIN_KEYS = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
             "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings",
             "initializer_range", "rms_norm_eps", "use_cache", "pad_token_id", "bos_token_id", "eos_token_id",
             "tie_word_embeddings", "attention_bias", "attention_dropout", "mlp_bias", "pretraining_tp",
             "architectures", "id2label", "label2id")


def tiny_config(**overrides) -> pretrained.LlamaConfig:
    return pretrained.LlamaConfig(**{**TINY, **overrides})


def write_json(folder, data, name="config.json"):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
        json.dump(data, f)
    return os.path.join(folder, name)


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def dtype_name(value):
    return None if value is None else str(value).removeprefix("torch.")


def as_json(data):
    """What a dict looks like once written to and read from JSON (int dict keys become strings)."""
    return json.loads(json.dumps(data, default=str))


def rope_without_legacy_alias(params):
    return {k: v for k, v in (params or {}).items() if k != "type"}


# ---- dict / JSON ----------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [
    {},
    {"tie_word_embeddings": True, "bos_token_id": None, "pad_token_id": 0, "eos_token_id": [2, 3]},
    {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 5e5}, "dtype": "bfloat16",
     "num_labels": 3, "my_extra": {"nested": [1, 2]}, "output_hidden_states": True},
])
def test_dict_round_trip(overrides):
    config = tiny_config(**overrides)
    data = config.to_dict()
    json.dumps(data)  # JSON-ready
    again = pretrained.LlamaConfig.from_dict(data)
    assert again == config
    assert again.to_dict() == data
    for key, value in overrides.items():
        if key == "num_labels":
            assert again.num_labels == value and len(again.id2label) == value
            assert again.label2id == {f"LABEL_{i}": i for i in range(value)}
        else:
            assert getattr(again, key) == value
    # the diff dict alone rebuilds the same config: nothing that matters is dropped
    assert pretrained.LlamaConfig.from_dict(json.loads(config.to_json_string())) == config
    assert pretrained.LlamaConfig.from_dict(config.to_diff_dict()) == config


def test_to_json_string():
    config = tiny_config(output_attentions=True)
    text = config.to_json_string()
    assert text.endswith("\n")
    assert json.loads(text) == config.to_diff_dict()
    assert list(json.loads(text)) == sorted(json.loads(text))
    full = json.loads(config.to_json_string(use_diff=False))
    assert full == config.to_dict()
    assert set(json.loads(text)) < set(full)


def test_to_diff_dict():
    diff = tiny_config(output_attentions=True).to_diff_dict()
    assert diff["model_type"] == "llama" and "transformers_version" in diff
    for key in TINY:
        assert diff[key] == TINY[key]
    assert diff["output_attentions"] is True  # a common key changed from its default is written
    for key in ("output_hidden_states", "return_dict", "pruned_heads", "chunk_size_feed_forward", "problem_type",
                "is_encoder_decoder", "torch_dtype", "rope_theta", "rope_scaling"):
        assert key not in diff, key
    assert diff["rope_parameters"] == {"rope_type": "default", "rope_theta": 10000.0}
    # common keys whose value is the base default but not this family's default must be written,
    # or the file reads back as something else (Llama unties embeddings and has bos_token_id=1 by default)
    diff = tiny_config(tie_word_embeddings=True, bos_token_id=None).to_diff_dict()
    assert diff["tie_word_embeddings"] is True
    assert "bos_token_id" in diff and diff["bos_token_id"] is None
    # a plain config compares only with the base defaults
    assert PretrainedConfig(foo=1).to_diff_dict() == {"foo": 1, "transformers_version": PretrainedConfig().to_dict()[
        "transformers_version"]}


def test_torch_dtype_is_the_v4_name_of_dtype():
    config = tiny_config(torch_dtype=torch.float16)
    assert config.dtype == "float16" and config.torch_dtype == "float16"
    config.torch_dtype = "bfloat16"
    assert config.dtype == "bfloat16"
    assert config.to_dict()["dtype"] == "bfloat16" and "torch_dtype" not in config.to_dict()


# ---- files ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("loader", ["family", "auto"])
def test_save_and_load_round_trip(tmp_path, loader):
    config = tiny_config(tie_word_embeddings=True, rms_norm_eps=1e-5, dtype="bfloat16", custom_list=[1, "a"])
    config.save_pretrained(tmp_path / "nested" / "dir")
    path = tmp_path / "nested" / "dir" / "config.json"
    assert sorted(os.listdir(path.parent)) == ["config.json"]  # no temp files left behind
    on_disk = read_json(path)
    assert on_disk == json.loads(config.to_json_string())
    cls = pretrained.LlamaConfig if loader == "family" else pretrained.AutoConfig
    loaded = cls.from_pretrained(path.parent)
    assert type(loaded) is pretrained.LlamaConfig
    assert loaded == config
    assert loaded.custom_list == [1, "a"]
    # a config file's own path works too
    assert cls.from_pretrained(str(path)) == config
    # saving again over it gives the same bytes
    loaded.save_pretrained(path.parent)
    assert read_json(path) == on_disk


def test_save_into_a_file_path_raises(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        tiny_config().save_pretrained(tmp_path / "f")
    assert (tmp_path / "f").read_text() == "x"


def test_unknown_keys_are_kept_and_written_back(tmp_path):
    data = {**tiny_config().to_diff_dict(), "my_custom_key": {"a": [1, 2]}, "another": "value", "flag": None}
    write_json(tmp_path / "in", data)
    config = pretrained.AutoConfig.from_pretrained(tmp_path / "in")
    assert config.my_custom_key == {"a": [1, 2]} and config.another == "value" and config.flag is None
    config.save_pretrained(tmp_path / "out")
    written = read_json(tmp_path / "out" / "config.json")
    assert written["my_custom_key"] == {"a": [1, 2]} and written["another"] == "value"
    assert "flag" in written and written["flag"] is None


@pytest.mark.parametrize("loader", ["family", "auto"])
def test_keyword_overrides_and_unused_kwargs(tmp_path, loader):
    tiny_config().save_pretrained(tmp_path)
    cls = pretrained.LlamaConfig if loader == "family" else pretrained.AutoConfig
    config = cls.from_pretrained(tmp_path, vocab_size=256, rms_norm_eps=1e-5, torch_dtype=torch.bfloat16,
                                 num_labels=5)
    assert (config.vocab_size, config.rms_norm_eps, config.dtype, config.num_labels) == (256, 1e-5, "bfloat16", 5)
    config, unused = cls.from_pretrained(tmp_path, vocab_size=64, not_a_config_key=3, other=None,
                                         return_unused_kwargs=True)
    assert config.vocab_size == 64
    assert unused == {"not_a_config_key": 3, "other": None}
    assert not hasattr(config, "not_a_config_key")
    # the same call on the reference library returns the same split
    import transformers

    ref, ref_unused = transformers.AutoConfig.from_pretrained(tmp_path, vocab_size=64, not_a_config_key=3,
                                                              other=None, return_unused_kwargs=True)
    assert ref.vocab_size == 64 and ref_unused == unused


def test_model_save_writes_architectures(tmp_path):
    torch.manual_seed(0)
    for cls in (pretrained.LlamaForCausalLM, pretrained.LlamaModel):
        config = tiny_config()
        assert config.architectures is None
        model = cls.from_config(config)
        model.save_pretrained(tmp_path / cls.__name__)
        on_disk = read_json(tmp_path / cls.__name__ / "config.json")
        assert on_disk["architectures"] == [cls.__name__]
        assert on_disk["dtype"] == "float32"
        assert pretrained.AutoConfig.from_pretrained(tmp_path / cls.__name__).architectures == [cls.__name__]


# ---- the two dialects -----------------------------------------------------------------------------


V4_SCALINGS = [
    None,
    {"type": "linear", "factor": 2.0},
    {"rope_type": "linear", "factor": 2.0},
    {"type": "dynamic", "factor": 4.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 1024},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512},
]


@pytest.mark.parametrize("scaling", V4_SCALINGS)
@pytest.mark.parametrize("theta", [None, 500000.0])
def test_v4_dialect_is_read_into_v5_fields(tmp_path, scaling, theta):
    import transformers

    data = {**TINY, "model_type": "llama", "torch_dtype": "bfloat16", "transformers_version": "4.44.0",
            "max_position_embeddings": 2048}
    if theta is not None:
        data["rope_theta"] = theta
    if scaling is not None:
        data["rope_scaling"] = scaling
    write_json(tmp_path / "v4", data)
    ours = pretrained.AutoConfig.from_pretrained(tmp_path / "v4")
    expected = {"rope_type": "default"} if scaling is None else dict(scaling)
    if "type" in expected:
        expected["rope_type"] = expected.pop("type")
    expected["rope_theta"] = theta if theta is not None else 10000.0
    assert ours.rope_parameters == expected
    assert ours.dtype == "bfloat16"
    for key in ("rope_theta", "rope_scaling", "torch_dtype"):
        assert key not in ours.__dict__
    # the reference library reads the same file into the same values
    ref = transformers.AutoConfig.from_pretrained(tmp_path / "v4")
    assert rope_without_legacy_alias(ref.rope_parameters) == ours.rope_parameters
    assert dtype_name(ref.dtype) == ours.dtype
    # we write the v5 dialect only, and it reads back the same, in both libraries
    ours.save_pretrained(tmp_path / "v5")
    written = read_json(tmp_path / "v5" / "config.json")
    assert written["rope_parameters"] == expected and written["dtype"] == "bfloat16"
    assert not {"rope_theta", "rope_scaling", "torch_dtype"} & set(written)
    assert pretrained.AutoConfig.from_pretrained(tmp_path / "v5") == ours
    ref5 = transformers.AutoConfig.from_pretrained(tmp_path / "v5")
    assert rope_without_legacy_alias(ref5.rope_parameters) == expected
    assert dtype_name(ref5.dtype) == "bfloat16"


def test_v4_and_v5_spellings_give_equal_configs(tmp_path):
    v4 = {**TINY, "model_type": "llama", "torch_dtype": "float16", "rope_theta": 1e6,
          "rope_scaling": {"type": "linear", "factor": 3.0}}
    v5 = {**TINY, "model_type": "llama", "dtype": "float16",
          "rope_parameters": {"rope_type": "linear", "factor": 3.0, "rope_theta": 1e6}}
    a = pretrained.LlamaConfig.from_dict(v4)
    b = pretrained.LlamaConfig.from_dict(v5)
    assert a == b and a.to_diff_dict() == b.to_diff_dict()
    # keyword arguments in the v4 spelling too
    c = tiny_config(torch_dtype="float16", rope_theta=1e6, rope_scaling={"type": "linear", "factor": 3.0})
    assert c == a


# ---- the reference library, both directions -----------------------------------------------------


@pytest.mark.parametrize("overrides", [
    {},
    {"tie_word_embeddings": True, "bos_token_id": None, "eos_token_id": [2, 7], "pad_token_id": 0},
    {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e6}, "dtype": "bfloat16",
     "num_labels": 4, "head_dim": 16, "attention_bias": True, "rms_norm_eps": 1e-5},
])
def test_our_config_loads_in_the_reference_library(tmp_path, overrides):
    import transformers

    config = tiny_config(**overrides)
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(tmp_path)
    ref = transformers.AutoConfig.from_pretrained(tmp_path)
    assert type(ref).__name__ == "LlamaConfig"
    ours = as_json(config.to_dict())
    theirs = as_json(ref.to_dict())
    for key in MAIN_KEYS:
        assert theirs[key] == ours[key], key
    assert rope_without_legacy_alias(ref.rope_parameters) == config.rope_parameters
    assert dtype_name(ref.dtype) == config.dtype


@pytest.mark.parametrize("overrides", [
    {},
    {"tie_word_embeddings": True, "bos_token_id": None, "eos_token_id": [2, 7], "pad_token_id": 0},
    {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6}, "dtype": "float16",
     "num_labels": 4, "head_dim": 16, "mlp_bias": True, "hidden_act": "gelu"},
])
def test_reference_config_loads_in_ours(tmp_path, overrides):
    import transformers

    ref = transformers.LlamaConfig(**TINY, **overrides)
    ref.architectures = ["LlamaForCausalLM"]
    ref.save_pretrained(tmp_path)
    for loader in (pretrained.AutoConfig, pretrained.LlamaConfig):
        ours = loader.from_pretrained(tmp_path)
        assert type(ours) is pretrained.LlamaConfig
        theirs, mine = as_json(ref.to_dict()), as_json(ours.to_dict())
        for key in MAIN_KEYS:
            assert mine[key] == theirs[key], key
        assert ours.rope_parameters == rope_without_legacy_alias(ref.rope_parameters)
        assert ours.dtype == dtype_name(ref.dtype)
    # and our re-save still reads the same in the reference library
    ours.save_pretrained(tmp_path / "again")
    back = as_json(transformers.AutoConfig.from_pretrained(tmp_path / "again").to_dict())
    for key in MAIN_KEYS:
        assert back[key] == as_json(ref.to_dict())[key], key


# ---- malformed files --------------------------------------------------------------------------------


MALFORMED = {
    "bad-json": b'{"model_type": "llama", "vocab_size": 12,,}',
    "truncated": b'{"model_type": "llama", "vocab_si',
    "empty": b"",
    "json-list": b'[{"model_type": "llama"}]',
    "json-string": b'"llama"',
    "json-number": b"3",
    "not-utf8": b'{"model_type": "llama", "name": "\xff\xfe\xfa"}',
}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
@pytest.mark.parametrize("loader", ["family", "auto", "model", "json_file"])
def test_malformed_config_raises_config_error_naming_the_file(tmp_path, kind, loader):
    path = tmp_path / "config.json"
    path.write_bytes(MALFORMED[kind])
    with pytest.raises(ConfigError) as err:
        if loader == "family":
            pretrained.LlamaConfig.from_pretrained(tmp_path)
        elif loader == "auto":
            pretrained.AutoConfig.from_pretrained(tmp_path)
        elif loader == "model":
            pretrained.AutoModelForCausalLM.from_pretrained(tmp_path)
        else:
            pretrained.LlamaConfig.from_json_file(path)
    assert str(path) in str(err.value)
    assert path.read_bytes() == MALFORMED[kind]  # untouched


def test_missing_config_names_the_folder(tmp_path):
    with pytest.raises(OSError) as err:
        pretrained.AutoConfig.from_pretrained(tmp_path)
    assert str(tmp_path) in str(err.value) and "config.json" in str(err.value)


def test_unknown_model_type_lists_known_types(tmp_path):
    write_json(tmp_path, {"model_type": "no-such-family", "hidden_size": 8})
    for call in (lambda: pretrained.AutoConfig.from_pretrained(tmp_path),
                 lambda: pretrained.AutoModel.from_pretrained(tmp_path),
                 lambda: pretrained.AutoConfig.for_model("no-such-family")):
        with pytest.raises(UnknownModelTypeError) as err:
            call()
        message = str(err.value)
        assert "no-such-family" in message and "llama" in message
        assert isinstance(err.value, KeyError) and isinstance(err.value, ConfigError)


def test_config_without_model_type_for_auto(tmp_path):
    write_json(tmp_path, {"vocab_size": 99})
    with pytest.raises(ConfigError, match="model_type"):
        pretrained.AutoConfig.from_pretrained(tmp_path)
    # the family class reads it fine (the reference library does too)
    assert pretrained.LlamaConfig.from_pretrained(tmp_path).vocab_size == 99


def test_model_type_disagreeing_with_the_class_raises(tmp_path):
    with pytest.raises(ConfigError) as err:
        pretrained.LlamaConfig.from_dict({"model_type": "bert", "hidden_size": 8})
    assert "bert" in str(err.value) and "llama" in str(err.value)
    write_json(tmp_path, {"model_type": "bert", "hidden_size": 8})
    with pytest.raises(ConfigError, match="bert"):
        pretrained.LlamaConfig.from_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="bert"):
        pretrained.LlamaForCausalLM.from_pretrained(tmp_path)
    with pytest.raises(ConfigError):
        pretrained.LlamaConfig.from_dict(["not", "a", "dict"])


# ---- the registry and users' own classes --------------------------------------------------------------


class TinyNetConfig(PretrainedConfig):
    model_type = "pretrained-test-tinynet"

    def __init__(self, width: int = 4, **kwargs):
        self.width = width
        super().__init__(**kwargs)


class TinyNetModel(PreTrainedModel):
    config_class = TinyNetConfig

    def __init__(self, config: TinyNetConfig):
        super().__init__(config)
        self.proj = nn.Linear(config.width, config.width)
        self.post_init()

    def forward(self, x):
        return self.proj(x)


class OtherConfig(PretrainedConfig):
    model_type = "pretrained-test-other"


@pytest.fixture
def clean_registry():
    before = dict(registry.FAMILIES)
    yield
    registry.FAMILIES.clear()
    registry.FAMILIES.update(before)


def test_register_twice_raises(clean_registry):
    pretrained.AutoConfig.register(TinyNetConfig.model_type, TinyNetConfig)
    with pytest.raises(ValueError, match="already registered"):
        pretrained.AutoConfig.register(TinyNetConfig.model_type, TinyNetConfig)
    pretrained.AutoConfig.register(TinyNetConfig.model_type, TinyNetConfig, exist_ok=True)
    with pytest.raises(ValueError, match="already registered"):
        pretrained.AutoConfig.register("llama", pretrained.LlamaConfig)
    with pytest.raises(ValueError):  # the class says another model_type
        pretrained.AutoConfig.register("something-else", TinyNetConfig)
    pretrained.AutoModel.register(TinyNetConfig, TinyNetModel)
    with pytest.raises(ValueError, match="already has"):
        pretrained.AutoModel.register(TinyNetConfig, TinyNetModel)
    with pytest.raises(ValueError):  # a model class for another config class
        pretrained.AutoModelForCausalLM.register(TinyNetConfig, pretrained.LlamaForCausalLM)
    with pytest.raises(ValueError, match="config first"):  # config not registered
        pretrained.AutoModel.register(OtherConfig, TinyNetModel)


def test_registered_user_classes_load_through_auto(tmp_path, clean_registry):
    with pytest.raises(UnknownModelTypeError):
        pretrained.AutoConfig.for_model(TinyNetConfig.model_type)
    pretrained.AutoConfig.register(TinyNetConfig.model_type, TinyNetConfig)
    pretrained.AutoModel.register(TinyNetConfig, TinyNetModel)

    torch.manual_seed(0)
    model = TinyNetModel.from_config(TinyNetConfig(width=6))
    model.save_pretrained(tmp_path)
    on_disk = read_json(tmp_path / "config.json")
    assert on_disk["model_type"] == TinyNetConfig.model_type and on_disk["width"] == 6
    assert on_disk["architectures"] == ["TinyNetModel"]

    config = pretrained.AutoConfig.from_pretrained(tmp_path)
    assert type(config) is TinyNetConfig and config.width == 6
    loaded, info = pretrained.AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert type(loaded) is TinyNetModel
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    x = torch.randn(2, 6)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    # a task this family did not register
    with pytest.raises(UnknownModelTypeError, match="AutoModelForCausalLM"):
        pretrained.AutoModelForCausalLM.from_pretrained(tmp_path)
    # the llama classes are not fooled into loading it
    with pytest.raises(ConfigError):
        pretrained.LlamaForCausalLM.from_pretrained(tmp_path)
