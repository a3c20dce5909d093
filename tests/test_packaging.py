"""The built wheel holds every task package, the kernels and demos packages, and every packaged YAML config."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# build outputs and environments: a stale build/lib would put files into the wheel that setup.py no longer maps
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", ".ci-venv", "build", "dist", "*.egg-info", "__pycache__",
                                    ".pytest_cache", ".ruff_cache", "runs", "lightning_logs", "tests")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built, as `pip wheel` builds it, from a clean copy of the source tree."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                           "--quiet", "-w", str(tmp / "dist")], cwd=tmp, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"(needs setuptools>=77 and wheel in the venv: the dev extras)\n{done.stderr[-3000:]}"
    return next((tmp / "dist").glob("moezoo-*.whl"))


def test_wheel_contains_every_task_package_and_config(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    task_packages = [p.parent for p in (ROOT / "tasks").glob("*/__init__.py")]
    configs = list((ROOT / "configs").rglob("*.yaml"))
    assert task_packages and configs
    expected = {"moezoo/__init__.py", "moezoo/moe/__init__.py", "moezoo/kernels/__init__.py",
                "moezoo/demos/__init__.py", "moezoo/tasks/__init__.py", "moezoo/configs/__init__.py"}
    expected |= {f"moezoo/tasks/{p.name}/__init__.py" for p in task_packages}
    for folder in ("tasks", "kernels", "demos"):
        expected |= {f"moezoo/{p.relative_to(ROOT).as_posix()}" for p in (ROOT / folder).rglob("*.py")}
    expected |= {f"moezoo/configs/{p.relative_to(ROOT / 'configs').as_posix()}" for p in configs}
    expected |= {f"moezoo/tasks/graph/cora/raw/{p.name}" for p in (ROOT / "tasks/graph/cora/raw").iterdir()}
    expected |= {"moezoo/weights.yaml"} | {f"moezoo/{p.relative_to(ROOT / 'moezoo').as_posix()}"
                                          for p in (ROOT / "moezoo/weights").rglob("*") if p.is_file()}
    assert "moezoo/weights/moe-vit-digits/model.safetensors" in expected
    assert "moezoo/configs/image-classification/default.yaml" in expected
    assert expected <= names, sorted(expected - names)
    assert not any(name.startswith(("tasks/", "kernels/", "demos/", "configs/", "tests/")) for name in names)
    assert any(name.endswith(".dist-info/entry_points.txt") for name in names)


def test_installed_wheel_registers_every_packaged_task(wheel, tmp_path):
    """The registry finds its YAMLs through importlib.resources in the installed wheel, not in the source tree."""
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:  # a wheel is installed by unpacking it
        archive.extractall(target)
    code = ("import moezoo, moezoo.registry as r; print(moezoo.__file__); "
            "print('\\n'.join(f'{n} {v.config}' for n, v in r.list_tasks().items()))")
    env = {**os.environ, "PYTHONPATH": str(target)}  # ahead of the editable install's finder
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60, check=True)
    first, *tasks = done.stdout.splitlines()
    assert Path(first).is_relative_to(target)
    registered = dict(line.split(" ", 1) for line in tasks)
    families = {p.parent.name for p in (ROOT / "configs").glob("*/*.yaml")}
    assert "image-classification" in registered and {name.split("/")[0] for name in registered} == families
    assert len(registered) == len(list((ROOT / "configs").glob("*/*.yaml")))
    assert all(Path(config).is_relative_to(target) for config in registered.values())
