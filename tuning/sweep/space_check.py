"""A search space's values checked against the trainable's config, before a sweep starts.

:meth:`search_spaces.SearchSpace.validate` checks a space on its own (bounds ordered,
choices distinct, names known). It cannot know what the trainable accepts: a choice
``gate: [learned, bogus]``, ``dropout`` up to 1.5 or a ``float`` parameter for the
integer ``cycles`` are all well-formed spaces. Unchecked, every trial that draws such
a value fails three times inside Ray with a traceback (and the sweep may still exit 0
if another trial survives). :func:`check_space_values` builds the trainable's config
once for each value a trial could be given at the edges of the space — every choice,
each bound, and a float's midpoint (which an integer field refuses) — with the sweep's
fixed values and the defaults for the rest, and raises one line naming the space,
the parameter, the value and what the config expects.

A value is refused only if the config refuses it with everything else at the sweep's
fixed values or defaults (and the parameter's condition made to hold), so a space is
never rejected for a combination a trial could not draw.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core.errors import InputError
from search_spaces import Categorical, Float, Int, Param, SearchSpace, SpaceError

MIDDLE = "between"


def _edge_values(p: Param) -> list[tuple[str, Any]]:
    """``(key, value)`` pairs to try: every choice, or the bounds (+ a float's midpoint)."""
    if isinstance(p, Categorical):
        return [("choices", c) for c in p.choices]
    if isinstance(p, Int):
        return [("low", p.low), ("high", p.top)]
    assert isinstance(p, Float)
    # Not the exact middle: [1, 3] would give 2.0, which an integer field accepts
    # although nearly every draw (2.37...) is refused.
    frac = 0.5 ** 0.5
    mid = (p.low * (p.top / p.low) ** frac if p.log else p.low + (p.top - p.low) * frac)
    if p.step is not None:  # the grid point nearest it, which a trial can draw
        mid = p.low + round((mid - p.low) / p.step) * p.step
    return [("low", p.low), ("high", p.top), (MIDDLE, mid)]


def _activating(space: SearchSpace, p: Param) -> dict[str, Any]:
    """Values of ``p``'s ancestors under which ``p`` is active (first matching choice)."""
    out: dict[str, Any] = {}
    cond = p.condition
    while cond is not None:
        out[cond.parent] = cond.values[0]
        cond = space[cond.parent].condition
    return out


def check_space_values(space: SearchSpace, config_cls: type, fixed: Mapping[str, Any], *,
                       source: str) -> None:
    """Raise :class:`core.errors.InputError` (one line) if the trainable's config refuses a
    value the space can give a trial.

    Args:
        space: the space as the sweep will search it (``--set`` keys already fixed).
        config_cls: the trainable's config dataclass.
        fixed: the sweep's fixed values (``space.fixed`` + ``--set`` + the operating point).
        source: the space's file or preset name, for the message.
    """
    from core.config import config_from_dict

    for p in space.ordered_params():
        base = {**fixed, **_activating(space, p)}
        for key, value in _edge_values(p):
            try:
                config_from_dict(config_cls, {**base, p.name: value}, source=source)
            except InputError as exc:
                raise InputError(_message(source, p, key, value, exc, config_cls)) from None


def _message(source: str, p: Param, key: str, value: Any, exc: InputError,
             config_cls: type) -> str:
    # config_from_dict re-raises a dataclass's own range error as one message prefixed
    # with the source, so the parts are recovered from the text:
    # "SOURCE: FIELD=VALUE[: PROBLEM]: expected WHAT".
    inner = str(exc)
    if inner.startswith(f"{source}: "):
        inner = inner[len(source) + 2:]
    head, sep, expected = inner.partition(": expected ")
    if not sep:
        head, expected = inner, "a value the trainable's config accepts"
    problem = f"refused by {config_cls.__name__}"
    if not head.startswith(f"{p.name}="):  # a rule between fields (alpha_min <= alpha_max)
        problem += f" with the other values fixed or at their defaults ({head})"
    if key == MIDDLE:
        return str(SpaceError(
            source, param=p.name, key="type", value=p.kind,
            problem=f"{problem} at {value!r}, a value its trials can draw between the bounds",
            expected=f"{expected} (declare it type: int)" if expected == "an integer"
            else expected))
    return str(SpaceError(source, param=p.name, key=key, value=value, problem=problem,
                          expected=expected))


__all__ = ["check_space_values"]
