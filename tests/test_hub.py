"""The Hub side: loading by repo id (revisions, subfolder, variant, cache, offline, errors) and push_to_hub, against
a real Hub-compatible server on 127.0.0.1 (the `hub_server` fixture), in both directions with the reference library.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import huggingface_hub.utils._http
import torch
from huggingface_hub import HfApi
from huggingface_hub import constants as hf_constants

import pretrained
from pretrained.errors import (CheckpointNotFoundError, GatedRepoError, HubPermissionError, OfflineError,
                               RepoFileNotFoundError, RepoNotFoundError, RevisionNotFoundError)
from pretrained.hub.resolve import resolve_file

# huggingface_hub's LFS upload passes raw bytes in a way its HTTP client deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")
IDS = torch.tensor([[1, 5, 9, 3, 7, 2]])


@pytest.fixture
def repo(request, hub_server):
    """A repo id no other test uses (the server lives for the whole session)."""
    name = re.sub(r"[^A-Za-z0-9-]", "-", request.node.name)[:40].strip("-")
    return f"test-org/{name}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def tiny(tiny_llama_config):
    """Factory: a freshly initialised tiny `pretrained.LlamaForCausalLM` (deterministic per seed)."""

    def make(seed: int = 0):
        torch.manual_seed(seed)
        return pretrained.LlamaForCausalLM.from_config(pretrained.LlamaConfig(**tiny_llama_config())).eval()

    return make


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def seed_folder(hub_server, repo_id: str, folder: Path, prefix: str = "", extra: dict | None = None, **kw) -> str:
    files = {prefix + p.name: p for p in sorted(folder.iterdir()) if p.is_file()}
    return hub_server.seed(repo_id, {**files, **(extra or {})}, **kw)


def repo_files(repo_id: str, revision: str | None = None) -> set[str]:
    return set(HfApi().list_repo_files(repo_id, revision=revision))


def config_json(**values) -> str:
    return json.dumps({"model_type": "llama", **values})


# ---- loading ----------------------------------------------------------------------------------------------------
def test_revisions_branch_tag_commit_short_commit_pr(hub_server, hub_cache, repo):
    c1 = hub_server.seed(repo, {"config.json": config_json(vocab_size=11)}, tag="v1")
    c2 = hub_server.seed(repo, {"config.json": config_json(vocab_size=22)})
    hub_server.seed(repo, {"config.json": config_json(vocab_size=33)}, branch="dev")
    hub_server.seed(repo, {"config.json": config_json(vocab_size=44)}, branch="refs/pr/1")
    cases = [(None, 22), ("main", 22), ("v1", 11), (c1, 11), (c1[:7], 11), (c2, 22), ("dev", 33), ("refs/pr/1", 44)]
    for revision, vocab in cases:
        assert pretrained.AutoConfig.from_pretrained(repo, revision=revision).vocab_size == vocab, revision


def test_new_commit_new_snapshot_blobs_reused_cache_layout(hub_server, hub_cache, repo, tiny, tmp_path):
    model = tiny()
    model.save_pretrained(tmp_path / "m")
    c1 = seed_folder(hub_server, repo, tmp_path / "m")
    pretrained.LlamaForCausalLM.from_pretrained(repo)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    c2 = hub_server.seed(repo, {"config.json": json.dumps({**config, "note": "second"})})
    hub_server.clear_log()
    again = pretrained.LlamaForCausalLM.from_pretrained(repo)
    assert again.config.note == "second"
    assert not [r for r in hub_server.requests if r[0] == "GET" and "model.safetensors" in r[1]]  # blob reused

    root = hub_cache / f"models--{repo.replace('/', '--')}"
    assert {"blobs", "refs", "snapshots"} <= set(os.listdir(root))
    assert (root / "refs" / "main").read_text() == c2
    assert {c1, c2} == set(os.listdir(root / "snapshots"))
    weights = [root / "snapshots" / c / "model.safetensors" for c in (c1, c2)]
    assert weights[0].resolve() == weights[1].resolve()  # one blob, two snapshots
    assert weights[0].resolve().parent == root / "blobs"
    configs = [(root / "snapshots" / c / "config.json").resolve() for c in (c1, c2)]
    assert configs[0] != configs[1]
    torch.testing.assert_close(logits(again), logits(model), rtol=0, atol=0)


def test_subfolder_and_variant(hub_server, hub_cache, repo, tiny, tmp_path):
    model = tiny()
    model.save_pretrained(tmp_path / "plain")
    model.save_pretrained(tmp_path / "fp16", variant="fp16")
    seed_folder(hub_server, repo, tmp_path / "plain", prefix="sub/")
    seed_folder(hub_server, repo, tmp_path / "fp16", prefix="var/")
    loaded = pretrained.LlamaForCausalLM.from_pretrained(repo, subfolder="sub")
    torch.testing.assert_close(logits(loaded), logits(model), rtol=0, atol=0)
    loaded = pretrained.LlamaForCausalLM.from_pretrained(repo, subfolder="var", variant="fp16")
    torch.testing.assert_close(logits(loaded), logits(model), rtol=0, atol=0)
    with pytest.raises(CheckpointNotFoundError, match="model.safetensors"):
        pretrained.LlamaForCausalLM.from_pretrained(repo, subfolder="var")  # no plain weights there
    with pytest.raises(RepoFileNotFoundError, match="nowhere/config.json"):
        pretrained.AutoConfig.from_pretrained(repo, subfolder="nowhere")


def test_cache_dir_and_force_download(hub_server, hub_cache, repo, tmp_path):
    hub_server.seed(repo, {"config.json": config_json(vocab_size=9)})
    own = tmp_path / "own-cache"
    assert pretrained.AutoConfig.from_pretrained(repo, cache_dir=own).vocab_size == 9
    assert (own / f"models--{repo.replace('/', '--')}" / "refs" / "main").is_file()
    assert not hub_cache.exists() or not any(hub_cache.iterdir())  # the default cache was not touched
    hub_server.clear_log()
    pretrained.AutoConfig.from_pretrained(repo, cache_dir=own)
    assert [m for m, _ in hub_server.requests] == ["HEAD"]  # cached: asked for the head commit only
    hub_server.clear_log()
    pretrained.AutoConfig.from_pretrained(repo, cache_dir=own, force_download=True)
    assert ("GET", f"/{repo}/resolve/main/config.json") in hub_server.requests


def test_only_the_shards_named_by_the_index_are_downloaded(hub_server, hub_cache, repo, tiny, tmp_path):
    model = tiny()
    model.save_pretrained(tmp_path / "m", max_shard_size="20KB")
    shards = sorted(p.name for p in (tmp_path / "m").glob("model-*.safetensors"))
    assert len(shards) > 1
    unrelated = os.urandom(300_000)
    extra = {"unrelated.safetensors": unrelated, "notes/big.bin": unrelated}
    seed_folder(hub_server, repo, tmp_path / "m", extra=extra)
    hub_server.clear_log()
    loaded = pretrained.LlamaForCausalLM.from_pretrained(repo)
    torch.testing.assert_close(logits(loaded), logits(model), rtol=0, atol=0)
    paths = [path for _, path in hub_server.requests]
    sha = hashlib.sha256(unrelated).hexdigest()
    assert not [p for p in paths if "unrelated" in p or "big.bin" in p or sha in p]
    assert all(any(s in p for p in paths) for s in shards)
    snapshot = next((hub_cache / f"models--{repo.replace('/', '--')}" / "snapshots").iterdir())
    # a generative class also fetches generation_config.json, as the reference does
    assert set(os.listdir(snapshot)) == {"config.json", "generation_config.json", "model.safetensors.index.json",
                                         *shards}


def test_one_load_reads_one_commit(hub_server, hub_cache, repo, tiny, tmp_path, monkeypatch):
    first, second = tiny(0), tiny(1)
    first.save_pretrained(tmp_path / "a", max_shard_size="20KB")
    second.save_pretrained(tmp_path / "b")
    seed_folder(hub_server, repo, tmp_path / "a")
    download, calls = huggingface_hub.hf_hub_download, []

    def racing(*args, **kwargs):  # main moves on right after the load has read config.json
        calls.append(kwargs.get("revision"))
        path = download(*args, **kwargs)
        if len(calls) == 1:
            seed_folder(hub_server, repo, tmp_path / "b", extra={p.name: None for p in (tmp_path / "a").iterdir()
                                                                if p.name.startswith("model")})
        return path

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", racing)
    loaded = pretrained.LlamaForCausalLM.from_pretrained(repo)
    torch.testing.assert_close(logits(loaded), logits(first), rtol=0, atol=0)
    assert calls[0] is None and len(set(calls[1:])) == 1 and re.fullmatch("[0-9a-f]{40}", calls[1])
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    latest = pretrained.LlamaForCausalLM.from_pretrained(repo)
    torch.testing.assert_close(logits(latest), logits(second), rtol=0, atol=0)


def test_offline_and_stopped_server_load_from_cache(hub_server, hub_cache, repo, tiny, tmp_path, monkeypatch):
    model = tiny()
    model.save_pretrained(tmp_path / "m", max_shard_size="20KB")  # sharded: model.safetensors is known absent
    seed_folder(hub_server, repo, tmp_path / "m")
    expected = logits(pretrained.LlamaForCausalLM.from_pretrained(repo))
    hub_server.clear_log()
    loaded = pretrained.LlamaForCausalLM.from_pretrained(repo)  # all cached: one request, for the head commit
    assert [m for m, _ in hub_server.requests] == ["HEAD"]

    hub_server.clear_log()
    loaded = pretrained.LlamaForCausalLM.from_pretrained(repo, local_files_only=True)
    torch.testing.assert_close(logits(loaded), expected, rtol=0, atol=0)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    loaded = pretrained.LlamaForCausalLM.from_pretrained(repo)
    torch.testing.assert_close(logits(loaded), expected, rtol=0, atol=0)
    assert hub_server.requests == []
    never = repo + "-never-downloaded"
    with pytest.raises(OfflineError, match=f"'config.json' of '{never}' \\(revision 'main'\\).*HF_HUB_OFFLINE=1"):
        pretrained.LlamaForCausalLM.from_pretrained(never)
    with pytest.raises(OfflineError, match="revision 'v9'"):  # a revision never seen is not in the cache either
        pretrained.LlamaForCausalLM.from_pretrained(repo, revision="v9")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(OfflineError, match="local_files_only=True"):
        pretrained.AutoConfig.from_pretrained(never, local_files_only=True)

    hub_server.stop()
    try:
        loaded = pretrained.LlamaForCausalLM.from_pretrained(repo)
        torch.testing.assert_close(logits(loaded), expected, rtol=0, atol=0)
        # Nothing cached: huggingface_hub retries the connection with back-off (~23 s of sleeping, skipped here).
        monkeypatch.setattr(huggingface_hub.utils._http, "time", SimpleNamespace(sleep=lambda seconds: None))
        with pytest.raises(OfflineError, match=f"'config.json' of '{never}'.*could not be reached"):
            pretrained.AutoConfig.from_pretrained(never)
    finally:
        hub_server.start()


def test_load_errors_name_repo_revision_and_file(hub_server, hub_cache, repo):
    hub_server.seed(repo, {"config.json": config_json()})
    missing = "test-org/no-such-repo-" + uuid.uuid4().hex[:6]
    with pytest.raises(RepoNotFoundError, match=f"'{missing}'.*token"):
        pretrained.AutoConfig.from_pretrained(missing)
    with pytest.raises(RevisionNotFoundError, match=f"Revision 'no-such-branch' does not exist in '{repo}'"):
        pretrained.AutoConfig.from_pretrained(repo, revision="no-such-branch")
    with pytest.raises(RepoFileNotFoundError, match=f"'{repo}' at revision 'main' has no file 'nothing.json'"):
        resolve_file(repo, "nothing.json")
    assert resolve_file(repo, "nothing.json", required=False) is None
    with pytest.raises(CheckpointNotFoundError, match="No weights found"):  # a config but no weights
        pretrained.LlamaForCausalLM.from_pretrained(repo)
    with pytest.raises(RepoNotFoundError, match="valid Hub repo id"):
        pretrained.AutoConfig.from_pretrained("bad name!")
    # All of them are OSErrors, as the reference raises.
    assert issubclass(RepoNotFoundError, OSError) and issubclass(OfflineError, OSError)


def test_gated_and_private_repos_need_a_token(hub_server, hub_cache, repo):
    hub_server.seed(repo + "-gated", {"config.json": config_json(vocab_size=5)}, gated=True)
    hub_server.seed(repo + "-private", {"config.json": config_json(vocab_size=6)}, private=True)
    with pytest.raises(GatedRepoError, match=f"'{repo}-gated'.*token"):
        pretrained.AutoConfig.from_pretrained(repo + "-gated", token=False)
    with pytest.raises(RepoNotFoundError, match=f"'{repo}-private'.*token"):
        pretrained.AutoConfig.from_pretrained(repo + "-private", token=False)
    assert pretrained.AutoConfig.from_pretrained(repo + "-gated", token=hub_server.token).vocab_size == 5
    assert pretrained.AutoConfig.from_pretrained(repo + "-private", token=hub_server.token).vocab_size == 6


# ---- pushing ----------------------------------------------------------------------------------------------------
def test_push_then_load_by_repo_id_and_revision(hub_server, hub_cache, repo, tiny):
    model = tiny()
    info = model.push_to_hub(repo, token=hub_server.token)
    assert info.oid == hub_server.commits(repo)[0]
    assert repo_files(repo) == {".gitattributes", "README.md", "config.json", "generation_config.json",
                                "model.safetensors"}
    for revision in (None, info.oid):
        loaded = pretrained.LlamaForCausalLM.from_pretrained(repo, revision=revision)
        torch.testing.assert_close(logits(loaded), logits(model), rtol=0, atol=0)
    card = Path(resolve_file(repo, "README.md")).read_text()
    assert "library_name: pretrained" in card and "- llama" in card and "AutoModelForCausalLM" in card


def test_unchanged_push_makes_no_commit_and_uploads_nothing(hub_server, hub_cache, repo, tiny):
    model = tiny()
    first = model.push_to_hub(repo, token=hub_server.token)
    commits = hub_server.commits(repo)
    hub_server.clear_log()
    again = model.push_to_hub(repo, token=hub_server.token)
    assert again.oid == first.oid and hub_server.commits(repo) == commits
    sent = hub_server.requests
    assert not [r for r in sent if r[0] == "PUT" or "/commit/" in r[1] or "preupload" in r[1]], sent

    with torch.no_grad():
        model.model.norm.weight.add_(1.0)
    hub_server.clear_log()
    changed = model.push_to_hub(repo, token=hub_server.token, commit_message="nudge norm")
    assert hub_server.commits(repo) == [changed.oid, *commits]
    assert len([r for r in hub_server.requests if r[0] == "PUT"]) == 1  # the weights only; config files unchanged
    assert HfApi().list_repo_commits(repo)[0].title == "nudge norm"


def test_create_pr_lands_on_refs_pr_1(hub_server, hub_cache, repo, tiny):
    model = tiny()
    model.push_to_hub(repo, token=hub_server.token)
    before = logits(model)
    main = hub_server.commits(repo)
    with torch.no_grad():
        model.lm_head.weight.mul_(2)
    info = model.push_to_hub(repo, token=hub_server.token, create_pr=True, commit_description="doubles the head")
    assert info.pr_revision == "refs/pr/1" and info.pr_num == 1
    assert hub_server.commits(repo) == main
    assert hub_server.commits(repo, "refs/pr/1")[0] == info.oid
    on_pr = pretrained.LlamaForCausalLM.from_pretrained(repo, revision="refs/pr/1")
    torch.testing.assert_close(logits(on_pr), logits(model), rtol=0, atol=0)
    on_main = pretrained.LlamaForCausalLM.from_pretrained(repo)
    torch.testing.assert_close(logits(on_main), before, rtol=0, atol=0)

    info = model.push_to_hub(repo, token=hub_server.token, revision="experiment")  # a new branch, from main
    assert hub_server.commits(repo, "experiment")[:len(main) + 1] == [info.oid, *main]
    on_branch = pretrained.LlamaForCausalLM.from_pretrained(repo, revision="experiment")
    torch.testing.assert_close(logits(on_branch), logits(model), rtol=0, atol=0)


def test_stale_shards_are_deleted_in_the_same_commit(hub_server, hub_cache, repo, tiny):
    model = tiny()
    token = hub_server.token
    model.push_to_hub(repo, token=token, max_shard_size="20KB")
    sharded = {f for f in repo_files(repo) if f.startswith("model")}
    assert "model.safetensors.index.json" in sharded and len(sharded) > 3

    with torch.no_grad():
        model.model.norm.weight.add_(1.0)
    model.push_to_hub(repo, token=token)  # one file now: index and shards go, in one commit
    assert {f for f in repo_files(repo) if f.startswith("model")} == {"model.safetensors"}
    torch.testing.assert_close(logits(pretrained.LlamaForCausalLM.from_pretrained(repo)), logits(model))

    commits = len(hub_server.commits(repo))
    model.push_to_hub(repo, token=token, max_shard_size="30KB")  # back to shards: the single file must go
    assert len(hub_server.commits(repo)) == commits + 1
    files = {f for f in repo_files(repo) if f.startswith("model")}
    assert "model.safetensors" not in files and "model.safetensors.index.json" in files
    index = json.loads(Path(resolve_file(repo, "model.safetensors.index.json")).read_text())
    assert files == {"model.safetensors.index.json", *index["weight_map"].values()}
    torch.testing.assert_close(logits(pretrained.LlamaForCausalLM.from_pretrained(repo)), logits(model))


def test_model_card_written_once_and_kept(hub_server, hub_cache, repo, tiny):
    model = tiny()
    model.push_to_hub(repo, token=hub_server.token, tags=["tiny"])
    card = Path(resolve_file(repo, "README.md")).read_text()
    assert card.startswith("---\n") and "library_name: pretrained" in card and "- tiny" in card

    hub_server.seed(repo, {"README.md": "# My own card\n\nHand-written.\n"})
    with torch.no_grad():
        model.model.norm.weight.add_(1.0)
    model.push_to_hub(repo, token=hub_server.token)
    assert Path(resolve_file(repo, "README.md")).read_text() == "# My own card\n\nHand-written.\n"
    model.push_to_hub(repo, token=hub_server.token, tags=["extra"])  # new tags join its metadata; body kept
    card = Path(resolve_file(repo, "README.md")).read_text()
    assert "- extra" in card and card.endswith("# My own card\n\nHand-written.\n")

    derived = pretrained.LlamaForCausalLM.from_pretrained(repo)  # pushed elsewhere: its card names where it came from
    derived.push_to_hub(repo + "-derived", token=hub_server.token)
    assert f"base_model: {repo}\n" in Path(resolve_file(repo + "-derived", "README.md")).read_text()


def test_config_push_to_hub_and_save_pretrained_push(hub_server, hub_cache, repo, tiny_llama_config, tiny, tmp_path):
    config = pretrained.LlamaConfig(**tiny_llama_config(vocab_size=77))
    info = config.push_to_hub(repo, token=hub_server.token)
    assert repo_files(repo) == {".gitattributes", "README.md", "config.json"}
    assert HfApi().list_repo_commits(repo)[0].title == "Upload config"
    loaded = pretrained.AutoConfig.from_pretrained(repo, revision=info.oid)
    assert type(loaded) is pretrained.LlamaConfig and loaded.to_json_string() == config.to_json_string()
    assert "AutoConfig" in Path(resolve_file(repo, "README.md")).read_text()

    model = tiny()
    model.save_pretrained(tmp_path / "local", push_to_hub=True, repo_id=repo, token=hub_server.token,
                          commit_message="from save_pretrained")
    assert HfApi().list_repo_commits(repo)[0].title == "from save_pretrained"
    assert {"model.safetensors", "generation_config.json"} <= repo_files(repo)
    loaded = pretrained.LlamaForCausalLM.from_pretrained(repo)
    torch.testing.assert_close(logits(loaded), logits(model), rtol=0, atol=0)

    name = f"by-folder-name-{uuid.uuid4().hex[:6]}"  # repo_id defaults to the folder's name, in the token's namespace
    config.save_pretrained(tmp_path / name, push_to_hub=True, token=hub_server.token)
    user = HfApi(token=hub_server.token).whoami()["name"]
    assert "config.json" in repo_files(f"{user}/{name}")


def test_push_without_write_access_is_a_typed_error(hub_server, repo, tiny_llama_config):
    config = pretrained.LlamaConfig(**tiny_llama_config())
    with pytest.raises(HubPermissionError, match=f"'{repo}'.*write token"):
        config.push_to_hub(repo, token=False)
    with pytest.raises(HubPermissionError):
        config.push_to_hub(repo, token="hf_not_a_valid_token")


# ---- both directions with the reference library -----------------------------------------------------------------
def test_reference_loads_our_push_and_we_load_its_push(hub_server, hub_cache, repo, tiny, tiny_llama_config):
    transformers = pytest.importorskip("transformers")
    model = tiny()
    model.push_to_hub(repo, token=hub_server.token)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(repo).eval()
    torch.testing.assert_close(logits(theirs), logits(model), rtol=1e-5, atol=1e-5)

    torch.manual_seed(1)
    reference = transformers.LlamaForCausalLM(transformers.LlamaConfig(**tiny_llama_config())).eval()
    reference.push_to_hub(repo + "-ref", token=hub_server.token)
    ours = pretrained.AutoModelForCausalLM.from_pretrained(repo + "-ref")
    torch.testing.assert_close(logits(ours), logits(reference), rtol=1e-5, atol=1e-5)
