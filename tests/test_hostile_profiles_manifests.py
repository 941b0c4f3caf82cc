"""Mutated cluster profiles and data manifests are accepted or refused cleanly, never with
a traceback.

Property-based (``hypothesis``), in-process, so that an uncaught exception fails the test:

- Profiles: each shipped ``slurm/profiles/*.yaml`` has lines deleted, duplicated or
  swapped, characters replaced and values replaced by other YAML values, and is passed
  with ``--profile`` to the launcher's ``--dry-run`` of ``experiments/smoke.yaml`` (tiny
  scale) and of ``experiments/sharing_ablation.yaml`` (paper scale, one variant). The
  launch ends in a plan (exit 0) or a refusal (exit 2) whose message names the profile
  file; a profile that plans also yields the sbatch parameters of every cell (what a
  launch submits), so a dry run does not pass a profile that submission cannot use.
- Manifests: a valid manifest as ``avbert.data.manifest`` writes it (paths relative to
  it, multi-label, audio-only and windowed records, a writer-style ``split`` line), with
  or without its classes file, has lines deleted, duplicated, swapped, cut short or
  blanked, characters and bytes replaced (invalid UTF-8 included) and values replaced by
  other JSON. Loading it succeeds, with records every ``Manifest`` property and split can
  use, or raises the reader's ``ManifestError`` / ``MissingMediaError`` naming the file
  and a line of it.
  The same files go through what a training run does with ``data.manifest``: the config
  is loaded and ``build_manifest_loader`` builds its loader.

Every example has ``deadline=5000`` ms: a mutation that makes a read or a plan take
longer than 5 s fails.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from avbert.config import load_config
from avbert.data.manifest import ManifestError, MediaRecord, MissingMediaError, load_manifest
from avbert.launch import launcher
from avbert.launch.submit import local_slots, slurm_parameters

ROOT = Path(__file__).resolve().parents[1]
PROFILES = {path.name: path.read_text() for path in sorted((ROOT / "slurm" / "profiles").glob("*.yaml"))}
# Experiments the profiles are tried with: (file, extra launcher arguments).
EXPERIMENTS = {"smoke": (ROOT / "experiments" / "smoke.yaml", []),
               "paper": (ROOT / "experiments" / "sharing_ablation.yaml", ["--scale", "paper", "--only", "xl"])}
CHARACTERS = st.sampled_from(list(":{}[],-#&*!|>'\"\n\t 0123456789abcxyz._=") + ["\u00e9", "\x00", "\ufeff"])
# Values a profile key or list item is set to: edge numbers, other YAML types, YAML 1.1
# oddities (dates, hex, octal), integers past Python's digit limit, deep nesting, anchors,
# tags, block scalars, reserved sbatch options.
YAML_VALUES = st.one_of(
    st.sampled_from(["0", "-1", "1", "2", "8", "64", "0.5", "1.0e+400", ".inf", "-.inf", ".nan", "null", "~", "true",
                     "no", "''", "[]", "{}", "[1, 2]", "{a: 1}", "{1: 2}", "{array: 3}", "{requeue: x}", "[[[]]]",
                     "2024-01-01", "0x10", "0o17", "1_000", "9" * 5000, "0x" + "f" * 5000, "[" * 5000, "&a 3", "*a",
                     "!!binary eA==", "!!python/name:os.system", "!!float 3", "x" * 300, "\"\\x00\"", "|", ">-",
                     "- a", "? a"]),
    st.integers(-10**30, 10**30).map(str),
    st.text(alphabet=":{}[],-'\"abcxyz ._=0129&*!", max_size=10))


def mutate_lines(draw, lines: list[str], kinds: list[str], value, characters) -> list[str]:
    """1 to 4 random edits of ``lines``; ``value`` draws the replacement of a value."""
    lines = list(lines)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(kinds))
        i = draw(st.integers(0, len(lines) - 1))
        if kind == "delete" and len(lines) > 1:
            del lines[i]
        elif kind == "duplicate":
            lines.insert(i, lines[i])
        elif kind == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif kind == "replace" and lines[i]:
            k = draw(st.integers(0, len(lines[i]) - 1))
            lines[i] = lines[i][:k] + draw(characters) + lines[i][k + 1:]
        elif kind == "value":
            lines[i] = value(draw, lines[i])
        elif kind == "cut" and lines[i]:
            lines[i] = lines[i][:draw(st.integers(0, len(lines[i]) - 1))]
        elif kind == "blank":
            lines.insert(i, draw(st.sampled_from(["", " ", "\t", "\r"])))
    return lines


# -- cluster profiles ---------------------------------------------------------------------
def _profile_value(draw, line: str) -> str:
    """The line with its YAML value (after ``key:`` or a list item's ``-``) replaced."""
    item = re.match(r"(\s*- )", line)
    if item:
        return item.group(1) + draw(YAML_VALUES)
    key, colon, _ = line.partition(":")
    return f"{key}: {draw(YAML_VALUES)}" if colon else line


@st.composite
def mutated_profile(draw) -> tuple[str, str]:
    name = draw(st.sampled_from(sorted(PROFILES)))
    lines = mutate_lines(draw, PROFILES[name].splitlines(), ["delete", "duplicate", "swap", "replace", "value"],
                          _profile_value, CHARACTERS)
    return name, "\n".join(lines) + "\n"


def _dry_run(experiment: str, profile: Path, runs: Path) -> tuple[int, str]:
    path, extra = EXPERIMENTS[experiment]
    argv = [str(path), "--dry-run", "--runs-dir", str(runs), "--profile", str(profile), *extra]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = launcher.main(argv)
    return code, err.getvalue()


def _launchable(experiment: str, profile: Path, runs: Path) -> None:
    """What a launch does with the profile after the checks: sbatch parameters of each cell,
    local slots (the local executor's share of this machine)."""
    path, extra = EXPERIMENTS[experiment]
    args = launcher.build_parser().parse_intermixed_args(
        [str(path), "--dry-run", "--runs-dir", str(runs), "--profile", str(profile), *extra])
    launch = launcher.prepare(args)
    for cell in launch.cells:
        slurm_parameters(cell.resources, launch.profile, cell.job_name, runs / "code", dependency="afterok:1")
    assert local_slots(launch.profile) >= 1


@pytest.fixture(scope="module")
def planned_once(tmp_path_factory) -> None:
    """The shipped profiles plan (paper-8x8 at paper scale; every one at tiny scale), and the
    memory column of the paper plan is predicted once here, not in the first timed example."""
    runs = tmp_path_factory.mktemp("shipped") / "runs"
    for name in PROFILES:
        assert _dry_run("smoke", ROOT / "slurm" / "profiles" / name, runs)[0] == 0, name
    assert _dry_run("paper", ROOT / "slurm" / "profiles" / "paper-8x8.yaml", runs)[0] == 0


def _profile_with(name: str, key: str, value: str) -> str:
    """The shipped profile ``name`` with the value of ``key`` replaced by the YAML text ``value``."""
    return re.sub(rf"(?m)^{key}:.*$", lambda _: f"{key}: {value}", PROFILES[name], count=1)


def _one_line(text: str) -> str:
    """Rich wraps long messages at spaces; a path has none."""
    return " ".join(text.split())


@settings(max_examples=50, deadline=5000)
@given(case=mutated_profile(), experiment=st.sampled_from(sorted(EXPERIMENTS)))
# Values a reader must refuse itself: an unbounded memory request (sbatch's --mem cannot
# say it), integers past Python's digit limit (int() fails on the decimal one, printing on
# the hexadecimal one), nesting deeper than Python's stack.
@example(case=("paper-8x8.yaml", _profile_with("paper-8x8.yaml", "mem_per_task_gb", ".inf")), experiment="paper")
@example(case=("local.yaml", _profile_with("local.yaml", "time_limit_min", "9" * 5000)), experiment="smoke")
@example(case=("local.yaml", _profile_with("local.yaml", "nodes", "0x" + "f" * 5000)), experiment="smoke")
@example(case=("local.yaml", _profile_with("local.yaml", "setup", "[" * 5000)), experiment="smoke")
def test_a_mutated_profile_plans_or_is_refused_naming_it(case, experiment, planned_once, tmp_path_factory):
    name, text = case
    folder = tmp_path_factory.mktemp("profile")
    profile = folder / name
    profile.write_text(text)
    code, errors = _dry_run(experiment, profile, folder / "runs")
    assert code in (0, 2), errors
    if code == 2:
        assert str(profile) in _one_line(errors), errors
    else:
        _launchable(experiment, profile, folder / "runs")
    shutil.rmtree(folder, ignore_errors=True)


# -- data manifests -----------------------------------------------------------------------
CLASSES = ["abseiling", "drumming", "zumba"]
MEDIA = ["media/a.mp4", "media/a.flac", "media/b.webm", "media/b.flac", "media/c.flac", "media/d.mp4",
         "media/d.flac"]


def _records() -> list[MediaRecord]:
    """Records as tools/prepare_data.py writes them; paths relative to the manifest's folder."""
    video = dict(fps=30.0, num_frames=300, codec="h264", width=340, height=256, sample_rate=16000,
                 video_bytes=1234, audio_bytes=567)
    return [
        MediaRecord(id="abseiling/a", video="media/a.mp4", audio="media/a.flac", splits=["train"], duration=10.0,
                    label=0, window=[0.0, 10.0], **video),
        MediaRecord(id="b", video="media/b.webm", audio="media/b.flac", splits=["train1", "test2"], duration=4.5,
                    labels=[0, 2], **{**video, "codec": "vp9", "fps": 25.0, "num_frames": 112}),
        MediaRecord(id="c", video=None, audio="media/c.flac", splits=["train", "test1"], duration=5.0, label=2,
                    sample_rate=16000, audio_bytes=890),
        MediaRecord(id="zumba/d", video="media/d.mp4", audio="media/d.flac", splits=["train", "val"], duration=31.0,
                    label=None, window=[3.5, 12.25], vfr=False, **video),
    ]


# The reader also takes the writer-style ``split`` string and records without an id.
MANIFEST_LINES = [r.to_json() for r in _records()] + [
    json.dumps({"video": "media/d.mp4", "audio": "media/d.flac", "split": "train", "duration": 31.0, "label": 1})]
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 10**20) | st.floats() | st.text(max_size=8)
    | st.sampled_from(["media/a.mp4", "/nonexistent.mp4", "", "train", "."]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=2),
    max_leaves=4)
