"""Llama, Mistral, Qwen2 and Gemma, every task class, against the reference library, through files on disk.

For each (family, class): the reference's checkpoint loads into ours (found by our Auto class) with no missing or
unexpected keys and the same outputs, and ours loads into the reference the same way. Then: losses for the task
heads, a padded batch for sequence classification, KV-cache decoding == one full forward, sliding windows in
sdpa and eager, the configs' defaults and dialects, and Gemma's details (scaled embeddings, (1 + w) norms).

Models are tiny and seeded; every 1-D parameter (norm weights, biases) is perturbed after initialisation, since
initialisation leaves them at 0 or 1 where a wrong bias or a missing (1 + w) would not show.
"""

from __future__ import annotations

import json

import pytest
import torch

import pretrained

transformers = pytest.importorskip("transformers")

ATOL = 1e-5  # float32 parity
SEQ = 9  # longer than Mistral's window below, so the window matters

TINY = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.2, pad_token_id=0)
# tie_word_embeddings keeps each family's default: untied for Llama, Mistral and Qwen2, tied for Gemma
FAMILIES = {  # model_type -> (class-name prefix, what the tiny config adds)
    "llama": ("Llama", {}),
    "mistral": ("Mistral", {"sliding_window": 4}),
    "qwen2": ("Qwen2", {}),
    "gemma": ("Gemma", {"head_dim": 8}),
}
TASKS = {  # class-name suffix -> the Auto class of both libraries
    "Model": "AutoModel",
    "ForCausalLM": "AutoModelForCausalLM",
    "ForSequenceClassification": "AutoModelForSequenceClassification",
    "ForQuestionAnswering": "AutoModelForQuestionAnswering",
    "ForTokenClassification": "AutoModelForTokenClassification",
}
NO_REFERENCE = {("gemma", "ForQuestionAnswering")}  # the reference's Gemma has no question-answering class
CASES = [(f, t) for f in FAMILIES for t in TASKS if (f, t) not in NO_REFERENCE]
HEADS = [(f, t) for f, t in CASES if t != "Model"]


def config_kwargs(family: str, **overrides) -> dict:
    return {**TINY, **FAMILIES[family][1], **overrides}


def class_name(family: str, task: str) -> str:
    return FAMILIES[family][0] + task


