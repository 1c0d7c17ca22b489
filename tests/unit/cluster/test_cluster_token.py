"""A driver given only ``--address`` of a cluster ``seltune cluster up`` started gets its
token; without one, the cause is named (issue 15, defect 11). No Ray is started: the
"cluster" is a process standing in for the head and, for the message, a listening port."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys

import pytest

from cluster import local
from core.errors import InputError


@pytest.fixture
def registry(tmp_path, monkeypatch):
    monkeypatch.setenv(local.REGISTRY_ENV, str(tmp_path / "registry"))
    monkeypatch.setenv(local.DEFAULT_DIR_ENV, str(tmp_path / "default"))
    return tmp_path / "registry"


@pytest.fixture
def head():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                            start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def _running_state(tmp_path, head, port=43111):
    stat = local._proc_stat(head.pid)
    assert stat is not None
    node = local.NodeInfo(index=0, role="head", pid=head.pid, start_ticks=stat[4],
                          log="/dev/null", resource=local.node_resource(0))
    cdir = tmp_path / "my-cluster"
    cdir.mkdir()
    state = local.ClusterState(
        address=f"127.0.0.1:{port}", gcs_port=port, dashboard_url=None, auth_mode="token",
        token_file=str(cdir / "auth_token"), temp_dir=str(tmp_path / "ray"), dir=str(cdir),
        cpus_per_node=1, gpus_per_node=0, object_store_mb=200,
        env={"RAY_ADDRESS": f"127.0.0.1:{port}", "RAY_AUTH_MODE": "token",
             "RAY_AUTH_TOKEN_PATH": str(cdir / "auth_token")},
        unset_env=["RAY_AUTH_TOKEN"], nodes=[node], started_at="2026-01-01T00:00:00+00:00")
    local.save_state(state)
    local._register(state)
    return state


def test_find_cluster_by_address_whatever_its_dir(tmp_path, registry, head):
    state = _running_state(tmp_path, head)
    assert (registry / "43111.json").is_file()
    found = local.find_cluster("127.0.0.1:43111")
    assert found is not None and found.dir == state.dir
    assert local.find_cluster("localhost:43111") is not None
    assert local.find_cluster("127.0.0.1:43112") is None  # another port
    assert local.find_cluster("10.0.0.9:43111") is None  # another machine


def test_a_stopped_or_dead_cluster_is_not_found(tmp_path, registry, head):
    state = _running_state(tmp_path, head)
    head.kill()
    head.wait()
    assert local.find_cluster(state.address) is None
    local.down(state, grace_s=0.1)
    assert not (registry / "43111.json").exists()


def test_cli_gives_the_driver_the_clusters_token(tmp_path, registry, head, monkeypatch,
                                                 capsys):
    import tuning.cli as cli

    state = _running_state(tmp_path, head)
    for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        # setenv first: a delenv of an absent key records nothing to undo, and the hook
        # sets these in os.environ (RAY_ADDRESS would leak into later tests)
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    # the hook only acts before Ray is imported (Ray reads the token settings then)
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    args = argparse.Namespace(command="sweep", address=state.address)
    cli._join_seltune_cluster(args)
    assert os.environ["RAY_AUTH_MODE"] == "token"
    assert os.environ["RAY_AUTH_TOKEN_PATH"] == state.token_file
    assert state.dir in capsys.readouterr().err


def test_no_token_for_a_cluster_that_answers_names_the_cause(monkeypatch):
    """A GCS listening at the address, no token in this process: the message says the
    token is missing and how to get it, not "expected a running Ray cluster"."""
    import ray

    from tuning.sweep import runtime

    for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(key, raising=False)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = f"127.0.0.1:{listener.getsockname()[1]}"

        def refused(*a, **k):
            raise ConnectionError(f"Failed to connect to Ray cluster at {address}")

        monkeypatch.setattr(ray, "init", refused)
        monkeypatch.setattr(ray, "is_initialized", lambda: False)
        with pytest.raises(InputError) as info:
            runtime.start_ray(address)
    msg = str(info.value)
    assert "answers there but this process has no auth token" in msg
    assert 'eval "$(seltune cluster env --dir DIR)"' in msg
    assert "expected a running Ray cluster" not in msg


def test_nothing_listening_keeps_the_old_message(monkeypatch):
    import ray

    from tuning.sweep import runtime

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"  # closed again: nothing listens

    def refused(*a, **k):
        raise ConnectionError("Failed to connect")

    monkeypatch.setattr(ray, "init", refused)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with pytest.raises(InputError, match="expected a running Ray cluster"):
        runtime.start_ray(address)
