"""T5 parity with the reference library, through the files both read and write.

Tiny seeded models (vocab 99, d_model 32, d_kv 8, d_ff 37, 2+2 layers, 4 heads, 8 buckets) in both feed-forward
variants ("relu": original T5, "gated-gelu": v1.1) and both head variants (tied and rescaled, or a separate head);
every parity check goes through a checkpoint on disk and compares float32 outputs within 1e-5.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import pretrained
from pretrained.models.t5.modeling import relative_position_bucket

transformers = pytest.importorskip("transformers")

ATOL = 1e-5
TINY_T5 = dict(vocab_size=99, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
               relative_attention_num_buckets=8, decoder_start_token_id=0)
FF = ["relu", "gated-gelu"]
CLASSES = ["T5Model", "T5ForConditionalGeneration", "T5EncoderModel"]


def assert_close(actual, expected, atol=ATOL, rtol=0.0):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


def assert_clean_load(info):
    assert list(info["missing_keys"]) == []
    assert list(info["unexpected_keys"]) == []
    assert list(info["mismatched_keys"]) == []


def saved_tensor_names(folder) -> set[str]:
    names = set()
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as f:
            names |= set(f.keys())
    return names


def reference(cls_name: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return getattr(transformers, cls_name)(transformers.T5Config(**{**TINY_T5, **overrides})).eval()


def ours_fresh(cls_name: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return getattr(pretrained, cls_name).from_config(pretrained.T5Config(**{**TINY_T5, **overrides})).eval()


def batch(seed: int = 0, src: int = 9, tgt: int = 6) -> dict:
    """Source ids with a left-padded row, decoder ids, and labels with ignored (-100) tail positions."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, TINY_T5["vocab_size"], (2, src), generator=g)
    mask = torch.ones(2, src, dtype=torch.long)
    mask[1, :3] = 0
    labels = torch.randint(2, TINY_T5["vocab_size"], (2, tgt), generator=g)
    labels[1, -2:] = -100
    dec = torch.randint(2, TINY_T5["vocab_size"], (2, tgt), generator=g)
    return {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dec, "labels": labels}


@torch.no_grad()
def run(model, cls_name: str, b: dict, **kwargs):
    """The class's main outputs as a dict of tensors, on the same inputs for both libraries."""
    if cls_name == "T5EncoderModel":
        return {"hidden": model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], **kwargs).last_hidden_state}
    if cls_name == "T5Model":
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                    decoder_input_ids=b["decoder_input_ids"], **kwargs)
        return {"hidden": out.last_hidden_state, "encoder": out.encoder_last_hidden_state}
    out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"], **kwargs)
    plain = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                  decoder_input_ids=b["decoder_input_ids"], **kwargs)
    return {"logits": out.logits, "loss": out.loss, "encoder": out.encoder_last_hidden_state,
            "plain_logits": plain.logits}


def assert_same_outputs(ours, theirs, cls_name, b=None):
    b = b or batch()
    mine, ref = run(ours, cls_name, b), run(theirs, cls_name, b)
    assert mine.keys() == ref.keys()
    for key in mine:
        assert_close(mine[key], ref[key])
    return mine


VARIANTS = [(c, ff, tie) for c in CLASSES for ff in FF for tie in (True, False)
            if not (c == "T5EncoderModel" and not tie)]  # the encoder has no head: tying is moot


def _vid(v):
    return f"{v[0]}-{v[1]}-{'tied' if v[2] else 'untied'}"


# --------------------------------------------------------------------------------------------------------------
# 1. both directions
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS, ids=_vid)
def test_reference_checkpoint_loads_into_ours(tmp_path, variant):
    cls_name, ff, tie = variant
    ref = reference(cls_name, feed_forward_proj=ff, tie_word_embeddings=tie)
    ref.save_pretrained(tmp_path)
    ours, info = getattr(pretrained, cls_name).from_pretrained(tmp_path, output_loading_info=True)
    assert_clean_load(info)
    assert type(ours).__name__ == cls_name
    ours_state, ref_state = ours.state_dict(), ref.state_dict()
    assert set(ours_state) == set(ref_state)
    for name, tensor in ref_state.items():
        assert torch.equal(ours_state[name], tensor), name
    assert ours.encoder.embed_tokens.weight is ours.shared.weight
    if cls_name != "T5EncoderModel":
        assert ours.decoder.embed_tokens.weight is ours.shared.weight
    if cls_name == "T5ForConditionalGeneration":
        # 5.x always ties this head; without tie_word_embeddings it only stops rescaling the decoder output
        assert ours.lm_head.weight is ours.shared.weight
        assert ours.config.scale_decoder_outputs is tie
    out = assert_same_outputs(ours, ref, cls_name)
    assert max(t.abs().max() for t in out.values()) > 1.0  # O(1) outputs: 1e-5 parity means something


