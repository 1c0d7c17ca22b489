"""``seltune evaluate``: an export directory works like its checkpoint; a bundle whose
expert order differs from the checkpoint's is one clear error (issue 13)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from core.argse import SelectiveConfig, train_selective
from core.bundles import ExpertBundle, ExpertSplit, load_expert_bundle, save_bundle
from tuning.cli import main

NAMES = ("ce_baseline", "logitadjust_baseline", "balsoftmax_baseline")


def _bundle(names=NAMES, order=(0, 1, 2), seed=0) -> ExpertBundle:
    rng = np.random.default_rng(seed)
    c, counts = 8, np.array([300, 200, 120, 80, 40, 15, 8, 4])
    splits = {}
    for split in ("tunev", "val", "test"):
        y = rng.integers(0, c, 160)
        logits = rng.normal(size=(160, 3, c)).astype(np.float32)
        logits[np.arange(160), :, y] += 2.0
        splits[split] = ExpertSplit(logits[:, list(order)], y)
    return ExpertBundle(expert_names=tuple(names[i] for i in order), class_counts=counts,
                        class_to_group=(counts <= 20).astype(np.int64), splits=splits)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    save_bundle(_bundle(), root / "bundle")
    save_bundle(_bundle(order=(1, 0, 2)), root / "swapped")
    cfg = SelectiveConfig(stageA_epochs=1, cycles=1, b1_epochs=1, batch_size=64,
                          hidden_dims=(16,), mu_grid_points=11)
    res = train_selective(cfg, load_expert_bundle(root / "bundle"), device="cpu",
                          workdir=root / "w")
    export = root / "export"
    shutil.copytree(res.checkpoint_dir, export / "checkpoint")
    (export / "metrics.json").write_text(json.dumps({"test": {}}))
    return root, res.checkpoint_dir, export


def _evaluate(capsys, ckpt, bundle):
    rc = main(["evaluate", str(ckpt), "--data", str(bundle), "--device", "cpu", "--json"])
    out = capsys.readouterr()
    return rc, out


def test_export_directory_is_evaluated_like_its_checkpoint(trained, capsys):
    root, ckpt_dir, export = trained
    rc, direct = _evaluate(capsys, ckpt_dir, root / "bundle")
    assert rc == 0, direct.err
    rc, via_export = _evaluate(capsys, export, root / "bundle")
    assert rc == 0, via_export.err
    assert json.loads(via_export.out) == json.loads(direct.out)
    assert json.loads(direct.out)["split"] == "test"


def test_expert_order_is_checked_against_the_bundle(trained, capsys):
    root, ckpt_dir, export = trained
    for ckpt in (ckpt_dir, export):
        rc, out = _evaluate(capsys, ckpt, root / "swapped")
        lines = out.err.strip().splitlines()
        assert rc != 0 and len(lines) == 1, out.err
        assert "swapped: expert_names: expert order ['logitadjust_baseline', 'ce_baseline', " \
               "'balsoftmax_baseline'] differs from the checkpoint's" in lines[0]
        assert "re-import with --experts ce_baseline,logitadjust_baseline,balsoftmax_baseline" \
            in lines[0]


def test_not_a_checkpoint_names_the_export_layout(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    rc, out = _evaluate(capsys, tmp_path / "x", tmp_path)
    assert rc != 0 and "or an export directory with checkpoint/ and metrics.json" in out.err
