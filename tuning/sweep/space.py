"""Search spaces (``search_spaces``) as Optuna distributions and define-by-run functions.

The neutral declarations map one to one:

========================  =====================================================
``Float(low, high, ...)``  ``FloatDistribution(low, top, log=log, step=step)``
``Int(low, high, ...)``    ``IntDistribution(low, top, log=log, step=step)``
``Categorical(choices)``   ``CategoricalDistribution(choices)``
========================  =====================================================

Optuna's bounds are inclusive like ours, so ``top`` is ``high`` itself whenever
``high`` lies on the step grid (always without ``step``); for an off-grid ``high`` it
is the last grid point, which is what Optuna would silently adjust ``high`` to (we pass
it explicitly so Optuna emits no warning and the distribution equals the declaration's
reachable set).

Conditional parameters need a dynamic (define-by-run) space: :func:`define_by_run`
builds the function for ``ray.tune.search.optuna.OptunaSearch(space=...)`` and
:func:`sample_config` does the same for a plain in-process Optuna loop. TPE samples
conditional parameters independently by default; with ``TPESampler(multivariate=True)``
pass ``group=True`` as well, since the space is dynamic.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from core.errors import InputError
from search_spaces import Categorical, Float, Int, Param, SearchSpace, SpaceError, load_space


def resolve_space(preset_or_path: str | Path, trainable: str, config_cls: type) -> SearchSpace:
    """Load a preset or space file for ``trainable`` and check it against its config.

    ``config_cls`` is the trainable's config dataclass; its field names are the only
    parameter and ``fixed`` keys allowed. A bad space raises
    :class:`core.errors.InputError` carrying the space's one-line message
    (``FILE: param NAME: value V: ... expected ...``), which the CLI prints as is.
    """
    known = [f.name for f in dataclasses.fields(config_cls)]
    try:
        return load_space(str(preset_or_path), trainable=trainable, known_keys=known)
    except SpaceError as exc:
        raise InputError(str(exc)) from None


def to_optuna_distribution(param: Param) -> BaseDistribution:
    """The Optuna distribution of one parameter (bounds inclusive, log and step kept)."""
    if isinstance(param, Float):
        return FloatDistribution(param.low, param.top, log=param.log, step=param.step)
    if isinstance(param, Int):
        return IntDistribution(param.low, param.top, log=param.log, step=param.step)
    if isinstance(param, Categorical):
        return CategoricalDistribution(param.choices)
    raise TypeError(f"not a search-space parameter: {param!r}")


def to_optuna_distributions(space: SearchSpace) -> dict[str, BaseDistribution]:
    """Every parameter's distribution (conditional ones included), in dependency order.

    Use :func:`active_distributions` for the distributions of one trial's parameters
    (e.g. for ``optuna.trial.create_trial``), since inactive parameters must be absent.
    """
    return {p.name: to_optuna_distribution(p) for p in space.ordered_params()}


def active_distributions(space: SearchSpace, params: Mapping[str, Any]) -> dict[str, BaseDistribution]:
    """Distributions of the parameters active for ``params`` (a trial's sampled values).

    Keys outside the space (``fixed`` values, other config) are ignored, so a full
    trial config may be passed.
    """
    return {p.name: to_optuna_distribution(p) for p in space.active_params(params)}


def _suggest(space: SearchSpace, trial: optuna.trial.BaseTrial) -> dict[str, Any]:
    """Suggest the active parameters of ``space`` in dependency order; inactive ones never
    reach Optuna, so they are absent from ``trial.params``."""
    values: dict[str, Any] = {}
    for p in space.ordered_params():
        cond = p.condition
        if cond is not None and (cond.parent not in values or not cond.holds(values[cond.parent])):
            continue
        if isinstance(p, Float):
            values[p.name] = trial.suggest_float(p.name, p.low, p.top, log=p.log, step=p.step)
        elif isinstance(p, Int):
            values[p.name] = trial.suggest_int(p.name, p.low, p.top, log=p.log, step=p.step)
        else:
            values[p.name] = trial.suggest_categorical(p.name, p.choices)
    return values


class DefineByRun:
    """Define-by-run function of a space, for ``OptunaSearch(space=DefineByRun(space))``.

    A class rather than a closure because Ray's ``OptunaSearch.save`` pickles its
    ``space`` with the standard ``pickle`` (experiment checkpoints / resume), which
    cannot pickle closures.

    Calling it suggests the active parameters on ``trial`` and returns the space's
    ``fixed`` values (``None`` when there are none), which Ray merges into the config.
    """

    def __init__(self, space: SearchSpace) -> None:
        self.space = space

    def __call__(self, trial: optuna.trial.BaseTrial) -> dict[str, Any] | None:
        _suggest(self.space, trial)
        return dict(self.space.fixed) or None

    def __repr__(self) -> str:
        return f"DefineByRun({self.space.trainable!r}, params={list(self.space.names)})"


def define_by_run(space: SearchSpace) -> DefineByRun:
    """The define-by-run function for Ray's ``OptunaSearch(space=...)`` (picklable)."""
    return DefineByRun(space)


def sample_config(space: SearchSpace, trial: optuna.trial.BaseTrial) -> dict[str, Any]:
    """Suggest the active parameters on ``trial``; return them merged with ``fixed``.

    For a plain in-process Optuna loop::

        study.optimize(lambda t: objective(sample_config(space, t)), n_trials=32)
    """
    return {**_suggest(space, trial), **space.fixed}


__all__ = [
    "DefineByRun",
    "active_distributions",
    "define_by_run",
    "resolve_space",
    "sample_config",
    "to_optuna_distribution",
    "to_optuna_distributions",
]
