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
mirror (``~/.cache/seltune/remote/.../NAME``, see :mod:`tuning.remote`) and uploaded to
``URI/NAME/seltune/`` after every write, so ``spec.path`` is always a local directory.
The study cannot live in object storage: such a sweep needs ``--study-storage``. A
remote name counts as taken when ``URI/NAME/seltune/sweep.json`` exists (object stores
have no atomic create, so two drivers starting the same explicit name at the same
moment are not told apart; automatic names carry the second they were made).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.atomic import atomic_file
from core.errors import InputError
from tuning.remote import (
    download_dir,
    exists,
    is_uri,
    join_uri,
    mark_mirror,
    mirror_dir,
    mirror_source,
    open_storage,
    publish,
    split_experiment,
)

SELTUNE_DIR = "seltune"
SPEC_FILE = "sweep.json"
STUDY_FILE = "study.db"
ASHA_FILE = "asha_state.json"
LEDGER_FILE = "trials.json"
BASELINES_FILE = "baselines.json"
SPEC_VERSION = 1

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,99}$")

#: Trial states the ledger and ``seltune status`` use. ``STOPPED`` is a trial that
#: ASHA stopped early (Ray calls it TERMINATED too); ``TERMINATED`` ran to its end.
TRIAL_STATES = ("PENDING", "RUNNING", "PAUSED", "TERMINATED", "STOPPED", "ERROR",
                "INTERRUPTED")


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


@dataclass
class SweepSpec:
    """Everything that defines a sweep; saved as ``seltune/sweep.json``.

    Attributes:
        name: the experiment name (directory name under ``storage``).
        storage: absolute path of the storage directory.
        trainable: ``argse-selective`` | ``argse-pretrain`` | ``stage1``.
        data: absolute path of the bundle directory.
        space: ``SearchSpace.to_dict()`` of the searched space.
        space_source: the preset name or file it came from.
        fixed: config values applied to every trial (``--set`` and the space's ``fixed``).
        metrics / modes: one entry (single objective) or several (multi-objective).
        num_samples: total number of trials.
        max_concurrent: at most this many trials at a time (0 = as resources allow).
        scheduler: ``{"kind": "asha", "grace_period", "max_t", "reduction_factor"}`` or
            ``{"kind": "fifo", "max_t"}`` (multi-objective: no early stopping).
        cpus_per_trial / gpus_per_trial: Ray resources of one trial (fractions allowed).
        device: ``auto|cpu|cuda`` inside the trials.
        seed: seed of the TPE sampler (trial seeds come from the config's ``seed``).
        study_storage: SQLAlchemy URL of the Optuna study.
        study_name: the study's name in that storage.
        sampler: ``tpe`` (default) or ``random``.
        max_failures: retries of a failing trial before it is ERROR.
        address: the Ray address the sweep was started with.
        tensorboard: also write TensorBoard event files in every trial directory.
        coverage: the operating point: every trial is judged at this coverage (None in
            experiments made before it existed: they were judged at their own).
        max_coverage_gap: a trial whose realised coverage misses ``coverage`` by more
            is infeasible (never best; Optuna is told through its constraints).
        points_to_evaluate: configs the sweep runs first (warm start, ``--enqueue``).
        warm_start: ``{"experiment", "study_storage", "study_name"}`` whose finished
            trials were copied into this study as history (``--warm-start``), or None.
        created: ISO-8601 UTC time.
    """

    name: str
    storage: str
    trainable: str
    data: str
    space: dict[str, Any]
    space_source: str
    fixed: dict[str, Any]
    metrics: list[str]
    modes: list[str]
    num_samples: int
    max_concurrent: int
    scheduler: dict[str, Any]
    cpus_per_trial: float
    gpus_per_trial: float
    device: str
    seed: int
    study_storage: str
    study_name: str
    max_failures: int = 2
    address: str = "local"
    sampler: str = "tpe"
    tensorboard: bool = False
    coverage: float | None = None
    max_coverage_gap: float = 0.02
    points_to_evaluate: list[dict[str, Any]] = field(default_factory=list)
    warm_start: dict[str, Any] | None = None
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.UTC).isoformat())
    version: int = SPEC_VERSION

    @property
    def multi_objective(self) -> bool:
        return len(self.metrics) > 1

    @property
    def metric(self) -> str:
        """The first (for single-objective sweeps: the only) metric."""
        return self.metrics[0]

    @property
    def mode(self) -> str:
        return self.modes[0]

    @property
    def path(self) -> Path:
        """The experiment's local directory (for a URI storage: its local mirror)."""
        if is_uri(self.storage):
            return mirror_dir(self.storage, self.name)
        return Path(self.storage) / self.name

    @property
    def uri(self) -> str | None:
        """``STORAGE_URI/NAME`` for an experiment in object storage, else None."""
        return join_uri(self.storage, self.name) if is_uri(self.storage) else None

    @property
    def location(self) -> str:
        """Where the experiment is, as the user names it: its URI, or its directory."""
        return self.uri or str(self.path)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, source: str | Path) -> SweepSpec:
        if not isinstance(data, dict):
            raise InputError(file=source, value=type(data).__name__, expected="a JSON object")
        if data.get("version") != SPEC_VERSION:
            raise InputError(file=source, field="version", value=data.get("version"),
                             expected=f"{SPEC_VERSION} (written by this seltune)")
        names = set(cls.__dataclass_fields__)
        missing = sorted(n for n in names if n not in data and n not in
                         ("max_failures", "address", "created", "version", "sampler",
                          "tensorboard", "coverage", "max_coverage_gap",
                          "points_to_evaluate", "warm_start"))
        if missing:
            raise InputError("missing keys", file=source, value=missing,
                             expected="a complete sweep spec")
        return cls(**{k: v for k, v in data.items() if k in names})


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


