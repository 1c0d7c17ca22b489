"""The early stopper: ASHA as the sweep runs it (:class:`PersistentASHA`), or FIFO.

Where Ray's ``AsyncHyperBandScheduler`` is not what a sweep needs:

1. **The searcher hears of early stops.** When ASHA stops a trial before ``max_t``,
   :class:`PersistentASHA` tells the searcher
   (:meth:`tuning.sweep.searcher.SeltuneOptunaSearch.mark_stopped_early`), which tells
   the study PRUNED instead of COMPLETE with a low-rung value.

2. **ASHA's rungs survive a restart.** ``Tuner.restore`` rebuilds the scheduler from
   ``tuner.pkl`` (the state at the start of the sweep), so rungs would start empty and
   trials already stopped could run on to ``max_t``. :class:`PersistentASHA` writes
   its rungs and the set of stopped trials to ``seltune/asha_state.json`` on every
   decision and reloads them on first use after a restore; a stopped trial that Ray
   brings back (its last saved state said RUNNING) is stopped again before it runs,
   and so is one the trial ledger says finished after Ray's last snapshot.

Multi-objective sweeps (``--metric augrc,worst_group_error``) use no early stopping
(:func:`build_scheduler` returns a FIFO scheduler): ASHA ranks trials on one number, so
it would cut trials that are good on the other objectives and bias the Pareto front.
Every trial runs its full schedule.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

from tuning.experiment.layout import LEDGER_FILE, running_experiment, seltune_dir, write_json
from tuning.experiment.mirror import publish
from tuning.experiment.records import TrialState, load_ledger
from tuning.sweep.searcher import TRAINING_ITERATION


# --------------------------------------------------------------------------- scheduler
def _searcher_chain(tune_controller) -> list[Any]:
    """The search algorithm and the searchers it wraps (ConcurrencyLimiter, ...)."""
    chain: list[Any] = []
    obj = getattr(tune_controller, "search_alg", None)
    while obj is not None and len(chain) < 8:
        chain.append(obj)
        obj = getattr(obj, "searcher", None)
    return chain


def _notify_stopped(tune_controller, trial_id: str, result: dict | None) -> None:
    for searcher in _searcher_chain(tune_controller):
        if hasattr(searcher, "mark_stopped_early"):
            searcher.mark_stopped_early(trial_id, result)


def ledger_finished(state_dir: Path) -> set[str]:
    """Trial ids the sweep's ledger (``seltune/trials.json``) records as finished.

    The ledger is written when a trial ends; Ray's snapshot every few seconds. A trial
    that finished in between comes back from ``Tuner.restore`` as unfinished, and the
    scheduler stops it before it runs again (the ledger is the source of truth).
    """
    if not (state_dir / LEDGER_FILE).is_file():  # state_dir: the experiment's seltune/
        return set()
    trials = load_ledger(state_dir.parent).trials
    return {tid for tid, e in trials.items() if e.status == TrialState.TERMINATED}


class PersistentASHA(AsyncHyperBandScheduler):
    """ASHA whose rung decisions are written to ``state_path`` and reloaded on restore.

    Bookkeeping stays Ray's ``_Bracket``; this class adds persistence, the memory of
    which trials were stopped (``stopped``: ``{trial_id: {"iteration", "value"}}``), and
    the call that tells the searcher (:meth:`SeltuneOptunaSearch.mark_stopped_early`).
    A trial that reaches ``max_t`` is stopped by ASHA too, but that is a full-fidelity
    result, not an early stop.
    """

    def __init__(self, *, state_path: str | os.PathLike, **kwargs: Any) -> None:
        kwargs.setdefault("brackets", 1)
        super().__init__(**kwargs)
        self._state_path = str(state_path)
        self._stopped: dict[str, dict[str, Any]] = {}
        self._loaded = False
        self._finished: set[str] = set()

    # -- persistence -------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "max_t": self._max_t,
            "reduction_factor": self._reduction_factor,
            "brackets": [
                [[milestone, dict(recorded)] for milestone, recorded in b._rungs]
                for b in self._brackets
            ],
            "stopped": self._stopped,
            "num_stopped": self._num_stopped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("brackets", [])
        if len(saved) != len(self._brackets):
            raise ValueError(f"{self._state_path}: {len(saved)} brackets saved, "
                             f"{len(self._brackets)} configured")
        for bracket, rungs in zip(self._brackets, saved):
            if [m for m, _ in rungs] != [m for m, _ in bracket._rungs]:
                raise ValueError(f"{self._state_path}: saved rungs {[m for m, _ in rungs]} "
                                 f"differ from {[m for m, _ in bracket._rungs]}")
            bracket._rungs = [(m, {str(k): float(v) for k, v in rec.items()})
                              for m, rec in rungs]
        self._stopped = {str(k): v for k, v in state.get("stopped", {}).items()}
        self._num_stopped = int(state.get("num_stopped", len(self._stopped)))

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        path = Path(self._state_path)
        if path.is_file():
            self.load_state_dict(json.loads(path.read_text()))
        self._finished = ledger_finished(path.parent)

    def _save(self) -> None:
        path = Path(self._state_path)
        write_json(path, self.state_dict(), indent=None)  # compact: written every decision
        # An experiment in object storage: upload it now, a resume reads it from there.
        publish(path)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_loaded"] = False  # a restored copy re-reads the file on first use
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        # Unpickled by Tuner.restore: use the state file of the experiment this driver
        # runs (the pickled path may be another machine's mirror of it).
        running = running_experiment()
        if running is not None:
            self._state_path = str(seltune_dir(running) / Path(self._state_path).name)

    @property
    def stopped_trials(self) -> dict[str, dict[str, Any]]:
        self._ensure_loaded()
        return dict(self._stopped)

    # -- TrialScheduler API ------------------------------------------------------
    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        self._ensure_loaded()
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        self._ensure_loaded()
        if trial.trial_id in self._stopped:  # brought back by a restore: stays stopped
            _notify_stopped(tune_controller, trial.trial_id, None)
            return TrialScheduler.STOP
        if trial.trial_id in self._finished:  # finished after Ray's last snapshot
            return TrialScheduler.STOP
        action = super().on_trial_result(tune_controller, trial, result)
        iteration = result.get(self._time_attr)
        if action == TrialScheduler.STOP and iteration is not None and iteration < self._max_t:
            self._stopped[trial.trial_id] = {
                "iteration": int(iteration),
                "value": result.get(self._metric),
            }
            _notify_stopped(tune_controller, trial.trial_id, result)
        self._save()
        return action

    def on_trial_complete(self, tune_controller, trial: Trial, result: dict) -> None:
        self._ensure_loaded()
        if trial.trial_id in self._stopped:
            self._trial_info.pop(trial.trial_id, None)
        else:
            super().on_trial_complete(tune_controller, trial, result)
        self._save()

    def on_trial_remove(self, tune_controller, trial: Trial) -> None:
        self._ensure_loaded()
        self._trial_info.pop(trial.trial_id, None)
        self._save()

    def choose_trial_to_run(self, tune_controller) -> Trial | None:
        self._ensure_loaded()
        for trial in tune_controller.get_trials():
            if trial.trial_id in self._stopped and trial.status in (Trial.PENDING, Trial.PAUSED):
                # Restored from a snapshot older than the stop decision: stop it again,
                # and make sure the searcher records it as pruned.
                _notify_stopped(tune_controller, trial.trial_id, None)
                tune_controller.stop_trial(trial)
            elif trial.trial_id in self._finished and trial.status in (Trial.PENDING,
                                                                       Trial.PAUSED):
                # The ledger says it ran to its end after Ray's last snapshot: it is not
                # run again (its result.json and checkpoints are complete).
                tune_controller.stop_trial(trial)
        return super().choose_trial_to_run(tune_controller)


def build_scheduler(scheduler: dict[str, Any], metric: str, mode: str,
                    state_path: str | os.PathLike) -> TrialScheduler:
    """ASHA (persistent) for ``{"kind": "asha", ...}``; FIFO for ``{"kind": "fifo"}``."""
    if scheduler["kind"] == "fifo":
        return FIFOScheduler()
    return PersistentASHA(
        state_path=state_path,
        time_attr=TRAINING_ITERATION,
        metric=metric,
        mode=mode,
        max_t=int(scheduler["max_t"]),
        grace_period=int(scheduler["grace_period"]),
        reduction_factor=float(scheduler["reduction_factor"]),
    )
