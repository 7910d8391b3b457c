"""The device-map planner (pure): fake sizes, fake GPUs (no CUDA needed), accelerate as the oracle where the two
algorithms agree by design, and our own rule where they differ on purpose (see dispatch/plan.py's docstring)."""

from __future__ import annotations

import json
import re
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import pretrained
from pretrained.cli import main
from pretrained.dispatch.plan import (
    ModuleSizes,
    available_memory,
    device_for,
    infer_auto_device_map,
    normalize_device,
    parse_device_map,
    parse_max_memory,
    plan_device_map,
    sizes_from_model,
)
from pretrained.errors import DeviceMapError

GiB, GB = 2**30, 10**9


# ---- fake models -----------------------------------------------------------------------------------------------
def decoder(blocks=6, block=(50, 50), embed=100, head=100, norm=10, tie=False) -> ModuleSizes:
    """embed, `blocks` no-split Blocks (one tensor per entry of `block`), norm, head; head tied to embed if `tie`."""
    tensors = {"embed.weight": embed}
    for i in range(blocks):
        tensors.update({f"layers.{i}.t{j}.weight": n for j, n in enumerate(block)})
    tensors.update({"norm.weight": norm, "head.weight": 0 if tie else head})
    classes = {f"layers.{i}": "Block" for i in range(blocks)}
    return ModuleSizes(tensors, classes, [["embed.weight", "head.weight"]] if tie else ())


def where(plan, sizes):
    """tensor -> device under the plan's map."""
    return {t: device_for(t, plan.device_map) for t in sizes.tensors}


def check_plan(plan, sizes, no_split=("Block",)):
    """The invariants every plan keeps."""
    placed = where(plan, sizes)
    for tensor in sizes.tensors:  # exactly one entry covers each tensor
        covering = [k for k in plan.device_map if not k or tensor == k or tensor.startswith(k + ".")]
        assert len(covering) == 1, (tensor, covering)
    used = {}
    for tensor, device in placed.items():
        used[device] = used.get(device, 0) + sizes.tensors[tensor]
    assert {d: b for d, b in used.items() if b} == {d: b for d, b in plan.used.items() if b}
    for device, nbytes in plan.used.items():
        if plan.budget[device] is not None:
            assert nbytes <= plan.budget[device], (device, nbytes)
            if nbytes:  # a device that holds weights also holds its reserve
                assert nbytes + plan.reserved.get(device, 0) <= plan.budget[device]
    for module, cls in sizes.classes.items():  # no-split blocks are never cut
        if cls in no_split:
            assert len({d for t, d in placed.items() if t.startswith(module + ".")}) <= 1, module
    for group in sizes.tied:
        assert len({placed[t] for t in group}) == 1, group


