"""``seltune sweep``: validate the inputs, create the experiment, run Tune.

:func:`prepare_sweep` turns user options into a saved :class:`SweepSpec` (every error
an :class:`InputError` before Ray starts); :func:`execute` runs it, fresh or restored
(``seltune resume`` calls it with ``resume=True``). The driver writes the trial
ledger (``seltune/trials.json``) through :class:`LedgerCallback` and shows progress
through :class:`ProgressCallback` (on stderr, so ``--json`` keeps stdout clean).

With no options at all (``DEFAULT_SWEEP_SAMPLES`` trials), a sweep of the
``argse-selective`` default space runs on the default synthetic bundle.

The operating point: a sweep has one evaluation coverage (``--coverage``), written into
every trial's config (the trainable's ``coverage_key``), so every trial reports its
metrics at that coverage; ``target_coverage`` and ``tau_*`` stay training knobs. The
training-free baselines are fit once at that point before the first trial
(:mod:`tuning.baselines`), and every report carries ``gap_to_best_baseline``. Trials
whose realised coverage misses the point by more than ``--max-coverage-gap`` are
infeasible: Optuna is told through TPE's ``constraints_func`` and export never picks
them. Warm start: the first trials are the trainable's defaults and the configuration
that reproduces the strongest baseline (``TrainableInfo.baseline_point``), plus
``--enqueue FILE``; ``--warm-start EXPERIMENT`` copies a finished study's trials into
the new study as history.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.atomic import fault_point
from core.errors import InputError
from tuning.experiment import (
    ASHA_FILE,
    LEDGER_FILE,
    SweepSpec,
    create_experiment_dir,
    create_remote_experiment,
    default_study_storage,
    load_ledger,
    resolve_storage,
    running_experiment,
    save_spec,
    seltune_dir,
    set_running_experiment,
    write_json,
)
from tuning.remote import EXPECTED_STORAGE, publish
from tuning.trainables import TRAINABLES, get_trainable

#: Ray's bookkeeping keys that the ledger does not keep (it keeps the metrics).
_RAY_KEYS = frozenset({
    "episodes_total", "timesteps_total", "node_ip", "hostname", "pid", "time_this_iter_s",
    "timestamp", "date", "time_since_restore", "timesteps_since_restore",
    "iterations_since_restore", "config", "done", "trial_id", "experiment_tag",
    "should_checkpoint",
})

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


def parse_metrics(metric: str, mode: str | None) -> tuple[list[str], list[str]]:
    """``"augrc,worst_group_error"`` + ``"min"`` -> metric and mode lists.

    Modes default to each metric's direction; an explicit mode that contradicts a
    metric's known direction is an error (it would optimise the wrong way).
    """
    from core.metrics.names import metric_direction

    metrics = [m.strip() for m in str(metric).split(",") if m.strip()]
    if not metrics:
        raise InputError(field="--metric", value=metric, expected="a metric name")
    if len(set(metrics)) != len(metrics):
        raise InputError("repeated metric", field="--metric", value=metric,
                         expected="distinct metric names")
    directions = [metric_direction(m) for m in metrics]
    if mode is None:
        return metrics, directions
    modes = [m.strip() for m in mode.split(",")]
    if len(modes) == 1:
        modes = modes * len(metrics)
    if len(modes) != len(metrics) or any(m not in ("min", "max") for m in modes):
        raise InputError(field="--mode", value=mode,
                         expected=f"min or max (one, or one per metric: {len(metrics)})")
    for m, md, d in zip(metrics, modes, directions):
        if md != d:
            raise InputError(f"{m} is a {d} metric", field="--mode", value=md, expected=d)
    return metrics, modes


def _load_space(spec: str, trainable: str, known: list[str]):
    from search_spaces import SpaceError, load_space

    try:
        return load_space(spec, trainable=trainable, known_keys=known)
    except SpaceError as exc:
        raise InputError(str(exc)) from None


def _with_fixed(space, extra_fixed: dict[str, Any], source: str):
    """``space`` with the ``extra_fixed`` keys removed from the search and fixed."""
    from search_spaces import SpaceError

    try:
        return space.with_fixed(extra_fixed, source=source)
    except SpaceError as exc:
        raise InputError(str(exc)) from None


def _check_study_url(url: str) -> None:
    from sqlalchemy.engine import make_url

    try:
        make_url(url)
    except Exception:
        raise InputError(field="--study-storage", value=url,
                         expected="a SQLAlchemy URL, e.g. sqlite:////abs/path.db or "
                         "postgresql://user@host/db") from None


def _default_data(kind: str) -> str:
    from core.synth import ensure_default_bundle

    return str(ensure_default_bundle(kind))


def load_checked_bundle(data: str, kind: str, trainable: str):
    """Load the bundle at ``data`` and check it is the kind ``trainable`` reads."""
    from core.bundles import load_bundle

    path = Path(data)
    if not path.exists():
        raise InputError("no such bundle", file=path, expected="a bundle directory "
                         "(see `seltune data`)")
    bundle = load_bundle(path)
    if getattr(bundle, "kind", None) != kind:
        raise InputError(f"bundle is of kind {getattr(bundle, 'kind', '?')!r}", file=path,
                         expected=f"a {kind} bundle for trainable {trainable}")
    return bundle


def prepare_sweep(opts: SweepOptions) -> tuple[SweepSpec, Any]:
    """Validate ``opts``, load the data, create the experiment dir, save the spec.

    Returns ``(spec, bundle)``. Raises InputError (nothing is created) on bad input.
    """
    from core.config import parse_overrides

    info = get_trainable(opts.trainable)
    metrics, modes = parse_metrics(opts.metric, opts.mode)
    multi = len(metrics) > 1
    for m in metrics:
        if not info.reports(m):
            raise InputError(f"not reported by {info.name}", field="--metric", value=m,
                             expected="one of " + ", ".join(sorted(info.reported)))
    if multi and (opts.grace_period or opts.reduction_factor):
        print("[seltune] multi-objective sweep: no early stopping, --grace-period and "
              "--reduction-factor are ignored", file=sys.stderr)
    for name, value, low in (("--num-samples", opts.num_samples, 1),
                             ("--max-concurrent", opts.max_concurrent, 0),
                             ("--max-failures", opts.max_failures, 0),
                             ("--grace-period", opts.grace_period, 1),
                             ("--max-t", opts.max_t, 1)):
        if value is not None and value < low:
            raise InputError(field=name, value=value, expected=f"an integer >= {low}")
    if opts.reduction_factor is not None and not opts.reduction_factor > 1:
        raise InputError(field="--reduction-factor", value=opts.reduction_factor,
                         expected="a number > 1")
    from tuning.searcher import SAMPLERS

    if opts.sampler not in SAMPLERS:
        raise InputError(field="--sampler", value=opts.sampler,
                         expected=f"one of {', '.join(SAMPLERS)}")
    if not opts.cpus_per_trial > 0:
        raise InputError(field="--cpus-per-trial", value=opts.cpus_per_trial,
                         expected="a number > 0 (fractions allowed)")
    if opts.gpus_per_trial < 0:
        raise InputError(field="--gpus-per-trial", value=opts.gpus_per_trial,
                         expected="a number >= 0 (fractions allowed, e.g. 0.25)")
    if opts.device == "cuda" and opts.gpus_per_trial == 0:
        raise InputError("trials get no GPU", field="--device", value="cuda",
                         expected="--gpus-per-trial > 0 (or --device auto/cpu)")

    from tuning.ray_runtime import resolve_address

    address = resolve_address(opts.address)
    if address == "local":  # a cluster's nodes are known once connected (_fit)
        from tuning.resources import check_resources, local_nodes

        check_resources(local_nodes(opts.num_cpus), cpus_per_trial=opts.cpus_per_trial,
                        gpus_per_trial=opts.gpus_per_trial, num_cpus=opts.num_cpus)
    storage = resolve_storage(opts.storage)
    if opts.study_storage:
        _check_study_url(opts.study_storage)
    elif isinstance(storage, str):
        # The default study is a SQLite file inside the experiment directory; SQLite
        # cannot live in object storage (and a mirror is not shared between machines).
        raise InputError(f"not given, and the default SQLite study cannot live in object "
                         f"storage (--storage {storage})", field="--study-storage",
                         expected="an RDB URL the driver can reach (postgresql://...) or a "
                         "local sqlite:////abs/path.db")
    known = info.config_fields()
    space = _load_space(opts.space or info.name, info.name, known)
    cli_fixed = parse_overrides(opts.overrides)
    unknown = sorted(k for k in cli_fixed if k not in known)
    if unknown:
        raise InputError("unknown config key", file="--set", field=unknown[0],
                         expected=f"one of {', '.join(sorted(known))}")
    if opts.compat is not None:
        if opts.compat not in COMPAT_FIXED or info.bundle_kind != "argse":
            raise InputError(field="--compat", value=opts.compat,
                             expected="argse-repo (with an argse-* trainable)")
        for key, value in COMPAT_FIXED[opts.compat].items():
            if key in cli_fixed and cli_fixed[key] != value:
                raise InputError(f"--set {key}={cli_fixed[key]} is outside what the AR-GSE "
                                 f"repository's rule expresses", field="--compat",
                                 value=opts.compat, expected=f"{key}={value} (or no --compat)")
            if key in known:
                cli_fixed[key] = value
    coverage = _operating_point(opts, info, space, cli_fixed)
    cli_fixed[info.coverage_key] = coverage
    space = _with_fixed(space, cli_fixed, source="--space + --set")
    if len(space.params) == 0:
        raise InputError("nothing left to search", field="--set", value=sorted(cli_fixed),
                         expected="at least one searched parameter")
    fixed = dict(space.fixed)
    base_cfg = info.build_config(fixed, source="--space fixed + --set")  # fail fast

    data = opts.data if opts.data is not None else _default_data(info.bundle_kind)
    bundle = load_checked_bundle(data, info.bundle_kind, info.name)

    full = info.expected_iterations(base_cfg)
    max_t = opts.max_t or full
    if multi:
        scheduler = {"kind": "fifo", "max_t": max_t}
    else:
        grace = opts.grace_period or 1
        if grace > max_t:
            raise InputError(field="--grace-period", value=grace,
                             expected=f"<= --max-t ({max_t})")
        scheduler = {"kind": "asha", "grace_period": grace, "max_t": max_t,
                     "reduction_factor": opts.reduction_factor or 3.0}
    num_samples = opts.num_samples or (DEFAULT_SWEEP_SAMPLES if opts.default_run else 16)
    if not 0.0 <= opts.max_coverage_gap < 1.0:
        raise InputError(field="--max-coverage-gap", value=opts.max_coverage_gap,
                         expected="a number in [0, 1)")
    points = warm_start_points(info, space, base_cfg, opts.enqueue)
    history = _warm_start_source(opts.warm_start, info.name)

    if isinstance(storage, str):
        path = create_remote_experiment(storage, opts.name, info.name)
    else:
        path = create_experiment_dir(storage, opts.name, info.name)
    spec = SweepSpec(
        name=path.name, storage=str(storage), trainable=info.name,
        data=str(Path(data).resolve()), space=space.to_dict(),
        space_source=opts.space or info.name, fixed=fixed, metrics=metrics, modes=modes,
        num_samples=num_samples, max_concurrent=opts.max_concurrent or 0,
        scheduler=scheduler, cpus_per_trial=float(opts.cpus_per_trial),
        gpus_per_trial=float(opts.gpus_per_trial), device=opts.device, seed=int(opts.seed),
        study_storage=opts.study_storage or default_study_storage(path),
        study_name=path.name, max_failures=int(opts.max_failures),
        address=address, sampler=opts.sampler, tensorboard=bool(opts.tensorboard),
        coverage=coverage, max_coverage_gap=float(opts.max_coverage_gap),
        points_to_evaluate=points, warm_start=history,
    )
    try:
        save_spec(spec)  # for a URI storage: the upload that claims the name there
    except OSError as exc:
        if isinstance(storage, str):
            import shutil

            shutil.rmtree(path, ignore_errors=True)  # nothing half-made is left behind
            raise InputError(f"cannot write {spec.uri}/seltune/sweep.json "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})",
                             field="--storage", value=storage,
                             expected=EXPECTED_STORAGE) from None
        raise
    return spec, bundle


def _operating_point(opts: SweepOptions, info, space, cli_fixed: dict[str, Any]) -> float:
    """The sweep's one evaluation coverage (``--coverage``, or ``--set KEY=``, or the
    trainable's default); it is never searched."""
    from core.metrics import check_coverage

    key = info.coverage_key
    if any(p.name == key for p in space.params):
        raise InputError("the operating point is not a searched parameter", file="--space",
                         field=key, expected=f"--coverage C (every trial is judged at one "
                         f"coverage; {key} is set from it)")
    given = cli_fixed.get(key)
    if opts.coverage is not None and given is not None and float(given) != opts.coverage:
        raise InputError(f"--set {key}={given} contradicts --coverage {opts.coverage}",
                         field="--coverage", value=opts.coverage,
                         expected=f"one operating point (drop --set {key})")
    value = opts.coverage if opts.coverage is not None else given
    if value is None:
        value = space.fixed.get(key, info.default_coverage)
    return check_coverage(value, field="--coverage")


