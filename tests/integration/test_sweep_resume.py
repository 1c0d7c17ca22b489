"""A sweep whose driver is killed with SIGKILL mid-run, then ``seltune resume``.

Checks: exactly ``num_samples`` trials in the end, no duplicates, every trial finished;
the Optuna history kept (trials told before the kill are still there, trials asked
after the last snapshot are FAIL, not counted); a trial ASHA stopped before the kill
has no iteration beyond its stop (rung decisions kept across the restart).

In the extended tier: CI resumes a SIGKILLed driver in ``test_faults.py``
(kill_after_result), whose invariants include these.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from cluster_fixtures import group_pids

pytestmark = [pytest.mark.integration, pytest.mark.extended]

ROOT = Path(__file__).resolve().parents[2]
NUM_SAMPLES = 10


def _read(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def test_sigkill_then_resume(tmp_path, capsys):
    from core.bundles import save_bundle
    from core.synth import synth_argse_bundle

    save_bundle(synth_argse_bundle(classes=20, n_max=100, per_class=(15, 10, 20)),
                tmp_path / "argse")
    ray_tmp = tempfile.mkdtemp(prefix="st-ray-", dir="/tmp")
    env = dict(os.environ, RAY_TMPDIR=ray_tmp, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT),
               RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    storage, exp = tmp_path / "runs", tmp_path / "runs" / "killed"
    sweep = [sys.executable, "-m", "tuning.cli", "sweep", "--data", str(tmp_path / "argse"),
             "--num-samples", str(NUM_SAMPLES), "--num-cpus", "2", "--storage", str(storage),
             "--name", "killed", "--seed", "3", "--space", "argse-selective-seed",
             # the seed's rule: trials differ (a uniform gate reproduces the baseline in
             # every trial, and ASHA stops nothing among equals)
             "--set", "stageA_epochs=1", "--set", "cycles=3",
             "--set", "b1_epochs=3", "--set", "batch_size=64"]
    # Own session: the driver and the Ray processes it starts share one process group.
    driver = subprocess.Popen(sweep, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 150
        stopped_before: dict = {}
        ledger: dict = {"trials": {}}
        asha: dict = {}
        while time.time() < deadline and driver.poll() is None:
            ledger = _read(exp / "seltune" / "trials.json") or {"trials": {}}
            asha = _read(exp / "seltune" / "asha_state.json") or {}
            # Ray calls an ASHA-stopped trial TERMINATED too; status reports it STOPPED.
            done = [t for t in ledger["trials"].values() if t["status"] == "TERMINATED"
                    and t["trial_id"] not in asha.get("stopped", {})]
            running = [t for t in ledger["trials"].values() if t["status"] == "RUNNING"]
            # Kill while the sweep is unfinished: a trial mid-run, or trials still to come
            # (what the assertion after the kill checks).
            if done and asha.get("stopped") and (running or len(ledger["trials"]) < NUM_SAMPLES):
                stopped_before = dict(asha["stopped"])
                break
            time.sleep(0.1)
        seen = {t["trial_id"]: t["status"] for t in ledger["trials"].values()}
        assert driver.poll() is None, f"sweep ended before it could be killed (last seen: " \
            f"ledger {seen}, ASHA stopped {sorted(asha.get('stopped', {}))}): " + \
            driver.stderr.read().decode()[-2000:]
        assert stopped_before, "no trial was stopped by ASHA in time"
        # `seltune status` works while the sweep runs (in-process: the driver must still
        # be alive when it is killed) ...
        from core.errors import InputError
        from tuning.cli import main
        from tuning.sweep.lock import claim_driver

        assert main(["status", str(exp), "--json"]) == 0
        live_status = json.loads(capsys.readouterr().out)
        assert live_status["counts"].get("TERMINATED", 0) >= 1
        assert live_status["counts"].get("STOPPED", 0) >= 1 and live_status["best"] is not None
        # ... and a second driver (`seltune resume`) is refused while this one lives.
        with pytest.raises(InputError, match="still running"):
            claim_driver(exp)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        # The local Ray the killed driver started (same process group): stop it by pid.
        time.sleep(1)
        for pid in group_pids(driver.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    ledger_at_kill = json.loads((exp / "seltune" / "trials.json").read_text())
    assert len(ledger_at_kill["trials"]) < NUM_SAMPLES or any(
        t["status"] != "TERMINATED" for t in ledger_at_kill["trials"].values())

    ray_tmp2 = tempfile.mkdtemp(prefix="st-ray-", dir="/tmp")
    p = subprocess.run([sys.executable, "-m", "tuning.cli", "resume", str(exp), "--num-cpus",
                        "2", "--json"], env=dict(env, RAY_TMPDIR=ray_tmp2), cwd=ROOT,
                       capture_output=True, text=True, timeout=240)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    shutil.rmtree(ray_tmp2, ignore_errors=True)
    assert p.returncode == 0, p.stderr[-4000:]
    status = json.loads(p.stdout)

    ids = [t["trial_id"] for t in status["trials"]]
    assert len(ids) == NUM_SAMPLES == len(set(ids))
    assert set(status["counts"]) <= {"TERMINATED", "STOPPED"}
    # Stopped trials stay stopped: no iteration after the rung that stopped them.
    ledger = json.loads((exp / "seltune" / "trials.json").read_text())
    by_id = {t["trial_id"]: t for t in status["trials"]}
    for tid, info in stopped_before.items():
        assert by_id[tid]["status"] == "STOPPED"
        assert max(map(int, ledger["trials"][tid]["history"])) == info["iteration"]
    # Finished before the kill: still there, with the same iterations.
    for tid, t in ledger_at_kill["trials"].items():
        if t["status"] == "TERMINATED":
            assert by_id[tid]["iterations"] == t["iterations"]

    spec = json.loads((exp / "seltune" / "sweep.json").read_text())
    study = optuna.load_study(study_name=spec["study_name"], storage=spec["study_storage"])
    real = [t for t in study.trials if "orphaned" not in t.user_attrs]
    assert sorted(t.user_attrs["ray_trial_id"] for t in real) == sorted(ids)
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in real)
    assert all(t.state.name == "FAIL" for t in study.trials if "orphaned" in t.user_attrs)
    for t in real:
        assert (t.state.name == "PRUNED") == (by_id[t.user_attrs["ray_trial_id"]]["status"]
                                              == "STOPPED")
