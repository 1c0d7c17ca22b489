"""Importing both layouts the AR-GSE repository writes (issue 13), through the core API
and through ``seltune data import``, and training on the import."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core.argse import SelectiveConfig, load_checkpoint, train_selective
from core.bundles import load_expert_bundle
from core.errors import InputError
from core.importers import cifar_lt_counts, import_argse_dir, parse_split_map
from tuning.cli import main

from .repo_layouts import (
    COUNTS,
    IMBALANCE,
    MAX_COUNT,
    REPO_EXPERTS,
    write_logits_fixed,
    write_logits_pt,
)

RULE = {"imbalance": IMBALANCE, "max_count": MAX_COUNT}
PT_ORDER = ("balsoftmax_baseline", "ce_baseline", "logitadjust_baseline")  # not the repo's


def test_cifar_lt_counts_is_the_repository_rule():
    assert cifar_lt_counts(10, IMBALANCE, MAX_COUNT).tolist() == COUNTS
    # CIFAR-100-LT: 500 ... 5, 10847 training images (the standard IF=100 set)
    counts = cifar_lt_counts(100, 100, 500)
    assert counts[0] == 500 and counts[-1] == 5 and int(counts.sum()) == 10847


def test_logits_fixed_npz_with_targets(tmp_path):
    root = tmp_path / "outputs" / "logits_fixed"
    # written in another order than the repository's: the import restores its order
    expected = write_logits_fixed(root, experts=PT_ORDER)
    notes: list[str] = []
    b = import_argse_dir(root, note=notes.append, **RULE)
    assert b.expert_names == REPO_EXPERTS
    assert b.class_counts.tolist() == COUNTS
    assert b.class_to_group.tolist() == [0] * 7 + [1] * 3
    perm = [PT_ORDER.index(n) for n in REPO_EXPERTS]
    for split, (logits, labels) in expected.items():
        np.testing.assert_array_equal(b.splits[split].logits, logits[:, perm])
        np.testing.assert_array_equal(b.splits[split].labels, labels)
    assert notes[0] == ("experts: ce_baseline, logitadjust_baseline, balsoftmax_baseline "
                        "(the AR-GSE repository's order ce, logitadjust, balsoftmax)")
    assert any("CIFAR-LT rule IF=100, N=500" in n for n in notes)


def test_logits_pt_float16_aliases_and_labels_files(tmp_path):
    root = tmp_path / "outputs" / "logits" / "cifar100_lt_if100"
    expected = write_logits_pt(root, labels_dir=root)
    (root / "class_counts.json").write_text(json.dumps(COUNTS))
    notes: list[str] = []
    b = import_argse_dir(root, note=notes.append)
    assert b.expert_names == REPO_EXPERTS
    for split, source in (("tunev", "tuneV"), ("val", "val_lt"), ("test", "test_lt")):
        np.testing.assert_array_equal(b.splits[split].logits, expected[source][0])
        np.testing.assert_array_equal(b.splits[split].labels, expected[source][1])
        assert b.splits[split].logits.dtype == np.float32
    assert notes[1] == ("splits: tunev <- tuneV, val <- val_lt, test <- test_lt (ignored: "
                        "calib, train, val_small); --split-map SOURCE=SPLIT to change")
    # --split-map picks another source; --experts another order (suffix optional)
    b2 = import_argse_dir(root, experts=["balsoftmax", "ce"],
                          split_map=parse_split_map("val_small=val"))
    assert b2.expert_names == ("balsoftmax_baseline", "ce_baseline")
    np.testing.assert_array_equal(b2.splits["val"].logits, expected["val_small"][0][:, [2, 0]])


def test_logits_pt_without_labels_is_one_clear_error(tmp_path):
    root = tmp_path / "ds"
    write_logits_pt(root)
    with pytest.raises(InputError, match=r"tunev_labels\.\{npy,npz,pt\}: labels of split "
                       r"'tunev' is missing: expected a labels file, or a 'targets'/'labels' "
                       r"array in each expert's tuneV_logits file"):
        import_argse_dir(root, **RULE)
    with pytest.raises(InputError, match="cifar100_lt_if100 holds expert directories"):
        write_logits_pt(tmp_path / "logits" / "cifar100_lt_if100")
        import_argse_dir(tmp_path / "logits", **RULE)


def test_experts_disagreeing_labels_name_both_files(tmp_path):
    root = tmp_path / "fixed"
    write_logits_fixed(root)
    path = root / "balsoftmax_baseline" / "val_logits.npz"
    with np.load(path) as z:
        arrays = dict(z)
    arrays["targets"][7] = (arrays["targets"][7] + 1) % 10
    np.savez_compressed(path, **arrays)
    with pytest.raises(InputError) as info:
        import_argse_dir(root, **RULE)
    msg = str(info.value)
    assert "ce_baseline/val_logits.npz, " in msg and "balsoftmax_baseline/val_logits.npz" in msg
    assert "targets: labels differ between experts (row 7:" in msg and "\n" not in msg


@pytest.mark.parametrize("kwargs, match", [
    ({}, "class_counts.json: is missing: expected a JSON list of the C training class "
         "counts (or --class-counts FILE, or --imbalance IF --max-count N)"),
    ({"imbalance": 100}, "--max-count=None: expected --imbalance IF and --max-count N together"),
    ({"imbalance": 0.5, "max_count": 500}, "--imbalance=0.5"),
    ({"class_counts": "nowhere.json"}, "nowhere.json: --class-counts: no such file"),
])
def test_class_count_sources_bad(tmp_path, kwargs, match):
    write_logits_fixed(tmp_path / "fixed")
    with pytest.raises(InputError, match=match.replace("(", r"\(").replace(")", r"\)")):
        import_argse_dir(tmp_path / "fixed", **kwargs)


def test_class_counts_file_wrong_length(tmp_path):
    write_logits_fixed(tmp_path / "fixed")
    (tmp_path / "counts.json").write_text(json.dumps(COUNTS[:-1]))
    with pytest.raises(InputError, match=r"counts.json: class_counts: has 9 entries: "
                       r"expected 10 entries"):
        import_argse_dir(tmp_path / "fixed", class_counts=tmp_path / "counts.json")


@pytest.mark.parametrize("text, match", [
    ("tuneV", "--split-map='tuneV'"),
    ("tuneV=train", "--split-map='tuneV=train'"),
    ("val_lt=val,val_small=val", "one source for split 'val'"),
])
def test_split_map_bad(tmp_path, text, match):
    write_logits_pt(tmp_path / "ds", labels_dir=tmp_path / "ds")
    with pytest.raises(InputError, match=match):
        import_argse_dir(tmp_path / "ds", split_map=parse_split_map(text), **RULE)


def _tiny_config(**kw) -> SelectiveConfig:
    import dataclasses

    extra = {k: v for k, v in kw.items()
             if k in {f.name for f in dataclasses.fields(SelectiveConfig)}}
    return SelectiveConfig(stageA_epochs=1, cycles=1, b1_epochs=1, batch_size=64,
                           mu_grid_points=11, **extra)


@pytest.mark.parametrize("layout", ["logits_fixed", "logits_pt"])
def test_cli_import_then_train(tmp_path, capsys, layout):
    if layout == "logits_fixed":
        src = tmp_path / "outputs" / "logits_fixed"
        write_logits_fixed(src)
        extra = ["--imbalance", "100", "--max-count", "500"]
    else:
        src = tmp_path / "outputs" / "logits" / "cifar100_lt_if100"
        write_logits_pt(src, labels_dir=src)
        (tmp_path / "counts.json").write_text(json.dumps(COUNTS))
        extra = ["--class-counts", str(tmp_path / "counts.json"),
                 "--split-map", "tuneV=tunev,val_lt=val,test_lt=test"]
    out = tmp_path / "bundle"
    assert main(["data", "import", "--kind", "argse", "--from", str(src), "--out", str(out),
                 *extra]) == 0
    err = capsys.readouterr().err
    assert ("seltune data import: experts: ce_baseline, logitadjust_baseline, "
            "balsoftmax_baseline (the AR-GSE repository's order") in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["expert_names"] == list(REPO_EXPERTS)
    bundle = load_expert_bundle(out)
    result = train_selective(_tiny_config(), bundle, device="cpu", workdir=tmp_path / "w")
    ckpt = load_checkpoint(result.checkpoint_file)
    assert ckpt["expert_names"] == list(REPO_EXPERTS)  # the order travels with the gate
    assert np.isfinite(result.metrics["worst_group_error"])


def test_cli_bad_repo_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    src = tmp_path / "fixed"
    write_logits_fixed(src)
    bad = src / "ce_baseline" / "test_logits.npz"
    with np.load(bad) as z:
        arrays = dict(z)
    arrays["logits"][3, 2] = np.nan
    np.savez_compressed(bad, **arrays)
    out = tmp_path / "bundle"
    rc = main(["data", "import", "--kind", "argse", "--from", str(src), "--out", str(out),
               "--imbalance", "100", "--max-count", "500"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1, err
    assert "ce_baseline/test_logits.npz: logits: non-finite value nan at index [3, 2]" in err[0]
    assert not out.exists()
    assert not any(p.name.startswith(".bundle") for p in tmp_path.iterdir())


def test_import_streams_one_file_at_a_time(tmp_path):
    """Peak memory ~ the bundle plus one file: each expert's file is read straight into
    the bundle's [N, E, C] array (no per-expert list and np.stack, which needs 2x)."""
    import tracemalloc

    rng = np.random.default_rng(0)
    src, e, c = tmp_path / "big", 6, 100
    rows = {"tunev": 6000, "val": 50, "test": 50}
    for split, n in rows.items():
        y = rng.integers(0, c, n)
        for i in range(e):
            (src / f"x{i}").mkdir(parents=True, exist_ok=True)
            np.savez(src / f"x{i}" / f"{split}_logits.npz",
                     logits=rng.standard_normal((n, c)).astype(np.float32), targets=y)
    bundle_bytes = sum(rows.values()) * e * c * 4
    tracemalloc.start()
    try:
        b = import_argse_dir(src, imbalance=100, max_count=500)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert b.splits["tunev"].logits.shape == (6000, e, c)
    assert peak < 1.5 * bundle_bytes, (peak, bundle_bytes)


def test_float16_pt_reads_into_float32_without_loss(tmp_path):
    root = tmp_path / "ds"
    expected = write_logits_pt(root, labels_dir=root)
    b = import_argse_dir(root, **RULE)
    got = torch.from_numpy(np.ascontiguousarray(b.splits["test"].logits))
    assert torch.equal(got.half().float(), got)  # exactly the float16 values
    np.testing.assert_array_equal(b.splits["test"].logits, expected["test_lt"][0])
