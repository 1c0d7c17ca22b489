"""AR-GSE gating on expert logits: what the pretrain and selective adapters share.

Checkpoints are the seed's ``*.ckpt`` format (:mod:`core.argse.checkpoint`); the model
is judged beside Chow's rule (each expert, the mixture) and the plug-in rules
(:mod:`core.argse.baselines`), all at one operating point (a coverage) on the split.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from core.atomic import atomic_dir
from core.config import config_to_dict
from tuning.results.baselines import verdicts
from tuning.trainables.base import MODEL, Adapter, Evaluation, OnStep, RuleScores

#: ``fit_baselines`` of the last bundle object seen: ``[(bundle, fitted)]`` or empty.
_FITTED: list[tuple[Any, Any]] = []


def fitted_baselines(bundle: Any, on_step: OnStep | None = None) -> Any:
    """``core.argse.baselines.fit_baselines(bundle)``, fit once for the last bundle
    object (export, its report and ``seltune train`` judge every split against the
    same fits; the plug-in fits are the slow part). The bundle itself is kept and
    compared by identity, so a new bundle can never reuse an old one's fits."""
    from core.argse.baselines import fit_baselines

    if not _FITTED or _FITTED[0][0] is not bundle:
        _FITTED[:] = [(bundle, fit_baselines(bundle, on_step=on_step))]
    return _FITTED[0][1]


