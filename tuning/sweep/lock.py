"""``seltune resume EXPERIMENT``: continue a sweep whose driver died or was interrupted.

What is kept, and how:

- **Trials**: ``Tuner.restore`` brings back every trial of Ray's last experiment
  snapshot (taken every 5 s, see ``TUNE_GLOBAL_CHECKPOINT_S`` in
  :mod:`tuning.sweep`; trials started after it are reconciled from the ledger and the
  study, see :class:`tuning.sweep.callbacks.LedgerCallback`); unfinished ones continue from their last checkpoint
  (``resume_unfinished``); errored ones are retried from their last checkpoint with
  ``resume_errored`` (``restart_errored`` would hand OptunaSearch a trial id it never
  suggested and crash the driver). The search generator's trial counter is part of the
  snapshot, so the sweep ends at exactly ``num_samples`` trials.
- **Optuna history**: the study lives in its RDB storage; the searcher's own state is
  restored from the snapshot and reconciled with the study
  (:meth:`SeltuneOptunaSearch.reconcile_with_study`): trials asked after the snapshot
  and never run are told FAIL, finished ones are not told again.
- **ASHA's rung decisions**: reloaded from ``seltune/asha_state.json``
  (:class:`tuning.sweep.scheduler.PersistentASHA`); a trial that was stopped stays stopped
  even if Ray's snapshot still had it RUNNING.

A lock (:func:`claim_driver`: ``flock`` on ``seltune/.driver.lock``, and
``seltune/driver.json`` with the driver's pid and host) refuses a resume while the
original driver is still alive; a driver recorded on another host is taken as alive
unless ``seltune resume --force``.

An experiment in object storage (``URI/NAME``, or ``NAME --storage URI``) is resumed
the same way: its ``seltune/`` files are downloaded into the local mirror first
(:func:`tuning.experiment.layout.find_experiment`) and ``Tuner.restore`` reads Tune's state
from the URI.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from core.errors import InputError
from tuning.experiment.layout import read_json, seltune_dir, write_json
from tuning.experiment.mirror import publish, unpublish

DRIVER_FILE = "driver.json"


#: The lock a live driver holds (``flock``) for as long as it runs: the kernel drops it
#: when the process dies, SIGKILL included, so it is never stale on this machine.
LOCK_FILE = ".driver.lock"  # a dot-file: a mirror refresh keeps it (tuning.experiment)


_HELD: dict[str, int] = {}


def claim_driver(experiment_dir: Path, *, force: bool = False) -> None:
    """Make this process the experiment's only driver; refuse if another one lives.

    Atomic on one machine: an exclusive ``flock`` on ``seltune/.driver.lock`` (two
    drivers started at the same instant cannot both get it). ``seltune/driver.json``
    records the pid and host for people and for other machines (an experiment in object
    storage is resumed from anywhere): a driver recorded on another host is taken as
    alive unless ``force`` (``seltune resume --force``, for a driver known to be dead).
    """
    import fcntl

    sdir = seltune_dir(experiment_dir)
    key = str(Path(experiment_dir).resolve())
    if key not in _HELD:
        fd = os.open(sdir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = _recorded(sdir).get("pid", "?")
            raise InputError(f"a driver (pid {pid}) is still running this sweep",
                             file=experiment_dir,
                             expected="wait for it, or stop it first (it can be resumed)"
                             ) from None
        _HELD[key] = fd
    info = _recorded(sdir)
    host, pid = info.get("host"), info.get("pid")
    if host in (None, os.uname().nodename):
        # The lock was free, so the driver recorded here is dead: stop what its local
        # Ray left running (its agents outlive a SIGKILLed driver) and its temp dir.
        stopped = stop_leftovers(info)
        if stopped:
            print(f"[seltune] stopped {stopped} Ray process(es) left by the dead driver "
                  f"(pid {pid})", file=sys.stderr, flush=True)
        # ... and the half-written temporaries of its atomic writes (ledger, ASHA state)
        from core.atomic import remove_stale_temporaries

        remove_stale_temporaries(directory=sdir)
    if host not in (None, os.uname().nodename) and not force:
        release_driver(experiment_dir, keep_record=True)
        raise InputError(f"a driver on host {host} (pid {pid}) may still be running this "
                         f"sweep", file=experiment_dir,
                         expected="stop it first, or `seltune resume --force` if it is dead")
    path = sdir / DRIVER_FILE
    write_json(path, {"pid": os.getpid(), "host": os.uname().nodename})
    publish(path)


def _start_time(pid: int) -> str | None:
    """The start time of process ``pid`` (``/proc/PID/stat`` field 22), None if gone:
    with the pid it names one process (a pid alone may have been reused)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _descendants(root: int) -> list[int]:
    """Pids of the live descendants of process ``root`` (Linux ``/proc``)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # exited while listed
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _local_session_dir() -> str | None:
    """The session directory of the local Ray this process started (None if none)."""
    from ray._private import worker as ray_worker

    node = getattr(ray_worker, "_global_node", None)
    getter = getattr(node, "get_session_dir_path", None)
    return str(getter()) if callable(getter) else None


def _holding(session_dir: str) -> list[int]:
    """Pids of this user's processes with a file open under ``session_dir`` (a Ray
    session's logs and sockets: only that Ray's processes hold them)."""
    prefix = session_dir.rstrip("/") + "/"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != os.getuid():
                continue
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue  # exited, or not ours to look at
        for fd in fds:
            try:
                if os.readlink(f"/proc/{entry}/fd/{fd}").startswith(prefix):
                    found.append(int(entry))
                    break
            except OSError:
                continue
    return found


def record_ray_processes(experiment_dir: Path, temp_dir: str | None) -> None:
    """Add this driver's local Ray (its processes' pids and start times, its session
    directory) and the Ray temp dir it made (None when it was given one) to
    ``driver.json``, so the next driver can stop what a SIGKILL leaves behind
    (:func:`stop_leftovers`)."""
    sdir = seltune_dir(experiment_dir)
    info = _recorded(sdir) or {"pid": os.getpid(), "host": os.uname().nodename}
    procs = [[pid, start] for pid in _descendants(os.getpid())
             if (start := _start_time(pid)) is not None]
    info.update(ray_processes=procs, ray_session_dir=_local_session_dir(),
                ray_temp_dir=temp_dir)
    path = sdir / DRIVER_FILE
    write_json(path, info)
    publish(path)


def stop_leftovers(info: dict[str, Any]) -> int:
    """SIGKILL the recorded processes of a dead driver that still run (same pid and
    start time; never another process) and remove its own Ray temp dir; returns how
    many processes were stopped."""
    import shutil
    import signal

    stopped = 0
    targets = []
    for item in info.get("ray_processes") or []:
        if isinstance(item, list) and len(item) == 2 and isinstance(item[0], int):
            targets.append((item[0], item[1]))
    session = info.get("ray_session_dir")
    if isinstance(session, str) and "session_" in Path(session).name:
        # processes Ray started after the record (its agents): they hold its session
        targets += [(pid, _start_time(pid)) for pid in _holding(session)]
    for pid, start in dict.fromkeys(targets):
        if pid != os.getpid() and start is not None and _start_time(pid) == start:
            try:
                os.kill(pid, signal.SIGKILL)
                stopped += 1
            except ProcessLookupError:
                continue
    temp = info.get("ray_temp_dir")
    if isinstance(temp, str) and Path(temp).name.startswith("seltune-ray-"):
        shutil.rmtree(temp, ignore_errors=True)  # made by that driver for its Ray alone
    return stopped


def _recorded(sdir: Path) -> dict[str, Any]:
    """``driver.json``'s content, ``{}`` when absent or unreadable (it is informative)."""
    path = sdir / DRIVER_FILE
    if not path.is_file():
        return {}
    try:
        info = read_json(path)
    except InputError:  # half-written by an old seltune, or edited: not a lock any more
        return {}
    return info if isinstance(info, dict) else {}


def release_driver(experiment_dir: Path, *, keep_record: bool = False) -> None:
    """Give up the lock (and, unless ``keep_record``, remove ``driver.json``)."""
    import fcntl

    if not keep_record:
        path = seltune_dir(experiment_dir) / DRIVER_FILE
        path.unlink(missing_ok=True)
        unpublish(path)
    fd = _HELD.pop(str(Path(experiment_dir).resolve()), None)
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