def perturb_vectors(model: torch.nn.Module, seed: int = 1) -> None:
    """Move every 1-D parameter (norm weights, biases) off its initial 0 or 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)


def reference_model(family: str, task: str, seed: int = 0, **overrides):
    config = getattr(transformers, FAMILIES[family][0] + "Config")(**config_kwargs(family, **overrides))
    torch.manual_seed(seed)
    model = getattr(transformers, class_name(family, task))(config).eval()
    perturb_vectors(model)
    return model


def our_model(family: str, task: str, seed: int = 0, **overrides):
    config = getattr(pretrained, FAMILIES[family][0] + "Config")(**config_kwargs(family, **overrides))
    torch.manual_seed(seed)
    model = getattr(pretrained, class_name(family, task)).from_config(config).eval()
    perturb_vectors(model)
    return model


def token_ids(batch: int = 2, seq: int = SEQ, seed: int = 0) -> torch.Tensor:
    """Random ids that avoid the pad id 0."""
    return torch.randint(1, TINY["vocab_size"], (batch, seq), generator=torch.Generator().manual_seed(seed))


def outputs(model, ids: torch.Tensor, **kwargs) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = model(ids, **kwargs)
    names = ("last_hidden_state", "logits", "start_logits", "end_logits")
    return {n: getattr(out, n) for n in names if getattr(out, n, None) is not None}


def assert_same_outputs(actual: dict, expected: dict, atol: float = ATOL) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=atol, rtol=0.0, msg=name)


def assert_clean_load(info: dict) -> None:
    assert list(info["missing_keys"]) == []
    assert list(info["unexpected_keys"]) == []
    assert list(info["mismatched_keys"]) == []


def load_pair(tmp_path, family: str, task: str, **overrides):
    """(reference model, ours loaded from its checkpoint)."""
    ref = reference_model(family, task, **overrides)
    ref.save_pretrained(tmp_path)
    ours = getattr(pretrained, TASKS[task]).from_pretrained(tmp_path)
    return ref, ours


def case_id(case) -> str:
    return "-".join(case)


# --------------------------------------------------------------------------------------------------------------
# 1. both directions, every family and class
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family, task", CASES, ids=map(case_id, CASES))
def test_reference_checkpoint_loads_into_ours(tmp_path, family, task):
    ref = reference_model(family, task)
    ref.save_pretrained(tmp_path)
    ours, info = getattr(pretrained, TASKS[task]).from_pretrained(tmp_path, output_loading_info=True)
    assert type(ours) is getattr(pretrained, class_name(family, task))
    assert_clean_load(info)
    assert ours.base_model_prefix == ref.base_model_prefix
    ours_state, ref_state = ours.state_dict(), ref.state_dict()
    assert set(ours_state) == set(ref_state)
    for name, tensor in ref_state.items():
        assert torch.equal(ours_state[name], tensor), name
    ids = token_ids()
    assert_same_outputs(outputs(ours, ids), outputs(ref, ids))


@pytest.mark.parametrize("family, task", CASES, ids=map(case_id, CASES))
def test_our_checkpoint_loads_into_reference(tmp_path, family, task):
    ours = our_model(family, task)
    ours.save_pretrained(tmp_path)
    ref, info = getattr(transformers, TASKS[task]).from_pretrained(tmp_path, output_loading_info=True)
    assert type(ref) is getattr(transformers, class_name(family, task))
    assert_clean_load(info)
    ids = token_ids()
    assert_same_outputs(outputs(ref.eval(), ids), outputs(ours, ids))


def test_gemma_question_answering_without_a_reference_class(tmp_path):
    """The reference has no GemmaForQuestionAnswering; ours is the generic head on GemmaModel, whose checkpoints
    it shares with the reference in both directions."""
    assert not hasattr(transformers, "GemmaForQuestionAnswering")
    ids = token_ids()
    ref_base = reference_model("gemma", "Model")
    ref_base.save_pretrained(tmp_path / "theirs")
    ours, info = pretrained.AutoModelForQuestionAnswering.from_pretrained(tmp_path / "theirs",
                                                                        output_loading_info=True)
    assert type(ours) is pretrained.GemmaForQuestionAnswering and ours.base_model_prefix == "model"
    assert sorted(info["missing_keys"]) == ["qa_outputs.bias", "qa_outputs.weight"]
    assert info["unexpected_keys"] == []
    hidden = outputs(ref_base, ids)["last_hidden_state"]
    got = outputs(ours, ids)
    start, end = ours.qa_outputs(hidden).unbind(-1)
    torch.testing.assert_close(got["start_logits"], start, atol=ATOL, rtol=0)
    torch.testing.assert_close(got["end_logits"], end, atol=ATOL, rtol=0)

    mine = our_model("gemma", "ForQuestionAnswering")
    mine.save_pretrained(tmp_path / "ours")
    theirs, info = transformers.GemmaModel.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not info["missing_keys"]
    assert sorted(info["unexpected_keys"]) == ["qa_outputs.bias", "qa_outputs.weight"]
    torch.testing.assert_close(outputs(theirs.eval(), ids)["last_hidden_state"],
                               outputs(mine.model, ids)["last_hidden_state"], atol=ATOL, rtol=0)


# --------------------------------------------------------------------------------------------------------------
# 2. task heads: losses, padding, the classifier's pooling
# --------------------------------------------------------------------------------------------------------------
def task_labels(task: str, ids: torch.Tensor, num_labels: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    B, T = ids.shape
    if task == "ForCausalLM":
        labels = ids.clone()
        labels[0, :3] = -100
        return {"labels": labels}
    if task == "ForSequenceClassification":
        return {"labels": torch.randint(0, num_labels, (B,), generator=g)}
    if task == "ForTokenClassification":
        labels = torch.randint(0, num_labels, (B, T), generator=g)
        labels[1, -2:] = -100
        return {"labels": labels}
    return {"start_positions": torch.tensor([1, T + 5]), "end_positions": torch.tensor([4, 2])}  # one out of range


@pytest.mark.parametrize("family, task", HEADS, ids=map(case_id, HEADS))
def test_loss_and_gradients_match_reference(tmp_path, family, task):
    ref, ours = load_pair(tmp_path, family, task)
    ids = token_ids()
    labels = task_labels(task, ids)
    ref_out, ours_out = ref(ids, **labels), ours(ids, **labels)
    assert ours_out.loss.shape == ()
    torch.testing.assert_close(ours_out.loss, ref_out.loss, atol=ATOL, rtol=0)
    ref_out.loss.backward()
    ours_out.loss.backward()
    ref_params = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, ref_params[name].grad, atol=ATOL, rtol=0, msg=name)


@pytest.mark.parametrize("num_labels, labels", [
    (1, torch.tensor([0.5, -1.0])),  # regression
    (3, torch.tensor([2, 0])),  # single-label
    (3, torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])),  # multi-label
], ids=["regression", "single-label", "multi-label"])
def test_sequence_classification_problem_types(tmp_path, num_labels, labels):
    ref, ours = load_pair(tmp_path, "qwen2", "ForSequenceClassification", num_labels=num_labels)
    ids = token_ids()
    with torch.no_grad():
        expected, got = ref(ids, labels=labels), ours(ids, labels=labels)
    assert got.logits.shape == (2, num_labels)
    torch.testing.assert_close(got.loss, expected.loss, atol=ATOL, rtol=0)
    assert ours.config.problem_type == ref.config.problem_type


@pytest.mark.parametrize("family", list(FAMILIES))
def test_padded_batch_sequence_classification(tmp_path, family):
    """Each sequence is read at its last non-padding token, with right or left padding."""
    ref, ours = load_pair(tmp_path, family, "ForSequenceClassification")
    ids = token_ids(3, SEQ)
    mask = torch.ones_like(ids)
    ids[0, -3:], mask[0, -3:] = 0, 0  # right padding
    ids[1, :2], mask[1, :2] = 0, 0  # left padding
    with torch.no_grad():
        expected = ref(ids, attention_mask=mask).logits
        got = ours(ids, attention_mask=mask).logits
        alone = ours(ids[:1, :-3]).logits  # the right-padded row without its padding
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(got[:1], alone, atol=ATOL, rtol=0)

    ours.config.pad_token_id = ref.config.pad_token_id = None
    with pytest.raises(ValueError, match="padding token"):
        ref(ids)
    with pytest.raises(ValueError, match="padding token"):
        ours(ids)
    with torch.no_grad():  # a batch of one needs no pad token: its last position is read
        torch.testing.assert_close(ours(ids[2:]).logits, ref(ids[2:]).logits, atol=ATOL, rtol=0)


def test_token_classification_head_options(tmp_path):
    ours = our_model("llama", "ForTokenClassification")
    assert ours.dropout.p == 0.1 and ours.score.bias is not None
    ours = our_model("llama", "ForTokenClassification", classifier_dropout=0.3, token_classification_bias=False)
    assert ours.dropout.p == 0.3 and ours.score.bias is None
    ours.save_pretrained(tmp_path)
    ref, info = transformers.AutoModelForTokenClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert_clean_load(info)
    assert ref.dropout.p == 0.3 and ref.score.bias is None


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_question_answering_uses_the_transformer_prefix(tmp_path, family):
    """Llama's and Qwen2's question-answering classes keep the base model under `transformer`, as their
    checkpoints name it; a base-model checkpoint still loads into them."""
    ours = our_model(family, "ForQuestionAnswering")
    assert ours.base_model_prefix == "transformer" and ours.base_model is ours.transformer
    assert ours.get_input_embeddings() is ours.transformer.embed_tokens
    assert all(k.startswith(("transformer.", "qa_outputs.")) for k in ours.state_dict())
    reference_model(family, "Model").save_pretrained(tmp_path)
    _, info = pretrained.AutoModelForQuestionAnswering.from_pretrained(tmp_path, output_loading_info=True)
    assert sorted(info["missing_keys"]) == ["qa_outputs.bias", "qa_outputs.weight"]
    assert info["unexpected_keys"] == []


# --------------------------------------------------------------------------------------------------------------
# 3. decoding with a cache, sliding windows
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_kv_cache_incremental_equals_full_forward(family, attn):
    ours = our_model(family, "ForCausalLM")
    ours.config._attn_implementation = attn
    B, T = 3, 12
    ids = token_ids(B, T)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, :2] = mask[2, :5] = 0  # left padding
    with torch.no_grad():
        full = ours(ids, attention_mask=mask).logits
        out = ours(ids[:, :4], attention_mask=mask[:, :4], use_cache=True)  # prefix
        steps, cache = [out.logits], out.past_key_values
        out = ours(ids[:, 4:7], attention_mask=mask[:, :7], past_key_values=cache, use_cache=True)  # a chunk
        steps.append(out.logits)
        for t in range(7, T):  # one token at a time, well past Mistral's window
            out = ours(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], past_key_values=cache, use_cache=True)
            steps.append(out.logits)
    assert cache.get_seq_length() == T
    keep = mask.bool()
    torch.testing.assert_close(torch.cat(steps, dim=1)[keep], full[keep], atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_fixed_length_static_cache_equals_full_forward(family):
    """Given `cache_position`, a StaticCache is written in place and attended over whole (fixed shapes, what a
    compiled step needs); stepping through it equals the full forward, left padding and Mistral's window included."""
    ours = our_model(family, "ForCausalLM")
    B, T = 3, 12
    ids = token_ids(B, T)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, :2] = mask[2, :5] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = pretrained.StaticCache(max_cache_len=16)
    with torch.no_grad():
        full = ours(ids, attention_mask=mask).logits
        steps, start = [], 0
        for end in (4, 7, *range(8, T + 1)):  # a prefix, a chunk, then one token at a time
            out = ours(ids[:, start:end], attention_mask=mask, position_ids=positions[:, start:end],
                       past_key_values=cache, cache_position=torch.arange(start, end), use_cache=True)
            steps.append(out.logits)
            start = end
    assert cache.keys[0].shape[2] == 16 and cache.get_seq_length() == T  # fixed length, T written
    keep = mask.bool()
    torch.testing.assert_close(torch.cat(steps, dim=1)[keep], full[keep], atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", ["mistral", "qwen2", "gemma"])
def test_generate_with_static_cache_matches_reference(tmp_path, family):
    ref, ours = load_pair(tmp_path, family, "ForCausalLM", **SLIDING.get(family, {}))
    ids = token_ids(2, 7)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    for kwargs in (dict(max_new_tokens=12), dict(max_new_tokens=8, num_beams=3)):
        expected = ref.generate(ids, attention_mask=mask, **kwargs)
        assert torch.equal(ours.generate(ids, attention_mask=mask, cache_implementation="static", **kwargs), expected)


SLIDING = {  # family -> config overrides that give it a window smaller than the sequence
    "mistral": {"sliding_window": 4},
    "qwen2": {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 1},  # layer 1 slides
}


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", list(SLIDING))
def test_sliding_window_matches_reference(tmp_path, family, attn):
    ref = reference_model(family, "ForCausalLM", **SLIDING[family])
    ref.save_pretrained(tmp_path)
    ours = pretrained.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation=attn)
    ref = getattr(transformers, class_name(family, "ForCausalLM")).from_pretrained(
        tmp_path, attn_implementation=attn).eval()
    if family == "qwen2":
        assert ours.config.layer_types == ref.config.layer_types == ["full_attention", "sliding_attention"]
        assert ours.model.sliding_windows() == [None, 4]
    ids = token_ids(2, 12)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    keep = mask.bool()
    for kwargs in ({}, {"attention_mask": mask}):
        got, expected = outputs(ours, ids, **kwargs)["logits"], outputs(ref, ids, **kwargs)["logits"]
        torch.testing.assert_close(got[keep], expected[keep], atol=ATOL, rtol=0)

    # the window is not a no-op: without it the last positions see more and their logits move
    ours.config.sliding_window = None
    if family == "qwen2":
        ours.config.layer_types = ["full_attention"] * 2
    unwindowed = outputs(ours, ids)["logits"]
    assert (unwindowed[:, -1] - outputs(ref, ids)["logits"][:, -1]).abs().max() > 1e3 * ATOL


