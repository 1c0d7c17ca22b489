"""User-facing errors.

Bad input raises :class:`InputError`, whose message names the file, the field, the
value and what was expected, on one line. The CLI turns any :class:`SeltuneError`
into that one line on stderr and a non-zero exit, with no traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

_MISSING = object()


class SeltuneError(Exception):
    """Base class of errors caused by the user's input or environment, not by a bug."""


class InputError(SeltuneError, ValueError):
    """Bad input: a file, a field in it, its value, and what was expected.

    Example message: ``runs/b/manifest.json: class_counts has 99 entries: expected 100``.
    """

    def __init__(
        self,
        problem: str | None = None,
        *,
        file: str | Path | None = None,
        field: str | None = None,
        value: Any = _MISSING,
        expected: str | None = None,
    ) -> None:
        self.file = None if file is None else str(file)
        self.field = field
        self.value = None if value is _MISSING else value
        self.expected = expected
        parts: list[str] = []
        if self.file is not None:
            parts.append(self.file)
        head = field or ""
        if value is not _MISSING:
            head = f"{head}={_short(value)}" if head else _short(value)
        if head:
            parts.append(head)
        if problem:
            parts.append(problem)
        if expected:
            parts.append(f"expected {expected}")
        super().__init__(": ".join(parts) if parts else "invalid input")


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
