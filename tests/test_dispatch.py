"""Loading onto a device plan and running on it: every strategy and offload gives the all-in-memory outputs.

CPU-only here: "disk" weights are mapped views of safetensors files, paged in before their block runs and released
after. The GPU path (weights streamed in per block) is exercised on the CPU with `force_stream=True`; the real
CUDA tests skip cleanly where no GPU is present.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from pretrained import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from pretrained.checkpoint.reader import read_safetensors_header
from pretrained.dispatch import offload
from pretrained.dispatch.hooks import PageInOut, StreamIn, attach_hooks
from pretrained.dispatch.offload import DiskStore, MappedRange, Pager, pmd_mapped_bytes, whole_huge_pages
from pretrained.errors import DeviceMapError

LAYERS = 4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A bf16 tiny Llama on disk, its in-memory outputs, and its inputs."""
    folder = tmp_path_factory.mktemp("ckpt")
    cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS,
                      num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2)
    torch.manual_seed(0)
    LlamaForCausalLM.from_config(cfg, dtype=torch.bfloat16).save_pretrained(folder)
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = AutoModelForCausalLM.from_pretrained(folder)(ids).logits
    return folder, ids, logits


def logits_of(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("strategy", ["auto", "balanced", "balanced_low_0", "sequential"])
def test_every_strategy_with_disk_offload_equals_in_memory(checkpoint, strategy):
    folder, ids, expected = checkpoint
    model = AutoModelForCausalLM.from_pretrained(folder, device_map=strategy, max_memory={"cpu": 45_000})
    devices = set(model.hf_device_map.values())
    assert devices == {"cpu", "disk"}, model.hf_device_map
    assert all(isinstance(h, PageInOut) for h in model._dispatch_hooks) and model._dispatch_hooks
    torch.testing.assert_close(logits_of(model, ids), expected, rtol=0, atol=0)
    torch.testing.assert_close(logits_of(model, ids), expected, rtol=0, atol=0)  # pages released, then back


def test_disk_weights_map_the_checkpoint_itself(checkpoint, tmp_path):
    """Same dtype: no copy and no offload folder needed; every disk tensor is backed by a checkpoint file."""
    folder, ids, expected = checkpoint
    model = AutoModelForCausalLM.from_pretrained(folder, device_map={"": "disk"})
    store = model._disk_store
    assert set(store.maps) == {str(folder / "model.safetensors")} and store.written == []
    assert len(store.ranges) == len(model.state_dict()) - (1 if model.config.tie_word_embeddings else 0)
    assert all(len(h.ranges) > 0 for h in model._dispatch_hooks)
    torch.testing.assert_close(logits_of(model, ids), expected, rtol=0, atol=0)


def test_disk_with_dtype_change_needs_an_offload_folder(checkpoint, tmp_path):
    folder, ids, _ = checkpoint
    with pytest.raises(DeviceMapError, match="offload_folder"):
        AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, device_map={"": "disk"})
    offload = tmp_path / "offload"
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, device_map={"": "disk"},
                                                 offload_folder=offload)
    assert any(name.endswith(".safetensors") for name in os.listdir(offload))
    in_memory = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    torch.testing.assert_close(logits_of(model, ids), logits_of(in_memory, ids), rtol=0, atol=0)


def test_dict_map_is_honoured_and_recorded(checkpoint):
    folder, ids, expected = checkpoint
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                  "model.layers.2": "disk", "model.layers.3": "cpu", "model.norm": "cpu",
                  "lm_head": "disk"}  # model.rotary_emb holds only a computed buffer: it may be left out
    model = AutoModelForCausalLM.from_pretrained(folder, device_map=device_map)
    assert model.hf_device_map == device_map
    assert [type(h.module).__name__ for h in model._dispatch_hooks] == ["LlamaDecoderLayer", "LlamaDecoderLayer",
                                                                        "Linear"]
    assert model._dispatch_hooks[0].next is model._dispatch_hooks[1]  # prefetch chain in run order
    torch.testing.assert_close(logits_of(model, ids), expected, rtol=0, atol=0)


