"""Generation: GenerationConfig files, logits processors, and `generate` token-for-token against the reference.

Each family gets one tiny checkpoint written by the reference library and read by both libraries. Weights use a
large initializer_range so that argmaxes are decisive (no float ties between the two implementations).
"""

from __future__ import annotations

import inspect
import json
import warnings

import pytest
import torch

import pretrained
from pretrained.errors import ConfigError
from pretrained.generation import logits as lp
from pretrained.generation.config import CompileConfig, GenerationConfig
from pretrained.generation.streamers import TextStreamer, TokenStreamer

transformers = pytest.importorskip("transformers")
from transformers.generation import logits_process as ref_lp  # noqa: E402

from flax_tf_common import GEN_VOCAB, prompts  # noqa: E402  (the three left-padded prompts every generate test uses)

V = GEN_VOCAB


def _reference_model(kind: str):
    torch.manual_seed(0)
    if kind == "llama":
        cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2,
                                       bos_token_id=1, eos_token_id=2, pad_token_id=0)
        return transformers.LlamaForCausalLM(cfg).eval(), pretrained.AutoModelForCausalLM
    if kind == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                      initializer_range=0.2, bos_token_id=1, eos_token_id=2)
        return transformers.GPT2LMHeadModel(cfg).eval(), pretrained.AutoModelForCausalLM
    cfg = transformers.T5Config(vocab_size=V, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                decoder_start_token_id=0, eos_token_id=2, pad_token_id=0)
    return transformers.T5ForConditionalGeneration(cfg).eval(), pretrained.AutoModelForSeq2SeqLM


@pytest.fixture(scope="module", params=["llama", "gpt2", "t5"])
def pair(request, tmp_path_factory):
    """(reference model, our model loaded from the reference's files, folder)."""
    ref, auto = _reference_model(request.param)
    folder = tmp_path_factory.mktemp(f"gen-{request.param}")
    ref.save_pretrained(folder)
    return ref, auto.from_pretrained(folder), folder


def _same(ref, ours, ids, mask, **kw):
    expected = ref.generate(ids, attention_mask=mask, **kw)
    actual = ours.generate(ids, attention_mask=mask, **kw)
    assert actual.shape == expected.shape and torch.equal(actual, expected), (kw, expected, actual)
    return actual


# ---- parity ---------------------------------------------------------------------------------------------------
CASES = {
    "greedy": dict(max_new_tokens=12),
    "penalties": dict(max_new_tokens=10, repetition_penalty=1.5, no_repeat_ngram_size=2),
    "min_new_tokens": dict(max_new_tokens=8, min_new_tokens=5, eos_token_id=[2, 5]),
    "beam": dict(max_new_tokens=8, num_beams=3),
    "beam_returns": dict(max_new_tokens=8, num_beams=3, num_return_sequences=2, length_penalty=0.5,
                         early_stopping=True),
    "beam_never": dict(max_new_tokens=8, num_beams=4, early_stopping="never"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_parity_single_and_left_padded_batch(pair, case):
    ref, ours, _ = pair
    ids, mask = prompts()
    _same(ref, ours, ids[:1], None, **CASES[case])
    _same(ref, ours, ids, mask, **CASES[case])


def test_parity_eos_stops(pair):
    """EOS chosen among the tokens greedy decoding produces, so that rows stop (and are padded) at different steps."""
    ref, ours, _ = pair
    ids, mask = prompts()
    free = ours.generate(ids, attention_mask=mask, max_new_tokens=10, eos_token_id=None)
    start = 1 if ours.config.is_encoder_decoder else ids.shape[1]
    eos = [int(free[0, start + 2]), int(free[1, start + 5])]
    out = _same(ref, ours, ids, mask, max_new_tokens=10, eos_token_id=eos, pad_token_id=0)
    assert out.shape[1] <= free.shape[1]
    row0 = out[0, start:].tolist()
    first = next(k for k, t in enumerate(row0) if t in eos)
    assert first <= 2 and all(t == 0 for t in row0[first + 1:])  # stopped, then padding
    _same(ref, ours, ids, mask, max_new_tokens=10, eos_token_id=eos, pad_token_id=0, num_beams=3)
    one = ours.generate(ids[:1], max_new_tokens=10, eos_token_id=eos[0])
    assert one.shape[1] <= start + 3 and one[0, -1] == eos[0]  # a single sequence stops at its EOS


def test_seeded_sampling(pair):
    ref, ours, _ = pair
    ids, mask = prompts()
    for kw in (dict(do_sample=True, top_k=20, top_p=0.9, temperature=0.7),
               dict(do_sample=True, min_p=0.1, num_return_sequences=2)):
        torch.manual_seed(3)
        expected = ref.generate(ids, attention_mask=mask, max_new_tokens=8, **kw)
        torch.manual_seed(3)
        actual = ours.generate(ids, attention_mask=mask, max_new_tokens=8, **kw)
        assert torch.equal(actual, expected)
    a = ours.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=True,
                      generator=torch.Generator().manual_seed(7))
    b = ours.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=True,
                      generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_max_length_and_no_cache(pair):
    ref, ours, _ = pair
    ids, mask = prompts()
    length = 12 if not ours.config.is_encoder_decoder else 6
    out = _same(ref, ours, ids, mask, max_length=length, eos_token_id=None)  # no early stop
    assert out.shape[1] == length
    assert torch.equal(ours.generate(ids, attention_mask=mask, max_new_tokens=5, use_cache=False),
                       ours.generate(ids, attention_mask=mask, max_new_tokens=5))


def test_static_cache_gives_the_same_tokens(pair):
    """Every family here takes `cache_position`: a static cache is decoded over with fixed shapes (`_Decoder.fix`,
    eager on the CPU; T5's self-attention cache included), giving the reference's tokens and our dynamic cache's."""
    from pretrained.generation.loop import _Decoder

    ref, ours, _ = pair
    ids, mask = prompts()
    fixed = []
    real_fix = _Decoder.fix

    def fix(self, cache, compiled=None):
        fixed.append(compiled)
        return real_fix(self, cache, compiled)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_Decoder, "fix", fix)
        for kw in (dict(max_new_tokens=8), dict(max_new_tokens=6, num_beams=3)):
            for prompt, prompt_mask in ((ids[:1], None), (ids, mask)):
                expected = ref.generate(prompt, attention_mask=prompt_mask, **kw)
                static = ours.generate(prompt, attention_mask=prompt_mask, cache_implementation="static", **kw)
                assert torch.equal(static, expected), (kw, prompt.shape, expected, static)
                assert torch.equal(ours.generate(prompt, attention_mask=prompt_mask, **kw), expected)
        _same(ref, ours, ids, mask, max_new_tokens=8, cache_implementation="static")
    assert fixed == [None] * 5  # the fixed-length path every time, not compiled


