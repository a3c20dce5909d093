"""Deweathering demo: upload a photo taken in rain, snow or haze (or synthesise one) -> the restored photo and the
map of which expert handled each patch.

The photo is read as the data module reads files (PIL, RGB, [0, 1]); photos larger than ``MAX_SIDE`` are scaled
down first, and images with a side over ``TILE`` are restored in overlapping tiles (``DeweatherModel.restore``)
so attention stays in memory. For a mixture (MoE, MoFME) the expert map colours each patch token by the expert of
highest gate weight in the last MoE layer; the run's ``routing_by_label.json`` has the load by weather type.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from moezoo.errors import MoezooError

from .skeleton import DemoModel, guarded, header

MAX_SIDE = 1024  # larger uploads are scaled down to this long side (the demo is for looking, not benchmarking)
TILE, OVERLAP = 256, 32


def read_photo(path) -> tuple[torch.Tensor, str]:
    """An uploaded photo as [1, 3, H, W] in [0, 1] and a note on its size, or a one-line MoezooError."""
    if not path:
        raise MoezooError("no image: upload a photo (PNG, JPEG, ...) or press 'Synthesise a degraded photo'")
    name = Path(str(path)).name
    try:
        with Image.open(str(path)) as image:
            image = image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise MoezooError(f"cannot read image {name}: {' '.join(str(err).split())[:160]}") from None
    width, height = image.size
    if min(width, height) < 8:
        raise MoezooError(f"image {name} is {width}x{height}; the demo needs at least 8 pixels a side")
    note = f"{width}x{height}"
    if max(width, height) > MAX_SIDE:
        scale = MAX_SIDE / max(width, height)
        image = image.resize((max(8, round(width * scale)), max(8, round(height * scale))), Image.LANCZOS)
        note += f", scaled to {image.size[0]}x{image.size[1]}"
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array.transpose(2, 0, 1).copy())[None], note


def analyse(model, path) -> dict:
    """The restored photo [H, W, 3] uint8 and, for a mixture, the expert map over it and each expert's share."""
    from moezoo.tasks.deweather.plots import expert_map_rgb

    degraded, note = read_photo(path)
    device = next(model.parameters()).device
    degraded = degraded.to(device)
    restored = model.restore(degraded, tile=TILE, overlap=OVERLAP)
    result = {"restored": (restored[0].permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8),
              "note": note}
    if model.is_mixture:
        small = degraded if max(degraded.shape[-2:]) <= TILE else torch.nn.functional.interpolate(
            degraded, scale_factor=TILE / max(degraded.shape[-2:]), mode="area")  # one forward over the whole view
        experts = model.expert_map(small)[0]
        overlay = expert_map_rgb(experts, tuple(degraded.shape[-2:]), model.hparams.num_experts)
        photo = degraded[0].permute(1, 2, 0).cpu().numpy() * 255
        result["map"] = (0.45 * photo + 0.55 * overlay).round().astype(np.uint8)
        counts = torch.bincount(experts.flatten(), minlength=model.hparams.num_experts)
        result["share"] = {f"expert {e}": float(c) / experts.numel() for e, c in enumerate(counts.tolist())}
    return result


def synthesised(weather: str, seed: float):
    """A held-out test photograph of the embedded default under synthesised ``weather``, as a PNG file."""
    from moezoo.tasks.deweather import synthetic

    if weather not in synthetic.WEATHERS:
        raise MoezooError(f"unknown weather {weather!r}; choose one of {', '.join(synthetic.WEATHERS)}")
    clean = synthetic.eval_image(synthetic.load_photos("test")[0], 256)
    degraded, _ = synthetic.degrade(clean, weather, np.random.default_rng([int(seed), 7]))
    path = Path(tempfile.mkdtemp(prefix="moezoo-deweather-")) / f"{weather}-{int(seed)}.png"
    Image.fromarray((degraded * 255).round().astype(np.uint8)).save(path)
    return str(path), f"synthesised {weather} on a held-out test photo (seed {int(seed)}): press **Restore**"


def build(shown: DemoModel):
    import gradio as gr

    from moezoo.tasks.deweather import synthetic

    model = shown.model

    def answer(path):
        result = analyse(model, path)
        status = f"Restored ({result['note']})."
        if "share" in result:
            used = ", ".join(f"{name} {share:.0%}" for name, share in result["share"].items() if share > 0)
            status += f" Patch tokens per expert (last MoE layer): {used}."
        return result["restored"], result.get("map"), result.get("share"), status

    with gr.Blocks(title="moezoo: MoFME all-weather restoration") as app:
        gr.Markdown(header("All-weather image restoration", shown,
                           "Upload a photo taken in rain, snow or haze (or synthesise one), then **Restore**: the "
                           "restored photo, and the expert that handled each patch."))
        with gr.Row():
            with gr.Column():
                photo = gr.Image(label="degraded photo", type="filepath", sources=["upload"], elem_id="photo")
                with gr.Row():
                    weather = gr.Dropdown(list(synthetic.WEATHERS), value="rain", label="weather",
                                          elem_id="weather")
                    seed = gr.Number(label="seed", value=0, precision=0, elem_id="seed")
                make = gr.Button("Synthesise a degraded photo", elem_id="synthesise")
                run = gr.Button("Restore", variant="primary", elem_id="restore")
            with gr.Column():
                status = gr.Markdown(elem_id="status")
                restored = gr.Image(label="restored", elem_id="restored", interactive=False, format="png")
        with gr.Row():
            experts = gr.Image(label="expert per patch (colours: experts)", elem_id="experts", interactive=False,
                               format="png")
            share = gr.Label(label="share of patches per expert", elem_id="share")
        outputs = [restored, experts, share, status]
        run.click(guarded(answer, len(outputs)), photo, outputs, api_name="restore")
        make.click(guarded(synthesised, 2), [weather, seed], [photo, status], api_name="synthesise")
    return app
