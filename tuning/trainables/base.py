"""The adapter protocol: everything the tuning layer knows about one trainable.

A trainable is a core training function (``core.argse.train_selective``,
``train_pretrain``, ``core.stage1.train_stage1``) plus what seltune does around it: the
config it is built from, how it runs under Tune, what it reports, how its checkpoints
are evaluated and exported, and which training-free baselines it is judged against.
One :class:`Adapter` subclass per trainable says all of that; the CLI, the sweep, the
export and the report ask it and never branch on a trainable's name.

Importing this module (and the adapter modules) loads no torch and no Ray: the sweep
driver, ``seltune status`` and ``seltune export --help`` import them at start. Methods
that train or evaluate import the core code they run.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from core.config import config_from_dict
from tuning.trainables.reported_metrics import REPORTED

if TYPE_CHECKING:  # numpy is not needed to name the trainables (`seltune --help`)
    import numpy as np

#: The model's key in :attr:`RuleScores.rules` (and its label in the report).
MODEL = "tuned model"

#: Per-group metrics (``coverage_g0``, ``error_g1``): their number depends on the bundle.
PER_GROUP = re.compile(r"(coverage|error)_g\d+")

#: ``on_step(done, total)``: progress of a long evaluation (rows done of total).
OnStep = Callable[[int, int], None]

#: ``report(metrics, checkpoint_dir)``: what a core trainer calls after each iteration.
Report = Callable[[dict[str, Any], str], None]


@dataclass
class RuleScores:
    """Per-sample confidences and predictions of the model and the baselines on one
    split: ``rules[name] = (confidence [N] float64, prediction [N] int64)``, larger
    confidence = accepted first; ``labels`` [N] int64, ``label_groups`` [N] int64 in
    ``[0, num_groups)``; ``notes``: one line per rule that could not be scored."""

    split: str
    labels: np.ndarray
    label_groups: np.ndarray
    num_groups: int
    rules: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Evaluation:
    """A checkpoint scored on one split, the same shape for every trainable.

    Attributes:
        metrics: ``{metric: value}`` of the model (the ``seltune evaluate`` output).
        baselines: ``{baseline name: {metric: value}}`` at the same operating point on
            the same split; ``{}`` unless the evaluation was asked for baselines.
    """

    metrics: dict[str, Any]
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)


class Adapter(ABC):
    """What the tuning layer needs to know about one trainable (module docstring).

    Class attributes:
        name: CLI name (``seltune train NAME``, ``--trainable NAME``).
        description: one line for ``--help``.
        bundle_kind: the :func:`core.bundles.load_bundle` kind it reads (``"argse"``:
            expert logits, ``"stage1"``: features).
        iteration_key: the metric that counts reports (``cycle`` / ``epoch``).
        checkpoint_file: the file that marks one of its checkpoint directories (and
            that the loaders read, for AR-GSE).
        worker_module: the core module holding the training function (a trial
            process imports it before it can start).
        coverage_key: the config field that sets the operating point (``--coverage``).
        default_coverage: the operating point when ``--coverage`` is not given.
        baseline_point: the config (of searched keys) that reproduces the strongest
            training-free baseline, enqueued as a warm start when the space searches
            those keys.
        baseline_split: the split the sweep's baselines (``baselines.json``) are
            judged on.
        compat_formats: the ``--compat`` / ``export --format`` names of other code
            bases whose rule it can be checked against (AR-GSE: ``argse-repo``).
        exports_last_checkpoint: export takes the chosen trial's last checkpoint
            instead of its best iteration (its training already keeps its best epoch).
    """

    name: ClassVar[str]
    description: ClassVar[str]
    bundle_kind: ClassVar[str]
    iteration_key: ClassVar[str]
    checkpoint_file: ClassVar[str]
    worker_module: ClassVar[str]
    coverage_key: ClassVar[str] = "eval_coverage"
    default_coverage: ClassVar[float] = 0.7
    baseline_point: ClassVar[tuple[tuple[str, Any], ...]] = ()
    baseline_split: ClassVar[str] = "val"
    compat_formats: ClassVar[tuple[str, ...]] = ()
    exports_last_checkpoint: ClassVar[bool] = False

    def __repr__(self) -> str:
        return f"<trainable {self.name}>"

    # ------------------------------------------------------------------ config
    @property
    @abstractmethod
    def config_class(self) -> type:
        """The config dataclass (its fields are the search-space names)."""

    def config_fields(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self.config_class)]

    def build_config(self, values: dict[str, Any], source: str = "sweep config") -> Any:
        """The config from ``values``; InputError naming ``source`` and the key otherwise."""
        return config_from_dict(self.config_class, values, source=source)

    @abstractmethod
    def expected_iterations(self, config: Any) -> int:
        """Number of reports a full run of ``config`` makes (ASHA's default ``max_t``)."""

    # ------------------------------------------------------------------ training
    @abstractmethod
    def train(self, config: Any, bundle: Any, report: Report | None, *,
              resume_from: str | Path | None = None, device: str = "auto",
              workdir: str | Path | None = None) -> Any:
        """Run the core training function (torch); returns its result object."""

    @property
    def worker_modules(self) -> tuple[str, ...]:
        """What a trial process imports before it can start (see ``start_ray(preload=)``)."""
        return ("torch", "ray.tune", "tuning.trainables.trial", self.worker_module)

    @property
    def reported(self) -> tuple[str, ...]:
        """Metrics in every report (validation side), per-group names and the
        iteration counter left out: what :meth:`measure_reported` measured on the core
        trainer (stored in :mod:`tuning.trainables.reported_metrics`)."""
        return REPORTED[self.name]

    def reports(self, metric: str) -> bool:
        """Whether every report of this trainable carries ``metric`` (per-group
        ``coverage_gK`` / ``error_gK`` depend on the bundle's groups and are accepted)."""
        return metric in self.reported or bool(PER_GROUP.fullmatch(metric))

    @abstractmethod
    def probe(self) -> tuple[Any, Any]:
        """``(config, bundle)``: the tiniest run of the core trainer (about a second on
        a CPU), for :meth:`measure_reported`."""

    def measure_reported(self) -> tuple[str, ...]:
        """Run the core trainer on :meth:`probe` and return the sorted metric names
        every report carried, without per-group names and the iteration counter."""
        config, bundle = self.probe()
        seen: list[set[str]] = []
        with tempfile.TemporaryDirectory(prefix="seltune-probe-") as work:
            self.train(config, bundle, lambda metrics, _dir: seen.append(set(metrics)),
                       device="cpu", workdir=work)
        if not seen:
            raise RuntimeError(f"{self.name}: the probe run reported nothing")
        common = set.intersection(*seen) - {self.iteration_key}
        return tuple(sorted(m for m in common if not PER_GROUP.fullmatch(m)))

    @abstractmethod
    def progress_status(self, metrics: dict[str, Any]) -> str:
        """The status text of ``seltune train``'s progress bar after one report."""

    @abstractmethod
    def save_run(self, result: Any, config: Any, bundle: Any, out: Path, *,
                 overwrite: bool, device: str,
                 on_step: OnStep | None = None) -> dict[str, Any]:
        """Write a ``seltune train`` run into ``out`` atomically; return the
        ``train --json`` object (``{"val", "test", "baselines": {"val", "test"},
        "config", "checkpoint", ...}``)."""

    def run_notes(self, result: Any) -> list[str]:
        """Lines ``seltune train`` prints on stderr after the result table."""
        return []

    # ------------------------------------------------------------------ checkpoints
    @abstractmethod
    def load_bundle(self, path: str | Path) -> Any:
        """The bundle at ``path``; InputError unless it is of :attr:`bundle_kind`."""

    @abstractmethod
    def recognises(self, path: Path) -> bool:
        """Whether ``path`` (a file or a directory) is one of this trainable's checkpoints."""

    def checkpoint_path(self, directory: Path) -> Path:
        """The path the loaders take for the checkpoint directory ``directory``."""
        return directory

    def check_bundle_dir(self, checkpoint: Path, bundle_dir: str | Path) -> None:
        """InputError when the bundle at ``bundle_dir`` cannot be the one ``checkpoint``
        was trained on, checked before the bundle is loaded (default: nothing to check)."""
        return None

    @abstractmethod
    def evaluate(self, checkpoint: Path, bundle: Any, split: str, device: str, *,
                 coverage: float | None = None, baselines: bool = False,
                 on_step: OnStep | None = None) -> Evaluation:
        """Score ``checkpoint`` on ``bundle``'s ``split``, and with ``baselines`` every
        training-free baseline at the same operating point.

        ``coverage``: the operating point (None: the checkpoint's own); ``on_step(done,
        total)``: progress over the split's rows, where the evaluation has steps."""

    def model_beside_baselines(self, checkpoint: Path, bundle: Any, coverage: float | None,
                               device: str, on_step: OnStep | None = None) -> dict[str, Any]:
        """``{"val": metrics, "test": metrics, "baselines": {"val": {NAME: metrics},
        "test": {...}}}``: the model and every baseline at the operating point
        ``coverage`` (None: the checkpoint's), on val and, when the bundle has one, test."""
        out: dict[str, Any] = {}
        baselines: dict[str, Any] = {}
        for split in self.result_splits(bundle):
            ev = self.evaluate(checkpoint, bundle, split, device, coverage=coverage,
                               baselines=True, on_step=on_step)
            out[split] = ev.metrics
            baselines[split] = ev.baselines
        out["baselines"] = baselines
        return out

    def result_splits(self, bundle: Any) -> list[str]:
        """The splits of :meth:`model_beside_baselines`: val, and test when present."""
        return [s for s in ("val", "test") if s in bundle.splits]

    @abstractmethod
    def materialise(self, src: Path, config: dict[str, Any], bundle: Any, dest: Path,
                    device: str) -> Path:
        """Write trial checkpoint ``src`` into ``dest`` in the trainable's own format
        (what ``seltune evaluate`` and the loaders read); returns ``dest``."""

    @abstractmethod
    def write_predictor(self, checkpoint: Path, out_file: Path) -> Path:
        """Write ``predictor.pt``: a TorchScript module holding the whole rule."""

    def compat_reports(self, checkpoint: Path, bundle: Any, fmt: str) -> dict[str, Any]:
        """``{key: report}`` for ``metrics.json["compat"]`` under export format ``fmt``
        (default: none)."""
        return {}

    # ------------------------------------------------------------------ baselines, report
    @abstractmethod
    def baseline_values(self, bundle: Any, coverage: float, device: str
                        ) -> dict[str, dict[str, Any]]:
        """``{baseline name: metrics}`` on :attr:`baseline_split` at ``coverage``: the
        sweep's training-free baselines (fit before the first trial; torch)."""

    @abstractmethod
    def rule_scores(self, bundle: Any, checkpoint: Path, split: str, *, coverage: float,
                    device: str, baselines: Sequence[str]) -> RuleScores:
        """The model (under :data:`MODEL`) and the baselines scored per sample on
        ``split`` (the report's curves); ``baselines``: the names the export result
        holds, ``coverage``: the operating point."""