@pytest.mark.parametrize("variant", VARIANTS, ids=_vid)
def test_our_checkpoint_loads_into_reference(tmp_path, variant):
    cls_name, ff, tie = variant
    ours = ours_fresh(cls_name, seed=1, feed_forward_proj=ff, tie_word_embeddings=tie)
    ours.save_pretrained(tmp_path)
    names = saved_tensor_names(tmp_path)
    assert "shared.weight" in names
    assert not {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"} & names  # written once, as `shared`
    assert ("lm_head.weight" in names) is (cls_name == "T5ForConditionalGeneration" and not tie)
    assert sorted(n for n in names if "relative_attention_bias" in n) == sorted(
        f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        for stack in (("encoder",) if cls_name == "T5EncoderModel" else ("decoder", "encoder")))
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "t5" and config["scale_decoder_outputs"] is tie

    theirs, info = getattr(transformers, cls_name).from_pretrained(tmp_path, output_loading_info=True)
    assert_clean_load(info)
    assert_same_outputs(ours, theirs.eval(), cls_name)
    # and we write the same tensor names the reference writes for that model
    ref_dir = tmp_path / "ref"
    reference(cls_name, feed_forward_proj=ff, tie_word_embeddings=tie).save_pretrained(ref_dir)
    ref_names = saved_tensor_names(ref_dir)
    assert names - {"lm_head.weight"} == ref_names


def test_auto_classes_map_t5(tmp_path):
    ref = reference("T5ForConditionalGeneration")
    ref.save_pretrained(tmp_path)
    assert type(pretrained.AutoConfig.from_pretrained(tmp_path)) is pretrained.T5Config
    seq2seq = pretrained.AutoModelForSeq2SeqLM.from_pretrained(tmp_path)
    assert type(seq2seq) is pretrained.T5ForConditionalGeneration and seq2seq.can_generate()
    base, info = pretrained.AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert type(base) is pretrained.T5Model
    assert_clean_load(info)
    assert_same_outputs(seq2seq, ref, "T5ForConditionalGeneration")

    seq2seq.save_pretrained(tmp_path / "ours")
    assert type(transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "ours")) is \
        transformers.T5ForConditionalGeneration
    gen = json.loads((tmp_path / "ours" / "generation_config.json").read_text())
    assert gen["decoder_start_token_id"] == 0 and gen["eos_token_id"] == 1 and gen["pad_token_id"] == 0