# --------------------------------------------------------------------------------------------------------------
# 4. configs
# --------------------------------------------------------------------------------------------------------------
IGNORED_KEYS = {"transformers_version", "_name_or_path", "id2label", "label2id", "pruned_heads",
                "decoder_start_token_id"}  # version stamps and keys the common core owns


@pytest.mark.parametrize("family", list(FAMILIES))
def test_default_configs_match_reference(family):
    name = FAMILIES[family][0] + "Config"
    ours = getattr(pretrained, name)().to_dict()
    ref = getattr(transformers, name)().to_dict()
    extra = {"qwen2": {"head_dim"}}.get(family, set())  # read by the reference when present, same value
    assert set(ref) - IGNORED_KEYS == set(ours) - IGNORED_KEYS - extra
    assert {k: ours[k] for k in set(ref) - IGNORED_KEYS} == {k: ref[k] for k in set(ref) - IGNORED_KEYS}
    if family == "qwen2":
        assert ours["head_dim"] == ours["hidden_size"] // ours["num_attention_heads"]


@pytest.mark.parametrize("kwargs", [
    {"use_sliding_window": True, "num_hidden_layers": 6, "max_window_layers": 4},
    {"use_sliding_window": True, "sliding_window": 16, "num_hidden_layers": 3, "max_window_layers": 0},
    {"use_sliding_window": False, "sliding_window": 16, "num_hidden_layers": 3},
    {"use_sliding_window": True, "sliding_window": 8, "layer_types": ["attention", "sliding_attention"],
     "num_hidden_layers": 2},
], ids=["upper-layers-slide", "all-slide", "window-off", "explicit-legacy-name"])
def test_qwen2_sliding_window_keys_match_reference(kwargs):
    ours, ref = pretrained.Qwen2Config(**kwargs), transformers.Qwen2Config(**kwargs)
    for key in ("use_sliding_window", "sliding_window", "max_window_layers", "layer_types"):
        assert getattr(ours, key) == getattr(ref, key), key


