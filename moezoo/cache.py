"""moezoo's own cache folder: ``$MOEZOO_CACHE``, default ``~/.cache/moezoo`` (weights go to the Hugging Face cache)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """What moezoo computes once and reuses: the DiT's FID-cls classifiers, the runs the demos train themselves."""
    return Path(os.environ.get("MOEZOO_CACHE", Path.home() / ".cache" / "moezoo"))
