"""Spectral front end: waveforms -> normalised time-frequency maps, with torchaudio's transforms, on the fly.

Features (``feature``), all from frames of ``n_fft`` samples every ``hop_length``:
- ``stft``: log power of the STFT, 10 log10 |X|^2 (``Spectrogram`` + ``AmplitudeToDB``), n_fft / 2 + 1 bins;
- ``mel``: log mel power (``MelSpectrogram`` + ``AmplitudeToDB``), ``n_bins`` mel bands;
- ``mfcc``: ``MFCC`` (DCT of the log mel bands: ``n_bins`` coefficients of 2 * ``n_bins`` bands);
- ``lfcc``: ``LFCC`` (DCT of the log linear-frequency filter bank: ``n_bins`` coefficients of 2 * ``n_bins`` filters).
CQT is not offered: no maintained package among the dependencies computes it in torch (nnAudio and librosa are not
dependencies; torchaudio has none).

``FrequencyNorm`` standardises each frequency bin with the mean and standard deviation of the *training* split
(``fit``: one pass over its windows, before training; kept in the state dict and the hub folder, so the weights
normalise a user's audio as in training). Until fitted it is the identity.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torchaudio.transforms as T

FEATURES = ("mel", "stft", "mfcc", "lfcc")


def spectral_transform(feature: str, sample_rate: int, n_fft: int, hop_length: int, n_bins: int) -> nn.Module:
    """The torchaudio transform of ``feature``: [B, N] -> [B, F, frames]."""
    spec = dict(n_fft=n_fft, hop_length=hop_length)
    if feature == "stft":
        return nn.Sequential(T.Spectrogram(**spec, power=2.0), T.AmplitudeToDB("power", top_db=80.0))
    if feature == "mel":
        return nn.Sequential(T.MelSpectrogram(sample_rate, **spec, n_mels=n_bins, power=2.0),
                             T.AmplitudeToDB("power", top_db=80.0))
    if feature == "mfcc":
        return T.MFCC(sample_rate, n_mfcc=n_bins, log_mels=True, melkwargs=dict(**spec, n_mels=2 * n_bins))
    if feature == "lfcc":
        return T.LFCC(sample_rate, n_filter=2 * n_bins, n_lfcc=n_bins, log_lf=True, speckwargs=spec)
    raise ValueError(f"unknown feature {feature!r}; valid: stft, mel, mfcc, lfcc")


def num_bins(feature: str, n_fft: int, n_bins: int) -> int:
    return n_fft // 2 + 1 if feature == "stft" else n_bins


class FrequencyNorm(nn.Module):
    """(x - mean_f) / std_f per frequency bin f of [B, F, frames], statistics from ``fit`` (identity until then)."""

    def __init__(self, bins: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(bins))
        self.register_buffer("std", torch.ones(bins))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def fit(self, maps) -> None:
        """Statistics over every frame of ``maps`` (an iterable of [B, F, frames] tensors), in float64."""
        total = sq = None
        count = 0
        for m in maps:
            m = m.double()
            s, q = m.sum((0, 2)), (m * m).sum((0, 2))
            total, sq = (s, q) if total is None else (total + s, sq + q)
            count += m.shape[0] * m.shape[2]
        if not count:
            raise ValueError("FrequencyNorm.fit: no frames")
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            stats = torch.cat([total, sq, total.new_tensor([count])])
            torch.distributed.all_reduce(stats)
            total, sq, count = stats[: total.numel()], stats[total.numel():-1], stats[-1]
        mean = total / count
        std = (sq / count - mean * mean).clamp_min(0).sqrt()
        self.mean.copy_(mean.float())
        self.std.copy_(std.float().clamp_min(1e-3))
        self.fitted.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean[:, None]) / self.std[:, None]


class SpectralFrontend(nn.Module):
    """Waveforms [B, N] -> normalised maps [B, 1, F, frames] (float32, outside any autocast region)."""

    def __init__(self, feature: str = "mel", sample_rate: int = 8000, n_fft: int = 512, hop_length: int = 128,
                 n_bins: int = 64):
        super().__init__()
        self.feature = feature
        self.transform = spectral_transform(feature, sample_rate, n_fft, hop_length, n_bins)
        self.norm = FrequencyNorm(num_bins(feature, n_fft, n_bins))

    def raw(self, waveform: torch.Tensor) -> torch.Tensor:
        """The un-normalised map [B, F, frames]."""
        with torch.autocast(waveform.device.type, enabled=False):
            return self.transform(waveform.float())

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        with torch.autocast(waveform.device.type, enabled=False):
            return self.norm(self.raw(waveform)).unsqueeze(1)
