"""End-to-end sweeps through the ``seltune`` CLI on a real local Ray (2 CPUs, loopback,
private RAY_TMPDIR), one per trainable, then status, export and evaluate (the stage1
sweep is in ``test_operating_point_sweeps.py``, judged at its operating point).

Small on purpose: tiny synthetic bundles, schedules shrunk with ``--set``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from cli_env import ROOT, private_env, run_seltune, write_small_bundles

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env():
    yield from private_env("st-ray-")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    return write_small_bundles(tmp_path_factory.mktemp("bundles"))


seltune = run_seltune


def study_trials(exp: Path):
    spec = json.loads((exp / "seltune" / "sweep.json").read_text())
    return optuna.load_study(study_name=spec["study_name"],
                             storage=spec["study_storage"]).trials


def test_selective_sweep_status_export_evaluate(env, bundles, tmp_path):
    storage = tmp_path / "runs"
    p = seltune(env, "sweep", "--trainable", "argse-selective", "--data", bundles / "argse",
                "--num-samples", 5, "--num-cpus", 2, "--storage", storage, "--name", "sel",
                "--seed", 1, "--set", "stageA_epochs=1", "--set", "cycles=3",
                "--set", "b1_epochs=1", "--set", "batch_size=128", "--json")
    status = json.loads(p.stdout)
    exp = storage / "sel"
    assert status["path"] == str(exp) and status["metric"] == "worst_group_error"
    assert sum(status["counts"].values()) == 5
    assert set(status["counts"]) <= {"TERMINATED", "STOPPED"}
    assert all("augrc" in t["metrics"] and "worst_group_error" in t["metrics"]
               for t in status["trials"])
    # Fixed values reach every trial; the searched ones vary.
    assert {t["config"]["cycles"] for t in status["trials"]} == {3}
    # (the warm start's first two trials are the defaults and the uniform gate)
    learned = [t for t in status["trials"] if t["config"].get("gate") != "uniform"]
    assert len({json.dumps(t["config"], sort_keys=True) for t in learned}) == len(learned)
    # ASHA-stopped trials are PRUNED in the study, finished ones COMPLETE, none lost.
    trials = study_trials(exp)
    states = {t.user_attrs["ray_trial_id"]: t.state.name for t in trials}
    for t in status["trials"]:
        expected = "PRUNED" if t["status"] == "STOPPED" else "COMPLETE"
        assert states[t["trial_id"]] == expected
        if t["status"] == "STOPPED":
            assert t["iterations"] < 4
    # status works after the run, by name under --storage too
    again = json.loads(seltune(env, "status", "sel", "--storage", storage, "--json").stdout)
    assert again["counts"] == status["counts"] and again["best"] == status["best"]

    out = tmp_path / "export"
    seltune(env, "export", exp, "--out", out, "--json")
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"val", "test", "baselines", "config", "checkpoint"}
    assert set(metrics["baselines"]["test"]) >= {"chow:mixture", "plugin_balanced", "plugin_worst"}
    trial_dirs = list(exp.glob("trial_*"))
    assert len(trial_dirs) == 5
    assert not [e for d in trial_dirs for e in d.glob("events.out.tfevents.*")]
    best_config = json.loads((out / "best_config.json").read_text())
    assert best_config == metrics["config"] and best_config["cycles"] == 3
    assert metrics["trial_id"] == status["best"]["trial_id"] or \
        status["counts"].get("TERMINATED")  # best among finished trials when any finished
    assert (out / "checkpoint" / "gating_selective.ckpt").is_file()
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3 and "Top trials" in html
    for png in ("history.png", "risk_coverage.png"):
        assert (out / "report" / png).stat().st_size > 1000
    # The exported val metrics are those the sweep saw for that checkpoint.
    ledger = json.loads((exp / "seltune" / "trials.json").read_text())
    seen = ledger["trials"][metrics["trial_id"]]["history"][str(metrics["iteration"])]
    assert metrics["val"]["worst_group_error"] == pytest.approx(seen["worst_group_error"])
    # `seltune evaluate` on the exported checkpoint reproduces the test metrics exactly.
    ev = json.loads(seltune(env, "evaluate", out / "checkpoint", "--data", bundles / "argse",
                            "--split", "test", "--device", "cpu", "--json").stdout)
    assert ev["metrics"] == metrics["test"]


def test_pretrain_multi_objective_pareto(env, bundles, tmp_path):
    storage = tmp_path / "runs"
    p = seltune(env, "sweep", "--trainable", "argse-pretrain", "--data", bundles / "argse",
                "--num-samples", 4, "--num-cpus", 2, "--storage", storage, "--name", "mo",
                "--metric", "augrc,worst_group_error", "--set", "epochs=2", "--json")
    status = json.loads(p.stdout)
    assert status["counts"] == {"TERMINATED": 4}  # no early stopping in multi-objective
    assert all(t["iterations"] == 2 for t in status["trials"])
    assert 1 <= len(status["pareto"]) <= 4
    trials = study_trials(storage / "mo")
    assert all(t.state.name == "COMPLETE" and len(t.values) == 2 for t in trials)
    out = tmp_path / "export"
    seltune(env, "export", storage / "mo", "--out", out)
    front = json.loads((out / "pareto.json").read_text())["front"]
    assert {f["trial_id"] for f in front} == set(status["pareto"])
    for f in front:
        assert (out / f["checkpoint"] / "gating_pretrained.ckpt").is_file()
    assert (out / "checkpoint" / "gating_pretrained.ckpt").is_file()


def test_local_ray_is_private_and_on_loopback(env):
    code = ("from tuning.sweep.runtime import start_ray\n"
            "import os, ray\n"
            "rt = start_ray('local', num_cpus=1)\n"
            "print(ray.nodes()[0]['NodeManagerAddress'], ray.get_runtime_context().gcs_address,"
            " rt.temp_dir == os.environ['RAY_TMPDIR'])\n"
            "rt.close()\n")
    p = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    node, gcs, private = p.stdout.split()
    assert node == "127.0.0.1" and gcs.startswith("127.0.0.1:") and private == "True"


def test_trials_run_in_prestarted_preloaded_workers_and_close_stops_all(env, tmp_path):
    """The first trial lands in a worker Ray started before the sweep began, which has
    already imported the preloaded module; after close() no process of this Ray is left."""
    code = f"""
