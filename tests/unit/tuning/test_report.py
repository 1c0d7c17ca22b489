"""The export report (tuning/results/html_report.py), built without Ray.

The inputs are what export hands ``write_report``: the per-sample scores of a real
AR-GSE checkpoint from ``train_selective`` (one Stage-A epoch, one cycle) on a tiny
expert bundle, a small Optuna study in SQLite, and the ``status`` / ``ledger`` /
``result`` records (read from dicts in the JSON shapes status and export write). :func:`build_report_inputs` is also used by
``tests/integration/test_report_browser.py``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.bundles import ExpertBundle, ExpertSplit
from tuning.experiment.records import ExportMetrics, Ledger, SweepStatus
from tuning.experiment.spec import SweepSpec
from tuning.results import html_report as R
from tuning.trainables import get_trainable
from tuning.trainables.base import RuleScores

COVERAGE = 0.7


def make_expert_bundle(n: int = 240, num_classes: int = 8, num_experts: int = 2,
                       seed: int = 0) -> ExpertBundle:
    """Long-tailed toy expert logits, two groups (head / tail), informative experts."""
    rng = np.random.default_rng(seed)
    counts = np.maximum((400 * 0.6 ** np.arange(num_classes)).astype(np.int64), 1)
    boundary = int(np.sort(counts)[num_classes // 2])
    c2g = (counts <= boundary).astype(np.int64)
    prior = counts / counts.sum()
    splits = {}
    for name in ("tunev", "val", "test"):
        y = rng.choice(num_classes, size=n, p=0.5 * prior + 0.5 / num_classes)
        logits = rng.normal(0, 1.0, size=(n, num_experts, num_classes)).astype(np.float32)
        logits[np.arange(n), :, y] += rng.uniform(0.3, 3.0, size=(n, num_experts))
        logits[:, 0, :] += 0.3 * np.log(prior + 1e-3).astype(np.float32)[None, :]
        splits[name] = ExpertSplit(logits=logits, labels=y.astype(np.int64))
    return ExpertBundle(expert_names=("ce_baseline", "balsoftmax_baseline")[:num_experts],
                        class_counts=counts, class_to_group=c2g, splits=splits,
                        group_boundaries=(boundary,))


def make_study(storage: str, name: str, complete: int, pruned: int = 2) -> None:
    """An Optuna study with ``complete`` COMPLETE and ``pruned`` PRUNED trials over two
    parameters, values as a sweep of worst-group errors would look."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=storage, direction="minimize")
    dist = {"lr": FloatDistribution(1e-4, 1e-1, log=True),
            "hidden": CategoricalDistribution([16, 32, 64])}
    rng = np.random.default_rng(1)
    for i in range(complete + pruned):
        lr = float(10 ** rng.uniform(-4, -1))
        params = {"lr": lr, "hidden": [16, 32, 64][i % 3]}
        value = 0.2 + 0.05 * abs(math.log10(lr) + 2.5) + 0.01 * (i % 3)
        if i < complete:
            study.add_trial(create_trial(params=params, distributions=dist, value=value))
        else:
            study.add_trial(create_trial(params=params, distributions=dist,
                                         state=TrialState.PRUNED,
                                         intermediate_values={1: value + 0.1}))


def make_spec(tmp: Path, study_storage: str, **kw: Any) -> SweepSpec:
    base: dict[str, Any] = dict(
        name="exp", storage=str(tmp), trainable="argse-selective", data="/data/bundle",
        space={"trainable": "argse-selective", "params": [], "fixed": {}},
        space_source="argse-selective", fixed={"cycles": 1}, metrics=["worst_group_error"],
        modes=["min"], num_samples=8, max_concurrent=0,
        scheduler={"kind": "asha", "grace_period": 1, "max_t": 2, "reduction_factor": 3.0},
        cpus_per_trial=1.0, gpus_per_trial=0.0, device="cpu", seed=0,
        study_storage=study_storage, study_name="exp")
    base.update(kw)
    return SweepSpec(**base)


