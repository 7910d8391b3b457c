"""What record_flax_457.py and record_tf_457.py share: the tiny configs, the fixed inputs, the forward arguments, the
recorded output fields, the recording loop, the --check-ours round trip through our own library (run under
.venv) and the command line.

Imports numpy and the standard library only: the scripts import it under .venv (their --_ours child) and under the
isolated 4.57 environments alike.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OURS_PYTHON = REPO / ".venv" / "bin" / "python"

# Sizes follow tests/test_common.py TINY (each script notes what its 4.57 classes need on top).
BERT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            pad_token_id=0, max_position_embeddings=64, type_vocab_size=2, initializer_range=0.2)
GPT2 = dict(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64, initializer_range=0.2,
            bos_token_id=1, eos_token_id=2, pad_token_id=0)
T5 = dict(vocab_size=99, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
          relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
# Llama / Mistral / Gemma: no head_dim override (4.57's Llama/Mistral ignore it), small max_position_embeddings
DECODER = dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2,
               max_position_embeddings=64, initializer_range=0.2)
CONFIG_CLASS = {"bert": "BertConfig", "gpt2": "GPT2Config", "t5": "T5Config", "llama": "LlamaConfig",
                "mistral": "MistralConfig", "gemma": "GemmaConfig"}
SEED = 0
NEW_TOKENS = 8


def make_inputs(note: str, **extra) -> dict:
    """Fixed inputs: a right-padded forward batch (row 1 ends with 2 pads) and a left-padded generation batch;
    `extra` entries after new_tokens, then the note."""
    rng = np.random.default_rng(1234)
    ids = rng.integers(3, 99, size=(2, 7))
    mask = np.ones((2, 7), dtype=np.int64)
    mask[1, 5:] = 0
    ids[1, 5:] = 0
    token_type_ids = np.array([[0, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 0, 0]])
    dec = rng.integers(3, 99, size=(2, 5))
    dec[:, 0] = 0  # decoder_start_token_id
    dec_mask = np.ones((2, 5), dtype=np.int64)
    dec_mask[1, 4:] = 0
    dec[1, 4:] = 0
    gen = rng.integers(3, 99, size=(2, 6))
    gen_mask = np.ones((2, 6), dtype=np.int64)
    gen_mask[1, :2] = 0
    gen[1, :2] = 0
    return {
        "input_ids": ids.tolist(), "attention_mask": mask.tolist(), "token_type_ids": token_type_ids.tolist(),
        "decoder_input_ids": dec.tolist(), "decoder_attention_mask": dec_mask.tolist(),
        "gen_input_ids": gen.tolist(), "gen_attention_mask": gen_mask.tolist(),
        "gen_encoder_input_ids": ids.tolist(), "gen_encoder_attention_mask": mask.tolist(),
        "new_tokens": NEW_TOKENS, **extra, "note": note,
    }


def forward_kwargs(family: str, cls_name: str, inputs: dict, dtype=None) -> dict:
    """The forward's arguments for a class of `family` (BERT: segment ids; T5 but its encoder: decoder inputs)."""
    kw = {"input_ids": np.array(inputs["input_ids"], dtype=dtype),
          "attention_mask": np.array(inputs["attention_mask"], dtype=dtype)}
    if family == "bert":
        kw["token_type_ids"] = np.array(inputs["token_type_ids"], dtype=dtype)
    if family == "t5" and "Encoder" not in cls_name:
        kw["decoder_input_ids"] = np.array(inputs["decoder_input_ids"], dtype=dtype)
        kw["decoder_attention_mask"] = np.array(inputs["decoder_attention_mask"], dtype=dtype)
    return kw


OUTPUT_FIELDS = ("last_hidden_state", "pooler_output", "logits", "start_logits", "end_logits",
                 "encoder_last_hidden_state")


def output_fields(out, by_key: bool = True) -> dict[str, np.ndarray]:
    """The output dataclass's array fields we record (4.x names), as float32 numpy: read by key from an output that
    is a dict (`by_key`), else as attributes."""
    got = {}
    for f in OUTPUT_FIELDS:
        v = out.get(f) if by_key and isinstance(out, dict) else getattr(out, f, None)
        if v is not None:
            got[f] = np.asarray(v, dtype=np.float32)
    return got


def shard_kwargs(opts: dict) -> dict:
    """save_pretrained's max_shard_size for a case saved sharded."""
    return {"max_shard_size": opts["shard"]} if "shard" in opts else {}


def case_meta(cls_name: str, family: str, overrides: dict, opts: dict, kw: dict, fields: dict, folder: Path,
              **more) -> dict:
    """A case's expected.json (its keys are written sorted): what was recorded, `more`, and the folder's files once
    `fields` are saved there as <field>.npy."""
    for f, v in fields.items():
        np.save(folder / f"{f}.npy", v)
    return {"class": cls_name, "family": family, "config_overrides": overrides, "options": opts,
            "forward_inputs": sorted(kw), "fields": sorted(fields), **more,
            "files": sorted(p.name for p in folder.iterdir())}


def loads_as_base(cls_name: str, base_class: str) -> bool:
    """Whether a case's folder is also loaded into its family's base class (a head class's; T5Model needs a
    decoder, which an encoder's file does not hold)."""
    return cls_name != base_class and "Encoder" not in cls_name


def save_as_base(meta: dict, folder: Path, base_class: str, out) -> None:
    np.save(folder / "as_base.npy", np.asarray(out[0], dtype=np.float32))
    meta["as_base"] = {"class": base_class, "field": "last_hidden_state"}


