"""``seltune status`` on a fabricated experiment directory (no Ray)."""

from __future__ import annotations

import json

import pytest
from sweep_specs import make_spec

from tuning.cli import main
from tuning.experiment.layout import write_json
from tuning.experiment.spec import save_spec
from tuning.results.selection import dominates, pareto_front
from tuning.results.status import experiment_status


def h(it, wge, augrc, ckpt=True):
    d = {"training_iteration": it, "worst_group_error": wge, "augrc": augrc}
    if ckpt:
        d["checkpoint_dir_name"] = f"checkpoint_{it - 1:06d}"
    return d


@pytest.fixture
def experiment(tmp_path):
    spec = make_spec(tmp_path, name="exp")
    (tmp_path / "exp" / "seltune").mkdir(parents=True)
    save_spec(spec)
    trials = {
        "aaa": {"trial_id": "aaa", "order": 0, "status": "TERMINATED", "config": {"lr": 0.1},
                "iterations": 3, "history": {"1": h(1, 0.5, 0.2), "2": h(2, 0.3, 0.1),
                                             "3": h(3, 0.4, 0.1)}},
        "bbb": {"trial_id": "bbb", "order": 1, "status": "TERMINATED", "config": {"lr": 0.2},
                "iterations": 1, "history": {"1": h(1, 0.25, 0.3)}},
        "ccc": {"trial_id": "ccc", "order": 2, "status": "RUNNING", "config": {"lr": 0.3},
                "iterations": 1, "history": {"1": h(1, 0.6, 0.3)}},
        "ddd": {"trial_id": "ddd", "order": 3, "status": "PENDING", "config": {"lr": 0.4},
                "iterations": 0, "history": {}},
    }
    write_json(tmp_path / "exp" / "seltune" / "trials.json", {"trials": trials})
    write_json(tmp_path / "exp" / "seltune" / "asha_state.json",
               {"stopped": {"bbb": {"iteration": 1, "value": 0.25}}})
    return tmp_path / "exp"


def test_status_shape_counts_and_best(experiment):
    st = experiment_status(experiment)
    assert set(st) == {"name", "path", "metric", "mode", "counts", "best", "trials"}
    assert st["name"] == "exp" and st["metric"] == "worst_group_error" and st["mode"] == "min"
    assert st["counts"] == {"TERMINATED": 1, "STOPPED": 1, "RUNNING": 1, "PENDING": 1}
    # Best over all iterations: bbb's 0.25 beats aaa's best 0.3.
    assert st["best"]["trial_id"] == "bbb"
    assert st["best"]["metrics"]["worst_group_error"] == 0.25
    assert [t["trial_id"] for t in st["trials"]] == ["aaa", "bbb", "ccc", "ddd"]
    first = st["trials"][0]
    assert set(first) == {"trial_id", "status", "config", "metrics", "iterations", "feasible"}
    assert first["metrics"]["training_iteration"] == 3 and first["iterations"] == 3
    assert st["trials"][3]["metrics"] == {}


def test_status_cli_json(experiment, capsys):
    assert main(["status", str(experiment), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["counts"]["STOPPED"] == 1 and out["best"]["config"] == {"lr": 0.2}


def test_status_cli_table_and_missing_experiment(experiment, tmp_path, capsys):
    assert main(["status", str(experiment)]) == 0
    text = capsys.readouterr().out
    assert "best: trial bbb" in text and "STOPPED" in text
    assert main(["status", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("seltune: error:") and "no such experiment" in err
    assert len(err.strip().splitlines()) == 1


def test_status_before_any_result(tmp_path):
    spec = make_spec(tmp_path, name="empty")
    (tmp_path / "empty" / "seltune").mkdir(parents=True)
    save_spec(spec)
    st = experiment_status(tmp_path / "empty")
    assert st["counts"] == {} and st["best"] is None and st["trials"] == []


def test_pareto_front():
    modes = ["min", "min"]
    assert dominates([1, 1], [2, 2], modes) and not dominates([1, 2], [2, 1], modes)
    assert not dominates([1, 1], [1, 1], modes)
    pts = {"a": [1, 3], "b": [2, 2], "c": [3, 1], "d": [3, 3], "e": [2, 2.5]}
    assert pareto_front(pts, modes) == ["a", "b", "c"]
    assert pareto_front(pts, ["max", "max"]) == ["d"]


def test_multi_objective_status_lists_the_front(tmp_path):
    spec = make_spec(tmp_path, name="mo", metrics=["augrc", "worst_group_error"],
                     modes=["min", "min"], scheduler={"kind": "fifo", "max_t": 2})
    (tmp_path / "mo" / "seltune").mkdir(parents=True)
    save_spec(spec)
    trials = {tid: {"trial_id": tid, "order": i, "status": "TERMINATED", "config": {},
                    "iterations": 1, "history": {"1": h(1, w, a)}}
              for i, (tid, w, a) in enumerate([("x", 0.3, 0.1), ("y", 0.2, 0.2),
                                               ("z", 0.4, 0.3)])}
    write_json(tmp_path / "mo" / "seltune" / "trials.json", {"trials": trials})
    st = experiment_status(tmp_path / "mo")
    assert st["pareto"] == ["x", "y"] and st["metric"] == "augrc,worst_group_error"
