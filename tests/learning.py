"""What the learning tests measure, on any audio-visual data: held-out pretraining
accuracies and a linear probe of frozen video features.

Every figure is taken at the end of a run, in eval mode, on held-out videos the run
never trained on:

- ``<term>/acc``: the pretraining objectives (``avbert.objectives.evaluation``) on
  the held-out videos, with fixed masks, false pairs and negatives;
- ``probe/*``: multinomial logistic regression on frozen features of the training
  videos, tested on the held-out ones, for the pretrained model and for the same
  architecture at its initial weights (``probe/gain`` is the difference). The probe
  judged reads the synthetic task's downstream feature, ``m_context``: the two multimodal
  BOS outputs (``AVBertOutput.summary()``) beside the means of the multimodal visual and
  audio clip outputs; probes of each part alone are reported beside it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable

import torch

Batches = Callable[[], Iterable[dict]]  # a fresh pass over fixed batches of video, audio, valid, label


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
    torch.manual_seed(cfg.train.seed)  # the pretraining run's initial weights
    models = {"untrained": AVBert(cfg.model), "pretrained": pretrainer.model}
    accuracy = {}
    for name, model in models.items():
        train_features, test_features = features(model, train), features(model, heldout)
        for kind in FEATURES:
            accuracy[name, kind] = linear_probe(train_features[kind], test_features[kind], num_classes)
    heldout_acc = evaluate_pretraining(pretrainer, heldout(), seed=cfg.train.seed + 1)
    last = read_metrics(run_dir)[-1]
    return {
        **heldout_acc,
        "probe/pretrained_acc": accuracy["pretrained", "context"],
        "probe/untrained_acc": accuracy["untrained", "context"],
        "probe/gain": accuracy["pretrained", "context"] - accuracy["untrained", "context"],
        **{f"probe/{kind}_{name}_acc": accuracy[name, kind] for kind in ("bos", "mean") for name in models},
        "probe/chance": 1 / num_classes, "probe/train_videos": len(train_features["bos"][1]),
        "probe/heldout_videos": len(test_features["bos"][1]), "mep/chance": mep_chance(cfg),
        **{f"train/{key}": value for key, value in last.items() if key.endswith("/acc")},
        "pretrain/steps": last["step"], "pretrain/elapsed_s": last["time/elapsed_s"],
    }
