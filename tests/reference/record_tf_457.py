"""Record what transformers 4.57.6's TensorFlow classes (the last line that had them) write and compute, so that
tests/tf/test_tf_legacy_457.py can check our TF classes against them without 4.57 installed.

4.57 never goes into .venv. Its TF classes need Keras 2 (tf-keras); they live in their own environment, outside the
repository:

    python3 -m venv /work/ref457tf/venv
    /work/ref457tf/venv/bin/pip install torch==2.13.0        # first: the local CPU build
    /work/ref457tf/venv/bin/pip install transformers==4.57.6 "tensorflow-cpu==2.21.*" "tf-keras==2.21.*" \
        safetensors h5py
    /work/ref457tf/venv/bin/python tests/reference/record_tf_457.py          # writes tests/data/tf457/

The script sets TF_USE_LEGACY_KERAS=1 itself (before importing TensorFlow): 4.57's TF classes are Keras 2 models.

Modes:
  (default)        record every case below into tests/data/tf457/ (removed and rewritten).
  --check-ours     the other direction: our TF classes (run by --ours-python, default .venv/bin/python) load each
                   recorded folder, add fixed noise to every weight, save tf_model.h5 (sharded where the case is)
                   and the default PyTorch-layout safetensors, and run the recorded inputs; 4.57's TF class then
                   loads each h5 folder (and the safetensors one with from_pt=True) and compares. Writes
                   tests/data/tf457/ours_in_457.json (CI cannot run this: 4.57 is absent there).
  --check-dir DIR  load one folder (a tf_model.h5 written by anyone) with the 4.57 TF class in its config's
                   "architectures", print the loading info and the outputs' sums on the recorded inputs.

Layout of tests/data/tf457/:
  inputs.json          the fixed inputs (right-padded forward batch, left-padded generation batch)
  <case>/config.json, tf_model.h5 (or tf_model-0000i-of-0000n.h5 + tf_model.h5.index.json), generation_config.json
  <case>/<field>.npy   outputs of the forward on inputs.json's batch (fp32)
  <case>/as_base.npy   (head classes) the family's base TF class loaded from this folder: its first output
  <case>/expected.json class, inputs used, fields, the model's weights in order (4.x TF name, shape, dtype), the h5
                       layout as h5py reads it (root layer_names, each group's weight_names, dataset paths; per
                       shard for sharded files), greedy `generate` sequences (one unpadded row, and the left-padded
                       batch) with their smallest top-1/top-2 logit margin, and the largest difference between 4.57's
                       TF class and 4.57's PyTorch class loading the same h5 (from_tf=True)
  prune.json           4.57's TF BERT, pruning and head masks: its TF prune_heads and any head_mask raise
                       NotImplementedError; what loading the PyTorch-pruned tests/data/bert_pruned/pruned into the TF
                       class does. (The oracle for our TF pruning and head_mask is tests/data/bert_pruned/: 4.57's
                       PyTorch pruning and head mask, recorded by record_bert_pruning.py.)
Weights: 4.57's own TF init under a fixed seed, with deterministic noise added to every weight (biases and norm
scales are zeros/ones after init, and some of 4.57's initial matrices are equal: either would hide a mapping bug).
Every model is built after tf_keras.backend.clear_session(), so its name has no "_N" suffix (4.57 names a second
instance of a class in one process "<name>_1", and writes that name into the file; readers strip the first
component).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from _record_common import (  # noqa: E402
    BERT, DECODER, GPT2, NEW_TOKENS, REPO, SEED, T5, architecture_class, build_config, case_meta, check_457,
    check_ours_cases, compare_with_ours, failed, finish_record, loads_as_base, main, make_inputs, min_margin, noise,
    output_fields, print_dir_check, record_all, save_as_base, shard_kwargs
)
from _record_common import forward_kwargs as _forward_kwargs  # noqa: E402

OUT = REPO / "tests" / "data" / "tf457"
PRUNED = REPO / "tests" / "data" / "bert_pruned"

# Sizes follow tests/test_common.py TINY (small max_position_embeddings: 4.57's TF BERT/GPT-2 store the whole
# position table). Mistral: 4.57's TF class ignores sliding_window and head_dim (hidden // heads), so the window is
# wider than every sequence used here and head_dim is not overridden; it honours rope_theta.
FAMILIES = {"bert": BERT, "gpt2": GPT2, "t5": T5,
            "mistral": dict(DECODER, sliding_window=32, rope_theta=10000.0)}
BASE_CLASS = {"bert": "TFBertModel", "gpt2": "TFGPT2Model", "t5": "TFT5Model", "mistral": "TFMistralModel"}

# name -> (family, 4.57 TF class, config overrides, options)
#   gen: record greedy generate; shard: save sharded (max_shard_size)
CASES = {
    "bert_model": ("bert", "TFBertModel", {}, {}),
    "bert_masked_lm": ("bert", "TFBertForMaskedLM", {}, {}),
    "bert_seq_cls": ("bert", "TFBertForSequenceClassification", {"num_labels": 3}, {}),
    "bert_qa": ("bert", "TFBertForQuestionAnswering", {}, {}),
    "bert_token_cls": ("bert", "TFBertForTokenClassification", {"num_labels": 5}, {}),
    "bert_seq_cls_sharded": ("bert", "TFBertForSequenceClassification", {"num_labels": 3}, {"shard": "20KB"}),
    "gpt2_model": ("gpt2", "TFGPT2Model", {}, {}),
    "gpt2_lm_head": ("gpt2", "TFGPT2LMHeadModel", {}, {"gen": True}),
    "t5_model": ("t5", "TFT5Model", {}, {}),
    "t5_cond_gen": ("t5", "TFT5ForConditionalGeneration", {}, {"gen": True}),
    "t5_v1_1_cond_gen": ("t5", "TFT5ForConditionalGeneration",
                         {"feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}, {"gen": True}),
    "t5_encoder": ("t5", "TFT5EncoderModel", {}, {}),
    "mistral_model": ("mistral", "TFMistralModel", {}, {}),
    "mistral_causal_lm": ("mistral", "TFMistralForCausalLM", {}, {"gen": True}),
    "mistral_seq_cls": ("mistral", "TFMistralForSequenceClassification", {"num_labels": 3}, {}),
    "mistral_causal_lm_sharded": ("mistral", "TFMistralForCausalLM", {}, {"shard": "8KB"}),
}
HEAD_MASK = [[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.5]]
INPUTS_NOTE = ("forward: input_ids/attention_mask (right padding, no position_ids: arange), token_type_ids for "
               "BERT, decoder_* for T5 (decoder_input_ids[:, 0] = decoder_start_token_id). generate: greedy, "
               "max_new_tokens=new_tokens, (1) row 0 of gen_* alone (no mask) and (2) the left-padded gen_* "
               "batch with its mask; for T5 the encoder inputs are gen_encoder_*.")


def forward_kwargs(family: str, cls_name: str, inputs: dict) -> dict:
    return _forward_kwargs(family, cls_name, inputs, dtype=np.int32)


def gen_kwargs(family: str, inputs: dict, batch: bool) -> dict:
    prefix = "gen_encoder_" if family == "t5" else "gen_"
    ids = np.array(inputs[prefix + "input_ids"], dtype=np.int32)
    mask = np.array(inputs[prefix + "attention_mask"], dtype=np.int32)
    if batch:
        return {"input_ids": ids, "attention_mask": mask}
    return {"input_ids": ids[:1]}


def _attr_list(value) -> list[str]:
    """An h5 attribute holding names (Keras 2 writes bytes or str arrays; an empty list as a float64 array)."""
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in np.asarray(value).tolist()]


def h5_layout(path: Path) -> dict:
    """What h5py sees in one h5 file: root attributes, each group's weight_names, every dataset's shape/dtype."""
    import h5py

    layout = {"root_attrs": {}, "groups": {}, "datasets": {}}
    with h5py.File(path, "r") as f:
        for k, v in f.attrs.items():
            if k == "layer_names":
                layout["root_attrs"][k] = _attr_list(v)
                layout["root_attrs"]["layer_names_dtype"] = str(np.asarray(v).dtype)
            else:
                layout["root_attrs"][k] = v.decode() if isinstance(v, bytes) else str(v)

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                layout["datasets"][name] = {"shape": list(obj.shape), "dtype": str(obj.dtype)}
            elif "weight_names" in obj.attrs:
                wn = obj.attrs["weight_names"]
                layout["groups"][name] = {"weight_names": _attr_list(wn),
                                          "weight_names_dtype": str(np.asarray(wn).dtype)}

        f.visititems(visit)
    return layout


# ---------------------------------------------------------------------------------------------------------------
# Helpers that need 4.57 (imported lazily so that --_ours can run under .venv without transformers).

def _tf457():
    """Import TensorFlow with Keras 2 and transformers 4.57 (exits with a hint otherwise)."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import transformers

    check_457(transformers)
    try:
        import tf_keras  # noqa: F401
    except ImportError:
        sys.exit("needs tf-keras (Keras 2) next to tensorflow; see this script's docstring")
    transformers.logging.set_verbosity_error()
    return transformers