def make_trials(n: int, baselines: dict[str, dict[str, float]]
                ) -> tuple[SweepStatus, Ledger]:
    """``(status, ledger)`` of ``n`` trials: finished, ASHA-stopped and one error, each
    with two reported iterations near the operating coverage, plus the sweep's
    baselines in ``status.baselines`` (read from the JSON shapes status and the
    ledger write)."""
    rng = np.random.default_rng(2)
    kinds = ["TERMINATED", "STOPPED", "TERMINATED", "STOPPED", "ERROR", "TERMINATED"]
    best_name = min(baselines, key=lambda k: baselines[k]["worst_group_error"])
    best_value = baselines[best_name]["worst_group_error"]
    trials, ledger, counts = [], {}, {}
    for i in range(n):
        tid = f"t{i:02d}"
        status = kinds[i % len(kinds)]
        counts[status] = counts.get(status, 0) + 1
        config = {"lr": float(10 ** rng.uniform(-4, -1)), "hidden": [16, 32, 64][i % 3],
                  # a long value: the trials table must wrap or scroll, not widen the page
                  "tau_groups": [round(float(x), 3) for x in rng.uniform(0.5, 0.9, 6)]}
        history = {}
        for it in (1, 2):
            wge = float(0.18 + 0.1 * rng.random())
            history[str(it)] = {
                "worst_group_error": wge, "balanced_error": wge * 0.8,
                "coverage": COVERAGE + float(rng.uniform(-0.004, 0.004)),
                "coverage_gap": float(rng.uniform(0, 0.004)),
                "worst_group_area": wge + 0.05, "balanced_area": wge * 0.8 + 0.04,
                "augrc": 0.05 + 0.01 * rng.random(), "aurc": 0.1,
                "gap_to_best_baseline": wge - best_value,
                "training_iteration": it, "checkpoint_dir_name": f"checkpoint_{it:06d}"}
        iters = 2 if status != "STOPPED" else 1
        history = {k: v for k, v in history.items() if int(k) <= iters}
        trials.append({"trial_id": tid, "status": status, "config": config,
                       "metrics": history[str(iters)], "iterations": iters})
        ledger[tid] = {"trial_id": tid, "config": config, "history": history,
                       "iterations": iters, "order": i}
    status_obj = {"name": "exp", "path": "/x/exp", "metric": "worst_group_error",
                  "mode": "min", "counts": counts, "trials": trials,
                  "baselines": {"coverage": COVERAGE, "split": "val",
                                "metric": "worst_group_error", "values": baselines,
                                "best": {"name": best_name, "value": best_value}}}
    return SweepStatus.from_dict(status_obj), Ledger.from_dict({"trials": ledger})


def build_report_inputs(tmp: Path, *, complete: int = 6, n_trials: int = 9) -> dict[str, Any]:
    """Everything ``write_report`` takes, as keyword arguments (module docstring)."""
    from core.argse import SelectiveConfig, load_predictor, model_metrics, train_selective
    from core.argse.baselines import baseline_metrics
    from tuning.trainables.argse import fitted_baselines

    tmp.mkdir(parents=True, exist_ok=True)
    bundle = make_expert_bundle()
    res = train_selective(SelectiveConfig(stageA_epochs=1, cycles=1, b1_epochs=1,
                                          batch_size=64, hidden_dims=(16,),
                                          target_coverage=COVERAGE, mu_grid_points=11),
                          bundle, device="cpu", workdir=tmp / "train")
    ckpt = Path(res.checkpoint_dir)
    storage = f"sqlite:///{tmp / 'study.db'}"
    make_study(storage, "exp", complete)
    spec = make_spec(tmp, storage)
    spec.coverage = COVERAGE  # type: ignore[attr-defined]  # being added to SweepSpec
    predictor = load_predictor(ckpt, "cpu")
    fitted = fitted_baselines(bundle)
    result: dict[str, Any] = {"baselines": {}}
    for split in ("val", "test"):
        result[split] = model_metrics(predictor, bundle, split)
        result["baselines"][split] = baseline_metrics(bundle, split, COVERAGE, fitted)
    status, ledger = make_trials(n_trials, result["baselines"]["val"])
    result.update(config={"lr": 0.01}, checkpoint=str(ckpt), trial_id="t02", iteration=2,
                  selection={"metric": "worst_group_error", "mode": "min",
                             "value": ledger.trials["t02"].history["2"][
                                 "worst_group_error"], "experiment": "/x/exp"})

    def rule_scores(split: str, coverage: float) -> RuleScores:  # as export scores
        return get_trainable("argse-selective").rule_scores(
            bundle, ckpt, split, coverage=coverage, device="cpu", baselines=())

    return dict(spec=spec, status=status, ledger=ledger, result=ExportMetrics.from_dict(result),
                rule_scores=rule_scores, pareto=None, metric="worst_group_error", mode="min")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return build_report_inputs(tmp_path_factory.mktemp("report-inputs"))