def test_qwen2_inconsistent_sliding_layers_are_refused():
    config = pretrained.Qwen2Config(**config_kwargs("qwen2", layer_types=["full_attention", "sliding_attention"]))
    assert config.sliding_window is None  # use_sliding_window is False
    with pytest.raises(pretrained.errors.ConfigError, match="sliding_window"):
        pretrained.Qwen2Model(config)
    with pytest.raises(pretrained.errors.ConfigError, match="layer_types"):
        pretrained.Qwen2Config(num_hidden_layers=3, layer_types=["full_attention"] * 2)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_v4_config_dialect_and_round_trip(tmp_path, family):
    name = FAMILIES[family][0] + "Config"
    v4 = {**config_kwargs(family), "model_type": family, "rope_theta": 500000.0, "torch_dtype": "bfloat16",
          "transformers_version": "4.45.0"}
    (tmp_path / "config.json").write_text(json.dumps(v4))
    ours = pretrained.AutoConfig.from_pretrained(tmp_path)
    ref = transformers.AutoConfig.from_pretrained(tmp_path)
    assert type(ours).__name__ == type(ref).__name__ == name
    assert ours.rope_parameters == ref.rope_parameters == {"rope_type": "default", "rope_theta": 500000.0}
    assert ours.dtype == "bfloat16"

    ours.save_pretrained(tmp_path / "ours")  # what we write, the reference reads as its own
    again = transformers.AutoConfig.from_pretrained(tmp_path / "ours").to_dict()
    mine = ours.to_dict()
    for key in set(again) - IGNORED_KEYS - {"dtype"}:
        assert mine.get(key) == again[key], key


