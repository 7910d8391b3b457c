"""Model utilities every `PreTrainedModel` has: parameter counts, memory, embeddings (get/set/resize),
gradient checkpointing, the 4.x mask/FLOP/memory-hook helpers, dtype on creation, eval mode and what
loading initialises.

Where the reference (5.x) still has a method, our result is compared with its; the helpers 5.x removed
(`get_extended_attention_mask`, `invert_attention_mask`, `get_head_mask`, `estimate_tokens`,
`floating_point_ops`, memory hooks) are checked against values derived by hand from their 4.57 semantics.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import pretrained

transformers = pytest.importorskip("transformers")

MIN32 = torch.finfo(torch.float32).min


def ours_from_config(config: dict, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return pretrained.LlamaForCausalLM.from_config(pretrained.LlamaConfig(**config), **kwargs)


def expected_counts(config: dict) -> dict[str, int]:
    """Parameter counts of a Llama by hand: embeddings, head (0 when tied) and everything else."""
    V, C, I = config["vocab_size"], config["hidden_size"], config["intermediate_size"]
    H, K, L = config["num_attention_heads"], config["num_key_value_heads"], config["num_hidden_layers"]
    D = C // H
    per_layer = C * H * D + 2 * C * K * D + H * D * C + 3 * C * I + 2 * C  # q, k+v, o, mlp, two norms
    return {"embed": V * C, "head": 0 if config["tie_word_embeddings"] else V * C, "body": L * per_layer + C}


# --------------------------------------------------------------------------------------------------------------
# parameter counts and memory
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_num_parameters(tiny_llama_config, reference_llama, tie):
    config = tiny_llama_config(tie_word_embeddings=tie)
    ours, ref = ours_from_config(config), reference_llama(config)
    n = expected_counts(config)
    expected = {
        (False, False): n["embed"] + n["head"] + n["body"],
        (False, True): n["head"] + n["body"],  # nn.Embedding tables excluded; an untied head is a Linear
    }
    for (only_trainable, exclude_embeddings), value in expected.items():
        kwargs = {"only_trainable": only_trainable, "exclude_embeddings": exclude_embeddings}
        assert ours.num_parameters(**kwargs) == ref.num_parameters(**kwargs) == value, kwargs

    for model in (ours, ref):  # freeze the embedding table (and with it a tied head)
        model.model.embed_tokens.weight.requires_grad_(False)
    for exclude_embeddings in (False, True):
        kwargs = {"only_trainable": True, "exclude_embeddings": exclude_embeddings}
        assert ours.num_parameters(**kwargs) == ref.num_parameters(**kwargs) == n["head"] + n["body"], kwargs
    assert ours.model.num_parameters() == n["embed"] + n["body"]


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_get_memory_footprint(tiny_llama_config, reference_llama, tie, dtype):
    config = tiny_llama_config(tie_word_embeddings=tie)
    ours = ours_from_config(config, dtype=dtype)
    ref = reference_llama(config).to(dtype)
    n = expected_counts(config)
    param_bytes = (n["embed"] + n["head"] + n["body"]) * dtype.itemsize  # a tied table counted once
    assert ours.get_memory_footprint(return_buffers=False) == ref.get_memory_footprint(return_buffers=False) \
        == param_bytes
    buffer_bytes = sum(b.nelement() * b.element_size() for b in ours.buffers())
    assert buffer_bytes > 0  # the rotary inverse frequencies
    assert ours.get_memory_footprint() == param_bytes + buffer_bytes


# --------------------------------------------------------------------------------------------------------------
# embeddings
# --------------------------------------------------------------------------------------------------------------
def test_get_and_set_embeddings(tiny_llama_config, token_ids):
    ours = ours_from_config(tiny_llama_config())
    assert ours.get_input_embeddings() is ours.model.embed_tokens
    assert ours.model.get_input_embeddings() is ours.model.embed_tokens
    assert ours.get_output_embeddings() is ours.lm_head
    assert ours.model.get_output_embeddings() is None  # a base model has no head

    new_in = nn.Embedding(128, 32)
    ours.set_input_embeddings(new_in)
    assert ours.get_input_embeddings() is new_in and ours.model.embed_tokens is new_in
    new_out = nn.Linear(32, 128, bias=False)
    ours.set_output_embeddings(new_out)
    assert ours.get_output_embeddings() is new_out and ours.lm_head is new_out
    ids = token_ids(1, 5)
    with torch.no_grad():  # the forward uses the new modules
        hidden = ours.model(inputs_embeds=new_in(ids)).last_hidden_state
        assert torch.equal(ours(ids).logits, new_out(hidden))


def _new_rows_near_mean(new: torch.Tensor, old: torch.Tensor) -> None:
    # mean resizing samples N(mean, 1e-9 * covariance): the new rows sit on the old rows' mean.
    torch.testing.assert_close(new, old.mean(0).expand_as(new), atol=1e-4, rtol=0)


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_resize_token_embeddings(tmp_path, tiny_llama_config, reference_llama, token_ids, tie):
    config = tiny_llama_config(tie_word_embeddings=tie)
    ours, ref = ours_from_config(config), reference_llama(config)
    old_embed = ours.model.embed_tokens.weight.detach().clone()
    old_head = ours.lm_head.weight.detach().clone()

    # grow, rounded up to a multiple of 64
    returned = ours.resize_token_embeddings(150, pad_to_multiple_of=64)
    ref.resize_token_embeddings(150, pad_to_multiple_of=64)
    assert returned is ours.get_input_embeddings()
    assert returned.num_embeddings == ref.get_input_embeddings().num_embeddings == 192
    assert ours.config.vocab_size == ref.config.vocab_size == 192
    embed, head = ours.model.embed_tokens.weight, ours.lm_head.weight
    assert embed.shape == head.shape == (192, 32)
    assert ours.lm_head.out_features == ref.lm_head.out_features == 192
    assert torch.equal(embed[:128], old_embed)  # old rows unchanged
    _new_rows_near_mean(embed[128:], old_embed)
    if tie:
        assert head is embed
    else:
        assert head is not embed
        assert torch.equal(head[:128], old_head)
        _new_rows_near_mean(head[128:], old_head)
    ids = token_ids(2, 6, vocab=192)
    with torch.no_grad():
        assert ours(ids).logits.shape == (2, 6, 192)

    # the resized model saves, and the reference reads it back with the new vocabulary
    ours.eval().save_pretrained(tmp_path)
    theirs = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert theirs.config.vocab_size == 192
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, ours(ids).logits, atol=1e-5, rtol=0)

    # shrink: the first rows are kept
    ours.resize_token_embeddings(100)
    assert ours.config.vocab_size == 100 and ours.get_input_embeddings().num_embeddings == 100
    assert torch.equal(ours.model.embed_tokens.weight, old_embed[:100])
    assert ours.lm_head.weight.shape == (100, 32) and ours.lm_head.out_features == 100
    assert (ours.lm_head.weight is ours.model.embed_tokens.weight) == tie
    if not tie:
        assert torch.equal(ours.lm_head.weight, old_head[:100])

    # only padding: None keeps the size, then rounds it up
    assert ours.resize_token_embeddings(None, pad_to_multiple_of=48).num_embeddings == 144
    assert ours.resize_token_embeddings() is ours.get_input_embeddings()  # nothing asked, nothing done
    assert ours.config.vocab_size == 144


def test_resize_without_mean_resizing_draws_from_init_distribution(tiny_llama_config):
    config = tiny_llama_config(vocab_size=64)
    ours = ours_from_config(config)
    old = ours.model.embed_tokens.weight.detach().clone()
    ours.resize_token_embeddings(64 + 512, mean_resizing=False)
    new = ours.model.embed_tokens.weight[64:]
    assert torch.equal(ours.model.embed_tokens.weight[:64], old)
    assert abs(new.std().item() - config["initializer_range"]) < 0.02  # N(0, initializer_range)
    assert abs(new.mean().item()) < 0.02


# --------------------------------------------------------------------------------------------------------------
# gradient checkpointing
# --------------------------------------------------------------------------------------------------------------
def test_gradient_checkpointing_gives_same_gradients(tiny_llama_config, token_ids):
    # attention dropout on: checkpointing must replay the same random mask when it recomputes a layer
    ours = ours_from_config(tiny_llama_config(attention_dropout=0.3)).train()
    ids = token_ids(2, 8)
    calls = []
    ours.model.layers[0].register_forward_pre_hook(lambda *_: calls.append(1))

    def gradients():
        ours.zero_grad()
        calls.clear()
        torch.manual_seed(123)
        ours(ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in ours.named_parameters()}, len(calls)

    plain, plain_calls = gradients()
    assert not ours.is_gradient_checkpointing
    ours.gradient_checkpointing_enable()
    assert ours.is_gradient_checkpointing and ours.model.gradient_checkpointing
    checkpointed, checkpointed_calls = gradients()
    assert (plain_calls, checkpointed_calls) == (1, 2)  # the layer really was recomputed in backward
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, atol=1e-6, rtol=1e-5, msg=name)

    ours.gradient_checkpointing_disable()
    assert not ours.is_gradient_checkpointing
    again, again_calls = gradients()
    assert again_calls == 1
    for name, grad in plain.items():
        torch.testing.assert_close(again[name], grad, atol=1e-6, rtol=1e-5, msg=name)


# --------------------------------------------------------------------------------------------------------------
# the 4.x helpers 5.x removed (semantics of 4.57)
# --------------------------------------------------------------------------------------------------------------
def test_invert_attention_mask(tiny_llama_config):
    ours = ours_from_config(tiny_llama_config())
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    inverted = ours.invert_attention_mask(mask)
    assert inverted.shape == (2, 1, 1, 3) and inverted.dtype == torch.float32
    expected = torch.tensor([[0.0, 0.0, MIN32], [0.0, MIN32, MIN32]])[:, None, None, :]
    assert torch.equal(inverted, expected)

    mask3d = torch.tensor([[[1, 0], [1, 1]]])
    inverted = ours.invert_attention_mask(mask3d)
    assert inverted.shape == (1, 1, 2, 2)
    assert torch.equal(inverted, torch.tensor([[[[0.0, MIN32], [0.0, 0.0]]]]))

    half = ours_from_config(tiny_llama_config(), dtype=torch.bfloat16)
    inverted = half.invert_attention_mask(mask)
    assert inverted.dtype == torch.bfloat16 and inverted[0, 0, 0, 2] == torch.finfo(torch.bfloat16).min


def test_get_extended_attention_mask(tiny_llama_config):
    ours = ours_from_config(tiny_llama_config())
    mask = torch.tensor([[1, 1, 1], [0, 1, 1]])
    # an encoder (is_decoder False, the default): padding only, broadcast over queries
    ext = ours.get_extended_attention_mask(mask, (2, 3))
    assert ext.shape == (2, 1, 1, 3) and ext.dtype == torch.float32
    assert torch.equal(ext, torch.tensor([[0.0, 0.0, 0.0], [MIN32, 0.0, 0.0]])[:, None, None, :])
    assert ours.get_extended_attention_mask(mask, (2, 3), dtype=torch.float16).dtype == torch.float16

    # a decoder: causal and padding
    ours.config.is_decoder = True
    ext = ours.get_extended_attention_mask(mask, (2, 3))
    assert ext.shape == (2, 1, 3, 3)
    causal = torch.ones(3, 3).tril()
    keep = causal[None] * mask[:, None, :].float()
    assert torch.equal(ext[:, 0], (1.0 - keep) * MIN32)

    # a decoder continuing after 3 cached tokens: the cached prefix is visible to every new query
    mask = torch.tensor([[1, 1, 1, 1, 1]])
    ext = ours.get_extended_attention_mask(mask, (1, 2))
    assert ext.shape == (1, 1, 2, 5)
    keep = torch.tensor([[1.0, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    assert torch.equal(ext[0, 0], (1.0 - keep) * MIN32)

    # a 3-d mask is taken as given
    mask3d = torch.tensor([[[1, 0], [1, 1]]])
    assert torch.equal(ours.get_extended_attention_mask(mask3d, (1, 2)), torch.tensor([[[[0.0, MIN32], [0.0, 0.0]]]]))
    with pytest.raises(ValueError):
        ours.get_extended_attention_mask(torch.ones(3), (3,))


def test_get_head_mask(tiny_llama_config):
    config = tiny_llama_config(num_hidden_layers=3)
    ours = ours_from_config(config)
    L, H = 3, config["num_attention_heads"]
    assert ours.get_head_mask(None, L) == [None] * L

    per_head = torch.tensor([1.0, 0.0, 1.0, 0.5])
    mask = ours.get_head_mask(per_head, L)
    assert mask.shape == (L, 1, H, 1, 1) and mask.dtype == torch.float32
    for layer in range(L):
        assert torch.equal(mask[layer, 0, :, 0, 0], per_head)

    per_layer = torch.arange(L * H, dtype=torch.float32).reshape(L, H)
    mask = ours.get_head_mask(per_layer, L)
    assert mask.shape == (L, 1, H, 1, 1)
    assert torch.equal(mask[:, 0, :, 0, 0], per_layer)
    assert ours.get_head_mask(per_layer, L, is_attention_chunked=True).shape == (L, 1, H, 1, 1, 1)

    half = ours_from_config(config, dtype=torch.float16)
    assert half.get_head_mask(per_head, L).dtype == torch.float16


def test_estimate_tokens_and_floating_point_ops(tiny_llama_config, token_ids):
    config = tiny_llama_config()
    ours = ours_from_config(config)
    batch = {"input_ids": token_ids(2, 7), "attention_mask": torch.ones(2, 7)}
    assert ours.estimate_tokens(batch) == 14
    assert ours.estimate_tokens({"attention_mask": torch.ones(2, 7)}) == 0  # no main input
    n = expected_counts(config)
    non_embedding = n["head"] + n["body"]
    assert ours.floating_point_ops(batch) == 6 * 14 * non_embedding
    assert ours.floating_point_ops(batch, exclude_embeddings=False) == 6 * 14 * (non_embedding + n["embed"])


def test_memory_hooks(tiny_llama_config, token_ids):
    ours = ours_from_config(tiny_llama_config()).eval()
    ours.add_memory_hooks()
    modules = list(ours.modules())
    assert all(m.mem_rss_pre_forward == m.mem_rss_post_forward == m.mem_rss_diff == 0 for m in modules)
    with torch.no_grad():
        ours(token_ids(1, 5))
    ran = [m for m in modules if m.mem_rss_pre_forward]
    assert ours in ran and ours.model.layers[0].mlp in ran
    for m in ran:
        assert m.mem_rss_pre_forward > 0 and m.mem_rss_post_forward > 0
        assert m.mem_rss_diff == m.mem_rss_post_forward - m.mem_rss_pre_forward

    ours.reset_memory_hooks_state()
    assert all(m.mem_rss_pre_forward == m.mem_rss_post_forward == m.mem_rss_diff == 0 for m in modules)
    ours.remove_memory_hooks()
    with torch.no_grad():
        ours(token_ids(1, 5))
    assert all(m.mem_rss_pre_forward == 0 for m in modules)


# --------------------------------------------------------------------------------------------------------------
# creation, eval mode, and what loading initialises
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, "bfloat16"], ids=["torch.bfloat16", "'bfloat16'"])
def test_from_config_in_bf16(tiny_llama_config, token_ids, dtype):
    ours = ours_from_config(tiny_llama_config(), dtype=dtype)
    assert {p.dtype for p in ours.parameters()} == {torch.bfloat16}
    assert ours.dtype == torch.bfloat16
    assert torch.get_default_dtype() == torch.float32  # the global default is left alone
    assert ours.training  # a fresh model is in training mode, as an nn.Module is
    with torch.no_grad():
        out = ours.eval()(token_ids(1, 5)).logits
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_from_pretrained_returns_eval_mode(tmp_path, tiny_llama_config):
    ours_from_config(tiny_llama_config()).save_pretrained(tmp_path)
    for cls in (pretrained.AutoModelForCausalLM, pretrained.AutoModel, pretrained.LlamaForCausalLM):
        model = cls.from_pretrained(tmp_path)
        assert not model.training
        assert not any(m.training for m in model.modules())


@pytest.mark.parametrize(
    "removed, config_overrides",
    [
        ("model.layers.1.mlp.up_proj.weight", {}),
        ("model.layers.0.post_attention_layernorm.weight", {}),
        ("model.layers.0.self_attn.q_proj.weight", {"attention_bias": True}),  # its bias stays loaded
    ],
    ids=["linear", "norm", "weight-beside-a-loaded-bias"],
)
def test_only_missing_weights_are_initialised(tmp_path, tiny_llama_config, reference_llama, monkeypatch,
                                               removed, config_overrides):
    config = tiny_llama_config(**config_overrides)
    reference_llama(config).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    # Norms (ones) and biases (zeros) look like fresh initialisation: give every tensor values no init gives,
    # so a tensor initialised instead of loaded cannot pass for the file's.
    state = {name: torch.rand_like(t) + 0.5 for name, t in state.items()}
    original = state.pop(removed)
    save_file(state, str(weights), metadata={"format": "pt"})

    initialised = []
    real_init = pretrained.LlamaForCausalLM._init_weights

    def spy(self, module):
        initialised.append(module)
        return real_init(self, module)

    monkeypatch.setattr(pretrained.LlamaForCausalLM, "_init_weights", spy)
    ours, info = pretrained.AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    _, ref_info = transformers.LlamaForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == sorted(ref_info["missing_keys"]) == [removed]
    assert info["unexpected_keys"] == []

    owner = ours.get_submodule(removed.rpartition(".")[0])
    assert initialised == [owner]  # nothing else went through initialisation
    loaded = ours.state_dict()
    for name, tensor in state.items():
        assert torch.equal(loaded[name], tensor), name  # every other tensor is exactly the file's
    assert not any(p.is_meta for p in ours.parameters()) and not any(b.is_meta for b in ours.buffers())

    fresh = loaded[removed]
    assert not torch.equal(fresh, original)
    if "norm" in removed:
        assert torch.equal(fresh, torch.ones_like(fresh))
    else:
        assert abs(fresh.std().item() - config["initializer_range"]) < 0.05
        assert abs(fresh.mean().item()) < 0.05


def test_config_written_with_the_model_records_its_dtype(tmp_path, tiny_llama_config):
    ours_from_config(tiny_llama_config(), dtype=torch.bfloat16).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["dtype"] == "bfloat16" and saved["architectures"] == ["LlamaForCausalLM"]
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
