"""TFGenerationMixin.generate: tokens equal our PyTorch `generate` on the same checkpoint, the compiled decoding is
traced once per shapes, the logits processors equal the PyTorch ones, and `pretrained generate --framework tf`.

Each family gets one tiny checkpoint written by our PyTorch class (initializer_range 0.2: decisive argmaxes, so that
float differences between the frameworks cannot flip a token) and read by both frameworks. XLA compiles take
seconds on a small machine: most comparisons run the same loop eagerly (`jit_compile=False`), and each family is
also decoded once compiled.
"""

from __future__ import annotations

import importlib.util
import re

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="tensorflow not installed (pip install pretrained[tf])")

import pretrained  # noqa: E402
from pretrained.tf import generation as tg  # noqa: E402

from flax_tf_common import GEN_FAMILIES, assert_generate_errors, generation_models, prompts as _prompts  # noqa
from flax_tf_common import THROUGHPUT, demo_max_diff, greedy_words, processor_cases, repetition_penalty_case  # noqa
from flax_tf_common import assert_cli_beams_and_device_map, cli_args, cli_checkpoint, cli_generate_code  # noqa
from flax_tf_common import run_cli_code, scores_and_ids as _scores_and_ids  # noqa: E402
from flax_tf_common import MORE_SETTINGS, MORE_SETTINGS_IDS, assert_stops_then_pads, eos_from, settings_prompts  # noqa


def _skip_without_tf_class(family: str) -> None:
    if importlib.util.find_spec(f"pretrained.models.{family}.modeling_tf") is None:
        pytest.skip(f"no TF class for {family} yet (models/{family}/modeling_tf.py)")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """models(family) -> (our PyTorch model, our TF model, folder), both loaded from one checkpoint folder, built
    once per module: a TF model keeps its compiled decoding programs, so tests that share settings share them."""
    return generation_models(tmp_path_factory, "TF", check=_skip_without_tf_class)


def _same(torch_model, tf_model, ids, mask, jit_compile=False, **kw):
    """The TF tokens equal PyTorch's, shape included (both trim to the longest row)."""
    expected = torch_model.generate(ids, attention_mask=mask, **kw)
    out = tf_model.generate(ids.numpy(), attention_mask=None if mask is None else mask.numpy(),
                            jit_compile=jit_compile, **kw)
    sequences = out.sequences if isinstance(out, tg.TFModelOutput) else out
    expected = expected.sequences if kw.get("return_dict_in_generate") else expected
    assert sequences.dtype == tf.int32
    assert np.array_equal(sequences.numpy(), expected.numpy()), (kw, expected, sequences)
    return out


# ---- tokens equal PyTorch's ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", GEN_FAMILIES)
def test_greedy_and_beam_tokens_equal_pytorch(models, family):
    """Greedy on a single prompt and on a left-padded batch (compiled), beam search on the batch (its row 0 is
    unpadded; compiled for T5, whose cross-attention the beams reorder)."""
    torch_model, tf_model, _ = models(family)
    ids, mask = _prompts()
    out = _same(torch_model, tf_model, ids[:1], None, max_new_tokens=8)
    assert isinstance(out, tf.Tensor)
    _same(torch_model, tf_model, ids, mask, jit_compile=True, max_new_tokens=8)
    _same(torch_model, tf_model, ids, mask, jit_compile=family == "t5", max_new_tokens=6, num_beams=3)


def test_eos_stops_and_pads(models):
    """EOS chosen among the tokens greedy decoding produces, so that rows stop (and are padded) at different steps;
    several EOS ids; then beam search with the same EOS."""
    torch_model, tf_model, _ = models("llama")
    ids, mask = _prompts()
    free = tf_model.generate(ids.numpy(), attention_mask=mask.numpy(), max_new_tokens=10, eos_token_id=None,
                             jit_compile=False).numpy()
    start = ids.shape[1]
    assert free.shape == (3, start + 10)
    eos = eos_from(free, start)
    out = _same(torch_model, tf_model, ids, mask, max_new_tokens=10, eos_token_id=eos, pad_token_id=0).numpy()
    assert_stops_then_pads(out, start, eos)
    _same(torch_model, tf_model, ids, mask, max_new_tokens=10, eos_token_id=eos, pad_token_id=0, num_beams=3)
    # every row stops early: the output is shorter than max_length, compiled too
    early = [int(t) for t in set(free[:, start + 1].tolist())]
    out = _same(torch_model, tf_model, ids, mask, jit_compile=True, max_new_tokens=10, eos_token_id=early,
                pad_token_id=0)
    assert out.shape[1] <= start + 2


