"""Resume without Ray's snapshot (issue 15, defects 2 and 8): what decides it, and the
study's unfinished trials told FAIL (no Ray started)."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState
from sweep_specs import make_spec

from tuning.sweep.restart import UNUSABLE_RAY_STATE, ray_snapshot_usable, restart_from_ledger
from tuning.sweep.searcher import fail_unfinished_trials


def _tune_files(exp, state='{"trial_data": []}'):
    (exp / "tuner.pkl").write_bytes(b"x")
    (exp / "experiment_state-2026-01-01_00-00-00.json").write_text(state)
    (exp / "search_gen_state-2026-01-01_00-00-00.json").write_text("{}")
    (exp / "searcher-state-2026-01-01_00-00-00.pkl").write_bytes(b"x")


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
