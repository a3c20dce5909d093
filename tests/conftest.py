import pytest


@pytest.fixture(scope="session")
def _moezoo_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("moezoo-cache")


@pytest.fixture(autouse=True)
def _caches_in_tmp(tmp_path, monkeypatch, _moezoo_cache):
    """Keep matplotlib's and inductor's caches inside the test's tmp dir so tests leave nothing behind."""
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setenv("MOEZOO_CACHE", str(_moezoo_cache))  # one FID-cls classifier per session, not in ~/.cache
