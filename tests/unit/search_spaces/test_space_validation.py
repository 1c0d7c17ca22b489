"""Every validation rule: a one-line SpaceError naming the file, the parameter and the value."""

from __future__ import annotations

import json
import re

import pytest

from search_spaces import Categorical, Condition, Float, Int, SearchSpace, SpaceError, load_space

STAGE1_KEYS = (
    "loss gate_weight target_coverage sn_lambda sn_alpha hidden_dim dropout label_smoothing lr "
    "weight_decay epochs warmup_epochs batch_size grad_accum_steps max_grad_norm use_ema "
    "ema_decay early_stop_patience class_weights calibrator odir_lambda odir_mu "
    "gate_calibrator calib_fraction seed"
).split()

# (case id, YAML params block, substrings the message must contain, in order)
CASES = [
    ("low>=high", "lr: {type: float, low: 0.1, high: 0.01}",
     ["param lr", "value low=0.1", "expected low < high=0.01"]),
    ("low==high int", "n: {type: int, low: 3, high: 3}",
     ["param n", "value low=3", "expected low < high=3"]),
    ("log low<=0", "kappa: {type: float, low: 0, high: 100, log: true}",
     ["param kappa", "value low=0.0", "log scale needs positive bounds", "expected low > 0"]),
    ("log int low<=0", "n: {type: int, low: 0, high: 8, log: true}",
     ["param n", "value low=0", "expected low >= 1"]),
    ("step not positive", "d: {type: float, low: 0, high: 1, step: -0.1}",
     ["param d", "value step=-0.1", "expected a positive number"]),
    ("step zero int", "n: {type: int, low: 0, high: 8, step: 0}",
     ["param n", "value step=0", "expected a positive integer"]),
    ("step larger than range", "d: {type: float, low: 0, high: 0.5, step: 1}",
     ["param d", "value step=1.0", "step larger than the range", "expected step <= high - low = 0.5"]),
    ("int step larger than range", "n: {type: int, low: 1, high: 4, step: 8}",
     ["param n", "value step=8", "step larger than the range"]),
    ("log with step", "d: {type: float, low: 0.1, high: 1, log: true, step: 0.1}",
     ["param d", "value step=0.1", "expected no step with log=true"]),
    ("int log with step", "n: {type: int, low: 1, high: 64, log: true, step: 2}",
     ["param n", "value step=2", "expected step 1 with log=true"]),
    ("non-number bound", "d: {type: float, low: abc, high: 1}",
     ["param d", "value low='abc'", "expected a finite number"]),
    ("non-integer int bound", "n: {type: int, low: 1.5, high: 4}",
     ["param n", "value low=1.5", "expected an integer"]),
    ("bool log flag", "d: {type: float, low: 0.1, high: 1, log: yes please}",
     ["param d", "value log='yes please'", "expected true or false"]),
    ("empty choices", "c: {type: categorical, choices: []}",
     ["param c", "value choices=[]", "no choices", "expected a non-empty list of values"]),
    ("duplicate choice", "c: {type: categorical, choices: [a, a]}",
     ["param c", "value choices='a'", "duplicate choice"]),
    ("choices equal for Optuna", "c: {type: categorical, choices: [1, true]}",
     ["param c", "value choices=True", "duplicate choice", "1, 1.0 and true count as equal"]),
    ("list choice", "c: {type: categorical, choices: [[64, 32]]}",
     ["param c", "value choices=[64, 32]", "unsupported choice"]),
    ("unknown type", "c: {type: loguniform, low: 1, high: 2}",
     ["param c", "value type='loguniform'", "expected one of float, int, categorical"]),
    ("typo key", "d: {type: float, low: 0.1, high: 1, lgo: true}",
     ["param d", "lgo", "unknown key for a float"]),
    ("missing bound", "d: {type: float, low: 0.1}",
     ["param d", "high", "missing"]),
    ("condition unknown parent",
     "sn_lambda: {type: float, low: 1, high: 10, condition: {parent: los, values: [selectivenet]}}",
     ["param sn_lambda", "value condition.parent='los'", "no such parameter"]),
    ("condition non-categorical parent",
     "lr: {type: float, low: 0.1, high: 1}\n"
     "  sn_lambda: {type: float, low: 1, high: 10, condition: {parent: lr, values: [0.5]}}",
     ["param sn_lambda", "value condition.parent='lr'", "lr is a float parameter",
      "expected a categorical parameter"]),
    ("condition value not a choice",
     "loss: {type: categorical, choices: [bce, selectivenet]}\n"
     "  sn_lambda: {type: float, low: 1, high: 10, condition: {parent: loss, values: [focal]}}",
     ["param sn_lambda", "value condition.values='focal'", "not a choice of loss",
      "expected values among ['bce', 'selectivenet']"]),
    ("conditional cycle",
     "loss: {type: categorical, choices: [a, b], condition: {parent: calibrator, values: [x]}}\n"
     "  calibrator: {type: categorical, choices: [x, y], condition: {parent: loss, values: [a]}}",
     ["param loss", "value condition.parent='calibrator'",
      "conditional cycle loss -> calibrator -> loss", "expected conditions that form a tree"]),
    ("cycle entered from outside",
     "x: {type: float, low: 0, high: 1, condition: {parent: a, values: [u]}}\n"
     "  a: {type: categorical, choices: [u, v], condition: {parent: b, values: [u]}}\n"
     "  b: {type: categorical, choices: [u, v], condition: {parent: a, values: [v]}}",
     ["param a", "value condition.parent='b'", "conditional cycle a -> b -> a"]),
    ("self condition",
     "loss: {type: categorical, choices: [a, b], condition: {parent: loss, values: [a]}}",
     ["param loss", "conditional cycle loss -> loss"]),
]


