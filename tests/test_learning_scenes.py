"""Pretraining learns on the scenes world (``avbert.data.synthetic_scenes``) taken the
way a user's data is: written as H.264/AAC .mp4 files in the generic layout, prepared
by ``tools/prepare_data.py generic``, decoded by the manifest loader.

Unlike the built-in set, every nuisance (colours, contrast, loudness, noise, hum) is
drawn per clip and independently for picture and sound, so nothing but a clip's event
ties its sound to its picture: CPP cannot pair them by recognising the video, so a
CPP that learns here pairs events. The class is again a temporal pattern of events.
Every figure is measured at the end of the run, in eval mode, on the 512 held-out
videos of the ``val`` split (tests/learning.py); the run is the session's
``scenes_pretraining`` (tests/conftest.py; its recipe, the paper's model at the tiny preset,
with unmirrored training crops, lr 1.5e-3 and 1600 steps, is ``SCENES_PRETRAIN`` in
tests/training_runs.py).

``python tests/test_learning_scenes.py RUN_DIR MANIFEST [overrides]`` runs the same
experiment by hand on a prepared scenes manifest and prints the figures; ``--figures
RUN_DIR`` writes an existing run's figures to its probe.json, as the session does in the
background after the run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from learning import learning_figures, tensor_batches

# Bars from nine seeds (figures in the test docstrings, docs/learning.md). MEP's is 10 points
# below the worst seed and the probe gain's 8.9. CPP's is the lowest the learning tests accept
# (75%): 13.3 points below the worst seed but one, 6.2 below that one (seed 8's CPP started
# late).
MIN_PROBE_GAIN = 0.15
MIN_CPP_ACC = 0.75
MIN_MEP_OVER_CHANCE = 0.33


def manifest_split(cfg, split: str):
    """Fixed batches of one view per video (centre crop, first clips) of a manifest split."""
    from dataclasses import replace

    from avbert.data.clips import ClipSpec
    from avbert.data.manifest import load_manifest
    from avbert.data.pyav_loader import ManifestDataset

    data = replace(cfg.data, test_views=1, test_crops=1)
    dataset = ManifestDataset(load_manifest(data.manifest, split), ClipSpec.from_config(data), train=False)
    items = [dataset.load(i) for i in range(len(dataset))]
    tensors = {key: torch.stack([item[key][0] for item in items]) for key in ("video", "audio", "valid")}  # the view
    tensors["label"] = torch.stack([item["label"] for item in items])
    return tensor_batches(tensors)


def write_figures(run_dir: Path) -> dict:
    from avbert.config import load_config
    from avbert.data.manifest import load_manifest

    cfg = load_config(run_dir / "config.yaml")
    train, heldout = manifest_split(cfg, "train"), manifest_split(cfg, "val")
    return learning_figures(run_dir, train, heldout, load_manifest(cfg.data.manifest).num_classes)


@pytest.fixture(scope="module")
def figures(scenes_figures) -> dict:
    return scenes_figures


@pytest.mark.slow
def test_the_run_read_real_media_through_the_manifest_loader(scenes_pretraining, figures):
    from avbert.config import load_config

    cfg = load_config(scenes_pretraining / "config.yaml")
    assert cfg.data.source == "manifest" and cfg.data.manifest.endswith("scenes.jsonl")
    first = json.loads((scenes_pretraining / "metrics.jsonl").read_text().splitlines()[0])
    assert first["data/skipped"] == 0
    assert figures["probe/heldout_videos"] >= 512 and figures["eval/videos"] >= 512, figures


@pytest.mark.slow
def test_cpp_pairs_sound_and_picture_by_their_events(figures):
    """Held-out CPP (clean second pass) after 1600 steps: 91.8, 89.8, 91.8, 92.0, 94.3, 88.3,
    90.8, 91.2 and 81.2% over seeds 0-8; the bar is 75%. CPP stays at chance and then rises;
    on the training batches it passes 70% at steps 550-925 in seven seeds, at about 1250 in
    seeds 5 and 8. When it starts varies with the seed and the machine, and a run in which
    it starts much later than seed 8's fails here (docs/learning.md). Only the clip's
    event ties sound to picture in this world, so this is the test that CPP learns event
    correspondence (world 1's CPP recognises the video)."""
    assert figures["cpp/acc"] >= MIN_CPP_ACC, json.dumps(figures, indent=1)


@pytest.mark.slow
def test_probe_on_pretrained_features_beats_the_untrained_model(figures):
    """Probe of the task's feature (``m_context``: the two multimodal BOS outputs beside the
    mean visual and the mean audio clip output), held out: pretrained minus untrained (the
    mean over four initialisations, tests/learning.py) 37.8, 23.9, 33.6, 35.0, 33.4, 29.0,
    34.6, 34.5 and 29.9 points over seeds 0-8 (62.5 / 48.6 / 58.6 / 60.7 / 59.0 / 54.9 /
    60.0 / 60.2 / 54.7% against 24.7-25.8%; chance 25%); the bar is 15 points."""
    assert figures["probe/gain"] >= MIN_PROBE_GAIN, json.dumps(figures, indent=1)


@pytest.mark.slow
def test_mep_rises_well_above_chance(figures):
    """Held-out MEP of every Transformer (chance 0.25: three distinct negatives from the
    clip's own video) over seeds 0-8: visual 0.682-0.759, audio 0.881-0.914, multimodal
    0.797-0.844; the bar is 0.58."""
    report = json.dumps(figures, indent=1)
    for term in ("mep_visual", "mep_audio", "mep_multimodal"):
        assert figures[f"{term}/acc"] >= figures["mep/chance"] + MIN_MEP_OVER_CHANCE, report


if __name__ == "__main__":
    import sys

    if sys.argv[1] == "--figures":  # an existing run's figures (the session's background chain)
        write_figures(Path(sys.argv[2]))
    else:
        from training_runs import SCENES_PRETRAIN, run_train

        run_dir, manifest = Path(sys.argv[1]), sys.argv[2]
        run_train("pretrain", run_dir, SCENES_PRETRAIN + [f"data.manifest={manifest}"] + sys.argv[3:])
        print(json.dumps(write_figures(run_dir), indent=1))
