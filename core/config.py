"""Config dataclasses: building them from dicts, files and ``key=value`` overrides.

Every trainable's config is a dataclass whose defaults come from the seeds. This module
turns user input into one, rejecting unknown keys and wrongly typed values with an
:class:`InputError` that names the source, the key and the value. Range checks live in
each dataclass's ``validate()`` (called from ``__post_init__``).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from core.errors import InputError
from core.unique_keys import DuplicateKey, json_loads_unique, yaml_load_unique

C = TypeVar("C")


def config_from_dict(cls: type[C], data: Mapping[str, Any], source: str = "config") -> C:
    """Build ``cls`` from ``data``; unknown keys and bad types raise InputError.

    ``source`` names where the dict came from (a file path, ``--set``) for the message.
    """
    if not isinstance(data, Mapping):
        raise InputError(file=source, value=type(data).__name__, expected="a mapping of key: value")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise InputError(
                "unknown config key", file=source, field=key,
                expected=f"one of {', '.join(sorted(fields))}",
            )
        kwargs[key] = _coerce(value, hints[key], source, key)
    try:
        return cls(**kwargs)
    except InputError as exc:
        if exc.file is None:
            raise InputError(str(exc), file=source) from None
        raise


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain-JSON dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=list))


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or YAML mapping of config keys; a key given twice is an error."""
    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", file=path, expected="a JSON or YAML config file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read: {exc}", file=path,
                         expected="a readable UTF-8 JSON or YAML file") from None
    is_yaml = path.suffix.lower() in (".yaml", ".yml")
    try:
        data = yaml_load_unique(text) if is_yaml else json_loads_unique(text)
    except DuplicateKey as exc:
        # Either parser would keep the last value, so `lr` written twice would train
        # with one the user may not have meant.
        raise InputError(str(exc), file=path, field=exc.key,
                         expected="each key once per mapping") from None
    except Exception as exc:  # parse errors of either format
        raise InputError(f"cannot parse: {exc}".splitlines()[0], file=path) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(file=path, value=type(data).__name__, expected="a mapping of key: value")
    return data


def parse_overrides(pairs: Iterable[str], source: str = "--set") -> dict[str, Any]:
    """``["lr=1e-3", "hidden_dims=[64,32]"]`` -> dict; values parse as JSON, else string."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(file=source, value=pair, expected="key=value")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out[key.strip()] = value
    return out


def build_config(
    cls: type[C],
    config_file: str | Path | None = None,
    overrides: Iterable[str] = (),
    extra: Mapping[str, Any] | None = None,
) -> C:
    """Defaults <- config file <- ``extra`` <- ``--set`` overrides, validated once."""
    data: dict[str, Any] = {}
    source = "--set"
    if config_file is not None:
        data.update(load_config_file(config_file))
        config_from_dict(cls, data, source=str(config_file))  # report file errors by file
        source = f"{config_file} + --set"
    data.update(extra or {})
    data.update(parse_overrides(overrides))
    return config_from_dict(cls, data, source=source)


def _coerce(value: Any, hint: Any, source: str, key: str) -> Any:
    """Check ``value`` against a simple type hint, converting ints to floats etc."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, source, key)
            except InputError as exc:
                errors.append(exc)
        raise errors[0] if errors else InputError(file=source, field=key, value=value)
    if origin is typing.Literal:
        if value not in args:
            raise InputError(file=source, field=key, value=value,
                             expected="one of " + ", ".join(map(str, args)))
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise InputError(file=source, field=key, value=value, expected="a list")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, source, key) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise InputError(file=source, field=key, value=value, expected="a mapping")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise InputError(file=source, field=key, value=value, expected="true or false")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise InputError(file=source, field=key, value=value, expected="an integer")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(file=source, field=key, value=value, expected="a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise InputError(file=source, field=key, value=value, expected="a string")
        return value
    return value


def check_range(name: str, value: float, *, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False) -> None:
    """Raise InputError unless ``value`` lies in the stated interval."""
    ok = True
    if low is not None:
        ok &= value > low if low_open else value >= low
    if high is not None:
        ok &= value < high if high_open else value <= high
    if not ok:
        lo = "(-inf" if low is None else f"{'(' if low_open else '['}{low}"
        hi = "inf)" if high is None else f"{high}{')' if high_open else ']'}"
        raise InputError(field=name, value=value, expected=f"a value in {lo}, {hi}")
