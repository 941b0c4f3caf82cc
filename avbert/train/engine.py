"""The DeepSpeed training loop shared by every training stage.

A stage hands over an ``nn.Module`` whose ``forward(batch)`` returns a dict
with ``loss`` and any other named scalars, and a resumable loader; the loop
does the rest:

- DeepSpeed with the configured ZeRO stage, precision, gradient accumulation
  and clipping; a torch AdamW whose learning rate is set every iteration from
  the warm-up + cosine schedule;
- resumption from the newest complete checkpoint of the run directory
  (refused when the world size or ZeRO stage differ);
- one collective per step (all_reduce MAX) that agrees on two things: whether
  any rank saw a non-finite loss term (the run stops with an error naming the
  step and the terms, without saving) and whether any rank was asked to
  checkpoint and exit (all ranks save, and the outcome is ``preempted``);
- metrics, status and progress; at the end a final checkpoint and an fp32
  export that loads without DeepSpeed.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from avbert.config import Config, dump_yaml, to_dict
from avbert.rundir import file_sha256
from avbert.train import checkpoint as ckpt
from avbert.train.distributed import (
    DistEnv,
    all_reduce_max,
    barrier,
    broadcast_from_main,
)
from avbert.train.ds_config import build_ds_config, build_optimizer
from avbert.train.metrics import (
    IntervalMeans,
    MetricsFile,
    combine_counts,
    gather_counts,
    peak_memory_mb,
    write_status,
)
from avbert.train.progress import ProgressReporter
from avbert.train.schedule import lr_at, set_lr

ExportFn = Callable[[dict], dict]  # fp32 state_dict of the trained module -> contents of export/model.pt


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; the run stopped without saving."""


@dataclass
class TrainOutcome:
    """How a call to the training loop ended."""

    status: str  # "completed" or "preempted"
    step: int
    total_steps: int
    run_dir: str
    export_path: Optional[str] = None
    metrics: dict = field(default_factory=dict)


def seed_rank(seed: int, rank: int) -> None:
    """Distinct, reproducible randomness (dropout, augmentation) per rank."""
    value = seed * 100_003 + rank + 1
    torch.manual_seed(value)
    np.random.seed(value % 2**32)
    random.seed(value)


def move_batch(batch: dict, device: torch.device) -> dict:
    """The batch's tensors on the training device."""
    return {key: value.to(device, non_blocking=True) if torch.is_tensor(value) else value
            for key, value in batch.items()}


def count_clips(batch: dict) -> int:
    """Clips in a batch: valid clips when known, else videos x clips, else items."""
    if "valid" in batch:
        return int(batch["valid"].sum())
    if "video" in batch:
        return int(batch["video"].shape[0] * batch["video"].shape[1])
    return int(next(v for v in batch.values() if torch.is_tensor(v)).shape[0])


def grad_norm(module: nn.Module) -> torch.Tensor:
    """L2 norm of all gradients (DeepSpeed reports none at ZeRO stage 0)."""
    norms = [p.grad.detach().float().norm() for p in module.parameters() if p.grad is not None]
    return torch.stack(norms).norm() if norms else torch.zeros(())


def initialize_engine(cfg: Config, module: nn.Module, env: DistEnv):
    """DeepSpeed engine around ``module`` with a torch AdamW."""
    import deepspeed

    module.to(env.device)
    optimizer = build_optimizer(module, cfg.optim)
    engine, *_ = deepspeed.initialize(model=module, optimizer=optimizer,
                                      config=build_ds_config(cfg, env.world_size))
    if cfg.train.compile:
        engine.compile()  # torch.compile of the module's forward, inside DeepSpeed's hooks
    return engine


