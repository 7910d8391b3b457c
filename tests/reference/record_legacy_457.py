"""Record the legacy checkpoints that tests/test_legacy_formats.py loads into the PyTorch classes (issue 19), with the
outputs they must give. Three steps, each in its own environment (4.57 never goes into .venv):

    /work/ref457tf/venv/bin/python tests/reference/record_legacy_457.py --tf1     # tensorflow 2.21 + 4.57.6
    /work/ref457/venv/bin/python tests/reference/record_legacy_457.py --flax      # jax 0.10.2 + flax 0.12.8 + 4.57.6
    .venv/bin/python tests/reference/record_legacy_457.py --ours                  # our TF and Flax classes

--tf1   `bert_tf1/`: an original-BERT-style TensorFlow 1 checkpoint (`bert_model.ckpt.index` + `.data-00000-of-00001`)
        written with tf.compat.v1 (a graph, variables, `Saver`) under Google's variable names, with Adam slots
        (`.../adam_m`, `.../adam_v`) and `global_step` as a training run leaves them, plus Google's `bert_config.json`
        and a `config.json`. 4.57.6's own TF 1 path does not work (its `load_tf_weights` raises "incompatible tensor
        type"), so the expected outputs come from 4.57's PyTorch BertForPreTraining / BertModel / BertForMaskedLM with
        the same numbers put in by name here (this script's own table, independent of the library's mapping).
--flax  `llama_flax_bf16/`: 4.57's FlaxLlamaForCausalLM saved with bfloat16 parameters (`to_bf16`), and its outputs
        (its computation dtype is float32: the outputs of the bf16-rounded weights in float32).
--ours  `ours_<family>_{tf,flax}/`: families 4.57 has no TF (Llama, Qwen2, Gemma) or Flax (Qwen2) class for: our
        PyTorch class's random weights (saved as `pt/model.safetensors`) written by our TF / Flax class as
        `tf_model.h5` / `flax_model.msgpack` (sharded for one case), and our PyTorch outputs on them.

Inputs: tests/data/tf457/inputs.json (the forward batch). Files are tiny (hidden 32, 2 layers).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "data" / "legacy457"
INPUTS = REPO / "tests" / "data" / "tf457" / "inputs.json"
BERT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64, type_vocab_size=2, hidden_act="gelu", hidden_dropout_prob=0.1,
            attention_probs_dropout_prob=0.1, initializer_range=0.02, pad_token_id=0)
LLAMA = dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, rope_theta=10000.0, initializer_range=0.2,
             pad_token_id=0, bos_token_id=1, eos_token_id=2)


def inputs() -> dict:
    return json.loads(INPUTS.read_text())


def fresh(folder: Path) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


# ---- --tf1 -----------------------------------------------------------------------------------------------------
def google_bert_weights(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Google's variable names and shapes for BERT's pre-training graph (kernels [in, out])."""
    C, I, V, P, T = BERT["hidden_size"], BERT["intermediate_size"], BERT["vocab_size"], \
        BERT["max_position_embeddings"], BERT["type_vocab_size"]
    shapes = {"bert/embeddings/word_embeddings": (V, C), "bert/embeddings/token_type_embeddings": (T, C),
              "bert/embeddings/position_embeddings": (P, C), "bert/embeddings/LayerNorm/gamma": (C,),
              "bert/embeddings/LayerNorm/beta": (C,)}
    for i in range(BERT["num_hidden_layers"]):
        p = f"bert/encoder/layer_{i}"
        for proj in ("query", "key", "value"):
            shapes[f"{p}/attention/self/{proj}/kernel"] = (C, C)
            shapes[f"{p}/attention/self/{proj}/bias"] = (C,)
        shapes.update({f"{p}/attention/output/dense/kernel": (C, C), f"{p}/attention/output/dense/bias": (C,),
                       f"{p}/attention/output/LayerNorm/gamma": (C,), f"{p}/attention/output/LayerNorm/beta": (C,),
                       f"{p}/intermediate/dense/kernel": (C, I), f"{p}/intermediate/dense/bias": (I,),
                       f"{p}/output/dense/kernel": (I, C), f"{p}/output/dense/bias": (C,),
                       f"{p}/output/LayerNorm/gamma": (C,), f"{p}/output/LayerNorm/beta": (C,)})
    shapes.update({"bert/pooler/dense/kernel": (C, C), "bert/pooler/dense/bias": (C,),
                   "cls/predictions/transform/dense/kernel": (C, C), "cls/predictions/transform/dense/bias": (C,),
                   "cls/predictions/transform/LayerNorm/gamma": (C,), "cls/predictions/transform/LayerNorm/beta": (C,),
                   "cls/predictions/output_bias": (V,), "cls/seq_relationship/output_weights": (2, C),
                   "cls/seq_relationship/output_bias": (2,)})
    out = {}
    for name, shape in shapes.items():
        value = rng.normal(0.0, 0.2, size=shape).astype(np.float32)
        if name.endswith("gamma"):
            value += 1.0
        out[name] = value
    return out


