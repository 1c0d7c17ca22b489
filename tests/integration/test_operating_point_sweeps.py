"""Sweeps judge every trial at one operating point, beside the training-free baselines,
through the real CLI on a real local Ray (issue: "Search for the right answer").

The default sweep runs as a user starts it (``seltune sweep``, nothing else that shapes
the search); the others use tiny bundles and shrunk schedules.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from cli_env import private_env, run_seltune, write_small_bundles

pytestmark = pytest.mark.integration

TOL = 0.005


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    yield from private_env("st-op-", SELTUNE_CACHE=str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    return write_small_bundles(tmp_path_factory.mktemp("bundles"))


def seltune(env, *args, timeout=600):
    return run_seltune(env, *args, timeout=timeout)


def ledger(exp: Path) -> dict:
    return json.loads((exp / "seltune" / "trials.json").read_text())["trials"]


def every_report_at(exp: Path, coverage: float) -> int:
    """Assert that every report of every trial is at ``coverage`` on the selection split;
    return the number of reports checked."""
    n = 0
    for tid, entry in ledger(exp).items():
        for it, m in entry["history"].items():
            assert abs(m["coverage"] - coverage) <= TOL, (tid, it, m["coverage"])
            n += 1
    return n


def test_default_sweep_reports_every_trial_at_the_operating_point_beside_the_baselines(
        env, tmp_path):
    storage = tmp_path / "runs"
    p = seltune(env, "sweep", "--storage", storage, "--num-cpus", 2, "--json", timeout=900)
    status = json.loads(p.stdout)
    exp = Path(status["path"])
    assert "running the default sweep" in p.stderr and "strongest baseline" in p.stderr
    assert sum(status["counts"].values()) == 32 and status["coverage"] == 0.7
    assert every_report_at(exp, 0.7) >= 32
    # the baselines were fit once, at the same point, and every report carries its gap
    base = status["baselines"]
    assert base["coverage"] == 0.7 and base["best"]["name"] == "plugin_worst"
    assert {"chow:mixture", "plugin_balanced", "plugin_worst"} <= set(base["values"])
    for entry in ledger(exp).values():
        for m in entry["history"].values():
            assert m["gap_to_best_baseline"] == pytest.approx(
                m["worst_group_error"] - base["best"]["value"])
    assert status["verdict"] and status["verdict"][0].startswith("val:")
    # the warm start: the seed's defaults, then the rule that *is* Plug-in[Worst]
    spec = json.loads((exp / "seltune" / "sweep.json").read_text())
    first, second = spec["points_to_evaluate"][:2]
    assert "gate" not in first and second["gate"] == "uniform"
    study = optuna.load_study(study_name=spec["study_name"], storage=spec["study_storage"])
    assert study.trials[1].user_attrs["seltune_fixed"]["gate"] == "uniform"
    uniform = ledger(exp)[study.trials[1].user_attrs["ray_trial_id"]]
    assert uniform["config"]["gate"] == "uniform"
    # the uniform gate runs once: it is a warm-start trial, not a choice TPE draws again
    assert [e["config"].get("gate") for e in ledger(exp).values()].count("uniform") == 1
    last = uniform["history"][max(uniform["history"], key=int)]
    assert last["worst_group_error"] == pytest.approx(base["best"]["value"])

    out = tmp_path / "export"
    e = seltune(env, "export", exp, "--out", out)
    metrics = json.loads((out / "metrics.json").read_text())
    for split in ("val", "test"):
        assert metrics[split]["coverage"] == pytest.approx(0.7, abs=TOL)
        assert metrics["baselines"][split]["plugin_worst"]["coverage"] == pytest.approx(
            0.7, abs=TOL)
    assert [v.split(":")[0] for v in metrics["verdict"]] == ["val", "test"]
    assert all(line in e.stdout + e.stderr for line in metrics["verdict"])
    # the compat report says what the AR-GSE repository's rule would do, and why
    compat = metrics["compat"]["argse_repo"]
    assert set(compat["agreement"]) == {"val", "test"}
    if metrics["config"]["final_rule"] == "plugin":
        assert compat["agreement"]["test"] < 1.0
        assert any("margin=plugin" in r for r in compat["differs_because"])
    assert (out / "predictor.pt").is_file()


def test_area_metric_sweep_selects_by_the_coverage_free_area(env, bundles, tmp_path):
    storage = tmp_path / "runs"
    p = seltune(env, "sweep", "--data", bundles / "argse", "--metric", "worst_group_area",
                "--num-samples", 4, "--num-cpus", 2, "--storage", storage, "--name", "area",
                "--coverage", 0.6, "--set", "stageA_epochs=1", "--set", "cycles=2",
                "--set", "b1_epochs=1", "--json")
    status = json.loads(p.stdout)
    assert status["metric"] == "worst_group_area" and status["coverage"] == 0.6
    assert every_report_at(storage / "area", 0.6) >= 4
    best_area = min(m["worst_group_area"] for e in ledger(storage / "area").values()
                    for m in e["history"].values())
    assert status["best"]["metrics"]["worst_group_area"] == pytest.approx(best_area)
    assert status["baselines"]["metric"] == "worst_group_area"


def test_stage1_sweep_reports_at_its_operating_point_beside_its_baselines(env, bundles, tmp_path):
    storage = tmp_path / "runs"
    p = seltune(env, "sweep", "--trainable", "stage1", "--data", bundles / "stage1",
                "--metric", "augrc", "--num-samples", 3, "--num-cpus", 2, "--storage",
                storage, "--name", "s1", "--set", "epochs=3", "--set", "hidden_dim=32",
                "--tensorboard", "--json")
    status = json.loads(p.stdout)
    assert sum(status["counts"].values()) == 3 and status["metric"] == "augrc"
    assert status["coverage"] == 0.8
    assert every_report_at(storage / "s1", 0.8) >= 3
    for entry in ledger(storage / "s1").values():
        for m in entry["history"].values():  # each report against its own baselines
            own = min(m[f"{b}_augrc"] for b in ("msp", "doctor", "maxlogit"))
            assert m["gap_to_best_baseline"] == pytest.approx(m["augrc"] - own)
    # Tune's JSON/CSV results always, TensorBoard events because they were asked for
    for t in (storage / "s1").glob("trial_*"):
        assert (t / "result.json").is_file() and (t / "progress.csv").is_file()
        assert list(t.glob("events.out.tfevents.*"))
    out = tmp_path / "export"
    seltune(env, "export", storage / "s1", "--out", out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"msp", "doctor", "maxlogit", "softmax_confidence"} <= set(
        metrics["baselines"]["test"])
    assert metrics["test"]["coverage"] == pytest.approx(0.8, abs=0.01)
    assert metrics["verdict"] and (out / "predictor.pt").is_file()
    assert (out / "checkpoint" / "stage1_head.pth").is_file()
    ev = json.loads(seltune(env, "evaluate", out / "checkpoint", "--data", bundles / "stage1",
                            "--split", "test", "--device", "cpu", "--json").stdout)
    assert ev["metrics"] == metrics["test"]


def test_compat_sweep_exports_what_the_argse_repository_decides(env, bundles, tmp_path):
    storage = tmp_path / "runs"
    seltune(env, "sweep", "--data", bundles / "argse", "--compat", "argse-repo",
            "--num-samples", 2, "--num-cpus", 2, "--storage", storage, "--name", "repo",
            "--set", "stageA_epochs=1", "--set", "cycles=1", "--set", "b1_epochs=1")
    spec = json.loads((storage / "repo" / "seltune" / "sweep.json").read_text())
    assert spec["fixed"]["margin"] == "seed" and spec["fixed"]["fit_temperature"] is False
    out = tmp_path / "export"
    seltune(env, "export", storage / "repo", "--out", out, "--format", "argse-repo")
    compat = json.loads((out / "metrics.json").read_text())["compat"]["argse_repo"]
    assert compat["agreement"] == {"val": 1.0, "test": 1.0}
    assert compat["differs_because"] == []
    # and a warm start from it copies its finished trials as history
    seltune(env, "sweep", "--data", bundles / "argse", "--num-samples", 1, "--num-cpus", 2,
            "--storage", storage, "--name", "warm", "--warm-start", storage / "repo",
            "--compat", "argse-repo",
            "--set", "stageA_epochs=1", "--set", "cycles=1", "--set", "b1_epochs=1")
    spec = json.loads((storage / "warm" / "seltune" / "sweep.json").read_text())
    study = optuna.load_study(study_name=spec["study_name"], storage=spec["study_storage"])
    copied = [t for t in study.trials if t.user_attrs.get("warm_start_from") == "repo"]
    assert len(copied) == 2
    assert len([t for t in study.trials if "ray_trial_id" in t.user_attrs]) == 1
