"""DiT demo: pick a class, guidance scale, steps and seed -> a sample grid, and the expert load by timestep.

Sampling is the family's diffusers pipeline (``MoEDiTPipeline``), seeded with one ``torch.Generator`` per sample
(diffusers' convention: sample i is the image a batch of one with seed + i gives). The routing comes from the core:
while the pipeline runs, every forward of the transformer is labelled with its sampling step (a pre-forward hook sets
``routing_labels(model, {"step": ...})`` for that forward only), so each MoE layer's ``load_by_label`` table is
[steps, experts]: which experts the tokens used at each timestep, conditional and unconditional halves together.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from moezoo.errors import MoezooError
from moezoo.moe import load_by_label, routing_labels

from .skeleton import DemoModel, figure_image, guarded, header

MAX_SAMPLES, MAX_STEPS, MAX_GUIDANCE = 16, 100, 20.0


def _checked(task, class_id, guidance, steps, seed, samples) -> tuple[int, float, int, int, int]:
    classes = task.model.config.num_classes
    values = {"class": class_id, "guidance scale": guidance, "steps": steps, "seed": seed, "samples": samples}
    for name, value in values.items():
        if value is None or (isinstance(value, float) and not np.isfinite(value)):
            raise MoezooError(f"{name} is empty: give a number")
    for name in ("class", "steps", "seed", "samples"):
        if float(values[name]) != int(values[name]):
            raise MoezooError(f"{name} must be a whole number, got {values[name]}")
    class_id, steps, seed, samples = int(class_id), int(steps), int(seed), int(samples)
    if not 0 <= class_id < classes:
        raise MoezooError(f"class {class_id} does not exist: this model knows classes 0-{classes - 1}")
    if not 1.0 <= guidance <= MAX_GUIDANCE:
        raise MoezooError(f"guidance scale {guidance} is out of range: 1 (no guidance) to {MAX_GUIDANCE:g}")
    if not 1 <= steps <= MAX_STEPS:
        raise MoezooError(f"steps {steps} is out of range: 1 to {MAX_STEPS}")
    if not 1 <= samples <= MAX_SAMPLES:
        raise MoezooError(f"samples {samples} is out of range: 1 to {MAX_SAMPLES}")
    if not 0 <= seed < 2**63:
        raise MoezooError(f"seed {seed} is out of range: 0 to 2^63 - 1")
    return class_id, float(guidance), steps, seed, samples


def generate(task, class_id, guidance: float, steps: int, seed: int, samples: int) -> dict:
    """``samples`` images of ``class_id`` ([N, C, H, W] in [0, 1]) and, per MoE layer, the load per sampling step."""
    from moezoo.tasks.dit import MoEDiTPipeline

    class_id, guidance, steps, seed, samples = _checked(task, class_id, guidance, steps, seed, samples)
    pipe = MoEDiTPipeline(transformer=task.model, scheduler=task.scheduler(), vae=task.vae)
    pipe.set_progress_bar_config(disable=True)
    transformer = task.model
    step = {"index": 0}
    stack = contextlib.ExitStack()

    def label_forward(module, args, kwargs):  # each transformer forward is one sampling step
        batch = args[0].shape[0] if args else kwargs["sample"].shape[0]
        stack.enter_context(routing_labels(transformer, {"step": torch.full((batch,), step["index"])}))

    def next_step(module, args, kwargs, output):
        stack.close()
        step["index"] += 1

    generators = [torch.Generator().manual_seed(seed + i) for i in range(samples)]
    hooks = [transformer.register_forward_pre_hook(label_forward, with_kwargs=True),
             transformer.register_forward_hook(next_step, with_kwargs=True)]
    load_by_label(transformer, reset=True)
    try:
        with task.ema_weights():  # a model trained with an EMA samples with it, as the official ProMoE does
            images = pipe([class_id] * samples, guidance_scale=guidance, num_inference_steps=steps,
                          generator=generators).images
    finally:
        for hook in hooks:
            hook.remove()
        stack.close()
    timesteps = [round(float(t), 1) for t in pipe.scheduler.timesteps]
    layers = {name: tables["step"]["load"][:len(timesteps)]
              for name, tables in load_by_label(transformer, reset=True).items() if "step" in tables}
    unconditional = transformer.config.routing == "promoe"
    return {"images": images, "timesteps": timesteps, "layers": layers, "unconditional_expert": unconditional}


def sample_grid(images: torch.Tensor, scale: int = 8) -> np.ndarray:
    """[N, C, H, W] in [0, 1] -> one RGB uint8 image, up to 4 per row, each scaled up ``scale`` times."""
    from torchvision.utils import make_grid

    grid = make_grid(images.float().cpu(), nrow=min(4, len(images)), padding=1, pad_value=1.0)
    grid = torch.nn.functional.interpolate(grid[None], scale_factor=scale, mode="nearest")[0]
    array = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return np.repeat(array, 3, -1) if array.shape[-1] == 1 else array


def load_figure(result: dict):
    """One heatmap per MoE layer: sampling step (its timestep) x expert, each row the share of that step's tokens."""
    from matplotlib.figure import Figure

    layers = result["layers"]
    figure = Figure(figsize=(2.6 * len(layers) + 0.8, 0.22 * len(result["timesteps"]) + 1.6), dpi=100,
                    layout="constrained")
    axes = figure.subplots(1, len(layers), squeeze=False)[0]
    labels = [f"{t:.0f}" for t in result["timesteps"]]
    for ax, (name, load) in zip(axes, layers.items()):
        shown = ax.imshow(load.numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=max(0.5, float(load.max())))
        ax.set_title(name.removeprefix("model."), fontsize=8)
        ax.set_xlabel("expert", fontsize=8)
        names = [str(e) for e in range(load.shape[1])]
        if result.get("unconditional_expert"):  # ProMoE's last expert takes the null-class (unguided) tokens
            names[-1] = f"{names[-1]}\nuncond."
        ax.set_xticks(range(load.shape[1]), names)
        ax.set_yticks(range(len(labels)), labels, fontsize=6)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("timestep of the sampling step", fontsize=8)
    figure.colorbar(shown, ax=list(axes), shrink=0.8, label="share of the step's assignments")
    figure.suptitle("expert load by timestep while sampling", fontsize=9)
    return figure_image(figure)