def test_streamer_gets_prompt_then_each_token(pair):
    _, ours, _ = pair
    ids, _ = prompts()
    seen = []
    streamer = TokenStreamer(callback=seen.append)
    out = ours.generate(ids[:1], max_new_tokens=6, streamer=streamer, eos_token_id=None)
    prompt = out.shape[1] - 6
    assert seen[0] == out[0, :prompt].tolist() and [s[0] for s in seen[1:]] == out[0, prompt:].tolist()
    assert sum(list(streamer), []) == out[0].tolist()  # the queue ends after the last token


# ---- fixed-length static cache and the compiled decoding step ----------------------------------------------------
@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """One tiny Llama (reference, ours) for the static-cache and compiled-step tests: compiling a model takes
    seconds, so the compiled tests share this one and its compiled step."""
    ref, auto = _reference_model("llama")
    folder = tmp_path_factory.mktemp("gen-llama-static")
    ref.save_pretrained(folder)
    return ref, auto.from_pretrained(folder)


@pytest.mark.parametrize("kw", [dict(max_new_tokens=12), dict(max_new_tokens=8, num_beams=3)],
                         ids=["greedy", "beam"])
def test_fixed_static_cache_matches_the_reference_and_the_dynamic_cache(llama, kw):
    """Llama takes `cache_position`: a static cache is decoded over whole (fixed shapes, eager here: no
    compile_config on the CPU), and gives the reference's tokens (its default cache) and our dynamic cache's."""
    from pretrained.generation.loop import _Decoder

    ref, ours = llama
    assert "cache_position" in inspect.signature(ours.forward).parameters
    fixed = []
    real_fix = _Decoder.fix

    def fix(self, cache, compiled=None):
        fixed.append(compiled)
        return real_fix(self, cache, compiled)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_Decoder, "fix", fix)
        ids, mask = prompts()
        for prompt, prompt_mask in ((ids[:1], None), (ids, mask)):
            expected = ref.generate(prompt, attention_mask=prompt_mask, **kw)
            static = ours.generate(prompt, attention_mask=prompt_mask, cache_implementation="static", **kw)
            dynamic = ours.generate(prompt, attention_mask=prompt_mask, **kw)
            assert torch.equal(static, expected), (kw, prompt.shape, expected, static)
            assert torch.equal(dynamic, expected)
    assert fixed == [None, None]  # the fixed-length path was taken, and not compiled


def test_compiled_step_matches_the_reference_and_compiles_once(llama, monkeypatch, inductor):
    """`compile_config` on the CPU: one-token steps go through the torch.compile'd step; a second generate with the
    same settings reuses it, without compiling the function again nor recompiling its graph."""
    from pretrained.generation import compiled as compiled_module

    ref, ours = llama
    made, ran = [], []
    real_compile = torch.compile

    def spy(fn, **kwargs):
        made.append(kwargs)
        step = real_compile(fn, **kwargs)

        def counted(**inputs):
            ran.append(tuple(inputs["input_ids"].shape))
            return step(**inputs)
        return counted

    monkeypatch.setattr(torch, "compile", spy)
    compiled_module._STEPS.pop(ours, None)  # compiled afresh here, whichever test of this module ran first
    ids, _ = prompts()
    kw = dict(max_new_tokens=20, cache_implementation="static", compile_config=CompileConfig())
    expected = ref.generate(ids[:1], max_new_tokens=20)
    first = ours.generate(ids[:1], **kw)
    assert torch.equal(first, expected), (expected, first)
    assert len(made) == 1 and made[0]["mode"] == "reduce-overhead"
    assert ran == [(1, 1)] * 19  # the prompt runs eagerly, then every one-token step is compiled
    with torch.compiler.set_stance("fail_on_recompile"):  # raises if the graph had to be compiled again
        again = ours.generate(ids[:1], **kw)
        shorter = ours.generate(ids[:1], **{**kw, "max_new_tokens": 7})  # runs over the longest cache so far
    assert torch.equal(again, expected) and torch.equal(shorter, expected[:, :ids.shape[1] + 7])
    assert len(made) == 1 and len(ran) == 38 + 6


def test_compiled_step_left_padded_batch_matches_the_reference(llama, inductor):
    ref, ours = llama
    ids, mask = prompts()
    expected = ref.generate(ids[:2], attention_mask=mask[:2], max_new_tokens=20)
    actual = ours.generate(ids[:2], attention_mask=mask[:2], max_new_tokens=20, cache_implementation="static",
                           compile_config=CompileConfig())
    assert torch.equal(actual, expected), (expected, actual)


