"""Sharded over devices: `from_pretrained(..., mesh=Mesh(...))` places each parameter in the NamedSharding the
family's partition plan gives it (the PyTorch tensor-parallel plan: `LlamaConfig.base_model_tp_plan`), each device
reading only its slice. On the CPU, in a subprocess with two host devices: outputs equal the unsharded model's and
each device holds about half the bytes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("flax", reason="jax/flax not installed (pip install pretrained[flax])")
import torch  # noqa: E402

import pretrained  # noqa: E402

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from jax.sharding import Mesh
    from pretrained import FlaxAutoModelForCausalLM
    from pretrained.flax.sharding import bytes_per_device
    folder = sys.argv[1]
    assert len(jax.devices()) == 2, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("model",))
    plain = FlaxAutoModelForCausalLM.from_pretrained(folder)
    sharded = FlaxAutoModelForCausalLM.from_pretrained(folder, mesh=mesh)
    ids = np.arange(2, 18, dtype=np.int32).reshape(2, 8)
    diff = float(np.abs(np.asarray(sharded(ids).logits) - np.asarray(plain(ids).logits)).max())
    attn = sharded.params["model"]["layers"]["0"]["self_attn"]
    mlp = sharded.params["model"]["layers"]["0"]["mlp"]
    picked = [("q", attn["q_proj"]["kernel"]), ("o", attn["o_proj"]["kernel"]), ("down", mlp["down_proj"]["kernel"]),
              ("norm", sharded.params["model"]["norm"]["weight"]), ("head", sharded.params["lm_head"]["kernel"])]
    specs = {name: list(x.sharding.spec) for name, x in picked}
    shard_shapes = sorted({tuple(s.data.shape) for s in attn["q_proj"]["kernel"].addressable_shards})
    total = sum(x.nbytes for x in jax.tree_util.tree_leaves(plain.params))
    per_device = sorted(bytes_per_device(sharded.params).values())
    model, params = FlaxAutoModelForCausalLM.from_pretrained(folder, mesh=mesh, _do_init=False)
    diff_no_init = float(np.abs(np.asarray(model(ids, params=params).logits) - np.asarray(plain(ids).logits)).max())
    base_only = FlaxAutoModelForCausalLM.from_pretrained(sys.argv[2], mesh=mesh)  # lm_head initialised on the mesh
    fresh_head = base_only.params["lm_head"]["kernel"]
    print(json.dumps({"diff": diff, "diff_no_init": diff_no_init, "specs": specs, "q_shards": shard_shapes,
                      "total": total, "per_device": per_device, "fresh_head": list(fresh_head.sharding.spec),
                      "fresh_missing": base_only.loading_info.missing_keys}))
""")


def test_mesh_places_each_slice(tmp_path):
    torch.manual_seed(0)
    config = pretrained.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2)
    pretrained.LlamaForCausalLM.from_config(config).save_pretrained(tmp_path / "lm")
    pretrained.LlamaModel.from_config(config).save_pretrained(tmp_path / "base")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "lm"), str(tmp_path / "base")],
                         capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    r = json.loads(run.stdout.strip().splitlines()[-1])
    assert r["diff"] < 1e-5 and r["diff_no_init"] < 1e-5
    # colwise: output features split (the Flax kernel's last axis); rowwise: input features; the rest replicated
    assert r["specs"] == {"q": [None, "model"], "o": ["model", None], "down": ["model", None], "norm": [],
                          "head": [None, "model"]}
    assert r["q_shards"] == [[64, 32]]  # each device holds half of q_proj's output features
    replicated = 4 * 64 * 5  # the five norms stay whole on every device (the embedding splits by vocabulary)
    assert r["per_device"] == [replicated + (r["total"] - replicated) // 2] * 2
    assert r["per_device"][0] < 0.6 * r["total"]
    assert r["fresh_missing"] == ["lm_head/kernel"] and r["fresh_head"] == [None, "model"]
