"""A local multi-node Ray cluster on this machine, started and stopped by pid.

``seltune cluster up`` runs one ``ray start ... --block`` process per node (the head
first, then ``nodes - 1`` workers that join it), each in its own session
(``setsid``), so every process of a node — raylet, GCS, agents, Ray workers — is a
member of that node's session and can be found and signalled by its session id. Nothing
here ever runs ``ray stop`` (which would kill every Ray process on the machine,
including other people's): :func:`down` signals only the sessions it started, after
checking that each leader pid still belongs to the process that was started (its start
time in ``/proc`` is recorded), so a recycled pid is never signalled.

This module shells out to the ``ray`` CLI and never imports ``ray``; it is Linux-only
(``/proc``). All nodes share one machine, so "node failure" is simulated by
:func:`kill_node`, which SIGKILLs every process of one node at once.

Loopback only (NODE_IP_NOTE): every node advertises 127.0.0.1, and then Ray binds each
of its servers (GCS, raylets, object managers, workers, agents, dashboard) to 127.0.0.1
only; nothing listens on 0.0.0.0 or the machine's address. Two things in Ray 2.60 have
to be stepped around, both without touching Ray's code:

- Ray rewrites the literal strings ``127.0.0.1``/``localhost`` to the machine's
  routable address whenever multi-node clusters are enabled
  (``ray._private.services.resolve_ip_for_localhost``), for ``--node-ip-address`` and for
  a worker's ``--address``. ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` turns that off, so the
  head runs with it and ``--node-ip-address 127.0.0.1``.
- ``ray start --address`` refuses to add a worker node when that variable is 0. Workers
  therefore run without it and join ``127.1:PORT``: the same loopback address written
  so that Ray does not rewrite it (resolved with ``GRPC_DNS_RESOLVER=native``; gRPC's
  default resolver does not accept it). With no ``--node-ip-address`` a worker takes the
  address it reaches the GCS from, 127.0.0.1.

Every node runs with ``GRPC_DNS_RESOLVER=native``, so any process on it (a job's
entrypoint with ``--address auto`` included) can use ``127.1``. Drivers get
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` with ``RAY_ADDRESS=127.0.0.1:PORT``
(:func:`cluster_env`), so ``ray.init`` keeps the address as given.

Token authentication: Ray >= 2.60 enables token auth for local clusters, and
``RAY_AUTH_MODE`` must be identical in every process that talks to the cluster (nodes,
drivers connecting with ``--address``, job submission clients). The launcher writes a
private token file (mode 0600) and starts every node with ``RAY_AUTH_MODE=token`` and
``RAY_AUTH_TOKEN_PATH`` pointing at it; the same variables are recorded in the state
file (``env``) so drivers can use them (:func:`apply_env`, ``seltune cluster env``).
``RAY_AUTH_TOKEN``, which would take precedence over the file, is removed.

State file (``DIR/cluster.json``, written atomically)::

    {"version": 1, "address": "127.0.0.1:PORT", "gcs_port": PORT,
     "dashboard_url": "http://127.0.0.1:PORT" | null, "auth_mode": "token"|"disabled",
     "token_file": PATH | null, "temp_dir": PATH, "dir": PATH,
     "cpus_per_node": M, "gpus_per_node": G, "object_store_mb": MB,
     "env": {VAR: VALUE}, "unset_env": [VAR],
     "nodes": [{"index": i, "role": "head"|"worker", "pid": PID, "start_ticks": T,
                "log": PATH, "resource": "seltune_node_i"}],
     "started_at": ISO-8601, "stopped_at": ISO-8601 | null}
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, MutableMapping, Sequence
from pathlib import Path
from typing import Any

from core.atomic import atomic_file
from core.errors import InputError, SeltuneError

STATE_FILE = "cluster.json"
STATE_VERSION = 1
DEFAULT_DIR_ENV = "SELTUNE_CLUSTER_DIR"
AUTH_MODES = ("token", "disabled")
# Ray's unix socket paths live under the temp dir and must stay below the 107-byte
# sun_path limit, so the Ray temp root is a short path under /tmp, not under DIR.
_SHORT_TMP_PARENT = "/tmp"
LOOPBACK = "127.0.0.1"
#: How worker nodes spell the head's address so that Ray leaves it on loopback.
WORKER_JOIN_HOST = "127.1"
_CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_READY_LINE = "Ray runtime started"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# Popen objects of nodes started by this process, so their exit is reaped (no zombies).
_CHILDREN: dict[int, subprocess.Popen] = {}


class ClusterError(SeltuneError):
    """The local cluster could not be started, found or stopped."""


@dataclasses.dataclass
class NodeInfo:
    """One node: the ``ray start --block`` leader of its session and its log file."""

    index: int
    role: str  # "head" | "worker"
    pid: int
    start_ticks: int  # /proc/PID/stat field 22: identifies this pid incarnation
    log: str
    resource: str  # custom resource name (quantity 1) that pins work to this node


@dataclasses.dataclass
class ClusterState:
    """What ``cluster up`` started; see the module docstring for the JSON form."""

    address: str
    gcs_port: int
    dashboard_url: str | None
    auth_mode: str
    token_file: str | None
    temp_dir: str
    dir: str
    cpus_per_node: int
    gpus_per_node: int
    object_store_mb: int
    env: dict[str, str]
    unset_env: list[str]
    nodes: list[NodeInfo]
    started_at: str
    stopped_at: str | None = None
    version: int = STATE_VERSION

    @property
    def job_address(self) -> str | None:
        """The job-submission address (the dashboard URL), or None without a dashboard."""
        return self.dashboard_url

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = STATE_FILE) -> ClusterState:
        try:
            nodes = [NodeInfo(**n) for n in data["nodes"]]
            fields = {f.name for f in dataclasses.fields(cls)}
            kwargs = {k: v for k, v in data.items() if k in fields and k != "nodes"}
            state = cls(nodes=nodes, **kwargs)
        except (KeyError, TypeError) as exc:
            raise InputError(f"not a seltune cluster state file ({exc})", file=source,
                             expected=f"the {STATE_FILE} written by `seltune cluster up`") from None
        if state.version != STATE_VERSION:
            raise InputError(file=source, field="version", value=state.version,
                             expected=str(STATE_VERSION))
        return state


# --------------------------------------------------------------------------- /proc


def _proc_stat(pid: int) -> tuple[str, int, int, int, int] | None:
    """``(state, ppid, pgid, sid, start_ticks)`` of a live pid, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and ')': split after the last ')'.
    rest = raw[raw.rindex(")") + 2:].split()
    state, ppid, pgid, sid = rest[0], int(rest[1]), int(rest[2]), int(rest[3])
    start_ticks = int(rest[19])
    return state, ppid, pgid, sid, start_ticks


