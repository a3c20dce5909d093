"""The acoustic demo: a recording's read-out against the model, bad recordings, gradio_client and the browser."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from moezoo.demos import build_demo
from moezoo.demos.acoustic import analyse, generated_vessel, read_recording
from moezoo.errors import MoezooError
from moezoo.tasks.acoustic import synthetic

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def demo():
    return build_demo("acoustic/cmoe")


def test_a_recording_is_classified_window_by_window_as_the_model_classifies_its_windows(demo, tmp_path):
    model = demo[1].model
    assert demo[1].source == "weights cmoe-shipnoise"
    rng = np.random.default_rng(5)
    wave = synthetic.vessel(rng, synthetic.MODES["Tug"][0], seconds=5.0, sample_rate=16000, snr_db=(0.0, 0.0))
    path = tmp_path / "tug.wav"
    sf.write(str(path), np.stack([wave, wave], 1), 16000, subtype="FLOAT")  # stereo at 16 kHz, mixed and resampled
    result = analyse(model, str(path))
    assert result["window_prob"].shape == (2, 4), "5 s in full windows of 2 s: 2 (the data module's rule)"
    import torchaudio.functional as AF

    resampled = AF.resample(torch.from_numpy(wave), 16000, 8000)
    windows = resampled[: 2 * 16000].view(2, 16000)
    direct = model.classify(windows)
    assert torch.allclose(result["window_prob"], direct["prob"], atol=1e-5)
    assert torch.equal(result["expert"], direct["expert"])
    expected = direct["prob"].log().sum(0).softmax(-1)
    assert torch.allclose(result["prob"], expected, atol=1e-5)
    assert result["map"].shape[0] == 64 and result["seconds"] == pytest.approx(5.0)


@pytest.mark.parametrize("make,reason", [
    (lambda p: None, "no audio: upload a recording"),
    (lambda p: p.write_bytes(b"not audio at all") and p, "cannot read audio bad.wav"),
    (lambda p: sf.write(str(p), np.zeros(0, dtype=np.float32), 8000) or p, "audio bad.wav is empty (0 frames)"),
    (lambda p: sf.write(str(p), np.zeros(800, dtype=np.float32), 8000) or p, "audio bad.wav is silent"),
    (lambda p: sf.write(str(p), np.full(800, np.nan, dtype=np.float32), 8000, subtype="FLOAT") or p,
     "audio bad.wav holds NaN or infinite samples"),
])
def test_bad_recordings_are_rejected_with_the_reason(make, reason, tmp_path):
    path = make(tmp_path / "bad.wav")
    with pytest.raises(MoezooError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        read_recording(None if path is None else str(path))


def test_the_app_through_gradio_client(demo, serve):
    from gradio_client import Client, handle_file

    client = Client(serve(demo[0]), verbose=False)
    path, status = client.predict("Tanker", 3, api_name="/generated_vessel")
    assert "generated Tanker (synthetic, mode 1, seed 3)" in status
    probs, drawing, windows, status = client.predict(handle_file(path), api_name="/classify")
    assert len(windows) == 4 and all({"start_s", "class", "p", "expert", "score"} <= w.keys() for w in windows)
    assert status.startswith(f"**{probs['label']}**") and "over 4 windows of 2 s" in status
    assert np.asarray(Image.open(drawing)).ndim == 3
    *cleared, status = client.predict(None, api_name="/classify")
    assert status.startswith("**Rejected:** no audio")
    assert all(value is None for value in cleared[1:]), cleared  # (the Label comes back as its empty value)


def test_the_page_in_a_browser(demo, serve, page, tmp_path):
    path, _ = generated_vessel("Passengership", 0)
    page.goto(serve(demo[0]))
    page.get_by_text("the expert head each window's router chose").wait_for()
    page.locator("#audio input[type=file]").set_input_files(path)
    page.locator("#classify").click()
    page.locator("#status").get_by_text("over 4 windows of 2 s").wait_for()
    page.locator("#spectrogram img").wait_for()
    assert "Experts chosen:" in page.locator("#status").inner_text()
    page.screenshot(path=tmp_path / "acoustic.png", full_page=True)
