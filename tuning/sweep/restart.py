"""How a resumed sweep continues: from Ray's snapshot when it is usable and trusted,
otherwise from the sweep's own ledger and study.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from tuning.experiment.layout import seltune_dir
from tuning.experiment.spec import SweepSpec

#: Where a restart without Ray's snapshot moves Ray's unreadable state files.
UNUSABLE_RAY_STATE = "unusable-ray-state"


_RAY_STATE_GLOBS = ("experiment_state-*.json", "search_gen_state-*.json",
                    "searcher-state-*.pkl")


def trusted_snapshot(spec: SweepSpec) -> bool:
    """Whether every file ``Tuner.restore`` would unpickle is signed by this user
    (:mod:`tuning.experiment.trust`).

    ``tuner.pkl`` unsigned or changed, or no signature at all: the folder is not this
    user's driver's, refused in one line. Only the newest snapshot's files off: the
    driver was killed between Tune writing a snapshot and signing it (or someone
    changed it); they are not read: the resume continues from the sweep's own ledger
    and study (:func:`restart_from_ledger`), which unpickles nothing. False then.

    Raises:
        InputError: the refusal, naming the file and ``--trust-experiment``.
    """
    from tuning.experiment import trust

    found = trust.problems(spec.path)
    if not found:
        return True
    first, why = found[0]
    if not trust.read_signatures(spec.path) or any(p.name == "tuner.pkl" for p, _ in found):
        bad = next(((p, w) for p, w in found if p.name == "tuner.pkl"), (first, why))
        raise trust.refusal(*bad)
    print(f"[seltune] {first}: {why} by this user's seltune, so Ray's snapshot is not read "
          f"({trust.TRUST_FLAG} would restore it)", file=sys.stderr, flush=True)
    return False


def ray_snapshot_usable(spec: SweepSpec) -> bool:
    """Whether ``Tuner.restore`` can continue ``spec`` from Ray's last snapshot.

    It can when ``tuner.pkl`` exists and the newest ``experiment_state-*.json`` and
    its session's ``search_gen_state-*.json`` parse and its ``searcher-state-*.pkl`` is
    not empty. A driver killed between ``tuner.pkl`` and Ray's first snapshot, or in
    the middle of writing one, leaves none (``Tuner.restore`` then restores a search
    generator that thinks the sweep has one trial). An experiment in object storage is
    left to Tune (its snapshot is read from the URI).
    """
    import json

    if spec.uri is not None:
        return True
    path = spec.path
    if not (path / "tuner.pkl").is_file():
        return False
    states = sorted(path.glob("experiment_state-*.json"))
    if not states:
        return False
    session = states[-1].name[len("experiment_state-"):-len(".json")]
    try:
        json.loads(states[-1].read_text())
        json.loads((path / f"search_gen_state-{session}.json").read_text())
        return (path / f"searcher-state-{session}.pkl").stat().st_size > 0
    except (OSError, UnicodeDecodeError, ValueError):
        return False


def restart_from_ledger(spec: SweepSpec) -> list[dict[str, Any]]:
    """Prepare a resume without Ray's snapshot: the ledger and the study decide.

    Ray's unreadable state files are moved to ``seltune/unusable-ray-state/`` (a fresh
    Tuner writes new ones in the same directory); every study trial of this sweep still
    RUNNING is told FAIL as orphaned, so the searcher counts only trials that finished
    (:meth:`~tuning.sweep.searcher.SeltuneOptunaSearch.trials_started`); the ledger moves the
    unfinished trials to ``lost`` on the first step (:class:`LedgerCallback`). Returns
    the warm-start points still to evaluate: none when the study already has trials
    (the first driver enqueued them; Optuna hands out the ones not yet asked first).
    """
    from tuning.sweep.searcher import fail_unfinished_trials

    aside = seltune_dir(spec.path) / UNUSABLE_RAY_STATE
    for pattern in _RAY_STATE_GLOBS:
        for file in spec.path.glob(pattern):
            aside.mkdir(exist_ok=True)
            os.replace(file, aside / file.name)
    failed, existing = fail_unfinished_trials(spec.study_storage, spec.study_name,
                                              spec.study_name)
    print(f"[seltune] no usable Ray snapshot in {spec.location}: continuing from the "
          f"sweep's ledger and study ({len(failed)} unfinished trial(s) replaced)",
          file=sys.stderr, flush=True)
    return [] if existing else list(spec.points_to_evaluate)
