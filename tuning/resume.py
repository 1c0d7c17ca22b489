"""``seltune resume EXPERIMENT``: continue a sweep whose driver died or was interrupted.

What is kept, and how:

- **Trials**: ``Tuner.restore`` brings back every trial of Ray's last experiment
  snapshot (taken every 5 s, see ``TUNE_GLOBAL_CHECKPOINT_S`` in
  :mod:`tuning.sweep`; trials started after it are reconciled from the ledger and the
  study, see :class:`tuning.sweep.LedgerCallback`); unfinished ones continue from their last checkpoint
  (``resume_unfinished``); errored ones are retried from their last checkpoint with
  ``resume_errored`` (``restart_errored`` would hand OptunaSearch a trial id it never
  suggested and crash the driver). The search generator's trial counter is part of the
  snapshot, so the sweep ends at exactly ``num_samples`` trials.
- **Optuna history**: the study lives in its RDB storage; the searcher's own state is
  restored from the snapshot and reconciled with the study
  (:meth:`SeltuneOptunaSearch.reconcile_with_study`): trials asked after the snapshot
  and never run are told FAIL, finished ones are not told again.
- **ASHA's rung decisions**: reloaded from ``seltune/asha_state.json``
  (:class:`tuning.searcher.PersistentASHA`); a trial that was stopped stays stopped
  even if Ray's snapshot still had it RUNNING.

A lock (:func:`claim_driver`: ``flock`` on ``seltune/.driver.lock``, and
``seltune/driver.json`` with the driver's pid and host) refuses a resume while the
original driver is still alive; a driver recorded on another host is taken as alive
unless ``seltune resume --force``.

An experiment in object storage (``URI/NAME``, or ``NAME --storage URI``) is resumed
the same way: its ``seltune/`` files are downloaded into the local mirror first
(:func:`tuning.experiment.find_experiment`) and ``Tuner.restore`` reads Tune's state
from the URI.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from core.errors import InputError
from tuning.experiment import (
    check_study_db,
    find_experiment,
    load_spec,
    read_json,
    seltune_dir,
    write_json,
)
from tuning.remote import publish, unpublish

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
    if host not in (None, os.uname().nodename) and not force:
        release_driver(experiment_dir, keep_record=True)
        raise InputError(f"a driver on host {host} (pid {pid}) may still be running this "
                         f"sweep", file=experiment_dir,
                         expected="stop it first, or `seltune resume --force` if it is dead")
    path = sdir / DRIVER_FILE
    write_json(path, {"pid": os.getpid(), "host": os.uname().nodename})
    publish(path)


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


def resume(experiment: str, *, storage: str | None = None, num_cpus: int | None = None,
           address: str | None = None, force: bool = False,
           trust_experiment: bool = False) -> dict[str, Any]:
    """Continue the sweep; returns its final status (see :mod:`tuning.status`)."""
    from ray import tune

    from tuning.status import experiment_status
    from tuning.sweep import execute

    path = find_experiment(experiment, storage)
    spec = load_spec(path)
    check_study_db(spec)
    if spec.uri is None:  # the study a copied experiment would share: refused
        from tuning.experiment import default_study_storage
        from tuning.study_db import claim_study

        claim_study(spec.study_storage, spec.study_name, path,
                    own_db=spec.study_storage == default_study_storage(path))
    if address:
        spec.address = address
    # A local experiment whose driver died before Tune wrote tuner.pkl or its first
    # snapshot is continued from the sweep's own ledger and study (tuning.sweep.
    # restart_from_ledger); one in object storage needs Tune's state to be there.
    if spec.uri is not None and not tune.Tuner.can_restore(spec.location):
        raise InputError("the sweep never got far enough to be resumed (no tuner.pkl)",
                         file=spec.location, expected="an experiment started by `seltune sweep`; "
                         "start a new sweep instead")
    status = experiment_status(path, spec)
    finished = sum(n for s, n in status["counts"].items() if s in ("TERMINATED", "STOPPED"))
    if finished >= spec.num_samples:
        print(f"[seltune] {spec.name}: all {spec.num_samples} trials already finished",
              file=sys.stderr)
        return status
    print(f"[seltune] resuming {spec.location} ({finished}/{spec.num_samples} trials finished)",
          file=sys.stderr, flush=True)
    return execute(spec, resume=True, num_cpus=num_cpus, force=force,
                   trust_experiment=trust_experiment)
