"""The trial ledger across a driver crash, and ``--json`` stdout hygiene (no Ray started)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

from sweep_specs import make_spec

from tuning.experiment import load_ledger, save_spec, write_json
from tuning.status import experiment_status
from tuning.sweep import LedgerCallback


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
    assert set(ledger["trials"]) == {"a", "d"}
    assert ledger["lost"]["b"]["status"] == "LOST"
    status = experiment_status(tmp_path / "exp")
    assert [t["trial_id"] for t in status["trials"]] == ["a", "d"]
    assert status["counts"] == {"TERMINATED": 2}
    assert status["lost"] == ["b"]
    # Only the first step reconciles: trials created later in this run stay.
    cb.ledger["trials"]["c"] = {"trial_id": "c", "order": 2, **entry}
    cb.on_step_begin(1, [_trial("a", "TERMINATED")])
    assert "c" in cb.ledger["trials"]


def test_fresh_sweep_first_step_changes_nothing(tmp_path):
    (tmp_path / "exp" / "seltune").mkdir(parents=True)
    cb = LedgerCallback(str(tmp_path / "exp"))
    cb.on_step_begin(0, [])
    assert not (tmp_path / "exp" / "seltune" / "trials.json").exists()


def test_stdout_to_stderr_keeps_stdout_for_the_json_object():
    code = (
        "import os, sys\n"
        "from tuning.cli.output import stdout_to_stderr, print_json\n"
        "with stdout_to_stderr(True):\n"
        "    print('noise from python')\n"
        "    os.system('echo noise from a child process')\n"
        "print_json({'ok': True})\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=os.getcwd())
    assert json.loads(out.stdout) == {"ok": True}
    assert "noise from python" in out.stderr and "noise from a child process" in out.stderr
