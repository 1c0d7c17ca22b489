"""The searcher: Optuna TPE in an RDB study, as Tune sees it (:class:`SeltuneOptunaSearch`).

Where Ray's ``OptunaSearch`` is not what a sweep needs (docs/ARCHITECTURE.md, step 5):

1. **Stopped trials reach Optuna as PRUNED.** Ray's ``OptunaSearch`` tells a trial
   that ASHA stopped at a low rung as COMPLETE with that low-rung value, so TPE would
   learn from low-fidelity numbers as if they were final. :class:`SeltuneOptunaSearch`
   is told by the scheduler (:class:`tuning.sweep.scheduler.PersistentASHA`) which
   trials it stopped early (before ``max_t``) and tells the study ``PRUNED`` for them,
   with every value they reported as Optuna intermediate values
   (``step = training_iteration``). TPE then ranks them as Optuna does for its own
   pruned trials (below complete trials, by the last step reached), instead of mixing
   their values with full-fidelity ones. A trial that ran to its end is told COMPLETE
   with the **best** value it reported (the value of the checkpoint that
   ``seltune export`` would pick); a trial with no value is FAIL.

2. **The study survives a driver restart.** After ``Tuner.restore`` the study knows
   trials the restored snapshot does not (asked or finished after it):
   :meth:`SeltuneOptunaSearch.reconcile_with_study` fails the orphans and marks the
   finished ones, and ``num_samples`` is counted in the study.

3. **A study write that fails stops the sweep.** Every write (an intermediate value, a
   user attribute, ``tell``, ``add_trial``) goes through
   :func:`tuning.sweep.study.study_write`: a
   transient database error (SQLite's "database is locked", a dropped PostgreSQL
   connection: an ``OperationalError``) is retried a few times, then, like any other
   error, raised as :class:`StudyWriteError`. Tune does not catch it in the driver,
   so ``Tuner.fit`` fails with it (``seltune resume`` continues the sweep) rather than
   the study silently disagreeing with Tune about a trial.

Multi-objective sweeps (``--metric augrc,worst_group_error``) get no intermediate
values (Optuna has none for multi-objective studies) and no early stopping (the
scheduler is FIFO); their objective values are those of the last report.

Search-space conversion (:mod:`tuning.sweep.space`) is separate; this module only wraps
its define-by-run function so that it pickles with the searcher's state.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from typing import Any, TypeGuard, cast

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from search_spaces import SearchSpace
from tuning.sweep.space import DefineByRun, define_by_run

# Ray-free study helpers that lived here; still imported from this module by the driver
# (add_history), tuning.sweep.restart (fail_unfinished_trials) and older tests.
from tuning.sweep.study import (
    CONTINUED_ATTR,
    COVERAGE_GAP_ATTR,
    FIXED_ATTR,
    StudyWriteError,
    add_history,
    enqueue_points,
    fail_orphan,
    fail_unfinished_trials,
    open_study_storage,
    study_write,
)

__all__ = [
    "COVERAGE_GAP_ATTR", "FIXED_ATTR", "TRAINING_ITERATION", "CoverageConstraint",
    "SeltuneOptunaSearch", "SpaceFunction", "StudyWriteError", "add_history",
    "build_searcher", "enqueue_points", "fail_unfinished_trials", "make_sampler",
    "trial_outcome",
]

logger = logging.getLogger(__name__)

TRAINING_ITERATION = "training_iteration"


# --------------------------------------------------------------------------- searcher
class SpaceFunction:
    """Picklable define-by-run function over a serialised :class:`SearchSpace`.

    Ray pickles the searcher (``tuner.pkl`` and every experiment snapshot); a closure
    would not pickle, a plain dict does. ``fixed`` values are added to every config.
    """

    def __init__(self, space_dict: dict[str, Any]) -> None:
        self.space_dict = space_dict
        self._fn: DefineByRun | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"space_dict": self.space_dict}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.space_dict = state["space_dict"]
        self._fn = None

    def __call__(self, trial) -> dict[str, Any]:
        if self._fn is None:
            self._fn = define_by_run(SearchSpace.from_dict(self.space_dict))
        out = dict(self._fn(trial) or {})
        # A warm-start point may fix config keys the space does not search (e.g. the
        # uniform gate that reproduces Plug-in[Worst]): they travel as a user attribute
        # of the enqueued trial (see enqueue_points) and join this trial's config only.
        ot_trial = getattr(trial, "ot_trial", trial)  # Ray wraps the Optuna trial
        out.update(getattr(ot_trial, "user_attrs", {}).get(FIXED_ATTR, {}))
        return out


def _finite(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def trial_outcome(
    *,
    metric: str | list[str],
    mode: str | list[str],
    result: dict[str, Any] | None,
    error: bool,
    stopped_early: bool,
    intermediate_values: dict[int, float],
) -> tuple[str, Any]:
    """Decide what Optuna is told for a finished Tune trial (pure logic, no Ray).

    Args:
        metric, mode: the objective(s); lists for multi-objective.
        result: the trial's last result (None if it never reported).
        error: the trial failed.
        stopped_early: the scheduler stopped it before ``max_t``.
        intermediate_values: ``{step: value}`` already reported to the study.

    Returns:
        ``("COMPLETE", value_or_values)``, ``("PRUNED", None)`` or ``("FAIL", None)``.
        A complete single-objective trial's value is its best reported value (last
        result included); multi-objective values are those of the last result.
    """
    if error:
        return "FAIL", None
    if isinstance(metric, list):
        if stopped_early:
            return "PRUNED", None
        values = [None if result is None else result.get(m) for m in metric]
        finite = [v for v in values if _finite(v)]
        if len(finite) != len(values):
            return "FAIL", None
        return "COMPLETE", [float(v) for v in finite]
    if stopped_early:
        return "PRUNED", None
    seen = [float(v) for v in intermediate_values.values() if _finite(v)]
    if result is not None and _finite(result.get(metric)):
        seen.append(float(result[metric]))
    if not seen:
        return "FAIL", None
    return "COMPLETE", (min(seen) if mode == "min" else max(seen))


_OPTUNA_STATE = {"COMPLETE": TrialState.COMPLETE, "PRUNED": TrialState.PRUNED,
                 "FAIL": TrialState.FAIL}


class SeltuneOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that tells early-stopped trials as PRUNED and survives restarts.

    Differences from Ray's class (all in the module docstring): early-stopped trials
    are PRUNED with intermediate values (:meth:`mark_stopped_early`, called by
    :class:`~tuning.sweep.scheduler.PersistentASHA`); complete trials get their best
    value; each Optuna trial carries a ``ray_trial_id`` user attribute; after a
    restore, the Optuna trials that the last snapshot does not know (asked after it,
    before the driver died) are told FAIL, and results for trials the study already
    finished are not reported again; a completion for a trial id the searcher never
    suggested (Ray's ``restart_errored``) is logged and ignored; a trial that failed and
    was retried by a resume (``resume_errored``) adds its outcome as a new study trial
    with the same parameters (``retry_of`` = the failed trial's number); a study write
    that fails raises :class:`StudyWriteError`.
    """

    def __init__(self, *args: Any, experiment: str | None = None,
                 num_samples: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stopped_early: set[str] = set()
        # Which study trials are this sweep's (a study may be shared by several sweeps),
        # and how many it may have in all: after a driver crash the study, not Tune's
        # last snapshot, knows every trial that was started.
        self._experiment = experiment
        self._num_samples = num_samples
        self._started_ids: set[Any] | None = None
        # Trials the study had FAILed when this searcher was restored, now run again
        # by `resume_errored`: their study trial takes no more values (see _record_retry).
        self._retrying: set[str] = set()

    def trials_started(self) -> int:
        """Distinct Ray trials of this sweep recorded in the study (orphans excluded).

        Read from the study once per driver (it knows trials a dead driver started after
        Tune's last snapshot); afterwards this driver's own suggestions are added as
        they are made, instead of re-reading every trial before each suggestion.
        """
        if self._started_ids is None:
            ids = set()
            for t in self._study().get_trials(deepcopy=False):
                attrs = t.user_attrs
                if attrs.get("seltune_experiment") == self._experiment and "orphaned" not in attrs:
                    ids.add(attrs.get("ray_trial_id"))
            self._started_ids = ids
        return len(self._started_ids)

    # -- helpers ---------------------------------------------------------------
    def _study(self) -> optuna.study.Study:
        """The Optuna study; Ray sets it up in ``set_search_properties``/``__init__``
        (its attribute is declared as ``None``, hence the cast)."""
        study = cast("optuna.study.Study | None", self._ot_study)
        if study is None:
            raise RuntimeError("SeltuneOptunaSearch: the Optuna study is not set up yet "
                               "(no space/metric given to the searcher)")
        return study

    def _frozen(self, trial_id: str) -> optuna.trial.FrozenTrial:
        ot_trial = self._ot_trials[trial_id]
        return self._study()._storage.get_trial(ot_trial._trial_id)

    # -- Searcher API ----------------------------------------------------------
    def suggest(self, trial_id: str):
        if (self._num_samples is not None and trial_id not in self._ot_trials
                and self.trials_started() >= self._num_samples):
            # A trial that finished after Tune's last snapshot, before the driver died,
            # is unknown to the restored Tune but complete in the study: it counts, so
            # the sweep ends at exactly num_samples trials instead of re-running one.
            return Searcher.FINISHED
        config = super().suggest(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and "ray_trial_id" not in ot_trial.user_attrs:
            attrs = {"ray_trial_id": trial_id}
            if self._experiment is not None:
                attrs["seltune_experiment"] = self._experiment
            for key, value in attrs.items():
                study_write(f"{key} of trial {trial_id}",
                            functools.partial(ot_trial.set_user_attr, key, value))
            if self._started_ids is not None:
                self._started_ids.add(trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if isinstance(self.metric, list) or trial_id not in self._ot_trials:
            return
        if trial_id in self._completed_trials or trial_id in self._retrying:
            return
        value = result.get(self.metric)
        step = result.get(TRAINING_ITERATION)
        if not _finite(value) or step is None:
            return
        ot_trial = self._ot_trials[trial_id]
        study_write(f"the result of trial {trial_id} at step {step}",
                    lambda: ot_trial.report(float(value), int(step)))

    def mark_stopped_early(self, trial_id: str, result: dict | None) -> None:
        """Called by the scheduler when it stops ``trial_id`` before ``max_t``.

        The stopping result itself is recorded as an intermediate value (Tune does not
        pass a result that led to STOP to ``on_trial_result``).
        """
        self._stopped_early.add(trial_id)
        if result is not None:
            self.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if trial_id not in self._ot_trials:
            logger.warning("trial %s completed but was never suggested by this searcher; "
                           "ignored (was it restarted with restart_errored?)", trial_id)
            return
        if trial_id in self._completed_trials:
            return
        frozen = self._frozen(trial_id)
        if frozen.state == TrialState.FAIL and not error:
            # Failed before, retried by `seltune resume` (resume_errored), now done.
            self._record_retry(trial_id, frozen, result)
            self._completed_trials.add(trial_id)
            return
        if frozen.state.is_finished():  # told before a driver restart
            self._completed_trials.add(trial_id)
            return
        state, value = trial_outcome(
            metric=self.metric, mode=self.mode, result=result, error=error,
            stopped_early=trial_id in self._stopped_early,
            intermediate_values=dict(frozen.intermediate_values),
        )
        ot_trial = self._ot_trials[trial_id]
        gap = None if result is None else result.get(COVERAGE_GAP_ATTR)
        if _finite(gap):  # read by CoverageConstraint when the trial is told
            study_write(f"the coverage gap of trial {trial_id}",
                        lambda: ot_trial.set_user_attr(COVERAGE_GAP_ATTR, float(gap)))

        def tell() -> None:
            self._study().tell(ot_trial, value, state=_OPTUNA_STATE[state])

        study_write(f"the outcome of trial {trial_id} ({state})", tell)
        self._completed_trials.add(trial_id)

    def _record_retry(self, trial_id: str, frozen, result: dict | None) -> None:
        """Add the outcome of a retried trial as a new study trial (a FAIL is final in
        Optuna), with the same parameters and a ``retry_of`` link to the failed one."""
        state, value = trial_outcome(
            metric=self.metric, mode=self.mode, result=result, error=False,
            stopped_early=trial_id in self._stopped_early, intermediate_values={})
        if state == "FAIL":
            return
        step = None if result is None else result.get(TRAINING_ITERATION)
        last = None if result is None else result.get(self.metric) if isinstance(
            self.metric, str) else None
        inter = {int(step): float(last)} if step is not None and _finite(last) else None
        multi = isinstance(self.metric, list)
        trial = optuna.trial.create_trial(
            state=TrialState.COMPLETE if state == "COMPLETE" else TrialState.PRUNED,
            value=None if multi or state != "COMPLETE" else value,
            values=value if multi and state == "COMPLETE" else None,
            params=frozen.params, distributions=frozen.distributions,
            user_attrs={"ray_trial_id": trial_id, "retry_of": frozen.number},
            intermediate_values=inter,
        )
        study_write(f"the retry of trial {trial_id} ({state})",
                    lambda: self._study().add_trial(trial))

    # -- restore -----------------------------------------------------------------
    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        if not hasattr(self, "_stopped_early"):
            self._stopped_early = set()
        for name in ("_experiment", "_num_samples"):  # snapshots of older versions
            if not hasattr(self, name):
                setattr(self, name, None)
        self.reconcile_with_study()
        # The snapshot's count is stale by every trial started after it: recount.
        self._started_ids = None

    def reconcile_with_study(self) -> list[int]:
        """After a restore: fail orphaned RUNNING study trials, mark finished ones.

        A RUNNING trial that :func:`tuning.sweep.restart.continue_lost_trials` put back
        into Ray's snapshot is adopted instead (same Optuna trial, same Ray id).
        Returns the Optuna trial numbers told FAIL.
        """
        known = {t._trial_id for t in self._ot_trials.values()}
        failed = []
        study = self._study()
        for frozen in study.get_trials(deepcopy=False):
            if frozen.state != TrialState.RUNNING or frozen._trial_id in known:
                continue
            continued = frozen.user_attrs.get(CONTINUED_ATTR)
            if continued is not None:  # put back into Ray's snapshot: the same trial goes on
                self._ot_trials[continued] = optuna.trial.Trial(study, frozen._trial_id)
                continue
            fail_orphan(study, frozen, "asked before a driver crash; never run")
            failed.append(frozen.number)
        self._retrying = set()
        for trial_id in list(self._ot_trials):
            state = self._frozen(trial_id).state
            if state == TrialState.FAIL:
                # errored trials come back with resume_errored: hear their outcome again
                self._completed_trials.discard(trial_id)
                self._retrying.add(trial_id)
            elif state.is_finished():
                self._completed_trials.add(trial_id)
        return failed


class CoverageConstraint:
    """Optuna ``constraints_func``: ``[coverage_gap - max_gap]`` (feasible iff ``<= 0``).

    A trial whose realised coverage misses the operating point by more than
    ``max_gap`` is infeasible; TPE then models it apart from the feasible ones
    (Optuna's constrained TPE). A module-level class, so it pickles with the sampler.
    """

    def __init__(self, max_gap: float) -> None:
        self.max_gap = float(max_gap)

    def __call__(self, trial) -> list[float]:
        gap = trial.user_attrs.get(COVERAGE_GAP_ATTR, 0.0)
        return [float(gap) - self.max_gap]


def make_sampler(seed: int, kind: str = "tpe", max_coverage_gap: float | None = None):
    """TPE with a seed (or ``random``, the baseline of the search-quality benchmark).

    TPE is multivariate with ``group=True`` for the conditional spaces, and
    ``constant_liar`` keeps concurrent suggestions apart while earlier trials run.
    With ``max_coverage_gap``, trials off the operating point are infeasible
    (:class:`CoverageConstraint`).
    """
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    constraints = None if max_coverage_gap is None else CoverageConstraint(max_coverage_gap)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, group=True, constant_liar=True,
            n_startup_trials=10, constraints_func=constraints,
        )


def build_searcher(space_dict: dict[str, Any], metrics: list[str], modes: list[str],
                   seed: int, study_storage: str, study_name: str,
                   sampler: str = "tpe", *, experiment: str | None = None,
                   num_samples: int | None = None,
                   points_to_evaluate: list[dict[str, Any]] | None = None,
                   max_coverage_gap: float | None = None) -> SeltuneOptunaSearch:
    """A :class:`SeltuneOptunaSearch` whose study lives in ``study_storage`` (any SQLAlchemy URL)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_study_storage(study_storage)
    multi = len(metrics) > 1
    searcher = SeltuneOptunaSearch(
        space=SpaceFunction(space_dict),
        metric=list(metrics) if multi else metrics[0],
        mode=list(modes) if multi else modes[0],
        sampler=make_sampler(seed, sampler, max_coverage_gap),
        study_name=study_name,
        storage=storage,
        experiment=experiment,
        num_samples=num_samples,
    )
    # enqueued here rather than through OptunaSearch's points_to_evaluate, which can only
    # carry searched keys
    enqueue_points(searcher._study(), list(points_to_evaluate or []), space_dict)
    return searcher
