"""Tune trainables: thin wrappers over the core training functions.

Each trial calls ``core.argse.train_selective`` / ``train_pretrain`` or
``core.stage1.train_stage1`` with

- ``config`` = the sweep's fixed values + the values Optuna sampled for this trial,
  built into the trainable's config dataclass (field names = search-space names);
- ``bundle`` = the data, loaded once by the driver and passed through Ray's object
  store (:func:`build_trainable` uses ``tune.with_parameters``), never re-read from
  disk by a trial;
- ``report`` = one ``tune.report(metrics, checkpoint=Checkpoint.from_directory(dir))``
  per epoch (Stage-1, pretrain) or per Stage A + cycle (selective): Tune's
  ``training_iteration`` counts these reports, and ASHA's ``max_t`` is in them;
- ``resume_from`` = the trial's last checkpoint (``tune.get_checkpoint()``) when Tune
  restarts the trial after a failure or a driver restart, so it continues instead of
  starting over.

Resources come from ``tune.with_resources`` (fractional CPUs/GPUs allowed); torch in
a trial uses as many threads as CPUs it was given. ``reuse_actors`` is safe for these
trainables: a trial keeps no state outside the call, all of it is rebuilt from
``config`` (seeded), and every trial asks for the same resources.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import sys
import tempfile
from typing import Any

from core.jsonable import scalar_metrics
from tuning.results.baselines import gap
from tuning.trainables import TRAINABLES, get_trainable


def run_trial(config: dict[str, Any], *, trainable: str, bundle: Any, fixed: dict[str, Any],
              device: str = "auto", threads: int = 1,
              baselines: dict[str, Any] | None = None) -> None:
    """The body of every trial (see the module docstring). Runs inside a Ray worker."""
    import torch
    from ray import tune

    # Ray logs one INFO line per persisted checkpoint from the worker; keep warnings.
    for name in ("ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.set_num_threads(max(1, int(threads)))
    adapter = get_trainable(trainable)
    cfg = adapter.build_config({**fixed, **config}, source=f"trial config of {trainable}")
    objective = (baselines or {}).get("metric")

    def report(metrics: dict[str, Any], checkpoint_dir: str) -> None:
        out = scalar_metrics(metrics)
        g = gap(out.get(objective), baselines, out) if objective else None
        if g is not None:  # beside every report: how far from the strongest baseline
            out["gap_to_best_baseline"] = g
        tune.report(out, checkpoint=tune.Checkpoint.from_directory(checkpoint_dir))

    workdir = tempfile.mkdtemp(prefix="seltune-trial-")
    # Ray forwards a worker's stdout to the driver's stdout; keep that for `--json`.
    with contextlib.redirect_stdout(sys.stderr):
        try:
            resume_from = None
            checkpoint = tune.get_checkpoint()
            if checkpoint is not None:
                # A private copy: the trainer reads it while new checkpoints are written.
                resume_from = checkpoint.to_directory(os.path.join(workdir, "resume"))
            adapter.train(cfg, bundle, report, resume_from=resume_from, device=device,
                          workdir=os.path.join(workdir, "ckpt"))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def _named(trainable: str):
    """A function named after the trainable (Ray shows the name in logs and tables)."""

    def fn(config, bundle=None, fixed=None, device="auto", threads=1, baselines=None):
        run_trial(config, trainable=trainable, bundle=bundle, fixed=fixed or {},
                  device=device, threads=threads, baselines=baselines)

    fn.__name__ = fn.__qualname__ = trainable.replace("-", "_")
    return fn


#: The Tune function of every trainable, by trainable name.
FUNCTIONS = {name: _named(name) for name in TRAINABLES}

# Module attributes, because pickles written by Ray name them (``tuning.trainables.trial.
# argse_selective``; older ones ``tuning.trainables.argse_selective``, see
# tuning.sweep.legacy): a new trainable's function is found through FUNCTIONS.
argse_selective = FUNCTIONS["argse-selective"]
argse_pretrain = FUNCTIONS["argse-pretrain"]
stage1 = FUNCTIONS["stage1"]


def build_trainable(trainable: str, bundle: Any, fixed: dict[str, Any], *, device: str,
                    cpus_per_trial: float, gpus_per_trial: float,
                    baselines: dict[str, Any] | None = None):
    """The Tune trainable: data through the object store, resources attached.

    ``bundle`` is put in the object store once (``tune.with_parameters``); every trial
    gets a zero-copy view of its numpy arrays.
    """
    from ray import tune

    threads = max(1, math.floor(cpus_per_trial)) if cpus_per_trial >= 1 else 1
    fn = tune.with_parameters(FUNCTIONS[trainable], bundle=bundle, fixed=dict(fixed),
                              device=device, threads=threads, baselines=baselines)
    return tune.with_resources(fn, {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
