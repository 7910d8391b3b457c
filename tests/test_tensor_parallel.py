"""Tensor parallelism (`from_pretrained(..., tp_plan="auto")` under torchrun): one `torchrun --nproc-per-node 2`
launch (gloo, 127.0.0.1, a free port, a bounded timeout, the whole process group killed on timeout) runs every
check in `tests/tp_worker.py` on tiny checkpoints written by the reference; the tests here compare what each rank
recorded with a single-process load: logits (fp32, atol 1e-5), greedy / static-cache / left-padded generation, local
shapes and slices (they concatenate to the checkpoint's tensor), per-rank layer bytes, save -> single-process load,
and the checks that fail before any rendezvous (head divisibility, plan entries, styles, tp_size).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import warnings

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import pretrained
from pretrained import AutoModelForCausalLM
from pretrained.distributed import plan as tp_plan
from pretrained.errors import TensorParallelError

transformers = pytest.importorskip("transformers")

WORKER = os.path.join(os.path.dirname(__file__), "tp_worker.py")
TIMEOUT_S = 420
TINY = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.2)
IDS = [[1, 5, 9, 33, 70, 101, 127, 2], [4, 8, 15, 16, 23, 42, 99, 3]]
PADDED = [[0, 0, 0, 17, 29, 64], [11, 12, 13, 14, 15, 16]]
MASK = [[0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]]
NEW_TOKENS = 6
# (name, reference class, config class, config, seed): Llama tied with biases on every projection (o_proj's bias is
# added once, after the all-reduce), Qwen2 (q/k/v biases split with their rows), Gemma (scaled, tied embedding),
# Mistral (sliding window).
MODELS = [
    ("llama", "LlamaForCausalLM", "LlamaConfig", dict(TINY, tie_word_embeddings=True, attention_bias=True), 0),
    ("qwen2", "Qwen2ForCausalLM", "Qwen2Config", dict(TINY, tie_word_embeddings=False), 1),
    ("gemma", "GemmaForCausalLM", "GemmaConfig", dict(TINY, head_dim=8), 2),
    ("mistral", "MistralForCausalLM", "MistralConfig", dict(TINY, sliding_window=4), 3),
]
SPLIT_DIMS = {"model.layers.0.self_attn.q_proj.weight": 0, "model.layers.0.self_attn.k_proj.weight": 0,
              "model.layers.0.self_attn.o_proj.weight": 1, "model.layers.0.mlp.down_proj.weight": 1,
              "model.layers.0.mlp.up_proj.weight": 0, "model.embed_tokens.weight": 0, "lm_head.weight": 0,
              "model.layers.0.self_attn.q_proj.bias": 0}
# a dict plan overrides single entries of the family's: the MLP's input projections whole on every rank, its output
# projection splitting a whole input itself
CUSTOM_PLAN = {"model.layers.*.mlp.gate_proj": "replicate", "model.layers.*.mlp.up_proj": "replicate",
               "model.layers.*.mlp.down_proj": "rowwise_split_input"}
WHOLE = ("model.layers.0.self_attn.o_proj.bias", "model.norm.weight")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_reference(root, name, cls, config_cls, config, seed, **save) -> str:
    torch.manual_seed(seed)
    model = getattr(transformers, cls)(getattr(transformers, config_cls)(**config)).eval()
    with torch.no_grad():  # biases and norm scales start at 0 and 1: make them visible (a bias added twice shows)
        for n, p in model.named_parameters():
            if n.endswith("bias") or "norm" in n:
                p.add_(torch.randn_like(p) * 0.2)
    path = str(root / name)
    model.save_pretrained(path, **save)
    return path


def torchrun(script_args: list[str], nproc: int = 2, timeout: float = TIMEOUT_S, env: dict | None = None):
    """`torchrun --nproc-per-node nproc` on 127.0.0.1 with gloo; on timeout the whole process group is killed."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr",
           "127.0.0.1", "--master-port", str(_free_port()), *script_args]
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                                "MASTER_PORT")}
    env = {**base, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", **(env or {})}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish in {timeout} s (killed):\n{out[-4000:]}")
    return proc.returncode, out