def _all_pids() -> Iterable[int]:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            yield int(entry.name)


def _is_running(stat: tuple[str, int, int, int, int] | None) -> bool:
    # A zombie ('Z') or dead ('X') process has exited: it only waits to be reaped.
    return stat is not None and stat[0] not in ("Z", "X")


def _reap(pid: int) -> None:
    """Collect an exited node leader started by this process, so it leaves no zombie.

    Only leaders this module spawned (kept in ``_CHILDREN``) are reaped, through their
    Popen object, so a caller's own ``Popen.wait`` never loses an exit status; any
    other zombie simply counts as dead (see :func:`_is_running`).
    """
    proc = _CHILDREN.get(pid)
    if proc is not None:
        proc.poll()


def node_alive(node: NodeInfo) -> bool:
    """Whether the node's leader (``ray start --block``) is still the process we started."""
    _reap(node.pid)
    stat = _proc_stat(node.pid)
    return _is_running(stat) and stat is not None and stat[4] == node.start_ticks


def node_pids(node: NodeInfo) -> list[int]:
    """Every running process of a node: the members of the leader's session.

    Each node was started with ``setsid``, so its session id is the leader's pid; Ray's
    own children (GCS, raylet, agents, workers) inherit it. Linux does not reuse a pid
    while it is still some live process's session id, so while any member lives the
    id is unambiguous. When the leader is gone and recycled (start time differs) and
    the new process is not a session leader, its pid cannot collide either: we only
    ever match on the session id, never on a bare pid.
    """
    members = []
    for pid in _all_pids():
        stat = _proc_stat(pid)
        if _is_running(stat) and stat is not None and stat[3] == node.pid:
            if pid == node.pid and stat[4] != node.start_ticks:
                continue  # a recycled leader pid heading an unrelated session
            members.append(pid)
    return members