def test_streaming_path_used_for_gpus_gives_same_outputs(checkpoint):
    """CPU/disk weights copied in before each block and dropped after — the GPU path, run on the CPU."""
    folder, ids, expected = checkpoint
    model = AutoModelForCausalLM.from_pretrained(folder, device_map={"": "cpu", "model.layers.1": "disk",
                                                                     "model.layers.2": "disk"})
    for h in model._dispatch_hooks:
        h.remove()
    hooks = attach_hooks(model, {"model.layers.0": "cpu", "model.layers.1": "disk", "lm_head": "cpu"},
                         None, force_stream=True)
    assert all(isinstance(h, StreamIn) for h in hooks)
    before = {n: p.data_ptr() for n, p in model.named_parameters()}
    torch.testing.assert_close(logits_of(model, ids), expected, rtol=0, atol=0)
    assert {n: p.data_ptr() for n, p in model.named_parameters()} == before  # stored tensors back in place


def test_cache_works_on_an_offloaded_model(checkpoint):
    folder, ids, expected = checkpoint
    model = AutoModelForCausalLM.from_pretrained(folder, device_map="sequential", max_memory={"cpu": 45_000})
    with torch.no_grad():
        first = model(ids[:, :-1], use_cache=True)
        step = model(ids[:, -1:], past_key_values=first.past_key_values).logits
    torch.testing.assert_close(step[:, -1], expected[:, -1], rtol=1e-2, atol=1e-2)  # bf16: another summation order


def test_single_device_gets_no_hooks_and_moves_freely(checkpoint):
    folder, ids, expected = checkpoint
    model = AutoModelForCausalLM.from_pretrained(folder, device_map="cpu")
    assert model.hf_device_map == {"": "cpu"} and model._dispatch_hooks == []
    model.to(torch.float32)  # allowed: nothing is dispatched


def test_dispatched_model_refuses_to_move(checkpoint):
    folder, _, _ = checkpoint
    model = AutoModelForCausalLM.from_pretrained(folder, device_map="auto", max_memory={"cpu": 45_000})
    for move in (lambda: model.to("cpu"), model.half, model.float, model.cpu):
        with pytest.raises(DeviceMapError, match="dispatched"):
            move()


