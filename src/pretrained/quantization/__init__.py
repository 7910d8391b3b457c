"""Lower-bit weights: quantize while loading, load pre-quantized checkpoints, save portable quantized checkpoints.

`base.py` holds the contract every method implements; `linear.py` the int8/int4 Linear module on torch's own
packed kernels; `torchao.py` (TorchAoConfig, quantize-at-load), `compressed.py` (compressed-tensors checkpoints,
and our saves), `bnb.py` (bitsandbytes), `fp8.py` (fp8 block-wise checkpoints); `loading.py` the glue used by
`from_pretrained` / `save_pretrained`.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "TorchAoConfig": "config", "CompressedTensorsConfig": "config", "QuantizationHandler": "base",
    "quantizer_for": "base", "QuantizedLinear": "linear", "BitsAndBytesConfig": "bnb", "FineGrainedFP8Config": "fp8",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
