"""The study's SQLite storage: WAL on local disks only, data round-trips either way."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import optuna
import pytest

from tuning.sweep import study as study_db
from tuning.sweep.study import filesystem_type, open_study_storage, sqlite_path, wal_is_safe

MOUNTS = """\
/dev/sda1 / ext4 rw,relatime 0 0
tmpfs /dev/shm tmpfs rw 0 0
server:/export /mnt/shared nfs4 rw,vers=4.2 0 0
server:/export/x /mnt/shared/fast\\040disk xfs rw 0 0
"""


def test_sqlite_path_only_for_sqlite_files():
    assert sqlite_path("sqlite:////abs/dir/study.db") == Path("/abs/dir/study.db")
    assert sqlite_path("sqlite:///:memory:") is None
    assert sqlite_path("postgresql://user@127.0.0.1:5432/db") is None


def test_filesystem_type_takes_the_longest_mount_point(tmp_path):
    assert filesystem_type(Path("/mnt/shared/exp/study.db"), MOUNTS) == "nfs4"
    assert filesystem_type(Path("/mnt/shared/fast disk/study.db"), MOUNTS) == "xfs"
    assert filesystem_type(Path("/home/u/study.db"), MOUNTS) == "ext4"
    assert filesystem_type(Path("/dev/shm/x.db"), MOUNTS) == "tmpfs"


def test_network_filesystems_keep_sqlite_defaults():
    assert not wal_is_safe(Path("/mnt/shared/exp/study.db"), MOUNTS)
    assert wal_is_safe(Path("/home/u/study.db"), MOUNTS)
    assert not wal_is_safe(Path("/x.db"), "")  # unknown: be conservative


def _journal_mode(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        return conn.execute("PRAGMA journal_mode").fetchone()[0]


def _write_study(url: str) -> None:
    study = optuna.create_study(study_name="s", storage=open_study_storage(url),
                                sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(3):
        trial = study.ask()
        trial.suggest_float("x", 0.0, 1.0)
        trial.report(0.5, 1)
        study.tell(trial, 0.25)


@pytest.mark.skipif(not wal_is_safe(Path(__file__)), reason="tests not on a local disk")
def test_local_sqlite_study_uses_wal_and_round_trips(tmp_path):
    db = tmp_path / "study.db"
    url = f"sqlite:///{db}"
    _write_study(url)
    assert _journal_mode(db) == "wal"
    loaded = optuna.load_study(study_name="s", storage=url)  # a plain reader sees it all
    assert [t.value for t in loaded.trials] == [0.25] * 3
    assert all(t.intermediate_values == {1: 0.5} for t in loaded.trials)


def test_study_on_network_filesystem_keeps_rollback_journal(tmp_path, monkeypatch):
    monkeypatch.setattr(study_db, "filesystem_type", lambda path, mounts=None: "nfs4")
    db = tmp_path / "study.db"
    _write_study(f"sqlite:///{db}")
    assert _journal_mode(db) == "delete"
