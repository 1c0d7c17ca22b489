"""Loading spaces: a preset name, or a user's ``.json`` / ``.yaml`` / ``.yml`` file."""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path

from core.unique_keys import DuplicateKey, json_loads_unique, yaml_load_unique
from search_spaces._errors import SpaceError
from search_spaces._space import SearchSpace

_SUFFIXES = (".json", ".yaml", ".yml")


def read_space_file(path: str | Path) -> SearchSpace:
    """Parse and validate (without known keys) a JSON or YAML space file.

    YAML is read with a ``yaml.SafeLoader`` (no object construction). A key given twice
    in one mapping (YAML or JSON) is an error naming the key and its line: both parsers
    would otherwise keep the last value silently, so a user who tuned ``lr`` twice
    would search a space they did not write. Every error names the file.
    """
    path = Path(path)
    source = str(path)
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise SpaceError(source, problem="unsupported file type",
                         expected="a .json, .yaml or .yml file")
    if not path.is_file():
        raise SpaceError(source, problem="no such file", expected="a JSON or YAML search-space file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpaceError(source, problem=f"cannot read: {exc}",
                         expected="a readable UTF-8 text file") from None
    try:
        if suffix == ".json":
            try:
                data = json_loads_unique(text)
            except json.JSONDecodeError as exc:
                raise SpaceError(source, problem=f"invalid JSON: {exc}",
                                 expected="a JSON search space") from None
        else:
            import yaml  # lazily: search_spaces is otherwise stdlib only

            try:
                data = yaml_load_unique(text)
            except yaml.YAMLError as exc:
                raise SpaceError(source, problem=f"invalid YAML: {exc}",
                                 expected="a YAML search space") from None
    except DuplicateKey as exc:
        fmt = "JSON" if suffix == ".json" else "YAML"
        problem = (f"duplicate key on line {exc.line} (first on line {exc.first_line}; "
                   f"{fmt} would keep the last value)" if exc.line is not None
                   else f"duplicate key ({fmt} would keep the last value)")
        raise SpaceError(source, key=exc.key, problem=problem,
                         expected="each key once per mapping") from None
    return SearchSpace.from_dict(data, source=source)


def load_space(
    preset_or_path: str | Path,
    trainable: str | None = None,
    known_keys: Collection[str] | None = None,
) -> SearchSpace:
    """A preset by name, or a space read from a ``.json`` / ``.yaml`` / ``.yml`` file.

    Args:
        preset_or_path: a key of :data:`PRESETS` (``"argse-selective"``,
            ``"argse-pretrain"``, ``"stage1"``) or a file path. A preset name wins
            over a file of the same name; write ``./stage1.yaml`` for the file.
        trainable: if given, the space must be for this trainable (else an error).
        known_keys: if given, the trainable's config field names; every parameter and
            fixed key must be one of them.

    Raises:
        SpaceError: one line naming the preset or file, the parameter and the value.
    """
    from search_spaces._presets import PRESETS

    key = str(preset_or_path)
    if key in PRESETS:
        space, source = PRESETS[key], key
    elif Path(key).suffix.lower() in _SUFFIXES:
        space, source = read_space_file(key), key
    else:
        raise SpaceError("--space", value=key, problem="neither a preset nor a space file",
                         expected=f"one of {', '.join(PRESETS)} or a .json/.yaml/.yml file")
    if trainable is not None and space.trainable != trainable:
        raise SpaceError(source, key="trainable", value=space.trainable,
                         problem="space is for another trainable",
                         expected=f"trainable {trainable!r}")
    if known_keys is not None:
        space.validate(known_keys=known_keys, source=source)
    return space
