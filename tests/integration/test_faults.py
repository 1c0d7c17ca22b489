"""Fault injection: a sweep killed (SIGKILL) or interrupted (SIGINT) at named points, then
``seltune resume`` (issue 15).

The driver dies at a fault point of its own (``SELTUNE_FAULT=POINT[:N[:SIGNAL]]``, see
:func:`core.atomic.fault_point`) or from a signal sent from outside. After every case
the same invariants are checked (:func:`check_invariants`):

- exactly ``num_samples`` trials end finished (TERMINATED or STOPPED) or errored, none
  duplicated (by trial id, and in the study);
- no trial that had finished before the fault was run again (its ``result.json`` is
  byte for byte what it was);
- no trial ASHA had stopped ran beyond the iteration it was stopped at;
- the Optuna study agrees with the ledger (COMPLETE = TERMINATED, PRUNED = STOPPED,
  FAIL = ERROR or ``orphaned``), and no study trial of the sweep is left RUNNING;
- every ``trial_*`` directory is one of the ledger's trials, and no process is left of
  the resumed driver's Ray, nor of the killed one's (the resume stops what a SIGKILLed
  driver's local Ray leaves: its agents);
- no trial is abandoned: one running when the driver died continued from its last
  checkpoint as the same trial (Ray's snapshot knew it, or the resume put it back into
  the snapshot), or, without a usable snapshot, ran again with the same parameters
  (``seltune_rerun_of``); the ledger has no ``lost`` trial and ``status`` lists none.

+----------------------+---------------------------------+---------------------------+
| case                 | fault point                     | checked                   |
+======================+=================================+===========================+
| sigint_mid_run       | SIGINT to the process group      | exit 130 + resume hint,   |
|                      | after the first finished trial  | nothing half-done called  |
|                      | (Ctrl-C in a terminal)          | TERMINATED; invariants    |
| kill_after_tuner_pkl | after_tuner_pkl (SIGKILL)       | invariants; 2nd resume    |
|                      |                                 | runs nothing              |
| kill_before_snapshot | before_first_snapshot (SIGKILL) | invariants                |
| kill_after_result    | after_trial_result:6 (SIGKILL)  | invariants                |
| started_after_       | after_trial_result:7 (SIGKILL), | the trial Ray's snapshot  |
| snapshot (extended)  | one Ray snapshot only           | lacks continues from its  |
|                      | (TUNE_GLOBAL_CHECKPOINT_S)      | checkpoint, same id and   |
|                      |                                 | study trial; invariants   |
| truncated_snapshot   | after_trial_result:6 + the      | invariants                |
|                      | newest experiment_state cut     |                           |
| kill_during_export   | during_export (SIGKILL)         | no half-written --out;    |
|                      |                                 | the export then succeeds  |
| planted_pickles      | after_trial_result:8 (SIGKILL), | payload never runs;       |
|                      | then a __reduce__ payload as    | tuner.pkl: refused in one |
|                      | tuner.pkl, then as the newest   | line (exit 2); searcher   |
|                      | searcher-state-*.pkl            | state: not read, resumed  |
|                      |                                 | from ledger; invariants   |
+----------------------+---------------------------------+---------------------------+

CI runs sigint_mid_run, kill_after_result, kill_during_export and planted_pickles; the
other rows and the long matrix (every point x SIGKILL/SIGINT x several counts) are the
extended tier (``bash scripts/test.sh -m extended``).
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

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
NUM_SAMPLES = 4
FAST = ["--set", "stageA_epochs=1", "--set", "cycles=2", "--set", "b1_epochs=1"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    from core.bundles import save_bundle
    from core.synth import synth_argse_bundle

    path = tmp_path_factory.mktemp("faults") / "argse"
    save_bundle(synth_argse_bundle(classes=20, n_max=100, per_class=(15, 10, 20)), path)
    return path


def _env(fault: str | None = None) -> dict[str, str]:
    env = dict(os.environ, RAY_TMPDIR=tempfile.mkdtemp(prefix="ft-ray-", dir="/tmp"),
               HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    env.pop("SELTUNE_FAULT", None)
    if fault:
        env["SELTUNE_FAULT"] = fault
    return env


def _kill_group(pgid: int) -> list[int]:
    """SIGKILL what is left of process group ``pgid``; returns the pids that were left."""
    left = group_pids(pgid)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


#: Process groups of killed drivers whose leftovers the next driver is to stop.
_KILLED: list[int] = []
_KILLED_TMP: list[str] = []


def _cli(args: list[str], env: dict[str, str], timeout: float = 300, reap: bool = True
         ) -> subprocess.CompletedProcess:
    """Run ``seltune ARGS`` in its own session; what is left of it afterwards is killed
    and reported in ``.left`` (with ``reap=False`` a killed driver's leftovers are kept
    for the resume to stop; :func:`_resume` checks it did)."""
    p = subprocess.Popen([sys.executable, "-m", "tuning.cli", *args], env=env, cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    left: list[int] = []
    try:
        out, err = p.communicate(timeout=timeout)
    finally:
        time.sleep(0.5)
        if reap or p.returncode == 0:
            left = _kill_group(p.pid)
            shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
        else:
            _KILLED.append(p.pid)
            _KILLED_TMP.append(env["RAY_TMPDIR"])
    result = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    result.left = left  # type: ignore[attr-defined]
    return result


@pytest.fixture(autouse=True)
def _no_leftovers():
    """Whatever a test leaves of a killed driver is stopped (by pid) at its end."""
    yield
    while _KILLED:
        _kill_group(_KILLED.pop())
    while _KILLED_TMP:
        shutil.rmtree(_KILLED_TMP.pop(), ignore_errors=True)


def _sweep_args(bundle: Path, storage: Path, name: str, n: int = NUM_SAMPLES) -> list[str]:
    return ["sweep", "--data", str(bundle), "--num-samples", str(n), "--num-cpus", "2",
            "--storage", str(storage), "--name", name, "--seed", "1", *FAST]


def _read(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def snapshot(exp: Path) -> dict:
    """What must survive: finished trials' result.json bytes, ASHA's stops."""
    ledger = _read(exp / "seltune" / "trials.json") or {"trials": {}}
    asha = _read(exp / "seltune" / "asha_state.json") or {}
    finished = {}
    for tid, t in ledger["trials"].items():
        result = exp / (t.get("dir") or f"trial_{tid}") / "result.json"
        if t["status"] == "TERMINATED" and result.is_file():
            finished[tid] = result.read_bytes()
    return {"ledger": ledger, "stopped": dict(asha.get("stopped", {})), "finished": finished}


def check_invariants(exp: Path, before: dict, num_samples: int = NUM_SAMPLES) -> dict:
    """The invariants of the module docstring; returns ``{name: True}`` for the table."""
    from tuning.experiment.spec import load_spec
    from tuning.results.status import experiment_status

    spec = load_spec(exp)
    status = experiment_status(exp)
    ids = [t["trial_id"] for t in status["trials"]]
    by_id = {t["trial_id"]: t for t in status["trials"]}
    ledger = json.loads((exp / "seltune" / "trials.json").read_text())
    results = {}

    assert len(ids) == num_samples == len(set(ids)), status["counts"]
    assert set(status["counts"]) <= {"TERMINATED", "STOPPED", "ERROR"}, status["counts"]
    results["exactly num_samples finished"] = True

    for tid, data in before["finished"].items():
        t = ledger["trials"][tid]
        assert (exp / (t.get("dir") or f"trial_{tid}") / "result.json").read_bytes() == data, tid
        assert by_id[tid]["status"] in ("TERMINATED", "STOPPED")
    results["no finished trial re-run"] = True

    for tid, info in before["stopped"].items():
        if tid in ledger["trials"]:
            assert max(map(int, ledger["trials"][tid]["history"])) == info["iteration"], tid
    results["no ASHA-stopped trial ran on"] = True

    study = optuna.load_study(study_name=spec.study_name, storage=spec.study_storage)
    real = [t for t in study.trials if "orphaned" not in t.user_attrs]
    assert sorted(t.user_attrs.get("ray_trial_id") for t in real) == sorted(ids)
    expect = {"TERMINATED": "COMPLETE", "STOPPED": "PRUNED", "ERROR": "FAIL"}
    for t in real:
        assert t.state.name == expect[by_id[t.user_attrs["ray_trial_id"]]["status"]], t.number
    assert all(t.state.name == "FAIL" for t in study.trials if "orphaned" in t.user_attrs)
    results["study agrees with ledger"] = True

    named = {t.get("dir") or f"trial_{tid}" for tid, t in ledger["trials"].items()}
    orphans = sorted(p.name for p in exp.glob("trial_*") if p.name not in named)
    assert not orphans, orphans
    results["no orphan trial dirs"] = True

    # A trial running when the driver died is continued (Ray's snapshot knew it, or it
    # was put back into the snapshot) or re-run with its parameters (no usable
    # snapshot): never abandoned as "lost", and status lists none.
    assert not ledger.get("lost"), sorted(ledger["lost"])
    assert "lost" not in status, status.get("lost")
    for tid in ledger.get("replaced", {}):  # re-run with the same parameters
        first = _params_of(study, tid)
        assert any(s.user_attrs.get("seltune_rerun_of") == tid and s.params == first
                   for s in real), tid
    results["no trial abandoned"] = True
    return results


def _params_of(study, ray_trial_id: str) -> dict:
    """The parameters of the study trial that ran ``ray_trial_id`` first."""
    return next(t.params for t in study.trials if t.user_attrs.get("ray_trial_id") == ray_trial_id)


def _resume(exp: Path) -> subprocess.CompletedProcess:
    p = _cli(["resume", str(exp), "--num-cpus", "2", "--json"], _env())
    assert p.returncode == 0, p.stderr[-4000:]
    assert not p.left, f"processes left by the resumed driver: {p.left}"
    # ... nor of the killed one: the resume stopped its local Ray's leftovers
    left = {pgid: group_pids(pgid) for pgid in _KILLED}
    assert not any(left.values()), f"processes of a killed driver still running: {left}"
    return p


def _run_fault(bundle: Path, tmp_path: Path, fault: str, name: str,
               n: int = NUM_SAMPLES) -> tuple[Path, subprocess.CompletedProcess]:
    storage = tmp_path / "runs"
    p = _cli(_sweep_args(bundle, storage, name, n), _env(fault), reap=False)
    assert "SELTUNE_FAULT: SIG" in p.stderr, p.stderr[-3000:]
    return storage / name, p


@pytest.mark.parametrize("case,fault", [
    pytest.param("kill_after_tuner_pkl", "after_tuner_pkl", marks=pytest.mark.extended),
    pytest.param("kill_before_snapshot", "before_first_snapshot",
                 marks=pytest.mark.extended),
    ("kill_after_result", "after_trial_result:6"),  # CI's case: resume through the snapshot
])
def test_sigkill_at_a_fault_point_then_resume(bundle, tmp_path, case, fault):
    exp, p = _run_fault(bundle, tmp_path, fault, case)
    assert p.returncode == -signal.SIGKILL
    before = snapshot(exp)
    _resume(exp)
    check_invariants(exp, before)
    again = _resume(exp)  # nothing left to run: the sweep is complete for good
    assert "already finished" in again.stderr


@pytest.mark.slow
@pytest.mark.extended
def test_trial_started_after_the_snapshot_continues_from_its_checkpoint(bundle, tmp_path):
    """Ray's snapshot taken once, at the start (``TUNE_GLOBAL_CHECKPOINT_S``): the trial
    started after it, killed after it reported and checkpointed, is unknown to Ray's
    restore. It must go on from its checkpoint as the same trial (id, directory, study
    trial), not be abandoned for a new one (issue 15, defect 3). ~75 s: in the extended
    tier (in CI, kill_after_result resumes through the same snapshot path)."""
    storage, name = tmp_path / "runs", "after_snapshot"
    # One trial at a time, none stopped early (grace period = max_t): trial 2 starts
    # after the snapshot and is killed at its third report (result 7), its earlier
    # reports written to the ledger (the seed's space with 20 B1 epochs of batch 8 makes
    # a report take ~1 s, longer than the ledger's half-second write throttle).
    env = _env("after_trial_result:7")
    env["TUNE_GLOBAL_CHECKPOINT_S"] = "100000"
    args = _sweep_args(bundle, storage, name)
    args[args.index("--set")::] = ["--space", "argse-selective-seed", "--set",
                                   "stageA_epochs=1", "--set", "cycles=3", "--set",
                                   "b1_epochs=20", "--set", "batch_size=8",
                                   "--grace-period", "4", "--max-concurrent", "1"]
    p = _cli(args, env, reap=False)
    assert "SELTUNE_FAULT: SIG" in p.stderr, p.stderr[-3000:]
    exp = storage / name
    before = snapshot(exp)
    state = json.loads(sorted(exp.glob("experiment_state-*.json"))[-1].read_text())
    known = {json.loads(t)["trial_id"] for t, _ in state["trial_data"]}
    running = {tid: t for tid, t in before["ledger"]["trials"].items()
               if t["status"] not in ("TERMINATED", "ERROR") and tid not in known
               and any(h.get("checkpoint_dir_name") for h in t["history"].values())}
    assert running, "no trial had reported after Ray's snapshot: the case tests nothing"
    study_before = {tid: _number(exp, tid) for tid in running}
    r = _resume(exp)
    for tid in running:
        assert f"trial {tid} (started after Ray's last snapshot) continues from its " \
               f"checkpoint_" in r.stderr, r.stderr[-3000:]
    check_invariants(exp, before)
    ledger = json.loads((exp / "seltune" / "trials.json").read_text())
    for tid in running:  # the same trial finished, in the same study trial
        assert ledger["trials"][tid]["status"] in ("TERMINATED", "STOPPED", "ERROR")
        assert _number(exp, tid) == study_before[tid]


def _number(exp: Path, ray_trial_id: str) -> int:
    from tuning.experiment.spec import load_spec

    spec = load_spec(exp)
    study = optuna.load_study(study_name=spec.study_name, storage=spec.study_storage)
    return next(t.number for t in study.trials
                if t.user_attrs.get("ray_trial_id") == ray_trial_id)


@pytest.mark.extended
def test_truncated_snapshot_then_resume(bundle, tmp_path):
    exp, _ = _run_fault(bundle, tmp_path, "after_trial_result:6", "truncated")
    states = sorted(exp.glob("experiment_state-*.json"))
    newest = states[-1] if states else exp / "experiment_state-2099-01-01_00-00-00.json"
    text = newest.read_text() if newest.is_file() else '{"trial_data": [["x"]]}'
    newest.write_text(text[: len(text) // 2])  # killed in the middle of writing it
    before = snapshot(exp)
    _resume(exp)
    check_invariants(exp, before)


def test_sigint_marks_nothing_half_done_finished(bundle, tmp_path):
    storage, name = tmp_path / "runs", "interrupted"
    exp = storage / name
    args = _sweep_args(bundle, storage, name)
    # the seed's space: its cycles train the gate (B1), so trials are still running when
    # the first one finishes and Ctrl-C comes (the default space's cycles are instant)
    args[args.index("--set")::] = ["--space", "argse-selective-seed", "--set",
                                   "stageA_epochs=1", "--set", "cycles=8",
                                   "--set", "b1_epochs=1", "--set", "batch_size=8",
                                   "--grace-period", "9"]
    env = _env()
    driver = subprocess.Popen([sys.executable, "-m", "tuning.cli", *args], env=env, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    lines = []
    try:
        assert driver.stderr is not None
        for line in driver.stderr:
            lines.append(line)
            if "finished after" in line:
                break
        time.sleep(1.0)
        assert driver.poll() is None, "".join(lines[-30:])
        os.killpg(driver.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        rest = driver.stderr.read()
        rc = driver.wait(timeout=120)
    finally:
        time.sleep(0.5)
        left = _kill_group(driver.pid)
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    assert rc == 130, rest[-3000:]
    assert "interrupted" in rest and f"seltune resume {exp}" in rest
    assert not left, f"processes left after Ctrl-C: {left}"
    before = snapshot(exp)
    ledger = before["ledger"]["trials"]
    assert any(t["status"] == "INTERRUPTED" for t in ledger.values()), ledger
    for tid, t in ledger.items():  # finished = ran all 9 reports, or stopped by ASHA
        if t["status"] == "TERMINATED":
            assert t["iterations"] == 9 or tid in before["stopped"], (tid, t["iterations"])
    _resume(exp)
    check_invariants(exp, before)


def test_sigkill_during_export_leaves_no_half_export(bundle, tmp_path):
    storage = tmp_path / "runs"
    p = _cli(_sweep_args(bundle, storage, "exp", n=2), _env())
    assert p.returncode == 0, p.stderr[-3000:]
    out = tmp_path / "export"
    killed = _cli(["export", str(storage / "exp"), "--out", str(out)], _env("during_export"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not out.exists()
    again = _cli(["export", str(storage / "exp"), "--out", str(out)], _env())
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "metrics.json").is_file() and (out / "best_config.json").is_file()


PAYLOAD = """
import os, pickle, sys
class Payload:
    def __reduce__(self):
        return (os.system, ("touch " + sys.argv[2],))
