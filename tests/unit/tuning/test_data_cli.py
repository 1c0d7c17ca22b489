"""``seltune data``: synth / import / inspect through the CLI, and every bad input.

Each bad input must give exactly one line on stderr, a non-zero exit, no traceback
and no output directory.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core.bundles import load_expert_bundle, load_feature_bundle
from tuning.cli import main

C = 6
COUNTS = [100, 60, 30, 15, 8, 3]
SPLIT_ROWS = {"tunev": 10, "val": 8, "test": 12}


def make_argse_dir(root, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    (root / "class_counts.json").write_text(json.dumps(COUNTS))
    for split, n in SPLIT_ROWS.items():
        np.save(root / f"{split}_labels.npy", rng.integers(0, C, n))
        for expert in ("ce", "logit_adjust", "balanced_softmax"):
            (root / expert).mkdir(exist_ok=True)
            np.save(root / expert / f"{split}_logits.npy",
                    rng.standard_normal((n, C)).astype(np.float32))
    return root


def make_stage1_dir(root, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for split, n in (("train", 30), ("val", 10), ("test", 10)):
        np.savez(root / f"{split}.npz", features=rng.standard_normal((n, 4)).astype(np.float32),
                 labels=rng.integers(0, 2, n), group=rng.integers(0, 2, n))
    return root


def run_json(capsys, argv):
    rc = main(argv)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    return json.loads(captured.out)


def assert_one_line_error(capsys, argv, out_path, match):
    rc = main(argv)
    captured = capsys.readouterr()
    assert rc != 0
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("seltune: error: ")
    assert "Traceback" not in captured.err
    assert match in lines[0], lines[0]
    assert not out_path.exists()
    assert not any(p.name.startswith(f".{out_path.name}.") for p in out_path.parent.iterdir())


# --------------------------------------------------------------------------- happy paths


def test_synth_argse_and_inspect_json(tmp_path, capsys):
    out = tmp_path / "b"
    summary = run_json(capsys, ["data", "synth", "--kind", "argse", "--out", str(out),
                                "--classes", "20", "--seed", "1", "--json"])
    bundle = load_expert_bundle(out)
    assert bundle.num_classes == 20 and bundle.expert_names == (
        "ce", "logit_adjust", "balanced_softmax")
    inspected = run_json(capsys, ["data", "inspect", str(out), "--json"])
    assert inspected == summary  # synth --json prints the inspect object of what it wrote
    for key in ("kind", "num_classes", "experts", "class_counts", "class_to_group", "splits"):
        assert key in inspected
    assert inspected["kind"] == "argse" and inspected["num_classes"] == 20
    assert inspected["experts"] == ["ce", "logit_adjust", "balanced_softmax"]
    assert len(inspected["class_counts"]) == 20 and len(inspected["class_to_group"]) == 20
    assert set(inspected["splits"]) == {"tunev", "val", "test"}
    test = inspected["splits"]["test"]
    assert test["n"] == 1000
    for name in inspected["experts"]:
        m = test["experts"][name]
        assert set(m) >= {"accuracy", "balanced_accuracy", "worst_group_accuracy",
                          "group_accuracy"}
        assert len(m["group_accuracy"]) == 2
        assert m["worst_group_accuracy"] == min(m["group_accuracy"])
    # the head/tail gap is visible in the report
    ce, la = test["experts"]["ce"]["group_accuracy"], test["experts"]["logit_adjust"]["group_accuracy"]
    assert ce[0] > la[0] and ce[1] < la[1]


def test_inspect_table_shows_head_and_tail(tmp_path, capsys):
    out = tmp_path / "b"
    assert main(["data", "synth", "--out", str(out), "--classes", "20"]) == 0
    capsys.readouterr()
    assert main(["data", "inspect", str(out)]) == 0
    text = capsys.readouterr().out
    for word in ("tunev", "val", "test", "head", "tail", "ce", "logit_adjust", "worst"):
        assert word in text


def test_synth_stage1_and_group_boundaries(tmp_path, capsys):
    s = run_json(capsys, ["data", "synth", "--kind", "stage1", "--out", str(tmp_path / "s"),
                          "--json"])
    assert s["kind"] == "stage1" and s["experts"] == [] and s["num_classes"] == 2
    assert s["splits"]["train"]["n"] == 6000
    assert load_feature_bundle(tmp_path / "s").feature_dim == 64
    k3 = run_json(capsys, ["data", "synth", "--out", str(tmp_path / "k3"), "--classes", "20",
                           "--group-boundaries", "20,100", "--experts", "ce,balanced_softmax",
                           "--json"])
    assert k3["num_groups"] == 3 and k3["experts"] == ["ce", "balanced_softmax"]
    assert len(k3["splits"]["val"]["experts"]["ce"]["group_accuracy"]) == 3


def test_synth_digits_example(tmp_path, capsys):
    s = run_json(capsys, ["data", "synth", "--kind", "digits", "--out", str(tmp_path / "d"),
                          "--json"])
    assert s["num_classes"] == 10 and s["class_counts"][0] == 100


def test_import_argse_and_stage1(tmp_path, capsys):
    src = make_argse_dir(tmp_path / "src")
    s = run_json(capsys, ["data", "import", "--kind", "argse", "--from", str(src),
                          "--out", str(tmp_path / "b"), "--json"])
    assert s["experts"] == ["balanced_softmax", "ce", "logit_adjust"]
    assert s["class_counts"] == COUNTS and s["class_to_group"] == [0, 0, 0, 1, 1, 1]
    b = load_expert_bundle(tmp_path / "b")
    np.testing.assert_array_equal(b.splits["val"].logits[:, 1],
                                  np.load(src / "ce" / "val_logits.npy"))
    src1 = make_stage1_dir(tmp_path / "src1")
    s = run_json(capsys, ["data", "import", "--kind", "stage1", "--from", str(src1),
                          "--out", str(tmp_path / "f"), "--json"])
    assert s["kind"] == "stage1" and s["splits"]["train"]["n"] == 30


def test_overwrite_replaces(tmp_path, capsys):
    out = tmp_path / "b"
    assert main(["data", "synth", "--kind", "stage1", "--out", str(out)]) == 0
    assert main(["data", "synth", "--kind", "stage1", "--out", str(out), "--seed", "2",
                 "--overwrite"]) == 0
    capsys.readouterr()


@pytest.mark.parametrize("argv", [["data", "--help"], ["data", "synth", "--help"],
                                  ["data", "import", "--help"], ["data", "inspect", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    assert "usage" in capsys.readouterr().out


# --------------------------------------------------------------------------- bad input


def _defect(src, what):
    if what == "nan":
        a = np.load(src / "ce" / "val_logits.npy")
        a[0, 0] = np.nan
        np.save(src / "ce" / "val_logits.npy", a)
        return "non-finite value nan"
    if what == "inf":
        np.save(src / "logit_adjust" / "test_logits.npy", np.full((12, C), np.inf, np.float32))
        return "non-finite value inf"
    if what == "shapes":
        np.save(src / "ce" / "val_logits.npy", np.zeros((7, C), np.float32))
        return "experts have different shapes"
    if what == "labels":
        np.save(src / "val_labels.npy", np.full(8, 99))
        return "label 99 out of range"
    if what == "empty":
        for expert in ("ce", "logit_adjust", "balanced_softmax"):
            np.save(src / expert / "tunev_logits.npy", np.zeros((0, C), np.float32))
        return "split is empty"
    if what == "missing_split":
        for expert in ("ce", "logit_adjust", "balanced_softmax"):
            (src / expert / "test_logits.npy").unlink()
        return "split 'test' is missing"
    if what == "missing_expert_file":
        (src / "balanced_softmax" / "val_logits.npy").unlink()
        return "logits of expert 'balanced_softmax', split 'val' is missing"
    if what == "counts":
        (src / "class_counts.json").write_text(json.dumps([*COUNTS, 1]))
        return "class_counts: has 7 entries"
    if what == "no_group":
        (src / "class_counts.json").write_text(json.dumps([50] * C))
        return "group 1 has no class"
    raise AssertionError(what)


@pytest.mark.parametrize("defect", ["nan", "inf", "shapes", "labels", "empty", "missing_split",
                                    "missing_expert_file", "counts", "no_group"])
def test_import_argse_bad_input_one_line(tmp_path, capsys, defect):
    src = make_argse_dir(tmp_path / "src")
    match = _defect(src, defect)
    out = tmp_path / "out"
    assert_one_line_error(capsys, ["data", "import", "--kind", "argse", "--from", str(src),
                                   "--out", str(out)], out, match)


def test_import_group_with_no_class_via_boundaries(tmp_path, capsys):
    src = make_argse_dir(tmp_path / "src")
    out = tmp_path / "out"
    assert_one_line_error(capsys, ["data", "import", "--kind", "argse", "--from", str(src),
                                   "--out", str(out), "--group-boundaries", "1"],
                          out, "group 1 has no class")
    assert_one_line_error(capsys, ["data", "import", "--kind", "argse", "--from", str(src),
                                   "--out", str(out), "--group-boundaries", "x"],
                          out, "--group-boundaries")


def test_import_stage1_nan_features_one_line(tmp_path, capsys):
    src = make_stage1_dir(tmp_path / "src")
    with np.load(src / "val.npz") as z:
        arrays = dict(z)
    arrays["features"][3, 1] = np.inf
    np.savez(src / "val.npz", **arrays)
    out = tmp_path / "out"
    assert_one_line_error(capsys, ["data", "import", "--kind", "stage1", "--from", str(src),
                                   "--out", str(out)], out, "val.npz: features: non-finite")


def test_import_pt_missing_file_and_missing_dir(tmp_path, capsys):
    src = make_argse_dir(tmp_path / "src")
    (src / "ce" / "val_logits.npy").unlink()
    torch.save(torch.zeros(8, C + 2), src / "ce" / "val_logits.pt")
    out = tmp_path / "out"
    assert_one_line_error(capsys, ["data", "import", "--kind", "argse", "--from", str(src),
                                   "--out", str(out)], out, "experts have different shapes")
    assert_one_line_error(capsys, ["data", "import", "--kind", "argse", "--from",
                                   str(tmp_path / "nowhere"), "--out", str(out)], out,
                          "does not exist")


def test_existing_output_refused(tmp_path, capsys):
    out = tmp_path / "b"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc = main(["data", "synth", "--kind", "stage1", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc != 0 and err.strip().count("\n") == 0 and "already exists" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]  # untouched
    src = make_argse_dir(tmp_path / "src")
    rc = main(["data", "import", "--kind", "argse", "--from", str(src), "--out", str(out)])
    assert rc != 0 and "already exists" in capsys.readouterr().err


@pytest.mark.parametrize("extra, match", [
    (["--experts", "ce,focal"], "experts='focal'"),
    (["--imbalance", "2"], "group 1 has no class"),
    (["--classes", "1"], "classes"),
])
def test_synth_bad_arguments_one_line(tmp_path, capsys, extra, match):
    out = tmp_path / "b"
    assert_one_line_error(capsys, ["data", "synth", "--out", str(out), "--classes", "20", *extra],
                          out, match)


def test_synth_stage1_rejects_argse_options(tmp_path, capsys):
    out = tmp_path / "b"
    assert_one_line_error(capsys, ["data", "synth", "--kind", "stage1", "--out", str(out),
                                   "--classes", "5"], out, "--classes")


def test_inspect_bad_path_one_line(tmp_path, capsys):
    rc = main(["data", "inspect", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert rc != 0 and err.strip().count("\n") == 0 and "does not exist" in err


def test_extract_features_is_delegated_when_present(capsys):
    import importlib.util

    if importlib.util.find_spec("tuning.cli.extract_features") is None:
        pytest.skip("tuning.cli.extract_features not built")
    with pytest.raises(SystemExit) as info:
        main(["data", "extract-features", "--help"])
    assert info.value.code == 0
    assert "usage: seltune data extract-features" in capsys.readouterr().out


@pytest.mark.parametrize("extra, match", [
    (["--split-map", "tuneV"], "--split-map='tuneV': expected SOURCE=SPLIT pairs"),
    (["--imbalance", "100"], "expected --imbalance IF and --max-count N together"),
    (["--class-counts", "c.json", "--imbalance", "100", "--max-count", "5"],
     "either --class-counts or --imbalance/--max-count, not both"),
])
def test_import_argse_count_and_split_options_one_line(tmp_path, capsys, extra, match):
    src = make_argse_dir(tmp_path / "src")
    out = tmp_path / "out"
    assert_one_line_error(capsys, ["data", "import", "--kind", "argse", "--from", str(src),
                                   "--out", str(out), *extra], out, match)


def test_import_stage1_rejects_argse_repo_options(tmp_path, capsys):
    src = make_stage1_dir(tmp_path / "src")
    out = tmp_path / "out"
    assert_one_line_error(capsys, ["data", "import", "--kind", "stage1", "--from", str(src),
                                   "--out", str(out), "--split-map", "tuneV=tunev"], out,
                          "expected no --split-map with --kind stage1")


def test_import_argse_notes_the_expert_order(tmp_path, capsys):
    src = make_argse_dir(tmp_path / "src")
    assert main(["data", "import", "--kind", "argse", "--from", str(src),
                 "--out", str(tmp_path / "b"), "--experts", "ce,logit_adjust"]) == 0
    err = capsys.readouterr().err
    assert "seltune data import: experts: ce, logit_adjust (as given by --experts)" in err


def test_import_overwrite_never_replaces_its_source(tmp_path, capsys):
    from tuning.cli import main

    src = tmp_path / "logits"
    src.mkdir()
    (src / "keep.txt").write_text("user data")
    assert main(["data", "import", "--kind", "argse", "--from", str(src), "--out", str(src),
                 "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(src) in err
    assert (src / "keep.txt").read_text() == "user data"
