"""Hub folders of task models: ``save_pretrained`` / ``from_pretrained`` through huggingface_hub, and ``export``.

A folder (local, or a Hub repo in the same layout) holds:

- ``config.json``: ``{"moezoo": {"format", "version", "task"}, "model": {"class_path", "init_args"}}``. The model
  part is the jsonargparse config of the task module (what its checkpoint's hyper-parameters hold, with the
  networks of dependency injection as nested ``class_path`` dicts), so the model is rebuilt from it alone: no data
  module, no trainer (the sizes the data decided are among its arguments, linked at parse time).
- ``model.safetensors``: the state dict (weights load only from safetensors, never from a pickle).
- ``README.md``: the model card (task variant, data, metrics, the command that trained it, licence).
- ``data.json`` (optional): the data module's fitted encoders, for a family whose inputs need them (CTR's
  vocabularies and numeric statistics): the data module's ``state_dict()``, which Lightning also saves in every
  checkpoint; ``model.hub_data_state`` holds it after loading.

``TaskModule`` inherits huggingface_hub's ``ModelHubMixin`` with the two hooks below, so every task model has
``save_pretrained(dir)``, ``from_pretrained(dir_or_repo_id, revision=...)`` and ``push_to_hub`` as every Hub library's
models do. ``from_pretrained`` on a task class refuses a folder of another class by name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from moezoo.errors import MoezooError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
DATA_NAME = "data.json"  # optional: the data module's fitted encoders (vocabularies, statistics), when it has any
FORMAT = 1
_LIGHTNING_KEYS = ("_class_path", "_instantiator")


def class_path_of(model: nn.Module) -> str:
    """The import path of ``model``'s class as configs name it (``moezoo.tasks.dit.DiTTask``)."""
    hparams = getattr(model, "hparams", {}) or {}
    return hparams.get("_class_path") or f"{type(model).__module__}.{type(model).__qualname__}"


def model_config(model: nn.Module) -> dict[str, Any]:
    """``{"class_path", "init_args"}`` of a task model, from its saved hyper-parameters (``save_hyperparameters``).

    A model built by the CLI (or from a config) holds its injected networks as ``class_path`` dicts; one built in
    Python with an object where a config is expected (a ``functools.partial``, a module) cannot be written as JSON:
    that is a MoezooError naming the argument.
    """
    class_path = class_path_of(model)
    init_args = {k: v for k, v in dict(getattr(model, "hparams", {}) or {}).items() if k not in _LIGHTNING_KEYS}
    for key, value in init_args.items():
        if not _plain(value):
            raise MoezooError(
                f"{class_path}: argument {key!r} ({type(value).__name__}) cannot be written to {CONFIG_NAME}; give it "
                f"as a config ({{'class_path': ..., 'init_args': ...}}), as the CLI does")
    return {"class_path": class_path, "init_args": init_args}


def build_model(config: dict[str, Any], source: str = CONFIG_NAME) -> nn.Module:
    """The task model a ``{"class_path", "init_args"}`` config describes, with its layers built (``configure_model``),
    on the CPU with freshly initialised weights."""
    from lightning.pytorch.cli import instantiate_module

    # LightningCLI's own way to give a module the hyper-parameters of its config (nested class_path dicts, not the
    # objects built from them), so that the rebuilt model saves and checkpoints exactly as one built by the CLI
    from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters_context

    from moezoo.training.task import TaskModule

    if not isinstance(config, dict) or not isinstance(config.get("class_path"), str):
        raise MoezooError(f"{source}: no model class_path (expected {{'model': {{'class_path': ..., "
                          "'init_args': ...}}}})")
    flat = {"_class_path": config["class_path"], **config.get("init_args", {})}
    try:
        instantiator = "lightning.pytorch.cli.instantiate_module"
        with _given_hyperparameters_context(hparams=dict(flat), instantiator=instantiator):
            model = instantiate_module(TaskModule, flat)
    except MoezooError:
        raise
    except Exception as err:  # jsonargparse: an unknown class or argument, a wrong type
        reason = " ".join(str(err).split())
        raise MoezooError(f"{source}: cannot build {config['class_path']}: {reason[:300]}") from None
    model.configure_model()
    return model


