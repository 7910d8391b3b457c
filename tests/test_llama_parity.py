"""Llama parity with the reference library, through the files both read and write.

Every test builds a tiny seeded model, goes through a checkpoint on disk (never through a shared in-memory
state dict), and compares outputs in float32 within 1e-5.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open

import pretrained

transformers = pytest.importorskip("transformers")

ATOL = 1e-5  # float32 parity


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float = ATOL, rtol: float = 0.0) -> None:
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


@torch.no_grad()
def logits(model, ids: torch.Tensor, **kwargs) -> torch.Tensor:
    return model(ids, **kwargs).logits


def saved_tensor_names(folder) -> dict[str, str]:
    """Every tensor name in the folder's safetensors files -> the file holding it."""
    names = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                assert key not in names, f"{key} written twice"
                names[key] = path.name
    return names


def shard_kwargs(max_shard_size: str | None) -> dict:
    return {} if max_shard_size is None else {"max_shard_size": max_shard_size}


def assert_clean_load(info: dict) -> None:
    assert list(info["missing_keys"]) == []
    assert list(info["unexpected_keys"]) == []
    assert list(info["mismatched_keys"]) == []


def left_padding_mask(batch: int, seq: int, pads: list[int]) -> torch.Tensor:
    mask = torch.ones(batch, seq, dtype=torch.long)
    for row, n in enumerate(pads):
        mask[row, :n] = 0
    return mask


# --------------------------------------------------------------------------------------------------------------
# 1. reference checkpoint -> our model
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("max_shard_size", [None, "20KB"], ids=["single", "sharded"])
def test_reference_checkpoint_loads_into_ours(tmp_path, tiny_llama_config, reference_llama, token_ids,
                                              max_shard_size, num_kv_heads):
    ref = reference_llama(tiny_llama_config(num_key_value_heads=num_kv_heads))
    ref.save_pretrained(tmp_path, **shard_kwargs(max_shard_size))
    files = set(saved_tensor_names(tmp_path).values())
    if max_shard_size is None:
        assert files == {"model.safetensors"}
    else:
        assert len(files) > 1 and (tmp_path / "model.safetensors.index.json").is_file()

    ours, info = pretrained.AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert type(ours) is pretrained.LlamaForCausalLM
    assert_clean_load(info)
    assert ours.config.num_key_value_heads == num_kv_heads
    ours_state, ref_state = ours.state_dict(), ref.state_dict()
    assert set(ours_state) == set(ref_state)
    for name, tensor in ref_state.items():
        assert torch.equal(ours_state[name], tensor), name
    ids = token_ids(2, 11)
    assert_close(logits(ours, ids), logits(ref, ids))


def test_base_model_from_causal_lm_checkpoint(tmp_path, tiny_llama_config, reference_llama, token_ids):
    ref = reference_llama(tiny_llama_config())
    ref.save_pretrained(tmp_path)
    ours, info = pretrained.AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert type(ours) is pretrained.LlamaModel
    assert info["missing_keys"] == []
    assert info["unexpected_keys"] == ["lm_head.weight"]  # the head has no place in a base model
    ref_base = transformers.LlamaModel.from_pretrained(tmp_path).eval()
    ids = token_ids(2, 9)
    with torch.no_grad():
        hidden = ours(ids).last_hidden_state
        assert_close(hidden, ref_base(ids).last_hidden_state)
        assert_close(hidden, ref.model(ids).last_hidden_state)


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_causal_lm_from_base_model_checkpoint(tmp_path, tiny_llama_config, reference_llama, token_ids, tie):
    config = tiny_llama_config(tie_word_embeddings=tie)
    ref_base = reference_llama(config, base=True)
    ref_base.save_pretrained(tmp_path)
    assert not any(name.startswith("model.") for name in saved_tensor_names(tmp_path))  # no base_model_prefix

    ours, info = pretrained.AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    ref, ref_info = transformers.LlamaForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    expected_missing = [] if tie else ["lm_head.weight"]
    assert sorted(ref_info["missing_keys"]) == expected_missing  # what the reference reports ...
    assert info["missing_keys"] == expected_missing  # ... and we report the same
    assert info["unexpected_keys"] == []

    ids = token_ids(2, 9)
    with torch.no_grad():
        out = ours(ids, output_hidden_states=True)
        assert_close(out.hidden_states[-1], ref_base(ids).last_hidden_state)
    if tie:
        assert ours.lm_head.weight is ours.model.embed_tokens.weight
        assert_close(out.logits, logits(ref.eval(), ids))
    else:
        head = ours.lm_head.weight
        assert not head.is_meta and torch.isfinite(head).all()
        assert abs(head.std().item() - config["initializer_range"]) < 0.05  # freshly initialised, N(0, 0.2)
        assert_close(out.logits, out.hidden_states[-1] @ head.T)


