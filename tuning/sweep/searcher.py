"""The searcher (Optuna TPE in an RDB study) and the early stopper (ASHA), as Tune sees them.

Two known Ray Tune behaviours are handled here (DESIGN.md):

1. **Stopped trials reach Optuna as PRUNED.** Ray's ``OptunaSearch`` tells a trial
   that ASHA stopped at a low rung as COMPLETE with that low-rung value, so TPE would
   learn from low-fidelity numbers as if they were final. :class:`SeltuneOptunaSearch`
   is told by :class:`PersistentASHA` which trials it stopped early (before ``max_t``)
   and tells the study ``PRUNED`` for them, with every value they reported as Optuna
   intermediate values (``step = training_iteration``). TPE then ranks them as Optuna
   does for its own pruned trials (below complete trials, by the last step reached),
   instead of mixing their values with full-fidelity ones. A trial that ran to its end
   is told COMPLETE with the **best** value it reported (the value of the checkpoint
   that ``seltune export`` would pick); a trial with no value is FAIL.

2. **ASHA's rungs survive a restart.** ``Tuner.restore`` rebuilds the scheduler from
   ``tuner.pkl`` (the state at the start of the sweep), so rungs would start empty and
   trials already stopped could run on to ``max_t``. :class:`PersistentASHA` writes
   its rungs and the set of stopped trials to ``seltune/asha_state.json`` on every
   decision and reloads them on first use after a restore; a stopped trial that Ray
   brings back (its last saved state said RUNNING) is stopped again before it runs.

Multi-objective sweeps (``--metric augrc,worst_group_error``) use no early stopping
(:func:`build_scheduler` returns a FIFO scheduler): ASHA ranks trials on one number, so
it would cut trials that are good on the other objectives and bias the Pareto front,
and Optuna has no intermediate values for multi-objective studies. Every trial runs its
full schedule; its objective values are those of its last report.

Search-space conversion (``tuning.sweep.space``) is separate; this module only wraps
its define-by-run function so that it pickles with the searcher's state.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any, TypeGuard, cast

from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

if TYPE_CHECKING:
    import optuna

    from tuning.sweep.space import DefineByRun


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
            from search_spaces import SearchSpace
            from tuning.sweep.space import define_by_run

            self._fn = define_by_run(SearchSpace.from_dict(self.space_dict))
        out = dict(self._fn(trial) or {})
        # A warm-start point may fix config keys the space does not search (e.g. the
        # uniform gate that reproduces Plug-in[Worst]): they travel as a user attribute
        # of the enqueued trial (see enqueue_points) and join this trial's config only.
        ot_trial = getattr(trial, "ot_trial", trial)  # Ray wraps the Optuna trial
        out.update(getattr(ot_trial, "user_attrs", {}).get(FIXED_ATTR, {}))
        return out


#: User attribute of an enqueued study trial: config keys outside the space it fixes.
FIXED_ATTR = "seltune_fixed"


def enqueue_points(study, points: list[dict[str, Any]], space_dict: dict[str, Any]) -> None:
    """Enqueue the warm-start ``points`` in ``study``: each point's searched keys as
    Optuna parameters, the other keys as :data:`FIXED_ATTR` (applied by
    :class:`SpaceFunction`), so a point can express a config the space cannot sample."""
    names = {p["name"] for p in space_dict.get("params", [])}
    for point in points:
        params = {k: v for k, v in point.items() if k in names}
        fixed = {k: v for k, v in point.items() if k not in names}
        study.enqueue_trial(params, user_attrs={FIXED_ATTR: fixed} if fixed else None)


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


class SeltuneOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that tells early-stopped trials as PRUNED and survives restarts.

    Differences from Ray's class (all in the module docstring): early-stopped trials
    are PRUNED with intermediate values (:meth:`mark_stopped_early`, called by
    :class:`PersistentASHA`); complete trials get their best value; each Optuna trial
    carries a ``ray_trial_id`` user attribute; after a restore, the Optuna trials that
    the last snapshot does not know (asked after it, before the driver died) are told
    FAIL, and reports for trials the study already finished are ignored instead of
    crashing the driver; a completion for a trial id the searcher never suggested
    (Ray's ``restart_errored``) is logged and ignored; a trial that failed and was
    retried by a resume (``resume_errored``) adds its outcome as a new study trial with
    the same parameters (``retry_of`` = the failed trial's number).
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
            ot_trial.set_user_attr("ray_trial_id", trial_id)
            if self._experiment is not None:
                ot_trial.set_user_attr("seltune_experiment", self._experiment)
            if self._started_ids is not None:
                self._started_ids.add(trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if isinstance(self.metric, list) or trial_id not in self._ot_trials:
            return
        if trial_id in self._completed_trials:
            return
        value = result.get(self.metric)
        step = result.get(TRAINING_ITERATION)
        if not _finite(value) or step is None:
            return
        try:
            self._ot_trials[trial_id].report(float(value), int(step))
        except Exception as exc:  # the study already finished it (before a restart)
            logger.debug("not reporting %s step %s: %s", trial_id, step, exc)

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
        from optuna.trial import TrialState

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
        ot_state = {"COMPLETE": TrialState.COMPLETE, "PRUNED": TrialState.PRUNED,
                    "FAIL": TrialState.FAIL}[state]
        gap = None if result is None else result.get(COVERAGE_GAP_ATTR)
        if _finite(gap):  # read by CoverageConstraint when the trial is told
            self._ot_trials[trial_id].set_user_attr(COVERAGE_GAP_ATTR, float(gap))
        try:
            self._study().tell(self._ot_trials[trial_id], value, state=ot_state)
        except Exception as exc:
            logger.warning("could not tell Optuna about trial %s: %s", trial_id, exc)
        self._completed_trials.add(trial_id)

    def _record_retry(self, trial_id: str, frozen, result: dict | None) -> None:
        """Add the outcome of a retried trial as a new study trial (a FAIL is final in
        Optuna), with the same parameters and a ``retry_of`` link to the failed one."""
        import optuna
        from optuna.trial import TrialState

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
        try:
            self._study().add_trial(trial)
        except Exception as exc:
            logger.warning("could not record the retry of trial %s: %s", trial_id, exc)

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
        import optuna
        from optuna.trial import TrialState

        from tuning.sweep.restart import CONTINUED_ATTR

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
            study._storage.set_trial_user_attr(
                frozen._trial_id, "orphaned", "asked before a driver crash; never run")
            study.tell(frozen.number, state=TrialState.FAIL)
            failed.append(frozen.number)
        for trial_id in list(self._ot_trials):
            state = self._frozen(trial_id).state
            if state == TrialState.FAIL:
                # errored trials come back with resume_errored: hear their outcome again
                self._completed_trials.discard(trial_id)
            elif state.is_finished():
                self._completed_trials.add(trial_id)
        return failed


def fail_unfinished_trials(study_storage: str, study_name: str,
                           experiment: str) -> tuple[list[int], int]:
    """Tell FAIL (as ``orphaned``) every trial of ``experiment`` in the study that is
    still RUNNING: a resume that cannot use Ray's snapshot starts a fresh searcher,
    which must count only trials that finished (or are retried) toward ``num_samples``.

    A trial counts as the experiment's when its ``seltune_experiment`` attribute names
    it, or when it has none yet (asked by the dead driver a moment before it was killed)
    in a study named after the experiment. Returns the failed trial
    numbers and how many trials the study has (0 when the study does not exist yet).
    """
    import optuna
    from optuna.trial import TrialState

    from tuning.sweep.study import open_study_storage

    storage = open_study_storage(study_storage)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:  # the driver died before the searcher created the study
        return [], 0
    failed = []
    trials = study.get_trials(deepcopy=False)
    for frozen in trials:
        if frozen.state != TrialState.RUNNING:
            continue
        attrs = frozen.user_attrs
        ours = attrs.get("seltune_experiment") == experiment or (
            "seltune_experiment" not in attrs and study_name == experiment)
        if not ours:
            continue
        storage.set_trial_user_attr(frozen._trial_id, "orphaned",
                                    "running when its driver died; restarted without "
                                    "Ray's snapshot")
        study.tell(frozen.number, state=TrialState.FAIL)
        failed.append(frozen.number)
    return failed, len(trials)


SAMPLERS = ("tpe", "random")


#: The study trial's user attribute with the realised distance of its coverage from the
#: sweep's operating point (set before the trial is told; read by the constraint).
COVERAGE_GAP_ATTR = "coverage_gap"


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


def make_sampler(seed: int, multi_objective: bool, kind: str = "tpe",
                 max_coverage_gap: float | None = None):
    """TPE with a seed (or ``random``, the baseline of the search-quality benchmark).

    TPE is multivariate with ``group=True`` for the conditional spaces, and
    ``constant_liar`` keeps concurrent suggestions apart while earlier trials run.
    With ``max_coverage_gap``, trials off the operating point are infeasible
    (:class:`CoverageConstraint`).
    """
    import warnings

    import optuna

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
    import optuna

    from tuning.sweep.study import open_study_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_study_storage(study_storage)
    multi = len(metrics) > 1
    searcher = SeltuneOptunaSearch(
        space=SpaceFunction(space_dict),
        metric=list(metrics) if multi else metrics[0],
        mode=list(modes) if multi else modes[0],
        sampler=make_sampler(seed, multi, sampler, max_coverage_gap),
        study_name=study_name,
        storage=storage,
        experiment=experiment,
        num_samples=num_samples,
    )
    # enqueued here rather than through OptunaSearch's points_to_evaluate, which can only
    # carry searched keys
    enqueue_points(searcher._study(), list(points_to_evaluate or []), space_dict)
    return searcher


def add_history(study, source: dict[str, Any], space_dict: dict[str, Any]) -> int:
    """``--warm-start``: copy the finished trials of another sweep's study into ``study``.

    A trial is copied (COMPLETE with its value, or PRUNED with its intermediate values)
    when every parameter it has is searched here with a value inside this space; it
    carries ``warm_start_from`` and is not counted as one of this sweep's trials.
    Returns how many were copied.
    """
    import optuna
    from optuna.trial import TrialState

    from search_spaces import SearchSpace

    space = SearchSpace.from_dict(space_dict)
    params = {p.name: p for p in space.params}
    if study.user_attrs.get("warm_started_from") == source["experiment"]:
        return 0  # a resumed sweep: already copied
    other = optuna.load_study(study_name=source["study_name"], storage=source["study_storage"])
    copied = 0
    for t in other.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if len(other.directions) != len(study.directions):
            break
        if not t.params or any(k not in params or not params[k].contains(v)
                               for k, v in t.params.items()):
            continue
        study.add_trial(optuna.trial.create_trial(
            state=t.state, value=t.value if t.state == TrialState.COMPLETE and
            len(study.directions) == 1 else None,
            values=t.values if t.state == TrialState.COMPLETE and len(study.directions) > 1
            else None,
            params=t.params, distributions=t.distributions,
            intermediate_values=dict(t.intermediate_values),
            user_attrs={"warm_start_from": source["experiment"], "source_number": t.number,
                        **{k: v for k, v in t.user_attrs.items() if k == COVERAGE_GAP_ATTR}}))
        copied += 1
    study.set_user_attr("warm_started_from", source["experiment"])
    return copied
