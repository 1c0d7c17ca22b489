"""A space's values checked against the trainable's config before a sweep starts
(issue 15, defect 7): every choice, each bound and a float's in-between value."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from core.config import check_range
from core.errors import InputError
from search_spaces import PRESETS, Categorical, Condition, Float, Int, SearchSpace
from tuning.sweep.space_check import check_space_values
from tuning.trainables import get_trainable


@dataclass
class MiniConfig:
    loss: Literal["plain", "strict"] = "plain"
    scale: float = 0.5
    steps: int = 3
    low_cap: float = 0.2
    high_cap: float = 0.8

    def __post_init__(self) -> None:
        check_range("scale", self.scale, low=0.0, high=2.0)
        check_range("steps", self.steps, low=1)
        if self.loss == "strict":  # a rule only one branch of the condition has
            check_range("scale", self.scale, low=0.0, high=1.0)
        if self.low_cap > self.high_cap:
            raise InputError(field="low_cap", value=self.low_cap,
                             expected=f"low_cap <= high_cap ({self.high_cap})")


def _check(*params, fixed=None):
    space = SearchSpace("mini", tuple(params), {}).validate()
    check_space_values(space, MiniConfig, fixed or {}, source="my.yaml")


@pytest.mark.parametrize("param, expected", [
    (Categorical("loss", ("plain", "bogus")),
     "my.yaml: param loss: value choices='bogus': refused by MiniConfig: "
     "expected one of plain, strict"),
    (Float("scale", 0.1, 3.0),
     "my.yaml: param scale: value high=3.0: refused by MiniConfig: expected a value in [0.0, 2.0]"),
    (Int("steps", 0, 4),
     "my.yaml: param steps: value low=0: refused by MiniConfig: expected a value in [1, inf)"),
    # a float parameter for an integer field: its bounds may be integers, its draws are not
    (Float("steps", 1, 5),
     "my.yaml: param steps: value type='float': refused by MiniConfig at 3.8284271247461903, "
     "a value its trials can draw between the bounds: expected an integer (declare it type: int)"),
    # a rule between two fields, with the other at its default
    (Float("low_cap", 0.1, 0.9),
     "my.yaml: param low_cap: value high=0.9: refused by MiniConfig: expected low_cap <= "
     "high_cap (0.8)"),
])
def test_refused_value_is_one_line_naming_file_param_value_expected(param, expected):
    with pytest.raises(InputError) as info:
        _check(param)
    assert str(info.value) == expected


def test_conditional_parameter_checked_with_its_condition_holding():
    """``scale`` is only searched when ``loss == 'strict'``, where 1.5 is refused: the
    check must make the condition hold, not try it under the default ``plain``."""
    with pytest.raises(InputError, match=r"param scale: value high=1.5: refused"):
        _check(Categorical("loss", ("plain", "strict")),
               Float("scale", 0.1, 1.5, condition=Condition("loss", ("strict",))))
    _check(Categorical("loss", ("plain", "strict")),  # fine on the plain branch only
           Float("scale", 0.1, 1.5, condition=Condition("loss", ("plain",))))


def test_fixed_values_take_part():
    """With ``high_cap`` fixed at 1.0 (``--set``), ``low_cap`` up to 0.9 is fine."""
    _check(Float("low_cap", 0.1, 0.9), fixed={"high_cap": 1.0})


def test_accepted_spaces_pass():
    _check(Categorical("loss", ("plain", "strict")), Float("scale", 0.0, 1.0),
           Int("steps", 1, 8))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_passes_against_its_trainable(name):
    space = PRESETS[name]
    info = get_trainable(space.trainable)
    check_space_values(space, info.config_class, dict(space.fixed), source=name)