@pytest.fixture(scope="module")
def tp_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tp")
    paths = {name: _write_reference(root, name, *rest, **({"max_shard_size": "20KB"} if name == "qwen2" else {}))
             for name, *rest in MODELS}  # Qwen2 in shards, with an index
    paths["kv3"] = _write_reference(root, "kv3", "LlamaForCausalLM", "LlamaConfig",
                                    dict(TINY, hidden_size=48, num_attention_heads=6, num_key_value_heads=3), 4)
    paths["gpt2"] = _write_reference(root, "gpt2", "GPT2LMHeadModel", "GPT2Config",
                                     dict(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=64), 5)
    other = _write_reference(root, "other", "LlamaForCausalLM", "LlamaConfig",  # other shapes, llama's config
                             dict(TINY, tie_word_embeddings=True, attention_bias=True, intermediate_size=96), 6)
    shutil.copy(os.path.join(paths["llama"], "config.json"), os.path.join(other, "config.json"))
    paths["llama_bin"] = str(root / "llama_bin")  # a pickle checkpoint: no byte layout, slices cut from the tensor
    AutoModelForCausalLM.from_pretrained(paths["llama"]).save_pretrained(paths["llama_bin"], safe_serialization=False)
    out = root / "out"
    out.mkdir()
    spec = {
        "models": [{"name": "llama", "path": paths["llama"], "save": True},
                   {"name": "qwen2", "path": paths["qwen2"], "distributed_config": True},
                   {"name": "gemma", "path": paths["gemma"]},
                   {"name": "mistral", "path": paths["mistral"]},
                   {"name": "custom", "path": paths["llama"], "tp_plan": CUSTOM_PLAN},
                   {"name": "llama_bin", "path": paths["llama_bin"]},
                   {"name": "llama_bf16", "path": paths["llama"], "bf16": True},
                   {"name": "llama_nommap", "path": paths["llama"], "bf16": True, "disable_mmap": True}],
        "errors": [
            {"name": "heads", "path": paths["kv3"], "kwargs": {"tp_plan": "auto"}},
            {"name": "no_module", "path": paths["llama"],
             "kwargs": {"tp_plan": {"model.layers.*.self_attn.qproj": "colwise"}}},
            {"name": "style", "path": paths["llama"],
             "kwargs": {"tp_plan": {"model.layers.*.self_attn.q_proj": "sideways"}}},
            {"name": "tp_size", "path": paths["llama"], "kwargs": {"tp_plan": "auto", "tp_size": 3}},
            {"name": "device_map", "path": paths["llama"], "kwargs": {"tp_plan": "auto", "device_map": "cpu"}},
            {"name": "no_plan", "path": paths["gpt2"], "kwargs": {"tp_plan": "auto"}},
        ],
        "rank_errors": [{"name": "one_rank", "paths": [paths["llama"], other], "kwargs": {"tp_plan": "auto"}}],
        "ids": IDS, "padded": PADDED, "mask": MASK, "new_tokens": NEW_TOKENS,
    }
    (root / "spec.json").write_text(json.dumps(spec))
    code, log = torchrun([WORKER, str(root / "spec.json"), str(out)])
    ranks = []
    for r in range(2):
        f = out / f"rank{r}.json"
        assert f.exists(), f"rank {r} wrote no results (exit {code}):\n{log[-4000:]}"
        ranks.append(json.loads(f.read_text()))
    for rank in ranks:
        for name, m in rank["models"].items():
            assert "failed" not in m, f"rank {rank['rank']} {name}:\n{m['failed']}"
    assert code == 0, log[-4000:]
    return {"paths": paths, "out": out, "ranks": ranks}


def _single(path: str, **kwargs):
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


