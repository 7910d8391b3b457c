"""What the Flax suite (tests/flax) and the TensorFlow suite (tests/tf) share: the tiny configs, the checkpoints our
PyTorch classes write for them, the PyTorch-reference helpers, the comparisons, and the scaffolding of the tests on
4.57's recorded files (tests/data/flax457, tests/data/tf457).

It imports no framework at import time (the h5 reader tests on 4.57's files need none): torch, flax and `pretrained`
are imported inside the functions that use them, tensorflow never (a helper that needs a framework's functions is
handed them, e.g. `processor_cases(tg)`). Test modules import it by name (tests/ is on sys.path, as for blocking.py).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# ---- comparisons ------------------------------------------------------------------------------------------------
CLEAN = {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}


def assert_close(a, b, atol=1e-5):
    """Equal in float32 within `atol` (no relative slack)."""
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=atol, rtol=0)


def close(actual, expected, what=""):
    """Equal within atol = rtol = 1e-5, `what` named on failure (the family parity tests)."""
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), atol=1e-5, rtol=1e-5, err_msg=what)


def files(folder):
    """The names in a folder, hidden ones left out, sorted."""
    return sorted(n for n in os.listdir(folder) if not n.startswith("."))


def as_long(a):
    """A PyTorch int64 tensor of `a`; None and booleans (flags) as they are."""
    import torch

    return a if a is None or isinstance(a, bool) else torch.tensor(np.asarray(a), dtype=torch.long)


def torch_call(model, *args, **kw):
    """`model(...)` under no_grad, every argument turned into an int64 tensor (None and flags kept)."""
    import torch

    with torch.no_grad():
        return model(*map(as_long, args), **{k: as_long(v) for k, v in kw.items()})


def perturb(model):
    """Noise on every parameter: biases and norms leave their initial zeros and ones, so that a parameter read
    into the wrong place changes the outputs."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)


def case_id(case, variant="-untied"):
    """A (task, config overrides) case's test id: the task, and `variant` when it overrides anything."""
    return case[0] + (variant if case[1] else "")


def save_perturbed(cls, config, folder):
    """A PyTorch `cls(config)` built under seed 0, in eval mode, perturbed, saved to `folder`."""
    import torch

    torch.manual_seed(0)
    model = cls(config).eval()
    perturb(model)
    model.save_pretrained(folder)
    return model


def load_pair(module, family: str, task: str, config, folder, framework: str):
    """(PyTorch model, `framework` model loaded from its save, the framework side's loading info): the PyTorch class
    `<family><task>` of `module` saved by `save_perturbed`, and read back by
    `<framework><family><task>.from_pretrained`."""
    model = save_perturbed(getattr(module, family + task), config, folder)
    other, info = getattr(module, framework + family + task).from_pretrained(folder, output_loading_info=True)
    return model, other, info


def pair_fixture(module, family: str, config, cases, framework: str, folder: str, variant: str = "-untied",
                 clean: bool = True):
    """A module-scoped fixture `pair`, parametrised over `cases` ((task, config overrides)): (PyTorch model, the
    `framework` model loaded from its save, folder), built by `load_pair` on `config(**overrides)` in a folder named
    `<folder>-<case id>`. Its loading info must be CLEAN (`clean`), or else name nothing missing or unexpected."""

    def ids(case):
        return case_id(case, variant)

    @pytest.fixture(scope="module", params=cases, ids=ids)
    def pair(request, tmp_path_factory):
        """(PyTorch model, the framework's model loaded from its save, folder)."""
        task, extra = request.param
        path = tmp_path_factory.mktemp(f"{folder}-{ids(request.param)}")
        model, other, info = load_pair(module, family, task, config(**extra), path, framework)
        if clean:
            assert info == CLEAN
        else:
            assert info["missing_keys"] == [] and info["unexpected_keys"] == [], info
        return model, other, path

    return pair


def msgpack_round_trip(flax_model, folder) -> None:
    """A Flax model saved as msgpack loads back with the same parameter tree, value for value."""
    from flax.traverse_util import flatten_dict

    flax_model.save_pretrained(folder, safe_serialization=False)
    again = type(flax_model).from_pretrained(folder)
    mine, theirs = flatten_dict(flax_model.params), flatten_dict(again.params)
    assert set(mine) == set(theirs)
    for path, value in mine.items():
        np.testing.assert_array_equal(np.asarray(theirs[path]), np.asarray(value))


