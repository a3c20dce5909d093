"""Image-classification demo: draw or upload a digit -> class probabilities, and the experts each patch went to.

The routing comes from the core: each patch token of the one image is labelled with its position
(``routing_labels(model, {"patch": ids})``), so every MoE layer's ``load_by_label`` table is [patches, experts]:
which experts processed which patch, drawn as one grid over the image per expert.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from moezoo.errors import MoezooError
from moezoo.moe import load_by_label, routing_labels

from .skeleton import DemoModel, figure_image, guarded, header


def _pixels(image, missing: str) -> np.ndarray:
    """The pixels of a Gradio image value (numpy, or a Sketchpad/ImageEditor dict); None is a MoezooError."""
    if isinstance(image, dict):  # Sketchpad / ImageEditor: the composite of background and strokes
        image = image.get("composite")
    if image is None:
        raise MoezooError(f"no image: {missing}")
    return np.asarray(image)


def _grey(image) -> np.ndarray:
    """A Gradio image value (numpy HxW, HxWx3/4, or a Sketchpad/ImageEditor dict) as grey floats in [0, 1]."""
    array = _pixels(image, "draw a digit, upload an image or press 'A test digit'")
    if array.dtype == object or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (1, 3, 4)):
        raise MoezooError(f"not an image: expected H x W grey or RGB(A) pixels, got an array of shape {array.shape}")
    array = array.astype(np.float32)
    if array.max() > 1.0:
        array = array / 255.0
    if array.ndim == 3:
        if array.shape[-1] == 4:  # transparent pixels (an empty Sketchpad canvas) count as background
            alpha = array[..., 3:]
            array = array[..., :3] * alpha + (1.0 - alpha) * (1.0 if array[..., :3].mean() > 0.5 else 0.0)
        array = array[..., :3].mean(-1) if array.shape[-1] >= 3 else array[..., 0]
    return array


def digit_input(image, img_size: int) -> torch.Tensor:
    """A drawn or uploaded digit as the model's input [1, 1, S, S] in [-1, 1], laid out like scikit-learn's digits:
    light ink on a dark ground, the ink's bounding box centred in a square that it fills (as optdigits' 32x32
    bitmaps were), averaged down to S x S (the packaged model: 0.963 on the test split scaled up 16x and read back,
    0.985 on the split itself)."""
    grey = _grey(image)
    height, width = grey.shape
    if min(height, width) < img_size:
        raise MoezooError(f"the image is {width}x{height} pixels; this model needs at least {img_size}x{img_size}")
    if np.median(grey) > 0.5:  # dark ink on a light ground: invert to the digits' light-on-dark
        grey = 1.0 - grey
    ink = grey > 0.25 * grey.max() if grey.max() > 0 else np.zeros_like(grey, dtype=bool)
    if ink.sum() < 2 or grey.max() - grey.min() < 0.1:
        raise MoezooError("the image is blank: draw a digit (or upload one) first")
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    crop = grey[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    side = max(crop.shape)  # no margin: optdigits' bitmaps were size-normalised to fill the frame
    square = np.zeros((side, side), dtype=np.float32)
    top, left = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
    square[top:top + crop.shape[0], left:left + crop.shape[1]] = crop
    pixels = torch.from_numpy(square)[None, None]
    small = F.interpolate(pixels, size=(img_size, img_size), mode="area")
    small = small / small.max().clamp_min(1e-6)  # the digits' ink reaches the top of the scale (16 of 16)
    return small * 2 - 1


def rgb_input(image, img_size: int) -> torch.Tensor:
    """An RGB image as a 3-channel model's input [1, 3, S, S], as the ImageFolder loader makes it (Normalize 0.5)."""
    array = _pixels(image, "upload an image first")
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, -1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise MoezooError(f"not an image: expected H x W x 3 RGB pixels, got an array of shape {array.shape}")
    pixels = torch.from_numpy(array[..., :3].astype(np.float32) / (255.0 if array.max() > 1 else 1.0))
    pixels = F.interpolate(pixels.permute(2, 0, 1)[None], size=(img_size, img_size), mode="bilinear",
                           antialias=True, align_corners=False)
    return pixels * 2 - 1


def classify(model, image) -> dict:
    """Class probabilities and, per MoE layer, the experts of each patch ([grid, grid] lists) and its load."""
    size, channels = model.img_size, model.in_chans
    x = digit_input(image, size) if channels == 1 else rgb_input(image, size)
    grid = model.net.patch_embed.grid_size
    patches = grid[0] * grid[1]
    prefix = getattr(model.net, "num_prefix_tokens", 0)  # class / register tokens come first in timm's sequence
    ids = torch.cat([torch.full((prefix,), -1), torch.arange(patches)])  # -1: not a patch, not counted
    load_by_label(model, reset=True)  # start from empty tables, whatever ran before
    with torch.no_grad(), routing_labels(model, {"patch": ids}):
        probs = model(x).softmax(-1)[0]
    layers = {}
    for name, tables in load_by_label(model, reset=True).items():
        counts = tables["patch"]["counts"][:patches]  # [patches, experts]: 1 where the expert took the patch
        layers[name] = {"experts": [[[int(e) for e in torch.nonzero(counts[p]).flatten()]
                                     for p in range(r * grid[1], (r + 1) * grid[1])] for r in range(grid[0])],
                        "load": (counts.sum(0) / counts.sum().clamp_min(1)).tolist()}
    return {"probs": probs, "input": x[0], "layers": layers, "grid": grid}


