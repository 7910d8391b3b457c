"""TensorFlow and Flax checkpoints in the PyTorch classes (issue 19): `from_tf`, `from_flax`, `load_tf_weights`,
TF 1 checkpoints, the no-flag behaviour, bad files and `pretrained convert`.

The files are those 4.57.6's own TF and Flax classes wrote (tests/data/tf457, tests/data/flax457, recorded by
tests/reference/record_{tf,flax}_457.py) plus tests/data/legacy457 (tests/reference/record_legacy_457.py: a TF 1 BERT
checkpoint in Google's names with 4.57's PyTorch outputs on the same numbers, a real bfloat16 msgpack by 4.57's Flax
Llama, and h5 / msgpack files our TF / Flax classes wrote for the families 4.57 had no such class for). Every load
that checks outputs runs in ONE subprocess where importing tensorflow, keras, jax and flax fails.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import pretrained
from blocking import BLOCKER
from pretrained.errors import CheckpointNotFoundError, CorruptCheckpointError, ShapeMismatchError

DATA = Path(__file__).resolve().parent / "data"
TF457, FLAX457, LEGACY = DATA / "tf457", DATA / "flax457", DATA / "legacy457"
ATOL = RTOL = 1e-5
BLOCKED = ("tensorflow", "keras", "tf_keras", "jax", "jaxlib", "flax")

if not (LEGACY / "bert_tf1" / "expected.json").is_file() or not (TF457 / "inputs.json").is_file():
    pytest.skip("tests/data/legacy457 or tf457 is missing: run the tests/reference scripts", allow_module_level=True)


def _cases(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if (p / "expected.json").is_file())


TF_CASES, FLAX_CASES = _cases(TF457), _cases(FLAX457)
OURS = sorted(p.name for p in LEGACY.iterdir() if p.name.startswith("ours_"))

# The loads, in a process where the TF and JAX stacks cannot be imported. It prints one JSON line: per case, the
# largest |ours - recorded| of each output field (or the error), plus the frameworks present at the end.
SCRIPT = BLOCKER + textwrap.dedent("""
    from pathlib import Path
    import numpy as np, torch
    import pretrained
    from pretrained.checkpoint import legacy, tf1, h5, convert  # the readers import no framework either
    from pretrained.flax import msgpack
    data = Path(sys.argv[2])
    ins = json.loads((data / "tf457" / "inputs.json").read_text())
    results = {}

    def diffs(out, folder, fields, prefix=""):
        return {f: float(np.abs(out[f].float().numpy() - np.load(folder / f"{prefix}{f}.npy")).max()) for f in fields}

    def run(key, fn):
        try:
            results[key] = fn()
        except Exception as e:
            results[key] = {"error": f"{type(e).__name__}: {e}"}

    def forward(model, names):
        with torch.no_grad():
            return model(**{k: torch.tensor(ins[k]) for k in names})

    base = {"bert": "BertModel", "gpt2": "GPT2Model", "t5": "T5Model", "llama": "LlamaModel",
            "mistral": "MistralModel", "gemma": "GemmaModel"}
    for root, flag, strip in (("tf457", "from_tf", 2), ("flax457", "from_flax", 4)):
        for folder in sorted((data / root).iterdir()):
            if not (folder / "expected.json").is_file():
                continue
            meta = json.loads((folder / "expected.json").read_text())
            cls = getattr(pretrained, meta["class"][strip:])

            def one(folder=folder, meta=meta, cls=cls, flag=flag):
                model, info = cls.from_pretrained(folder, output_loading_info=True, **{flag: True})
                out = forward(model, meta["forward_inputs"])
                got = {"diff": diffs(out, folder, meta["fields"]), "missing": info["missing_keys"],
                       "unexpected": info["unexpected_keys"], "dtype": str(model.dtype)}
                if "as_base" in meta and meta["family"] != "t5":
                    b = getattr(pretrained, base[meta["family"]]).from_pretrained(folder, **{flag: True})
                    names = [n for n in meta["forward_inputs"] if not n.startswith("decoder")]
                    last = forward(b, names).last_hidden_state.numpy()
                    got["diff"]["as_base"] = float(np.abs(last - np.load(folder / "as_base.npy")).max())
                return got

            run(f"{root}/{folder.name}", one)

    tf1_dir = data / "legacy457" / "bert_tf1"
    meta = json.loads((tf1_dir / "expected.json").read_text())
    cfg = pretrained.BertConfig.from_pretrained(tf1_dir)
    for cls_name, fields in meta["classes"].items():
        def one(cls_name=cls_name, fields=fields):
            model, info = getattr(pretrained, cls_name).from_pretrained(
                tf1_dir / "bert_model.ckpt.index", from_tf=True, config=cfg, output_loading_info=True)
            return {"diff": diffs(forward(model, meta["inputs"]), tf1_dir, fields, f"{cls_name}."),
                    "missing": info["missing_keys"], "unexpected": info["unexpected_keys"]}
        run(f"tf1/{cls_name}", one)

    def via_load_tf_weights():  # the documented class attribute, on a model built from the config; the prefix path
        model = pretrained.BertForPreTraining(cfg).eval()
        assert pretrained.BertForPreTraining.load_tf_weights(model, cfg, str(tf1_dir / "bert_model.ckpt")) is model
        return {"diff": diffs(forward(model, meta["inputs"]), tf1_dir, ["prediction_logits", "seq_relationship_logits"],
                              "BertForPreTraining."), "missing": model.loading_info.missing_keys,
                "unexpected": model.loading_info.unexpected_keys}
    run("tf1/load_tf_weights", via_load_tf_weights)

    def folder_with_tf1():  # a release folder (config.json + bert_model.ckpt.*) with from_tf=True
        model = pretrained.BertForPreTraining.from_pretrained(tf1_dir, from_tf=True)
        return {"diff": diffs(forward(model, meta["inputs"]), tf1_dir, ["prediction_logits"], "BertForPreTraining.")}
    run("tf1/folder", folder_with_tf1)

    bf16 = data / "legacy457" / "llama_flax_bf16"
    for dtype in ("auto", "float32"):
        def one(dtype=dtype):
            model = pretrained.LlamaForCausalLM.from_pretrained(bf16, from_flax=True, torch_dtype=dtype)
            out = forward(model, ["input_ids", "attention_mask"])
            return {"diff": diffs(out, bf16, ["logits"]), "dtype": str(model.dtype)}
        run(f"bf16/{dtype}", one)

    for folder in sorted((data / "legacy457").glob("ours_*")):
        meta = json.loads((folder / "expected.json").read_text())
        def one(folder=folder, meta=meta):
            fw = meta["framework"]
            model = getattr(pretrained, meta["class"]).from_pretrained(folder / fw, **{f"from_{fw}": True})
            return {"diff": diffs(forward(model, meta["inputs"]), folder, meta["fields"])}
        run(f"ours/{folder.name}", one)

    results["frameworks"] = sorted({m.split(".")[0] for m in sys.modules} & set(BLOCKED))
    print(json.dumps(results))
