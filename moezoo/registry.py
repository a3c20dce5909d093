"""The task registry: every packaged ``configs/<family>/<variant>.yaml`` is a task variant.

A variant is named ``<family>/<variant>``; a family's ``default.yaml`` is also named by the family alone
(``--task image-classification``). The YAML's first line, a ``# `` comment, is the variant's description.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from moezoo.errors import MoezooError


@dataclass(frozen=True)
class TaskVariant:
    name: str
    config: Path
    description: str


def _configs_root() -> Path:
    return Path(str(resources.files("moezoo.configs")))


def list_tasks() -> dict[str, TaskVariant]:
    """All registered variants by name, sorted."""
    variants = {}
    for path in sorted(_configs_root().glob("*/*.yaml")):
        family, variant = path.parent.name, path.stem
        name = family if variant == "default" else f"{family}/{variant}"
        first = path.read_text().splitlines()[:1]
        description = first[0].lstrip("#").strip() if first and first[0].startswith("#") else ""
        variants[name] = TaskVariant(name, path, description)
    return variants


def resolve_task(name: str) -> TaskVariant:
    """The variant called ``name``; an unknown name is a MoezooError listing the valid ones and the closest."""
    tasks = list_tasks()
    if name in tasks:
        return tasks[name]
    if name.endswith("/default") and name.rsplit("/", 1)[0] in tasks:
        return tasks[name.rsplit("/", 1)[0]]
    close = difflib.get_close_matches(name, list(tasks), n=1, cutoff=0.4)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise MoezooError(f"unknown task {name!r}.{hint} Valid tasks: {', '.join(tasks)} (see `moezoo tasks`)")
