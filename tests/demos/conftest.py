"""Demo tests: each app launched on 127.0.0.1, driven through gradio_client and in headless Chromium.

The browser is Debian's ``chromium`` (``.ci/run`` installs it; ``MOEZOO_CHROMIUM`` names another), driven by
Playwright for Python with ``executable_path``: no browser download. Browser tests skip only where none is installed.
Gradio's uploads and caches go to a temporary folder, removed at the end of the session.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

_GRADIO_TMP = tempfile.mkdtemp(prefix="moezoo-gradio-")
os.environ["GRADIO_TEMP_DIR"] = _GRADIO_TMP  # read when gradio is imported: before any test imports it
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
CHROMIUM = os.environ.get("MOEZOO_CHROMIUM", "/usr/bin/chromium")
# as the machine's own probe starts it: no sandbox (root), no GPU, and no background connections (closed network)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_GRADIO_TMP, ignore_errors=True)


@pytest.fixture
def serve():
    """``serve(app)`` launches a Blocks app on 127.0.0.1 (a free port) and returns its URL; closed after the test."""
    from moezoo.demos import launch

    apps = []

    def start(app) -> str:
        apps.append(app)
        return launch(app, block=False)

    yield start
    for app in apps:
        app.close()


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no browser at {CHROMIUM} (apt-get install chromium; .ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, tmp_path):
    """A fresh page (1280 x 1000); the test saves its screenshots under ``tmp_path``."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    yield page
    context.close()