# --------------------------------------------------------------------------------------------------------------
# 2. our checkpoint -> reference
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("max_shard_size", [None, "20KB"], ids=["single", "sharded"])
def test_our_checkpoint_loads_into_reference(tmp_path, tiny_llama_config, token_ids, max_shard_size):
    torch.manual_seed(0)
    ours = pretrained.LlamaForCausalLM.from_config(pretrained.LlamaConfig(**tiny_llama_config())).eval()
    ours.save_pretrained(tmp_path, **shard_kwargs(max_shard_size))

    names = saved_tensor_names(tmp_path)
    assert set(names) == set(ours.state_dict())
    if max_shard_size is None:
        assert set(names.values()) == {"model.safetensors"}
    else:
        index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
        assert index["weight_map"] == names
        assert index["metadata"]["total_size"] == sum(t.nbytes for t in ours.state_dict().values())

    ref, info = transformers.LlamaForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert_clean_load(info)
    auto = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(auto) is transformers.LlamaForCausalLM
    ids = token_ids(2, 11)
    expected = logits(ours, ids)
    assert_close(logits(ref.eval(), ids), expected)
    assert_close(logits(auto.eval(), ids), expected)


# --------------------------------------------------------------------------------------------------------------
# 3. dtypes
# --------------------------------------------------------------------------------------------------------------
# Half-precision tolerance: both libraries run the same operations in the same dtype, but any re-ordered
# reduction or different fused kernel may move a result by an ulp, and that error passes through two layers.
# At |logit| ~ 1 one ulp is 2**-7 (bf16) or 2**-10 (fp16): allow two, absolute and relative.
HALF_TOL = {torch.bfloat16: 2 * 2**-7, torch.float16: 2 * 2**-10}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_checkpoint_loads_in_its_dtype(tmp_path, tiny_llama_config, reference_llama, token_ids, dtype):
    reference_llama(tiny_llama_config()).to(dtype).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == str(dtype).removeprefix("torch.")

    ours = pretrained.AutoModelForCausalLM.from_pretrained(tmp_path, dtype="auto")
    ref = transformers.LlamaForCausalLM.from_pretrained(tmp_path, dtype=dtype).eval()
    assert ours.dtype == dtype
    assert {p.dtype for p in ours.parameters()} == {dtype}
    ids = token_ids(2, 9)
    out = logits(ours, ids)
    assert out.dtype == dtype
    tol = HALF_TOL[dtype]
    assert_close(out.float(), logits(ref, ids).float(), atol=tol, rtol=tol)


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"torch_dtype": torch.float16}, torch.float16),
        ({"dtype": "bfloat16"}, torch.bfloat16),
        ({"torch_dtype": "float16"}, torch.float16),
        ({"dtype": torch.float32}, torch.float32),
    ],
    ids=["torch_dtype=torch.float16", "dtype='bfloat16'", "torch_dtype='float16'", "dtype=torch.float32"],
)
def test_dtype_argument_spellings(tmp_path, tiny_llama_config, reference_llama, token_ids, kwargs, expected):
    reference_llama(tiny_llama_config()).save_pretrained(tmp_path)  # a float32 checkpoint
    ours = pretrained.AutoModelForCausalLM.from_pretrained(tmp_path, **kwargs)
    assert {p.dtype for p in ours.parameters()} == {expected}
    assert ours.config.dtype in (expected, str(expected).removeprefix("torch."))
    ref = transformers.LlamaForCausalLM.from_pretrained(tmp_path, **kwargs).eval()
    assert ref.dtype == expected
    ids = token_ids(2, 9)
    tol = HALF_TOL.get(expected, ATOL)
    assert_close(logits(ours, ids).float(), logits(ref, ids).float(), atol=tol, rtol=0.0 if tol == ATOL else tol)


@pytest.mark.parametrize("config_dtype, expected", [(None, torch.bfloat16), ("float16", torch.float16)],
                         ids=["no-dtype-in-config", "config-says-float16"])