# ---- the Llama family (base classes, Llama/Mistral/Qwen2/Gemma parity) ---------------------------------------------
LLAMA_TINY = dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, pad_token_id=0, initializer_range=0.2, max_position_embeddings=64)
LLAMA_FAMILIES = {
    "llama": dict(LLAMA_TINY),
    "mistral": dict(LLAMA_TINY, sliding_window=4),  # the window cuts into 9-token sequences
    "qwen2": dict(LLAMA_TINY, use_sliding_window=True, sliding_window=3, max_window_layers=1),  # layer 1 slides
    "gemma": dict(LLAMA_TINY, head_dim=8),  # tied head, (1 + w) norms, scaled embeddings, gelu-tanh
}
LLAMA_PREFIX = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "gemma": "Gemma"}
IDS = np.random.RandomState(0).randint(2, 99, (2, 7)).astype(np.int32)


def llama_checkpoint(folder):
    """(folder, our PyTorch LlamaForCausalLM on LLAMA_TINY under seed 0, saved there, its logits on IDS)."""
    import torch

    import pretrained

    torch.manual_seed(0)
    pt = pretrained.LlamaForCausalLM.from_config(pretrained.LlamaConfig(**LLAMA_TINY)).eval()
    pt.save_pretrained(folder)
    return folder, pt, pytorch_logits(pt).numpy()


def pytorch_logits(model):
    """A PyTorch model's logits on IDS (no_grad)."""
    import torch

    with torch.no_grad():
        return model(torch.tensor(IDS, dtype=torch.long)).logits


def llama_ids(batch=2, seq=9, seed=1):
    return np.random.RandomState(seed).randint(2, LLAMA_TINY["vocab_size"], (batch, seq)).astype(np.int32)


def llama_family(model_type: str, folder):
    """Our PyTorch causal LM of `model_type` on LLAMA_FAMILIES, built under seed 0 and saved to `folder`: (that
    checkpoint read by our PyTorch causal-LM class, by our PyTorch base class), in eval mode."""
    import torch

    import pretrained
    from pretrained import registry

    config = registry.config_class(model_type)(**LLAMA_FAMILIES[model_type])
    torch.manual_seed(0)
    pretrained.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return (pretrained.AutoModelForCausalLM.from_pretrained(folder).eval(),
            pretrained.AutoModel.from_pretrained(folder).eval())


def left_padded(seq=9, seed=3, row=0, pad=3):
    """(ids, mask, positions): llama_ids(2, seq, seed) with `row` left-padded by `pad` (pad id 0), the positions
    counting the real tokens."""
    ids = llama_ids(seq=seq, seed=seed)
    mask = np.ones_like(ids)
    mask[row, :pad] = 0
    ids[row, :pad] = 0
    return ids, mask, np.clip(mask.cumsum(-1) - 1, 0, None)


ROPE_CASES = [
    {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 16, "rope_theta": 500000.0},
]


def rope_scaled_llama(folder, rope):
    """Our PyTorch Llama with `rope` scaling, built under seed 0 and saved to `folder`: (20-token ids, the
    logits of the checkpoint read back by our PyTorch class)."""
    import torch

    import pretrained

    config = pretrained.LlamaConfig(**LLAMA_TINY, rope_parameters=rope)
    torch.manual_seed(0)
    pretrained.LlamaForCausalLM.from_config(config).save_pretrained(folder)
    ids = llama_ids(seq=20, seed=8)
    return ids, torch_forward(pretrained.LlamaForCausalLM.from_pretrained(folder).eval(), ids).logits


def window_config():
    """A one-layer Mistral config with a 4-token sliding window."""
    import pretrained

    return pretrained.MistralConfig(**dict(LLAMA_TINY, num_hidden_layers=1, sliding_window=4))


def assert_window_of_4(weights) -> None:
    """Query q sees keys q - W < k <= q: with W=4, position 8 attends to 5..8 (one head's (T, T) weights)."""
    assert np.all(weights[8, :5] == 0) and np.all(weights[8, 5:] > 0)


def long_mistral_config():
    """A 131072-position Mistral config (a 4096-token window): nothing may grow with max_position_embeddings."""
    import pretrained

    return pretrained.MistralConfig(**dict(LLAMA_TINY, max_position_embeddings=131072, sliding_window=4096))


def torch_forward(model, ids, **kw):
    """`model(ids, **kw)` under no_grad, the ids and every keyword as int64 tensors."""
    import torch

    with torch.no_grad():
        return model(torch.tensor(np.asarray(ids), dtype=torch.long),
                     **{k: torch.tensor(np.asarray(v), dtype=torch.long) for k, v in kw.items()})