# ---- memory strings and devices --------------------------------------------------------------------------------
def test_memory_strings_binary_and_decimal():
    budgets = parse_max_memory({"cpu": "10GB", "cuda:1": "10GiB", 0: 123, "disk": "0", "mps": 1.5e3})
    assert budgets == {0: 123, 1: 10 * GiB, "mps": 1500, "cpu": 10 * GB, "disk": 0}
    assert list(budgets) == [0, 1, "mps", "cpu", "disk"]  # GPUs first, then mps, cpu, disk
    assert parse_max_memory({"0": "1.5GiB", "cpu": "0GB"}) == {0: 3 * GiB // 2, "cpu": 0}  # CLI keys are strings


@pytest.mark.parametrize("bad, message", [
    ({"gpu0": "1GB"}, "gpu0"), ({0: "1GB", "cuda:0": "2GB"}, "twice"), ({"cpu": "lots"}, "lots"),
    ({"cpu": -5}, "-5"), ({-1: "1GB"}, "-1"), ({True: 5}, "True"), ("10GB", "dict"),
])
def test_bad_max_memory(bad, message):
    with pytest.raises(DeviceMapError, match=message):
        parse_max_memory(bad)


def test_device_forms():
    assert [normalize_device(d) for d in (0, "3", "cuda", "cuda:2", torch.device("cuda", 1), torch.device("cpu"),
                                          "cpu", "disk", "mps")] == [0, 3, 0, 2, 1, "cpu", "cpu", "disk", "mps"]
    for bad in ("gpu", "cuda:x", "meta", -1, None, 1.0, True):
        with pytest.raises(DeviceMapError, match="not a device"):
            normalize_device(bad)


# ---- sizes from a model ----------------------------------------------------------------------------------------
class Block(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.attn = nn.Linear(n, n, bias=False)
        self.mlp = nn.Linear(n, n, bias=False)


class Toy(nn.Module):
    """embed (V*n), L Blocks (2*n*n each), LayerNorm (2n), head (n*V), an int buffer and a computed buffer."""

    def __init__(self, V=64, n=16, L=8, tie=False):
        super().__init__()
        self.embed = nn.Embedding(V, n)
        self.layers = nn.ModuleList(Block(n) for _ in range(L))
        self.norm = nn.LayerNorm(n)
        self.head = nn.Linear(n, V, bias=False)
        self.register_buffer("positions", torch.arange(V))  # int64: keeps its own size under any dtype
        self.norm.register_buffer("scale", torch.ones(n), persistent=False)
        if tie:
            self.head.weight = self.embed.weight


def meta_toy(**kwargs) -> Toy:
    with torch.device("meta"):
        return Toy(**kwargs)


def test_sizes_from_a_meta_model_in_its_dtype_or_another():
    sizes = sizes_from_model(meta_toy())
    assert sizes.total["embed"] == 64 * 16 * 4 and sizes.total["layers.0"] == 2 * 16 * 16 * 4
    assert sizes.tensors["positions"] == 64 * 8 and sizes.classes["layers.3"] == "Block"
    assert sizes.optional == {"norm.scale"}
    half = sizes_from_model(meta_toy(), dtype="bfloat16")
    assert half.total["embed"] == 64 * 16 * 2 and half.tensors["positions"] == 64 * 8  # ints keep their size
    assert list(half.tensors) == list(sizes.tensors)  # module order
    assert half.modules[:4] == ["", "embed", "layers", "layers.0"]


def test_keep_in_fp32_modules_count_as_float32():
    sizes = sizes_from_model(meta_toy(), dtype=torch.float16, keep_in_fp32=("head", "mlp"))
    assert sizes.total["head"] == 64 * 16 * 4 and sizes.total["embed"] == 64 * 16 * 2
    assert sizes.total["layers.0.mlp"] == 16 * 16 * 4 and sizes.total["layers.0.attn"] == 16 * 16 * 2
    # from the family's facts, as the skeleton builds it (T5 keeps "wo" in float32)
    config = pretrained.T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2)
    skeleton = pretrained.T5ForConditionalGeneration._skeleton(config, torch.float32)
    t5 = sizes_from_model(skeleton, dtype=torch.float16)
    wo = next(n for n in t5.tensors if n.endswith(".wo.weight"))
    wi = next(n for n in t5.tensors if ".wi" in n)
    assert t5.tensors[wo] == 32 * 16 * 4 and t5.tensors[wi] == 32 * 16 * 2
    # bfloat16 has float32's range: as in the reference, nothing is kept in float32 there
    t5_bf16 = sizes_from_model(skeleton, dtype=torch.bfloat16)
    assert t5_bf16.tensors[wo] == 32 * 16 * 2


def test_tied_weights_counted_once():
    sizes = sizes_from_model(meta_toy(tie=True))
    assert sizes.tensors["head.weight"] == 0 and sizes.tied == (("embed.weight", "head.weight"),)
    assert sizes.total[""] == sizes_from_model(meta_toy()).total[""] - 64 * 16 * 4
    # a skeleton is not tied yet: the tie its config turns on counts too
    config = pretrained.LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    llama = sizes_from_model(pretrained.LlamaForCausalLM._skeleton(config, torch.bfloat16))
    assert llama.tensors["lm_head.weight"] == 0
    assert llama.tied == (("model.embed_tokens.weight", "lm_head.weight"),)


# ---- strategies over fake GPUs ---------------------------------------------------------------------------------
def test_sequential_fills_gpus_in_order():
    sizes = decoder()  # 100 + 6 x 100 + 10 + 100 = 810
    plan = plan_device_map(sizes, {0: 350, 1: 350, 2: 350}, ["Block"], strategy="sequential")
    assert plan.device_map == {"embed": 0, "layers.0": 0, "layers.1": 0, "layers.2": 1, "layers.3": 1,
                               "layers.4": 1, "layers.5": 2, "norm": 2, "head": 2}
    assert plan.used == {0: 300, 1: 300, 2: 210} and plan.reserved == {} and not plan.offloaded
    check_plan(plan, sizes)
    assert plan_device_map(sizes, {0: 1000, 1: 1000}, ["Block"], strategy="sequential").device_map == {"": 0}


def test_balanced_spreads_evenly():
    sizes = decoder()
    budgets = {0: 1000, 1: 1000, 2: 1000, "cpu": 10_000}
    plan = plan_device_map(sizes, budgets, ["Block"], strategy="balanced")
    assert plan.used == {0: 300, 1: 300, 2: 210}  # the most even cut into whole 100-byte layers
    check_plan(plan, sizes)
    assert plan_device_map(sizes, budgets, ["Block"]).device_map == plan.device_map  # "auto" is "balanced"
    two = plan_device_map(sizes, {0: 1000, 1: 1000}, ["Block"], strategy="balanced")
    assert two.used == {0: 400, 1: 410}


def test_balanced_low_0_keeps_gpu_0_light():
    sizes = decoder()
    plan = plan_device_map(sizes, {0: 1000, 1: 1000, 2: 1000}, ["Block"], strategy="balanced_low_0")
    assert 0 not in plan.used and plan.used == {1: 400, 2: 410}  # GPU 0 free; the others balanced
    check_plan(plan, sizes)
    tight = plan_device_map(sizes, {0: 1000, 1: 300, 2: 300}, ["Block"], strategy="balanced_low_0")
    assert tight.used == {0: 300, 1: 300, 2: 210}  # GPU 0 takes only what the others cannot
    check_plan(tight, sizes)


def test_no_split_blocks_are_never_cut():
    sizes = decoder(block=(50, 50))
    budgets = {0: 275, "cpu": 10_000}  # offload -> GPU 0 keeps 100 free for the largest layer: 175 to fill
    whole = plan_device_map(sizes, budgets, ["Block"], strategy="sequential")
    assert whole.device_map == {"embed": 0, "layers": "cpu", "norm": "cpu", "head": "cpu"}
    assert whole.reserved == {0: 100}
    check_plan(whole, sizes)
    cut = plan_device_map(sizes, budgets, [], strategy="sequential")  # not a no-split block: it may be cut
    assert cut.device_map["layers.0.t0"] == 0 and cut.device_map["layers.0.t1"] == "cpu"
    check_plan(cut, sizes, no_split=())


def test_tied_weights_share_a_device():
    sizes = decoder(tie=True)
    plan = plan_device_map(sizes, {0: 250, 1: 250, 2: 400}, ["Block"], strategy="sequential")
    assert plan.device_for("head.weight") == plan.device_for("embed.weight") == 0  # the head comes along
    assert plan.device_for("norm.weight") == 2 and plan.used == {0: 200, 1: 200, 2: 310}
    check_plan(plan, sizes)


def test_a_tied_partner_is_cut_to_come_along():
    """T5-like: `shared` is tied to embeddings inside encoder and decoder; those are cut out, not moved whole."""
    tensors = {"shared.weight": 100}
    for side in ("encoder", "decoder"):
        tensors[f"{side}.embed.weight"] = 0
        tensors.update({f"{side}.block.{i}.w": 100 for i in range(4)})
    sizes = ModuleSizes(tensors, tied=[["shared.weight", "encoder.embed.weight", "decoder.embed.weight"]])
    plan = plan_device_map(sizes, {0: 350, 1: 1000}, strategy="sequential")
    assert {plan.device_for(t) for t in sizes.tied[0]} == {0}
    assert plan.device_for("encoder.block.0.w") == 0 and plan.device_for("decoder.block.3.w") == 1
    check_plan(plan, sizes)


def test_disk_takes_what_cpu_cannot():
    sizes = decoder()
    plan = plan_device_map(sizes, {0: 300, "cpu": 300}, ["Block"], strategy="sequential")
    assert plan.reserved == {0: 100, "cpu": 100}  # disk layers run on GPU 0 and pass through the CPU
    assert plan.used == {0: 200, "cpu": 200, "disk": 410} and plan.offloaded
    check_plan(plan, sizes)
    assert plan_device_map(sizes, {"cpu": 100}, ["Block"]).device_map == {"": "disk"}
    with pytest.raises(DeviceMapError, match="does not fit"):  # a disk budget is honoured
        plan_device_map(sizes, {0: 300, "cpu": 300, "disk": 0}, ["Block"])
    with pytest.raises(DeviceMapError, match="strategy"):
        plan_device_map(sizes, {0: 300}, strategy="fastest")


def test_reserves_only_when_something_is_offloaded():
    """Deliberate difference: accelerate always keeps GPU 0 and the CPU a layer's room; we keep it only when a
    layer is offloaded and has to be brought there to run. A model that fits exactly stays whole."""
    sizes = decoder()
    plan = plan_device_map(sizes, {0: 810, "cpu": 10_000}, ["Block"], strategy="sequential")
    assert plan.device_map == {"": 0} and plan.reserved == {}
    one_short = plan_device_map(sizes, {0: 809, "cpu": 10_000}, ["Block"], strategy="sequential")
    assert one_short.reserved == {0: 100} and one_short.used[0] == 700  # then the room is kept


# ---- accelerate as the oracle ----------------------------------------------------------------------------------
@pytest.fixture
def accelerate_modeling():
    modeling = pytest.importorskip("accelerate.utils.modeling")
    with warnings.catch_warnings():  # "Device 0 is not available": fake GPUs are the point
        warnings.simplefilter("ignore")
        yield modeling


def tensor_devices(device_map, model):
    return {n: device_for(n, device_map) for n in [*dict(model.named_parameters()), *dict(model.named_buffers())]}


# Budgets where both algorithms keep the same reserves (something offloaded; GPU 0 holds weights; the CPU's reserve
# needed for disk or not binding), so they must agree tensor by tensor. Toy: Blocks 2048 B, embed and head V*64 B.
AGREE = [
    ({0: 30_000}, 64, False),  # fits on one GPU with room to spare
    ({0: 10_000, "cpu": 100_000}, 64, False),  # GPU + CPU offload
    ({0: 8_000, 1: 6_000, "cpu": 100_000}, 32, False),  # two GPUs + CPU
    ({0: 10_000, "cpu": 10_000}, 64, False),  # GPU + CPU + disk
    ({"cpu": 10_000}, 64, False),  # CPU + disk only
    ({0: 9_000, 1: 9_000, "cpu": 9_000}, 64, True),  # tied embedding and head, three tiers
    ({0: 12_000, "cpu": 100_000}, 64, True),
]


@pytest.mark.parametrize("budgets, vocab, tie", AGREE)
def test_same_placement_as_accelerate(budgets, vocab, tie, accelerate_modeling):
    model = meta_toy(V=vocab, L=10, tie=tie)
    theirs = accelerate_modeling.infer_auto_device_map(model, dict(budgets), no_split_module_classes=["Block"])
    ours = infer_auto_device_map(model, dict(budgets), ["Block"])
    assert tensor_devices(ours, model) == tensor_devices(theirs, model)
    assert len(set(ours.values())) == len(budgets) + ("disk" in ours.values())  # every device used


def test_the_reserve_is_kept_where_offloaded_layers_run(accelerate_modeling):
    """Deliberate difference: accelerate keeps GPU 0's reserve even when it leaves GPU 0 empty; the offloaded
    layers then run on GPU 1, which kept no room (the 4096-byte head cannot be brought in). We keep the room on
    the GPU that runs them: here no GPU can hold a layer and still bring in the head, so all stays on the CPU."""
    model = meta_toy(L=10)
    budgets = {0: 6_000, 1: 6_000, "cpu": 100_000}
    theirs = accelerate_modeling.infer_auto_device_map(model, dict(budgets), no_split_module_classes=["Block"])
    assert theirs["embed"] == 1 and 0 not in theirs.values()
    assert infer_auto_device_map(model, budgets, ["Block"]) == {"": "cpu"}
    roomy = plan_device_map(sizes_from_model(model), {0: 6_000, 1: 9_000, "cpu": 100_000}, ["Block"],
                            strategy="sequential")
    assert roomy.device_map == {"embed": 1, "layers": "cpu", "norm": "cpu", "head": "cpu", "positions": "cpu"}
    assert roomy.reserved == {1: 4096}  # GPU 1 runs the offloaded layers, so GPU 1 keeps the head's room


def test_balanced_keeps_what_sequential_keeps_on_gpus(accelerate_modeling):
    """Deliberate difference: accelerate's balanced ceiling (total/n + 1.25 x a layer) can offload layers that
    fit when GPUs differ in size; ours never offloads more than filling in order does."""
    model = meta_toy(L=10)
    budgets = {0: 24_000, 1: 8_000, "cpu": 10**6}
    assert "cpu" in accelerate_balanced(accelerate_modeling, model, budgets).values()
    ours = infer_auto_device_map(model, budgets, ["Block"], strategy="balanced")
    assert "cpu" not in set(ours.values())


@pytest.mark.parametrize("budgets, strategy", [
    ({0: 20_000, 1: 20_000, 2: 20_000}, "balanced"), ({0: 20_000, 1: 20_000, 2: 20_000}, "balanced_low_0"),
    ({0: 20_000, 1: 20_000, "cpu": 100}, "balanced"),
])
def test_balanced_at_least_as_even_as_accelerate(budgets, strategy, accelerate_modeling):
    model = meta_toy(L=10)
    sizes = sizes_from_model(model)
    theirs = accelerate_balanced(accelerate_modeling, model, budgets, low_zero=strategy == "balanced_low_0")
    load: dict = {}
    for tensor, device in tensor_devices(theirs, model).items():
        load[device] = load.get(device, 0) + sizes.tensors[tensor]
    assert all(isinstance(d, int) for d in load)
    plan = plan_device_map(sizes, budgets, ["Block"], strategy=strategy)
    assert max(plan.used.values()) <= max(load.values()) and all(isinstance(d, int) for d in plan.used)
    assert (0 in plan.used) == (0 in load)
    check_plan(plan, sizes)


def test_balanced_low_0_offloads_no_more_than_sequential(accelerate_modeling):
    """Deliberate difference: accelerate's low-0 budget for GPU 0 subtracts a reserve it then also keeps, and
    sends the last layers to disk here; ours fills GPU 0 only as far as the others cannot take."""
    model = meta_toy(L=10)
    budgets = {0: 20_000, 1: 20_000, "cpu": 100}
    assert "disk" in accelerate_balanced(accelerate_modeling, model, budgets, low_zero=True).values()
    plan = plan_device_map(sizes_from_model(model), budgets, ["Block"], strategy="balanced_low_0")
    assert set(plan.used) == {0, 1} and plan.used[0] < plan.used[1]


def accelerate_balanced(modeling, model, budgets, low_zero=False):
    balanced = modeling.get_balanced_memory(model, dict(budgets), no_split_module_classes=["Block"], low_zero=low_zero)
    return modeling.infer_auto_device_map(model, balanced, no_split_module_classes=["Block"])


# ---- user maps ---------------------------------------------------------------------------------------------------
def test_parse_device_map_normalises_and_accepts():
    model = meta_toy(L=2)
    assert parse_device_map({"": "cpu", "layers.1": "cuda:1", "head.weight": torch.device("cuda", 0)}, model) == {
        "": "cpu", "layers.1": 1, "head.weight": 0}
    assert parse_device_map(1, model) == {"": 1}
    assert parse_device_map("cuda:0", model) == {"": 0} and parse_device_map(torch.device("cpu"), model) == {"": "cpu"}
    everything = {"embed": 0, "layers": 0, "norm.weight": 0, "norm.bias": 0, "head": "disk", "positions": "cpu"}
    assert parse_device_map(everything, model) == everything  # norm.scale is not persistent: it may be left out


@pytest.mark.parametrize("device_map, message", [
    ({"embed": 0, "layers": 0, "norm": 0}, "no device for 'head.weight', 'positions'"),
    ({"": 0, "layer.0": 1}, "Did you mean 'layers.0'"),
    ({"": "gpu1"}, "'gpu1' is not a device"),
    ({"": 0, "head": 1}, "Tied weights"),
    ("auto", "strategy"),
    ({"": -1}, "not a device"),
])
def test_bad_device_maps(device_map, message):
    with pytest.raises(DeviceMapError, match=message):
        parse_device_map(device_map, meta_toy(L=2, tie=True))


def test_infer_auto_device_map_on_a_meta_llama():
    config = pretrained.LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                    num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    model = pretrained.LlamaForCausalLM._skeleton(config, torch.float32)
    layer = sizes_from_model(model).total["model.layers.0"]
    device_map = infer_auto_device_map(model, {0: 2 * layer, 1: 2 * layer, "cpu": "1GB"})  # no_split from facts
    placed = tensor_devices(device_map, model)
    assert placed["lm_head.weight"] == placed["model.embed_tokens.weight"] == 0
    for i in range(4):
        assert len({d for n, d in placed.items() if n.startswith(f"model.layers.{i}.")}) == 1
    assert set(placed.values()) == {0, 1, "cpu"}
    assert parse_device_map(device_map, model) == device_map
    if not torch.cuda.is_available():
        assert infer_auto_device_map(model) == {"": "cpu"}  # available_memory(): the CPU only


def test_available_memory_reports_the_cpu():
    memory = available_memory()
    assert memory["cpu"] > 0 and list(memory)[-1] == "cpu"


# ---- invariants ------------------------------------------------------------------------------------------------
@st.composite
def problems(draw):
    blocks = draw(st.integers(0, 5))
    tensors = {"embed.weight": draw(st.integers(0, 200))}
    for i in range(blocks):
        for j in range(draw(st.integers(1, 3))):
            tensors[f"layers.{i}.t{j}.weight"] = draw(st.integers(0, 120))
    tie = draw(st.booleans())
    tensors["head.weight"] = 0 if tie else draw(st.integers(0, 200))
    sizes = ModuleSizes(tensors, {f"layers.{i}": "Block" for i in range(blocks)},
                        [["embed.weight", "head.weight"]] if tie else ())
    budgets = {i: draw(st.integers(0, 500)) for i in range(draw(st.integers(0, 3)))}
    if draw(st.booleans()):
        budgets["cpu"] = draw(st.integers(0, 500))
    strategy = draw(st.sampled_from(["sequential", "balanced", "balanced_low_0"]))
    return sizes, budgets, strategy


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_every_tensor_placed_once_and_no_budget_exceeded(problem):
    sizes, budgets, strategy = problem
    plan = plan_device_map(sizes, budgets, ["Block"], strategy=strategy)
    check_plan(plan, sizes)
    sequential = plan_device_map(sizes, budgets, ["Block"], strategy="sequential")
    on_gpus = lambda p: sum(b for d, b in p.used.items() if isinstance(d, int))  # noqa: E731
    assert on_gpus(plan) >= on_gpus(sequential)  # balancing never offloads more


# ---- the `plan` command ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_llama_folder(tmp_path_factory):
    config = pretrained.LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                    num_attention_heads=4, num_key_value_heads=2)
    folder = tmp_path_factory.mktemp("tiny-llama")
    pretrained.LlamaForCausalLM.from_config(config).save_pretrained(folder)
    return folder