open(sys.argv[1], "wb").write(pickle.dumps(Payload()))
"""


def test_planted_pickles_are_never_unpickled(bundle, tmp_path):
    exp, _ = _run_fault(bundle, tmp_path, "after_trial_result:8", "planted")
    marker = tmp_path / "payload-ran"
    original = (exp / "tuner.pkl").read_bytes()
    subprocess.run([sys.executable, "-c", PAYLOAD, str(exp / "tuner.pkl"), str(marker)],
                   check=True)
    p = _cli(["resume", str(exp), "--num-cpus", "2"], _env())
    assert p.returncode == 2 and not marker.exists(), p.stderr[-3000:]
    line = p.stderr.strip().splitlines()[-1]
    assert "tuner.pkl: changed since it was signed" in line and "--trust-experiment" in line
    # the newest snapshot's searcher state planted instead: not read, the resume continues
    # from the ledger and the study
    (exp / "tuner.pkl").write_bytes(original)
    before = snapshot(exp)
    states = sorted(exp.glob("searcher-state-*.pkl"))
    if states:
        subprocess.run([sys.executable, "-c", PAYLOAD, str(states[-1]), str(marker)],
                       check=True)
        _resume(exp)
        assert not marker.exists()
        check_invariants(exp, before)


@pytest.mark.slow
@pytest.mark.extended
@pytest.mark.parametrize("point", ["after_tuner_pkl", "before_first_snapshot",
                                   "after_trial_result"])
@pytest.mark.parametrize("sig", ["KILL", "INT"])
@pytest.mark.parametrize("count", [1, 3, 9])
def test_fault_matrix(bundle, tmp_path, point, sig, count):
    if point != "after_trial_result" and count > 1:
        pytest.skip("reached once per driver")
    exp, p = _run_fault(bundle, tmp_path, f"{point}:{count}:{sig}", "m", n=6)
    if sig == "INT":
        assert p.returncode in (130, 0), p.stderr[-3000:]
    before = snapshot(exp)
    if p.returncode != 0:
        _resume(exp)
    check_invariants(exp, before, num_samples=6)