@pytest.mark.parametrize("kw", MORE_SETTINGS, ids=MORE_SETTINGS_IDS)
def test_more_settings_equal_pytorch(models, kw):
    torch_model, tf_model, _ = models("llama")
    ids, mask = settings_prompts(kw)
    out = _same(torch_model, tf_model, ids, mask, **kw)
    if "max_length" in kw:
        assert out.shape == (3, 12)
    if "num_return_sequences" in kw:
        assert out.shape[0] == 6


def test_scores_equal_pytorch(models):
    """return_dict_in_generate=True with output_scores: 4.x's output classes, each step's processed scores,
    the beams' final scores and the rows their tokens came from, as PyTorch records them."""
    torch_model, tf_model, _ = models("llama")
    ids, mask = _prompts()
    kw = dict(max_new_tokens=5, return_dict_in_generate=True, output_scores=True, repetition_penalty=1.3)
    expected = torch_model.generate(ids, attention_mask=mask, **kw)
    out = tf_model.generate(ids.numpy(), attention_mask=mask.numpy(), jit_compile=False, **kw)
    assert type(out) is tg.TFGreedySearchDecoderOnlyOutput and out[0] is out.sequences
    assert len(out.scores) == len(expected.scores) == 5
    for a, b in zip(out.scores, expected.scores):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-4, rtol=1e-4)
    kw.update(num_beams=3, num_return_sequences=2)
    expected = torch_model.generate(ids, attention_mask=mask, **kw)
    out = _same(torch_model, tf_model, ids, mask, **kw)
    assert type(out) is tg.TFBeamSearchDecoderOnlyOutput
    np.testing.assert_allclose(out.sequences_scores.numpy(), expected.sequences_scores.numpy(), atol=1e-4)
    assert np.array_equal(out.beam_indices.numpy(), expected.beam_indices.numpy())
    assert len(out.scores) == len(expected.scores)
    for a, b in zip(out.scores, expected.scores):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-4, rtol=1e-4)


def test_mask_inferred_and_tensor_inputs(models):
    _, tf_model, _ = models("llama")
    ids, mask = _prompts()
    expected = tf_model.generate(ids.numpy(), attention_mask=mask.numpy(), max_new_tokens=8, jit_compile=False)
    assert expected.shape == (3, 15)
    # the mask is inferred from the pad token when not given, as in PyTorch; tf tensors and `inputs=` are taken
    inferred = tf_model.generate(inputs=tf.constant(ids.numpy()), max_new_tokens=8, pad_token_id=0,
                                 jit_compile=False)
    assert np.array_equal(expected.numpy(), inferred.numpy())


def test_custom_logits_processor(models):
    """4.x's `logits_processor`: callables (sequences, scores, cur_len) -> scores, applied after the built-in ones."""
    _, tf_model, _ = models("llama")
    ids, mask = _prompts()

    def only_seven(sequences, scores, cur_len):
        return tf.where(tf.range(scores.shape[-1])[None, :] == 7, 0.0, -np.inf) + 0 * scores

    out = tf_model.generate(ids.numpy(), attention_mask=mask.numpy(), max_new_tokens=3, logits_processor=[only_seven],
                            jit_compile=False)
    assert (out.numpy()[:, 7:] == 7).all()


