"""The mobility demo: a typed trajectory's read-out against the model, bad trajectories, gradio_client and the
browser."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from moezoo.demos import build_demo
from moezoo.demos.mobility import example_trajectory, parse_trajectory, predict, trajectory_batch
from moezoo.errors import MoezooError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def demo():
    return build_demo("mobility/movegcl")


def test_a_trajectory_is_read_as_the_model_reads_its_windows(demo):
    model = demo[1].model
    assert demo[1].source == "weights movegcl-synthetic"
    text = example_trajectory(model, 1, 3)
    locations, hours = parse_trajectory(text, model.num_locations, 32)
    assert len(locations) == 8 and hours == sorted(hours)
    batch = trajectory_batch(model, 1, 2, 0, locations, hours)
    assert batch["gap_bins"][0, 0] == 0 and batch["gap_bins"][0, 1] == 3  # first visit; 4 h 15 min: [3, 6) h
    result = predict(model, batch)
    with torch.no_grad():
        direct = model(batch)[0, -1].softmax(-1)
    torch.testing.assert_close(result["prob"], direct)
    layers = [name for name in result["experts"]]
    assert len(layers) == 2 and all(len(result["experts"][n]) == 8 for n in layers)
    assert all(len(experts) == 2 for experts in result["experts"][layers[0]])  # top-2 per visit


@pytest.mark.parametrize("text,reason", [
    ("", "no trajectory"),
    ("12 Mon 8h", "expected '<location id> <day> <HH:MM>'"),
    ("99999 Mon 08:00", "location 99999 is not one of the model's"),
    ("12 Xyz 08:00", "day 'Xyz' is not one of"),
    ("12 Mon 25:00", "25:00 is not a time of day"),
    ("12 Tue 08:00\n13 Mon 09:00", "is before the visit above it"),
])
def test_bad_trajectories_are_rejected_with_the_reason(text, reason):
    with pytest.raises(MoezooError, match=reason):
        parse_trajectory(text, 450, 32)


def test_the_app_through_gradio_client(demo, serve):
    from gradio_client import Client

    client = Client(serve(demo[0]), verbose=False)
    text, status = client.predict("Metro", 2, api_name="/example")
    assert "an example drawn from the model" in status and len(text.splitlines()) == 8
    top, drawing, visits, status = client.predict("Metro", 1, 1, text, api_name="/predict")
    assert status.startswith("Next place: **") and "after 8 visits in Metro" in status
    assert len(top["confidences"]) == 5
    assert len(visits) == 8 and all({"visit", "location", "category", "time"} <= v.keys() for v in visits)
    assert np.asarray(Image.open(drawing)).ndim == 3
    *cleared, status = client.predict("Metro", 1, 1, "nonsense", api_name="/predict")
    assert status.startswith("**Rejected:** line 1 'nonsense'")


def test_the_page_in_a_browser(demo, serve, page, tmp_path):
    page.goto(serve(demo[0]))
    page.get_by_text("the experts every visit used in each MoE layer").wait_for()
    page.locator("#example").click()
    page.locator("#status").get_by_text("an example drawn from the model").wait_for()
    page.locator("#predict").click()
    page.locator("#status").get_by_text("Next place:").wait_for()
    page.locator("#map img").wait_for()
    page.screenshot(path=tmp_path / "mobility.png", full_page=True)
