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
(:mod:`tuning.results.baselines`), and every report carries ``gap_to_best_baseline``. Trials
whose realised coverage misses the point by more than ``--max-coverage-gap`` are
infeasible: Optuna is told through TPE's ``constraints_func`` and export never picks
them. Warm start: the first trials are the trainable's defaults and the configuration
that reproduces the strongest baseline (``Adapter.baseline_point``), plus
``--enqueue FILE``; ``--warm-start EXPERIMENT`` copies a finished study's trials into
the new study as history.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from core.errors import InputError
from tuning.experiment.layout import (
    create_experiment_dir,
    create_remote_experiment,
    default_study_storage,
    resolve_storage,
)
from tuning.experiment.mirror import EXPECTED_STORAGE
from tuning.experiment.spec import SweepSpec, parse_metrics, save_spec
from tuning.sweep.options import (
    COMPAT_FIXED,
    DEFAULT_GRACE_PERIOD,
    DEFAULT_NUM_SAMPLES,
    DEFAULT_REDUCTION_FACTOR,
    DEFAULT_SWEEP_SAMPLES,
    SAMPLERS,
    SweepOptions,
)
from tuning.trainables import get_trainable, load_checked_bundle


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

    from tuning.sweep.runtime import resolve_address

    address = resolve_address(opts.address)
    if address == "local":  # a cluster's nodes are known once connected (_fit)
        from tuning.sweep.resources import check_resources, local_nodes

        check_resources(local_nodes(opts.num_cpus), cpus_per_trial=opts.cpus_per_trial,
                        gpus_per_trial=opts.gpus_per_trial, num_cpus=opts.num_cpus)
    storage = resolve_storage(opts.storage)
    if not isinstance(storage, str):
        _check_storage_dir(storage, opts.storage)
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
        if opts.compat not in COMPAT_FIXED or opts.compat not in info.compat_formats:
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
    from tuning.sweep.space_check import check_space_values

    # Every choice and bound the space can give a trial, against the trainable's config
    # (otherwise every trial drawing a bad value fails three times inside Ray).
    check_space_values(space, info.config_class, fixed, source=opts.space or info.name)

    data = opts.data if opts.data is not None else _default_data(info.bundle_kind)
    bundle = load_checked_bundle(data, info.bundle_kind, info.name)
    _check_group_metrics(metrics, bundle, data)

    full = info.expected_iterations(base_cfg)
    max_t = opts.max_t or full
    if multi:
        scheduler = {"kind": "fifo", "max_t": max_t}
    else:
        grace = opts.grace_period or DEFAULT_GRACE_PERIOD
        if grace > max_t:
            raise InputError(field="--grace-period", value=grace,
                             expected=f"<= --max-t ({max_t})")
        scheduler = {"kind": "asha", "grace_period": grace, "max_t": max_t,
                     "reduction_factor": opts.reduction_factor or DEFAULT_REDUCTION_FACTOR}
    num_samples = opts.num_samples or (DEFAULT_SWEEP_SAMPLES if opts.default_run
                                      else DEFAULT_NUM_SAMPLES)
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
        import shutil

        # Nothing half-made is left behind (e.g. a full disk): the name stays free.
        shutil.rmtree(path, ignore_errors=True)
        if isinstance(storage, str):
            raise InputError(f"cannot write {spec.uri}/seltune/sweep.json "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})",
                             field="--storage", value=storage,
                             expected=EXPECTED_STORAGE) from None
        raise
    return spec, bundle


def _check_storage_dir(storage: Path, given: Any) -> None:
    """``--storage`` must be a directory or a path that can become one: a regular file
    there, or above it, would fail deep inside ``mkdir`` with a traceback."""
    from core.atomic import check_parents_are_dirs

    if storage.exists() and not storage.is_dir():
        raise InputError("is a regular file, not a directory", field="--storage",
                         value=str(given), expected="a directory for the experiments "
                         "(or a path where one can be made)")
    check_parents_are_dirs(Path(str(given)).expanduser() if given else storage, "--storage")


def _num_groups(bundle: Any) -> int | None:
    """How many groups the per-group metrics (``error_gK``, ``coverage_gK``) of a sweep
    on ``bundle`` have: an expert bundle's count groups, a feature bundle's named or
    numbered groups; None when the bundle does not say."""
    groups = getattr(bundle, "num_groups", None)
    if isinstance(groups, int):
        return groups
    names = getattr(bundle, "group_names", None)
    if names:
        return len(names)
    top = -1
    for split in (getattr(bundle, "splits", None) or {}).values():
        g = getattr(split, "group", None)
        if g is not None and len(g):
            top = max(top, int(g.max()))
    return top + 1 if top >= 0 else None


def _check_group_metrics(metrics: list[str], bundle: Any, data: str) -> None:
    """``--metric error_g7`` names group 7: the bundle must have it (otherwise the first
    report lacks the metric and Tune stops the driver with a traceback)."""
    import re

    groups = _num_groups(bundle)
    for m in metrics:
        match = re.fullmatch(r"(coverage|error)_g(\d+)", m)
        if match and (groups is None or int(match.group(2)) >= groups):
            have = "no groups" if groups is None else f"{groups} groups"
            names = "" if not groups else " (" + ", ".join(
                f"{match.group(1)}_g{k}" for k in range(groups)) + ")"
            raise InputError(f"the bundle {data} has {have}", field="--metric", value=m,
                             expected=f"a metric of one of its groups{names}")


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
       baseline (``Adapter.baseline_point``; its keys need not be searched — they
       are fixed for that one trial, see :func:`tuning.sweep.searcher.enqueue_points`), unless
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
    from tuning.experiment.layout import find_experiment
    from tuning.experiment.spec import load_spec

    other = load_spec(find_experiment(experiment, None))
    if other.trainable != trainable:
        raise InputError(f"experiment is a {other.trainable} sweep", field="--warm-start",
                         value=experiment, expected=f"a {trainable} experiment")
    return {"experiment": other.name, "study_storage": other.study_storage,
            "study_name": other.study_name, "metrics": other.metrics}
