"""The local launcher's logic without Ray: state file, validation, pid handling.

Process handling is tested on real (non-Ray) processes started in their own session,
exactly as `ray start --block` nodes are.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from cluster import local
from core.errors import InputError


def _state(tmp_path, nodes=()):
    return local.ClusterState(
        address="192.0.2.2:6379", gcs_port=6379, dashboard_url=None, auth_mode="token",
        token_file=str(tmp_path / "auth_token"), temp_dir=str(tmp_path / "ray"),
        dir=str(tmp_path), cpus_per_node=1, gpus_per_node=0, object_store_mb=200,
        env={"RAY_ADDRESS": "192.0.2.2:6379", "RAY_AUTH_MODE": "token",
             "RAY_AUTH_TOKEN_PATH": str(tmp_path / "auth_token")},
        unset_env=["RAY_AUTH_TOKEN"], nodes=list(nodes), started_at="2026-01-01T00:00:00+00:00",
    )


def _session(script: str) -> subprocess.Popen:
    """A process leading its own session, like a node's `ray start --block`."""
    return subprocess.Popen([sys.executable, "-c", script], start_new_session=True)


def _node_of(proc: subprocess.Popen, index: int = 1) -> local.NodeInfo:
    stat = local._proc_stat(proc.pid)
    assert stat is not None
    return local.NodeInfo(index=index, role="worker", pid=proc.pid, start_ticks=stat[4],
                          log="/dev/null", resource=local.node_resource(index))


def _wait_members(node, n, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(local.node_pids(node)) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"expected {n} members, got {local.node_pids(node)}")


# A leader with one child; both ignore SIGTERM, so only SIGKILL stops them.
STUBBORN = (
    "import signal, subprocess, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "subprocess.Popen([sys.executable, '-c', 'import signal, time; "
    "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)'])\n"
    "time.sleep(120)\n"
)
# A leader with one child that exits on SIGTERM (as Ray's node processes do).
POLITE = (
    "import subprocess, sys, time\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
    "time.sleep(120)\n"
)


def test_state_round_trip(tmp_path):
    node = local.NodeInfo(index=0, role="head", pid=123, start_ticks=456, log="l",
                          resource="seltune_node_0")
    state = _state(tmp_path, [node])
    local.save_state(state)
    assert oct(os.stat(local.state_path(tmp_path)).st_mode & 0o777) == "0o600"
    back = local.load_state(tmp_path)
    assert back == state
    assert back.nodes[0].start_ticks == 456


def test_load_state_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match=str(tmp_path / "cluster.json")):
        local.load_state(tmp_path)
    (tmp_path / "cluster.json").write_text("{not json")
    with pytest.raises(InputError, match="invalid JSON"):
        local.load_state(tmp_path)
    (tmp_path / "cluster.json").write_text(json.dumps({"nodes": []}))
    with pytest.raises(InputError, match="not a seltune cluster state file"):
        local.load_state(tmp_path)
    data = _state(tmp_path).to_dict()
    data["version"] = 99
    (tmp_path / "cluster.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match="version=99"):
        local.load_state(tmp_path)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"nodes": 0}, "--nodes"),
    ({"cpus_per_node": 0}, "--cpus-per-node"),
    ({"gpus_per_node": -1}, "--gpus-per-node"),
    ({"port": 80}, "--port"),
    ({"auth_mode": "password"}, "--auth-mode"),
    ({"object_store_mb": 10}, "--object-store-mb"),
])
def test_up_rejects_bad_arguments_before_starting_anything(tmp_path, kwargs, field):
    args = {"nodes": 2, "cpus_per_node": 1, **kwargs}
    nodes, cpus = args.pop("nodes"), args.pop("cpus_per_node")
    with pytest.raises(InputError, match=field):
        local.up(nodes, cpus, directory=tmp_path, **args)
    assert not (tmp_path / "cluster.json").exists()