# Text spliced in as a value, unparsed: what JSON does not hold, or Python's json reads oddly.
RAW_VALUES = st.sampled_from(["NaN", "-Infinity", "1" * 5000, "[" * 5000, "{\"a\":", "tru", "0x1", "01", "1e999",
                              "'x'", "\"\\ud800\"", "\"\\u0000\""])
# "\udcff" is written as the byte 0xff (surrogateescape): a line that is not UTF-8.
MANIFEST_CHARACTERS = st.sampled_from(list(":{}[],-\"\\ 0123456789abcxyz._n\t\r") + ["\u00e9", "\x00", "\ufeff",
                                                                                     "\udcff"])
SENTINEL = "\ue000"


def _set_raw(data: dict, key: str, raw: str) -> str:
    """``data`` as a JSON line whose ``key`` holds the text ``raw``, unparsed."""
    return json.dumps({**data, key: SENTINEL}).replace(json.dumps(SENTINEL), raw)


def _spliced(i: int, key: str, raw: str) -> bytes:
    """The valid manifest with ``key`` of its line ``i + 1`` set to the text ``raw``."""
    lines = list(MANIFEST_LINES)
    lines[i] = _set_raw(json.loads(lines[i]), key, raw)
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")


def _manifest_value(draw, line: str) -> str:
    """The line with one field set to another JSON value or raw text, or replaced whole."""
    try:
        data = json.loads(line)
    except (ValueError, RecursionError):  # a line an earlier edit broke
        data = None
    if not isinstance(data, dict) or draw(st.integers(0, 9)) == 0:
        return json.dumps(draw(JSON_VALUES))
    key = draw(st.sampled_from(sorted(data) + ["split", "index", "line", "extra"]))
    if draw(st.booleans()):
        return json.dumps({**data, key: draw(JSON_VALUES)})
    return _set_raw(data, key, draw(RAW_VALUES))


