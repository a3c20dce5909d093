"""Acoustic demo: upload (or record) a recording -> its spectral map, class probabilities, and the expert each window
chose.

The recording is read as the data module reads files (soundfile, mixed to mono, resampled to the model's rate) and
cut into the model's windows (``AcousticClassifier.classify_recording``); the class of the recording sums the
windows' log-probabilities. For a CMoE / RCMoE head each window shows the expert the hard top-1 router picked and
its score; the per-class routing of the test split is in the run's ``routing_by_label.json``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from moezoo.errors import MoezooError

from .skeleton import DemoModel, figure_image, guarded, header

MAX_SECONDS = 600.0  # longer recordings: cut them first (one forward holds every window)


def read_recording(path) -> tuple[torch.Tensor, int]:
    """The samples [C, N] and sample rate of an uploaded or recorded file, or a one-line MoezooError."""
    if not path:
        raise MoezooError("no audio: upload a recording (WAV, FLAC, OGG), record one, or press 'A generated vessel'")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:  # libsndfile's errors for a file that is not audio
        raise MoezooError(f"cannot read audio {Path(str(path)).name}: {' '.join(str(err).split())[:200]}") from None
    if data.shape[0] == 0:
        raise MoezooError(f"audio {Path(str(path)).name} is empty (0 frames)")
    if not np.isfinite(data).all():
        raise MoezooError(f"audio {Path(str(path)).name} holds NaN or infinite samples")
    if np.abs(data).max() == 0:
        raise MoezooError(f"audio {Path(str(path)).name} is silent (every sample is 0)")
    if data.shape[0] / rate > MAX_SECONDS:
        raise MoezooError(f"audio {Path(str(path)).name} is {data.shape[0] / rate:.0f} s long; the demo takes up to "
                          f"{MAX_SECONDS:.0f} s (cut it first)")
    return torch.from_numpy(data.T.copy()), rate


def analyse(model, path) -> dict:
    """The recording's probabilities, per-window results and its normalised spectral map [F, frames]."""
    wave, rate = read_recording(path)
    result = model.classify_recording(wave, rate)
    mono = result.pop("waveform")
    with torch.no_grad():
        result["map"] = model.frontend(mono[None].to(next(model.parameters()).device))[0, 0].cpu()
    result["seconds"] = mono.shape[0] / model.sample_rate
    return result


def spectrogram_figure(model, result: dict):
    """The normalised map over time, the windows' bounds, and over each window its chosen expert."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 3.2), dpi=100, layout="constrained")
    ax = figure.subplots()
    seconds = result["seconds"]
    ax.imshow(result["map"].numpy(), origin="lower", aspect="auto", cmap="magma", extent=(0, seconds, 0,
                                                                                        result["map"].shape[0]))
    for i, start in enumerate(result["start"].tolist()):
        ax.axvline(start, color="white", lw=0.6, alpha=0.7)
        if "expert" in result:
            ax.text(start + 0.02 * model.window_seconds, result["map"].shape[0] * 0.93, f"e{int(result['expert'][i])}",
                    color="cyan", fontsize=8, va="top")
    ax.set_xlim(0, max(seconds, 1e-3))
    ax.set_xlabel("time (s)")
    ax.set_ylabel(f"{model.frontend.feature} bin")
    title = f"{model.frontend.feature} map (normalised with the training split's statistics)"
    ax.set_title(title + ("; the expert of each window above it" if "expert" in result else ""), fontsize=9)
    return figure_image(figure)


def generated_vessel(class_name: str, seed: float):
    """A recording of the embedded default's generator (synthetic ship noise) of ``class_name``, as a WAV file."""
    from moezoo.tasks.acoustic import synthetic

    if class_name not in synthetic.CLASSES:
        raise MoezooError(f"unknown generated class {class_name!r}; choose one of {', '.join(synthetic.CLASSES)}")
    rng = np.random.default_rng(int(seed))
    mode = synthetic.MODES[class_name][int(seed) % 2]
    wave = synthetic.vessel(rng, mode, seconds=8.0, sample_rate=8000, snr_db=(-10.0, 5.0))
    path = Path(tempfile.mkdtemp(prefix="moezoo-acoustic-")) / f"generated-{class_name}-{int(seed)}.wav"
    sf.write(str(path), wave, 8000, subtype="FLOAT")
    return str(path), f"generated {class_name} (synthetic, mode {int(seed) % 2}, seed {int(seed)}): press **Classify**"


def build(shown: DemoModel):
    import gradio as gr

    from moezoo.tasks.acoustic import synthetic

    model = shown.model
    names = model.class_names

    def answer(path):
        result = analyse(model, path)
        probs = {names[i]: float(p) for i, p in enumerate(result["prob"])}
        top = max(probs, key=probs.get)
        windows = []
        for i, start in enumerate(result["start"].tolist()):
            row = {"start_s": round(start, 3), "class": names[int(result["window_prob"][i].argmax())],
                   "p": round(float(result["window_prob"][i].max()), 4)}
            if "expert" in result:
                row["expert"] = int(result["expert"][i])
                row["score"] = round(float(result["scores"][i, row["expert"]]), 4)
            windows.append(row)
        used = ""
        if "expert" in result:
            counts = torch.bincount(result["expert"], minlength=result["scores"].shape[1]).tolist()
            used = " Experts chosen: " + ", ".join(f"e{e} x{c}" for e, c in enumerate(counts) if c) + "."
        status = (f"**{top}** ({probs[top]:.1%}) over {len(windows)} window{'s' * (len(windows) != 1)} of "
                  f"{model.window_seconds:g} s.{used}")
        return probs, spectrogram_figure(model, result), windows, status

    with gr.Blocks(title="moezoo: CMoE acoustic recognition") as app:
        gr.Markdown(header("Underwater acoustic target recognition", shown,
                           "Upload or record a recording, then **Classify**: the recording's class probabilities, its "
                           "spectral map cut into the model's windows, and the expert head each window's router "
                           "chose."))
        with gr.Row():
            with gr.Column():
                audio = gr.Audio(label="recording", type="filepath", sources=["upload", "microphone"],
                                 elem_id="audio")
                with gr.Row():
                    vessel_class = gr.Dropdown(list(synthetic.CLASSES), value=synthetic.CLASSES[0],
                                               label="generated vessel class", elem_id="vessel-class")
                    seed = gr.Number(label="seed", value=0, precision=0, elem_id="vessel-seed")
                make = gr.Button("A generated vessel", elem_id="generated-vessel")
                run = gr.Button("Classify", variant="primary", elem_id="classify")
            with gr.Column():
                status = gr.Markdown(elem_id="status")
                label = gr.Label(label="class probabilities", num_top_classes=min(10, len(names)), elem_id="probs")
        spectrogram = gr.Image(label="spectral map and experts", elem_id="spectrogram", interactive=False,
                               format="png")
        table = gr.JSON(label="per window: start, class, probability, expert and its score", elem_id="windows")
        outputs = [label, spectrogram, table, status]
        run.click(guarded(answer, len(outputs)), audio, outputs, api_name="classify")
        make.click(guarded(generated_vessel, 2), [vessel_class, seed], [audio, status], api_name="generated_vessel")
    return app