class _Tables(HTMLParser):
    """Counts tables and how many of them sit inside a ``.table-wrap`` element."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[bool] = []
        self.tables = self.wrapped = self.imgs = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs += 1
            return
        if tag == "table":
            self.tables += 1
            self.wrapped += any(self.stack)
        self.stack.append("table-wrap" in (a.get("class") or "").split())

    def handle_endtag(self, tag):
        if tag != "img" and self.stack:
            self.stack.pop()


# --------------------------------------------------------------------------- formatting
@pytest.mark.parametrize("value,text", [
    (0.0, "0"), (0, "0"), (-0.0, "0"), (0.21549, "0.2155"), (0.5, "0.5"), (1.0, "1"),
    (1.234e-5, "1.234e-05"), (4e-5, "4.000e-05"), (0.00099, "9.900e-04"),
    (0.001, "0.001"), (-3.2e-7, "-3.200e-07"), (123456.0, "1.235e+05"), (12, "12"),
    (np.float32(0.25), "0.25"), (np.int64(7), "7"), (None, "-"), (math.nan, "-"),
    (math.inf, "inf"), ("chow:mixture", "chow:mixture"), (True, "True"),
])
def test_fmt_four_significant_digits_scientific_when_small(value, text):
    assert R.fmt(value) == text


def test_fmt_never_prints_a_nonzero_number_as_zero():
    for v in np.concatenate([np.logspace(-12, 4, 200), -np.logspace(-12, 4, 50)]):
        text = R.fmt(float(v))
        assert float(text) != 0.0, (v, text)
        assert not re.fullmatch(r"-?0\.0+", text), (v, text)
        assert math.isclose(float(text), float(v), rel_tol=1e-3)


def test_fmt_signed_marks_positive_gaps():
    assert R.fmt_signed(0.0123) == "+0.0123"
    assert R.fmt_signed(-0.0123) == "-0.0123"
    assert R.fmt_signed(0.0) == "0"


def test_metric_value_prefers_new_area_names_and_reads_old_ones():
    names = ("worst_group_area", "area_worst_group_error")
    assert R.metric_value({"area_worst_group_error": 0.3}, names) == 0.3
    assert R.metric_value({"worst_group_area": 0.2, "area_worst_group_error": 0.3},
                          names) == 0.2
    assert R.metric_value({"worst_group_area": math.nan}, names) is None


# --------------------------------------------------------------------------- tables
def test_tables_fit_the_page_inside_a_scrolling_wrapper():
    cols = [f"a_very_long_parameter_name_{i}" for i in range(30)]
    html_text = R.table_html(["trial", *cols], [["t0", *range(30)]])
    assert html_text.startswith("<div class='table-wrap'><table>")
    assert html_text.endswith("</table></div>")
    css = R.CSS.replace(" ", "").replace("\n", "")
    assert ".table-wrap{max-width:100%;overflow-x:auto" in css
    assert "img{display:block;max-width:100%" in css


def test_report_tables_are_all_wrapped_and_numbers_formatted(inputs, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="seltune.report")
    path = R.write_report(tmp_path, **inputs)
    text = path.read_text()
    parsed = _Tables()
    parsed.feed(text)
    assert parsed.tables >= 4
    assert parsed.wrapped == parsed.tables
    assert not re.search(r">-?0\.0000<", text)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


# --------------------------------------------------------------------------- the report
def test_report_draws_every_section_with_baselines_and_operating_point(inputs, tmp_path):
    path = R.write_report(tmp_path, **inputs)
    text = path.read_text()
    assert "could not be drawn" not in text
    for png in ("group_error_curves", "risk_coverage", "trials", "history", "importances"):
        data = (tmp_path / R.REPORT_DIR / f"{png}.png").read_bytes()
        assert data.startswith(b"\x89PNG"), png
    parsed = _Tables()
    parsed.feed(text)
    assert parsed.imgs == 5
    assert "C = 0.7" in text
    for label in ("Chow [", "(best expert on val)", "Chow [mixture]", "Plug-in [Balanced]",
                  "Plug-in [Worst]", "tuned model (trial t02)"):
        assert label in text, label
    assert "FanovaImportanceEvaluator" in text
    # no verdict from export: one line per baseline, computed on test
    # best expert, mixture, the two plug-ins
    assert text.count("test worst_group_error: tuned model") == 4
    assert re.search(r"(beats it|does not beat it)</li>", text)


def test_report_shows_the_verdict_lines_export_gives(inputs, tmp_path):
    result = dataclasses.replace(inputs["result"],
                                 verdict=["val: beats Plug-in[Worst] (0.2 vs 0.21)",
                                          "test: does not beat Plug-in[Worst] (0.22 vs 0.21)"])
    text = R.write_report(tmp_path, **{**inputs, "result": result}).read_text()
    assert "<li>test: does not beat Plug-in[Worst] (0.22 vs 0.21)</li>" in text
    assert "verdict from export" in text
    assert "test worst_group_error: tuned model" not in text


def test_verdict_gap_is_model_minus_baseline():
    rows = [("Plug-in [Worst]", "plugin_worst", {"worst_group_error": 0.21}),
            ("Chow [mixture]", "chow:mixture", {"worst_group_error": 0.30})]
    lines, _ = R.verdict_lines(ExportMetrics(test={"worst_group_error": 0.25}), rows,
                               "worst_group_error", "min", "test")
    assert lines[0].endswith("(gap +0.04): does not beat it")
    assert lines[1].endswith("(gap -0.05): beats it")


def test_old_experiment_uses_val_coverage_and_old_area_names(inputs, tmp_path):
    spec = make_spec(tmp_path, inputs["spec"].study_storage)  # no .coverage attribute
    old_test = {("area_" + k[:-5] + "_error" if k.endswith("_area") else k): v
                for k, v in inputs["result"].test.items()}
    result = dataclasses.replace(inputs["result"], test=old_test)
    assert "area_worst_group_error" in result.test
    status = dataclasses.replace(inputs["status"], baselines=None)
    text = R.write_report(tmp_path, **{**inputs, "spec": spec, "result": result,
                                       "status": status}).read_text()
    assert "old experiment without an operating point" in text
    assert f"C = {R.fmt(result.val['coverage'])}" in text
    model_row = re.search(r"<tr class='model'>(.*?)</tr>", text).group(1)
    assert R.fmt(result.test["area_worst_group_error"]) in model_row
    assert "export&#x27;s val baselines" in text
    assert "could not be drawn" not in text


def test_importances_need_five_complete_trials(tmp_path):
    import optuna

    storage = f"sqlite:///{tmp_path / 's.db'}"
    make_study(storage, "few", complete=R.MIN_COMPLETE_FOR_IMPORTANCES - 1, pruned=3)
    spec = make_spec(tmp_path, storage, study_name="few")
    study = optuna.load_study(study_name="few", storage=storage)
    text = R.importances_section(study, spec, tmp_path / "imp.png")
    assert "from 5 complete trials on; this study has 4 complete and 3 pruned" in text
    assert "<img" not in text and not (tmp_path / "imp.png").exists()

    make_study(storage, "enough", complete=R.MIN_COMPLETE_FOR_IMPORTANCES)
    study = optuna.load_study(study_name="enough", storage=storage)
    text = R.importances_section(study, spec, tmp_path / "imp.png")
    assert "optuna.importance.FanovaImportanceEvaluator(seed=0)" in text
    assert "<img" in text and (tmp_path / "imp.png").is_file()


def test_a_section_that_fails_is_logged_with_traceback_and_noted(inputs, tmp_path, caplog):
    caplog.set_level(logging.ERROR, logger="seltune.report")
    spec = make_spec(tmp_path, f"sqlite:///{tmp_path / 'missing.db'}", study_name="nope")
    spec.coverage = COVERAGE  # type: ignore[attr-defined]
    text = R.write_report(tmp_path, **{**inputs, "spec": spec}).read_text()
    assert "the optimisation history could not be drawn: KeyError" in text
    assert "parameter importances need the study, which was not read" in text
    failed = [r for r in caplog.records if r.name == "seltune.report"]
    assert len(failed) == 1 and failed[0].exc_info is not None
    assert "optimisation history" in failed[0].getMessage()
    assert (tmp_path / R.REPORT_DIR / "group_error_curves.png").is_file()  # the rest drawn


def test_a_failed_section_reaches_stderr_with_its_traceback():
    """During an export (``logged_to_stderr``) the traceback is on stderr, the note in
    the page; with logging configured by the application it goes there instead."""
    code = ("import logging\n"
            "from tuning.results import html_report as R\n"
            "def boom():\n"
            "    raise ZeroDivisionError('no curves today')\n"
            "with R.logged_to_stderr():\n"
            "    print(R.guarded('the curves', boom))\n"
            "assert R.log.handlers == []  # removed again afterwards\n"
            "logging.basicConfig(format='app: %(message)s')\n"
            "with R.logged_to_stderr():\n"
            "    R.guarded('the table', boom)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, cwd=Path(__file__).resolve().parents[3])
    assert p.returncode == 0, p.stderr
    assert "the curves could not be drawn: ZeroDivisionError: no curves today" in p.stdout
    assert ("[seltune] ERROR seltune.report: report: section 'the curves' could not be "
            "drawn") in p.stderr
    assert "Traceback (most recent call last)" in p.stderr and "in boom" in p.stderr
    assert "app: report: section 'the table' could not be drawn" in p.stderr
    assert "[seltune] ERROR seltune.report: report: section 'the table'" not in p.stderr


def test_report_curves_use_the_rules_export_scores():
    """The rules the report draws are the rules export's numbers come from."""
    from core.argse.baselines import baseline_metrics, baseline_rules
    from core.argse.evaluation import selective_metrics
    from tuning.trainables.argse import fitted_baselines

    bundle = make_expert_bundle()  # the report inputs' bundle
    fitted = fitted_baselines(bundle)
    rules = baseline_rules(bundle, "test", COVERAGE, fitted)
    expected = baseline_metrics(bundle, "test", COVERAGE, fitted)
    assert set(rules) == set(expected)
    labels = bundle.splits["test"].labels
    for name, (conf, pred) in rules.items():
        got = selective_metrics(conf, pred, labels, bundle.class_to_group, bundle.num_groups)
        for key in ("worst_group_error", "balanced_error", "coverage"):
            assert got[key] == pytest.approx(expected[name][key]), (name, key)


