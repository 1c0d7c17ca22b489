"""Issue 11: the exported best of a small default AR-GSE sweep is never worse than
Plug-in[Worst] on test, at the operating point and on the worst-group area.

A real local Ray (2 CPUs, private RAY_TMPDIR / SELTUNE_CACHE), the default search space
and schedule on the default synthetic bundle, 6 trials (the first two are the
warm start: the default config and the Plug-in[Worst]-reproducing uniform gate).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SELTUNE = [sys.executable, "-m", "tuning.cli"]
ROOT = Path(__file__).resolve().parents[2]
COVERAGE = 0.7  # the AR-GSE default operating point


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    ray_tmp = tempfile.mkdtemp(prefix="st-ray-", dir="/tmp")  # short: unix socket paths
    e = dict(os.environ, RAY_TMPDIR=ray_tmp, HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0",
             PYTHONPATH=str(ROOT), SELTUNE_CACHE=str(tmp_path_factory.mktemp("cache")))
    e.pop("RAY_ADDRESS", None)
    yield e
    shutil.rmtree(ray_tmp, ignore_errors=True)


def seltune(env, *args, timeout=300) -> subprocess.CompletedProcess:
    p = subprocess.run([*SELTUNE, *map(str, args)], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=timeout)
    assert p.returncode == 0, f"seltune {' '.join(map(str, args))} failed:\n{p.stderr[-4000:]}"
    return p


def test_default_sweep_export_is_no_worse_than_plugin_worst(env, tmp_path):
    from core.synth import ensure_default_bundle

    data = ensure_default_bundle("argse")  # the default bundle, built once per machine
    storage = tmp_path / "runs"
    status = json.loads(seltune(
        env, "sweep", "--data", data, "--num-samples", 6, "--num-cpus", 2, "--seed", 0,
        "--storage", storage, "--name", "quality", "--json").stdout)
    assert sum(status["counts"].values()) == 6
    for t in status["trials"]:  # one operating point for every trial
        assert t["metrics"]["coverage"] == pytest.approx(COVERAGE, abs=0.005), t["trial_id"]

    out = tmp_path / "export"
    seltune(env, "export", storage / "quality", "--out", out, "--json")
    metrics = json.loads((out / "metrics.json").read_text())
    test, pw = metrics["test"], metrics["baselines"]["test"]["plugin_worst"]
    assert test["coverage"] == pytest.approx(COVERAGE, abs=0.005)
    assert test["worst_group_error"] <= pw["worst_group_error"] + 1e-12, (test, pw)
    assert test["worst_group_area"] <= pw["worst_group_area"] + 1e-12, (test, pw)
