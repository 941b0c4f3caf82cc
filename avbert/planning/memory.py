"""Per-GPU peak memory of a pretraining config, and the largest batch that fits.

``plan(cfg, gpu_memory_bytes, world_size)`` adds up, per rank:

* **model states**, by ZeRO stage, world size N and precision, for P
  parameters (the model plus the pretraining heads, counted on the meta
  device), following what DeepSpeed 0.19 allocates for the DeepSpeed config
  the training engine builds (``avbert.train.ds_config``) with a torch AdamW.
  The engine's ``bf16`` is DeepSpeed's ``torch_autocast``: weights, gradients
  and optimizer state stay fp32 and only the compute is bf16, so precision
  changes the activations, not the model states:

  ============  =======  ===============  =========================================
  ZeRO stage    weights  gradients        optimizer (Adam m, v; ZeRO: + fp32 master)
  ============  =======  ===============  =========================================
  0             4P       4P               8P (the optimizer steps the weights)
  1             4P       4P               12P/N (ZeRO clones an fp32 partition)
  2             4P       4P/N             12P/N
  3             4P/N     4P/N             12P/N
  ============  =======  ===============  =========================================

  (with DeepSpeed's own ``bf16`` mode instead, weights and gradients are 2P
  and stage 0 keeps 12P of fp32 master and moments);
* **ZeRO buffers**: stages 1 and 2 with contiguous gradients allocate, during
  the backward pass, one gradient-reduction bucket of ``reduce_bucket_size``
  elements (the suite sets 5e7, DeepSpeed's default is 5e8) of the weights'
  dtype per communication dtype, whatever the model size: under
  ``torch_autocast`` Linear and Conv gradients travel in bf16 and the others in
  fp32, so two buckets, 400 MB in all at 5e7 (measured in
  ``avbert/bench/zero_state.py``); ``overlap_comm`` doubles
  them. Stage 3 allocates one bucket per communication dtype in that dtype,
  plus its parameter prefetch bucket;
* **inputs**: the batch tensors (video [B,T,3,F,H,W], audio [B,T,1,M,N]);
* **activations**: what autograd saves, counted exactly on fake tensors for
  this architecture, clip count, resolution and precision
  (``activations.py``), and the MEP heads' InfoNCE tensors, estimated
  analytically.

The predicted peak of allocated bytes (what ``torch.cuda.max_memory_allocated``
reports) is their sum, except that without activation checkpointing the
gradients are left out: the peak is then at the end of the forward pass, and
the gradients of the previous step were freed by the optimizer step
(DeepSpeed sets them to None) while this step's appear only as the backward
pass frees activations. With checkpointing the peak comes during the
backward pass, when the recomputed early CNN stages meet the gradients of
everything after them, so the gradients are counted. A config fits when
that peak plus a headroom for the CUDA context and allocator fragmentation
(1 GiB + 5% of the card, an assumption not yet checked on a GPU) is within
the GPU's memory.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace

import torch

from avbert.config import Config
from avbert.planning.activations import ActivationModel, activation_model

GiB = 2**30
CONTEXT_HEADROOM = 1 * GiB  # CUDA context and libraries, outside the allocator
FRAGMENTATION_HEADROOM = 0.05  # allocator fragmentation, fraction of the card
DEEPSPEED_BUCKET_DEFAULT = int(5e8)  # zero_optimization.reduce_bucket_size
DEEPSPEED_PREFETCH_DEFAULT = int(5e7)  # zero_optimization.stage3_prefetch_bucket_size
MAX_SEARCH_BATCH = 1 << 16

_PARAM_CACHE: dict[str, int] = {}


@dataclass(frozen=True)
class ModelStates:
    """Bytes per rank of weights, gradients, optimizer state and ZeRO buffers."""

    weights: int
    gradients: int
    optimizer: int
    buffers: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.buffers


@dataclass(frozen=True)
class MemoryPlan:
    """Predicted per-GPU peak of one config, and whether it fits."""

    name: str
    world_size: int
    zero_stage: int
    precision: str
    batch_size: int
    clips: int
    activation_checkpointing: bool
    parameters: int
    weights: int
    gradients: int
    optimizer: int
    zero_buffers: int
    inputs: int
    activations: int
    peak: int
    gpu_memory: int
    usable: int
    fits: bool
    max_batch: int

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """One line for launcher dry runs."""
        verdict = "fits" if self.fits else "does NOT fit"
        return (f"{format_bytes(self.peak)} per GPU at batch {self.batch_size} "
                f"({verdict} in {format_bytes(self.gpu_memory)}; largest batch {self.max_batch})")


def format_bytes(n: float) -> str:
    for unit, size in (("GiB", GiB), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def parse_memory(text: str) -> int:
    """'80GB', '80GiB', '141G', '512MB' or a byte count -> bytes. GPU sizes are
    binary as the cards are named (an "80GB" H100 has about 80 GiB)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise ValueError(f"cannot read a memory size from {text!r}; use e.g. 80GB, 141GiB or 512MB")
    scale = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[match.group(2).upper()]
    return int(float(match.group(1)) * scale)


