"""FlaxGenerationMixin.generate: tokens equal our PyTorch `generate` on the same checkpoint, the compiled loop is
built once, the logits processors equal the PyTorch ones, and `pretrained generate --framework flax`.

Each family gets one tiny checkpoint written by our PyTorch class (initializer_range 0.2: decisive argmaxes, so that
float differences between the frameworks cannot flip a token) and read by both frameworks.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

flax = pytest.importorskip("flax", reason="jax/flax not installed (pip install pretrained[flax])")
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import pretrained  # noqa: E402
from pretrained.flax import generation as fg  # noqa: E402

from flax_tf_common import GEN_FAMILIES, assert_generate_errors, generation_models, prompts as _prompts  # noqa
from flax_tf_common import THROUGHPUT, demo_max_diff, greedy_words, processor_cases, repetition_penalty_case  # noqa
from flax_tf_common import assert_cli_beams_and_device_map, cli_args, cli_checkpoint, cli_generate_code  # noqa
from flax_tf_common import run_cli_code, scores_and_ids as _scores_and_ids  # noqa: E402
from flax_tf_common import MORE_SETTINGS, MORE_SETTINGS_IDS, assert_stops_then_pads, eos_from, settings_prompts  # noqa


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """models(family) -> (our PyTorch model, our Flax model, folder), both loaded from one checkpoint folder, built
    once per module: a Flax model keeps its compiled decoding programs, so tests that share settings share them."""
    return generation_models(tmp_path_factory, "Flax")


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
@pytest.mark.parametrize("family", GEN_FAMILIES)
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
    eos = eos_from(free, start)
    out = np.asarray(_same(torch_model, flax_model, ids, mask, max_new_tokens=10, eos_token_id=eos,
                           pad_token_id=0).sequences)
    assert_stops_then_pads(out, start, eos)
    _same(torch_model, flax_model, ids, mask, max_new_tokens=10, eos_token_id=eos, pad_token_id=0, num_beams=3)


@pytest.mark.parametrize("kw", MORE_SETTINGS, ids=MORE_SETTINGS_IDS)
def test_more_settings_equal_pytorch(models, kw):
    torch_model, flax_model, _ = models("llama")
    ids, mask = settings_prompts(kw)
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
    assert_generate_errors(flax_model, ids.numpy())
    base = pretrained.FlaxAutoModel.from_pretrained(folder)
    assert not base.can_generate() and flax_model.can_generate()
    with pytest.raises(TypeError, match="cannot generate"):
        base.generate(ids.numpy())


# ---- processors: each equals its PyTorch namesake on the same scores -----------------------------------------------
@pytest.mark.parametrize("name, torch_fn, jax_fn", processor_cases(fg))
@pytest.mark.parametrize("cur", [2, 9])
def test_processor_equals_pytorch(name, torch_fn, jax_fn, cur):
    scores, ids = _scores_and_ids(cur)
    expected = torch_fn(ids[:, :cur], scores).numpy()
    actual = np.asarray(jax.jit(jax_fn)(jnp.asarray(ids.numpy()), jnp.asarray(scores.numpy()), jnp.int32(cur)))
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=0)
    assert np.array_equal(np.isinf(actual), np.isinf(expected))


def test_repetition_penalty_skips_prompt_padding():
    scores, ids, expected, counted = repetition_penalty_case()
    actual = fg.repetition_penalty(jnp.asarray(ids.numpy()), jnp.asarray(scores.numpy()), 9, 1.7,
                                   jnp.asarray(counted))
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=1e-6)


# ---- command line -------------------------------------------------------------------------------------------------
def test_cli_generate_framework_flax_without_torch(models, tmp_path):
    """`pretrained generate PATH --framework flax` prints PyTorch's greedy tokens and never imports torch."""
    torch_model, folder, tokenizer = cli_checkpoint(models, tmp_path)
    prompt = "w5 w40 w33 w17 w12"
    done = run_cli_code(cli_generate_code(folder, prompt, "flax", "import sys; ",
                                          "print('torch imported:', 'torch' in sys.modules)"))
    assert done.stdout.split() == greedy_words(torch_model, tokenizer, prompt) + ["torch", "imported:", "False"]
    assert re.search(THROUGHPUT, done.stderr)


def test_cli_generate_framework_flax_sampling_and_beams(models, tmp_path, capsys):
    from pretrained.cli import main

    torch_model, folder, _ = cli_checkpoint(models, tmp_path)
    base = cli_args(folder, "flax")
    assert main(base + ["--do-sample", "--top-k", "5", "--seed", "3", "--dtype", "float32"]) == 0
    words = capsys.readouterr().out.split()
    assert words[:3] == ["w5", "w40", "w33"] and 4 <= len(words) <= 7
    assert_cli_beams_and_device_map(main, capsys, base, torch_model)


def test_demo_runs_the_flax_class(capsys):
    assert demo_max_diff(capsys, r"^flax\s+FlaxLlamaForCausalLM") < 1e-4