def test_compiled_t5_step_matches_the_reference(monkeypatch, tmp_path, inductor):
    """An encoder-decoder decodes over a fixed self-attention cache too: its first step (the start token) runs
    eagerly and fills the cache's buffers and the cross-attention keys, then every one-token step is compiled; a
    second generate reuses the compiled step without recompiling."""
    from pretrained.generation import compiled as compiled_module

    ref, auto = _reference_model("t5")
    ref.save_pretrained(tmp_path)
    ours = auto.from_pretrained(tmp_path)
    calls = []
    real_call = compiled_module.CompiledStep.__call__

    def counted(self, **inputs):
        calls.append(tuple(inputs["decoder_input_ids"].shape))
        return real_call(self, **inputs)

    monkeypatch.setattr(compiled_module.CompiledStep, "__call__", counted)
    ids, _ = prompts()
    kw = dict(max_new_tokens=10, cache_implementation="static", compile_config=CompileConfig())
    expected = ref.generate(ids[:1], max_new_tokens=10)
    first = ours.generate(ids[:1], **kw)
    assert torch.equal(first, expected), (expected, first)
    assert calls == [(1, 1)] * 9
    with torch.compiler.set_stance("fail_on_recompile"):  # raises if the graph had to be compiled again
        assert torch.equal(ours.generate(ids[:1], **kw), expected)
    assert len(calls) == 18
    compiled_module._STEPS.pop(ours, None)


def test_row_vector_linear_rewrites_only_single_cpu_rows():
    from torch.nn import functional as F

    from pretrained.generation.compiled import RowVectorLinear

    g = torch.Generator().manual_seed(0)
    K, N = 48, 24
    weight, bias = torch.randn(N, K, generator=g), torch.randn(N, generator=g)
    row = torch.randn(1, 1, K, generator=g)
    for b in (None, bias):
        expected = F.linear(row, weight, b)
        with RowVectorLinear():
            got = F.linear(row, weight, b)
            as_kwarg = F.linear(row, weight, bias=b)
        assert got.shape == expected.shape == (1, 1, N)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(as_kwarg, expected, rtol=1e-5, atol=1e-6)
    for shape in ((2, 1, K), (1, 3, K)):  # not a single row: the ordinary F.linear, bit for bit
        x = torch.randn(*shape, generator=g)
        for b in (None, bias):
            expected = F.linear(x, weight, b)
            with RowVectorLinear():
                got = F.linear(x, weight, b)
            assert torch.equal(got, expected), shape


def test_static_cache_positioned_writes_return_the_whole_buffers():
    from pretrained.generation.cache import StaticCache

    cache = StaticCache(max_cache_len=6)
    assert cache.get_seq_length() == 0
    k, v = torch.randn(2, 2, 3, 4), torch.randn(2, 2, 3, 4)
    keys, values = cache.update(k, v, 0, cache_position=torch.tensor([0, 1, 2]))
    assert keys is cache.keys[0] and values is cache.values[0]
    assert keys.shape == values.shape == (2, 2, 6, 4)  # the whole buffers, not the filled part
    assert torch.equal(keys[:, :, :3], k) and torch.equal(values[:, :, :3], v)
    assert not keys[:, :, 3:].any() and not values[:, :, 3:].any()
    assert cache.get_seq_length() == 3 and cache.get_seq_length(1) == 0
    k1, v1 = torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4)
    keys, values = cache.update(k1, v1, 0, cache_position=torch.tensor([4]))
    assert keys.shape == (2, 2, 6, 4) and keys is cache.keys[0]
    assert torch.equal(keys[:, :, 4:5], k1) and torch.equal(values[:, :, 4:5], v1)
    assert torch.equal(keys[:, :, :3], k) and not keys[:, :, 3].any() and not keys[:, :, 5].any()
    assert cache.get_seq_length() == 5  # after the last position written
    cache.update(k, v, 1, cache_position=torch.tensor([0, 1, 2]))
    assert cache.get_seq_length(1) == 3 and len(cache) == 2
    cache.set_length(6)  # as after a compiled step
    assert cache.get_seq_length() == cache.get_seq_length(1) == 6


def test_static_cache_appends_until_full():
    from pretrained.generation.cache import StaticCache

    cache = StaticCache(max_cache_len=4)
    k = torch.randn(1, 2, 3, 4)
    keys, _ = cache.update(k, k, 0)
    assert keys.shape == (1, 2, 3, 4) and torch.equal(keys, k)  # the filled part
    one = torch.randn(1, 2, 1, 4)
    keys, _ = cache.update(one, one, 0)
    assert keys.shape == (1, 2, 4, 4) and cache.get_seq_length() == 4
    with pytest.raises(ValueError, match="max_cache_len=4"):
        cache.update(one, one, 0)


def test_static_cache_reorders_in_place():
    from pretrained.generation.cache import StaticCache

    cache = StaticCache(max_cache_len=5)
    for layer in range(2):
        k, v = torch.randn(3, 2, 2, 4), torch.randn(3, 2, 2, 4)
        cache.update(k, v, layer, cache_position=torch.tensor([0, 1]))
    buffers = [(k, v) for k, v in zip(cache.keys, cache.values)]
    before = [(k.clone(), v.clone()) for k, v in buffers]
    cache.reorder_cache(torch.tensor([2, 0, 0]))
    for (k, v), (k0, v0), (k1, v1) in zip(buffers, before, zip(cache.keys, cache.values)):
        assert k1 is k and v1 is v  # the same tensors: a compiled step keeps working on them
        assert torch.equal(k, k0[[2, 0, 0]]) and torch.equal(v, v0[[2, 0, 0]])
    assert cache.get_seq_length() == 2


