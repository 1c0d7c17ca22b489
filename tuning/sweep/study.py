"""Opening the Optuna study's RDB storage (no Ray here).

A sweep's driver writes to the study several times per trial: one commit per sampled
parameter, per intermediate value, per user attribute. In SQLite's default rollback
journal with ``synchronous=FULL`` every commit waits for the disk (~1 ms here), which
made the study the largest single cost of Tune's event loop. For a SQLite file on a
local disk :func:`open_study_storage` switches the database to write-ahead logging
with ``synchronous=NORMAL``: commits survive the driver being killed (SIGKILL, OOM) as
before, and only an OS crash or power cut can lose the last few; the file is never
corrupted. WAL needs shared memory between the processes using the file, so a file on
a network filesystem (NFS, SMB, FUSE, ...) keeps SQLite's defaults; a study shared
between machines belongs in PostgreSQL (``--study-storage postgresql://...``).

Its users all open a study (the searcher, the driver, ``seltune resume``), so Optuna
and SQLAlchemy are imported with the module.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import optuna
from sqlalchemy import event
from sqlalchemy.engine import make_url

from core.errors import InputError

#: Filesystems on which SQLite's WAL mode is safe (one kernel, shared memory works).
LOCAL_FILESYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "zfs",
                               "overlay", "f2fs", "jfs", "reiserfs", "bcachefs"})


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///...`` URL; None for other URLs or ``:memory:``."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    if parsed.database == ":memory:" or parsed.database.startswith("file:"):
        return None
    return Path(parsed.database)


def filesystem_type(path: Path, mounts: str | None = None) -> str | None:
    """The type of the filesystem holding ``path`` (Linux ``/proc/mounts``), or None.

    Args:
        path: a file or directory (need not exist; its nearest existing parent counts).
        mounts: the text of ``/proc/mounts`` (read from the system when None).
    """
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return None
    # Resolve symlinks in the part of the path that exists; keep the rest as given.
    target, missing = Path(os.path.abspath(path)), []
    while not target.exists() and target != target.parent:
        missing.append(target.name)
        target = target.parent
    target = target.resolve().joinpath(*reversed(missing))
    best, best_type = -1, None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        # /proc/mounts escapes spaces in mount points as \040.
        point = Path(fields[1].replace("\\040", " "))
        if (target == point or point in target.parents) and len(point.parts) > best:
            best, best_type = len(point.parts), fields[2]
    return best_type


def wal_is_safe(db_file: Path, mounts: str | None = None) -> bool:
    """Whether ``db_file`` lives on a local filesystem (see the module docstring)."""
    return filesystem_type(db_file, mounts) in LOCAL_FILESYSTEMS


def _use_wal(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def open_study_storage(url: str):
    """An ``optuna.storages.RDBStorage`` for ``url`` (tuned for a local SQLite file).

    Returns:
        The storage; its SQLite connections use WAL and ``synchronous=NORMAL`` when
        :func:`wal_is_safe` holds for the file.
    """
    storage = optuna.storages.RDBStorage(url)
    db_file = sqlite_path(url)
    if db_file is not None and wal_is_safe(db_file):
        event.listen(storage.engine, "connect", _use_wal)
        # Connections opened while Optuna created its tables predate the listener.
        storage.engine.dispose()
    return storage


#: The study's user attribute naming the experiment directory that drives it.
OWNER_ATTR = "seltune_experiment_dir"


def claim_study(url: str, study_name: str, experiment_dir: Path, *, own_db: bool) -> None:
    """Record ``experiment_dir`` as the study's experiment; refuse a copied experiment.

    A copy of an experiment whose study lives outside it (``--study-storage``) would
    write into the original's study. It is recognised by the study naming another
    experiment directory that still exists, and refused; a moved experiment (the old
    directory is gone) and one whose study is its own ``seltune/study.db`` (a copy has
    its own copy) take the study over. A study not created yet is left alone.

    Raises:
        InputError: ``experiment_dir`` is a copy of an experiment that still uses the study.
    """
    storage = open_study_storage(url)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:  # the driver died before the searcher created it
        return
    here = str(Path(experiment_dir).resolve())
    owner = study.user_attrs.get(OWNER_ATTR)
    if owner == here:
        return
    if owner and not own_db and (Path(owner) / "seltune" / "sweep.json").is_file():
        raise InputError(f"this experiment is a copy of {owner}, whose study it would write "
                         f"into", file=here, field="study_storage", value=url,
                         expected="`seltune resume` of the original, or a new sweep "
                         "(--warm-start can reuse its history)")
    study.set_user_attr(OWNER_ATTR, here)
