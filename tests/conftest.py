"""Session-wide test settings.

Without a GPU the Triton backend's kernels run in Triton's CPU interpreter: TRITON_INTERPRET must be set before
triton itself is imported (its standard library, e.g. ``tl.cumsum``, is decorated at import), and many test modules
load triton indirectly (torch._dynamo), so it is set here, in the first conftest pytest reads. ``import torch``
does not load triton.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def _moezoo_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("moezoo-cache")


@pytest.fixture(autouse=True)
def _caches_in_tmp(tmp_path, monkeypatch, _moezoo_cache):
    """Keep matplotlib's and inductor's caches inside the test's tmp dir so tests leave nothing behind."""
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setenv("MOEZOO_CACHE", str(_moezoo_cache))  # one FID-cls classifier per session, not in ~/.cache


@pytest.fixture
def one_thread():
    """One intra-op thread (modules of tiny CLI runs ask for it with ``pytestmark``): as fast for these tiny models,
    and far faster when other processes hold the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
