"""The options of ``seltune sweep``, declared once: the CLI fills :class:`SweepOptions`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: The fixed overrides of the no-argument default sweep: none, the seed's full schedule
#: (Stage A 5 epochs, 6 cycles of 3 epochs); its 32 trials finish in about a minute or
#: two on 2 CPUs with the default synthetic bundle (ASHA stops most of them early).
DEFAULT_SWEEP_FIXED: dict[str, int] = {}


DEFAULT_SWEEP_SAMPLES = 32


@dataclass
class SweepOptions:
    """The options of ``seltune sweep`` (None = the default described in ``--help``)."""

    trainable: str = "argse-selective"
    data: str | None = None
    space: str | None = None
    num_samples: int | None = None
    max_concurrent: int | None = None
    metric: str = "worst_group_error"
    mode: str | None = None
    grace_period: int | None = None
    max_t: int | None = None
    reduction_factor: float | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    device: str = "auto"
    address: str | None = None
    num_cpus: int | None = None
    storage: str | None = None
    name: str | None = None
    seed: int = 0
    study_storage: str | None = None
    max_failures: int = 2
    sampler: str = "tpe"
    tensorboard: bool = False
    overrides: list[str] = field(default_factory=list)
    default_run: bool = False
    coverage: float | None = None
    max_coverage_gap: float = 0.02
    enqueue: str | None = None
    warm_start: str | None = None
    compat: str | None = None


#: ``--compat argse-repo``: the keys fixed so that every trial stays inside what the AR-GSE
#: repository's own decision rule expresses (seed margin, no temperatures, its feature
#: and gate settings, B2/B3's alpha and mu as they are), so its decisions are seltune's.
COMPAT_FIXED: dict[str, dict[str, Any]] = {
    "argse-repo": {"margin": "seed", "fit_temperature": False, "final_rule": "none",
                   "uniform_check": False, "top_k": 5, "hidden_dims": [128, 64]},
}
