"""What a sweep records while it runs, and the readers of it: the trial ledger
(``seltune/trials.json``), the baselines (``baselines.json``), ASHA's state
(``asha_state.json``), and the typed records the results commands hand around: the
sweep status (``seltune status --json``) and the export metrics (``metrics.json``).

Each record has one reader (``from_dict``) and one writer (``to_dict``); the JSON
shapes are those users see, unchanged. A ledger field of the wrong type is one
:class:`~core.errors.InputError` line naming the file, the field, the value and what
was expected.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from core.errors import InputError
from tuning.experiment.layout import (
    ASHA_FILE,
    BASELINES_FILE,
    LEDGER_FILE,
    read_json,
    seltune_dir,
    write_json,
)


class TrialState(StrEnum):
    """A trial's state in the ledger and in ``seltune status``.

    Ray's own states (PENDING, RUNNING, PAUSED, TERMINATED, ERROR) plus the ones the
    sweep adds: ``STOPPED`` is a trial ASHA stopped early (Ray calls it TERMINATED
    too; only status splits it off), ``INTERRUPTED`` one Tune stopped because the
    driver was interrupted (resumable), ``LOST`` one a killed driver had started after
    Tune's last snapshot. A ``str`` (``StrEnum``): it compares equal to, prints and
    serialises as the plain name, so string comparisons and the JSON are unchanged.
    """

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    TERMINATED = "TERMINATED"
    STOPPED = "STOPPED"
    ERROR = "ERROR"
    INTERRUPTED = "INTERRUPTED"
    LOST = "LOST"
    #: unfinished when its driver died with no usable Ray snapshot: run again with the
    #: same parameters as a new trial (``tuning.sweep.restart.rerun_unfinished``)
    REPLACED = "REPLACED"


#: States of a trial that ran as far as it will: to its end, or stopped by ASHA.
FINISHED = (TrialState.TERMINATED, TrialState.STOPPED)


# --------------------------------------------------------------------------- checking
_T = TypeVar("_T")


class _Fields:
    """Typed reads of one JSON object, each error one line: file, field, value, expected."""

    def __init__(self, data: Any, file: str | Path | None, where: str) -> None:
        if not isinstance(data, Mapping):
            raise InputError(file=file, field=where or None, value=type(data).__name__,
                             expected="a JSON object")
        self.data, self.file, self.where = data, file, where

    def _name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, check: Callable[[Any], bool], expected: str, default: _T) -> Any:
        if key not in self.data or (self.data[key] is None and default is None):
            return default
        value = self.data[key]
        if not check(value):
            raise InputError(file=self.file, field=self._name(key), value=value,
                             expected=expected)
        return value

    def state(self, key: str) -> TrialState:
        value = self.data.get(key)
        if value is None or value == "":  # a trial Ray had not scheduled yet
            return TrialState.PENDING
        try:
            return TrialState(value)
        except ValueError:
            raise InputError(file=self.file, field=self._name(key), value=value,
                             expected="one of " + ", ".join(s.value for s in TrialState)
                             ) from None


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_str(x: Any) -> bool:
    return isinstance(x, str)


def _is_dict(x: Any) -> bool:
    return isinstance(x, dict)


def _is_list(x: Any) -> bool:
    return isinstance(x, list)


def _is_history(x: Any) -> bool:
    return isinstance(x, dict) and all(
        isinstance(k, str) and k.lstrip("-").isdigit() and isinstance(v, dict)
        for k, v in x.items())


# --------------------------------------------------------------------------- the ledger
@dataclass
class LedgerEntry:
    """One trial in ``seltune/trials.json``.

    ``history`` is ``{ITERATION: {metric: value, ..., "checkpoint_dir_name"}}`` with
    the iteration as a string (the JSON key); ``dir`` the trial's directory name in
    the experiment; ``error`` the path of its error file once it failed.
    """

    trial_id: str
    order: int = 0
    status: TrialState = TrialState.PENDING
    config: dict[str, Any] = field(default_factory=dict)
    dir: str | None = None
    iterations: int = 0
    error: str | None = None
    history: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: keys this version does not know, written back as they were read
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    _KEYS = ("trial_id", "order", "status", "config", "dir", "iterations", "error",
             "history")

    @classmethod
    def from_dict(cls, data: Any, *, file: str | Path | None = None, where: str = "",
                  trial_id: str | None = None) -> LedgerEntry:
        f = _Fields(data, file, where)
        return cls(
            trial_id=f.get("trial_id", _is_str, "a string", trial_id),
            order=f.get("order", _is_int, "an integer", 0),
            status=f.state("status"),
            config=f.get("config", _is_dict, "a JSON object", {}),
            dir=f.get("dir", _is_str, "a directory name or null", None),
            iterations=f.get("iterations", _is_int, "an integer", 0),
            error=f.get("error", _is_str, "a string or null", None),
            history=f.get("history", _is_history,
                          '{"ITERATION": {metric: value, ...}}', {}),
            extra={k: v for k, v in data.items() if k not in cls._KEYS},
        )

    def to_dict(self) -> dict[str, Any]:
        # shares config / history with the record: the caller serialises, never mutates
        return {"trial_id": self.trial_id, "order": self.order, "status": self.status.value,
                "config": self.config, "dir": self.dir, "iterations": self.iterations,
                "error": self.error, "history": self.history, **self.extra}

    def last_metrics(self) -> dict[str, Any]:
        """The metrics of the last reported iteration, ``{}`` before the first."""
        return self.history[max(self.history, key=int)] if self.history else {}

    def checkpointed(self) -> dict[str, dict[str, Any]]:
        """The iterations that left a checkpoint."""
        return {k: v for k, v in self.history.items() if v.get("checkpoint_dir_name")}

    def last_checkpoint_iteration(self) -> int:
        return max(int(k) for k in self.checkpointed())


@dataclass
class Ledger:
    """``seltune/trials.json``: ``{"trials": {TRIAL_ID: entry}, "updated": UNIX_TIME,
    "lost": {TRIAL_ID: entry}}`` (``lost``: trials a killed driver had started after
    Tune's last snapshot, see ``LedgerCallback.on_step_begin``)."""

    trials: dict[str, LedgerEntry] = field(default_factory=dict)
    updated: float | None = None
    lost: dict[str, LedgerEntry] = field(default_factory=dict)
    #: trials run again from the start with the same parameters (``replaced``)
    replaced: dict[str, LedgerEntry] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any, *, file: str | Path | None = None) -> Ledger:
        if not isinstance(data, dict) or not isinstance(data.get("trials"), dict):
            raise InputError(file=file, value=type(data).__name__,
                             expected='{"trials": {TRIAL_ID: ...}}')
        f = _Fields(data, file, "")

        def entries(key: str) -> dict[str, LedgerEntry]:
            group = f.get(key, _is_dict, "a JSON object", {})
            return {tid: LedgerEntry.from_dict(e, file=file, where=f"{key}.{tid}",
                                               trial_id=tid)
                    for tid, e in group.items()}

        return cls(trials=entries("trials"),
                   updated=f.get("updated", _is_num, "a UNIX time", None),
                   lost=entries("lost"), replaced=entries("replaced"))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"trials": {k: e.to_dict() for k, e in self.trials.items()}}
        if self.updated is not None:
            out["updated"] = self.updated
        if self.lost:
            out["lost"] = {k: e.to_dict() for k, e in self.lost.items()}
        if self.replaced:
            out["replaced"] = {k: e.to_dict() for k, e in self.replaced.items()}
        return out