def test_sampling_is_reproducible_with_the_same_seed(models):
    """Sampling, compiled: the seed is an input of the program, so every call below with the same settings and
    shapes reuses one trace."""
    _, tf_model, _ = models("llama")
    ids, mask = _prompts()
    kw = dict(attention_mask=mask.numpy(), max_new_tokens=8, do_sample=True, top_k=20, top_p=0.9, temperature=0.7)
    a = tf_model.generate(ids.numpy(), seed=[7, 0], **kw)
    b = tf_model.generate(ids.numpy(), seed=7, **kw)
    c = tf_model.generate(ids.numpy(), seed=[8, 1], **kw)
    assert np.array_equal(a.numpy(), b.numpy()) and not np.array_equal(a.numpy(), c.numpy())
    assert np.array_equal(a.numpy()[:, :7], ids.numpy())
    tf.random.set_seed(11)  # without a seed: drawn from TensorFlow's global generator
    d = tf_model.generate(ids.numpy(), **kw)
    tf.random.set_seed(11)
    assert np.array_equal(d.numpy(), tf_model.generate(ids.numpy(), **kw).numpy())
    out = tf_model.generate(ids.numpy(), seed=7, return_dict_in_generate=True, **kw)
    assert type(out) is tg.TFSampleDecoderOnlyOutput and np.array_equal(out.sequences.numpy(), a.numpy())
    programs = [p for plan, p in tf_model._generation_programs.items() if plan.sample and plan.beams == 1]
    assert len(programs) == 1 and programs[0].experimental_get_tracing_count() == 1
    # top_k=1 leaves one token: sampling is then greedy decoding (eagerly: no new compile)
    greedy = tf_model.generate(ids.numpy(), attention_mask=mask.numpy(), max_new_tokens=8, jit_compile=False)
    one = tf_model.generate(ids.numpy(), attention_mask=mask.numpy(), max_new_tokens=8, do_sample=True, top_k=1,
                            seed=3, jit_compile=False)
    assert np.array_equal(greedy.numpy(), one.numpy())
    # several sequences per prompt, and beam sampling
    many = tf_model.generate(ids.numpy(), attention_mask=mask.numpy(), max_new_tokens=6, do_sample=True,
                             num_return_sequences=2, seed=1, jit_compile=False)
    assert many.shape[0] == 6 and np.array_equal(many.numpy()[::2, :7], ids.numpy())
    beam = tf_model.generate(ids.numpy(), attention_mask=mask.numpy(), max_new_tokens=6, do_sample=True,
                             num_beams=3, seed=1, jit_compile=False, return_dict_in_generate=True)
    again = tf_model.generate(ids.numpy(), attention_mask=mask.numpy(), max_new_tokens=6, do_sample=True,
                              num_beams=3, seed=1, jit_compile=False)
    assert type(beam) is tg.TFBeamSampleDecoderOnlyOutput
    assert beam.sequences.shape[0] == 3 and np.array_equal(beam.sequences.numpy(), again.numpy())


def test_second_call_does_not_retrace(models):
    """Same shapes and settings, other tokens: the compiled beam search is traced (and XLA-compiled) once."""
    torch_model, tf_model, _ = models("llama")
    ids, mask = _prompts()
    kw = dict(attention_mask=mask.numpy(), max_new_tokens=5, num_beams=2)
    first = tf_model.generate(ids.numpy(), **kw)
    (program,) = [p for plan, p in tf_model._generation_programs.items() if plan.beams == 2 and plan.jit_compile]
    assert program.experimental_get_tracing_count() == 1
    other = ids + 1
    second = tf_model.generate(other.numpy(), **kw)
    again = tf_model.generate(ids.numpy(), **kw)
    assert program.experimental_get_tracing_count() == 1
    assert np.array_equal(first.numpy(), again.numpy())
    expected = torch_model.generate(other, attention_mask=mask, max_new_tokens=5, num_beams=2)
    assert np.array_equal(second.numpy(), expected.numpy())


def test_generate_inside_the_callers_tf_function(models):
    """4.x's way: `tf.function(model.generate, jit_compile=True)`. Traced in the caller's graph, the output keeps
    max_length columns (as 4.x's XLA generate): PyTorch's tokens, then only padding; sampling takes a seed tensor."""
    torch_model, tf_model, _ = models("llama")
    ids, mask = _prompts()
    xla_generate = tf.function(tf_model.generate, jit_compile=True)
    out = xla_generate(tf.constant(ids.numpy()), attention_mask=tf.constant(mask.numpy()), max_new_tokens=6,
                       eos_token_id=[2, 7, 9, 11], pad_token_id=0).numpy()
    expected = torch_model.generate(ids, attention_mask=mask, max_new_tokens=6, eos_token_id=[2, 7, 9, 11],
                                    pad_token_id=0).numpy()
    T = expected.shape[1]
    assert out.shape == (3, 13) and np.array_equal(out[:, :T], expected) and (out[:, T:] == 0).all()
    # a plain graph (no XLA) with the loop run in it: a seed tensor
    sample = tf.function(lambda x, seed: tf_model.generate(x, seed=seed, max_new_tokens=4, do_sample=True,
                                                           jit_compile=False))
    a, b = sample(tf.constant(ids.numpy()), tf.constant([5, 5])), sample(tf.constant(ids.numpy()), tf.constant([5, 5]))
    assert a.shape == (3, 11) and np.array_equal(a.numpy(), b.numpy())


