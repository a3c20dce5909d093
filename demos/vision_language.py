"""Vision-language demo: upload an image and type a question (or take a held-out easy-VQA example) -> the answer,
and which expert took each image patch and each word.

The image is read exactly as the data module reads files (``read_image``: RGB, resized bicubically to the model's
``image_size``, then ``to_model_input`` to [-1, 1]) and the question is encoded with the model's own vocabulary
(unknown words read as [unk], words past ``max_text_len`` not read). For a mixture (the agnostic MoE, MoMa,
MoE-LLaVA) the expert map tints each patch of the model's input, upscaled, in the colour of the expert of highest
gate weight in the chosen MoE layer (the last by default; grey where no expert took the patch: expert choice may
leave a token to the residual alone), and each word of the question is marked with its expert in the same colours;
MoMa's image experts take only patches and its text experts only words. A dense model shows the answer alone.
"""

from __future__ import annotations

import functools
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from moezoo.errors import MoezooError

from .skeleton import DemoModel, guarded, header

MIN_SIDE = 8  # smaller uploads are refused: nothing of them would survive the resize to the model's image size
MAP_SIDE = 256  # the expert map shows the model's input upscaled (by a whole factor) to about this side
TINT = 0.55  # the share of the expert's colour in a tinted patch (the rest is the image)
NO_EXPERT = (0.6, 0.6, 0.6)  # the colour of a token no expert took
TOP_ANSWERS = 5


def expert_colours(num_experts: int) -> np.ndarray:
    """One fixed RGB colour per expert [E, 3] in [0, 1]: matplotlib's tab10 without its grey (grey is "no
    expert"), then evenly spaced hues."""
    from matplotlib import colormaps
    from matplotlib.colors import hsv_to_rgb

    tab10 = [colormaps["tab10"](i)[:3] for i in range(10) if i != 7]
    extra = [hsv_to_rgb((i / max(1, num_experts - len(tab10)), 0.75, 0.85))
             for i in range(max(0, num_experts - len(tab10)))]
    return np.array((tab10 + [tuple(c) for c in extra])[:num_experts], dtype=np.float64).reshape(num_experts, 3)


def _hex(colour) -> str:
    return "#" + "".join(f"{round(float(c) * 255):02x}" for c in colour)


def expert_name(expert: int) -> str:
    return "no expert" if expert < 0 else f"expert {expert}"


