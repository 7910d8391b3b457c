"""FlaxGenerationMixin.generate: tokens equal our PyTorch `generate` on the same checkpoint, the compiled loop is
built once, the logits processors equal the PyTorch ones, and `pretrained generate --framework flax`.

Each family gets one tiny checkpoint written by our PyTorch class (initializer_range 0.2: decisive argmaxes, so that
float differences between the frameworks cannot flip a token) and read by both frameworks.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

flax = pytest.importorskip("flax", reason="jax/flax not installed (pip install pretrained[flax])")
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import torch  # noqa: E402

import pretrained  # noqa: E402
from pretrained.errors import ConfigError  # noqa: E402
from pretrained.flax import generation as fg  # noqa: E402
from pretrained.generation import logits as lp  # noqa: E402

V = 64
SMALL = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.2, bos_token_id=1, eos_token_id=2,
             pad_token_id=0)
CONFIGS = {
    "llama": lambda: pretrained.LlamaConfig(**SMALL),
    "mistral": lambda: pretrained.MistralConfig(**SMALL, sliding_window=6),  # the window matters in 14 tokens
    "qwen2": lambda: pretrained.Qwen2Config(**SMALL),
    "gemma": lambda: pretrained.GemmaConfig(**{**SMALL, "head_dim": 8}),
    "gpt2": lambda: pretrained.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                          initializer_range=0.2, bos_token_id=1, eos_token_id=2),
    "t5": lambda: pretrained.T5Config(vocab_size=V, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                      initializer_factor=4.0, decoder_start_token_id=0, eos_token_id=2,
                                      pad_token_id=0),
}


def _save(family: str, folder) -> None:
    torch.manual_seed(0)
    config = CONFIGS[family]()
    auto = pretrained.AutoModelForSeq2SeqLM if family == "t5" else pretrained.AutoModelForCausalLM
    auto.from_config(config).save_pretrained(folder)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """models(family) -> (our PyTorch model, our Flax model, folder), both loaded from one checkpoint folder, built
    once per module: a Flax model keeps its compiled decoding programs, so tests that share settings share them."""
    loaded = {}

    def get(family: str):
        if family not in loaded:
            folder = tmp_path_factory.mktemp(f"flax-gen-{family}")
            _save(family, folder)
            if family == "t5":
                loaded[family] = (pretrained.AutoModelForSeq2SeqLM.from_pretrained(folder).eval(),
                                  pretrained.FlaxAutoModelForSeq2SeqLM.from_pretrained(folder), folder)
            else:
                loaded[family] = (pretrained.AutoModelForCausalLM.from_pretrained(folder).eval(),
                                  pretrained.FlaxAutoModelForCausalLM.from_pretrained(folder), folder)
        return loaded[family]

    return get


def _prompts():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, V, (3, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    mask[2, :4] = 0
    return ids.masked_fill(mask == 0, 0), mask


def _same(torch_model, flax_model, ids, mask, **kw):
    """Flax sequences (N, max_length) hold PyTorch's (N, T) first (PyTorch trims to its longest row), then only
    the pad value."""
    expected = torch_model.generate(ids, attention_mask=mask, **kw)
    out = flax_model.generate(ids.numpy(), attention_mask=None if mask is None else mask.numpy(), **kw)
    actual = np.asarray(out.sequences)
    T = expected.shape[1]
    assert actual.shape[0] == expected.shape[0] and actual.shape[1] >= T, (kw, expected.shape, actual.shape)
    assert np.array_equal(actual[:, :T], expected.numpy()), (kw, expected, actual)
    if actual.shape[1] > T:  # what PyTorch trimmed: nothing but padding
        assert len(np.unique(actual[:, T:])) == 1, actual
    return out


# ---- tokens equal PyTorch's ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", list(CONFIGS))
def test_greedy_and_beam_tokens_equal_pytorch(models, family):
    """Greedy on a single prompt and on a left-padded batch, beam search on the batch (its row 0 is unpadded)."""
    torch_model, flax_model, _ = models(family)
    ids, mask = _prompts()
    out = _same(torch_model, flax_model, ids[:1], None, max_new_tokens=8)
    assert type(out) is fg.FlaxGreedySearchOutput and out[0] is out.sequences
    _same(torch_model, flax_model, ids, mask, max_new_tokens=8)
    out = _same(torch_model, flax_model, ids, mask, max_new_tokens=6, num_beams=3)
    assert type(out) is fg.FlaxBeamSearchOutput and out.scores.shape == (3,)


def test_eos_stops_and_pads(models):
    """EOS chosen among the tokens greedy decoding produces, so that rows stop (and are padded) at different steps;
    several EOS ids; then beam search with the same EOS."""
    torch_model, flax_model, _ = models("llama")
    ids, mask = _prompts()
    free = flax_model.generate(ids.numpy(), attention_mask=mask.numpy(), max_new_tokens=10, eos_token_id=None)
    free = np.asarray(free.sequences)
    start = 1 if flax_model.config.is_encoder_decoder else ids.shape[1]
    assert free.shape == (3, start + 10)
    eos = [int(free[0, start + 2]), int(free[1, start + 5])]
    out = np.asarray(_same(torch_model, flax_model, ids, mask, max_new_tokens=10, eos_token_id=eos,
                           pad_token_id=0).sequences)
    row0 = out[0, start:].tolist()
    first = next(k for k, t in enumerate(row0) if t in eos)
    assert first <= 2 and all(t == 0 for t in row0[first + 1:])  # stopped, then padding
    _same(torch_model, flax_model, ids, mask, max_new_tokens=10, eos_token_id=eos, pad_token_id=0, num_beams=3)


@pytest.mark.parametrize("kw", [
    dict(max_new_tokens=6, num_beams=3),
    dict(max_new_tokens=6, num_beams=3, num_return_sequences=2, length_penalty=0.5, early_stopping=True),
    dict(max_new_tokens=6, num_beams=4, early_stopping="never"),
    dict(max_new_tokens=8, repetition_penalty=1.5, no_repeat_ngram_size=2),
    dict(max_new_tokens=8, min_new_tokens=5, eos_token_id=[2, 5]),
    dict(max_length=12, eos_token_id=None),
], ids=["beam", "beam_returns", "beam_never", "penalties", "min_new_tokens", "max_length"])
def test_more_settings_equal_pytorch(models, kw):
    torch_model, flax_model, _ = models("llama")
    ids, mask = _prompts()
    if kw.get("num_beams") == 3 and "num_return_sequences" not in kw:
        ids, mask = ids[:1], None  # beam search on a single prompt
    out = _same(torch_model, flax_model, ids, mask, **kw)
    if "max_length" in kw:
        assert out.sequences.shape == (3, 12)
    if "num_return_sequences" in kw:
        assert out.sequences.shape == (6, 13) and out.scores.shape == (6,)
        assert (np.diff(np.asarray(out.scores).reshape(3, 2), axis=1) <= 0).all()  # the best first


def test_mask_inferred_and_params_given(models):
    _, flax_model, _ = models("llama")
    ids, mask = _prompts()
    expected = flax_model.generate(ids.numpy(), attention_mask=mask.numpy(), max_new_tokens=8)
    assert expected.sequences.shape == (3, 15) and expected.sequences.dtype == jnp.int32
    # the mask is inferred from the pad token when not given, as in PyTorch; params= replaces the model's
    inferred = flax_model.generate(ids.numpy(), max_new_tokens=8, pad_token_id=0, params=flax_model.params)
    assert np.array_equal(expected.sequences, inferred.sequences)
    zeroed = jax.tree_util.tree_map(jnp.zeros_like, flax_model.params)
    other = flax_model.generate(ids.numpy(), attention_mask=mask.numpy(), max_new_tokens=8, params=zeroed)
    assert not np.array_equal(expected.sequences, other.sequences)


def test_custom_logits_processor(models):
    """4.x's `logits_processor`: callables (sequences, scores, cur_len) -> scores, applied after the built-in ones."""
    _, flax_model, _ = models("llama")
    ids, mask = _prompts()

    def only_seven(sequences, scores, cur_len):
        return jnp.where(jnp.arange(scores.shape[-1]) == 7, 0.0, -jnp.inf)

    out = flax_model.generate(ids.numpy(), attention_mask=mask.numpy(), max_new_tokens=3,
                              logits_processor=[only_seven])
    assert (np.asarray(out.sequences)[:, 7:] == 7).all()