def read_config(path: Path) -> dict[str, Any]:
    """A folder's ``config.json``, checked to be a moezoo config."""
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MoezooError(f"{path}: not a readable {CONFIG_NAME} ({type(err).__name__}: {err})") from None
    if not isinstance(config, dict) or not isinstance(config.get("moezoo"), dict) or "model" not in config:
        raise MoezooError(f"{path}: not a moezoo model config (no 'moezoo' and 'model' keys)")
    if config["moezoo"].get("format") != FORMAT:
        raise MoezooError(f"{path}: format {config['moezoo'].get('format')!r} is not the one this moezoo reads "
                          f"({FORMAT})")
    return config


def complete_config(config: dict[str, Any]) -> dict[str, Any]:
    """A task model's ``{"class_path", "init_args"}`` with every argument the task class takes: one the class gained
    after the weights were saved gets the class's default (its behaviour before the argument existed).

    The CLI lays a weights' config over the task's YAML; without this, an argument the YAML sets and the saved config
    predates would silently take the YAML's value and build another model than the one trained. Only the task class
    is completed: its saved hyper-parameters hold all its arguments, while a nested network's config may leave out
    what the task passes it when it builds it (DiT's sizes)."""
    import importlib
    import inspect

    class_path = config.get("class_path") if isinstance(config, dict) else None
    if not isinstance(class_path, str) or "." not in class_path:
        return config
    module, _, name = class_path.rpartition(".")
    try:
        parameters = inspect.signature(getattr(importlib.import_module(module), name).__init__).parameters.values()
    except (ImportError, AttributeError, TypeError, ValueError):
        return config  # an unknown class: building it names the problem
    init_args = dict(config.get("init_args") or {})
    for p in parameters:
        if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in init_args \
                and p.default is not p.empty and _plain(p.default):
            init_args[p.name] = p.default
    return {**config, "init_args": init_args}


def _plain(value: Any) -> bool:
    """Whether ``value`` is a JSON value a config can hold."""
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def fit_state(model: nn.Module, state: dict, source: str) -> nn.Module:
    """Loads ``state`` into ``model`` strictly; a state of another architecture is a MoezooError naming ``source``
    and how it differs (missing, unexpected and other-shaped tensors), not a shape-mismatch traceback."""
    expected = model.state_dict()
    missing, extra = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    wrong = sorted(k for k in expected.keys() & state.keys() if expected[k].shape != state[k].shape)
    if missing or extra or wrong:
        parts = [f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
                 f"{len(extra)} unexpected (e.g. {extra[0]})" if extra else "",
                 f"{len(wrong)} of another shape (e.g. {wrong[0]}: {tuple(state[wrong[0]].shape)} vs "
                 f"{tuple(expected[wrong[0]].shape)})" if wrong else ""]
        raise MoezooError(f"{source}: the weights do not fit {class_path_of(model)}: "
                          + ", ".join(p for p in parts if p))
    model.load_state_dict(state, strict=True)
    return model


