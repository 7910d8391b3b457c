"""The pure shard planner: sizes, plans, file names and the index, tested with integers (no tensors).

The reference library (transformers) is the oracle for size strings, variant names and the index format.
"""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pretrained.checkpoint.shards import (
    Entry,
    add_variant,
    build_index,
    is_shard_of,
    parse_size,
    plan_shards,
    shard_filenames,
)

# ---- parse_size -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ("5GB", 5 * 10**9),
        ("500MB", 500 * 10**6),
        ("10KB", 10_000),
        ("2GiB", 2**31),
        ("3MiB", 3 * 2**20),
        ("10KiB", 10 * 2**10),
        ("1TB", 10**12),
        ("5Gb", 5 * 10**9 // 8),  # lower-case b after a decimal unit: bits
        ("8Mb", 10**6),
        ("5gb", 5 * 10**9 // 8),
        ("2gib", 2 * 2**30),  # binary units never mean bits
        ("123", 123),
        ("  7 MB ", 7 * 10**6),
        ("1.5GB", 1_500_000_000),
        (1, 1),
        (4096, 4096),
        (10**12, 10**12),
    ],
)
def test_parse_size_values(size, expected):
    assert parse_size(size) == expected
    assert type(parse_size(size)) is int


@given(
    n=st.integers(min_value=1, max_value=100_000),
    unit=st.sampled_from(["GiB", "MiB", "KiB", "gib", "kib", "GB", "MB", "KB", "Gb", "Mb", "Kb", "gb", "mb", "kb",
                          "gB", "mB", "kB"]),
)
@settings(max_examples=200, deadline=None)
def test_parse_size_agrees_with_reference(n, unit):
    from transformers.utils.hub import convert_file_size_to_int

    assert parse_size(f"{n}{unit}") == convert_file_size_to_int(f"{n}{unit}")


@pytest.mark.parametrize(
    "bad",
    ["", "GB", "abc", "5XB", "5 G B", "-5GB", "5GB5", "five GB", "0GB", "0", "0.0001B", "1Kb" * 2, None,
     [5], 0, -1, -(2**40), True, False],
)
def test_parse_size_rejects(bad):
    with pytest.raises(ValueError) as err:
        parse_size(bad)
    message = str(err.value)
    assert repr(bad) in message or str(bad) in message, message  # says what it got
    if isinstance(bad, str) and not bad.strip().startswith("0") and bad not in ("0.0001B",):
        assert "GB" in message and "GiB" in message, message  # and what it takes


def test_parse_size_zero_and_negative_say_positive():
    for bad in (0, -3, "0MB", "0.0001B"):
        with pytest.raises(ValueError, match="positive"):
            parse_size(bad)


# ---- plan_shards ------------------------------------------------------------------------------------


def test_plan_shards_examples():
    assert plan_shards([("a", 10, "s1"), ("b", 10, "s2")], max_shard_size=15) == [["a"], ["b"]]
    assert plan_shards([("a", 10, "s1"), ("b", 5, "s2"), ("c", 1, "s3")], max_shard_size=15) == [["a", "b"], ["c"]]
    assert plan_shards([("a", 10, "s1"), ("b", 10, "s2")], max_shard_size=20) == [["a", "b"]]
    # an oversized tensor gets a shard of its own, neighbours are not pulled in
    assert plan_shards([("a", 1, 1), ("big", 100, 2), ("c", 1, 3)], max_shard_size=10) == [["a"], ["big"], ["c"]]
    # tensors sharing storage stay together and their storage counts once
    assert plan_shards([("w", 8, "s"), ("w_tied", 8, "s"), ("x", 2, "t")], max_shard_size=10) == [["w", "w_tied", "x"]]
    # Entry objects and size strings are accepted
    entries = [Entry("a", 600, 0), Entry("b", 600, 1)]
    assert plan_shards(entries, "1KB") == [["a"], ["b"]]
    assert plan_shards(entries, "2KiB") == [["a", "b"]]
    assert plan_shards([], 10) == [[]]


def test_plan_shards_rejects_a_bad_limit():
    with pytest.raises(ValueError):
        plan_shards([("a", 1, 0)], max_shard_size="lots")
    with pytest.raises(ValueError):
        plan_shards([("a", 1, 0)], max_shard_size=0)