@pytest.mark.parametrize("name", [m[0] for m in MODELS])
def test_logits_and_generation_equal_single_process(tp_run, name):
    model = _single(tp_run["paths"][name])
    ids = torch.tensor(IDS)
    with torch.no_grad():
        want = model(ids).logits
    ref_cls = getattr(transformers, next(m[1] for m in MODELS if m[0] == name))
    with torch.no_grad():
        ref = ref_cls.from_pretrained(tp_run["paths"][name]).eval()(ids).logits
    greedy = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False).tolist()
    padded = model.generate(torch.tensor(PADDED), attention_mask=torch.tensor(MASK), max_new_tokens=NEW_TOKENS,
                            do_sample=False).tolist()
    for rank in tp_run["ranks"]:
        got = rank["models"][name]
        assert got["tp_size"] == 2
        logits = torch.tensor(got["logits"])
        assert logits.shape == want.shape  # full logits on every rank
        torch.testing.assert_close(logits, want, atol=1e-5, rtol=0)
        torch.testing.assert_close(logits, ref, atol=1e-5, rtol=0)
        assert got["greedy"] == greedy
        assert got["greedy_static"] == greedy  # the static cache holds the local kv heads
        assert got["padded"] == padded


def test_a_pickle_checkpoint_splits_too(tp_run):
    assert any(f.endswith(".bin") for f in os.listdir(tp_run["paths"]["llama_bin"]))
    model = _single(tp_run["paths"]["llama"])
    with torch.no_grad():
        want = model(torch.tensor(IDS)).logits
    for rank in tp_run["ranks"]:
        got = rank["models"]["llama_bin"]
        assert got["shapes"]["model.layers.0.self_attn.o_proj.weight"] == [32, 16]
        torch.testing.assert_close(torch.tensor(got["logits"]), want, atol=1e-5, rtol=0)


def test_a_dict_plan_overrides_entries(tp_run):
    model = _single(tp_run["paths"]["llama"])
    with torch.no_grad():
        want = model(torch.tensor(IDS)).logits
    for rank in tp_run["ranks"]:
        got = rank["models"]["custom"]
        assert got["tp_plan"]["model.layers.*.mlp.down_proj"] == "rowwise_split_input"
        assert got["tp_plan"]["model.layers.*.self_attn.q_proj"] == "colwise"  # the family's entries stay
        assert got["shapes"]["model.layers.0.mlp.up_proj.weight"] == [64, 32]  # whole
        assert got["shapes"]["model.layers.0.mlp.down_proj.weight"] == [32, 32]  # half its input features
        torch.testing.assert_close(torch.tensor(got["logits"]), want, atol=1e-5, rtol=0)


def test_plan_and_split_classes(tp_run):
    got = tp_run["ranks"][0]["models"]["llama"]
    assert got["tp_plan"]["model.layers.*.self_attn.q_proj"] == "colwise"
    assert got["tp_plan"]["model.layers.*.mlp.down_proj"] == "rowwise"
    assert got["tp_plan"]["model.embed_tokens"] == "embedding_rowwise"
    assert got["tp_plan"]["lm_head"] == "colwise_gather_output"
    assert got["classes"] == {"model.embed_tokens": "VocabSplitEmbedding", "lm_head": "GatheredLinear",
                              "model.layers.0.self_attn.o_proj": "RowwiseLinear"}
    gemma = tp_run["ranks"][1]["models"]["gemma"]["classes"]["model.embed_tokens"]
    assert gemma == "VocabSplitEmbeddingGemmaTextScaledWordEmbedding"  # the family's class stays outermost


@pytest.mark.parametrize("name", ["llama", "qwen2", "llama_bf16", "llama_nommap"])
def test_local_slices_concatenate_to_checkpoint(tp_run, name):
    path = tp_run["paths"][name.split("_")[0]]
    dtype = torch.float32 if name in ("llama", "qwen2") else torch.bfloat16
    parts = [load_file(str(tp_run["out"] / f"rank{r}-{name}.safetensors")) for r in range(2)]
    stored = {}
    for file in sorted(f for f in os.listdir(path) if f.endswith(".safetensors")):
        with safe_open(os.path.join(path, file), "pt") as f:
            stored.update({k: f.get_tensor(k) for k in f.keys()})
    if "lm_head.weight" not in stored:  # tied: the head is the embedding
        stored["lm_head.weight"] = stored["model.embed_tokens.weight"]
    checked = 0
    for key, dim in SPLIT_DIMS.items():
        if key not in parts[0]:
            continue
        whole = stored[key].to(dtype)
        for part in parts:
            assert part[key].shape[dim] * 2 == whole.shape[dim]  # halved along the split dim
            assert part[key].dtype == dtype  # converted as it was read
        assert torch.equal(torch.cat([p[key] for p in parts], dim=dim), whole), key
        checked += 1
    for key in WHOLE:
        if key in parts[0]:
            for part in parts:
                assert torch.equal(part[key], stored[key].to(dtype)), key
    assert checked >= 7


