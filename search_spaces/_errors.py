"""The one error type of :mod:`search_spaces`.

``search_spaces`` may not import ``core`` (it is stdlib only), so it cannot raise
``core.errors.InputError`` itself. :class:`SpaceError` is a ``ValueError`` whose ``str``
is already the complete one-line message the CLI prints; the tuning layer re-raises
it as an ``InputError`` (``InputError(str(exc))``) so the CLI shows it without a
traceback.
"""

from __future__ import annotations

from typing import Any

_MISSING: Any = object()


class SpaceError(ValueError):
    """A bad search space: where it came from, which parameter, the value, what was expected.

    ``str(exc)`` is one line of the form
    ``SOURCE: param NAME: value KEY=VALUE: PROBLEM: expected EXPECTED`` where the parts
    that do not apply are left out, e.g.
    ``my_space.yaml: param kappa: value low=0.0: log scale needs positive bounds: expected low > 0``.

    Attributes:
        source: the file path, preset name or ``"<space>"`` the space came from.
        param: the parameter's name, or ``None`` for space-level problems.
        key: the attribute of the parameter (``"low"``, ``"choices"``, ...) or ``None``.
        value: the offending value (``None`` when not given).
        problem: what is wrong, in words (may be ``None``).
        expected: what would have been accepted.
    """

    def __init__(
        self,
        source: str,
        *,
        param: str | None = None,
        key: str | None = None,
        value: Any = _MISSING,
        problem: str | None = None,
        expected: str | None = None,
    ) -> None:
        self.source = str(source)
        self.param = param
        self.key = key
        self.value = None if value is _MISSING else value
        self.problem = problem
        self.expected = expected
        parts = [self.source]
        if param is not None:
            parts.append(f"param {param}")
        if value is not _MISSING:
            shown = _short(value)
            parts.append(f"value {key}={shown}" if key else f"value {shown}")
        elif key is not None:
            parts.append(key)
        if problem:
            parts.append(problem)
        if expected:
            parts.append(f"expected {expected}")
        super().__init__(_one_line(": ".join(parts)))


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(text: str) -> str:
    """Collapse any newlines (e.g. from a YAML parser's message) so the CLI prints one line."""
    return " ".join(text.split())
