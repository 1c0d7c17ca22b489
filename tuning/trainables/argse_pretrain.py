"""``argse-pretrain``: the AR-GSE gate in pretrain mode (mixture cross-entropy).

The module name is also the name old experiments' pickles gave the Tune function
(``tuning.trainables.argse_pretrain``): :mod:`tuning.sweep.legacy` points that name at
:func:`tuning.trainables.trial.argse_pretrain` before such a pickle is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from core.argse.config import PretrainConfig
from tuning.trainables.argse import ArgseAdapter
from tuning.trainables.base import Report


class ArgsePretrain(ArgseAdapter):
    name: ClassVar[str] = "argse-pretrain"
    description: ClassVar[str] = "AR-GSE gating, pretrain mode (mixture CE)"
    iteration_key: ClassVar[str] = "epoch"
    checkpoint_file: ClassVar[str] = "gating_pretrained.ckpt"  # core.argse.PRETRAIN_FILE
    worker_module: ClassVar[str] = "core.argse.pretrain"
    coverage_key: ClassVar[str] = "target_coverage"

    @property
    def config_class(self) -> type:
        return PretrainConfig

    def expected_iterations(self, config: Any) -> int:
        return int(config.epochs)

    def train(self, config: Any, bundle: Any, report: Report | None, *,
              resume_from: str | Path | None = None, device: str = "auto",
              workdir: str | Path | None = None) -> Any:
        from core.argse.pretrain import train_pretrain

        return train_pretrain(config, bundle, report, resume_from=resume_from,
                              device=device, workdir=workdir)

    def probe_values(self) -> dict[str, Any]:
        return {**super().probe_values(), "epochs": 2}
