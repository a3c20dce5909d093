"""The built wheel holds every task package, the kernels and demos packages, and every packaged YAML config."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contains_every_task_package_and_config(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                    "--quiet", "-w", str(tmp_path)], check=True, cwd=tmp_path, timeout=300)
    wheel = next(tmp_path.glob("moezoo-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {"moezoo/__init__.py", "moezoo/moe/__init__.py", "moezoo/kernels/__init__.py",
                "moezoo/demos/__init__.py", "moezoo/tasks/__init__.py", "moezoo/configs/__init__.py"}
    expected |= {f"moezoo/tasks/{p.parent.name}/__init__.py" for p in (ROOT / "tasks").glob("*/__init__.py")}
    expected |= {f"moezoo/tasks/{p.relative_to(ROOT / 'tasks').as_posix()}" for p in (ROOT / "tasks").rglob("*.py")}
    expected |= {f"moezoo/configs/{p.relative_to(ROOT / 'configs').as_posix()}"
                 for p in (ROOT / "configs").glob("*/*.yaml")}
    expected |= {f"moezoo/tasks/graph/cora/raw/{p.name}" for p in (ROOT / "tasks/graph/cora/raw").iterdir()}
    assert any(name.startswith("moezoo/configs/image-classification/") for name in expected)
    assert expected <= names, sorted(expected - names)
    assert not any(name.startswith(("tasks/", "kernels/", "configs/", "tests/")) for name in names)
