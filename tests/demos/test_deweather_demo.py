"""The deweathering demo: a photo's restoration and expert map against the model, bad images, gradio_client and the
browser."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from moezoo.demos import build_demo
from moezoo.demos import deweather as demo_module
from moezoo.demos.deweather import analyse, read_photo, synthesised
from moezoo.errors import MoezooError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def demo():
    return build_demo("deweather/mofme-uar")


def test_a_photo_is_restored_as_the_model_restores_it_with_the_expert_of_every_patch(demo):
    model = demo[1].model
    assert demo[1].source == "weights mofme-uar-synthweather"
    path, status = synthesised("haze", 3)
    assert "synthesised haze" in status
    result = analyse(model, path)
    degraded, note = read_photo(path)
    assert note == "256x168" and result["restored"].shape == (168, 256, 3)
    direct = model.restore(degraded, tile=demo_module.TILE, overlap=demo_module.OVERLAP)[0]
    expected = (direct.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert np.abs(result["restored"].astype(int) - expected.astype(int)).max() <= 1
    experts = model.expert_map(degraded)[0]
    assert result["map"].shape == (168, 256, 3)
    counts = torch.bincount(experts.flatten(), minlength=4) / experts.numel()
    assert result["share"] == pytest.approx({f"expert {e}": float(c) for e, c in enumerate(counts)})


def test_a_large_photo_is_scaled_down_and_restored_in_tiles(demo, tmp_path, monkeypatch):
    monkeypatch.setattr(demo_module, "MAX_SIDE", 96)
    monkeypatch.setattr(demo_module, "TILE", 48)
    monkeypatch.setattr(demo_module, "OVERLAP", 8)
    path = tmp_path / "large.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (150, 200, 3), dtype=np.uint8)).save(path)
    result = analyse(demo[1].model, str(path))
    assert result["note"] == "200x150, scaled to 96x72" and result["restored"].shape == (72, 96, 3)
    assert abs(sum(result["share"].values()) - 1) < 1e-6


@pytest.mark.parametrize("make,reason", [
    (lambda p: None, "no image: upload a photo"),
    (lambda p: p.write_bytes(b"not an image") and p, "cannot read image bad.png"),
    (lambda p: Image.new("RGB", (5, 40)).save(p) or p, "image bad.png is 5x40; the demo needs at least 8 pixels"),
])
def test_bad_images_are_rejected_with_the_reason(make, reason, tmp_path):
    path = make(tmp_path / "bad.png")
    with pytest.raises(MoezooError, match=reason):
        read_photo(None if path is None else str(path))
    with pytest.raises(MoezooError, match="unknown weather 'fog'"):
        synthesised("fog", 0)


def test_the_app_through_gradio_client(demo, serve):
    from gradio_client import Client, handle_file

    client = Client(serve(demo[0]), verbose=False)
    path, status = client.predict("snow", 1, api_name="/synthesise")
    assert "synthesised snow" in status
    restored, experts, share, status = client.predict(handle_file(path), api_name="/restore")
    assert status.startswith("Restored (256x168).") and "Patch tokens per expert" in status
    assert np.asarray(Image.open(restored)).shape == (168, 256, 3)
    assert np.asarray(Image.open(experts)).shape == (168, 256, 3)
    assert share["label"].startswith("expert ")
    *cleared, status = client.predict(None, api_name="/restore")
    assert status.startswith("**Rejected:** no image")


def test_the_page_in_a_browser(demo, serve, page, tmp_path):
    path, _ = synthesised("rain", 0)
    page.goto(serve(demo[0]))
    page.get_by_text("the expert that handled each patch").wait_for()
    page.locator("#photo input[type=file]").set_input_files(path)
    page.locator("#restore").click()
    page.locator("#status").get_by_text("Restored (256x168)").wait_for()
    page.locator("#restored img").wait_for()
    page.locator("#experts img").wait_for()
    page.screenshot(path=tmp_path / "deweather.png", full_page=True)
