"""Small audio files for the acoustic tests."""

from pathlib import Path

import numpy as np
import soundfile as sf

AUDIO = Path(__file__).resolve().parents[4] / "shared" / "data" / "audio"
DEEPSHIP_ARCHIVE = AUDIO / "deepship" / "deepship_subset.tar.xz"
FSDD = AUDIO / "fsdd"


def write_tone(path: Path, seconds: float = 1.0, rate: int = 8000, freq: float = 440.0, channels: int = 1):
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.1 * np.sin(2 * np.pi * freq * t)
    sf.write(str(path), np.stack([wave] * channels, 1) if channels > 1 else wave, rate)
    return path


def class_tree(root: Path, classes=("a", "b"), per_class: int = 3, seconds: float = 1.0, rate: int = 8000):
    """A class-folder tree of tones, a frequency per class."""
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            write_tone(root / name / f"{i}.wav", seconds, rate, freq=300.0 + 400 * c + 20 * i)
    return root
