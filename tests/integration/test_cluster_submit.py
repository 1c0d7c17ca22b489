"""`seltune submit` against a real local cluster with Ray's job server.

Ray's job server (the dashboard) needs ``ray[default]`` (aiohttp, grpcio, ...), which
the project's base install leaves out on purpose (with it every Ray node of every test
starts dashboard agents). The ``ray_default_path`` fixture pip-installs just those
packages into a cache dir, given only to this test's cluster nodes and submit client on
PYTHONPATH; the test skips (saying so) only if the package index is unreachable. The
submit logic that needs no server is covered in tests/unit/cluster/test_submit.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from cluster_fixtures import (  # noqa: F401  (pytest fixtures)
    REPO,
    SELTUNE,
    cluster_factory,
    ray_default_path,
    seltune_env,
)

from cluster import local

pytestmark = pytest.mark.integration


# argv: job server URL, job id, timeout (s). Prints {"status", "metadata", "logs" (tail)}.
_WAIT_FOR_JOB = """
import json, sys, time
from ray.job_submission import JobStatus, JobSubmissionClient
url, job_id, timeout_s = sys.argv[1], sys.argv[2], float(sys.argv[3])
client = JobSubmissionClient(url)
deadline = time.monotonic() + timeout_s
done = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
while client.get_job_status(job_id) not in done and time.monotonic() < deadline:
    time.sleep(2)
print(json.dumps({"status": client.get_job_status(job_id).value,
                  "metadata": client.get_job_info(job_id).metadata,
                  "logs": client.get_job_logs(job_id)[-3000:]}))
"""


def test_submit_runs_a_sweep_as_a_ray_job(cluster_factory, ray_default_path,  # noqa: F811
                                          tmp_path, monkeypatch):
    # The job's entrypoint `seltune ...` must be on the nodes' PATH.
    seltune_bin = shutil.which("seltune") or str(REPO / ".venv" / "bin" / "seltune")
    monkeypatch.setenv("PATH", f"{os.path.dirname(seltune_bin)}{os.pathsep}{os.environ['PATH']}")
    state = cluster_factory(2, dashboard=True, python_path=[ray_default_path])
    storage = tmp_path / "store"
    cmd = [*SELTUNE, "submit", "--dir", state.dir, "--json", "--", "sweep",
           "--address", "auto", "--num-samples", "2", "--storage", str(storage),
           "--name", "viajob", "--set", "stageA_epochs=1", "--set", "cycles=1",
           "--set", "b1_epochs=1", "--device", "cpu",
           # both trials run to the end, whichever node finishes first (no ASHA stop)
           "--grace-period", "2", "--max-t", "2"]
    # The client gets the extra packages too, like a user with ray[default] installed.
    client_env = seltune_env(state, PYTHONPATH=os.pathsep.join([str(REPO), str(ray_default_path)]))
    # A shell that exported the cluster's RAY_ADDRESS (a GCS address) must not divert
    # the submission away from the job server URL.
    out = subprocess.run(cmd, env=client_env, cwd=str(REPO), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    info = json.loads(out.stdout)
    assert info["address"] == state.dashboard_url
    assert info["entrypoint"].startswith("seltune sweep --address auto")
    assert info["runtime_env"]["env_vars"]["HF_HUB_OFFLINE"] == "1"
    assert f"ray job logs --address {state.dashboard_url} --follow {info['job_id']}" in info[
        "follow"]
    assert f"seltune status {storage}/viajob" in info["follow"]

    # Ray's JobSubmissionClient needs aiohttp too, so it runs in a subprocess that has
    # the extra packages: this pytest process must not (its own ray.init would then
    # start dashboard agents that cannot import them).
    out = subprocess.run([sys.executable, "-c", _WAIT_FOR_JOB, state.dashboard_url,
                          info["job_id"], "600"], env=client_env, capture_output=True,
                         text=True, timeout=700)
    assert out.returncode == 0, out.stderr[-3000:]
    job = json.loads(out.stdout)
    assert job["status"] == "SUCCEEDED", job["logs"]
    assert job["metadata"]["submitted_by"] == "seltune"
    status = json.loads(subprocess.run([*SELTUNE, "status", str(storage / "viajob"), "--json"],
                                       env=seltune_env(), capture_output=True, text=True,
                                       check=True, timeout=120).stdout)
    assert status["counts"] == {"TERMINATED": 2}, (status, job["logs"])


def test_submit_to_a_dead_address_names_it(tmp_path):
    port = local.free_port()
    out = subprocess.run([*SELTUNE, "submit", "--address", f"http://127.0.0.1:{port}",
                          "--dir", str(tmp_path), "--", "sweep"], env=seltune_env(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert f"job submission to http://127.0.0.1:{port} failed" in out.stderr
