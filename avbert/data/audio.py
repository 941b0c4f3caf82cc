"""The suite's one log-mel definition, per-clip audio windows and SpecAugment masking.

Every loader (synthetic, PyAV, DALI) turns a waveform into model input the same way:

1. ``LogMel``: torchaudio's ``MelSpectrogram`` with its own defaults (Hann window,
   ``win_length = n_fft``, ``center=True``, reflect padding, ``f_min=0``) and the
   choices ``mel_scale="htk"``, ``norm=None``, ``power=2``, followed by one of two log
   forms (``data.log_mel``):

   - ``ln``: ``ln(1e-6 + x)``, the released code's log-mel (sangho-vision/avbert,
     ``code/data/transform.py``, ``get_log_mel_spectrogram``: torchaudio's
     ``MelSpectrogram(sample_rate, n_fft=n_fft, n_mels=n_mels)``, whose defaults are the
     ones above, then ``torch.log(1e-6 + mel)``), fed to the CNN as it is;
   - ``db``: ``10 * log10(max(x, 1e-10))``, then ``normalize_logmel``'s fixed
     constants so the values are O(1).

   DALI's ``fn.spectrogram -> fn.mel_filter_bank(mel_formula="htk", normalize=False)``
   followed by ``fn.to_decibels`` or ``log(1e-6 + x)`` computes the same thing.
2. ``clip_logmel``: one window of the waveform per visual clip, time-aligned with it,
   cropped or padded (with the form's silence) to exactly ``mel_frames`` frames:
   ``[T, 1, n_mels, mel_frames]``.
3. ``spec_augment``: frequency and time masking (5% bands by default, as in the paper's
   released configuration), set to 0, drawn from an explicit ``torch.Generator``.
"""

from __future__ import annotations

import math

import torch
import torchaudio
from torch import nn

AMIN = 1e-10
"""Power floor before the logarithm: silence maps to ``10 * log10(AMIN) = -100`` dB."""

SILENCE_DB = 10.0 * math.log10(AMIN)

LN_OFFSET = 1e-6
"""Offset inside the natural log of the ``ln`` form, ``ln(1e-6 + power)`` (the released
``code/data/transform.py``): silence maps to ``ln(1e-6) = -13.8``."""

SILENCE_LN = math.log(LN_OFFSET)

LOG_FORMS = ("db", "ln")

LOGMEL_MEAN = -20.0
LOGMEL_STD = 20.0
"""Fixed normalisation constants in dB. Waveforms in [-1, 1] give log-mel values that
range from the -100 dB floor (digital silence) to about +40 dB (a loud tone), with the
bulk of natural and synthetic audio between -60 and +20 dB; centring on -20 dB and
dividing by 20 dB puts that bulk in [-2, 2]. Constants rather than dataset statistics so
that every loader and every dataset sees the same input scale."""


