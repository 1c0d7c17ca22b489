"""Values made fit for JSON, in one place: every file and report seltune writes uses it.

numpy and torch scalars become Python numbers, arrays and tensors lists, non-finite
floats ``None`` (strict JSON has no NaN), bools in metric dicts ``0``/``1`` (Tune and
the ledger keep numbers). Neither numpy nor torch is imported here: values are
recognised by what they offer (``item``, ``tolist``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import PurePath
from typing import Any


def _python_scalar(value: Any) -> Any:
    """A 0-d numpy/torch value as a Python scalar; anything else unchanged."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0 and not isinstance(
            value, (str, bytes)):
        try:
            return value.item()
        except (TypeError, ValueError):  # an object with an unrelated item()
            return value
    return value


def to_jsonable(obj: Any) -> Any:
    """A JSON-safe copy of ``obj``: mappings (keys as strings), lists and tuples,
    numpy/torch arrays and scalars, Paths; non-finite floats become ``None``; any
    other object its ``str``."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    obj = _python_scalar(obj)
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):  # arrays, tensors
        return to_jsonable(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, PurePath):
        return str(obj)
    return str(obj)


def scalar_metrics(metrics: Mapping[str, Any], *, skip: Iterable[str] = (),
                   keep_none: bool = False) -> dict[str, Any]:
    """The scalar entries of ``metrics`` (numbers and strings; bools as 0/1; 0-d
    numpy/torch values as Python numbers), without the keys in ``skip``; ``None``
    values are kept only with ``keep_none``. Non-finite floats stay (Tune and the ledger
    hold them; :func:`to_jsonable` turns them into ``None`` when written)."""
    skipped = set(skip)
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if key in skipped:
            continue
        value = _python_scalar(value)
        if isinstance(value, bool):
            out[key] = int(value)
        elif isinstance(value, (int, float, str)) or (value is None and keep_none):
            out[key] = value
    return out