def assert_logits_and_states(model, pt):
    """`model` (the other framework's causal LM) gives PyTorch's (`pt`) logits and 3 hidden states on llama_ids();
    its output's first item and "logits" key are the logits. Returns the output."""
    ids = llama_ids()
    ref = torch_forward(pt, ids, output_hidden_states=True)
    out = model(ids, output_hidden_states=True)
    assert_close(out.logits, ref.logits)
    assert len(out.hidden_states) == len(ref.hidden_states) == 3
    for a, b in zip(out.hidden_states, ref.hidden_states):
        assert_close(a, b)
    assert out[0] is out.logits and out["logits"] is out.logits
    return out


def assert_left_padded_batch(model, pt) -> None:
    """On a batch whose row 0 is left-padded by 3 (positions counting real tokens), `model`'s logits at the real
    tokens are PyTorch's (`pt`), and row 0's equal those of the same row without its padding."""
    ids, mask, positions = left_padded()
    ref = torch_forward(pt, ids, attention_mask=mask, position_ids=positions).logits.numpy()
    out = np.asarray(model(ids, attention_mask=mask, position_ids=positions).logits)
    assert_close(out[mask == 1], ref[mask == 1])
    alone = np.asarray(model(ids[:1, 3:]).logits)  # the padded row equals the row without padding
    assert_close(out[0, 3:], alone[0])


def assert_unexpected_head_reported(cls, folder):
    """The base class `cls` reads the causal-LM checkpoint in `folder`: lm_head.weight reported unexpected, nothing
    missing, hidden states equal our PyTorch LlamaModel's on IDS."""
    import torch

    import pretrained

    model, info = cls.from_pretrained(folder, output_loading_info=True)
    assert info["unexpected_keys"] == ["lm_head.weight"] and info["missing_keys"] == []
    with torch.no_grad():
        ref = pretrained.LlamaModel.from_pretrained(folder)(torch.tensor(IDS, dtype=torch.long)).last_hidden_state
    assert_close(model(IDS).last_hidden_state, ref)


def assert_shape_mismatch_error(cls, folder) -> None:
    """A config that disagrees with the checkpoint in `folder` on intermediate_size: a ShapeMismatchError naming
    the count, the first tensor, the file, its shape and the way out."""
    from pretrained import errors

    with pytest.raises(errors.ShapeMismatchError) as e:
        cls.from_pretrained(folder, intermediate_size=40)
    text = str(e.value)
    assert "6 tensor(s)" in text and "'model.layers.0.mlp.gate_proj.weight'" in text
    assert str(folder / "model.safetensors") in text and "[37, 32]" in text and "ignore_mismatched_sizes" in text


def assert_no_weights(cls, folder, tmp_path, formats: str) -> None:
    """A folder with a config only (the message names the formats looked for, `formats` a pattern), with a pickled
    PyTorch checkpoint only (the message says how to convert it), no folder at all: CheckpointNotFoundError."""
    import pretrained
    from pretrained import errors

    pretrained.LlamaConfig(**LLAMA_TINY).save_pretrained(tmp_path)
    with pytest.raises(errors.CheckpointNotFoundError, match=formats):
        cls.from_pretrained(tmp_path)
    pretrained.LlamaForCausalLM.from_pretrained(folder).save_pretrained(tmp_path, safe_serialization=False)
    with pytest.raises(errors.CheckpointNotFoundError, match="pytorch_model.bin.*save_pretrained"):
        cls.from_pretrained(tmp_path)
    with pytest.raises(errors.CheckpointNotFoundError):
        cls.from_pretrained(tmp_path / "nowhere")


def assert_wrong_config_class(cls, folder) -> None:
    import pretrained
    from pretrained import errors

    with pytest.raises(errors.ConfigError, match="needs a LlamaConfig"):
        cls(pretrained.GPT2Config())
    with pytest.raises(TypeError, match="not_a_key"):
        cls.from_pretrained(folder, not_a_key=1)


def assert_push_and_reload(hub_server, model, auto_cls, name: str, same) -> None:
    """Push `model` to a fresh repo `test-org/<name>-...` of the test Hub; `auto_cls` loads it back by repo id with
    the same weights (`same(reloaded, model)` asserts it), and our PyTorch class with the same logits on IDS."""
    import uuid

    import pretrained

    repo = f"test-org/{name}-{uuid.uuid4().hex[:6]}"
    model.push_to_hub(repo, token=hub_server.token)
    same(auto_cls.from_pretrained(repo, token=hub_server.token), model)
    pt = pretrained.AutoModelForCausalLM.from_pretrained(repo, token=hub_server.token).eval()
    assert_close(pytorch_logits(pt), model(IDS).logits)


def no_torch_llama_config():
    """The tiny Llama config of the no-torch tests (the config's own pad token and position limit)."""
    import pretrained

    return pretrained.LlamaConfig(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2)


