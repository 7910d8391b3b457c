"""Record what the reference library (transformers 4.57, the last line with `prune_heads`) does when it prunes BERT
attention heads, so that tests/test_bert.py can compare against it without that version installed.

Regenerate (from the repository root; 4.57 goes into a separate folder, never into .venv):

    .venv/bin/pip install --target /tmp/ref457 --no-deps transformers==4.57.6 "huggingface_hub<1.0" \
        "tokenizers<0.23,>=0.22" regex requests urllib3 idna certifi charset_normalizer
    PYTHONPATH=/tmp/ref457 .venv/bin/python tests/reference/record_bert_pruning.py

Writes into tests/data/bert_pruned/:
    unpruned/        config.json + model.safetensors of a seeded tiny BertForSequenceClassification (4.57)
    pruned/          the same model after every prune step, saved by 4.57 (its config carries pruned_heads)
    pruned_base/     BertModel (loaded from unpruned/) after the same steps, saved by 4.57
    outputs.safetensors  "<model>.<step>.<field>" -> output tensors on the inputs in expected.json
    expected.json    inputs, the prune steps, and per model and step: state_dict shapes ("32x37") and
                     config.pruned_heads
Steps: "unpruned", then PRUNES in order ("step1", "step2", ...); "head_mask" is the unpruned model with HEAD_MASK.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file

if not transformers.__version__.startswith("4.57"):
    sys.exit(f"needs transformers 4.57.x (found {transformers.__version__}); see this script's docstring")

OUT = Path(__file__).resolve().parents[1] / "data" / "bert_pruned"
CONFIG = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
              max_position_embeddings=16, initializer_range=0.2, num_labels=3)
PRUNES = [{0: [0, 2], 1: [1]}, {0: [1, 2]}]  # the second names head 2 again: already gone, ignored
HEAD_MASK = [[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.5]]
INPUTS = {
    "input_ids": [[5, 17, 42, 8, 63, 90, 2], [11, 3, 77, 51, 29, 0, 0]],
    "token_type_ids": [[0, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 0, 0]],
    "attention_mask": [[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0]],
}
FIELDS = ("last_hidden_state", "pooler_output", "logits")


def run(model, **extra) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = model(**{k: torch.tensor(v) for k, v in INPUTS.items()}, **extra)
    return {f: getattr(out, f).contiguous() for f in FIELDS if getattr(out, f, None) is not None}


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    torch.manual_seed(0)
    cls = transformers.BertForSequenceClassification(transformers.BertConfig(**CONFIG)).eval()
    cls.save_pretrained(OUT / "unpruned")
    base = transformers.BertModel.from_pretrained(OUT / "unpruned").eval()
    models = {"classifier": cls, "base": base}

    outputs: dict[str, torch.Tensor] = {}
    expected: dict = {"transformers_version": transformers.__version__, "config": CONFIG, "inputs": INPUTS,
                      "prunes": [{str(k): v for k, v in p.items()} for p in PRUNES], "head_mask": HEAD_MASK,
                      "models": {name: {} for name in models}}

    def record(step: str, **extra) -> None:
        for name, model in models.items():
            for field, tensor in run(model, **extra).items():
                outputs[f"{name}.{step}.{field}"] = tensor
            expected["models"][name][step] = {
                "shapes": {k: "x".join(map(str, v.shape)) for k, v in model.state_dict().items()},
                "pruned_heads": {str(k): sorted(v) for k, v in model.config.pruned_heads.items()},
            }

    record("unpruned")
    record("head_mask", head_mask=torch.tensor(HEAD_MASK))
    for i, prune in enumerate(PRUNES, 1):
        for model in models.values():
            model.prune_heads(prune)
        record(f"step{i}")
    cls.save_pretrained(OUT / "pruned")
    base.save_pretrained(OUT / "pruned_base")
    expected["saved_pruned_heads"] = json.loads((OUT / "pruned" / "config.json").read_text())["pruned_heads"]

    save_file(outputs, OUT / "outputs.safetensors")
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({total / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