def _signal_all(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _wait_gone(node: NodeInfo, timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while True:
        _reap(node.pid)
        left = node_pids(node)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.2)


# --------------------------------------------------------------------------- helpers


def default_dir() -> Path:
    """``$SELTUNE_CLUSTER_DIR`` or ``~/.seltune/local-cluster``."""
    env = os.environ.get(DEFAULT_DIR_ENV)
    return Path(env) if env else Path.home() / ".seltune" / "local-cluster"


_HANDED_OUT: set[int] = set()


def free_port(host: str = "") -> int:
    """A TCP port that was free a moment ago (the OS picks it), never the same twice
    in one process, so the ports given to one cluster's nodes are all distinct."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise ClusterError("could not find a free TCP port")


def _port_in_use(port: int, host: str = "") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def ray_command() -> list[str]:
    """The ``ray`` CLI run by this very interpreter (so Ray versions and extras match).

    ``python -m ray.scripts.scripts`` is what the ``ray`` console script runs; using
    ``sys.executable`` avoids picking up another environment's ``ray`` from PATH.
    """
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise ClusterError(f"Ray is not installed for {sys.executable}; install ray[tune]")
    return [sys.executable, "-m", "ray.scripts.scripts"]


def _has_module(name: str, extra_paths: Sequence[str | Path] = ()) -> bool:
    """Whether top-level module ``name`` is importable here, or from ``extra_paths``
    (directories a node gets on its PYTHONPATH; this process's sys.path is unchanged)."""
    import importlib.machinery
    import importlib.util

    if importlib.util.find_spec(name) is not None:
        return True
    paths = [str(p) for p in extra_paths]
    return bool(paths) and importlib.machinery.PathFinder.find_spec(name, paths) is not None


def dashboard_available(extra_paths: Sequence[str | Path] = ()) -> bool:
    """Whether the dashboard / job server can run: it needs ``ray[default]`` (aiohttp...),
    installed in this environment or in ``extra_paths`` (see ``up(python_path=...)``)."""
    return all(_has_module(m, extra_paths) for m in
               ("aiohttp", "aiohttp_cors", "grpc", "prometheus_client", "opencensus"))


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def node_resource(index: int) -> str:
    """Name of the custom resource (quantity 1) that node ``index`` carries."""
    return f"seltune_node_{index}"


def cluster_env(state: ClusterState) -> dict[str, str]:
    """Environment a driver needs to join this cluster (address and auth settings)."""
    return dict(state.env)


def apply_env(state: ClusterState, environ: MutableMapping[str, str] | None = None) -> None:
    """Set the cluster's env in ``environ`` (default ``os.environ``) and drop overrides.

    Call it before ``ray.init(address=state.address)`` in a driver: Ray reads
    ``RAY_AUTH_MODE`` once at import of its core worker config, so set it early.
    """
    environ = os.environ if environ is None else environ
    for key in state.unset_env:
        environ.pop(key, None)
    environ.update(state.env)


def export_lines(state: ClusterState) -> list[str]:
    """Shell lines (``unset``/``export``) equivalent to :func:`apply_env`."""
    import shlex

    lines = [f"unset {key}" for key in state.unset_env]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in state.env.items()]
    return lines


# --------------------------------------------------------------------------- state file


def state_path(directory: str | Path) -> Path:
    return Path(directory) / STATE_FILE


def save_state(state: ClusterState) -> Path:
    path = state_path(state.dir)
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(state.to_dict(), indent=2) + "\n")
        os.chmod(tmp, 0o600)
    return path


