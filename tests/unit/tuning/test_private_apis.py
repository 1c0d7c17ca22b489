"""Every private attribute or API of Ray and Optuna that seltune reads or patches.

``pyproject.toml`` bounds ``ray`` and ``optuna`` below their next minor version; before
raising a bound, run this file against the new version: each check names what seltune
needs, where, and what breaks without it. No Ray cluster is started (classes and
objects built in-process, ``hasattr``, ``inspect.signature``); Optuna studies are in
memory.

A check that fails here means seltune's code must change (or the bound stay), not the
check: most of these would otherwise degrade silently (a ``getattr`` default, an early
stop that never reaches the study).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from types import SimpleNamespace

import optuna
import pytest
import ray

VERSIONS = f"ray {ray.__version__}, optuna {optuna.__version__}"

#: (what seltune relies on, where, check returning True when it holds)
CHECKS: list[tuple[str, str, Callable[[], bool]]] = []


def relies_on(name: str, where: str):
    """Register the decorated check for ``name`` (a private attribute or API) used at
    ``where`` (module.function and what it does with it)."""
    def register(check: Callable[[], bool]) -> Callable[[], bool]:
        CHECKS.append((name, where, check))
        return check
    return register


def _ray_optuna_search():
    from ray.tune.search.optuna import OptunaSearch

    dist = optuna.distributions.FloatDistribution(0.0, 1.0)
    return OptunaSearch(space={"x": dist}, metric="m", mode="min")


def _asha(**kw):
    from ray.tune.schedulers import AsyncHyperBandScheduler

    return AsyncHyperBandScheduler(time_attr="training_iteration", metric="m", mode="min",
                                   max_t=9, grace_period=1, reduction_factor=3, brackets=1,
                                   **kw)


def _study_with_trial():
    study = optuna.create_study()
    return study, study.ask()


# --------------------------------------------------------------------------- Ray's OptunaSearch
@relies_on("OptunaSearch._ot_trials (dict: Tune trial id -> optuna.trial.Trial)",
           "tuning.sweep.searcher.SeltuneOptunaSearch: suggest, on_trial_result, "
           "on_trial_complete, _frozen, reconcile_with_study (the Optuna trial of a Tune trial)")
def _ot_trials():
    s = _ray_optuna_search()
    s.suggest("t")
    return isinstance(s._ot_trials, dict) and isinstance(s._ot_trials["t"], optuna.trial.Trial)


@relies_on("OptunaSearch._ot_study (the optuna.Study, set up by __init__ with a space)",
           "tuning.sweep.searcher.SeltuneOptunaSearch._study (every study read and write; "
           "build_searcher enqueues the warm-start points in it)")
def _ot_study():
    return isinstance(_ray_optuna_search()._ot_study, optuna.study.Study)


@relies_on("OptunaSearch._completed_trials (set of Tune trial ids already told)",
           "tuning.sweep.searcher.SeltuneOptunaSearch.on_trial_result/on_trial_complete/"
           "reconcile_with_study (skip trials told before a restart; hear retried ones again)")
def _completed_trials():
    return isinstance(_ray_optuna_search()._completed_trials, set)


@relies_on("OptunaSearch.save/restore pickle and restore the searcher's __dict__",
           "tuning.sweep.searcher.SeltuneOptunaSearch.restore (its own attributes "
           "_stopped_early, _experiment, _num_samples come back from Tune's snapshot)")
def _save_restores_dict():
    from ray.tune.search.optuna import OptunaSearch

    return ("__dict__" in inspect.getsource(OptunaSearch.save)
            and "__dict__" in inspect.getsource(OptunaSearch.restore))


@relies_on("ray.tune.search.optuna.optuna_search._OptunaTrialSuggestCaptor.ot_trial "
           "(the Optuna trial inside what a define-by-run space is called with)",
           "tuning.sweep.searcher.SpaceFunction.__call__ (reads the enqueued trial's "
           "seltune_fixed user attribute: the warm-start keys outside the space; without "
           "it they are silently not applied)")
def _captor_ot_trial():
    from ray.tune.search.optuna import optuna_search

    _, trial = _study_with_trial()
    return optuna_search._OptunaTrialSuggestCaptor(trial).ot_trial is trial


@relies_on("OptunaSearch(space=, metric=, mode=, sampler=, study_name=, storage=)",
           "tuning.sweep.searcher.build_searcher")
def _optuna_search_signature():
    from ray.tune.search.optuna import OptunaSearch

    params = inspect.signature(OptunaSearch.__init__).parameters
    return {"space", "metric", "mode", "sampler", "study_name", "storage"} <= set(params)


# --------------------------------------------------------------------------- Optuna
@relies_on("optuna.study.Study._storage (its BaseStorage, with get_trial and "
           "set_trial_user_attr)",
           "tuning.sweep.searcher.SeltuneOptunaSearch._frozen (a trial's state and "
           "intermediate values without reading every trial) and "
           "tuning.sweep.study.fail_orphan (marks a study trial orphaned by its id)")
def _study_storage():
    study, _ = _study_with_trial()
    storage = study._storage
    return (isinstance(storage, optuna.storages.BaseStorage)
            and callable(getattr(storage, "get_trial", None))
            and callable(getattr(storage, "set_trial_user_attr", None)))


@relies_on("optuna.trial.Trial._trial_id (the storage id of an asked trial)",
           "tuning.sweep.searcher.SeltuneOptunaSearch._frozen and reconcile_with_study "
           "(which study trials this searcher knows)")
def _trial_trial_id():
    study, trial = _study_with_trial()
    return study._storage.get_trial(trial._trial_id).number == trial.number


@relies_on("optuna.trial.FrozenTrial._trial_id (the storage id of a stored trial)",
           "tuning.sweep.searcher.SeltuneOptunaSearch.reconcile_with_study, "
           "tuning.sweep.study.fail_orphan/fail_unfinished_trials (orphaned RUNNING "
           "trials told FAIL)")
def _frozen_trial_id():
    study, trial = _study_with_trial()
    (frozen,) = study.get_trials(deepcopy=False)
    return frozen._trial_id == trial._trial_id


@relies_on("optuna.exceptions.StorageInternalError raised from the SQLAlchemy error, "
           "in RDBStorage's session",
           "tuning.sweep.study.is_transient (a locked SQLite database is retried, "
           "found through __cause__)")
def _storage_internal_error_chained():
    from optuna.storages._rdb import storage as rdb

    source = inspect.getsource(rdb._create_scoped_session)
    return "StorageInternalError(message) from e" in source


@relies_on("TPESampler(multivariate=, group=, constant_liar=, n_startup_trials=, "
           "constraints_func=) (experimental in Optuna)",
           "tuning.sweep.searcher.make_sampler")
def _tpe_signature():
    params = inspect.signature(optuna.samplers.TPESampler).parameters
    return {"multivariate", "group", "constant_liar", "n_startup_trials",
            "constraints_func"} <= set(params)


# --------------------------------------------------------------------------- Ray's ASHA
@relies_on("AsyncHyperBandScheduler._brackets[i]._rungs (list of (milestone, "
           "{trial_id: value}))",
           "tuning.sweep.scheduler.PersistentASHA.state_dict/load_state_dict (the rungs "
           "saved to seltune/asha_state.json and restored after Tuner.restore)")
def _asha_rungs():
    sched = _asha()
    trial = SimpleNamespace(trial_id="t1", status="RUNNING")
    sched.on_trial_add(None, trial)
    sched.on_trial_result(None, trial, {"training_iteration": 1, "m": 0.5})
    rungs = sched._brackets[0]._rungs
    return (isinstance(rungs, list) and all(isinstance(m, (int, float)) and isinstance(r, dict)
                                            for m, r in rungs)
            and any("t1" in r for _, r in rungs))


@relies_on("AsyncHyperBandScheduler._max_t, _reduction_factor, _num_stopped, _metric, "
           "_time_attr",
           "tuning.sweep.scheduler.PersistentASHA (state_dict; on_trial_result: whether a "
           "STOP came before max_t, i.e. an early stop)")
def _asha_settings():
    sched = _asha()
    return (sched._max_t == 9 and sched._reduction_factor == 3 and sched._num_stopped == 0
            and sched._metric == "m" and sched._time_attr == "training_iteration")


@relies_on("AsyncHyperBandScheduler._trial_info (dict keyed by Tune trial id)",
           "tuning.sweep.scheduler.PersistentASHA.on_trial_complete/on_trial_remove "
           "(forget a trial without Ray's bracket bookkeeping)")
def _asha_trial_info():
    sched = _asha()
    sched.on_trial_add(None, SimpleNamespace(trial_id="t1", status="RUNNING"))
    return isinstance(sched._trial_info, dict) and "t1" in sched._trial_info


@relies_on("the controller Tune passes to a scheduler exposes search_alg, get_trials, "
           "stop_trial (TuneController._wrapped's whitelist)",
           "tuning.sweep.scheduler._searcher_chain/_notify_stopped and "
           "PersistentASHA.choose_trial_to_run (without search_alg an early stop "
           "silently reaches Optuna as COMPLETE)")
def _controller_whitelist():
    from ray.tune.execution.tune_controller import TuneController

    source = inspect.getsource(TuneController._wrapped)
    return all(f'"{name}"' in source for name in ("search_alg", "get_trials", "stop_trial"))


@relies_on("SearchGenerator.searcher and ConcurrencyLimiter.searcher (the wrapped searcher)",
           "tuning.sweep.scheduler._searcher_chain (finds SeltuneOptunaSearch.mark_stopped_early)")
def _searcher_wrappers():
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.search_generator import SearchGenerator

    inner = _ray_optuna_search()
    return SearchGenerator(ConcurrencyLimiter(inner, 1)).searcher.searcher is inner


# --------------------------------------------------------------------------- Ray internals
@relies_on("ray._private.worker._global_node (the local Node this driver started)",
           "tuning.sweep.runtime._shutdown_local (drops the autoscaler monitor from "
           "Ray's process list) and tuning.sweep.lock._local_session_dir")
def _global_node():
    from ray._private import worker

    return hasattr(worker, "_global_node")


@relies_on("ray._private.node.Node.all_processes ({process type: [ProcessInfo]}) and "
           "ProcessInfo.process",
           "tuning.sweep.runtime._shutdown_local (pops the monitor's entry and kills it)")
def _node_all_processes():
    from ray._private import node, services

    return ("self.all_processes" in inspect.getsource(node.Node.__init__)
            and "process" in services.ProcessInfo._fields)


@relies_on("ray._private.node.Node.get_session_dir_path()",
           "tuning.sweep.lock._local_session_dir (the Ray session whose processes a "
           "driver lock records)")
def _node_session_dir():
    from ray._private import node

    return callable(getattr(node.Node, "get_session_dir_path", None))


@relies_on("ray._private.ray_constants.PROCESS_TYPE_MONITOR",
           "tuning.sweep.runtime._shutdown_local")
def _monitor_type():
    from ray._private import ray_constants

    return isinstance(ray_constants.PROCESS_TYPE_MONITOR, str)


@relies_on("ray._private.ray_constants.ENABLE_RAY_CLUSTER, read from "
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER",
           "tuning.sweep.runtime._bind_to_loopback (patched to False so a local Ray keeps "
           "127.0.0.1) and cluster/local.py (the loopback cluster)")
def _enable_ray_cluster():
    from ray._private import ray_constants

    return (isinstance(ray_constants.ENABLE_RAY_CLUSTER, bool)
            and ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR == "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")


@relies_on("ray._private.services.resolve_ip_for_localhost -> get_node_ip_address, which "
           "keeps the loopback address when ENABLE_RAY_CLUSTER is off",
           "tuning.sweep.runtime._bind_to_loopback and cluster/local.py: the rewrite of "
           "127.0.0.1 they turn off")
def _resolve_ip_for_localhost():
    from ray._private import services

    return ("get_node_ip_address" in inspect.getsource(services.resolve_ip_for_localhost)
            and "ENABLE_RAY_CLUSTER" in inspect.getsource(services.get_node_ip_address))


@relies_on("ray.tune.execution.class_cache.DEFAULT_ENV_VARS == {'PL_DISABLE_FORK': '1'}",
           "tuning.sweep.runtime._trial_actors_use_prestarted_workers (deleted so trial "
           "actors can use Ray's prestarted workers)")
def _default_env_vars():
    from ray.tune.execution import class_cache

    defaults = getattr(class_cache, "DEFAULT_ENV_VARS", None)
    return isinstance(defaults, dict) and defaults.get("PL_DISABLE_FORK") == "1"


@relies_on("ray.init(_temp_dir=, _node_ip_address=, _system_config=)",
           "tuning.sweep.runtime.start_ray (a short temp dir, a loopback node, "
           "preload_python_modules)")
def _ray_init_private_kwargs():
    from ray._private import worker  # ray.init takes them from **kwargs (unknown ones raise)

    source = inspect.getsource(worker.init)
    return all(f'kwargs.pop("{name}"' in source
               for name in ("_temp_dir", "_node_ip_address", "_system_config"))


@relies_on("Ray's experiment files: tuner.pkl, experiment_state-*.json, "
           "search_gen_state-*.json, searcher-state-*.pkl",
           "tuning.sweep.restart (ray_snapshot_usable, _RAY_STATE_GLOBS) and "
           "tuning.experiment.trust (which files are signed)")
def _ray_state_files():
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.impl import tuner_internal
    from ray.tune.search import Searcher
    from ray.tune.search.search_generator import SearchGenerator

    return (tuner_internal._TUNER_PKL == "tuner.pkl"
            and TuneController.CKPT_FILE_TMPL == "experiment_state-{}.json"
            and SearchGenerator.CKPT_FILE_TMPL == "search_gen_state-{}.json"
            and Searcher.CKPT_FILE_TMPL == "searcher-state-{}.pkl")


@relies_on("Trial.storage.trial_fs_path (ray.train._internal.storage.StorageContext)",
           "tuning.sweep.callbacks.LedgerCallback (a trial's directory in the ledger)")
def _trial_fs_path():
    from ray.train._internal.storage import StorageContext

    return isinstance(inspect.getattr_static(StorageContext, "trial_fs_path"), property)


# --------------------------------------------------------------------------- Ray's trial snapshot
# tuning.sweep.restart.continue_lost_trials writes a trial the dead driver had started
# after Ray's last snapshot back into that snapshot, so Tuner.restore continues it.
@relies_on("ray.train._internal.checkpoint_manager._CheckpointManager(checkpoint_config=)"
           ".register_checkpoint", "tuning.sweep.restart.continue_lost_trials: the lost "
           "trial's last checkpoint, registered so the restored trial resumes from it")
def _checkpoint_manager() -> bool:
    from ray.train._internal.checkpoint_manager import _CheckpointManager

    return ("checkpoint_config" in inspect.signature(_CheckpointManager).parameters
            and hasattr(_CheckpointManager, "register_checkpoint"))


@relies_on("ray.train._internal.session._TrainingResult(checkpoint=, metrics=)",
           "tuning.sweep.restart.continue_lost_trials: what register_checkpoint takes")
def _training_result() -> bool:
    from ray.train._internal.session import _TrainingResult

    params = inspect.signature(_TrainingResult).parameters
    return "checkpoint" in params and "metrics" in params


@relies_on("ray.tune.trainable.metadata._TrainingRunMetadata (from_json_state, "
           "checkpoint_manager, last_result, start_time)",
           "tuning.sweep.restart.continue_lost_trials: the run metadata of a trial put "
           "back into the snapshot")
def _run_metadata() -> bool:
    from ray.tune.trainable.metadata import _TrainingRunMetadata

    meta = _TrainingRunMetadata()
    return (hasattr(_TrainingRunMetadata, "from_json_state")
            and all(hasattr(meta, a) for a in ("checkpoint_manager", "last_result",
                                                "start_time")))


@relies_on("Trial.from_json_state(stub=), get_json_state, invalidate_json_state, "
           "_Trial__unresolved_config, storage.trial_dir_name / current_checkpoint_index",
           "tuning.sweep.restart.continue_lost_trials: a trial rebuilt from the "
           "snapshot's first trial, with the lost trial's id, config and directory")
def _trial_json_state() -> bool:
    from ray.tune.experiment import Trial

    ok = ("stub" in inspect.signature(Trial.from_json_state).parameters
          and all(hasattr(Trial, a) for a in ("get_json_state", "invalidate_json_state")))
    source = inspect.getsource(Trial)
    return ok and "__unresolved_config" in source and "trial_dir_name" in inspect.getsource(
        __import__("ray.train._internal.storage", fromlist=["StorageContext"]).StorageContext) \
        and "current_checkpoint_index" in inspect.getsource(
            __import__("ray.train._internal.storage", fromlist=["StorageContext"]).StorageContext)


# --------------------------------------------------------------------------- the test
@pytest.mark.parametrize("name,where,check", CHECKS, ids=[c[2].__name__ for c in CHECKS])
def test_private_api_still_there(name, where, check):
    try:
        ok = bool(check())
    except Exception as exc:  # an import, attribute or call that no longer works
        ok, why = False, f"{type(exc).__name__}: {exc}"
    else:
        why = "present but not as seltune uses it"
    assert ok, (f"{VERSIONS}: seltune relies on {name}, used by {where}; {why}. Change "
                f"that code (or keep the upper bound in pyproject.toml) before allowing "
                f"this version.")


def test_the_seltune_code_still_uses_what_is_checked():
    """The inventory stays honest: each private name checked here is still in the code
    (remove its check when the code stops using it)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    code = "\n".join(p.read_text() for d in ("tuning", "cluster") for p in (root / d).rglob("*.py"))
    for needle in ("_ot_trials", "_ot_study", "_completed_trials", "_storage", "_trial_id",
                   "ot_trial", "_brackets", "_rungs", "_max_t", "_reduction_factor",
                   "_num_stopped", "_time_attr", "_trial_info", "search_alg",
                   "_global_node", "all_processes", "get_session_dir_path",
                   "PROCESS_TYPE_MONITOR", "ENABLE_RAY_CLUSTER", "DEFAULT_ENV_VARS",
                   "_temp_dir", "_node_ip_address", "_system_config", "experiment_state-",
                   "search_gen_state-", "searcher-state-", "trial_fs_path",
                   "_CheckpointManager", "_TrainingResult", "_TrainingRunMetadata",
                   "_Trial__unresolved_config", "current_checkpoint_index"):
        assert needle in code, f"{needle} is checked in {__file__} but no longer used"
