"""The whole CLI path at ImageNet-LT's class count (issue 12), CI-sized.

C = 1000 classes, E = 3 experts, K = 2 groups, a few thousand rows: ``data import`` of
the AR-GSE layout -> ``train argse-selective`` -> a 2-trial ``sweep`` -> ``export`` ->
``evaluate``. Every number the commands print for a model or a plug-in baseline is
recomputed here with the direct O(N·C) rule (``direct_margin_and_prediction`` on the
full posterior), which must give the same predictions and the same metrics as the
O(N·K) grouped evaluator the commands use.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_env import private_env, run_seltune

pytestmark = pytest.mark.integration

C, E = 1000, 3
ROWS = {"tunev": 1500, "val": 800, "test": 1200}
EXPERTS = ("ce", "logitadjust", "balsoftmax")
# a short schedule: the path is under test, not the method's quality
SHORT = ("--set", "stageA_epochs=2", "--set", "cycles=1", "--set", "batch_size=256")


@pytest.fixture(scope="module")
def env():
    yield from private_env("st-scale-")


def _write_layout(root: Path) -> Path:
    """The AR-GSE repository's layout: DIR/<expert>/<split>_logits.npy [N, C],
    DIR/<split>_labels.npy, DIR/class_counts.json (ImageNet-LT's IF 256 profile)."""
    rng = np.random.default_rng(0)
    counts = np.maximum(np.floor(1280 * 256.0 ** (-np.arange(C) / (C - 1))), 1).astype(int)
    log_prior = np.log(counts / counts.sum()).astype(np.float32)
    root.mkdir(parents=True)
    (root / "class_counts.json").write_text(json.dumps(counts.tolist()))
    for name in EXPERTS:
        (root / name).mkdir(parents=True)
    for split, n in ROWS.items():
        y = rng.integers(0, C, n)
        np.save(root / f"{split}_labels.npy", y)
        for e, name in enumerate(EXPERTS):
            x = rng.standard_normal((n, C), dtype=np.float32)
            x[np.arange(n), y] += rng.uniform(1.0, 6.0, n).astype(np.float32)
            x += (0.5, 0.0, -0.1)[e] * log_prior
            np.save(root / name / f"{split}_logits.npy", x)
    return root


def _direct_metrics(predictor, bundle, split: str, coverage: float) -> dict[str, float]:
    """The model's metrics with the O(N·C) rule on the full posterior."""
    import torch

    from core.argse.data import split_tensors
    from core.argse.evaluation import selective_metrics
    from core.argse.margins import direct_margin_and_prediction

    logits, labels = split_tensors(bundle, split)
    eta = predictor.posterior(logits)
    c2g = predictor.class_to_group
    m, pred = direct_margin_and_prediction(eta, predictor.alpha, predictor.mu, c2g,
                                           predictor.margin_variant)
    got_pred, _, got_m, _ = predictor.decide(logits)
    assert torch.equal(pred, got_pred)  # same class for every row
    torch.testing.assert_close(m, got_m, rtol=0, atol=1e-5)
    conf = m - predictor.t[c2g[pred]]
    out = selective_metrics(conf, pred, labels, c2g, predictor.num_groups, accept=conf > 0,
                            coverage=coverage)
    out["deployed_coverage"] = float((conf > 0).double().mean())
    return out


def _direct_baselines(bundle, split: str, coverage: float) -> dict[str, dict[str, float]]:
    """Plug-in[Balanced]/[Worst] on ``split`` with the direct O(N·C) rule."""
    from core.argse import baselines as B
    from core.argse.margins import direct_margin_and_prediction

    fitted = B.fit_baselines(bundle)
    B.baseline_rules(bundle, split, coverage, fitted)  # fits the plug-in parameters
    logits, labels = B.split_tensors(bundle, split)
    eta = B._probs(logits, fitted.temperatures).mean(1).double()
    out = {}
    for objective in ("balanced", "worst"):
        alpha, mu = fitted.plugin[(objective, round(coverage, 4))]
        m, pred = direct_margin_and_prediction(eta, alpha.double(), mu.double(),
                                               fitted.class_to_group, "plugin")
        out[f"plugin_{objective}"] = B.selective_metrics(
            B.coverage_confidence(m, coverage), pred, labels, fitted.class_to_group,
            fitted.num_groups)
    return out


def _same(got: dict, ref: dict) -> None:
    # float32 posteriors: the grouped and the direct margin differ by rounding, which
    # may move one row across the coverage cut (1/800 of a split at most here)
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, abs=2.5e-3), key


def test_import_train_sweep_export_evaluate_at_c1000(env, tmp_path):
    from core.argse import load_predictor
    from core.bundles import load_expert_bundle

    src = _write_layout(tmp_path / "src")
    data = tmp_path / "bundle"
    run_seltune(env, "data", "import", "--kind", "argse", "--from", src, "--out", data,
                "--json")
    bundle = load_expert_bundle(data)
    assert bundle.num_classes == C and bundle.num_groups == 2
    assert {n: len(s) for n, s in bundle.splits.items()} == ROWS

    train = json.loads(run_seltune(env, "train", "argse-selective", "--data", data, "--out",
                                   tmp_path / "train", *SHORT, "--json").stdout)
    cov = train["config"]["eval_coverage"]
    pred = load_predictor(train["checkpoint"], device="cpu")
    for split in ("val", "test"):
        _same(train[split], _direct_metrics(pred, bundle, split, cov))
        _same(train["baselines"][split]["plugin_worst"],
              _direct_baselines(bundle, split, cov)["plugin_worst"])
    _same(train["baselines"]["test"]["plugin_balanced"],
          _direct_baselines(bundle, "test", cov)["plugin_balanced"])

    runs = tmp_path / "runs"
    run_seltune(env, "sweep", "--data", data, "--num-samples", 2, "--max-concurrent", 2,
                "--storage", runs, "--name", "scale", *SHORT, "--json", timeout=400)
    run_seltune(env, "export", "scale", "--storage", runs, "--out", tmp_path / "best",
                "--json")
    export = json.loads((tmp_path / "best" / "metrics.json").read_text())
    best = load_predictor(tmp_path / "best" / "checkpoint", device="cpu")
    ecov = export["config"]["eval_coverage"]
    _same(export["test"], _direct_metrics(best, bundle, "test", ecov))

    ev = json.loads(run_seltune(env, "evaluate", tmp_path / "best", "--data", data,
                                "--split", "test", "--json").stdout)
    metrics = ev.get("metrics", ev)
    _same(metrics, _direct_metrics(best, bundle, "test", ecov))
