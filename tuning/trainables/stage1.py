"""``stage1``: the Stage-1 exit-gate head on cached features, with post-hoc calibration.

Its checkpoints are artefact directories (:mod:`core.stage1.artifacts`); the model's
exit score is judged beside the exit scores that need no learned gate (calibrated
max-softmax, DOCTOR, MaxLogit) of the same head, at the checkpoint's operating point
(``eval_coverage``, which a sweep fixes to its ``--coverage``).

The module name is also the name old experiments' pickles gave the Tune function
(``tuning.trainables.stage1``): :mod:`tuning.sweep.legacy` points that name at
:func:`tuning.trainables.trial.stage1` before such a pickle is read.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from core.stage1.config import Stage1Config
from tuning.trainables.base import MODEL, Adapter, Evaluation, OnStep, Report, RuleScores

if TYPE_CHECKING:
    import numpy as np

#: The file of an artefacts directory (``Stage1Result.save``) the report and loaders read.
HEAD_FILE = "stage1_head.pth"


def baseline_confidence(name: str, probs: np.ndarray, logits: np.ndarray) -> np.ndarray | None:
    """Exit score ``[N]`` of a Stage-1 baseline from the calibrated probabilities
    ``[N, C]`` / raw logits ``[N, C]``, larger = more confident; None for a baseline
    not known here (``softmax_confidence`` is ``msp`` under its old name)."""
    if name in ("msp", "softmax_confidence"):
        return probs.max(axis=1)
    if name == "maxlogit":
        return logits.max(axis=1)
    if name == "doctor":  # DOCTOR rejects on 1 - sum p^2: the confidence is sum p^2
        return (probs ** 2).sum(axis=1)
    return None


class Stage1(Adapter):
    name: ClassVar[str] = "stage1"
    description: ClassVar[str] = (
        "Stage-1 exit-gate head on cached features, with post-hoc calibration")
    bundle_kind: ClassVar[str] = "stage1"
    iteration_key: ClassVar[str] = "epoch"
    checkpoint_file: ClassVar[str] = HEAD_FILE
    worker_module: ClassVar[str] = "core.stage1.train"
    default_coverage: ClassVar[float] = 0.8
    # The calibrated max-softmax exit score is the strongest training-free baseline.
    baseline_point: ClassVar[tuple[tuple[str, Any], ...]] = (("exit_score", "msp"),)
    baseline_split: ClassVar[str] = "val_select"
    # Its training keeps its best epoch: the last checkpoint holds it.
    exports_last_checkpoint: ClassVar[bool] = True

    @property
    def config_class(self) -> type:
        return Stage1Config

    def expected_iterations(self, config: Any) -> int:
        return int(config.epochs)

    def train(self, config: Any, bundle: Any, report: Report | None, *,
              resume_from: str | Path | None = None, device: str = "auto",
              workdir: str | Path | None = None) -> Any:
        from core.stage1.train import train_stage1

        return train_stage1(config, bundle, report, resume_from=resume_from, device=device,
                            workdir=workdir)

    def probe(self) -> tuple[Any, Any]:
        from core.synth import synth_stage1_bundle

        config = Stage1Config(epochs=2, hidden_dim=16, batch_size=64, early_stop_patience=0)
        return config, synth_stage1_bundle(dim=8, sizes=(300, 200, 200))

    def progress_status(self, metrics: dict[str, Any]) -> str:
        return (f"val augrc {metrics['augrc']:.4f} cov {metrics['coverage']:.3f} "
                f"ece {metrics['ece']:.4f}")

    def save_run(self, result: Any, config: Any, bundle: Any, out: Path, *,
                 overwrite: bool, device: str,
                 on_step: OnStep | None = None) -> dict[str, Any]:
        """The artefacts directory (``Stage1Result.save``: head, calibrators,
        ``metrics.json``); returns ``Stage1Result.to_dict``: ``{"val", "test",
        "baselines", "config", "best_epoch", "epochs_run", "temperature",
        "gate_threshold", "exit_score", "eval_coverage", "checkpoint"}``."""
        result.save(out, overwrite=overwrite)
        return result.to_dict(checkpoint=out)

    # ------------------------------------------------------------------ checkpoints
    def load_bundle(self, path: str | Path) -> Any:
        from core.bundles import load_feature_bundle  # numpy/pyarrow: not at `--help`

        return load_feature_bundle(path)

    def recognises(self, path: Path) -> bool:
        """An artefacts directory (holding ``stage1_head.pth``), or that file itself."""
        if path.is_dir():
            return (path / HEAD_FILE).is_file()
        return path.is_file() and path.name == HEAD_FILE

    def evaluate(self, checkpoint: Path, bundle: Any, split: str, device: str, *,
                 coverage: float | None = None, baselines: bool = False,
                 on_step: OnStep | None = None) -> Evaluation:
        """:func:`core.stage1.evaluate_checkpoint`: every number at the checkpoint's
        operating point (its gate threshold is fit at its ``eval_coverage``), so
        ``coverage`` is not used; ``split`` ``val`` is ``val_select``, as training
        reports it. One pass over the split's features: ``on_step`` is not called."""
        from core.stage1.artifacts import evaluate_checkpoint

        r = evaluate_checkpoint(checkpoint, bundle, split, device)
        return Evaluation(r["metrics"], r["baselines"] if baselines else {})

    def result_splits(self, bundle: Any) -> list[str]:
        """val is always there (the bundle's val is split into val_select/val_calib)."""
        return ["val", *(["test"] if "test" in bundle.splits else [])]

    def materialise(self, src: Path, config: dict[str, Any], bundle: Any, dest: Path,
                    device: str) -> Path:
        """The artefacts directory of trial checkpoint ``src``.

        Resuming from the trial's last checkpoint trains nothing more when the trial ran
        to its end; it selects the best epoch and fits the calibrators, exactly as the
        end of an uninterrupted ``train_stage1`` does.
        """
        from core.stage1.train import train_stage1

        cfg = self.build_config(config, source="best trial config")
        result = train_stage1(cfg, bundle, None, resume_from=src, device=device)
        result.save(dest)
        return dest

    def write_predictor(self, checkpoint: Path, out_file: Path) -> Path:
        """Features ``[N, D]`` -> ``(class, exit, probs)``."""
        from core.stage1.portable import write_portable_predictor

        return write_portable_predictor(checkpoint, out_file)

    # ------------------------------------------------------------------ baselines, report
    def baseline_values(self, bundle: Any, coverage: float, device: str
                        ) -> dict[str, dict[str, Any]]:
        """The exit scores of a head trained with the default config, on val_select.

        Stage-1 baselines depend on the classifier they score, so this is the sweep's
        reference; every trial also reports its own (``msp_<metric>``, ...)."""
        from core.stage1.artifacts import evaluate_checkpoint
        from core.stage1.train import train_stage1

        with tempfile.TemporaryDirectory(prefix="seltune-baselines-") as tmp:
            result = train_stage1(Stage1Config(eval_coverage=coverage), bundle, None,
                                  device=device, workdir=tmp)
            result.save(f"{tmp}/head")
            return evaluate_checkpoint(f"{tmp}/head", bundle, self.baseline_split,
                                       device)["baselines"]

    def rule_scores(self, bundle: Any, checkpoint: Path, split: str, *, coverage: float,
                    device: str, baselines: Sequence[str]) -> RuleScores:
        """The calibrated gate score (model) and each of ``baselines``' exit score, all
        with the model's class prediction; a baseline without a known exit score
        becomes a note. ``coverage`` is not needed: the scores are coverage-free."""
        import numpy as np

        from core.stage1.artifacts import load_artifacts
        from core.stage1.data import prepare_data
        from core.stage1.evaluation import model_outputs, predict

        art = load_artifacts(checkpoint, device)
        data = prepare_data(bundle, art.config.calib_fraction, art.config.seed)
        s = data.split(split)
        outputs = model_outputs(art.model, s.features)
        pred, probs, _, score = predict(outputs, art.calibration)
        labels = np.asarray(s.labels, dtype=np.int64)
        if s.group is not None:
            groups = np.asarray(s.group, dtype=np.int64)
            k = int(art.num_groups or int(groups.max()) + 1)
        else:  # no sample groups: every class is a group
            groups, k = labels, int(probs.shape[1])
        out = RuleScores(split, labels, groups, k)
        pred = np.asarray(pred, dtype=np.int64)
        out.rules[MODEL] = (np.asarray(score, dtype=np.float64), pred)
        for name in baselines:
            conf = baseline_confidence(name, np.asarray(probs), np.asarray(outputs.logits))
            if conf is None:
                out.notes.append(f"baseline {name!r}: no exit score known to the report, "
                                 "not drawn")
                continue
            out.rules[name] = (np.asarray(conf, dtype=np.float64), pred)
        return out
