"""A study write that fails stops the sweep: retried on a transient database error,
then raised as StudyWriteError through the wrappers Tune's controller calls.

No Ray cluster: the searcher is driven the way the controller drives it, through Ray's
own ``SearchGenerator`` and ``ConcurrencyLimiter`` (what ``Tuner`` wraps a searcher in),
against SQLite studies that are broken on purpose.
"""

from __future__ import annotations

import logging
import sqlite3

import optuna
import pytest
from optuna.trial import TrialState
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.search_generator import SearchGenerator
from sqlalchemy import exc as sqlalchemy_exc

import tuning.sweep.study as study_mod
from tuning.sweep.searcher import SeltuneOptunaSearch, SpaceFunction, build_searcher, make_sampler
from tuning.sweep.study import STUDY_WRITE_ATTEMPTS, StudyWriteError, is_transient, study_write

SPACE = {"trainable": "argse-pretrain",
         "params": [{"name": "lr", "type": "float", "low": 1e-4, "high": 1e-2, "log": True}],
         "fixed": {}}
METRIC = "worst_group_error"


def res(step: int, value: float) -> dict:
    return {"training_iteration": step, METRIC: value}


@pytest.fixture
def sleeps(monkeypatch):
    """Retries do not wait in tests; the pauses asked for are recorded."""
    slept: list[float] = []
    monkeypatch.setattr(study_mod.time, "sleep", slept.append)
    return slept


def locked() -> Exception:
    """What Optuna's RDB storage raises when SQLite reports the database locked."""
    try:
        try:
            raise sqlalchemy_exc.OperationalError(
                "UPDATE trials ...", {}, sqlite3.OperationalError("database is locked"))
        except sqlalchemy_exc.OperationalError as e:
            raise optuna.exceptions.StorageInternalError("An exception is raised during "
                                                         "the commit.") from e
    except optuna.exceptions.StorageInternalError as outer:
        return outer


class Flaky:
    """Replaces one storage method: raises ``error()`` the first ``failures`` calls."""

    def __init__(self, real, failures: int, error=locked) -> None:
        self.real, self.failures, self.error, self.calls = real, failures, error, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error()
        return self.real(*args, **kwargs)


def break_storage(monkeypatch, searcher, method: str, failures: int, error=locked) -> Flaky:
    storage = searcher._study()._storage
    flaky = Flaky(getattr(storage, method), failures, error)
    monkeypatch.setattr(storage, method, flaky)
    return flaky


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path / 'study.db'}"


def tune_chain(searcher):
    """What Tune's controller calls: SearchGenerator(ConcurrencyLimiter(searcher))."""
    return SearchGenerator(ConcurrencyLimiter(searcher, max_concurrent=4))


# --------------------------------------------------------------------------- the helper
def test_transient_errors_are_recognised_through_optunas_wrapper():
    assert is_transient(locked())
    assert is_transient(sqlite3.OperationalError("database is locked"))
    assert not is_transient(optuna.exceptions.StorageInternalError("bad data"))
    assert not is_transient(ValueError("database is locked"))


def test_study_write_retries_a_transient_error_then_succeeds(sleeps, caplog):
    calls = []

    def write():
        calls.append(1)
        if len(calls) < 3:
            raise locked()
        return "ok"

    with caplog.at_level(logging.WARNING, logger=study_mod.__name__):
        assert study_write("x", write) == "ok"
    assert len(calls) == 3 and sleeps == [0.25, 0.5]
    assert sum("retrying" in r.getMessage() for r in caplog.records) == 2


def test_study_write_gives_up_after_its_tries_and_names_the_cause(sleeps):
    def write():
        raise locked()

    with pytest.raises(StudyWriteError, match=rf"the result of t after {STUDY_WRITE_ATTEMPTS} "
                       r"tries \(StorageInternalError: \(sqlite3.OperationalError\) database "
                       r"is locked") as info:
        study_write("the result of t", write)
    assert len(sleeps) == STUDY_WRITE_ATTEMPTS - 1
    assert isinstance(info.value.__cause__, optuna.exceptions.StorageInternalError)


def test_study_write_does_not_retry_other_errors(sleeps):
    with pytest.raises(StudyWriteError, match="ValueError: bad") as info:
        study_write("x", lambda: (_ for _ in ()).throw(ValueError("bad")))
    assert sleeps == [] and isinstance(info.value.__cause__, ValueError)


