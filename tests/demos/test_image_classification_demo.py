"""The image-classification demo: its digit preprocessing, its routing read-out, gradio_client and the browser."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from moezoo.demos import build_demo
from moezoo.demos.image_classification import classify, digit_input
from moezoo.errors import MoezooError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def demo():
    return build_demo("image-classification")


def _scaled_up(pixels: np.ndarray, ink_dark: bool = False) -> np.ndarray:
    image = np.kron((pixels / 16.0 * 255).astype(np.uint8), np.ones((16, 16), dtype=np.uint8))
    return 255 - image if ink_dark else image


def test_a_digit_scaled_up_and_read_back_is_classified_as_the_bundled_one(demo):
    from sklearn.datasets import load_digits

    from moezoo.training.data import load_digits_images, stratified_split

    model = demo[1].model
    digits = load_digits()
    images, labels = load_digits_images()
    test = stratified_split(labels.numpy(), 0.15, 0.15, 0)["test"]
    with torch.no_grad():
        direct = (model(images[test]).argmax(-1) == labels[test]).float().mean().item()
        for dark in (False, True):  # light ink on black as in the set, and dark ink on white as people draw
            x = torch.cat([digit_input(_scaled_up(digits.images[i], dark), model.img_size) for i in test])
            read_back = (model(x).argmax(-1) == labels[test]).float().mean().item()
            assert read_back > 0.93, (dark, read_back)
    assert direct > 0.97


def test_routing_lists_k_experts_for_every_patch_and_a_load_summing_to_one(demo):
    from sklearn.datasets import load_digits

    model = demo[1].model
    result = classify(model, _scaled_up(load_digits().images[0]))
    k = model.hparams["moe"]["k"]
    grid = model.net.patch_embed.grid_size
    assert len(result["layers"]) == model.hparams["depth"] // model.hparams["moe_every"]
    for layer in result["layers"].values():
        assert len(layer["experts"]) == grid[0] and all(len(row) == grid[1] for row in layer["experts"])
        assert all(len(set(cell)) == k for row in layer["experts"] for cell in row)
        assert sum(layer["load"]) == pytest.approx(1.0)
    assert result["probs"].sum().item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("image, reason", [
    (np.zeros((4, 4, 3), dtype=np.uint8), "4x4 pixels; this model needs at least 8x8"),
    (np.full((64, 64, 3), 255, dtype=np.uint8), "blank"),
    (np.zeros((64, 64, 5), dtype=np.uint8), "not an image"),
    (None, "no image"),
])
def test_bad_images_are_rejected_with_the_reason(image, reason):
    with pytest.raises(MoezooError, match=reason):
        digit_input(image, 8)


def test_the_app_through_gradio_client(demo, serve):
    from gradio_client import Client, handle_file

    client = Client(serve(demo[0]), verbose=False)
    image, status = client.predict(3, api_name="/test_digit")
    assert "a 3" in status
    probs, routing, table, status = client.predict(handle_file(image), api_name="/classify")
    assert probs["label"] == "3" and status.startswith("Predicted **3**")
    assert set(table) == {"net.blocks.1.mlp.moe", "net.blocks.3.mlp.moe"}
    assert np.asarray(Image.open(routing)).ndim == 3
    *cleared, status = client.predict(None, api_name="/classify")
    assert status.startswith("**Rejected:** no image") and cleared[2] is None


def test_the_page_in_a_browser(demo, serve, page, tmp_path):
    page.goto(serve(demo[0]))
    page.locator("#digit-index input").fill("4")
    page.locator("#test-digit").click()
    page.locator("#status").get_by_text("digit 4 of the bundled set: a 4").wait_for()
    page.locator("#classify").click()
    page.locator("#status").get_by_text("Predicted 4").wait_for()
    page.locator("#routing img").wait_for()
    assert page.locator("#probs").inner_text().split()[2:4] == ["4", "4"]  # after the heading: the top class, its bar
    page.screenshot(path=tmp_path / "image-classification.png", full_page=True)
    blank = tmp_path / "blank.png"
    Image.new("RGB", (64, 64), "white").save(blank)
    page.locator("#image input[type=file]").set_input_files(blank)
    page.locator("#classify").click()
    page.locator("#status").get_by_text("Rejected: the image is blank").wait_for()
    page.screenshot(path=tmp_path / "image-classification-rejected.png", full_page=True)