def neutral_modules(framework_modules, checkpoint_modules=()) -> list[str]:
    """The framework-neutral modules a no-torch subprocess imports first (and checks that they import no framework),
    with the framework's own neutral modules and its extra checkpoint readers."""
    return [
        "pretrained", "pretrained.configuration", "pretrained.registry", "pretrained.auto", "pretrained.remote_code",
        "pretrained.hub.resolve", "pretrained.hub.push", "pretrained.checkpoint.files", "pretrained.checkpoint.shards",
        "pretrained.checkpoint.atomic", "pretrained.checkpoint.header", "pretrained.checkpoint.numpy_reader",
        "pretrained.checkpoint.numpy_writer", "pretrained.checkpoint.report", *checkpoint_modules,
        "pretrained.generation.config", "pretrained.modeling.neutral", "pretrained.generation.neutral",
        "pretrained.layers.neutral", *framework_modules,
        *(f"pretrained.models.{f}.configuration" for f in ("llama", "mistral", "qwen2", "gemma", "bert", "gpt2", "t5")),
    ]


def run_json_script(script: str, *args: str, env: dict) -> dict:
    """Run `python -c script args...` with os.environ + `env`; it must succeed; its last line parsed as JSON."""
    run = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=600,
                         env={**os.environ, **env})
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


# ---- BERT -----------------------------------------------------------------------------------------------------------
BERT_TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                 max_position_embeddings=64, type_vocab_size=3, pad_token_id=0, initializer_range=0.2)
BERT_TASKS = ["Model", "ForMaskedLM", "ForSequenceClassification", "ForQuestionAnswering", "ForTokenClassification"]
BERT_CASES = [(t, {}) for t in BERT_TASKS] + [("ForMaskedLM", {"tie_word_embeddings": False})]


def bert_dims():
    """V, C, L, H, I of BERT_TINY: vocabulary, hidden size, layers, heads, intermediate size."""
    return tuple(BERT_TINY[k] for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                        "intermediate_size"))


def bert_batch(seed, dtype):
    """Two rows of 9 tokens, the second right-padded by 3; segment ids 0/1/2 (all as `dtype`)."""
    g = np.random.default_rng(seed)
    ids = g.integers(2, BERT_TINY["vocab_size"], (2, 9)).astype(dtype)
    mask = np.ones((2, 9), dtype=dtype)
    mask[1, 6:] = 0
    return ids, mask, g.integers(0, 3, (2, 9)).astype(dtype)


def bert_torch_out(model, ids, mask=None, segments=None, **kw):
    """The PyTorch BERT model on ids / mask / segment ids (as int64 tensors), `kw` passed as they are."""
    import torch

    with torch.no_grad():
        return model(as_long(ids), attention_mask=as_long(mask), token_type_ids=as_long(segments), **kw)


def assert_states_close(got, expected, layers: int) -> None:
    """Every hidden state and attention map of `got` equals PyTorch's (`expected`), `layers` of them."""
    assert len(got.hidden_states) == layers + 1 and len(got.attentions) == layers
    for i, (a, b) in enumerate(zip(got.hidden_states, expected.hidden_states)):
        close(a, b.numpy(), f"hidden state {i}")
    for i, (a, b) in enumerate(zip(got.attentions, expected.attentions)):
        close(a, b.numpy(), f"attentions {i}")


def assert_parity_with_states(got, expected, outputs, field, layers: int) -> None:
    """`got` (the other framework's output) has PyTorch's (`expected`) array fields (`outputs(out)`: those compared;
    `field(out, name)` reads one of `got`'s) with equal values, and equal hidden states and attentions."""
    want = outputs(expected)
    assert set(outputs(got)) == set(want)
    for name, value in want.items():
        close(field(got, name), value.numpy(), name)
    assert_states_close(got, expected, layers)