def ledger_path(experiment_dir: Path) -> Path:
    return seltune_dir(Path(experiment_dir)) / LEDGER_FILE


def load_ledger(experiment_dir: Path) -> Ledger:
    """The trial ledger, empty if none written yet."""
    path = ledger_path(experiment_dir)
    if not path.is_file():
        return Ledger()
    return Ledger.from_dict(read_json(path), file=path)


def save_ledger(experiment_dir: Path, ledger: Ledger) -> Path:
    """Write the ledger atomically; returns its path."""
    path = ledger_path(experiment_dir)
    # Rewritten whole several times a second while trials report: compact JSON.
    write_json(path, ledger.to_dict(), indent=None)
    return path


def load_baselines(experiment_dir: Path) -> dict[str, Any] | None:
    """``seltune/baselines.json`` (see :mod:`tuning.results.baselines`), None if not written."""
    path = seltune_dir(experiment_dir) / BASELINES_FILE
    return read_json(path) if path.is_file() else None


def load_asha_state(experiment_dir: Path) -> dict[str, Any] | None:
    path = seltune_dir(experiment_dir) / ASHA_FILE
    return read_json(path) if path.is_file() else None


# --------------------------------------------------------------------------- status
@dataclass
class TrialRow:
    """One trial in the status: its last reported ``metrics``; ``feasible`` whether
    any report was at the operating point (true before the first report)."""

    trial_id: str
    status: TrialState
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    iterations: int = 0
    feasible: bool = True

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialRow:
        return cls(trial_id=data["trial_id"], status=TrialState(data["status"]),
                   config=data.get("config", {}), metrics=data.get("metrics", {}),
                   iterations=int(data.get("iterations", 0)),
                   feasible=bool(data.get("feasible", True)))

    def to_dict(self) -> dict[str, Any]:
        return {"trial_id": self.trial_id, "status": self.status.value, "config": self.config,
                "metrics": self.metrics, "iterations": self.iterations,
                "feasible": self.feasible}


