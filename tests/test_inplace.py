"""Loaded weights and the files under them (issue 13, part 4).

By default a weight that needs no conversion is a zero-copy mapping of its checkpoint file: the file must not be
changed in place while the model lives (truncating it kills the process with SIGBUS at the next use; overwriting it
changes the weights). `disable_mmap=True` makes a model independent of its files. Our own writers (`save_pretrained`,
the offload folder, `push_to_hub`) never write into an existing file: they write a new one and rename it over the
old, so a model mapping the old file keeps its values.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import torch

import pretrained
from pretrained.errors import DeviceMapError
from pretrained.hub.push import push_folder

# huggingface_hub's LFS upload passes raw bytes in a way its HTTP client deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")
IDS = torch.tensor([[1, 5, 9, 3, 7, 2], [4, 4, 8, 0, 1, 6]])
needs_proc_maps = pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads /proc/self/maps (Linux)")


def tiny(tiny_llama_config, seed: int = 0, dtype=None):
    torch.manual_seed(seed)
    config = pretrained.LlamaConfig(**tiny_llama_config())
    return pretrained.LlamaForCausalLM.from_config(config, dtype=dtype).eval()


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))


def mapped_files() -> set[str]:
    """Paths of the files this process maps now."""
    with open("/proc/self/maps", encoding="utf-8") as f:
        return {line.split(None, 5)[5].strip() for line in f if len(line.split(None, 5)) == 6}


def mapped(folder: Path) -> set[str]:
    """The files under `folder` this process maps ("(deleted)" marks one unlinked since)."""
    root = os.path.realpath(folder) + os.sep
    return {p for p in mapped_files() if p.startswith(root)}


def damage(path: Path, how: str) -> None:
    """Change a file in place (same inode): cut it to nothing, or overwrite every byte with other bytes."""
    if how == "truncate":
        os.truncate(path, 0)
    else:
        size = path.stat().st_size
        with open(path, "r+b") as f:
            f.write(bytes(255 - b for b in path.read_bytes()[:size]))


# ---- disable_mmap=True: a model independent of its files ------------------------------------------------------------
@needs_proc_maps
@pytest.mark.parametrize("how", ["truncate", "overwrite"])
@pytest.mark.parametrize("layout", ["single", "sharded", "pickle", "converted"])
def test_disable_mmap_model_survives_its_files_changed_in_place(tmp_path, tiny_llama_config, how, layout):
    folder = tmp_path / "ckpt"
    kwargs = {"max_shard_size": "20KB"} if layout == "sharded" else {}
    tiny(tiny_llama_config, dtype=torch.bfloat16 if layout == "converted" else None).save_pretrained(
        folder, safe_serialization=layout != "pickle", **kwargs)
    dtype = torch.float32 if layout == "converted" else None
    model = pretrained.LlamaForCausalLM.from_pretrained(folder, disable_mmap=True, dtype=dtype)
    expected = logits(model)
    assert mapped(folder) == set()  # no weight keeps a mapping of a checkpoint file
    for path in weight_files(folder):
        damage(path, how)
    torch.testing.assert_close(logits(model), expected, rtol=0, atol=0)
    assert all(p.device.type == "cpu" and not p.is_meta for p in model.parameters())


@needs_proc_maps
def test_default_loading_maps_the_file_so_in_place_changes_reach_the_model(tmp_path, tiny_llama_config):
    """What disable_mmap is for: the default zero-copy model maps its file; an in-place overwrite changes its
    weights, and a truncation kills its process with SIGBUS (run in a child process)."""
    folder = tmp_path / "ckpt"
    tiny(tiny_llama_config).save_pretrained(folder)
    model = pretrained.LlamaForCausalLM.from_pretrained(folder)
    before = logits(model)
    assert mapped(folder) == {os.path.realpath(folder / "model.safetensors")}
    damage(folder / "model.safetensors", "overwrite")
    assert not torch.equal(logits(model), before)

    tiny(tiny_llama_config).save_pretrained(folder)
    script = textwrap.dedent(f"""
        import os, torch, pretrained
        model = pretrained.LlamaForCausalLM.from_pretrained({str(folder)!r}, disable_mmap=DISABLE)
        ids = torch.tensor({IDS.tolist()})
        with torch.no_grad():
            before = model(ids).logits
        os.truncate({str(folder / "model.safetensors")!r}, 0)
        with torch.no_grad():
            assert torch.equal(model(ids).logits, before)
        print("survived")
    """)
    for disable, killed in ((False, True), (True, False)):
        run = subprocess.run([sys.executable, "-c", script.replace("DISABLE", str(disable))], capture_output=True,
                             text=True, timeout=300)
        if killed:
            assert run.returncode == -signal.SIGBUS, (run.returncode, run.stderr[-2000:])
        else:
            assert run.returncode == 0 and "survived" in run.stdout, run.stderr[-2000:]
        tiny(tiny_llama_config).save_pretrained(folder)  # whole again for the next run


@pytest.fixture
def bf16_checkpoint(tmp_path, tiny_llama_config):
    folder = tmp_path / "bf16"
    tiny(tiny_llama_config, dtype=torch.bfloat16).save_pretrained(folder)
    return folder


DISK_MAP = {"": "cpu", "model.layers.1": "disk", "lm_head": "disk"}


def test_disable_mmap_with_disk_offload_needs_an_offload_folder(bf16_checkpoint):
    with pytest.raises(DeviceMapError, match="disable_mmap=True.*offload_folder"):
        pretrained.LlamaForCausalLM.from_pretrained(bf16_checkpoint, device_map=DISK_MAP, disable_mmap=True)


@needs_proc_maps
def test_disable_mmap_disk_weights_are_copied_into_the_offload_folder(bf16_checkpoint, tmp_path):
    in_memory = logits(pretrained.LlamaForCausalLM.from_pretrained(bf16_checkpoint))
    offload = tmp_path / "offload"
    model = pretrained.LlamaForCausalLM.from_pretrained(bf16_checkpoint, device_map=DISK_MAP, disable_mmap=True,
                                                        offload_folder=offload)
    assert mapped(bf16_checkpoint) == set() and mapped(offload)  # disk weights map our copies, not the checkpoint
    assert set(model._disk_store.maps) <= {str(p) for p in offload.iterdir()}
    damage(bf16_checkpoint / "model.safetensors", "truncate")
    torch.testing.assert_close(logits(model), in_memory, rtol=0, atol=0)


def test_offload_folder_shared_by_two_models_is_never_written_in_place(tmp_path, tiny_llama_config):
    """The second load writes its offload files over the first one's names: by rename, so the first model (which
    maps the old files) keeps its weights."""
    first, second = tmp_path / "a", tmp_path / "b"
    tiny(tiny_llama_config, seed=0, dtype=torch.bfloat16).save_pretrained(first)
    tiny(tiny_llama_config, seed=1, dtype=torch.bfloat16).save_pretrained(second)
    offload = tmp_path / "offload"
    load = dict(dtype=torch.float32, device_map=DISK_MAP, offload_folder=offload)  # a dtype change: written there
    a = pretrained.LlamaForCausalLM.from_pretrained(first, **load)
    expected = logits(a)
    b = pretrained.LlamaForCausalLM.from_pretrained(second, **load)
    torch.testing.assert_close(logits(a), expected, rtol=0, atol=0)
    assert not torch.equal(logits(b), expected)


# ---- our writers replace files, never write into them ---------------------------------------------------------------
def keep_old_files(folder: Path, keep: Path) -> dict[str, tuple[int, bytes]]:
    """Hard-link every file of `folder` into `keep` (so the old inodes stay reachable); {name: (inode, bytes)}."""
    keep.mkdir()
    out = {}
    for path in sorted(folder.iterdir()):
        if path.is_file():
            os.link(path, keep / path.name)
            out[path.name] = (path.stat().st_ino, path.read_bytes())
    return out


def assert_old_files_untouched(old: dict[str, tuple[int, bytes]], keep: Path) -> None:
    for name, (inode, data) in old.items():
        assert (keep / name).stat().st_ino == inode
        assert (keep / name).read_bytes() == data, f"{name} was written in place"


@pytest.mark.parametrize("before_layout, after_layout", [({}, {}), ({"max_shard_size": "20KB"}, {}),
                                                         ({"max_shard_size": "20KB"}, {"max_shard_size": "30KB"})])
def test_save_over_a_loaded_checkpoint_replaces_its_files(tmp_path, tiny_llama_config, before_layout, after_layout):
    folder = tmp_path / "ckpt"
    tiny(tiny_llama_config, seed=0).save_pretrained(folder, **before_layout)
    loaded = pretrained.LlamaForCausalLM.from_pretrained(folder)  # zero-copy: maps the files
    expected = logits(loaded)
    values = {k: v.clone() for k, v in loaded.state_dict().items()}
    old = keep_old_files(folder, tmp_path / "old")

    new = tiny(tiny_llama_config, seed=1)
    new.save_pretrained(folder, **after_layout)
    assert_old_files_untouched(old, tmp_path / "old")
    for name in old:
        if (folder / name).exists() and name.endswith(".safetensors"):
            assert (folder / name).stat().st_ino != old[name][0], f"{name} kept its inode"
    torch.testing.assert_close(logits(loaded), expected, rtol=0, atol=0)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, values[k]), k
    torch.testing.assert_close(logits(pretrained.LlamaForCausalLM.from_pretrained(folder)), logits(new),
                               rtol=0, atol=0)


def folder_state(folder: Path) -> dict[str, tuple]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.iterdir())}


def test_push_to_hub_never_writes_into_the_local_folder(tmp_path, tiny_llama_config, hub_server, hub_cache):
    token = hub_server.token
    repo = f"test-org/inplace-{uuid.uuid4().hex[:6]}"
    folder = tmp_path / "ckpt"
    tiny(tiny_llama_config, seed=0).save_pretrained(folder)
    model = pretrained.LlamaForCausalLM.from_pretrained(folder)  # maps the folder's weights
    expected = logits(model)
    state = folder_state(folder)

    push_folder(folder, repo, token=token)  # a folder as it is: read, never written
    model.push_to_hub(repo, token=token, max_shard_size="20KB")  # saves into a temporary folder of its own
    assert folder_state(folder) == state
    assert set(os.listdir(folder)) == set(state)

    old = keep_old_files(folder, tmp_path / "old")
    changed = tiny(tiny_llama_config, seed=1)
    changed.save_pretrained(folder, push_to_hub=True, repo_id=repo, token=token)  # the save renames, the push reads
    assert_old_files_untouched(old, tmp_path / "old")
    pushed = pretrained.LlamaForCausalLM.from_pretrained(repo)
    torch.testing.assert_close(logits(pushed), logits(changed), rtol=0, atol=0)
    torch.testing.assert_close(logits(model), expected, rtol=0, atol=0)
