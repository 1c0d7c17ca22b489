"""search_spaces -> Optuna: distributions match the declarations; define-by-run honours
conditions in real Optuna studies (no Ray started)."""

from __future__ import annotations

import dataclasses
import math
import pickle
import warnings

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from search_spaces import PRESETS, Categorical, Condition, Float, Int, SearchSpace
from tuning.sweep.space import (
    DefineByRun,
    active_distributions,
    define_by_run,
    resolve_space,
    sample_config,
    to_optuna_distributions,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

NESTED = SearchSpace(
    trainable="stage1",
    params=(
        Float("lr", 1e-5, 1e-2, log=True),
        Float("dropout", 0.0, 0.5, step=0.1),
        Int("hidden_dim", 64, 512, step=64),
        Int("epochs", 1, 8, log=True),
        Categorical("loss", ("bce", "selectivenet")),
        Float("sn_lambda", 1.0, 100.0, log=True, condition=Condition("loss", ("selectivenet",))),
        Categorical("use_ema", (True, False), condition=Condition("loss", ("selectivenet",))),
        Float("ema_decay", 0.9, 0.999, condition=Condition("use_ema", (True,))),
    ),
    fixed={"warmup_epochs": 1.0, "class_weights": "none"},
).validate()


@pytest.mark.parametrize("space", [NESTED, *PRESETS.values()], ids=lambda s: s.trainable)
def test_distributions_keep_bounds_log_and_step(space):
    dists = to_optuna_distributions(space)
    assert set(dists) == set(space.names)
    for p in space:
        d = dists[p.name]
        if isinstance(p, Float):
            assert isinstance(d, FloatDistribution)
            assert (d.low, d.high, d.log, d.step) == (p.low, p.high, p.log, p.step)
        elif isinstance(p, Int):
            assert isinstance(d, IntDistribution)
            assert (d.low, d.high, d.log, d.step) == (p.low, p.high, p.log, p.step)
        else:
            assert isinstance(d, CategoricalDistribution)
            assert tuple(d.choices) == p.choices


def test_off_grid_high_becomes_the_last_reachable_value_without_warning():
    space = SearchSpace("t", (Int("n", 1, 11, step=3), Float("x", 0.0, 0.35, step=0.1))).validate()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Optuna warns when it has to adjust high itself
        dists = to_optuna_distributions(space)
    assert dists["n"].high == 10 and dists["x"].high == 0.3


def _study(sampler):
    return optuna.create_study(sampler=sampler)


def test_top_integer_is_reachable_with_random_sampler():
    space = SearchSpace("t", (Int("n", 1, 4), Int("m", 2, 10, step=4), Int("k", 1, 8, log=True))).validate()
    study = _study(optuna.samplers.RandomSampler(seed=0))
    seen: dict[str, set[int]] = {"n": set(), "m": set(), "k": set()}
    for _ in range(200):
        trial = study.ask()
        config = sample_config(space, trial)
        study.tell(trial, 0.0)
        for name in seen:
            seen[name].add(config[name])
    assert seen["n"] == {1, 2, 3, 4}  # inclusive: high=4 appears (unlike range(1, 4))
    assert seen["m"] == {2, 6, 10}
    assert 8 in seen["k"] and 1 in seen["k"] and seen["k"] <= set(range(1, 9))


def test_float_values_stay_in_closed_bounds_and_on_grid():
    study = _study(optuna.samplers.RandomSampler(seed=1))
    for _ in range(100):
        trial = study.ask()
        config = sample_config(NESTED, trial)
        study.tell(trial, 0.0)
        NESTED.check_assignment(config)
        assert 1e-5 <= config["lr"] <= 1e-2
        assert math.isclose(config["dropout"] * 10, round(config["dropout"] * 10), abs_tol=1e-9)


@pytest.mark.parametrize("sampler_cls", [optuna.samplers.RandomSampler, optuna.samplers.TPESampler])
@pytest.mark.parametrize("space", [NESTED, PRESETS["stage1"]], ids=["nested", "stage1"])
def test_define_by_run_respects_conditions(sampler_cls, space):
    study = _study(sampler_cls(seed=3))
    fn = define_by_run(space)
    seen_active: set[str] = set()
    seen_inactive: set[str] = set()
    for i in range(50):
        trial = study.ask()
        ret = fn(trial)
        assert ret == (dict(space.fixed) or None)
        params = trial.params
        # Exactly the active parameters are present, each with a value it may take.
        active = {p.name for p in space.active_params(params)}
        assert set(params) == active
        space.check_assignment(params)
        seen_active |= active
        seen_inactive |= set(space.names) - active
        study.tell(trial, float(i % 7))
    conditional = {p.name for p in space if p.condition is not None}
    # Over 50 trials every conditional parameter was seen both present and absent.
    assert conditional <= seen_active and conditional <= seen_inactive
    # Optuna's own record agrees: each finished trial's distributions are the active ones.
    for frozen in study.trials:
        assert set(frozen.distributions) == {p.name for p in space.active_params(frozen.params)}


def test_sample_config_merges_fixed_and_matches_define_by_run():
    a = _study(optuna.samplers.RandomSampler(seed=7))
    b = _study(optuna.samplers.RandomSampler(seed=7))
    for _ in range(10):
        ta, tb = a.ask(), b.ask()
        config = sample_config(NESTED, ta)
        DefineByRun(NESTED)(tb)
        assert config == {**tb.params, **NESTED.fixed}
        a.tell(ta, 0.0)
        b.tell(tb, 0.0)


def test_define_by_run_pickles_for_ray_searcher_checkpoints():
    # Ray's OptunaSearch.save() uses the standard pickle on its space.
    fn = pickle.loads(pickle.dumps(define_by_run(PRESETS["stage1"])))
    assert isinstance(fn, DefineByRun) and fn.space == PRESETS["stage1"]
    assert "stage1" in repr(fn)


def test_active_distributions_can_record_an_external_trial():
    config = {"loss": "bce", "exit_score": "combined", "class_weights": "none",
              "gate_weight": 1.0, "dropout": 0.1,
              "label_smoothing": 0.05, "lr": 1e-3, "weight_decay": 1e-3,
              "calibrator": "dirichlet", "odir_lambda": 0.01, "odir_mu": 0.01, "epochs": 3}
    dists = active_distributions(PRESETS["stage1"], config)
    assert "sn_lambda" not in dists and "odir_mu" in dists and "epochs" not in dists
    assert "target_coverage" not in dists  # SelectiveNet's training knob only
    params = {k: config[k] for k in dists}
    study = _study(optuna.samplers.TPESampler(seed=0))
    study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=0.3))
    assert study.best_trial.params == params


