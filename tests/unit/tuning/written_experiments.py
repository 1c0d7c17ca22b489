"""Experiments written the way a sweep writes them, without Ray (not a test module):
a trained trial's checkpoints in ``trial_a/``, its ledger entry, the spec, a study.

The checkpoints come from the core trainers through their ``report(metrics,
checkpoint_dir)`` seam, copied where Tune would have put them.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from sweep_specs import make_spec

from core.bundles import save_bundle
from core.synth import synth_argse_bundle, synth_stage1_bundle
from tuning.experiment.layout import write_json
from tuning.experiment.spec import save_spec

#: Small trainer configs: a few seconds each on one core.
CONFIGS: dict[str, dict[str, Any]] = {
    "argse-selective": {"stageA_epochs": 1, "cycles": 1, "b1_epochs": 1, "batch_size": 64,
                        "hidden_dims": [16], "mu_grid_points": 11},
    "stage1": {"epochs": 2, "hidden_dim": 16, "batch_size": 64, "early_stop_patience": 0},
}


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: (int(v) if isinstance(v, bool) else v) for k, v in metrics.items()
            if isinstance(v, (int, float, str)) or v is None}


def write_experiment(tmp: Path, trainable: str, coverage: float = 0.7, *,
                     study: bool = True) -> Path:
    """An experiment of one finished trial ``a`` of ``trainable``; returns its directory.
    ``study=False``: its Optuna study is missing (as if the database were deleted)."""
    import optuna

    from tuning.trainables import TRAINABLES

    info = TRAINABLES[trainable]
    if info.bundle_kind == "argse":
        bundle: Any = synth_argse_bundle(classes=10, n_max=40, per_class=(6, 4, 8))
    else:
        bundle = synth_stage1_bundle(sizes=(300, 150, 150), dim=8)
    save_bundle(bundle, tmp / "bundle")
    # the sweep writes the operating point into every trial's config
    config = {**CONFIGS[trainable], info.coverage_key: coverage}
    spec = make_spec(tmp / "runs", name="exp", trainable=trainable, data=str(tmp / "bundle"),
                     space={"trainable": trainable, "params": [], "fixed": {}},
                     space_source=trainable, fixed=config, coverage=coverage,
                     study_storage=f"sqlite:///{tmp / 'study.db'}")
    exp = spec.path
    (exp / "seltune").mkdir(parents=True)
    save_spec(spec)
    if study:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        optuna.create_study(study_name=spec.study_name, storage=spec.study_storage)

    history: dict[str, dict[str, Any]] = {}

    def report(metrics: dict[str, Any], checkpoint_dir: str) -> None:
        it = len(history) + 1
        name = f"checkpoint_{it - 1:06d}"
        shutil.copytree(checkpoint_dir, exp / "trial_a" / name)
        history[str(it)] = {**_scalars(metrics), "training_iteration": it,
                            "checkpoint_dir_name": name}

    info.train(info.build_config(config), bundle, report, device="cpu",
               workdir=tmp / "work")
    write_json(exp / "seltune" / "trials.json", {"trials": {"a": {
        "trial_id": "a", "order": 0, "status": "TERMINATED", "config": {}, "dir": "trial_a",
        "iterations": len(history), "error": None, "history": history}}})
    return exp
