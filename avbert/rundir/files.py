"""File names of the run directory, the atomic writer, the tolerant readers."""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import yaml

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
STATUS = "status.json"
EVAL = "eval.json"
JOURNAL = "job.json"
INDEX = "index.json"


@contextmanager
def replaced_on_success(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` when the block
    ends without an exception (a reader then sees the old file or the new one, never half
    of one), removed when it raises. The name carries the process id: two processes
    writing the same file do not share a temporary."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically."""
    with replaced_on_success(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data: Any, sort_keys: bool = False) -> None:
    """Replace ``path`` with ``data`` as indented JSON, atomically."""
    write_text(path, json.dumps(data, indent=1, sort_keys=sort_keys) + "\n")


def read_json(path: str | Path) -> Optional[dict]:
    """The JSON object in ``path``; None when it is absent, unreadable, malformed or not an object."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_yaml_mapping(path: str | Path) -> Optional[dict]:
    """The YAML mapping in ``path``; None when it is absent, unreadable, malformed or not a mapping."""
    try:
        value = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return None
    return value if isinstance(value, dict) else None


def read_jsonl(path: str | Path) -> tuple[list[dict], int]:
    """(the JSON objects of the lines of ``path``, how many lines were not one): a line a
    killed writer left half written is skipped and counted. An absent file reads as ([], 0)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return [], 0
    records, bad = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            bad += 1
    return records, bad


def file_sha256(path: str | Path) -> Optional[str]:
    """The SHA-256 of a file's bytes (a manifest's, recorded with the runs that read it), or
    None when it cannot be read."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()