def _in_space(param, value: Any) -> bool:
    """Whether ``value`` is a legal value of search-space parameter ``param``."""
    return bool(param.contains(value))


def warm_start_points(info, space, base_cfg, enqueue: str | None) -> list[dict[str, Any]]:
    """The configs the sweep evaluates first (``points_to_evaluate``), in order:

    1. the trainable's defaults (the seed's configuration, for every searched key whose
       default lies in the space), 2. the configuration that reproduces the strongest
       baseline (``TrainableInfo.baseline_point``; its keys need not be searched — they
       are fixed for that one trial, see :func:`tuning.searcher.enqueue_points`), unless
       the sweep fixes one of them otherwise (``--set``, ``--compat``) or puts a
       searched one out of range, 3. the user's ``--enqueue`` configs.
    """
    import dataclasses

    params = {p.name: p for p in space.params}
    defaults = {f.name: getattr(base_cfg, f.name) for f in dataclasses.fields(base_cfg)}
    first = {k: defaults[k] for k, p in params.items()
             if k in defaults and _in_space(p, defaults[k])}
    points = [first] if first else []
    baseline = dict(info.baseline_point)
    expressible = baseline and all(
        (_in_space(params[k], v) if k in params else k in defaults)
        and (k in params or space.fixed.get(k, v) == v) for k, v in baseline.items())
    if expressible:
        points.append({**first, **baseline})
    if enqueue:
        points += _load_enqueue(enqueue, params)
    return points