def compare_with_ours(got: dict, ours, problems: list, tol: float = 1e-5) -> dict:
    """4.57's outputs (`got`) on a folder we saved against ours (an npz): the largest differences, the loading
    problems, and ok (no problem, something compared, every difference within `tol`)."""
    diffs = {f: float(np.abs(got[f] - ours[f]).max()) for f in ours.files if f in got}
    return {"max_abs_diff": diffs, "problems": problems,
            "ok": not problems and bool(diffs) and all(d <= tol for d in diffs.values())}


def architecture_class(folder: Path, prefix: str) -> str:
    """The 4.57 `prefix` ("Flax", "TF") class named by a folder's config.json "architectures"."""
    config = json.loads((folder / "config.json").read_text())
    return prefix + config["architectures"][0].removeprefix(prefix)


def build_config(transformers, families: dict, family: str, overrides: dict):
    """A case's 4.57 config: the family's tiny config with the case's overrides."""
    return getattr(transformers, CONFIG_CLASS[family])(**{**families[family], **overrides})


def min_margin(logits) -> float:
    """Smallest top-1 minus top-2 logit (a small margin makes a greedy token fragile)."""
    top2 = np.sort(logits, axis=-1)[..., -2:]
    return float((top2[..., 1] - top2[..., 0]).min())


def noise(name: str) -> np.random.Generator:
    """The generator of a case's fixed noise (keyed by its name)."""
    return np.random.default_rng(zlib.crc32(name.encode()))


def check_457(transformers) -> None:
    if not transformers.__version__.startswith("4.57"):
        sys.exit(f"needs transformers 4.57.x (found {transformers.__version__}); see this script's docstring")


def record_all(out: Path, inputs: dict, cases: dict, record_case, summarize) -> None:
    """Remove and rewrite `out`: inputs.json, then each case (`record_case(name, family, cls_name, overrides, opts)`
    -> its meta), printing `summarize(meta)`."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / "inputs.json").write_text(json.dumps(inputs, indent=1) + "\n")
    for name, (family, cls_name, overrides, opts) in cases.items():
        meta = record_case(name, family, cls_name, overrides, opts)
        print(name, json.dumps(summarize(meta)), flush=True)


def finish_record(out: Path, readme: str) -> None:
    (out / "README.md").write_text(readme)
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out} ({total / 1024:.0f} KiB)")


def run_ours_child(script: str, ours_python: Path, tmp: Path, drop_env=("PYTHONPATH",)) -> dict:
    """Run `script --_ours tmp` under our environment (`ours_python`, our src/ on PYTHONPATH, `drop_env` unset);
    its report (case -> "saved" or the error)."""
    env = {k: v for k, v in os.environ.items() if k not in drop_env}
    env["PYTHONPATH"] = str(REPO / "src")
    subprocess.run([str(ours_python), script, "--_ours", str(tmp)], check=True, env=env, cwd=REPO)
    return json.loads((tmp / "ours_report.json").read_text())


def check_ours_cases(out: Path, transformers, script: str, ours_python: Path, check_case,
                     drop_env=("PYTHONPATH",)) -> None:
    """--check-ours: our library saves every case into a temporary folder (`run_ours_child`); 4.57 checks each
    saved one (`check_case(name, folder, entry)` fills its entry, "ok" included); out/ours_in_457.json gets the
    entries and whether all are ok."""
    result = {"transformers_version": transformers.__version__, "cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        report = run_ours_child(script, ours_python, tmp, drop_env)
        for name, status in report.items():
            entry = {"ours": status}
            if status == "saved":
                check_case(name, tmp / name, entry)
            else:
                entry["ok"] = False
            result["cases"][name] = entry
            print(name, json.dumps(entry), flush=True)
    result["all_ok"] = all(e["ok"] for e in result["cases"].values())
    (out / "ours_in_457.json").write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"all ok: {result['all_ok']}; wrote {out / 'ours_in_457.json'}")


def failed(entry: dict, e: Exception) -> None:
    """A check that raised: not ok, the error as its problem."""
    entry["ok"] = False
    entry["problems"] = [f"4.57 failed: {type(e).__name__}: {e}"]


def print_dir_check(model, problems: list, fields_of) -> None:
    """--check-dir's report: the 4.57 class, its loading problems, the sums of the output fields
    `fields_of(family, class name)` gives."""
    print(type(model).__name__, "problems:", problems or "none")
    for f, v in fields_of(model.config.model_type, type(model).__name__).items():
        print(f"  {f}: shape {v.shape} sum {v.sum():.6f}")


def main(doc: str, record, check_ours, check_dir, ours_child, install_shim=None) -> None:
    """The command line: record (default), --check-ours, --check-dir DIR, the hidden --_ours child, and
    --install-shim where the script has one."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    g = ap.add_mutually_exclusive_group()
    if install_shim is not None:
        g.add_argument("--install-shim", action="store_true")
    g.add_argument("--check-ours", action="store_true")
    g.add_argument("--check-dir", type=Path)
    g.add_argument("--_ours", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--ours-python", type=Path, default=DEFAULT_OURS_PYTHON)
    args = ap.parse_args()
    if getattr(args, "install_shim", False):
        install_shim()
    elif args.check_ours:
        check_ours(args.ours_python)
    elif args.check_dir:
        check_dir(args.check_dir)
    elif args._ours:
        ours_child(args._ours)
    else:
        record()
