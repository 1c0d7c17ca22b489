"""How Tune's trial outcomes reach a real Optuna study, and ASHA's persisted rungs.

No Ray cluster is started: the searcher and scheduler are driven directly, the way
Tune's controller calls them, against real Optuna studies in SQLite files.
"""

from __future__ import annotations

import json
import pickle
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState
from ray.tune.schedulers import TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from tuning.sweep.scheduler import PersistentASHA, build_scheduler
from tuning.sweep.searcher import SeltuneOptunaSearch, build_searcher, trial_outcome

SPACE = {
    "trainable": "argse-pretrain",
    "params": [
        {"name": "lr", "type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        {"name": "batch_size", "type": "categorical", "choices": [64, 128]},
    ],
    "fixed": {"epochs": 3},
}


def study_of(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


def res(step: int, value: float, **extra) -> dict:
    return {"training_iteration": step, "worst_group_error": value, **extra}


# --------------------------------------------------------------------------- pure logic
def test_outcome_of_finished_trials():
    kw = dict(metric="m", mode="min", error=False, intermediate_values={1: 0.5, 2: 0.3})
    assert trial_outcome(result={"m": 0.4}, stopped_early=False, **kw) == ("COMPLETE", 0.3)
    assert trial_outcome(result={"m": 0.2}, stopped_early=False, **kw) == ("COMPLETE", 0.2)
    assert trial_outcome(result={"m": 0.2}, stopped_early=True, **kw) == ("PRUNED", None)
    assert trial_outcome(result={"m": 0.2}, stopped_early=False,
                         **{**kw, "error": True}) == ("FAIL", None)
    assert trial_outcome(result=None, stopped_early=False,
                         **{**kw, "intermediate_values": {}}) == ("FAIL", None)
    assert trial_outcome(result={"m": float("nan")}, stopped_early=False,
                         **{**kw, "intermediate_values": {}}) == ("FAIL", None)
    assert trial_outcome(result={"m": 0.9}, stopped_early=False,
                         **{**kw, "mode": "max"}) == ("COMPLETE", 0.9)


def test_outcome_multi_objective_uses_last_values():
    kw = dict(metric=["a", "b"], mode=["min", "min"], error=False, intermediate_values={})
    assert trial_outcome(result={"a": 1.0, "b": 2}, stopped_early=False, **kw) == (
        "COMPLETE", [1.0, 2.0])
    assert trial_outcome(result={"a": 1.0}, stopped_early=False, **kw) == ("FAIL", None)


# --------------------------------------------------------------------------- searcher
@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path / 'study.db'}"


def drive(searcher, stopped: bool):
    """Tune's call sequence for 3 trials: a completes, b is stopped by ASHA at step 2
    (Tune passes no result that led to STOP to on_trial_result), c errors."""
    for tid in "abc":
        assert set(searcher.suggest(tid)) >= {"lr", "batch_size"}
    for step, value in ((1, 0.50), (2, 0.40), (3, 0.45)):
        searcher.on_trial_result("a", res(step, value))
    searcher.on_trial_result("b", res(1, 0.90))
    if stopped:
        searcher.mark_stopped_early("b", res(2, 0.10))
    searcher.on_trial_result("c", res(1, 0.7))
    searcher.on_trial_complete("a", res(3, 0.45))
    searcher.on_trial_complete("b", res(2, 0.10))
    searcher.on_trial_complete("c", None, error=True)


def test_stopped_trial_is_pruned_with_intermediate_values(url):
    searcher = build_searcher(SPACE, ["worst_group_error"], ["min"], 0, url, "s")
    drive(searcher, stopped=True)
    trials = {t.user_attrs["ray_trial_id"]: t for t in study_of(url, "s").trials}
    assert trials["a"].state == TrialState.COMPLETE
    assert trials["a"].value == pytest.approx(0.40)  # best reported, not the last
    assert trials["b"].state == TrialState.PRUNED
    assert trials["b"].intermediate_values == {1: pytest.approx(0.9), 2: pytest.approx(0.1)}
    assert trials["c"].state == TrialState.FAIL
    # TPE's notion of the best trial ignores the low-rung 0.10 of the pruned trial.
    assert study_of(url, "s").best_value == pytest.approx(0.40)


def test_stock_optuna_search_records_low_rung_value_as_complete(url):
    """The Ray behaviour that SeltuneOptunaSearch fixes (tuning.sweep.searcher, point 1)."""
    import optuna as ot

    stock = OptunaSearch(space={"lr": ot.distributions.FloatDistribution(1e-4, 1e-2, log=True),
                                "batch_size": ot.distributions.CategoricalDistribution([64, 128])},
                         metric="worst_group_error", mode="min",
                         storage=ot.storages.RDBStorage(url), study_name="stock")
    stock.mark_stopped_early = lambda *a, **k: None  # stock Ray has no such hook
    drive(stock, stopped=True)
    assert study_of(url, "stock").best_value == pytest.approx(0.10)


def test_restore_fails_orphans_and_ignores_repeats(url, tmp_path):
    first = build_searcher(SPACE, ["worst_group_error"], ["min"], 0, url, "s")
    first.suggest("a")
    first.suggest("b")
    first.on_trial_result("a", res(1, 0.5))
    first.save(str(tmp_path / "snap.pkl"))  # Tune's periodic snapshot
    first.suggest("c")  # asked after the snapshot; the driver dies before it runs
    first.on_trial_complete("a", res(2, 0.3))  # told after the snapshot

    restored = build_searcher(SPACE, ["worst_group_error"], ["min"], 0, url, "s")
    restored.restore(str(tmp_path / "snap.pkl"))
    by_id = {t.user_attrs.get("ray_trial_id"): t for t in study_of(url, "s").trials}
    assert by_id["c"].state == TrialState.FAIL and "orphaned" in by_id["c"].user_attrs
    assert by_id["b"].state == TrialState.RUNNING
    # Ray re-runs "a" from its checkpoint: repeated results and completion are ignored.
    restored.on_trial_result("a", res(2, 0.3))
    restored.on_trial_complete("a", res(2, 0.3))
    restored.on_trial_complete("b", res(2, 0.2))
    restored.on_trial_complete("zzz", res(1, 0.1))  # never suggested (restart_errored)
    states = sorted(t.state.name for t in study_of(url, "s").trials)
    assert states == ["COMPLETE", "COMPLETE", "FAIL"]
    assert len(study_of(url, "s").trials) == 3


def test_searcher_pickles_with_its_define_by_run_space(url):
    searcher = build_searcher(SPACE, ["worst_group_error"], ["min"], 3, url, "s")
    clone = pickle.loads(pickle.dumps(searcher))
    assert isinstance(clone, SeltuneOptunaSearch)
    assert set(clone.suggest("x")) >= {"lr", "batch_size"}


def test_multi_objective_study(url):
    searcher = build_searcher(SPACE, ["augrc", "worst_group_error"], ["min", "min"], 0, url, "m")
    searcher.suggest("a")
    searcher.on_trial_result("a", {"training_iteration": 1, "augrc": 0.2,
                                   "worst_group_error": 0.4})
    searcher.on_trial_complete("a", {"training_iteration": 2, "augrc": 0.1,
                                     "worst_group_error": 0.3})
    (t,) = study_of(url, "m").trials
    assert t.state == TrialState.COMPLETE and t.values == [0.1, 0.3]


# --------------------------------------------------------------------------- scheduler
class Controller(SimpleNamespace):
    """The two attributes of Tune's controller wrapper the scheduler uses."""

    def get_trials(self):
        return self.trials

    def stop_trial(self, trial):
        self.stopped.append(trial.trial_id)
        trial.status = "TERMINATED"


def trial(tid, status="RUNNING"):
    return SimpleNamespace(trial_id=tid, status=status)


def asha(path):
    return build_scheduler({"kind": "asha", "grace_period": 1, "max_t": 9,
                            "reduction_factor": 3}, "worst_group_error", "min", path)


def test_asha_decisions_persist_and_survive_restore(tmp_path, url):
    path = tmp_path / "asha.json"
    sched = asha(path)
    pristine = pickle.dumps(sched)  # what tuner.pkl holds: the state at sweep start
    searcher = build_searcher(SPACE, ["worst_group_error"], ["min"], 0, url, "s")
    ctl = Controller(search_alg=SimpleNamespace(searcher=searcher), trials=[], stopped=[])
    t1, t2, t3 = trial("t1"), trial("t2"), trial("t3")
    for t in (t1, t2, t3):
        searcher.suggest(t.trial_id)
        sched.on_trial_add(ctl, t)
    assert sched.on_trial_result(ctl, t1, res(1, 0.5)) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(ctl, t2, res(1, 0.9)) == TrialScheduler.STOP
    assert sched.on_trial_result(ctl, t3, res(1, 0.2)) == TrialScheduler.CONTINUE
    assert "t2" in searcher._stopped_early
    saved = json.loads(path.read_text())
    assert saved["stopped"] == {"t2": {"iteration": 1, "value": 0.9}}

    # Tune.restore unpickles the pristine scheduler; it reloads the rungs from the file.
    again = pickle.loads(pristine)
    assert again.stopped_trials == {"t2": {"iteration": 1, "value": 0.9}}
    rung1 = dict(again._brackets[0]._rungs[-1][1])
    assert rung1 == {"t1": -0.5, "t2": -0.9, "t3": -0.2}
    # Ray's snapshot still said RUNNING: the stopped trial is stopped before it runs ...
    t2_back = trial("t2", status="PENDING")
    ctl2 = Controller(search_alg=SimpleNamespace(searcher=searcher), trials=[t2_back],
                      stopped=[])
    for t in (trial("t1"), t2_back):
        again.on_trial_add(ctl2, t)
    again.choose_trial_to_run(ctl2)
    assert ctl2.stopped == ["t2"]
    # ... and stopped again if a result arrives anyway.
    assert again.on_trial_result(ctl2, t2_back, res(2, 0.01)) == TrialScheduler.STOP


def test_reaching_max_t_is_not_an_early_stop(tmp_path, url):
    sched = asha(tmp_path / "asha.json")
    searcher = build_searcher(SPACE, ["worst_group_error"], ["min"], 0, url, "s")
    ctl = Controller(search_alg=SimpleNamespace(searcher=searcher), trials=[], stopped=[])
    t = trial("t1")
    searcher.suggest("t1")
    sched.on_trial_add(ctl, t)
    assert sched.on_trial_result(ctl, t, res(9, 0.3)) == TrialScheduler.STOP
    assert sched.stopped_trials == {} and "t1" not in searcher._stopped_early


def test_state_file_must_match_the_configured_rungs(tmp_path):
    path = tmp_path / "asha.json"
    sched = asha(path)
    sched.on_trial_add(None, trial("t1"))
    sched.on_trial_result(Controller(search_alg=None, trials=[], stopped=[]), trial("t1"),
                          res(1, 0.5))
    other = build_scheduler({"kind": "asha", "grace_period": 2, "max_t": 9,
                             "reduction_factor": 2}, "worst_group_error", "min", path)
    with pytest.raises(ValueError, match="rungs"):
        _ = other.stopped_trials


def test_fifo_for_multi_objective(tmp_path):
    from ray.tune.schedulers import FIFOScheduler

    sched = build_scheduler({"kind": "fifo", "max_t": 5}, "augrc", "min", tmp_path / "x")
    assert type(sched) is FIFOScheduler and not isinstance(sched, PersistentASHA)


def test_errored_trial_retried_after_resume_is_recorded(url, tmp_path):
    first = build_searcher(SPACE, ["worst_group_error"], ["min"], 0, url, "s")
    params = first.suggest("a")
    first.on_trial_result("a", res(1, 0.5))
    first.on_trial_complete("a", None, error=True)  # out of retries: ERROR
    first.save(str(tmp_path / "snap.pkl"))

    restored = build_searcher(SPACE, ["worst_group_error"], ["min"], 0, url, "s")
    restored.restore(str(tmp_path / "snap.pkl"))
    restored.on_trial_result("a", res(2, 0.3))  # resume_errored: runs on from its checkpoint
    restored.on_trial_complete("a", res(3, 0.25))
    trials = study_of(url, "s").trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert trials[1].params == trials[0].params == {k: params[k] for k in trials[0].params}
    assert trials[1].value == pytest.approx(0.25) and trials[1].user_attrs["retry_of"] == 0


def test_searcher_stops_at_num_samples_counted_in_the_study(url, tmp_path):
    """After a crash, a trial that finished after Tune's last snapshot is known only to the
    study: the restored searcher must count it, so the sweep still ends at num_samples."""
    from ray.tune.search import Searcher

    first = build_searcher(SPACE, ["worst_group_error"], ["min"], 0, url, "s",
                           experiment="e", num_samples=3)
    first.suggest("a")
    first.save(str(tmp_path / "searcher.pkl"))  # Tune's snapshot: knows only "a"
    first.suggest("b")
    first.on_trial_complete("b", res(1, 0.3))  # finished, then the driver died
    restored = build_searcher(SPACE, ["worst_group_error"], ["min"], 0, url, "s",
                              experiment="e", num_samples=3)
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored.trials_started() == 2
    assert isinstance(restored.suggest("c"), dict)
    assert restored.suggest("d") == Searcher.FINISHED
    # Another sweep sharing the study keeps its own count.
    other = build_searcher(SPACE, ["worst_group_error"], ["min"], 1, url, "s",
                           experiment="f", num_samples=1)
    assert isinstance(other.suggest("x"), dict)
    assert other.suggest("y") == Searcher.FINISHED


def test_a_trial_the_ledger_says_finished_is_not_run_again(tmp_path, url):
    # Finished after Ray's last snapshot (issue 15, defect 3): Tune restores it PENDING.
    from tuning.experiment.layout import write_json

    seltune = tmp_path / "exp" / "seltune"
    write_json(seltune / "trials.json", {"trials": {
        "done": {"trial_id": "done", "status": "TERMINATED", "history": {}},
        "half": {"trial_id": "half", "status": "RUNNING", "history": {}}}})
    sched = asha(seltune / "asha_state.json")
    again = pickle.loads(pickle.dumps(sched))
    done, half = trial("done", "PENDING"), trial("half", "PENDING")
    ctl = Controller(search_alg=None, trials=[done, half], stopped=[])
    for t in (done, half):
        again.on_trial_add(ctl, t)
    again.choose_trial_to_run(ctl)
    assert ctl.stopped == ["done"]
    assert again.on_trial_result(ctl, trial("done"), res(2, 0.1)) == TrialScheduler.STOP
    assert again.on_trial_result(ctl, half, res(2, 0.1)) == TrialScheduler.CONTINUE
