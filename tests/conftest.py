import pytest


@pytest.fixture(autouse=True)
def _caches_in_tmp(tmp_path, monkeypatch):
    """Keep matplotlib's and inductor's caches inside the test's tmp dir so tests leave nothing behind."""
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
