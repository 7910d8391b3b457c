"""The `pretrained` command line: `demo` round-trips a tiny Llama; `inspect` reads headers, index and config only."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from pretrained.cli import main


@pytest.fixture(scope="module")
def reference_checkpoint(tmp_path_factory):
    """A sharded checkpoint written by the reference library, with tied embeddings (lm_head.weight not stored)."""
    transformers = pytest.importorskip("transformers")
    import torch

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    model = transformers.LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("reference")
    model.save_pretrained(folder, max_shard_size="100KB")
    shards = sorted(n for n in os.listdir(folder) if re.fullmatch(r"model-\d{5}-of-\d{5}\.safetensors", n))
    assert len(shards) > 1
    return folder, model.num_parameters(), shards


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def copy_of(folder, tmp_path):
    return shutil.copytree(folder, tmp_path / "copy")


# ---- demo --------------------------------------------------------------------------------------------------------
def test_demo_round_trip_in_a_temporary_folder(capsys):
    code, out, _ = run(["demo"], capsys)
    assert code == 0, out
    assert "round trip: identical" in out
    assert re.search(r"^shards\s+4$", out, re.M)
    assert re.search(r"^loading info\s+0 missing, 0 unexpected, 0 mismatched$", out, re.M)
    folder = re.search(r"^saved to (\S+) ", out, re.M).group(1)
    assert not os.path.exists(folder)  # the temporary folder is removed
    generated = re.search(r"^generate\s+\[([\d, ]+)\] \(greedy, (\d+) new tokens, [\d.]+ tokens/s\)$", out, re.M)
    ids = [int(i) for i in generated.group(1).split(",")]
    assert len(ids) == int(generated.group(2)) and 1 <= len(ids) <= 8
    assert ids[0] == int(re.search(r"^next token\s+(\d+)$", out, re.M).group(1))  # greedy starts at the argmax


def test_demo_keeps_its_folder_and_inspect_agrees(tmp_path, capsys):
    code, out, _ = run(["demo", "--dir", tmp_path], capsys)
    assert code == 0 and "round trip: identical" in out
    params = int(re.search(r"^parameters\s+([\d,]+)", out, re.M).group(1).replace(",", ""))
    assert len([n for n in os.listdir(tmp_path) if n.endswith(".safetensors")]) == 4

    code, out, _ = run(["inspect", tmp_path, "--json"], capsys)
    report = json.loads(out)
    assert code == 0
    assert report["parameters"] == params and len(report["shards"]) == 4
    assert report["dtypes"].keys() == {"bfloat16"} and report["index"]["total_size_matches"]
    assert report["tied_weights"][0]["status"] == "stored (not tied)"  # Llama's default: untied


# ---- inspect -----------------------------------------------------------------------------------------------------
def test_inspect_reference_checkpoint(reference_checkpoint, capsys):
    folder, num_parameters, shards = reference_checkpoint
    code, out, err = run(["inspect", folder], capsys)
    assert code == 0, err
    assert re.search(rf"^parameters\s+{num_parameters:,}$", out, re.M)
    assert f"{len(shards)} shards + model.safetensors.index.json" in out
    assert all(shard in out for shard in shards)
    assert re.search(r"^model_type\s+llama$", out, re.M)
    assert "matches the headers" in out
    assert re.search(r"lm_head\.weight <- model\.embed_tokens\.weight\s+not stored", out)


def test_inspect_json(reference_checkpoint, capsys):
    folder, num_parameters, shards = reference_checkpoint
    code, out, _ = run(["inspect", folder, "--json"], capsys)
    report = json.loads(out)
    assert code == 0
    assert report["parameters"] == num_parameters
    assert [s["file"] for s in report["shards"]] == shards
    assert sum(s["tensors"] for s in report["shards"]) == report["tensors"]
    assert report["model_type"] == "llama" and report["architectures"] == ["LlamaForCausalLM"]
    assert report["settings"]["hidden_size"] == 64 and report["settings"]["dtype"] == "float32"
    assert report["dtypes"] == {"float32": {"tensors": report["tensors"], "bytes": num_parameters * 4}}
    assert report["index"]["total_size_matches"] and report["index"]["problems"] == []
    (tie,) = report["tied_weights"]
    assert tie["target"] == "lm_head.weight" and tie["tied"] and not tie["target_stored"] and tie["source_stored"]


def test_inspect_reads_no_tensor_data(reference_checkpoint, capsys, monkeypatch):
    from pretrained.checkpoint import reader

    def refuse(*args, **kwargs):
        raise AssertionError("inspect read tensor data")

    monkeypatch.setattr(reader, "read_tensor", refuse)
    monkeypatch.setattr(reader.CheckpointReader, "iter_tensors", refuse)
    monkeypatch.setattr(reader, "load_pickle", refuse)
    folder, num_parameters, _ = reference_checkpoint
    code, out, err = run(["inspect", folder, "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["parameters"] == num_parameters


def test_inspect_single_file_without_config(tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(3, 4, dtype=torch.float16), "b": torch.zeros(5)}, tmp_path / "weights.safetensors")
    code, out, err = run(["inspect", tmp_path / "weights.safetensors", "--json"], capsys)
    report = json.loads(out)
    assert code == 0, err
    assert report["parameters"] == 17 and report["config"] is None and report["index"] is None
    assert report["dtypes"] == {"float16": {"tensors": 1, "bytes": 24}, "float32": {"tensors": 1, "bytes": 20}}
    assert report["tied_weights"] == [] and "unknown" in report["tied_weights_note"]


def test_inspect_unknown_family_still_reports(reference_checkpoint, tmp_path, capsys):
    folder = copy_of(reference_checkpoint[0], tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "not-a-family"
    (folder / "config.json").write_text(json.dumps(config))
    code, out, err = run(["inspect", folder], capsys)
    assert code == 0, err
    assert "model_type 'not-a-family' is not registered: tied weights unknown" in out
    assert re.search(rf"^parameters\s+{reference_checkpoint[1]:,}$", out, re.M)


def test_inspect_flags_an_untied_head_that_is_not_stored(reference_checkpoint, tmp_path, capsys):
    folder = copy_of(reference_checkpoint[0], tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["tie_word_embeddings"] = False
    (folder / "config.json").write_text(json.dumps(config))
    code, out, _ = run(["inspect", folder], capsys)
    assert code == 0
    assert "lm_head.weight <- model.embed_tokens.weight  MISSING" in out


def test_inspect_index_total_size_mismatch(reference_checkpoint, tmp_path, capsys):
    folder = copy_of(reference_checkpoint[0], tmp_path)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["metadata"]["total_size"] += 4
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    code, out, _ = run(["inspect", folder], capsys)
    assert code == 0 and "DOES NOT match the headers" in out


def test_inspect_truncated_shard_exits_2_naming_the_file(reference_checkpoint, tmp_path, capsys):
    folder = copy_of(reference_checkpoint[0], tmp_path)
    shard = folder / reference_checkpoint[2][1]
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) - 10)
    code, out, err = run(["inspect", folder], capsys)
    assert code == 2 and out == ""
    assert shard.name in err and "truncated" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("make", [
    lambda tmp: tmp / "does-not-exist",  # missing folder
    lambda tmp: tmp,  # a folder without weights
    lambda tmp: (tmp / "x.safetensors").write_bytes(b"\x10\x00") and tmp / "x.safetensors",  # too short
    lambda tmp: (tmp / "pytorch_model.bin").write_bytes(b"") and tmp,  # pickle: not read by inspect
])
def test_inspect_errors_are_one_line_and_exit_2(make, tmp_path, capsys):
    code, out, err = run(["inspect", make(tmp_path)], capsys)
    assert code == 2 and out == ""
    assert err.startswith("pretrained inspect: error: ") and len(err.strip().splitlines()) == 1


# ---- entry points ------------------------------------------------------------------------------------------------
def test_help_and_bad_arguments(capsys):
    assert main(["--help"]) == 0
    assert "inspect" in capsys.readouterr().out
    assert main([]) == 2
    assert main(["inspect"]) == 2


def test_help_is_fast_and_module_entry_point_works():
    code = "import sys, pretrained.cli; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
    done = subprocess.run([sys.executable, "-m", "pretrained", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "demo" in done.stdout


# ---- generate --------------------------------------------------------------------------------------------------
def test_generate_compile_flag(reference_checkpoint, tmp_path, capsys, monkeypatch, inductor):
    """`--compile`: a static cache and a compiled step (compiling takes seconds), the reference's greedy tokens."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    from pretrained import CompileConfig
    from pretrained.generation import loop

    code, out, _ = run(["generate", "--help"], capsys)
    assert code == 0 and "--compile" in out and "tens of seconds" in " ".join(out.split())
    steps = []
    real_step = loop.compiled_step
    monkeypatch.setattr(loop, "compiled_step", lambda model, config: steps.append(config) or real_step(model, config))
    folder = copy_of(reference_checkpoint[0], tmp_path)
    tokenizer = Tokenizer(models.WordLevel({f"w{i}": i for i in range(256)}, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(folder / "tokenizer.json"))
    prompt = "w5 w90 w33 w170 w12"
    code, out, err = run(["generate", folder, "--prompt", prompt, "--max-new-tokens", "8", "--compile"], capsys)
    assert code == 0, err
    assert steps == [CompileConfig()]  # the compiled step was asked for
    ids = torch.tensor([tokenizer.encode(prompt).ids])
    reference = transformers.LlamaForCausalLM.from_pretrained(folder).eval()
    expected = reference.generate(ids, max_new_tokens=8, do_sample=False)[0, ids.shape[1]:].tolist()
    assert out.split()[5:] == [f"w{i}" for i in expected]
    assert "tokens/s, compiling included" in err
