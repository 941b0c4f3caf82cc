"""Held-out evaluation of the pretraining objectives.

``evaluate_pretraining`` runs a pretrainer over a fixed set of batches in eval
mode (no dropout, BatchNorm running statistics, no gradients) and returns the
accuracy of every term (``<term>/acc``): CPP over the videos (each paired with
its own other modality or, with probability ``cpp_prob``, another video's), MEP
over the masked positions (at least one per sequence, so at least one per video
and Transformer). Batches are weighted by their number of videos.

Masks, false pairs and negatives come from generators seeded with ``seed``
instead of the pretrainer's running draws, so the same model on the same
batches always gets the same figures, and evaluating leaves the draws (and
with them the resumed training trajectory) untouched. These are the figures a
learning claim should rest on: the last training batch is 32 items of
training data seen under dropout.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable

import torch
from torch import nn

from avbert.objectives.samplers import SeededDraws


@contextmanager
def fixed_draws(module: nn.Module, seed: int):
    """Every ``SeededDraws`` of ``module`` restarts at ``seed`` (counter 0); restored on exit."""
    draws = [m for m in module.modules() if isinstance(m, SeededDraws)]
    saved = [(m.seed.clone(), m.draws.clone()) for m in draws]
    for m in draws:
        m.seed.fill_(seed)
        m.draws.zero_()
    try:
        yield
    finally:
        for m, (old_seed, old_draws) in zip(draws, saved):
            m.seed.copy_(old_seed)
            m.draws.copy_(old_draws)


@torch.no_grad()
def evaluate_pretraining(pretrainer: nn.Module, batches: Iterable[dict], seed: int = 0) -> dict[str, float]:
    """``{"<term>/acc": accuracy, ..., "eval/videos": count}`` over ``batches`` (dicts
    with ``video``, ``audio`` and optionally ``valid``) in eval mode with fixed draws."""
    was_training = pretrainer.training
    pretrainer.eval()
    correct: dict[str, float] = {}
    videos = 0
    try:
        with fixed_draws(pretrainer, seed):
            for batch in batches:
                out = pretrainer(batch)
                n = batch["video"].shape[0]
                videos += n
                for key, value in out.items():
                    if key.endswith("/acc"):
                        correct[key] = correct.get(key, 0.0) + float(value) * n
    finally:
        pretrainer.train(was_training)
    if not videos:
        raise ValueError("evaluate_pretraining: no batches to evaluate")
    return {**{key: value / videos for key, value in correct.items()}, "eval/videos": videos}
