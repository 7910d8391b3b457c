"""The common model suite: every class registered in `pretrained.registry` is enrolled here automatically.

Registering a family is enough to run these checks on each of its classes: forward on a tiny config, save ->
load round trip, meta-device load == eager construction, half-precision loading, KV cache == no cache for
generative models, `resize_token_embeddings`, and the family's declared facts checked against its module tree.
A family with no tiny config in TINY fails `test_every_family_has_a_tiny_config`, so nothing escapes the suite.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from pretrained import registry
from pretrained.errors import ConfigError

TINY = {
    "llama": dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, pad_token_id=0),
    "mistral": dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, pad_token_id=0, sliding_window=4),
    "qwen2": dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, pad_token_id=0),
    "gemma": dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8, pad_token_id=0),
    "bert": dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                 pad_token_id=0),
    "gpt2": dict(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64),
    "t5": dict(vocab_size=99, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
               relative_attention_num_buckets=8),
}

CASES = [(mt, task) for mt, fam in sorted(registry.FAMILIES.items()) for task in sorted(fam.models)
         if mt in TINY]


GENERATIVE = [c for c in CASES if registry.model_class(registry.config_class(c[0]), c[1]).can_generate()]


def _ids(case):
    return f"{case[0]}-{case[1].removeprefix('AutoModel').removeprefix('For') or 'Base'}"


def test_every_family_has_a_tiny_config():
    assert set(registry.FAMILIES) <= set(TINY), f"add tiny configs for {set(registry.FAMILIES) - set(TINY)}"


def build(model_type, task, seed=0, **overrides):
    config = registry.config_class(model_type)(**{**TINY[model_type], **overrides})
    cls = registry.model_class(type(config), task)
    torch.manual_seed(seed)
    return cls.from_config(config).eval()


def inputs(model, seq=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    ids = torch.randint(2, vocab, (2, seq), generator=g)
    batch = {model.main_input_name: ids, "attention_mask": torch.ones_like(ids)}
    if model.config.is_encoder_decoder:
        batch["decoder_input_ids"] = torch.randint(2, vocab, (2, 5), generator=g)
    return batch


def main_output(out):
    return out[0] if out[0].dim() > 0 else out[1]  # skip a scalar loss


@pytest.fixture(params=CASES, ids=_ids)
def case(request):
    return request.param


def test_forward_is_deterministic_and_finite(case):
    model = build(*case)
    with torch.no_grad():
        a, b = main_output(model(**inputs(model))), main_output(model(**inputs(model)))
    assert a.shape[0] == 2 and torch.isfinite(a).all()
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_save_load_round_trip_is_exact(case, tmp_path):
    model = build(*case)
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    cls = type(model)
    loaded, info = cls.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []
    assert not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(main_output(loaded(**inputs(model))), main_output(model(**inputs(model))),
                                   rtol=0, atol=0)


def test_meta_load_equals_eager_construction(case, tmp_path):
    """from_pretrained (meta skeleton + assign) gives the same model as building eagerly and load_state_dict."""
    model = build(*case)
    model.save_pretrained(tmp_path)
    eager = type(model)(model.config)
    eager.load_state_dict(model.state_dict())
    eager.eval()
    loaded = type(model).from_pretrained(tmp_path)
    assert set(loaded.state_dict()) == set(eager.state_dict())
    assert all(not t.is_meta for t in loaded.state_dict().values())
    for name, t in eager.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], t, rtol=0, atol=0, msg=name)
    for (name, b_loaded), (_, b_eager) in zip(loaded.named_buffers(), eager.named_buffers()):
        torch.testing.assert_close(b_loaded, b_eager, rtol=0, atol=0, msg=name)  # non-persistent buffers too


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_loading(case, dtype, tmp_path):
    model = build(*case)
    model.save_pretrained(tmp_path)
    half = type(model).from_pretrained(tmp_path, dtype=dtype)
    keep = tuple(type(model).facts.keep_in_fp32_modules)
    for name, p in half.named_parameters():
        kept = dtype == torch.float16 and any(k in name.split(".") for k in keep)
        assert p.dtype == (torch.float32 if kept else dtype), name
    with torch.no_grad():
        out = main_output(half(**inputs(model))).float()
        ref = main_output(model(**inputs(model)))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=0.1, atol=0.1)  # half precision: loose, but catches garbage


@pytest.mark.parametrize("keyword", ["cache", "past_key_values"])  # 5.24's name and the one before it
@pytest.mark.parametrize("generative", GENERATIVE, ids=_ids)
def test_kv_cache_matches_full_forward(generative, keyword):
    model = build(*generative)
    batch = inputs(model, seq=7)
    with torch.no_grad():
        if model.config.is_encoder_decoder:
            dec = batch["decoder_input_ids"]
            full = model(**batch, use_cache=False).logits
            first = model(**{**batch, "decoder_input_ids": dec[:, :-1]}, use_cache=True)
            step = model(**{**batch, "decoder_input_ids": dec[:, -1:], keyword: first.cache}, use_cache=True)
        else:
            ids = batch["input_ids"]
            full = model(input_ids=ids, use_cache=False).logits
            first = model(input_ids=ids[:, :-1], use_cache=True)
            step = model(input_ids=ids[:, -1:], use_cache=True, **{keyword: first.cache})
    assert step.cache is first.cache and step.past_key_values is step.cache and step["past_key_values"] is step.cache
    torch.testing.assert_close(step.logits[:, -1], full[:, -1], rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="cache= and past_key_values="):
        model(**batch, cache=first.cache, past_key_values=first.cache)


def test_every_forward_with_a_cache_takes_both_names(case):
    """Every forward that takes a cache names it `cache` and also accepts `past_key_values` (the 5.23 name): the
    alias is in place exactly when giving both names is refused as one argument given twice."""
    model = build(*case)
    for module in (model, model.base_model):
        params = inspect.signature(module.forward).parameters
        assert "past_key_values" not in params, type(module).__name__
        assert ("cache" in params) >= model.can_generate(), type(module).__name__
        if "cache" in params:
            with pytest.raises(TypeError, match="both cache= and past_key_values="):
                module(**inputs(model), cache=object(), past_key_values=object())


def test_resize_token_embeddings(case):
    model = build(*case)
    old = model.get_input_embeddings().weight.detach().clone()
    new = model.resize_token_embeddings(old.shape[0] + 5, pad_to_multiple_of=8)
    assert new.weight.shape[0] == model.config.vocab_size == -(-(old.shape[0] + 5) // 8) * 8
    torch.testing.assert_close(new.weight[: old.shape[0]], old, rtol=0, atol=0)
    out_emb = model.get_output_embeddings()
    if out_emb is not None:
        assert out_emb.weight.shape[0] == model.config.vocab_size
    with torch.no_grad():
        out = model(**inputs(model))
    if hasattr(out, "logits") and out_emb is not None:
        assert out.logits.shape[-1] == model.config.vocab_size


def test_declared_facts_match_the_module_tree(case):
    model = build(*case, tie_word_embeddings=True)
    facts = type(model).facts
    class_names = {type(m).__name__ for m in model.modules()}
    for block in facts.no_split_modules:
        assert block in class_names, f"no-split block {block} is not in the model"
    state = model.state_dict()
    for target, source in model.active_ties().items():
        assert target in state and source in state, (target, source)
        assert model.get_parameter(target) is model.get_parameter(source), f"{target} is not tied to {source}"
    if facts.base_model_prefix and type(model).__name__ != type(model.base_model).__name__:
        assert isinstance(getattr(model, facts.base_model_prefix), nn.Module)
    assert isinstance(model.get_input_embeddings(), nn.Embedding)
    for name in facts.keep_in_fp32_modules:
        assert any(name in n.split(".") for n, _ in model.named_modules()), f"keep-in-fp32 module {name} not found"


def test_loading_another_familys_checkpoint_names_both(tmp_path):
    """A checkpoint of one family loaded into another's class: the error says which family is which."""
    build("llama", "AutoModelForCausalLM").save_pretrained(tmp_path)
    for model_type in sorted(set(TINY) - {"llama"}):
        config_cls = registry.config_class(model_type)
        cls = registry.model_class(config_cls, sorted(registry.FAMILIES[model_type].models)[0])
        with pytest.raises(ConfigError) as e:
            cls.from_pretrained(tmp_path)
        assert "llama" in str(e.value) and model_type in str(e.value)


def test_config_of_another_family_is_refused():
    config = registry.config_class("llama")(**TINY["llama"])
    for model_type in sorted(set(TINY) - {"llama"}):
        cls = registry.model_class(registry.config_class(model_type), sorted(registry.FAMILIES[model_type].models)[0])
        with pytest.raises(ConfigError, match="llama"):
            cls.from_config(config)