@dataclass
class BestTrial:
    """The best trial so far, with the metrics of its best iteration."""

    trial_id: str
    config: dict[str, Any]
    metrics: dict[str, Any]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BestTrial:
        return cls(data["trial_id"], data.get("config", {}), data.get("metrics", {}))

    def to_dict(self) -> dict[str, Any]:
        return {"trial_id": self.trial_id, "config": self.config, "metrics": self.metrics}


@dataclass
class SweepStatus:
    """The ``seltune status --json`` object (:mod:`tuning.results.status`).

    ``metric`` / ``mode`` are comma-joined (multi-objective sweeps); the optional
    parts (``coverage``, ``baselines``, ``verdict``, ``lost``, ``pareto``) are absent
    from the JSON when None.
    """

    name: str
    path: str
    metric: str
    mode: str
    counts: dict[TrialState, int] = field(default_factory=dict)
    best: BestTrial | None = None
    trials: list[TrialRow] = field(default_factory=list)
    coverage: float | None = None
    baselines: dict[str, Any] | None = None
    verdict: list[str] | None = None
    lost: list[str] | None = None
    pareto: list[str] | None = None

    _OPTIONAL = ("coverage", "baselines", "verdict", "lost", "pareto")

    @property
    def metrics(self) -> list[str]:
        return self.metric.split(",")

    @property
    def modes(self) -> list[str]:
        return self.mode.split(",")

    def finished(self) -> int:
        """Trials that ran to their end or were stopped by ASHA."""
        return sum(n for s, n in self.counts.items() if s in FINISHED)

    def row(self, trial_id: str) -> TrialRow:
        return next(t for t in self.trials if t.trial_id == trial_id)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepStatus:
        best = data.get("best")
        return cls(name=data["name"], path=data["path"], metric=data["metric"],
                   mode=data["mode"],
                   counts={TrialState(k): int(v) for k, v in data.get("counts", {}).items()},
                   best=None if best is None else BestTrial.from_dict(best),
                   trials=[TrialRow.from_dict(t) for t in data.get("trials", [])],
                   **{k: data.get(k) for k in cls._OPTIONAL})

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name, "path": self.path, "metric": self.metric, "mode": self.mode,
            "counts": {s.value: n for s, n in self.counts.items()},
            "best": None if self.best is None else self.best.to_dict(),
            "trials": [t.to_dict() for t in self.trials],
        }
        for key in self._OPTIONAL:
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


# --------------------------------------------------------------------------- export
@dataclass
class Selection:
    """How export chose the trial: by ``metric`` (``mode``) on val, ``value`` at the
    chosen iteration, in ``experiment`` (the status path)."""

    metric: str
    mode: str
    value: Any
    experiment: str

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Selection:
        return cls(data["metric"], data["mode"], data.get("value"), data.get("experiment", ""))

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "mode": self.mode, "value": self.value,
                "experiment": self.experiment}


@dataclass
class ExportMetrics:
    """``metrics.json`` of an export: the ``train --json`` shape (``val``, ``test``,
    ``baselines`` = ``{split: {NAME: metrics}}``, ``config``, ``checkpoint``) and how
    it was chosen (``trial_id``, ``iteration``, ``selection``, ``operating_point`` =
    ``{"coverage", "max_coverage_gap"}``, ``verdict`` lines); ``compat`` holds the
    AR-GSE repository's view (``--format argse-repo``). Parts that are None are absent
    from the JSON (a report drawn from an older or partial result has fewer)."""

    val: dict[str, Any] | None = None
    test: dict[str, Any] | None = None
    baselines: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    config: dict[str, Any] | None = None
    checkpoint: str | None = None
    trial_id: str | None = None
    iteration: int | None = None
    selection: Selection | None = None
    operating_point: dict[str, Any] | None = None
    verdict: list[str] | None = None
    compat: dict[str, Any] | None = None

    _PLAIN = ("config", "checkpoint", "trial_id", "iteration")

    def splits(self) -> dict[str, dict[str, Any]]:
        """``{split: metrics}`` of the model, val then test, the splits it has."""
        return {s: m for s, m in (("val", self.val), ("test", self.test)) if m is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExportMetrics:
        sel = data.get("selection")
        return cls(val=data.get("val"), test=data.get("test"),
                   baselines=data.get("baselines") or {},
                   **{k: data.get(k) for k in cls._PLAIN},
                   selection=None if sel is None else Selection.from_dict(sel),
                   operating_point=data.get("operating_point"), verdict=data.get("verdict"),
                   compat=data.get("compat"))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.splits())
        out["baselines"] = self.baselines
        for key in self._PLAIN:
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.selection is not None:
            out["selection"] = self.selection.to_dict()
        for key in ("operating_point", "verdict", "compat"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out
