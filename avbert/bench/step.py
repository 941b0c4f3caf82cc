"""The pretraining step of the whole model: tiny scale on CPU, paper scale on a GPU.

One step is the pretrainer's forward pass (CNNs, masking, the three
Transformers, MEP and CPP), the backward pass and a torch AdamW step, on a
synthetic batch of the configured shape, optionally under bf16 autocast (as
the training engine's ``precision: bf16`` runs it). ``build_step`` makes the
closure, with the speed and memory switches of ``TrainConfig``: activation
checkpointing, ``channels_last`` memory format (``channels_last_3d`` for the
video CNN) and ``torch.compile`` of the CNNs and Transformers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import nn

from avbert.bench.timing import TimingPlan, compare
from avbert.config import Config


@dataclass(frozen=True)
class StepOptions:
    """Speed and memory switches of one variant of the step."""

    name: str = "baseline"
    checkpointing: bool = False
    channels_last: bool = False
    compile: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def synthetic_batch(cfg: Config, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random uint8 video [B,T,3,F,H,W] and normal-noise audio [B,T,1,M,N], as the loaders give."""
    from avbert.planning.activations import synthetic_inputs

    generator = torch.Generator(device=device).manual_seed(seed)
    video, audio = synthetic_inputs(cfg.data, cfg.data.batch_size, device, fill=True, generator=generator)
    return {"video": video, "audio": audio}


def build_module(cfg: Config, options: StepOptions, device: torch.device) -> nn.Module:
    """The pretrainer on ``device`` with the variant's switches applied."""
    from avbert.models import AVBert
    from avbert.objectives.pretraining import AVBertPretrainer

    torch.manual_seed(cfg.train.seed)
    module = AVBertPretrainer(AVBert(cfg.model), cfg.objective).to(device).train()
    model = module.model
    model.set_gradient_checkpointing(options.checkpointing)
    model.set_channels_last(options.channels_last)  # as train.channels_last: channels-last input, standard weights
    if options.compile:
        for part in (model.visual_cnn, model.audio_cnn, *model.transformers.values()):
            part.compile()
    return module


def autocast_for(cfg: Config, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.train.precision == "bf16")


def build_step(cfg: Config, options: StepOptions, device: torch.device) -> tuple[nn.Module, Callable[[], None]]:
    """The module and a closure running one training step on a fixed synthetic batch."""
    module = build_module(cfg, options, device)
    optimizer = torch.optim.AdamW(module.parameters(), lr=cfg.optim.lr, fused=device.type == "cuda")
    batch = synthetic_batch(cfg, device)

    def step() -> None:
        with autocast_for(cfg, device):
            loss = module(batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return module, step


def count_model_flops(cfg: Config) -> int:
    """FLOPs of one forward + backward pass of the model at the configured batch.

    Counted by ``FlopCounterMode`` (convolutions, matmuls, attention) on the
    meta device, so no memory or time is spent even at paper scale, at batch 1
    and multiplied by the batch (every counted op is per sample). The
    objective's heads (projections of about a dozen masked tokens per video)
    are left out: under 0.1% of the total. So is the second Transformer pass
    of ``objective.cpp_input: clean``: the Transformers are 0.2% of the
    paper model's forward FLOPs.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from avbert.models import AVBert
    from avbert.planning.activations import synthetic_inputs

    with torch.device("meta"):
        model = AVBert(cfg.model).train()
    video, audio = synthetic_inputs(cfg.data, 1, "meta")
    with FlopCounterMode(display=False) as counter:
        out = model(video, audio)
        parts = (out.visual_tokens, out.audio_tokens, out.visual_hidden, out.audio_hidden, out.multimodal_hidden)
        sum(part.float().sum() for part in parts if part is not None).backward()
    return int(counter.get_total_flops()) * cfg.data.batch_size


def clips_per_step(cfg: Config) -> int:
    return cfg.data.batch_size * cfg.data.clips


def run_tiny(cfg: Config, plan: TimingPlan) -> dict:
    """Tiny pretraining step on CPU: plain against activation checkpointing, side by side."""
    device = torch.device("cpu")
    _, plain = build_step(cfg, StepOptions("baseline"), device)
    _, recompute = build_step(cfg, StepOptions("checkpointing", checkpointing=True), device)
    comparison = compare("tiny pretraining step: checkpointing / plain", ("plain", plain),
                         ("checkpointing", recompute), plan)
    seconds = comparison.baseline.median
    return {
        "batch": cfg.data.batch_size, "clips": cfg.data.clips, "precision": cfg.train.precision,
        "frames": cfg.data.frames_per_clip, "crop": cfg.data.crop_size,
        "timing_plan": plan.to_dict(),
        "step_s": seconds,
        "clips_per_s": clips_per_step(cfg) / seconds,
        "flops_per_step": count_model_flops(cfg),
        "comparison": comparison.to_dict(),
    }