def test_compile_config_in_generation_config(tmp_path):
    with pytest.raises(ConfigError, match="compile_config"):
        GenerationConfig(compile_config="fast")
    with pytest.raises(ConfigError, match="disable_compile"):
        GenerationConfig(disable_compile="yes")
    config = GenerationConfig(compile_config={"fullgraph": True, "mode": "default"})
    assert config.compile_config == CompileConfig(fullgraph=True, mode="default")
    assert config.copy(max_new_tokens=3).compile_config == config.compile_config
    assert CompileConfig(options={"max_autotune": True}).compile_kwargs() == dict(
        fullgraph=False, dynamic=None, backend="inductor", options={"max_autotune": True})  # options win over mode
    assert CompileConfig().compile_kwargs()["mode"] == "reduce-overhead"
    GenerationConfig(max_new_tokens=5, compile_config=CompileConfig(), disable_compile=True).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "generation_config.json").read_text())
    assert "compile_config" not in data and data["disable_compile"] is True and data["max_new_tokens"] == 5
    again = GenerationConfig.from_pretrained(tmp_path)
    assert again.disable_compile is True and again.compile_config is None
    assert transformers.GenerationConfig.from_pretrained(tmp_path).disable_compile is True


def test_compile_settings():
    from types import SimpleNamespace

    from pretrained.generation.compiled import compile_settings

    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    one_place = SimpleNamespace(hf_device_map={"model.layers.0": 0, "lm_head": 0})
    plain = SimpleNamespace()
    asked = CompileConfig(fullgraph=True)
    assert compile_settings(plain, GenerationConfig(), cpu) is None  # the CPU compiles only when asked
    assert compile_settings(plain, GenerationConfig(compile_config=asked), cpu) == asked
    assert compile_settings(plain, GenerationConfig(), cuda) == CompileConfig()  # a GPU compiles by default
    assert compile_settings(one_place, GenerationConfig(compile_config=asked), cuda) == asked
    assert compile_settings(plain, GenerationConfig(compile_config=asked, disable_compile=True), cpu) is None
    assert compile_settings(plain, GenerationConfig(disable_compile=True), cuda) is None
    for device_map in ({"model.layers.0": 0, "lm_head": 1}, {"model.layers.0": "cpu", "lm_head": "disk"},
                       {"model": "disk"}):
        spread = SimpleNamespace(hf_device_map=device_map)
        assert compile_settings(spread, GenerationConfig(compile_config=asked), cpu) is None, device_map
        assert compile_settings(spread, GenerationConfig(), cuda) is None, device_map


# ---- return_dict_in_generate ---------------------------------------------------------------------------------
DICT_CASES = {
    "greedy": dict(max_new_tokens=8),
    "greedy_eos_penalties": dict(max_new_tokens=8, eos_token_id=[2, 5], repetition_penalty=1.5,
                                 no_repeat_ngram_size=2),  # processed scores differ from the raw logits
    "beam": dict(max_new_tokens=8, num_beams=3),
    "beam_returns_eos": dict(max_new_tokens=8, num_beams=3, num_return_sequences=2, length_penalty=0.5,
                             repetition_penalty=1.3),  # EOS: tokens the beams pick, so that hypotheses end early
}


def _self_keys(cache):
    """Layer 0's cached self-attention keys, from either library's cache."""
    cache = getattr(cache, "self_attention_cache", cache)
    return cache.layers[0].keys if hasattr(cache, "layers") else cache.keys[0]


def _same_steps(expected, actual, what):
    assert isinstance(actual, tuple) and len(actual) == len(expected), what
    for step, (e, a) in enumerate(zip(expected, actual)):
        assert a.shape == e.shape and a.dtype == e.dtype, (what, step)
        torch.testing.assert_close(a, e, atol=1e-5, rtol=0, msg=f"{what}[{step}]")


