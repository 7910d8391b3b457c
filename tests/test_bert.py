"""BERT: parity with the reference library through checkpoints on disk (both directions), task losses, head masks,
and head pruning against recordings of transformers 4.57 (the last version with `prune_heads`).

The pruning recordings live in tests/data/bert_pruned/ and are written by tests/reference/record_bert_pruning.py;
these tests only read them, so they need neither 4.57 nor the network.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import pretrained
from pretrained.errors import ConfigError

transformers = pytest.importorskip("transformers")

ATOL = 1e-5  # float32 parity
RECORDED = Path(__file__).parent / "data" / "bert_pruned"

# The brief's tiny BERT. initializer_range 10x the usual so that attention is sharp and a wrong mask, segment or
# head moves outputs far more than the tolerance.
TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=32, type_vocab_size=2, initializer_range=0.2)
CLASSES = ["BertModel", "BertForMaskedLM", "BertForSequenceClassification", "BertForTokenClassification",
           "BertForQuestionAnswering"]
NUM_LABELS = {"BertForSequenceClassification": 3, "BertForTokenClassification": 5, "BertForQuestionAnswering": 2}
B, T = 2, 9


def assert_close(actual, expected, atol: float = ATOL) -> None:
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0.0)


def config_kwargs(name: str, **overrides) -> dict:
    extra = {"num_labels": NUM_LABELS[name]} if name in NUM_LABELS else {}
    return {**TINY, **extra, **overrides}


def reference(name: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return getattr(transformers, name)(transformers.BertConfig(**config_kwargs(name, **overrides))).eval()


def ours_from_config(name: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return getattr(pretrained, name).from_config(pretrained.BertConfig(**config_kwargs(name, **overrides))).eval()


def inputs() -> dict[str, torch.Tensor]:
    """Token ids, two segments, and a right-padded second row."""
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 6:] = 0
    segments = torch.zeros(B, T, dtype=torch.long)
    segments[:, 4:] = 1
    return {"input_ids": torch.randint(1, TINY["vocab_size"], (B, T), generator=g), "attention_mask": mask,
            "token_type_ids": segments}


def labels(name: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    if name == "BertForMaskedLM":
        lab = torch.randint(0, TINY["vocab_size"], (B, T), generator=g)
        lab[:, ::2] = -100  # only some positions are "masked"
        return {"labels": lab}
    if name == "BertForSequenceClassification":
        return {"labels": torch.tensor([2, 0])}
    if name == "BertForTokenClassification":
        lab = torch.randint(0, NUM_LABELS[name], (B, T), generator=g)
        lab[1, 6:] = -100
        return {"labels": lab}
    if name == "BertForQuestionAnswering":  # 20 is past the sequence: clamped and ignored, as the reference does
        return {"start_positions": torch.tensor([1, 20]), "end_positions": torch.tensor([3, 5])}
    return {}


@torch.no_grad()
def run(model, **kwargs):
    return model(**inputs(), **kwargs)


def assert_outputs_close(ours, ref) -> None:
    """Every tensor field of the reference output (and each hidden state / attention map) matches ours."""
    for key in ref.keys():
        expected, actual = ref[key], getattr(ours, key)
        if isinstance(expected, torch.Tensor):
            assert_close(actual, expected)
        elif isinstance(expected, tuple) and expected and isinstance(expected[0], torch.Tensor):
            assert len(actual) == len(expected), key
            for a, e in zip(actual, expected):
                assert_close(a, e)


def saved_names(folder: Path) -> set[str]:
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return set(f.keys())


def assert_clean(info: dict) -> None:
    assert (list(info["missing_keys"]), list(info["unexpected_keys"]), list(info["mismatched_keys"])) == ([], [], [])


# --------------------------------------------------------------------------------------------------------------
# 1. parity, both directions
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("name", CLASSES)
def test_reference_checkpoint_loads_into_ours(tmp_path, name, impl):
    ref = reference(name)
    ref.save_pretrained(tmp_path)
    ours, info = getattr(pretrained, name).from_pretrained(tmp_path, output_loading_info=True, attn_implementation=impl)
    assert_clean(info)
    ref_state, ours_state = ref.state_dict(), ours.state_dict()
    assert set(ours_state) == set(ref_state)
    for key, tensor in ref_state.items():
        assert torch.equal(ours_state[key], tensor), key
    assert_outputs_close(run(ours, output_hidden_states=True, **labels(name)),
                         run(ref, output_hidden_states=True, **labels(name)))


@pytest.mark.parametrize("name", CLASSES)
def test_our_checkpoint_loads_into_reference(tmp_path, name):
    ours = ours_from_config(name)
    ours.save_pretrained(tmp_path)
    ref, info = getattr(transformers, name).from_pretrained(tmp_path, output_loading_info=True)
    assert_clean(info)
    tied = {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}
    assert saved_names(tmp_path) == set(ref.state_dict()) - tied  # the reference writes the same names
    auto = getattr(transformers, "AutoModel" if name == "BertModel" else "AutoModelFor" + name[len("BertFor"):])
    assert type(auto.from_pretrained(tmp_path)) is type(ref)
    assert_outputs_close(run(ours, output_hidden_states=True, **labels(name)),
                         run(ref.eval(), output_hidden_states=True, **labels(name)))


def test_auto_classes_pick_bert(tmp_path):
    reference("BertForMaskedLM").save_pretrained(tmp_path)
    assert type(pretrained.AutoModelForMaskedLM.from_pretrained(tmp_path)) is pretrained.BertForMaskedLM
    assert type(pretrained.AutoModel.from_pretrained(tmp_path)) is pretrained.BertModel
    assert type(pretrained.AutoConfig.from_pretrained(tmp_path)) is pretrained.BertConfig


def test_attention_maps_match_reference_eager(tmp_path):
    ref = reference("BertModel", attn_implementation="eager")
    ref.save_pretrained(tmp_path)
    ours = pretrained.BertModel.from_pretrained(tmp_path)  # sdpa by default: attention maps switch to eager
    got, want = run(ours, output_attentions=True), run(ref, output_attentions=True)
    assert len(got.attentions) == TINY["num_hidden_layers"]
    assert got.attentions[0].shape == (B, TINY["num_attention_heads"], T, T)
    assert_outputs_close(got, want)
    assert torch.all(got.attentions[0][1, :, :, 6:] == 0)  # padding is never attended to


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_masked_lm_ties(tmp_path, tie):
    ref = reference("BertForMaskedLM", tie_word_embeddings=tie)
    ref.save_pretrained(tmp_path / "ref")
    ours = pretrained.BertForMaskedLM.from_pretrained(tmp_path / "ref")
    head = ours.cls.predictions
    assert (head.decoder.weight is ours.bert.embeddings.word_embeddings.weight) is tie
    assert (head.decoder.bias is head.bias) is tie
    assert_outputs_close(run(ours), run(ref))
    ours.save_pretrained(tmp_path / "ours")
    assert saved_names(tmp_path / "ours") == saved_names(tmp_path / "ref")
    back, info = transformers.BertForMaskedLM.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert_clean(info)
    assert_outputs_close(run(ours), run(back.eval()))


def test_legacy_checkpoint_names_load(tmp_path):
    """LayerNorm.gamma/beta (TF-era names) and a saved position_ids buffer (before 4.31) load cleanly."""
    ref = reference("BertForMaskedLM")
    ref.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    legacy = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
              for k, v in state.items()}
    assert sum(".gamma" in k for k in legacy) == 2 * TINY["num_hidden_layers"] + 2
    legacy["bert.embeddings.position_ids"] = torch.arange(TINY["max_position_embeddings"])[None]
    save_file(legacy, tmp_path / "model.safetensors", metadata={"format": "pt"})
    ours, info = pretrained.BertForMaskedLM.from_pretrained(tmp_path, output_loading_info=True)
    assert_clean(info)
    assert_outputs_close(run(ours), run(ref))


def test_base_model_from_task_checkpoint_reports_like_reference(tmp_path):
    reference("BertForMaskedLM").save_pretrained(tmp_path)  # no pooler in a masked-LM checkpoint
    ours, info = pretrained.BertModel.from_pretrained(tmp_path, output_loading_info=True)
    ref, ref_info = transformers.BertModel.from_pretrained(tmp_path, output_loading_info=True)
    assert sorted(info["missing_keys"]) == sorted(ref_info["missing_keys"]) == ["pooler.dense.bias",
                                                                                 "pooler.dense.weight"]
    assert sorted(info["unexpected_keys"]) == sorted(ref_info["unexpected_keys"])
    with torch.no_grad():
        assert_close(run(ours).last_hidden_state, run(ref.eval()).last_hidden_state)


def test_without_pooling_layer():
    config = pretrained.BertConfig(**TINY)
    model = pretrained.BertModel(config, add_pooling_layer=False).eval()
    assert model.pooler is None and not any(k.startswith("pooler.") for k in model.state_dict())
    out = run(model)
    assert out.pooler_output is None and out.last_hidden_state.shape == (B, T, TINY["hidden_size"])


@pytest.mark.parametrize("problem", ["regression", "multi_label_classification"])
def test_sequence_classification_loss_kinds(tmp_path, problem):
    num_labels = 1 if problem == "regression" else 3
    ref = reference("BertForSequenceClassification", num_labels=num_labels)
    ref.save_pretrained(tmp_path)
    ours = pretrained.BertForSequenceClassification.from_pretrained(tmp_path)
    target = torch.tensor([0.5, -1.0]) if problem == "regression" else torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    got, want = run(ours, labels=target), run(ref, labels=target)
    assert ours.config.problem_type == ref.config.problem_type == problem
    assert_close(got.loss, want.loss)


def test_decoder_mode_is_causal_like_reference(tmp_path):
    ref = reference("BertModel", is_decoder=True)
    ref.save_pretrained(tmp_path)
    ours = pretrained.BertModel.from_pretrained(tmp_path)
    with torch.no_grad():
        for kwargs in ({}, {"attention_mask": inputs()["attention_mask"]}):
            ids = inputs()["input_ids"]
            assert_close(ours(ids, **kwargs).last_hidden_state, ref(ids, use_cache=False, **kwargs).last_hidden_state)


# --------------------------------------------------------------------------------------------------------------
# 2. model behaviour
# --------------------------------------------------------------------------------------------------------------
def test_fresh_model_buffers_and_bias():
    model = ours_from_config("BertForMaskedLM")
    emb = model.bert.embeddings
    assert torch.equal(emb.position_ids, torch.arange(TINY["max_position_embeddings"])[None])
    assert torch.equal(emb.token_type_ids, torch.zeros_like(emb.token_type_ids))
    assert torch.equal(model.cls.predictions.bias, torch.zeros(TINY["vocab_size"]))
    assert "bert.embeddings.position_ids" not in model.state_dict()  # computed, never saved


def test_defaults_equal_explicit_inputs():
    """token_type_ids default to 0, position_ids to 0..T-1; inputs_embeds replaces the id lookup; tuples on request."""
    model = ours_from_config("BertModel")
    ids = inputs()["input_ids"]
    with torch.no_grad():
        plain = model(ids).last_hidden_state
        explicit = model(ids, token_type_ids=torch.zeros_like(ids), position_ids=torch.arange(T)[None],
                         attention_mask=torch.ones_like(ids)).last_hidden_state
        embedded = model(inputs_embeds=model.embeddings.word_embeddings(ids)).last_hidden_state
        as_tuple = model(ids, return_dict=False)
    assert torch.equal(plain, explicit) and torch.equal(plain, embedded)
    assert len(as_tuple) == 2 and torch.equal(as_tuple[0], plain)


def test_chunked_feed_forward_changes_nothing():
    chunked = ours_from_config("BertModel", chunk_size_feed_forward=2)
    plain = ours_from_config("BertModel")
    assert_close(run(chunked).last_hidden_state, run(plain).last_hidden_state)


def test_gradient_checkpointing_gives_same_gradients():
    model = ours_from_config("BertForSequenceClassification", hidden_dropout_prob=0.0,
                             attention_probs_dropout_prob=0.0).train()
    grads = []
    for enabled in (False, True):
        (model.gradient_checkpointing_enable if enabled else model.gradient_checkpointing_disable)()
        model.zero_grad()
        model(**inputs(), labels=torch.tensor([2, 0])).loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        assert_close(a, b)


def test_resize_token_embeddings_keeps_head_tied():
    model = ours_from_config("BertForMaskedLM")
    before = run(model).logits
    model.resize_token_embeddings(104)
    head = model.cls.predictions
    assert head.decoder.weight is model.bert.embeddings.word_embeddings.weight and head.decoder.bias is head.bias
    after = run(model).logits
    assert after.shape[-1] == 104 and head.bias.shape == (104,)
    assert_close(after[..., :99], before)


def test_bad_inputs_and_configs():
    model = ours_from_config("BertModel")
    ids = inputs()["input_ids"]
    with pytest.raises(ValueError, match="exactly one"):
        model(ids, inputs_embeds=model.embeddings.word_embeddings(ids))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(torch.ones(1, TINY["max_position_embeddings"] + 1, dtype=torch.long))
    with pytest.raises(ConfigError, match="relative_key"):
        pretrained.BertConfig(**TINY, position_embedding_type="relative_key")
    with pytest.raises(ConfigError, match="multiple"):
        pretrained.BertConfig(hidden_size=30, num_attention_heads=4)


# --------------------------------------------------------------------------------------------------------------
# 3. head masks and head pruning
# --------------------------------------------------------------------------------------------------------------
PRUNE = {0: [0, 2], 1: [1]}


def mask_for(prune: dict[int, list[int]], heads: int = TINY["num_attention_heads"]) -> torch.Tensor:
    mask = torch.ones(TINY["num_hidden_layers"], heads)
    for layer, hs in prune.items():
        mask[layer, hs] = 0.0
    return mask


def test_pruning_arithmetic():
    """Rows to keep, in original head numbering, after earlier prunes (pure; sizes only)."""
    from pretrained.layers.pruning import check_heads, kept_rows, remaining_heads

    assert kept_rows(4, 2, already_pruned=(), remove={0, 2}).tolist() == [2, 3, 6, 7]
    assert kept_rows(4, 2, already_pruned={0, 2}, remove={1}).tolist() == [2, 3]  # original head 3, now slot 1
    assert kept_rows(4, 2, already_pruned={0, 2}, remove={1, 3}).tolist() == []
    assert remaining_heads(4, {0, 2}) == [1, 3]
    assert check_heads({"1": [3, 3], 0: []}, [4, 4]) == {1: {3}, 0: set()}  # JSON keys arrive as strings


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_zeroing_heads_equals_pruning_them(impl):
    model = ours_from_config("BertForSequenceClassification", attn_implementation=impl)
    masked = run(model, head_mask=mask_for(PRUNE), output_attentions=True)
    assert torch.all(masked.attentions[0][:, [0, 2]] == 0) and torch.all(masked.attentions[1][:, 1] == 0)
    pruned = copy.deepcopy(model)
    pruned.prune_heads(PRUNE)
    assert_close(run(pruned).logits, masked.logits)
    assert not torch.allclose(run(model).logits, masked.logits, atol=1e-3)  # the mask did something
    # a head mask over the original heads still applies to a pruned model: the kept heads' entries are used
    more = mask_for({0: [0, 1, 2], 1: [1]})
    assert_close(run(pruned, head_mask=more).logits, run(model, head_mask=more).logits)
    single = torch.tensor([1.0, 0.5, 1.0, 1.0])  # (heads,): the same mask for every layer
    assert_close(run(model, head_mask=single).logits, run(model, head_mask=single.expand(2, 4)).logits)


def test_pruning_every_head_of_a_layer(tmp_path):
    model = ours_from_config("BertModel")
    everything = {0: list(range(TINY["num_attention_heads"]))}
    masked = run(model, head_mask=mask_for(everything)).last_hidden_state
    model.prune_heads(everything)
    assert model.encoder.layer[0].attention.self.query.weight.shape == (0, TINY["hidden_size"])
    assert_close(run(model).last_hidden_state, masked)
    model.save_pretrained(tmp_path)
    assert_close(run(pretrained.BertModel.from_pretrained(tmp_path)).last_hidden_state, masked)


def test_prune_heads_rejects_bad_requests():
    model = ours_from_config("BertModel")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"head 4 of layer 1 is out of range; valid heads are 0\.\.3"):
        model.prune_heads({0: [1], 1: [4]})
    with pytest.raises(ValueError, match=r"head -1 of layer 0 .* 0\.\.3"):
        model.prune_heads({0: [-1]})
    with pytest.raises(ValueError, match=r"layer 2 does not exist; the model has layers 0\.\.1"):
        model.prune_heads({2: [0]})
    with pytest.raises(TypeError, match="must be an int"):
        model.prune_heads({0: ["first"]})
    after = model.state_dict()  # nothing was pruned by the failed requests, not even layer 0's valid head
    assert all(after[k].shape == v.shape for k, v in before.items()) and model.config.pruned_heads == {}
    with pytest.raises(ValueError, match="head 7 of layer 0"):  # a config naming impossible heads fails early
        pretrained.BertModel(pretrained.BertConfig(**TINY, pruned_heads={"0": [7]}))


# ---- against transformers 4.57 (recorded) ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def recorded():
    expected = json.loads((RECORDED / "expected.json").read_text())
    outputs = load_file(RECORDED / "outputs.safetensors")
    expected["inputs"] = {k: torch.tensor(v) for k, v in expected["inputs"].items()}
    expected["prunes"] = [{int(k): v for k, v in p.items()} for p in expected["prunes"]]
    return expected, outputs


MODELS = {"base": "BertModel", "classifier": "BertForSequenceClassification"}


def check_step(model, recorded, key: str, step: str, **kwargs) -> None:
    expected, outputs = recorded
    with torch.no_grad():
        out = model(**expected["inputs"], **kwargs)
    fields = [f for f in ("last_hidden_state", "pooler_output", "logits") if f"{key}.{step}.{f}" in outputs]
    assert fields
    for field in fields:
        assert_close(getattr(out, field), outputs[f"{key}.{step}.{field}"])
    record = expected["models"][key][step]
    assert {k: "x".join(map(str, v.shape)) for k, v in model.state_dict().items()} == record["shapes"]
    assert {str(k): sorted(v) for k, v in model.config.pruned_heads.items()} == record["pruned_heads"]


@pytest.mark.parametrize("key", MODELS)
def test_prune_heads_matches_recorded_reference(tmp_path, recorded, key):
    expected, _ = recorded
    model = getattr(pretrained, MODELS[key]).from_pretrained(RECORDED / "unpruned")
    check_step(model, recorded, key, "unpruned")
    check_step(model, recorded, key, "head_mask", head_mask=torch.tensor(expected["head_mask"]))
    for i, prune in enumerate(expected["prunes"], 1):
        model.prune_heads(prune)
        check_step(model, recorded, key, f"step{i}")
    # weights identical to the ones 4.57 saved after the same prunes
    theirs = load_file(RECORDED / ("pruned" if key == "classifier" else "pruned_base") / "model.safetensors")
    mine = model.state_dict()
    assert set(theirs) == set(mine)
    for name, tensor in theirs.items():
        assert torch.equal(mine[name], tensor), name

    model.save_pretrained(tmp_path)  # save -> reload in ours: same shapes, same outputs
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["pruned_heads"] == expected["saved_pruned_heads"] == {"0": [0, 1, 2], "1": [1]}
    reloaded, info = type(model).from_pretrained(tmp_path, output_loading_info=True)
    assert_clean(info)
    check_step(reloaded, recorded, key, f"step{len(expected['prunes'])}")
    assert reloaded.base_model.encoder.layer[0].attention.pruned_heads == {0, 1, 2}


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("key", MODELS)
def test_reference_pruned_checkpoint_loads(recorded, key, impl):
    expected, _ = recorded
    folder = RECORDED / ("pruned" if key == "classifier" else "pruned_base")
    model, info = getattr(pretrained, MODELS[key]).from_pretrained(folder, output_loading_info=True,
                                                                   attn_implementation=impl)
    assert_clean(info)
    check_step(model, recorded, key, f"step{len(expected['prunes'])}")
    attention = model.base_model.encoder.layer[0].attention
    assert attention.pruned_heads == {0, 1, 2} and attention.self.num_attention_heads == 1
    assert attention.self.all_head_size == TINY["hidden_size"] // TINY["num_attention_heads"]
    model.prune_heads({0: [0, 1], 1: [1]})  # pruning what is already gone changes nothing
    check_step(model, recorded, key, f"step{len(expected['prunes'])}")
