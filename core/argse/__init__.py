"""AR-GSE gating: features, gating net, temperature scaling, pretrain and selective
training, baselines, checkpoints and predictor (docs/METHODS.md §3, §6).

No Ray here: the training functions take a ``report(metrics, checkpoint_dir)``
callback and run the same under Tune, in a test or from ``seltune train``.

Names are imported on first use (:mod:`core.lazy`): ``import core.argse.config`` does not
import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.lazy import lazy_exports

if TYPE_CHECKING:
    from core.argse.baselines import BASELINE_NAMES, baseline_metrics, fit_baselines
    from core.argse.checkpoint import (
        LOGS_FILE,
        PRETRAIN_FILE,
        SELECTIVE_FILE,
        load_checkpoint,
    )
    from core.argse.config import DEFAULT_BATCH_SIZE, PretrainConfig, SelectiveConfig
    from core.argse.evaluation import selective_metrics
    from core.argse.features import GatingFeatureBuilder, gating_feature_dim
    from core.argse.gating import GatingNet, mixture_posterior
    from core.argse.predictor import (
        ArgsePredictor,
        check_bundle_matches,
        evaluate_checkpoint,
        load_predictor,
        model_metrics,
    )
    from core.argse.pretrain import train_pretrain
    from core.argse.selective import train_selective
    from core.argse.temperature import apply_temperatures, fit_temperature, fit_temperatures
    from core.argse.training import ArgseResult

_SOURCES: dict[str, str] = {
    "ArgsePredictor": "core.argse.predictor",
    "ArgseResult": "core.argse.training",
    "BASELINE_NAMES": "core.argse.baselines",
    "DEFAULT_BATCH_SIZE": "core.argse.config",
    "GatingFeatureBuilder": "core.argse.features",
    "GatingNet": "core.argse.gating",
    "LOGS_FILE": "core.argse.checkpoint",
    "PRETRAIN_FILE": "core.argse.checkpoint",
    "PretrainConfig": "core.argse.config",
    "SELECTIVE_FILE": "core.argse.checkpoint",
    "SelectiveConfig": "core.argse.config",
    "apply_temperatures": "core.argse.temperature",
    "baseline_metrics": "core.argse.baselines",
    "check_bundle_matches": "core.argse.predictor",
    "evaluate_checkpoint": "core.argse.predictor",
    "fit_baselines": "core.argse.baselines",
    "fit_temperature": "core.argse.temperature",
    "fit_temperatures": "core.argse.temperature",
    "gating_feature_dim": "core.argse.features",
    "load_checkpoint": "core.argse.checkpoint",
    "load_predictor": "core.argse.predictor",
    "mixture_posterior": "core.argse.gating",
    "model_metrics": "core.argse.predictor",
    "selective_metrics": "core.argse.evaluation",
    "train_pretrain": "core.argse.pretrain",
    "train_selective": "core.argse.selective",
}

__all__ = [
    "BASELINE_NAMES",
    "DEFAULT_BATCH_SIZE",
    "LOGS_FILE",
    "PRETRAIN_FILE",
    "SELECTIVE_FILE",
    "ArgsePredictor",
    "ArgseResult",
    "GatingFeatureBuilder",
    "GatingNet",
    "PretrainConfig",
    "SelectiveConfig",
    "apply_temperatures",
    "baseline_metrics",
    "check_bundle_matches",
    "evaluate_checkpoint",
    "fit_baselines",
    "fit_temperature",
    "fit_temperatures",
    "gating_feature_dim",
    "load_checkpoint",
    "load_predictor",
    "mixture_posterior",
    "model_metrics",
    "selective_metrics",
    "train_pretrain",
    "train_selective",
]


__getattr__, __dir__ = lazy_exports(__name__, _SOURCES)
