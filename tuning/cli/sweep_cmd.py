"""``seltune sweep | resume | export | status``: the tuning commands.

``seltune sweep`` with no arguments runs the embedded default sweep (argse-selective,
its default space, the default synthetic bundle, at the default operating point);
``seltune`` with no command prints the help.
"""

from __future__ import annotations

import argparse
import sys

from core.device import DEVICE_CHOICES
from tuning.trainables import TRAINABLES

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


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep", help="run a hyperparameter search (Ray Tune + Optuna TPE + ASHA)",
        description="Run a hyperparameter search. With no arguments: the default "
        "argse-selective space on the default synthetic bundle, a few minutes on 2 CPUs.",
        epilog=EPILOG_SWEEP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trainable", default="argse-selective",
                   choices=list(TRAINABLES))
    p.add_argument("--data", help="bundle directory (default: the synthetic default "
                   "bundle of the trainable's kind, built on first use)")
    p.add_argument("--space", help="preset name or a .json/.yaml space file "
                   "(default: the trainable's preset)")
    p.add_argument("--num-samples", type=int, help="number of trials (default 16)")
    p.add_argument("--max-concurrent", type=int, help="at most this many trials at once "
                   "(default: as resources allow)")
    p.add_argument("--metric", default="worst_group_error",
                   help="metric to optimise, or a comma list for multi-objective "
                   "(default worst_group_error; every trial also reports augrc)")
    p.add_argument("--mode", help="min|max (default: the metric's direction)")
    p.add_argument("--grace-period", type=int, help="ASHA: reports before a trial can "
                   "be stopped (default 1)")
    p.add_argument("--max-t", type=int, help="ASHA: reports of a full run (default: "
                   "epochs, or 1 + cycles for argse-selective)")
    p.add_argument("--reduction-factor", type=float, help="ASHA: keep 1/rf per rung (default 3)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--gpus-per-trial", type=float, default=0.0,
                   help="fractions allowed, e.g. 0.25 for the small gating nets")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    p.add_argument("--address", help="local | auto | HOST:PORT (default $RAY_ADDRESS or local)")
    p.add_argument("--num-cpus", type=int, help="CPUs of a local Ray (default: all)")
    p.add_argument("--storage", help="directory of experiments, or a URI "
                   "(s3://BUCKET/PREFIX...; then --study-storage is required)")
    p.add_argument("--name", help="experiment name (must not exist)")
    p.add_argument("--seed", type=int, default=0, help="TPE sampler seed")
    p.add_argument("--sampler", choices=["tpe", "random"], default="tpe",
                   help="Optuna sampler (random: the baseline of benchmarks/search_quality.py)")
    p.add_argument("--study-storage", help="SQLAlchemy URL of the Optuna study "
                   "(default: SQLite inside the experiment; e.g. postgresql://...; "
                   "required when --storage is a URI)")
    p.add_argument("--max-failures", type=int, default=2,
                   help="retries of a failing trial (from its last checkpoint)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="fix a config key for every trial (repeatable; "
                   "removes it from the search if it was searched)")
    p.add_argument("--coverage", type=float,
                   help="the operating point: every trial is judged at this coverage "
                   "(default 0.7 for argse-*, 0.8 for stage1); target_coverage/tau_* "
                   "stay training knobs")
    p.add_argument("--max-coverage-gap", type=float, default=0.02,
                   help="a trial whose realised coverage misses --coverage by more is "
                   "infeasible (never best; told to Optuna as a constraint)")
    p.add_argument("--enqueue", metavar="FILE", help="JSON/YAML list of configs to "
                   "evaluate first (after the defaults and the baseline-reproducing one)")
    p.add_argument("--warm-start", metavar="EXPERIMENT", help="copy a finished sweep's "
                   "trials into this study as history")
    p.add_argument("--compat", choices=["argse-repo"],
                   help="keep every trial inside what the AR-GSE repository's own rule "
                   "expresses (fixes margin=seed, fit_temperature=false, final_rule=none, "
                   "uniform_check=false, top_k=5, hidden_dims=[128,64]); its exports agree 100%%")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard event files in every trial directory "
                        "(tensorboard --logdir EXPERIMENT)")
    p.add_argument("--json", action="store_true", help="print the final status as JSON")
    p.set_defaults(func=run_sweep_cmd)

    r = sub.add_parser("resume", help="continue a sweep whose driver died or was stopped")
    r.add_argument("experiment", metavar="EXPERIMENT",
                   help="experiment directory, name (under --storage) or URI/NAME")
    r.add_argument("--storage")
    r.add_argument("--num-cpus", type=int)
    r.add_argument("--address", help="override the saved Ray address")
    r.add_argument("--force", action="store_true", help="take over from a driver recorded "
                   "on another host that is known to be dead (seltune/driver.json)")
    r.add_argument("--trust-experiment", action="store_true",
                   help="restore Ray's state even if this user's seltune did not sign it "
                   "(it is unpickled: only for a folder you trust; README 'Trusting an "
                   "experiment folder')")
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
    global _SWEEP_DEFAULTS
    _SWEEP_DEFAULTS = {a.dest: a.default for a in p._actions if a.dest != "help"}