def load_state(directory: str | Path | None = None) -> ClusterState:
    """Read ``DIR/cluster.json``; InputError naming the path when there is none."""
    directory = default_dir() if directory is None else Path(directory)
    path = state_path(directory)
    if not path.is_file():
        raise InputError("no local cluster state here", file=path,
                         expected="a directory used with `seltune cluster up --dir`")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON ({exc.msg} at line {exc.lineno})", file=path,
                         expected=f"the {STATE_FILE} written by `seltune cluster up`") from None
    return ClusterState.from_dict(data, source=str(path))


# --------------------------------------------------------------------------- up / down


def _validate(nodes: int, cpus_per_node: int, gpus_per_node: int, port: int | None,
              auth_mode: str, object_store_mb: int) -> None:
    if not isinstance(nodes, int) or nodes < 1:
        raise InputError(field="--nodes", value=nodes, expected="an integer >= 1")
    if not isinstance(cpus_per_node, int) or cpus_per_node < 1:
        raise InputError(field="--cpus-per-node", value=cpus_per_node, expected="an integer >= 1")
    if not isinstance(gpus_per_node, int) or gpus_per_node < 0:
        raise InputError(field="--gpus-per-node", value=gpus_per_node, expected="an integer >= 0")
    if port is not None and not (1024 <= port <= 65535):
        raise InputError(field="--port", value=port, expected="a TCP port in [1024, 65535]")
    if port is not None and _port_in_use(port):
        raise InputError("port is already in use on this machine", field="--port", value=port,
                         expected="a free port (or leave --port out to pick one)")
    if auth_mode not in AUTH_MODES:
        raise InputError(field="--auth-mode", value=auth_mode, expected=" or ".join(AUTH_MODES))
    if object_store_mb < 80:
        # Ray refuses object stores below ~75 MiB.
        raise InputError(field="--object-store-mb", value=object_store_mb, expected=">= 80")


def _node_command(ray: list[str], *, head: bool, index: int, port: int | None,
                  cpus: int, gpus: int, temp_dir: str,
                  object_store_mb: int, dashboard_port: int | None,
                  python_path: Sequence[str | Path] = ()) -> list[str]:
    cmd = [
        *ray, "start", "--block", "--disable-usage-stats",
        "--num-cpus", str(cpus), "--num-gpus", str(gpus),
        "--temp-dir", temp_dir,
        "--object-store-memory", str(object_store_mb * 1024 * 1024),
        "--resources", json.dumps({node_resource(index): 1}),
        # The agent's HTTP port defaults to a fixed 52365: give each node its own so
        # several nodes (and other people's clusters) on one machine never collide.
        "--dashboard-agent-listen-port", str(free_port()),
    ]
    if head:
        # Started with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (node_env), so Ray keeps this
        # address and binds its servers to loopback only (see NODE_IP_NOTE).
        cmd += ["--head", "--port", str(port), "--node-ip-address", LOOPBACK]
        if _has_module("grpc", python_path):
            # Only with ray[client] (grpcio) installed does the head start the client
            # server, whose default port 10001 would collide with other clusters.
            cmd += ["--ray-client-server-port", str(free_port())]
        if dashboard_port is not None:
            cmd += ["--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                    "--dashboard-port", str(dashboard_port)]
        else:
            cmd += ["--include-dashboard", "false"]
    else:
        # 127.1 is 127.0.0.1 in a spelling Ray does not rewrite (see NODE_IP_NOTE).
        cmd += ["--address", f"{WORKER_JOIN_HOST}:{port}"]
    return cmd


def node_env_for(base: dict[str, str], head: bool) -> dict[str, str]:
    """The environment of node ``ray start`` processes (see NODE_IP_NOTE)."""
    env = dict(base)
    # Every process of every node may meet 127.1 (workers' GCS address; `address="auto"`
    # reads TEMP/ray_current_cluster, which the last worker wrote): gRPC's default
    # resolver rejects that spelling, the native one (getaddrinfo) accepts it.
    env["GRPC_DNS_RESOLVER"] = "native"
    if head:
        env[_CLUSTER_SWITCH] = "0"
    else:
        env.pop(_CLUSTER_SWITCH, None)  # `ray start --address` refuses to run with it
    return env


def _spawn(cmd: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        # start_new_session: the node's processes form one session we can signal alone.
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                cwd=str(log_path.parent))


def _wait_port(port: int, timeout_s: float, node: NodeInfo) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout_s
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if not node_alive(node):
            raise ClusterError(f"the head exited before its dashboard listened on port {port}; "
                               f"log {node.log}:\n{_tail(node.log)}")
        if time.monotonic() > deadline:
            raise ClusterError(f"the dashboard did not listen on 127.0.0.1:{port} within "
                               f"{timeout_s:.0f} s; see {node.log}")
        time.sleep(0.25)


def _read_head_address(temp_dir: str, gcs_port: int) -> str:
    """The GCS address (``IP:PORT``) the head recorded in its temp dir."""
    path = Path(temp_dir) / "ray_current_cluster"
    try:
        address = path.read_text().strip()
    except FileNotFoundError:
        raise ClusterError(f"the head started but did not write {path}") from None
    if not address.endswith(f":{gcs_port}"):
        raise ClusterError(f"{path} holds {address!r}, expected port {gcs_port}")
    return address


def _tail(path: str | Path, lines: int = 15) -> str:
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text[-lines:])