# --------------------------------------------------------------------------------------------------------------
# 2. head tying across the v4 and v5 dialects
# --------------------------------------------------------------------------------------------------------------
def _untied_checkpoint(tmp_path, dialect: str):
    """A checkpoint with its own lm_head (T5 v1.1 / flan-t5): written by v4 (tie_word_embeddings: false) or
    re-saved by 5.x (which writes tie_word_embeddings: true, scale_decoder_outputs: false, and both tensors)."""
    ref = reference("T5ForConditionalGeneration", feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    ref.save_pretrained(tmp_path / "v5")
    state = {k: v for k, v in ref.state_dict().items() if "embed_tokens" not in k}
    state["lm_head.weight"] = torch.randn(TINY_T5["vocab_size"], TINY_T5["d_model"],
                                          generator=torch.Generator().manual_seed(3))
    save_file(state, str(tmp_path / "v5" / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((tmp_path / "v5" / "config.json").read_text())
    if dialect == "v4":
        config.pop("scale_decoder_outputs")
        config["tie_word_embeddings"] = False
        config["transformers_version"] = "4.46.0"
        (tmp_path / "v5" / "config.json").write_text(json.dumps(config))
        return tmp_path / "v5"
    assert config["tie_word_embeddings"] is True and config["scale_decoder_outputs"] is False
    theirs = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "v5")  # v4 file -> 5.x -> re-save
    theirs.save_pretrained(tmp_path / "resaved")
    assert "lm_head.weight" in saved_tensor_names(tmp_path / "resaved")
    return tmp_path / "resaved"


@pytest.mark.parametrize("dialect", ["v4", "v5-resaved"])
def test_checkpoint_with_its_own_head_stays_untied(tmp_path, dialect):
    folder = _untied_checkpoint(tmp_path, dialect)
    ours, info = pretrained.T5ForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
    assert_clean_load(info)
    assert ours.lm_head.weight is not ours.shared.weight
    assert ours.config.scale_decoder_outputs is False
    assert ours.active_ties() == {"encoder.embed_tokens.weight": "shared.weight",
                                  "decoder.embed_tokens.weight": "shared.weight"}
    ref = transformers.T5ForConditionalGeneration.from_pretrained(folder).eval()
    assert ref.lm_head.weight is not ref.shared.weight
    assert_same_outputs(ours, ref, "T5ForConditionalGeneration")
    # saving keeps the head, and both libraries read that back to the same model
    ours.save_pretrained(tmp_path / "again")
    assert "lm_head.weight" in saved_tensor_names(tmp_path / "again")
    again = pretrained.T5ForConditionalGeneration.from_pretrained(tmp_path / "again")
    assert_same_outputs(again, ref, "T5ForConditionalGeneration")
    assert_same_outputs(again, transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "again").eval(),
                        "T5ForConditionalGeneration")


def test_sub_models_from_a_full_checkpoint(tmp_path):
    """The encoder model takes the encoder half (decoder keys are expected leftovers); a stale relative-position
    table in the decoder's first cross-attention (old checkpoints) is ignored as the reference ignores it."""
    ref = reference("T5ForConditionalGeneration")
    state = dict(ref.state_dict())
    state = {k: v for k, v in state.items() if "embed_tokens" not in k and k != "lm_head.weight"}
    state["decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"] = torch.zeros(8, 4)
    ref.save_pretrained(tmp_path)
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    b = batch()
    for cls_name in ("T5ForConditionalGeneration", "T5Model", "T5EncoderModel"):
        ours, info = getattr(pretrained, cls_name).from_pretrained(tmp_path, output_loading_info=True)
        theirs, ref_info = getattr(transformers, cls_name).from_pretrained(tmp_path, output_loading_info=True)
        assert_clean_load(info)
        assert sorted(ref_info["unexpected_keys"]) == []
        assert_same_outputs(ours, theirs.eval(), cls_name, b)


# --------------------------------------------------------------------------------------------------------------
# 3. dtypes
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ff", FF)
def test_fp16_loading_keeps_wo_in_float32(tmp_path, ff):
    reference("T5ForConditionalGeneration", feed_forward_proj=ff).save_pretrained(tmp_path)  # float32 on disk
    ours = pretrained.T5ForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.float16)
    ref = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.float16).eval()
    dtypes = {n: p.dtype for n, p in ours.named_parameters()}
    assert dtypes == {n: p.dtype for n, p in ref.named_parameters()}  # the reference's plan, name by name
    for name, dtype in dtypes.items():
        assert dtype == (torch.float32 if name.endswith("DenseReluDense.wo.weight") else torch.float16), name
    assert type(ours)._keep_in_fp32_modules == ["wo"]
    b = batch()
    with torch.no_grad():
        mine = ours(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"])
        theirs = ref(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"])
    assert mine.logits.dtype == theirs.logits.dtype == torch.float16
    assert torch.isfinite(mine.logits).all()
    # same operations in the same dtypes: within two float16 ulps (they agree exactly today)
    assert_close(mine.logits.float(), theirs.logits.float(), atol=2 * 2**-10, rtol=2 * 2**-10)
    # the loss is taken in float32 here (the reference takes it in float16): it is the float32 loss of those logits
    keep = b["labels"] != -100
    expected = torch.nn.functional.cross_entropy(theirs.logits.float()[keep], b["labels"][keep])
    assert_close(mine.loss, expected, atol=1e-4, rtol=1e-4)
    assert_close(mine.loss, theirs.loss.float(), atol=1e-2, rtol=1e-2)


# --------------------------------------------------------------------------------------------------------------
# 4. decoding: labels, encoder outputs, cache, masks
# --------------------------------------------------------------------------------------------------------------
def test_labels_are_shifted_right_into_decoder_inputs(tmp_path):
    ref = reference("T5ForConditionalGeneration")
    ref.save_pretrained(tmp_path)
    ours = pretrained.T5ForConditionalGeneration.from_pretrained(tmp_path)
    labels = batch()["labels"]
    shifted = ours._shift_right(labels)
    assert torch.equal(shifted, ref._shift_right(labels))
    assert (shifted[:, 0] == 0).all() and (shifted != -100).all()
    assert torch.equal(shifted[:, 1:], labels[:, :-1].masked_fill(labels[:, :-1] == -100, 0))
    b = batch()
    with torch.no_grad():
        from_labels = ours(input_ids=b["input_ids"], labels=labels)
        explicit = ours(input_ids=b["input_ids"], decoder_input_ids=shifted)
    assert_close(from_labels.logits, explicit.logits, atol=0.0)
    keep = labels != -100
    expected = torch.nn.functional.cross_entropy(explicit.logits[keep], labels[keep])
    assert_close(from_labels.loss, expected)


def test_encoder_outputs_can_be_passed_in(tmp_path):
    ours = ours_fresh("T5ForConditionalGeneration")
    b = batch()
    with torch.no_grad():
        full = ours(input_ids=b["input_ids"], attention_mask=b["attention_mask"], decoder_input_ids=b["decoder_input_ids"])
        enc = ours.get_encoder()(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
        for given in (enc, (enc.last_hidden_state,), enc.to_tuple()):
            out = ours(encoder_outputs=given, attention_mask=b["attention_mask"],
                       decoder_input_ids=b["decoder_input_ids"])
            assert_close(out.logits, full.logits, atol=0.0)
            assert torch.equal(out.encoder_last_hidden_state, enc.last_hidden_state)


@pytest.mark.parametrize("ff", FF)
def test_incremental_decoding_matches_full_forward(tmp_path, ff):
    ref = reference("T5ForConditionalGeneration", feed_forward_proj=ff)
    ref.save_pretrained(tmp_path)
    ours = pretrained.T5ForConditionalGeneration.from_pretrained(tmp_path)
    b = batch(tgt=7)
    ids, mask, dec = b["input_ids"], b["attention_mask"], b["decoder_input_ids"]
    with torch.no_grad():
        full = ours(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, use_cache=False)
        assert full.past_key_values is None
        assert_close(full.logits, ref(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits)
        enc = (full.encoder_last_hidden_state,)
        first = ours(encoder_outputs=enc, attention_mask=mask, decoder_input_ids=dec[:, :3], use_cache=True)
        cache = first.past_key_values
        steps = [first.logits]
        for t in range(3, dec.shape[1]):
            cross_before = [k for k in cache.cross_attention_cache.keys]
            out = ours(encoder_outputs=enc, attention_mask=mask, decoder_input_ids=dec[:, t:t + 1],
                       past_key_values=cache, use_cache=True)
            assert out.past_key_values is cache and cache.get_seq_length() == t + 1
            assert all(a is b for a, b in zip(cross_before, cache.cross_attention_cache.keys))  # reused, not redone
            steps.append(out.logits)
    assert_close(torch.cat(steps, dim=1), full.logits)
    assert cache.self_attention_cache.keys[0].shape == (2, 4, dec.shape[1], 8)
    assert cache.cross_attention_cache.keys[0].shape == (2, 4, ids.shape[1], 8)


def test_fixed_static_cache_steps_match_full_forward(tmp_path):
    """`cache_position` with a StaticCache as the self-attention cache: each step attends over the whole buffer
    (unwritten positions masked, relative positions from cache_position); stepped token by token it gives the
    full forward's logits, and the cross-attention keys are computed once."""
    from pretrained.generation.cache import DynamicCache, EncoderDecoderCache, StaticCache

    ref = reference("T5ForConditionalGeneration")
    ref.save_pretrained(tmp_path)
    ours = pretrained.T5ForConditionalGeneration.from_pretrained(tmp_path)
    b = batch(tgt=7)
    ids, mask, dec = b["input_ids"], b["attention_mask"], b["decoder_input_ids"]
    L = dec.shape[1] + 3  # positions never written stay masked
    with torch.no_grad():
        full = ours(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, use_cache=False)
        enc = (full.encoder_last_hidden_state,)
        cache = EncoderDecoderCache(StaticCache(max_cache_len=L), DynamicCache())
        steps = []
        for t in range(dec.shape[1]):
            out = ours(encoder_outputs=enc, attention_mask=mask, decoder_input_ids=dec[:, t:t + 1],
                       past_key_values=cache, use_cache=True, cache_position=torch.tensor([t]))
            if t == 0:
                cross = list(cache.cross_attention_cache.keys)
            assert all(a is b for a, b in zip(cross, cache.cross_attention_cache.keys))  # reused, not redone
            steps.append(out.logits)
        assert_close(torch.cat(steps, dim=1), full.logits, atol=1e-5)
        assert cache.self_attention_cache.keys[0].shape == (2, 4, L, 8)  # the whole buffer, written in place
        assert cache.get_seq_length() == dec.shape[1]
        # several tokens at once into a fresh fixed cache: the same logits
        cache = EncoderDecoderCache(StaticCache(max_cache_len=L), DynamicCache())
        first = ours(encoder_outputs=enc, attention_mask=mask, decoder_input_ids=dec[:, :4], past_key_values=cache,
                     cache_position=torch.arange(4))
        rest = ours(encoder_outputs=enc, attention_mask=mask, decoder_input_ids=dec[:, 4:], past_key_values=cache,
                    cache_position=torch.arange(4, dec.shape[1]))
        assert_close(torch.cat([first.logits, rest.logits], dim=1), full.logits, atol=1e-5)


def test_attention_implementations_and_optional_outputs(tmp_path):
    """sdpa == eager; attentions and hidden states equal the reference's (eager), same count and shapes."""
    reference("T5ForConditionalGeneration", feed_forward_proj="gated-gelu").save_pretrained(tmp_path)
    eager = pretrained.T5ForConditionalGeneration.from_pretrained(tmp_path, attn_implementation="eager")
    sdpa = pretrained.T5ForConditionalGeneration.from_pretrained(tmp_path)
    ref = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path, attn_implementation="eager").eval()
    b = batch()
    dec_mask = torch.ones_like(b["decoder_input_ids"])
    dec_mask[0, -2:] = 0  # right-padded decoder row
    kwargs = dict(input_ids=b["input_ids"], attention_mask=b["attention_mask"], decoder_input_ids=b["decoder_input_ids"],
                  decoder_attention_mask=dec_mask)
    with torch.no_grad():
        out = eager(**kwargs, output_attentions=True, output_hidden_states=True)
        theirs = ref(**kwargs, output_attentions=True, output_hidden_states=True)
        assert_close(sdpa(**kwargs).logits, out.logits)
    for field in ("logits", "encoder_last_hidden_state"):
        assert_close(getattr(out, field), getattr(theirs, field))
    for field in ("encoder_hidden_states", "decoder_hidden_states", "encoder_attentions", "decoder_attentions",
                  "cross_attentions"):
        mine, expected = getattr(out, field), getattr(theirs, field)
        assert len(mine) == len(expected), field
        for a, e in zip(mine, expected):
            assert_close(a, e)
    with torch.no_grad():
        as_tuple, ref_tuple = eager(**kwargs, return_dict=False), ref(**kwargs, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(ref_tuple)
    assert_close(as_tuple[0], ref_tuple[0])


def test_padding_is_masked():
    """Padded source tokens change nothing for the real ones (relative positions are measured over the padded
    sequence, so the comparison is between the same padded layout with different pad contents)."""
    ours = ours_fresh("T5ForConditionalGeneration")
    b = batch()
    other = b["input_ids"].clone()
    other[1, :3] = (other[1, :3] + 7) % TINY_T5["vocab_size"]
    with torch.no_grad():
        a = ours(input_ids=b["input_ids"], attention_mask=b["attention_mask"], decoder_input_ids=b["decoder_input_ids"])
        c = ours(input_ids=other, attention_mask=b["attention_mask"], decoder_input_ids=b["decoder_input_ids"])
        unmasked = ours(input_ids=other, decoder_input_ids=b["decoder_input_ids"])
    assert_close(a.logits, c.logits)
    assert_close(a.encoder_last_hidden_state[:, 3:], c.encoder_last_hidden_state[:, 3:])
    assert (unmasked.logits[1] - a.logits[1]).abs().max() > 1e-2


# --------------------------------------------------------------------------------------------------------------
# 5. pieces: buckets, config, embeddings
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bidirectional", [True, False], ids=["encoder", "decoder"])
@pytest.mark.parametrize("num_buckets, max_distance", [(32, 128), (8, 20), (16, 16)])
def test_relative_position_buckets_match_reference(bidirectional, num_buckets, max_distance):
    rel = torch.arange(-300, 301)[None, :]
    expected = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
        rel, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance)
    got = relative_position_bucket(rel, bidirectional, num_buckets, max_distance)
    assert torch.equal(got, expected)
    assert got.min() >= 0 and got.max() < num_buckets


def test_config_names_defaults_and_round_trip(tmp_path):
    c = pretrained.T5Config()
    assert (c.vocab_size, c.d_model, c.d_kv, c.d_ff, c.num_layers, c.num_decoder_layers, c.num_heads) == \
        (32128, 512, 64, 2048, 6, 6, 8)
    assert (c.relative_attention_num_buckets, c.relative_attention_max_distance, c.dropout_rate) == (32, 128, 0.1)
    assert (c.pad_token_id, c.eos_token_id, c.decoder_start_token_id) == (0, 1, 0)
    assert c.is_encoder_decoder and c.tie_word_embeddings and c.scale_decoder_outputs and c.use_cache
    assert (c.hidden_size, c.num_attention_heads, c.num_hidden_layers, c.head_dim) == (512, 8, 6, 64)
    assert (c.dense_act_fn, c.is_gated_act) == ("relu", False)
    g = pretrained.T5Config(feed_forward_proj="gated-gelu", num_layers=3, num_decoder_layers=1, hidden_size=64)
    assert (g.dense_act_fn, g.is_gated_act, g.num_decoder_layers, g.d_model) == ("gelu_new", True, 1, 64)
    assert pretrained.T5Config(feed_forward_proj="gated-silu").dense_act_fn == "silu"
    with pytest.raises(ValueError, match="feed_forward_proj"):
        pretrained.T5Config(feed_forward_proj="silly-gelu")

    # every key the reference writes, we read back to the same value, and the reverse
    ref_config = transformers.T5Config(**TINY_T5, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    ref_config.save_pretrained(tmp_path / "ref")
    ours = pretrained.T5Config.from_pretrained(tmp_path / "ref")
    theirs = json.loads((tmp_path / "ref" / "config.json").read_text())
    for key, value in theirs.items():
        if key not in ("transformers_version", "tie_word_embeddings"):
            assert getattr(ours, key) == value, key
    ours.save_pretrained(tmp_path / "ours")
    back = transformers.T5Config.from_pretrained(tmp_path / "ours")
    for key in ("d_ff", "feed_forward_proj", "dense_act_fn", "is_gated_act", "scale_decoder_outputs",
                "relative_attention_num_buckets", "num_decoder_layers", "decoder_start_token_id"):
        assert getattr(back, key) == getattr(ours, key), key


def test_resize_token_embeddings_keeps_ties_and_resizes_an_untied_head():
    for tie in (True, False):
        model = ours_fresh("T5ForConditionalGeneration", tie_word_embeddings=tie)
        model.resize_token_embeddings(105)
        assert model.shared.weight.shape[0] == model.lm_head.weight.shape[0] == model.config.vocab_size == 105
        assert model.encoder.embed_tokens is model.shared and model.decoder.embed_tokens.weight is model.shared.weight
        assert (model.lm_head.weight is model.shared.weight) is tie
        with torch.no_grad():
            assert model(**{k: v for k, v in batch().items() if k != "labels"}).logits.shape[-1] == 105
