"""The DiT demo: seeded sampling as diffusers does it, ProMoE's load by timestep, gradio_client and the browser."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from moezoo.demos import build_demo
from moezoo.demos.dit import generate
from moezoo.errors import MoezooError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def demo():
    return build_demo("dit/promoe")


def test_samples_are_seeded_per_sample_as_in_diffusers(demo):
    task = demo[1].model
    batch = generate(task, 3, 1.5, 4, 7, 3)["images"]
    assert batch.shape == (3, 1, 16, 16) and 0 <= batch.min() and batch.max() <= 1
    assert torch.equal(generate(task, 3, 1.5, 4, 7, 3)["images"], batch)  # the same seed, the same samples
    alone = generate(task, 3, 1.5, 4, 9, 1)["images"][0]  # sample i of seed s is the lone sample of seed s + i
    torch.testing.assert_close(alone, batch[2], atol=1e-5, rtol=0)


def test_the_unconditional_expert_takes_exactly_the_guided_half_at_every_step(demo):
    """ProMoE's conditional routing: the null-class half of a guided pass goes to the last (unconditional) expert,
    so at every step its share is 1/2 with guidance, and 0 without (no unconditional pass is computed)."""
    task = demo[1].model
    guided = generate(task, 5, 2.0, 6, 0, 2)
    assert len(guided["timesteps"]) == 6 and guided["timesteps"] == sorted(guided["timesteps"], reverse=True)
    assert len(guided["layers"]) == task.model.config.depth // task.model.config.moe_every
    for load in guided["layers"].values():
        assert load.shape == (6, task.model.config.num_experts + 1)
        torch.testing.assert_close(load.sum(-1), torch.ones(6))
        torch.testing.assert_close(load[:, -1], torch.full((6,), 0.5))
    for load in generate(task, 5, 1.0, 6, 0, 2)["layers"].values():
        assert torch.all(load[:, -1] == 0) and torch.all(load[:, :-1].sum(-1) > 0.99)


@pytest.mark.parametrize("values, reason", [
    ((10, 1.5, 20, 0, 4), "class 10 does not exist: this model knows classes 0-9"),
    ((-1, 1.5, 20, 0, 4), "class -1 does not exist"),
    ((3, 0.5, 20, 0, 4), "guidance scale 0.5 is out of range"),
    ((3, 1.5, 0, 0, 4), "steps 0 is out of range: 1 to 100"),
    ((3, 1.5, 20, 0, 17), "samples 17 is out of range: 1 to 16"),
    ((3, 1.5, 20, -5, 4), "seed -5 is out of range"),
    ((3.5, 1.5, 20, 0, 4), "class must be a whole number, got 3.5"),
    ((None, 1.5, 20, 0, 4), "class is empty"),
    ((3, float("nan"), 20, 0, 4), "guidance scale is empty"),
])
def test_bad_settings_are_rejected_with_the_reason(demo, values, reason):
    with pytest.raises(MoezooError, match=reason):
        generate(demo[1].model, *values)


def test_the_app_through_gradio_client(demo, serve):
    from gradio_client import Client

    client = Client(serve(demo[0]), verbose=False)
    grid, routing, table, status = client.predict(7, 1.5, 5, 1, 4, api_name="/generate")
    assert status.startswith("4 samples of class **7**, guidance 1.5, 5 steps, seed 1")
    # one row of 4 samples of 16 x 16 with 1-pixel borders (torchvision's make_grid), scaled up 8 times
    assert np.asarray(Image.open(grid)).shape == ((16 + 2) * 8, (4 * 17 + 1) * 8, 3)
    layer = next(iter(table.values()))
    assert len(layer["timesteps"]) == 5 and all(abs(row[-1] - 0.5) < 1e-6 for row in layer["load"])
    assert np.asarray(Image.open(routing)).ndim == 3
    *cleared, status = client.predict(12, 1.5, 5, 1, 4, api_name="/generate")
    assert status == "**Rejected:** class 12 does not exist: this model knows classes 0-9" and cleared == [None] * 3


def test_the_page_in_a_browser(demo, serve, page, tmp_path):
    page.goto(serve(demo[0]))
    page.locator("#class input").fill("2")
    page.locator("#generate").click()
    page.locator("#status").get_by_text("8 samples of class 2").wait_for()
    page.locator("#samples-grid img").wait_for()
    page.locator("#routing img").wait_for()
    page.screenshot(path=tmp_path / "dit.png", full_page=True)
    page.locator("#class input").fill("11")
    page.locator("#generate").click()
    page.locator("#status").get_by_text("Rejected: class 11 does not exist").wait_for()
    page.screenshot(path=tmp_path / "dit-rejected.png", full_page=True)
