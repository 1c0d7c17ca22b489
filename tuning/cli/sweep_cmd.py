"""``seltune sweep | resume | export | status``: the tuning commands.

``seltune sweep`` with no option that shapes the search runs the default sweep
(argse-selective, its default space, the default synthetic bundle, at the default
operating point, ``DEFAULT_SWEEP_SAMPLES`` trials). The arguments of ``sweep`` and
``resume`` are generated from the fields of :class:`~tuning.options.SweepOptions`
and :class:`~tuning.options.ResumeOptions` (names, types, defaults and help
declared there once), and the parsed arguments fill those dataclasses.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, TypeVar

from core.device import DEVICE_CHOICES
from tuning.experiment.layout import experiment_local_dir, find_experiment
from tuning.experiment.records import FINISHED, TrialState
from tuning.experiment.spec import load_spec
from tuning.options import (
    ResumeOptions,
    SweepOptions,
    cli_fields,
    field_type,
)
from tuning.results.export import export
from tuning.results.status import experiment_status, print_status
from tuning.terminal import print_json, print_train_result, stdout_to_stderr
from tuning.trainables import TRAINABLES

OptionsT = TypeVar("OptionsT")

#: Choices the options dataclasses leave to the CLI (not known to the sweep package).
TRAINABLE_CHOICES = tuple(TRAINABLES)
CHOICES: dict[str, tuple[str, ...]] = {"trainable": TRAINABLE_CHOICES,
                                       "device": DEVICE_CHOICES}

EPILOG_SWEEP = """\
Experiments go to STORAGE/NAME (STORAGE: --storage, $SELTUNE_STORAGE or
~/seltune_results; NAME: --name or TRAINABLE-DATE-TIME). A name is never reused.
STORAGE may be object storage, any URI pyarrow opens (s3://BUCKET/PREFIX, gs://...,
options as a query: s3://b/p?endpoint_override=HOST:PORT&scheme=http); Tune writes
trials and checkpoints there, seltune/ is mirrored under ~/.cache/seltune/remote and
uploaded; it needs --study-storage. resume/status/export take URI/NAME.
Single objective: Optuna TPE proposes, ASHA stops trials early on --metric
(rungs at grace_period * reduction_factor^k, in reports: epochs or cycles); trials
stopped early are told to Optuna as PRUNED. Multi-objective (--metric a,b): no early
stopping, every trial runs its full schedule; status/export give the Pareto front.
"""


def add_options(parser: argparse.ArgumentParser, cls: type,
                choices: dict[str, tuple[str, ...]] | None = None) -> None:
    """One argument per command-line field of options dataclass ``cls``
    (:func:`tuning.options.option`), its default the field's; ``choices`` adds
    choices by field name."""
    choices = choices or {}
    defaults = cls()
    for f, cli in cli_fields(cls):
        kwargs: dict[str, Any] = {"dest": f.name, "default": getattr(defaults, f.name)}
        if cli.action is not None:
            kwargs["action"] = cli.action
        else:
            kwargs["type"] = field_type(cls, f.name)
        if cli.choices is not None or f.name in choices:
            kwargs["choices"] = cli.choices if cli.choices is not None else choices[f.name]
        for key in ("help", "metavar"):
            if getattr(cli, key) is not None:
                kwargs[key] = getattr(cli, key)
        parser.add_argument(cli.flag or "--" + f.name.replace("_", "-"), **kwargs)


def options_from_args(cls: type[OptionsT], args: argparse.Namespace,
                      **extra: Any) -> OptionsT:
    """``cls`` filled from the parsed ``args`` (its command-line fields) and ``extra``."""
    values = {f.name: getattr(args, f.name) for f, _ in cli_fields(cls)}
    return cls(**{**values, **extra})


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep", help="run a hyperparameter search (Ray Tune + Optuna TPE + ASHA)",
        description="Run a hyperparameter search. With no arguments: the default "
        "argse-selective space on the default synthetic bundle, a few minutes on 2 CPUs.",
        epilog=EPILOG_SWEEP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(p, SweepOptions, CHOICES)
    p.add_argument("--json", action="store_true", help="print the final status as JSON")
    p.set_defaults(func=run_sweep_cmd)

    r = sub.add_parser("resume", help="continue a sweep whose driver died or was stopped")
    r.add_argument("experiment", metavar="EXPERIMENT",
                   help="experiment directory, name (under --storage) or URI/NAME")
    add_options(r, ResumeOptions)
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=run_resume_cmd)

    e = sub.add_parser("export", help="export the best trial: config, checkpoint, metrics, report")
    e.add_argument("experiment", metavar="EXPERIMENT",
                   help="experiment directory, name (under --storage) or URI/NAME")
    e.add_argument("--out", required=True, help="output directory (must not exist)")
    e.add_argument("--metric", help="select by this metric (default: the sweep's)")
    e.add_argument("--mode", help="min|max (default: the metric's direction)")
    e.add_argument("--storage")
    e.add_argument("--device", choices=DEVICE_CHOICES, default="cpu")
    e.add_argument("--overwrite", action="store_true")
    e.add_argument("--format", dest="fmt", choices=["both", "seltune", "argse-repo"],
                   default="both", help="argse-repo (in both): also report the decisions the "
                   "AR-GSE repository's own rule makes with the checkpoint, and the agreement")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=run_export_cmd)

    s = sub.add_parser("status", help="trial counts, best so far and per-trial table")
    s.add_argument("experiment", metavar="EXPERIMENT",
                   help="experiment directory, name (under --storage) or URI/NAME")
    s.add_argument("--storage")
    s.add_argument("--top", type=int, help="show only the best N trials")
    s.add_argument("--json", action="store_true",
                   help='{"name","path","metric","mode","counts","best","trials"}')
    s.set_defaults(func=run_status_cmd)


def run_sweep_cmd(args: argparse.Namespace) -> int:
    # The driver imports Ray (its callbacks subclass Tune's): imported only when a sweep
    # runs, so that `seltune --help` and the other commands start without Ray.
    from tuning.sweep.driver import run_sweep

    opts = options_from_args(SweepOptions, args)
    if opts.is_default():
        opts = dataclasses.replace(opts, default_run=True)
        print("[seltune] no --data/--space/--num-samples: running the default sweep "
              "(argse-selective, default space, synthetic bundle, coverage 0.7)",
              file=sys.stderr)
    with stdout_to_stderr(args.json):
        status = run_sweep(opts)
    if args.json:
        print_json(status)
    else:
        print_status(status, top=10)
    return _exit_code(status)


def _exit_code(status: dict) -> int:
    """0 when the sweep ran to its end; 1 (with a hint) when it stopped early or every
    trial failed."""
    spec = load_spec(experiment_local_dir(status["path"]))
    finished = sum(n for s, n in status["counts"].items() if s in FINISHED)
    errors = status["counts"].get(TrialState.ERROR, 0)
    if finished + errors < spec.num_samples:
        print(f"[seltune] sweep stopped with {finished}/{spec.num_samples} trials finished; "
              f"continue it with: seltune resume {status['path']}", file=sys.stderr)
        return 1
    if errors:
        print(f"[seltune] {errors} trial(s) failed (see trial_*/error.txt); "
              f"`seltune resume {status['path']}` retries them", file=sys.stderr)
    return 0 if finished else 1


def run_resume_cmd(args: argparse.Namespace) -> int:
    # tuning.sweep stays unloaded by the Ray-free commands (status, export, --help).
    from tuning.sweep.resume import resume

    opts = options_from_args(ResumeOptions, args)
    with stdout_to_stderr(args.json):
        status = resume(args.experiment, **dataclasses.asdict(opts))
    if args.json:
        print_json(status)
    else:
        print_status(status, top=10)
    return _exit_code(status)


def run_export_cmd(args: argparse.Namespace) -> int:
    with stdout_to_stderr(args.json):
        result = export(args.experiment, args.out, metric=args.metric, mode=args.mode,
                        storage=args.storage, device=args.device, overwrite=args.overwrite,
                        fmt=args.fmt)
    if args.json:
        print_json(result)
    else:
        print_train_result(result["metrics"], as_json=False)
        print(f"exported to {result['out']}", file=sys.stderr)
    return 0


def run_status_cmd(args: argparse.Namespace) -> int:
    status = experiment_status(find_experiment(args.experiment, args.storage))
    if args.json:
        print_json(status)
    else:
        print_status(status, top=args.top)
    return 0