def test_family_specific_config_keys():
    assert pretrained.GemmaConfig(hidden_act="gelu").hidden_act == transformers.GemmaConfig(
        hidden_act="gelu").hidden_act == "gelu_pytorch_tanh"
    mistral = pretrained.MistralConfig()
    assert not hasattr(mistral, "attention_bias") and not hasattr(mistral, "mlp_bias")
    kept = pretrained.MistralConfig(attention_bias=True)  # unknown to Mistral: kept, and ignored like the reference
    assert kept.to_dict()["attention_bias"] is True
    assert pretrained.MistralModel(pretrained.MistralConfig(**config_kwargs("mistral"), attention_bias=True)) \
        .layers[0].self_attn.q_proj.bias is None
    with pytest.raises(pretrained.errors.ConfigError, match="MistralConfig"):
        pretrained.LlamaForCausalLM.from_config(pretrained.MistralConfig(**config_kwargs("mistral")))
    with pytest.raises(pretrained.errors.ConfigError, match="use_bidirectional_attention"):
        pretrained.GemmaModel(pretrained.GemmaConfig(**config_kwargs("gemma"), use_bidirectional_attention=True))


# --------------------------------------------------------------------------------------------------------------
# 5. family details the parity tests lean on
# --------------------------------------------------------------------------------------------------------------
def test_family_structures():
    qwen = our_model("qwen2", "Model").layers[0]
    assert qwen.self_attn.q_proj.bias is not None and qwen.self_attn.k_proj.bias is not None
    assert qwen.self_attn.v_proj.bias is not None and qwen.self_attn.o_proj.bias is None
    assert qwen.mlp.gate_proj.bias is None
    gemma = our_model("gemma", "ForCausalLM", tie_word_embeddings=True)
    assert gemma.model.layers[0].self_attn.q_proj.out_features == 4 * 8  # heads * head_dim from the config
    assert gemma.lm_head.weight is gemma.model.embed_tokens.weight
    llama = our_model("llama", "ForCausalLM")
    assert llama.lm_head.weight is not llama.model.embed_tokens.weight  # untied by default
    assert pretrained.GemmaConfig().tie_word_embeddings is True
    for family in FAMILIES:
        cls = getattr(pretrained, class_name(family, "ForCausalLM"))
        assert cls._no_split_modules == [FAMILIES[family][0] + "DecoderLayer"]
        assert cls._tied_weights_keys == {"lm_head.weight": "model.embed_tokens.weight"}


