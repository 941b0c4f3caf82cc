"""Strict typed configuration: defaults -> YAML -> command-line overrides.

Every config is a tree of dataclasses. A YAML mapping is merged onto the
defaults key by key; unknown keys, wrong types and values outside a
``Literal`` are refused with the file, the full dotted key path and either the
closest valid key or the allowed values. Overrides use ``a.b.c=value`` with the
value parsed as YAML (``train.steps=100``, ``model.fusion=late``).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml


class _SafeLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that an integer past Python's digit limit
    (``sys.get_int_max_str_digits``) is a YAML error at its line, like any other bad value,
    instead of the ValueError that ``int()`` raises, or that every message printing a
    hexadecimal or binary one that long would raise later."""

    def construct_yaml_int(self, node):
        try:
            value = super().construct_yaml_int(node)
            str(value)
        except ValueError as err:
            raise yaml.constructor.ConstructorError(None, None, f"cannot read this integer ({str(err).split(';')[0]})",
                                                    node.start_mark) from None
        return value


_SafeLoader.add_constructor("tag:yaml.org,2002:int", _SafeLoader.construct_yaml_int)


def _load_yaml(text: str) -> Any:
    """``yaml.safe_load``, with nesting deeper than Python's stack (RecursionError) a YAML
    error at the line where reading stopped."""
    loader = _SafeLoader(text)
    try:
        return loader.get_single_data()
    except RecursionError:
        raise yaml.MarkedYAMLError(problem="nested too deeply", problem_mark=loader.get_mark()) from None
    finally:
        loader.dispose()


class ConfigError(ValueError):
    """A configuration that cannot be accepted, with where and why."""

    def __init__(self, message: str, source: str | None = None, key: str | None = None):
        self.source = source
        self.key = key
        where = ": ".join(part for part in (source, key) if part)
        super().__init__(f"{where}: {message}" if where else message)


def _closest(name: str, candidates: list[str]) -> str:
    match = difflib.get_close_matches(name, candidates, n=1, cutoff=0.5)
    if match:
        return f"did you mean '{match[0]}'?"
    return "valid keys: " + ", ".join(sorted(candidates))


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, source: str | None, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert where lossless."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if value is None:
            raise ConfigError(f"expected a mapping for {tp.__name__}, got null", source, key)
        return merge_into(tp(), value, source, key)
    if origin is Literal:
        if value not in args:
            allowed = ", ".join(repr(a) for a in args)
            raise ConfigError(f"invalid value {value!r}; allowed values: {allowed}", source, key)
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, source, key)
            except ConfigError:
                continue
        raise ConfigError(f"expected {_type_name(tp)}, got {value!r}", source, key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"expected a list ({_type_name(tp)}), got {value!r}", source, key)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"expected {len(args)} items, got {len(value)}", source, key)
            return tuple(_coerce(v, a, source, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_coerce(v, item, source, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"expected a mapping, got {value!r}", source, key)
        ktp, vtp = args if args else (Any, Any)
        return {_coerce(k, ktp, source, key): _coerce(v, vtp, source, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"expected true or false, got {value!r}", source, key)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"expected an integer, got {value!r}", source, key)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"expected a number, got {value!r}", source, key)
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"expected a string, got {value!r}", source, key)
    return value


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def merge_into(obj: Any, data: Any, source: str | None = None, prefix: str = "") -> Any:
    """Return a copy of dataclass ``obj`` with the mapping ``data`` merged in."""
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping, got {data!r}", source, prefix or None)
    fields = _field_types(type(obj))
    updates = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            raise ConfigError(f"unknown key; {_closest(str(name), list(fields))}", source, key)
        tp = fields[name]
        current = getattr(obj, name)
        if isinstance(value, dict) and "preset" in value and hasattr(type(current), "from_preset"):
            current = _from_preset(type(current), value["preset"], source, f"{key}.preset")
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            updates[name] = merge_into(current, value, source, key)
        elif isinstance(current, dict) and isinstance(value, dict):
            # Mapping fields (loss weights) merge key by key: setting one entry
            # keeps the others rather than dropping them to nothing.
            updates[name] = {**current, **_coerce(value, tp, source, key)}
        else:
            updates[name] = _coerce(value, tp, source, key)
    merged = dataclasses.replace(obj, **updates)
    check = getattr(merged, "validate", None)
    if check is not None:
        try:
            check()
        except ValueError as err:
            if isinstance(err, ConfigError):
                raise
            raise ConfigError(str(err), source, prefix or None) from None
    return merged


def _from_preset(cls: type, name: Any, source: str | None, key: str) -> Any:
    try:
        return cls.from_preset(name)
    except ValueError as err:
        raise ConfigError(str(err), source, key) from None


def deep_merge(base: dict, extra: dict) -> dict:
    """Raw mapping merge: ``extra`` wins, nested mappings merge key by key."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=3"`` -> (["a", "b"], 3); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value", "command line")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override {text!r} has an empty key", "command line")
    try:
        value = _load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        problem = str(getattr(err, "problem", None) or err).splitlines()[0]
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({problem})", "command line",
                          key.strip()) from None
    return key.strip().split("."), value


def overrides_to_dict(overrides: list[str]) -> dict:
    """Turn ``["a.b=1", "a.c=x"]`` into ``{"a": {"b": 1, "c": "x"}}``."""
    tree: dict = {}
    for text in overrides:
        path, value = parse_override(text)
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r} conflicts with an earlier one", "command line")
        node[path[-1]] = value
    return tree


MAX_YAML_VALUES = 100_000  # far above any config or experiment file; aliases counted expanded


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; a missing, binary, malformed or alias-bomb file is a ConfigError
    naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("file not found", str(path))
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"not a text file: byte {err.start} is not UTF-8", str(path)) from None
    try:
        data = _load_yaml(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"not valid YAML: {err}", str(path)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping", str(path))
    _check_expanded_size(data, str(path))
    return data


def _check_expanded_size(data: Any, source: str) -> None:
    """Refuse a document that holds more than ``MAX_YAML_VALUES`` values once its aliases are
    expanded (aliases nested in aliases grow exponentially: a 1 kB file can stand for
    billions of values, which every later walk over the config would visit)."""
    left = MAX_YAML_VALUES
    stack = [data]
    while stack:
        node = stack.pop()
        left -= 1
        if left < 0:
            raise ConfigError(f"more than {MAX_YAML_VALUES} values once its YAML aliases are expanded "
                              "(aliases nested in aliases)", source)
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def to_dict(obj: Any) -> Any:
    """A dataclass tree as plain YAML-friendly data (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def dump_yaml(obj: Any, path: str | Path | None = None) -> str:
    """Write the resolved config as YAML; it loads back to an equal config."""
    text = yaml.safe_dump(to_dict(obj), sort_keys=False)
    if path is not None:
        Path(path).write_text(text)
    return text
