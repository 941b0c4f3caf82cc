"""Where each dataset keeps its videos, labels and splits: one base, thin subclasses.

A layout reads a dataset's own annotation files under ``root`` and lists ``Entry``
objects: an id, the media file (None when the annotations name a video that is not on
disk), class names and splits. Media files are found by name anywhere under ``root``,
so both flat and per-class folder trees work.

- ``kinetics700``: ``annotations/{train,val,test}.csv`` (CVDF Kinetics-700-2020:
  ``label,youtube_id,time_start,time_end,split``), files named
  ``<youtube_id>_<start:06d>_<end:06d>.<ext>`` (the distributed 10 s segment) or
  ``<youtube_id>.<ext>`` (the untrimmed source video). Each entry carries its annotated
  ``segment`` in its file's timeline (``[0, end - start]`` for a segment file), from
  which the preparer takes the record's window. A row that does not parse is refused
  with the file, the line and what is wrong (``AnnotationError``).
- ``kinetics_sounds``: the same files restricted to the Kinetics-Sounds classes.
- ``ucf101``: ``ucfTrainTestlist/{classInd.txt,trainlist0k.txt,testlist0k.txt}``; splits
  ``train1..3`` / ``test1..3``.
- ``esc50``: ``meta/esc50.csv`` (``filename,fold,target,category,...``), audio only;
  splits ``test<k>`` (fold k) and ``train<k>`` (the other folds).
- ``charades``: ``Charades_v1_{train,test}.csv`` whose ``actions`` column lists
  ``c<id> <start> <end>`` segments (video-level multi-label), ``Charades_v1_classes.txt``.
- ``audioset``: ``{balanced_train,unbalanced_train,eval}_segments.csv`` (``YTID,
  start_seconds, end_seconds, positive_labels``) and ``class_labels_indices.csv``.
- ``generic``: ``ROOT/SPLIT/LABEL/*.{mp4,webm,mkv,avi}``.
"""

from __future__ import annotations

import csv
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")

KINETICS_SOUNDS_CLASSES = (
    "blowing nose", "blowing out candles", "bowling", "chopping wood", "dribbling basketball",
    "laughing", "mowing lawn", "playing accordion", "playing bagpipes", "playing bass guitar",
    "playing clarinet", "playing drums", "playing guitar", "playing harmonica",
    "playing keyboard", "playing organ", "playing piano", "playing saxophone",
    "playing trombone", "playing trumpet", "playing violin", "playing xylophone",
    "ripping paper", "shoveling snow", "shuffling cards", "singing", "stomping grapes",
    "tap dancing", "tapping guitar", "tapping pen", "tickling", "typing",
)
"""Kinetics-Sounds (Arandjelovic & Zisserman, 2017) as 32 Kinetics-700 class names: the
34 original classes less "fingerpicking" and "patting", which are not single Kinetics
classes. ``--classes FILE`` replaces the list."""


@dataclass
class Entry:
    """One video (or audio clip) a dataset's annotations name."""

    id: str
    path: Optional[str]
    labels: list[str]
    splits: list[str]
    segment: Optional[tuple[float, float]] = None  # annotated [start, end] seconds in the file's timeline


