"""Launch settings shared by the Triton kernels: interpreter detection, autotune configs, fp32 dot precision.

Under ``TRITON_INTERPRET=1`` every kernel gets exactly one small config (the interpreter runs programs one by one in
numpy, so benchmarking configs there is pointless). All tiles are >= 16 in every dimension, the minimum ``tl.dot``
compiles for, so the interpreter's config also runs on a GPU.
"""

from __future__ import annotations

import torch
import triton

# Read once, when the kernels are decorated: @triton.jit picks the interpreter or the compiler at decoration time.
INTERPRET: bool = bool(triton.knobs.runtime.interpret)


def _configs(interpreter: dict, gpu: list[tuple[dict, int, int]]) -> list[triton.Config]:
    if INTERPRET:
        return [triton.Config(interpreter)]
    return [triton.Config(meta, num_warps=warps, num_stages=stages) for meta, warps, stages in gpu]


def gemm_configs() -> list[triton.Config]:
    """Tiles for the row-scattered grouped GEMM (rows of one expert x output columns, looping over K)."""
    return _configs(
        {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 16},
        [
            ({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32}, 4, 4),
            ({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 32}, 4, 4),
            ({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32}, 4, 4),
            ({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32}, 8, 3),
            ({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64}, 8, 3),
            ({"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 64}, 4, 4),  # many experts with few rows each
        ],
    )


def xty_configs() -> list[triton.Config]:
    """Tiles for the per-expert weight gradient (K x N output tile, looping over the expert's rows)."""
    return _configs(
        {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 16},
        [
            ({"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 64}, 4, 4),
            ({"BLOCK_M": 32, "BLOCK_N": 128, "BLOCK_K": 128}, 4, 4),
            ({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64}, 8, 3),
            ({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 128}, 4, 3),
        ],
    )


def segment_configs() -> list[triton.Config]:
    """Tiles for the token-major reductions (tokens x columns)."""
    return _configs(
        {"BLOCK_T": 16, "BLOCK_D": 32},
        [
            ({"BLOCK_T": 16, "BLOCK_D": 128}, 4, 2),
            ({"BLOCK_T": 16, "BLOCK_D": 256}, 4, 2),
            ({"BLOCK_T": 32, "BLOCK_D": 64}, 4, 2),
        ],
    )


def rows_bucket(rows: int) -> int:
    """Autotune key for a row count that changes every batch: its power-of-two bucket (tuning runs once per bucket)."""
    return triton.next_power_of_2(max(rows, 1))


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 dots follow torch's own switch (TF32 only where ``torch.backends.cuda.matmul.allow_tf32`` allows it), so
    the backend matches the reference's precision; fp16/bf16 dots are exact products accumulated in fp32 anyway."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"
