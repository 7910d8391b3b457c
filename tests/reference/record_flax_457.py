"""Record what transformers 4.57.6's Flax classes (the last line that had them) write and compute, so that
tests/flax/test_flax_legacy_457.py can check our Flax classes against them without 4.57 installed.

4.57 never goes into .venv. It lives in its own environment, outside the repository:

    python3 -m venv /work/ref457/venv
    /work/ref457/venv/bin/pip install torch==2.13.0          # first: the local CPU build
    /work/ref457/venv/bin/pip install transformers==4.57.6 jax==0.10.2 flax==0.12.8 ml_dtypes==0.6.0 safetensors msgpack
    /work/ref457/venv/bin/python tests/reference/record_flax_457.py --install-shim
    /work/ref457/venv/bin/python tests/reference/record_flax_457.py               # writes tests/data/flax457/

`--install-shim` writes a sitecustomize.py into that environment (never into this repository's code): 4.57's
FlaxT5 calls `jnp.clip(x, a_max=...)`, keywords jax 0.10 removed; the shim wraps `jax.numpy.clip` to accept them
once jax.numpy is imported. Recording also applies it in-process, so it works without the file too.

Modes:
  (default)        record every case below into tests/data/flax457/ (removed and rewritten).
  --check-ours     the other direction: our Flax classes (run by --ours-python, default .venv/bin/python) init
                   each recorded config with their own weights, save flax_model.msgpack (and once sharded), and
                   run the recorded inputs; 4.57 then loads each folder and compares. Writes
                   tests/data/flax457/ours_in_457.json (CI cannot run this: 4.57 is absent there).
  --check-dir DIR  load one folder (a flax_model.msgpack written by anyone) with the 4.57 class in its
                   config's "architectures", check every parameter came from the file, print the outputs' sums.

Layout of tests/data/flax457/:
  inputs.json                   the fixed inputs (right-padded forward batch, left-padded generation batch)
  <case>/config.json, flax_model.msgpack (or flax_model-0000i-of-0000n.msgpack + flax_model.msgpack.index.json)
  <case>/<field>.npy            outputs of the forward on inputs.json's batch (fp32)
  <case>/as_base.npy            (head classes) the family's base class loaded from this folder: its first output
  <case>/expected.json          class, inputs used, fields, greedy/beam `generate` sequences and their smallest
                                top-1/top-2 logit margin, the flattened parameter tree (shape, dtype), and the
                                largest difference between 4.57's Flax and 4.57's PyTorch class on the same weights
Weights: 4.57's own init (fixed seed) with deterministic noise added to every 1-D parameter (biases, norm scales
are zeros/ones after init, which would hide a mapping bug).
"""

from __future__ import annotations

import json
import sys
import sysconfig
from pathlib import Path

import numpy as np
from _record_common import (
    BERT, DECODER, GPT2, NEW_TOKENS, REPO, SEED, T5, architecture_class, build_config, case_meta, check_457,
    check_ours_cases, compare_with_ours, failed, finish_record, forward_kwargs, loads_as_base, main, make_inputs,
    min_margin, noise, print_dir_check, record_all, save_as_base, shard_kwargs
)
from _record_common import output_fields as _output_fields

OUT = REPO / "tests" / "data" / "flax457"

SHIM = '''\
# Written by pretrained's tests/reference/record_flax_457.py --install-shim. transformers 4.57's Flax T5 calls
# jnp.clip(x, a_max=...), keywords that jax 0.10 removed (now min=/max=). For this environment only: once
# jax.numpy is imported, its clip is wrapped to accept the old keywords as well. Nothing is imported eagerly.
import importlib.abc
import importlib.util
import sys


def _patch(jnp):
    clip = jnp.clip
    if getattr(clip, "_a_min_shim", False):
        return

    def clip_compat(arr=None, *args, a_min=None, a_max=None, **kw):
        if a_min is not None:
            kw.setdefault("min", a_min)
        if a_max is not None:
            kw.setdefault("max", a_max)
        return clip(arr, *args, **kw)

    clip_compat._a_min_shim = True
    jnp.clip = clip_compat


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "jax.numpy":
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


if "jax.numpy" in sys.modules:
    _patch(sys.modules["jax.numpy"])
else:
    sys.meta_path.insert(0, _Finder())
'''