def test_saving_a_dispatched_model_writes_the_full_checkpoint(checkpoint, tmp_path):
    folder, ids, expected = checkpoint
    model = AutoModelForCausalLM.from_pretrained(folder, device_map="auto", max_memory={"cpu": 45_000})
    model.save_pretrained(tmp_path / "saved", max_shard_size="20KB")
    again, info = AutoModelForCausalLM.from_pretrained(tmp_path / "saved", output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    torch.testing.assert_close(logits_of(again, ids), expected, rtol=0, atol=0)
    transformers = pytest.importorskip("transformers")
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    torch.testing.assert_close(logits_of(ref, ids), expected, rtol=0, atol=0)


@pytest.mark.parametrize("device_map, match", [
    ({"model.embed_tokens": "cpu"}, "no device for"),
    ({"": "cpu", "model.nope": "disk"}, "not a module"),
    ({"": "tpu"}, "tpu"),
])
def test_bad_maps_say_what_and_how(checkpoint, device_map, match):
    folder, _, _ = checkpoint
    with pytest.raises(DeviceMapError, match=match):
        AutoModelForCausalLM.from_pretrained(folder, device_map=device_map)


def test_max_memory_without_device_map_is_an_error(checkpoint):
    with pytest.raises(DeviceMapError, match="device_map"):
        AutoModelForCausalLM.from_pretrained(checkpoint[0], max_memory={"cpu": "1GB"})


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
def test_cuda_auto_map_equals_cpu(checkpoint):
    folder, ids, expected = checkpoint
    model = AutoModelForCausalLM.from_pretrained(folder, device_map="auto")
    assert set(model.hf_device_map.values()) == {0}
    torch.testing.assert_close(logits_of(model, ids.cuda()).cpu(), expected, rtol=2e-2, atol=2e-2)


@cuda
def test_cuda_with_cpu_offload_streams_weights(checkpoint):
    folder, ids, expected = checkpoint
    model = AutoModelForCausalLM.from_pretrained(folder, device_map="sequential",
                                                 max_memory={0: 30_000, "cpu": "1GB"})
    assert "cpu" in model.hf_device_map.values()
    assert any(isinstance(h, StreamIn) for h in model._dispatch_hooks)
    torch.testing.assert_close(logits_of(model, ids.cuda()).cpu(), expected, rtol=2e-2, atol=2e-2)


# --- Disk offload and huge pages ---------------------------------------------------------------------------------------

MiB = 1 << 20
HUGE = 2 * MiB
linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise, /proc/self/smaps: Linux only")


def test_whole_huge_pages_keeps_only_the_aligned_interior():
    base = 0x7F00_0000_0000  # 2 MB-aligned, like a large mapping's start
    cases = [
        (MappedRange(base + 4096, 3 * HUGE), [MappedRange(base + HUGE, 2 * HUGE)]),  # both edges cut
        (MappedRange(base, 2 * HUGE), [MappedRange(base, 2 * HUGE)]),  # already aligned: unchanged
        (MappedRange(base, 2 * HUGE + 4096), [MappedRange(base, 2 * HUGE)]),  # only the tail cut
        (MappedRange(base + HUGE - 4096, HUGE + 8192), [MappedRange(base + HUGE, HUGE)]),  # just one whole page
        (MappedRange(base + 4096, HUGE - 8192), []),  # smaller than a huge page
        (MappedRange(base + 4096, HUGE), []),  # huge-page sized but not aligned: no whole 2 MB inside
        (MappedRange(base + MiB, HUGE + MiB // 2), []),  # 2.5 MB across a boundary, yet no whole 2 MB inside
    ]
    for given, expected in cases:
        assert whole_huge_pages([given]) == expected, given
    everything = [given for given, _ in cases]
    assert whole_huge_pages(everything) == [r for _, kept in cases for r in kept]  # order kept, empties dropped
    assert whole_huge_pages([]) == []


def test_disk_offload_releases_only_whole_huge_pages(tmp_path, monkeypatch):
    """Blocks of a few MB on disk: every release (settle's and the forward's) covers whole, aligned 2 MB pages, so
    a huge mapping is never split; at least one release really happens; outputs are the in-memory ones."""
    cfg = LlamaConfig(vocab_size=128, hidden_size=512, intermediate_size=1408, num_hidden_layers=2,
                      num_attention_heads=8, num_key_value_heads=8)
    torch.manual_seed(0)
    LlamaForCausalLM.from_config(cfg, dtype=torch.float32).save_pretrained(tmp_path)
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(1))
    expected = logits_of(AutoModelForCausalLM.from_pretrained(tmp_path), ids)

    calls = []
    advise = Pager._advise

    def spy(ranges, advice):
        calls.extend((r.address, r.length, advice) for r in ranges)
        advise(ranges, advice)

    settled = []
    settle = DiskStore.settle

    def settle_spy(store, ranges):
        settled.append(ranges)
        return settle(store, ranges)

    monkeypatch.setattr(Pager, "_advise", staticmethod(spy))
    monkeypatch.setattr(DiskStore, "settle", settle_spy)
    model = AutoModelForCausalLM.from_pretrained(
        tmp_path, device_map={"": "cpu", "model.layers.0": "disk", "model.layers.1": "disk"})
    hooks = model._dispatch_hooks
    assert [type(h) for h in hooks] == [PageInOut, PageInOut]
    assert settled == [h.ranges for h in hooks]  # each disk block settled once, at load
    # the blocks' own ranges are not 2 MB-aligned: releasing them as they are would split huge mappings
    assert any(r.address % HUGE or r.length % HUGE for h in hooks for r in h.ranges)
    assert all(h.releasable for h in hooks)  # each block (~12 MB) holds whole huge pages
    at_load = [(a, n) for a, n, advice in calls if advice == mmap.MADV_DONTNEED]  # settle's releases
    assert at_load and all(a % HUGE == 0 and n % HUGE == 0 for a, n in at_load), at_load

    for _ in range(2):  # pages released after the first forward, brought back for the second
        calls.clear()
        torch.testing.assert_close(logits_of(model, ids), expected, rtol=0, atol=0)
        released = [(a, n) for a, n, advice in calls if advice == mmap.MADV_DONTNEED]
        assert released, "no pages were handed back"
        assert all(a % HUGE == 0 and n % HUGE == 0 and n > 0 for a, n in released), released
        inside = [(r.address, r.address + r.length) for h in hooks for r in h.ranges]
        assert all(any(lo <= a and a + n <= hi for lo, hi in inside) for a, n in released)


@linux
def test_pmd_mapped_bytes_reads_the_mapping_that_holds_an_address(tmp_path):
    path = tmp_path / "file.bin"
    path.write_bytes(os.urandom(4 * MiB))
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    try:
        buf = ctypes.c_char.from_buffer(mm)
        address = ctypes.addressof(buf)
        assert mm[0] == path.read_bytes()[0]  # one page mapped in
        for inside in (address, address + len(mm) // 2, address + len(mm) - 1):
            got = pmd_mapped_bytes(inside)
            assert isinstance(got, int) and 0 <= got <= len(mm), got
        del buf
    finally:
        mm.close()
    assert pmd_mapped_bytes(8) is None  # nothing is mapped at the zero page


def _write_in_small_writes(path: Path, name: str, tensor: torch.Tensor) -> None:
    """A one-tensor safetensors file written 4 KB a write (on ext4 the page cache then holds it in 4 KB folios),
    flushed to disk so that its pages can be dropped from the cache."""
    header = json.dumps({name: {"dtype": "F32", "shape": list(tensor.shape),
                                "data_offsets": [0, tensor.nbytes]}}).encode()
    header += b" " * (-len(header) % 8)
    data = len(header).to_bytes(8, "little") + header + tensor.numpy().tobytes()
    with open(path, "wb") as f:
        for i in range(0, len(data), 4096):
            f.write(data[i:i + 4096])
        f.flush()
        os.fsync(f.fileno())


def _populate(ranges: list[MappedRange]) -> bool:
    return all(offload._libc.madvise(r.address, r.length, offload._MADV_POPULATE_READ) == 0 for r in ranges)


def _huge_file_mappings_unsupported(folder: Path) -> str | None:
    """Why this kernel/filesystem cannot map a file with 2 MB entries at all (None if it can): a probe file, read
    fresh from disk into a MADV_HUGEPAGE map."""
    path = folder / "probe.bin"
    _write_in_small_writes(path, "probe", torch.zeros(2 * MiB))  # 8 MB
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        mm = mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
    finally:
        os.close(fd)
    try:
        if not hasattr(mmap, "MADV_HUGEPAGE"):
            return "no MADV_HUGEPAGE"
        mm.madvise(mmap.MADV_HUGEPAGE)
        buf = ctypes.c_char.from_buffer(mm)
        whole = whole_huge_pages([MappedRange(ctypes.addressof(buf), len(mm))])
        del buf
        if not _populate(whole):
            return "no MADV_POPULATE_READ (Linux < 5.14)"
        mapped = pmd_mapped_bytes(whole[0].address)
        if mapped is None:
            return "/proc/self/smaps reports no FilePmdMapped"
        if mapped < 0.9 * sum(r.length for r in whole):
            return f"a fresh read maps {mapped} of {sum(r.length for r in whole)} bytes with 2 MB entries here"
        return None
    finally:
        mm.close()
        os.unlink(path)


@pytest.fixture
def ext_folder():
    """A scratch folder in the repository's ignored bench/.cache (on the repository's filesystem, which unlike a
    tmpfs /tmp may hold files in large folios)."""
    root = Path(__file__).resolve().parents[1] / "bench" / ".cache"
    root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="test-settle-", dir=root))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@linux
def test_settle_rereads_a_block_cached_in_small_folios(ext_folder, monkeypatch):
    reason = _huge_file_mappings_unsupported(ext_folder)
    if reason:
        pytest.skip(f"kernel/filesystem cannot map file pages with 2 MB entries: {reason}")
    path = ext_folder / "weights.safetensors"
    original = torch.randn(4 * MiB, generator=torch.Generator().manual_seed(0))  # 16 MB of fp32
    _write_in_small_writes(path, "w", original)

    seen, fadvised = [], []
    measure, fadvise = offload.pmd_mapped_bytes, os.posix_fadvise

    def seen_spy(address):
        seen.append(measure(address))
        return seen[-1]

    def fadvise_spy(fd, offset, length, advice):
        fadvised.append((os.readlink(f"/proc/self/fd/{fd}"), offset, length, advice))
        return fadvise(fd, offset, length, advice)

    monkeypatch.setattr(offload, "pmd_mapped_bytes", seen_spy)
    monkeypatch.setattr(offload.os, "posix_fadvise", fadvise_spy)
    store = DiskStore()
    infos, _ = read_safetensors_header(str(path))
    t = store.view(infos["w"])
    ranges = store.pages([t])
    whole = whole_huge_pages(ranges)
    total = sum(r.length for r in whole)
    assert total >= 12 * MiB
    store.settle(ranges)
    monkeypatch.undo()

    assert len(seen) == 1 and seen[0] is not None
    base = store.bases[str(path)]
    if seen[0] < 0.9 * total:  # written 4 KB a write: the usual case on ext4
        assert fadvised == [(str(path), r.address - base, r.length, os.POSIX_FADV_DONTNEED) for r in whole]
        first = infos["w"].start - infos["w"].start % mmap.PAGESIZE
        assert all(first <= offset and offset + n <= infos["w"].start + infos["w"].nbytes
                   for _, offset, n, _ in fadvised)  # the tensor's own pages, nothing else of the file
    else:  # the cache already holds large folios: nothing to re-read
        assert fadvised == []
    assert _populate(whole)
    assert pmd_mapped_bytes(whole[0].address) >= 0.9 * total
    assert torch.equal(t, original)
    store.close()


@linux
def test_read_ahead_is_skipped_only_for_cached_pages(tmp_path, monkeypatch):
    """`bring_in` asks the kernel to read a block only when sampled pages of it are not in the page cache."""
    path = tmp_path / "weights.bin"
    path.write_bytes(os.urandom(4 * MiB))
    fd = os.open(path, os.O_RDONLY)
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    buf = ctypes.c_char.from_buffer(mm)
    try:
        ranges = [MappedRange(ctypes.addressof(buf), len(mm))]
        advised = []
        monkeypatch.setattr(Pager, "_advise", staticmethod(lambda rs, advice: advised.append(advice)))
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # clean and unmapped: evicted
        if Pager.cached(ranges):
            pytest.skip("the page cache kept the file after POSIX_FADV_DONTNEED; cannot test eviction here")
        Pager().bring_in(ranges)
        assert advised == [mmap.MADV_WILLNEED]
        os.pread(fd, len(mm), 0)  # read: cached again
        assert Pager.cached(ranges)
        advised.clear()
        Pager().bring_in(ranges)
        assert advised == []
    finally:
        del buf
        mm.close()
        os.close(fd)
