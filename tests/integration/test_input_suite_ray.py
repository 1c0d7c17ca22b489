"""Bad inputs that need a sweep or an experiment: one line, exit 2, nothing written
(issue 15, defects 7 and 10). The Ray-free half is ``tests/unit/test_input_suite.py``.

Every case but the full disk fails before Ray starts, in a few seconds: the checks run
in ``prepare_sweep`` / on the files, before the experiment directory is made.

+----------------------------+-----------------------------------+----------------------+
| case                       | input                             | the line names       |
+============================+===================================+======================+
| space_bad_choice           | ``gate: [learned, bogus]``        | file, param, value,  |
|                            |                                   | the allowed choices  |
| space_float_for_int        | ``alpha_steps: {type: float}``    | param, type int      |
| space_out_of_range         | ``dropout`` up to 1.5             | param, high=1.5      |
| space_duplicate_key        | ``lr`` twice in the YAML          | key, both lines      |
| set_bad_type / choice      | ``--set cycles=abc`` / gate=bogus | --set, key, expected |
| metric_missing_group       | ``--metric error_g7``, 2 groups   | --metric, the groups |
| storage_file / under_file  | ``--storage FILE`` / ``FILE/x``   | --storage, the file  |
| ledger_wrong_type          | an entry a list, for status,      | trials.json, entry   |
|                            | export and resume                 |                      |
| tuner_pkl_truncated        | tuner.pkl cut in half             | tuner.pkl (signature)|
| disk_full[cmd]             | a full tmpfs (``unshare -Urm``)   | the output path;     |
|                            | for data synth, train, sweep,     | nothing left there   |
|                            | export                            |                      |
+----------------------------+-----------------------------------+----------------------+
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_env import ROOT, SELTUNE, private_env, run_seltune, write_small_bundles

pytestmark = pytest.mark.integration

FAST = ["--set", "stageA_epochs=1", "--set", "cycles=2", "--set", "b1_epochs=1"]


@pytest.fixture(scope="module")
def env():
    yield from private_env("in-ray-")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_small_bundles(tmp_path_factory.mktemp("inputs"))


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _one_line(env, args, root: Path, *needles: str) -> str:
    before = _tree(root)
    p = subprocess.run([*SELTUNE, *map(str, args)], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=240)
    errors = [x for x in p.stderr.splitlines() if x.startswith("seltune: error:")]
    assert p.returncode == 2 and len(errors) == 1, p.stderr[-3000:]
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert _tree(root) == before, "the failed command wrote files"
    return errors[0]


SPACES = {
    "space_bad_choice": ("gate: {type: categorical, choices: [learned, bogus]}",
                         ["param gate: value choices='bogus'", "expected one of learned, uniform"]),
    "space_float_for_int": ("alpha_steps: {type: float, low: 1, high: 3}",
                            ["param alpha_steps: value type='float'", "(declare it type: int)"]),
    "space_out_of_range": ("dropout: {type: float, low: 0.0, high: 1.5}",
                           ["param dropout: value high=1.5", "expected a value in [0.0, 1.0)"]),
    "space_duplicate_key": ("lr: {type: float, low: 0.0001, high: 0.01}\n"
                            "  lr: {type: float, low: 0.1, high: 0.5}",
                            ["lr: duplicate key on line 4 (first on line 3"]),
}


@pytest.mark.parametrize("case", sorted(SPACES))
def test_space_values_checked_before_anything_is_written(env, data, tmp_path, case):
    text, needles = SPACES[case]
    space = tmp_path / "space.yaml"
    space.write_text(f"trainable: argse-selective\nparams:\n  {text}\n"
                     "  weight_decay: {type: float, low: 0.00001, high: 0.001, log: true}\n")
    _one_line(env, ["sweep", "--data", data / "argse", "--num-samples", 2, "--storage",
                    tmp_path / "runs", "--name", "s", "--space", space, *FAST],
              tmp_path, str(space), *needles)


@pytest.mark.parametrize("setting, needles", [
    ("cycles=abc", ["cycles='abc'", "expected an integer"]),
    ("gate=bogus", ["gate='bogus'", "expected one of learned, uniform"]),
])
def test_set_values_checked(env, data, tmp_path, setting, needles):
    _one_line(env, ["sweep", "--data", data / "argse", "--storage", tmp_path / "runs",
                    "--set", setting], tmp_path, "--set", *needles)


def test_metric_of_a_group_the_bundle_lacks(env, data, tmp_path):
    _one_line(env, ["sweep", "--data", data / "argse", "--storage", tmp_path / "runs",
                    "--metric", "error_g7", *FAST], tmp_path,
              "--metric='error_g7'", "has 2 groups", "(error_g0, error_g1)")


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_storage_at_or_under_a_regular_file(env, data, tmp_path, where):
    (tmp_path / "notes.txt").write_text("a user's file\n")
    storage = tmp_path / "notes.txt" if where == "file" else tmp_path / "notes.txt" / "runs"
    line = _one_line(env, ["sweep", "--data", data / "argse", "--storage", storage, *FAST],
                     tmp_path, "--storage=")
    assert "regular file" in line
    assert (tmp_path / "notes.txt").read_text() == "a user's file\n"


@pytest.fixture(scope="module")
def finished(env, data, tmp_path_factory) -> Path:
    """A finished 2-trial sweep (copied by the cases that damage it)."""
    storage = tmp_path_factory.mktemp("runs")
    run_seltune(env, "sweep", "--data", data / "argse", "--num-samples", 2, "--num-cpus", 2,
                "--storage", storage, "--name", "done", "--seed", 1, *FAST)
    return storage / "done"


@pytest.mark.parametrize("command", ["status", "export", "resume"])
def test_ledger_entry_of_the_wrong_type(env, finished, tmp_path, command):
    exp = tmp_path / "exp"
    shutil.copytree(finished, exp)
    ledger = exp / "seltune" / "trials.json"
    data = json.loads(ledger.read_text())
    tid = next(iter(data["trials"]))
    data["trials"][tid] = [1, 2]
    ledger.write_text(json.dumps(data))
    args = {"status": ["status", exp], "export": ["export", exp, "--out", tmp_path / "out"],
            "resume": ["resume", exp, "--num-cpus", 2]}[command]
    _one_line(env, args, tmp_path, str(ledger), f"trials.{tid}='list'")


def test_truncated_tuner_pkl_is_refused_in_one_line(env, finished, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(finished, exp)
    # unfinished again, so the resume gets as far as Tune's state
    ledger = exp / "seltune" / "trials.json"
    data = json.loads(ledger.read_text())
    data["trials"][next(iter(data["trials"]))]["status"] = "RUNNING"
    ledger.write_text(json.dumps(data))
    pkl = exp / "tuner.pkl"
    pkl.write_bytes(pkl.read_bytes()[: pkl.stat().st_size // 2])
    _one_line(env, ["resume", exp, "--num-cpus", 2], tmp_path,
              "tuner.pkl: changed since it was signed", "--trust-experiment")


def _can_mount_tmpfs() -> bool:
    try:
        p = subprocess.run(["unshare", "-Urm", "sh", "-c",
                            "mount -t tmpfs -o size=64k tmpfs /mnt && echo ok"],
                           capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return p.stdout.strip() == "ok"


@pytest.mark.skipif(not _can_mount_tmpfs(),
                    reason="needs unshare -Urm (user namespaces) to mount a small tmpfs")
@pytest.mark.parametrize("command", [
    pytest.param("synth", marks=pytest.mark.extended),
    pytest.param("train", marks=pytest.mark.extended), "sweep", "export"])
def test_disk_full_is_one_line_and_leaves_nothing(env, data, finished, tmp_path, command):
    """A real full file system: a 1 MiB tmpfs, filled, in a private mount namespace.
    CI runs the sweep and export cases; data synth and train (the same handler, checked
    in-process by the unit suite) are in the extended tier."""
    out = "/mnt/full/out"
    argv = {
        "synth": ["data", "synth", "--out", out, "--classes", 10],
        "train": ["train", "stage1", "--data", data / "stage1", "--out", out,
                  "--set", "epochs=1"],
        "sweep": ["sweep", "--data", data / "argse", "--num-samples", 1, "--num-cpus", 2,
                  "--storage", "/mnt/full", "--name", "out", *FAST],
        "export": ["export", finished, "--out", out],
    }[command]
    cli = " ".join(f"'{a}'" for a in [sys.executable, "-m", "tuning.cli", *map(str, argv)])
    script = ("mkdir -p /mnt/full && mount -t tmpfs -o size=1m tmpfs /mnt/full && "
              "(dd if=/dev/zero of=/mnt/full/fill bs=4k 2>/dev/null; true) && "
              f"{cli}; rc=$?; echo LEFT: $(ls -A /mnt/full); exit $rc")
    p = subprocess.run(["unshare", "-Urm", "sh", "-c", script], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=240)
    errors = [x for x in p.stderr.splitlines() if x.startswith("seltune: error:")]
    assert p.returncode == 2 and len(errors) == 1, p.stderr[-3000:]
    assert "no space left on device" in errors[0] and "/mnt/full" in errors[0], errors[0]
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    assert p.stdout.strip().splitlines()[-1] == "LEFT: fill", p.stdout  # nothing half-made