def pytorch_name(google: str) -> tuple[str, bool]:
    """This script's own table: Google's name -> (4.57 PyTorch name, transpose?)."""
    fixed = {"cls/predictions/output_bias": "cls.predictions.bias",
             "cls/seq_relationship/output_weights": "cls.seq_relationship.weight",
             "cls/seq_relationship/output_bias": "cls.seq_relationship.bias"}
    if google in fixed:
        return fixed[google], False
    parts = google.split("/")
    parts = [f"layer.{p[6:]}" if p.startswith("layer_") else p for p in parts]
    leaf = parts[-1]
    transpose = leaf == "kernel"
    parts[-1] = {"kernel": "weight", "gamma": "weight", "beta": "bias"}.get(leaf, leaf)
    if leaf.endswith("_embeddings"):
        parts.append("weight")
    return ".".join(parts), transpose


def record_tf1() -> None:
    import tensorflow as tf
    import torch
    import transformers

    folder = fresh(OUT / "bert_tf1")
    weights = google_bert_weights(np.random.default_rng(19))
    graph = tf.Graph()
    with graph.as_default():
        variables = []
        for name, value in weights.items():
            variables.append(tf.compat.v1.get_variable(name, initializer=tf.constant(value)))
            for slot in ("adam_m", "adam_v"):  # what Google's AdamWeightDecayOptimizer leaves next to each weight
                variables.append(tf.compat.v1.get_variable(f"{name}/{slot}", initializer=tf.constant(
                    np.full(value.shape, 7.0, np.float32))))
        tf.compat.v1.train.get_or_create_global_step()
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, str(folder / "bert_model.ckpt"), write_meta_graph=False)
    for extra in folder.glob("checkpoint"):
        extra.unlink()
    google_config = {k: BERT[k] for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                          "intermediate_size", "max_position_embeddings", "type_vocab_size",
                                          "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob",
                                          "initializer_range")}
    (folder / "bert_config.json").write_text(json.dumps(google_config, indent=2) + "\n")
    config = transformers.BertConfig(**BERT)
    config.architectures = ["BertForPreTraining"]
    config.to_json_file(str(folder / "config.json"))

    state = {}
    for name, value in weights.items():
        pt, transpose = pytorch_name(name)
        state[pt] = torch.from_numpy(np.ascontiguousarray(value.T if transpose else value))
    ins = inputs()
    kw = {k: torch.tensor(ins[k]) for k in ("input_ids", "attention_mask", "token_type_ids")}
    expected = {"inputs": sorted(kw), "classes": {}}
    for cls_name, prefix, fields in (("BertForPreTraining", "", ("prediction_logits", "seq_relationship_logits")),
                                     ("BertModel", "bert.", ("last_hidden_state", "pooler_output")),
                                     ("BertForMaskedLM", "", ("logits",))):
        model = getattr(transformers, cls_name)(config).eval()
        own = {k[len(prefix):] if prefix else k: v for k, v in state.items() if k.startswith(prefix)}
        own = {k: v for k, v in own.items() if k in model.state_dict()}
        missing, _ = model.load_state_dict(own, strict=False)
        tied = {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}
        assert set(missing) <= tied | {"bert.embeddings.position_ids"}, (cls_name, missing)
        with torch.no_grad():
            out = model(**kw)
        for f in fields:
            np.save(folder / f"{cls_name}.{f}.npy", out[f].float().numpy())
        expected["classes"][cls_name] = list(fields)
    expected["skipped"] = sorted(f"{n}/{s}" for n in weights for s in ("adam_m", "adam_v")) + ["global_step"]
    expected["versions"] = {"transformers": transformers.__version__, "tensorflow": tf.__version__,
                            "torch": torch.__version__}
    (folder / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    print("wrote", folder)


# ---- --flax ----------------------------------------------------------------------------------------------------
def record_flax() -> None:
    import jax
    import transformers

    folder = fresh(OUT / "llama_flax_bf16")
    config = transformers.LlamaConfig(**LLAMA)
    model = transformers.FlaxLlamaForCausalLM(config, seed=0)
    rng = np.random.default_rng(7)
    params = jax.tree_util.tree_map(lambda a: np.asarray(a) + rng.normal(0, 0.1, a.shape).astype(a.dtype)
                                    if a.ndim == 1 else np.asarray(a), model.params)
    # 4.57's to_bf16 returns the tree unchanged with flax 0.12 (leaves stay float32; why tests/data/flax457's
    # llama_causal_lm_bf16 holds float32): cast each leaf, as to_bf16 is documented to do.
    params = jax.tree_util.tree_map(lambda a: jax.numpy.asarray(a, jax.numpy.bfloat16), params)
    model.save_pretrained(folder, params=params)
    dtypes = {str(a.dtype) for a in jax.tree_util.tree_leaves(params)}
    assert dtypes == {"bfloat16"}, dtypes
    reloaded = transformers.FlaxLlamaForCausalLM.from_pretrained(folder)
    ins = inputs()
    out = reloaded(np.array(ins["input_ids"]), attention_mask=np.array(ins["attention_mask"]))
    np.save(folder / "logits.npy", np.asarray(out.logits, dtype=np.float32))
    meta = {"class": "FlaxLlamaForCausalLM", "inputs": ["attention_mask", "input_ids"], "fields": ["logits"],
            "param_dtypes": sorted(dtypes), "config_dtype": json.loads((folder / "config.json").read_text()).get(
                "torch_dtype", json.loads((folder / "config.json").read_text()).get("dtype")),
            "versions": {"transformers": transformers.__version__, "jax": jax.__version__}}
    (folder / "expected.json").write_text(json.dumps(meta, indent=1) + "\n")
    print("wrote", folder)


# ---- --ours ----------------------------------------------------------------------------------------------------
def record_ours() -> None:
    import torch

    sys.path.insert(0, str(REPO / "src"))
    import pretrained

    ins = inputs()
    cases = {  # name -> (PyTorch class, config, framework, save options)
        "ours_llama_tf": ("LlamaForCausalLM", pretrained.LlamaConfig(**LLAMA), "tf", {}),
        "ours_qwen2_tf": ("Qwen2ForCausalLM", pretrained.Qwen2Config(**LLAMA), "tf", {}),
        "ours_gemma_tf": ("GemmaForCausalLM", pretrained.GemmaConfig(**{**LLAMA, "head_dim": 8}), "tf",
                          {"max_shard_size": "10KB"}),
        "ours_qwen2_flax": ("Qwen2ForCausalLM", pretrained.Qwen2Config(**LLAMA), "flax", {"max_shard_size": "10KB"}),
    }
    for name, (cls_name, config, framework, save_kw) in cases.items():
        folder = fresh(OUT / name)
        torch.manual_seed(0)
        model = getattr(pretrained, cls_name).from_config(config).eval()
        with torch.no_grad():
            for p in model.parameters():
                if p.ndim == 1:
                    p.add_(torch.randn_like(p) * 0.1)
        model.save_pretrained(folder / "pt")
        kw = {k: torch.tensor(ins[k]) for k in ("input_ids", "attention_mask")}
        with torch.no_grad():
            np.save(folder / "logits.npy", model(**kw).logits.float().numpy())
        other = getattr(pretrained, ("TF" if framework == "tf" else "Flax") + cls_name)
        loaded = other.from_pretrained(folder / "pt")
        loaded.save_pretrained(folder / framework, safe_serialization=False, **save_kw)
        meta = {"class": cls_name, "framework": framework, "inputs": sorted(kw), "fields": ["logits"],
                "files": sorted(p.name for p in (folder / framework).iterdir())}
        (folder / "expected.json").write_text(json.dumps(meta, indent=1) + "\n")
        print("wrote", folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--tf1", action="store_true")
    group.add_argument("--flax", action="store_true")
    group.add_argument("--ours", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    OUT.mkdir(parents=True, exist_ok=True)
    readme = OUT / "README.md"
    if not readme.exists():
        readme.write_text("Recorded by tests/reference/record_legacy_457.py (see its docstring for the three steps and "
                          "environments). Regenerate with that script; do not edit by hand.\n")
    if args.tf1:
        record_tf1()
    elif args.flax:
        record_flax()
    else:
        record_ours()


if __name__ == "__main__":
    main()