# --------------------------------------------------------------------------- the searcher
def test_a_report_that_keeps_failing_reaches_the_driver(monkeypatch, url, sleeps):
    searcher = build_searcher(SPACE, [METRIC], ["min"], 0, url, "s")
    chain = tune_chain(searcher)
    chain.searcher.suggest("a")  # SearchGenerator.next_trial would make a Trial
    flaky = break_storage(monkeypatch, searcher, "set_trial_intermediate_value", failures=99)
    with pytest.raises(StudyWriteError, match="the result of trial a at step 1"):
        chain.on_trial_result("a", res(1, 0.5))
    assert flaky.calls == STUDY_WRITE_ATTEMPTS
    (t,) = optuna.load_study(study_name="s", storage=url).trials
    assert t.intermediate_values == {}


def test_a_report_is_retried_while_the_database_is_locked(monkeypatch, url, sleeps):
    searcher = build_searcher(SPACE, [METRIC], ["min"], 0, url, "s")
    chain = tune_chain(searcher)
    chain.searcher.suggest("a")  # SearchGenerator.next_trial would make a Trial
    break_storage(monkeypatch, searcher, "set_trial_intermediate_value", failures=2)
    chain.on_trial_result("a", res(1, 0.5))
    (t,) = optuna.load_study(study_name="s", storage=url).trials
    assert t.intermediate_values == {1: pytest.approx(0.5)} and len(sleeps) == 2


def test_a_tell_that_fails_reaches_the_driver_and_is_tried_again(monkeypatch, url, sleeps):
    searcher = build_searcher(SPACE, [METRIC], ["min"], 0, url, "s")
    chain = tune_chain(searcher)
    chain.searcher.suggest("a")  # SearchGenerator.next_trial would make a Trial
    chain.on_trial_result("a", res(1, 0.5))
    flaky = break_storage(monkeypatch, searcher, "set_trial_state_values", failures=1,
                          error=lambda: RuntimeError("disk I/O error"))
    with pytest.raises(StudyWriteError, match=r"the outcome of trial a \(COMPLETE\).*disk I/O"):
        chain.on_trial_complete("a", res(2, 0.4))
    assert flaky.calls == 1 and sleeps == []  # not transient: no retry
    study = optuna.load_study(study_name="s", storage=url)
    assert study.trials[0].state == TrialState.RUNNING
    # Not marked told: when Tune reports the trial again (its error path), it is told.
    assert "a" not in searcher._completed_trials
    searcher.on_trial_complete("a", res(2, 0.4))
    assert optuna.load_study(study_name="s", storage=url).trials[0].value == pytest.approx(0.4)


def _restored_after_a_failed_trial(url, tmp_path):
    """A searcher restored from the snapshot of one whose trial ``a`` failed (Tune will
    retry ``a``)."""
    first = build_searcher(SPACE, [METRIC], ["min"], 0, url, "s")
    first.suggest("a")
    first.on_trial_complete("a", None, error=True)
    first.save(str(tmp_path / "snap.pkl"))
    restored = build_searcher(SPACE, [METRIC], ["min"], 0, url, "s")
    restored.restore(str(tmp_path / "snap.pkl"))
    return restored


def test_a_retry_that_cannot_be_added_reaches_the_driver(monkeypatch, url, tmp_path, sleeps):
    restored = _restored_after_a_failed_trial(url, tmp_path)
    break_storage(monkeypatch, restored, "create_new_trial", failures=99)
    with pytest.raises(StudyWriteError, match=r"the retry of trial a \(COMPLETE\)"):
        restored.on_trial_complete("a", res(3, 0.25))


def test_a_retried_trial_is_not_reported_to_its_failed_study_trial(url, tmp_path):
    """The one expected refusal of the study (a FAIL is final) is not tried at all."""
    restored = _restored_after_a_failed_trial(url, tmp_path)
    restored.on_trial_result("a", res(1, 0.3))  # would raise UpdateFinishedTrialError
    assert "a" in restored._retrying


def test_a_really_locked_sqlite_study(url, tmp_path, sleeps):
    """A second connection holds SQLite's write lock: the report fails after its tries;
    once the lock is gone the next report is written."""
    storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 0.05}})
    searcher = SeltuneOptunaSearch(space=SpaceFunction(SPACE), metric=METRIC, mode="min",
                                   sampler=make_sampler(0), study_name="s", storage=storage)
    chain = tune_chain(searcher)
    chain.searcher.suggest("a")  # SearchGenerator.next_trial would make a Trial
    holder = sqlite3.connect(tmp_path / "study.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StudyWriteError, match="database is locked"):
            chain.on_trial_result("a", res(1, 0.5))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    chain.on_trial_result("a", res(2, 0.4))
    chain.on_trial_complete("a", res(2, 0.4))
    (t,) = optuna.load_study(study_name="s", storage=url).trials
    assert t.state == TrialState.COMPLETE and t.intermediate_values == {2: pytest.approx(0.4)}