def load_weights(model: nn.Module, path: Path) -> nn.Module:
    """Loads a safetensors file into ``model`` (strict: every tensor present, none extra, shapes equal)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise MoezooError(f"{path}: not a readable safetensors file ({' '.join(str(err).split())})") from None
    return fit_state(model, state, str(path))


def save_folder(model: nn.Module, directory: Path, *, task: str | None = None) -> None:
    """Writes ``config.json`` and ``model.safetensors`` of ``model`` into ``directory`` (the mixin's hook)."""
    from safetensors.torch import save_file

    import moezoo

    config = {"moezoo": {"format": FORMAT, "version": moezoo.__version__, "task": task},
              "model": model_config(model)}
    directory.mkdir(parents=True, exist_ok=True)
    # a copy of each tensor: safetensors refuses tensors that share memory (tied or viewed weights)
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    data_state = getattr(model, "hub_data_state", None)
    if data_state:
        (directory / DATA_NAME).write_text(json.dumps(data_state, sort_keys=True) + "\n")


def resolve_file(model_id: str, filename: str, *, revision: str | None = None, cache_dir=None,
                 force_download: bool = False, local_files_only: bool = False, token=None) -> Path:
    """``filename`` of a local folder, or of a Hub repo through ``hf_hub_download`` (the normal HF cache, offline
    with ``HF_HUB_OFFLINE=1`` or ``local_files_only``); a MoezooError naming what is missing."""
    folder = Path(model_id).expanduser()
    if folder.is_dir():
        path = folder / filename
        if not path.is_file():
            raise MoezooError(f"{folder}: no {filename} (a moezoo model folder holds {CONFIG_NAME} and {WEIGHTS_NAME})")
        return path
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(hf_hub_download(model_id, filename, revision=revision, cache_dir=cache_dir,
                                    force_download=force_download, local_files_only=local_files_only, token=token))
    except (LocalEntryNotFoundError, RepositoryNotFoundError, HfHubHTTPError, ValueError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MoezooError(f"{model_id}: cannot get {filename} ({first})") from None


def load_folder(cls: type, model_id: str, **download) -> nn.Module:
    """The model of a folder or Hub repo, in eval mode; ``cls`` (a TaskModule subclass) must be its class or a base."""
    config_path = resolve_file(model_id, CONFIG_NAME, **download)
    config = read_config(config_path)
    class_path = config["model"].get("class_path") if isinstance(config["model"], dict) else None
    model = build_model(config["model"], str(config_path))
    if not isinstance(model, cls):
        task = config["moezoo"].get("task")
        raise MoezooError(f"{model_id}: holds a {class_path}{f' ({task})' if task else ''}, not a "
                          f"{cls.__module__}.{cls.__qualname__}")
    load_weights(model, resolve_file(model_id, WEIGHTS_NAME, **download))
    model.hub_task = config["moezoo"].get("task")
    model.hub_data_state = read_data_state(model_id, **download)
    return model.eval()


def read_data_state(model_id: str, **download) -> dict | None:
    """The ``data.json`` of a folder or Hub repo (the data module's fitted encoders), or None when it has none."""
    try:
        path = resolve_file(model_id, DATA_NAME, **download)
    except MoezooError:  # a folder or repo without one: most families have no fitted encoders
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MoezooError(f"{path}: not a readable data state ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or "moezoo_data" not in state:
        raise MoezooError(f"{path}: not a moezoo data state (no 'moezoo_data' key)")
    return state


def load_checkpoint(ckpt_path: str | Path) -> nn.Module:
    """The task model of a Lightning checkpoint of ``moezoo fit``, in eval mode: rebuilt from the checkpoint's
    hyper-parameters (read with ``weights_only=True``: no code runs) and loaded strictly."""
    import torch

    from moezoo.training.cli import unreadable_checkpoint

    ckpt = Path(ckpt_path).expanduser()
    if not ckpt.is_file():
        raise MoezooError(f"ckpt_path: no such checkpoint file: {ckpt}")
    if reason := unreadable_checkpoint(ckpt):
        raise MoezooError(f"ckpt_path: cannot read checkpoint {ckpt} ({reason})")
    try:
        checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as err:  # an object outside the safe set: not a moezoo checkpoint
        raise MoezooError(f"ckpt_path: {ckpt} is not a plain Lightning checkpoint ({' '.join(str(err).split())[:200]})"
                          ) from None
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not isinstance(hparams, dict) or "_class_path" not in hparams or "state_dict" not in checkpoint:
        raise MoezooError(f"ckpt_path: {ckpt} was not written by `moezoo fit` (no model class_path in its "
                          "hyper_parameters)")
    config = {"class_path": hparams["_class_path"],
              "init_args": {k: v for k, v in hparams.items() if k not in _LIGHTNING_KEYS}}
    model = build_model(config, str(ckpt))
    model.on_load_checkpoint(checkpoint)  # the task's own state beside the weights (e.g. the DiT's EMA), as Lightning
    model = fit_state(model, checkpoint["state_dict"], str(ckpt)).eval()
    # a stateful data module's state (Lightning saves it under the class's name): the fitted encoders, if any
    model.hub_data_state = next((v for v in checkpoint.values() if isinstance(v, dict) and "moezoo_data" in v), None)
    return model


def checkpoint_run(ckpt_path: str | Path) -> dict:
    """The ``metrics.json`` of the run that wrote a checkpoint (``<run>/checkpoints/<ckpt>``), or {}."""
    run = Path(ckpt_path).expanduser().parent.parent / "metrics.json"
    try:
        return json.loads(run.read_text()) if run.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def export_checkpoint(ckpt_path: str | Path, to: str | Path, *, task: str | None = None, data: str | None = None,
                      license: str = "mit", dtype: str | None = None) -> Path:
    """Turns a Lightning checkpoint of ``moezoo fit`` into a hub folder ``to`` (``moezoo export``); returns it.

    The model is rebuilt by ``load_checkpoint``. The run directory's ``metrics.json`` gives the task variant, the
    command and, when this is the checkpoint they were measured on (its best one), the metrics of the model card.
    ``dtype`` (``float16`` / ``bfloat16``) stores the floating-point tensors in that dtype (``from_pretrained``
    casts them back into the float32 model); the card then says its metrics are the float32 checkpoint's.
    """
    model = load_checkpoint(ckpt_path)
    ckpt = Path(ckpt_path).expanduser()
    record = checkpoint_run(ckpt)
    best = record.get("best_model_path")
    measured = best is not None and Path(best).expanduser().resolve() == ckpt.resolve()
    model.hub_task = task or record.get("task")
    if task and record.get("task") and task != record["task"]:
        raise MoezooError(f"--task {task}: {ckpt} was trained as {record['task']}")
    card = {"metrics": {k: v for k, v in record.items() if k.startswith(("test/", "val/"))} if measured else None,
            "command": record.get("command"), "data": data, "license": license}
    if dtype is not None:
        if dtype not in ("float16", "bfloat16"):
            raise MoezooError(f"--dtype {dtype}: must be float16 or bfloat16")
        model.to(getattr(torch, dtype))
        card["description"] = (f"Weights stored in {dtype} (loading casts them back to float32); the metrics below "
                               "were measured on the float32 checkpoint.")
    out = Path(to).expanduser()
    (out / CARD_NAME).unlink(missing_ok=True)  # the mixin keeps an existing card: this export writes its own
    model.save_pretrained(out, model_card_kwargs=card)
    return out


MODEL_CARD = """---
{card_data}
---

# {title}

A moezoo model: `{class_path}`{task_line}.

{description}

## Use

```python
from {module} import {name}

model = {name}.from_pretrained("{repo}")  # a local folder or a Hub repo id
```

{command_block}## Metrics

{metrics_table}

## Data and licence

{data}

Weights licence: {license}.
"""


def model_card(model: nn.Module, *, task: str | None = None, metrics: dict | None = None,
               command: str | None = None, data: str | None = None, license: str = "mit",
               repo: str = "path/to/this/folder", description: str = ""):
    """A ``huggingface_hub.ModelCard`` for ``model``: variant, data, metrics (test ones first), command, licence."""
    from huggingface_hub import ModelCard, ModelCardData

    class_path = class_path_of(model)
    module, _, name = class_path.rpartition(".")
    shown = {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float)) and "/routing/" not in k
             and not k.startswith("moe/")}
    order = sorted(shown, key=lambda k: (not k.startswith("test/"), k))
    rows = "\n".join(f"| `{k}` | {shown[k]:.4g} |" for k in order[:40])
    table = f"| metric | value |\n|---|---|\n{rows}" if rows else "No metrics were recorded with these weights."
    tags = ["moezoo", "mixture-of-experts", "pytorch"] + ([task.split("/")[0]] if task else [])
    card_data = ModelCardData(library_name="moezoo", license=license, tags=tags)
    text = MODEL_CARD.format(
        card_data=card_data.to_yaml(), title=task or name, class_path=class_path,
        task_line=f", task variant `{task}`" if task else "", description=description or (model.__doc__ or "").split(
            "\n\n")[0].strip(), module=module, name=name, repo=repo, metrics_table=table,
        command_block=f"## Trained with\n\n    {command}\n\n" if command else "",
        data=data or "See the task family's README for its data and their licences.", license=license)
    return ModelCard(text)
