"""Package layout (DESIGN.md): kernels/, tasks/, demos/ and configs/ live at the top level and install as
moezoo.kernels, moezoo.tasks, moezoo.demos and moezoo.configs. Everything else is in pyproject.toml."""

from setuptools import find_packages, setup

MAPPED = {"moezoo.kernels": "kernels", "moezoo.tasks": "tasks", "moezoo.demos": "demos", "moezoo.configs": "configs"}

packages = find_packages(include=["moezoo", "moezoo.*"])
for package, folder in MAPPED.items():
    packages += [package] + [f"{package}.{sub}" for sub in find_packages(folder)]

setup(packages=packages, package_dir={"moezoo": "moezoo", **MAPPED})
