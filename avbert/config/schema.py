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


RES_STAGE_NAMES = (2, 3, 4, 5)  # the four residual stages, res2..res5


def _check_stages(owner: str, name: str, stages: tuple[int, ...]) -> None:
    unknown = sorted(set(stages) - set(RES_STAGE_NAMES))
    if unknown:
        raise ValueError(f"{owner}.{name} lists residual stages by name, 2..5 (res2..res5); got {unknown}")


def _check_strides(owner: str, strides: tuple[int, ...]) -> None:
    if any(s < 1 for s in strides):
        raise ValueError(f"{owner}.strides must be >= 1, got {tuple(strides)}")


@dataclass
class VisualCNNConfig:
    """3D ResNet applied to each clip: the Slow pathway of SlowFast (PySlowFast's
    Slow-only ResNet). The defaults are the released architecture (sangho-vision/avbert,
    ``code/models/video_model_builder.py`` with ``code/configs/*/config.yaml``, RESNET
    section):

    - ``depth`` 50, bottleneck blocks (RESNET.DEPTH 50, TRANS_FUNC bottleneck_transform);
      ``width`` 64 (RESNET.WIDTH_PER_GROUP 64, NUM_GROUPS 1), inner width ``width * 2**i``
      in stage ``i`` (``dim_inner``), output 4x that;
    - stem: ``stem_temporal_kernel`` x 7 x 7 convolution, stride
      (``stem_temporal_stride``, 2, 2), then a 1x3x3 max-pool with stride (1, 2, 2)
      (``_TEMPORAL_KERNEL_BASIS`` conv1 ``[[5]]``, ``VideoModelStem(stride=[[2, 2, 2]])``,
      ``stem_helper.ResNetBasicStem``'s pool): 32 input frames leave the stem as 16;
    - ``strides``: spatial stride of each stage's first block (RESNET.SPATIAL_STRIDES
      ``[[1], [2], [2], [2]]``; the ``_POOL1`` 1x1x1 pool after res2 is the identity);
    - ``temporal_kernel`` in the first (1x1) convolution of every block of
      ``temporal_stages`` (``_TEMPORAL_KERNEL_BASIS`` res2, res3 ``[[1]]``, res4, res5
      ``[[3]]``; RESNET.NUM_BLOCK_TEMP_KERNEL ``[[3], [4], [6], [3]]`` = every block);
      elsewhere 1.

    The ``tiny`` preset differs on purpose (depth 18, width 8, no temporal stride in the
    stem and a temporal kernel in every stage): its clips are 4 frames long.
    """

    depth: Literal[18, 50] = 50
    width: int = 64
    stem_temporal_kernel: int = 5
    stem_temporal_stride: int = 2
    strides: tuple[int, int, int, int] = (1, 2, 2, 2)
    temporal_kernel: int = 3  # temporal extent of the first conv of every block of temporal_stages
    temporal_stages: tuple[int, ...] = (4, 5)  # residual stages by name: 2..5 (res2..res5)

    def validate(self) -> None:
        for name in ("width", "stem_temporal_kernel", "stem_temporal_stride", "temporal_kernel"):
            if getattr(self, name) < 1:
                raise ValueError(f"visual.{name} must be >= 1, got {getattr(self, name)}")
        _check_strides("visual", self.strides)
        _check_stages("visual", "temporal_stages", self.temporal_stages)


@dataclass
class AudioCNNConfig:
    """2D ResNet on each clip's log-mel patch ``[n_mels, frames]``. The defaults are the
    released architecture (sangho-vision/avbert, ``code/models/audio_model_builder.py``
    with the AUDIO_RESNET section of ``code/configs/{esc50,kinetics-sounds}/config.yaml``):

    - ``depth`` 50, bottleneck blocks, ``width`` 32 (AUDIO_RESNET.DEPTH 50, TRANS_FUNC
      bottleneck_transform, WIDTH_PER_GROUP 32);
    - ``stem`` ``separable``: a 9x1 and a 1x9 convolution, stride 1, padding 4, each with
      BatchNorm and ReLU, no pooling (``AudioModelStem(kernel=[9, 9], stride=[1, 1],
      separable=True)``); ``resnet`` is the 7x7 stride-2 convolution and 3x3 stride-2
      max-pool of image ResNets;
    - ``strides`` (2, 2, 2, 2): the first block of every stage, res2 included, halves
      both axes (AUDIO_RESNET.STRIDES): an 80 x 128 patch ends at 5 x 8;
    - ``separable_stages`` (res2, res3): their 3x3 convolution is a 3x1 then a 1x3, with
      BatchNorm and ReLU between (``ResStage(separable=True)`` for s2 and s3, False for
      s4 and s5).

    The ``tiny`` preset differs on purpose (depth 18, width 8, the ``resnet`` stem,
    strides (1, 2, 2, 2), nothing separable): its patches are 40 x 32.
    """

    depth: Literal[18, 50] = 50
    width: int = 32
    stem: Literal["separable", "resnet"] = "separable"
    strides: tuple[int, int, int, int] = (2, 2, 2, 2)
    separable_stages: tuple[int, ...] = (2, 3)  # residual stages by name: 2..5 (res2..res5)

    def validate(self) -> None:
        if self.width < 1:
            raise ValueError(f"audio.width must be >= 1, got {self.width}")
        _check_strides("audio", self.strides)
        _check_stages("audio", "separable_stages", self.separable_stages)


