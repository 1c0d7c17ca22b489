"""The sweep driver: start or join Ray, build the Tuner (fresh or restored), run it.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from core.atomic import fault_point
from tuning.experiment.layout import (
    ASHA_FILE,
    default_study_storage,
    seltune_dir,
    set_running_experiment,
    write_json,
)
from tuning.experiment.mirror import publish
from tuning.experiment.records import FINISHED
from tuning.experiment.spec import SweepSpec
from tuning.sweep.callbacks import LedgerCallback, ProgressCallback
from tuning.sweep.options import SweepOptions
from tuning.sweep.prepare import prepare_sweep
from tuning.sweep.restart import ray_snapshot_usable, restart_from_ledger, trusted_snapshot
from tuning.trainables import compute_baselines, get_trainable, load_checked_bundle


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
    from tuning.results.status import experiment_status
    from tuning.sweep.lock import claim_driver, release_driver
    from tuning.sweep.resources import check_resources, local_nodes

    _env_for_tune()
    info = get_trainable(spec.trainable)
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
        finished = sum(n for s, n in status["counts"].items() if s in FINISHED)
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

    from tuning.experiment import trust
    from tuning.sweep.runtime import ray_session
    from tuning.sweep.scheduler import build_scheduler
    from tuning.sweep.searcher import build_searcher
    from tuning.trainables.trial import build_trainable

    path = spec.path
    # A folder nobody signed, or a changed tuner.pkl, is refused (one line, before Ray
    # starts) even when nothing of Ray's would be read: someone put it there.
    if resume and spec.uri is not None and not trust_experiment:
        raise trust.remote_refusal(spec.uri)  # before Ray starts; nothing is unpickled
    trusted = resume and (spec.uri is not None or trust_experiment or trusted_snapshot(spec))
    with ray_session(spec.address, num_cpus=num_cpus,
                     preload=get_trainable(spec.trainable).worker_modules) as runtime:
        if runtime.started_local:  # the agents Ray starts later are found by its session
            from tuning.sweep.lock import record_ray_processes

            record_ray_processes(path, runtime.temp_dir if runtime.owns_temp_dir else None)
        if spec.address != "local":
            # On a real cluster every node must see the experiment directory (trial
            # checkpoints, ASHA state); fail now, naming the path and the node, rather
            # than deep inside Tune at the first checkpoint.
            from tuning.sweep.storage_check import check_storage_reachable

            check_storage_reachable(spec.storage)
            from tuning.sweep.resources import check_resources, cluster_nodes

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
            from tuning.sweep.legacy import install_aliases

            install_aliases()  # a sweep started by an older seltune pickled other paths
            if spec.uri is None:  # trials started after Ray's last snapshot go on too
                from tuning.sweep.restart import continue_lost_trials

                continue_lost_trials(spec, get_trainable(spec.trainable).checkpoint_file)
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
                from tuning.sweep.study import claim_study

                claim_study(spec.study_storage, spec.study_name, path,
                            own_db=spec.study_storage == default_study_storage(path))
            if spec.warm_start:
                from tuning.sweep.searcher import add_history

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

    from tuning.experiment.layout import BASELINES_FILE
    from tuning.experiment.records import load_baselines

    if spec.coverage is None or spec.multi_objective:
        return None
    found = load_baselines(spec.path)
    if found is not None:
        return found
    print(f"[seltune] fitting the training-free baselines at coverage {spec.coverage:g} ...",
          file=sys.stderr, flush=True)
    t0 = time.monotonic()
    task = ray.remote(num_cpus=spec.cpus_per_trial)(compute_baselines)
    device = "cpu" if spec.gpus_per_trial == 0 else spec.device
    result = ray.get(task.remote(spec.trainable, bundle, spec.coverage, spec.metric,
                                 spec.mode, device))
    path = seltune_dir(spec.path) / BASELINES_FILE
    write_json(path, result)
    publish(path)
    from tuning.results.baselines import print_baselines

    print_baselines(result, seconds=time.monotonic() - t0)
    return result


def run_sweep(opts: SweepOptions, *, progress_interval: float = 10.0) -> dict[str, Any]:
    spec, bundle = prepare_sweep(opts)
    print(f"[seltune] experiment {spec.location} ({spec.trainable}, {spec.num_samples} trials, "
          f"metric {','.join(spec.metrics)} {','.join(spec.modes)})", file=sys.stderr,
          flush=True)
    from tuning.sweep.resources import ResourceError

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
