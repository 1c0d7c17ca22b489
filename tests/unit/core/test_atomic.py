"""``--overwrite`` replaces only what seltune wrote (issue 15, defect 9) and the fault
points cost nothing when off."""

from __future__ import annotations

import json

import pytest

from core import atomic
from core.atomic import atomic_dir, check_output_path
from core.errors import InputError


def test_new_path_and_plain_refusal(tmp_path):
    assert check_output_path(tmp_path / "new", overwrite=False) == tmp_path / "new"
    (tmp_path / "b").mkdir()
    with pytest.raises(InputError, match="already exists"):
        check_output_path(tmp_path / "b", overwrite=False)


def test_overwrite_never_replaces_a_file_or_a_foreign_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="is not a directory"):
        check_output_path(tmp_path / "notes.txt", overwrite=True)
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("mine")
    with pytest.raises(InputError, match="a directory seltune did not write"):
        with atomic_dir(home, overwrite=True) as tmp:
            (tmp / "manifest.json").write_text("{}")
    assert (home / "thesis.tex").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "notes.txt"]


@pytest.mark.parametrize("files", [["manifest.json"], ["metrics.json", "best_config.json"],
                                   ["state.pt", "config.json"], []])
def test_overwrite_replaces_a_seltune_output(tmp_path, files):
    out = tmp_path / "out"
    out.mkdir()
    for name in files:
        (out / name).write_text("{}")
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "manifest.json").write_text(json.dumps({"new": True}))
    assert json.loads((out / "manifest.json").read_text()) == {"new": True}
    assert [p.name for p in out.iterdir()] == ["manifest.json"]


def test_never_the_input(tmp_path):
    src = tmp_path / "bundle"
    src.mkdir()
    (src / "manifest.json").write_text("{}")
    for out in (src, tmp_path):
        with pytest.raises(InputError, match="this command's input"):
            check_output_path(out, overwrite=True, protect=(src,))
    assert (src / "manifest.json").is_file()


def test_fault_point_is_off_unless_set(monkeypatch):
    monkeypatch.setattr(atomic, "_FAULT", None)
    atomic.fault_point("during_export")  # nothing happens
    monkeypatch.setattr(atomic, "_FAULT", "after_trial_result:3")
    killed = []
    monkeypatch.setattr(atomic.os, "kill", lambda pid, sig: killed.append(sig))
    for _ in range(4):
        atomic.fault_point("after_trial_result")
        atomic.fault_point("during_export")
    import signal

    assert killed == [signal.SIGKILL]


def test_a_killed_writers_temporaries_go_on_the_next_write(tmp_path):
    """SIGKILL runs no cleanup: ``.NAME.tmp-PID-*`` of a dead PID is removed by the next
    atomic write of NAME; a live process's temporary and other names stay."""
    import os
    import subprocess
    import sys

    from core.atomic import atomic_dir, remove_stale_temporaries

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.tmp-{dead.pid}-abc"
    (stale / "checkpoint").mkdir(parents=True)
    old = tmp_path / f".out.old-{dead.pid}-xyz"
    old.mkdir()
    live = tmp_path / f".out.tmp-{os.getpid()}-def"
    live.mkdir()
    other = tmp_path / f".other.tmp-{dead.pid}-ghi"
    other.mkdir()
    users = tmp_path / ".out.tmp-notes"
    users.mkdir()
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "metrics.json").write_text("{}")
    assert not stale.exists() and not old.exists()
    assert live.exists() and other.exists() and users.exists()
    assert remove_stale_temporaries(directory=tmp_path) == [other]
