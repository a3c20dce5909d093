"""The skeleton every family's Gradio demo is built on: which model to show, a page frame, guarded handlers, launch.

A family's demo module defines ``build(model, source) -> gr.Blocks`` and calls the helpers here; ``moezoo.demos``
maps task families to their modules. A handler wrapped by ``guarded`` turns bad input (a ``MoezooError``: wrong image
size or type, an out-of-range value, an unknown node id) into a one-line message in the page's status box, with
every other output cleared: the user sees why, never a stack trace, and the terminal logs no traceback either.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch.nn as nn

from moezoo.errors import MoezooError

HOST = "127.0.0.1"  # a demo listens on this machine only unless --host says otherwise


@dataclass(frozen=True)
class DemoModel:
    """The model a demo shows, its task variant and where it came from (for the page's header)."""

    model: nn.Module
    task: str
    source: str


def registered_weights_for(task: str) -> str | None:
    """The name of the first registered weights of ``task`` (the demo's default model), or None."""
    from moezoo.weights import list_weights

    return next((name for name, entry in list_weights().items() if entry.task == task), None)


def demo_runs() -> Path:
    """Where the demo keeps the runs it trains itself: ``$MOEZOO_CACHE/demo-runs`` (default ~/.cache/moezoo)."""
    from moezoo.cache import cache_dir

    return cache_dir() / "demo-runs"


def train_embedded_default(task: str) -> tuple[nn.Module, str]:
    """The model of ``moezoo fit --task TASK`` on its embedded data (its registered config), trained once into
    ``demo_runs()/<task>`` and reused from there: the best checkpoint of that run."""
    from moezoo import hub
    from moezoo.cli import main

    run = demo_runs() / task.replace("/", "-")
    record = run / "metrics.json"

    def best() -> Path | None:
        try:
            path = json.loads(record.read_text()).get("best_model_path")
        except (OSError, json.JSONDecodeError):
            return None
        return Path(path) if path and Path(path).is_file() else None

    if best() is None:
        print(f"moezoo demo: no registered weights of {task}: training its embedded default once (moezoo fit --task "
              f"{task}, the registered config) into {run}; later demos reuse it", flush=True)
        main(["fit", "--task", task, "--trainer.default_root_dir", str(run), "--trainer.enable_progress_bar", "false",
              "--trainer.enable_model_summary", "false"])
        if best() is None:
            raise MoezooError(f"demo: training {task} into {run} left no best checkpoint")
    return hub.load_checkpoint(best()), f"its embedded default, trained by `moezoo fit --task {task}` ({run})"


def load_demo_model(task: str | None = None, weights: str | None = None, ckpt_path: str | None = None) -> DemoModel:
    """The model of ``--weights NAME|DIR``, of ``--ckpt_path``, or else the registered weights of ``--task``, or
    else (none registered) its embedded default trained once (``train_embedded_default``).

    Weights or a checkpoint of another task than ``task`` are refused by name."""
    from moezoo import hub
    from moezoo.registry import resolve_task
    from moezoo.training.task import TaskModule

    if weights is not None and ckpt_path is not None:
        raise MoezooError("demo: give --weights or --ckpt_path, not both")
    if task is not None:
        task = resolve_task(task).name  # an unknown name lists the valid ones
    if ckpt_path is not None:
        model = hub.load_checkpoint(ckpt_path)
        trained_as = hub.checkpoint_run(ckpt_path).get("task")
        source = f"checkpoint {ckpt_path}"
    else:
        if weights is None:
            if task is None:
                raise MoezooError("demo: give --task NAME (see `moezoo tasks`), --weights NAME or --ckpt_path")
            weights = registered_weights_for(task)
            if weights is None:
                model, source = train_embedded_default(task)
                return DemoModel(model.eval(), task, source)
        from moezoo.weights import weights_folder

        folder = weights_folder(weights)
        source = f"hub folder {weights}" if Path(weights).expanduser().is_dir() else f"weights {weights}"
        model = hub.load_folder(TaskModule, str(folder))
        trained_as = getattr(model, "hub_task", None)
    if task is not None and trained_as is not None and task != trained_as:
        raise MoezooError(f"demo: {source} holds a model of {trained_as}, not of --task {task}")
    task = task or trained_as
    if task is None:
        raise MoezooError(f"demo: {source} does not record its task variant; give --task NAME")
    return DemoModel(model.eval(), task, source)


def guarded(handler: Callable, num_outputs: int) -> Callable:
    """``handler`` returning its outputs and then a status line; bad input (a MoezooError, ValueError) becomes
    ``(None, ..., "**Rejected:** <reason>")`` instead of an exception."""

    @functools.wraps(handler)
    def run(*args):
        try:
            return handler(*args)
        except (MoezooError, ValueError) as err:
            return (*([None] * (num_outputs - 1)), f"**Rejected:** {' '.join(str(err).split())}")

    return run


def header(title: str, shown: DemoModel, what: str) -> str:
    """The Markdown at the top of every demo: the title, the model and where it came from, what the page does."""
    return f"# {title}\n\n`{shown.task}`: {type(shown.model).__name__} from {shown.source}.\n\n{what}"


def figure_image(figure):
    """A matplotlib ``Figure`` as an RGB numpy image, rendered off-screen by Agg."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)  # a Figure of its own, not pyplot's: nothing global, safe across threads
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def launch(app, *, host: str = HOST, port: int | None = None, share: bool = False, block: bool = True):
    """Serves ``app`` on ``host:port`` (a free port from 7860 when None); returns its local URL when not ``block``."""
    app.queue(default_concurrency_limit=1)  # one forward at a time: the models are shared by every visitor
    try:
        app.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block, quiet=not block,
                   show_error=False)
    except OSError as err:  # the port is taken
        raise MoezooError(f"demo: cannot listen on {host}:{port} ({' '.join(str(err).split())})") from None
    return app.local_url
