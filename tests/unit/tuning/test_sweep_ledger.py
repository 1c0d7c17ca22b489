"""The trial ledger across a driver crash, and ``--json`` stdout hygiene (no Ray started)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
from sweep_specs import make_spec

from tuning.experiment.layout import write_json
from tuning.experiment.records import LedgerEntry, TrialState, load_ledger
from tuning.experiment.spec import save_spec
from tuning.results.status import experiment_status
from tuning.sweep.callbacks import LedgerCallback


def _trial(tid, status="RUNNING"):
    return SimpleNamespace(trial_id=tid, status=status, config={"lr": 0.1},
                           storage=None)


def test_trials_unknown_to_the_restored_tuner_are_lost_not_counted(tmp_path):
    spec = make_spec(tmp_path, name="exp")
    (tmp_path / "exp" / "seltune").mkdir(parents=True)
    save_spec(spec)
    entry = {"status": "TERMINATED", "config": {}, "iterations": 1, "history": {}}
    write_json(tmp_path / "exp" / "seltune" / "trials.json", {"trials": {
        "a": {"trial_id": "a", "order": 0, **entry},
        # started by the killed driver after Tune's last snapshot:
        "b": {"trial_id": "b", "order": 1, **entry, "status": "RUNNING"},
        # finished after the last snapshot: complete, so kept (the searcher counts it)
        "d": {"trial_id": "d", "order": 3, **entry},
    }})
    cb = LedgerCallback(str(tmp_path / "exp"))
    cb.on_step_begin(0, [_trial("a", "TERMINATED")])
    ledger = load_ledger(tmp_path / "exp")
    assert set(ledger.trials) == {"a", "d"}
    assert ledger.lost["b"].status == TrialState.LOST == "LOST"
    status = experiment_status(tmp_path / "exp")
    assert [t["trial_id"] for t in status["trials"]] == ["a", "d"]
    assert status["counts"] == {"TERMINATED": 2}
    assert status["lost"] == ["b"]
    # Only the first step reconciles: trials created later in this run stay.
    cb.ledger.trials["c"] = LedgerEntry.from_dict({"trial_id": "c", "order": 2, **entry})
    cb.on_step_begin(1, [_trial("a", "TERMINATED")])
    assert "c" in cb.ledger.trials


def test_fresh_sweep_first_step_changes_nothing(tmp_path):
    (tmp_path / "exp" / "seltune").mkdir(parents=True)
    cb = LedgerCallback(str(tmp_path / "exp"))
    cb.on_step_begin(0, [])
    assert not (tmp_path / "exp" / "seltune" / "trials.json").exists()


def test_stdout_to_stderr_keeps_stdout_for_the_json_object():
    code = (
        "import os, sys\n"
        "from tuning.terminal import stdout_to_stderr, print_json\n"
        "with stdout_to_stderr(True):\n"
        "    print('noise from python')\n"
        "    os.system('echo noise from a child process')\n"
        "print_json({'ok': True})\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=os.getcwd())
    assert json.loads(out.stdout) == {"ok": True}
    assert "noise from python" in out.stderr and "noise from a child process" in out.stderr


# --------------------------------------------------------------- Ctrl-C (issue 15, defect 1)
def _done_trial(tid, iteration, **result):
    return SimpleNamespace(trial_id=tid, status="TERMINATED", config={}, storage=None,
                           last_result={"training_iteration": iteration, **result})


def _ledger_cb(tmp_path, stopped=()):
    spec = make_spec(tmp_path, name="exp")  # ASHA max_t = 3
    (tmp_path / "exp" / "seltune").mkdir(parents=True)
    save_spec(spec)
    if stopped:
        write_json(tmp_path / "exp" / "seltune" / "asha_state.json",
                   {"stopped": {t: {"iteration": 1, "value": 0.5} for t in stopped}})
    return LedgerCallback(str(tmp_path / "exp"))


def test_a_trial_tune_stops_on_interrupt_is_interrupted_not_terminated(tmp_path):
    cb = _ledger_cb(tmp_path, stopped=("asha",))
    trials = [_done_trial("half", 1), _done_trial("end", 3), _done_trial("ret", 2, done=True),
              _done_trial("asha", 1)]
    for t in trials:
        cb.on_trial_complete(0, trials, t)
    statuses = {k: v.status for k, v in load_ledger(tmp_path / "exp").trials.items()}
    assert statuses == {"half": "INTERRUPTED", "end": "TERMINATED", "ret": "TERMINATED",
                        "asha": "TERMINATED"}
    counts = experiment_status(tmp_path / "exp")["counts"]
    assert counts == {"INTERRUPTED": 1, "TERMINATED": 2, "STOPPED": 1}


def test_terminated_without_completion_is_interrupted(tmp_path):
    # Tune's cleanup after Ctrl-C sets RUNNING and never-started trials TERMINATED
    # without on_trial_complete; the ledger only hears it at on_step_end/experiment end.
    cb = _ledger_cb(tmp_path)
    cb.on_trial_complete(0, [], _done_trial("a", 3))
    never = SimpleNamespace(trial_id="b", status="TERMINATED", config={}, storage=None,
                            last_result={})
    cb.on_experiment_end([_done_trial("a", 3), never])
    statuses = {k: v.status for k, v in load_ledger(tmp_path / "exp").trials.items()}
    assert statuses == {"a": "TERMINATED", "b": "INTERRUPTED"}
    # resumed later: Tune runs it again, then completes it for real
    cb.on_step_end(1, [SimpleNamespace(trial_id="b", status="RUNNING", config={}, storage=None)])
    assert cb.ledger.trials["b"].status == "RUNNING"


def test_fit_noting_interrupt_sees_tunes_sigint_handler_put_back():
    import signal

    from tuning.sweep.driver import fit_noting_interrupt

    class FakeTuner:
        """Does what tune.run does with SIGINT: install a handler that, when called,
        puts back the one it found."""

        def __init__(self, interrupt):
            self.interrupt = interrupt

        def fit(self):
            original = signal.getsignal(signal.SIGINT)

            def tune_handler(sig, frame):
                signal.signal(signal.SIGINT, original)

            signal.signal(signal.SIGINT, tune_handler)
            if self.interrupt:
                os.kill(os.getpid(), signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)
    assert fit_noting_interrupt(FakeTuner(False)) is False
    assert fit_noting_interrupt(FakeTuner(True)) is True
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.parametrize("edit, field", [
    (lambda t: [1, 2], "trials.t1"),
    (lambda t: {**t, "status": 5}, "trials.t1.status=5"),
    (lambda t: {**t, "iterations": "3"}, "trials.t1.iterations='3'"),
    (lambda t: {**t, "config": []}, "trials.t1.config=[]"),
    (lambda t: {**t, "history": {"x": {}}}, "trials.t1.history="),
    (lambda t: {**t, "history": {"1": [0.1]}}, "trials.t1.history="),
])
def test_a_ledger_entry_of_the_wrong_type_is_one_line(tmp_path, edit, field):
    """status, export and resume all read the ledger (the typed records): an entry edited
    by hand (issue 15, defect 10) names the file and the entry's field, not a traceback."""
    import json

    from core.errors import InputError
    from tuning.experiment.records import load_ledger

    entry = {"trial_id": "t1", "order": 0, "status": "TERMINATED", "config": {},
             "dir": "trial_t1", "iterations": 1, "error": None,
             "history": {"1": {"augrc": 0.1, "checkpoint_dir_name": "checkpoint_000000"}}}
    (tmp_path / "seltune").mkdir()
    ledger = tmp_path / "seltune" / "trials.json"
    ledger.write_text(json.dumps({"trials": {"t1": entry}}))
    assert load_ledger(tmp_path).trials["t1"].to_dict() == entry
    ledger.write_text(json.dumps({"trials": {"t1": edit(entry)}}))
    with pytest.raises(InputError) as info:
        load_ledger(tmp_path)
    assert str(info.value).startswith(f"{ledger}: {field}"), str(info.value)
