"""The registry of published weights: a name -> a Hub repo at a fixed revision, with the sha256 of every file.

``moezoo weights`` lists it (timm's ``list_models(pretrained=True)``), ``moezoo download NAME`` fetches a set into the
normal Hugging Face cache with ``hf_hub_download`` (``HF_ENDPOINT``, ``HF_HOME``, ``HF_HUB_OFFLINE`` apply) and checks
every sha256, ``create_model(NAME, pretrained=True)`` builds the model from it, and ``moezoo fit|test|predict --task X
--weights NAME`` starts from it.

The packaged registry is ``moezoo/weights.yaml``; ``MOEZOO_WEIGHTS`` names more registry files (``os.pathsep``
separated: a lab's own hub or mirror), whose entries add to it. An entry::

    digits-moe-vit:
      task: image-classification          # the registered task variant the weights belong to
      repo: owner/name                    # a Hub model repo (a hub folder: config.json, model.safetensors, README.md)
      revision: 0123...cdef               # the commit (a branch or tag name also works, but does not pin)
      files: {config.json: <sha256>, model.safetensors: <sha256>}
      metrics: {test/acc: 0.99}           # what the weights measured (shown by `moezoo weights`)
      description: one line

Small weights ship inside the package instead: ``path: weights/<folder>`` (relative to the ``moezoo`` package) in
place of ``repo`` and ``revision``; ``download`` then checks their sha256 and returns that folder.
"""

from __future__ import annotations

import difflib
import hashlib
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from moezoo.errors import MoezooError
from moezoo.hub import CONFIG_NAME, WEIGHTS_NAME

REQUIRED_FILES = (CONFIG_NAME, WEIGHTS_NAME)


@dataclass(frozen=True)
class PublishedWeights:
    name: str
    task: str
    repo: str | None
    revision: str | None
    files: dict[str, str]
    metrics: dict[str, float] = field(default_factory=dict)
    description: str = ""
    source: str = ""  # the registry file that lists it
    path: str | None = None  # packaged weights: a folder relative to the moezoo package

    @property
    def where(self) -> str:
        return f"packaged {self.path}" if self.path else f"{self.repo}@{(self.revision or '')[:12]}"


def _entry(name: str, entry, source: str) -> PublishedWeights:
    where = f"{source}: {name}"
    if not isinstance(entry, dict):
        raise MoezooError(f"{where}: expected a mapping with task, repo, revision and files")
    needed = ("task", "files") + (() if "path" in entry else ("repo", "revision"))
    missing = [key for key in needed if key not in entry]
    if missing:
        raise MoezooError(f"{where}: missing {', '.join(missing)} (give repo and revision, or a packaged path)")
    files = entry["files"]
    if not isinstance(files, dict) or not set(REQUIRED_FILES) <= set(files):
        raise MoezooError(f"{where}: files must give the sha256 of {' and '.join(REQUIRED_FILES)}")
    for filename, digest in files.items():
        if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
            raise MoezooError(f"{where}: files.{filename} must be a sha256 (64 lowercase hex digits), got {digest!r}")
    unknown = set(entry) - {"task", "repo", "revision", "path", "files", "metrics", "description"}
    if unknown:
        raise MoezooError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
    text = {key: None if entry.get(key) is None else str(entry[key]) for key in ("repo", "revision", "path")}
    return PublishedWeights(name, str(entry["task"]), text["repo"], text["revision"], dict(files),
                            dict(entry.get("metrics") or {}), str(entry.get("description") or ""), source,
                            text["path"])


