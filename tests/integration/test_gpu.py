"""The CUDA paths: training, evaluation, baselines and metrics on ``cuda``, and a 2-trial
sweep with fractional GPUs. Skipped without a CUDA device (tests/conftest.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    from core.bundles import save_bundle
    from core.synth import synth_argse_bundle

    path = tmp_path_factory.mktemp("b") / "argse"
    save_bundle(synth_argse_bundle(classes=20, n_max=100, per_class=(15, 10, 20)), path)
    return path


def test_selective_training_and_evaluation_on_cuda_match_cpu(bundle_dir, tmp_path):
    import torch

    from core.argse import load_predictor, model_metrics
    from core.argse.baselines import baseline_metrics, fit_baselines
    from core.argse.config import SelectiveConfig
    from core.argse.selective import train_selective
    from core.bundles import load_bundle

    bundle = load_bundle(bundle_dir)
    cfg = SelectiveConfig(stageA_epochs=1, cycles=2, b1_epochs=1)
    result = train_selective(cfg, bundle, None, device="cuda", workdir=tmp_path / "gpu")
    pred = load_predictor(result.checkpoint_dir, device="cuda")
    assert pred.device.type == "cuda"
    test = model_metrics(pred, bundle, "test")
    assert test["coverage"] == pytest.approx(0.7, abs=0.005)
    # the same checkpoint decides the same on CPU (up to float rounding at the cut)
    cpu = model_metrics(load_predictor(result.checkpoint_dir, device="cpu"), bundle, "test")
    assert cpu["worst_group_error"] == pytest.approx(test["worst_group_error"], abs=0.02)
    base = baseline_metrics(bundle, "test", 0.7, fit_baselines(bundle))
    assert base["plugin_worst"]["coverage"] == pytest.approx(0.7, abs=0.005)
    assert torch.cuda.is_available()


@pytest.mark.integration
def test_two_trial_sweep_with_fractional_gpus(bundle_dir, tmp_path):
    ray_tmp = tempfile.mkdtemp(prefix="st-gpu-", dir="/tmp")
    env = dict(os.environ, RAY_TMPDIR=ray_tmp, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT),
               RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    try:
        p = subprocess.run(
            [sys.executable, "-m", "tuning.cli", "sweep", "--data", str(bundle_dir),
             "--num-samples", "2", "--gpus-per-trial", "0.5", "--device", "cuda",
             "--storage", str(tmp_path / "runs"), "--name", "gpu", "--set", "cycles=1",
             "--set", "stageA_epochs=1", "--set", "b1_epochs=1", "--json"],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
        status = json.loads(p.stdout)
        assert sum(status["counts"].values()) == 2
        assert all(abs(t["metrics"]["coverage"] - 0.7) <= 0.005 for t in status["trials"])
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_baselines_and_chunked_metrics_on_cuda_match_cpu(bundle_dir):
    """The chunked passes (temperatures, posteriors, grouped summaries) on ``cuda``:
    the same plug-in parameters and baseline metrics as on the CPU (to rounding)."""
    from core.argse.baselines import baseline_metrics, fit_baselines
    from core.bundles import load_bundle

    bundle = load_bundle(bundle_dir)
    gpu = fit_baselines(bundle, device="cuda")
    cpu = fit_baselines(bundle, device="cpu")
    assert gpu.device.type == "cuda"
    assert gpu.temperatures == pytest.approx(cpu.temperatures, rel=1e-5)
    for split in ("val", "test"):
        g = baseline_metrics(bundle, split, 0.7, gpu)
        c = baseline_metrics(bundle, split, 0.7, cpu)
        for name in ("chow:mixture", "plugin_balanced", "plugin_worst"):
            assert g[name]["worst_group_error"] == pytest.approx(
                c[name]["worst_group_error"], abs=0.02), (split, name)
            assert g[name]["coverage"] == pytest.approx(0.7, abs=0.005)