def test_each_rank_holds_about_half_the_layer_bytes(tp_run):
    whole = sum(p.nbytes for n, p in _single(tp_run["paths"]["llama"]).named_parameters() if ".layers." in n)
    for rank in tp_run["ranks"]:
        got = rank["models"]["llama"]["layer_bytes"]
        assert 0.45 * whole <= got <= 0.55 * whole, (got, whole)


def test_save_gathers_an_ordinary_checkpoint(tp_run):
    saved = tp_run["out"] / "saved-llama"
    config = json.loads((saved / "config.json").read_text())
    assert not {k for k in config if k.startswith("tp_") or "distributed" in k or "plan" in k}, sorted(config)
    original, again = _single(tp_run["paths"]["llama"]), _single(str(saved))
    ids = torch.tensor(IDS)
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, original(ids).logits, atol=1e-6, rtol=0)
    written = load_file(str(saved / "model.safetensors"))
    assert "lm_head.weight" not in written  # tied: written once, as the reference writes it
    for key, value in original.state_dict().items():
        if key in written:
            assert torch.equal(written[key], value), key


def test_checks_fail_alike_on_every_rank_before_any_rendezvous(tp_run):
    for rank in tp_run["ranks"]:
        assert rank["group_after_errors"] is False
        errors = {k: v for k, v in rank["errors"].items() if k != "one_rank"}  # that one: the next test
        for e in errors.values():
            assert e["type"] == "TensorParallelError" and "ValueError" in e["mro"], e
        assert "num_key_value_heads=3" in errors["heads"]["message"] and "2" in errors["heads"]["message"]
        assert "num_attention_heads=6" in errors["heads"]["message"]
        assert "'model.layers.*.self_attn.qproj'" in errors["no_module"]["message"]
        assert "'sideways'" in errors["style"]["message"]
        assert "tp_size=3" in errors["tp_size"]["message"]
        assert "device_map" in errors["device_map"]["message"]
        assert "GPT2LMHeadModel declares no tensor-parallel plan" in errors["no_plan"]["message"]
        assert errors == {k: v for k, v in tp_run["ranks"][0]["errors"].items() if k != "one_rank"}


def test_a_load_failing_on_one_rank_fails_on_every_rank(tp_run):
    healthy, broken = (rank["errors"]["one_rank"] for rank in tp_run["ranks"])
    assert broken["type"] == "ShapeMismatchError"  # its own files do not fit the config
    assert healthy["type"] == "TensorParallelError" and "1 other rank(s) failed" in healthy["message"]


def test_world_size_one_is_an_ordinary_load(tmp_path, monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    path = _write_reference(tmp_path, "llama", "LlamaForCausalLM", "LlamaConfig", dict(TINY), 0)
    model = _single(path, tp_plan="auto")
    plain = _single(path)
    assert model.tp_size is None and plain.tp_size is None
    assert model.tp_plan["lm_head"] == "colwise_gather_output"  # the plan it would apply
    assert type(model.model.layers[0].self_attn.o_proj) is torch.nn.Linear
    ids = torch.tensor(IDS)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, plain(ids).logits)
    import torch.distributed as dist

    assert not dist.is_initialized()
    assert _single(path, distributed_config=pretrained.DistributedConfig(tp_plan="auto")).tp_size is None


# ---- the plan itself: pure functions -------------------------------------------------------------------------------

MODULES = ["", "model", "model.embed_tokens", "model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj",
           "model.layers.0.mlp.down_proj", "lm_head"]


