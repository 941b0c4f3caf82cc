"""The audio front end of the presets: ``paper`` computes the released log-mel.

Released (github.com/sangho-vision/avbert): ``code/configs/kinetics-sounds/config.yaml``
DATA (TARGET_AUDIO_RATE 44100, AUDIO_FREQUENCY 80, AUDIO_TIME 128, NUM_FRAMES 32,
SAMPLING_RATE 2, TARGET_FPS 30), ``code/data/kinetics_sounds.py`` (the audio of a clip is
``int(44100 * 32 * 2 / 30)`` samples) and ``code/data/transform.py``
(``get_log_mel_spectrogram``: ``n_fft = 2 * (floor(w / 128) + 1)``, torchaudio's
``MelSpectrogram(44100, n_fft=n_fft, n_mels=80)`` with its defaults, then
``log(1e-6 + mel)``).
"""

from __future__ import annotations

import math

import torch
import torchaudio

from avbert.config import DataConfig
from avbert.data.audio import SILENCE_LN, LogMel, clip_logmel, fit_frames
from avbert.data.build import synthetic_spec
from avbert.data.clips import ClipSpec

RELEASED_RATE, RELEASED_MELS, RELEASED_FRAMES = 44100, 80, 128
RELEASED_CLIP_SAMPLES = int(44100 * 32 * 2 / 30)  # 94080: the audio of one 32 x 2-frame clip at 30 fps
RELEASED_N_FFT = 2 * (math.floor(RELEASED_CLIP_SAMPLES / RELEASED_FRAMES) + 1)  # 1472


def released_log_mel(waveform: torch.Tensor) -> torch.Tensor:
    """The released formula, in its own terms (torchaudio defaults for everything else)."""
    mel = torchaudio.transforms.MelSpectrogram(RELEASED_RATE, n_fft=RELEASED_N_FFT, n_mels=RELEASED_MELS)(waveform)
    return torch.log(1e-6 + mel)


def test_paper_preset_is_the_released_front_end():
    spec = ClipSpec.from_config(DataConfig.from_preset("paper"))
    assert (spec.sample_rate, spec.n_mels, spec.mel_frames) == (RELEASED_RATE, RELEASED_MELS, RELEASED_FRAMES)
    assert (spec.n_fft, spec.hop_length) == (RELEASED_N_FFT, RELEASED_N_FFT // 2) == (1472, 736)
    assert spec.log_mel == "ln"
    assert spec.logmel().num_frames(RELEASED_CLIP_SAMPLES) == RELEASED_FRAMES  # the clip is exactly 128 frames
    assert synthetic_spec(DataConfig.from_preset("paper")).log_mel == "ln"


def test_paper_log_mel_equals_the_released_one():
    g = torch.Generator().manual_seed(0)
    wave = 0.3 * torch.randn(1, RELEASED_CLIP_SAMPLES, generator=g)
    wave[:, 20000:30000] = 0.0  # a silent stretch exercises the offset
    spec = ClipSpec.from_config(DataConfig.from_preset("paper"))
    window_seconds = spec.frames_per_clip * spec.frame_stride / 30.0  # the clip's frames at 30 fps
    ours = clip_logmel(wave, spec.logmel(), [0.0], window_seconds, spec.mel_frames)[0, 0, 0]
    reference = released_log_mel(wave)[0]
    assert ours.shape == reference.shape == (RELEASED_MELS, RELEASED_FRAMES)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-4)
    assert reference.min() < math.log(1e-5)  # the silent stretch reached the floor


def test_ln_form_pads_with_silence_and_is_not_rescaled():
    logmel = LogMel(16000, n_fft=400, hop_length=160, n_mels=40, scale="ln")
    silent = logmel(torch.zeros(1600))
    torch.testing.assert_close(silent, torch.full_like(silent, SILENCE_LN))
    assert logmel.silence == SILENCE_LN == math.log(1e-6)
    x = torch.randn(2, 3)
    assert logmel.normalize(x) is x
    padded = fit_frames(torch.zeros(40, 5), 8, fill=logmel.silence)
    assert (padded[:, 5:] == SILENCE_LN).all()


def test_tiny_preset_keeps_its_front_end():
    spec = ClipSpec.from_config(DataConfig.from_preset("tiny"))
    assert (spec.sample_rate, spec.n_mels, spec.mel_frames, spec.hop_length, spec.n_fft, spec.log_mel) == \
        (16000, 40, 32, 256, 512, "db")
