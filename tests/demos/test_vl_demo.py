"""The vision-language demo on small untrained models: the answer and expert map against the model, the dense model,
bad inputs, the registration, gradio_client and the browser."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from moezoo.demos import DemoModel
from moezoo.demos import vision_language as demo_module
from moezoo.demos.vision_language import analyse, build, example, expert_colours, read_picture
from moezoo.errors import MoezooError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def easy_vqa():
    from moezoo.tasks.vision_language import VQAData

    data = VQAData()
    return {"vocabulary": data.vocabulary, "answers": data.answers, "max_text_len": data.max_text_len}


def _model(easy_vqa, **kwargs):
    from moezoo.tasks.vision_language import VisionLanguageModel

    torch.manual_seed(0)
    args = dict(image_size=64, patch_size=16, dim=32, depth=2, num_heads=2, moe_every=1, modality_experts=[2, 2])
    return VisionLanguageModel(**easy_vqa, **{**args, **kwargs}).eval()


@pytest.fixture(scope="module")
def moma(easy_vqa):
    return _model(easy_vqa)


def _input(path, size=64):
    from moezoo.tasks.vision_language.data import read_image, to_model_input

    return to_model_input(read_image(path, size))[None]


def _patch_experts(picture: np.ndarray, pixels: torch.Tensor, grid, num_experts: int) -> list[int]:
    """The expert of each patch read back from the expert map's colours (nearest palette colour, -1: grey)."""
    factor = picture.shape[0] // pixels.shape[-1]
    photo = pixels.permute(1, 2, 0).numpy().astype(float).repeat(factor, 0).repeat(factor, 1)
    tint = (picture - (1 - demo_module.TINT) * photo) / (demo_module.TINT * 255)
    palette = np.concatenate([expert_colours(num_experts), [demo_module.NO_EXPERT]])
    side = picture.shape[0] // grid[0]
    found = []
    for r in range(grid[0]):
        for c in range(grid[1]):
            colour = tint[r * side:(r + 1) * side, c * side:(c + 1) * side].reshape(-1, 3)
            assert np.abs(colour - colour.mean(0)).max() < 0.01  # one colour over the whole patch
            distance = np.abs(palette - colour.mean(0)).max(1)
            assert distance.min() < 0.01
            found.append(int(distance.argmin()) if distance.argmin() < num_experts else -1)
    return found


def test_the_answer_and_probabilities_are_the_models_on_the_data_preprocessed_image(moma):
    path, question, status = example(3)
    assert "true answer **" in status and "held out" in status
    result = analyse(moma, path, question)
    answers, probs = moma.answer(_input(path), [question])
    assert result["answer"] == answers[0]
    top = probs[0].topk(5)
    assert list(result["probs"]) == [moma.answers[i] for i in top.indices]
    assert list(result["probs"].values()) == pytest.approx(top.values.tolist())
    assert next(iter(result["probs"])) == result["answer"]


def test_an_upload_of_another_size_is_read_as_the_data_reads_files(moma, tmp_path):
    path = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(path)
    image, pixels = read_picture(str(path), 64)
    assert image.shape == (1, 3, 64, 64) and pixels.dtype == torch.uint8
    assert torch.equal(image, _input(path)) and image.min() >= -1 and image.max() <= 1
    result = analyse(moma, str(path), "Is there a red shape?")
    assert result["answer"] == moma.answer(image, ["Is there a red shape?"])[0][0]
    assert result["map"].shape == (256, 256, 3)


@pytest.mark.parametrize("variant", ["moma", "moe"])
def test_the_expert_map_colours_every_patch_and_word_by_its_expert(variant, moma, easy_vqa):
    model = moma if variant == "moma" else _model(easy_vqa, modality_experts=None)
    path, question, _ = example(11)
    image, pixels = read_picture(path, 64)
    routing = model.token_experts(image, question)
    assert len(routing["layers"]) == 2
    for layer in [None, *routing["layers"]]:
        result = analyse(model, path, question, layer)
        chosen = routing["layers"][layer or list(routing["layers"])[-1]]
        assert result["layer"] == (layer or "encoder.blocks.1.ffn")
        found = _patch_experts(result["map"], pixels, routing["grid"], 4)
        assert found == chosen["patches"].tolist()
        assert [w for w, _ in result["words"]] == routing["words"]
        assert [label for _, label in result["words"]] == [
            "no expert" if e < 0 else f"expert {e}" for e in chosen["words"].tolist()]
        if variant == "moma":  # image experts take only patches, text experts only words
            assert set(found) <= {-1, 0, 1} and {e for e in found if e >= 0}
            assert set(chosen["words"].tolist()) <= {-1, 2, 3} and {e for e in chosen["words"].tolist() if e >= 0}
    status = demo_module._status(model, result)
    assert "Patches per expert in `encoder.blocks.1.ffn`" in status
    assert ("Modality experts (MoMa): experts 0-1 take image patches, 2-3 words" in status) == (variant == "moma")