def bert_names(task: str, config, *, prefix: str, layer: str, word: str, table: str, norm: tuple, mlm: str) -> dict:
    """{name: shape} of 4.x's BERT parameters for the class `Bert<task>` on `config` (BERT_TINY's sizes), in a
    framework's spelling: `prefix` of the encoder's names, `layer` (a format of the layer index) after it, the word
    embedding's and the other tables' leaf names, the LayerNorm's (scale, bias) names, the MLM head's prefix."""
    V, C, L, H, I = bert_dims()
    p, (g, b) = prefix, norm
    expected = {f"{p}embeddings/word_embeddings/{word}": (V, C),
                f"{p}embeddings/position_embeddings/{table}": (64, C),
                f"{p}embeddings/token_type_embeddings/{table}": (3, C),
                f"{p}embeddings/LayerNorm/{g}": (C,), f"{p}embeddings/LayerNorm/{b}": (C,)}
    for i in range(L):
        a = p + layer.format(i)
        expected.update({
            **{a + f"attention/self/{n}/kernel": (C, C) for n in ("query", "key", "value")},
            **{a + f"attention/self/{n}/bias": (C,) for n in ("query", "key", "value")},
            a + "attention/output/dense/kernel": (C, C), a + "attention/output/dense/bias": (C,),
            a + f"attention/output/LayerNorm/{g}": (C,), a + f"attention/output/LayerNorm/{b}": (C,),
            a + "intermediate/dense/kernel": (C, I), a + "intermediate/dense/bias": (I,),
            a + "output/dense/kernel": (I, C), a + "output/dense/bias": (C,),
            a + f"output/LayerNorm/{g}": (C,), a + f"output/LayerNorm/{b}": (C,),
        })
    labels = config.num_labels
    if task in ("Model", "ForSequenceClassification"):
        expected.update({f"{p}pooler/dense/kernel": (C, C), f"{p}pooler/dense/bias": (C,)})
    if task == "ForMaskedLM":
        h = mlm
        expected.update({h + "bias": (V,), h + "transform/dense/kernel": (C, C), h + "transform/dense/bias": (C,),
                         h + f"transform/LayerNorm/{g}": (C,), h + f"transform/LayerNorm/{b}": (C,)})
        if not config.tie_word_embeddings:  # tied: the word embeddings, transposed
            expected.update({h + "decoder/kernel": (C, V), h + "decoder/bias": (V,)})
    if task in ("ForSequenceClassification", "ForTokenClassification"):
        expected.update({"classifier/kernel": (C, labels), "classifier/bias": (labels,)})
    if task == "ForQuestionAnswering":
        expected.update({"qa_outputs/kernel": (C, labels), "qa_outputs/bias": (labels,)})
    return expected


def reload_in_pytorch(model, folder):
    """`folder` (a save of the other framework's model) read by `model`'s PyTorch class, nothing missing, unexpected
    or mismatched."""
    reloaded, info = type(model).from_pretrained(folder, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []
    return reloaded


def assert_h5_round_trip(tf_model, folder) -> None:
    """The TF model saved as tf_model.h5 loads back CLEAN with every weight identical."""
    tf_model.save_pretrained(folder, safe_serialization=False)
    again, info = type(tf_model).from_pretrained(folder, output_loading_info=True)
    assert info == CLEAN
    theirs = {w.path.split("/", 1)[1]: w for w in again.weights}
    for w in tf_model.weights:
        np.testing.assert_array_equal(theirs[w.path.split("/", 1)[1]].numpy(), w.numpy(), err_msg=w.path)


def assert_reloads_in_pytorch(model, folder, inputs, outputs):
    """`folder` (a save of the other framework's BERT model) loads in `model`'s PyTorch class (`reload_in_pytorch`)
    and gives `model`'s outputs (`outputs(out)`: the fields compared) on `inputs` (ids, mask, segment ids)."""
    reloaded = reload_in_pytorch(model, folder)
    expected = outputs(bert_torch_out(model, *inputs))
    got = outputs(bert_torch_out(reloaded.eval(), *inputs))
    for name in expected:
        close(got[name].numpy(), expected[name].numpy(), name)


def write_legacy_bert(model, folder, target) -> None:
    """`folder`'s BERT checkpoint rewritten into `target` as old ones were: LayerNorm parameters named gamma/beta
    (converted from the original TensorFlow BERT), the position_ids buffer saved (before 4.31)."""
    from safetensors.numpy import load_file, save_file

    from pretrained.models import bert

    state = {}
    for name, value in load_file(folder / "model.safetensors").items():
        if "LayerNorm." in name:
            name = name.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        state[name] = value
    prefix = "" if isinstance(model, bert.BertModel) else "bert."
    state[prefix + "embeddings.position_ids"] = np.arange(64, dtype=np.int64)[None]
    save_file(state, target / "model.safetensors", metadata={"format": "pt"})
    (target / "config.json").write_text((folder / "config.json").read_text())


# ---- generation ---------------------------------------------------------------------------------------------------
GEN_VOCAB = 64
GEN_SMALL = dict(vocab_size=GEN_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.2,
                 bos_token_id=1, eos_token_id=2, pad_token_id=0)


def _gen_config(family: str):
    import pretrained

    V = GEN_VOCAB
    if family == "llama":
        return pretrained.LlamaConfig(**GEN_SMALL)
    if family == "mistral":
        return pretrained.MistralConfig(**GEN_SMALL, sliding_window=6)  # the window matters in 14-15 tokens
    if family == "qwen2":
        return pretrained.Qwen2Config(**GEN_SMALL)
    if family == "gemma":
        return pretrained.GemmaConfig(**{**GEN_SMALL, "head_dim": 8})
    if family == "gpt2":
        return pretrained.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                     initializer_range=0.2, bos_token_id=1, eos_token_id=2)
    return pretrained.T5Config(vocab_size=V, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                               initializer_factor=4.0, decoder_start_token_id=0, eos_token_id=2, pad_token_id=0)


