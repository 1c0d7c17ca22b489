"""A real 3-node Ray cluster on this machine: up, spread, token auth, node loss, down.

Every node is a `ray start --block` process tree started by `seltune cluster up`
(1 CPU each); nothing is mocked.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from cluster_fixtures import (  # noqa: F401  (pytest fixtures)
    SELTUNE,
    cluster_factory,
    driver_env,
    run_seltune,
    seltune_env,
    wait_for,
)

from cluster import local
from core.errors import InputError

pytestmark = pytest.mark.integration


def _alive_nodes(ray):
    return [n for n in ray.nodes() if n["Alive"]]


def _listening_addresses(pids) -> set[str]:
    """Local IPs of the TCP sockets in LISTEN state held by ``pids`` (Linux /proc)."""
    import ipaddress
    import os

    inodes = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = set()
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                local_hex, state, inode = fields[1].split(":")[0], fields[3], fields[9]
                if state != "0A" or inode not in inodes:  # 0A = LISTEN
                    continue
                raw = bytes.fromhex(local_hex)
                # /proc prints each 32-bit word in host (little-endian) order.
                words = [raw[i:i + 4][::-1] for i in range(0, width, 4)]
                ip = ipaddress.ip_address(b"".join(words))
                found.add(str(getattr(ip, "ipv4_mapped", None) or ip))  # ::ffff:a.b.c.d
    return found


def test_three_node_cluster_spreads_tasks_survives_a_node_loss_and_stops_clean(tmp_path):
    import ray

    directory = tmp_path / "c"
    out = run_seltune(["cluster", "up", "--nodes", "3", "--cpus-per-node", "1",
                       "--dir", str(directory), "--json"], timeout=300)
    state = local.load_state(directory)
    try:
        info = json.loads(out.stdout)
        assert info["state"] == "running" and info["alive_nodes"] == 3
        assert state.auth_mode == "token" and state.env["RAY_AUTH_MODE"] == "token"
        assert (directory / "auth_token").stat().st_mode & 0o077 == 0  # private token

        with driver_env(state):
            ray.init(address=state.address, logging_level="WARNING")
            try:
                nodes = _alive_nodes(ray)
                assert len(nodes) == 3
                assert sorted(n["Resources"]["CPU"] for n in nodes) == [1.0, 1.0, 1.0]
                by_resource = {r: n["NodeID"] for n in nodes for r in n["Resources"]
                               if r.startswith("seltune_node_")}
                assert sorted(by_resource) == ["seltune_node_0", "seltune_node_1",
                                               "seltune_node_2"]
                # Loopback only: every node advertises 127.0.0.1 and no process of any
                # node listens on another address (0.0.0.0, the machine's IP).
                assert {n["NodeManagerAddress"] for n in nodes} == {"127.0.0.1"}
                cluster_pids = [pid for n in state.nodes for pid in local.node_pids(n)]
                listening = _listening_addresses(cluster_pids)
                assert listening == {"127.0.0.1"}, listening

                @ray.remote(num_cpus=1)
                def where(seconds):
                    time.sleep(seconds)
                    return ray.get_runtime_context().get_node_id()

                # Three 1-CPU tasks at once only fit if each node runs one.
                placed = ray.get([where.remote(2.0) for _ in range(3)], timeout=120)
                assert sorted(placed) == sorted(by_resource.values())

                victim = by_resource["seltune_node_2"]
                killed = local.kill_node(state, 2)
                assert killed and not local.node_alive(state.nodes[2])
                wait_for(lambda: len(_alive_nodes(ray)) == 2, 120, "Ray to mark node 2 dead")
                assert victim not in {n["NodeID"] for n in _alive_nodes(ray)}
                # The survivors still run work.
                assert set(ray.get([where.remote(0.1) for _ in range(4)], timeout=120)) <= {
                    by_resource["seltune_node_0"], by_resource["seltune_node_1"]}
            finally:
                ray.shutdown()

        status = run_seltune(["cluster", "status", "--dir", str(directory), "--json"],
                             check=False)
        assert status.returncode == 1  # degraded
        assert json.loads(status.stdout)["state"] == "degraded"
    finally:
        run_seltune(["cluster", "down", "--dir", str(directory), "--grace", "10"], timeout=120)
    state = local.load_state(directory)
    assert state.stopped_at is not None
    assert all(local.node_pids(n) == [] for n in state.nodes)
    # Nothing on the machine still runs out of this cluster's temp dir.
    leftovers = []
    for pid in local._all_pids():
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
        except OSError:
            continue
        if state.temp_dir in cmdline:
            leftovers.append(pid)
    assert leftovers == []


def test_a_driver_with_the_wrong_token_is_refused(cluster_factory):  # noqa: F811
    state = cluster_factory(1)
    code = ("import ray, sys\n"
            "try:\n"
            "    ray.init(address=sys.argv[1], logging_level='ERROR')\n"
            "except Exception as e:\n"
            "    print('REFUSED', type(e).__name__); sys.exit(3)\n"
            "print('CONNECTED', len(ray.nodes()))\n")
    good = subprocess.run([sys.executable, "-c", code, state.address], env=seltune_env(state),
                          capture_output=True, text=True, timeout=180)
    assert good.returncode == 0 and "CONNECTED 1" in good.stdout, good.stderr[-2000:]
    bad_env = seltune_env(state, RAY_AUTH_TOKEN="not-the-token")  # overrides the file
    bad = subprocess.run([sys.executable, "-c", code, state.address], env=bad_env,
                         capture_output=True, text=True, timeout=180)
    assert bad.returncode == 3 and "REFUSED" in bad.stdout, (bad.stdout, bad.stderr[-2000:])


def test_storage_that_a_worker_node_cannot_see_is_named(cluster_factory, tmp_path):  # noqa: F811
    """Node 1 runs in a private mount namespace with a tmpfs over the storage path: it
    sees an empty directory there, like a worker whose /shared is not the NFS mount."""
    import shutil

    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs `unshare -m` (root or user namespaces) to hide a directory")
    from tuning.sweep.storage_check import check_storage_reachable

    storage = tmp_path / "shared"
    storage.mkdir()

    def hide_storage(index, cmd):
        if index != 1:
            return cmd
        script = f'mount -t tmpfs seltune-test "{storage}" && exec "$@"'
        return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *cmd]

    state = cluster_factory(2, wrap_node=hide_storage)
    import ray

    with driver_env(state):
        ray.init(address=state.address, logging_level="WARNING")
        try:
            with pytest.raises(InputError) as err:
                check_storage_reachable(storage, timeout_s=120)
            message = str(err.value)
            assert f"--storage='{storage}'" in message
            assert "not reachable from every node" in message
            assert "FileNotFoundError" in message  # node 1 cannot find the driver's probe
            ids = {r: n["NodeID"] for n in ray.nodes() if n["Alive"] for r in n["Resources"]
                   if r.startswith("seltune_node_")}
            assert ids["seltune_node_1"][:12] in message  # the hidden node is named
            assert ids["seltune_node_0"][:12] not in message  # the head saw the probe
            # A directory both nodes share passes and lists both nodes.
            other = tmp_path / "other"
            other.mkdir()
            results = check_storage_reachable(other, timeout_s=120)
            assert len(results) == 2 and all(r["ok"] for r in results)
            assert list(other.iterdir()) == []  # probe files cleaned up
        finally:
            ray.shutdown()
