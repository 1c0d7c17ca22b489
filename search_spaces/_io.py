"""Loading spaces: a preset name, or a user's ``.json`` / ``.yaml`` / ``.yml`` file."""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

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
    if suffix == ".json":
        try:
            data = json.loads(text, object_pairs_hook=_unique_json_keys(source))
        except json.JSONDecodeError as exc:
            raise SpaceError(source, problem=f"invalid JSON: {exc}",
                             expected="a JSON search space") from None
    else:
        import yaml  # lazily: search_spaces is otherwise stdlib only

        try:
            data = yaml.load(text, Loader=_unique_key_loader(source))
        except yaml.YAMLError as exc:
            raise SpaceError(source, problem=f"invalid YAML: {exc}",
                             expected="a YAML search space") from None
    return SearchSpace.from_dict(data, source=source)


def _unique_json_keys(source: str):
    """``object_pairs_hook`` for :func:`json.loads` that refuses a repeated key."""

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise SpaceError(source, key=key, problem="duplicate key (JSON would keep "
                                 "the last value)", expected="each key once per mapping")
            out[key] = value
        return out

    return hook


def _unique_key_loader(source: str):
    """A ``yaml.SafeLoader`` subclass whose mappings refuse a repeated key.

    Built per call (and lazily) so ``search_spaces`` imports no YAML at import time and
    the error can name ``source``.
    """
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                # Only the keys written in this mapping: a merged-in key (``<<: *base``)
                # that is then set explicitly is YAML's way of overriding, not a repeat.
                seen: dict[Any, int] = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(key_node, deep=True)
                    try:
                        first = seen.get(key)
                    except TypeError:  # an unhashable key: SafeLoader's own error follows
                        continue
                    if first is not None:
                        raise SpaceError(source, key=str(key),
                                         problem=f"duplicate key on line "
                                         f"{key_node.start_mark.line + 1} (first on line "
                                         f"{first}; YAML would keep the last value)",
                                         expected="each key once per mapping")
                    seen[key] = key_node.start_mark.line + 1
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


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