@pytest.mark.parametrize("dtype_kwargs", [{"dtype": "auto"}, {}], ids=["auto", "default"])
def test_auto_dtype_rule(tmp_path, tiny_llama_config, reference_llama, config_dtype, expected, dtype_kwargs):
    """"auto" (also the 5.x default): the config's dtype, else the checkpoint's first floating tensor's dtype."""
    reference_llama(tiny_llama_config()).to(torch.bfloat16).save_pretrained(tmp_path)
    config_path = tmp_path / "config.json"
    config = json.loads(config_path.read_text())
    config.pop("dtype"), config.pop("torch_dtype", None)
    if config_dtype is not None:
        config["dtype"] = config_dtype
    config_path.write_text(json.dumps(config))

    ours = pretrained.AutoModelForCausalLM.from_pretrained(tmp_path, **dtype_kwargs)
    ref = transformers.LlamaForCausalLM.from_pretrained(tmp_path, **dtype_kwargs)
    assert ref.dtype == expected  # the reference follows the same rule
    assert {p.dtype for p in ours.parameters()} == {expected}


# --------------------------------------------------------------------------------------------------------------
# 4. the v4 config dialect
# --------------------------------------------------------------------------------------------------------------
ROPE_SCALINGS = {
    "default": None,
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16},
    "linear-oldest-spelling": {"type": "linear", "factor": 4.0},
}


@pytest.mark.parametrize("scaling_name", list(ROPE_SCALINGS))
def test_v4_config_dialect(tmp_path, tiny_llama_config, reference_llama, token_ids, scaling_name):
    scaling = ROPE_SCALINGS[scaling_name]
    config = tiny_llama_config()
    reference_llama(config).save_pretrained(tmp_path / "v4")
    v4 = {**config, "model_type": "llama", "architectures": ["LlamaForCausalLM"], "torch_dtype": "float32",
          "rope_theta": 500000.0, "transformers_version": "4.45.0"}
    if scaling is not None:
        v4["rope_scaling"] = scaling
    (tmp_path / "v4" / "config.json").write_text(json.dumps(v4, indent=2))

    ours = pretrained.AutoModelForCausalLM.from_pretrained(tmp_path / "v4")
    ref = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "v4").eval()  # reads the same files
    expected_rope = {"rope_theta": 500000.0, "rope_type": "default"}
    if scaling is not None:
        expected_rope = {"rope_theta": 500000.0, "rope_type": scaling_name.split("-")[0],
                         **{k: v for k, v in scaling.items() if k not in ("type", "rope_type")}}
    assert ours.config.rope_parameters == expected_rope
    assert ours.dtype == torch.float32

    # The dialect was understood (not silently defaulted): frequencies equal the reference's, differ from theta 1e4's.
    inv_freq = ours.model.rotary_emb.inv_freq
    assert_close(inv_freq, ref.model.rotary_emb.inv_freq.float(), atol=0.0, rtol=1e-6)
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    default_inv_freq = 1.0 / 10000.0 ** (torch.arange(0, head_dim, 2).float() / head_dim)
    assert not torch.allclose(inv_freq, default_inv_freq)

    ids = token_ids(2, 40)  # positions past original_max_position_embeddings
    expected = logits(ref, ids)
    assert_close(logits(ours, ids), expected)

    # We write the v5 dialect, which both libraries read back to the same model.
    ours.save_pretrained(tmp_path / "v5")
    saved = json.loads((tmp_path / "v5" / "config.json").read_text())
    assert not {"torch_dtype", "rope_theta", "rope_scaling"} & set(saved)
    assert saved["dtype"] == "float32"
    assert saved["rope_parameters"] == expected_rope
    assert_close(logits(pretrained.AutoModelForCausalLM.from_pretrained(tmp_path / "v5"), ids), expected)
    assert_close(logits(transformers.LlamaForCausalLM.from_pretrained(tmp_path / "v5").eval(), ids), expected)


# --------------------------------------------------------------------------------------------------------------
# 5. attention, masks, cache, loss, outputs
# --------------------------------------------------------------------------------------------------------------
def load_pair(tmp_path, reference_llama, config: dict, attn: str = "sdpa"):
    """(reference model, our model) holding the same weights, through a checkpoint, both using `attn`."""
    reference_llama(config).save_pretrained(tmp_path)
    ref = transformers.LlamaForCausalLM.from_pretrained(tmp_path, attn_implementation=attn).eval()
    ours = pretrained.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation=attn)
    assert ref.config._attn_implementation == ours.config._attn_implementation == attn
    return ref, ours