#: ``sweep.json``'s flag for the default study: the experiment's own
#: ``seltune/study.db``, wherever the experiment is now (:func:`load_spec` resolves it;
#: ``study_storage`` beside it keeps the absolute URL of where it was made, for
#: readers of the raw file). So a moved experiment finds its study, and a copied one
#: uses its own copy of it, never the original's.
STUDY_IN_EXPERIMENT = "study_in_experiment"


def save_spec(spec: SweepSpec) -> Path:
    path = seltune_dir(spec.path) / SPEC_FILE
    data = spec.to_dict()
    if spec.uri is None and spec.study_storage == default_study_storage(spec.path):
        data[STUDY_IN_EXPERIMENT] = True
    write_json(path, data)
    # resume reconnects to the study with the saved URL, which may carry a database
    # password: keep the spec readable by its owner only.
    path.chmod(0o600)
    publish(path)
    return path


def load_spec(experiment_dir: Path) -> SweepSpec:
    path = seltune_dir(experiment_dir) / SPEC_FILE
    data = read_json(path)
    spec = SweepSpec.from_dict(data, source=path)
    own_study = data.get(STUDY_IN_EXPERIMENT) is True
    source = mirror_source(seltune_dir(experiment_dir))
    if source is not None:  # the mirror of an experiment in object storage
        spec.storage, spec.name = source
        return spec
    # The directory may have been moved (or mounted elsewhere): trust where it is now.
    here = Path(experiment_dir).resolve()
    spec.storage, spec.name = str(here.parent), here.name
    spec.study_storage = _study_here(spec.study_storage, here, own_study)
    return spec


def _study_here(url: str, here: Path, own_study: bool) -> str:
    """The study URL for the experiment now at ``here``: its own database when
    ``sweep.json`` says so (:data:`STUDY_IN_EXPERIMENT`), or (sweeps saved before the
    flag existed) when the URL is an absolute ``.../seltune/study.db`` of another
    directory while this one has its own ``seltune/study.db`` (moved or copied)."""
    own = default_study_storage(here)
    if own_study:
        return own
    prefix = "sqlite:///"
    if (url.startswith(prefix) and url != own and url.endswith(f"/{SELTUNE_DIR}/{STUDY_FILE}")
            and (seltune_dir(here) / STUDY_FILE).is_file()):
        return own
    return url


def check_study_db(spec: SweepSpec) -> None:
    """Before a resume: the in-experiment study database must be there and be one.

    It may be missing only while the sweep has no trial yet (the driver died before the
    searcher created it). Raises InputError (one line) for a deleted or corrupt file.
    """
    import sqlite3

    if spec.study_storage != default_study_storage(spec.path):
        return
    db = seltune_dir(spec.path) / STUDY_FILE
    if not db.is_file():
        if load_ledger(spec.path)["trials"]:
            raise InputError("the study database is missing (deleted?); the Optuna history "
                             "of this sweep is gone", file=db,
                             expected="the experiment's own seltune/study.db (restore it "
                             "from a backup, or start a new sweep)")
        return
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            con.execute("SELECT study_name FROM studies").fetchall()
    except sqlite3.DatabaseError as exc:
        raise InputError(f"not a readable Optuna study database ({exc})", file=db,
                         expected="the SQLite study written by `seltune sweep` (restore it "
                         "from a backup, or start a new sweep)") from None


#: The experiment directory of the sweep this process is driving (set by
#: :func:`tuning.sweep.execute`). Objects Ray Tune unpickles on ``Tuner.restore``
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


def load_ledger(experiment_dir: Path) -> dict[str, Any]:
    """The trial ledger (``{"trials": {TRIAL_ID: {...}}}``), empty if none written yet."""
    path = seltune_dir(experiment_dir) / LEDGER_FILE
    if not path.is_file():
        return {"trials": {}}
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("trials"), dict):
        raise InputError(file=path, value=type(data).__name__,
                         expected='{"trials": {TRIAL_ID: ...}}')
    return data


def load_baselines(experiment_dir: Path) -> dict[str, Any] | None:
    """``seltune/baselines.json`` (see :mod:`tuning.baselines`), None if not written."""
    path = seltune_dir(experiment_dir) / BASELINES_FILE
    return read_json(path) if path.is_file() else None


def load_asha_state(experiment_dir: Path) -> dict[str, Any] | None:
    path = seltune_dir(experiment_dir) / ASHA_FILE
    return read_json(path) if path.is_file() else None
