"""``seltune train argse-*`` / ``seltune evaluate`` end to end, in-process (no Ray)."""

import json

import pytest

from core.bundles import save_bundle
from tuning.cli import main

from .conftest import make_bundle

FAST = ["--set", "stageA_epochs=1", "--set", "cycles=1", "--set", "b1_epochs=1",
        "--set", "hidden_dims=[16]", "--set", "target_coverage=0.7", "--set", "batch_size=64"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("argse-cli")
    save_bundle(make_bundle(num_experts=2, num_classes=10, n=160), root / "bundle")
    save_bundle(make_bundle(num_experts=3, num_classes=10, n=60), root / "other")
    return root


def test_train_then_evaluate_gives_identical_metrics(data, capsys):
    out = data / "sel"
    assert main(["train", "argse-selective", "--data", str(data / "bundle"), "--out", str(out),
                 "--device", "cpu", "--json", *FAST]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res) == {"val", "test", "baselines", "verdict", "config", "checkpoint"}
    assert [line.split(":")[0] for line in res["verdict"]] == ["val", "test"]
    assert set(res["baselines"]["test"]) == {"chow:ce_baseline", "chow:logitadjust_baseline",
                                             "chow:mixture", "plugin_balanced", "plugin_worst"}
    assert res["config"]["target_coverage"] == 0.7
    for name in ("gating_selective.ckpt", "selective_training_logs.json", "config.json",
                 "metrics.json"):
        assert (out / name).is_file()
    assert main(["evaluate", str(out), "--data", str(data / "bundle"), "--split", "test",
                 "--device", "cpu", "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["split"] == "test" and ev["metrics"] == res["test"]
    # refuses to overwrite without --overwrite
    assert main(["train", "argse-selective", "--data", str(data / "bundle"), "--out", str(out),
                 "--device", "cpu", *FAST]) == 2


def test_pretrain_table(data, capsys):
    out = data / "pre"
    assert main(["train", "argse-pretrain", "--data", str(data / "bundle"), "--out", str(out),
                 "--device", "cpu", "--set", "epochs=1", "--set", "hidden_dims=[8]"]) == 0
    text = capsys.readouterr().out
    assert "trained model vs baselines" in text and "plugin_" in text and "chow:" in text
    assert (out / "gating_pretrained.ckpt").is_file()


@pytest.mark.parametrize("override,needle", [
    ("nope=1", "unknown config key"),
    ("target_coverage=1.5", "target_coverage"),
    ("kappa=0", "kappa"),
    ("lambda_cov=-1", "lambda_cov"),
    ("alpha_min=1.2", "alpha_min"),
])
def test_bad_config_is_one_line(data, capsys, override, needle):
    rc = main(["train", "argse-selective", "--data", str(data / "bundle"), "--out",
               str(data / "never"), "--set", override])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and needle in err and len(err.splitlines()) == 1
    assert not (data / "never").exists()


def test_evaluate_mismatched_bundle_is_one_line(data, capsys):
    out = data / "pre2"
    assert main(["train", "argse-pretrain", "--data", str(data / "bundle"), "--out", str(out),
                 "--device", "cpu", "--json", "--set", "epochs=1"]) == 0
    capsys.readouterr()
    rc = main(["evaluate", str(out / "gating_pretrained.ckpt"), "--data", str(data / "other"),
               "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "E=3" in err and "E=2" in err