def fresh_session(seed: int = SEED):
    """Forget earlier models (so names carry no "_N" suffix) and fix the init seed."""
    import tensorflow as tf
    import tf_keras

    tf_keras.backend.clear_session()
    tf.random.set_seed(seed)
    tf_keras.utils.set_random_seed(seed)


def strip_first(name: str) -> str:
    return name.split("/", 1)[1] if "/" in name else name


def perturb(model, name: str) -> None:
    """Add fixed noise (keyed by the case name and the weights' order) to every weight: 0.1 to vectors (biases and
    norm scales are zeros/ones after init; GPT-2's biases are (1, n)), 0.02 to matrices (4.57's TF init reuses
    unseeded initializers, so e.g. T5 v1.1's wi_0 and wi_1 start equal and would hide a swap)."""
    rng = noise(name)
    for w in model.weights:
        value = np.asarray(w.numpy())
        scale = 0.1 if sum(d > 1 for d in value.shape) <= 1 else 0.02
        w.assign(value + rng.normal(0.0, scale, value.shape).astype(value.dtype))


def run_forward(model, kw, **extra):
    import tensorflow as tf

    return model(**{k: tf.constant(v) for k, v in kw.items()}, training=False, **extra)


def greedy_margin(model, seqs, prompt, family):
    """Smallest top-1 minus top-2 logit over the generated positions (a small margin makes a token fragile)."""
    import tensorflow as tf

    seqs = np.asarray(seqs)
    if family == "t5":
        kw = {"input_ids": prompt["input_ids"], "decoder_input_ids": seqs[:, :-1]}
        if "attention_mask" in prompt:
            kw["attention_mask"] = prompt["attention_mask"]
        logits = np.asarray(model(**{k: tf.constant(v) for k, v in kw.items()}).logits)
    else:
        plen = prompt["input_ids"].shape[1]
        pmask = prompt.get("attention_mask", np.ones_like(prompt["input_ids"]))
        mask = np.concatenate([pmask, np.ones((seqs.shape[0], seqs.shape[1] - plen), dtype=np.int32)], axis=1)
        pos = np.maximum(np.cumsum(mask, axis=-1) - 1, 0).astype(np.int32)
        out = model(input_ids=tf.constant(seqs[:, :-1]), attention_mask=tf.constant(mask[:, :-1]),
                    position_ids=tf.constant(pos[:, :-1]))
        logits = np.asarray(out.logits)[:, plen - 1:]
    return min_margin(logits)


