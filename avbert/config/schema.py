"""The suite's configuration: one dataclass per concern.

``Config`` nests model, data, objective, optimisation, training and
downstream sections. Sections with a ``preset`` field (model, data) start from
that preset's values before the YAML and the overrides are merged in, so
``model: {preset: tiny, fusion: late}`` means "the tiny model, late fusion".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

Fusion = Literal["early", "mid", "late"]
LayerSharing = Literal["none", "cross_layer"]
ModalitySharing = Literal["none", "all", "lowrank"]
SamplerName = Literal["current_sequence", "current_minibatch", "cans_similar", "cans_dissimilar"]


@dataclass
class VisualCNNConfig:
    """3D ResNet ("slow"-pathway style) applied to each clip."""

    depth: Literal[18, 50] = 50
    width: int = 64
    temporal_kernel: int = 3  # temporal extent of the first conv of every residual block


@dataclass
class AudioCNNConfig:
    """2D ResNet on each clip's log-mel patch."""

    depth: Literal[18, 50] = 50
    width: int = 32


@dataclass
class TransformerConfig:
    """BERT-style post-LayerNorm Transformer, shared by the three Transformers."""

    width: int = 768
    heads: int = 12
    ffn: int = 3072
    layers: int = 6
    dropout: float = 0.1
    max_clips: int = 64  # learned positions per modality

    def validate(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        for name in ("width", "heads", "ffn", "layers", "max_clips"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclass
class SharingConfig:
    """Parameter sharing: across layers and across the three Transformers.

    ``layers``: ``none`` (L distinct layers) or ``cross_layer`` (ALBERT: one
    layer applied L times). ``modalities``: ``none`` (three independent
    Transformers), ``all`` (one layer set for all three) or ``lowrank`` (the
    paper's "Part": W = U S V^T with U shared, S and V private per modality).
    """

    layers: LayerSharing = "cross_layer"
    modalities: ModalitySharing = "lowrank"
    rank: int = 128

    def validate(self) -> None:
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")


@dataclass
class ModelConfig:
    preset: Literal["paper", "tiny"] = "paper"
    fusion: Fusion = "mid"
    visual: VisualCNNConfig = field(default_factory=VisualCNNConfig)
    audio: AudioCNNConfig = field(default_factory=AudioCNNConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    sharing: SharingConfig = field(default_factory=SharingConfig)

    @classmethod
    def from_preset(cls, name: str) -> "ModelConfig":
        if name == "paper":
            return cls()
        if name == "tiny":
            return cls(
                preset="tiny",
                visual=VisualCNNConfig(depth=18, width=8, temporal_kernel=3),
                audio=AudioCNNConfig(depth=18, width=8),
                transformer=TransformerConfig(width=64, heads=4, ffn=128, layers=2, dropout=0.1, max_clips=16),
                sharing=SharingConfig(rank=16),
            )
        raise ValueError(f"unknown model preset {name!r}; allowed values: 'paper', 'tiny'")

    @classmethod
    def tiny(cls) -> "ModelConfig":
        return cls.from_preset("tiny")


@dataclass
class SyntheticDataConfig:
    """The built-in synthetic audio-visual dataset (avbert.data.synthetic)."""

    num_videos: int = 512
    num_classes: int = 4
    # Event types (each a colour, shape, motion, pitch and rhythm). With few types many
    # minibatch clips share the positive's event, which similarity-based negative
    # samplers then draw as negatives (see tests/conftest.py).
    num_events: int = 8
    seed: int = 0


@dataclass
class DataConfig:
    """A video is ``clips`` consecutive clips; each clip gives a frame window
    for the visual CNN and the time-aligned log-mel patch for the audio CNN."""

    preset: Literal["paper", "tiny"] = "paper"
    source: Literal["synthetic", "manifest"] = "synthetic"
    manifest: Optional[str] = None
    split: str = "train"
    loader: Literal["auto", "dali", "pyav"] = "auto"
    clips: int = 10
    clip_seconds: float = 3.0
    frames_per_clip: int = 32
    frame_stride: int = 2
    crop_size: int = 112
    short_side: tuple[int, int] = (128, 160)
    sample_rate: int = 16000
    n_mels: int = 80
    mel_frames: int = 128
    hop_ms: float = 16.0
    n_fft: Optional[int] = None  # FFT and window size in samples; None: twice the hop (512 at 16 ms, 16 kHz)
    spec_augment: float = 0.05
    batch_size: int = 8  # per GPU (per rank)
    num_workers: int = 4
    test_views: int = 10
    test_crops: int = 3
    synthetic: SyntheticDataConfig = field(default_factory=SyntheticDataConfig)

    @classmethod
    def from_preset(cls, name: str) -> "DataConfig":
        if name == "paper":
            return cls()
        if name == "tiny":
            return cls(
                preset="tiny", clips=4, clip_seconds=0.5, frames_per_clip=4, frame_stride=1,
                crop_size=32, short_side=(32, 40), n_mels=40, mel_frames=32, hop_ms=16.0,
                batch_size=16, num_workers=0, test_views=2, test_crops=1,
            )
        raise ValueError(f"unknown data preset {name!r}; allowed values: 'paper', 'tiny'")

    def validate(self) -> None:
        if self.source == "manifest" and not self.manifest:
            raise ValueError("source is 'manifest' but no manifest path is given (data.manifest)")
        for name in ("clips", "frames_per_clip", "frame_stride", "crop_size", "n_mels", "mel_frames", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_fft is not None and self.n_fft < 2:
            raise ValueError(f"n_fft must be >= 2 samples (or null for twice the hop), got {self.n_fft}")
        if not 0.0 <= self.spec_augment < 0.5:
            raise ValueError(f"spec_augment must be in [0, 0.5), got {self.spec_augment}")
        if not 1 <= self.synthetic.num_classes <= self.synthetic.num_events:
            raise ValueError(f"synthetic.num_classes must be in [1, synthetic.num_events = "
                             f"{self.synthetic.num_events}], got {self.synthetic.num_classes}: each class "
                             "is a row of a Latin square over the event types")


@dataclass
class ObjectiveConfig:
    """MEP at each Transformer and CPP on the multimodal BOS output."""

    mask_prob: float = 0.15
    mask_replace: float = 0.8
    mask_random: float = 0.1
    sampler: SamplerName = "cans_similar"
    num_negatives: int = 16
    temperature: float = 0.1  # CANS sampling temperature on cosine similarity
    score: Literal["projected", "bilinear"] = "projected"
    score_temperature: float = 0.1  # temperature of the projected MEP score (cosine / t)
    cpp_prob: float = 0.5
    # What CPP pairs: "clean" runs the Transformers a second time on the unmasked tokens
    # and pairs those (UNITER's image-text matching sees unmasked inputs); "masked" pairs
    # the masked sequences of the MEP pass (BERT's next-sentence prediction, one pass).
    # On the tiny synthetic set CPP learns only from clean pairs (tests/test_learning_signal.py).
    cpp_input: Literal["clean", "masked"] = "clean"
    weights: dict[str, float] = field(
        default_factory=lambda: {"mep_visual": 1.0, "mep_audio": 1.0, "mep_multimodal": 1.0, "cpp": 1.0}
    )
    seed: int = 0

    def validate(self) -> None:
        for name in ("mask_prob", "mask_replace", "mask_random", "cpp_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.mask_replace + self.mask_random > 1.0:
            raise ValueError("mask_replace + mask_random must be <= 1")
        if self.num_negatives < 1:
            raise ValueError(f"num_negatives must be >= 1, got {self.num_negatives}")
        if self.temperature <= 0 or self.score_temperature <= 0:
            raise ValueError("temperature and score_temperature must be > 0")
        known = {"mep_visual", "mep_audio", "mep_multimodal", "cpp"}
        unknown = set(self.weights) - known
        if unknown:
            raise ValueError(f"unknown loss weight(s) {sorted(unknown)}; allowed: {sorted(known)}")


@dataclass
class OptimConfig:
    lr: float = 1e-4
    min_lr: float = 1e-6
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 1000
    grad_clip: float = 1.0

    def validate(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")


@dataclass
class TrainConfig:
    steps: int = 100_000
    grad_accum: int = 1
    precision: Literal["fp32", "bf16"] = "bf16"
    zero_stage: Literal[0, 1, 2, 3] = 2
    log_every: int = 50
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    seed: int = 0
    run_dir: str = "runs/default"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    activation_checkpointing: bool = False  # recompute CNN stages and Transformer layers in the backward pass
    compile: bool = False  # torch.compile the module inside DeepSpeed (engine.compile)
    channels_last: bool = False  # run the CNNs channels-last (channels_last_3d for video)

    def validate(self) -> None:
        for name in ("steps", "grad_accum", "log_every", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class DownstreamConfig:
    """Fine-tuning or linear evaluation on a labelled set."""

    task: Literal["ucf101", "esc50", "kinetics_sounds", "charades", "synthetic"] = "synthetic"
    protocol: Literal["finetune", "linear"] = "finetune"
    pretrained: Optional[str] = None  # fp32 export of a pretraining run
    num_classes: int = 0  # 0: from the dataset
    split: str = "1"  # UCF101 split / ESC-50 fold


@dataclass
class Config:
    name: str = "default"
    stage: Literal["pretrain", "finetune", "linear"] = "pretrain"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    downstream: DownstreamConfig = field(default_factory=DownstreamConfig)
    git_commit: Optional[str] = None  # recorded by the launcher