class LogMel(nn.Module):
    """Waveform ``[..., samples]`` -> log-mel ``[..., n_mels, frames]``, in dB
    (``scale="db"``) or as ``ln(1e-6 + power)`` (``scale="ln"``).

    ``hop_length=None`` keeps torchaudio's default ``n_fft // 2``. With ``center=True``
    a window of ``n`` samples gives ``1 + n // hop_length`` frames.
    """

    def __init__(self, sample_rate: int = 16000, n_fft: int = 400,
                 hop_length: int | None = None, n_mels: int = 80, scale: str = "db"):
        super().__init__()
        if scale not in LOG_FORMS:
            raise ValueError(f"unknown log-mel form {scale!r}; allowed values: 'db', 'ln'")
        self.scale = scale
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.hop_length = hop_length if hop_length is not None else n_fft // 2
        self.n_mels = n_mels
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=n_fft, hop_length=self.hop_length,
            n_mels=n_mels, power=2.0, norm=None, mel_scale="htk")

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.numel() == 0:  # an empty batch: torch.stft rejects zero-size inputs
            shape = (*waveform.shape[:-1], self.n_mels, self.num_frames(waveform.shape[-1]))
            return waveform.new_zeros(shape, dtype=torch.float32)
        power = self.mel(waveform.float())
        if self.scale == "ln":
            return torch.log(power + LN_OFFSET)
        return 10.0 * torch.log10(torch.clamp(power, min=AMIN))

    @property
    def silence(self) -> float:
        """The value digital silence maps to: what padded frames are filled with."""
        return SILENCE_LN if self.scale == "ln" else SILENCE_DB

    def normalize(self, logmel: torch.Tensor) -> torch.Tensor:
        """Model input from this form's values: ``normalize_logmel`` for dB; the ``ln``
        form goes to the CNN unscaled, as in the released code."""
        return normalize_logmel(logmel) if self.scale == "db" else logmel

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for a window of ``num_samples`` samples (``center=True``)."""
        return 1 + num_samples // self.hop_length


def normalize_logmel(logmel_db: torch.Tensor) -> torch.Tensor:
    """Map dB log-mels to O(1) values with the fixed ``LOGMEL_MEAN`` / ``LOGMEL_STD``."""
    return (logmel_db - LOGMEL_MEAN) / LOGMEL_STD


def clip_windows(waveform: torch.Tensor, sample_rate: int, clip_starts,
                 clip_duration: float) -> torch.Tensor:
    """Cut ``[..., samples]`` into ``[..., T, window]`` windows, one per clip.

    Clip ``t`` covers ``[clip_starts[t], clip_starts[t] + clip_duration)`` seconds, the
    same interval as its frames. Parts of a window outside the recording are zeros
    (silence), so every window has ``round(clip_duration * sample_rate)`` samples.
    """
    starts = torch.round(torch.as_tensor(clip_starts, dtype=torch.float64) * sample_rate)
    starts = starts.long()
    window = int(round(clip_duration * sample_rate))
    num_samples = waveform.shape[-1]
    front = max(0, -int(starts.min()))
    back = max(0, int(starts.max()) + window - num_samples)
    padded = nn.functional.pad(waveform, (front, back))
    # One slice copy per clip: an index gather of the same samples costs 7 times as much.
    return torch.stack([padded[..., start:start + window] for start in (starts + front).tolist()], dim=-2)


def fit_frames(logmel: torch.Tensor, mel_frames: int, fill: float = SILENCE_DB) -> torch.Tensor:
    """Crop or pad the last (time) axis to exactly ``mel_frames``; padding is ``fill``."""
    frames = logmel.shape[-1]
    if frames >= mel_frames:
        return logmel[..., :mel_frames]
    return nn.functional.pad(logmel, (0, mel_frames - frames), value=fill)


def clip_logmel(waveform: torch.Tensor, logmel: LogMel, clip_starts, clip_duration: float,
                mel_frames: int, normalize: bool = True) -> torch.Tensor:
    """Time-aligned per-clip log-mel patches ``[..., T, 1, n_mels, mel_frames]``.

    ``waveform`` is ``[..., samples]`` at ``logmel.sample_rate``; ``clip_starts`` are the
    clip start times in seconds, ``clip_duration`` the clip length (frames / fps).
    """
    windows = clip_windows(waveform, logmel.sample_rate, clip_starts, clip_duration)
    patches = fit_frames(logmel(windows), mel_frames, fill=logmel.silence)
    if normalize:
        patches = logmel.normalize(patches)
    return patches.unsqueeze(-3)


def _band_mask(shape, axis_size: int, max_width: int, generator: torch.Generator) -> torch.Tensor:
    """Boolean ``[*shape, axis_size]``: one random band of width ``0..max_width``."""
    width = torch.randint(0, max_width + 1, shape, generator=generator)
    start = (torch.rand(shape, generator=generator) * (axis_size - width + 1)).long()
    position = torch.arange(axis_size)
    return (position >= start[..., None]) & (position < (start + width)[..., None])


def spec_augment(patches: torch.Tensor, generator: torch.Generator,
                 freq_fraction: float = 0.05, time_fraction: float = 0.05,
                 fill: float = 0.0) -> torch.Tensor:
    """Frequency and time masking of ``[..., n_mels, frames]`` log-mel patches.

    Each patch gets one frequency band and one time band, each of a uniformly drawn width
    of at most ``fraction`` of its axis (at least one bin when the fraction is positive),
    set to ``fill`` (0: the mean after ``normalize_logmel``, and the released code's mask
    value in the ``ln`` form). Returns a new tensor.
    """
    *lead, n_mels, frames = patches.shape
    masked = torch.zeros(patches.shape, dtype=torch.bool)
    if freq_fraction > 0:
        width = max(1, round(freq_fraction * n_mels))
        masked |= _band_mask(lead, n_mels, width, generator)[..., :, None]
    if time_fraction > 0:
        width = max(1, round(time_fraction * frames))
        masked |= _band_mask(lead, frames, width, generator)[..., None, :]
    return patches.masked_fill(masked.to(patches.device), fill)