@st.composite
def mutated_manifest(draw) -> bytes:
    lines = mutate_lines(draw, MANIFEST_LINES,
                          ["delete", "duplicate", "swap", "replace", "value", "value", "cut", "blank"],
                          _manifest_value, MANIFEST_CHARACTERS)
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")


def _write_dataset(folder: Path, manifest: bytes, with_classes: bool = True) -> Path:
    """The manifest, its media files and, ``with_classes``, its class names (else the reader
    counts the classes from the labels)."""
    for name in MEDIA:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"\x00")
    path = folder / "set.jsonl"
    path.write_bytes(manifest)
    if with_classes:
        path.with_name("set.classes.txt").write_text("".join(f"{name}\n" for name in CLASSES))
    return path


def _assert_names_a_line(err: Exception, path: Path, manifest: bytes) -> None:
    """The message names the manifest and a line of it (``FILE:LINE:`` or ``line LINE:``)."""
    message = str(err)
    assert str(path) in message, message
    lines = re.findall(re.escape(str(path)) + r":(\d+):", message) + re.findall(r"\bline (\d+):", message)
    assert lines, message
    assert all(1 <= int(n) <= manifest.count(b"\n") for n in lines), message


def _assert_usable(manifest) -> None:
    """What the loaders read of a loaded manifest works for it: classes, kind, codecs, splits."""
    assert manifest.num_classes >= 0 and isinstance(manifest.multilabel, bool)
    assert isinstance(manifest.audio_only, bool) and all(isinstance(c, str) for c in manifest.codecs)
    for split in {s for r in manifest.records for s in r.splits}:
        assert manifest.split(split).records
    for record in manifest.records:
        assert all(isinstance(p, str) for p in record.paths()) and record.line >= 1


