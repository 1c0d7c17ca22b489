"""A small :class:`SweepSpec` factory shared by the sweep unit tests (not a test module)."""

from __future__ import annotations

from tuning.experiment.spec import SweepSpec


def make_spec(storage, name="exp", **kw) -> SweepSpec:
    base = dict(
        name=name, storage=str(storage), trainable="argse-selective", data="/data/b",
        space={"trainable": "argse-selective", "params": [], "fixed": {}},
        space_source="argse-selective", fixed={"cycles": 2}, metrics=["worst_group_error"],
        modes=["min"], num_samples=4, max_concurrent=0,
        scheduler={"kind": "asha", "grace_period": 1, "max_t": 3, "reduction_factor": 3.0},
        cpus_per_trial=1.0, gpus_per_trial=0.0, device="cpu", seed=0,
        study_storage="sqlite:///x.db", study_name=name,
    )
    base.update(kw)
    return SweepSpec(**base)
