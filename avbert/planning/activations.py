"""Activation memory of an AVBERT training step, counted without running it.

Method: the model is built under ``FakeTensorMode`` on a fake CUDA device
(shapes and dtypes, no data, no GPU needed) and run forward on inputs of the
configured clips, frames, crop size and log-mel patch, in the training
precision: fp32, or bf16 as the training engine runs it (DeepSpeed's
``torch_autocast``: fp32 weights, CUDA autocast to bf16 around the forward
pass, so convolutions and matmuls save bf16 tensors and LayerNorm fp32 ones,
exactly as on the GPU). A ``saved_tensors_hooks`` pack hook sees every tensor
autograd keeps for the backward pass; the bytes of their distinct storages
(parameters and the input batch excluded) are the activations held at the
end of the forward pass, which is where a step's memory peaks without
checkpointing. Nothing is estimated per layer type, so the count follows the
architecture as written, at full resolution, in seconds even at paper scale.

With activation checkpointing (``model.set_gradient_checkpointing``: every
CNN stage and every Transformer layer application is recomputed), a unit
keeps only its inputs, and the backward pass recomputes one unit at a time:
activations = saved tensors outside the units + the units' inputs + the
largest single unit's saved tensors. The forward hooks that tag each saved
tensor with the unit invocation that produced it give all three terms from
the same run.

With ``objective.cpp_input: clean`` the pretrainer runs the Transformers a
second time, on the unmasked tokens, for CPP; the count then runs that pass too.

Saved bytes grow linearly in the batch (the per-clip CNNs and per-token
Transformers scale with it; a few tensors such as the orthogonal ``S`` of
lowrank sharing do not), so two runs, at batch 1 and 2, give
``bytes(B) = fixed + B * per_sample``.

Not counted by the fake run: the pretraining objective's heads (they draw
data-dependent indices, which fake tensors cannot), estimated analytically in
``objective_bytes_per_sample`` (under 0.1% at paper scale), and transient
buffers of single kernels (convolution workspaces, the gradient of the tensor
being differentiated).
"""

from __future__ import annotations

from dataclasses import dataclass
import contextlib
from typing import Iterator

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

from avbert.config import DataConfig, ModelConfig, ObjectiveConfig

# Tensors kept per MEP query by the projected InfoNCE scorer: the candidates,
# their projection and its normalised fp32 copy, each [(1 + K), D].
OBJECTIVE_TENSORS_PER_QUERY = 3
# MEP sites: the visual and audio Transformers, plus the multimodal Transformer's
# two halves, which are scored on real pairs only (about half of them).
OBJECTIVE_SITES = 3.0


@dataclass(frozen=True)
class SavedBytes:
    """What autograd keeps after one forward pass at one batch size."""

    total: int  # every distinct saved storage
    checkpointed: int  # outside the units + unit inputs + the largest unit


@dataclass(frozen=True)
class ActivationModel:
    """Activation bytes as a linear function of the per-rank batch."""

    fixed: int
    per_sample: int
    fixed_checkpointed: int
    per_sample_checkpointed: int
    input_per_sample: int  # the batch tensors themselves (video + audio)
    objective_per_sample: int

    def activations(self, batch: int, checkpointing: bool) -> int:
        if checkpointing:
            return self.fixed_checkpointed + batch * self.per_sample_checkpointed
        return self.fixed + batch * self.per_sample


def storage_key(tensor: torch.Tensor) -> int:
    """Identity of a tensor's storage (fake and meta storages have no data pointer)."""
    return tensor.untyped_storage()._cdata


def checkpoint_units(model: nn.Module) -> list[nn.Module]:
    """The modules activation checkpointing recomputes: the members of every
    ModuleList held by a module with a ``gradient_checkpointing`` switch (the
    CNN stages and the Transformer layers)."""
    units: dict[int, nn.Module] = {}
    for module in model.modules():
        if hasattr(module, "gradient_checkpointing"):
            for child in module.children():
                if isinstance(child, nn.ModuleList):
                    units.update((id(unit), unit) for unit in child)
    return list(units.values())


class SavedTensorCounter:
    """Records saved storages and the checkpoint unit invocation they belong to."""

    def __init__(self, model: nn.Module, excluded: set[int]):
        self.excluded = set(excluded)
        self.sizes: dict[int, int] = {}
        self.owner: dict[int, int | None] = {}
        self.unit_inputs: dict[int, int] = {}
        self.alive: list[torch.Tensor] = []  # unit inputs, kept so that their storage keys stay unique
        self.stack: list[int] = []
        self.invocations = 0
        self.handles = []
        for unit in checkpoint_units(model):
            self.handles.append(unit.register_forward_pre_hook(self._enter))
            self.handles.append(unit.register_forward_hook(self._leave))

    def _enter(self, module: nn.Module, args: tuple) -> None:
        self.invocations += 1
        self.stack.append(self.invocations)
        for arg in args:
            if torch.is_tensor(arg) and arg.is_floating_point():
                key = storage_key(arg)
                if key not in self.excluded:
                    self.unit_inputs[key] = arg.untyped_storage().nbytes()
                    self.alive.append(arg)

    def _leave(self, module: nn.Module, args: tuple, output) -> None:
        self.stack.pop()

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        key = storage_key(tensor)
        if key not in self.excluded and key not in self.sizes:
            self.sizes[key] = tensor.untyped_storage().nbytes()
            self.owner[key] = self.stack[-1] if self.stack else None
        return tensor

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()

    def result(self) -> SavedBytes:
        outside = {k for k, owner in self.owner.items() if owner is None}
        per_unit: dict[int, int] = {}
        for key, owner in self.owner.items():
            if owner is not None:
                per_unit[owner] = per_unit.get(owner, 0) + self.sizes[key]
        kept = sum(self.sizes[k] for k in outside)
        kept += sum(size for key, size in self.unit_inputs.items() if key not in outside)
        return SavedBytes(
            total=sum(self.sizes.values()),
            checkpointed=kept + max(per_unit.values(), default=0),
        )