def sweep_options(args: argparse.Namespace, default_run: bool = False):
    from tuning.sweep.options import SweepOptions

    return SweepOptions(
        trainable=args.trainable, data=args.data, space=args.space,
        num_samples=args.num_samples, max_concurrent=args.max_concurrent,
        metric=args.metric, mode=args.mode, grace_period=args.grace_period,
        max_t=args.max_t, reduction_factor=args.reduction_factor,
        cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
        device=args.device, address=args.address, num_cpus=args.num_cpus,
        storage=args.storage, name=args.name, seed=args.seed,
        study_storage=args.study_storage, max_failures=args.max_failures,
        sampler=args.sampler, tensorboard=args.tensorboard,
        overrides=list(args.overrides), default_run=default_run,
        coverage=args.coverage, max_coverage_gap=args.max_coverage_gap,
        enqueue=args.enqueue, warm_start=args.warm_start, compat=args.compat,
    )


_SWEEP_DEFAULTS: dict = {}
#: Options that do not change what the default sweep computes.
_NEUTRAL = {"json", "num_cpus", "address", "storage", "func", "tensorboard"}


def _is_default_invocation(args: argparse.Namespace) -> bool:
    """True when no option that shapes the search was given (``seltune sweep`` alone)."""
    return all(getattr(args, k, v) == v for k, v in _SWEEP_DEFAULTS.items()
               if k not in _NEUTRAL)


def run_sweep_cmd(args: argparse.Namespace) -> int:
    from tuning.results.status import print_status
    from tuning.sweep.driver import run_sweep
    from tuning.sweep.options import DEFAULT_SWEEP_FIXED
    from tuning.terminal import print_json, stdout_to_stderr

    default = _is_default_invocation(args)
    if default:
        # The embedded default: a shortened selective schedule so it ends in minutes.
        args.overrides = [f"{k}={v}" for k, v in DEFAULT_SWEEP_FIXED.items()]
        print("[seltune] no --data/--space/--num-samples: running the default sweep "
              "(argse-selective, default space, synthetic bundle, coverage 0.7)",
              file=sys.stderr)
    with stdout_to_stderr(args.json):
        status = run_sweep(sweep_options(args, default_run=default))
    if args.json:
        print_json(status)
    else:
        print_status(status, top=10)
    return _exit_code(status)


def _exit_code(status: dict) -> int:
    """0 when the sweep ran to its end; 1 (with a hint) when it stopped early or every
    trial failed."""
    from tuning.experiment.layout import experiment_local_dir
    from tuning.experiment.spec import load_spec

    spec = load_spec(experiment_local_dir(status["path"]))
    finished = sum(n for s, n in status["counts"].items() if s in ("TERMINATED", "STOPPED"))
    errors = status["counts"].get("ERROR", 0)
    if finished + errors < spec.num_samples:
        print(f"[seltune] sweep stopped with {finished}/{spec.num_samples} trials finished; "
              f"continue it with: seltune resume {status['path']}", file=sys.stderr)
        return 1
    if errors:
        print(f"[seltune] {errors} trial(s) failed (see trial_*/error.txt); "
              f"`seltune resume {status['path']}` retries them", file=sys.stderr)
    return 0 if finished else 1


def run_resume_cmd(args: argparse.Namespace) -> int:
    from tuning.results.status import print_status
    from tuning.sweep.resume import resume
    from tuning.terminal import print_json, stdout_to_stderr

    with stdout_to_stderr(args.json):
        status = resume(args.experiment, storage=args.storage, num_cpus=args.num_cpus,
                        address=args.address, force=args.force,
                        trust_experiment=args.trust_experiment)
    if args.json:
        print_json(status)
    else:
        print_status(status, top=10)
    return _exit_code(status)


def run_export_cmd(args: argparse.Namespace) -> int:
    from tuning.results.export import export
    from tuning.terminal import print_json, print_train_result, stdout_to_stderr

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
    from tuning.experiment.layout import find_experiment
    from tuning.results.status import experiment_status, print_status
    from tuning.terminal import print_json

    status = experiment_status(find_experiment(args.experiment, args.storage))
    if args.json:
        print_json(status)
    else:
        print_status(status, top=args.top)
    return 0
