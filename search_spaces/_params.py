"""Parameter declarations: :class:`Float`, :class:`Int`, :class:`Categorical`, :class:`Condition`.

Neutral declarations in the manner of Syne Tune's and Optuna's distributions: they say
*what* may be sampled, never *how*. Bound semantics, stated once for every kind:

- ``Float(low, high)``: the closed interval ``[low, high]`` (both ends allowed). With
  ``log=True`` sampling is uniform in ``log(x)`` and needs ``low > 0``. With ``step``,
  the values are ``low + k*step`` for integers ``k >= 0`` with ``low + k*step <= high``;
  ``high`` is the largest value only when ``high - low`` is a multiple of ``step``.
- ``Int(low, high)``: the integers ``low, low+step, ...`` up to and *including* ``high``
  when it lies on that grid (unlike Python's ``range``). ``log=True`` needs ``low >= 1``
  and ``step == 1`` (the same rule as Optuna's ``IntDistribution``).
- ``Categorical(choices)``: one of ``choices`` (JSON scalars: str, int, float, bool, None).

A :class:`Condition` makes a parameter *conditional*: it exists in a trial only when
its ``parent`` (a :class:`Categorical` of the same space) took one of ``values``. E.g.
SelectiveNet's ``sn_lambda`` only when ``loss == "selectivenet"``.

The constructors only normalise (ints to floats for :class:`Float` bounds, lists to
tuples); every rule is checked by :meth:`SearchSpace.validate`, which knows the source
to name in the message.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar

from search_spaces._errors import SpaceError

#: Scalars a Categorical choice (and a Condition value) may be: what JSON, YAML and
#: Optuna's CategoricalDistribution all carry unchanged.
CHOICE_TYPES = (str, int, float, bool, type(None))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _grid_top(low: float | int, high: float | int, step: float | int) -> float | int:
    """Largest ``low + k*step <= high``, computed in decimal so 0.1-steps do not drift."""
    if _is_int(low) and _is_int(high) and _is_int(step):
        return low + ((high - low) // step) * step
    d_low, d_high, d_step = (Decimal(str(v)) for v in (low, high, step))
    k = (d_high - d_low) // d_step
    return float(d_low + k * d_step)


@dataclass(frozen=True)
class Condition:
    """The owning parameter is active only when ``parent`` takes one of ``values``.

    Args:
        parent: name of a :class:`Categorical` parameter of the same space.
        values: the parent's choices for which the owner is active (non-empty).
    """

    parent: str
    values: tuple

    def __post_init__(self) -> None:
        if isinstance(self.values, list):
            object.__setattr__(self, "values", tuple(self.values))
        elif isinstance(self.values, CHOICE_TYPES):
            # ``values: bce`` in YAML is a natural shorthand for a single value.
            object.__setattr__(self, "values", (self.values,))

    def holds(self, parent_value: Any) -> bool:
        """Whether the parent's value activates the owner (equality *and* type: True != 1)."""
        return _index(self.values, parent_value) is not None

    def to_dict(self) -> dict[str, Any]:
        return {"parent": self.parent, "values": list(self.values)}


class _Param:
    """Behaviour shared by the three kinds (name, condition, checking, serialising)."""

    kind: ClassVar[str]
    name: str
    condition: Condition | None

    def _fail(self, source: str, key: str, value: Any, expected: str, problem: str | None = None):
        raise SpaceError(source, param=self.name, key=key, value=value,
                         problem=problem, expected=expected)

    def _check_condition_shape(self, source: str) -> None:
        cond = self.condition
        if cond is None:
            return
        if not isinstance(cond, Condition):
            self._fail(source, "condition", cond, "a Condition(parent, values)")
        if not isinstance(cond.parent, str) or not cond.parent:
            self._fail(source, "condition.parent", cond.parent, "the name of a categorical parameter")
        if not isinstance(cond.values, tuple) or not cond.values:
            self._fail(source, "condition.values", cond.values, "a non-empty list of the parent's choices")


