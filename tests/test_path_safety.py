"""Names read from files never become paths outside the checkpoint's folder (issue 13, part 1).

Every place a name from a file is joined to a folder: the save record `.pretrained-save.json` (staging folder,
files moved in, files removed), an index's `weight_map`, `config.json`'s `auto_map` (module files, the repo of
code kept elsewhere), and Hub file names (resolved into a folder or the cache, uploaded from a folder). Each test
puts sentinel files next to the checkpoint folder and checks that the typed error comes, and that every file
outside (and inside) the folder is exactly as it was: nothing was read into a model, renamed or deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from pathlib import Path

import pytest
import torch

import pretrained
from pretrained.checkpoint.atomic import MARKER, STAGING_PREFIX, AtomicSave, is_plain_name, list_files
from pretrained.errors import OfflineError, RemoteCodeError, UnsafePathError
from pretrained.hub.push import push_folder
from pretrained.hub.resolve import resolve_file

IDS = torch.tensor([[1, 5, 9, 3, 7, 2]])
STAGING = STAGING_PREFIX + "0123456789ab"  # a name of the form AtomicSave makes


def tiny(tiny_llama_config, seed: int):
    torch.manual_seed(seed)
    return pretrained.LlamaForCausalLM.from_config(pretrained.LlamaConfig(**tiny_llama_config())).eval()


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def tree(root: Path) -> dict[str, str]:
    """{relative path: sha256 of the file, or "dir" / "link -> target"} of everything under `root`."""
    out = {}
    for folder, dirs, names in os.walk(root):
        for name in dirs + names:
            path = Path(folder) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = f"link -> {os.readlink(path)}"
            elif path.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture
def world(tmp_path, tiny_llama_config):
    """tmp_path/ckpt: a saved model A. Outside it: tmp_path/outside/model.safetensors (model B's weights, what an
    attacker would have us load) and tmp_path/outside2/victim.txt (what it would have us delete)."""
    folder = tmp_path / "ckpt"
    tiny(tiny_llama_config, 0).save_pretrained(folder)
    attacker = tiny(tiny_llama_config, 1)
    attacker.save_pretrained(tmp_path / "outside")
    (tmp_path / "outside2").mkdir()
    (tmp_path / "outside2" / "victim.txt").write_text("keep me")
    return folder, attacker


def manifests(tmp_path: Path) -> dict[str, dict]:
    outside = str(tmp_path / "outside")
    return {
        "issue-13": {"staging": "../outside", "files": ["model.safetensors"], "remove": ["../outside2/victim.txt"]},
        "absolute-staging": {"staging": outside, "files": ["model.safetensors"], "remove": []},
        "staging-not-ours": {"staging": "weights", "files": ["model.safetensors"], "remove": []},
        "staging-prefix-then-dots": {"staging": STAGING_PREFIX + "../../outside", "files": ["model.safetensors"],
                                     "remove": []},
        "file-up": {"staging": STAGING, "files": ["../outside/model.safetensors"], "remove": []},
        "file-absolute": {"staging": STAGING, "files": [str(tmp_path / "outside" / "model.safetensors")],
                          "remove": []},
        "file-backslash": {"staging": STAGING, "files": ["..\\outside\\model.safetensors"], "remove": []},
        "file-nul": {"staging": STAGING, "files": ["model.safetensors\0"], "remove": []},
        "file-dotdot": {"staging": STAGING, "files": [".."], "remove": []},
        "file-empty": {"staging": STAGING, "files": [""], "remove": []},
        "file-not-a-string": {"staging": STAGING, "files": [3], "remove": []},
        "remove-absolute": {"staging": STAGING, "files": [], "remove": [str(tmp_path / "outside2" / "victim.txt")]},
        "remove-the-record": {"staging": STAGING, "files": [], "remove": [MARKER]},
    }


@pytest.mark.parametrize("kind", sorted(manifests(Path("/x"))) + ["staging-symlink"])
def test_save_record_with_unsafe_names_is_refused_on_load_and_save(world, tmp_path, tiny_llama_config, kind):
    folder, attacker = world
    if kind == "staging-symlink":  # a name of our form, but a link to a folder outside
        os.symlink(tmp_path / "outside", folder / STAGING)
        record = {"staging": STAGING, "files": ["model.safetensors"], "remove": []}
    else:
        record = manifests(tmp_path)[kind]
        if record["staging"] == STAGING:
            (folder / STAGING).mkdir()
            (folder / STAGING / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    (folder / MARKER).write_text(json.dumps(record))
    before = tree(tmp_path)

    with pytest.raises(UnsafePathError) as err:
        pretrained.LlamaForCausalLM.from_pretrained(folder)
    assert str(folder / MARKER) in str(err.value) and "delete" in str(err.value)
    with pytest.raises(UnsafePathError, match=re.escape(str(folder / MARKER))):
        tiny(tiny_llama_config, 2).save_pretrained(folder)
    with pytest.raises(UnsafePathError):
        list_files(str(folder))
    with pytest.raises(UnsafePathError):
        AtomicSave(folder)
    assert tree(tmp_path) == before  # nothing renamed, deleted or written, inside the folder or out

    os.unlink(folder / MARKER)  # as the message says: a folder one trusts loads again without the record
    if kind == "staging-symlink":
        os.unlink(folder / STAGING)
    loaded = pretrained.LlamaForCausalLM.from_pretrained(folder)
    assert not torch.equal(logits(loaded), logits(attacker))


def test_our_own_records_pass_the_check(tmp_path, tiny_llama_config):
    """The names our writer puts in a record (shards, index, config files, code files) are all accepted."""
    folder = tmp_path / "ckpt"
    tiny(tiny_llama_config, 0).save_pretrained(folder, max_shard_size="20KB")
    for name in list_files(str(folder)) + ["modeling_x.py", "pytorch_model-00001-of-00002.bin"]:
        assert is_plain_name(name), name
    with AtomicSave(folder) as save:  # a commit stopped at its record: readers resolve through it
        save.write_text("config.json", (folder / "config.json").read_text())
        import pretrained.checkpoint.atomic as atomic

        real, atomic._roll_forward = atomic._roll_forward, lambda *a: None
        try:
            save.commit(remove=["model-00002-of-00009.safetensors"])
        finally:
            atomic._roll_forward = real
    assert (folder / MARKER).exists()
    pretrained.LlamaForCausalLM.from_pretrained(folder)
    tiny(tiny_llama_config, 1).save_pretrained(folder)  # rolls the record forward, then saves
    assert not (folder / MARKER).exists()


INDEX_SHARDS = {
    "up": "../outside/model.safetensors",
    "absolute": None,  # filled in: the absolute path of the outside file
    "backslash": "..\\outside\\model.safetensors",
    "subfolder": "outside/model.safetensors",
    "empty": "",
    "nul": "model-00001-of-00002.safetensors\0",
    "dot": ".",
    "drive": "C:model.safetensors",
}


@pytest.mark.parametrize("kind", sorted(INDEX_SHARDS))
def test_index_weight_map_names_outside_the_folder_are_refused(world, tmp_path, kind):
    folder, _ = world
    os.unlink(folder / "model.safetensors")
    shard = INDEX_SHARDS[kind] if INDEX_SHARDS[kind] is not None else str(tmp_path / "outside" / "model.safetensors")
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": {"model.norm.weight": shard}}))
    before = tree(tmp_path)
    for load in (pretrained.LlamaForCausalLM.from_pretrained,
                 lambda f: pretrained.load_sharded_checkpoint(pretrained.LlamaForCausalLM(
                     pretrained.LlamaConfig.from_pretrained(f)), f)):
        with pytest.raises(UnsafePathError, match="not a plain file name") as err:
            load(folder)
        assert str(index) in str(err.value)
    assert tree(tmp_path) == before


@pytest.fixture
def modules_cache(tmp_path, monkeypatch):
    cache = tmp_path / "modules-cache"
    monkeypatch.setenv("HF_MODULES_CACHE", str(cache))
    return cache


def code_that_marks(marker: Path, what: str) -> str:
    return (f"open({str(marker)!r}, 'a').write({what!r})\n"
            "from pretrained import PretrainedConfig\n\nclass XConfig(PretrainedConfig):\n    model_type = 'x-safety'\n")


@pytest.mark.parametrize("ref", ["../../evil.XConfig", "/abs/evil.XConfig", "a/b.XConfig", "..\\evil.XConfig",
                                 "org/r--../evil.XConfig", "../org--evil.XConfig", ".evil.XConfig"])
def test_auto_map_module_paths_are_refused_naming_config_json_and_key(tmp_path, modules_cache, ref):
    marker = tmp_path / "ran.txt"
    folder = tmp_path / "deep" / "er" / "ckpt"
    folder.mkdir(parents=True)
    for where in (tmp_path, tmp_path / "deep", folder.parent, Path("/abs")):  # code a path could reach
        if where.is_dir():
            (where / "evil.py").write_text(code_that_marks(marker, str(where)))
    (folder / "config.json").write_text(json.dumps({"model_type": "x-safety", "auto_map": {"AutoConfig": ref}}))
    before = tree(tmp_path)
    with pytest.raises(RemoteCodeError) as err:
        pretrained.AutoConfig.from_pretrained(folder, trust_remote_code=True)
    msg = str(err.value)
    assert "config.json" in msg and "auto_map['AutoConfig']" in msg and str(folder) in msg
    assert not marker.exists() and not modules_cache.exists()
    assert tree(tmp_path) == before


def test_auto_map_code_of_another_repo_never_comes_from_a_local_folder(tmp_path, modules_cache, hub_cache,
                                                                       monkeypatch):
    """`org/evil--configuration_x.XConfig` names a Hub repo; a folder `org/evil` under the working directory must
    not stand in for it (that would run code from wherever the process happens to be)."""
    marker = tmp_path / "ran.txt"
    monkeypatch.chdir(tmp_path)
    local = tmp_path / "org" / "evil"
    local.mkdir(parents=True)
    (local / "configuration_x.py").write_text(code_that_marks(marker, "local folder"))
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(
        {"model_type": "x-safety", "auto_map": {"AutoConfig": "org/evil--configuration_x.XConfig"}}))
    with pytest.raises(OfflineError, match="org/evil"):
        pretrained.AutoConfig.from_pretrained(folder, trust_remote_code=True, local_files_only=True)
    assert not marker.exists()


NAMES = ["../outside2/victim.txt", "sub/../../outside2/victim.txt", "..\\outside2\\victim.txt", "x\0y", "", "a//b"]


@pytest.mark.parametrize("name", NAMES + ["<absolute>"])
def test_hub_file_names_cannot_leave_the_folder_or_the_cache(world, tmp_path, hub_cache, name):
    folder, _ = world
    name = str(tmp_path / "outside2" / "victim.txt") if name == "<absolute>" else name
    before = tree(tmp_path)
    with pytest.raises(UnsafePathError, match="not a relative path"):
        resolve_file(folder, name)
    with pytest.raises(UnsafePathError, match="not a relative path"):  # a repo id: checked before any lookup
        resolve_file("test-org/some-repo", name, local_files_only=True)
    assert tree(tmp_path) == before


def test_hub_index_naming_a_shard_outside_is_refused(world, tmp_path, hub_server, hub_cache):
    folder, _ = world
    repo = f"test-org/path-safety-{uuid.uuid4().hex[:6]}"
    index = {"metadata": {}, "weight_map": {"model.norm.weight": "../../../outside/model.safetensors"}}
    hub_server.seed(repo, {"config.json": folder / "config.json",
                           "model.safetensors.index.json": json.dumps(index).encode()})
    before = tree(tmp_path / "outside")
    with pytest.raises(UnsafePathError, match="model.safetensors.index.json"):
        pretrained.LlamaForCausalLM.from_pretrained(repo)
    assert tree(tmp_path / "outside") == before
    cached = [p for p in hub_cache.rglob("*") if p.is_file() and "snapshots" in p.parts]
    assert all(hub_cache in p.resolve().parents for p in cached)
    assert not any(p.name == "model.safetensors" for p in cached)


def test_push_refuses_files_a_save_record_names_outside_the_folder(world, tmp_path, tiny_llama_config, hub_server):
    """A record naming an absolute path would have a push upload that file (and a save move or delete it)."""
    folder, _ = world
    secret = tmp_path / "outside2" / "victim.txt"
    (folder / STAGING).mkdir()
    (folder / MARKER).write_text(json.dumps({"staging": STAGING, "files": [str(secret)], "remove": []}))
    repo = f"test-org/path-safety-{uuid.uuid4().hex[:6]}"
    before = tree(tmp_path)
    with pytest.raises(UnsafePathError, match=re.escape(str(folder / MARKER))):
        push_folder(folder, repo, token=hub_server.token)
    with pytest.raises(UnsafePathError):
        tiny(tiny_llama_config, 3).save_pretrained(folder, push_to_hub=True, repo_id=repo, token=hub_server.token)
    assert tree(tmp_path) == before
    os.unlink(folder / MARKER)
    with pytest.raises(UnsafePathError, match="Nothing was uploaded"):  # names given to push_folder: checked too
        push_folder(folder, repo, files=["config.json", str(secret)], token=hub_server.token)
    from huggingface_hub import HfApi

    assert not HfApi(token=hub_server.token).repo_exists(repo)
