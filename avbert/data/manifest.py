"""The suite's one dataset manifest: JSON Lines, one record per video.

Every dataset (Kinetics-700, Kinetics-Sounds, UCF101, ESC-50, Charades, AudioSet, any
``ROOT/SPLIT/LABEL/*`` tree) is described the same way, by ``tools/prepare_data.py``::

    {"id": "abseiling/0347ZoDXyP0_000095_000105", "video": "/data/k700/...mp4",
     "audio": "/data/k700-audio/...flac", "label": 0, "labels": null,
     "splits": ["train"], "duration": 10.0, "fps": 30.0, "num_frames": 300,
     "codec": "h264", "width": 340, "height": 256, "sample_rate": 16000,
     "video_bytes": 1234567, "audio_bytes": 234567, "vfr": false, "window": [0.0, 10.0]}

- ``video`` is null for audio-only datasets (ESC-50); ``audio`` is the mono FLAC the
  preparer extracted at the configured sample rate, starting at the first video frame.
- ``label`` is a class index (null when unknown, e.g. a held-out test set); multi-label
  datasets (Charades, AudioSet) give ``labels``, a list of class indices, instead.
- ``window`` is the stretch the clips are taken from, ``[start, end]`` seconds from the
  first video frame (the audio file's start): the 30 s around the annotated segment of a
  Kinetics-700 source video. Loaders clamp it to the file; null (or absent) means the
  whole file (``avbert.data.clips``).
- ``splits`` lists every split the video belongs to: ``train``/``val``/``test``, or
  ``train1``/``test1``.. for UCF101's three official splits and ESC-50's five folds
  (``test<k>`` is fold k, ``train<k>`` the other four).
- Relative paths are relative to the manifest's folder.

Class names live beside the manifest in ``<name>.classes.txt`` (one per line, the line
number is the class index). A line that is not such a record (not UTF-8, not JSON, a
missing field, a value of the wrong type) is refused as a ``ManifestError`` naming the
file and the line; loading a manifest whose records point at files that do not exist is
refused, naming how many and the first few with their lines.
"""

from __future__ import annotations

import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Iterable, Optional

from avbert.rundir import replaced_on_success

MISSING_SHOWN = 5


class ManifestError(ValueError):
    """A manifest that cannot be read: the message names the file, and the line at fault."""


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_class_list(value) -> bool:
    return isinstance(value, list) and all(_is_int(v) and v >= 0 for v in value)


# What each field of a record may hold (besides ``window``, checked on its own), and how
# a refusal says it; None is allowed where the field is optional.
FIELD_CHECKS = {
    "id": (lambda v: isinstance(v, str), "a string", False),
    "video": (lambda v: isinstance(v, str), "a path", True),
    "audio": (lambda v: isinstance(v, str), "a path", True),
    "splits": (lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v), "a list of split names", False),
    "duration": (_is_number, "a number of seconds", False),
    "label": (lambda v: _is_int(v) and v >= 0, "a class index (an integer >= 0)", True),
    "labels": (_is_class_list, "a list of class indices (integers >= 0)", True),
    "fps": (_is_number, "a number", True),
    "num_frames": (_is_int, "an integer", True),
    "codec": (lambda v: isinstance(v, str), "a string", True),
    "width": (_is_int, "an integer", True),
    "height": (_is_int, "an integer", True),
    "sample_rate": (_is_int, "an integer", True),
    "video_bytes": (_is_int, "an integer", True),
    "audio_bytes": (_is_int, "an integer", True),
    "vfr": (lambda v: isinstance(v, bool), "true or false", False),
}


def _shown(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass
class MediaRecord:
    """One video (or audio clip) of a dataset."""

    id: str
    video: Optional[str]
    audio: Optional[str]
    splits: list[str]
    duration: float
    label: Optional[int] = None
    labels: Optional[list[int]] = None
    fps: Optional[float] = None
    num_frames: Optional[int] = None
    codec: Optional[str] = None
    width: Optional[int] = None
    height: Optional[int] = None
    sample_rate: Optional[int] = None
    video_bytes: Optional[int] = None
    audio_bytes: Optional[int] = None
    vfr: bool = False
    window: Optional[list[float]] = None  # [start, end] seconds; None: the whole file
    index: int = field(default=-1, compare=False)  # position in the manifest, set on load
    line: int = field(default=0, compare=False)  # line number in the manifest file, set on load

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("index")
        data.pop("line")
        return json.dumps(data, sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict, index: int = -1) -> "MediaRecord":
        """A record from its JSON form; also accepts the writer-style ``split`` string."""
        if not isinstance(data, dict):
            raise ValueError(f"manifest record {index} is not a JSON object: {_shown(data)}")
        data = dict(data)
        if "splits" not in data and "split" in data:
            split = data.pop("split")
            data["splits"] = [split] if isinstance(split, str) else split
        missing = {"video", "audio", "splits", "duration"} - set(data)
        if missing:
            raise ValueError(f"manifest record {index} lacks {sorted(missing)}")
        for key, (valid, what, optional) in FIELD_CHECKS.items():
            if key in data and not (optional and data[key] is None) and not valid(data[key]):
                raise ValueError(f"manifest record {index}: {key} must be {what}, got {_shown(data[key])}")
        if "id" not in data:
            data["id"] = Path(data.get("video") or data.get("audio") or str(index)).stem
        known = {f.name for f in fields(cls)} - {"index", "line"}
        window = data.get("window")
        if window is not None:
            if (not isinstance(window, (list, tuple)) or len(window) != 2
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in window)
                    or not 0 <= window[0] < window[1]):
                raise ValueError(f"manifest record {index}: window {window!r} is not [start, end] seconds "
                                 "with 0 <= start < end")
            data["window"] = [float(window[0]), float(window[1])]
        return cls(**{k: v for k, v in data.items() if k in known}, index=index)

    def paths(self) -> list[str]:
        return [p for p in (self.video, self.audio) if p]


