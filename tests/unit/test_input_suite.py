"""Bad inputs end in one line, exit 2, nothing written (issue 15, defects 7, 10, 11).

The Ray-free half of the input suite: each case runs the CLI in-process on a tiny bundle
and checks the three things a user sees: exit status 2, exactly one line on stderr
(naming the file or field, the value and what was expected) and no file created or
changed under the test's directory. The cases that need a sweep (space values, the
metric, the storage, a ledger entry, a truncated ``tuner.pkl``, a real full disk) are in
``tests/integration/test_input_suite_ray.py``.

+-------------------------+-------------------------------------+------------------------+
| case                    | input                               | the line names         |
+=========================+=====================================+========================+
| out_under_file[cmd]     | ``--out FILE/x`` for train, data    | --out, the file        |
|                         | synth, data import, extract-features|                        |
| config_duplicate_key    | ``train --config`` with lr twice    | the file, key, lines   |
| labels_not_utf8         | a Latin-1 labels CSV                | the CSV, byte, line    |
| labels_binary           | a CSV with a NUL byte               | the CSV                |
| model_path_missing      | ``--model ./missing`` (no network)  | --model, the path      |
| head_bare_tensor        | ``stage1_head.pth`` = a tensor      | the file               |
| head_state_dict_only    | ``stage1_head.pth`` = a state dict  | the file, feature_dim  |
| head_wrong_shape        | feature_dim edited                  | the file, the shape    |
| disk_full_errno[...]    | ENOSPC from any library             | the output path        |
| disk_full_no_errno      | torch's "unexpected pos", out full  | the output path        |
| manifest_type[...]      | manifest fields of the wrong type   | manifest.json, field   |
+-------------------------+-------------------------------------+------------------------+
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch

from tuning.cli import main


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> Path:
    from core.bundles import save_bundle
    from core.synth import synth_argse_bundle, synth_stage1_bundle

    root = tmp_path_factory.mktemp("inputs")
    save_bundle(synth_argse_bundle(classes=20, n_max=100, per_class=(15, 10, 20)),
                root / "argse")
    save_bundle(synth_stage1_bundle(sizes=(120, 60, 60), dim=8), root / "stage1")
    return root


def _tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def _one_line(capsys, argv: list[str], root: Path, *needles: str) -> str:
    """Run the CLI; assert exit 2, one stderr line containing ``needles``, nothing
    written under ``root``; return the line."""
    before = _tree(root)
    rc = main(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2, err
    assert len(err) == 1, err
    for needle in needles:
        assert needle in err[0], err[0]
    assert _tree(root) == before, "the failed command wrote or changed files"
    return err[0]


@pytest.fixture
def work(tmp_path) -> Path:
    (tmp_path / "notes.txt").write_text("a user's file\n")
    return tmp_path


@pytest.mark.parametrize("command", ["train", "synth", "import", "extract"])
def test_out_under_a_regular_file(bundles, work, capsys, command):
    out = str(work / "notes.txt" / "run")
    argv = {
        "train": ["train", "stage1", "--data", str(bundles / "stage1"), "--out", out],
        "synth": ["data", "synth", "--out", out],
        "import": ["data", "import", "--kind", "stage1", "--from", str(work), "--out", out],
        "extract": ["data", "extract-features", "--model", str(work), "--images", str(work),
                    "--labels", str(work / "notes.txt"), "--out", out],
    }[command]
    line = _one_line(capsys, argv, work, "--out=", "notes.txt is a regular file",
                     "expected a path whose parents are directories")
    assert line.startswith("seltune: error: ")


def test_train_config_duplicate_key(bundles, work, capsys):
    config = work / "c.yaml"
    config.write_text("lr: 0.01\nepochs: 2\nlr: 0.1\n")
    _one_line(capsys, ["train", "stage1", "--data", str(bundles / "stage1"), "--config",
                       str(config), "--out", str(work / "run")], work,
              f"{config}: lr: duplicate key on line 3 (first on line 1)",
              "expected each key once per mapping")


def _extract_argv(work: Path, labels: Path, model: str | None = None) -> list[str]:
    (work / "imgs").mkdir(exist_ok=True)
    return ["data", "extract-features", "--model", model or str(work / "imgs"),
            "--images", str(work / "imgs"), "--labels", str(labels), "--out",
            str(work / "bundle")]


def test_labels_csv_not_utf8(work, capsys):
    labels = work / "labels.csv"
    labels.write_bytes("path,label\na.png,chat\nb.png,caf\u00e9\n".encode("latin-1"))
    _one_line(capsys, _extract_argv(work, labels), work, str(labels),
              "not UTF-8 text (byte 0xe9 on line 3)", "expected a UTF-8 CSV")


def test_labels_csv_binary(work, capsys):
    labels = work / "labels.csv"
    labels.write_bytes(b"path,label\na.png,\x00\x01\n")
    _one_line(capsys, _extract_argv(work, labels), work, str(labels), "not a CSV")


def test_model_path_missing_fails_at_once(work, capsys, monkeypatch):
    """A missing local ``--model`` is never handed to transformers as a hub id (which
    retries the network for ~100 s): the check comes before any model loading."""
    import core.extract

    def no_loading(*a, **k):
        raise AssertionError("load_backbone reached for a missing local path")

    monkeypatch.setattr(core.extract, "load_backbone", no_loading)
    labels = work / "labels.csv"
    labels.write_text("path,label\na.png,0\nb.png,1\n")
    for model in ("./no/such/model", str(work / "missing"), "imgs/dinov2"):
        monkeypatch.chdir(work)
        _one_line(capsys, _extract_argv(work, labels, model), work, f"--model='{model}'",
                  "no such directory")


def _stage1_dir(root: Path, head) -> Path:
    """An artefacts directory whose config and gate files are valid and whose
    ``stage1_head.pth`` is ``head``."""
    from core.config import config_to_dict
    from core.stage1.config import Stage1Config

    d = root / "ckpt"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config_to_dict(Stage1Config())))
    (d / "gate_calibrator.json").write_text(json.dumps({"kind": "platt", "params": {}}))
    torch.save(head, d / "stage1_head.pth")
    return d


@pytest.mark.parametrize("case, head, needle", [
    ("bare_tensor", torch.zeros(3), "stage1_head.pth: holds a Tensor"),
    ("state_dict_only", {"trunk.0.weight": torch.zeros(2, 2)}, "feature_dim=None"),
    ("wrong_types", {"format": 1, "state_dict": {}, "feature_dim": "8", "num_classes": 3,
                     "hidden_dim": 4}, "feature_dim='8': expected an integer >= 1"),
])
def test_stage1_head_not_what_training_wrote(bundles, work, capsys, case, head, needle):
    d = _stage1_dir(work, head)
    _one_line(capsys, ["evaluate", str(d), "--data", str(bundles / "stage1")], work, needle)


def test_stage1_head_of_another_shape(bundles, work, capsys):
    """A real head whose feature_dim was edited: load_state_dict's size mismatch."""
    from core.stage1.head import Stage1Head

    net = Stage1Head(8, 3, 4, 0.0)
    head = {"format": 1, "state_dict": net.state_dict(), "feature_dim": 9, "num_classes": 3,
            "hidden_dim": 4, "class_weights": None, "num_groups": 2}
    d = _stage1_dir(work, head)
    torch.save({"kind": "temperature", "num_classes": 3,
                "params": {"log_t": torch.zeros(1)}}, d / "calibrator_temperature.pth")
    _one_line(capsys, ["evaluate", str(d), "--data", str(bundles / "stage1")], work,
              "stage1_head.pth: not a Stage-1 checkpoint file", "size mismatch")


