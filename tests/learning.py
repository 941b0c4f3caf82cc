"""What the learning tests measure, on any audio-visual data: held-out pretraining
accuracies and a linear probe of frozen video features.

Every figure is taken at the end of a run, in eval mode, on held-out videos the run
never trained on:

- ``<term>/acc``: the pretraining objectives (``avbert.objectives.evaluation``) on
  the held-out videos, with fixed masks, false pairs and negatives;
- ``probe/*``: multinomial logistic regression on frozen features of the training
  videos, tested on the held-out ones, for the pretrained model and for the same
  architecture untrained (``probe/gain`` is the difference). The probe judged reads the
  synthetic task's downstream feature, ``m_context``: the two multimodal BOS outputs
  (``AVBertOutput.summary()``) beside the means of the multimodal visual and audio clip
  outputs; probes of each part alone are reported beside it.

The untrained reference is the mean probe accuracy over ``UNTRAINED_INITS``
initialisations: the run's own (seed ``train.seed``, reported alone as
``probe/own_init_acc``) and those of the next seeds. One initialisation is a noisy
reference: on world 1 the untrained model's probe ranged from 24.2 to 42.2% over seeds
0-7 while the pretrained model's ranged over 4 points, so a gain against one draw
measured mostly which draw it was (docs/learning.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable

import torch

Batches = Callable[[], Iterable[dict]]  # a fresh pass over fixed batches of video, audio, valid, label

UNTRAINED_INITS = 4


def tensor_batches(data: dict[str, torch.Tensor], batch_size: int = 64) -> Batches:
    """Fixed batches over in-memory ``video``/``audio``/``valid``/``label`` tensors."""
    def passes():
        for start in range(0, len(data["label"]), batch_size):
            yield {key: value[start:start + batch_size] for key, value in data.items()}
    return passes


FEATURES = ("context", "bos", "mean")


@torch.no_grad()
def features(model, batches: Batches) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Frozen multimodal features with labels: ``bos`` (the two multimodal BOS outputs),
    ``mean`` (the means of the multimodal visual and audio clip outputs) and ``context``
    (both side by side: the downstream feature ``m_context``)."""
    from avbert.models.heads import clip_outputs_means

    model.eval()
    means, bos, labels = [], [], []
    for batch in batches():
        out = model(batch["video"], batch["audio"], batch["valid"])
        means.append(clip_outputs_means(out))
        bos.append(out.summary())
        labels.append(batch["label"])
    labels, bos, means = torch.cat(labels), torch.cat(bos), torch.cat(means)
    return {"context": (torch.cat([bos, means], dim=1), labels), "bos": (bos, labels), "mean": (means, labels)}


def videos(batches: Batches) -> int:
    return sum(len(batch["label"]) for batch in batches())


def linear_probe(train: tuple, test: tuple, num_classes: int, l2: float = 1e-3) -> float:
    """Multinomial logistic regression (L-BFGS) on standardised features; test accuracy."""
    (x, y), (xt, yt) = train, test
    mean, std = x.mean(0), x.std(0) + 1e-6
    x, xt = (x - mean) / std, (xt - mean) / std
    weight = torch.zeros(x.shape[1], num_classes, requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight + bias, y) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return float(((xt @ weight + bias).argmax(1) == yt).float().mean())


def mep_chance(cfg) -> float:
    """MEP accuracy of random scores: one positive among the distinct negatives the sampler can draw."""
    per_video = cfg.objective.sampler == "current_sequence"
    pool = cfg.data.clips - 1 if per_video else cfg.data.batch_size * cfg.data.clips - 1
    return 1 / (min(cfg.objective.num_negatives, pool) + 1)


def learning_figures(run_dir: Path, train: Batches, heldout: Batches, num_classes: int) -> dict:
    """Held-out objective accuracies and probe figures of the pretraining run in ``run_dir``,
    also written to ``probe.json`` there."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread copes far better with a busy machine
    try:
        figures = _learning_figures(run_dir, train, heldout, num_classes)
    finally:
        torch.set_num_threads(threads)
    (run_dir / "probe.json").write_text(json.dumps(figures, indent=1) + "\n")
    return figures


def _learning_figures(run_dir: Path, train: Batches, heldout: Batches, num_classes: int) -> dict:
    from avbert.config import load_config
    from avbert.models import AVBert
    from avbert.objectives.evaluation import evaluate_pretraining
    from avbert.train.metrics import read_metrics
    from avbert.train.pretrain import load_exported_pretrainer

    cfg = load_config(run_dir / "config.yaml")
    pretrainer = load_exported_pretrainer(run_dir / "export" / "model.pt")

    def probe(model) -> dict[str, float]:
        train_features, test_features = features(model, train), features(model, heldout)
        return {kind: linear_probe(train_features[kind], test_features[kind], num_classes) for kind in FEATURES}

    pretrained = probe(pretrainer.model)
    inits = []
    for seed in range(cfg.train.seed, cfg.train.seed + UNTRAINED_INITS):  # the run's own initial weights first
        torch.manual_seed(seed)
        inits.append(probe(AVBert(cfg.model)))
    untrained = {kind: sum(init[kind] for init in inits) / len(inits) for kind in FEATURES}
    accuracy = {"pretrained": pretrained, "untrained": untrained}
    heldout_acc = evaluate_pretraining(pretrainer, heldout(), seed=cfg.train.seed + 1)
    last = read_metrics(run_dir)[-1]
    return {
        **heldout_acc,
        "probe/pretrained_acc": pretrained["context"],
        "probe/untrained_acc": untrained["context"],
        "probe/gain": pretrained["context"] - untrained["context"],
        "probe/own_init_acc": inits[0]["context"], "probe/untrained_inits": [init["context"] for init in inits],
        **{f"probe/{kind}_{name}_acc": accuracy[name][kind] for kind in ("bos", "mean") for name in accuracy},
        "probe/chance": 1 / num_classes, "probe/train_videos": videos(train),
        "probe/heldout_videos": videos(heldout), "mep/chance": mep_chance(cfg),
        **{f"train/{key}": value for key, value in last.items() if key.endswith("/acc")},
        "pretrain/steps": last["step"], "pretrain/elapsed_s": last["time/elapsed_s"],
    }