@st.composite
def entry_lists(draw):
    count = draw(st.integers(min_value=0, max_value=40))
    n_storages = draw(st.integers(min_value=1, max_value=max(1, count)))
    storages = draw(st.lists(st.integers(0, n_storages - 1), min_size=count, max_size=count))
    # tensors sharing a storage have the size of that storage (a tied pair), or a smaller view of it
    storage_size = {s: draw(st.integers(0, 300)) for s in set(storages)}
    entries = []
    for i, s in enumerate(storages):
        view = draw(st.booleans())
        size = draw(st.integers(0, storage_size[s])) if view else storage_size[s]
        entries.append((f"t{i}", size, f"storage-{s}"))
    return entries


def _group_sizes(entries):
    sizes, order = {}, []
    for _, nbytes, storage in entries:
        if storage not in sizes:
            order.append(storage)
        sizes[storage] = max(sizes.get(storage, 0), nbytes)
    return sizes, order


@given(entries=entry_lists(), limit=st.integers(min_value=1, max_value=700))
@settings(max_examples=300, deadline=None)
def test_plan_shards_properties(entries, limit):
    plan = plan_shards(entries, limit)
    names = [name for name, _, _ in entries]
    storage_of = {name: storage for name, _, storage in entries}
    sizes, group_order = _group_sizes(entries)

    if not entries:
        assert plan == [[]]
        return
    flat = [n for shard in plan for n in shard]
    # every name exactly once
    assert sorted(flat) == sorted(names) and len(flat) == len(set(flat))
    # no empty shard
    assert all(shard for shard in plan)
    # order preserved: groups in order of first appearance, names in input order inside a group
    expected_order = sorted(names, key=lambda n: (group_order.index(storage_of[n]), names.index(n)))
    assert flat == expected_order
    if len(set(storage_of.values())) == len(names):  # no sharing: exactly the input order
        assert flat == names
    # tensors that share storage stay in one shard
    shard_of = {n: i for i, shard in enumerate(plan) for n in shard}
    for storage in sizes:
        assert len({shard_of[n] for n in names if storage_of[n] == storage}) == 1
    # every shard fits, unless it is one storage group that alone exceeds the limit
    shard_sizes = []
    for shard in plan:
        groups = list(dict.fromkeys(storage_of[n] for n in shard))
        size = sum(sizes[g] for g in groups)
        shard_sizes.append(size)
        if size > limit:
            oversized = [g for g in groups if sizes[g] > limit]
            assert len(oversized) == 1, (shard, size, limit)
            assert all(sizes[g] == 0 for g in groups if g not in oversized)
    # greedy: a shard is only closed when the next group would not fit into it
    for i in range(len(plan) - 1):
        next_group = storage_of[plan[i + 1][0]]
        assert shard_sizes[i] + sizes[next_group] > limit


@given(sizes=st.lists(st.integers(1, 100), min_size=1, max_size=30), limit=st.integers(1, 250))
@settings(max_examples=100, deadline=None)
def test_plan_shards_shard_count_is_greedy_optimum_for_distinct_storages(sizes, limit):
    entries = [(f"t{i}", s, i) for i, s in enumerate(sizes)]
    plan = plan_shards(entries, limit)
    # the same greedy walk, computed independently
    count, used = 1, 0
    for i, s in enumerate(sizes):
        if i and used + s > limit:
            count, used = count + 1, 0
        used += s
    assert len(plan) == count


# ---- file names -------------------------------------------------------------------------------------


def test_shard_filenames():
    assert shard_filenames(3, "model.safetensors") == [
        "model-00001-of-00003.safetensors",
        "model-00002-of-00003.safetensors",
        "model-00003-of-00003.safetensors",
    ]
    assert shard_filenames(1, "model.safetensors") == ["model.safetensors"]
    assert shard_filenames(1, "pytorch_model.bin") == ["pytorch_model.bin"]
    assert shard_filenames(2, "pytorch_model.bin") == ["pytorch_model-00001-of-00002.bin",
                                                       "pytorch_model-00002-of-00002.bin"]
    assert shard_filenames(2, "model.fp16.safetensors") == ["model.fp16-00001-of-00002.safetensors",
                                                            "model.fp16-00002-of-00002.safetensors"]
    assert len(shard_filenames(12345, "model.safetensors")) == 12345
    assert shard_filenames(12345, "model.safetensors")[-1] == "model-12345-of-12345.safetensors"


