"""Tune callbacks of the driver: the trial ledger (:class:`LedgerCallback`) and the live
table on stderr (:class:`ProgressCallback`).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.atomic import fault_point
from core.jsonable import scalar_metrics
from tuning.experiment.layout import running_experiment, seltune_dir
from tuning.experiment.mirror import publish
from tuning.experiment.records import Ledger, LedgerEntry, TrialState, load_ledger, save_ledger

#: Ray's bookkeeping keys that the ledger does not keep (it keeps the metrics).
_RAY_KEYS = frozenset({
    "episodes_total", "timesteps_total", "node_ip", "hostname", "pid", "time_this_iter_s",
    "timestamp", "date", "time_since_restore", "timesteps_since_restore",
    "iterations_since_restore", "config", "done", "trial_id", "experiment_tag",
    "should_checkpoint",
})


# --------------------------------------------------------------------------- callbacks
#: The ledger's status of a trial Tune stopped without it having finished (the driver
#: was interrupted): ``seltune resume`` continues it from its last checkpoint.
INTERRUPTED = TrialState.INTERRUPTED


def ledger_status(ray_status: str, previous: str | None) -> TrialState:
    """The ledger status for a trial Tune reports as ``ray_status``.

    Only :meth:`LedgerCallback.on_trial_complete` decides that a trial finished: Tune
    also calls TERMINATED every trial it stops when the driver is interrupted
    (Ctrl-C), including trials that never started, and those must stay resumable.
    """
    if ray_status == TrialState.TERMINATED and previous != TrialState.TERMINATED:
        return INTERRUPTED
    return TrialState(ray_status)


def _trial_config(trial) -> dict[str, Any]:
    return {k: v for k, v in (trial.config or {}).items() if not k.startswith("__")}


def _ray_callback_base():
    from ray.tune import Callback

    return Callback


if TYPE_CHECKING:  # mypy cannot use a base class computed at run time: name it statically
    from ray.tune import Callback as _CallbackBase
else:
    _CallbackBase = _ray_callback_base()


class LedgerCallback(_CallbackBase):
    """Writes ``seltune/trials.json``: status, config and per-iteration results.

    A :class:`~tuning.experiment.records.Ledger` of
    :class:`~tuning.experiment.records.LedgerEntry` records (the JSON shape is there),
    written atomically at most twice a second while results and state changes arrive,
    and at once when a trial ends, so it is readable at any
    time and at most half a second behind after a crash (Ray's own result.json files
    and the restored trials fill that gap on resume). A restored sweep merges into the
    existing ledger, keyed by iteration, so repeated iterations are not duplicated.
    For an experiment in object storage every write is also uploaded
    (:func:`tuning.experiment.mirror.publish`), so the throttle bounds the upload rate too.
    """

    def __init__(self, experiment_dir: str) -> None:
        self.experiment_dir = str(experiment_dir)
        self._ledger: Ledger | None = None
        self._last_write = 0.0
        self._dirty = False
        self._reconciled = False
        self._max_t: int | None = None
        self._last_sign = 0.0
        self._stamps: dict[str, tuple[int, int]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"experiment_dir": self.experiment_dir}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Unpickled by Tuner.restore: write where this driver runs the experiment.
        running = running_experiment()
        type(self).__init__(self, str(running) if running else state["experiment_dir"])

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            self._ledger = load_ledger(Path(self.experiment_dir))
        return self._ledger

    def _entry(self, trial) -> LedgerEntry:
        trials = self.ledger.trials
        entry = trials.get(trial.trial_id)
        if entry is None:
            entry = trials[trial.trial_id] = LedgerEntry(
                trial.trial_id, order=len(trials), status=ledger_status(trial.status, None))
        entry.config = _trial_config(trial)
        try:
            entry.dir = Path(trial.storage.trial_fs_path).name
        except Exception:  # storage not set up yet for a brand-new trial
            pass
        return entry

    def _write(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_write < 0.5:
            self._dirty = True
            return
        self.ledger.updated = time.time()
        publish(save_ledger(Path(self.experiment_dir), self.ledger))
        self._last_write = now
        self._dirty = False

    def _sync_statuses(self, trials) -> bool:
        # Runs after every step of Tune's loop: look at statuses only, and rebuild an
        # entry (config copy, storage path) only for a trial that is new or changed.
        changed = False
        entries = self.ledger.trials
        for trial in trials:
            entry = entries.get(trial.trial_id)
            if entry is not None and entry.status == "TERMINATED":
                # Finished after the snapshot Tune restored it from (as PENDING): it stays
                # finished; PersistentASHA stops the restored copy before it runs.
                continue
            status = ledger_status(trial.status, None if entry is None else entry.status)
            if entry is None or entry.status != status:
                self._entry(trial).status = status
                changed = True
        return changed

    def _sweep_max_t(self) -> int | None:
        """The scheduler's ``max_t`` from ``seltune/sweep.json`` (read once)."""
        if self._max_t is None:
            from tuning.experiment.spec import load_spec

            spec_file = seltune_dir(Path(self.experiment_dir)) / "sweep.json"
            if spec_file.is_file():
                self._max_t = int(load_spec(Path(self.experiment_dir)).scheduler["max_t"])
        return self._max_t

    def ran_to_end(self, trial) -> bool:
        """Whether ``trial``, which Tune has just completed, is really finished.

        Tune completes a trial when its training function returned (its last result
        carries ``done``), when it reached ``max_t``, or when ASHA stopped it (recorded
        in ``seltune/asha_state.json`` before Tune acts on the decision). Anything else
        (a trial stopped because the driver was interrupted) is resumable, not finished.
        """
        from tuning.experiment.records import load_asha_state

        result = trial.last_result or {}
        if result.get("done"):
            return True
        iteration = result.get("training_iteration")
        max_t = self._sweep_max_t()
        if isinstance(iteration, int) and max_t is not None and iteration >= max_t:
            return True
        asha = load_asha_state(Path(self.experiment_dir)) or {}
        return trial.trial_id in asha.get("stopped", {})

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        entry = self._entry(trial)
        it = int(result.get("training_iteration", 0))
        entry.history[str(it)] = scalar_metrics(result, skip=_RAY_KEYS, keep_none=True)
        entry.iterations = max(entry.iterations, it)
        entry.status = TrialState(trial.status)
        self._write()  # throttled; on_step_end flushes the rest
        fault_point("after_trial_result")

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        fault_point("before_first_snapshot")  # the first start comes before Ray's snapshot

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        entry = self._entry(trial)
        # Finished before Ray's last snapshot said so: the scheduler stops its restored
        # copy before it runs (PersistentASHA), and it stays finished.
        if entry.status != TrialState.TERMINATED:
            entry.status = TrialState.TERMINATED if self.ran_to_end(trial) else INTERRUPTED
        self._sync_statuses([t for t in trials if t is not trial])
        self._write(force=True)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        entry = self._entry(trial)
        entry.status = TrialState.ERROR
        entry.error = str(getattr(trial, "error_file", None) or "error")
        self._write(force=True)

    def on_step_begin(self, iteration, trials, **info) -> None:
        if self._reconciled:
            return
        # First step of this driver. After a crash, Tune restores the trials of its last
        # experiment snapshot; a trial the dead driver had started after that snapshot
        # is unknown to Tune and its place is taken by a new suggestion. Move such
        # trials out of the ledger's "trials" into "lost", so they are neither counted
        # nor shown as running forever (a fresh sweep has an empty ledger here).
        self._reconciled = True
        known = {trial.trial_id for trial in trials}
        # A trial that had *finished* is kept: its results are complete here and in the
        # study, and the searcher counts it towards num_samples.
        lost = [tid for tid, entry in self.ledger.trials.items()
                if tid not in known
                and entry.status not in (TrialState.TERMINATED, TrialState.ERROR)]
        for tid in lost:
            entry = self.ledger.trials.pop(tid)
            entry.status = TrialState.LOST
            self.ledger.lost[tid] = entry
        if lost:
            self._write(force=True)

    def on_step_end(self, iteration, trials, **info) -> None:
        if self._sync_statuses(trials) or self._dirty:
            self._write()
        self._sign()

    def _sign(self) -> None:
        """Sign Tune's snapshot files soon after each snapshot (:mod:`tuning.experiment.trust`):
        a look at their stamps at most twice a second, a signature when they changed."""
        now = time.monotonic()
        if now - self._last_sign < 0.5:
            return
        self._last_sign = now
        from tuning.experiment.trust import sign

        sign(Path(self.experiment_dir), self._stamps)

    def on_experiment_end(self, trials, **info) -> None:
        self._sync_statuses(trials)
        self._write(force=True)