class ArgseAdapter(Adapter):
    """An AR-GSE gating trainable (the modes differ in config, trainer and rungs)."""

    bundle_kind: ClassVar[str] = "argse"
    compat_formats: ClassVar[tuple[str, ...]] = ("argse-repo",)
    #: ``seltune train``'s verdict line judges the model on this metric (and mode).
    verdict_metric: ClassVar[tuple[str, str]] = ("worst_group_error", "min")

    def probe(self) -> tuple[Any, Any]:
        from core.synth import synth_argse_bundle

        bundle = synth_argse_bundle(classes=10, n_max=40, per_class=(6, 4, 8))
        return self.build_config(self.probe_values(), source="probe config"), bundle

    def probe_values(self) -> dict[str, Any]:
        """Config values of the tiniest run (:meth:`probe`)."""
        return {"batch_size": 64, "hidden_dims": [16]}

    def progress_status(self, metrics: dict[str, Any]) -> str:
        unit = self.iteration_key
        return (f"{unit} {int(metrics.get(unit, 0))} loss "
                f"{metrics.get('loss', float('nan')):.4f} "
                f"worst {metrics['worst_group_error']:.4f} cov {metrics['coverage']:.3f}")

    def save_run(self, result: Any, config: Any, bundle: Any, out: Path, *,
                 overwrite: bool, device: str,
                 on_step: OnStep | None = None) -> dict[str, Any]:
        """Write ``out`` atomically::

            gating_pretrained.ckpt | gating_selective.ckpt   seed-format checkpoint
            trainer_state.pt                                 resumable state
            selective_training_logs.json                     per-epoch / per-cycle logs
            config.json                                      the full config used
            metrics.json                                     the returned object

        and return ``{"val", "test", "baselines": {"val", "test"}, "verdict", "config",
        "checkpoint"}``: the model (recomputed from the written checkpoint, as
        ``seltune evaluate`` does) and every baseline at the config's operating point
        (:attr:`coverage_key`), with one verdict line per split."""
        from core.argse.checkpoint import LOGS_FILE, STATE_FILE, save_json

        src = Path(result.checkpoint_dir)
        with atomic_dir(out, overwrite=overwrite) as tmp:
            for name in (self.checkpoint_file, STATE_FILE, LOGS_FILE):
                if (src / name).is_file():
                    shutil.copy2(src / name, tmp / name)
            save_json(config_to_dict(config), tmp / "config.json")
            coverage = getattr(config, self.coverage_key)
            summary = self.model_beside_baselines(self.checkpoint_path(tmp), bundle,
                                                  coverage, device, on_step=on_step)
            metric, mode = self.verdict_metric
            summary["verdict"] = verdicts({s: summary[s] for s in self.result_splits(bundle)},
                                          summary["baselines"], metric, mode, coverage)
            summary["config"] = config_to_dict(config)
            summary["checkpoint"] = str(self.checkpoint_path(out).resolve())
            save_json(summary, tmp / "metrics.json")
        return summary

    def run_notes(self, result: Any) -> list[str]:
        temps = ", ".join(f"{n}={t:.3f}" for n, t in result.temperatures.items())
        return [f"expert temperatures (fit on tunev): {temps}"]

    # ------------------------------------------------------------------ checkpoints
    def load_bundle(self, path: str | Path) -> Any:
        from core.bundles import load_expert_bundle  # numpy/pyarrow: not at `--help`

        return load_expert_bundle(path)

    def recognises(self, path: Path) -> bool:
        """A ``*.ckpt`` file (either mode's), or a directory holding :attr:`checkpoint_file`."""
        if path.is_file():
            return path.suffix == ".ckpt"
        return path.is_dir() and (path / self.checkpoint_file).is_file()

    def checkpoint_path(self, directory: Path) -> Path:
        return directory / self.checkpoint_file

    def check_bundle_dir(self, checkpoint: Path, bundle_dir: str | Path) -> None:
        """InputError when the bundle's ``expert_names`` are not the checkpoint's, in
        order (the gate's inputs are per expert: swapped experts change every decision
        without any shape error).

        Reads only the checkpoint and the bundle's ``manifest.json``; a bundle that
        cannot be read is left to the bundle loader to report.
        """
        from core.argse.checkpoint import load_checkpoint
        from core.argse.compat import check_expert_order

        manifest_path = Path(bundle_dir) / "manifest.json"
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return  # load_expert_bundle says what is wrong with it, on one line
        names = manifest.get("expert_names") if isinstance(manifest, dict) else None
        if not isinstance(names, list):
            return
        ckpt = load_checkpoint(checkpoint)
        stored = ckpt.get("expert_names")
        if stored:
            check_expert_order(stored, names, checkpoint=ckpt["_file"], bundle=bundle_dir)

    def evaluate(self, checkpoint: Path, bundle: Any, split: str, device: str, *,
                 coverage: float | None = None, baselines: bool = False,
                 on_step: OnStep | None = None) -> Evaluation:
        """The model at ``coverage`` (None: the checkpoint's ``eval_coverage``; a
        checkpoint without one is judged at its own thresholds), and the baselines at
        that coverage (for an old checkpoint without one: the model's realised
        coverage on ``split``)."""
        from core.argse import load_predictor, model_metrics
        from core.argse.baselines import baseline_metrics

        predictor = load_predictor(checkpoint, device)
        at = predictor.eval_coverage if coverage is None else coverage
        metrics = model_metrics(predictor, bundle, split, at, on_step=on_step)
        if not baselines:
            return Evaluation(metrics)
        return Evaluation(metrics, baseline_metrics(
            bundle, split, at if at is not None else metrics["coverage"],
            fitted_baselines(bundle, on_step), on_step=on_step))

    def materialise(self, src: Path, config: dict[str, Any], bundle: Any, dest: Path,
                    device: str) -> Path:
        """A trial's checkpoint directory already is the seed format: copied."""
        shutil.copytree(src, dest)
        return dest

    def write_predictor(self, checkpoint: Path, out_file: Path) -> Path:
        """Expert logits ``[N, E, C]`` -> ``(class, accept, margin)``."""
        from core.argse.portable import write_portable_predictor

        return write_portable_predictor(self.checkpoint_path(checkpoint), out_file)

    def compat_reports(self, checkpoint: Path, bundle: Any, fmt: str) -> dict[str, Any]:
        """``{"argse_repo": report}`` for ``fmt`` both/argse-repo: the decisions the
        AR-GSE repository's own rule makes with this checkpoint
        (:func:`core.argse.compat.argse_repo_report`), one line on stderr."""
        if fmt not in ("both", "argse-repo"):
            return {}
        from core.argse.compat import argse_repo_report, report_line

        report = argse_repo_report(self.checkpoint_path(checkpoint), bundle,
                                   splits=("val", "test"))
        print(f"[seltune] {report_line(report)}", file=sys.stderr, flush=True)
        return {"argse_repo": report}

    # ------------------------------------------------------------------ baselines, report
    def baseline_values(self, bundle: Any, coverage: float, device: str
                        ) -> dict[str, dict[str, Any]]:
        """Chow (each expert, the mixture), Plug-in[Balanced], Plug-in[Worst] on val
        (temperatures and plug-in parameters fit on ``tunev``)."""
        from core.argse.baselines import baseline_metrics

        return baseline_metrics(bundle, self.baseline_split, coverage, fitted_baselines(bundle))

    def rule_scores(self, bundle: Any, checkpoint: Path, split: str, *, coverage: float,
                    device: str, baselines: Sequence[str]) -> RuleScores:
        """The model (``load_predictor(...).decide``) and every fitted baseline rule at
        ``coverage`` on ``split`` (the rules the export's numbers come from;
        ``baselines`` is not needed: every fitted rule is in the result)."""
        from core.argse import load_predictor
        from core.argse.baselines import baseline_rules
        from core.argse.data import class_to_group_tensor, split_tensors

        logits, labels = split_tensors(bundle, split)
        c2g = class_to_group_tensor(bundle)
        pred, _, _, conf = load_predictor(checkpoint, device).decide(logits)
        lab = labels.numpy()
        out = RuleScores(split, lab, c2g.numpy()[lab], int(bundle.num_groups))
        out.rules[MODEL] = (conf.double().cpu().numpy(), pred.long().cpu().numpy())
        for name, (c, p) in baseline_rules(bundle, split, coverage,
                                           fitted_baselines(bundle)).items():
            out.rules[name] = (c.double().cpu().numpy(), p.long().cpu().numpy())
        return out