import os, sys, time
from tuning.sweep.runtime import start_ray
from tuning.sweep.driver import _env_for_tune, _loggers
_env_for_tune()
rt = start_ray('local', num_cpus=1, preload=('json.tool',))
from ray import tune

def worker_pids():
    pids = set()
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            cmd = open(f'/proc/{{pid}}/cmdline', 'rb').read()
        except OSError:
            continue
        if cmd.startswith(b'ray::IDLE'):  # Ray renames an idle worker process so
            pids.add(int(pid))
    return pids

deadline = time.time() + 60
while not worker_pids() and time.time() < deadline:
    time.sleep(0.2)
before = worker_pids()

def trial(config):
    tune.report({{'pid': os.getpid(), 'preloaded': int('json.tool' in sys.modules)}})

res = tune.Tuner(tune.with_resources(trial, {{'cpu': 1}}),
                 tune_config=tune.TuneConfig(num_samples=1),
                 run_config=tune.RunConfig(storage_path=r'{tmp_path}', verbose=0,
                                           callbacks=_loggers(False))).fit()
m = res[0].metrics
temp = rt.temp_dir
rt.close()
left = []
for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
        cmd = open(f'/proc/{{pid}}/cmdline', 'rb').read()
        state = open(f'/proc/{{pid}}/stat').read().rsplit(')', 1)[1].split()[0]
    except OSError:
        continue
    if temp.encode() in cmd and state != 'Z':
        left.append(cmd[:80])
print(int(m['pid'] in before), m['preloaded'], len(left))
"""
    p = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    prestarted, preloaded, left = p.stdout.split()[-3:]
    assert (prestarted, preloaded, left) == ("1", "1", "0"), p.stdout