def test_untraced_loop_runs_in_python():
    """trace=False steps the same cond/body in Python (4.x's debugging mode)."""
    seen = []

    def body(state):
        seen.append(int(state))
        return state + 1

    assert int(fg._loop(lambda s: s < 3, body, jnp.int32(0), trace=False)) == 3 and seen == [0, 1, 2]
    assert int(jax.jit(lambda s: fg._loop(lambda s: s < 3, lambda s: s + 1, s, trace=True))(jnp.int32(0))) == 3


def test_sampling_is_reproducible_with_the_same_key(models):
    _, flax_model, _ = models("llama")
    ids, mask = _prompts()
    kw = dict(attention_mask=mask.numpy(), max_new_tokens=8, do_sample=True, top_k=20, top_p=0.9, temperature=0.7)
    a = flax_model.generate(ids.numpy(), prng_key=jax.random.PRNGKey(7), **kw)
    b = flax_model.generate(ids.numpy(), prng_key=jax.random.PRNGKey(7), **kw)
    c = flax_model.generate(ids.numpy(), prng_key=jax.random.PRNGKey(8), **kw)
    assert type(a) is fg.FlaxSampleOutput
    assert np.array_equal(a.sequences, b.sequences)
    assert not np.array_equal(a.sequences, c.sequences)
    assert np.array_equal(a.sequences[:, :7], ids.numpy())
    # top_k=1 leaves one token: sampling is then greedy decoding
    greedy = flax_model.generate(ids.numpy(), attention_mask=mask.numpy(), max_new_tokens=8)
    one = flax_model.generate(ids.numpy(), attention_mask=mask.numpy(), max_new_tokens=8, do_sample=True, top_k=1,
                              prng_key=jax.random.PRNGKey(3))
    assert np.array_equal(greedy.sequences, one.sequences)
    # several sequences per prompt, and beam sampling
    many = flax_model.generate(ids.numpy(), attention_mask=mask.numpy(), max_new_tokens=6, do_sample=True,
                               num_return_sequences=2, prng_key=jax.random.PRNGKey(1))
    assert many.sequences.shape == (6, 13)
    assert np.array_equal(np.asarray(many.sequences)[::2, :7], ids.numpy())
    beam = flax_model.generate(ids.numpy(), attention_mask=mask.numpy(), max_new_tokens=6, do_sample=True,
                               num_beams=3, prng_key=jax.random.PRNGKey(1))
    again = flax_model.generate(ids.numpy(), attention_mask=mask.numpy(), max_new_tokens=6, do_sample=True,
                                num_beams=3, prng_key=jax.random.PRNGKey(1))
    assert beam.sequences.shape == (3, 13) and np.array_equal(beam.sequences, again.sequences)