@pytest.mark.parametrize("case", list(DICT_CASES))
def test_dict_outputs_match_the_reference(pair, case):
    ref, ours, _ = pair
    ids, mask = prompts()
    kw = dict(DICT_CASES[case], return_dict_in_generate=True, output_scores=True, output_logits=True)
    if case == "beam_returns_eos":
        free = ours.generate(ids, attention_mask=mask, **dict(DICT_CASES[case], eos_token_id=None))
        start = 1 if ours.config.is_encoder_decoder else ids.shape[1]
        kw.update(eos_token_id=[int(free[0, start + 2]), int(free[2, start + 4])], pad_token_id=0)
    expected = ref.generate(ids, attention_mask=mask, **kw)
    actual = ours.generate(ids, attention_mask=mask, **kw)
    assert type(actual).__name__ == type(expected).__name__
    assert list(actual.keys()) == list(expected.keys())
    assert torch.equal(actual.sequences, expected.sequences)
    _same_steps(expected.scores, actual.scores, "scores")
    _same_steps(expected.logits, actual.logits, "logits")
    if kw.get("num_beams", 1) > 1:
        assert actual.sequences_scores.shape == (ids.shape[0] * kw.get("num_return_sequences", 1),)
        torch.testing.assert_close(actual.sequences_scores, expected.sequences_scores, atol=1e-5, rtol=0)
        assert actual.beam_indices.dtype == expected.beam_indices.dtype  # int32, -1 past a hypothesis' end
        assert torch.equal(actual.beam_indices, expected.beam_indices)
        if case == "beam_returns_eos":  # hypotheses of different lengths: the shorter ones padded with -1
            assert bool((actual.beam_indices == -1).any())
    # the cache comes back, as long as the sequences (less the last token) and in the same beam order; keys at
    # prompt padding are never attended to, so only real positions are compared
    assert actual.cache.get_seq_length() == expected.cache.get_seq_length()
    assert actual.past_key_values is actual.cache and actual["past_key_values"] is actual.cache  # the 5.23 name
    ours_keys, ref_keys = _self_keys(actual.cache), _self_keys(expected.cache)
    real = torch.ones(ours_keys.shape[0], ours_keys.shape[2], dtype=torch.bool)
    if not ours.config.is_encoder_decoder:
        real[:, :ids.shape[1]] = mask.bool().repeat_interleave(ours_keys.shape[0] // ids.shape[0], dim=0)
    torch.testing.assert_close(ours_keys.transpose(1, 2)[real], ref_keys.transpose(1, 2)[real], atol=1e-5, rtol=0)
    # tuple access skips what was not asked for
    assert actual[0] is actual.sequences and actual["scores"] is actual.scores and "attentions" not in actual
    assert len(actual) == len(expected)


def test_dict_outputs_only_what_is_asked(pair):
    ref, ours, _ = pair
    ids, mask = prompts()
    for kw in (dict(), dict(output_logits=True), dict(num_beams=2), dict(num_beams=2, output_logits=True)):
        kw = dict(kw, max_new_tokens=4, return_dict_in_generate=True)
        expected = ref.generate(ids, attention_mask=mask, **kw)
        actual = ours.generate(ids, attention_mask=mask, **kw)
        assert list(actual.keys()) == list(expected.keys()), kw  # beam_indices always, sequences_scores not
        assert torch.equal(actual.sequences, expected.sequences)
    plain = ours.generate(ids, attention_mask=mask, max_new_tokens=4)
    as_dict = ours.generate(ids, attention_mask=mask, max_new_tokens=4, return_dict_in_generate=True)
    assert isinstance(plain, torch.Tensor) and torch.equal(plain, as_dict.sequences)
    with pytest.warns(UserWarning, match="output_scores.*return_dict_in_generate=True"):
        ignored = ours.generate(ids, attention_mask=mask, max_new_tokens=4, output_scores=True)
    assert isinstance(ignored, torch.Tensor) and torch.equal(ignored, plain)  # a tensor, as the reference


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_dict_attentions_and_hidden_states_match_the_reference(kind, tmp_path):
    ref, auto = _reference_model(kind)
    ref.save_pretrained(tmp_path)
    ref = type(ref).from_pretrained(tmp_path, attn_implementation="eager").eval()  # sdpa keeps no weights
    ours = auto.from_pretrained(tmp_path)
    ids = torch.randint(3, V, (2, 6), generator=torch.Generator().manual_seed(4))  # no padding
    for extra in (dict(), dict(num_beams=2)):
        kw = dict(extra, max_new_tokens=4, return_dict_in_generate=True, output_attentions=True,
                  output_hidden_states=True)
        expected = ref.generate(ids, **kw)
        actual = ours.generate(ids, **kw)
        assert list(actual.keys()) == list(expected.keys())
        assert torch.equal(actual.sequences, expected.sequences)
        per_step = [k for k in actual.keys() if k.endswith(("attentions", "hidden_states"))
                    and not k.startswith("encoder")]
        assert len(per_step) == (3 if kind == "t5" else 2)
        for key in per_step:
            assert len(actual[key]) == len(expected[key]) == actual.sequences.shape[1] - (1 if kind == "t5" else 6)
            for step, (e, a) in enumerate(zip(expected[key], actual[key])):
                _same_steps(e, a, f"{key}[{step}]")
        if kind == "t5":  # the encoder's, once, not repeated for beams
            _same_steps(expected.encoder_attentions, actual.encoder_attentions, "encoder_attentions")
            _same_steps(expected.encoder_hidden_states, actual.encoder_hidden_states, "encoder_hidden_states")
            assert actual.encoder_attentions[0].shape[0] == ids.shape[0]


def test_dict_output_classes_are_exported_with_the_reference_fields():
    import dataclasses

    import transformers.generation.utils as ref_utils

    import pretrained.generation as generation

    for name in ("GenerateDecoderOnlyOutput", "GenerateEncoderDecoderOutput", "GenerateBeamDecoderOnlyOutput",
                 "GenerateBeamEncoderDecoderOutput"):
        ours = getattr(pretrained, name)
        assert ours is getattr(generation, name) and name in pretrained.__all__
        assert [f.name for f in dataclasses.fields(ours)] == [f.name for f in dataclasses.fields(getattr(ref_utils,
                                                                                                         name))]


# ---- facts, config files, errors -----------------------------------------------------------------------------
def test_can_generate_only_for_generative_classes():
    assert pretrained.LlamaForCausalLM.can_generate() and pretrained.GPT2LMHeadModel.can_generate()
    assert pretrained.T5ForConditionalGeneration.can_generate()
    assert not pretrained.LlamaModel.can_generate() and not pretrained.LlamaForSequenceClassification.can_generate()
    assert not hasattr(pretrained.LlamaModel, "generate")


def test_generation_config_round_trip(pair, tmp_path):
    ref, ours, folder = pair
    assert ours.generation_config.eos_token_id == ref.generation_config.eos_token_id
    ours.generation_config.max_new_tokens = 4
    ours.generation_config.top_k = 7
    ours.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "generation_config.json").read_text())
    assert data["max_new_tokens"] == 4 and data["top_k"] == 7 and "num_beams" not in data  # only what is set
    assert transformers.GenerationConfig.from_pretrained(tmp_path).max_new_tokens == 4
    again = type(ours).from_pretrained(tmp_path)
    assert again.generation_config == ours.generation_config
    ids, _ = prompts()
    assert again.generate(ids[:1]).shape[1] - ours.generate(ids[:1], max_new_tokens=4).shape[1] == 0
    ours.generation_config.max_new_tokens = None
    ours.generation_config.top_k = None


