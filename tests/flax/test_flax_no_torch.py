"""The Flax path and the framework-neutral layer never import torch: a subprocess where `import torch` (and
transformers, tensorflow) fails loads a PyTorch-layout checkpoint into a Flax class, runs it (equal to the PyTorch
class, run here), saves it both ways and reads the saves back."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

pytest.importorskip("flax", reason="jax/flax not installed (pip install pretrained[flax])")
import torch  # noqa: E402

import pretrained  # noqa: E402
from blocking import BLOCKER  # noqa: E402
from flax_tf_common import neutral_modules, no_torch_llama_config, run_json_script  # noqa: E402

NEUTRAL = neutral_modules(["pretrained.flax", "pretrained.flax.msgpack", "pretrained.flax.convert"])

SCRIPT = BLOCKER + textwrap.dedent("""
    neutral, folder, out = json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
    for name in neutral:
        importlib.import_module(name)
    frameworks = sorted(m for m in ("jax", "flax", "torch") if m in sys.modules)
    import numpy as np
    from pretrained import FlaxAutoModelForCausalLM, FlaxLlamaForCausalLM
    ids = np.arange(2, 16, dtype=np.int32).reshape(2, 7)
    model = FlaxAutoModelForCausalLM.from_pretrained(folder)
    logits = np.asarray(model(ids).logits)
    model.save_pretrained(out + "/st")
    model.save_pretrained(out + "/mp", safe_serialization=False, max_shard_size="5KB")
    again = [np.abs(np.asarray(FlaxLlamaForCausalLM.from_pretrained(out + d)(ids).logits) - logits).max()
             for d in ("/st", "/mp")]
    _, params = FlaxLlamaForCausalLM.from_pretrained(folder, _do_init=False)
    print(json.dumps({"frameworks_after_neutral": frameworks, "logits": logits.tolist(),
                      "reload_diff": [float(d) for d in again],
                      "torch_loaded": [m for m in sys.modules if m.split(".")[0] in BLOCKED]}))
""")


def test_flax_load_forward_save_without_torch(tmp_path):
    torch.manual_seed(0)
    pt = pretrained.LlamaForCausalLM.from_config(no_torch_llama_config()).eval()
    pt.save_pretrained(tmp_path / "ckpt")
    ids = torch.arange(2, 16).reshape(2, 7)
    with torch.no_grad():
        expected = pt(ids).logits.numpy()
    result = run_json_script(SCRIPT, "torch,transformers,tensorflow", json.dumps(NEUTRAL), str(tmp_path / "ckpt"),
                             str(tmp_path), env={"JAX_PLATFORMS": "cpu"})
    assert result["frameworks_after_neutral"] == []  # the neutral layer imports no framework at all
    assert result["torch_loaded"] == []
    np.testing.assert_allclose(np.array(result["logits"], np.float32), expected, atol=1e-5, rtol=0)
    assert max(result["reload_diff"]) == 0.0