def read_picture(path, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An uploaded image as the model's input [1, 3, size, size] in [-1, 1] and the uint8 image [3, size, size]
    it came from (``read_image`` + ``to_model_input``, as the data reads files), or a one-line MoezooError."""
    from moezoo.tasks.vision_language.data import read_image, to_model_input

    if not path:
        raise MoezooError("no image: upload an image (PNG, JPEG, ...) or press 'Example'")
    name = Path(str(path)).name
    try:
        with Image.open(str(path)) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise MoezooError(f"cannot read image {name}: {' '.join(str(err).split())[:160]}") from None
    if min(width, height) < MIN_SIDE:
        raise MoezooError(f"image {name} is {width}x{height}; the demo needs at least {MIN_SIDE} pixels a side")
    try:
        pixels = read_image(Path(str(path)), size)
    except MoezooError as err:  # a header that opens but pixels that do not decode (a truncated file)
        raise MoezooError(str(err).replace(str(path), name)) from None
    return to_model_input(pixels)[None], pixels


def moe_layer_names(model) -> list[str]:
    """The names of the model's MoE layers, first to last (as ``token_experts`` keys them)."""
    from moezoo.moe import MoE

    return [name for name, module in model.network.named_modules() if isinstance(module, MoE)]


def expert_map(pixels: torch.Tensor, patches: torch.Tensor, grid: tuple[int, int], num_experts: int) -> np.ndarray:
    """The image uint8 [3, S, S] upscaled by a whole factor to about ``MAP_SIDE``, each patch tinted by the colour of
    its expert (``patches`` [rows * cols], -1: grey), as uint8 [H, W, 3]."""
    factor = max(1, MAP_SIDE // pixels.shape[-1])
    photo = pixels.permute(1, 2, 0).numpy().astype(np.float64)
    photo = photo.repeat(factor, axis=0).repeat(factor, axis=1)
    palette = np.concatenate([expert_colours(num_experts), np.array([NO_EXPERT])])  # index -1: no expert
    rows, cols = grid
    tint = palette[patches.reshape(rows, cols).numpy()]  # [rows, cols, 3]
    height, width = photo.shape[:2]
    tint = tint.repeat(-(-height // rows), axis=0).repeat(-(-width // cols), axis=1)[:height, :width]
    return ((1 - TINT) * photo + TINT * 255 * tint).round().clip(0, 255).astype(np.uint8)


def analyse(model, path, question, layer: str | None = None) -> dict:
    """The answer, the top answers' probabilities and, for a mixture, the expert map of ``layer`` (the last MoE layer
    by default) over the image and the words with their experts."""
    from moezoo.tasks.vision_language.text import words

    question = (question or "").strip()
    if not question:
        raise MoezooError("no question: type a question about the image (e.g. 'What shape is in the image?')")
    asked = words(question)
    if not asked:
        raise MoezooError(f"the question {question[:80]!r} has no words (letters or digits)")
    image, pixels = read_picture(path, model.hparams.image_size)
    image = image.to(next(model.parameters()).device)
    answers, probs = model.answer(image, [question])
    probs = probs[0].cpu()
    top = probs.topk(min(TOP_ANSWERS, probs.numel()))
    known = set(model.vocabulary)
    read = asked[: model.hparams.max_text_len]
    result = {"answer": answers[0], "probs": {model.answers[i]: float(p) for p, i in zip(*top)},
              "unknown": [w for w in read if w not in known], "words_read": len(read),
              "words_cut": len(asked) - len(read)}
    names = moe_layer_names(model)
    if not names:
        return result
    layer = layer or names[-1]
    if layer not in names:
        raise MoezooError(f"unknown MoE layer {layer!r}; the model's MoE layers: {', '.join(names)}")
    routing = model.token_experts(image, question)
    chosen = routing["layers"][layer]
    num_experts = model.hparams.num_experts
    result.update(layer=layer, grid=routing["grid"], patch_experts=chosen["patches"], cls_expert=chosen["cls"],
                  map=expert_map(pixels, chosen["patches"], routing["grid"], num_experts),
                  words=[(word, expert_name(e)) for word, e in zip(read, chosen["words"].tolist())])
    return result


@functools.cache
def _test_questions():
    from moezoo.tasks.vision_language.records import easy_vqa_questions

    return easy_vqa_questions("test")  # read once, not at every click


@functools.cache
def _example_folder() -> Path:
    return Path(tempfile.mkdtemp(prefix="moezoo-vl-"))  # Gradio serves files from the temp dir, not site-packages


def example(seed) -> tuple[str, str, str]:
    """A held-out easy-VQA test image (a copy of its file) and one of its questions, picked by ``seed``, and a status
    line with the true answer."""
    questions = _test_questions()
    picked = questions[random.Random(int(seed or 0)).randrange(len(questions))]
    path = _example_folder() / f"easy-vqa-test-{picked.image.name}"
    if not path.is_file():
        shutil.copyfile(picked.image, path)
    return (str(path), picked.question,
            f"easy-VQA test question {picked.question_id} (held out; seed {int(seed or 0)}), true answer "
            f"**{picked.answers[0]}**: press **Answer**")


def _status(model, result: dict) -> str:
    best = result["answer"]
    status = f"Answer: **{best}** ({result['probs'][best]:.1%})."
    if len(result["unknown"]) == result["words_read"]:
        status += (" None of the question's words is known to the model (all read as [unk]): the answer comes from "
                   "the image alone.")
    elif result["unknown"]:
        status += f" Unknown words (read as [unk]): {', '.join(dict.fromkeys(result['unknown']))}."
    if result["words_cut"]:
        status += (f" Only the first {result['words_read']} words are read ({result['words_cut']} more are not: "
                   f"the model reads at most {model.hparams.max_text_len}).")
    if "map" not in result:
        return status + " A dense model: no experts to show."
    counts = torch.bincount(result["patch_experts"] + 1, minlength=model.hparams.num_experts + 1).tolist()
    shares = [f"{expert_name(e)} {counts[e + 1]}" for e in range(-1, model.hparams.num_experts) if counts[e + 1]]
    status += f" Patches per expert in `{result['layer']}`: {', '.join(shares)}; [CLS]: " \
              f"{expert_name(result['cls_expert'])}."
    split = model.hparams.modality_experts
    if split is not None:
        status += (f" Modality experts (MoMa): experts 0-{split[0] - 1} take image patches, "
                   f"{split[0]}-{sum(split) - 1} words (and [CLS]).")
    return status


def build(shown: DemoModel):
    import gradio as gr

    model = shown.model
    names = moe_layer_names(model)
    colours = {expert_name(e): _hex(c) for e, c in enumerate(expert_colours(model.hparams.num_experts))} \
        if names else {}
    colours[expert_name(-1)] = _hex(NO_EXPERT)

    def answer(path, question, layer):
        result = analyse(model, path, question, layer or None)
        marked = None
        if "words" in result:  # a space between the words
            marked = [piece for pair in result["words"] for piece in ((" ", None), pair)][1:]
        return result["probs"], result.get("map"), marked, _status(model, result)

    with gr.Blocks(title="moezoo: vision-language experts") as app:
        what = ("Upload an image and type a question (or press **Example** for a held-out easy-VQA one), then "
                "**Answer**: the answer, and which expert took each image patch and each word.")
        if not names:
            what += " This model is dense: it has no experts, so the page shows the answer alone."
        gr.Markdown(header("Visual question answering with modality experts", shown, what))
        with gr.Row():
            with gr.Column():
                picture = gr.Image(label="image", type="filepath", sources=["upload", "clipboard"],
                                   elem_id="picture", height=256)
                question = gr.Textbox(label="question", placeholder="What shape is in the image?",
                                      elem_id="question")
                layer = gr.Dropdown(names, value=names[-1] if names else None, label="MoE layer of the map",
                                    elem_id="layer", visible=bool(names))
                with gr.Row():
                    seed = gr.Number(label="example seed", value=0, precision=0, elem_id="seed")
                    pick = gr.Button("Example", elem_id="example")
                run = gr.Button("Answer", variant="primary", elem_id="answer")
            with gr.Column():
                status = gr.Markdown(elem_id="status")
                label = gr.Label(label="answer (top 5)", num_top_classes=TOP_ANSWERS, elem_id="answers")
        with gr.Row(visible=bool(names)):
            experts = gr.Image(label="expert per patch (colours: experts, grey: no expert)", elem_id="experts",
                               interactive=False, format="png")
            marked = gr.HighlightedText(label="expert per word", color_map=colours, show_legend=True,
                                        elem_id="words")
        outputs = [label, experts, marked, status]
        run.click(guarded(answer, len(outputs)), [picture, question, layer], outputs, api_name="answer")
        question.submit(guarded(answer, len(outputs)), [picture, question, layer], outputs,
                        api_visibility="undocumented")  # Enter in the question box answers too
        pick.click(guarded(example, 3), seed, [picture, question, status], api_name="example")
    return app