def _load_enqueue(path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """``--enqueue FILE``: a JSON or YAML list of configs over the searched keys."""
    import json

    file = Path(path)
    if not file.is_file():
        raise InputError("no such file", file=file, field="--enqueue",
                         expected="a JSON/YAML list of configs")
    try:
        if file.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(file.read_text())
        else:
            data = json.loads(file.read_text())
    except Exception as exc:  # yaml/json parse errors: one line naming the file
        raise InputError(f"not readable: {str(exc).splitlines()[0][:120]}", file=file,
                         field="--enqueue", expected="a JSON/YAML list of configs") from None
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise InputError(file=file, field="--enqueue", value=type(data).__name__,
                         expected="a list of {key: value} configs")
    for i, cfg in enumerate(data):
        for key, value in cfg.items():
            if key not in params:
                raise InputError("not a searched key", file=file, field=f"[{i}].{key}",
                                 expected="one of " + ", ".join(sorted(params)))
            if not _in_space(params[key], value):
                raise InputError(file=file, field=f"[{i}].{key}", value=value,
                                 expected="a value inside the search space")
    return [dict(d) for d in data]


def _warm_start_source(experiment: str | None, trainable: str) -> dict[str, Any] | None:
    """``--warm-start EXPERIMENT``: where the history comes from (its study)."""
    if not experiment:
        return None
    from tuning.experiment import find_experiment, load_spec

    other = load_spec(find_experiment(experiment, None))
    if other.trainable != trainable:
        raise InputError(f"experiment is a {other.trainable} sweep", field="--warm-start",
                         value=experiment, expected=f"a {trainable} experiment")
    return {"experiment": other.name, "study_storage": other.study_storage,
            "study_name": other.study_name, "metrics": other.metrics}


# --------------------------------------------------------------------------- callbacks
#: The ledger's status of a trial Tune stopped without it having finished (the driver
#: was interrupted): ``seltune resume`` continues it from its last checkpoint.
INTERRUPTED = "INTERRUPTED"


def ledger_status(ray_status: str, previous: str | None) -> str:
    """The ledger status for a trial Tune reports as ``ray_status``.

    Only :meth:`LedgerCallback.on_trial_complete` decides that a trial finished: Tune
    also calls TERMINATED every trial it stops when the driver is interrupted
    (Ctrl-C), including trials that never started, and those must stay resumable.
    """
    if ray_status == "TERMINATED" and previous != "TERMINATED":
        return INTERRUPTED
    return ray_status


def _metrics_of(result: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in result.items():
        if key in _RAY_KEYS:
            continue
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, (int, float, str)) or value is None:
            out[key] = value
    return out


def _trial_config(trial) -> dict[str, Any]:
    return {k: v for k, v in (trial.config or {}).items() if not k.startswith("__")}


def _ray_callback_base():
    from ray.tune import Callback

    return Callback


if TYPE_CHECKING:  # mypy cannot use a base class computed at run time: name it statically
    from ray.tune import Callback as _CallbackBase
else:
    _CallbackBase = _ray_callback_base()


class LedgerCallback(_CallbackBase):
    """Writes ``seltune/trials.json``: status, config and per-iteration results.

    ``{"trials": {TRIAL_ID: {"trial_id", "status", "config", "dir", "iterations",
    "error", "history": {ITERATION: {metric: value, ..., "checkpoint_dir_name"}}}},
    "updated": UNIX_TIME}``. Written atomically at most twice a second while results
    and state changes arrive, and at once when a trial ends, so it is readable at any
    time and at most half a second behind after a crash (Ray's own result.json files
    and the restored trials fill that gap on resume). A restored sweep merges into the
    existing ledger, keyed by iteration, so repeated iterations are not duplicated.
    For an experiment in object storage every write is also uploaded
    (:func:`tuning.remote.publish`), so the throttle bounds the upload rate too.
    """

    def __init__(self, experiment_dir: str) -> None:
        self.experiment_dir = str(experiment_dir)
        self._ledger: dict[str, Any] | None = None
        self._last_write = 0.0
        self._dirty = False
        self._reconciled = False
        self._max_t: int | None = None
        self._last_sign = 0.0
        self._stamps: dict[str, tuple[int, int]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"experiment_dir": self.experiment_dir}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Unpickled by Tuner.restore: write where this driver runs the experiment.
        running = running_experiment()
        type(self).__init__(self, str(running) if running else state["experiment_dir"])

    @property
    def ledger(self) -> dict[str, Any]:
        if self._ledger is None:
            self._ledger = load_ledger(Path(self.experiment_dir))
        return self._ledger

    def _entry(self, trial) -> dict[str, Any]:
        trials = self.ledger["trials"]
        entry = trials.get(trial.trial_id)
        if entry is None:
            entry = trials[trial.trial_id] = {
                "trial_id": trial.trial_id, "order": len(trials),
                "status": ledger_status(trial.status, None),
                "config": {},
                "dir": None, "iterations": 0, "error": None, "history": {},
            }
        entry["config"] = _trial_config(trial)
        try:
            entry["dir"] = Path(trial.storage.trial_fs_path).name
        except Exception:  # storage not set up yet for a brand-new trial
            pass
        return entry

    def _write(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_write < 0.5:
            self._dirty = True
            return
        self.ledger["updated"] = time.time()
        path = seltune_dir(Path(self.experiment_dir)) / LEDGER_FILE
        # Rewritten whole several times a second while trials report: compact JSON.
        write_json(path, self.ledger, indent=None)
        publish(path)
        self._last_write = now
        self._dirty = False

    def _sync_statuses(self, trials) -> bool:
        # Runs after every step of Tune's loop: look at statuses only, and rebuild an
        # entry (config copy, storage path) only for a trial that is new or changed.
        changed = False
        entries = self.ledger["trials"]
        for trial in trials:
            entry = entries.get(trial.trial_id)
            status = ledger_status(trial.status, None if entry is None else entry["status"])
            if entry is None or entry["status"] != status:
                self._entry(trial)["status"] = status
                changed = True
        return changed

    def _sweep_max_t(self) -> int | None:
        """The scheduler's ``max_t`` from ``seltune/sweep.json`` (read once)."""
        if self._max_t is None:
            from tuning.experiment import load_spec

            spec_file = seltune_dir(Path(self.experiment_dir)) / "sweep.json"
            if spec_file.is_file():
                self._max_t = int(load_spec(Path(self.experiment_dir)).scheduler["max_t"])
        return self._max_t

    def ran_to_end(self, trial) -> bool:
        """Whether ``trial``, which Tune has just completed, is really finished.

        Tune completes a trial when its training function returned (its last result
        carries ``done``), when it reached ``max_t``, or when ASHA stopped it (recorded
        in ``seltune/asha_state.json`` before Tune acts on the decision). Anything else
        (a trial stopped because the driver was interrupted) is resumable, not finished.
        """
        from tuning.experiment import load_asha_state

        result = trial.last_result or {}
        if result.get("done"):
            return True
        iteration = result.get("training_iteration")
        max_t = self._sweep_max_t()
        if isinstance(iteration, int) and max_t is not None and iteration >= max_t:
            return True
        asha = load_asha_state(Path(self.experiment_dir)) or {}
        return trial.trial_id in asha.get("stopped", {})

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        entry = self._entry(trial)
        it = int(result.get("training_iteration", 0))
        entry["history"][str(it)] = _metrics_of(result)
        entry["iterations"] = max(int(entry.get("iterations", 0)), it)
        entry["status"] = trial.status
        self._write()  # throttled; on_step_end flushes the rest
        fault_point("after_trial_result")

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        fault_point("before_first_snapshot")  # the first start comes before Ray's snapshot

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        entry = self._entry(trial)
        # Finished before Ray's last snapshot said so: the scheduler stops its restored
        # copy before it runs (PersistentASHA), and it stays finished.
        if entry["status"] != "TERMINATED":
            entry["status"] = "TERMINATED" if self.ran_to_end(trial) else INTERRUPTED
        self._sync_statuses([t for t in trials if t is not trial])
        self._write(force=True)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        entry = self._entry(trial)
        entry["status"] = "ERROR"
        entry["error"] = str(getattr(trial, "error_file", None) or "error")
        self._write(force=True)

    def on_step_begin(self, iteration, trials, **info) -> None:
        if self._reconciled:
            return
        # First step of this driver. After a crash, Tune restores the trials of its last
        # experiment snapshot; a trial the dead driver had started after that snapshot
        # is unknown to Tune and its place is taken by a new suggestion. Move such
        # trials out of the ledger's "trials" into "lost", so they are neither counted
        # nor shown as running forever (a fresh sweep has an empty ledger here).
        self._reconciled = True
        known = {trial.trial_id for trial in trials}
        # A trial that had *finished* is kept: its results are complete here and in the
        # study, and the searcher counts it towards num_samples.
        lost = [tid for tid, entry in self.ledger["trials"].items()
                if tid not in known and entry["status"] not in ("TERMINATED", "ERROR")]
        for tid in lost:
            entry = self.ledger["trials"].pop(tid)
            entry["status"] = "LOST"
            self.ledger.setdefault("lost", {})[tid] = entry
        if lost:
            self._write(force=True)

    def on_step_end(self, iteration, trials, **info) -> None:
        if self._sync_statuses(trials) or self._dirty:
            self._write()
        self._sign()

    def _sign(self) -> None:
        """Sign Tune's snapshot files soon after each snapshot (:mod:`tuning.trust`):
        a look at their stamps at most twice a second, a signature when they changed."""
        now = time.monotonic()
        if now - self._last_sign < 0.5:
            return
        self._last_sign = now
        from tuning.trust import sign

        sign(Path(self.experiment_dir), self._stamps)

    def on_experiment_end(self, trials, **info) -> None:
        self._sync_statuses(trials)
        self._write(force=True)


class ProgressCallback(_CallbackBase):
    """A compact live table on stderr: one row per trial, refreshed at most every
    ``interval`` seconds when something changed, plus a line per finished trial."""

    def __init__(self, metric: str, extra: tuple[str, ...] = ("coverage", "augrc",
                                                            "gap_to_best_baseline"),
                 interval: float = 10.0, total: int | None = None,
                 baselines: dict[str, Any] | None = None) -> None:
        self.metric = metric
        self.extra = tuple(m for m in extra if m != metric)
        self.interval = interval
        self.total = total
        self.baselines = baselines
        self._last = 0.0
        self._changed = False
        # Trials seen finishing (or finished when this driver started): Tune calls a
        # trial it stops on Ctrl-C TERMINATED as well, shown here as INTERRUPTED.
        self._ended: set[str] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"metric": self.metric, "extra": self.extra, "interval": self.interval,
                "total": self.total, "baselines": self.baselines}

    def __setstate__(self, state: dict[str, Any]) -> None:
        type(self).__init__(self, **state)

    def _print(self, trials) -> None:
        from tuning.cli.output import print_table

        rows = []
        ended = self._ended or set()
        for t in trials:
            r = t.last_result or {}
            status = t.status
            if status == "TERMINATED" and t.trial_id not in ended:
                status = INTERRUPTED
            rows.append([t.trial_id, status, r.get("training_iteration"),
                         r.get(self.metric), *[r.get(m) for m in self.extra]])
        done = sum(t.status == "ERROR" or t.trial_id in ended for t in trials)
        title = f"trials: {done}/{self.total or len(trials)} finished"
        baselines = self.baselines or {}
        best = baselines.get("best")
        if best:
            title += (f"; at coverage {baselines['coverage']:g} the strongest baseline "
                      f"{best['name']} has {self.metric}={best['value']:.4f}")
        print_table(title, ["trial", "status", "iter", self.metric, *self.extra], rows,
                    stderr=True)

    def on_step_begin(self, iteration, trials, **info) -> None:
        if self._ended is None:  # restored trials that had finished before this driver
            self._ended = {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")}

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._changed = True

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        if self._ended is None:
            self._ended = set()
        self._ended.add(trial.trial_id)
        r = trial.last_result or {}
        value = r.get(self.metric)
        text = "-" if value is None else f"{value:.4f}"
        gap = r.get("gap_to_best_baseline")
        vs = "" if gap is None else f" ({gap:+.4f} vs the strongest baseline)"
        print(f"[seltune] trial {trial.trial_id} finished after {r.get('training_iteration')} "
              f"iteration(s): {self.metric}={text}{vs}", file=sys.stderr, flush=True)
        self._changed = True

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        if self._ended is None:
            self._ended = set()
        self._ended.add(trial.trial_id)
        print(f"[seltune] trial {trial.trial_id} failed (see its error.txt)",
              file=sys.stderr, flush=True)
        self._changed = True

    def on_step_end(self, iteration, trials, **info) -> None:
        now = time.monotonic()
        if self._changed and now - self._last >= self.interval:
            self._print(trials)
            self._last = now
            self._changed = False

    def on_experiment_end(self, trials, **info) -> None:
        if self._changed:
            self._print(trials)


# --------------------------------------------------------------------------- running
def trial_dirname(trial) -> str:
    """``trial_<id>``: short, unique, and free of the sampled values."""
    return f"trial_{trial.trial_id}"


def _env_for_tune() -> None:
    # Snapshot the experiment state every 5 s (Ray's default adapts from 10 s up to
    # minutes), so a killed driver loses little: trials started after the last snapshot
    # are reconciled on resume from the ledger and the study (LedgerCallback, the
    # searcher). Each snapshot re-serialises every trial (~1 MB of JSON for 32 trials);
    # at 1 s they took ~1 s of CPU per 30 s from the trials on 2 cores.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "5")
    # Tune's console output is replaced by ProgressCallback.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Tune's automatic loggers include TensorBoardX, whose import pulls torch into the
    # driver (~1.4 s and ~150 MB before the first trial); _loggers() adds the JSON and
    # CSV ones explicitly and TensorBoard only with --tensorboard.
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _loggers(tensorboard: bool) -> list[Any]:
    """Tune's per-trial ``result.json`` and ``progress.csv`` (+ TensorBoard events)."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    loggers: list[Any] = [JsonLoggerCallback(), CSVLoggerCallback()]
    if tensorboard:
        from ray.tune.logger import TBXLoggerCallback

        loggers.append(TBXLoggerCallback())
    return loggers


def execute(spec: SweepSpec, bundle: Any = None, *, resume: bool = False,
            num_cpus: int | None = None, progress_interval: float = 10.0,
            force: bool = False, trust_experiment: bool = False) -> dict[str, Any]:
    """Run (or, with ``resume``, continue) the sweep ``spec`` on Ray; return its status.

    The data bundle is loaded here once if not given, and shipped to trials through
    the object store.
    """
    from tuning.resources import check_resources, local_nodes
    from tuning.resume import claim_driver, release_driver
    from tuning.status import experiment_status

    _env_for_tune()
    info = TRAINABLES[spec.trainable]
    path = spec.path
    if spec.address == "local":  # e.g. `seltune resume --num-cpus 1` of a 2-CPU sweep
        check_resources(local_nodes(num_cpus), cpus_per_trial=spec.cpus_per_trial,
                        gpus_per_trial=spec.gpus_per_trial, num_cpus=num_cpus)
    claim_driver(path, force=force)
    set_running_experiment(path)
    try:
        if bundle is None:
            bundle = load_checked_bundle(spec.data, info.bundle_kind, info.name)
        interrupted = _fit(spec, bundle, resume=resume, num_cpus=num_cpus,
                           progress_interval=progress_interval,
                           trust_experiment=trust_experiment)
    except KeyboardInterrupt:  # before Tune ran (Ray starting, the baselines), or twice
        print(f"[seltune] interrupted; continue it with: seltune resume {spec.location}",
              file=sys.stderr, flush=True)
        raise
    finally:
        set_running_experiment(None)
        release_driver(path)
    status = experiment_status(path)
    if interrupted:
        finished = sum(n for s, n in status["counts"].items() if s in ("TERMINATED", "STOPPED"))
        print(f"[seltune] interrupted with {finished}/{spec.num_samples} trials finished "
              f"(unfinished ones continue from their last checkpoint); continue it with: "
              f"seltune resume {spec.location}", file=sys.stderr, flush=True)
        raise KeyboardInterrupt
    return status


def fit_noting_interrupt(tuner) -> bool:
    """``tuner.fit()``; True when it ended because of SIGINT (Ctrl-C) or SIGUSR1.

    Tune catches the first SIGINT itself: it stops the trials, saves its state one
    last time and returns normally. Its handler then puts back the handler it found,
    so the one installed here is the SIGINT handler again exactly when Tune was
    interrupted (and a second Ctrl-C raises KeyboardInterrupt at once, as Python's does).
    """
    import signal
    import threading

    if (threading.current_thread() is not threading.main_thread()
            or int(os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0"))):
        tuner.fit()  # Tune handles no SIGINT here: a Ctrl-C raises KeyboardInterrupt
        return False

    def second_interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, second_interrupt)
    try:
        tuner.fit()
        return signal.getsignal(signal.SIGINT) is second_interrupt
    finally:
        signal.signal(signal.SIGINT, previous)


def _fit(spec: SweepSpec, bundle: Any, *, resume: bool, num_cpus: int | None,
         progress_interval: float, trust_experiment: bool = False) -> bool:
    """Run Tune for ``spec``; True when the driver was interrupted (Ctrl-C)."""
    from ray import tune

    from tuning import trust
    from tuning.ray_runtime import ray_session
    from tuning.searcher import build_scheduler, build_searcher
    from tuning.trainables import build_trainable

    path = spec.path
    # A folder nobody signed, or a changed tuner.pkl, is refused (one line, before Ray
    # starts) even when nothing of Ray's would be read: someone put it there.
    trusted = resume and (spec.uri is not None or trust_experiment or trusted_snapshot(spec))
    with ray_session(spec.address, num_cpus=num_cpus,
                     preload=TRAINABLES[spec.trainable].worker_modules) as runtime:
        if runtime.started_local:  # the agents Ray starts later are found by its session
            from tuning.resume import record_ray_processes

            record_ray_processes(path, runtime.temp_dir if runtime.owns_temp_dir else None)
        if spec.address != "local":
            # On a real cluster every node must see the experiment directory (trial
            # checkpoints, ASHA state); fail now, naming the path and the node, rather
            # than deep inside Tune at the first checkpoint.
            from tuning.storage_check import check_storage_reachable

            check_storage_reachable(spec.storage)
            from tuning.resources import check_resources, cluster_nodes

            check_resources(cluster_nodes(), cpus_per_trial=spec.cpus_per_trial,
                            gpus_per_trial=spec.gpus_per_trial,
                            where=f"the cluster at {spec.address}")
        # trials (and the baselines) never read the test split: keep it out of the store
        bundle = selection_view(bundle)
        baselines = sweep_baselines(spec, bundle)
        trainable = build_trainable(spec.trainable, bundle, spec.fixed, device=spec.device,
                                    cpus_per_trial=spec.cpus_per_trial,
                                    gpus_per_trial=spec.gpus_per_trial, baselines=baselines)
        restart = resume and (not ray_snapshot_usable(spec) or not trusted)
        if resume and not restart:
            # A URI for an experiment in object storage: Tune reads its state from there.
            tuner = tune.Tuner.restore(spec.location, trainable=trainable,
                                       resume_unfinished=True, resume_errored=True,
                                       restart_errored=False)
            if spec.uri is None:
                trust.sign(path)  # restore rewrites tuner.pkl; --trust-experiment adopts it
        else:
            points = spec.points_to_evaluate
            if restart:
                points = restart_from_ledger(spec)
            searcher = build_searcher(
                spec.space, spec.metrics, spec.modes, spec.seed, spec.study_storage,
                spec.study_name, spec.sampler, experiment=spec.study_name,
                num_samples=spec.num_samples, points_to_evaluate=points,
                max_coverage_gap=None if spec.coverage is None else spec.max_coverage_gap)
            if spec.uri is None:
                from tuning.study_db import claim_study

                claim_study(spec.study_storage, spec.study_name, path,
                            own_db=spec.study_storage == default_study_storage(path))
            if spec.warm_start:
                from tuning.searcher import add_history

                n = add_history(searcher._study(), spec.warm_start, spec.space)
                print(f"[seltune] warm start: {n} trial(s) of {spec.warm_start['experiment']} "
                      f"copied into the study as history", file=sys.stderr, flush=True)
            scheduler = build_scheduler(spec.scheduler, spec.metric, spec.mode,
                                        seltune_dir(path) / ASHA_FILE)
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=searcher,
                    scheduler=scheduler,
                    num_samples=spec.num_samples,
                    max_concurrent_trials=spec.max_concurrent or None,
                    reuse_actors=True,
                    trial_dirname_creator=trial_dirname,
                ),
                run_config=tune.RunConfig(
                    name=spec.name,
                    storage_path=spec.storage,
                    failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                    # Keep every checkpoint: export picks the best one afterwards, and a
                    # num_to_keep forces an experiment snapshot per few checkpoints.
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
                    callbacks=[*_loggers(spec.tensorboard), LedgerCallback(str(path)),
                               ProgressCallback(spec.metric, interval=progress_interval,
                                                total=spec.num_samples,
                                                baselines=baselines)],
                    verbose=0,
                ),
            )
            if spec.uri is None:
                trust.sign(path)
            fault_point("after_tuner_pkl")  # Tuner() has written tuner.pkl
        interrupted = fit_noting_interrupt(tuner)
        if spec.uri is None:
            trust.sign(path)  # Tune's last snapshot
        return interrupted


#: Where a restart without Ray's snapshot moves Ray's unreadable state files.
UNUSABLE_RAY_STATE = "unusable-ray-state"
_RAY_STATE_GLOBS = ("experiment_state-*.json", "search_gen_state-*.json",
                    "searcher-state-*.pkl")


def trusted_snapshot(spec: SweepSpec) -> bool:
    """Whether every file ``Tuner.restore`` would unpickle is signed by this user
    (:mod:`tuning.trust`).

    ``tuner.pkl`` unsigned or changed, or no signature at all: the folder is not this
    user's driver's, refused in one line. Only the newest snapshot's files off: the
    driver was killed between Tune writing a snapshot and signing it (or someone
    changed it); they are not read: the resume continues from the sweep's own ledger
    and study (:func:`restart_from_ledger`), which unpickles nothing. False then.

    Raises:
        InputError: the refusal, naming the file and ``--trust-experiment``.
    """
    from tuning import trust

    found = trust.problems(spec.path)
    if not found:
        return True
    first, why = found[0]
    if not trust.read_signatures(spec.path) or any(p.name == "tuner.pkl" for p, _ in found):
        bad = next(((p, w) for p, w in found if p.name == "tuner.pkl"), (first, why))
        raise trust.refusal(*bad)
    print(f"[seltune] {first}: {why} by this user's seltune, so Ray's snapshot is not read "
          f"({trust.TRUST_FLAG} would restore it)", file=sys.stderr, flush=True)
    return False


def ray_snapshot_usable(spec: SweepSpec) -> bool:
    """Whether ``Tuner.restore`` can continue ``spec`` from Ray's last snapshot.

    It can when ``tuner.pkl`` exists and the newest ``experiment_state-*.json`` and
    its session's ``search_gen_state-*.json`` parse and its ``searcher-state-*.pkl`` is
    not empty. A driver killed between ``tuner.pkl`` and Ray's first snapshot, or in
    the middle of writing one, leaves none (``Tuner.restore`` then restores a search
    generator that thinks the sweep has one trial). An experiment in object storage is
    left to Tune (its snapshot is read from the URI).
    """
    import json

    if spec.uri is not None:
        return True
    path = spec.path
    if not (path / "tuner.pkl").is_file():
        return False
    states = sorted(path.glob("experiment_state-*.json"))
    if not states:
        return False
    session = states[-1].name[len("experiment_state-"):-len(".json")]
    try:
        json.loads(states[-1].read_text())
        json.loads((path / f"search_gen_state-{session}.json").read_text())
        return (path / f"searcher-state-{session}.pkl").stat().st_size > 0
    except (OSError, UnicodeDecodeError, ValueError):
        return False


def restart_from_ledger(spec: SweepSpec) -> list[dict[str, Any]]:
    """Prepare a resume without Ray's snapshot: the ledger and the study decide.

    Ray's unreadable state files are moved to ``seltune/unusable-ray-state/`` (a fresh
    Tuner writes new ones in the same directory); every study trial of this sweep still
    RUNNING is told FAIL as orphaned, so the searcher counts only trials that finished
    (:meth:`~tuning.searcher.SeltuneOptunaSearch.trials_started`); the ledger moves the
    unfinished trials to ``lost`` on the first step (:class:`LedgerCallback`). Returns
    the warm-start points still to evaluate: none when the study already has trials
    (the first driver enqueued them; Optuna hands out the ones not yet asked first).
    """
    from tuning.searcher import fail_unfinished_trials

    aside = seltune_dir(spec.path) / UNUSABLE_RAY_STATE
    for pattern in _RAY_STATE_GLOBS:
        for file in spec.path.glob(pattern):
            aside.mkdir(exist_ok=True)
            os.replace(file, aside / file.name)
    failed, existing = fail_unfinished_trials(spec.study_storage, spec.study_name,
                                              spec.study_name)
    print(f"[seltune] no usable Ray snapshot in {spec.location}: continuing from the "
          f"sweep's ledger and study ({len(failed)} unfinished trial(s) replaced)",
          file=sys.stderr, flush=True)
    return [] if existing else list(spec.points_to_evaluate)


def selection_view(bundle: Any) -> Any:
    """``bundle`` without its ``test`` split (the same arrays, no copy): what a sweep ships
    to its trials through the object store. Test is read only by export and evaluate."""
    import dataclasses

    splits = getattr(bundle, "splits", None)
    if not isinstance(splits, dict) or "test" not in splits:
        return bundle
    return dataclasses.replace(bundle, splits={k: v for k, v in splits.items() if k != "test"})


def sweep_baselines(spec: SweepSpec, bundle: Any) -> dict[str, Any] | None:
    """The sweep's ``seltune/baselines.json``: read it, or fit it now in a Ray task.

    The fit runs in a worker (which has torch preloaded) so the driver stays light; a
    resumed sweep reuses the file. Multi-objective sweeps and experiments without an
    operating point get none.
    """
    import ray

    from tuning.baselines import compute_baselines
    from tuning.experiment import BASELINES_FILE, load_baselines

    if spec.coverage is None or spec.multi_objective:
        return None
    found = load_baselines(spec.path)
    if found is not None:
        return found
    info = TRAINABLES[spec.trainable]
    print(f"[seltune] fitting the training-free baselines at coverage {spec.coverage:g} ...",
          file=sys.stderr, flush=True)
    t0 = time.monotonic()
    task = ray.remote(num_cpus=spec.cpus_per_trial)(compute_baselines)
    device = "cpu" if spec.gpus_per_trial == 0 else spec.device
    result = ray.get(task.remote(spec.trainable, info.bundle_kind, bundle, spec.coverage,
                                 spec.metric, spec.mode, device))
    path = seltune_dir(spec.path) / BASELINES_FILE
    write_json(path, result)
    publish(path)
    from tuning.baselines import print_baselines

    print_baselines(result, seconds=time.monotonic() - t0)
    return result


def run_sweep(opts: SweepOptions, *, progress_interval: float = 10.0) -> dict[str, Any]:
    spec, bundle = prepare_sweep(opts)
    print(f"[seltune] experiment {spec.location} ({spec.trainable}, {spec.num_samples} trials, "
          f"metric {','.join(spec.metrics)} {','.join(spec.modes)})", file=sys.stderr,
          flush=True)
    from tuning.resources import ResourceError

    try:
        return execute(spec, bundle, num_cpus=opts.num_cpus,
                       progress_interval=progress_interval)
    except ResourceError:
        # A cluster too small for one trial is found once connected: the experiment
        # just made (nothing of Tune's in it yet) is removed, as if never started.
        if spec.uri is None and not (spec.path / "tuner.pkl").exists():
            import shutil

            shutil.rmtree(spec.path)
        raise

