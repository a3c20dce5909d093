"""CI runs exactly the README's install and test commands."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readmes_install_and_test_commands():
    readme = ROOT.joinpath("README.md").read_text()
    ci = [line.strip() for line in ROOT.joinpath(".ci/run").read_text().splitlines()]
    install = ci[ci.index("# README: install") + 1]
    test = ci[ci.index("# README: test") + 1]
    assert f"    {install}\n" in readme and f"    {test}\n" in readme
    assert install.startswith("pip install -e") and test == "pytest"
