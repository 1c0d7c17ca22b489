"""Resume without Ray's snapshot (issue 15, defects 2 and 8): what decides it, and the
study's unfinished trials told FAIL (no Ray started)."""

from __future__ import annotations

import pickle

import optuna
from optuna.trial import TrialState
from sweep_specs import make_spec

from tuning.sweep.restart import (
    REPLACED_TRIALS,
    UNUSABLE_RAY_STATE,
    _whole_pickle,
    ray_snapshot_usable,
    restart_from_ledger,
)
from tuning.sweep.searcher import fail_unfinished_trials


def _tune_files(exp, state='{"trial_data": []}'):
    # Ray writes tuner.pkl, searcher-state-*.pkl *and* search_gen_state-*.json as pickles
    (exp / "tuner.pkl").write_bytes(pickle.dumps({"tuner": 1}))
    (exp / "experiment_state-2026-01-01_00-00-00.json").write_text(state)
    (exp / "search_gen_state-2026-01-01_00-00-00.json").write_bytes(
        pickle.dumps({"counter": 2, "name:ConcurrencyLimiter": {"live_trials": set()}}))
    (exp / "searcher-state-2026-01-01_00-00-00.pkl").write_bytes(pickle.dumps({"s": 1}))


def test_snapshot_usable_only_when_complete(tmp_path):
    spec = make_spec(tmp_path, name="exp")
    exp = tmp_path / "exp"
    (exp / "seltune").mkdir(parents=True)
    assert not ray_snapshot_usable(spec)  # killed before tuner.pkl (defect 8)
    (exp / "tuner.pkl").write_bytes(b"x")
    assert not ray_snapshot_usable(spec)  # killed before Ray's first snapshot (defect 2)
    _tune_files(exp)
    assert ray_snapshot_usable(spec)
    _tune_files(exp, state='{"trial_data": [')  # killed while writing it
    assert not ray_snapshot_usable(spec)
    _tune_files(exp)
    (exp / "searcher-state-2026-01-01_00-00-00.pkl").write_bytes(b"")
    assert not ray_snapshot_usable(spec)
    # a pickle cut short (killed while Ray wrote it, a full disk, a partial copy) is
    # found without unpickling anything; JSON in place of Ray's pickle is not Ray's
    for name in ("tuner.pkl", "search_gen_state-2026-01-01_00-00-00.json",
                 "searcher-state-2026-01-01_00-00-00.pkl"):
        _tune_files(exp)
        whole = (exp / name).read_bytes()
        (exp / name).write_bytes(whole[:-3])
        assert not ray_snapshot_usable(spec), name
    _tune_files(exp)
    (exp / "search_gen_state-2026-01-01_00-00-00.json").write_text("{}")
    assert not ray_snapshot_usable(spec)
    _tune_files(exp)
    assert ray_snapshot_usable(spec)


def test_whole_pickle_runs_nothing(tmp_path):
    """The check walks opcodes only: a __reduce__ payload is not executed."""
    marker = tmp_path / "ran"
    payload = (b"cos\nsystem\n(V" + f"touch {marker}".encode() + b"\ntR.")
    file = tmp_path / "p.pkl"
    file.write_bytes(payload)
    assert _whole_pickle(file) and not marker.exists()
    file.write_bytes(payload[:-1])
    assert not _whole_pickle(file)


def test_unfinished_trials_rerun_with_the_same_parameters(tmp_path):
    """No usable snapshot: the trial running at the crash is enqueued again with its
    parameters, its directory moved aside and its entry marked replaced (not lost)."""
    import json

    url = f"sqlite:///{tmp_path / 'study.db'}"
    spec = make_spec(tmp_path, name="exp", study_storage=url)
    exp = tmp_path / "exp"
    (exp / "seltune").mkdir(parents=True)
    (exp / "trial_aaa" / "checkpoint_000000").mkdir(parents=True)
    study = optuna.create_study(study_name="exp", storage=url)
    running = study.ask({"lr": optuna.distributions.FloatDistribution(0.001, 0.1)})
    running.set_user_attr("seltune_experiment", "exp")
    running.set_user_attr("ray_trial_id", "aaa")
    ledger = {"trials": {
        "aaa": {"trial_id": "aaa", "order": 0, "status": "RUNNING", "config": {},
                "dir": "trial_aaa", "iterations": 1, "error": None, "history": {}},
        "bbb": {"trial_id": "bbb", "order": 1, "status": "TERMINATED", "config": {},
                "dir": "trial_bbb", "iterations": 3, "error": None, "history": {}}}}
    (exp / "seltune" / "trials.json").write_text(json.dumps(ledger))
    _tune_files(exp, state="{")
    restart_from_ledger(spec)
    after = json.loads((exp / "seltune" / "trials.json").read_text())
    assert set(after["trials"]) == {"bbb"} and "lost" not in after
    assert after["replaced"]["aaa"]["status"] == "REPLACED"
    assert not (exp / "trial_aaa").exists()
    assert (exp / "seltune" / REPLACED_TRIALS / "trial_aaa" / "checkpoint_000000").is_dir()
    trials = optuna.load_study(study_name="exp", storage=url).trials
    assert trials[0].state == TrialState.FAIL and "orphaned" in trials[0].user_attrs
    assert trials[1].state == TrialState.WAITING
    assert trials[1].system_attrs["fixed_params"] == trials[0].params  # asked first, as is
    assert trials[1].user_attrs["seltune_rerun_of"] == "aaa"


def test_restart_moves_ray_state_aside_and_fails_running_trials(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    spec = make_spec(tmp_path, name="exp", study_storage=url,
                     points_to_evaluate=[{"lr": 0.1}])
    exp = tmp_path / "exp"
    (exp / "seltune").mkdir(parents=True)
    _tune_files(exp, state="{")
    # no study yet: the warm-start points are still to be evaluated
    assert restart_from_ledger(spec) == [{"lr": 0.1}]
    assert sorted(p.name for p in (exp / "seltune" / UNUSABLE_RAY_STATE).iterdir()) == [
        "experiment_state-2026-01-01_00-00-00.json",
        "search_gen_state-2026-01-01_00-00-00.json",
        "searcher-state-2026-01-01_00-00-00.pkl"]
    study = optuna.create_study(study_name="exp", storage=url)
    done = study.ask()
    done.set_user_attr("seltune_experiment", "exp")
    study.tell(done, 0.5)
    mine = study.ask()
    mine.set_user_attr("seltune_experiment", "exp")
    other = study.ask()
    other.set_user_attr("seltune_experiment", "another")
    bare = study.ask()  # asked a moment before the kill, no attributes yet
    failed, existing = fail_unfinished_trials(url, "exp", "exp")
    assert failed == [mine.number, bare.number] and existing == 4
    states = {t.number: t.state for t in optuna.load_study(study_name="exp", storage=url).trials}
    assert states == {0: TrialState.COMPLETE, 1: TrialState.FAIL, 2: TrialState.RUNNING,
                      3: TrialState.FAIL}
    assert restart_from_ledger(spec) == []  # the first driver enqueued the points


def test_no_study_yet(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    assert fail_unfinished_trials(url, "exp", "exp") == ([], 0)