def test_up_rejects_a_port_in_use(tmp_path):
    with socket.socket() as s:
        s.bind(("", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(InputError, match=f"--port={port}: port is already in use"):
            local.up(2, 1, directory=tmp_path, port=port)


def test_up_refuses_a_directory_whose_cluster_is_alive(tmp_path):
    proc = _session("import time; time.sleep(60)")
    try:
        local.save_state(_state(tmp_path, [_node_of(proc, 0)]))
        with pytest.raises(InputError, match="still running"):
            local.up(2, 1, directory=tmp_path)
    finally:
        proc.kill()
        proc.wait()


def test_node_command_head_and_worker():
    head = local._node_command(["ray"], head=True, index=0, port=6390,
                               cpus=2, gpus=1, temp_dir="/tmp/stc-x", object_store_mb=100,
                               dashboard_port=None)
    assert head[:3] == ["ray", "start", "--block"]
    assert head[head.index("--port") + 1] == "6390"
    assert head[head.index("--num-cpus") + 1] == "2"
    assert head[head.index("--num-gpus") + 1] == "1"
    assert head[head.index("--include-dashboard") + 1] == "false"
    assert head[head.index("--object-store-memory") + 1] == str(100 * 1024 * 1024)
    assert json.loads(head[head.index("--resources") + 1]) == {"seltune_node_0": 1}
    assert "--address" not in head
    assert head[head.index("--node-ip-address") + 1] == "127.0.0.1"
    worker = local._node_command(["ray"], head=False, index=2,
                                 port=6390, cpus=1, gpus=0, temp_dir="/tmp/stc-x",
                                 object_store_mb=100, dashboard_port=8265)
    # 127.1 is loopback spelled so that Ray does not rewrite it to the host's address.
    assert worker[worker.index("--address") + 1] == "127.1:6390"
    assert "--head" not in worker and "--include-dashboard" not in worker
    assert "--node-ip-address" not in worker
    assert json.loads(worker[worker.index("--resources") + 1]) == {"seltune_node_2": 1}
    with_dash = local._node_command(["ray"], head=True, index=0, port=1,
                                    cpus=1, gpus=0, temp_dir="t", object_store_mb=100,
                                    dashboard_port=8266)
    assert with_dash[with_dash.index("--dashboard-port") + 1] == "8266"
    assert with_dash[with_dash.index("--dashboard-host") + 1] == "127.0.0.1"


def test_node_env_keeps_loopback_on_the_head_and_lets_workers_join():
    base = {"PATH": "/bin", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    head = local.node_env_for(base, head=True)
    worker = local.node_env_for(base, head=False)
    assert head["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in worker
    assert worker["GRPC_DNS_RESOLVER"] == head["GRPC_DNS_RESOLVER"] == "native"
    assert worker["PATH"] == "/bin"
    assert base == {"PATH": "/bin", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def test_env_helpers(tmp_path):
    state = _state(tmp_path)
    environ = {"RAY_AUTH_TOKEN": "stale", "PATH": "/bin"}
    local.apply_env(state, environ)
    assert "RAY_AUTH_TOKEN" not in environ
    assert environ["RAY_AUTH_MODE"] == "token"
    assert environ["RAY_ADDRESS"] == "192.0.2.2:6379"
    lines = local.export_lines(state)
    assert lines[0] == "unset RAY_AUTH_TOKEN"
    assert "export RAY_AUTH_MODE=token" in lines


def test_stop_node_terms_then_kills_the_whole_session():
    proc = _session(STUBBORN)
    node = _node_of(proc)
    _wait_members(node, 2)
    members = local.node_pids(node)
    assert proc.pid in members
    t0 = time.monotonic()
    forced = local.stop_node(node, grace_s=0.5)
    proc.wait(timeout=5)
    assert sorted(forced) == sorted(members)  # SIGTERM was ignored: all needed SIGKILL
    assert time.monotonic() - t0 < 10
    assert not local.node_alive(node)
    assert local.node_pids(node) == []
    assert proc.returncode == -signal.SIGKILL


def test_stop_node_graceful_when_sigterm_works():
    proc = _session(POLITE)
    node = _node_of(proc)
    _wait_members(node, 2)
    forced = local.stop_node(node, grace_s=1.0)
    proc.wait(timeout=5)
    # The leader exits on SIGTERM; its orphaned child stays in the session and is
    # found by session id and killed, so nothing of the node survives.
    assert proc.pid not in forced
    assert local.node_pids(node) == []


def test_kill_node_kills_every_member_at_once(tmp_path):
    head = _session("import time; time.sleep(60)")
    worker = _session(POLITE)
    state = _state(tmp_path, [_node_of(head, 0), _node_of(worker, 1)])
    try:
        _wait_members(state.nodes[1], 2)
        killed = local.kill_node(state, 1)
        worker.wait(timeout=5)
        assert len(killed) == 2
        assert worker.returncode == -signal.SIGKILL
        assert local.node_pids(state.nodes[1]) == []
        assert local.node_alive(state.nodes[0])  # the other node is untouched
        info = local.status(state)
        assert info["state"] == "degraded"
        assert [n["alive"] for n in info["nodes"]] == [True, False]
        with pytest.raises(InputError, match="index=5"):
            local.kill_node(state, 5)
    finally:
        head.kill()
        head.wait()


def test_a_recycled_pid_is_never_signalled(tmp_path):
    proc = _session("import time; time.sleep(60)")
    try:
        node = _node_of(proc)
        impostor = local.NodeInfo(index=1, role="worker", pid=proc.pid,
                                  start_ticks=node.start_ticks + 1, log="", resource="r")
        assert not local.node_alive(impostor)
        assert local.node_pids(impostor) == []
        local.stop_node(impostor, grace_s=0.1)
        assert proc.poll() is None  # still running: a different incarnation of the pid
    finally:
        proc.kill()
        proc.wait()


def test_down_marks_stopped_and_removes_temp(tmp_path):
    proc = _session(POLITE)
    temp = tmp_path / "ray"
    temp.mkdir()
    state = _state(tmp_path, [_node_of(proc, 0)])
    local.save_state(state)
    local.down(state, grace_s=5.0)
    proc.wait(timeout=5)
    assert not temp.exists()
    back = local.load_state(tmp_path)
    assert back.stopped_at is not None
    assert local.status(back)["state"] == "stopped"