def _fail_with(monkeypatch, exc: BaseException):
    """Make ``seltune data synth`` fail with ``exc`` where it writes."""
    import core.bundles

    def boom(*a, **k):
        raise exc

    monkeypatch.setattr(core.bundles, "save_bundle", boom)


@pytest.mark.parametrize("exc", [
    OSError(errno.ENOSPC, "No space left on device", "/x/.b.tmp-1/tunev.parquet"),
    OSError("[Errno 28] Error writing bytes to file. Detail: [errno 28] No space left on "
            "device"),  # pyarrow: the errno only in the text
    RuntimeError("wrapped").with_traceback(None),
])
def test_disk_full_one_line(work, capsys, monkeypatch, exc):
    if isinstance(exc, RuntimeError):  # the cause carries the errno (json.dump, shutil)
        exc.__cause__ = OSError(errno.EDQUOT, "Disk quota exceeded")
    _fail_with(monkeypatch, exc)
    out = work / "b"
    _one_line(capsys, ["data", "synth", "--out", str(out), "--classes", "10"], work,
              "no space left on device", "expected free space on that file system")


def test_disk_full_without_errno_names_the_full_output(work, capsys, monkeypatch):
    """torch's zip writer loses the errno ("unexpected pos"): the output's file system
    having no space left is what tells."""
    import tuning.cli.disk_full as disk_full

    _fail_with(monkeypatch, RuntimeError("[enforce fail at inline_container.cc:672] . "
                                         "unexpected pos 1344 vs 1238"))
    monkeypatch.setattr(disk_full, "_free_bytes", lambda path: 0)
    out = work / "b"
    _one_line(capsys, ["data", "synth", "--out", str(out), "--classes", "10"], work,
              f"{out}: no space left on device (RuntimeError)")


def test_other_errors_are_not_called_a_full_disk(work, monkeypatch):
    """A bug elsewhere keeps its traceback (the handler must not swallow it)."""
    _fail_with(monkeypatch, RuntimeError("a bug"))
    with pytest.raises(RuntimeError, match="a bug"):
        main(["data", "synth", "--out", str(work / "b"), "--classes", "10"])


@pytest.mark.parametrize("kind, field, value", [
    ("argse", "group_boundaries", 5), ("argse", "expert_names", 3),
    ("argse", "class_counts", "x"), ("argse", "class_to_group", [0, "a"]),
    ("argse", "expert_names", ["ce", 1]),
    ("stage1", "group_names", 3), ("stage1", "num_classes", "2"),
])
def test_manifest_field_of_the_wrong_type(bundles, work, capsys, kind, field, value):
    import shutil

    b = work / kind
    shutil.copytree(bundles / kind, b)
    manifest = json.loads((b / "manifest.json").read_text())
    manifest[field] = value
    (b / "manifest.json").write_text(json.dumps(manifest))
    _one_line(capsys, ["data", "inspect", str(b)], work, "manifest.json", field)