def test_trial_points_take_coverage_at_the_best_iteration(inputs):
    points = R.trial_points(inputs["status"], inputs["ledger"], "worst_group_error", "min")
    assert len(points) == len(inputs["status"].trials)
    for p in points:
        hist = inputs["ledger"].trials[p.trial_id].history
        best = min(hist.values(), key=lambda m: m["worst_group_error"])
        assert p.objective == best["worst_group_error"]
        assert p.coverage == best["coverage"]


def make_feature_bundle(seed: int = 0):
    """A two-class Stage-1 feature bundle with two sample groups."""
    from core.bundles import FeatureBundle, FeatureSplit

    rng = np.random.default_rng(seed)
    w = rng.normal(size=(8, 2))
    splits = {}
    for name, m in (("train", 400), ("val", 240), ("test", 200)):
        x = rng.normal(size=(m, 8)).astype(np.float32)
        y = np.argmax(x @ w + rng.normal(size=(m, 2)) * 1.5, axis=1)
        splits[name] = FeatureSplit(x, y, (x[:, 0] > 0.8).astype(np.int64))
    return FeatureBundle(num_classes=2, splits=splits, group_names=("main", "edge"))


def test_stage1_report_draws_the_exit_score_against_its_baselines(tmp_path):
    from core.stage1 import evaluate_checkpoint, train_stage1

    bundle = make_feature_bundle()
    res = train_stage1({"epochs": 2, "hidden_dim": 16, "batch_size": 64,
                        "early_stop_patience": 0}, bundle, None, device="cpu")
    ckpt = tmp_path / "checkpoint"
    res.save(ckpt)
    result: dict[str, Any] = {"baselines": {}, "trial_id": "t00", "iteration": 2}
    for split in ("val", "test"):
        r = evaluate_checkpoint(ckpt, bundle, split, "cpu")
        result[split], result["baselines"][split] = r["metrics"], r["baselines"]
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    make_study(storage, "exp", complete=2)
    spec = make_spec(tmp_path, storage, trainable="stage1", fixed={})
    spec.coverage = 0.8  # type: ignore[attr-defined]
    status, ledger = make_trials(3, {n: {"worst_group_error": m["worst_group_error"]}
                                     for n, m in result["baselines"]["val"].items()})
    names = list(result["baselines"]["test"])
    text = R.write_report(tmp_path / "out", spec=spec, status=status, ledger=ledger,
                          result=ExportMetrics.from_dict(result),
                          rule_scores=lambda split, c: get_trainable("stage1").rule_scores(
                              bundle, ckpt, split, coverage=c, device="cpu", baselines=names),
                          pareto=None, metric="worst_group_error", mode="min").read_text()
    assert "could not be drawn" not in text
    assert (tmp_path / "out" / R.REPORT_DIR / "group_error_curves.png").is_file()
    assert "tuned model (trial t00)" in text
    assert "from 5 complete trials on; this study has 2 complete" in text
    assert "no exit score known to the report" not in text  # every baseline drawn
    for name in result["baselines"]["test"]:
        assert R.PAPER_LABELS.get(name, name) in text
