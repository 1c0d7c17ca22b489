"""What a sweep records while it runs, and the readers of it: the trial ledger
(``seltune/trials.json``), the baselines (``baselines.json``) and ASHA's state
(``asha_state.json``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.errors import InputError
from tuning.experiment.layout import ASHA_FILE, BASELINES_FILE, LEDGER_FILE, read_json, seltune_dir

#: Trial states the ledger and ``seltune status`` use. ``STOPPED`` is a trial that
#: ASHA stopped early (Ray calls it TERMINATED too); ``TERMINATED`` ran to its end.
TRIAL_STATES = ("PENDING", "RUNNING", "PAUSED", "TERMINATED", "STOPPED", "ERROR",
                "INTERRUPTED")


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
    """``seltune/baselines.json`` (see :mod:`tuning.results.baselines`), None if not written."""
    path = seltune_dir(experiment_dir) / BASELINES_FILE
    return read_json(path) if path.is_file() else None


def load_asha_state(experiment_dir: Path) -> dict[str, Any] | None:
    path = seltune_dir(experiment_dir) / ASHA_FILE
    return read_json(path) if path.is_file() else None
