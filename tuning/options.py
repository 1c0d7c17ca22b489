"""The options of ``seltune sweep`` and ``seltune resume``, declared once.

Each option is one field of :class:`SweepOptions` (or :class:`ResumeOptions`): its name,
type (the annotation), default and ``--help`` line (:func:`option`). The CLI
(:mod:`tuning.cli.sweep_cmd`) generates its arguments from these fields and fills the
dataclass; the library (:func:`tuning.sweep.prepare.prepare_sweep`) reads only the
dataclass. Where ``None`` stands for "decided later" (``--num-samples``,
``--grace-period``, ...), the value it stands for is a constant here, which both the
help text and :mod:`tuning.sweep.prepare` use.

Stdlib only, and outside :mod:`tuning.sweep` (which drives Ray and Optuna): every
``seltune`` command builds the ``sweep`` parser from this module, and the Ray-free
ones (``status``, ``export``, ``--help``) must not load the sweep package.
:mod:`tuning.sweep.options` gives the library its names.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

#: Optuna samplers a sweep can use (``--sampler``; random is the baseline of
#: ``benchmarks/search_quality.py``).
SAMPLERS = ("tpe", "random")

#: Trials of a sweep without ``--num-samples``; the no-argument default sweep runs
#: ``DEFAULT_SWEEP_SAMPLES`` (on 2 CPUs about a minute or two on the default synthetic
#: bundle: ASHA stops most of them early).
DEFAULT_NUM_SAMPLES = 16
DEFAULT_SWEEP_SAMPLES = 32
#: ASHA without ``--grace-period`` / ``--reduction-factor``.
DEFAULT_GRACE_PERIOD = 1
DEFAULT_REDUCTION_FACTOR = 3.0


#: ``--compat argse-repo``: the keys fixed so that every trial stays inside what the AR-GSE
#: repository's own decision rule expresses (its margin, no temperatures, its feature
#: and gate settings, B2/B3's alpha and mu as they are), so its decisions are seltune's.
COMPAT_FIXED: dict[str, dict[str, Any]] = {
    "argse-repo": {"margin": "seed", "fit_temperature": False, "final_rule": "none",
                   "uniform_check": False, "top_k": 5, "hidden_dims": [128, 64]},
}


@dataclass(frozen=True)
class Cli:
    """How a field appears on the command line (``argparse.add_argument`` keywords).

    ``flag`` defaults to ``--`` + the field name with dashes; the type is the field's
    annotation (``int``, ``float`` or ``str``, ``None`` allowed) unless ``action`` is
    given. ``neutral``: the option does not change what a sweep computes (where it runs,
    what it logs), so giving it still runs the default sweep.
    """

    help: str | None = None
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    flag: str | None = None
    action: str | None = None
    neutral: bool = False


def cli_metadata(help: str | None = None, **cli: Any) -> dict[str, Cli]:
    """The ``metadata`` of a dataclass field that is a command-line option."""
    return {"cli": Cli(help=help, **cli)}


def option(default: Any = None, help: str | None = None, **cli: Any) -> Any:
    """A dataclass field with an immutable default that is also a command-line option
    (see :class:`Cli`)."""
    return field(default=default, metadata=cli_metadata(help, **cli))


@dataclass
class SweepOptions:
    """The options of ``seltune sweep``, in ``--help`` order (None: see each help)."""

    trainable: str = option("argse-selective")
    data: str | None = option(None, "bundle directory (default: the synthetic default bundle "
                              "of the trainable's kind, built on first use)")
    space: str | None = option(None, "preset name or a .json/.yaml space file (default: the "
                               "trainable's preset)")
    num_samples: int | None = option(None, f"number of trials (default {DEFAULT_NUM_SAMPLES})")
    max_concurrent: int | None = option(None, "at most this many trials at once (default: as "
                                        "resources allow)")
    metric: str = option("worst_group_error", "metric to optimise, or a comma list for "
                         "multi-objective (default worst_group_error; every trial also "
                         "reports augrc)")
    mode: str | None = option(None, "min|max (default: the metric's direction)")
    grace_period: int | None = option(None, "ASHA: reports before a trial can be stopped "
                                      f"(default {DEFAULT_GRACE_PERIOD})")
    max_t: int | None = option(None, "ASHA: reports of a full run (default: epochs, or 1 + "
                               "cycles for argse-selective)")
    reduction_factor: float | None = option(None, "ASHA: keep 1/rf per rung (default "
                                            f"{DEFAULT_REDUCTION_FACTOR:g})")
    cpus_per_trial: float = option(1.0)
    gpus_per_trial: float = option(0.0, "fractions allowed, e.g. 0.25 for the small gating nets")
    device: str = option("auto")
    address: str | None = option(None, "local | auto | HOST:PORT (default $RAY_ADDRESS or "
                                 "local)", neutral=True)
    num_cpus: int | None = option(None, "CPUs of a local Ray (default: all)", neutral=True)
    storage: str | None = option(None, "directory of experiments, or a URI "
                                 "(s3://BUCKET/PREFIX...; then --study-storage is required)",
                                 neutral=True)
    name: str | None = option(None, "experiment name (must not exist)")
    seed: int = option(0, "TPE sampler seed")
    sampler: str = option("tpe", "Optuna sampler (random: the baseline of "
                          "benchmarks/search_quality.py)", choices=SAMPLERS)
    study_storage: str | None = option(None, "SQLAlchemy URL of the Optuna study (default: "
                                       "SQLite inside the experiment; e.g. postgresql://...; "
                                       "required when --storage is a URI)")
    max_failures: int = option(2, "retries of a failing trial (from its last checkpoint)")
    overrides: list[str] = field(default_factory=list, metadata=cli_metadata(
        "fix a config key for every trial (repeatable; removes it from the search if it was "
        "searched)", flag="--set", action="append", metavar="KEY=VALUE"))
    coverage: float | None = option(None, "the operating point: every trial is judged at this "
                                    "coverage (default 0.7 for argse-*, 0.8 for stage1); "
                                    "target_coverage/tau_* stay training knobs")
    max_coverage_gap: float = option(0.02, "a trial whose realised coverage misses --coverage "
                                     "by more is infeasible (never best; told to Optuna as a "
                                     "constraint)")
    enqueue: str | None = option(None, "JSON/YAML list of configs to evaluate first (after the "
                                 "defaults and the baseline-reproducing one)", metavar="FILE")
    warm_start: str | None = option(None, "copy a finished sweep's trials into this study as "
                                    "history", metavar="EXPERIMENT")
    compat: str | None = option(None, "keep every trial inside what the AR-GSE repository's "
                                "own rule expresses (fixes margin=seed, fit_temperature=false, "
                                "final_rule=none, uniform_check=false, top_k=5, "
                                "hidden_dims=[128,64]); its exports agree 100%%",
                                choices=tuple(COMPAT_FIXED))
    tensorboard: bool = option(False, "also write TensorBoard event files in every trial "
                               "directory (tensorboard --logdir EXPERIMENT)",
                               action="store_true", neutral=True)
    #: Set by the CLI, not an option: ``seltune sweep`` with nothing that shapes the search
    #: (:meth:`is_default`), which runs ``DEFAULT_SWEEP_SAMPLES`` trials.
    default_run: bool = False

    def is_default(self) -> bool:
        """Whether every option that shapes the search has its default (``seltune sweep``
        alone, perhaps with where to run it: the neutral options)."""
        default = SweepOptions()
        return all(getattr(self, f.name) == getattr(default, f.name)
                   for f, cli in cli_fields(SweepOptions) if not cli.neutral)


@dataclass
class ResumeOptions:
    """The options of ``seltune resume EXPERIMENT`` (keywords of
    :func:`tuning.sweep.resume.resume`)."""

    storage: str | None = option(None)
    num_cpus: int | None = option(None)
    address: str | None = option(None, "override the saved Ray address")
    force: bool = option(False, "take over from a driver recorded on another host that is "
                         "known to be dead (seltune/driver.json)", action="store_true")
    trust_experiment: bool = option(False, "restore Ray's state even if this user's seltune did "
                                    "not sign it (it is unpickled: only for a folder you trust; "
                                    "README 'Trusting an experiment folder')",
                                    action="store_true")


def cli_fields(cls: type) -> list[tuple[dataclasses.Field, Cli]]:
    """The fields of options dataclass ``cls`` that are command-line options, in order."""
    return [(f, f.metadata["cli"]) for f in dataclasses.fields(cls) if "cli" in f.metadata]


def field_type(cls: type, name: str) -> type:
    """The value type of field ``name`` of ``cls``: its annotation without ``None``."""
    hint = typing.get_type_hints(cls)[name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"{cls.__name__}.{name}: one type or None expected, got {hint}")
        hint = args[0]
    return typing.get_origin(hint) or hint


def field_defaults(cls: type) -> dict[str, Any]:
    """``{field: default}`` of the command-line fields of ``cls`` (factories called)."""
    made = cls()
    return {f.name: getattr(made, f.name) for f, _ in cli_fields(cls)}
