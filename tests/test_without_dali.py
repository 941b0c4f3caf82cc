"""The synthetic and PyAV paths run on a machine without NVIDIA DALI: DALI is imported only
where the loader choice (``avbert.data.build``) picks it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import sys

    class NoDali:  # the import system as on a machine without the nvidia-dali wheel
        def find_spec(self, name, path=None, target=None):
            if name == "nvidia" or name.startswith("nvidia."):
                raise ModuleNotFoundError(f"No module named {name!r}")
            return None

    sys.meta_path.insert(0, NoDali())
    from pathlib import Path

    from avbert.config import DataConfig
    from avbert.data.build import build_manifest_loader, choose_loader, dali_installed
    from avbert.data.manifest import load_manifest, write_manifest
    from avbert.data.synthetic import SyntheticSpec, write_media
    import avbert.train  # the engine imports without DALI too

    assert not dali_installed()
    folder = Path(sys.argv[1])
    spec = SyntheticSpec(num_videos=4, num_classes=2, num_events=2, clips=2, frames_per_clip=4, frame_size=32,
                         fps=8.0)
    records = write_media(spec, str(folder / "media"))
    for record in records:
        record["split"], record["width"], record["height"] = "train", 32, 32
    manifest = write_manifest(records, folder / "m.jsonl", ["a", "b"])
    assert choose_loader("auto", load_manifest(manifest, "train"), gpus=0, dali=False) == (
        "pyav", "NVIDIA DALI is not installed")
    data = DataConfig(preset="tiny", source="manifest", manifest=str(manifest), clips=2, clip_seconds=0.5,
                      frames_per_clip=4, frame_stride=1, crop_size=32, short_side=(32, 40), sample_rate=16000,
                      n_mels=40, mel_frames=32, hop_ms=16.0, log_mel="db", batch_size=2, num_workers=0)
    batch = next(iter(build_manifest_loader(data, train=True, split="train")))
    assert batch["video"].shape[:2] == (2, 2)
    assert not [name for name in sys.modules if name.startswith("nvidia.dali")]
    print("ok")
""")


def test_the_pyav_path_runs_without_dali(tmp_path):
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stdout + result.stderr[-3000:]
