"""SearchSpace semantics: round trips, normalisation, conditional activity, assignments."""

from __future__ import annotations

import json
import pickle

import pytest

from search_spaces import (
    PRESETS,
    Categorical,
    Condition,
    Float,
    Int,
    SearchSpace,
    SpaceError,
)


def every_kind_space() -> SearchSpace:
    """A hand-made space using every parameter kind and option, with nested conditions."""
    return SearchSpace(
        trainable="stage1",
        params=(
            Float("lr", 1e-5, 1e-2, log=True),
            Float("dropout", 0.0, 0.5, step=0.1),
            Int("hidden_dim", 64, 512, step=64),
            Int("epochs", 1, 64, log=True),
            Categorical("loss", ("bce", "selectivenet")),
            Float("sn_lambda", 1.0, 100.0, log=True, condition=Condition("loss", ("selectivenet",))),
            Categorical("use_ema", (True, False), condition=Condition("loss", ("selectivenet",))),
            Float("ema_decay", 0.9, 0.999, condition=Condition("use_ema", (True,))),
            Categorical("mixed", ("a", 1, 2.5, None, False)),
        ),
        fixed={"warmup_epochs": 1.0, "class_weights": "none", "hidden": [64, 32]},
    )


def test_every_kind_json_round_trip_is_equal():
    space = every_kind_space().validate()
    again = SearchSpace.from_json(space.to_json())
    assert again == space
    assert again.to_dict() == space.to_dict()
    # The dict form is plain JSON (no tuples) and survives json.dumps/loads unchanged.
    assert json.loads(json.dumps(space.to_dict())) == space.to_dict()
    # Types survive: True stays a bool, 1 stays an int, 2.5 a float, None null.
    mixed = again["mixed"].choices
    assert [type(c) for c in mixed] == [str, int, float, type(None), bool]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_json_round_trip_is_equal(name):
    space = PRESETS[name]
    assert SearchSpace.from_json(space.to_json(), source=name) == space
    assert SearchSpace.from_dict(json.loads(space.to_json(indent=None))) == space


def test_constructors_normalise_ints_and_lists():
    assert Float("x", 5, 100) == Float("x", 5.0, 100.0)
    assert isinstance(Float("x", 5, 100).low, float)
    assert Categorical("c", ["a", "b"]) == Categorical("c", ("a", "b"))
    assert Condition("c", ["a"]) == Condition("c", ("a",))
    assert Condition("c", "a").values == ("a",)
    assert SearchSpace("t", [Float("x", 0, 1)]).params == (Float("x", 0, 1),)


def test_declarations_are_hashable_and_picklable():
    space = every_kind_space()
    assert len({*space.params}) == len(space.params)
    assert pickle.loads(pickle.dumps(space)) == space
    hash(space)  # fixed is excluded from the hash, so a space with a dict still hashes


def test_names_and_lookup():
    space = every_kind_space()
    assert space.names[:3] == ("lr", "dropout", "hidden_dim")
    assert space["loss"].choices == ("bce", "selectivenet")
    assert "loss" in space and "nope" not in space
    with pytest.raises(KeyError):
        space["nope"]


def test_ordered_params_puts_parents_first():
    child_first = SearchSpace("t", (
        Float("sn_lambda", 1, 10, condition=Condition("loss", ("sn",))),
        Categorical("loss", ("ce", "sn")),
        Float("lr", 0.1, 1.0),
    )).validate()
    assert [p.name for p in child_first.ordered_params()] == ["loss", "sn_lambda", "lr"]


def test_active_params_follows_nested_conditions():
    space = every_kind_space()
    base = {"loss": "bce"}
    assert "sn_lambda" not in {p.name for p in space.active_params(base)}
    assert "ema_decay" not in {p.name for p in space.active_params(base)}
    on = {p.name for p in space.active_params({"loss": "selectivenet", "use_ema": True})}
    assert {"sn_lambda", "use_ema", "ema_decay"} <= on
    off = {p.name for p in space.active_params({"loss": "selectivenet", "use_ema": False})}
    assert "use_ema" in off and "ema_decay" not in off
    # A grandchild is inactive when its parent is inactive, whatever the parent's value.
    stale = {p.name for p in space.active_params({"loss": "bce", "use_ema": True})}
    assert "ema_decay" not in stale


