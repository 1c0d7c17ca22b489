"""The typed records (tuning/experiment/records.py) read and write the JSON users see,
unchanged: the ledger the callback writes, ``seltune status --json``, ``metrics.json``."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace
from typing import Any

import pytest
from sweep_specs import make_spec

from core.errors import InputError
from tuning.cli import main
from tuning.experiment.layout import write_json
from tuning.experiment.records import (
    ExportMetrics,
    Ledger,
    LedgerEntry,
    SweepStatus,
    TrialState,
    load_ledger,
)
from tuning.experiment.spec import save_spec
from tuning.results.status import experiment_status, sweep_status
from tuning.sweep.callbacks import LedgerCallback

ENTRY_KEYS = ["trial_id", "order", "status", "config", "dir", "iterations", "error", "history"]


def test_trial_states_are_the_plain_strings():
    assert TrialState.TERMINATED == "TERMINATED" and "STOPPED" == TrialState.STOPPED
    assert f"{TrialState.ERROR}" == str(TrialState.ERROR) == "ERROR"
    assert json.dumps({TrialState.LOST: [TrialState.PAUSED]}) == '{"LOST": ["PAUSED"]}'
    assert {s.value for s in TrialState} == {"PENDING", "RUNNING", "PAUSED", "TERMINATED",
                                             "STOPPED", "ERROR", "INTERRUPTED", "LOST",
                                             "REPLACED"}


def _trial(tid, status="RUNNING", **last):
    return SimpleNamespace(trial_id=tid, status=status, config={"lr": 0.1, "__x": 1},
                           storage=SimpleNamespace(trial_fs_path=f"/runs/exp/trial_{tid}_x"),
                           last_result=last, error_file=f"/runs/exp/trial_{tid}_x/error.txt")


def _result(it, wge, coverage=0.7, **extra):
    return {"training_iteration": it, "worst_group_error": wge, "coverage": coverage,
            "coverage_gap": 0.0, "checkpoint_dir_name": f"checkpoint_{it - 1:06d}",
            "done": False, "pid": 1, "flag": True, **extra}


@pytest.fixture
def written(tmp_path):
    """An experiment whose ledger the real callback wrote: a finished trial, one ASHA
    stopped, one failed, one running, one lost after a driver crash."""
    spec = make_spec(tmp_path, name="exp", coverage=0.7)
    exp = spec.path
    (exp / "seltune").mkdir(parents=True)
    save_spec(spec)
    write_json(exp / "seltune" / "asha_state.json",
               {"stopped": {"b": {"iteration": 1, "value": 0.3}}})
    write_json(exp / "seltune" / "baselines.json", {
        "coverage": 0.7, "split": "val", "metric": "worst_group_error", "mode": "min",
        "values": {"plugin_worst": {"worst_group_error": 0.28}},
        "best": {"name": "plugin_worst", "value": 0.28}})
    cb = LedgerCallback(str(exp))
    trials = [_trial(t) for t in "abcde"]
    a, b, c, d, _ = trials  # "e" keeps running
    for t, wge in zip(trials, (0.25, 0.3, 0.4, 0.35, 0.5)):
        cb.on_trial_result(0, trials, t, _result(1, wge))
    cb.on_trial_result(0, trials, a, _result(2, 0.2))
    cb.on_trial_result(0, trials, a, _result(3, 0.22))
    a.status, a.last_result = "TERMINATED", {"training_iteration": 3}  # ran to max_t
    cb.on_trial_complete(0, trials, a)
    b.status, b.last_result = "TERMINATED", {"training_iteration": 1}  # stopped by ASHA
    cb.on_trial_complete(0, trials, b)
    c.status = "ERROR"
    cb.on_trial_error(0, trials, c)
    d.status = "TERMINATED"  # Tune's cleanup after Ctrl-C: never completed
    cb.on_experiment_end(trials)
    # a new driver: Tune restored all but "e", which the dead driver had started
    LedgerCallback(str(exp)).on_step_begin(0, [a, b, c, d])
    return exp


def test_the_ledger_the_callback_writes_round_trips_in_the_old_shape(written):
    raw = json.loads((written / "seltune" / "trials.json").read_text())
    assert list(raw) == ["trials", "updated", "lost"]
    assert Ledger.from_dict(raw).to_dict() == raw
    assert json.dumps(Ledger.from_dict(raw).to_dict()) == json.dumps(raw)  # key order too
    for entry in [*raw["trials"].values(), *raw["lost"].values()]:
        assert list(entry) == ENTRY_KEYS  # the dict LedgerCallback._entry used to build
        assert type(entry["status"]) is str
    a = raw["trials"]["a"]
    assert a == {"trial_id": "a", "order": 0, "status": "TERMINATED", "config": {"lr": 0.1},
                 "dir": "trial_a_x", "iterations": 3, "error": None,
                 "history": {str(i): {"training_iteration": i, "worst_group_error": w,
                                      "coverage": 0.7, "coverage_gap": 0.0,
                                      "checkpoint_dir_name": f"checkpoint_{i - 1:06d}",
                                      "flag": 1}
                             for i, w in ((1, 0.25), (2, 0.2), (3, 0.22))}}
    assert raw["trials"]["c"]["status"] == "ERROR"
    assert raw["trials"]["c"]["error"] == "/runs/exp/trial_c_x/error.txt"
    assert raw["trials"]["d"]["status"] == "INTERRUPTED"  # Tune's TERMINATED at the end
    assert raw["lost"]["e"]["status"] == "LOST"
    ledger = load_ledger(written)
    assert ledger.trials["a"].status is TrialState.TERMINATED
    assert ledger.trials["a"].last_checkpoint_iteration() == 3


def _old_status(path, spec) -> dict[str, Any]:
    """``experiment_status`` as it was before the records (a frozen reference copy,
    reading the raw JSON files), to compare the new output with."""
    from tuning.results.baselines import verdicts

    def n(x):
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            return None
        return float(x) if math.isfinite(x) else None

    def best_it(history, metric, mode, max_gap):
        best = None
        for key in sorted(history, key=int):
            v = n(history[key].get(metric))
            gap = n(history[key].get("coverage_gap"))
            if v is None or not (max_gap is None or gap is None or gap <= max_gap + 1e-12):
                continue
            if best is None or (v < best[0] if mode == "min" else v > best[0]):
                best = (v, int(key), history[key])
        return None if best is None else (best[1], best[2])

    ledger = json.loads((path / "seltune" / "trials.json").read_text())
    asha = json.loads((path / "seltune" / "asha_state.json").read_text())
    stopped = set(asha.get("stopped", {}))
    metric, mode = spec.metric, spec.mode
    max_gap = None if spec.coverage is None else float(spec.max_coverage_gap)
    trials, counts, best = [], {}, None
    for entry in sorted(ledger["trials"].values(), key=lambda e: e.get("order", 0)):
        status = entry.get("status") or "PENDING"
        if entry["trial_id"] in stopped and status in ("TERMINATED", "RUNNING", "PENDING",
                                                       "PAUSED"):
            status = "STOPPED"
        counts[status] = counts.get(status, 0) + 1
        history = entry.get("history", {})
        last = history[max(history, key=int)] if history else {}
        found = best_it(history, metric, mode, max_gap)
        trials.append({"trial_id": entry["trial_id"], "status": status,
                       "config": entry.get("config", {}), "metrics": last,
                       "iterations": int(entry.get("iterations", 0)),
                       "feasible": found is not None or not history})
        if found is not None:
            value = found[1][metric]
            if best is None or (value < best[0] if mode == "min" else value > best[0]):
                best = (value, entry, found[1])
    out: dict[str, Any] = {
        "name": spec.name, "path": spec.uri or str(path), "metric": ",".join(spec.metrics),
        "mode": ",".join(spec.modes), "counts": counts,
        "best": None if best is None else {"trial_id": best[1]["trial_id"],
                                           "config": best[1].get("config", {}),
                                           "metrics": best[2]},
        "trials": trials}
    if spec.coverage is not None:
        out["coverage"] = spec.coverage
    baselines = json.loads((path / "seltune" / "baselines.json").read_text())
    out["baselines"] = baselines
    if best is not None:
        out["verdict"] = verdicts({baselines["split"]: best[2]},
                                  {baselines["split"]: baselines["values"]},
                                  metric, mode, spec.coverage)
    if ledger.get("lost"):
        out["lost"] = sorted(ledger["lost"])
    return out


def test_status_of_a_written_ledger_is_the_old_dict_and_round_trips(written, capsys):
    from tuning.experiment.spec import load_spec

    old = _old_status(written, load_spec(written))
    new = experiment_status(written)
    assert new == old
    assert json.dumps(new) == json.dumps(old)  # same keys in the same order
    assert new["counts"] == {"TERMINATED": 1, "STOPPED": 1, "ERROR": 1, "INTERRUPTED": 1}
    assert new["best"]["trial_id"] == "a" and new["lost"] == ["e"]
    assert SweepStatus.from_dict(new).to_dict() == new
    assert sweep_status(written).to_dict() == new
    assert main(["status", str(written), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(old))


def test_export_metrics_round_trip_in_the_written_order():
    written = {"val": {"worst_group_error": 0.2}, "test": {"worst_group_error": 0.25},
               "baselines": {"val": {"plugin_worst": {"worst_group_error": 0.21}},
                             "test": {"plugin_worst": {"worst_group_error": 0.24}}},
               "config": {"lr": 0.1}, "checkpoint": "/out/checkpoint/gating_selective.ckpt",
               "trial_id": "a", "iteration": 3,
               "selection": {"metric": "worst_group_error", "mode": "min", "value": 0.2,
                             "experiment": "/runs/exp"},
               "operating_point": {"coverage": 0.7, "max_coverage_gap": 0.02},
               "verdict": ["val: ..."], "compat": {"argse_repo": {"agreement": 1.0}}}
    record = ExportMetrics.from_dict(written)
    assert record.splits() == {"val": written["val"], "test": written["test"]}
    assert json.dumps(record.to_dict()) == json.dumps(written)
    no_test = {k: v for k, v in written.items() if k not in ("test", "compat")}
    assert json.dumps(ExportMetrics.from_dict(no_test).to_dict()) == json.dumps(no_test)


@pytest.mark.parametrize("field,value,expected", [
    ("iterations", "three", "expected an integer"),
    ("status", "DONE", "expected one of PENDING, RUNNING"),
    ("history", {"1": 0.5}, 'expected {"ITERATION": {metric: value, ...}}'),
    ("config", [1, 2], "expected a JSON object"),
])
def test_a_ledger_field_of_the_wrong_type_is_one_line(tmp_path, capsys, field, value,
                                                      expected):
    spec = make_spec(tmp_path, name="exp")
    (spec.path / "seltune").mkdir(parents=True)
    save_spec(spec)
    entry = {"trial_id": "aaa", "order": 0, "status": "RUNNING", "config": {},
             "iterations": 1, "history": {}, field: value}
    path = spec.path / "seltune" / "trials.json"
    write_json(path, {"trials": {"aaa": entry}})
    with pytest.raises(InputError) as err:
        load_ledger(spec.path)
    assert err.value.file == str(path) and err.value.field == f"trials.aaa.{field}"
    assert err.value.value == value
    assert main(["status", str(spec.path)]) == 2
    line = capsys.readouterr().err.strip()
    assert len(line.splitlines()) == 1
    assert line.startswith(f"seltune: error: {path}: trials.aaa.{field}=")
    assert line.endswith(expected) or expected in line


def test_an_entry_read_back_keeps_keys_it_does_not_know():
    data = {"trial_id": "a", "order": 0, "status": "PENDING", "config": {}, "dir": None,
            "iterations": 0, "error": None, "history": {}, "note": "from a newer seltune"}
    assert LedgerEntry.from_dict(data).to_dict() == data