@dataclass
class TransformerConfig:
    """BERT-style post-LayerNorm Transformer, shared by the three Transformers."""

    width: int = 768
    heads: int = 12
    ffn: int = 3072
    layers: int = 6
    # BERT's 0.1 at the paper's width. The tiny preset has none: at width 64 a head has 16
    # dimensions and a sequence about 10 tokens, and dropping a tenth of them held CPP at
    # chance for hundreds of steps on both synthetic worlds (docs/learning.md).
    dropout: float = 0.1
    max_clips: int = 64  # learned positions per modality
    # Std of the normal init of the dense maps' weights: BERT's initializer_range, 0.02
    # in the released config (INITIALIZER_RANGE), chosen for width 768. The low-rank U
    # follows it (scaled by sqrt(fan-in), see avbert.models.sharing). At small widths
    # 0.02 * sqrt(768 / width) keeps the paper's attention-logit scale; docs/learning.md
    # has what each range does at width 64.
    init_std: float = 0.02

    def validate(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        for name in ("width", "heads", "ffn", "layers", "max_clips"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.init_std > 0.0:
            raise ValueError(f"init_std must be > 0, got {self.init_std}")


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
                visual=VisualCNNConfig(depth=18, width=8, stem_temporal_kernel=1, stem_temporal_stride=1,
                                       temporal_kernel=3, temporal_stages=(2, 3, 4, 5)),
                audio=AudioCNNConfig(depth=18, width=8, stem="resnet", strides=(1, 2, 2, 2), separable_stages=()),
                transformer=TransformerConfig(width=64, heads=4, ffn=128, layers=2, dropout=0.0, max_clips=16),
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
    for the visual CNN and the time-aligned log-mel patch for the audio CNN.

    The ``paper`` audio front end is the released one (sangho-vision/avbert,
    ``code/configs/kinetics-sounds/config.yaml`` DATA and ``code/data/transform.py``,
    ``get_log_mel_spectrogram``): 44.1 kHz mono (TARGET_AUDIO_RATE), 80 mel bins
    (AUDIO_FREQUENCY) x 128 frames (AUDIO_TIME), window ``n_fft = 2 * (floor(w / 128) + 1)``
    samples for a clip of ``w`` samples and torchaudio's hop ``n_fft // 2``, and
    ``ln(1e-6 + mel power)``. The released audio-visual clip is the 32 x 2 frames at 30 fps
    of its video clip (``kinetics_sounds.py``: ``44100 * 32 * 2 / 30 = 94080`` samples),
    which gives a hop of 736 samples (``hop_ms`` 16.69) and a 1472-sample window (twice
    the hop, ``n_fft`` null): 128 frames cover the clip exactly. (The released ESC-50
    config cuts 2 s audio-only clips, 88200 samples, hop 690.) The ``tiny`` preset keeps
    16 kHz, 16 ms hops and the dB form.
    """

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
    # Test views: frames scaled to this short side and cropped to it (the released configs'
    # TEST_CROP_SIZE 128 against a 112 training crop); None: crop_size.
    test_crop_size: Optional[int] = None
    short_side: tuple[int, int] = (128, 160)
    sample_rate: int = 44100
    n_mels: int = 80
    mel_frames: int = 128
    hop_ms: float = 16.69  # rounded to samples: 736 at 44.1 kHz
    n_fft: Optional[int] = None  # FFT and window size in samples; None: twice the hop (1472 at 736)
    # "ln": ln(1e-6 + mel power), unscaled (the released code); "db": 10 log10(max(power,
    # 1e-10)) mapped to O(1) by fixed constants (avbert.data.audio).
    log_mel: Literal["ln", "db"] = "ln"
    spec_augment: float = 0.05
    # Training crops are mirrored left-right with probability 1/2 (the released code's
    # random horizontal flip, as SlowFast's). False keeps every training crop as decoded,
    # for sets whose classes or events depend on left and right; test crops are never
    # mirrored. The built-in synthetic source serves its clips unaugmented either way.
    flip: bool = True
    batch_size: int = 8  # per GPU (per rank)
    num_workers: int = 4
    test_views: int = 10
    test_crops: int = 3
    # A video whose window (avbert.data.clips) holds fewer than ``clips`` clips
    # ``clip_seconds`` apart: "pad" keeps it, the clips that do not fit masked as invalid
    # tokens (``valid``), "skip" leaves it out. Either way metrics.jsonl counts it
    # (data/padded, data/skipped/short_video). The default is "pad": every video the
    # preparer kept is trained on, and the paper's 30 s windows give full T = 10 sequences
    # wherever the source video is long enough, so only the few short ones carry padding.
    short_videos: Literal["pad", "skip"] = "pad"
    synthetic: SyntheticDataConfig = field(default_factory=SyntheticDataConfig)

    @classmethod
    def from_preset(cls, name: str) -> "DataConfig":
        if name == "paper":
            return cls()
        if name == "tiny":
            return cls(
                preset="tiny", clips=4, clip_seconds=0.5, frames_per_clip=4, frame_stride=1,
                crop_size=32, short_side=(32, 40), sample_rate=16000, n_mels=40, mel_frames=32, hop_ms=16.0,
                log_mel="db", batch_size=16, num_workers=0, test_views=2, test_crops=1,
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
        if self.short_videos not in ("pad", "skip"):
            raise ValueError(f"short_videos must be 'pad' or 'skip', got {self.short_videos!r}")
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
    num_negatives: int = 16  # K: at most this many distinct negatives per masked position
    # Where MEP's negatives come from: this rank's minibatch ("rank"), or every rank's
    # ("global": the CNN tokens are all-gathered each step). The paper draws from "the
    # minibatch" and leaves data parallelism unsaid; "rank" is the per-GPU minibatch, no
    # extra communication, and the default. Current-Sequence is the same under both.
    negatives_scope: Literal["rank", "global"] = "rank"
    # CANS sampling temperature on cosine similarity: P(j) ∝ exp(cos / temperature). The
    # paper fixes none; it asks for negatives that are diverse but favour hard ones. 1 is
    # P(j) ∝ exp(cos): the most similar candidate at most e^2 times likelier than the least.
    # 0.1 draws almost only the nearest candidates, and on the scenes world, where 1 clip in
    # 6 of a minibatch shows the positive's event, it kept CPP at chance (docs/learning.md).
    temperature: float = 1.0
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
    # After the warm-up: cosine decay to min_lr, or linear decay to min_lr (the released
    # ESC-50 config's SOLVER.LR_POLICY linear).
    schedule: Literal["cosine", "linear"] = "cosine"
    # "adamw": decoupled weight decay (torch AdamW); "adam": torch Adam, weight decay as an
    # L2 term in the gradient (the released fine-tuning code's SOLVER.OPTIMIZING_METHOD adam).
    optimizer: Literal["adamw", "adam"] = "adamw"
    # Downstream heads (parameters under ``head.``): their own peak learning rate and weight
    # decay (the released configs' separate head and backbone rates). None: lr / weight_decay.
    # The head follows the same warm-up and cosine, scaled by head_lr / lr.
    head_lr: Optional[float] = None
    head_weight_decay: Optional[float] = None

    def validate(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.head_lr is not None and self.head_lr <= 0:
            raise ValueError(f"head_lr must be > 0, got {self.head_lr}")
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
    # Where log lines go: metrics.jsonl always (the run's record), and optionally TensorBoard
    # (<run_dir>/tensorboard) and Weights & Biases (offline unless WANDB_MODE says otherwise);
    # avbert.train.loggers.
    loggers: tuple[Literal["jsonl", "tensorboard", "wandb"], ...] = ("jsonl",)

    def validate(self) -> None:
        if "jsonl" not in self.loggers:
            raise ValueError(f"loggers must include 'jsonl' (metrics.jsonl is the run's record); got {list(self.loggers)}")
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
    # The part of the model the classifier reads (avbert.models.heads; the paper's table (c)
    # names): CNN features or Transformer outputs, visual / audio / multimodal, or the
    # synthetic set's m_context. None: the task's paper default (UCF101 v_cnn, ESC-50 a_cnn,
    # Kinetics-Sounds and Charades m_bert, synthetic m_context).
    feature: Optional[Literal["v_cnn", "a_cnn", "m_cnn", "v_bert", "a_bert", "m_bert", "m_context"]] = None
    # Single-label loss: softmax cross-entropy, or the multi-class hinge loss with this margin
    # (the released ESC-50 config: MODEL.LOSS_FUNC multi_margin, MARGIN 0.1). Multi-label sets
    # (Charades) always train per-class sigmoids.
    loss: Literal["cross_entropy", "multi_margin"] = "cross_entropy"
    margin: float = 0.1

    def validate(self) -> None:
        if self.loss != "cross_entropy" and self.task == "charades":
            raise ValueError(f"loss {self.loss!r} is for single-label sets; charades is multi-label")
        if self.margin <= 0:
            raise ValueError(f"margin must be > 0, got {self.margin}")


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

    def validate(self) -> None:
        if self.downstream.feature in ("v_bert", "a_bert") and self.model.fusion == "early":
            raise ValueError(f"downstream.feature {self.downstream.feature!r} reads a unimodal Transformer, which "
                             "model.fusion 'early' does not have; use v_cnn, a_cnn, m_cnn or m_bert")