class ProgressCallback(_CallbackBase):
    """A compact live table on stderr: one row per trial, refreshed at most every
    ``interval`` seconds when something changed, plus a line per finished trial."""

    def __init__(self, metric: str, extra: tuple[str, ...] = ("coverage", "augrc",
                                                            "gap_to_best_baseline"),
                 interval: float = 10.0, total: int | None = None,
                 baselines: dict[str, Any] | None = None) -> None:
        self.metric = metric
        self.extra = tuple(m for m in extra if m != metric)
        self.interval = interval
        self.total = total
        self.baselines = baselines
        self._last = 0.0
        self._changed = False
        # Trials seen finishing (or finished when this driver started): Tune calls a
        # trial it stops on Ctrl-C TERMINATED as well, shown here as INTERRUPTED.
        self._ended: set[str] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"metric": self.metric, "extra": self.extra, "interval": self.interval,
                "total": self.total, "baselines": self.baselines}

    def __setstate__(self, state: dict[str, Any]) -> None:
        type(self).__init__(self, **state)

    def _print(self, trials) -> None:
        from tuning.terminal import print_table

        rows = []
        ended = self._ended or set()
        for t in trials:
            r = t.last_result or {}
            status = t.status
            if status == TrialState.TERMINATED and t.trial_id not in ended:
                status = INTERRUPTED
            rows.append([t.trial_id, status, r.get("training_iteration"),
                         r.get(self.metric), *[r.get(m) for m in self.extra]])
        done = sum(t.status == TrialState.ERROR or t.trial_id in ended for t in trials)
        title = f"trials: {done}/{self.total or len(trials)} finished"
        baselines = self.baselines or {}
        best = baselines.get("best")
        if best:
            title += (f"; at coverage {baselines['coverage']:g} the strongest baseline "
                      f"{best['name']} has {self.metric}={best['value']:.4f}")
        print_table(title, ["trial", "status", "iter", self.metric, *self.extra], rows,
                    stderr=True)

    def on_step_begin(self, iteration, trials, **info) -> None:
        if self._ended is None:  # restored trials that had finished before this driver
            self._ended = {t.trial_id for t in trials
                           if t.status in (TrialState.TERMINATED, TrialState.ERROR)}

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._changed = True

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        if self._ended is None:
            self._ended = set()
        self._ended.add(trial.trial_id)
        r = trial.last_result or {}
        if not r:  # a restored copy of a trial that had finished: stopped before it ran
            return
        value = r.get(self.metric)
        text = "-" if value is None else f"{value:.4f}"
        gap = r.get("gap_to_best_baseline")
        vs = "" if gap is None else f" ({gap:+.4f} vs the strongest baseline)"
        print(f"[seltune] trial {trial.trial_id} finished after {r.get('training_iteration')} "
              f"iteration(s): {self.metric}={text}{vs}", file=sys.stderr, flush=True)
        self._changed = True

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        if self._ended is None:
            self._ended = set()
        self._ended.add(trial.trial_id)
        print(f"[seltune] trial {trial.trial_id} failed (see its error.txt)",
              file=sys.stderr, flush=True)
        self._changed = True

    def on_step_end(self, iteration, trials, **info) -> None:
        now = time.monotonic()
        if self._changed and now - self._last >= self.interval:
            self._print(trials)
            self._last = now
            self._changed = False

    def on_experiment_end(self, trials, **info) -> None:
        if self._changed:
            self._print(trials)
