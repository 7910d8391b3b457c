"""One quantized Linear for every family: weight-only int8 (per output channel) or int4 (group-wise), symmetric,
run on torch's own packed kernels.

Numerics (compressed-tensors' symmetric int format, so our saves and theirs mean the same: w ~= q * scale, q in
-128..127 | -8..7, no zero point): int8 scale = absmax / 127.5, one per output row, rounded to the compute dtype
first, q = clamp(round(w / scale)). int4 (one scale per row and group of `group_size` input columns) picks each
group's scale by least squared error instead of absmax / 7.5, its sign turning the longer negative side of -8..7
towards the group's extreme (`_best_symmetric`).

Kernels (the activations are cast to the scales' dtype — bfloat16 by default — at the layer and the result cast
back: the CPU kernels are 10-30x slower in float32):
- int8: `torch._weight_int8pack_mm(x, q[N, K] int8, scale[N])` (CPU; on CUDA, where torch has no such kernel, the
  int8 weight is multiplied after a cast per call).
- int4: CPU `torch._weight_int4pack_mm_for_cpu(x, packed, group, scales_and_zeros[K/g, N, 2])` on weights packed by
  `torch._convert_weight_to_int4pack_for_cpu(q + 8 as int32 [N, K], 2)`; CUDA `torch._weight_int4pack_mm` on
  `torch._convert_weight_to_int4pack(uint8 [N, K/2], 8)`. Both compute (q + 8 - 8) * scale + zero with zero = 0.
The packed layouts are the kernels' own (blocked, device-specific); `int_weight()` recovers q exactly.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from ..errors import QuantizationError

INT4_GROUP_SIZES = (32, 64, 128, 256)
DEFAULT_COMPUTE_DTYPE = torch.bfloat16


def _scale(absmax: torch.Tensor, top: float, dtype: torch.dtype) -> torch.Tensor:
    scale = (absmax.float() / top).to(dtype)
    return torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row/group: q = 0 whatever the scale


def _rounded(weight: torch.Tensor, bits: int, group_size: int | None, dtype: torch.dtype,
             symmetric: bool = True, offset: int = 0, out_dtype: torch.dtype = torch.int8
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(q + offset as `out_dtype` [N, K]; scale [N, G] in `dtype`; integer zero point [N, G] as float32, or None
    when symmetric). Asymmetric (int4 only, compressed-tensors' rule): the range [min(w, 0), max(w, 0)] over 16
    levels, zp = clamp(round(-8 - min / scale), -8, 7), q = clamp(round(w / scale + zp), -8, 7), w ~= (q - zp) *
    scale. Worked in blocks of rows of about BLOCK_ELEMENTS float32 values (a bf16 weight is exact in float32): the
    temporaries stay in cache and come from the heap instead of fresh pages (a whole-tensor float32 copy costs ~10x
    its arithmetic in page faults)."""
    n, k = weight.shape
    if bits == 8:
        groups, top, low, high = 1, 127.5, -128, 127
    elif bits == 4:
        groups, top, low, high = k // group_size, 7.5, -8, 7
    else:
        raise QuantizationError(f"bits={bits} is not supported; use 8 or 4.")
    if not symmetric and bits != 4:
        raise QuantizationError("Asymmetric quantization is for int4 only; int8 is symmetric per channel.")
    weight = weight.detach()
    q = torch.empty(n, k, dtype=out_dtype)
    scale = torch.empty(n, groups, dtype=dtype)
    zero = None if symmetric else torch.empty(n, groups)
    step = max(1, BLOCK_ELEMENTS // k)
    for start in range(0, n, step):
        rows = slice(start, start + step)
        w = weight[rows].to(torch.float32, copy=True).view(-1, groups, k // groups)
        smallest, largest = w.amin(-1), w.amax(-1)
        if symmetric and bits == 8:
            scale[rows] = block_scale = _scale(torch.maximum(-smallest, largest), top, dtype)
            block = w.div_(block_scale.float().unsqueeze(-1)).round_().clamp_(low, high)
        elif symmetric:
            block, scale[rows] = _best_symmetric(w, smallest, largest, dtype)
        else:
            block, scale[rows], zero[rows] = _best_range(w, smallest, largest, dtype)
        q[rows] = block.view(-1, k).add_(offset) if offset else block.view(-1, k)
    return q, scale, zero


BLOCK_ELEMENTS = 1 << 18
CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85)  # candidate shrinkings of a group's range; the least squared error wins
REFINE_STEPS = 2  # then this many rounds of (least-squares scale for the chosen integers, re-round)
SYMMETRIC_DIVISORS = (8.0, 8.5, 9.0)  # candidate scales absmax / d of a symmetric int4 group; least squared error wins


def _best_symmetric(w: torch.Tensor, smallest: torch.Tensor, largest: torch.Tensor,
                    dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int4 (no zero point: w ~= q * scale) for rows [R, G, g]. The 16 levels -8..7 are one step longer
    on the negative side; each group turns that side towards its largest magnitude by the sign of its scale (a group
    whose extreme is positive gets a negative scale, so the extreme lands on -8 rather than being clipped at 7).
    Scales absmax / d for d in SYMMETRIC_DIVISORS (d > 8 clips the few largest weights for finer steps) are tried and
    the least squared error kept; then the scale is refitted by least squares for the chosen integers and the weights
    re-rounded once. On Gaussian weights at group 128 this gives a per-layer output cosine of ~0.9953 against 0.9939
    for absmax / 7.5 (the level set is the same; only the scale differs, so the format and kernels are unchanged)."""
    flip = torch.where(largest > -smallest, -1.0, 1.0)
    absmax = torch.maximum(-smallest, largest)
    best_scale = best_error = None
    for divisor in SYMMETRIC_DIVISORS:
        scale = _scale(absmax / divisor, 1.0, dtype) * flip.to(dtype)
        s = scale.float().unsqueeze(-1)
        r = w / s
        error = r.sub_(r.round().clamp_(-8, 7)).square_().sum(-1).mul_(s.squeeze(-1).square())
        if best_scale is None:
            best_scale, best_error = scale, error
            continue
        better = error < best_error
        best_scale = torch.where(better, scale, best_scale)
        best_error = torch.minimum(error, best_error)
    best = (w / best_scale.float().unsqueeze(-1)).round_().clamp_(-8, 7)
    fitted = ((w * best).sum(-1) / (best * best).sum(-1).clamp(min=1e-30)).to(dtype)
    best_scale = torch.where(fitted * flip > 0, fitted, best_scale)  # keep the sign; an all-zero group keeps its 1
    return (w / best_scale.float().unsqueeze(-1)).round_().clamp_(-8, 7), best_scale


def _best_range(w: torch.Tensor, smallest: torch.Tensor, largest: torch.Tensor,
                dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric int4 for rows [R, G, g]: for each group, the range [min(w, 0), max(w, 0)] shrunk by each of
    CLIP_RATIOS, quantized with compressed-tensors' rule; the candidate of least squared error is kept. Then,
    REFINE_STEPS times, its scale is refitted by least squares for its integers (zero point fixed) and the weights
    are re-rounded with it."""
    smallest, largest = smallest.clamp(max=0), largest.clamp(min=0)
    best = best_scale = best_zero = best_error = None
    for ratio in CLIP_RATIOS:
        scale = _scale((largest - smallest) * ratio, 15.0, dtype)
        s = scale.float().unsqueeze(-1)
        zero = (-8 - smallest * ratio / scale.float()).round_().clamp_(-8, 7)
        q = (w / s).add_(zero.unsqueeze(-1)).round_().clamp_(-8, 7)
        error = (q - zero.unsqueeze(-1)).mul_(s).sub_(w).square_().sum(-1)
        if best is None:
            best, best_scale, best_zero, best_error = q, scale, zero, error
            continue
        better = error < best_error
        best = torch.where(better.unsqueeze(-1), q, best)
        best_scale = torch.where(better, scale, best_scale)
        best_zero = torch.where(better, zero, best_zero)
        best_error = torch.minimum(error, best_error)
    for _ in range(REFINE_STEPS):
        d = best - best_zero.unsqueeze(-1)
        fitted = ((w * d).sum(-1) / (d * d).sum(-1).clamp(min=1e-30)).to(dtype)
        best_scale = torch.where(fitted > 0, fitted, best_scale)
        best = (w / best_scale.float().unsqueeze(-1)).add_(best_zero.unsqueeze(-1)).round_().clamp_(-8, 7)
    return best, best_scale, best_zero


def quantize_weight(weight: torch.Tensor, bits: int, group_size: int | None,
                    dtype: torch.dtype = DEFAULT_COMPUTE_DTYPE) -> tuple[torch.Tensor, torch.Tensor]:
    """Float weight [N, K] -> (q int8 [N, K], scale [N, G] in `dtype`); G = 1 for int8 per channel, K / group_size
    for int4."""
    q, scale, _ = _rounded(weight, bits, group_size, dtype)
    return q, scale


def quantize_weight_asymmetric(weight: torch.Tensor, group_size: int, dtype: torch.dtype = DEFAULT_COMPUTE_DTYPE
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Float weight [N, K] -> (q int8, scale [N, K / group_size], zero point int8 [N, K / group_size]), int4."""
    q, scale, zero = _rounded(weight, 4, group_size, dtype, symmetric=False)
    return q, scale, zero.to(torch.int8)


def dequantize_int(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype,
                   zero: torch.Tensor | None = None) -> torch.Tensor:
    """q int8 [N, K], scale [N, G] (and zero point [N, G]) -> float weight [N, K] = (q - zero) * scale."""
    n, k = q.shape
    groups = scale.shape[-1]
    w = q.float().view(n, groups, k // groups)
    if zero is not None:
        w = w - zero.float().view(n, groups, 1)
    w = w * scale.float().view(n, groups, 1)
    return w.view(n, k).to(dtype)


def check_shape(name: str, in_features: int, out_features: int, bits: int, group_size: int | None,
                device: torch.device | str = "cpu") -> None:
    """Raise QuantizationError naming the layer when torch's kernels cannot take its shape."""
    where = f"Layer '{name}' ({in_features} in, {out_features} out)"
    if bits == 8:
        if in_features % 16:
            raise QuantizationError(f"{where} cannot be quantized to int8: torch's int8 kernel needs in_features "
                                    "divisible by 16. Add the layer to modules_to_not_convert to keep it in float.")
        return
    if bits != 4:
        raise QuantizationError(f"{where}: bits={bits} is not supported; use 8 or 4.")
    if group_size not in INT4_GROUP_SIZES:
        raise QuantizationError(f"{where}: int4 group_size {group_size} is not supported by torch's int4 kernel; "
                                f"use one of {', '.join(map(str, INT4_GROUP_SIZES))}.")
    if in_features % group_size:
        raise QuantizationError(f"{where} cannot be quantized to int4 with group_size={group_size}: in_features is "
                                "not divisible by the group size. Use a group size that divides it, or add the "
                                "layer to modules_to_not_convert.")
    multiple = 8 if torch.device(device).type == "cuda" else 16
    if out_features % multiple:
        raise QuantizationError(f"{where} cannot be quantized to int4: torch's int4 kernel needs out_features "
                                f"divisible by {multiple}. Add the layer to modules_to_not_convert.")


# ---- the kernels' packed int4 layouts -----------------------------------------------------------------------------
def _pack_int4(q: torch.Tensor, device: torch.device) -> torch.Tensor:
    """q int8 [N, K] in -8..7 -> the int4 kernel's packed weight on `device`."""
    u = (q.to(torch.int32) + 8)
    if device.type == "cuda":
        u = u.to(device)
        byte = ((u[:, 0::2] << 4) | u[:, 1::2]).to(torch.uint8)
        k = q.shape[1]
        return torch._convert_weight_to_int4pack(byte, 8 if k % 128 == 0 else 4 if k % 64 == 0 else 2)
    return torch._convert_weight_to_int4pack_for_cpu(u.to(device), 2)


@functools.lru_cache(maxsize=4)
def _cpu_int4_positions(n: int, k: int) -> torch.Tensor:
    """For the CPU packed layout of an [n, k] weight: the flat index (row * k + col) held by each nibble, in memory
    order (low nibble first). Found by packing the index's base-16 digits, so it holds for whatever layout torch
    uses; computed once per shape."""
    flat = torch.arange(n * k, dtype=torch.int32).view(n, k)
    positions = torch.zeros(n * k, dtype=torch.int32)
    digit = 0
    while (1 << (4 * digit)) < n * k:
        packed = torch._convert_weight_to_int4pack_for_cpu((flat >> (4 * digit)) & 15, 2)
        nibbles = torch.stack([packed & 15, packed >> 4], dim=-1).reshape(-1).to(torch.int32)
        positions |= nibbles << (4 * digit)
        digit += 1
    return positions.to(torch.int64) if n * k > 2**31 - 1 else positions


def _unpack_int4(packed: torch.Tensor, n: int, k: int, group_size: int) -> torch.Tensor:
    """The kernel's packed weight -> q int8 [N, K] in -8..7 (on the CPU)."""
    if packed.device.type == "cuda":  # the kernel itself, on unit scales: (q + 8 - 8) * 1 + 8 = q + 8, exact
        out = []
        ones = torch.stack([torch.ones(k // group_size, n), torch.full((k // group_size, n), 8.0)], dim=-1)
        ones = ones.to(device=packed.device, dtype=torch.bfloat16)
        for start in range(0, k, 1024):
            eye = torch.eye(k, device=packed.device, dtype=torch.bfloat16)[start:start + 1024]
            out.append(torch._weight_int4pack_mm(eye, packed, group_size, ones).t().float().cpu())
        return (torch.cat(out, dim=1).round() - 8).to(torch.int8)
    positions = _cpu_int4_positions(n, k)
    nibbles = torch.stack([packed & 15, packed >> 4], dim=-1).reshape(-1)
    q = torch.empty(n * k, dtype=torch.uint8)
    q[positions] = nibbles
    return (q.view(n, k).to(torch.int16) - 8).to(torch.int8)


class QuantizedLinear(nn.Module):
    """y = x Wᵀ + b with W held as int8 (bits=8, one scale per output row) or packed int4 (bits=4, one scale per
    row and group). Built on meta by a handler's `prepare` with a float `weight` placeholder (or none, for a
    pre-quantized checkpoint), it becomes real on `set_weight` / `set_quantized`."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, bits: int = 4,
                 group_size: int | None = 128, compute_dtype: torch.dtype = DEFAULT_COMPUTE_DTYPE,
                 device: Any = None, dtype: torch.dtype | None = None, placeholder: bool = True,
                 name: str = "", transposed: bool = False, symmetric: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bits = bits
        self.group_size = group_size if bits == 4 else None
        self.compute_dtype = compute_dtype
        self.name = name
        self.transposed = transposed  # a GPT-2 Conv1D: its checkpoint weight is [in, out]
        self.symmetric = symmetric or bits == 8
        check_shape(name or "Linear", in_features, out_features, bits, self.group_size,
                    device if device is not None and torch.device(device).type != "meta" else "cpu")
        if placeholder:  # receives the float weight while loading
            shape = (in_features, out_features) if transposed else (out_features, in_features)
            self.weight = nn.Parameter(torch.empty(shape, device="meta", dtype=dtype), requires_grad=False)
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype), requires_grad=False)
        else:
            self.register_parameter("bias", None)

    @classmethod
    def from_linear(cls, linear: nn.Module, bits: int, group_size: int | None = 128, *,
                    compute_dtype: torch.dtype = DEFAULT_COMPUTE_DTYPE, name: str = "",
                    placeholder: bool = True, symmetric: bool = True) -> QuantizedLinear:
        """A module for `linear`'s shape; when `linear` holds real weights, they are quantized now."""
        weight = linear.weight
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, bits=bits,
                     group_size=group_size, compute_dtype=compute_dtype, device=weight.device, dtype=weight.dtype,
                     placeholder=placeholder, name=name, symmetric=symmetric)
        if linear.bias is not None:
            module.bias = nn.Parameter(linear.bias.detach(), requires_grad=False)
        if not weight.is_meta:
            module.set_weight(weight.detach(), weight.device)
        return module

    @property
    def is_ready(self) -> bool:
        return "qweight" in self._buffers

    @property
    def logical_weight_numel(self) -> int:
        """The weight's element count (what num_parameters reports for it), once it is held quantized."""
        return self.in_features * self.out_features if self.is_ready else 0

    # -- filling -------------------------------------------------------------------------------------------------
    def set_weight(self, weight: torch.Tensor, device: torch.device | str | None = None) -> None:
        """Quantize a float weight [out, in] ([in, out] for a transposed layer) and keep only the low-bit form
        (on `device`)."""
        if self.transposed:
            weight = weight.t()
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise QuantizationError(f"Layer '{self.name}': weight of shape {list(weight.shape)}, expected "
                                    f"{[self.out_features, self.in_features]}.")
        device = torch.device(device) if device is not None else weight.device
        if self.bits == 4 and device.type == "cpu":  # straight to the packer's input, q + 8 as int32
            u, scale, zero = _rounded(weight, 4, self.group_size, self.compute_dtype, self.symmetric, offset=8,
                                      out_dtype=torch.int32)
            self._install(torch._convert_weight_to_int4pack_for_cpu(u, 2), scale, device, zero)
        else:
            q, scale, zero = _rounded(weight, self.bits, self.group_size, self.compute_dtype, self.symmetric)
            self.set_quantized(q, scale, device, zero)

    def set_quantized(self, q: torch.Tensor, scale: torch.Tensor, device: torch.device | str,
                      zero: torch.Tensor | None = None) -> None:
        """Take integer weights q int8 [out, in] and scales [out, groups] (1 group for int8), and for an asymmetric
        layer integer zero points [out, groups], as they are."""
        device = torch.device(device)
        n, k = self.out_features, self.in_features
        groups = 1 if self.bits == 8 else k // self.group_size
        if tuple(q.shape) != (n, k) or scale.numel() != n * groups:
            raise QuantizationError(f"Layer '{self.name}': quantized weight {list(q.shape)} / scales "
                                    f"{list(scale.shape)} do not fit a [{n}, {k}] int{self.bits} layer with "
                                    f"{groups} group(s) per row.")
        scale = scale.reshape(n, groups).to(self.compute_dtype)
        if (zero is None) != self.symmetric:
            raise QuantizationError(f"Layer '{self.name}': {'no' if zero is None else 'a'} zero point for a "
                                    f"{'symmetric' if self.symmetric else 'asymmetric'} layer.")
        if self.bits == 8:
            self._install(q.to(device=device, dtype=torch.int8).contiguous(), scale, device)
        else:
            self._install(_pack_int4(q, device), scale, device, None if zero is None else zero.reshape(n, groups))

    def _install(self, qweight: torch.Tensor, scale: torch.Tensor, device: torch.device,
                 zero: torch.Tensor | None = None) -> None:
        """Keep the kernel-ready weight and its scales ([N, G]) as buffers; drop the float placeholder. The int4
        kernels compute (u - 8) * scale + offset per group: offset = -zero * scale (0 when symmetric)."""
        self._parameters.pop("weight", None)
        self.register_buffer("qweight", qweight)
        scale = scale.to(self.compute_dtype)
        if self.bits == 8:
            self.register_buffer("scales", scale.reshape(self.out_features).to(device).contiguous())
        else:
            offset = torch.zeros_like(scale) if zero is None else (-zero.float() * scale.float()).to(scale.dtype)
            self.register_buffer("scales", torch.stack([scale.t(), offset.t()], dim=-1).to(device).contiguous())
        if self.bias is not None and self.bias.is_meta:
            pass  # filled by the loader on its own
        elif self.bias is not None and self.bias.device != device:
            self.bias = nn.Parameter(self.bias.detach().to(device), requires_grad=False)

    # -- reading back --------------------------------------------------------------------------------------------
    def int_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(q int8 [out, in] on the CPU, scale [out, groups] in the compute dtype on the CPU), exactly as held."""
        if not self.is_ready:
            raise QuantizationError(f"Layer '{self.name}' holds no quantized weight yet.")
        n, k = self.out_features, self.in_features
        if self.bits == 8:
            return self.qweight.cpu(), self.scales.cpu().reshape(n, 1)
        q = _unpack_int4(self.qweight, n, k, self.group_size)
        return q, self.scales[..., 0].t().contiguous().cpu()

    def zero_point(self) -> torch.Tensor | None:
        """Integer zero points [out, groups] (int8, CPU) of an asymmetric int4 layer; None when symmetric."""
        if self.symmetric:
            return None
        scale, offset = self.scales[..., 0].float(), self.scales[..., 1].float()
        return (-offset / scale).round().t().to(torch.int8).contiguous().cpu()

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        q, scale = self.int_weight()
        return dequantize_int(q, scale, dtype or self.compute_dtype, self.zero_point()).to(self.qweight.device)

    def to_linear(self, dtype: torch.dtype | None = None) -> nn.Linear:
        """An nn.Linear holding the dequantized weight (and the bias)."""
        weight = self.dequantized_weight(dtype or (self.bias.dtype if self.bias is not None else None))
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        linear.weight = nn.Parameter(weight)
        if self.bias is not None:
            linear.bias = nn.Parameter(self.bias.detach().clone())
        return linear

    # -- running -------------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape, in_dtype = x.shape, x.dtype
        work = self.scales.dtype
        x2 = x.reshape(-1, self.in_features).to(work)
        if self.bits == 8:
            if self.qweight.device.type == "cuda":
                y = torch.matmul(x2, self.qweight.t().to(work)) * self.scales
            else:
                y = torch._weight_int8pack_mm(x2.contiguous(), self.qweight, self.scales)
        elif self.qweight.device.type == "cuda":
            y = torch._weight_int4pack_mm(x2.contiguous(), self.qweight, self.group_size, self.scales)
        else:
            y = torch._weight_int4pack_mm_for_cpu(x2.contiguous(), self.qweight, self.group_size, self.scales)
        y = y.reshape(*shape[:-1], self.out_features).to(in_dtype)
        if self.bias is not None:
            y = y + self.bias.to(in_dtype)
        return y

    def _apply(self, fn, recurse=True):
        """`.to()` / `.cuda()` / `.half()` on the module: dtype changes apply to the scales (the compute dtype follows
        them); the int4 packed layout belongs to the device type it was packed for, so it is repacked on a move
        between the CPU and CUDA (and refused elsewhere, e.g. to "meta")."""
        qweight = self._buffers.get("qweight")
        if qweight is None or self.bits != 4:
            return super()._apply(fn, recurse)
        target = fn(torch.empty(0, device=qweight.device)).device
        if target.type == qweight.device.type:
            result = super()._apply(fn, recurse)
            self.compute_dtype = self.scales.dtype
            return result
        if target.type not in ("cpu", "cuda"):
            raise QuantizationError(f"Layer '{self.name}': int4 weights cannot move to '{target}'; dequantize() the "
                                    "model first.")
        q, scale = self.int_weight()
        zero = self.zero_point()
        super()._apply(fn, recurse)
        self.compute_dtype = self.scales.dtype
        self.set_quantized(q, scale, target, zero)
        return self

    def extra_repr(self) -> str:
        kind = "int8 per-channel" if self.bits == 8 else f"int4 group_size={self.group_size}" + (
            "" if self.symmetric else " asymmetric")
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, {kind}")
