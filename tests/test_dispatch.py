"""Loading onto a device plan and running on it: every strategy and offload gives the all-in-memory outputs.

CPU-only here: "disk" weights are mapped views of safetensors files, paged in before their block runs and released
after. The GPU path (weights streamed in per block) is exercised on the CPU with `force_stream=True`; the real
CUDA tests skip cleanly where no GPU is present.
"""

from __future__ import annotations

import os

import pytest
import torch

from pretrained import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from pretrained.dispatch.hooks import PageInOut, StreamIn, attach_hooks
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
