"""Fixtures and helpers of the cluster integration tests (imported by test_cluster_*.py).

- ``cluster_factory``: start local multi-node Ray clusters (``cluster/local.py``) in a
  test's tmp dir; every cluster is stopped by pid at teardown and the test fails if
  any of its processes survives.
- ``postgres_url``: a private PostgreSQL on 127.0.0.1 started by ``scripts/postgres.sh``
  (installed with apt-get if missing), stopped by pid at the end of the session.
- ``driver_env(state)``: point this process's Ray at a cluster (token auth included).
- ``PidTracker``: records which node each Ray worker pid belongs to while it lives,
  so trials (whose results carry the ``pid`` of their actor) can be mapped to nodes:
  every node has the same IP here, so ``node_ip`` cannot tell them apart.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster import local

REPO = Path(__file__).resolve().parents[2]
SELTUNE = [sys.executable, "-m", "tuning.cli"]


def seltune_env(state: local.ClusterState | None = None, **extra: str) -> dict[str, str]:
    """Environment for a ``seltune`` subprocess: offline, quiet, and joined to ``state``."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0",
               OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    if state is not None:
        local.apply_env(state, env)
    env.update(extra)
    return env


def run_seltune(args: list[str], state: local.ClusterState | None = None, timeout: float = 600,
                check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*SELTUNE, *args], env=seltune_env(state), cwd=str(REPO),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"seltune {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stderr[-4000:]}")
    return proc


def _refresh_ray_auth_config() -> None:
    """Make an already-imported Ray re-read RAY_AUTH_MODE / the token (it caches both)."""
    if "ray" not in sys.modules:
        return
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@contextlib.contextmanager
def driver_env(state: local.ClusterState) -> Iterator[None]:
    """Within the block, this process's env (and Ray's cached auth config) match ``state``."""
    saved = dict(os.environ)
    local.apply_env(state)
    _refresh_ray_auth_config()
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        _refresh_ray_auth_config()


@pytest.fixture
def cluster_factory(tmp_path):
    """``start(nodes, cpus_per_node=1, **up_kwargs) -> ClusterState``; all stopped after."""
    started: list[local.ClusterState] = []

    def start(nodes: int, cpus_per_node: int = 1, **kwargs) -> local.ClusterState:
        directory = tmp_path / f"cluster{len(started)}"
        state = local.up(nodes, cpus_per_node, directory=directory, **kwargs)
        started.append(state)
        return state

    yield start
    survivors = {}
    for state in started:
        local.down(state, grace_s=10.0)
        left = [pid for node in state.nodes for pid in local.node_pids(node)]
        if left:
            survivors[state.dir] = left
    assert not survivors, f"cluster processes survived `down`: {survivors}"


class PidTracker:
    """Polls each node's session members; ``node_of(pid)`` -> node index or None."""

    def __init__(self, state: local.ClusterState, interval_s: float = 0.25) -> None:
        self.state = state
        self.interval_s = interval_s
        self.seen: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.interval_s)

    def poll(self) -> None:
        for node in self.state.nodes:
            for pid in local.node_pids(node):
                self.seen.setdefault(pid, node.index)

    def node_of(self, pid: int) -> int | None:
        return self.seen.get(pid)

    def __enter__(self) -> PidTracker:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def trial_results(experiment: Path) -> dict[str, list[dict]]:
    """Every result Ray Tune wrote, per trial id (``trial_*/result.json``, one per line)."""
    out: dict[str, list[dict]] = {}
    for path in sorted(experiment.glob("trial_*/result.json")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows:
            out[rows[0]["trial_id"]] = rows
    return out


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL of a private PostgreSQL on 127.0.0.1 (``scripts/postgres.sh``)."""
    # Under /tmp and world-searchable: as root the server runs as user `postgres`,
    # which cannot enter pytest's 0700 tmp dirs.
    directory = tempfile.mkdtemp(prefix="stc-pg-", dir="/tmp")
    os.chmod(directory, 0o755)
    script = str(REPO / "scripts" / "postgres.sh")
    proc = subprocess.run(["bash", script, "start", directory], capture_output=True,
                          text=True, timeout=900)
    if proc.returncode != 0:
        shutil.rmtree(directory, ignore_errors=True)
        raise RuntimeError(f"scripts/postgres.sh start failed:\n{proc.stderr[-3000:]}")
    url = proc.stdout.strip().splitlines()[-1]
    try:
        yield url
    finally:
        subprocess.run(["bash", script, "stop", directory], capture_output=True, timeout=120)
        shutil.rmtree(directory, ignore_errors=True)