def record_case(transformers, name, family, cls_name, overrides, opts, inputs, out_root) -> dict:
    import tensorflow as tf
    import torch

    cfg = build_config(transformers, FAMILIES, family, overrides)
    cls = getattr(transformers, cls_name)
    fresh_session()
    model = cls(cfg)
    model.build_in_name_scope()
    perturb(model, name)
    folder = out_root / name
    model.save_pretrained(folder, **shard_kwargs(opts))  # 4.57's TF default: h5

    # what we record is what a reload gives (the file, not the in-memory init)
    fresh_session()
    model, info = cls.from_pretrained(folder, output_loading_info=True)
    kw = forward_kwargs(family, cls_name, inputs)
    fields = output_fields(run_forward(model, kw))
    meta = case_meta(cls_name, family, overrides, opts, kw, fields, folder, model_name=model.name,
                     loading_info={k: sorted(map(str, v)) for k, v in info.items()},
                     weights=[{"name": w.name, "shape": list(w.shape), "dtype": w.dtype.name,
                               "trainable": bool(w.trainable)} for w in model.weights],
                     num_parameters=int(model.num_parameters()),
                     top_level_layers=[layer.name for layer in model.layers])
    if "shard" in opts:
        index = json.loads((folder / "tf_model.h5.index.json").read_text())
        shards = sorted(p.name for p in folder.glob("tf_model-*-of-*.h5"))
        meta["index"] = index
        meta["h5"] = {s: h5_layout(folder / s) for s in shards}
    else:
        meta["h5"] = {"tf_model.h5": h5_layout(folder / "tf_model.h5")}

    if loads_as_base(cls_name, BASE_CLASS[family]):
        fresh_session()
        base = getattr(transformers, BASE_CLASS[family]).from_pretrained(folder)
        save_as_base(meta, folder, BASE_CLASS[family],
                     run_forward(base, forward_kwargs(family, BASE_CLASS[family], inputs)))

    prompts = {}
    if opts.get("gen"):
        for key, batch in (("greedy", False), ("greedy_left_padded", True)):
            prompt = gen_kwargs(family, inputs, batch)
            prompts[key] = prompt
            seqs = model.generate(**{k: tf.constant(v) for k, v in prompt.items()}, max_new_tokens=NEW_TOKENS,
                                  do_sample=False)
            meta[key] = np.asarray(seqs).tolist()
            meta[key + "_min_margin"] = greedy_margin(model, seqs, prompt, family)

    # 4.57's own PyTorch class on the same weights: where its TF class disagrees with PyTorch. (4.57's
    # from_pretrained(from_tf=True) leaves the parameters on the meta device with torch 2.13: build the model, then
    # convert with its own TF -> PyTorch function from the TF model loaded from the file.)
    from transformers.modeling_tf_pytorch_utils import load_tf2_model_in_pytorch_model

    torch.manual_seed(0)
    pt = getattr(transformers, cls_name[2:])(cfg).eval()
    pt, pt_info = load_tf2_model_in_pytorch_model(pt, model, output_loading_info=True)
    pt.eval()
    meta["pt457_loading_info"] = {k: sorted(map(str, v)) for k, v in pt_info.items()}
    extra = {}
    with torch.no_grad():
        pt_out = pt(**{k: torch.tensor(v, dtype=torch.long) for k, v in kw.items()})
        meta["pt457_max_abs_diff"] = {f: float(np.abs(pt_out[f].float().numpy() - fields[f]).max())
                                      for f in fields if f in pt_out}
        for key, prompt in prompts.items():
            t_kw = {k: torch.tensor(v, dtype=torch.long) for k, v in prompt.items()}
            pt_seq = pt.generate(**t_kw, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=cfg.pad_token_id)
            extra[key + "_equal"] = pt_seq.tolist() == meta[key]
    meta.update({f"pt457_{k}": v for k, v in extra.items()})
    (folder / "expected.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return meta


def record_prune_facts(transformers) -> dict:
    """4.57's TF BERT, pruning and head masks (its PyTorch pruning is recorded in tests/data/bert_pruned)."""
    import tensorflow as tf

    cfg = transformers.BertConfig(**FAMILIES["bert"], num_labels=3)
    fresh_session()
    m = transformers.TFBertForSequenceClassification(cfg)
    m.build_in_name_scope()
    facts = {}
    try:
        m(tf.constant([[5, 6, 7]]), head_mask=tf.constant(HEAD_MASK))
        facts["tf_head_mask"] = "no error"
    except Exception as e:
        facts["tf_head_mask"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    try:
        m.prune_heads({0: [1]})
        facts["tf_prune_heads"] = "no error"
    except Exception as e:
        facts["tf_prune_heads"] = f"{type(e).__name__}: {e}"
    if (PRUNED / "pruned").is_dir():
        fresh_session()
        try:
            _, info = transformers.TFBertForSequenceClassification.from_pretrained(
                PRUNED / "pruned", from_pt=True, output_loading_info=True)
            facts["tf_load_pytorch_pruned"] = {k: sorted(map(str, v)) for k, v in info.items()}
        except Exception as e:
            facts["tf_load_pytorch_pruned"] = f"{type(e).__name__}: {str(e)[:400]}"
    return facts


def record() -> None:
    transformers = _tf457()
    import tensorflow as tf

    inputs = make_inputs(INPUTS_NOTE)
    record_all(OUT, inputs, CASES,
               lambda *case: record_case(transformers, *case, inputs, OUT),
               lambda meta: {k: meta[k] for k in meta if k.startswith("pt457_") or k.endswith("_min_margin")})
    prune = record_prune_facts(transformers)
    (OUT / "prune.json").write_text(json.dumps(prune, indent=1, sort_keys=True) + "\n")
    print("prune", json.dumps(prune))
    import tf_keras

    finish_record(OUT,
                  "Recorded by tests/reference/record_tf_457.py with transformers "
                  f"{transformers.__version__} (TF classes), tensorflow {tf.__version__}, tf-keras "
                  f"{tf_keras.__version__}. Regenerate with that script; do not edit by hand.\n")


# ---------------------------------------------------------------------------------------------------------------
# The other direction: folders written by OUR TF classes, loaded in 4.57.

OURS_MODULES = {"bert": "pretrained.models.bert.modeling_tf", "gpt2": "pretrained.models.gpt2.modeling_tf",
                "t5": "pretrained.models.t5.modeling_tf", "mistral": "pretrained.models.mistral.modeling_tf"}


def _our_class(family: str, cls_name: str):
    import importlib

    import pretrained

    cls = getattr(pretrained, cls_name, None)
    if cls is None:
        cls = getattr(importlib.import_module(OURS_MODULES[family]), cls_name)
    return cls


def _ours_child(tmp: Path) -> None:
    """Runs under .venv (our library, no transformers): load each recorded folder with our TF class, add noise to
    every weight, save as h5 (sharded where the case is) and as our default safetensors, and run the inputs."""
    import tensorflow as tf

    inputs = json.loads((OUT / "inputs.json").read_text())
    report = {}
    for name, (family, cls_name, _, opts) in CASES.items():
        try:
            cls = _our_class(family, cls_name)
            model = cls.from_pretrained(OUT / name)
            perturb(model, name + "/ours")
            model.save_pretrained(tmp / name / "h5", safe_serialization=False, **shard_kwargs(opts))
            model.save_pretrained(tmp / name / "safetensors")
            kw = forward_kwargs(family, cls_name, inputs)
            out = model(**{k: tf.constant(v) for k, v in kw.items()}, training=False)
            np.savez(tmp / name / "ours_outputs.npz", **output_fields(out))
            report[name] = "saved"
        except Exception as e:  # reported, and the 4.57 side marks the case failed
            report[name] = f"error: {type(e).__name__}: {e}"
    (tmp / "ours_report.json").write_text(json.dumps(report, indent=1))


def _load_in_457(transformers, folder: Path, cls_name: str | None = None, **kw):
    cls_name = cls_name or architecture_class(folder, "TF")
    fresh_session()
    model, info = getattr(transformers, cls_name).from_pretrained(folder, output_loading_info=True, **kw)
    # weightless top-level layers (dropout_N) carry a per-process number: their names never match; harmless
    weighted = {layer.name for layer in model.layers if layer.weights}
    problems = []
    missing = [k for k in info["missing_keys"] if "/" in k or k in weighted]
    unexpected = [k for k in info["unexpected_keys"] if "/" in k or not k.startswith("dropout")]
    if missing:
        problems.append(f"missing: {sorted(missing)}")
    if unexpected:
        problems.append(f"unexpected: {sorted(unexpected)}")
    if info["mismatched_keys"]:
        problems.append(f"mismatched: {sorted(map(str, info['mismatched_keys']))}")
    return model, problems


def check_ours(ours_python: Path) -> None:
    transformers = _tf457()
    inputs = json.loads((OUT / "inputs.json").read_text())

    def check_case(name: str, folder: Path, entry: dict) -> None:
        family, cls_name, _, _ = CASES[name]
        ours = np.load(folder / "ours_outputs.npz")
        kw = forward_kwargs(family, cls_name, inputs)
        for fmt, load_kw in (("h5", {}), ("safetensors", {"from_pt": True})):
            sub = {}
            try:
                model, problems = _load_in_457(transformers, folder / fmt, cls_name, **load_kw)
                got = output_fields(run_forward(model, kw))
                sub.update(compare_with_ours(got, ours, problems))
                sub["files"] = sorted(p.name for p in (folder / fmt).iterdir())
            except Exception as e:
                failed(sub, e)
            entry[fmt] = sub
        entry["ok"] = entry["h5"]["ok"] and entry["safetensors"]["ok"]

    check_ours_cases(OUT, transformers, __file__, ours_python, check_case,
                     drop_env=("PYTHONPATH", "TF_USE_LEGACY_KERAS"))


def check_dir(folder: Path) -> None:
    transformers = _tf457()
    model, problems = _load_in_457(transformers, folder)
    inputs = make_inputs(INPUTS_NOTE)
    print_dir_check(model, problems, lambda family, cls_name: output_fields(
        run_forward(model, forward_kwargs(family, cls_name, inputs))))


if __name__ == "__main__":
    main(__doc__, record, check_ours, check_dir, _ours_child)
