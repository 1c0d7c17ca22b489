"""Importers: a hand-made AR-GSE directory in .npy/.npz/.pt, Stage-1 .npz, bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core.bundles import EXPERT_SPLITS, load_bundle, save_bundle
from core.errors import InputError
from core.importers import import_argse_bundle, import_argse_dir, import_stage1_dir

C = 6
COUNTS = [100, 60, 30, 15, 8, 3]
ROWS = {"tunev": 12, "val": 9, "test": 15}


def _save(path, array, key):
    """Write ``array`` in the format given by ``path``'s suffix."""
    if path.suffix == ".npy":
        np.save(path, array)
    elif path.suffix == ".npz":
        np.savez(path, **{key: array})
    else:
        torch.save(torch.from_numpy(np.asarray(array)), path)


def make_argse_dir(root, seed=0):
    """Three experts, one per file format; labels in mixed formats too.

    Returns {split: (logits [N, E, C] in sorted expert order, labels)}.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "class_counts.json").write_text(json.dumps(COUNTS))
    experts = {"ce": ".npy", "la": ".npz", "bs": ".pt"}
    expected = {}
    for i, split in enumerate(EXPERT_SPLITS):
        n = ROWS[split]
        labels = rng.integers(0, C, n)
        _save(root / f"{split}_labels{('.npy', '.npz', '.pt')[i]}", labels, "labels")
        per = {}
        for name, suffix in experts.items():
            (root / name).mkdir(exist_ok=True)
            logits = rng.standard_normal((n, C)).astype(np.float32)
            _save(root / name / f"{split}_logits{suffix}", logits, "logits")
            per[name] = logits
        expected[split] = (np.stack([per[e] for e in sorted(experts)], axis=1), labels)
    return expected


def test_import_argse_dir_mixed_formats(tmp_path):
    expected = make_argse_dir(tmp_path / "src")
    b = import_argse_dir(tmp_path / "src")
    assert b.expert_names == ("bs", "ce", "la")  # sorted directory names
    assert b.class_counts.tolist() == COUNTS
    assert b.class_to_group.tolist() == [0, 0, 0, 1, 1, 1]
    for split, (logits, labels) in expected.items():
        np.testing.assert_array_equal(b.splits[split].logits, logits)
        np.testing.assert_array_equal(b.splits[split].labels, labels)
        assert b.splits[split].logits.dtype == np.float32
        assert b.splits[split].labels.dtype == np.int64
    # and it survives a save/load
    got = load_bundle(save_bundle(b, tmp_path / "b"))
    np.testing.assert_array_equal(got.splits["test"].logits, expected["test"][0])


def test_import_argse_expert_order_and_groups(tmp_path):
    expected = make_argse_dir(tmp_path / "src")
    b = import_argse_dir(tmp_path / "src", group_boundaries=(10, 50), experts=["ce", "la"])
    assert b.expert_names == ("ce", "la")
    assert b.class_to_group.tolist() == [0, 0, 1, 1, 2, 2]
    np.testing.assert_array_equal(b.splits["val"].logits, expected["val"][0][:, [1, 2]])


def test_import_pt_dict_and_float16(tmp_path):
    make_argse_dir(tmp_path / "src")
    arr = np.random.default_rng(1).standard_normal((ROWS["val"], C)).astype(np.float16)
    path = tmp_path / "src" / "bs" / "val_logits.pt"
    torch.save({"logits": torch.from_numpy(arr)}, path)
    b = import_argse_dir(tmp_path / "src")
    np.testing.assert_array_equal(b.splits["val"].logits[:, 0], arr.astype(np.float32))


def _break(root, what):
    """Apply one defect to a good AR-GSE dir; return the expected message fragment."""
    if what == "nan":
        a = np.load(root / "ce" / "val_logits.npy")
        a[2, 3] = np.nan
        np.save(root / "ce" / "val_logits.npy", a)
        return r"ce/val_logits.npy: logits: non-finite value"
    if what == "inf":
        torch.save(torch.full((ROWS["test"], C), float("inf")), root / "bs" / "test_logits.pt")
        return r"bs/test_logits.pt: logits: non-finite value"
    if what == "shapes":
        np.save(root / "ce" / "tunev_logits.npy", np.zeros((ROWS["tunev"], C + 1), np.float32))
        return "experts have different shapes"
    if what == "label_range":
        np.save(root / "test_labels.npy", np.full(ROWS["test"], C))
        root.joinpath("test_labels.pt").unlink()
        return rf"label {C} out of range: expected labels in \[0, {C}\)"
    if what == "empty":
        for e, suffix in (("ce", ".npy"), ("la", ".npz"), ("bs", ".pt")):
            _save(root / e / f"val_logits{suffix}", np.zeros((0, C), np.float32), "logits")
        return "split is empty"
    if what == "missing_split":
        (root / "la" / "tunev_logits.npz").unlink()
        return r"la/tunev_logits\.\{npy,npz,pt\}: logits of expert 'la', split 'tunev' is missing"
    if what == "missing_labels":
        (root / "val_labels.npz").unlink()
        return "labels of split 'val' is missing"
    if what == "counts_length":
        (root / "class_counts.json").write_text(json.dumps(COUNTS[:-1]))
        return f"class_counts: has {C - 1} entries: expected {C} entries"
    if what == "counts_missing":
        (root / "class_counts.json").unlink()
        return "class_counts.json: is missing"
    if what == "no_group":
        (root / "class_counts.json").write_text(json.dumps([100] * C))
        return "group 1 has no class"
    if what == "two_formats":
        np.savez(root / "ce" / "val_logits.npz", logits=np.zeros((ROWS["val"], C)))
        return "several formats"
    if what == "label_rows":
        np.save(root / "tunev_labels.npy", np.zeros(ROWS["tunev"] - 1, np.int64))
        return "tunev_labels.npy: labels"
    raise AssertionError(what)


ARGSE_DEFECTS = ["nan", "inf", "shapes", "label_range", "empty", "missing_split",
                 "missing_labels", "counts_length", "counts_missing", "no_group",
                 "two_formats", "label_rows"]


@pytest.mark.parametrize("defect", ARGSE_DEFECTS)
def test_import_argse_bad_inputs(tmp_path, defect):
    make_argse_dir(tmp_path / "src")
    match = _break(tmp_path / "src", defect)
    with pytest.raises(InputError, match=match) as info:
        import_argse_dir(tmp_path / "src")
    assert "\n" not in str(info.value)


def test_streaming_import_writes_the_same_bundle(tmp_path):
    make_argse_dir(tmp_path / "src")
    steps = []
    out = import_argse_bundle(tmp_path / "src", tmp_path / "b", group_boundaries=(10, 50),
                              on_step=lambda d, t: steps.append((d, t)))
    got, ref = load_bundle(out), import_argse_dir(tmp_path / "src", group_boundaries=(10, 50))
    assert got.expert_names == ref.expert_names and got.group_boundaries == (10, 50)
    np.testing.assert_array_equal(got.class_to_group, ref.class_to_group)
    for name in EXPERT_SPLITS:
        assert got.splits[name].logits.tobytes() == ref.splits[name].logits.tobytes()
        np.testing.assert_array_equal(got.splits[name].labels, ref.splits[name].labels)
    total = len(EXPERT_SPLITS) * ref.num_experts
    assert steps == [(i + 1, total) for i in range(total)]


@pytest.mark.parametrize("defect", ["nan", "counts_length", "missing_split"])
def test_streaming_import_leaves_nothing_on_bad_input(tmp_path, defect):
    make_argse_dir(tmp_path / "src")
    match = _break(tmp_path / "src", defect)
    with pytest.raises(InputError, match=match) as info:
        import_argse_bundle(tmp_path / "src", tmp_path / "b")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "b").exists()


def test_import_argse_not_a_dir(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        import_argse_dir(tmp_path / "nope")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "class_counts.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="no expert directory"):
        import_argse_dir(tmp_path / "src")


def make_stage1_dir(root, seed=0, group=True):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", 40), ("val", 20), ("test", 25)):
        arrays = {"features": rng.standard_normal((n, 5)).astype(np.float32),
                  "labels": rng.integers(0, 2, n)}
        if group:
            arrays["group"] = rng.integers(0, 3, n)
            arrays["path"] = np.array([f"{split}/{i}.jpg" for i in range(n)])
        np.savez(root / f"{split}.npz", **arrays)
        out[split] = arrays
    return out


def test_import_stage1_dir(tmp_path):
    expected = make_stage1_dir(tmp_path / "src")
    b = import_stage1_dir(tmp_path / "src")
    assert b.num_classes == 2 and b.feature_dim == 5
    for split, arrays in expected.items():
        s = b.splits[split]
        np.testing.assert_array_equal(s.features, arrays["features"])
        np.testing.assert_array_equal(s.labels, arrays["labels"])
        np.testing.assert_array_equal(s.group, arrays["group"])
        assert s.path == arrays["path"].tolist()
    plain = import_stage1_dir(make_stage1_dir(tmp_path / "plain", group=False) and tmp_path / "plain")
    assert plain.splits["train"].group is None and plain.splits["train"].path is None


@pytest.mark.parametrize("defect, match", [
    ("nan", "train.npz: features: non-finite"),
    ("missing", r"split 'val' is missing"),
    ("no_labels", "labels: array is missing"),
    ("empty", "split is empty"),
    ("negative", "label -1 out of range"),
    ("rows", "labels"),
])
def test_import_stage1_bad_inputs(tmp_path, defect, match):
    root = tmp_path / "src"
    arrays = make_stage1_dir(root)
    if defect == "nan":
        arrays["train"]["features"][0, 0] = np.nan
        np.savez(root / "train.npz", **arrays["train"])
    elif defect == "missing":
        (root / "val.npz").unlink()
    elif defect == "no_labels":
        np.savez(root / "test.npz", features=arrays["test"]["features"])
    elif defect == "empty":
        np.savez(root / "test.npz", features=np.zeros((0, 5), np.float32),
                 labels=np.zeros(0, np.int64))
    elif defect == "negative":
        arrays["val"]["labels"][0] = -1
        np.savez(root / "val.npz", **arrays["val"])
    elif defect == "rows":
        arrays["val"]["labels"] = arrays["val"]["labels"][:-1]
        np.savez(root / "val.npz", **arrays["val"])
    with pytest.raises(InputError, match=match):
        import_stage1_dir(root)
