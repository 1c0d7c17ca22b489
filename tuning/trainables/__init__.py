"""The trainables seltune tunes: one adapter each (:mod:`tuning.trainables.base`).

:data:`TRAINABLES` is the one list of trainable names (CLI choices, sweep specs,
``seltune train`` subcommands come from it); everything specific to one trainable is
a method or attribute of its adapter:

- :mod:`.argse_selective`, :mod:`.argse_pretrain` (sharing :mod:`.argse`): AR-GSE gating
  on an expert-logit bundle;
- :mod:`.stage1`: the Stage-1 exit-gate head on a feature bundle;
- :mod:`.trial`: the body of a Tune trial and the Tune functions (imported by Ray
  workers, not here).

Importing this package loads neither torch nor Ray.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.errors import InputError
from tuning.results.baselines import strongest
from tuning.trainables.argse_pretrain import ArgsePretrain
from tuning.trainables.argse_selective import ArgseSelective
from tuning.trainables.base import Adapter, Evaluation, RuleScores
from tuning.trainables.stage1 import Stage1

#: Every trainable by CLI name, in the order ``--help`` lists them.
TRAINABLES: dict[str, Adapter] = {
    a.name: a for a in (ArgseSelective(), ArgsePretrain(), Stage1())}

__all__ = ["TRAINABLES", "Adapter", "Evaluation", "RuleScores", "compute_baselines",
           "for_checkpoint", "get_trainable", "load_checked_bundle"]


def get_trainable(name: str) -> Adapter:
    """The adapter called ``name``; InputError naming ``--trainable`` otherwise."""
    if name not in TRAINABLES:
        raise InputError(field="--trainable", value=name,
                         expected=f"one of {', '.join(TRAINABLES)}")
    return TRAINABLES[name]


def for_checkpoint(path: Path, what: str) -> Adapter:
    """The adapter whose checkpoint ``path`` is (the first that recognises it: the two
    AR-GSE modes evaluate alike); InputError naming ``what`` (the accepted layouts
    beyond a checkpoint) otherwise."""
    for adapter in TRAINABLES.values():
        if adapter.recognises(path):
            return adapter
    markers = [a.checkpoint_file for a in TRAINABLES.values()]
    raise InputError("not a seltune checkpoint", file=path,
                     expected=f"a *.ckpt file, or a directory with {', '.join(markers[:-1])} "
                              f"or {markers[-1]}, or {what}")


def load_checked_bundle(data: str, kind: str, trainable: str) -> Any:
    """Load the bundle at ``data`` and check it is the kind ``trainable`` reads."""
    from core.bundles import load_bundle  # numpy/pyarrow: not at `--help`

    path = Path(data)
    if not path.exists():
        raise InputError("no such bundle", file=path, expected="a bundle directory "
                         "(see `seltune data`)")
    bundle = load_bundle(path)
    if getattr(bundle, "kind", None) != kind:
        raise InputError(f"bundle is of kind {getattr(bundle, 'kind', '?')!r}", file=path,
                         expected=f"a {kind} bundle for trainable {trainable}")
    return bundle


def compute_baselines(trainable: str, bundle: Any, coverage: float, metric: str, mode: str,
                      device: str = "cpu") -> dict[str, Any]:
    """The ``baselines.json`` object of a sweep (:mod:`tuning.results.baselines`):
    ``{"coverage", "split", "metric", "mode", "trainable", "values": {NAME: metrics},
    "best": {"name", "value"}}``. Runs core code (torch): the driver calls it in a Ray
    task."""
    adapter = get_trainable(trainable)
    values = adapter.baseline_values(bundle, coverage, device)
    return {"coverage": float(coverage), "split": adapter.baseline_split, "metric": metric,
            "mode": mode, "trainable": trainable, "values": values,
            "best": strongest(values, metric, mode)}
