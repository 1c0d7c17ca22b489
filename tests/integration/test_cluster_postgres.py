"""The shared Optuna study database: a real PostgreSQL on loopback (scripts/postgres.sh).

The server is Debian's `postgresql`, installed with apt-get when missing and started in
a private directory by the `postgres_url` fixture; nothing is mocked.
"""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
from cluster_fixtures import REPO, postgres_url  # noqa: F401  (pytest fixture)

pytestmark = pytest.mark.integration

WORKER = """
import sys, optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
url, name, tag, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
study = optuna.load_study(study_name=name, storage=optuna.storages.RDBStorage(url))
def objective(trial):
    trial.set_user_attr("worker", tag)
    x = trial.suggest_float("x", -10, 10)
    return (x - 2) ** 2
study.optimize(objective, n_trials=n)
"""


def test_url_is_a_loopback_psycopg2_url(postgres_url):  # noqa: F811
    assert postgres_url.startswith("postgresql+psycopg2://seltune:")
    assert "@127.0.0.1:" in postgres_url


def test_two_processes_share_one_optuna_study(postgres_url):  # noqa: F811
    import optuna

    name = f"shared-{uuid.uuid4().hex[:8]}"
    storage = optuna.storages.RDBStorage(postgres_url)
    optuna.create_study(study_name=name, storage=storage, direction="minimize",
                        sampler=optuna.samplers.TPESampler(seed=0))
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, postgres_url, name, tag, "6"],
                              cwd=str(REPO), stderr=subprocess.PIPE, text=True)
             for tag in ("a", "b")]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]

    study = optuna.load_study(study_name=name, storage=optuna.storages.RDBStorage(postgres_url))
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 12
    assert sorted(t.number for t in trials) == list(range(12))  # no number given twice
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert sorted(t.user_attrs["worker"] for t in trials) == ["a"] * 6 + ["b"] * 6
    assert study.best_value == min(t.value for t in trials)


def test_server_restart_keeps_the_study():
    """stop by pid, start again on the same directory: the study is still there."""
    import os
    import shutil
    import tempfile

    import optuna

    directory = tempfile.mkdtemp(prefix="stc-pg2-", dir="/tmp")
    os.chmod(directory, 0o755)
    script = str(REPO / "scripts" / "postgres.sh")
    try:
        url = subprocess.run(["bash", script, "start", directory], capture_output=True,
                             text=True, timeout=900, check=True).stdout.strip().splitlines()[-1]
        pid = open(os.path.join(directory, "pid")).read().strip()
        study = optuna.create_study(study_name="kept", storage=optuna.storages.RDBStorage(url))
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
        optuna.storages.RDBStorage(url).engine.dispose()
        subprocess.run(["bash", script, "stop", directory], check=True, timeout=120,
                       capture_output=True)
        assert not os.path.exists(f"/proc/{pid}")  # stopped by pid
        status = subprocess.run(["bash", script, "status", directory], capture_output=True,
                                text=True)
        assert status.returncode == 1 and "stopped" in status.stdout
        url2 = subprocess.run(["bash", script, "start", directory], capture_output=True,
                              text=True, timeout=300, check=True).stdout.strip().splitlines()[-1]
        again = optuna.load_study(study_name="kept", storage=optuna.storages.RDBStorage(url2))
        assert len(again.trials) == 3
    finally:
        subprocess.run(["bash", script, "stop", directory], capture_output=True, timeout=120)
        shutil.rmtree(directory, ignore_errors=True)