def _write(tmp_path, params_block: str, name: str = "space.yaml", extra: str = "") -> str:
    path = tmp_path / name
    path.write_text(f"trainable: stage1\nparams:\n  {params_block}\n{extra}")
    return str(path)


@pytest.mark.parametrize(("params_block", "parts"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_rule_gives_one_line_naming_file_param_value(tmp_path, params_block, parts):
    path = _write(tmp_path, params_block)
    with pytest.raises(SpaceError) as info:
        load_space(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: "), message
    pos = 0
    for part in parts:
        found = message.find(part, pos)
        assert found >= 0, f"{part!r} missing (in order) from: {message}"
        pos = found + len(part)
    assert isinstance(info.value, ValueError)
    assert info.value.source == path


def test_duplicate_names_in_list_form(tmp_path):
    path = tmp_path / "dup.json"
    path.write_text(json.dumps({"trainable": "stage1", "params": [
        {"name": "lr", "type": "float", "low": 0.1, "high": 1.0},
        {"name": "lr", "type": "float", "low": 0.2, "high": 1.0}]}))
    with pytest.raises(SpaceError, match=rf"^{re.escape(str(path))}: param lr: duplicate parameter name: expected each name once$"):
        load_space(str(path))


def test_unknown_parameter_for_trainable(tmp_path):
    path = _write(tmp_path, "lamda_q: {type: float, low: 0.1, high: 1}")
    load_space(path)  # well formed: only the trainable's keys reject it
    with pytest.raises(SpaceError) as info:
        load_space(path, trainable="stage1", known_keys=STAGE1_KEYS)
    message = str(info.value)
    assert message.startswith(f"{path}: param lamda_q: unknown parameter for trainable 'stage1': expected one of ")
    assert "calibrator" in message and "\n" not in message


def test_unknown_and_overlapping_fixed_keys(tmp_path):
    path = _write(tmp_path, "lr: {type: float, low: 0.1, high: 1}", extra="fixed: {epochs: 3, epoch: 2}\n")
    with pytest.raises(SpaceError, match=r"fixed\.epoch=2: unknown config key for trainable 'stage1'"):
        load_space(path, known_keys=STAGE1_KEYS)
    path = _write(tmp_path, "lr: {type: float, low: 0.1, high: 1}", name="o.yaml", extra="fixed: {lr: 0.5}\n")
    with pytest.raises(SpaceError, match=r"o\.yaml: value fixed\.lr=0\.5: also a tuned parameter"):
        load_space(path)


def test_trainable_mismatch_is_an_error(tmp_path):
    path = _write(tmp_path, "lr: {type: float, low: 0.1, high: 1}")
    with pytest.raises(SpaceError, match=rf"^{re.escape(str(path))}: value trainable='stage1': space is for another trainable: "
                                         r"expected trainable 'argse-selective'$"):
        load_space(path, trainable="argse-selective")


@pytest.mark.parametrize(("text", "part"), [
    ("trainable: stage1\n", "params: missing"),
    ("params: {lr: {type: float, low: 0.1, high: 1}}\n", "trainable: missing"),
    ("trainable: stage1\nparams: []\n", "empty space"),
    ("trainable: stage1\nparams: 3\n", "value params=3"),
    ("trainable: stage1\nparams: {lr: {type: float, low: 0.1, high: 1}}\nfixd: {}\n", "fixd: unknown key"),
    ("- just\n- a list\n", "value 'list': expected a mapping with keys trainable, params"),
    ("trainable: stage1\nparams: {lr: [1, 2]}\n", "param lr: value [1, 2]"),
    ("trainable: stage1\nparams:\n  lr: {type: float\n", "invalid YAML"),
])
def test_structural_errors_name_the_file(tmp_path, text, part):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SpaceError) as info:
        load_space(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}: ") and part in message and "\n" not in message, message


def test_invalid_json_and_missing_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{\"trainable\": ")
    with pytest.raises(SpaceError, match=rf"^{re.escape(str(path))}: invalid JSON"):
        load_space(str(path))
    with pytest.raises(SpaceError, match=r"nope\.yaml: no such file"):
        load_space(str(tmp_path / "nope.yaml"))
    with pytest.raises(SpaceError, match=r"^--space: value 'stage2': neither a preset nor a space file: "
                                         r"expected one of argse-selective, argse-selective-seed, argse-pretrain, stage1, stage1-seed"):
        load_space("stage2")


def test_python_declarations_validate_with_default_source():
    space = SearchSpace("stage1", (Float("lr", 1.0, 0.1),))
    with pytest.raises(SpaceError, match=r"^<space>: param lr: value low=1\.0: expected low < high=0\.1$"):
        space.validate()
    with pytest.raises(SpaceError, match=r"^mine: param c: value choices=\[\]"):
        SearchSpace("stage1", (Categorical("c", ()),)).validate(source="mine")
    with pytest.raises(SpaceError, match="param n: value low=0"):
        SearchSpace("stage1", (Int("n", 0, 4, log=True),)).validate()
    with pytest.raises(SpaceError, match=r"condition\.values"):
        SearchSpace("t", (Categorical("c", ("a",)), Float("x", 0, 1, condition=Condition("c", ())))).validate()
