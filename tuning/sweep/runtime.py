"""Starting or joining Ray for a sweep.

``address``:

- ``"local"`` (the default when neither ``--address`` nor ``RAY_ADDRESS`` is set):
  start a private single-node Ray for this process, bound to 127.0.0.1, with no
  dashboard and a private temporary directory (``RAY_TMPDIR``), so a sweep never
  attaches to somebody else's cluster on the same machine. Stopping it
  (:meth:`RayRuntime.close`) stops only the processes this driver started.
- ``"auto"`` or ``"HOST:PORT"`` (or ``ray://HOST:PORT``): join an existing cluster.
  Ray >= 2.60 enables token authentication; ``RAY_AUTH_MODE`` must then be set the
  same way in this process as on the cluster's nodes.

When ``--address`` is not given, ``RAY_ADDRESS`` from the environment is honoured.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from core.errors import InputError

_HOST_PORT = re.compile(r"^(ray://)?[A-Za-z0-9_.\-\[\]:]+:\d{1,5}$")


def resolve_address(address: str | None) -> str:
    """The address to use: ``address`` if given, else ``$RAY_ADDRESS``, else ``local``.

    Raises:
        InputError: ``address`` is not ``local``, ``auto`` or ``HOST:PORT``.
    """
    if address is None or address == "":
        address = os.environ.get("RAY_ADDRESS") or "local"
    if address in ("local", "auto") or _HOST_PORT.match(address):
        return address
    raise InputError(field="--address", value=address,
                     expected="local, auto or HOST:PORT (e.g. 10.0.0.5:6379)")


@dataclass
class RayRuntime:
    """A Ray connection this process made; :meth:`close` undoes exactly that."""

    address: str
    started_local: bool
    temp_dir: str | None
    owns_temp_dir: bool
    owns_connection: bool = True

    def close(self) -> None:
        import ray

        if self.owns_connection and ray.is_initialized():
            # For a local Ray this stops the raylet/GCS this driver started (by pid,
            # inside Ray); for a remote cluster it only disconnects.
            if self.started_local:
                _shutdown_local()
            else:
                ray.shutdown()
        if self.owns_temp_dir and self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


def _shutdown_local() -> None:
    """``ray.shutdown()`` of the local Ray this process started, less its slowest second.

    Ray stops its processes one after another, giving each up to 1 s to exit after
    SIGTERM. The autoscaler monitor (of no use to a fixed-size local Ray) sleeps
    through SIGTERM and so costs that whole second on every sweep. It is taken out of
    Ray's list, Ray stops the rest (raylet and GCS first, as it prefers), and the
    monitor is then killed and reaped here.
    """
    import ray
    from ray._private import ray_constants
    from ray._private import worker as ray_worker

    node = getattr(ray_worker, "_global_node", None)
    processes = getattr(node, "all_processes", None)
    monitors = []
    if isinstance(processes, dict):
        monitors = processes.pop(ray_constants.PROCESS_TYPE_MONITOR, [])
    try:
        ray.shutdown()
    finally:  # the monitor is ours to stop now, even if Ray's shutdown failed
        for info in monitors:
            with contextlib.suppress(OSError):
                info.process.kill()
            with contextlib.suppress(Exception):
                info.process.wait(timeout=5)


def _trial_actors_use_prestarted_workers() -> None:
    """Let Tune's trial actors start in the worker processes Ray has already started.

    Ray prestarts one idle worker per CPU, and with ``preload_python_modules`` those
    workers import torch and the trainable while the driver is still setting up. But
    Ray never gives a prestarted worker to an actor that has its own ``runtime_env``,
    and Tune gives every trial actor ``{"env_vars": {"PL_DISABLE_FORK": "1"}}`` (a
    PyTorch Lightning setting), so each first trial used to wait for a fresh process
    and its imports (~3 s on 2 cores). The variable is put into this process's
    environment instead, which a local Ray's workers inherit, and Tune's per-actor
    copy is dropped. Environment variables Tune propagates on purpose (AWS
    credentials, Ray Train settings) are untouched.
    """
    os.environ.setdefault("PL_DISABLE_FORK", "1")
    try:
        from ray.tune.execution import class_cache
    except ImportError:  # pragma: no cover - Tune moved it; trials just start slower
        return
    defaults = getattr(class_cache, "DEFAULT_ENV_VARS", None)
    if isinstance(defaults, dict) and defaults.get("PL_DISABLE_FORK") == "1":
        del defaults["PL_DISABLE_FORK"]


def _is_loopback(address: str) -> bool:
    """Whether ``address`` (``HOST:PORT``, ``ray://HOST:PORT``, or ``auto`` meaning
    ``$RAY_ADDRESS``) names this machine's loopback: ``127.x.x.x`` in any spelling
    (``127.1`` too) or ``localhost``."""
    import socket

    if address == "auto":
        address = os.environ.get("RAY_ADDRESS", "")
    host = address.removeprefix("ray://").rsplit(":", 1)[0]
    if host == "localhost":
        return True
    try:
        return socket.inet_aton(host)[0] == 127
    except OSError:
        return False


def _bind_to_loopback() -> None:
    """Make a local Ray use 127.0.0.1 for its node address.

    ``ray.init(_node_ip_address="127.0.0.1")`` alone is not enough on Linux: Ray turns
    a loopback address into the machine's reachable IP unless multi-node clustering is
    off (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read once when ``ray`` is imported).
    The variable is set for the processes Ray starts, and Ray's already-imported
    constant is updated for this one.
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def start_ray(address: str | None = None, num_cpus: int | None = None,
              num_gpus: int | None = None, quiet: bool = True,
              preload: Sequence[str] = ()) -> RayRuntime:
    """Start (``local``) or join (``auto`` / ``HOST:PORT``) Ray; see the module doc.

    Args:
        address: ``local``, ``auto``, ``HOST:PORT`` or None (``$RAY_ADDRESS`` / local).
        num_cpus, num_gpus: resources of a local Ray (ignored when joining a cluster);
            None lets Ray detect them.
        quiet: keep Ray's own logging at WARNING.
        preload: modules a local Ray's worker processes import as soon as they start
            (e.g. torch and the trainable), before any trial is given to them.

    Returns:
        The :class:`RayRuntime` to :meth:`~RayRuntime.close` afterwards.
    """
    import logging

    import ray

    address = resolve_address(address)
    if ray.is_initialized():  # e.g. a test or a notebook that started Ray itself
        return RayRuntime(address=address, started_local=False, temp_dir=None,
                          owns_temp_dir=False, owns_connection=False)
    # The dashboard, usage stats and metrics exporter would open more ports and
    # threads; a sweep needs none of them.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    log_level = logging.WARNING if quiet else logging.INFO
    if address == "local":
        temp_dir = os.environ.get("RAY_TMPDIR")
        owns = False
        if not temp_dir:
            # Short path under /tmp: Ray's unix socket paths must stay < 108 chars.
            temp_dir = tempfile.mkdtemp(prefix="seltune-ray-", dir="/tmp")
            os.environ["RAY_TMPDIR"] = temp_dir
            owns = True
        _bind_to_loopback()
        _trial_actors_use_prestarted_workers()
        system_config = {"preload_python_modules": list(preload)} if preload else None
        ray.init(
            address="local",
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            include_dashboard=False,
            _temp_dir=temp_dir,
            _node_ip_address="127.0.0.1",
            _system_config=system_config,
            logging_level=log_level,
            log_to_driver=True,
        )
        return RayRuntime(address=address, started_local=True, temp_dir=temp_dir,
                          owns_temp_dir=owns)
    if _is_loopback(address):
        # A cluster on this machine's loopback (`seltune cluster up`): without this Ray
        # would rewrite 127.0.0.1 to the machine's address, where nothing listens.
        _bind_to_loopback()
    try:
        ray.init(address=address, logging_level=log_level, log_to_driver=True)
    except ConnectionError as exc:
        if address != "auto" and _answers(address) and not _has_token():
            # Something listens there and this process has no token: with Ray >= 2.60's
            # default token authentication that is the cause, not a missing cluster.
            raise InputError(
                "a Ray cluster answers there but this process has no auth token "
                "(RAY_AUTH_MODE/RAY_AUTH_TOKEN_PATH are not set)", field="--address",
                value=address, expected="the cluster's token: for one `seltune cluster up` "
                "started, eval \"$(seltune cluster env --dir DIR)\"; otherwise "
                "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH=FILE as on its nodes "
                "(or RAY_AUTH_MODE=disabled if the cluster has no token)") from None
        raise InputError(f"cannot connect to Ray: {str(exc).splitlines()[0]}",
                         field="--address", value=address,
                         expected="a running Ray cluster (ray start --head ...)") from None
    return RayRuntime(address=address, started_local=False, temp_dir=None,
                      owns_temp_dir=False)


def _has_token() -> bool:
    """Whether this process carries Ray token-auth settings (or turned auth off)."""
    return bool(os.environ.get("RAY_AUTH_MODE") or os.environ.get("RAY_AUTH_TOKEN")
                or os.environ.get("RAY_AUTH_TOKEN_PATH"))


def _answers(address: str, timeout_s: float = 2.0) -> bool:
    """Whether a TCP connection to ``HOST:PORT`` is accepted (a GCS listens there)."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None,
                num_gpus: int | None = None, preload: Sequence[str] = ()) -> Iterator[RayRuntime]:
    """``with ray_session(...) as rt:`` — :func:`start_ray`, then always close."""
    runtime = start_ray(address, num_cpus=num_cpus, num_gpus=num_gpus, preload=preload)
    try:
        yield runtime
    finally:
        runtime.close()