def count_trainable_parameters(cfg: Config) -> int:
    """Parameters of the model and the pretraining heads, built on the meta device."""
    key = repr((cfg.model, cfg.objective))
    if key not in _PARAM_CACHE:
        from avbert.models import AVBert
        from avbert.objectives.pretraining import AVBertPretrainer

        with torch.device("meta"):
            module = AVBertPretrainer(AVBert(cfg.model), cfg.objective)
        unique = {id(p): p.numel() for p in module.parameters() if p.requires_grad}
        _PARAM_CACHE[key] = sum(unique.values())
    return _PARAM_CACHE[key]


def zero_buffer_bytes(ds_config: dict) -> int:
    """Communication buckets DeepSpeed allocates outside the model states."""
    zero = ds_config.get("zero_optimization", {})
    stage = int(zero.get("stage", 0))
    bucket = int(zero.get("reduce_bucket_size", DEEPSPEED_BUCKET_DEFAULT))
    weight_bytes = 2 if _enabled(ds_config, "bf16") else 4
    comm_bytes = [2, 4] if _enabled(ds_config, "torch_autocast") else [weight_bytes]
    if stage in (1, 2) and zero.get("contiguous_gradients", True):
        return bucket * weight_bytes * len(comm_bytes) * (2 if zero.get("overlap_comm", False) else 1)
    if stage == 3:
        prefetch = int(zero.get("stage3_prefetch_bucket_size", DEEPSPEED_PREFETCH_DEFAULT))
        return bucket * sum(comm_bytes) + prefetch * weight_bytes
    return 0


def _enabled(ds_config: dict, section: str) -> bool:
    return bool(ds_config.get(section, {}).get("enabled", False))


def model_state_bytes(parameters: int, world_size: int, ds_config: dict) -> ModelStates:
    """Weights, gradients, optimizer state and buffers per rank (see the module table)."""
    if world_size < 1:
        raise ValueError(f"world size must be >= 1, got {world_size}")
    stage = int(ds_config.get("zero_optimization", {}).get("stage", 0))
    low = _enabled(ds_config, "bf16")
    weight_bytes, n = (2 if low else 4), world_size
    weights = parameters * weight_bytes // (n if stage == 3 else 1)
    gradients = parameters * weight_bytes // (n if stage >= 2 else 1)
    if stage == 0:
        optimizer = parameters * (12 if low else 8)
    else:
        optimizer = parameters * 12 // n
    return ModelStates(weights, gradients, optimizer, zero_buffer_bytes(ds_config))


def engine_ds_config(cfg: Config, world_size: int) -> dict:
    """The DeepSpeed config the training engine would build for ``cfg``."""
    from avbert.train.ds_config import build_ds_config

    return build_ds_config(cfg, world_size)


def usable_memory(gpu_memory_bytes: int) -> int:
    return int(gpu_memory_bytes * (1 - FRAGMENTATION_HEADROOM)) - CONTEXT_HEADROOM


def largest_batch(fixed: int, per_sample: int, usable: int) -> int:
    """Largest B with fixed + B * per_sample <= usable (0 if not even one)."""
    if per_sample <= 0:
        return MAX_SEARCH_BATCH if fixed <= usable else 0
    return max(0, min(MAX_SEARCH_BATCH, (usable - fixed) // per_sample))


def _per_sample(act: ActivationModel, checkpointing: bool) -> int:
    saved = act.per_sample_checkpointed if checkpointing else act.per_sample
    return saved + act.input_per_sample + act.objective_per_sample


def plan(cfg: Config, gpu_memory_bytes: int, world_size: int = 1) -> MemoryPlan:
    """Predicted per-GPU peak of ``cfg`` on ``world_size`` ranks of ``gpu_memory_bytes`` each."""
    train, data = cfg.train, cfg.data
    parameters = count_trainable_parameters(cfg)
    states = model_state_bytes(parameters, world_size, engine_ds_config(cfg, world_size))
    act = activation_model(cfg.model, data, train.precision, cfg.objective)
    ckpt = bool(train.activation_checkpointing)
    held = states.total if ckpt else states.total - states.gradients  # model states at the peak
    fixed = held + (act.fixed_checkpointed if ckpt else act.fixed)
    per_sample = _per_sample(act, ckpt)
    batch = data.batch_size
    inputs = batch * act.input_per_sample
    activations = act.activations(batch, ckpt) + batch * act.objective_per_sample
    peak = held + inputs + activations
    usable = usable_memory(gpu_memory_bytes)
    return MemoryPlan(
        name=cfg.name, world_size=world_size, zero_stage=int(train.zero_stage), precision=train.precision,
        batch_size=batch, clips=data.clips, activation_checkpointing=ckpt, parameters=parameters,
        weights=states.weights, gradients=states.gradients, optimizer=states.optimizer,
        zero_buffers=states.buffers, inputs=inputs, activations=activations, peak=peak,
        gpu_memory=gpu_memory_bytes, usable=usable, fits=peak <= usable,
        max_batch=largest_batch(fixed, per_sample, usable),
    )


def with_batch(cfg: Config, batch: int) -> Config:
    """``cfg`` with another per-rank batch size."""
    return replace(cfg, data=replace(cfg.data, batch_size=batch))