class Trainer:
    """One run of the loop over a run directory; ``run()`` returns the outcome."""

    def __init__(self, cfg: Config, module: nn.Module, loader, env: DistEnv,
                 make_export: Optional[ExportFn] = None,
                 should_checkpoint_and_exit: Optional[Callable[[], bool]] = None):
        self.cfg, self.loader, self.env = cfg, loader, env
        self.run_dir = Path(cfg.train.run_dir)
        self.total = cfg.train.steps
        self.make_export = make_export
        self.should_exit = should_checkpoint_and_exit or (lambda: False)
        self.manual_grad_norm = cfg.train.zero_stage == 0  # DeepSpeed reports no norm without ZeRO
        self._prepare_run_dir()
        self.engine = initialize_engine(cfg, module, env)
        seed_rank(cfg.train.seed, env.rank)
        self.metrics = MetricsFile(self.run_dir, env.is_main)
        self.means = IntervalMeans()
        self.elapsed_before = 0.0  # training time of earlier attempts, from the checkpoint
        self.step = self._resume()
        self.metrics.open_sinks(cfg.train.loggers, to_dict(cfg), resume_step=self.step or None)
        self.last_record: dict = {}
        self.last_grad_norm: Optional[torch.Tensor] = None
        self.lr = lr_at(self.step, self.total, cfg.optim)
        self.clips = 0
        self.interval_start = self.run_start = time.time()
        self.manifest_sha256: Optional[str] = None  # of the data manifest this run reads (provenance)

    # -- set-up ---------------------------------------------------------------------
    def _prepare_run_dir(self) -> None:
        if self.env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            dump_yaml(self.cfg, self.run_dir / "config.yaml")
        barrier()

    def _resume(self) -> int:
        """Load the newest complete checkpoint, if any; return the step to continue from."""
        info = broadcast_from_main(ckpt.latest_complete(self.run_dir))
        if info is None:
            return 0
        ckpt.check_compatible(info, self.env.world_size, self.cfg.train.zero_stage)
        loaded, _ = self.engine.load_checkpoint(str(info.path), tag=ckpt.DS_TAG, load_optimizer_states=True,
                                                load_lr_scheduler_states=False)
        if loaded is None:
            raise FileNotFoundError(f"DeepSpeed found no loadable state in {info.path / ckpt.DS_TAG}")
        marker = ckpt.read_marker(info.path, self.env.rank)
        self.loader.load_state_dict(marker["loader"])
        ckpt.load_rank_rng(info.path, self.env.rank)
        self.elapsed_before = float(marker.get("elapsed_s", 0.0))
        self.metrics.truncate_after(info.step)
        return info.step

    # -- the loop ---------------------------------------------------------------------
    def run(self) -> TrainOutcome:
        progress = ProgressReporter(self.total, self.step, self.env.is_main)
        if self.step:
            progress.message(f"resumed from step {self.step} of {self.total} in {self.run_dir}")
        self._status("running")
        try:
            outcome = self._loop(progress)
        except BaseException as err:
            self._status("failed", error=f"{type(err).__name__}: {err}")
            raise
        finally:
            progress.close()
            self.metrics.close()
        self._status(outcome.status, export=outcome.export_path)
        return outcome

    def _loop(self, progress: ProgressReporter) -> TrainOutcome:
        while self.step < self.total:
            preempt = self._train_step()
            self.step += 1
            progress.advance(self.step)
            if self._is_log_step(self.step) or preempt:
                self._log(progress)
            if self.step % self.cfg.train.checkpoint_every == 0 or self.step == self.total or preempt:
                self._save()
            if preempt and self.step < self.total:
                progress.message(f"checkpointed at step {self.step} and stopped on request")
                return self._outcome("preempted")
        return self._outcome("completed", export_path=self._export())

    def _is_log_step(self, step: int) -> bool:
        return step % self.cfg.train.log_every == 0 or step == self.total

    def _train_step(self) -> bool:
        """One optimizer step over ``grad_accum`` micro-batches; True if the job must stop."""
        self.lr = lr_at(self.step, self.total, self.cfg.optim)
        set_lr(self.engine.optimizer, self.lr)
        accum = self.cfg.train.grad_accum
        bad = None
        for micro in range(accum):
            out = self._forward_backward()
            flags = torch.stack([~torch.isfinite(out[key].detach()).all() for key in sorted(out)])
            bad = flags if bad is None else bad | flags
            if micro == accum - 1:
                preempt = self._agree(sorted(out), bad)
                if self.manual_grad_norm and self._is_log_step(self.step + 1):
                    self.last_grad_norm = grad_norm(self.engine.module)
            self.engine.step()
        if not self.manual_grad_norm:
            self.last_grad_norm = self.engine.get_global_grad_norm()
        return preempt

    def _forward_backward(self) -> dict:
        batch = next(self.loader)
        self.clips += count_clips(batch)
        out = self.engine(move_batch(batch, self.env.device))
        self.means.add(out)
        self.engine.backward(out["loss"])
        return out

    def _agree(self, keys: list[str], bad: torch.Tensor) -> bool:
        """The step's one collective: non-finite terms and the exit request, max over ranks."""
        local = torch.cat([torch.tensor([float(bool(self.should_exit()))]), bad.float().cpu()])
        agreed = all_reduce_max(local.to(self.env.device)).cpu()
        failed = [key for key, flag in zip(keys, agreed[1:].tolist()) if flag > 0]
        if failed:
            latest = ckpt.latest_complete(self.run_dir)
            kept = f"last complete checkpoint: step {latest.step}" if latest else "no checkpoint was saved"
            raise NonFiniteLossError(f"non-finite loss at step {self.step + 1}: {', '.join(failed)} ({kept})")
        return bool(agreed[0] > 0)

    # -- reporting --------------------------------------------------------------------
    def _log(self, progress: ProgressReporter) -> None:
        now = time.time()
        record = {"step": self.step, **self.means.reduce(), "lr": self.lr}
        norm = self.last_grad_norm
        record["grad_norm"] = float(norm) if norm is not None else None
        local = {"clips": self.clips, "skipped": dict(self.loader.skipped),
                 "peak_mem_mb": peak_memory_mb(self.env.device)}
        record.update(combine_counts(gather_counts(local), now - self.interval_start))
        record["time/elapsed_s"] = self._elapsed(now)
        self.clips, self.interval_start = 0, now
        self.last_record = record
        self.metrics.write(record)
        progress.log(self.step, record)
        self._status("running")

    def _elapsed(self, now: float) -> float:
        return self.elapsed_before + now - self.run_start

    def _status(self, state: str, **extra) -> None:
        if self.env.is_main:
            if self.manifest_sha256 is None and self.cfg.data.source == "manifest" and self.cfg.data.manifest:
                self.manifest_sha256 = file_sha256(self.cfg.data.manifest)
            write_status(self.run_dir, state, self.step, self.total, self.last_record.get("loss"),
                         device=self.env.device.type, world_size=self.env.world_size,
                         manifest_sha256=self.manifest_sha256, **extra)

    def _outcome(self, status: str, export_path: Optional[str] = None) -> TrainOutcome:
        return TrainOutcome(status, self.step, self.total, str(self.run_dir), export_path, dict(self.last_record))

    # -- checkpoints and export -------------------------------------------------------------
    def _save(self) -> None:
        """All ranks save together; each rank's marker comes last; then old ones are pruned."""
        path, rank = ckpt.step_dir(self.run_dir, self.step), self.env.rank
        if self.env.is_main:
            ckpt.clear_step_dir(path)
            path.mkdir(parents=True)
        barrier()
        self.engine.save_checkpoint(str(path), tag=ckpt.DS_TAG, save_latest=False)
        if self.env.is_main:
            dump_yaml(self.cfg, path / "config.yaml")
        marker = {"step": self.step, "world_size": self.env.world_size, "zero_stage": self.cfg.train.zero_stage,
                  "rank": rank, "precision": self.cfg.train.precision, "loader": self.loader.state_dict(),
                  "elapsed_s": self._elapsed(time.time()), "saved_unix": time.time()}
        ckpt.save_rank_files(path, rank, marker)
        barrier()
        ckpt.fault_point("after_checkpoint", self.step, rank)
        if self.env.is_main:
            ckpt.prune(self.run_dir, self.cfg.train.keep_checkpoints)

    def _export(self) -> Optional[str]:
        """fp32 weights of the final checkpoint to ``export/model.pt`` (main rank)."""
        if self.make_export is None:
            return None
        path = self.run_dir / "export" / "model.pt"
        if self.env.is_main:
            info = ckpt.latest_complete(self.run_dir)
            payload = self.make_export(ckpt.fp32_state_dict(self.engine, info))
            payload["step"] = info.step
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(payload, path.with_name("model.pt.tmp"))
            path.with_name("model.pt.tmp").replace(path)
        barrier()
        return str(path)


def run_training(cfg: Config, module: nn.Module, loader, env: DistEnv, make_export: Optional[ExportFn] = None,
                 should_checkpoint_and_exit: Optional[Callable[[], bool]] = None) -> TrainOutcome:
    """Train ``module`` on ``loader`` as ``cfg.train`` says, resuming the run directory if it has a checkpoint.

    Every rank calls this. Raises ``NonFiniteLossError`` when a loss term
    turns non-finite and ``CheckpointMismatchError`` when the run directory's
    checkpoint comes from another world size or ZeRO stage; ``status.json``
    then says ``failed``.
    """
    try:
        trainer = Trainer(cfg, module, loader, env, make_export, should_checkpoint_and_exit)
    except Exception as err:
        if env.is_main and Path(cfg.train.run_dir).is_dir():
            latest = ckpt.latest_complete(cfg.train.run_dir)
            write_status(cfg.train.run_dir, "failed", latest.step if latest else 0, cfg.train.steps,
                         error=f"{type(err).__name__}: {err}")
        raise
    return trainer.run()