@dataclass(frozen=True)
class Float(_Param):
    """A real parameter in the closed interval ``[low, high]`` (both bounds inclusive).

    Args:
        name: the trainable's config field this parameter sets.
        low: smallest value (inclusive).
        high: largest value (inclusive); must exceed ``low``.
        log: sample uniformly in ``log(x)``; needs ``low > 0``; excludes ``step``.
        step: if set, only ``low + k*step <= high`` (k = 0, 1, ...) are sampled.
        condition: active only when the condition holds (None: always active).
    """

    name: str
    low: float
    high: float
    log: bool = False
    step: float | None = None
    condition: Condition | None = None

    kind: ClassVar[str] = "float"

    def __post_init__(self) -> None:
        # Normalise int bounds so Float(low=5) == Float(low=5.0) and JSON writes 5.0.
        for attr in ("low", "high", "step"):
            value = getattr(self, attr)
            if _is_int(value):
                object.__setattr__(self, attr, float(value))

    @property
    def top(self) -> float:
        """The largest value that can be sampled (``high``, or the last grid point with ``step``)."""
        return self.high if self.step is None else float(_grid_top(self.low, self.high, self.step))

    def check(self, source: str = "<space>") -> None:
        """Raise :class:`SpaceError` unless the declaration is well formed."""
        for key in ("low", "high"):
            value = getattr(self, key)
            if not _is_number(value) or not math.isfinite(value):
                self._fail(source, key, value, "a finite number")
        if not self.low < self.high:
            self._fail(source, "low", self.low, f"low < high={self.high!r}")
        if not isinstance(self.log, bool):
            self._fail(source, "log", self.log, "true or false")
        if self.log and self.low <= 0:
            self._fail(source, "low", self.low, "low > 0", problem="log scale needs positive bounds")
        if self.step is not None:
            if self.log:
                self._fail(source, "step", self.step, "no step with log=true (as in Optuna)")
            if not _is_number(self.step) or not math.isfinite(self.step) or self.step <= 0:
                self._fail(source, "step", self.step, "a positive number")
            if self.step > self.high - self.low:
                self._fail(source, "step", self.step,
                           f"step <= high - low = {self.high - self.low!r}",
                           problem="step larger than the range")
        self._check_condition_shape(source)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is one this parameter can take (grid checked to 1e-9 relative)."""
        if not _is_number(value) or not self.low <= value <= self.high:
            return False
        if self.step is None:
            return True
        k = (value - self.low) / self.step
        return abs(k - round(k)) <= 1e-9 * max(1.0, abs(k))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.kind, "low": self.low,
                               "high": self.high, "log": self.log}
        if self.step is not None:
            out["step"] = self.step
        if self.condition is not None:
            out["condition"] = self.condition.to_dict()
        return out


@dataclass(frozen=True)
class Int(_Param):
    """An integer parameter in ``{low, low+step, ...} ∩ [low, high]``; ``high`` is inclusive.

    Args:
        name: the trainable's config field this parameter sets.
        low: smallest value (inclusive).
        high: largest value (inclusive, reachable when ``high - low`` is a multiple of ``step``).
        log: sample uniformly in ``log(x)``; needs ``low >= 1`` and ``step == 1``.
        step: grid spacing, a positive integer.
        condition: active only when the condition holds (None: always active).
    """

    name: str
    low: int
    high: int
    log: bool = False
    step: int = 1
    condition: Condition | None = None

    kind: ClassVar[str] = "int"

    @property
    def top(self) -> int:
        """The largest value that can be sampled (``high`` when it lies on the grid)."""
        return int(_grid_top(self.low, self.high, self.step))

    def check(self, source: str = "<space>") -> None:
        """Raise :class:`SpaceError` unless the declaration is well formed."""
        for key in ("low", "high"):
            value = getattr(self, key)
            if not _is_int(value):
                self._fail(source, key, value, "an integer")
        if not self.low < self.high:
            self._fail(source, "low", self.low, f"low < high={self.high!r}")
        if not isinstance(self.log, bool):
            self._fail(source, "log", self.log, "true or false")
        if self.log and self.low <= 0:
            self._fail(source, "low", self.low, "low >= 1", problem="log scale needs positive bounds")
        if not _is_int(self.step) or self.step <= 0:
            self._fail(source, "step", self.step, "a positive integer")
        if self.log and self.step != 1:
            self._fail(source, "step", self.step, "step 1 with log=true (as in Optuna)")
        if self.step > self.high - self.low:
            self._fail(source, "step", self.step, f"step <= high - low = {self.high - self.low}",
                       problem="step larger than the range")
        self._check_condition_shape(source)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is an integer on the grid within ``[low, high]``."""
        return (_is_int(value) and self.low <= value <= self.high
                and (value - self.low) % self.step == 0)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.kind, "low": self.low,
                               "high": self.high, "log": self.log, "step": self.step}
        if self.condition is not None:
            out["condition"] = self.condition.to_dict()
        return out


@dataclass(frozen=True)
class Categorical(_Param):
    """One of a finite, ordered tuple of JSON scalars (str, int, float, bool, None).

    Args:
        name: the trainable's config field this parameter sets.
        choices: the values, non-empty and without duplicates.
        condition: active only when the condition holds (None: always active).
    """

    name: str
    choices: tuple
    condition: Condition | None = None

    kind: ClassVar[str] = "categorical"

    def __post_init__(self) -> None:
        if isinstance(self.choices, list):
            object.__setattr__(self, "choices", tuple(self.choices))

    def check(self, source: str = "<space>") -> None:
        """Raise :class:`SpaceError` unless the declaration is well formed."""
        if not isinstance(self.choices, tuple) or not self.choices:
            shown = list(self.choices) if isinstance(self.choices, tuple) else self.choices
            self._fail(source, "choices", shown, "a non-empty list of values",
                       problem="no choices" if isinstance(self.choices, tuple) else None)
        seen: list[Any] = []
        for choice in self.choices:
            if not isinstance(choice, CHOICE_TYPES) or (
                    isinstance(choice, float) and not math.isfinite(choice)):
                self._fail(source, "choices", choice,
                           "scalars (string, number, true/false, null)",
                           problem="unsupported choice")
            # Equality, not identity of type: Optuna finds a choice by ``==``, so 1, 1.0
            # and True would be one choice there.
            if any(choice == other for other in seen):
                self._fail(source, "choices", choice, "each choice once (1, 1.0 and true count as equal)",
                           problem="duplicate choice")
            seen.append(choice)
        self._check_condition_shape(source)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is one of the choices (``True`` is not ``1`` here)."""
        return _index(self.choices, value) is not None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.kind, "choices": list(self.choices)}
        if self.condition is not None:
            out["condition"] = self.condition.to_dict()
        return out


def _index(seq, value: Any) -> int | None:
    """Position of ``value`` in ``seq`` by equality *and* type (so True != 1, 1 != 1.0)."""
    for i, item in enumerate(seq):
        if type(item) is type(value) and item == value:
            return i
    return None


Param = Float | Int | Categorical
PARAM_KINDS: dict[str, type] = {"float": Float, "int": Int, "categorical": Categorical}