def build(shown: DemoModel):
    import gradio as gr

    task = shown.model
    config = task.model.config
    hparams = task.hparams

    def answer(class_id, guidance, steps, seed, samples):
        result = generate(task, class_id, guidance, steps, seed, samples)
        table = {name: {"timesteps": result["timesteps"], "load": load.tolist()} for name, load in
                 result["layers"].items()}
        status = (f"{len(result['images'])} samples of class **{int(class_id)}**, guidance {float(guidance):g}, "
                  f"{int(steps)} steps, seed {int(seed)}.")
        return sample_grid(result["images"]), load_figure(result) if result["layers"] else None, table, status

    with gr.Blocks(title="moezoo: MoE DiT") as app:
        gr.Markdown(header("MoE diffusion transformer", shown, f"Routing `{config.routing}`, {config.num_experts} "
                           f"experts, {config.sample_size}x{config.sample_size} {config.in_channels}-channel samples "
                           f"of {config.num_classes} classes. Pick a class and **Generate**: the samples, and which "
                           "experts the tokens used at each timestep of the sampler."))
        with gr.Row():
            with gr.Column():
                class_id = gr.Number(label=f"class (0-{config.num_classes - 1})", value=3, precision=0,
                                     elem_id="class")
                guidance = gr.Slider(1.0, MAX_GUIDANCE, value=float(hparams.cfg_scale), step=0.1,
                                     label="guidance scale (1 = none)", elem_id="guidance")
                steps = gr.Slider(1, MAX_STEPS, value=int(hparams.sample_steps), step=1, label="sampling steps",
                                  elem_id="steps")
                seed = gr.Number(label="seed", value=0, precision=0, elem_id="seed")
                samples = gr.Slider(1, MAX_SAMPLES, value=8, step=1, label="samples", elem_id="samples")
                run = gr.Button("Generate", variant="primary", elem_id="generate")
                status = gr.Markdown(elem_id="status")
            with gr.Column():
                grid = gr.Image(label="samples", elem_id="samples-grid", interactive=False, format="png")
        routing = gr.Image(label="expert load by timestep", elem_id="routing", interactive=False, format="png")
        table = gr.JSON(label="load per MoE layer: [step, expert], steps in sampling order", elem_id="routing-table")
        outputs = [grid, routing, table, status]
        run.click(guarded(answer, len(outputs)), [class_id, guidance, steps, seed, samples], outputs,
                  api_name="generate")
    return app