def test_condition_matches_by_type_not_only_equality():
    # True == 1 in Python; a condition on True must not fire for an assignment of 1.
    space = SearchSpace("t", (
        Categorical("flag", (True, False)),
        Float("x", 0, 1, condition=Condition("flag", (True,))),
    )).validate()
    assert "x" in {p.name for p in space.active_params({"flag": True})}
    assert "x" not in {p.name for p in space.active_params({"flag": 1})}


def test_float_grid_and_int_top():
    assert Float("x", 0.0, 0.3, step=0.1).top == pytest.approx(0.3)
    assert Float("x", 0.0, 0.3, step=0.1).top == 0.3  # decimal arithmetic: no 0.30000000000000004
    assert Float("x", 0.0, 0.35, step=0.1).top == 0.3  # off-grid high: last grid point
    assert Int("n", 1, 10, step=3).top == 10
    assert Int("n", 1, 11, step=3).top == 10
    assert Int("n", 1, 10).top == 10
    assert Float("x", 1e-5, 1e-2, log=True).top == 1e-2


def test_contains():
    assert Float("x", 0, 1).contains(0.0) and Float("x", 0, 1).contains(1.0)
    assert not Float("x", 0, 1).contains(1.0000001)
    assert Float("x", 0, 0.5, step=0.1).contains(0.30000000000000004)
    assert not Float("x", 0, 0.5, step=0.1).contains(0.25)
    assert Int("n", 2, 10, step=2).contains(10) and not Int("n", 2, 10, step=2).contains(5)
    assert not Int("n", 2, 10).contains(5.0) and not Int("n", 0, 1).contains(True)
    assert Categorical("c", ("a", 1)).contains(1) and not Categorical("c", ("a", 1)).contains(True)


def test_check_assignment():
    space = PRESETS["stage1"]
    good = {"loss": "bce", "exit_score": "msp", "class_weights": "none", "gate_weight": 1.0,
            "dropout": 0.1, "label_smoothing": 0.1, "lr": 1e-3, "weight_decay": 1e-2,
            "calibrator": "temperature", "epochs": 3}
    space.check_assignment(good)
    with pytest.raises(SpaceError, match=r"param sn_lambda: value 10\.0: set although inactive"):
        space.check_assignment({**good, "sn_lambda": 10.0})
    with pytest.raises(SpaceError, match="param gate_weight: active parameter missing"):
        space.check_assignment({k: v for k, v in good.items() if k != "gate_weight"})
    with pytest.raises(SpaceError, match=r"param lr: value 1\.0: expected a number in \[1e-05, 0\.01\]"):
        space.check_assignment({**good, "lr": 1.0})


def test_with_fixed_resolves_conditionals_of_a_fixed_parent():
    s1 = PRESETS["stage1"]
    bce = s1.with_fixed({"loss": "bce", "epochs": 2})
    assert "loss" not in bce.names and bce.fixed == {"loss": "bce", "epochs": 2}
    assert bce["gate_weight"] == Float("gate_weight", 0.1, 5.0, log=True)  # condition dropped
    assert "sn_lambda" not in bce and "sn_alpha" not in bce
    assert bce["odir_mu"].condition == Condition("calibrator", ("matrix", "dirichlet"))
    sn = s1.with_fixed({"loss": "selectivenet"})
    assert {"sn_lambda", "sn_alpha"} <= set(sn.names) and "gate_weight" not in sn
    # Descendants of a removed parameter go too.
    nested = every_kind_space().with_fixed({"loss": "bce"})
    assert not {"sn_lambda", "use_ema", "ema_decay"} & set(nested.names)
    kept = every_kind_space().with_fixed({"use_ema": True})
    assert kept["ema_decay"].condition is None and kept["sn_lambda"].condition is not None
    # The original is unchanged; fixing a plain parameter just moves it.
    assert "loss" in s1.names and s1.fixed == {}
    assert "lr" not in s1.with_fixed({"lr": 1e-3}).names
    with pytest.raises(SpaceError, match="empty space"):
        SearchSpace("t", (Float("x", 0, 1),)).with_fixed({"x": 0.5}, source="cli")