def _wait_ready(nodes: list[NodeInfo], timeout_s: float) -> None:
    """Wait until each node's log says the runtime started; ClusterError if one dies."""
    pending = {n.index: n for n in nodes}
    deadline = time.monotonic() + timeout_s
    while pending:
        for index, node in list(pending.items()):
            try:
                text = Path(node.log).read_text(errors="replace")
            except FileNotFoundError:
                text = ""
            if _READY_LINE in text:
                del pending[index]
            elif not node_alive(node):
                raise ClusterError(f"node {index} ({node.role}) exited during start-up; "
                                   f"log {node.log}:\n{_tail(node.log)}")
        if pending and time.monotonic() > deadline:
            first = next(iter(pending.values()))
            raise ClusterError(f"node(s) {sorted(pending)} not ready after {timeout_s:.0f} s; "
                               f"log {first.log}:\n{_tail(first.log)}")
        if pending:
            time.sleep(0.25)


def up(nodes: int, cpus_per_node: int, *, gpus_per_node: int = 0,
       directory: str | Path | None = None, port: int | None = None,
       dashboard: bool = False, auth_mode: str = "token", object_store_mb: int = 200,
       timeout_s: float = 180.0,
       wrap_node: Callable[[int, list[str]], list[str]] | None = None,
       python_path: Sequence[str | Path] = ()) -> ClusterState:
    """Start a head and ``nodes - 1`` workers on this machine; return the saved state.

    Args:
        nodes: number of Ray nodes including the head (>= 1).
        cpus_per_node: logical CPUs each node offers to Ray.
        gpus_per_node: logical GPUs each node offers (Ray does not check they exist).
        directory: where the state file, token and node logs go (default
            :func:`default_dir`). Refused while a cluster recorded there is alive.
        port: the head's GCS port (default: a free one).
        dashboard: also start the dashboard and job server (needs ``ray[default]``).
        auth_mode: ``token`` (default; what Ray >= 2.60 does) or ``disabled``.
        object_store_mb: object store size of each node, MiB.
        timeout_s: how long to wait for every node to come up.
        wrap_node: ``(index, command) -> command`` to run a node's ``ray start`` inside
            another program that ``exec``s it (so the pid stays the node's leader),
            e.g. ``unshare -m ...`` to give one node a private view of a directory
            in the storage tests.
        python_path: directories appended to every node's ``PYTHONPATH`` (this
            process is unchanged), e.g. a ``pip install --target`` dir holding
            ``ray[default]``'s extra packages, so only this cluster's nodes can run the
            dashboard. They must not shadow packages of this environment: PYTHONPATH
            entries come before site-packages.

    Raises:
        InputError: bad arguments, or a live cluster already recorded in ``directory``.
        ClusterError: a node failed to start (everything started is stopped again).
    """
    _validate(nodes, cpus_per_node, gpus_per_node, port, auth_mode, object_store_mb)
    if dashboard and not dashboard_available(python_path):
        raise InputError(
            "the Ray dashboard / job server needs ray[default] (aiohttp, grpcio, ...), "
            "which is not installed", field="--dashboard", value=True,
            expected="`pip install 'ray[default]'` in this environment, or no --dashboard")
    directory = (default_dir() if directory is None else Path(directory)).resolve()
    if state_path(directory).is_file():
        old = load_state(directory)
        if old.stopped_at is None and any(node_alive(n) for n in old.nodes):
            raise InputError("a local cluster recorded here is still running",
                             file=state_path(directory),
                             expected="`seltune cluster down --dir DIR` first, or another --dir")
    directory.mkdir(parents=True, exist_ok=True)
    ray = ray_command()
    temp_dir = tempfile.mkdtemp(prefix="stc-", dir=_SHORT_TMP_PARENT)
    gcs_port = port if port is not None else free_port()
    dashboard_port = free_port() if dashboard else None

    # Drivers: keep 127.0.0.1 as given, and accept 127.1 too (NODE_IP_NOTE).
    env = {"RAY_ADDRESS": f"{LOOPBACK}:{gcs_port}", _CLUSTER_SWITCH: "0",
           "GRPC_DNS_RESOLVER": "native"}
    unset_env = ["RAY_AUTH_TOKEN"]  # it would override the token file below
    token_file: Path | None = None
    if auth_mode == "token":
        token_file = directory / "auth_token"
        token_file.unlink(missing_ok=True)
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file))
    else:
        env.update(RAY_AUTH_MODE="disabled")
        unset_env.append("RAY_AUTH_TOKEN_PATH")

    node_env = dict(os.environ)
    for key in [*unset_env, "RAY_ADDRESS"]:
        node_env.pop(key, None)
    node_env.update({k: v for k, v in env.items()
                     if k not in ("RAY_ADDRESS", _CLUSTER_SWITCH, "GRPC_DNS_RESOLVER")})
    node_env.update(RAY_TMPDIR=temp_dir, RAY_USAGE_STATS_ENABLED="0")
    # Job entrypoints (`seltune sweep ...` from `seltune submit`) run with the nodes'
    # PATH: put this interpreter's scripts first, so they are the same installation.
    node_env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent),
                                        node_env.get("PATH", os.defpath)])
    if python_path:
        node_env["PYTHONPATH"] = os.pathsep.join(
            [p for p in node_env.get("PYTHONPATH", "").split(os.pathsep) if p]
            + [str(Path(p).resolve()) for p in python_path])

    state = ClusterState(
        address=f"{LOOPBACK}:{gcs_port}", gcs_port=gcs_port,
        dashboard_url=f"http://127.0.0.1:{dashboard_port}" if dashboard_port else None,
        auth_mode=auth_mode, token_file=str(token_file) if token_file else None,
        temp_dir=temp_dir, dir=str(directory), cpus_per_node=cpus_per_node,
        gpus_per_node=gpus_per_node, object_store_mb=object_store_mb, env=env,
        unset_env=unset_env, nodes=[], started_at=_now(),
    )
    logs = directory / "logs"
    for old_log in logs.glob("node-*") if logs.is_dir() else []:
        old_log.unlink()
    try:
        for index in range(nodes):
            head = index == 0
            # The head is retried only on a port we chose (a user's --port is kept).
            attempts = 1 if head and port is not None else _START_ATTEMPTS
            for attempt in range(attempts):
                node = _start_node(state, ray, index, node_env, dashboard_port, wrap_node,
                                   logs / f"node-{index}.log", python_path)
                try:
                    # One node at a time: two `ray start`s racing on one machine
                    # pre-select the same free ports and one raylet dies with "Address
                    # already in use" (other users' Ray can race with us too: retry).
                    _wait_ready([node], timeout_s)
                    break
                except ClusterError:
                    if attempt + 1 == attempts:
                        raise
                    stop_node(node, grace_s=2.0)
                    state.nodes.remove(node)
                    failed_log = Path(node.log)
                    failed_log.rename(failed_log.with_suffix(f".failed{attempt + 1}.log"))
                    if head:  # its GCS port may have been taken meanwhile: pick another
                        state.gcs_port = free_port()
                        state.address = f"{LOOPBACK}:{state.gcs_port}"
                        state.env["RAY_ADDRESS"] = state.address
            if head:
                # The address the head advertises (TEMP/ray_current_cluster) must be
                # loopback; workers overwrite that file with their own spelling.
                state.address = _read_head_address(temp_dir, state.gcs_port)
                if not state.address.startswith(f"{LOOPBACK}:"):
                    raise ClusterError(f"the head advertises {state.address}, not "
                                       f"{LOOPBACK}; log {state.nodes[0].log}")
                state.env["RAY_ADDRESS"] = state.address
                save_state(state)
                if dashboard_port is not None:
                    # "Ray runtime started" comes before the dashboard listens.
                    _wait_port(dashboard_port, timeout_s, state.nodes[0])
    except BaseException:
        # Keep Ray's temp dir: its session logs (raylet.out, gcs_server.out) say why.
        down(state, grace_s=5.0, remove_temp=False)
        raise
    save_state(state)
    _register(state)
    return state


