"""Training: the DeepSpeed loop, checkpoints, metrics, and the stages built on them.

``run_stage(cfg)`` is what a launcher calls on every rank: it trains (or
resumes) ``cfg.train.run_dir`` for ``cfg.stage`` and returns a
``TrainOutcome`` (``completed`` or ``preempted``). Stage modules are imported
when needed so that importing ``avbert.train`` stays cheap.
"""

from __future__ import annotations

from typing import Callable, Optional


def run_stage(cfg, should_checkpoint_and_exit: Optional[Callable[[], bool]] = None):
    """Run ``cfg.stage`` on this rank and return its ``TrainOutcome``.

    ``should_checkpoint_and_exit`` is polled once per step (the ranks agree on
    it); when it returns True all ranks save a complete checkpoint and the
    outcome is ``preempted``.
    """
    if cfg.stage == "pretrain":
        from avbert.train.pretrain import run_pretrain

        return run_pretrain(cfg, should_checkpoint_and_exit)
    if cfg.stage in ("finetune", "linear"):
        from avbert.train.downstream import run_downstream

        return run_downstream(cfg, should_checkpoint_and_exit)
    raise ValueError(f"stage {cfg.stage!r} has no training runner")


__all__ = ["run_stage"]