""")


@pytest.fixture(scope="module")
def loads():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", SCRIPT, ",".join(BLOCKED), str(DATA)], capture_output=True,
                         text=True, timeout=900, env=env)
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def _close(result: dict, key: str) -> dict:
    assert "error" not in result, f"{key}: {result['error']}"
    for field, diff in result["diff"].items():
        assert diff <= ATOL + RTOL, f"{key}: {field} differs from the recording by {diff}"
    return result


def test_no_framework_was_imported(loads):
    assert loads["frameworks"] == []


@pytest.mark.parametrize("case", TF_CASES)
def test_tf_h5_written_by_457_loads_with_its_outputs(loads, case):
    result = _close(loads[f"tf457/{case}"], case)
    assert result["unexpected"] == []
    assert result["dtype"] == "torch.float32"


@pytest.mark.parametrize("case", FLAX_CASES)
def test_flax_msgpack_written_by_457_loads_with_its_outputs(loads, case):
    result = _close(loads[f"flax457/{case}"], case)
    assert result["unexpected"] == []


def test_sharded_files_follow_the_index(loads):
    # flax: 4.57's empty first shard, which its index never names; tf: shards keyed by a per-process model name
    assert (FLAX457 / "llama_causal_lm_sharded" / "flax_model-00001-of-00013.msgpack").stat().st_size == 1
    for key in ("flax457/llama_causal_lm_sharded", "tf457/mistral_causal_lm_sharded", "tf457/bert_seq_cls_sharded"):
        _close(loads[key], key)


@pytest.mark.parametrize("cls_name", ["BertForPreTraining", "BertModel", "BertForMaskedLM"])
def test_tf1_bert_checkpoint_loads_into_each_class(loads, cls_name):
    result = _close(loads[f"tf1/{cls_name}"], cls_name)
    assert result["missing"] == []
    if cls_name == "BertForPreTraining":  # optimizer slots and global_step are skipped, not "unexpected"
        assert result["unexpected"] == []
    else:  # the heads this class lacks are reported as unused
        assert result["unexpected"] and all(n.startswith(("cls.", "bert.pooler")) for n in result["unexpected"])


def test_load_tf_weights_class_attribute_and_folder(loads):
    result = _close(loads["tf1/load_tf_weights"], "load_tf_weights")
    assert result["missing"] == [] and result["unexpected"] == []
    _close(loads["tf1/folder"], "folder")


def test_bf16_msgpack_auto_keeps_bf16_and_float32_equals_457(loads):
    auto, fp32 = loads["bf16/auto"], loads["bf16/float32"]
    assert "error" not in auto, auto
    assert auto["dtype"] == "torch.bfloat16"
    assert 0 < auto["diff"]["logits"] < 0.2  # bf16 arithmetic on the same weights: close, not equal
    assert _close(fp32, "bf16/float32")["dtype"] == "torch.float32"  # the bf16 values, exactly, in float32


@pytest.mark.parametrize("case", OURS)
def test_families_457_had_no_class_for(loads, case):
    _close(loads[f"ours/{case}"], case)


# ---- without a flag ---------------------------------------------------------------------------------------------
def test_tf_only_folder_loads_without_flag_and_says_so(tmp_path, caplog):
    folder = shutil.copytree(TF457 / "bert_seq_cls", tmp_path / "tf_only")
    with caplog.at_level(logging.WARNING, logger="pretrained"):
        model = pretrained.BertForSequenceClassification.from_pretrained(folder)
    assert "tf_model.h5" in caplog.text and "pretrained convert" in caplog.text
    flagged = pretrained.BertForSequenceClassification.from_pretrained(folder, from_tf=True)
    for a, b in zip(model.state_dict().values(), flagged.state_dict().values()):
        assert torch.equal(a, b)


def test_flax_only_folder_loads_without_flag(tmp_path, caplog):
    folder = shutil.copytree(FLAX457 / "llama_causal_lm_sharded", tmp_path / "flax_only")
    with caplog.at_level(logging.WARNING, logger="pretrained"):
        pretrained.AutoModelForCausalLM.from_pretrained(folder)
    assert "flax_model.msgpack.index.json" in caplog.text


def test_flag_without_such_files_names_the_flag(tmp_path):
    folder = shutil.copytree(FLAX457 / "gpt2_model", tmp_path / "flax_only")
    with pytest.raises(CheckpointNotFoundError, match="from_tf=True"):
        pretrained.GPT2Model.from_pretrained(folder, from_tf=True)
    (folder / "flax_model.msgpack").unlink()
    with pytest.raises(CheckpointNotFoundError):
        pretrained.GPT2Model.from_pretrained(folder)


def test_from_flax_through_the_hub_with_revision_and_offline(hub_server, hub_cache):
    folder = FLAX457 / "mistral_causal_lm"
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.suffix in (".json", ".msgpack")}
    commit = hub_server.seed("acme/mistral-flax", files)
    model = pretrained.AutoModelForCausalLM.from_pretrained("acme/mistral-flax", from_flax=True, revision=commit)
    again = pretrained.AutoModelForCausalLM.from_pretrained("acme/mistral-flax", from_flax=True, revision=commit,
                                                           local_files_only=True)  # from the cache only
    local = pretrained.MistralForCausalLM.from_pretrained(folder, from_flax=True)
    for a, b, c in zip(model.state_dict().values(), again.state_dict().values(), local.state_dict().values()):
        assert torch.equal(a, c) and torch.equal(b, c)


# ---- bad files -------------------------------------------------------------------------------------------------
def test_truncated_h5_is_a_corrupt_checkpoint_naming_the_file(tmp_path):
    folder = shutil.copytree(TF457 / "bert_model", tmp_path / "m")
    h5 = folder / "tf_model.h5"
    h5.write_bytes(h5.read_bytes()[: h5.stat().st_size // 2])
    with pytest.raises(CorruptCheckpointError, match="tf_model.h5"):
        pretrained.BertModel.from_pretrained(folder, from_tf=True)
    assert h5.stat().st_size > 0  # nothing on disk was touched


def test_garbage_msgpack_is_a_corrupt_checkpoint(tmp_path):
    folder = shutil.copytree(FLAX457 / "gpt2_model", tmp_path / "m")
    data = bytearray((folder / "flax_model.msgpack").read_bytes())
    (folder / "flax_model.msgpack").write_bytes(bytes(data[: len(data) - 100]))
    with pytest.raises(CorruptCheckpointError, match="flax_model.msgpack"):
        pretrained.GPT2Model.from_pretrained(folder, from_flax=True)


def test_missing_shard_is_named(tmp_path):
    folder = shutil.copytree(FLAX457 / "llama_causal_lm_sharded", tmp_path / "m")
    (folder / "flax_model-00005-of-00013.msgpack").unlink()
    with pytest.raises(CorruptCheckpointError, match="flax_model-00005-of-00013.msgpack"):
        pretrained.LlamaForCausalLM.from_pretrained(folder, from_flax=True)
    folder = shutil.copytree(TF457 / "mistral_causal_lm_sharded", tmp_path / "t")
    (folder / "tf_model-00003-of-00013.h5").unlink()
    with pytest.raises(CorruptCheckpointError, match="tf_model-00003-of-00013.h5"):
        pretrained.MistralForCausalLM.from_pretrained(folder, from_tf=True)


def test_wrong_shaped_dataset_names_the_file(tmp_path):
    import h5py

    folder = shutil.copytree(TF457 / "mistral_model", tmp_path / "m")
    with h5py.File(folder / "tf_model.h5", "r+") as f:
        found = []
        f.visititems(lambda name, obj: found.append(name) if name.endswith("norm/weight:0") else None)
        data = f[found[0]][()]
        del f[found[0]]
        f[found[0]] = np.concatenate([data, data])
    with pytest.raises(ShapeMismatchError, match="tf_model.h5"):
        pretrained.MistralModel.from_pretrained(folder, from_tf=True)


def test_damaged_tf1_files_are_named(tmp_path):
    folder = shutil.copytree(LEGACY / "bert_tf1", tmp_path / "m")
    cfg = pretrained.BertConfig.from_pretrained(folder)
    data = folder / "bert_model.ckpt.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:1000])
    with pytest.raises(CorruptCheckpointError, match="data-00000-of-00001"):
        pretrained.BertModel.from_pretrained(folder / "bert_model.ckpt.index", from_tf=True, config=cfg)
    index = folder / "bert_model.ckpt.index"
    index.write_bytes(index.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(CorruptCheckpointError, match="bert_model.ckpt.index"):
        pretrained.BertModel.from_pretrained(index, from_tf=True, config=cfg)
    data.unlink()
    index.write_bytes((LEGACY / "bert_tf1" / "bert_model.ckpt.index").read_bytes())
    with pytest.raises(CorruptCheckpointError, match="missing"):
        pretrained.BertModel.from_pretrained(index, from_tf=True, config=cfg)


# ---- pretrained convert -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("source, flag, cls_name", [
    (TF457 / "t5_cond_gen", "from_tf", "T5ForConditionalGeneration"),
    (FLAX457 / "llama_causal_lm_sharded", "from_flax", "LlamaForCausalLM"),
    (LEGACY / "bert_tf1", "from_tf", "BertForPreTraining"),
])
def test_convert_round_trips(tmp_path, source, flag, cls_name):
    from pretrained.cli import main

    assert main(["convert", str(source), str(tmp_path / "pt"), "--max-shard-size", "20KB"]) == 0
    assert (tmp_path / "pt" / "model.safetensors.index.json").is_file()
    assert not list((tmp_path / "pt").glob("*.h5")) and not list((tmp_path / "pt").glob("*.msgpack"))
    cls = getattr(pretrained, cls_name)
    converted = cls.from_pretrained(tmp_path / "pt")
    kwargs = {flag: True}
    original = cls.from_pretrained(source, **kwargs)
    assert converted.state_dict().keys() == original.state_dict().keys()
    for name, value in original.state_dict().items():
        assert torch.equal(converted.state_dict()[name], value), name
    # and back through our own converter: the safetensors convert to the same files' contents
    assert main(["convert", str(tmp_path / "pt"), str(tmp_path / "again")]) == 0
    again = cls.from_pretrained(tmp_path / "again")
    for name, value in original.state_dict().items():
        assert torch.equal(again.state_dict()[name], value), name


def test_convert_dtype_and_atomic_failure(tmp_path):
    from pretrained.cli import main

    assert main(["convert", str(FLAX457 / "gpt2_model"), str(tmp_path / "bf16"), "--dtype", "bfloat16"]) == 0
    model = pretrained.GPT2Model.from_pretrained(tmp_path / "bf16")
    assert model.dtype == torch.bfloat16
    before = sorted(p.name for p in (tmp_path / "bf16").iterdir())
    broken = shutil.copytree(FLAX457 / "gpt2_model", tmp_path / "broken")
    (broken / "flax_model.msgpack").write_bytes(b"\x81\xa1a\xc0")  # a map holding no array
    assert main(["convert", str(broken), str(tmp_path / "bf16")]) == 2
    assert sorted(p.name for p in (tmp_path / "bf16").iterdir()) == before  # the failed convert left DST as it was


# ---- the TF 1 reader's pieces -------------------------------------------------------------------------------------
def test_tf1_reader_lists_weights_and_skips_optimizer_state():
    from pretrained.checkpoint.legacy import LegacyReader, find_legacy_files

    files = find_legacy_files(LEGACY / "bert_tf1" / "bert_model.ckpt", "tf", {})
    reader = LegacyReader(files, "bert")
    expected = json.loads((LEGACY / "bert_tf1" / "expected.json").read_text())
    assert sorted(reader.skipped) == expected["skipped"]
    assert reader.infos["cls.seq_relationship.weight"].shape == (2, 32)  # [2, hidden], as stored: no transpose
    assert reader.infos["bert.encoder.layer.1.intermediate.dense.weight"].shape == (37, 32)  # kernel [32, 37]
    assert reader.stored_name("cls.predictions.bias") == "cls/predictions/output_bias"
    assert {i.dtype for i in reader.infos.values()} == {torch.float32}


def test_snappy_blocks_decode():
    from pretrained.checkpoint.tf1 import snappy_decompress

    # length 12; literal "abc"; copy 9 bytes from 3 back (overlapping itself)
    assert snappy_decompress(bytes([12, 0x08]) + b"abc" + bytes([0x15, 0x03]), "x") == b"abcabcabcabc"
    with pytest.raises(CorruptCheckpointError):
        snappy_decompress(bytes([12, 0x08]) + b"abc" + bytes([0x15, 0x09]), "x")  # reaches before the start


def test_convert_reads_pytorch_pickles_too(tmp_path):
    from pretrained.checkpoint.convert import convert_checkpoint

    model = pretrained.GPT2Model.from_pretrained(FLAX457 / "gpt2_model", from_flax=True)
    model.save_pretrained(tmp_path / "bin", safe_serialization=False)
    report = convert_checkpoint(tmp_path / "bin", tmp_path / "st")
    assert report.source_format == "pickle" and report.files == ["model.safetensors"]
    again = pretrained.GPT2Model.from_pretrained(tmp_path / "st")
    for name, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], value), name