def _read_registry(path: Path) -> dict[str, PublishedWeights]:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise MoezooError(f"{path}: not a readable weights registry ({type(err).__name__})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MoezooError(f"{path}: a weights registry is a mapping name -> entry")
    return {str(name): _entry(str(name), entry, str(path)) for name, entry in data.items()}


def registry_files() -> list[Path]:
    """The packaged registry, then each file of ``MOEZOO_WEIGHTS``."""
    files = [Path(str(resources.files("moezoo").joinpath("weights.yaml")))]
    files += [Path(p).expanduser() for p in os.environ.get("MOEZOO_WEIGHTS", "").split(os.pathsep) if p]
    return files


def list_weights() -> dict[str, PublishedWeights]:
    """Every registered set of weights by name, sorted (a later registry's entry replaces an earlier one's)."""
    found: dict[str, PublishedWeights] = {}
    for path in registry_files():
        if not path.is_file():
            raise MoezooError(f"MOEZOO_WEIGHTS: no such registry file: {path}")
        found.update(_read_registry(path))
    return dict(sorted(found.items()))


def resolve_weights(name: str) -> PublishedWeights:
    """The entry called ``name``; an unknown name lists the known ones and the closest."""
    known = list_weights()
    if name in known:
        return known[name]
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.4)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    listed = ", ".join(known) if known else "none are registered (add a registry with MOEZOO_WEIGHTS)"
    raise MoezooError(f"unknown weights {name!r}.{hint} Known weights: {listed} (see `moezoo weights`)")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(name: str, *, files: list[str] | None = None, cache_dir: str | Path | None = None,
             force_download: bool = False) -> Path:
    """Fetches the files of the weights ``name`` (all, or ``files``) into the Hugging Face cache and checks each
    sha256; returns the folder. A downloaded file whose sha256 differs from the registry's is deleted from the cache
    (so a retry downloads it again) and named in the error; a packaged one is named (reinstall moezoo)."""
    from moezoo.hub import resolve_file

    weights = resolve_weights(name)
    packaged = Path(str(resources.files("moezoo").joinpath(weights.path))) if weights.path is not None else None
    folder = packaged
    for filename in files or list(weights.files):
        expected = weights.files[filename]
        if packaged is not None:
            path = packaged / filename
            if not path.is_file():
                raise MoezooError(f"weights {name}: packaged file {path} is missing (reinstall moezoo)")
        else:
            path = resolve_file(weights.repo, filename, revision=weights.revision, cache_dir=cache_dir,
                                force_download=force_download)
        if (actual := sha256_of(path)) != expected:
            if packaged is not None:
                raise MoezooError(f"weights {name}: packaged {path} has sha256 {actual}, the registry says "
                                  f"{expected} (reinstall moezoo)")
            blob = path.resolve()
            path.unlink(missing_ok=True)
            blob.unlink(missing_ok=True)
            raise MoezooError(f"weights {name}: {filename} has sha256 {actual}, the registry says {expected}; the "
                              f"downloaded file was deleted ({path})")
        folder = path.parent
    return folder


def weights_folder(name: str) -> Path:
    """``name`` as a hub folder: a local folder as it is, else the registered weights of that name, downloaded
    and checked (``download``): what ``--weights NAME|DIR`` accepts."""
    folder = Path(name).expanduser()
    return folder if folder.is_dir() else download(name)


def create_model(name: str, pretrained: bool = True):
    """The task model of the weights ``name`` (timm's ``create_model``): with ``pretrained``, its weights (downloaded
    and checked); without, the same architecture freshly initialised (only ``config.json`` is fetched)."""
    from moezoo import hub
    from moezoo.training.task import TaskModule

    if pretrained:
        model = hub.load_folder(TaskModule, str(download(name)))
    else:
        config = hub.read_config(download(name, files=[CONFIG_NAME]) / CONFIG_NAME)
        model = hub.build_model(config["model"], f"weights {name}: {CONFIG_NAME}").eval()
    model.hub_task = resolve_weights(name).task
    return model


def print_weights() -> None:
    """``moezoo weights``: one line per set: name, task, size of its weights file if cached, metrics."""
    known = list_weights()
    if not known:
        print("no weights are registered yet (moezoo/weights.yaml is empty; add your own with MOEZOO_WEIGHTS=FILE)")
        return
    width, task_width = max(len(n) for n in known), max(len(w.task) for w in known.values())
    for name, weights in known.items():
        metrics = ", ".join(f"{k} {v:.4g}" for k, v in weights.metrics.items())
        size = sum((Path(str(resources.files("moezoo").joinpath(weights.path))) / f).stat().st_size
                   for f in weights.files) if weights.path else None
        shown = f"  {size / 1e6:.2f} MB" if size is not None else ""
        print(f"{name:<{width}}  {weights.task:<{task_width}}  {weights.where}{shown}  {metrics}".rstrip())
