"""Fixtures of the kernel tests. Without a GPU they run the Triton kernels in Triton's CPU interpreter:
TRITON_INTERPRET is set by tests/conftest.py, before anything imports triton (test_triton_kernels.py checks that the
kernels did load interpreted). With a GPU the kernels compile.
"""

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


class Guard:
    """Outputs allocated as views inside NaN-filled buffers, to catch out-of-bounds stores (the interpreter does not
    check bounds), and inputs placed the same way, so that an out-of-bounds load turns a result into NaN."""

    def __init__(self, pad: int = 3):
        self.pad = pad
        self.buffers: list[tuple[torch.Tensor, tuple[slice, ...]]] = []

    def __call__(self, *shape: int, dtype=torch.float32, fill: torch.Tensor | None = None) -> torch.Tensor:
        p = self.pad
        buffer = torch.full([n + 2 * p for n in shape], float("nan"), dtype=dtype, device=DEVICE)
        inner = tuple(slice(p, p + n) for n in shape)
        self.buffers.append((buffer, inner))
        view = buffer[inner]  # strides of the padded buffer: also tests that the kernels honour strides
        if fill is not None:
            view.copy_(fill)
        return view

    def assert_intact(self) -> None:
        for buffer, inner in self.buffers:
            outside = torch.ones_like(buffer, dtype=torch.bool)
            outside[inner] = False
            assert torch.isnan(buffer[outside]).all(), "a kernel wrote outside its output"


@pytest.fixture
def guard():
    g = Guard()
    yield g
    g.assert_intact()
