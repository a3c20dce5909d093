"""The embedded default of the acoustic family: generated ship-radiated noise with a known structure (synthetic).

No installed package ships labelled underwater (or ship) recordings, so ``moezoo fit --task acoustic/cmoe`` with no
data trains on recordings generated here, seeded, one recording per vessel. A vessel's signal follows the textbook
model of ship-radiated noise (Urick, "Principles of Underwater Sound"; the DEMON model of cavitation noise):

    s(t) = sum_k a_k cos(2 pi k f_s t + phi_k)                          shaft-rate tonals (k = 1..8), strongest at
                                                                        the blade rate f_b = n_blades * f_s and its
                                                                        harmonics
         + a_m sum_j cos(2 pi j f_m t)                                  a machinery line (diesel generator) and
                                                                        harmonics, for the modes that have one
         + (1 + m cos(2 pi f_b t)) * c(t)                               cavitation: band-passed noise around f_c,
                                                                        amplitude-modulated at the blade rate

with slow frequency wander (±0.5 %) of f_s. Propagation to the hydrophone at range r: spherical spreading 1/r and
frequency-dependent absorption exp(-alpha f^2 r) (a low-pass that deepens with range). Ambient sea noise (a 1/f
spectrum) is added at an SNR drawn per vessel from ``snr_db``.

Classes and their propulsion modes (each class has two, so that a class is multi-modal and a single linear head on a
shared representation struggles where a mixture of heads need not): a mode fixes the ranges of shaft rate, blade
count, cavitation band and modulation depth, the machinery line, and the range. Modes of different classes overlap
on purpose: Cargo's slow mode and Tanker's share shaft rate and blade counts and differ in cavitation band; the fast
modes of Passengership and Tug share their cavitation band and differ in blade rate and machinery line.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLASSES = ("Cargo", "Passengership", "Tanker", "Tug")


@dataclass(frozen=True)
class Mode:
    shaft_hz: tuple[float, float]
    blades: tuple[int, ...]
    cavitation_hz: tuple[float, float]  # centre of the cavitation band
    modulation: tuple[float, float]  # DEMON modulation depth m
    machinery_hz: float | None  # a generator line (and 3 harmonics), or none
    range_m: tuple[float, float]


MODES: dict[str, tuple[Mode, Mode]] = {
    "Cargo": (Mode((1.2, 1.8), (4, 5), (300.0, 500.0), (0.5, 0.8), 60.0, (800.0, 2500.0)),
              Mode((2.0, 2.6), (4,), (900.0, 1300.0), (0.2, 0.4), None, (500.0, 1500.0))),
    "Passengership": (Mode((3.0, 4.0), (5, 6), (1200.0, 1800.0), (0.3, 0.6), 50.0, (400.0, 1200.0)),
                      Mode((1.8, 2.4), (3,), (500.0, 800.0), (0.6, 0.9), None, (600.0, 2000.0))),
    "Tanker": (Mode((1.2, 1.8), (4, 5), (700.0, 1000.0), (0.5, 0.8), None, (800.0, 2500.0)),
               Mode((0.8, 1.2), (6, 7), (250.0, 400.0), (0.3, 0.5), 60.0, (1000.0, 3000.0))),
    "Tug": (Mode((4.5, 6.0), (3, 4), (1200.0, 1800.0), (0.6, 0.9), 60.0, (200.0, 800.0)),
            Mode((2.6, 3.2), (5,), (350.0, 600.0), (0.2, 0.4), 50.0, (300.0, 1000.0))),
}

ABSORPTION = 2e-10  # alpha of exp(-alpha f^2 r), per Hz^2 per metre: about -8.7 dB at 2 kHz and 2.5 km


def _bandpass_noise(rng: np.random.Generator, n: int, sample_rate: int, centre: float, width: float) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    spectrum *= np.exp(-0.5 * ((freqs - centre) / width) ** 2)
    noise = np.fft.irfft(spectrum, n)
    return noise / (noise.std() + 1e-12)


def _ambient(rng: np.random.Generator, n: int, sample_rate: int) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    spectrum /= np.sqrt(np.maximum(freqs, 10.0))  # 1/f power
    noise = np.fft.irfft(spectrum, n)
    return noise / (noise.std() + 1e-12)


def vessel(rng: np.random.Generator, mode: Mode, seconds: float, sample_rate: int,
           snr_db: tuple[float, float]) -> np.ndarray:
    """One recording [seconds * sample_rate] float32 of a vessel of ``mode``, peak about 0.1."""
    n = int(round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    shaft = rng.uniform(*mode.shaft_hz)
    blades = int(rng.choice(mode.blades))
    wander = 1.0 + 0.005 * np.cumsum(rng.standard_normal(n)) / np.sqrt(n)  # slow drift of the shaft rate
    phase = 2 * np.pi * shaft * np.cumsum(wander) / sample_rate
    signal = np.zeros(n)
    for k in range(1, 9):
        amplitude = (1.0 if k % blades == 0 else 0.25) / np.sqrt(k)
        signal += amplitude * np.cos(k * phase + rng.uniform(0, 2 * np.pi))
    if mode.machinery_hz is not None:
        for j in range(1, 4):
            signal += 0.4 / j * np.cos(2 * np.pi * j * mode.machinery_hz * t + rng.uniform(0, 2 * np.pi))
    centre = rng.uniform(*mode.cavitation_hz)
    cavitation = _bandpass_noise(rng, n, sample_rate, centre, 0.25 * centre)
    depth = rng.uniform(*mode.modulation)
    signal += 1.5 * (1.0 + depth * np.cos(blades * phase)) * cavitation
    # propagation: spreading and absorption (in frequency), then ambient noise at the drawn SNR
    distance = rng.uniform(*mode.range_m)
    spectrum = np.fft.rfft(signal)
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    signal = np.fft.irfft(spectrum * np.exp(-ABSORPTION * freqs**2 * distance), n) * (1000.0 / distance)
    snr = rng.uniform(*snr_db)
    noise = _ambient(rng, n, sample_rate) * signal.std() / (10 ** (snr / 20))
    recording = signal + noise
    return (0.1 * recording / (np.abs(recording).max() + 1e-12)).astype(np.float32)


def generate(recordings_per_class: int = 40, seconds: float = 6.0, sample_rate: int = 8000,
             snr_db: tuple[float, float] = (-5.0, 10.0), seed: int = 0) -> list[tuple[np.ndarray, int, int]]:
    """(waveform, label, mode) of ``recordings_per_class`` vessels per class (alternating the class's two modes),
    ordered by class; the label indexes ``CLASSES``."""
    rng = np.random.default_rng(seed)
    out = []
    for label, name in enumerate(CLASSES):
        for i in range(recordings_per_class):
            mode = i % 2
            out.append((vessel(rng, MODES[name][mode], seconds, sample_rate, snr_db), label, mode))
    return out