@pytest.mark.parametrize(
    ("name", "variant", "expected"),
    [
        ("model.safetensors", "fp16", "model.fp16.safetensors"),
        ("model.safetensors.index.json", "fp16", "model.safetensors.index.fp16.json"),
        ("pytorch_model.bin", "fp16", "pytorch_model.fp16.bin"),
        ("pytorch_model.bin.index.json", "bf16", "pytorch_model.bin.index.bf16.json"),
        ("model.safetensors", None, "model.safetensors"),
        ("model.safetensors", "", "model.safetensors"),
    ],
)
def test_add_variant(name, variant, expected):
    from transformers.modeling_utils import _add_variant

    assert add_variant(name, variant) == expected
    if variant:
        assert add_variant(name, variant) == _add_variant(name, variant)


@pytest.mark.parametrize(
    ("filename", "weights_name", "expected"),
    [
        ("model.safetensors", "model.safetensors", True),
        ("model-00001-of-00003.safetensors", "model.safetensors", True),
        ("model-00012-of-00100.safetensors", "model.safetensors", True),
        ("pytorch_model-00002-of-00002.bin", "pytorch_model.bin", True),
        ("model.fp16-00001-of-00002.safetensors", "model.fp16.safetensors", True),
        ("model.fp16.safetensors", "model.fp16.safetensors", True),
        ("model.fp16-00001-of-00002.safetensors", "model.safetensors", False),
        ("model-00001-of-00002.safetensors", "model.fp16.safetensors", False),
        ("model.safetensors.index.json", "model.safetensors", False),
        ("model-1-of-3.safetensors", "model.safetensors", False),
        ("model-00001-of-00003.bin", "model.safetensors", False),
        ("pytorch_model-00001-of-00002.bin", "model.safetensors", False),
        ("model-00001-of-00002.safetensors", "pytorch_model.bin", False),
        ("xmodel-00001-of-00002.safetensors", "model.safetensors", False),
        ("my_model-00001-of-00002.safetensors", "model.safetensors", False),
        ("model-00001-of-00002.safetensors.tmp", "model.safetensors", False),
        ("modelX00001-of-00002.safetensors", "model.safetensors", False),
        ("tokenizer.json", "model.safetensors", False),
    ],
)
def test_is_shard_of(filename, weights_name, expected):
    assert is_shard_of(filename, weights_name) is expected


@given(count=st.integers(1, 200), name=st.sampled_from(["model.safetensors", "pytorch_model.bin",
                                                         "model.fp16.safetensors", "pytorch_model.bf16.bin"]))
@settings(max_examples=50, deadline=None)
def test_every_shard_name_is_a_shard_of_its_weights_name(count, name):
    names = shard_filenames(count, name)
    assert len(set(names)) == count
    assert all(is_shard_of(n, name) for n in names)
    other = "pytorch_model.bin" if name.endswith(".safetensors") else "model.safetensors"
    assert not any(is_shard_of(n, other) for n in names)


# ---- the index --------------------------------------------------------------------------------------


def test_build_index_small():
    index = build_index([["b", "a"], ["c"]], ["f1", "f2"], total_size=30, total_parameters=7)
    assert index == {"metadata": {"total_parameters": 7, "total_size": 30},
                     "weight_map": {"a": "f1", "b": "f1", "c": "f2"}}
    assert list(index) == ["metadata", "weight_map"]
    assert list(index["weight_map"]) == ["a", "b", "c"]
    assert build_index([["a"]], ["f"], total_size=4) == {"metadata": {"total_size": 4}, "weight_map": {"a": "f"}}


def test_build_index_matches_the_reference_index(tmp_path):
    """An index built by us from the reference's own plan is the reference's index, byte for byte."""
    import torch
    import transformers

    config = transformers.LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(tmp_path, max_shard_size="30KB")
    with open(tmp_path / "model.safetensors.index.json", encoding="utf-8") as f:
        text = f.read()
    reference = json.loads(text)
    files = sorted(set(reference["weight_map"].values()))
    assert len(files) > 1
    assert sorted(n for n in os.listdir(tmp_path) if n.endswith(".safetensors")) == files
    assert files == shard_filenames(len(files), "model.safetensors")
    shards = [[n for n, f in reference["weight_map"].items() if f == fn] for fn in files]
    sd = model.state_dict()
    total_size = sum(t.numel() * t.element_size() for t in sd.values())
    total_params = sum(t.numel() for t in sd.values())
    ours = build_index(shards, files, total_size, total_params)
    assert ours == reference
    assert list(ours) == list(reference)
    assert list(ours["metadata"]) == list(reference["metadata"])
    assert list(ours["weight_map"]) == list(reference["weight_map"])
    assert json.dumps(ours, indent=2) + "\n" == text