def test_generation_config_from_reference_file_and_overrides(tmp_path):
    transformers.GenerationConfig(max_new_tokens=9, do_sample=True, top_p=0.8, eos_token_id=[2, 3],
                                  custom_field="kept").save_pretrained(tmp_path)
    config = GenerationConfig.from_pretrained(tmp_path)
    assert (config.max_new_tokens, config.do_sample, config.top_p, config.eos_token_ids) == (9, True, 0.8, [2, 3])
    assert config.get("num_beams") == 1 and config.get("top_k") == 50  # the reference's defaults
    assert config.custom_field == "kept"
    changed = config.copy(top_p=0.5)
    assert changed.top_p == 0.5 and config.top_p == 0.8
    with pytest.raises(ConfigError, match="nonsense"):
        config.copy(nonsense=1)


def test_legacy_generation_fields_in_config_json(tmp_path):
    config = pretrained.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                    num_attention_heads=4, num_key_value_heads=2, eos_token_id=5)
    config.max_length = 33
    config.num_beams = 2
    generation = GenerationConfig.from_model_config(config)
    assert (generation.max_length, generation.num_beams, generation.eos_token_id) == (33, 2, 5)
    model = pretrained.LlamaForCausalLM(config)
    assert model.generation_config.max_length == 33
    model.save_pretrained(tmp_path)  # then a checkpoint whose config.json alone carries the fields
    (tmp_path / "generation_config.json").unlink()
    data = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**data, "max_length": 11, "do_sample": True, "top_k": 50}))
    loaded = pretrained.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert (loaded.generation_config.max_length, loaded.generation_config.do_sample) == (11, True)
    assert loaded.generation_config.top_k is None  # a legacy default is not a choice


@pytest.mark.parametrize("field, value", [("temperature", 0.0), ("top_p", 1.5), ("num_beams", 0),
                                          ("max_new_tokens", -1), ("min_p", 2.0), ("do_sample", "yes"),
                                          ("cache_implementation", "paged"), ("early_stopping", "soon"),
                                          ("eos_token_id", "2"), ("output_logits", 1),
                                          ("return_dict_in_generate", "yes")])
def test_invalid_field_is_named(field, value):
    with pytest.raises(ConfigError, match=field):
        GenerationConfig(**{field: value})


def test_invalid_file_names_path_and_field(tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps({"top_k": -3}))
    with pytest.raises(ConfigError, match="top_k") as err:
        GenerationConfig.from_pretrained(tmp_path)
    assert "generation_config.json" in str(err.value)


def test_unsupported_options_raise(pair):
    _, ours, _ = pair
    ids, _ = prompts()
    with pytest.raises(ValueError, match="stop_strings.*tokenizer"):
        ours.generate(ids[:1], stop_strings=["x"])
    with pytest.raises(ConfigError, match="num_return_sequences"):
        ours.generate(ids[:1], num_return_sequences=3)