def test_plan_resolution_and_merging():
    family = {"model.layers.*.self_attn.q_proj": "colwise", "model.layers.*.mlp.down_proj": "rowwise",
              "model.score": "colwise"}
    assert tp_plan.merge_plan(family, "auto") == (family, {})
    merged, given = tp_plan.merge_plan(family, {"lm_head": "colwise_gather_output"})
    assert merged == {**family, "lm_head": "colwise_gather_output"} and given == {"lm_head": "colwise_gather_output"}
    assert tp_plan.merge_plan(family, {}) == ({}, {})
    styles = tp_plan.check_patterns(merged, MODULES, given)  # the family's "model.score" names nothing: dropped
    assert styles == {"model.layers.0.self_attn.q_proj": "colwise", "model.layers.1.self_attn.q_proj": "colwise",
                      "model.layers.0.mlp.down_proj": "rowwise", "lm_head": "colwise_gather_output"}
    with pytest.raises(TensorParallelError, match="'model.layers.\\*.attn'"):
        tp_plan.check_patterns({"model.layers.*.attn": "colwise"}, MODULES, {"model.layers.*.attn": "colwise"})
    with pytest.raises(TensorParallelError, match="'diagonal'"):
        tp_plan.check_styles({"lm_head": "diagonal"})
    with pytest.raises(TensorParallelError):
        tp_plan.merge_plan(family, "everything")


def test_split_dims_and_head_checks():
    assert tp_plan.split_dim("colwise", "weight", 2) == 0 and tp_plan.split_dim("colwise", "bias", 1) == 0
    assert tp_plan.split_dim("rowwise", "weight", 2) == 1 and tp_plan.split_dim("rowwise", "bias", 1) is None
    assert tp_plan.split_dim("embedding_rowwise", "weight", 2) == 0 and tp_plan.split_dim(None, "weight", 2) is None
    config = pretrained.LlamaConfig(**dict(TINY, num_attention_heads=8, num_key_value_heads=2))
    tp_plan.check_heads(config, 2)
    with pytest.raises(TensorParallelError, match="num_attention_heads=8 and num_key_value_heads=2") as e:
        tp_plan.check_heads(config, 4)
    assert "num_key_value_heads is not divisible by 4" in str(e.value)
    assert isinstance(e.value, ValueError)


def test_plan_module_imports_no_framework():
    code = ("import sys, pretrained.distributed.plan, pretrained.distributed.config; "
            "print(sorted(m for m in ('torch', 'jax', 'tensorflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_nccl_on_two_gpus(tmp_path):
    path = _write_reference(tmp_path, "llama", "LlamaForCausalLM", "LlamaConfig",
                            dict(TINY, tie_word_embeddings=True), 0)
    out = tmp_path / "out"
    out.mkdir()
    spec = {"models": [{"name": "llama", "path": path, "save": True}], "errors": [], "ids": IDS, "padded": PADDED,
            "mask": MASK, "new_tokens": NEW_TOKENS}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    code, log = torchrun([WORKER, str(tmp_path / "spec.json"), str(out)])
    assert code == 0, log[-4000:]
    model = _single(path)
    ids = torch.tensor(IDS)
    with torch.no_grad():
        want = model(ids).logits
    for r in range(2):
        got = json.loads((out / f"rank{r}.json").read_text())["models"]["llama"]
        torch.testing.assert_close(torch.tensor(got["logits"]), want, atol=1e-4, rtol=0)
        assert got["greedy"] == model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False).tolist()


def test_sizes_that_do_not_divide():
    from pretrained.distributed.tensor_parallel import _check_sizes

    with torch.device("meta"):
        modules = {"embed": torch.nn.Embedding(127, 8), "head": torch.nn.Linear(8, 127, bias=False),
                   "up": torch.nn.Linear(8, 12), "down": torch.nn.Linear(15, 8)}
    styles = {"embed": "embedding_rowwise", "head": "colwise_gather_output", "up": "colwise"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = _check_sizes(modules, styles, 2)
    assert [str(w.message).split(" (")[0] for w in caught] == ["Tensor-parallel plan: 'embed'",
                                                                "Tensor-parallel plan: 'head'"]
    assert "127 rows, not divisible by 2 ranks; it is replicated" in str(caught[0].message)
    assert got == {"embed": "replicate", "head": "replicate", "up": "colwise"}  # an odd vocabulary stays whole
    with pytest.raises(TensorParallelError, match="'down.weight' \\(rowwise\\) splits a dimension of 15"):
        _check_sizes(modules, {"down": "rowwise"}, 2)
