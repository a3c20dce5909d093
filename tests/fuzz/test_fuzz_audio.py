"""Fuzz the acoustic family's class-folder trees: WAV (16-bit, float), FLAC and OGG files of several rates, channel
counts and lengths, damaged bytes, files that are not audio, empty files, short recordings, classes with too few.

Each tree either loads into train/val/test splits whose every window is a finite [window] waveform with a label of
one of the tree's classes (the files are decoded at setup, ``check_audio``), or raises a one-line MoezooError naming
the folder or the file. With ``skip_bad`` a damaged file is left out with a warning instead of failing the tree.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch
from fuzz_support import OUTCOMES, PROFILES, expect_both_outcomes, fuzz_settings, mutated, outcome, scratch
from hypothesis import given
from hypothesis import strategies as st

from moezoo.tasks.acoustic import AcousticData

FORMATS = {"WAV": ("wav", ["PCM_16", "FLOAT"]), "FLAC": ("flac", ["PCM_16"]), "OGG": ("ogg", ["VORBIS"])}
RATES = [8000, 11025, 16000, 44100]


@st.composite
def audio_bytes(draw, rng):
    """(bytes, extension, intact) of one short recording, sometimes damaged or not audio at all."""
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    extension, subtypes = FORMATS[fmt]
    rate = draw(st.sampled_from(RATES))
    frames = int(rate * draw(st.sampled_from([0.1, 0.3, 0.6, 1.0, 1.0, 1.5])))
    channels = draw(st.sampled_from([1, 1, 2]))
    wave = (0.2 * rng.standard_normal((frames, channels))).astype(np.float32)
    buffer = io.BytesIO()
    sf.write(buffer, wave, rate, format=fmt, subtype=draw(st.sampled_from(subtypes)))
    data = buffer.getvalue()
    kind = draw(st.sampled_from(["intact"] * 30 + ["damaged", "damaged", "text", "empty"]))
    if kind == "damaged":
        return draw(mutated(data, allow_none=False)), extension, False
    if kind == "text":
        return b"this is not audio\n", extension, False
    if kind == "empty":
        return b"", extension, False
    return data, extension, True


@st.composite
def audio_tree(draw, root):
    """Writes a class-folder tree under ``root``; returns (counts per class, intact)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    classes = draw(st.lists(st.sampled_from(["Cargo", "Tug", "émile", "a b"]), min_size=1, max_size=3, unique=True))
    counts, intact = {}, True
    for name in classes:
        folder = root / name
        folder.mkdir(parents=True)
        count = draw(st.sampled_from([3, 4, 5, 3, 4, 0, 2]))
        counts[name] = count
        for i in range(count):
            data, extension, ok = draw(audio_bytes(rng))
            (folder / f"{i}.{extension}").write_bytes(data)
            intact = intact and ok
        if draw(st.integers(0, 6)) == 0:
            (folder / "notes.txt").write_text("not audio")
    return counts, intact


def _sane(module: AcousticData) -> None:
    assert set(module.splits) == {"train", "val", "test"}
    for name, split in module.splits.items():
        assert len(split) > 0, f"empty {name} split"
        for i in range(len(split)):
            wave, label, _ = split[i]
            assert wave.shape == (module.window,) and wave.dtype == torch.float32 and torch.isfinite(wave).all()
            assert 0 <= label < module.num_classes


@pytest.mark.parametrize("profile", PROFILES)
def test_audio_tree_loads_sane_windows_or_fails_in_one_line(profile, tmp_path):
    loader = "acoustic class-folder tree"
    before = OUTCOMES[loader].copy()

    @fuzz_settings(profile, examples=60)
    @given(data=st.data(), pad_short=st.sampled_from([True, True, False]), skip_bad=st.booleans(),
           rate=st.sampled_from([8000, 16000]))
    def check(data, pad_short, skip_bad, rate):
        with scratch(tmp_path) as folder:
            root = folder / "tree"
            counts, intact = data.draw(audio_tree(root))
            module = AcousticData(root=str(root), sample_rate=rate, window_seconds=0.5, hop_seconds=0.25,
                                  pad_short=pad_short, skip_bad=skip_bad, check_audio=True)

            def load():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # skip_bad's counted warning
                    module.setup()
                _sane(module)
                return module

            loaded = outcome(loader, load, [str(root)])
            if intact and pad_short and min(counts.values()) >= 3:
                assert loaded is not None, f"refused a valid tree: {counts}"
            if min(counts.values()) < 3:
                assert loaded is None, f"split a class of fewer than 3 recordings: {counts}"

    check()
    expect_both_outcomes(loader, before)
