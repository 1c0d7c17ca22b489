"""``argse-selective``: the AR-GSE gate in selective mode (Stage A, then B1/B2/B3 cycles).

The module name is also the name old experiments' pickles gave the Tune function
(``tuning.trainables.argse_selective``): :mod:`tuning.sweep.legacy` points that name
at :func:`tuning.trainables.trial.argse_selective` before such a pickle is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from core.argse.config import SelectiveConfig
from tuning.trainables.argse import ArgseAdapter
from tuning.trainables.base import Report


class ArgseSelective(ArgseAdapter):
    name: ClassVar[str] = "argse-selective"
    description: ClassVar[str] = "AR-GSE gating, selective mode (Stage A + B1/B2/B3 cycles)"
    iteration_key: ClassVar[str] = "cycle"
    checkpoint_file: ClassVar[str] = "gating_selective.ckpt"  # core.argse.SELECTIVE_FILE
    worker_module: ClassVar[str] = "core.argse.selective"
    # A uniform gate with the plug-in rule fit on tunev for the worst group is
    # Plug-in[Worst], the strongest training-free baseline.
    baseline_point: ClassVar[tuple[tuple[str, Any], ...]] = (
        ("gate", "uniform"), ("final_rule", "plugin"), ("final_fit_split", "tunev"),
        ("mu_objective", "worst"))

    @property
    def config_class(self) -> type:
        return SelectiveConfig

    def expected_iterations(self, config: Any) -> int:
        return 1 + int(config.cycles)  # Stage A, then one report per cycle

    def train(self, config: Any, bundle: Any, report: Report | None, *,
              resume_from: str | Path | None = None, device: str = "auto",
              workdir: str | Path | None = None) -> Any:
        from core.argse.selective import train_selective

        return train_selective(config, bundle, report, resume_from=resume_from,
                               device=device, workdir=workdir)

    def probe_values(self) -> dict[str, Any]:
        return {**super().probe_values(), "stageA_epochs": 1, "cycles": 1, "b1_epochs": 1,
                "mu_grid_points": 11}
