"""``seltune resume EXPERIMENT``
"""

from __future__ import annotations

import sys
from typing import Any

from core.errors import InputError
from tuning.experiment.layout import find_experiment
from tuning.experiment.records import FINISHED
from tuning.experiment.spec import check_study_db, load_spec


def resume(experiment: str, *, storage: str | None = None, num_cpus: int | None = None,
           address: str | None = None, force: bool = False,
           trust_experiment: bool = False) -> dict[str, Any]:
    """Continue the sweep; returns its final status (see :mod:`tuning.results.status`)."""
    from ray import tune

    from tuning.results.status import experiment_status
    from tuning.sweep.driver import execute

    path = find_experiment(experiment, storage)
    spec = load_spec(path)
    check_study_db(spec)
    if spec.uri is None:  # the study a copied experiment would share: refused
        from tuning.experiment.layout import default_study_storage
        from tuning.sweep.study import claim_study

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
    finished = sum(n for s, n in status["counts"].items() if s in FINISHED)
    if finished >= spec.num_samples:
        print(f"[seltune] {spec.name}: all {spec.num_samples} trials already finished",
              file=sys.stderr)
        return status
    print(f"[seltune] resuming {spec.location} ({finished}/{spec.num_samples} trials finished)",
          file=sys.stderr, flush=True)
    return execute(spec, resume=True, num_cpus=num_cpus, force=force,
                   trust_experiment=trust_experiment)
