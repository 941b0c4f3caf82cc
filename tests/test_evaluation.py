"""Held-out evaluation of the pretraining objectives (avbert.objectives.evaluation)."""

from __future__ import annotations

import torch
from test_pretraining_objective import pretrainer, tiny_batch

from avbert.objectives.evaluation import evaluate_pretraining, fixed_draws
from avbert.objectives.samplers import SeededDraws


def heldout(batches: int = 3, size: int = 4) -> list[dict]:
    return [tiny_batch(batch=size, seed=100 + i) for i in range(batches)]


def test_the_same_model_on_the_same_batches_gets_the_same_figures():
    model = pretrainer("mid")
    first = evaluate_pretraining(model, heldout(), seed=7)
    for draws in (m for m in model.modules() if isinstance(m, SeededDraws)):
        draws.next_generator()  # training draws in between (a training step would also move BatchNorm)
    torch.manual_seed(123)  # and another global RNG state: eval mode has no dropout to draw
    assert evaluate_pretraining(model, heldout(), seed=7) == first
    assert set(first) == {"mep_visual/acc", "mep_audio/acc", "mep_multimodal/acc", "cpp/acc", "eval/videos"}
    assert first["eval/videos"] == 12


def test_evaluation_leaves_the_training_draws_and_mode_untouched():
    model = pretrainer("mid")
    model(tiny_batch())
    counters = [(m.seed.item(), m.draws.item()) for m in model.modules() if isinstance(m, SeededDraws)]
    reference = [m for m in model.modules() if isinstance(m, SeededDraws)]
    assert counters and all(draws > 0 for _, draws in counters)
    evaluate_pretraining(model, heldout(), seed=7)
    assert [(m.seed.item(), m.draws.item()) for m in reference] == counters
    assert model.training


def test_draws_are_fixed_by_the_seed_while_evaluating():
    model = pretrainer("mid")
    with fixed_draws(model, 5):
        first = [m.next_generator().initial_seed() for m in model.modules() if isinstance(m, SeededDraws)]
    model(tiny_batch())
    with fixed_draws(model, 5):
        again = [m.next_generator().initial_seed() for m in model.modules() if isinstance(m, SeededDraws)]
    with fixed_draws(model, 6):
        other = [m.next_generator().initial_seed() for m in model.modules() if isinstance(m, SeededDraws)]
    assert first == again and first != other


def test_batches_are_weighted_by_their_videos():
    model = pretrainer("mid")
    big, small = tiny_batch(batch=6, seed=1), tiny_batch(batch=2, seed=2)
    together = evaluate_pretraining(model, [big, small], seed=3)
    with fixed_draws(model, 3):  # the same draws, batch by batch
        model.eval()
        with torch.no_grad():
            parts = [float(model(batch)["cpp/acc"]) for batch in (big, small)]
    assert together["cpp/acc"] == (6 * parts[0] + 2 * parts[1]) / 8