def test_errors(models):
    _, tf_model, folder = models("llama")
    ids, _ = _prompts()
    assert_generate_errors(tf_model, ids.numpy())
    with pytest.raises(ValueError, match="seed"):
        tf_model.generate(ids.numpy(), do_sample=True, seed=[1, 2, 3])
    with pytest.raises(ValueError, match="attention_mask"):
        tf_model.generate(ids.numpy(), attention_mask=np.ones((3, 4)))
    with pytest.warns(UserWarning, match="output_scores is ignored unless return_dict_in_generate"):
        tf_model.generate(ids.numpy()[:1], max_new_tokens=1, output_scores=True, jit_compile=False)
    base = pretrained.TFAutoModel.from_pretrained(folder)
    assert not base.can_generate() and tf_model.can_generate()
    with pytest.raises(TypeError, match="cannot generate"):
        base.generate(ids.numpy())
    # nothing to generate: the prompt comes back, as in PyTorch
    assert np.array_equal(tf_model.generate(ids.numpy(), max_length=5).numpy(), ids.numpy())


def test_can_generate_exactly_for_language_model_heads():
    from pretrained.registry import FAMILIES

    checked = []
    for family in FAMILIES.values():
        for task, ref in family.tf_models.items():
            module, name = ref.split(":")
            if importlib.util.find_spec(module) is None:
                continue
            cls = getattr(importlib.import_module(module), name)
            assert cls.can_generate() == (task in ("AutoModelForCausalLM", "AutoModelForSeq2SeqLM")), name
            checked.append(name)
    assert {"TFLlamaForCausalLM", "TFLlamaModel"} <= set(checked)


# ---- processors: each equals its PyTorch namesake on the same scores -----------------------------------------------
@pytest.mark.parametrize("name, torch_fn, tf_fn", processor_cases(tg, min_p_keep=True))
@pytest.mark.parametrize("cur", [2, 9])
def test_processor_equals_pytorch(name, torch_fn, tf_fn, cur):
    """Eagerly, and XLA-compiled with `cur` a tensor (as in the decoding loop)."""
    scores, ids = _scores_and_ids(cur)
    expected = torch_fn(ids[:, :cur], scores).numpy()
    q, s = tf.constant(ids.numpy(), tf.int32), tf.constant(scores.numpy())
    eager = tf_fn(q, s, tf.constant(cur)).numpy()
    compiled = tf.function(tf_fn, jit_compile=True, autograph=False)(q, s, tf.constant(cur)).numpy()
    for actual in (eager, compiled):
        np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=0)
        assert np.array_equal(np.isinf(actual), np.isinf(expected))


def test_repetition_penalty_skips_prompt_padding():
    scores, ids, expected, counted = repetition_penalty_case()
    actual = tg.repetition_penalty(tf.constant(ids.numpy(), tf.int32), tf.constant(scores.numpy()), 9, 1.7,
                                   tf.constant(counted))
    np.testing.assert_allclose(actual.numpy(), expected, rtol=1e-6)


# ---- command line -------------------------------------------------------------------------------------------------
def test_cli_generate_framework_tf_without_torch_or_jax(models, tmp_path):
    """`pretrained generate PATH --framework tf` prints PyTorch's greedy tokens with torch and jax made unimportable
    (TensorFlow 2.21 itself imports jax when it is installed, from tensorflow/lite/python/util.py, and copes
    without it: blocking them shows that our TF path needs neither)."""
    torch_model, folder, tokenizer = cli_checkpoint(models, tmp_path)
    prompt = "w5 w40 w33 w17 w12"
    done = run_cli_code(cli_generate_code(
        folder, prompt, "tf", "import sys; sys.modules.update(torch=None, jax=None); ",
        "print('imported:', any(sys.modules.get(m) for m in ('torch', 'jax', 'flax')))"))
    assert done.stdout.split() == greedy_words(torch_model, tokenizer, prompt) + ["imported:", "False"]
    assert re.search(THROUGHPUT, done.stderr)


def test_cli_generate_framework_tf_beams_and_errors(models, tmp_path, capsys):
    from pretrained.cli import main

    torch_model, folder, _ = cli_checkpoint(models, tmp_path)
    assert_cli_beams_and_device_map(main, capsys, cli_args(folder, "tf"), torch_model)
    assert main(cli_args(folder, "tf") + ["--dtype", "int8"]) == 2
    assert "--dtype int8" in capsys.readouterr().err


def test_demo_runs_the_tf_class(capsys):
    assert demo_max_diff(capsys, r"^tensorflow\s+TFLlamaForCausalLM") < 1e-4
