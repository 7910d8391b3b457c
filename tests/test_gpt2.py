"""GPT-2 parity with the reference library, through the files both read and write.

Tiny seeded models (vocab 99, n_embd 32, 2 layers, 4 heads, 64 positions) go through a checkpoint on disk and
their outputs are compared in float32 within 1e-5. Also: the Conv1D layout, legacy checkpoints (causal-mask
buffers, the original OpenAI layout without the `transformer.` prefix), masks, cache, loss and dtypes.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import pretrained
from pretrained.models.gpt2.modeling import Conv1D

transformers = pytest.importorskip("transformers")

ATOL = 1e-5
HALF_TOL = {torch.bfloat16: 2 * 2**-7, torch.float16: 2 * 2**-10}  # two ulps at |logit| ~ 1
VOCAB = 99
# initializer_range 10x the usual so attention is sharp and logits are O(1) (see conftest.py); bos/eos inside
# the tiny vocabulary so that the reference does not warn about them.
TINY = {"vocab_size": VOCAB, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64,
        "initializer_range": 0.2, "bos_token_id": VOCAB - 1, "eos_token_id": VOCAB - 1}
CLASSES = {"base": ("GPT2Model", "AutoModel"), "lm": ("GPT2LMHeadModel", "AutoModelForCausalLM")}


# --------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------
def assert_close(actual, expected, atol: float = ATOL, rtol: float = 0.0) -> None:
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


def assert_clean_load(info: dict) -> None:
    assert list(info["missing_keys"]) == []
    assert list(info["unexpected_keys"]) == []
    assert list(info["mismatched_keys"]) == []


def ids(batch: int = 2, seq: int = 9, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


def left_padding_mask(batch: int, seq: int, pads: list[int]) -> torch.Tensor:
    mask = torch.ones(batch, seq, dtype=torch.long)
    for row, n in enumerate(pads):
        mask[row, :n] = 0
    return mask


def reference(kind: str = "lm", seed: int = 0, **overrides):
    torch.manual_seed(seed)
    cls = getattr(transformers, CLASSES[kind][0])
    return cls(transformers.GPT2Config(**{**TINY, **overrides})).eval()


def ours_from_config(kind: str = "lm", seed: int = 0, **overrides):
    torch.manual_seed(seed)
    cls = getattr(pretrained, CLASSES[kind][0])
    return cls.from_config(pretrained.GPT2Config(**{**TINY, **overrides})).eval()


@torch.no_grad()
def output(model, x: torch.Tensor, **kwargs) -> torch.Tensor:
    out = model(x, **kwargs)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def saved_tensors(folder) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                assert key not in tensors, f"{key} written twice"
                tensors[key] = f.get_tensor(key)
    return tensors


def load_pair(tmp_path, attn: str = "sdpa", **overrides):
    """(reference, ours) GPT2LMHeadModels with the same weights, through a checkpoint, both using `attn`."""
    reference("lm", **overrides).save_pretrained(tmp_path)
    ref = transformers.GPT2LMHeadModel.from_pretrained(tmp_path, attn_implementation=attn).eval()
    ours = pretrained.GPT2LMHeadModel.from_pretrained(tmp_path, attn_implementation=attn)
    assert ref.config._attn_implementation == ours.config._attn_implementation == attn
    return ref, ours


# --------------------------------------------------------------------------------------------------------------
# 1. config
# --------------------------------------------------------------------------------------------------------------
def test_config_defaults_and_names_match_reference(tmp_path):
    ours, ref = pretrained.GPT2Config().to_dict(), transformers.GPT2Config().to_dict()
    common = pretrained.PretrainedConfig().to_dict()
    family = {k: v for k, v in ref.items() if k not in common and not k.startswith("_")}
    assert family and {k: ours[k] for k in family} == family  # every GPT-2 key, same default
    for key in ("tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id", "use_cache"):
        assert ours[key] == ref[key], key

    config = pretrained.GPT2Config(hidden_size=48, num_hidden_layers=3, num_attention_heads=6,
                                   max_position_embeddings=128)
    assert (config.n_embd, config.n_layer, config.n_head, config.n_positions) == (48, 3, 6, 128)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
            config.max_position_embeddings) == (48, 3, 6, 128)
    config.hidden_size = 64
    assert config.n_embd == 64 and "hidden_size" not in config.to_dict()
    with pytest.raises(pretrained.errors.ConfigError, match="multiple of n_head"):
        pretrained.GPT2Config(n_embd=30, n_head=4)

    # config.json both ways: the same fields, the same values
    transformers.GPT2Config(**TINY).save_pretrained(tmp_path / "theirs")
    mine = pretrained.AutoConfig.from_pretrained(tmp_path / "theirs")
    assert type(mine) is pretrained.GPT2Config and mine.n_embd == 32 and mine.vocab_size == VOCAB
    mine.save_pretrained(tmp_path / "ours")
    theirs = transformers.AutoConfig.from_pretrained(tmp_path / "ours")
    assert {k: getattr(theirs, k) for k in TINY} == TINY


# --------------------------------------------------------------------------------------------------------------
# 2. Conv1D and initialisation
# --------------------------------------------------------------------------------------------------------------
def test_conv1d_is_a_transposed_linear():
    layer = Conv1D(5, 3)  # nf=5 outputs, nx=3 inputs
    assert layer.weight.shape == (3, 5) and layer.bias.shape == (5,)
    with torch.no_grad():
        layer.weight.normal_(), layer.bias.normal_()
    x = torch.randn(2, 4, 3)
    assert_close(layer(x), x @ layer.weight + layer.bias)
    reference_layer = transformers.pytorch_utils.Conv1D(5, 3)
    reference_layer.load_state_dict(layer.state_dict())
    assert_close(layer(x), reference_layer(x))


def test_initialisation_follows_gpt2_scheme():
    """normal(0, 0.02) weights; the two projections into the residual stream per block get 0.02 / sqrt(2 n_layer)."""
    model = ours_from_config("lm", n_embd=64, n_layer=8, n_head=4, initializer_range=0.02)
    block = model.transformer.h[3]
    for weight, std in [(block.attn.c_attn.weight, 0.02), (block.mlp.c_fc.weight, 0.02),
                        (block.attn.c_proj.weight, 0.005), (block.mlp.c_proj.weight, 0.005),
                        (model.transformer.wte.weight, 0.02), (model.transformer.wpe.weight, 0.02)]:
        assert abs(weight.std().item() - std) < 0.1 * std
    assert torch.equal(block.attn.c_attn.bias, torch.zeros(192)) and torch.equal(block.ln_1.weight, torch.ones(64))
    assert model.lm_head.weight is model.transformer.wte.weight


# --------------------------------------------------------------------------------------------------------------
# 3. reference checkpoint -> our model, and the reverse
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("max_shard_size", [None, "20KB"], ids=["single", "sharded"])
@pytest.mark.parametrize("kind", ["base", "lm"])
def test_reference_checkpoint_loads_into_ours(tmp_path, kind, max_shard_size):
    ref = reference(kind)
    ref.save_pretrained(tmp_path, **({} if max_shard_size is None else {"max_shard_size": max_shard_size}))
    names = saved_tensors(tmp_path)
    assert "lm_head.weight" not in names  # tied: written once, as transformer.wte.weight
    assert (len(list(tmp_path.glob("*.safetensors"))) > 1) == (max_shard_size is not None)

    auto = getattr(pretrained, CLASSES[kind][1])
    ours, info = auto.from_pretrained(tmp_path, output_loading_info=True)
    assert type(ours).__name__ == CLASSES[kind][0]
    assert_clean_load(info)
    ours_state, ref_state = ours.state_dict(), ref.state_dict()
    assert set(ours_state) == set(ref_state)
    for name, tensor in ref_state.items():
        assert torch.equal(ours_state[name], tensor), name
    assert ours.base_model.h[0].attn.c_attn.weight.shape == (32, 96)  # Conv1D: (in, out)
    if kind == "lm":
        assert ours.lm_head.weight is ours.transformer.wte.weight
    x = ids(2, 11)
    assert_close(output(ours, x), output(ref, x))


@pytest.mark.parametrize("max_shard_size", [None, "20KB"], ids=["single", "sharded"])
@pytest.mark.parametrize("kind", ["base", "lm"])
def test_our_checkpoint_loads_into_reference(tmp_path, kind, max_shard_size):
    ours = ours_from_config(kind)
    ours.save_pretrained(tmp_path, **({} if max_shard_size is None else {"max_shard_size": max_shard_size}))
    names = saved_tensors(tmp_path)
    expected = set(ours.state_dict()) - {"lm_head.weight"}
    assert set(names) == expected
    if kind == "lm":
        assert "transformer.wte.weight" in names
    if max_shard_size is not None:
        index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"]) == expected and len(set(index["weight_map"].values())) > 1
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["n_embd"] == 32 and config["architectures"] == [CLASSES[kind][0]]

    ref, info = getattr(transformers, CLASSES[kind][0]).from_pretrained(tmp_path, output_loading_info=True)
    assert_clean_load(info)
    auto = getattr(transformers, CLASSES[kind][1]).from_pretrained(tmp_path)
    assert type(auto) is type(ref)
    if kind == "lm":
        assert ref.lm_head.weight is ref.transformer.wte.weight
    x = ids(2, 11)
    expected_out = output(ours, x)
    assert expected_out.abs().max() > 1.0  # not degenerate: 1e-5 parity is a strong statement
    assert_close(output(ref.eval(), x), expected_out)
    assert_close(output(auto.eval(), x), expected_out)


def test_cross_loading_between_base_and_lm(tmp_path):
    """A base-model checkpoint (no prefix) loads into the LM with the head tied; an LM checkpoint into the base."""
    reference("base").save_pretrained(tmp_path / "base")
    lm, info = pretrained.GPT2LMHeadModel.from_pretrained(tmp_path / "base", output_loading_info=True)
    ref_lm, ref_info = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "base", output_loading_info=True)
    assert_clean_load(info)
    assert_clean_load(ref_info)
    assert lm.lm_head.weight is lm.transformer.wte.weight
    x = ids()
    assert_close(output(lm, x), output(ref_lm.eval(), x))

    lm.save_pretrained(tmp_path / "lm")
    base, info = pretrained.GPT2Model.from_pretrained(tmp_path / "lm", output_loading_info=True)
    assert_clean_load(info)
    assert_close(output(base, x), output(reference("base"), x))


# --------------------------------------------------------------------------------------------------------------
# 4. legacy checkpoints
# --------------------------------------------------------------------------------------------------------------
def causal_buffers(prefix: str, n_layer: int = 2, n_positions: int = 64) -> dict[str, torch.Tensor]:
    """What GPT-2 checkpoints of transformers 2.x-4.x also held per block: the causal mask and its fill value."""
    out = {}
    for i in range(n_layer):
        out[f"{prefix}h.{i}.attn.bias"] = torch.tril(torch.ones(n_positions, n_positions)).view(1, 1, n_positions,
                                                                                               n_positions)
        out[f"{prefix}h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    return out


@pytest.mark.parametrize("layout", ["prefixed", "openai"], ids=["transformer-prefix", "openai-no-prefix"])
def test_legacy_checkpoint_with_mask_buffers(tmp_path, layout):
    ref = reference("lm")
    ref.save_pretrained(tmp_path)
    state = saved_tensors(tmp_path)
    if layout == "openai":  # the original layout: keys as GPT2Model writes them, no `transformer.`
        state = {k.removeprefix("transformer."): v for k, v in state.items()}
    state.update(causal_buffers("transformer." if layout == "prefixed" else ""))
    for f in tmp_path.glob("*.safetensors"):
        f.unlink()
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})

    x = ids(2, 10)
    expected = output(ref, x)
    for kind in ("lm", "base"):
        ours, info = getattr(pretrained, CLASSES[kind][0]).from_pretrained(tmp_path, output_loading_info=True)
        assert_clean_load(info)  # the buffers are read and dropped, not reported
        assert dict(ours.named_buffers()) == {}  # masks are computed, never stored
        if kind == "lm":
            assert ours.lm_head.weight is ours.transformer.wte.weight
            assert_close(output(ours, x), expected)
        else:
            assert_close(output(ours, x), output(ref.transformer, x))

    # What the reference 5.23 does with the same file: it ignores `attn.bias` but reports `attn.masked_bias` as
    # unexpected (its ignore pattern is "attn.bias"). We drop both: they hold no weights. Outputs are the same.
    ref_loaded, ref_info = transformers.GPT2LMHeadModel.from_pretrained(tmp_path, output_loading_info=True)
    assert set(ref_info["missing_keys"]) == set()
    assert {k.rsplit(".", 1)[-1] for k in ref_info["unexpected_keys"]} <= {"masked_bias"}
    assert_close(output(ref_loaded.eval(), x), expected)


# --------------------------------------------------------------------------------------------------------------
# 5. dtypes
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("source", ["bf16-checkpoint", "fp32-checkpoint-as-bf16"])
def test_bf16_load(tmp_path, source):
    ref = reference("lm")
    if source == "bf16-checkpoint":
        ref.to(torch.bfloat16).save_pretrained(tmp_path)
        kwargs = {"dtype": "auto"}
    else:
        ref.save_pretrained(tmp_path)
        kwargs = {"dtype": torch.bfloat16}
    ours = pretrained.AutoModelForCausalLM.from_pretrained(tmp_path, **kwargs)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, **kwargs).eval()
    assert {p.dtype for p in ours.parameters()} == {theirs.dtype} == {torch.bfloat16}
    assert ours.lm_head.weight is ours.transformer.wte.weight
    x = ids()
    out = output(ours, x)
    assert out.dtype == torch.bfloat16
    tol = HALF_TOL[torch.bfloat16]
    assert_close(out.float(), output(theirs, x).float(), atol=tol, rtol=tol)


# --------------------------------------------------------------------------------------------------------------
# 6. attention, masks, cache, loss, outputs
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_padded_batch_matches_reference(tmp_path, attn):
    ref, ours = load_pair(tmp_path, attn)
    pads = [0, 2, 5]
    x = ids(3, 9)
    mask = left_padding_mask(3, 9, pads)
    out = output(ours, x, attention_mask=mask)
    assert torch.isfinite(out).all()
    expected = output(ref, x, attention_mask=mask)
    assert_close(out[mask.bool()], expected[mask.bool()])
    assert_close(out, expected)  # padding positions too

    # positions counted from each row's first real token make the padding invisible
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    out = output(ours, x, attention_mask=mask, position_ids=position_ids)
    assert_close(out, output(ref, x, attention_mask=mask, position_ids=position_ids))
    for row, n in enumerate(pads):
        assert_close(out[row, n:], output(ours, x[row:row + 1, n:])[0])


def test_sdpa_matches_eager(tmp_path):
    ref, eager = load_pair(tmp_path, "eager")
    sdpa = pretrained.GPT2LMHeadModel.from_pretrained(tmp_path)
    assert sdpa.config._attn_implementation == "sdpa"
    x, mask = ids(3, 10), left_padding_mask(3, 10, [0, 3, 6])
    assert_close(output(sdpa, x), output(eager, x))
    keep = mask.bool()  # fully masked query rows (padding) differ between the kernels; real tokens must not
    assert_close(output(sdpa, x, attention_mask=mask)[keep], output(eager, x, attention_mask=mask)[keep])


@pytest.mark.parametrize("padded", [False, True], ids=["no-mask", "left-padded"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_kv_cache_incremental_equals_full_forward(tmp_path, attn, padded):
    ref, ours = load_pair(tmp_path, attn)
    B, T = 3, 12
    x = ids(B, T)
    mask = left_padding_mask(B, T, [0, 2, 5]) if padded else torch.ones(B, T, dtype=torch.long)
    full = output(ours, x, attention_mask=mask)
    steps = []
    with torch.no_grad():
        out = ours(x[:, :4], attention_mask=mask[:, :4], use_cache=True)  # prefix
        cache = out.past_key_values
        assert isinstance(cache, pretrained.DynamicCache)
        steps.append(out.logits)
        out = ours(x[:, 4:7], attention_mask=mask[:, :7], past_key_values=cache)  # a chunk
        steps.append(out.logits)
        for t in range(7, T):  # one token at a time
            out = ours(x[:, t:t + 1], attention_mask=mask[:, :t + 1], past_key_values=out.past_key_values)
            steps.append(out.logits)
        ref_step = ref(x[:, -1:], attention_mask=mask, past_key_values=ref(
            x[:, :-1], attention_mask=mask[:, :-1], use_cache=True).past_key_values).logits
    assert out.past_key_values is cache and cache.get_seq_length() == T
    assert cache.keys[0].shape == (B, 4, T, 8)
    incremental = torch.cat(steps, dim=1)
    keep = mask.bool()
    assert_close(incremental[keep], full[keep])
    assert_close(steps[-1], ref_step)


def test_loss_and_gradients_match_reference(tmp_path):
    ref, ours = load_pair(tmp_path)
    x = ids(2, 10)
    labels = x.clone()
    labels[0, :3] = -100
    ref_out, ours_out = ref(x, labels=labels), ours(x, labels=labels)
    assert ours_out.loss.shape == ()
    assert_close(ours_out.loss, ref_out.loss)
    ref_out.loss.backward()
    ours_out.loss.backward()
    ref_params = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        assert_close(p.grad, ref_params[name].grad, atol=1e-5, rtol=1e-4)
    shifted = torch.nn.functional.cross_entropy(ours_out.logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1))
    assert_close(ours_out.loss, shifted)


def test_gradient_checkpointing_gives_the_same_gradients():
    model = ours_from_config("lm", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0).train()
    x = ids(2, 8)
    model(x, labels=x).loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing
    out = model(x, labels=x)
    assert out.past_key_values is None
    out.loss.backward()
    for n, p in model.named_parameters():
        assert_close(p.grad, plain[n])


def test_hidden_states_attentions_and_token_types_match_reference(tmp_path):
    ref, ours = load_pair(tmp_path, "eager")
    x, types = ids(2, 8), ids(2, 8, seed=1)
    with torch.no_grad():
        expected = ref(x, token_type_ids=types, output_hidden_states=True, output_attentions=True)
        out = ours(x, token_type_ids=types, output_hidden_states=True, output_attentions=True)
    assert_close(out.logits, expected.logits)
    assert len(out.hidden_states) == len(expected.hidden_states) == 3
    for got, want in zip(out.hidden_states, expected.hidden_states):
        assert_close(got, want)
    assert out.hidden_states[-1] is not None
    assert len(out.attentions) == len(expected.attentions) == 2
    for got, want in zip(out.attentions, expected.attentions):
        assert got.shape == (2, 4, 8, 8)
        assert_close(got, want)
        assert torch.equal(got.triu(1), torch.zeros_like(got))

    # token types are embedded with the token table wte, added to the input: the same as passing those embeddings
    with torch.no_grad():
        wte = ours.transformer.wte
        assert_close(out.logits, ours(inputs_embeds=wte(x) + wte(types)).logits)
        plain = ours(x)
        assert plain.hidden_states is None and plain.attentions is None
        assert (plain.logits - out.logits).abs().max() > 1e-2  # the token types did matter


@pytest.mark.parametrize("variant", [
    {"scale_attn_by_inverse_layer_idx": True},
    {"scale_attn_weights": False, "n_inner": 48},
    {"reorder_and_upcast_attn": True, "activation_function": "relu"},
], ids=["inverse-layer-scale", "unscaled-n_inner", "reorder-upcast-relu"])
def test_config_variants_match_reference(tmp_path, variant):
    ref, ours = load_pair(tmp_path, "eager", **variant)
    x = ids()
    assert_close(output(ours, x), output(ref, x))


def test_tuple_outputs_and_logits_to_keep(tmp_path):
    ref, ours = load_pair(tmp_path)
    x = ids(2, 6)
    with torch.no_grad():
        out = ours(x)
        assert out[0] is out.logits and out["logits"] is out.logits
        as_tuple, ref_tuple = ours(x, return_dict=False), ref(x, return_dict=False)
        assert isinstance(as_tuple, tuple) and len(as_tuple) == len(ref_tuple)
        assert_close(as_tuple[0], ref_tuple[0])
        assert isinstance(ours.transformer(x, return_dict=False), tuple)
        last = ours(x, logits_to_keep=1).logits
        assert last.shape == (2, 1, VOCAB)
        assert_close(last, ref(x, logits_to_keep=1).logits)
        # leading dimensions beyond the batch are flattened and restored, as the reference does
        choices = ids(4, 6).view(2, 2, 6)
        assert_close(ours.transformer(choices).last_hidden_state, ref.transformer(choices).last_hidden_state)
