"""The torch reference backend's grouped GEMMs: torch's grouped_mm where it applies, a per-expert loop elsewhere.

``moezoo::grouped_mm`` runs these for backend ``reference`` (``ops.py`` makes them differentiable). Inside the op
torch.compile does not trace them, so torch's grouped_mm, which inductor cannot compile in fp32 on CPU, runs in
compiled programs in every dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_torch_grouped_mm = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)
_FAST_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def sort_by_expert(expert_index: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Order that groups assignments by expert (stable), and the int32 cumulative end offset of each expert, [E]."""
    order = torch.argsort(expert_index, stable=True)
    counts = torch.bincount(expert_index, minlength=num_experts)
    return order, torch.cumsum(counts, 0).to(torch.int32)


def _aligned(t: torch.Tensor) -> bool:
    # torch's grouped_mm needs each matrix row-major or column-major (a transposed view is fine: no copy needed)
    # with 16-byte aligned leading strides.
    size = t.element_size()
    row_major = t.stride(-1) == 1 and (t.stride(-2) * size) % 16 == 0
    col_major = t.stride(-2) == 1 and (t.stride(-1) * size) % 16 == 0
    return (row_major or col_major) and t.data_ptr() % 16 == 0


def _fast_path_ok(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        _torch_grouped_mm is not None
        and a.dtype in _FAST_DTYPES
        and a.dtype == b.dtype
        and a.device.type in ("cpu", "cuda")
        and _aligned(a)
        and _aligned(b)
    )


def _bounds(offsets: torch.Tensor) -> list[tuple[int, int]]:
    ends = offsets.tolist()
    return list(zip([0] + ends[:-1], ends))


def grouped_mm_forward(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """out[rows of expert e] = x[rows of expert e] @ w[e]; x [N, K], w [E, K, M], offsets [E] int32 -> [N, M]."""
    if x.shape[0] == 0:
        return x.new_zeros(0, w.shape[-1])
    if _fast_path_ok(x, w):
        return _torch_grouped_mm(x, w, offs=offsets)
    out = x.new_empty(x.shape[0], w.shape[-1])
    for e, (start, end) in enumerate(_bounds(offsets)):
        if end > start:
            torch.mm(x[start:end], w[e], out=out[start:end])
    return out


def grouped_weight_grad(x: torch.Tensor, grad: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """dW[e] = x[rows of e]^T @ grad[rows of e]; x [N, K], grad [N, M] -> [E, K, M] (zero for empty experts)."""
    num_experts = offsets.numel()
    xt = x.t()
    if x.shape[0] > 0 and _fast_path_ok(xt, grad):
        return _torch_grouped_mm(xt, grad, offs=offsets)
    out = x.new_zeros(num_experts, x.shape[1], grad.shape[1])
    for e, (start, end) in enumerate(_bounds(offsets)):
        if end > start:
            torch.mm(xt[:, start:end], grad[start:end], out=out[e])
    return out