def test_second_call_does_not_compile(models):
    _, flax_model, _ = models("llama")
    ids, mask = _prompts()
    kw = dict(attention_mask=mask.numpy(), max_new_tokens=5, num_beams=2)
    flax_model.generate(ids.numpy(), **kw)
    compiles = []

    def listen(event, duration, **_):
        if "backend_compile" in event:
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        other = (ids + 1).numpy()  # other tokens, same shapes and settings
        flax_model.generate(other, **kw)
        flax_model.generate(ids.numpy(), **kw)
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert compiles == []
    programs = [p for plan, p in flax_model._generation_programs.items() if plan.beams == 2]
    assert len(programs) == 1 and programs[0]._cache_size() == 1


def test_errors(models):
    _, flax_model, folder = models("llama")
    ids, _ = _prompts()
    with pytest.raises(ConfigError, match="num_return_sequences"):
        flax_model.generate(ids.numpy(), num_beams=2, num_return_sequences=3)
    with pytest.raises(ConfigError, match="Unknown generation arguments: nonsense"):
        flax_model.generate(ids.numpy(), nonsense=1)
    with pytest.raises(ValueError, match="stop_strings"):
        flax_model.generate(ids.numpy(), stop_strings=["x"])
    base = pretrained.FlaxAutoModel.from_pretrained(folder)
    assert not base.can_generate() and flax_model.can_generate()
    with pytest.raises(TypeError, match="cannot generate"):
        base.generate(ids.numpy())


# ---- processors: each equals its PyTorch namesake on the same scores -----------------------------------------------
def _scores_and_ids(cur: int, L: int = 12, n: int = 4):
    g = torch.Generator().manual_seed(5)
    scores = torch.randn(n, V, generator=g) * 3
    ids = torch.randint(0, 8, (n, L), generator=g)  # a small range: repeated tokens and n-grams
    ids[:, cur:] = -1  # past the current length: nothing (the fill value)
    return scores, ids