# ---------------------------------------------------------------------------------------------------------------
# Cases. Sizes follow tests/test_common.py TINY. Constraints of 4.57's Flax classes, so the outputs are comparable
# with a correct implementation: rope_theta 10000 (its Llama/Mistral/Gemma ignore rope_theta), no head_dim override
# for Llama/Mistral (ignored: hidden // heads), small max_position_embeddings (its Llama/Mistral/Gemma build a
# max_position_embeddings^2 causal mask), Mistral's sliding_window >= every sequence used here (its window is one
# token wider than PyTorch's, so only a window wider than the sequence gives comparable outputs).
FAMILIES = {"bert": BERT, "gpt2": GPT2, "t5": T5, "llama": DECODER, "mistral": dict(DECODER, sliding_window=32),
            "gemma": dict(DECODER, head_dim=8)}
BASE_CLASS = {"bert": "FlaxBertModel", "gpt2": "FlaxGPT2Model", "t5": "FlaxT5Model", "llama": "FlaxLlamaModel",
              "mistral": "FlaxMistralModel", "gemma": "FlaxGemmaModel"}

# name -> (family, 4.57 Flax class, config overrides, options)
#   gen: record greedy (and beam) generate; shard: also save sharded (max_shard_size); bf16: params stored bf16
CASES = {
    "bert_model": ("bert", "FlaxBertModel", {}, {}),
    "bert_masked_lm": ("bert", "FlaxBertForMaskedLM", {}, {}),
    "bert_seq_cls": ("bert", "FlaxBertForSequenceClassification", {"num_labels": 3}, {}),
    "bert_qa": ("bert", "FlaxBertForQuestionAnswering", {}, {}),
    "bert_token_cls": ("bert", "FlaxBertForTokenClassification", {"num_labels": 5}, {}),
    "gpt2_model": ("gpt2", "FlaxGPT2Model", {}, {}),
    "gpt2_lm_head": ("gpt2", "FlaxGPT2LMHeadModel", {}, {"gen": True}),
    "t5_model": ("t5", "FlaxT5Model", {}, {}),
    "t5_cond_gen": ("t5", "FlaxT5ForConditionalGeneration", {}, {"gen": True, "beam": True}),
    "t5_v1_1_cond_gen": ("t5", "FlaxT5ForConditionalGeneration",
                         {"feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}, {"gen": True}),
    "t5_encoder": ("t5", "FlaxT5EncoderModel", {}, {}),
    "llama_model": ("llama", "FlaxLlamaModel", {}, {}),
    "llama_causal_lm": ("llama", "FlaxLlamaForCausalLM", {}, {"gen": True, "beam": True}),
    # 8KB: the first tensor written (the 12.7 KB embedding) exceeds it, so 4.57 writes an empty first shard
    # (a 1-byte msgpack map, listed in no weight_map entry) - as files on the Hub can have.
    "llama_causal_lm_sharded": ("llama", "FlaxLlamaForCausalLM", {}, {"shard": "8KB"}),
    "llama_causal_lm_bf16": ("llama", "FlaxLlamaForCausalLM", {}, {"bf16": True}),
    "mistral_model": ("mistral", "FlaxMistralModel", {}, {}),
    "mistral_causal_lm": ("mistral", "FlaxMistralForCausalLM", {}, {"gen": True}),
    "gemma_model": ("gemma", "FlaxGemmaModel", {}, {}),
    "gemma_causal_lm": ("gemma", "FlaxGemmaForCausalLM", {}, {"gen": True}),
}
QUIRKS = """What 4.57's Flax classes do that the recordings work around (facts for our implementation, not to copy):
- FlaxT5 calls jnp.clip(a_max=...), removed in jax 0.10: shimmed in the 4.57 environment only.
- FlaxLlama/Mistral/Gemma ignore rope_theta (always 10000); FlaxLlama/Mistral ignore head_dim (hidden // heads);
  they build a max_position_embeddings^2 causal mask (max_position_embeddings 64 here).
- FlaxMistral's sliding window is one token wider than PyTorch's: sliding_window (32) >= every sequence here.
- Sharded save: a first tensor larger than max_shard_size gives an empty first shard (a 1-byte msgpack map), which
  still counts in the "-of-N" names but is in no weight_map entry (llama_causal_lm_sharded has one).
- dtype= is the computation dtype; loaded params keep the file's dtype (llama_causal_lm_bf16 stays bfloat16).
- 4.57's PyTorch from_pretrained(..., from_flax=True) leaves the parameters on the meta device with torch 2.13;
  the PyTorch cross-check uses its load_flax_weights_in_pytorch_model instead.
- Plain generate() re-traces and compiles its loop on every call; wrap it in jax.jit for speed.
"""
NUM_BEAMS = 3


def output_fields(out) -> dict[str, np.ndarray]:
    """The output dataclass's array fields we record (4.x names), as float32 numpy, read as attributes."""
    return _output_fields(out, by_key=False)


INPUTS_NOTE = ("forward: input_ids/attention_mask (right padding, no position_ids: arange), token_type_ids for "
               "BERT, decoder_* for T5 (decoder_input_ids[:, 0] = decoder_start_token_id). generate: gen_* "
               "(left padding) for decoders, gen_encoder_* for T5; greedy, max_new_tokens=new_tokens, "
               "then num_beams beams (length_penalty 1, early_stopping False as 4.57's defaults).")


def flat_tree(tree) -> dict[str, tuple]:
    """'/'-joined key -> (shape, dtype name) of a nested params dict."""
    flat = {}

    def walk(prefix, node):
        if isinstance(node, dict) or hasattr(node, "items") and not hasattr(node, "shape"):
            for k, v in node.items():
                walk(f"{prefix}/{k}" if prefix else str(k), v)
        else:
            flat[prefix] = (list(np.shape(node)), str(np.asarray(node).dtype))

    walk("", tree)
    return flat


# ---------------------------------------------------------------------------------------------------------------
# Helpers that need 4.57 (imported lazily so that --_ours can run under .venv without transformers).

def _apply_shim():
    """The shim's patch, applied in this process (whether or not sitecustomize.py is installed)."""
    import jax.numpy as jnp

    namespace: dict = {"__name__": "flax457_shim"}
    exec(compile(SHIM, "<shim>", "exec"), namespace)  # jax.numpy is imported: this patches it at once
    namespace["_patch"](jnp)


def _check_version():
    import transformers

    check_457(transformers)
    return transformers


def install_shim() -> Path:
    if not (sys.prefix != sys.base_prefix):
        sys.exit("--install-shim must run with the 4.57 environment's python (a venv), not a system python")
    target = Path(sysconfig.get_paths()["purelib"]) / "sitecustomize.py"
    if target.exists() and "record_flax_457.py" not in target.read_text():
        sys.exit(f"{target} exists and was not written by this script; merge the shim by hand")
    target.write_text(SHIM)
    print(f"wrote {target}")
    return target


def perturb(params, name: str):
    """Add fixed noise to every 1-D parameter (biases are zeros and norm scales ones after init)."""
    import jax

    rng = noise(name)

    def f(p):
        p = np.asarray(p)
        if p.ndim == 1:
            p = (p + rng.normal(0.0, 0.1, p.shape)).astype(p.dtype)
        return p

    return jax.tree_util.tree_map(f, params)


def greedy_margin(model, params, seqs, prompt_len, family, enc_kw=None):
    """Smallest top-1 minus top-2 logit over the generated positions (a small margin makes a token fragile)."""
    seqs = np.asarray(seqs)
    if family == "t5":
        out = model(enc_kw["input_ids"], attention_mask=enc_kw["attention_mask"], decoder_input_ids=seqs[:, :-1],
                    params=params)
        logits = np.asarray(out.logits)
    else:
        mask = np.concatenate([enc_kw["attention_mask"], np.ones((seqs.shape[0], seqs.shape[1] - prompt_len),
                                                                 dtype=np.int64)], axis=1)
        pos = np.maximum(np.cumsum(mask, axis=-1) - 1, 0)
        out = model(seqs[:, :-1], attention_mask=mask[:, :-1], position_ids=pos[:, :-1], params=params)
        logits = np.asarray(out.logits)[:, prompt_len - 1:]
    return min_margin(logits)


def record_case(transformers, name, family, cls_name, overrides, opts, inputs, out_root) -> dict:
    import jax
    import jax.numpy as jnp
    import torch
    from flax.serialization import msgpack_restore

    cfg = build_config(transformers, FAMILIES, family, overrides)
    cls = getattr(transformers, cls_name)
    model = cls(cfg, seed=SEED)
    params = perturb(model.params, name)
    if opts.get("bf16"):
        params = model.to_bf16(params)
    model.params = params
    folder = out_root / name
    model.save_pretrained(folder, **shard_kwargs(opts))

    # what we record is what a reload gives (the file, not the in-memory init)
    model = cls.from_pretrained(folder)
    params = model.params
    kw = forward_kwargs(family, cls_name, inputs)
    out = model(**kw)
    fields = output_fields(out)
    meta = case_meta(cls_name, family, overrides, opts, kw, fields, folder,
                     params={k: {"shape": s, "dtype": d} for k, (s, d) in flat_tree(params).items()})
    if "shard" in opts:
        shards = sorted(p.name for p in folder.glob("flax_model-*-of-*.msgpack"))
        meta["shards"] = {s: sorted(flat_tree(msgpack_restore((folder / s).read_bytes()))) for s in shards}
        meta["empty_shards"] = [s for s in shards if not msgpack_restore((folder / s).read_bytes())]

    if loads_as_base(cls_name, BASE_CLASS[family]):
        base = getattr(transformers, BASE_CLASS[family]).from_pretrained(folder)
        save_as_base(meta, folder, BASE_CLASS[family], base(**forward_kwargs(family, BASE_CLASS[family], inputs)))

    if opts.get("gen"):
        if family == "t5":
            gen_kw = {"input_ids": np.array(inputs["gen_encoder_input_ids"]),
                      "attention_mask": np.array(inputs["gen_encoder_attention_mask"])}
        else:
            gen_kw = {"input_ids": np.array(inputs["gen_input_ids"]),
                      "attention_mask": np.array(inputs["gen_attention_mask"])}
        greedy = model.generate(**gen_kw, max_new_tokens=NEW_TOKENS, do_sample=False).sequences
        meta["greedy"] = np.asarray(greedy).tolist()
        prompt_len = 1 if family == "t5" else gen_kw["input_ids"].shape[1]
        meta["greedy_min_margin"] = greedy_margin(model, params, greedy, prompt_len, family, gen_kw)
        if opts.get("beam"):
            beam = model.generate(**gen_kw, max_new_tokens=NEW_TOKENS, do_sample=False, num_beams=NUM_BEAMS)
            meta["beam"] = np.asarray(beam.sequences).tolist()

    # 4.57's own PyTorch class on the same weights (from_flax): where its Flax class disagrees with PyTorch
    if not opts.get("bf16") and "shard" not in opts:
        # (4.57's from_pretrained(from_flax=True) leaves the parameters on the meta device with torch 2.13:
        # build the model, then convert with its own Flax -> PyTorch function)
        from transformers.modeling_flax_pytorch_utils import load_flax_weights_in_pytorch_model

        torch.manual_seed(0)
        pt = getattr(transformers, cls_name[4:])(cfg).eval()
        pt = load_flax_weights_in_pytorch_model(pt, jax.tree_util.tree_map(np.asarray, params)).eval()
        with torch.no_grad():
            pt_out = pt(**{k: torch.tensor(v) for k, v in kw.items()})
        diffs = {f: float(np.abs(pt_out[f].float().numpy() - fields[f]).max())
                 for f in fields if f in pt_out}
        meta["pt457_max_abs_diff"] = diffs
        if opts.get("gen"):
            t_kw = {k: torch.tensor(v) for k, v in gen_kw.items()}
            with torch.no_grad():
                pt_greedy = pt.generate(**t_kw, max_new_tokens=NEW_TOKENS, do_sample=False,
                                        pad_token_id=cfg.pad_token_id)
            meta["pt457_greedy_equal"] = pt_greedy.tolist() == meta["greedy"]
            if opts.get("beam"):
                with torch.no_grad():
                    pt_beam = pt.generate(**t_kw, max_new_tokens=NEW_TOKENS, do_sample=False, num_beams=NUM_BEAMS,
                                          pad_token_id=cfg.pad_token_id)
                meta["pt457_beam"] = pt_beam.tolist()
                meta["pt457_beam_equal"] = pt_beam.tolist() == meta["beam"]
    del jax, jnp
    (folder / "expected.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return meta


def record() -> None:
    transformers = _check_version()
    _apply_shim()
    transformers.logging.set_verbosity_error()
    inputs = make_inputs(INPUTS_NOTE, num_beams=NUM_BEAMS)
    record_all(OUT, inputs, CASES,
               lambda *case: record_case(transformers, *case, inputs, OUT),
               lambda meta: {k: meta[k] for k in ("pt457_max_abs_diff", "pt457_greedy_equal", "pt457_beam_equal",
                                                  "greedy_min_margin", "empty_shards") if k in meta})
    finish_record(OUT,
                  "Recorded by tests/reference/record_flax_457.py with transformers "
                  f"{transformers.__version__} (Flax classes), jax/flax as in its docstring. Regenerate with that "
                  "script; do not edit by hand. ours_in_457.json comes from its --check-ours mode.\n\n" + QUIRKS)


# ---------------------------------------------------------------------------------------------------------------
# The other direction: folders written by OUR Flax classes, loaded in 4.57.

def _ours_child(tmp: Path) -> None:
    """Runs under .venv (our library, no transformers): save each recorded config with our Flax class's own
    init (1-D parameters perturbed as in recording; bf16 cases cast with our to_bf16), as msgpack, and our outputs
    on the recorded inputs."""
    import jax
    import jax.numpy as jnp

    import pretrained

    inputs = json.loads((OUT / "inputs.json").read_text())
    report = {}
    for name, (family, cls_name, overrides, opts) in CASES.items():
        try:
            cls = getattr(pretrained, cls_name)
            config = pretrained.AutoConfig.from_pretrained(OUT / name)
            model = cls(config, seed=7)
            params = jax.tree_util.tree_map(jnp.asarray, perturb(model.params, name + "/ours"))
            model.params = model.to_bf16(params) if opts.get("bf16") else params
            folder = tmp / name
            model.save_pretrained(folder, safe_serialization=False, **shard_kwargs(opts))
            out = model(**forward_kwargs(family, cls_name, inputs))
            np.savez(folder / "ours_outputs.npz", **output_fields(out))
            report[name] = "saved"
        except Exception as e:  # reported, and the 4.57 side skips it
            report[name] = f"error: {type(e).__name__}: {e}"
    (tmp / "ours_report.json").write_text(json.dumps(report, indent=1))


def _load_in_457(transformers, folder: Path, cls_name: str | None = None):
    from flax.serialization import msgpack_restore

    cls_name = cls_name or architecture_class(folder, "Flax")
    model = getattr(transformers, cls_name).from_pretrained(folder)
    if (folder / "flax_model.msgpack").exists():
        file_tree = flat_tree(msgpack_restore((folder / "flax_model.msgpack").read_bytes()))
    else:
        index = json.loads((folder / "flax_model.msgpack.index.json").read_text())
        file_tree = {}
        for s in sorted(set(index["weight_map"].values())):
            file_tree.update(flat_tree(msgpack_restore((folder / s).read_bytes())))
    model_tree = flat_tree(model.params)
    problems = []
    if set(file_tree) != set(model_tree):
        problems.append(f"missing in file: {sorted(set(model_tree) - set(file_tree))}; "
                        f"unexpected in file: {sorted(set(file_tree) - set(model_tree))}")
    bad = [k for k in set(file_tree) & set(model_tree) if file_tree[k][0] != model_tree[k][0]]
    if bad:
        problems.append(f"shape mismatch: {sorted(bad)}")
    return model, problems


def check_ours(ours_python: Path) -> None:
    transformers = _check_version()
    _apply_shim()
    transformers.logging.set_verbosity_error()
    inputs = json.loads((OUT / "inputs.json").read_text())

    def check_case(name: str, folder: Path, entry: dict) -> None:
        family, cls_name, _, opts = CASES[name]
        try:
            model, problems = _load_in_457(transformers, folder, cls_name)
            got = output_fields(model(**forward_kwargs(family, cls_name, inputs)))
            ours = np.load(folder / "ours_outputs.npz")
            tol = 1e-2 if opts.get("bf16") else 1e-5  # bf16: computation order shows
            compared = compare_with_ours(got, ours, problems, tol)
            entry["max_abs_diff"], entry["problems"] = compared["max_abs_diff"], problems
            entry["files"] = sorted(p.name for p in folder.iterdir() if "msgpack" in p.name)
            entry["param_dtypes"] = sorted({d for _, d in flat_tree(model.params).values()})
            entry["ok"] = compared["ok"]
        except Exception as e:
            failed(entry, e)

    check_ours_cases(OUT, transformers, __file__, ours_python, check_case)


def check_dir(folder: Path) -> None:
    transformers = _check_version()
    _apply_shim()
    transformers.logging.set_verbosity_error()
    model, problems = _load_in_457(transformers, folder)
    inputs = make_inputs(INPUTS_NOTE, num_beams=NUM_BEAMS)
    print_dir_check(model, problems,
                    lambda family, cls_name: output_fields(model(**forward_kwargs(family, cls_name, inputs))))


if __name__ == "__main__":
    main(__doc__, record, check_ours, check_dir, _ours_child, install_shim=install_shim)