def index_media(root: Path, extensions: tuple[str, ...]) -> dict[str, str]:
    """Lower-cased file stem -> path of every entry under ``root`` whose name ends in
    ``extensions`` (files, links, even folders: the preparer reports what is wrong)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in files + dirs:
            stem, ext = os.path.splitext(name)
            if ext.lower() in extensions:
                found.setdefault(stem.lower(), os.path.join(folder, name))
    return found


class AnnotationError(ValueError):
    """An annotation file that cannot be read as its format says, with where and why."""


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle, skipinitialspace=True))


class DatasetLayout(ABC):
    """A dataset on disk; subclasses read its annotation format."""

    name = "base"
    multilabel = False
    audio_only = False
    extensions = VIDEO_EXTENSIONS

    def __init__(self, root: str | Path, classes_file: Optional[str] = None):
        self.root = Path(os.path.abspath(root))
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset root {self.root} is not a folder")
        self.classes_file = classes_file
        self._media: Optional[dict[str, str]] = None

    def find(self, *stems: str) -> Optional[str]:
        """The first media file named by one of ``stems`` (case-insensitive)."""
        if self._media is None:
            self._media = index_media(self.root, self.extensions)
        return next((self._media[s.lower()] for s in stems if s.lower() in self._media), None)

    def annotation(self, *names: str) -> Path:
        """The first of ``names`` found at the root or one level below it."""
        for name in names:
            for candidate in [self.root / name, *self.root.glob(f"*/{name}")]:
                if candidate.is_file():
                    return candidate
        raise FileNotFoundError(f"{self.name}: none of {list(names)} under {self.root}")

    @abstractmethod
    def classes(self) -> list[str]:
        """Class names; the position is the class index."""

    @abstractmethod
    def entries(self) -> list[Entry]:
        """Every video the annotations name, found on disk or not."""


class Kinetics700(DatasetLayout):
    name = "kinetics700"
    split_files = {"train": ("train.csv",), "val": ("val.csv", "validate.csv"), "test": ("test.csv",)}
    columns = ("youtube_id", "time_start", "time_end")

    def rows(self) -> Iterable[tuple[str, str, dict]]:
        """``(split, "file:line", row)`` of every annotation row, each checked
        (``AnnotationError``): a YouTube id, and a segment of seconds that ends after it starts."""
        for split, names in self.split_files.items():
            try:
                path = self.annotation(*[f"annotations/{n}" for n in names], *names)
            except FileNotFoundError:
                continue
            with open(path, newline="") as handle:
                reader = csv.DictReader(handle, skipinitialspace=True)
                missing = [c for c in self.columns if c not in (reader.fieldnames or [])]
                if missing:
                    raise AnnotationError(f"{path}:1: the header lacks column(s) {', '.join(missing)} "
                                          f"(Kinetics format: label,youtube_id,time_start,time_end,split)")
                for row in reader:
                    where = f"{path}:{reader.line_num}"
                    yield split, where, self.checked(row, where)

    def checked(self, row: dict, where: str) -> dict:
        """``row`` with ``time_start`` and ``time_end`` as floats, or ``AnnotationError``."""
        if None in row:
            raise AnnotationError(f"{where}: {len(row) - 1 + len(row[None])} fields, the header has {len(row) - 1}")
        short = [c for c in self.columns if row.get(c) is None]
        if short:
            raise AnnotationError(f"{where}: the row has no {', '.join(short)} (fewer fields than the header)")
        if not row["youtube_id"].strip():
            raise AnnotationError(f"{where}: youtube_id is empty")
        times = {}
        for column in ("time_start", "time_end"):
            try:
                times[column] = float(row[column])
            except ValueError:
                raise AnnotationError(f"{where}: {column} {row[column]!r} is not a number of seconds") from None
            if not 0 <= times[column] < float("inf"):
                raise AnnotationError(f"{where}: {column} {row[column]!r} is not a time (seconds >= 0)")
        if times["time_end"] <= times["time_start"]:
            raise AnnotationError(f"{where}: time_end {row['time_end']} is not after time_start {row['time_start']}")
        return {**row, "youtube_id": row["youtube_id"].strip(), **times}

    def keep(self, label: str) -> bool:
        """Whether an entry of class ``label`` ("" when held out) belongs to the dataset."""
        return True

    def classes(self) -> list[str]:
        return sorted({row["label"] for _, _, row in self.rows() if row.get("label") and self.keep(row["label"])})

    def entries(self) -> list[Entry]:
        entries = []
        for split, _, row in self.rows():
            label = row.get("label") or ""
            if not self.keep(label):
                continue
            ytid, start, end = row["youtube_id"], row["time_start"], row["time_end"]
            clip = f"{ytid}_{int(start):06d}_{int(end):06d}"
            segment_file = self.find(clip)
            path = segment_file or self.find(ytid)
            segment = (0.0, end - start) if segment_file else (start, end)  # a segment file starts at time_start
            entries.append(Entry(clip, path, [label] if label else [], [split], segment))
        if not entries:
            raise FileNotFoundError(f"{self.name}: no annotations/{{train,val,test}}.csv under {self.root}")
        return entries


class KineticsSounds(Kinetics700):
    name = "kinetics_sounds"

    def wanted(self) -> list[str]:
        if self.classes_file:
            return [line.strip() for line in Path(self.classes_file).read_text().splitlines() if line.strip()]
        return list(KINETICS_SOUNDS_CLASSES)

    def keep(self, label: str) -> bool:
        return label in set(self.wanted())

    def classes(self) -> list[str]:
        return sorted(self.wanted())


class UCF101(DatasetLayout):
    name = "ucf101"

    def classes(self) -> list[str]:
        lines = self.annotation("classInd.txt").read_text().split("\n")
        return [line.split()[1] for line in lines if line.strip()]

    def entries(self) -> list[Entry]:
        lookup = {name.lower(): name for name in self.classes()}
        splits: dict[str, list[str]] = {}
        for k in (1, 2, 3):
            for kind in ("train", "test"):
                for line in self.annotation(f"{kind}list0{k}.txt").read_text().split("\n"):
                    if line.strip():
                        splits.setdefault(line.split()[0].replace("\\", "/"), []).append(f"{kind}{k}")
        entries = []
        for relative, names in splits.items():
            folder, stem = relative.split("/")[0], Path(relative).stem
            entries.append(Entry(stem, self.find(stem), [lookup.get(folder.lower(), folder)], names))
        return entries


class ESC50(DatasetLayout):
    name = "esc50"
    audio_only = True
    extensions = AUDIO_EXTENSIONS
    folds = 5

    def rows(self) -> list[dict]:
        return read_csv(self.annotation("meta/esc50.csv", "esc50.csv"))

    def classes(self) -> list[str]:
        """Indexed by ESC-50's ``target`` column (0..49)."""
        names = {int(row["target"]): row["category"] for row in self.rows()}
        return [names.get(i, f"target_{i}") for i in range(max(names) + 1)]

    def entries(self) -> list[Entry]:
        entries = []
        for row in self.rows():
            fold = int(row["fold"])
            splits = [f"test{fold}"] + [f"train{k}" for k in range(1, self.folds + 1) if k != fold]
            stem = Path(row["filename"]).stem
            entries.append(Entry(stem, self.find(stem), [row["category"]], splits))
        return entries