def test_ray_optuna_search_accepts_it_and_survives_save_restore(tmp_path):
    """Ray's OptunaSearch suggests through our define-by-run function (wrapped in its
    trial captor) and pickles it in save(); no Ray runtime is started for this."""
    ray = pytest.importorskip("ray")
    from ray.tune.search.optuna import OptunaSearch

    space = PRESETS["stage1"]
    searcher = OptunaSearch(space=define_by_run(space), metric="worst_group_error", mode="min",
                            sampler=optuna.samplers.TPESampler(seed=0))
    for i in range(4):
        config = searcher.suggest(f"t{i}")
        space.check_assignment(config)
        searcher.on_trial_complete(f"t{i}", {"worst_group_error": 0.1 * i, "training_iteration": 1})
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = OptunaSearch(space=define_by_run(space), metric="worst_group_error", mode="min")
    restored.restore(str(tmp_path / "searcher.pkl"))
    space.check_assignment(restored.suggest("t9"))
    assert len(restored._ot_study.trials) == 5
    assert not ray.is_initialized()


def test_resolve_space_checks_config_fields_and_raises_input_error(tmp_path):
    from core.errors import InputError

    @dataclasses.dataclass
    class MiniConfig:
        lr: float = 1e-3
        epochs: int = 3

    path = tmp_path / "s.yaml"
    path.write_text("trainable: stage1\nparams: {lr: {type: float, low: 1e-4, high: 1e-2, log: true}}\n"
                    "fixed: {epochs: 2}\n")
    space = resolve_space(path, "stage1", MiniConfig)
    assert space.names == ("lr",) and space.fixed == {"epochs": 2}
    path.write_text("trainable: stage1\nparams: {lrr: {type: float, low: 1e-4, high: 1e-2}}\n")
    with pytest.raises(InputError) as info:
        resolve_space(path, "stage1", MiniConfig)
    assert str(info.value) == (f"{path}: param lrr: unknown parameter for trainable 'stage1': "
                               "expected one of epochs, lr")
    with pytest.raises(InputError, match="space is for another trainable"):
        resolve_space(path, "argse-pretrain", MiniConfig)
