"""Experiments on disk: names, directory layout, the saved sweep spec, the trial ledger.

Layout of one experiment (``STORAGE/NAME``; Ray Tune owns everything but ``seltune/``)::

    STORAGE/NAME/
        tuner.pkl, experiment_state-*.json, search_gen_state-*.json, ...   (Ray Tune)
        trial_<id>/result.json, checkpoint_000000/, ...                   (Ray Tune)
        seltune/sweep.json        the sweep spec: everything needed to resume it
        seltune/study.db          the Optuna study (SQLite; unless --study-storage)
        seltune/asha_state.json   ASHA's rungs and the trials it stopped
        seltune/trials.json       ledger: status, config and results of every trial

The ledger is written by the driver on every event (atomically), so ``seltune status``
can read it while the sweep runs, and after the driver died.

Names are unique: an experiment directory is created with ``os.mkdir`` (which fails if
it exists), so a second sweep never overwrites a first one's ``tuner.pkl``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.atomic import atomic_file
from core.errors import InputError

SELTUNE_DIR = "seltune"
SPEC_FILE = "sweep.json"
STUDY_FILE = "study.db"
ASHA_FILE = "asha_state.json"
LEDGER_FILE = "trials.json"
SPEC_VERSION = 1

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,99}$")

#: Trial states the ledger and ``seltune status`` use. ``STOPPED`` is a trial that
#: ASHA stopped early (Ray calls it TERMINATED too); ``TERMINATED`` ran to its end.
TRIAL_STATES = ("PENDING", "RUNNING", "PAUSED", "TERMINATED", "STOPPED", "ERROR")


def default_storage() -> Path:
    """``$SELTUNE_STORAGE``, else ``~/seltune_results``."""
    env = os.environ.get("SELTUNE_STORAGE")
    return Path(env).expanduser() if env else Path.home() / "seltune_results"


def resolve_storage(storage: str | os.PathLike | None) -> Path:
    """A local storage directory (``PATH`` or ``file://PATH``) as an absolute Path.

    Remote URIs (``s3://``, ``gs://``) are refused: the study database and the ledger
    live inside the experiment directory, which must be a (possibly shared, e.g. NFS)
    file system path.
    """
    if storage is None or str(storage) == "":
        return default_storage().resolve()
    text = str(storage)
    if text.startswith("file://"):
        text = text[len("file://"):]
    elif "://" in text:
        raise InputError(field="--storage", value=text,
                         expected="a directory path (local or a shared file system mount)")
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
            raise InputError("experiment already exists", file=path,
                             expected="a new --name (or `seltune resume "
                             f"{path}` to continue it)") from None
        (path / SELTUNE_DIR).mkdir()
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


def find_experiment(experiment: str | os.PathLike, storage: str | None = None) -> Path:
    """Locate an experiment: a directory path, or a name under ``storage``.

    Raises:
        InputError: no such experiment, or a directory without ``seltune/sweep.json``.
    """
    text = str(experiment)
    candidates = [Path(text).expanduser()]
    if "/" not in text:
        candidates.append(resolve_storage(storage) / text)
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
        return Path(self.storage) / self.name

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
                         ("max_failures", "address", "created", "version", "sampler"))
        if missing:
            raise InputError("missing keys", file=source, value=missing,
                             expected="a complete sweep spec")
        return cls(**{k: v for k, v in data.items() if k in names})


def seltune_dir(path: Path) -> Path:
    return Path(path) / SELTUNE_DIR


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON atomically (temporary sibling, then rename)."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, allow_nan=True, default=str))


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError("no such file", file=path, expected="a file written by seltune") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON: {exc}", file=path) from None


def save_spec(spec: SweepSpec) -> Path:
    path = seltune_dir(spec.path) / SPEC_FILE
    write_json(path, spec.to_dict())
    # resume reconnects to the study with the saved URL, which may carry a database
    # password: keep the spec readable by its owner only.
    path.chmod(0o600)
    return path


def load_spec(experiment_dir: Path) -> SweepSpec:
    path = seltune_dir(experiment_dir) / SPEC_FILE
    spec = SweepSpec.from_dict(read_json(path), source=path)
    # The directory may have been moved (or mounted elsewhere): trust where it is now.
    here = Path(experiment_dir).resolve()
    spec.storage, spec.name = str(here.parent), here.name
    return spec


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


def load_asha_state(experiment_dir: Path) -> dict[str, Any] | None:
    path = seltune_dir(experiment_dir) / ASHA_FILE
    return read_json(path) if path.is_file() else None
