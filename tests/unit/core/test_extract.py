"""Feature extraction end to end on tiny random DINOv2 / DINOv3 models, offline."""

from __future__ import annotations

import argparse
import os

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

from core.errors import InputError
from core.extract import (
    extract_features,
    parse_split_ratios,
    read_labels_csv,
    save_tiny_dinov3,
    stratified_split,
)

IMG = 28


def _save_dinov3(path):
    save_tiny_dinov3(path, image_size=IMG, hidden_size=32, patch_size=7, num_heads=2,
                     num_register_tokens=2)


def _save_dinov2(path):
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    cfg = Dinov2Config(hidden_size=24, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2,
                       patch_size=7, image_size=IMG)
    torch.manual_seed(0)
    Dinov2Model(cfg).save_pretrained(path)
    BitImageProcessor(size={"shortest_edge": IMG}, crop_size={"height": IMG, "width": IMG},
                      do_center_crop=True).save_pretrained(path)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    rows = ["path,label,group"]
    for i in range(20):
        label = i % 2
        arr = (rng.random((IMG + 4 * (i % 3), IMG, 3)) * 255).astype(np.uint8)
        arr[..., label] = 255  # a class-dependent colour channel
        sub = root / ("a" if i < 10 else "b")
        sub.mkdir(exist_ok=True)
        Image.fromarray(arr).save(sub / f"im{i}.png")
        rows.append(f"{sub.name}/im{i}.png,{label},{'src' + sub.name}")
    (root / "a" / "broken.png").write_bytes(b"not a png at all")
    rows.append("a/broken.png,1,srca")
    rows.append("a/missing.png,0,srca")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def dinov3_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("dinov3")
    _save_dinov3(path)
    return path


def test_extract_dinov3_end_to_end(image_dir, dinov3_dir):
    skipped = []
    res = extract_features(str(dinov3_dir), image_dir, image_dir / "labels.csv", batch_size=6,
                           device="cpu", split_ratios=(0.6, 0.2, 0.2), seed=1,
                           on_skip=lambda p, r: skipped.append(p))
    b = res.bundle
    assert sorted(p for p, _ in res.skipped) == ["a/broken.png", "a/missing.png"]
    assert sorted(skipped) == ["a/broken.png", "a/missing.png"]
    assert res.num_images == 20
    assert b.feature_dim == 32 and b.num_classes == 2
    assert sum(len(s) for s in b.splits.values()) == 20
    assert b.group_names == ("srca", "srcb")
    all_paths = [p for s in b.splits.values() for p in s.path]
    assert len(set(all_paths)) == 20 and "a/broken.png" not in all_paths
    # features are the CLS token of the backbone, row by row
    import torch
    from PIL import Image

    from core.extract import load_backbone

    net, proc = load_backbone(str(dinov3_dir), "cpu")
    split = b.splits["train"]
    img = Image.open(image_dir / split.path[0]).convert("RGB")
    with torch.inference_mode():
        ref = net(**proc(images=[img], return_tensors="pt")).last_hidden_state[0, 0].numpy()
    np.testing.assert_allclose(split.features[0], ref, rtol=1e-4, atol=1e-5)
    # the processor resizes to the model's image size and normalises with ImageNet stats
    pix = proc(images=[img], return_tensors="pt")["pixel_values"]
    assert tuple(pix.shape) == (1, 3, IMG, IMG)
    assert float(pix.min()) < -1.0 and float(pix.max()) > 1.0
    # both classes in every split (stratified)
    for s in b.splits.values():
        assert set(s.labels.tolist()) == {0, 1}


def test_extract_dinov2_and_cli(image_dir, tmp_path, capsys):
    from core.bundles import load_feature_bundle
    from tuning.cli.extract_features import register

    model_dir = tmp_path / "dinov2"
    _save_dinov2(model_dir)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    out = tmp_path / "bundle"
    args = parser.parse_args(["extract-features", "--model", str(model_dir), "--images",
                              str(image_dir), "--labels", str(image_dir / "labels.csv"),
                              "--out", str(out), "--batch-size", "8", "--device", "cpu",
                              "--json"])
    assert args.func(args) == 0
    bundle = load_feature_bundle(out)
    assert bundle.feature_dim == 24
    assert sum(len(s) for s in bundle.splits.values()) == 20
    captured = capsys.readouterr()
    assert '"skipped": 2' in captured.out
    assert "a/broken.png" in captured.err and "skipped 2" in captured.err


def test_bad_inputs(image_dir, dinov3_dir, tmp_path):
    with pytest.raises(InputError, match="no such file"):
        extract_features(str(dinov3_dir), image_dir, tmp_path / "nope.csv")
    with pytest.raises(InputError, match="no such directory"):
        extract_features(str(dinov3_dir), tmp_path / "nodir", image_dir / "labels.csv")
    # a missing local directory fails at once (not as a hub id after network retries)
    with pytest.raises(InputError, match=r"--model=.*nomodel'?: no such directory"):
        extract_features(str(tmp_path / "nomodel"), image_dir, image_dir / "labels.csv")
    not_a_model = tmp_path / "plain"
    not_a_model.mkdir()
    with pytest.raises(InputError, match=r"no config\.json"):
        extract_features(str(not_a_model), image_dir, image_dir / "labels.csv")
    with pytest.raises(InputError, match="split-ratios"):
        parse_split_ratios("0.5,0.5")
    bad = tmp_path / "bad.csv"
    bad.write_text("x.png,1,2,3\n")
    with pytest.raises(InputError, match="columns"):
        read_labels_csv(bad)


def test_labels_csv_names_and_split():
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "l.csv"
        p.write_text("a.png,cat\nb.png,dog\nc.png,cat\n")
        rows = read_labels_csv(p)
        assert rows.class_names == ("cat", "dog")
        assert rows.labels.tolist() == [0, 1, 0] and rows.groups is None
    labels = np.repeat([0, 1], 50)
    parts = stratified_split(labels, (0.7, 0.15, 0.15), seed=3)
    allidx = np.concatenate(list(parts.values()))
    assert sorted(allidx.tolist()) == list(range(100))
    sizes = [len(parts[s]) for s in ("train", "val", "test")]
    assert sizes[0] == 70 and sizes[1] + sizes[2] == 30 and min(sizes[1:]) >= 14


def test_cli_bad_paths_one_line(image_dir, dinov3_dir, tmp_path, capsys):
    from tuning.cli import main

    common = ["data", "extract-features", "--model", str(dinov3_dir), "--out",
              str(tmp_path / "o")]
    for extra, message in (
        (["--images", str(image_dir), "--labels", str(tmp_path / "none.csv")], "no such file"),
        (["--images", str(tmp_path / "nodir"), "--labels", str(image_dir / "labels.csv")],
         "no such directory"),
        (["--images", str(image_dir), "--labels", str(image_dir / "labels.csv"),
          "--split-ratios", "0.9,0.2,0.1"], "split-ratios"),
    ):
        rc = main([*common, *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc != 0 and len(err) == 1 and message in err[0], err