@pytest.mark.parametrize("padded", [False, True], ids=["no-mask", "left-padded"])
def test_sdpa_matches_eager(tmp_path, tiny_llama_config, reference_llama, token_ids, padded):
    ref, eager = load_pair(tmp_path, reference_llama, tiny_llama_config(), attn="eager")
    sdpa = pretrained.AutoModelForCausalLM.from_pretrained(tmp_path)  # sdpa is the default
    assert sdpa.config._attn_implementation == "sdpa"
    ids = token_ids(3, 10)
    mask = left_padding_mask(3, 10, [0, 3, 6]) if padded else None
    keep = mask.bool() if padded else torch.ones(3, 10, dtype=torch.bool)
    eager_out = logits(eager, ids, attention_mask=mask)
    assert_close(logits(sdpa, ids, attention_mask=mask)[keep], eager_out[keep])
    assert_close(eager_out, logits(ref, ids, attention_mask=mask))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_left_padded_batch_matches_reference(tmp_path, tiny_llama_config, reference_llama, token_ids, attn):
    """Finding: with a left-padded batch the logits agree with the reference at *every* position, padding
    included (fully masked query rows give the same values in both libraries), so all positions are compared."""
    ref, ours = load_pair(tmp_path, reference_llama, tiny_llama_config(), attn)
    pads = [0, 2, 5]
    ids = token_ids(3, 9)
    mask = left_padding_mask(3, 9, pads)
    out = logits(ours, ids, attention_mask=mask)
    assert torch.isfinite(out).all()
    expected = logits(ref, ids, attention_mask=mask)
    assert_close(out[mask.bool()], expected[mask.bool()])
    assert_close(out, expected)

    # With position ids counted from the first real token, each row's real tokens give exactly what the
    # unpadded sequence gives on its own: padding is invisible.
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    out = logits(ours, ids, attention_mask=mask, position_ids=position_ids)
    assert_close(out, logits(ref, ids, attention_mask=mask, position_ids=position_ids))
    for row, n in enumerate(pads):
        assert_close(out[row, n:], logits(ours, ids[row:row + 1, n:])[0])


