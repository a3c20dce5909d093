"""Gradio demos, one per task family (``moezoo demo --task NAME``), each showing the model's answer and its routing.

``FAMILY_DEMOS`` maps a task family (the part of a task name before ``/``) to the module of its demo; a module
defines ``build(shown: DemoModel) -> gradio.Blocks`` on the skeleton of ``moezoo.demos.skeleton``. A new family adds
its module and one line here.
"""

from __future__ import annotations

from importlib import import_module

from moezoo.errors import MoezooError

from .skeleton import DemoModel, guarded, launch, load_demo_model

FAMILY_DEMOS = {
    "image-classification": "moezoo.demos.image_classification",
    "graph": "moezoo.demos.graph",
    "ctr": "moezoo.demos.ctr",
    "dit": "moezoo.demos.dit",
    "acoustic": "moezoo.demos.acoustic",
    "deweather": "moezoo.demos.deweather",
    "vl": "moezoo.demos.vision_language",
    "mobility": "moezoo.demos.mobility",
}


def build_demo(task: str | None = None, weights: str | None = None, ckpt_path: str | None = None):
    """The Gradio Blocks app of the model ``load_demo_model`` picks, and that model."""
    shown = load_demo_model(task, weights, ckpt_path)
    family = shown.task.split("/", 1)[0]
    if family not in FAMILY_DEMOS:
        raise MoezooError(f"demo: no demo for the {family} family yet; demos: {', '.join(FAMILY_DEMOS)}")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise MoezooError("demo: gradio is not installed; pip install 'moezoo[demo]'") from None
    return import_module(FAMILY_DEMOS[family]).build(shown), shown


__all__ = ["FAMILY_DEMOS", "DemoModel", "build_demo", "guarded", "launch", "load_demo_model"]
