"""The DeepSpeed training loop shared by every training stage.

A stage hands over an ``nn.Module`` whose ``forward(batch)`` returns a dict
with ``loss`` and any other named scalars, and a resumable loader; the loop
does the rest:

- DeepSpeed with the configured ZeRO stage, precision, gradient accumulation
  and clipping; a torch AdamW whose learning rate is set every iteration from
  the warm-up + cosine schedule;
- resumption from the newest checkpoint of the run directory whose files all
  match the sizes and SHA-256 its completion marker recorded (newer ones that
  do not are named in the log with the reason); at another world size through
  DeepSpeed's universal checkpoint (ZeRO 1/2) or directly (ZeRO 0), the data
  order continuing where the epoch stopped (``reshard.regrid_loader_state``);
  refused for another ZeRO stage, and for ZeRO 3 at another world size;
- one collective per step (all_reduce MAX) that agrees on two things: whether
  any rank saw a non-finite loss term (the run stops with an error naming the
  step and the terms, without saving) and whether any rank was asked to
  checkpoint and exit (all ranks save, and the outcome is ``preempted``);
- checkpoints that all ranks agree were written before rank 0 marks them
  complete: a save that fails on any rank (a full disk) stops every rank with
  ``CheckpointSaveError`` naming the checkpoint and the cause, removes the
  partial folder, and leaves the previous complete checkpoint as the latest;
- metrics, status and progress; at the end a final checkpoint and an fp32
  export that loads without DeepSpeed.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from avbert.config import Config, dump_yaml, to_dict
from avbert.rundir import MetricsLine, RunState, file_sha256
from avbert.train import checkpoint as ckpt
from avbert.train import reshard
from avbert.train.distributed import (
    DistEnv,
    all_reduce_max,
    barrier,
    broadcast_from_main,
    rank_hosts,
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

logger = logging.getLogger(__name__)

ExportFn = Callable[[dict], dict]  # fp32 state_dict of the trained module -> contents of export/model.pt


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; the run stopped without saving."""


@dataclass
class TrainOutcome:
    """How a call to the training loop ended."""

    status: RunState  # COMPLETED or PREEMPTED
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


