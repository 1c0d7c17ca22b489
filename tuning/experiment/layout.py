"""Experiments on disk: names, directory layout, the saved sweep spec, the trial ledger.

Layout of one experiment (``STORAGE/NAME``; Ray Tune owns everything but ``seltune/``)::

    STORAGE/NAME/
        tuner.pkl, experiment_state-*.json, search_gen_state-*.json, ...   (Ray Tune)
        trial_<id>/result.json, checkpoint_000000/, ...                   (Ray Tune)
        seltune/sweep.json        the sweep spec: everything needed to resume it
        seltune/study.db          the Optuna study (SQLite; unless --study-storage)
        seltune/asha_state.json   ASHA's rungs and the trials it stopped
        seltune/trials.json       ledger: status, config and results of every trial
        seltune/baselines.json    the training-free baselines at the operating point

The ledger is written by the driver on every event (atomically), so ``seltune status``
can read it while the sweep runs, and after the driver died.

Names are unique: an experiment directory is created with ``os.mkdir`` (which fails if
it exists), so a second sweep never overwrites a first one's ``tuner.pkl``.

Object storage (``--storage s3://BUCKET/PREFIX``, any URI pyarrow opens): Ray Tune
writes its part to ``URI/NAME`` itself; the ``seltune/`` files are written into a local
mirror (``~/.cache/seltune/remote/.../NAME``, see :mod:`tuning.experiment.mirror`) and uploaded to
``URI/NAME/seltune/`` after every write, so ``spec.path`` is always a local directory.
The study cannot live in object storage: such a sweep needs ``--study-storage``. A
remote name counts as taken when ``URI/NAME/seltune/sweep.json`` exists (object stores
have no atomic create, so two drivers starting the same explicit name at the same
moment are not told apart; automatic names carry the second they were made).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from pathlib import Path
from typing import Any

from core.atomic import atomic_file
from core.errors import InputError
from tuning.experiment.mirror import (
    download_dir,
    exists,
    is_uri,
    join_uri,
    mark_mirror,
    mirror_dir,
    open_storage,
    split_experiment,
)

SELTUNE_DIR = "seltune"


SPEC_FILE = "sweep.json"


STUDY_FILE = "study.db"


ASHA_FILE = "asha_state.json"


LEDGER_FILE = "trials.json"


BASELINES_FILE = "baselines.json"


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,99}$")


def default_storage() -> Path:
    """``$SELTUNE_STORAGE``, else ``~/seltune_results``."""
    env = os.environ.get("SELTUNE_STORAGE")
    return Path(env).expanduser() if env else Path.home() / "seltune_results"


def resolve_storage(storage: str | os.PathLike | None) -> Path | str:
    """A storage directory (``PATH`` or ``file://PATH``) as an absolute Path, or a
    storage URI (``s3://BUCKET/PREFIX?OPTIONS``, ``gs://...``) as a clean string.

    A URI is checked only for being one pyarrow can open (its scheme and options); the
    bucket is reached later (:func:`create_remote_experiment`). Its experiments keep
    ``seltune/`` in a local mirror uploaded to ``URI/NAME/seltune/`` (module docstring).

    Raises:
        InputError: a URI pyarrow cannot open (``--storage``, the value, what works).
    """
    if storage is None or str(storage) == "":
        return default_storage().resolve()
    text = str(storage)
    if is_uri(text):
        return open_storage(text).uri
    if text.startswith("file://"):
        text = text[len("file://"):]
    return Path(text).expanduser().resolve()


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid experiment name, else raise InputError."""
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", ".."):
        raise InputError(field="--name", value=name,
                         expected="1-100 characters of letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    return name


def auto_name(trainable: str, now: _dt.datetime | None = None) -> str:
    """``TRAINABLE-YYYYmmdd-HHMMSS`` (UTC); :func:`create_experiment_dir` adds ``-2``... if taken."""
    now = now or _dt.datetime.now(_dt.UTC)
    return f"{trainable}-{now.strftime('%Y%m%d-%H%M%S')}"


def create_experiment_dir(storage: Path, name: str | None, trainable: str) -> Path:
    """Create and return ``storage/name``, never reusing an existing directory.

    An explicit ``name`` that exists is an error; an automatic one gets a ``-2``,
    ``-3``... suffix. ``os.mkdir`` is atomic, so two sweeps started at the same second
    still get different directories.
    """
    storage.mkdir(parents=True, exist_ok=True)
    if name is not None:
        check_name(name)
        path = storage / name
        try:
            os.mkdir(path)
        except FileExistsError:
            if not _never_started(path):
                raise InputError("experiment already exists", file=path,
                                 expected="a new --name (or `seltune resume "
                                 f"{path}` to continue it)") from None
        (path / SELTUNE_DIR).mkdir(exist_ok=True)
        return path
    base = auto_name(trainable)
    for i in range(1, 1000):
        path = storage / (base if i == 1 else f"{base}-{i}")
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        (path / SELTUNE_DIR).mkdir()
        return path
    raise InputError("no free experiment name", file=storage / base,  # pragma: no cover
                     expected="fewer experiments started in the same second")


def _never_started(path: Path) -> bool:
    """Whether ``path`` is an experiment directory a sweep made and died in before it
    saved ``seltune/sweep.json`` (nothing but an empty ``seltune/``): its name is free
    again, since there is nothing to resume."""
    try:
        entries = list(path.iterdir())
        return path.is_dir() and all(e.name == SELTUNE_DIR and e.is_dir()
                                     and not any(e.iterdir()) for e in entries)
    except OSError:
        return False


def create_remote_experiment(storage: str, name: str | None, trainable: str) -> Path:
    """Claim ``storage``/``name`` in object storage; create and return its local mirror.

    A name is taken when ``URI/NAME/seltune/sweep.json`` exists (the caller uploads the
    spec at once, see :func:`save_spec`) or when its mirror exists on this machine. An
    explicit taken ``name`` is an error; an automatic one gets ``-2``, ``-3``...

    Raises:
        InputError: the bucket does not exist or cannot be reached, or the name is taken.
    """
    remote = open_storage(storage)

    def claim(candidate: str) -> Path | None:
        if exists(remote, candidate, SELTUNE_DIR, SPEC_FILE):
            if name is None:
                return None
            raise InputError("experiment already exists", file=remote.experiment_uri(candidate),
                             expected="a new --name (or `seltune resume "
                             f"{remote.experiment_uri(candidate)}` to continue it)")
        path = mirror_dir(remote.uri, candidate)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(path)
        except FileExistsError:
            if name is None:
                return None
            raise InputError("a local mirror of this experiment exists but the storage has "
                             "no seltune/sweep.json (an interrupted start, or one under way)",
                             file=path, expected="another --name, or delete that directory"
                             ) from None
        mark_mirror(seltune_dir(path), remote.uri, candidate)
        return path

    if name is not None:
        made = claim(check_name(name))
        assert made is not None  # an explicit name either succeeds or raises
        return made
    base = auto_name(trainable)
    for i in range(1, 1000):
        made = claim(base if i == 1 else f"{base}-{i}")
        if made is not None:
            return made
    raise InputError("no free experiment name", file=join_uri(storage, base),  # pragma: no cover
                     expected="fewer experiments started in the same second")


def fetch_experiment(storage: str, name: str) -> Path:
    """Download ``storage``/``name``/seltune/ into its local mirror; return the mirror.

    The mirror ends up equal to the remote ``seltune/`` (local files the storage no
    longer has are removed), plus the mirror marker.

    Raises:
        InputError: unreachable storage, no such experiment, or not a seltune one.
    """
    remote = open_storage(storage)
    if not exists(remote, name, SELTUNE_DIR, SPEC_FILE):
        if exists(remote, name):
            raise InputError("not a seltune experiment (no seltune/sweep.json)",
                             file=remote.experiment_uri(name),
                             expected="an experiment made by `seltune sweep`")
        raise InputError("no such experiment", file=remote.experiment_uri(name),
                         expected="SCHEME://BUCKET/PREFIX/NAME of a `seltune sweep`, or "
                         "NAME with --storage SCHEME://BUCKET/PREFIX")
    path = mirror_dir(remote.uri, name)
    local = seltune_dir(path)
    local.mkdir(parents=True, exist_ok=True)
    fetched = set(download_dir(remote, local, name, SELTUNE_DIR))
    for old in local.iterdir():
        if old.is_file() and old.name not in fetched and not old.name.startswith("."):
            old.unlink()  # e.g. a driver.json the remote no longer has
    mark_mirror(local, remote.uri, name)
    return path


def experiment_local_dir(experiment: str | os.PathLike) -> Path:
    """The local directory of an experiment named by path or ``URI/NAME`` (its mirror;
    nothing is downloaded)."""
    text = str(experiment)
    if is_uri(text):
        storage, name = split_experiment(text)
        return mirror_dir(open_storage(storage).uri, name)
    return Path(text)


def find_experiment(experiment: str | os.PathLike, storage: str | None = None) -> Path:
    """Locate an experiment: a directory path, a name under ``storage``, or ``URI/NAME``
    (also a name with a URI ``storage``), whose ``seltune/`` is then downloaded into its
    local mirror (:func:`fetch_experiment`). Returns the local directory.

    Raises:
        InputError: no such experiment, or a directory without ``seltune/sweep.json``.
    """
    text = str(experiment)
    if is_uri(text):
        return fetch_experiment(*split_experiment(text))
    candidates = [Path(text).expanduser()]
    if "/" not in text:
        base = resolve_storage(storage)
        if isinstance(base, str):
            if (candidates[0] / SELTUNE_DIR / SPEC_FILE).is_file():
                return candidates[0].resolve()
            return fetch_experiment(base, text)
        candidates.append(base / text)
    for path in candidates:
        if (path / SELTUNE_DIR / SPEC_FILE).is_file():
            return path.resolve()
    for path in candidates:
        if path.is_dir():
            raise InputError("not a seltune experiment (no seltune/sweep.json)", file=path,
                             expected="a directory made by `seltune sweep`")
    raise InputError("no such experiment", file=candidates[-1],
                     expected="an experiment directory or a name under --storage "
                     f"({resolve_storage(storage)})")


def seltune_dir(path: Path) -> Path:
    return Path(path) / SELTUNE_DIR


def write_json(path: Path, obj: Any, *, indent: int | None = 1) -> None:
    """Write ``obj`` as JSON atomically (temporary sibling, then rename).

    ``indent=None`` writes compact JSON with the C encoder, ~10x faster than indented
    output (which falls back to pure Python): for files rewritten while a sweep runs.
    """
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, allow_nan=True, default=str))


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError("no such file", file=path, expected="a file written by seltune") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON: {exc}", file=path) from None


#: The experiment directory of the sweep this process is driving (set by
#: :func:`tuning.sweep.driver.execute`). Objects Ray Tune unpickles on ``Tuner.restore``
#: (the ledger callback, ASHA) write there instead of the directory saved in their
#: pickle, which may have been another machine's (a mirror under another home).
_RUNNING: list[Path] = []


def set_running_experiment(path: Path | None) -> None:
    _RUNNING[:] = [] if path is None else [Path(path)]


def running_experiment() -> Path | None:
    return _RUNNING[0] if _RUNNING else None


def default_study_storage(experiment_dir: Path) -> str:
    """SQLAlchemy URL of the default study database inside the experiment."""
    return f"sqlite:///{(seltune_dir(experiment_dir) / STUDY_FILE).resolve()}"