@pytest.mark.parametrize("padded", [False, True], ids=["no-mask", "left-padded"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_kv_cache_incremental_equals_full_forward(tmp_path, tiny_llama_config, reference_llama, token_ids,
                                                  attn, padded):
    _, ours = load_pair(tmp_path, reference_llama, tiny_llama_config(), attn)
    B, T = 3, 12
    ids = token_ids(B, T)
    mask = left_padding_mask(B, T, [0, 2, 5]) if padded else torch.ones(B, T, dtype=torch.long)
    full = logits(ours, ids, attention_mask=mask)

    steps = []
    with torch.no_grad():
        out = ours(ids[:, :4], attention_mask=mask[:, :4], use_cache=True)  # prefix
        steps.append(out.logits)
        cache = out.past_key_values
        out = ours(ids[:, 4:7], attention_mask=mask[:, :7], past_key_values=cache, use_cache=True)  # a chunk
        steps.append(out.logits)
        for t in range(7, T):  # one token at a time
            out = ours(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], past_key_values=out.past_key_values,
                       use_cache=True)
            steps.append(out.logits)
    incremental = torch.cat(steps, dim=1)
    assert out.past_key_values is cache and cache.get_seq_length() == T
    keep = mask.bool()
    assert_close(incremental[keep], full[keep])


def test_loss_and_gradients_match_reference(tmp_path, tiny_llama_config, reference_llama, token_ids):
    ref, ours = load_pair(tmp_path, reference_llama, tiny_llama_config())
    ids = token_ids(2, 10)
    labels = ids.clone()
    labels[0, :3] = -100  # ignored positions
    ref_out, ours_out = ref(ids, labels=labels), ours(ids, labels=labels)
    assert ours_out.loss.shape == ()
    assert_close(ours_out.loss, ref_out.loss)
    ref_out.loss.backward()
    ours_out.loss.backward()
    ref_params = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        assert_close(p.grad, ref_params[name].grad)

    # the loss is next-token cross-entropy over the labels that are not -100
    expected = torch.nn.functional.cross_entropy(ours_out.logits[:, :-1].reshape(-1, 128).float(),
                                                 labels[:, 1:].reshape(-1), ignore_index=-100)
    assert_close(ours_out.loss, expected)


def test_hidden_states_and_attentions_match_reference(tmp_path, tiny_llama_config, reference_llama, token_ids):
    config = tiny_llama_config(num_hidden_layers=3)
    ref, ours = load_pair(tmp_path, reference_llama, config, attn="eager")
    ids = token_ids(2, 8)
    with torch.no_grad():
        expected = ref(ids, output_hidden_states=True, output_attentions=True)
        out = ours(ids, output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == len(expected.hidden_states) == config["num_hidden_layers"] + 1
    assert len(out.attentions) == len(expected.attentions) == config["num_hidden_layers"]
    for got, want in zip(out.hidden_states, expected.hidden_states):
        assert got.shape == want.shape == (2, 8, config["hidden_size"])
        assert_close(got, want)
    for got, want in zip(out.attentions, expected.attentions):
        assert got.shape == want.shape == (2, config["num_attention_heads"], 8, 8)
        assert_close(got, want)
        assert_close(got.sum(-1), torch.ones(2, config["num_attention_heads"], 8))  # rows are distributions
        assert torch.equal(got.triu(1), torch.zeros_like(got))  # causal
    assert out.hidden_states[-1] is not None
    with torch.no_grad():
        plain = ours(ids)
    assert plain.hidden_states is None and plain.attentions is None


def test_tuple_outputs(tmp_path, tiny_llama_config, reference_llama, token_ids):
    ref, ours = load_pair(tmp_path, reference_llama, tiny_llama_config())
    ids = token_ids(2, 6)
    with torch.no_grad():
        out = ours(ids)
        assert out[0] is out.logits and out["logits"] is out.logits
        with_loss = ours(ids, labels=ids)
        assert with_loss[0] is with_loss.loss and with_loss[1] is with_loss.logits

        as_tuple = ours(ids, return_dict=False)
        ref_tuple = ref(ids, return_dict=False)
        assert isinstance(as_tuple, tuple) and len(as_tuple) == len(ref_tuple)
        assert_close(as_tuple[0], ref_tuple[0])

        base_tuple = ours.model(ids, return_dict=False)
        assert isinstance(base_tuple, tuple)
        assert_close(base_tuple[0], ref.model(ids, return_dict=False)[0])

        ours.config.return_dict = False  # the config's default is honoured too
        assert isinstance(ours(ids), tuple)


# --------------------------------------------------------------------------------------------------------------
# 6. tied word embeddings
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("max_shard_size", [None, "20KB"], ids=["single", "sharded"])
def test_tied_embeddings_both_directions(tmp_path, tiny_llama_config, reference_llama, token_ids, max_shard_size):
    config = tiny_llama_config(tie_word_embeddings=True)
    ids = token_ids(2, 9)

    ref = reference_llama(config)
    assert ref.lm_head.weight is ref.model.embed_tokens.weight
    ref.save_pretrained(tmp_path / "theirs", **shard_kwargs(max_shard_size))
    assert "lm_head.weight" not in saved_tensor_names(tmp_path / "theirs")
    ours, info = pretrained.AutoModelForCausalLM.from_pretrained(tmp_path / "theirs", output_loading_info=True)
    assert_clean_load(info)
    assert ours.lm_head.weight is ours.model.embed_tokens.weight
    assert_close(logits(ours, ids), logits(ref, ids))

    torch.manual_seed(1)
    mine = pretrained.LlamaForCausalLM.from_config(pretrained.LlamaConfig(**config)).eval()
    assert mine.lm_head.weight is mine.model.embed_tokens.weight
    mine.save_pretrained(tmp_path / "ours", **shard_kwargs(max_shard_size))
    names = saved_tensor_names(tmp_path / "ours")
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["tie_word_embeddings"] is True
    theirs, info = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert_clean_load(info)
    assert theirs.lm_head.weight is theirs.model.embed_tokens.weight
    assert_close(logits(theirs.eval(), ids), logits(mine, ids))


def test_parity_inputs_are_not_degenerate(tiny_llama_config, reference_llama, token_ids):
    """Guards the tolerance: logits are O(1) and depend on position, so 1e-5 parity is a strong statement."""
    ref = reference_llama(tiny_llama_config())
    ids = token_ids(1, 12)
    out = logits(ref, ids)
    assert out.abs().max() > 1.0
    # RoPE is relative: shifting every position leaves the logits alone, stretching the distances does not.
    shifted = logits(ref, ids, position_ids=torch.arange(12)[None] + 5)
    assert_close(shifted, out, atol=1e-4, rtol=0)
    stretched = logits(ref, ids, position_ids=torch.arange(12)[None] * 2)
    assert (out - stretched).abs().max() > 1e4 * ATOL
    # and later positions really attend to earlier ones
    changed = ids.clone()
    changed[0, 0] = (ids[0, 0] + 1) % 128
    assert (logits(ref, changed)[0, -1] - out[0, -1]).abs().max() > 1e4 * ATOL
    assert math.isfinite(out.sum().item())