def initialize_engine(cfg: Config, module: nn.Module, env: DistEnv, load_universal: bool = False):
    """DeepSpeed engine around ``module`` with a torch AdamW; ``load_universal``: one that loads
    a universal checkpoint (a ZeRO checkpoint of another world size)."""
    import deepspeed

    module.to(env.device)
    optimizer = build_optimizer(module, cfg.optim)
    config = build_ds_config(cfg, env.world_size)
    if load_universal:
        config["checkpoint"] = {"load_universal": True}
    engine, *_ = deepspeed.initialize(model=module, optimizer=optimizer, config=config)
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
        self.resume_from = self._find_resume_point()
        self.resume_mode = (reshard.resume_mode(self.resume_from, env.world_size, cfg.train.zero_stage)
                            if self.resume_from else reshard.SAME)
        self.engine = initialize_engine(cfg, module, env, load_universal=self.resume_mode == reshard.UNIVERSAL)
        self.hosts = rank_hosts()  # in status.json: where each rank ran
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

    def _find_resume_point(self) -> Optional[ckpt.CheckpointInfo]:
        """The checkpoint to resume, as rank 0 verified it; the ones passed over are logged."""
        point = broadcast_from_main(self._main_only(ckpt.resume_point, self.run_dir))
        if isinstance(point, ckpt.CheckpointError):
            raise type(point)(str(point))
        if self.env.is_main:
            for line in point.report():
                logger.warning(line)
        return point.info

    def _main_only(self, function, *args):
        """``function(*args)`` on rank 0 (None elsewhere); a ``CheckpointError`` is returned, not raised,
        so that it reaches every rank through the broadcast that follows and every rank raises it."""
        if not self.env.is_main:
            return None
        try:
            return function(*args)
        except ckpt.CheckpointError as err:
            return err

    def _resume(self) -> int:
        """Load ``self.resume_from``, if any; return the step to continue from."""
        info = self.resume_from
        if info is None:
            return 0
        if self.resume_mode == reshard.UNIVERSAL:
            tag = broadcast_from_main(self._main_only(lambda: reshard.universal_checkpoint(info).name))
            if isinstance(tag, ckpt.CheckpointError):
                raise type(tag)(str(tag))
        else:
            tag = ckpt.DS_TAG
        loaded, _ = self.engine.load_checkpoint(str(info.path), tag=tag, load_optimizer_states=True,
                                                load_lr_scheduler_states=False)
        if loaded is None:
            raise FileNotFoundError(f"DeepSpeed found no loadable state in {info.path / tag}")
        if self.resume_mode == reshard.UNIVERSAL:
            reshard.load_buffers(self.engine.module, info.path / tag)
        marker = ckpt.read_marker(info.path, 0 if self.resume_mode != reshard.SAME else self.env.rank)
        if self.resume_mode == reshard.SAME:
            self.loader.load_state_dict(marker["loader"])
            ckpt.load_rank_rng(info.path, self.env.rank)
        else:
            self._resume_regridded(info)
        self.elapsed_before = float(marker.get("elapsed_s", 0.0))
        self.metrics.truncate_after(info.step)
        return info.step

    def _resume_regridded(self, info: ckpt.CheckpointInfo) -> None:
        """Data position and randomness of this rank when the checkpoint has another world size."""
        batch_size = getattr(self.loader, "batch_size", self.cfg.data.batch_size)
        state, repeated = reshard.regrid_loader_state(info.path, self.env.rank, self.env.world_size, batch_size)
        self.loader.load_state_dict(state)
        if self.env.rank < info.world_size:
            ckpt.load_rank_rng(info.path, self.env.rank)
        else:  # a rank the checkpoint has no random state for: seeded from (seed, step, rank)
            seed_rank(self.cfg.train.seed * 1_000_003 + info.step, self.env.rank)
        if self.env.is_main:
            again = (f"the last {repeated} samples consumed of it are seen again" if repeated
                     else "no sample of it is repeated or skipped")
            logger.warning(
                f"resuming {info.path} (written by world size {info.world_size}) with world size "
                f"{self.env.world_size} ({self.resume_mode} load): epoch {state['epoch']} continues at sample "
                f"{state['position'] * self.env.world_size * batch_size} of its order; {again}")

    # -- the loop ---------------------------------------------------------------------
    def run(self) -> TrainOutcome:
        progress = ProgressReporter(self.total, self.step, self.env.is_main)
        if self.step:
            progress.message(f"resumed from step {self.step} of {self.total} in {self.run_dir}")
        self._status(RunState.RUNNING)
        try:
            outcome = self._loop(progress)
        except BaseException as err:
            self._status(RunState.FAILED, error=f"{type(err).__name__}: {err}")
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
                return self._outcome(RunState.PREEMPTED)
        return self._outcome(RunState.COMPLETED, export_path=self._export())

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
        norm = self.last_grad_norm
        values = {**self.means.reduce(), "lr": self.lr, "grad_norm": float(norm) if norm is not None else None}
        local = {"clips": self.clips, "skipped": dict(self.loader.skipped),
                 "peak_mem_mb": peak_memory_mb(self.env.device)}
        values.update(combine_counts(gather_counts(local), now - self.interval_start))
        record = MetricsLine(self.step, values, self._elapsed(now)).to_json()
        self.clips, self.interval_start = 0, now
        self.last_record = record
        self.metrics.write(record)
        progress.log(self.step, record)
        self._status(RunState.RUNNING)

    def _elapsed(self, now: float) -> float:
        return self.elapsed_before + now - self.run_start

    def _status(self, state: str, **extra) -> None:
        if self.env.is_main:
            if self.manifest_sha256 is None and self.cfg.data.source == "manifest" and self.cfg.data.manifest:
                self.manifest_sha256 = file_sha256(self.cfg.data.manifest)
            write_status(self.run_dir, state, self.step, self.total, self.last_record.get("loss"),
                         device=self.env.device.type, world_size=self.env.world_size, hosts=self.hosts,
                         manifest_sha256=self.manifest_sha256, **extra)

    def _outcome(self, status: str, export_path: Optional[str] = None) -> TrainOutcome:
        return TrainOutcome(status, self.step, self.total, str(self.run_dir), export_path, dict(self.last_record))

    # -- checkpoints and export -------------------------------------------------------------
    def _save(self) -> None:
        """All ranks save; once they agree every rank's files are written, rank 0 writes the
        completion marker; then old checkpoints are pruned. A failure on any rank stops all."""
        path, rank = ckpt.step_dir(self.run_dir, self.step), self.env.rank
        error = None
        if self.env.is_main:
            try:
                ckpt.clear_step_dir(path)
                path.mkdir(parents=True)
            except Exception as err:  # noqa: BLE001 - every rank must learn of it, see _agree_saved
                error = err
        self._agree_saved(path, error)
        marker = {"step": self.step, "world_size": self.env.world_size, "zero_stage": self.cfg.train.zero_stage,
                  "rank": rank, "precision": self.cfg.train.precision, "loader": self.loader.state_dict(),
                  "batch_size": getattr(self.loader, "batch_size", None),
                  "elapsed_s": self._elapsed(time.time()), "saved_unix": time.time()}
        try:
            self.engine.save_checkpoint(str(path), tag=ckpt.DS_TAG, save_latest=False)
        except Exception as err:  # noqa: BLE001
            error = err
            # DeepSpeed's save ends with a barrier the other ranks are waiting in; writes are
            # the only thing that can fail after its earlier collectives.
            barrier()
        if error is None:
            try:
                if self.env.is_main:
                    dump_yaml(self.cfg, path / "config.yaml")
                ckpt.save_rank_files(path, rank, marker)
            except Exception as err:  # noqa: BLE001
                error = err
        self._agree_saved(path, error)
        if self.env.is_main:
            try:
                ckpt.write_completion_marker(path, marker)
            except Exception as err:  # noqa: BLE001
                error = err
        self._agree_saved(path, error)
        # The save's last collective holds no tensor of ours: gloo keeps the tensors of the last
        # all_reduce alive in its worker threads, and a process that exits without destroying
        # its process group can then abort while the interpreter shuts down.
        barrier()
        ckpt.fault_point("after_checkpoint", self.step, rank)
        if self.env.is_main:
            ckpt.prune(self.run_dir, self.cfg.train.keep_checkpoints)

    def _agree_saved(self, path: Path, error: Optional[BaseException]) -> None:
        """Collective: raise ``CheckpointSaveError`` on every rank if the save failed on any."""
        local = torch.tensor([float(error is not None), float(ckpt.is_no_space(error, path))])
        failed, no_space = all_reduce_max(local.to(self.env.device)).cpu().tolist()
        if not failed:
            return
        free = ckpt.free_bytes(path)
        barrier()  # every rank has measured the space left before the partial checkpoint goes
        if self.env.is_main:
            ckpt.remove_partial(path)  # frees the space a full disk needs for status.json
        latest = ckpt.latest_complete(self.run_dir)
        raise ckpt.CheckpointSaveError(ckpt.save_failure_message(path, error, bool(no_space), latest, free))

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
    turns non-finite, ``CheckpointMismatchError`` when the run directory's
    checkpoint comes from another world size or ZeRO stage,
    ``CheckpointDamagedError`` when its checkpoints all fail verification and
    ``CheckpointSaveError`` when a checkpoint cannot be written; ``status.json``
    then says ``failed``.
    """
    try:
        trainer = Trainer(cfg, module, loader, env, make_export, should_checkpoint_and_exit)
    except Exception as err:
        if env.is_main and Path(cfg.train.run_dir).is_dir():
            latest = ckpt.latest_complete(cfg.train.run_dir)
            write_status(cfg.train.run_dir, RunState.FAILED, latest.step if latest else 0, cfg.train.steps,
                         error=f"{type(err).__name__}: {err}")
        raise
    return trainer.run()
