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

Also here, for the searcher and the driver: :func:`study_write` (every write of a
running sweep: retried on a transient database error, else :class:`StudyWriteError`),
the study trials' user attributes seltune sets, and what is put into a study besides
Tune's trials (warm-start points, another sweep's history, FAILs for orphans).

Its users all open a study (the searcher, the driver, ``seltune resume``), so Optuna
and SQLAlchemy are imported with the module.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import optuna
from optuna.trial import TrialState
from sqlalchemy import event
from sqlalchemy import exc as sqlalchemy_exc
from sqlalchemy.engine import make_url

from core.errors import InputError, SeltuneError
from search_spaces import SearchSpace

logger = logging.getLogger(__name__)

T = TypeVar("T")

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


# --------------------------------------------------------------------------- writes
#: How many times a study write is tried when the database reports a transient error,
#: and the pause before the second try (doubled before each further one): with SQLite's
#: own 5 s busy wait per try, a write gives up after about 20 s of a locked database.
STUDY_WRITE_ATTEMPTS = 4
STUDY_RETRY_DELAY_S = 0.25


class StudyWriteError(SeltuneError):
    """A write to the Optuna study failed (after retries, if the error was transient).

    Raised from the searcher's Tune callbacks, so it ends ``Tuner.fit``: going on would
    leave the study disagreeing with Tune about a trial. ``seltune resume`` continues
    the sweep once the study's database is usable again.
    """


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a database error that a
    retry may not meet again: an ``OperationalError`` (SQLite's "database is locked" or
    "busy", a PostgreSQL connection dropped) or a connection SQLAlchemy invalidated.
    Optuna raises these as ``StorageInternalError`` from the SQLAlchemy error."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, (sqlalchemy_exc.OperationalError, sqlite3.OperationalError)):
            return True
        if isinstance(cur, sqlalchemy_exc.DBAPIError) and cur.connection_invalidated:
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def study_write(what: str, write: Callable[[], T]) -> T:
    """``write()``, retried on a transient database error (:func:`is_transient`) up to
    :data:`STUDY_WRITE_ATTEMPTS` times in all.

    Args:
        what: what is written, for the messages ("the result of trial X at step 3").

    Raises:
        StudyWriteError: the write failed (any non-transient error at once, a transient
            one when the tries are used up), chained from Optuna's exception.
    """
    delay = STUDY_RETRY_DELAY_S
    for attempt in range(1, STUDY_WRITE_ATTEMPTS + 1):
        try:
            return write()
        except Exception as exc:
            transient = is_transient(exc)
            if transient and attempt < STUDY_WRITE_ATTEMPTS:
                logger.warning("Optuna study: could not write %s (%s: %s); retrying in "
                               "%.2f s (try %d of %d)", what, type(exc).__name__,
                               _first_line(exc), delay, attempt, STUDY_WRITE_ATTEMPTS)
                time.sleep(delay)
                delay *= 2
                continue
            tries = f" after {attempt} tries" if transient else ""
            raise StudyWriteError(
                f"the Optuna study could not record {what}{tries} ({type(exc).__name__}: "
                f"{_first_line(exc)}); the sweep stops so that the study does not disagree "
                f"with Tune (`seltune resume` continues it)") from exc
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def _first_line(exc: BaseException) -> str:
    text = str(exc) or repr(exc)
    cause = exc.__cause__
    if isinstance(exc, optuna.exceptions.StorageInternalError) and cause is not None:
        text = str(cause)  # Optuna's message is generic; the database's says what failed
    return text.splitlines()[0][:300] if text else ""


#: User attribute of an enqueued study trial: config keys outside the space it fixes.
FIXED_ATTR = "seltune_fixed"


def enqueue_points(study, points: list[dict[str, Any]], space_dict: dict[str, Any]) -> None:
    """Enqueue the warm-start ``points`` in ``study``: each point's searched keys as
    Optuna parameters, the other keys as :data:`FIXED_ATTR` (applied by
    :class:`SpaceFunction`), so a point can express a config the space cannot sample."""
    names = {p["name"] for p in space_dict.get("params", [])}
    for point in points:
        params = {k: v for k, v in point.items() if k in names}
        fixed = {k: v for k, v in point.items() if k not in names}
        study.enqueue_trial(params, user_attrs={FIXED_ATTR: fixed} if fixed else None)