@pytest.mark.parametrize("name, torch_fn, jax_fn", [
    ("top_k", lambda i, s: lp.top_k(i, s, 5), lambda q, s, c: fg.top_k(q, s, c, 5)),
    ("top_k_keep", lambda i, s: lp.top_k(i, s, 1, min_keep=3), lambda q, s, c: fg.top_k(q, s, c, 1, 3)),
    ("top_p", lambda i, s: lp.top_p(i, s, 0.8), lambda q, s, c: fg.top_p(q, s, c, 0.8)),
    ("top_p_keep", lambda i, s: lp.top_p(i, s, 0.05, min_keep=2), lambda q, s, c: fg.top_p(q, s, c, 0.05, 2)),
    ("min_p", lambda i, s: lp.min_p(i, s, 0.1), lambda q, s, c: fg.min_p(q, s, c, 0.1)),
    ("temperature", lambda i, s: lp.temperature(i, s, 0.7), lambda q, s, c: fg.temperature(q, s, c, 0.7)),
    ("repetition", lambda i, s: lp.repetition_penalty(i, s, 1.3),
     lambda q, s, c: fg.repetition_penalty(q, s, c, 1.3)),
    ("ngram2", lambda i, s: lp.no_repeat_ngram(i, s, 2), lambda q, s, c: fg.no_repeat_ngram(q, s, c, 2)),
    ("ngram3", lambda i, s: lp.no_repeat_ngram(i, s, 3), lambda q, s, c: fg.no_repeat_ngram(q, s, c, 3)),
    ("ngram1", lambda i, s: lp.no_repeat_ngram(i, s, 1), lambda q, s, c: fg.no_repeat_ngram(q, s, c, 1)),
    ("min_length", lambda i, s: lp.min_length(i, s, 10, [2, 3]),
     lambda q, s, c: fg.min_length(q, s, c, 10, (2, 3))),
    ("min_new_tokens", lambda i, s: lp.min_new_tokens(i, s, 4, 5, [2]),
     lambda q, s, c: fg.min_new_tokens(q, s, c, 4, 5, (2,))),
])
@pytest.mark.parametrize("cur", [2, 9])
def test_processor_equals_pytorch(name, torch_fn, jax_fn, cur):
    scores, ids = _scores_and_ids(cur)
    expected = torch_fn(ids[:, :cur], scores).numpy()
    actual = np.asarray(jax.jit(jax_fn)(jnp.asarray(ids.numpy()), jnp.asarray(scores.numpy()), jnp.int32(cur)))
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=0)
    assert np.array_equal(np.isinf(actual), np.isinf(expected))


def test_repetition_penalty_skips_prompt_padding():
    scores, ids = _scores_and_ids(9)
    ignore = torch.zeros(4, 9, dtype=torch.bool)
    ignore[1, :3] = True
    expected = lp.repetition_penalty(ids[:, :9], scores, 1.7, ignore).numpy()
    counted = np.ones((4, 12), dtype=bool)
    counted[1, :3] = False
    actual = fg.repetition_penalty(jnp.asarray(ids.numpy()), jnp.asarray(scores.numpy()), 9, 1.7,
                                   jnp.asarray(counted))
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=1e-6)


# ---- command line -------------------------------------------------------------------------------------------------
def _tokenizer(folder):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({f"w{i}": i for i in range(V)}, unk_token="w3"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(folder / "tokenizer.json"))
    return tokenizer


def test_cli_generate_framework_flax_without_torch(models, tmp_path):
    """`pretrained generate PATH --framework flax` prints PyTorch's greedy tokens and never imports torch."""
    import shutil

    torch_model, _, folder = models("llama")
    folder = shutil.copytree(folder, tmp_path / "ckpt")
    tokenizer = _tokenizer(folder)
    prompt = "w5 w40 w33 w17 w12"
    code = ("import sys; from pretrained.cli import main; "
            f"status = main(['generate', {str(folder)!r}, '--prompt', {prompt!r}, '--max-new-tokens', '6', "
            "'--framework', 'flax']); print('torch imported:', 'torch' in sys.modules); sys.exit(status)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    ids = torch.tensor([tokenizer.encode(prompt).ids])
    expected = torch_model.generate(ids, max_new_tokens=6)[0].tolist()  # the prompt, then up to EOS
    assert done.stdout.split() == [f"w{i}" for i in expected] + ["torch", "imported:", "False"]
    assert re.search(r"\[\d+ tokens in [\d.]+ s, [\d.]+ tokens/s, compiling included\]", done.stderr)


def test_cli_generate_framework_flax_sampling_and_beams(models, tmp_path, capsys):
    import shutil

    from pretrained.cli import main

    torch_model, _, folder = models("llama")
    folder = shutil.copytree(folder, tmp_path / "ckpt")
    _tokenizer(folder)
    base = ["generate", str(folder), "--prompt", "w5 w40 w33", "--max-new-tokens", "4", "--framework", "flax"]
    assert main(base + ["--do-sample", "--top-k", "5", "--seed", "3", "--dtype", "float32"]) == 0
    words = capsys.readouterr().out.split()
    assert words[:3] == ["w5", "w40", "w33"] and 4 <= len(words) <= 7
    assert main(base + ["--num-beams", "2"]) == 0
    ids = torch.tensor([[5, 40, 33]])
    expected = torch_model.generate(ids, max_new_tokens=4, num_beams=2)[0].tolist()
    assert capsys.readouterr().out.split() == [f"w{i}" for i in expected]
    assert main(base + ["--device-map", "auto"]) == 2
    assert "--device-map" in capsys.readouterr().err


def test_demo_runs_the_flax_class(capsys):
    from pretrained.cli import main

    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    found = re.search(r"^flax\s+FlaxLlamaForCausalLM, max \|logits - PyTorch\| ([\d.e+-]+) \(float32\)", out, re.M)
    assert found, out
    assert float(found.group(1)) < 1e-4