class Charades(DatasetLayout):
    name = "charades"
    multilabel = True

    def codes(self) -> list[tuple[str, str]]:
        lines = self.annotation("Charades_v1_classes.txt").read_text().split("\n")
        return [tuple(line.strip().split(" ", 1)) for line in lines if line.strip()]

    def classes(self) -> list[str]:
        return [name for _, name in self.codes()]

    def entries(self) -> list[Entry]:
        names = dict(self.codes())
        entries = []
        for split in ("train", "test"):
            for row in read_csv(self.annotation(f"Charades_v1_{split}.csv")):
                actions = [a.split()[0] for a in (row.get("actions") or "").split(";") if a.strip()]
                labels = sorted({names[code] for code in actions if code in names})
                entries.append(Entry(row["id"], self.find(row["id"]), labels, [split]))
        return entries


class AudioSet(DatasetLayout):
    name = "audioset"
    multilabel = True
    split_files = ("balanced_train", "unbalanced_train", "eval")

    def mids(self) -> dict[str, str]:
        return {row["mid"]: row["display_name"] for row in read_csv(self.annotation("class_labels_indices.csv"))}

    def classes(self) -> list[str]:
        return list(self.mids().values())

    @staticmethod
    def segments(path: Path) -> Iterable[list[str]]:
        with open(path, newline="") as handle:
            for row in csv.reader(handle, skipinitialspace=True):
                if row and not row[0].startswith("#"):
                    yield row

    def entries(self) -> list[Entry]:
        mids, entries = self.mids(), []
        for split in self.split_files:
            try:
                path = self.annotation(f"{split}_segments.csv")
            except FileNotFoundError:
                continue
            for ytid, start, end, positive in self.segments(path):
                s, e = float(start), float(end)
                stems = (f"{ytid}_{int(s):06d}_{int(e):06d}", f"{ytid}_{int(s)}_{int(e)}",
                         f"{ytid}_{int(s * 1000)}", f"{ytid}_{int(s)}", f"Y{ytid}", ytid)
                labels = sorted({mids[m] for m in positive.split(",") if m in mids})
                entries.append(Entry(f"{ytid}_{int(s * 1000)}", self.find(*stems), labels, [split]))
        return entries


class Generic(DatasetLayout):
    name = "generic"

    def tree(self) -> list[tuple[str, str, Path]]:
        found = []
        for split in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for label in sorted(p for p in split.iterdir() if p.is_dir() and p.suffix.lower() not in self.extensions):
                for media in sorted(label.iterdir()):
                    if media.suffix.lower() in self.extensions:
                        found.append((split.name, label.name, media))
        return found

    def classes(self) -> list[str]:
        return sorted({label for _, label, _ in self.tree()})

    def entries(self) -> list[Entry]:
        return [Entry(f"{split}/{label}/{media.stem}", str(media), [label], [split])
                for split, label, media in self.tree()]


LAYOUTS = {cls.name: cls for cls in (Kinetics700, KineticsSounds, UCF101, ESC50, Charades, AudioSet, Generic)}


def layout(name: str, root: str | Path, classes_file: Optional[str] = None) -> DatasetLayout:
    """The layout of dataset ``name`` rooted at ``root``."""
    if name not in LAYOUTS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(LAYOUTS)}")
    return LAYOUTS[name](root, classes_file)