LINE_ERRORS = (ManifestError, MissingMediaError)


@settings(max_examples=200, deadline=5000)
@given(manifest=mutated_manifest(), with_classes=st.booleans())
# Lines that a reader trusting JSON types, or decoding the file as a whole, fails on
# outside its own errors, and a missing file whose line must be named.
@example(manifest=_spliced(0, "splits", "NaN"), with_classes=True)
@example(manifest=_spliced(0, "audio", "NaN"), with_classes=True)
@example(manifest=_spliced(1, "labels", "[0, \"x\"]"), with_classes=False)
@example(manifest=_spliced(2, "audio", "1" * 5000), with_classes=True)
@example(manifest=_spliced(3, "id", "\"\udcff\""), with_classes=True)
@example(manifest=_spliced(0, "video", "\":edia/a.mp4\""), with_classes=True)
def test_a_mutated_manifest_loads_or_is_refused_naming_the_line(manifest, with_classes, tmp_path_factory):
    folder = tmp_path_factory.mktemp("manifest")
    path = _write_dataset(folder, manifest, with_classes)
    try:
        loaded = load_manifest(path)
    except LINE_ERRORS as err:
        _assert_names_a_line(err, path, manifest)
    else:
        _assert_usable(loaded)
    shutil.rmtree(folder, ignore_errors=True)


@settings(max_examples=60, deadline=5000)
@given(manifest=mutated_manifest())
def test_a_mutated_manifest_builds_a_loader_or_is_refused_naming_the_line(manifest, tmp_path_factory):
    from avbert.data.build import build_manifest_loader

    folder = tmp_path_factory.mktemp("loader")
    path = _write_dataset(folder, manifest)
    cfg = load_config(None, ["data.preset=tiny", "data.source=manifest", f"data.manifest={path}", "data.split=train",
                             "data.batch_size=1", "data.num_workers=0"])
    try:
        build_manifest_loader(cfg.data, train=True)
    except LINE_ERRORS as err:
        if "has no record in split 'train'" in str(err):  # a fault of the whole file, not of a line
            assert str(path) in str(err)
        else:
            _assert_names_a_line(err, path, manifest)
    shutil.rmtree(folder, ignore_errors=True)