GEN_FAMILIES = ["llama", "mistral", "qwen2", "gemma", "gpt2", "t5"]


def generation_models(tmp_path_factory, framework: str, check=None):
    """models(family) -> (our PyTorch model, our `framework` ("Flax" or "TF") model, folder), both loaded from one
    checkpoint folder our PyTorch class wrote under seed 0 (initializer_range 0.2: decisive argmaxes), each family
    built once. `check(family)` runs first (it may skip)."""
    import torch

    import pretrained

    loaded = {}

    def get(family: str):
        if check is not None:
            check(family)
        if family not in loaded:
            folder = tmp_path_factory.mktemp(f"{framework.lower()}-gen-{family}")
            torch.manual_seed(0)
            task = "AutoModelForSeq2SeqLM" if family == "t5" else "AutoModelForCausalLM"
            getattr(pretrained, task).from_config(_gen_config(family)).save_pretrained(folder)
            loaded[family] = (getattr(pretrained, task).from_pretrained(folder).eval(),
                              getattr(pretrained, framework + task).from_pretrained(folder), folder)
        return loaded[family]

    return get


def prompts():
    """Three prompts of 7 tokens, rows 1 and 2 left-padded by 2 and 4: (ids, mask) as PyTorch tensors."""
    import torch

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, GEN_VOCAB, (3, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    mask[2, :4] = 0
    return ids.masked_fill(mask == 0, 0), mask


def eos_from(free, start: int) -> list[int]:
    """Two EOS ids among the tokens greedy decoding produced (`free`, new tokens from column `start`): row 0's third
    new token and row 1's sixth, so that rows stop at different steps."""
    return [int(free[0, start + 2]), int(free[1, start + 5])]


def assert_stops_then_pads(out, start: int, eos) -> None:
    """Row 0 of `out` stops at one of `eos` within its first three new tokens, then holds only padding (0)."""
    row0 = out[0, start:].tolist()
    first = next(k for k, t in enumerate(row0) if t in eos)
    assert first <= 2 and all(t == 0 for t in row0[first + 1:])  # stopped, then padding


MORE_SETTINGS = [
    dict(max_new_tokens=6, num_beams=3),
    dict(max_new_tokens=6, num_beams=3, num_return_sequences=2, length_penalty=0.5, early_stopping=True),
    dict(max_new_tokens=6, num_beams=4, early_stopping="never"),
    dict(max_new_tokens=8, repetition_penalty=1.5, no_repeat_ngram_size=2),
    dict(max_new_tokens=8, min_new_tokens=5, eos_token_id=[2, 5]),
    dict(max_length=12, eos_token_id=None),
]
MORE_SETTINGS_IDS = ["beam", "beam_returns", "beam_never", "penalties", "min_new_tokens", "max_length"]


def settings_prompts(kw):
    """The prompts for a MORE_SETTINGS case: the three prompts, or row 0 alone (no mask) for plain beam search."""
    ids, mask = prompts()
    if kw.get("num_beams") == 3 and "num_return_sequences" not in kw:
        ids, mask = ids[:1], None  # beam search on a single prompt
    return ids, mask


def assert_generate_errors(model, ids) -> None:
    """The generation arguments both frameworks refuse, with the same messages as PyTorch."""
    from pretrained.errors import ConfigError

    with pytest.raises(ConfigError, match="num_return_sequences"):
        model.generate(ids, num_beams=2, num_return_sequences=3)
    with pytest.raises(ConfigError, match="Unknown generation arguments: nonsense"):
        model.generate(ids, nonsense=1)
    with pytest.raises(ValueError, match="stop_strings"):
        model.generate(ids, stop_strings=["x"])


def scores_and_ids(cur: int, L: int = 12, n: int = 4):
    import torch

    g = torch.Generator().manual_seed(5)
    scores = torch.randn(n, GEN_VOCAB, generator=g) * 3
    ids = torch.randint(0, 8, (n, L), generator=g)  # a small range: repeated tokens and n-grams
    ids[:, cur:] = -1  # past the current length: nothing (the fill value)
    return scores, ids


def processor_cases(fw, min_p_keep=False):
    """(name, PyTorch processor, the framework's processor) for each logits processor: `fw` is the framework's
    generation module (its processors take (sequences, scores, cur_len, *settings)); `min_p_keep` adds min_p with
    min_keep."""
    from pretrained.generation import logits as lp

    return [
        ("top_k", lambda i, s: lp.top_k(i, s, 5), lambda q, s, c: fw.top_k(q, s, c, 5)),
        ("top_k_keep", lambda i, s: lp.top_k(i, s, 1, min_keep=3), lambda q, s, c: fw.top_k(q, s, c, 1, 3)),
        ("top_p", lambda i, s: lp.top_p(i, s, 0.8), lambda q, s, c: fw.top_p(q, s, c, 0.8)),
        ("top_p_keep", lambda i, s: lp.top_p(i, s, 0.05, min_keep=2), lambda q, s, c: fw.top_p(q, s, c, 0.05, 2)),
        ("min_p", lambda i, s: lp.min_p(i, s, 0.1), lambda q, s, c: fw.min_p(q, s, c, 0.1)),
        *([("min_p_keep", lambda i, s: lp.min_p(i, s, 0.9, min_keep=3),
            lambda q, s, c: fw.min_p(q, s, c, 0.9, 3))] if min_p_keep else []),
        ("temperature", lambda i, s: lp.temperature(i, s, 0.7), lambda q, s, c: fw.temperature(q, s, c, 0.7)),
        ("repetition", lambda i, s: lp.repetition_penalty(i, s, 1.3),
         lambda q, s, c: fw.repetition_penalty(q, s, c, 1.3)),
        ("ngram2", lambda i, s: lp.no_repeat_ngram(i, s, 2), lambda q, s, c: fw.no_repeat_ngram(q, s, c, 2)),
        ("ngram3", lambda i, s: lp.no_repeat_ngram(i, s, 3), lambda q, s, c: fw.no_repeat_ngram(q, s, c, 3)),
        ("ngram1", lambda i, s: lp.no_repeat_ngram(i, s, 1), lambda q, s, c: fw.no_repeat_ngram(q, s, c, 1)),
        ("min_length", lambda i, s: lp.min_length(i, s, 10, [2, 3]),
         lambda q, s, c: fw.min_length(q, s, c, 10, (2, 3))),
        ("min_new_tokens", lambda i, s: lp.min_new_tokens(i, s, 4, 5, [2]),
         lambda q, s, c: fw.min_new_tokens(q, s, c, 4, 5, (2,))),
    ]


def repetition_penalty_case():
    """(scores, ids, PyTorch's penalised scores with row 1's first 3 prompt tokens ignored, the `counted` mask the
    framework processors take for the same: False where ignored)."""
    import torch

    from pretrained.generation import logits as lp

    scores, ids = scores_and_ids(9)
    ignore = torch.zeros(4, 9, dtype=torch.bool)
    ignore[1, :3] = True
    expected = lp.repetition_penalty(ids[:, :9], scores, 1.7, ignore).numpy()
    counted = np.ones((4, 12), dtype=bool)
    counted[1, :3] = False
    return scores, ids, expected, counted


def word_tokenizer(folder):
    """A word-level tokenizer ("w0" .. "w63", split on whitespace) saved as folder/tokenizer.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({f"w{i}": i for i in range(GEN_VOCAB)}, unk_token="w3"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(folder / "tokenizer.json"))
    return tokenizer


def cli_checkpoint(models, tmp_path):
    """(our PyTorch Llama, a copy of its generation checkpoint with a `word_tokenizer`, the tokenizer)."""
    import shutil

    torch_model, _, folder = models("llama")
    folder = shutil.copytree(folder, tmp_path / "ckpt")
    return torch_model, folder, word_tokenizer(folder)


def cli_generate_code(folder, prompt: str, framework: str, prelude: str, report: str) -> str:
    """Python code: `prelude`, then `pretrained generate folder --prompt prompt --max-new-tokens 6 --framework
    framework` through the CLI's main, then `report` (a statement), exiting with the CLI's status."""
    return (f"{prelude}from pretrained.cli import main; "
            f"status = main(['generate', {str(folder)!r}, '--prompt', {prompt!r}, '--max-new-tokens', '6', "
            f"'--framework', {framework!r}]); {report}; sys.exit(status)")


def cli_args(folder, framework: str) -> list[str]:
    """`generate folder` on a three-word prompt, 4 new tokens, with `framework`."""
    return ["generate", str(folder), "--prompt", "w5 w40 w33", "--max-new-tokens", "4", "--framework", framework]


def assert_cli_beams_and_device_map(main, capsys, base, torch_model) -> None:
    """`base --num-beams 2` prints PyTorch's beam-search words; `--device-map` is refused (status 2)."""
    import torch

    assert main(base + ["--num-beams", "2"]) == 0
    ids = torch.tensor([[5, 40, 33]])
    expected = torch_model.generate(ids, max_new_tokens=4, num_beams=2)[0].tolist()
    assert capsys.readouterr().out.split() == [f"w{i}" for i in expected]
    assert main(base + ["--device-map", "auto"]) == 2
    assert "--device-map" in capsys.readouterr().err


def run_cli_code(code: str):
    """`python -c code` with this process's sys.path; it must succeed. Returns the finished process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return done


def greedy_words(torch_model, tokenizer, prompt: str, max_new_tokens: int = 6) -> list[str]:
    """PyTorch's greedy tokens for `prompt` (the prompt, then up to EOS), as words of `word_tokenizer`."""
    import torch

    ids = torch.tensor([tokenizer.encode(prompt).ids])
    return [f"w{i}" for i in torch_model.generate(ids, max_new_tokens=max_new_tokens)[0].tolist()]


THROUGHPUT = r"\[\d+ tokens in [\d.]+ s, [\d.]+ tokens/s, compiling included\]"


def demo_max_diff(capsys, row: str) -> float:
    """`pretrained demo`'s max |logits - PyTorch| on the line that starts with `row` (a regex)."""
    from pretrained.cli import main

    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    found = re.search(row + r", max \|logits - PyTorch\| ([\d.e+-]+) \(float32\)", out, re.M)
    assert found, out
    return float(found.group(1))


# ---- 4.57's recorded files (tests/data/flax457, tests/data/tf457) ---------------------------------------------------
LEGACY_ATOL = LEGACY_RTOL = 1e-5


def load_recordings(data: Path, script: str):
    """(inputs.json, {case: expected.json}) of a recording folder; skips the module when it was never recorded."""
    if not (data / "inputs.json").is_file():
        pytest.skip(f"tests/data/{data.name} is missing: run tests/reference/{script}", allow_module_level=True)
    inputs = json.loads((data / "inputs.json").read_text())
    cases = {p.name: json.loads((p / "expected.json").read_text())
             for p in sorted(data.iterdir()) if (p / "expected.json").is_file()}
    return inputs, cases


def our_class(family: str, name: str, framework: str):
    """Our class by its 4.x name: the package export, else the family's modeling_<framework> module. Skips while
    the family's module does not exist yet; any other import error fails."""
    import pretrained

    cls = getattr(pretrained, name, None)
    if cls is None:
        module = f"pretrained.models.{family}.modeling_{framework}"
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            pytest.skip(f"{module} does not exist yet")
        cls = getattr(mod, name, None)
    if cls is None:
        pytest.skip(f"{name} is not implemented yet")
    return cls


def assert_outputs(out, meta: dict, folder: Path) -> None:
    """Every recorded field of `out` equals 4.57's (folder/<field>.npy), fp32, 1e-5."""
    for field in meta["fields"]:
        got = getattr(out, field, None)
        assert got is not None, f"output has no {field}"
        np.testing.assert_allclose(np.asarray(got, dtype=np.float32), np.load(folder / f"{field}.npy"),
                                   atol=LEGACY_ATOL, rtol=LEGACY_RTOL, err_msg=f"{meta['class']}.{field}")


def assert_as_base(out, meta: dict, folder: Path) -> None:
    """A head folder loaded into the family's base class: its output equals 4.57's (folder/as_base.npy)."""
    np.testing.assert_allclose(np.asarray(getattr(out, meta["as_base"]["field"]), dtype=np.float32),
                               np.load(folder / "as_base.npy"), atol=LEGACY_ATOL, rtol=LEGACY_RTOL)


def recorded_models(cases: dict, data: Path, find_class):
    """get(name) -> each case's model, loaded once from its recorded folder (`find_class(family, name)`)."""
    cache = {}

    def get(name):
        if name not in cache:
            meta = cases[name]
            cache[name] = find_class(meta["family"], meta["class"]).from_pretrained(data / name)
        return cache[name]

    return get


def check_ours_in_457(data: Path, script: str, required) -> None:
    """`<script> --check-ours`'s record (data/ours_in_457.json), when there is one: every case ok, `required` all
    there."""
    path = data / "ours_in_457.json"
    if not path.is_file():
        pytest.skip(f"ours_in_457.json not recorded yet: run {script} --check-ours with 4.57")
    result = json.loads(path.read_text())
    failed = {k: v for k, v in result["cases"].items() if not v.get("ok")}
    assert not failed, failed
    assert set(result["cases"]) >= set(required)
