"""The saved sweep spec (``seltune/sweep.json``): everything needed to resume a sweep.

:class:`SweepSpec` is written once by ``seltune sweep`` and read by every later command;
:func:`load_spec` re-anchors it where the experiment is now (moved, copied, mirrored).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.errors import InputError
from tuning.experiment.layout import (
    SELTUNE_DIR,
    SPEC_FILE,
    STUDY_FILE,
    default_study_storage,
    read_json,
    seltune_dir,
    write_json,
)
from tuning.experiment.mirror import (
    is_uri,
    join_uri,
    mirror_dir,
    mirror_source,
    publish,
)
from tuning.experiment.records import load_ledger

SPEC_VERSION = 1


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
        if load_ledger(spec.path).trials:
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


def parse_metrics(metric: str, mode: str | None) -> tuple[list[str], list[str]]:
    """``"augrc,worst_group_error"`` + ``"min"`` -> metric and mode lists.

    Modes default to each metric's direction; an explicit mode that contradicts a
    metric's known direction is an error (it would optimise the wrong way).
    """
    from core.metrics.names import metric_direction

    metrics = [m.strip() for m in str(metric).split(",") if m.strip()]
    if not metrics:
        raise InputError(field="--metric", value=metric, expected="a metric name")
    if len(set(metrics)) != len(metrics):
        raise InputError("repeated metric", field="--metric", value=metric,
                         expected="distinct metric names")
    directions = [metric_direction(m) for m in metrics]
    if mode is None:
        return metrics, directions
    modes = [m.strip() for m in mode.split(",")]
    if len(modes) == 1:
        modes = modes * len(metrics)
    if len(modes) != len(metrics) or any(m not in ("min", "max") for m in modes):
        raise InputError(field="--mode", value=mode,
                         expected=f"min or max (one, or one per metric: {len(metrics)})")
    for m, md, d in zip(metrics, modes, directions):
        if md != d:
            raise InputError(f"{m} is a {d} metric", field="--mode", value=md, expected=d)
    return metrics, modes
