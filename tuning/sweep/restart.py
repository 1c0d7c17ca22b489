"""How a resumed sweep continues: from Ray's snapshot when it is usable and trusted,
otherwise from the sweep's own ledger and study.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from tuning.experiment.layout import seltune_dir
from tuning.experiment.spec import SweepSpec
from tuning.sweep.study import CONTINUED_ATTR, fail_unfinished_trials

#: Where a restart without Ray's snapshot moves Ray's unreadable state files.
UNUSABLE_RAY_STATE = "unusable-ray-state"


_RAY_STATE_GLOBS = ("experiment_state-*.json", "search_gen_state-*.json",
                    "searcher-state-*.pkl")


def trusted_snapshot(spec: SweepSpec) -> bool:
    """Whether every file ``Tuner.restore`` would unpickle is signed by this user
    (:mod:`tuning.experiment.trust`).

    ``tuner.pkl`` unsigned or changed, or no signature at all: the folder is not this
    user's driver's, refused in one line. Only the newest snapshot's files off: the
    driver was killed between Tune writing a snapshot and signing it (or someone
    changed it); they are not read: the resume continues from the sweep's own ledger
    and study (:func:`restart_from_ledger`), which unpickles nothing. False then.

    Raises:
        InputError: the refusal, naming the file and ``--trust-experiment``.
    """
    from tuning.experiment import trust

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
    if not (path / "tuner.pkl").is_file() or not _whole_pickle(path / "tuner.pkl"):
        return False  # cut short (a copy, a full disk): the ledger path writes a new one
    states = sorted(path.glob("experiment_state-*.json"))
    if not states:
        return False
    session = states[-1].name[len("experiment_state-"):-len(".json")]
    try:
        json.loads(states[-1].read_text())
        # Despite its name, Ray writes search_gen_state-*.json with cloudpickle (as it
        # does searcher-state-*.pkl): both must be whole pickles. (Read as JSON, as this
        # once did, every snapshot looked unusable, so every resume abandoned the
        # running trials and started new ones: issue 15, defect 3.)
        return (_whole_pickle(path / f"search_gen_state-{session}.json")
                and _whole_pickle(path / f"searcher-state-{session}.pkl"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False


def _whole_pickle(file) -> bool:
    """Whether ``file`` is one complete pickle stream, checked by walking its opcodes up to
    STOP (:mod:`pickletools`), which runs nothing: a file cut short by a kill fails."""
    import pickletools

    data = file.read_bytes()
    if not data:
        return False
    try:
        for opcode, _, _ in pickletools.genops(data):
            if opcode.name == "STOP":
                return True
    except (ValueError, EOFError, UnicodeDecodeError):
        return False
    return False


def restart_from_ledger(spec: SweepSpec) -> list[dict[str, Any]]:
    """Prepare a resume without Ray's snapshot: the ledger and the study decide.

    Ray's unreadable state files are moved to ``seltune/unusable-ray-state/`` (a fresh
    Tuner writes new ones in the same directory); every study trial of this sweep still
    RUNNING is told FAIL as orphaned, so the searcher counts only trials that finished
    (:meth:`~tuning.sweep.searcher.SeltuneOptunaSearch.trials_started`), after each
    unfinished trial was enqueued to run again with its parameters
    (:func:`rerun_unfinished`). Returns
    the warm-start points still to evaluate: none when the study already has trials
    (the first driver enqueued them; Optuna hands out the ones not yet asked first).
    """

    aside = seltune_dir(spec.path) / UNUSABLE_RAY_STATE
    for pattern in _RAY_STATE_GLOBS:
        for file in spec.path.glob(pattern):
            aside.mkdir(exist_ok=True)
            os.replace(file, aside / file.name)
    rerun = rerun_unfinished(spec)
    failed, existing = fail_unfinished_trials(spec.study_storage, spec.study_name,
                                              spec.study_name)
    print(f"[seltune] no usable Ray snapshot in {spec.location}: continuing from the "
          f"sweep's ledger and study ({len(failed)} unfinished trial(s) replaced, "
          f"{rerun} of them re-run with the same config first)", file=sys.stderr, flush=True)
    return [] if existing else list(spec.points_to_evaluate)


#: Where :func:`rerun_unfinished` moves the directories of trials it re-runs afresh.
REPLACED_TRIALS = "replaced-trials"


def rerun_unfinished(spec: SweepSpec) -> int:
    """Without Ray's snapshot no trial can be restored, so each unfinished trial of the
    ledger is re-run from the start with the same parameters: they are enqueued in the
    study (Optuna hands them out before it samples anew; ``seltune_rerun_of`` names the
    Ray trial), its directory is moved to ``seltune/replaced-trials/`` and its ledger
    entry to ``"replaced"``, so it is neither an orphan nor a ``lost`` trial. Its old
    study trial is then failed as orphaned (:func:`fail_unfinished_trials`). Returns how
    many were enqueued.
    """
    import optuna
    from optuna.trial import TrialState

    from tuning.experiment.records import TrialState as LedgerState
    from tuning.experiment.records import load_ledger, save_ledger
    from tuning.sweep.study import open_study_storage

    ledger = load_ledger(spec.path)
    unfinished = {tid: e for tid, e in ledger.trials.items() if e.status not in _OVER}
    if not unfinished:
        return 0
    try:
        study = optuna.load_study(study_name=spec.study_name,
                                  storage=open_study_storage(spec.study_storage))
    except KeyError:  # no study yet: nothing was asked, a fresh searcher starts over
        return 0
    running = {t.user_attrs.get("ray_trial_id"): t
               for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
               if t.user_attrs.get("seltune_experiment") == spec.study_name}
    moved = seltune_dir(spec.path) / REPLACED_TRIALS
    enqueued = 0
    for tid, entry in sorted(unfinished.items(), key=lambda kv: kv[1].order):
        frozen = running.get(tid)
        if frozen is not None and frozen.params:
            study.enqueue_trial(dict(frozen.params), user_attrs={"seltune_rerun_of": tid})
            enqueued += 1
        name = entry.dir
        if name and (spec.path / name).is_dir():
            moved.mkdir(exist_ok=True)
            os.replace(spec.path / name, moved / name)
        entry = ledger.trials.pop(tid)
        entry.status = LedgerState.REPLACED
        ledger.replaced[tid] = entry
    save_ledger(spec.path, ledger)
    return enqueued


#: Ledger statuses of trials that are over (never continued).
_OVER = ("TERMINATED", "ERROR", "STOPPED", "LOST", "REPLACED")


def _newest_state(path) -> Any:
    states = sorted(path.glob("experiment_state-*.json"))
    return states[-1] if states else None


def _complete(checkpoint_dir) -> bool:
    """Whether every file of a checkpoint directory is whole: torch files (zip archives)
    pass their CRC check, JSON parses. A worker killed while copying a checkpoint into
    the experiment leaves a directory that fails here."""
    import json
    import zipfile

    try:
        files = [p for p in checkpoint_dir.iterdir() if p.is_file()]
        if not files:
            return False
        for file in files:
            if file.suffix in (".pt", ".pth", ".ckpt"):
                if not zipfile.is_zipfile(file):
                    return False
                with zipfile.ZipFile(file) as archive:
                    if archive.testzip() is not None:
                        return False
            elif file.suffix == ".json":
                json.loads(file.read_text())
    except (OSError, ValueError, zipfile.BadZipFile):
        return False
    return True


def _last_checkpoint(entry: Any, trial_dir, checkpoint_file: str
                     ) -> tuple[str, dict[str, Any]] | None:
    """``(checkpoint dir name, the report's metrics)`` of the trial's newest complete
    checkpoint whose report the ledger recorded, or None.

    Every report of seltune's trainables carries a checkpoint, so ``checkpoint_00000K``
    belongs to report ``K + 1``. A newer checkpoint whose report the ledger had not yet
    written when the driver died (its writes lag up to half a second) is not used: its
    metrics never reached the ledger, ASHA or the study, so that report is made again
    from the checkpoint before it (which is what a trial killed a moment earlier would
    do anyway). Ray's restore needs the metrics (``training_iteration`` and the
    objective, which Tune checks on the trial's next result).
    """
    history = entry.history
    records = {int(k): r for k, r in history.items() if str(k).isdigit() and isinstance(r, dict)}
    try:
        names = sorted((p.name for p in trial_dir.glob("checkpoint_*") if p.is_dir()),
                       reverse=True)
    except OSError:
        return None
    for name in names:
        index = name.rsplit("_", 1)[-1]
        record = records.get(int(index) + 1) if index.isdigit() else None
        if record is None or record.get("checkpoint_dir_name", name) != name \
                or not (trial_dir / name / checkpoint_file).is_file() \
                or not _complete(trial_dir / name):
            continue
        return name, {**record, "training_iteration": int(index) + 1}
    return None


def continue_lost_trials(spec: SweepSpec, checkpoint_file: str) -> list[str]:
    """Put the trials a killed driver started after Ray's last snapshot back into it.

    Ray snapshots the experiment every few seconds; a trial started after the last
    snapshot is unknown to ``Tuner.restore``, which would abandon it (its directory
    and checkpoints left as an orphan, its study trial failed, a new suggestion in its
    place). Each such trial the ledger has as unfinished, and the study has as
    RUNNING under its Ray id, is added to the snapshot as a paused trial of Ray's own
    kind: same id, config and directory, with its newest complete checkpoint as the
    one to restore (Ray's trainable then continues from it, ``training_iteration``
    included), or none, so it runs again from the start with the same config. Its study
    trial is marked (:data:`CONTINUED_ATTR`) so the restored searcher adopts it: the
    same Optuna trial receives its further reports and its outcome.

    Call only for a local snapshot that :func:`ray_snapshot_usable` and
    :func:`trusted_snapshot` accepted (the snapshot's pickles are this user's). The
    snapshot file is rewritten atomically and re-signed. Returns the continued ids.
    """
    import copy
    import json
    import time as _time

    import optuna
    from optuna.trial import TrialState
    from ray.train import Checkpoint
    from ray.train._internal.checkpoint_manager import _CheckpointManager
    from ray.train._internal.session import _TrainingResult
    from ray.tune.experiment import Trial
    from ray.tune.trainable.metadata import _TrainingRunMetadata

    from core.atomic import atomic_file
    from tuning.experiment import trust
    from tuning.experiment.records import load_ledger
    from tuning.sweep.study import open_study_storage

    path = spec.path
    state_file = _newest_state(path)
    if state_file is None:
        return []
    state = json.loads(state_file.read_text())
    trial_data = state.get("trial_data") or []
    if not trial_data:
        return []
    known = {json.loads(t)["trial_id"] for t, _ in trial_data}
    lost = {tid: e for tid, e in load_ledger(path).trials.items()
            if tid not in known and e.status not in _OVER and e.dir}
    if not lost:
        return []
    try:
        study = optuna.load_study(study_name=spec.study_name,
                                  storage=open_study_storage(spec.study_storage))
    except KeyError:
        return []
    running: dict[Any, Any] = {}
    for ot in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = ot.user_attrs
        if attrs.get("seltune_experiment") == spec.study_name and "orphaned" not in attrs:
            running[attrs.get("ray_trial_id")] = ot
    template_json, template_meta_json = trial_data[0]
    template_meta = _TrainingRunMetadata.from_json_state(template_meta_json)
    if template_meta.checkpoint_manager is None:  # not a snapshot of a started sweep
        return []
    checkpoint_config = template_meta.checkpoint_manager.checkpoint_config
    continued = []
    for order, (tid, entry) in enumerate(sorted(lost.items(), key=lambda kv: kv[1].order)):
        frozen = running.get(tid)
        if frozen is None:  # not (or no longer) the study's: a new suggestion replaces it
            continue
        trial = Trial.from_json_state(template_json, stub=True)
        if trial.storage is None:
            return []
        storage = copy.copy(trial.storage)
        dirname = str(entry.dir)  # set: the lost trials were chosen for having one
        storage.trial_dir_name = dirname
        trial_dir = path / dirname
        found = _last_checkpoint(entry, trial_dir, checkpoint_file)
        storage.current_checkpoint_index = 0 if found is None else \
            int(found[0].rsplit("_", 1)[-1]) + 1
        config = dict(entry.config)
        trial.trial_id = tid
        trial.storage = storage
        trial.config = config
        trial._Trial__unresolved_config = config  # type: ignore[attr-defined]
        trial.evaluated_params = {k: v for k, v in config.items()
                                  if k in (trial.evaluated_params or {})}
        trial.experiment_tag = f"{len(known) + order + 1}_continued"
        trial.relative_logdir = dirname  # type: ignore[assignment]  # Ray declares None
        trial.custom_dirname = dirname
        trial.status = Trial.PAUSED  # unfinished: Tuner.restore(resume_unfinished) runs it
        trial.stub = False  # read as a stub (no trainable registered yet); Ray runs it
        meta = _TrainingRunMetadata()
        meta.start_time = _time.time()  # type: ignore[assignment]  # Ray declares None
        manager = _CheckpointManager(checkpoint_config=checkpoint_config)
        meta.checkpoint_manager = manager
        if found is not None:
            name, result = found
            meta.last_result = result
            manager.register_checkpoint(_TrainingResult(
                checkpoint=Checkpoint(path=f"{storage.trial_fs_path}/{name}",
                                      filesystem=storage.storage_filesystem),
                metrics=result))
        trial.run_metadata = meta
        trial.invalidate_json_state()
        trial_data.append(list(trial.get_json_state()))
        study._storage.set_trial_user_attr(frozen._trial_id, CONTINUED_ATTR, tid)
        continued.append(tid)
        print(f"[seltune] trial {tid} (started after Ray's last snapshot) continues "
              + (f"from its {found[0]}" if found else "from the start (no checkpoint yet), "
                 "with the same config"), file=sys.stderr, flush=True)
    if continued:
        state["trial_data"] = trial_data
        with atomic_file(state_file) as tmp:
            tmp.write_text(json.dumps(state))
        _count_in_search_state(path, state_file, continued)
        trust.sign(path)
    return continued


def _count_in_search_state(path, state_file, continued: list[str]) -> None:
    """Tell the snapshot's search generator (and its concurrency limiter, with
    ``--max-concurrent``) about the continued trials: the limiter passes a completion
    to the searcher only for trials it knows as live, so without this the study would
    never hear how a continued trial ended. The file is this user's signed pickle
    (checked before this is called), rewritten atomically."""
    import cloudpickle

    from core.atomic import atomic_file

    session = state_file.name[len("experiment_state-"):-len(".json")]
    file = path / f"search_gen_state-{session}.json"
    with open(file, "rb") as f:
        state = cloudpickle.load(f)
    if not isinstance(state, dict):
        return
    if isinstance(state.get("counter"), int):
        state["counter"] += len(continued)
    limiter = state.get("name:ConcurrencyLimiter")
    if isinstance(limiter, dict) and isinstance(limiter.get("live_trials"), set):
        limiter["live_trials"].update(continued)
        limiter["num_unfinished_live_trials"] = int(
            limiter.get("num_unfinished_live_trials", 0)) + len(continued)
    with atomic_file(file) as tmp, open(tmp, "wb") as f:
        cloudpickle.dump(state, f)