# ---- stop strings ----------------------------------------------------------------------------------------------
def _byte_level_tokenizer():
    """A tiny byte-level BPE built from a fixed vocabulary and merges (no downloads, no training): V tokens, so ids
    fit the tiny models, several of which span or complete the stop strings used below."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    singles = list("abcdehilnorstu.,") + ["\u0120", "\u010a"]  # byte-level forms of " " and "\n"
    merges = [("o", "n"), ("a", "t"), ("t", "h"), ("th", "e"), ("\u0120", "the"), ("\u010a", "\u010a"),
              ("\u0120", "\u0120"), ("s", "t"), ("st", "o"), ("sto", "p"), ("\u0120", "a"), ("\u0120", "s"),
              ("i", "n"), ("e", "r"), ("e", "n"), ("\u0120", "t"), ("\u0120", "o"), ("o", "r"), ("r", "e"),
              ("a", "n"), ("an", "d"), ("\u0120", "and"), ("h", "e"), ("\u0120", "he"), ("e", "s"),
              ("\u0120t", "o"), (".", "\u010a"), ("i", "s"), ("\u0120", "is"), ("\u0120", "on"),
              ("\u0120", "at"), ("u", "n"), ("l", "e"), ("c", "at"), ("\u0120", "cat"), ("\u0120", "c"),
              ("c", "o"), ("co", "n"), ("h", "i"), ("t", "o"), ("\u0120", "in"), ("o", "u"), ("ou", "t"),
              ("\u0120", "out"), ("\u010a", "the")]
    singles += ["p"]
    vocab = {tok: i for i, tok in enumerate(singles)}
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def test_stop_strings_match_the_reference(tmp_path):
    from transformers import PreTrainedTokenizerFast

    backend = _byte_level_tokenizer()
    assert backend.get_vocab_size() == V
    ref_tok = PreTrainedTokenizerFast(tokenizer_object=backend)
    ref, cls = _reference_model("llama")
    ref.save_pretrained(tmp_path)
    ours = cls.from_pretrained(tmp_path)
    stopped = 0
    for seed in range(12):
        ids = torch.randint(3, backend.get_vocab_size(), (2, 5), generator=torch.Generator().manual_seed(seed))
        for stop in (["at", "on"], "\n\n", [" the", "stop"], "e "):
            kw = dict(max_new_tokens=12, stop_strings=stop, eos_token_id=2, pad_token_id=0)
            expected = ref.generate(ids, attention_mask=torch.ones_like(ids), tokenizer=ref_tok, **kw)
            got = ours.generate(ids, tokenizer=ref_tok, **kw)
            assert torch.equal(got, expected), (seed, stop)
            assert torch.equal(ours.generate(ids, tokenizer=backend, **kw), expected)  # a bare `tokenizers` one
            stopped += expected.shape[1] < ids.shape[1] + 12
    assert stopped >= 3  # the stop strings did end some generations early


def test_stop_strings_with_beam_search_match_the_reference(tmp_path):
    """A candidate whose tokens end with a stop string is a finished hypothesis, as one that ends with EOS."""
    from transformers import PreTrainedTokenizerFast

    backend = _byte_level_tokenizer()
    ref_tok = PreTrainedTokenizerFast(tokenizer_object=backend)
    ref, cls = _reference_model("llama")
    ref.save_pretrained(tmp_path)
    ours = cls.from_pretrained(tmp_path)
    changed = 0
    for seed in range(6):
        ids = torch.randint(3, V, (2, 5), generator=torch.Generator().manual_seed(seed))
        for stop in (["at", "on"], "\n\n", [" the", "stop"], "e "):
            kw = dict(max_new_tokens=10, eos_token_id=2, pad_token_id=0, num_beams=3, num_return_sequences=2,
                      return_dict_in_generate=True, output_scores=True)
            expected = ref.generate(ids, attention_mask=torch.ones_like(ids), tokenizer=ref_tok, stop_strings=stop,
                                    **kw)
            for tokenizer in (ref_tok, backend):
                got = ours.generate(ids, tokenizer=tokenizer, stop_strings=stop, **kw)
                assert torch.equal(got.sequences, expected.sequences), (seed, stop)
                torch.testing.assert_close(got.sequences_scores, expected.sequences_scores, atol=1e-5, rtol=0)
                assert torch.equal(got.beam_indices, expected.beam_indices)
            free = ours.generate(ids, **kw)
            changed += not torch.equal(free.sequences, expected.sequences) if free.sequences.shape == \
                expected.sequences.shape else 1
    assert changed >= 5  # the stop strings did finish hypotheses


# ---- processors against the reference's ----------------------------------------------------------------------
@pytest.fixture
def scores():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 20, (4, 12), generator=g)
    ids[:, -2:] = ids[:, 3:5]  # a repeated bigram prefix, so that n-gram bans happen
    return ids, torch.randn(4, 20, generator=g) * 3


@pytest.mark.parametrize("ours, theirs", [
    (lambda i, s: lp.temperature(i, s, 0.7), ref_lp.TemperatureLogitsWarper(0.7)),
    (lambda i, s: lp.top_k(i, s, 5), ref_lp.TopKLogitsWarper(5)),
    (lambda i, s: lp.top_k(i, s, 1, min_keep=3), ref_lp.TopKLogitsWarper(1, min_tokens_to_keep=3)),
    (lambda i, s: lp.top_p(i, s, 0.8), ref_lp.TopPLogitsWarper(0.8)),
    (lambda i, s: lp.top_p(i, s, 0.05, min_keep=2), ref_lp.TopPLogitsWarper(0.05, min_tokens_to_keep=2)),
    (lambda i, s: lp.min_p(i, s, 0.2), ref_lp.MinPLogitsWarper(0.2)),
    (lambda i, s: lp.min_p(i, s, 0.9, min_keep=3), ref_lp.MinPLogitsWarper(0.9, min_tokens_to_keep=3)),
    (lambda i, s: lp.repetition_penalty(i, s, 1.3), ref_lp.RepetitionPenaltyLogitsProcessor(1.3)),
    (lambda i, s: lp.no_repeat_ngram(i, s, 3), ref_lp.NoRepeatNGramLogitsProcessor(3)),
    (lambda i, s: lp.no_repeat_ngram(i, s, 1), ref_lp.NoRepeatNGramLogitsProcessor(1)),
    (lambda i, s: lp.min_length(i, s, 13, [2, 7]), ref_lp.MinLengthLogitsProcessor(13, [2, 7])),
    (lambda i, s: lp.min_new_tokens(i, s, 10, 3, [4]), ref_lp.MinNewTokensLengthLogitsProcessor(10, 3, [4])),
])
def test_processor_matches_reference(scores, ours, theirs):
    ids, s = scores
    before = s.clone()
    torch.testing.assert_close(ours(ids, s), theirs(ids, s.clone()), atol=0, rtol=0)
    assert torch.equal(s, before)  # pure


def test_repetition_penalty_ignores_padding(scores):
    ids, s = scores
    pads = torch.tensor([0, 3, 5, 0])
    ignore = torch.arange(ids.shape[1])[None] < pads[:, None]
    expected = ref_lp.RepetitionPenaltyLogitsProcessor(1.4, prompt_ignore_length=pads)(ids, s.clone())
    torch.testing.assert_close(lp.repetition_penalty(ids, s, 1.4, ignore), expected, atol=0, rtol=0)


# ---- streamers -----------------------------------------------------------------------------------------------
class _WordTokenizer:
    words = ["<p>", "hello", " world", " again", "\n", " and", " more"]

    def decode(self, ids):
        return "".join(self.words[i] for i in ids)


def test_text_streamer_prints_whole_words():
    chunks = []
    streamer = TextStreamer(_WordTokenizer(), skip_prompt=True, on_text=lambda t, final: chunks.append(t))
    streamer.put(torch.tensor([[0]]))  # the prompt, skipped
    for token in (1, 2, 3, 4, 5, 6):
        streamer.put(torch.tensor([token]))
    streamer.end()
    assert "".join(chunks) == "hello world again\n and more"
    assert chunks[:2] == ["", "hello "]  # a word is written once the next one starts
    with pytest.raises(ValueError, match="batch"):
        TokenStreamer().put(torch.zeros(2, 3, dtype=torch.long))


# ---- the generate command ------------------------------------------------------------------------------------
def test_generate_command_streams_text(tmp_path, capsys):
    from tokenizers import Tokenizer, models, pre_tokenizers

    from pretrained.cli import main

    ref, _ = _reference_model("llama")
    ref.save_pretrained(tmp_path)
    vocab = {f"w{i}": i for i in range(V)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    prompt = "w5 w9 w33 w17"
    assert main(["generate", str(tmp_path), "--prompt", prompt, "--max-new-tokens", "6"]) == 0
    out, err = capsys.readouterr()
    ids = torch.tensor([tokenizer.encode(prompt).ids])
    expected = ref.generate(ids, max_new_tokens=6)[0, ids.shape[1]:].tolist()
    assert out.startswith(prompt) and out.split()[4:] == [f"w{i}" for i in expected]
    assert "tokens/s" in err
    assert main(["generate", str(tmp_path), "--prompt", prompt, "--max-new-tokens", "3", "--do-sample",
                 "--top-k", "5", "--seed", "1"]) == 0
    assert main(["generate", str(tmp_path / "nowhere"), "--prompt", prompt]) == 2


def test_default_compile_falls_back_when_compiling_fails(llama, monkeypatch):
    """On a GPU a static cache compiles by default; if compiling fails there (no compiler, an unsupported op), the
    step runs eagerly with a warning, and later calls do not try again. Asked for with compile_config, it raises."""
    from pretrained.generation import compiled as compiled_module
    from pretrained.generation import loop

    ref, ours = llama
    attempts = []

    def broken_compile(fn, **kwargs):
        def step(**inputs):
            attempts.append(1)
            raise RuntimeError("no C++ compiler\nmore detail")
        return step

    monkeypatch.setattr(compiled_module.torch, "compile", broken_compile)
    monkeypatch.setattr(loop, "compile_settings", lambda model, config, device: (
        None if config.get("disable_compile") else config.get("compile_config") or CompileConfig()))
    compiled_module._STEPS.pop(ours, None)
    ids, _ = prompts()
    expected = ref.generate(ids[:1], max_new_tokens=6)
    with pytest.warns(RuntimeWarning, match="compiling the decoding step failed .RuntimeError: no C.. compiler"):
        assert torch.equal(ours.generate(ids[:1], max_new_tokens=6, cache_implementation="static"), expected)
    assert attempts == [1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second attempt, no second warning
        assert torch.equal(ours.generate(ids[:1], max_new_tokens=6, cache_implementation="static"), expected)
    assert attempts == [1]
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        ours.generate(ids[:1], max_new_tokens=6, cache_implementation="static", compile_config=CompileConfig())
    compiled_module._STEPS.pop(ours, None)


@pytest.mark.parametrize("keyword", ["cache", "past_key_values"])
def test_generate_continues_from_a_given_cache(pair, keyword):
    """generate(cache=...) (or the 5.23 name past_key_values=) runs only the tokens the cache has not seen and
    gives the tokens of a generate() without it, as the reference's does."""
    ref, ours, _ = pair
    if ours.config.is_encoder_decoder:
        pytest.skip("a prefix cache is a decoder-only use")
    ids, mask = prompts()
    ids, mask = ids[:1, -6:], mask[:1, -6:]  # one unpadded prompt
    full = ours.generate(ids, max_new_tokens=5)
    prefix = ours(input_ids=ids[:, :4], use_cache=True).cache
    assert prefix.get_seq_length() == 4
    resumed = ours.generate(ids, max_new_tokens=5, **{keyword: prefix})
    assert torch.equal(resumed, full)
    assert prefix.get_seq_length() == full.shape[1] - 1  # it was used, not copied
    ref_prefix = ref(input_ids=ids[:, :4], use_cache=True).cache
    assert torch.equal(ref.generate(ids, max_new_tokens=5, do_sample=False, cache=ref_prefix), full)
    with pytest.raises(TypeError, match="both cache= and past_key_values="):
        ours.generate(ids, max_new_tokens=2, cache=prefix, past_key_values=prefix)
    with pytest.raises(ValueError, match="not both"):
        ours.generate(ids, max_new_tokens=2, cache=prefix, cache_implementation="static")


def test_outputs_take_and_answer_the_old_cache_name():
    from pretrained.generation.outputs import GenerateDecoderOnlyOutput
    from pretrained.modeling.outputs import CausalLMOutputWithPast, MaskedLMOutput

    marker = object()
    for out in (CausalLMOutputWithPast(logits=torch.ones(1), past_key_values=marker),
                CausalLMOutputWithPast(torch.zeros(()), torch.ones(1), marker)):
        assert out.cache is marker and out.past_key_values is marker and out["past_key_values"] is marker
        assert "past_key_values" in out and "cache" in out and out[-1] is marker and out.keys()[-1] == "cache"
    gen = GenerateDecoderOnlyOutput(sequences=torch.ones(1, 2), past_key_values=marker)
    assert gen.cache is marker and gen.to_tuple() == (gen.sequences, marker)
    gen.past_key_values = None
    assert gen.cache is None and "cache" not in gen
    with pytest.raises(TypeError, match="both"):
        CausalLMOutputWithPast(cache=marker, past_key_values=marker)
    with pytest.raises(AttributeError):
        MaskedLMOutput().past_key_values  # no cache field: no alias either