#: The study trial's user attribute with the realised distance of its coverage from the
#: sweep's operating point (set before the trial is told; read by the constraint).
COVERAGE_GAP_ATTR = "coverage_gap"


#: The study trial attribute that marks a trial put back into Ray's snapshot by
#: :func:`continue_lost_trials` (its value: the Ray trial id). The restored searcher
#: adopts such a RUNNING trial instead of failing it as orphaned
#: (:meth:`~tuning.sweep.searcher.SeltuneOptunaSearch.reconcile_with_study`).
CONTINUED_ATTR = "seltune_continued"


def fail_orphan(study: optuna.study.Study, frozen: optuna.trial.FrozenTrial,
                 why: str) -> None:
    """Tell FAIL a RUNNING study trial no Tune trial will finish, marked ``orphaned``."""
    study_write(f"the orphaned mark of study trial {frozen.number}",
                lambda: study._storage.set_trial_user_attr(frozen._trial_id, "orphaned", why))
    study_write(f"the FAIL of orphaned study trial {frozen.number}",
                lambda: study.tell(frozen.number, state=TrialState.FAIL))


def fail_unfinished_trials(study_storage: str, study_name: str,
                           experiment: str) -> tuple[list[int], int]:
    """Tell FAIL (as ``orphaned``) every trial of ``experiment`` in the study that is
    still RUNNING: a resume that cannot use Ray's snapshot starts a fresh searcher,
    which must count only trials that finished (or are retried) toward ``num_samples``.

    A trial counts as the experiment's when its ``seltune_experiment`` attribute names
    it, or when it has none yet (asked by the dead driver a moment before it was killed)
    in a study named after the experiment. Returns the failed trial
    numbers and how many trials the study has (0 when the study does not exist yet).
    """
    storage = open_study_storage(study_storage)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:  # the driver died before the searcher created the study
        return [], 0
    failed = []
    trials = study.get_trials(deepcopy=False)
    for frozen in trials:
        if frozen.state != TrialState.RUNNING:
            continue
        attrs = frozen.user_attrs
        ours = attrs.get("seltune_experiment") == experiment or (
            "seltune_experiment" not in attrs and study_name == experiment)
        if not ours:
            continue
        fail_orphan(study, frozen, "running when its driver died; restarted without "
                     "Ray's snapshot")
        failed.append(frozen.number)
    return failed, len(trials)


def add_history(study, source: dict[str, Any], space_dict: dict[str, Any]) -> int:
    """``--warm-start``: copy the finished trials of another sweep's study into ``study``.

    A trial is copied (COMPLETE with its value, or PRUNED with its intermediate values)
    when every parameter it has is searched here with a value inside this space; it
    carries ``warm_start_from`` and is not counted as one of this sweep's trials.
    Returns how many were copied.
    """
    space = SearchSpace.from_dict(space_dict)
    params = {p.name: p for p in space.params}
    if study.user_attrs.get("warm_started_from") == source["experiment"]:
        return 0  # a resumed sweep: already copied
    other = optuna.load_study(study_name=source["study_name"], storage=source["study_storage"])
    copied = 0
    for t in other.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if len(other.directions) != len(study.directions):
            break
        if not t.params or any(k not in params or not params[k].contains(v)
                               for k, v in t.params.items()):
            continue
        study.add_trial(optuna.trial.create_trial(
            state=t.state, value=t.value if t.state == TrialState.COMPLETE and
            len(study.directions) == 1 else None,
            values=t.values if t.state == TrialState.COMPLETE and len(study.directions) > 1
            else None,
            params=t.params, distributions=t.distributions,
            intermediate_values=dict(t.intermediate_values),
            user_attrs={"warm_start_from": source["experiment"], "source_number": t.number,
                        **{k: v for k, v in t.user_attrs.items() if k == COVERAGE_GAP_ATTR}}))
        copied += 1
    study.set_user_attr("warm_started_from", source["experiment"])
    return copied
