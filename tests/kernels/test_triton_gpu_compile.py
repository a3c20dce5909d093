"""Every Triton kernel compiles for a GPU (sm_90 and sm_80, to a cubin with triton's bundled ptxas) in fp32, fp16 and
bf16 with its GPU autotune configs: no GPU needed, and it catches what the CPU interpreter lets through (type
mismatches between branches, tiles that tl.dot rejects, bf16, which the interpreter cannot run)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

GEMM_VARIANTS = [  # (EPILOGUE, ACT, GLU, HAS_BIAS, HAS_SCALE, HAS_GATHER, HAS_SCATTER, SAVE_PRE)
    (0, 0, False, True, True, True, True, False),  # GEMM 2 / dX: scattered rows
    (1, 2, True, True, False, True, False, True),  # GEMM 1: gathered rows, SwiGLU epilogue
    (2, 3, False, False, True, True, False, True),  # dH: GELU backward epilogue
    (2, 4, True, False, True, True, False, True),  # dH: GLU backward epilogue
]


def compile_for_gpu(arch: int, all_configs: bool) -> int:
    """Compile the kernels for ``arch`` (called in a subprocess without TRITON_INTERPRET); returns the count."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from moezoo.kernels.triton import configs
    from moezoo.kernels.triton.group_xty import _group_xty_kernel
    from moezoo.kernels.triton.scatter_gemm import _scatter_gemm_kernel
    from moezoo.kernels.triton.segment import _gathered_row_dot_kernel, _segment_sum_kernel

    assert not configs.INTERPRET
    target = GPUTarget("cuda", arch, 32)
    count = 0

    def build(kernel, pointers, constexprs, config):
        nonlocal count
        constexprs = {**constexprs, **config.kwargs}
        signature = {n: "constexpr" if n in constexprs else pointers.get(n, "i32") for n in kernel.fn.arg_names}
        source = ASTSource(fn=kernel.fn, signature=signature, constexprs=constexprs)
        triton.compile(source, target=target, options={"num_warps": config.num_warps, "num_stages": config.num_stages})
        count += 1

    def pick(found):
        return found if all_configs else found[:1]

    for dtype in ("fp32", "fp16", "bf16"):
        p = "*" + dtype
        index = {"gather_ptr": "*i32", "scatter_ptr": "*i32", "offsets_ptr": "*i32", "scale_ptr": "*fp32"}
        for config in pick(configs.gemm_configs()):
            for epilogue, act, glu, bias, scale, gather, scatter, save in GEMM_VARIANTS:
                constexprs = dict(HAS_BIAS=bias, HAS_SCALE=scale, HAS_GATHER=gather, HAS_SCATTER=scatter,
                                  EPILOGUE=epilogue, ACT=act, GLU=glu, SAVE_PRE=save, E_BLOCK=64,
                                  DOT_PRECISION="ieee" if dtype == "fp32" else "tf32")
                unused = {"b_ptr": bias, "scale_ptr": scale, "gather_ptr": gather, "scatter_ptr": scatter,
                          "h_ptr": save or epilogue == 2}
                constexprs.update({name: None for name, used in unused.items() if not used})
                pointers = {**index, **{n: p for n in ("x_ptr", "w_ptr", "b_ptr", "y_ptr", "h_ptr")}}
                build(_scatter_gemm_kernel, pointers, constexprs, config)
        for config in pick(configs.xty_configs()):
            pointers = {"x_ptr": p, "dy_ptr": p, "dw_ptr": p, "db_ptr": p, "scale_ptr": "*fp32",
                        "gather_x_ptr": "*i32", "gather_dy_ptr": "*i32", "offsets_ptr": "*i32"}
            build(_group_xty_kernel, pointers, dict(HAS_BIAS=True, HAS_SCALE=True, GATHER_X=True, GATHER_DY=True,
                                                    DOT_PRECISION="tf32"), config)
        for config in pick(configs.segment_configs()):
            build(_segment_sum_kernel, {"src_ptr": p, "y_ptr": p, "weight_ptr": "*fp32", "ends_ptr": "*i32"},
                  {"HAS_WEIGHT": True}, config)
            build(_gathered_row_dot_kernel, {"a_ptr": p, "b_ptr": p, "out_ptr": "*fp32", "b_rows_ptr": "*i32",
                                             "out_index_ptr": "*i32"}, {}, config)
    return count


@pytest.mark.parametrize("arch,all_configs", [(90, False), pytest.param(80, True, marks=pytest.mark.slow)],
                         ids=["sm90-first-config", "sm80-every-config"])
def test_every_kernel_compiles_for_the_gpu_in_fp32_fp16_and_bf16(arch, all_configs, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_triton_gpu_compile as t; "
            f"print(t.compile_for_gpu({arch}, {all_configs}))")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-4000:]
    compiled = int(done.stdout.split()[-1])
    assert compiled >= 3 * (len(GEMM_VARIANTS) + 1 + 2), f"{compiled} kernels compiled"