class MissingMediaError(FileNotFoundError):
    """A manifest names media files that do not exist."""


@dataclass
class Manifest:
    """A loaded manifest: its records (optionally one split) and class names."""

    path: Path
    records: list[MediaRecord]
    classes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @cached_property
    def multilabel(self) -> bool:
        """Whether any record has a label list. Cached: the loaders ask for every sample,
        and a scan of a Kinetics-size manifest per sample would cost more than its decoding."""
        return any(r.labels is not None for r in self.records)

    @property
    def audio_only(self) -> bool:
        return all(r.video is None for r in self.records)

    @property
    def codecs(self) -> set[str]:
        return {r.codec for r in self.records if r.video and r.codec}

    def split(self, name: Optional[str]) -> "Manifest":
        """The records of split ``name`` (all records for None)."""
        if name is None:
            return self
        records = [r for r in self.records if name in r.splits]
        if not records:
            found = sorted({s for r in self.records for s in r.splits})
            raise ManifestError(f"manifest {self.path} has no record in split {name!r}; splits: {found}")
        return Manifest(self.path, records, self.classes)


def classes_path(manifest_path: str | Path) -> Path:
    path = Path(manifest_path)
    return path.with_name(path.stem + ".classes.txt")


def report_path(manifest_path: str | Path) -> Path:
    path = Path(manifest_path)
    return path.with_name(path.stem + ".report.json")


def write_manifest(records: Iterable, path: str | Path, classes: Optional[list[str]] = None) -> Path:
    """Write records (``MediaRecord`` or dicts) as JSON Lines, and the class names."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replaced_on_success(path) as tmp, open(tmp, "w") as handle:
        for i, record in enumerate(records):
            record = record if isinstance(record, MediaRecord) else MediaRecord.from_dict(record, i)
            handle.write(record.to_json() + "\n")
    if classes is not None:
        classes_path(path).write_text("".join(f"{name}\n" for name in classes))
    return path


def _resolve(path: Optional[str], base: Path) -> Optional[str]:
    if path is None or os.path.isabs(path):
        return path
    return str(base / path)


def _read_records(path: Path) -> list[MediaRecord]:
    """The records of a manifest; a ManifestError names the first line that is not one.
    Lines are split at ``\\n`` bytes and decoded one by one, so that the number named is
    the line an editor shows, also for a line that is not UTF-8."""
    records = []
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ManifestError(f"{path}:{line_no}: not UTF-8 text (byte {err.start + 1} of the line)") from None
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except (ValueError, RecursionError) as err:  # also numbers past int's digit limit, deep nesting
                raise ManifestError(f"{path}:{line_no}: not JSON ({err})") from None
            try:
                record = MediaRecord.from_dict(data, index=len(records))
            except (TypeError, ValueError) as err:
                raise ManifestError(f"{path}:{line_no}: {err}") from None
            record.line = line_no
            record.video = _resolve(record.video, path.parent)
            record.audio = _resolve(record.audio, path.parent)
            records.append(record)
    return records


def _classes(path: Path, records: list[MediaRecord]) -> list[str]:
    sidecar = classes_path(path)
    if sidecar.exists():
        return [line for line in sidecar.read_text().splitlines() if line]
    top = max([r.label for r in records if r.label is not None]
              + [max(r.labels) for r in records if r.labels], default=-1)
    return [str(i) for i in range(top + 1)]


def missing_files(records: list[MediaRecord], threads: int = 16) -> list[str]:
    """Paths named by ``records`` that do not exist (checked in parallel: network
    file systems answer many small ``stat`` calls faster concurrently)."""
    return [p for _, p in _missing(records, threads)]


def _missing(records: list[MediaRecord], threads: int = 16) -> list[tuple[int, str]]:
    """(manifest line, path) of each path named by ``records`` that does not exist."""
    named = [(r.line, p) for r in records for p in r.paths()]
    with ThreadPoolExecutor(threads) as pool:
        exists = list(pool.map(os.path.exists, [p for _, p in named], chunksize=256))
    return [item for item, ok in zip(named, exists) if not ok]


def check_files(manifest: Manifest) -> None:
    """Refuse a manifest that names missing files: the count and the first few, with their lines."""
    missing = _missing(manifest.records)
    if missing:
        shown = "\n  ".join(f"line {line}: {p}" if line else p for line, p in missing[:MISSING_SHOWN])
        more = f"\n  ... and {len(missing) - MISSING_SHOWN} more" if len(missing) > MISSING_SHOWN else ""
        raise MissingMediaError(
            f"manifest {manifest.path}: {len(missing)} file(s) named by {len(manifest.records)} "
            f"record(s) do not exist:\n  {shown}{more}\n"
            "Re-run tools/prepare_data.py, or restore the files.")


def load_manifest(path: str | Path, split: Optional[str] = None, check: bool = True) -> Manifest:
    """Read a manifest (records keep their position as ``index``), keep one split,
    and, with ``check``, refuse it if any of those records names a missing file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"manifest {path} does not exist (tools/prepare_data.py writes it)")
    records = _read_records(path)
    manifest = Manifest(path, records, _classes(path, records)).split(split)
    if check:
        check_files(manifest)
    return manifest