def test_the_dense_model_gives_the_answer_and_no_map(easy_vqa):
    import gradio as gr

    dense = _model(easy_vqa, moe_every=0, modality_experts=None)
    path, question, _ = example(0)
    result = analyse(dense, path, question)
    assert result["answer"] == dense.answer(_input(path), [question])[0][0]
    assert "map" not in result and "words" not in result
    assert demo_module._status(dense, result).endswith("A dense model: no experts to show.")
    app = build(DemoModel(dense, "vl/dense", "a test model"))
    page_header = next(b.value for b in app.blocks.values() if isinstance(b, gr.Markdown))
    assert "This model is dense" in page_header
    assert not next(b for b in app.blocks.values() if isinstance(b, gr.Dropdown)).visible


def test_unknown_and_uncounted_words_are_answered_and_said(moma):
    path, _, _ = example(1)
    result = analyse(moma, path, "Zorble quux?")
    assert result["answer"] in moma.answers and result["unknown"] == ["zorble", "quux"]
    assert "None of the question's words is known to the model" in demo_module._status(moma, result)
    assert [w for w, _ in result["words"]] == ["zorble", "quux"]
    result = analyse(moma, path, "What colour is the shape " + "really " * 10)
    status = demo_module._status(moma, result)
    assert "Unknown words (read as [unk]): colour, really." in status
    assert f"Only the first {moma.hparams.max_text_len} words are read" in status
    assert len(result["words"]) == moma.hparams.max_text_len


@pytest.mark.parametrize("make,question,reason", [
    (lambda p: None, "What shape?", "no image: upload an image"),
    (lambda p: p.write_bytes(b"not an image") and p, "What shape?", "cannot read image bad.png"),
    (lambda p: Image.new("RGB", (5, 40)).save(p) or p, "What shape?",
     "image bad.png is 5x40; the demo needs at least 8 pixels a side"),
    (lambda p: Image.new("RGB", (64, 64)).save(p) or p, "  ", "no question: type a question"),
    (lambda p: Image.new("RGB", (64, 64)).save(p) or p, None, "no question: type a question"),
    (lambda p: Image.new("RGB", (64, 64)).save(p) or p, "???", r"the question '\?\?\?' has no words"),
])
def test_bad_inputs_are_rejected_in_one_line(make, question, reason, moma, tmp_path):
    path = make(tmp_path / "bad.png")
    with pytest.raises(MoezooError, match=reason) as caught:
        analyse(moma, None if path is None else str(path), question)
    assert "\n" not in str(caught.value)
    path = tmp_path / "good.png"
    Image.new("RGB", (64, 64)).save(path)
    with pytest.raises(MoezooError, match="unknown MoE layer 'block9'; the model's MoE layers: encoder.blocks.0.ffn"):
        analyse(moma, str(path), "What shape?", "block9")


def test_build_demo_finds_the_family_by_the_task_name(moma, monkeypatch):
    import moezoo.demos as demos

    shown = DemoModel(moma, "vl/moma", "a test model")
    monkeypatch.setattr(demos, "load_demo_model", lambda *args: shown)
    assert demos.FAMILY_DEMOS["vl"] == "moezoo.demos.vision_language"
    app, got = demos.build_demo("vl/moma")
    assert got is shown and app.title == "moezoo: vision-language experts"


@pytest.fixture(scope="module")
def app(moma):
    return build(DemoModel(moma, "vl/moma", "a test model"))


def test_the_app_through_gradio_client(app, moma, serve):
    from gradio_client import Client, handle_file

    client = Client(serve(app), verbose=False)
    path, question, status = client.predict(5, api_name="/example")
    assert "true answer" in status and question == example(5)[1]
    probs, experts, words, status = client.predict(handle_file(path), question, "encoder.blocks.0.ffn",
                                                   api_name="/answer")
    expected = analyse(moma, example(5)[0], question, "encoder.blocks.0.ffn")
    assert probs["label"] == expected["answer"] and status.startswith(f"Answer: **{expected['answer']}**")
    assert np.array_equal(np.asarray(Image.open(experts).convert("RGB")), expected["map"])
    tokens = [(w["token"], w["class_or_confidence"]) for w in words if w["token"] != " "]
    assert tokens == expected["words"]
    *cleared, status = client.predict(None, question, "encoder.blocks.1.ffn", api_name="/answer")
    assert status.startswith("**Rejected:** no image") and not any(cleared)  # Label: {}


def test_the_page_in_a_browser(app, serve, page, tmp_path):
    page.goto(serve(app))
    page.get_by_text("which expert took each image patch and each word").wait_for()
    page.locator("#example").click()
    page.locator("#status").get_by_text("true answer").wait_for()
    page.locator("#answer").click()
    page.locator("#status").get_by_text("Patches per expert").wait_for()
    page.locator("#experts img").wait_for()
    page.screenshot(path=tmp_path / "vl.png", full_page=True)


def test_the_registered_demo_starts_on_the_packaged_weights_and_answers_as_they_do():
    import moezoo.demos as demos

    app, shown = demos.build_demo("vl/moma")
    assert shown.source == "weights moma-easyvqa" and app.title == "moezoo: vision-language experts"
    path, question, _ = example(0)
    result = analyse(shown.model, path, question)
    image, _ = read_picture(path, shown.model.hparams.image_size)
    answers, _ = shown.model.answer(image, [question])
    assert result["answer"] == answers[0]