def test_gemma_norms_and_embedding_scale():
    model = our_model("gemma", "Model")
    norm = model.norm
    x = torch.randn(2, 3, 32)
    expected = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * (1.0 + norm.weight)
    torch.testing.assert_close(norm(x), expected)
    ids = token_ids(1, 4)
    with torch.no_grad():
        torch.testing.assert_close(model.embed_tokens(ids),
                                   torch.nn.functional.embedding(ids, model.embed_tokens.weight) * 32**0.5)
        # embeddings given directly are not scaled (as in the reference)
        raw = torch.nn.functional.embedding(ids, model.embed_tokens.weight)
        assert not torch.allclose(model(inputs_embeds=raw).last_hidden_state, model(ids).last_hidden_state)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_gemma_half_precision_matches_reference(tmp_path, dtype):
    """The embedding scale is rounded to the model's dtype, as the reference rounds it (sqrt(32) -> 5.65625
    in bf16); the norms still compute (1 + w) in float32."""
    reference_model("gemma", "ForCausalLM").save_pretrained(tmp_path)
    ours = pretrained.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=dtype)
    ref = transformers.GemmaForCausalLM.from_pretrained(tmp_path, dtype=dtype).eval()
    scale = ours.model.embed_tokens.embed_scale
    assert scale.dtype == ref.model.embed_tokens.embed_scale.dtype == dtype
    assert torch.equal(scale, ref.model.embed_tokens.embed_scale)
    ids = token_ids()
    tol = {torch.bfloat16: 2 * 2**-7, torch.float16: 2 * 2**-10}[dtype]
    torch.testing.assert_close(outputs(ours, ids)["logits"].float(), outputs(ref, ids)["logits"].float(),
                               atol=tol, rtol=tol)


def test_gemma_resize_keeps_the_embedding_scale():
    model = our_model("gemma", "ForCausalLM", tie_word_embeddings=True)
    ids = token_ids(1, 5)
    before = outputs(model, ids)["logits"]
    embeddings = model.resize_token_embeddings(200)
    assert type(embeddings).__name__ == "GemmaTextScaledWordEmbedding" and embeddings.num_embeddings == 200
    torch.testing.assert_close(outputs(model, ids)["logits"][..., :128], before, atol=ATOL, rtol=0)
