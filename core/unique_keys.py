"""JSON and YAML parsing that refuses a key given twice in one mapping.

Both parsers silently keep the last value of a repeated key, so a user who wrote
``lr`` twice would train or search with a value they may not have meant. Config files
(``train --config``) and search-space files both read through here; each caller turns
:class:`DuplicateKey` into its own one-line error naming the file.
"""

from __future__ import annotations

import json
from typing import Any


class DuplicateKey(ValueError):
    """``key`` appears twice in one mapping; ``line``/``first_line`` are 1-based
    (``None`` for JSON, whose standard parser gives no positions to a hook)."""

    def __init__(self, key: str, line: int | None = None, first_line: int | None = None):
        self.key, self.line, self.first_line = key, line, first_line
        where = (f" on line {line} (first on line {first_line})"
                 if line is not None else "")
        super().__init__(f"duplicate key{where}")


def json_loads_unique(text: str) -> Any:
    """:func:`json.loads`, raising :class:`DuplicateKey` on a repeated key."""
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise DuplicateKey(key)
            out[key] = value
        return out

    return json.loads(text, object_pairs_hook=hook)


def yaml_load_unique(text: str) -> Any:
    """``yaml.safe_load`` (no object construction), raising :class:`DuplicateKey` on a
    key written twice in one mapping. A key merged in by ``<<: *base`` and then set
    explicitly is YAML's way of overriding, not a repeat, and is accepted."""
    import yaml  # lazily: callers that never read YAML do not import it

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
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
                        raise DuplicateKey(str(key), key_node.start_mark.line + 1, first)
                    seen[key] = key_node.start_mark.line + 1
            return super().construct_mapping(node, deep=deep)

    return yaml.load(text, Loader=UniqueKeyLoader)
