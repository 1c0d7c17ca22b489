"""``seltune dashboard EXPERIMENT``: the missing-extra error, and a real server.

The serving test starts the command in a subprocess on a port the OS picks (the
command prints its URL), asks optuna-dashboard's API for the studies, then stops it
with SIGINT as Ctrl-C would. Every wait is bounded; nothing asserts on timing.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from tuning.cli import main
from tuning.experiment.spec import save_spec

REPO = Path(__file__).resolve().parents[3]


def _experiment(tmp_path: Path) -> Path:
    """An experiment directory (``seltune/sweep.json``) whose study lives in SQLite."""
    import optuna
    from sweep_specs import make_spec

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="dash-exp", storage=storage)
    study.optimize(lambda t: (t.suggest_float("x", -1, 1) - 0.2) ** 2, n_trials=3)
    spec = make_spec(tmp_path / "store", name="dash-exp", study_storage=storage,
                     study_name="dash-exp")
    save_spec(spec)
    return spec.path


def test_missing_extra_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)  # import raises ImportError
    rc = main(["dashboard", str(tmp_path / "anything")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.strip().count("\n") == 0
    assert "pip install 'seltune[dashboard]'" in err


def test_unknown_study_is_a_one_line_error(tmp_path, capsys):
    pytest.importorskip("optuna_dashboard")
    from sweep_specs import make_spec

    spec = make_spec(tmp_path / "store", name="nostudy",
                     study_storage=f"sqlite:///{tmp_path / 'empty.db'}", study_name="nostudy")
    save_spec(spec)
    rc = main(["dashboard", str(spec.path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip().count("\n") == 0
    assert "study_name='nostudy'" in err


def _read_lines(stream, out: queue.Queue) -> None:
    for line in stream:
        out.put(line)
    out.put(None)


def test_dashboard_serves_the_study_and_stops_on_sigint(tmp_path):
    pytest.importorskip("optuna_dashboard")
    exp = _experiment(tmp_path)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tuning.cli", "dashboard", str(exp)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True).start()
    try:
        try:
            url = lines.get(timeout=120)
        except queue.Empty:
            pytest.fail("the dashboard printed no URL within 120 s")
        assert url is not None, f"dashboard exited {proc.poll()}: {proc.stderr.read()}"
        url = url.strip()
        assert url.startswith("http://127.0.0.1:") and "/dashboard/studies/" in url
        base = url.split("/dashboard/")[0]
        with urllib.request.urlopen(base + "/api/studies", timeout=30) as resp:
            studies = json.load(resp)["study_summaries"]
        assert "dash-exp" in [s["study_name"] for s in studies]
        with urllib.request.urlopen(url, timeout=30) as resp:  # the study's page
            assert resp.status == 200
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=60)
        err = proc.stderr.read()
        assert rc == 0, err
        assert "dashboard stopped" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