@contextlib.contextmanager
def cuda_autocast(dtype: torch.dtype) -> Iterator[None]:
    """CUDA autocast for fake CUDA tensors. ``torch.autocast('cuda')`` switches
    itself off on a machine without a GPU, so its state is set directly."""
    enabled, previous = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
    torch.set_autocast_enabled("cuda", True)
    torch.set_autocast_dtype("cuda", dtype)
    torch.autocast_increment_nesting()
    try:
        yield
    finally:
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
        torch.set_autocast_enabled("cuda", enabled)
        torch.set_autocast_dtype("cuda", previous)


def precision_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The forward pass's autocast as the training engine sets it for ``precision``."""
    if precision != "bf16":
        return contextlib.nullcontext()
    if device.type == "cuda" and not torch.cuda.is_available():
        return cuda_autocast(torch.bfloat16)
    return torch.autocast(device.type, dtype=torch.bfloat16)


def synthetic_inputs(data: DataConfig, batch: int, device: str | torch.device, fill: bool = False,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch tensors as the loaders give them: uint8 pixels video [B,T,3,F,H,W] and
    float32 log-mel audio [B,T,1,M,N]; ``fill`` draws random pixels and normal noise."""
    video = torch.empty(batch, data.clips, 3, data.frames_per_clip, data.crop_size, data.crop_size,
                        dtype=torch.uint8, device=device)
    audio = torch.empty(batch, data.clips, 1, data.n_mels, data.mel_frames, dtype=torch.float32, device=device)
    if fill:
        video.random_(0, 256, generator=generator)
        audio.normal_(generator=generator)
    return video, audio


def count_saved(model: nn.Module, data: DataConfig, batch: int, precision: str = "fp32",
                second_pass: bool = False) -> SavedBytes:
    """Run ``model`` forward once on its device and count what autograd saves for
    backward. ``second_pass`` runs the Transformers again on the CNN tokens: the unmasked
    pass that CPP pairs under ``objective.cpp_input: clean`` (``AVBertPretrainer``)."""
    device = next(model.parameters()).device
    fake = isinstance(next(model.parameters()), FakeTensor)
    video, audio = synthetic_inputs(data, batch, device, fill=not fake)
    excluded = {storage_key(p) for p in model.parameters()} | {storage_key(video), storage_key(audio)}
    counter = SavedTensorCounter(model, excluded)
    try:
        with precision_context(precision, device), torch.autograd.graph.saved_tensors_hooks(counter.pack, _same):
            output = model(video, audio)
            if second_pass:
                output = (output, model.encode(output.visual_tokens, output.audio_tokens, output.valid))
        result = counter.result()
    finally:
        counter.close()
        counter.alive.clear()
    del output
    return result


def _same(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def objective_bytes_per_sample(model: ModelConfig, data: DataConfig, objective: ObjectiveConfig) -> int:
    """MEP InfoNCE tensors per video: expected masked queries (at least one per
    sequence) x (1 + K) candidates x width x fp32, at each MEP site."""
    clips, p = data.clips, objective.mask_prob
    queries = clips * p + (1.0 - p) ** clips
    candidates = (1 + objective.num_negatives) * model.transformer.width
    return int(OBJECTIVE_SITES * queries * candidates * OBJECTIVE_TENSORS_PER_QUERY * 4)


# Saved-tensor counts by what they depend on: the model, the clip shapes, the precision and
# the second pass. The cells of an experiment differ mostly elsewhere (sampler, seed,
# downstream set), so one measurement serves many cells.
_CACHE: dict[tuple, tuple[SavedBytes, SavedBytes]] = {}


def _data_shape(data: DataConfig) -> tuple:
    """What of ``data`` the activations depend on: the clip shapes of ``synthetic_inputs``."""
    return data.clips, data.frames_per_clip, data.crop_size, data.n_mels, data.mel_frames


def _measure(model_cfg: ModelConfig, data: DataConfig, precision: str,
             second_pass: bool) -> tuple[SavedBytes, SavedBytes]:
    """Saved bytes of one forward at batch 1 and batch 2, on fake CUDA tensors."""
    from avbert.models import AVBert

    key = (repr(model_cfg), _data_shape(data), precision, second_pass)
    if key not in _CACHE:
        with FakeTensorMode(), torch.device("cuda"):
            model = AVBert(model_cfg).train()
            _CACHE[key] = tuple(count_saved(model, data, batch, precision, second_pass) for batch in (1, 2))
    return _CACHE[key]


def activation_model(model_cfg: ModelConfig, data: DataConfig, precision: str,
                     objective: ObjectiveConfig | None = None) -> ActivationModel:
    """Activation bytes of ``model_cfg`` at ``data``'s clip shapes, linear in the batch (the
    forward measurement is cached)."""
    objective = objective or ObjectiveConfig()
    one, two = _measure(model_cfg, data, precision, objective.cpp_input == "clean")
    video, audio = synthetic_inputs(data, 1, "meta")
    return ActivationModel(
        fixed=max(0, 2 * one.total - two.total),
        per_sample=two.total - one.total,
        fixed_checkpointed=max(0, 2 * one.checkpointed - two.checkpointed),
        per_sample_checkpointed=two.checkpointed - one.checkpointed,
        input_per_sample=video.numel() * video.element_size() + audio.numel() * audio.element_size(),
        objective_per_sample=objective_bytes_per_sample(model_cfg, data, objective),
    )
