"""Fixtures and helpers of the cluster integration tests (imported by test_cluster_*.py).

- ``cluster_factory``: start local multi-node Ray clusters (``cluster/local.py``) in a
  test's tmp dir; every cluster is stopped by pid at teardown and the test fails if
  any of its processes survives.
- ``postgres_url``: a private PostgreSQL on 127.0.0.1 started by ``scripts/postgres.sh``
  (installed with apt-get if missing), stopped by pid at the end of the session.
- ``driver_env(state)``: point this process's Ray at a cluster (token auth included).
- ``ray_default_path``: a directory holding the packages of Ray's ``default`` extra
  (the dashboard / job server: aiohttp, grpcio, ...), pip-installed once into a cache
  and given to one cluster's nodes with ``up(python_path=[...])``, so the base install
  (and every other test's Ray) stays without them.
- ``PidTracker``: records which node each Ray worker pid belongs to while it lives,
  so trials (whose results carry the ``pid`` of their actor) can be mapped to nodes:
  every node has the same IP here, so ``node_ip`` cannot tell them apart.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
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
    """Make an already-imported Ray re-read what it caches from the environment:
    RAY_AUTH_MODE / the token, and RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER (which decides
    whether 127.0.0.1 is kept; the launcher's clusters are loopback-only)."""
    if "ray" not in sys.modules:
        return
    from ray._private import ray_constants
    from ray._private.ray_constants import env_bool
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
    ray_constants.ENABLE_RAY_CLUSTER = env_bool(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR,
                                                not ray_constants.IS_WINDOWS_OR_OSX)


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


# --------------------------------------------------------------------------- ray[default]


def ray_default_requirements() -> list[str]:
    """Requirements Ray's ``default`` extra adds to the base install, from Ray's own
    metadata (markers evaluated for this interpreter), e.g. ``["aiohttp>=3.14.4", ...]``."""
    import importlib.metadata

    from packaging.requirements import Requirement

    out = []
    for line in importlib.metadata.requires("ray") or []:
        req = Requirement(line)
        # A base requirement (no extra) evaluates true for extra == "default" too.
        if req.marker is None or not req.marker.evaluate({"extra": "default"}) \
                or req.marker.evaluate({"extra": ""}):
            continue
        req.marker = None
        out.append(str(req))
    return out


def _venv_versions() -> dict[str, str]:
    """Canonical name -> version of every distribution this interpreter sees (the first
    one on sys.path wins), leaving out editable / direct-URL installs (not on an index)."""
    import importlib.metadata

    from packaging.utils import canonicalize_name

    versions: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and dist.read_text("direct_url.json") is None:
            versions.setdefault(canonicalize_name(name), dist.version)
    return versions


def _pip(args: list[str], log: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    # No --index-url / --isolated: the user's pip config (index, find-links, cert) applies.
    cmd = [sys.executable, "-m", "pip", *args, "--disable-pip-version-check", "--no-input"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    log += [f"$ {' '.join(cmd)}  (rc {proc.returncode})", proc.stdout, proc.stderr]
    return proc


def _index_urls() -> list[str]:
    """The index URL(s) pip would use: PIP_INDEX_URL, else ``index-url`` from the pip
    config, else PyPI's; only http(s) ones (a ``file://`` index is always reachable)."""
    urls = [os.environ["PIP_INDEX_URL"]] if os.environ.get("PIP_INDEX_URL") else []
    if not urls:
        proc = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                              capture_output=True, text=True, timeout=60)
        for line in proc.stdout.splitlines():
            key, _, value = line.partition("=")
            if key.endswith(".index-url") and not key.endswith("extra-index-url"):
                urls = [value.strip().strip("'\"")]
    urls = urls or ["https://pypi.org/simple/"]
    return [u for u in urls if u.startswith(("http://", "https://"))]


def _unreachable_index() -> str | None:
    """``"URL (error)"`` of the first index pip cannot reach, or None if all answer."""
    for url in _index_urls():
        try:
            with urllib.request.urlopen(url, timeout=20):
                pass
        except urllib.error.HTTPError:
            pass  # it answered: reachable
        except (urllib.error.URLError, OSError) as exc:
            return f"{url} ({exc})"
    return None


def _install_ray_default(target: Path, requirements: list[str], venv: dict[str, str],
                         log: list[str]) -> None:
    """pip-install into ``target`` exactly what ``requirements`` need beyond this venv.

    A dry run in this venv, with every installed distribution pinned by a constraints
    file, resolves what is missing (installed packages are reused, never upgraded:
    a conflict fails here instead); those exact pins are then installed with
    ``--no-deps --target``, so ``target`` never holds a second version of anything
    the venv has (PYTHONPATH comes before site-packages and would shadow it), nor Ray.
    """
    work = target.parent
    constraints = work / "constraints.txt"
    constraints.write_text("".join(f"{n}=={v}\n" for n, v in sorted(venv.items())))
    report = work / "report.json"
    proc = _pip(["install", "--dry-run", "--report", str(report),
                 "-c", str(constraints), *requirements], log)
    if proc.returncode != 0:
        raise _PipFailed("resolving")
    pins = [f"{item['metadata']['name']}=={item['metadata']['version']}"
            for item in json.loads(report.read_text())["install"]]
    proc = _pip(["install", "--no-deps", "--target", str(target), *pins], log)
    if proc.returncode != 0:
        raise _PipFailed("installing")


class _PipFailed(Exception):
    pass


def cached_target_install(name: str, install: Callable[[Path, list[str]], None],
                          what: str) -> Path:
    """``$XDG_CACHE_HOME/seltune/NAME`` (default ``~/.cache/seltune``), built once by
    ``install(site_dir, log_lines)`` (a ``pip install --target site_dir ...``).

    Built in a temporary sibling and renamed into place, so a present directory is
    always complete and concurrent sessions never see a half-built one. Skips the test,
    with the reason, only when the package index cannot be reached; any other pip
    failure is an error.
    """
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "seltune"
    target = cache / name
    if target.is_dir():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=cache))
    log: list[str] = []
    started = time.monotonic()
    try:
        try:
            install(work / "site", log)
        except (_PipFailed, subprocess.TimeoutExpired) as exc:
            unreachable = _unreachable_index()
            if unreachable is not None:
                pytest.skip(f"the package index {unreachable} is unreachable, so {what} "
                            "cannot be installed")
            raise RuntimeError(f"pip failed {exc} {what}:\n{chr(10).join(log)[-3000:]}") \
                from None
        log.append(f"installed in {time.monotonic() - started:.1f} s")
        (work / "site" / "_seltune_install.log").write_text("\n".join(log))
        try:
            os.rename(work / "site", target)
        except OSError:
            if not target.is_dir():  # not merely beaten to it by another session
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def group_pids(pgid: int) -> list[int]:
    """Pids of the live processes in process group ``pgid`` (Linux ``/proc``)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == pgid:
                    pids.append(int(entry))
            except (ProcessLookupError, PermissionError):
                pass
    return pids


@pytest.fixture(scope="session")
def ray_default_path() -> Path:
    """A directory with the packages of ``ray[default]`` this venv lacks (for PYTHONPATH).

    Cached in ``$XDG_CACHE_HOME/seltune`` (default ``~/.cache/seltune``) under a name
    keyed by Ray's and Python's versions and a hash of the requirements and of every
    installed distribution's version (a changed venv gets a fresh dir); built in a
    temporary sibling and renamed into place, so a present dir is always complete and
    concurrent sessions never see a half-built one. Skips the test, with the reason,
    only when the package index cannot be reached; any other pip failure is an error.
    """
    import importlib.metadata

    from packaging.utils import canonicalize_name

    requirements = ray_default_requirements()
    venv = _venv_versions()
    if not requirements:
        raise AssertionError("Ray's metadata lists no requirement for its `default` extra")
    key = hashlib.sha256(json.dumps([requirements, sorted(venv.items())]).encode())
    name = (f"ray-default-{importlib.metadata.version('ray')}-py"
            f"{sys.version_info.major}{sys.version_info.minor}-{key.hexdigest()[:12]}")
    what = f"Ray's job server packages (ray[default]: {', '.join(requirements)})"
    target = cached_target_install(
        name, lambda site, log: _install_ray_default(site, requirements, venv, log), what)
    # Guard the no-shadowing promise (an older cache or a changed venv could break it).
    shadowing = sorted(
        d.metadata["Name"] for d in importlib.metadata.distributions(path=[str(target)])
        if canonicalize_name(d.metadata["Name"]) in venv or
        canonicalize_name(d.metadata["Name"]) == "ray")
    assert not shadowing, f"{target} would shadow this venv's {shadowing}: delete it"
    assert local.dashboard_available([target]), \
        f"{target} lacks the dashboard's modules; see {target}/_seltune_install.log"
    return target