def routing_figure(result: dict):
    """One row per MoE layer: the model's input, then per expert the patches it processed (lit) over the input."""
    from matplotlib.figure import Figure

    layers, image = result["layers"], result["input"].mean(0).numpy()
    num_experts = len(next(iter(layers.values()))["load"])
    figure = Figure(figsize=(1.6 * (num_experts + 1), 1.75 * len(layers)), dpi=100, layout="constrained")
    axes = figure.subplots(len(layers), num_experts + 1, squeeze=False)
    gh, gw = result["grid"]
    for row, (name, layer) in enumerate(layers.items()):
        axes[row, 0].imshow(image, cmap="gray", vmin=-1, vmax=1)
        axes[row, 0].set_title("input", fontsize=8)
        axes[row, 0].set_ylabel(name.removeprefix("net.").removesuffix(".mlp.moe"), fontsize=8)
        for e in range(num_experts):
            took = np.array([[e in layer["experts"][r][c] for c in range(gw)] for r in range(gh)], dtype=float)
            ax = axes[row, e + 1]
            ax.imshow(image, cmap="gray", vmin=-1, vmax=1, extent=(0, gw, gh, 0))
            ax.imshow(took, cmap="autumn", alpha=0.55 * took, extent=(0, gw, gh, 0), vmin=0, vmax=1)
            ax.set_title(f"expert {e}: {layer['load'][e]:.0%}", fontsize=8)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    figure.suptitle("patches each expert processed (lit), per MoE layer", fontsize=9)
    return figure_image(figure)


@functools.cache
def _bundled_digits():
    from sklearn.datasets import load_digits

    return load_digits()  # read once, not at every click


def test_digit(index: float):
    """A digit of scikit-learn's bundled set (the model's own data), scaled up for the page."""
    digits = _bundled_digits()
    index = int(index) % len(digits.images)
    pixels = (digits.images[index] / 16.0 * 255).astype(np.uint8)
    scaled = np.kron(pixels, np.ones((16, 16), dtype=np.uint8))
    return scaled, f"digit {index} of the bundled set: a {digits.target[index]}"


def build(shown: DemoModel):
    import gradio as gr

    model = shown.model
    classes = [str(c) for c in range(model.num_classes)]

    def answer(image):
        result = classify(model, image)
        probs = {classes[i]: float(p) for i, p in enumerate(result["probs"])}
        top = max(probs, key=probs.get)
        return probs, routing_figure(result), result["layers"], f"Predicted **{top}** ({probs[top]:.1%})."

    with gr.Blocks(title="moezoo: MoE ViT") as app:
        gr.Markdown(header("MoE ViT image classifier", shown, "Draw a digit or upload an image, then **Classify**: "
                           "the class probabilities, and which experts each patch of the image went to."))
        with gr.Row():
            with gr.Column():
                with gr.Tab("Upload"):
                    upload = gr.Image(label="image", type="numpy", image_mode="RGB", elem_id="image",
                                      sources=["upload", "clipboard"], height=256, format="png")
                    index = gr.Number(label="test digit index", value=0, precision=0, elem_id="digit-index")
                    pick = gr.Button("A test digit", elem_id="test-digit")
                with gr.Tab("Draw"):
                    sketch = gr.Sketchpad(label="draw a digit", type="numpy", elem_id="sketch", height=256)
                    classify_drawing = gr.Button("Classify the drawing", elem_id="classify-drawing")
                run = gr.Button("Classify", variant="primary", elem_id="classify")
            with gr.Column():
                status = gr.Markdown(elem_id="status")
                label = gr.Label(label="class probabilities", num_top_classes=min(10, len(classes)), elem_id="probs")
        routing = gr.Image(label="routing: experts per patch", elem_id="routing", interactive=False, format="png")
        table = gr.JSON(label="experts of each patch (rows x columns of the patch grid), load per expert",
                        elem_id="routing-table")
        outputs = [label, routing, table, status]
        handler = guarded(answer, len(outputs))
        run.click(handler, upload, outputs, api_name="classify")
        classify_drawing.click(handler, sketch, outputs, api_name="classify_drawing")
        pick.click(guarded(test_digit, 2), index, [upload, status], api_name="test_digit")
    return app