@pytest.fixture
def no_tensor_reads(monkeypatch):
    from pretrained.checkpoint import reader

    def refuse(*args, **kwargs):
        raise AssertionError("plan read tensor data")

    monkeypatch.setattr(reader, "read_tensor", refuse)
    monkeypatch.setattr(reader.CheckpointReader, "iter_tensors", refuse)
    monkeypatch.setattr(reader.CheckpointReader, "read", refuse)


def test_plan_command(tiny_llama_folder, no_tensor_reads, capsys):
    budgets = ["--max-memory", "0=100KiB", "--max-memory", "cuda:1=100KiB", "--max-memory", "cpu=1GiB"]
    assert main(["plan", str(tiny_llama_folder), *budgets]) == 0
    out = capsys.readouterr().out
    assert re.search(r"model\.layers\.0-1 +-> 0\n +model\.layers\.2-3 +-> 1\n", out) and "lm_head" in out
    assert "LlamaForCausalLM" in out and "float32" in out

    assert main(["plan", str(tiny_llama_folder), *budgets, "--json", "--dtype", "bfloat16",
                 "--strategy", "sequential"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dtype"] == "bfloat16" and report["device_map"] == {"": 0}
    assert report["used"] == {"0": report["total_bytes"]} and report["max_memory"]["0"] == 100 * 2**10


def test_plan_command_spills_to_disk_with_fake_gpus(tiny_llama_folder, no_tensor_reads, capsys):
    argv = ["plan", str(tiny_llama_folder), "--max-memory", "0=60KiB", "--max-memory", "cpu=100KiB", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["used"]) == {"0", "cpu", "disk"} and set(report["reserved"]) == {"0", "cpu"}


@pytest.mark.parametrize("argument, message", [
    (["--max-memory", "gpu=1GB"], "'gpu' is not a device"), (["--max-memory", "0"], "DEVICE=SIZE"),
    (["--max-memory", "0=big"], "Cannot read the size"), (["--dtype", "int8"], "not a dtype"),
    (["--max-memory", "0=1KB", "--max-memory", "disk=0"], "does not fit"),
])
def test_plan_command_errors(tiny_llama_folder, argument, message, capsys):
    assert main(["plan", str(tiny_llama_folder), *argument]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
