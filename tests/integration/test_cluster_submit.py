"""`seltune submit` against a real local cluster with Ray's job server.

Ray's job server (the dashboard) needs ``ray[default]`` (aiohttp, grpcio, ...), which
the project's base install does not include: without it this module is skipped, with
the reason. The submit logic that needs no server is covered in
tests/unit/cluster/test_submit.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest
from cluster_fixtures import (  # noqa: F401  (pytest fixtures)
    REPO,
    SELTUNE,
    cluster_factory,
    driver_env,
    seltune_env,
)

from cluster import local

pytestmark = pytest.mark.integration


@pytest.mark.skipif(not local.dashboard_available(),
                    reason="Ray's job server needs ray[default] (aiohttp, grpcio, ...), "
                    "not installed here")
def test_submit_runs_a_sweep_as_a_ray_job(cluster_factory, tmp_path, monkeypatch):  # noqa: F811
    # The job's entrypoint `seltune ...` must be on the nodes' PATH.
    seltune_bin = shutil.which("seltune") or str(REPO / ".venv" / "bin" / "seltune")
    monkeypatch.setenv("PATH", f"{os.path.dirname(seltune_bin)}{os.pathsep}{os.environ['PATH']}")
    state = cluster_factory(2, dashboard=True)
    storage = tmp_path / "store"
    cmd = [*SELTUNE, "submit", "--dir", state.dir, "--json", "--", "sweep",
           "--address", "auto", "--num-samples", "2", "--storage", str(storage),
           "--name", "viajob", "--set", "stageA_epochs=1", "--set", "cycles=1",
           "--set", "b1_epochs=1", "--device", "cpu"]
    # A shell that exported the cluster's RAY_ADDRESS (a GCS address) must not divert
    # the submission away from the job server URL.
    out = subprocess.run(cmd, env=seltune_env(state), cwd=str(REPO), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    info = json.loads(out.stdout)
    assert info["address"] == state.dashboard_url
    assert info["entrypoint"].startswith("seltune sweep --address auto")
    assert info["runtime_env"]["env_vars"]["HF_HUB_OFFLINE"] == "1"
    assert f"ray job logs --address {state.dashboard_url} --follow {info['job_id']}" in info[
        "follow"]
    assert f"seltune status {storage}/viajob" in info["follow"]

    from ray.job_submission import JobStatus, JobSubmissionClient

    with driver_env(state):
        client = JobSubmissionClient(state.dashboard_url)
        deadline = time.monotonic() + 600
        while client.get_job_status(info["job_id"]) not in {
                JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
            assert time.monotonic() < deadline, "job did not finish in 600 s"
            time.sleep(2)
        logs = client.get_job_logs(info["job_id"])
        assert client.get_job_status(info["job_id"]) == JobStatus.SUCCEEDED, logs[-3000:]
        job = client.get_job_info(info["job_id"])
        assert job.metadata["submitted_by"] == "seltune"
    status = json.loads(subprocess.run([*SELTUNE, "status", str(storage / "viajob"), "--json"],
                                       env=seltune_env(), capture_output=True, text=True,
                                       check=True, timeout=120).stdout)
    assert status["counts"] == {"TERMINATED": 2}


def test_submit_to_a_dead_address_names_it(tmp_path):
    port = local.free_port()
    out = subprocess.run([*SELTUNE, "submit", "--address", f"http://127.0.0.1:{port}",
                          "--dir", str(tmp_path), "--", "sweep"], env=seltune_env(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert f"job submission to http://127.0.0.1:{port} failed" in out.stderr