# --------------------------------------------------------------------------- registry
#: ``$SELTUNE_CLUSTER_REGISTRY`` or ``~/.seltune/clusters``: one small file per running
#: cluster ``cluster up`` started (``<port>.json`` -> its directory), so a driver given
#: only ``--address HOST:PORT`` finds the token of a cluster seltune started, whatever
#: ``--dir`` it was started with (:func:`find_cluster`).
REGISTRY_ENV = "SELTUNE_CLUSTER_REGISTRY"


def registry_dir() -> Path:
    env = os.environ.get(REGISTRY_ENV)
    return Path(env) if env else Path.home() / ".seltune" / "clusters"


def _register(state: ClusterState) -> None:
    path = registry_dir() / f"{state.gcs_port}.json"
    try:
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps({"address": state.address, "dir": state.dir}) + "\n")
    except OSError as exc:  # the cluster runs; only the lookup by address is lost
        print(f"[seltune] could not record the cluster in {path.parent} ({exc}); drivers "
              f"need eval \"$(seltune cluster env --dir {state.dir})\"", file=sys.stderr)


def _unregister(state: ClusterState) -> None:
    (registry_dir() / f"{state.gcs_port}.json").unlink(missing_ok=True)


def find_cluster(address: str) -> ClusterState | None:
    """The running cluster ``cluster up`` started at ``address`` (``HOST:PORT``), or None.

    Looked up in the registry (any ``--dir``) and the default directory; a state whose
    head is no longer alive, or that was stopped, does not count.
    """
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not port.isdigit():
        return None
    candidates = []
    entry = registry_dir() / f"{port}.json"
    try:
        candidates.append(Path(json.loads(entry.read_text())["dir"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    candidates.append(default_dir())
    for directory in candidates:
        try:
            state = load_state(directory)
        except InputError:
            continue
        same_host = host in (LOOPBACK, "localhost", state.address.rpartition(":")[0])
        if (state.stopped_at is None and state.gcs_port == int(port) and same_host
                and state.nodes and node_alive(state.nodes[0])):
            return state
    return None


_START_ATTEMPTS = 3


def _start_node(state: ClusterState, ray: list[str], index: int, node_env: dict[str, str],
                dashboard_port: int | None,
                wrap_node: Callable[[int, list[str]], list[str]] | None,
                log: Path, python_path: Sequence[str | Path] = ()) -> NodeInfo:
    """Spawn node ``index`` and record it in ``state`` (saved at once, so that `down`
    can always stop it, even if this process dies right after)."""
    head = index == 0
    cmd = _node_command(ray, head=head, index=index, port=state.gcs_port,
                        cpus=state.cpus_per_node,
                        gpus=state.gpus_per_node, temp_dir=state.temp_dir,
                        object_store_mb=state.object_store_mb, dashboard_port=dashboard_port,
                        python_path=python_path)
    if wrap_node is not None:
        cmd = list(wrap_node(index, cmd))
    proc = _spawn(cmd, node_env_for(node_env, head), log)
    _CHILDREN[proc.pid] = proc
    stat = _proc_stat(proc.pid)
    node = NodeInfo(index=index, role="head" if head else "worker", pid=proc.pid,
                    start_ticks=stat[4] if stat else -1, log=str(log),
                    resource=node_resource(index))
    state.nodes.append(node)
    save_state(state)
    return node


def kill_node(state: ClusterState, index: int) -> list[int]:
    """Simulate the crash of node ``index``: SIGKILL all its processes at once.

    Returns the pids that were signalled. Killing the head (index 0) takes the whole
    cluster down, as it would on real hardware. The state file is not changed:
    :func:`status` shows the node as dead.
    """
    if not 0 <= index < len(state.nodes):
        raise InputError(field="index", value=index,
                         expected=f"a node index in [0, {len(state.nodes) - 1}]")
    node = state.nodes[index]
    pids = node_pids(node)
    # Freeze first, so no member can react (restart, reparent) before all are killed.
    _signal_all(pids, signal.SIGSTOP)
    _signal_all(pids, signal.SIGKILL)
    left = _wait_gone(node, 10.0)
    if left:
        raise ClusterError(f"node {index}: processes {left} survived SIGKILL")
    return pids


def stop_node(node: NodeInfo, grace_s: float = 10.0) -> list[int]:
    """Stop one node: SIGTERM its leader (Ray then shuts its children down), wait up
    to ``grace_s`` seconds, then SIGKILL whatever of its session is left.

    Returns the pids that had to be SIGKILLed.
    """
    if node_alive(node):
        _signal_all([node.pid], signal.SIGTERM)
    left = _wait_gone(node, grace_s)
    if left:
        _signal_all(left, signal.SIGKILL)
        still = _wait_gone(node, 10.0)
        if still:
            raise ClusterError(f"node {node.index}: processes {still} survived SIGKILL")
    _reap(node.pid)
    _CHILDREN.pop(node.pid, None)
    return left


def down(state: ClusterState, *, grace_s: float = 10.0, remove_temp: bool = True) -> ClusterState:
    """Stop every node of ``state`` by pid (workers first, the head last); never ``ray stop``.

    Marks the state file stopped and removes the private Ray temp dir unless
    ``remove_temp`` is False (node logs under ``DIR/logs`` are kept).
    """
    for node in sorted(state.nodes, key=lambda n: -n.index):
        stop_node(node, grace_s=grace_s)
    if remove_temp:
        shutil.rmtree(state.temp_dir, ignore_errors=True)
    state.stopped_at = _now()
    _unregister(state)
    if Path(state.dir).is_dir():
        save_state(state)
    return state


def status(state: ClusterState) -> dict[str, Any]:
    """A JSON-able summary: address, auth mode, and for each node whether it is alive."""
    nodes: list[dict[str, Any]] = []
    for n in state.nodes:
        alive = node_alive(n)
        nodes.append({"index": n.index, "role": n.role, "pid": n.pid, "alive": alive,
                      "processes": len(node_pids(n)) if alive else 0, "log": n.log,
                      "resource": n.resource})
    alive_count = sum(n["alive"] for n in nodes)
    if state.stopped_at is not None:
        overall = "stopped"
    elif alive_count == len(nodes):
        overall = "running"
    elif alive_count == 0:
        overall = "dead"
    else:
        overall = "degraded"
    return {"state": overall, "address": state.address, "dashboard_url": state.dashboard_url,
            "auth_mode": state.auth_mode, "dir": state.dir, "temp_dir": state.temp_dir,
            "cpus_per_node": state.cpus_per_node, "gpus_per_node": state.gpus_per_node,
            "alive_nodes": alive_count, "nodes": nodes, "env": state.env,
            "unset_env": state.unset_env, "started_at": state.started_at,
            "stopped_at": state.stopped_at}
