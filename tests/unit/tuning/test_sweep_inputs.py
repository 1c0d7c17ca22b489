"""Bad ``seltune sweep`` input fails with one line and a non-zero exit, before Ray starts."""

from __future__ import annotations

import pytest

from tuning.cli import main


@pytest.fixture(scope="module")
def stage1_bundle(tmp_path_factory):
    from core.bundles import save_bundle
    from core.synth import synth_stage1_bundle

    path = tmp_path_factory.mktemp("b") / "stage1"
    save_bundle(synth_stage1_bundle(sizes=(200, 100, 100), dim=8), path)
    return str(path)


def fails(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("seltune: error:")
    for n in needles:
        assert n in err, err
    return err


def test_unknown_metric(capsys, tmp_path):
    fails(capsys, ["sweep", "--metric", "accuracyy", "--storage", str(tmp_path)],
          "unknown metric", "accuracyy")
    assert not any(tmp_path.iterdir())


def test_mode_against_the_metric_direction(capsys, tmp_path):
    fails(capsys, ["sweep", "--metric", "augrc", "--mode", "max", "--storage", str(tmp_path)],
          "--mode", "augrc is a min metric")


def test_bad_space_file(capsys, tmp_path, stage1_bundle):
    space = tmp_path / "space.yaml"
    space.write_text("trainable: stage1\nparams:\n  lr: {type: float, low: 0.1, high: 0.01}\n")
    fails(capsys, ["sweep", "--trainable", "stage1", "--data", stage1_bundle, "--space",
                   str(space), "--storage", str(tmp_path / "st")], "space.yaml", "lr")
    space.write_text("trainable: stage1\nparams:\n  not_a_field: {type: float, low: 0, high: 1}\n")
    fails(capsys, ["sweep", "--trainable", "stage1", "--data", stage1_bundle, "--space",
                   str(space), "--storage", str(tmp_path / "st")], "not_a_field")
    fails(capsys, ["sweep", "--trainable", "stage1", "--space", "argse-selective",
                   "--storage", str(tmp_path / "st")], "another trainable")
    assert not (tmp_path / "st").exists()


def test_missing_bundle(capsys, tmp_path):
    fails(capsys, ["sweep", "--data", str(tmp_path / "nope"), "--storage", str(tmp_path)],
          "no such bundle", "nope")


def test_wrong_bundle_kind(capsys, tmp_path, stage1_bundle):
    fails(capsys, ["sweep", "--trainable", "argse-selective", "--data", stage1_bundle,
                   "--storage", str(tmp_path)], "stage1", "argse bundle")


def test_unknown_fixed_key_and_schedule(capsys, tmp_path, stage1_bundle):
    base = ["sweep", "--trainable", "stage1", "--data", stage1_bundle, "--storage", str(tmp_path)]
    fails(capsys, [*base, "--set", "epochz=3"], "epochz")
    fails(capsys, [*base, "--set", "epochs=0"], "epochs")
    fails(capsys, [*base, "--set", "epochs=3", "--grace-period", "5"], "--grace-period", "<= --max-t (3)")
    fails(capsys, [*base, "--reduction-factor", "1"], "--reduction-factor")
    fails(capsys, [*base, "--address", "not an address"], "--address")
    fails(capsys, [*base, "--study-storage", "::nope"], "--study-storage")
    assert not any(tmp_path.iterdir())


def test_existing_name_is_refused(capsys, tmp_path, stage1_bundle):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "tuner.pkl").write_bytes(b"x")
    fails(capsys, ["sweep", "--trainable", "stage1", "--data", stage1_bundle, "--storage",
                   str(tmp_path), "--name", "taken"], "already exists", "seltune resume")
    assert (tmp_path / "taken" / "tuner.pkl").read_bytes() == b"x"


def test_resume_and_export_of_unknown_experiments(capsys, tmp_path):
    fails(capsys, ["resume", str(tmp_path / "x")], "no such experiment")
    fails(capsys, ["export", str(tmp_path / "x"), "--out", str(tmp_path / "o")],
          "no such experiment")


def test_metric_the_trainable_does_not_report(capsys, tmp_path):
    fails(capsys, ["sweep", "--metric", "ece", "--storage", str(tmp_path)],
          "not reported by argse-selective", "ece")
