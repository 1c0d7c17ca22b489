"""Experiment naming, layout and the saved sweep spec (no Ray)."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from sweep_specs import make_spec

from core.errors import InputError
from tuning.experiment.layout import (
    auto_name,
    check_name,
    create_experiment_dir,
    default_study_storage,
    find_experiment,
    resolve_storage,
)
from tuning.experiment.spec import load_spec, save_spec


@pytest.mark.parametrize("name", ["a", "sweep-1", "x.y_z", "A1" * 50])
def test_valid_names(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", ".", "..", "-lead", "a/b", "sp ace", "é", "a" * 101])
def test_invalid_names(name):
    with pytest.raises(InputError, match="--name"):
        check_name(name)


def test_auto_name_is_trainable_and_utc_time():
    t = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert auto_name("stage1", t) == "stage1-20260102-030405"


def test_explicit_name_never_reused(tmp_path):
    first = create_experiment_dir(tmp_path, "exp", "stage1")
    assert first == tmp_path / "exp" and (first / "seltune").is_dir()
    (first / "tuner.pkl").write_bytes(b"precious")
    with pytest.raises(InputError, match="already exists"):
        create_experiment_dir(tmp_path, "exp", "stage1")
    assert (first / "tuner.pkl").read_bytes() == b"precious"


def test_automatic_names_get_suffixes(tmp_path):
    made = {create_experiment_dir(tmp_path, None, "stage1") for _ in range(3)}
    assert len(made) == 3  # even when created within the same second
    assert all(p.parent == tmp_path and p.name.startswith("stage1-") for p in made)


def test_spec_round_trip_and_moved_directory(tmp_path):
    spec = make_spec(tmp_path)
    (tmp_path / "exp" / "seltune").mkdir(parents=True)
    save_spec(spec)
    loaded = load_spec(tmp_path / "exp")
    assert loaded == spec and loaded.metric == "worst_group_error" and not loaded.multi_objective
    moved = tmp_path / "elsewhere"
    (tmp_path / "exp").rename(moved)
    again = load_spec(moved)
    assert again.path == moved.resolve() and again.name == "elsewhere"


def test_spec_errors_name_the_file(tmp_path):
    d = tmp_path / "exp" / "seltune"
    d.mkdir(parents=True)
    (d / "sweep.json").write_text(json.dumps({"version": 1, "name": "exp"}))
    with pytest.raises(InputError, match=r"sweep\.json.*missing keys"):
        load_spec(tmp_path / "exp")
    (d / "sweep.json").write_text(json.dumps({"version": 99}))
    with pytest.raises(InputError, match="version"):
        load_spec(tmp_path / "exp")
    (d / "sweep.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_spec(tmp_path / "exp")


def test_find_experiment_by_path_or_name(tmp_path):
    spec = make_spec(tmp_path)
    (tmp_path / "exp" / "seltune").mkdir(parents=True)
    save_spec(spec)
    assert find_experiment(tmp_path / "exp") == (tmp_path / "exp").resolve()
    assert find_experiment("exp", storage=str(tmp_path)) == (tmp_path / "exp").resolve()
    with pytest.raises(InputError, match="no such experiment"):
        find_experiment("nope", storage=str(tmp_path))
    (tmp_path / "plain").mkdir()
    with pytest.raises(InputError, match="not a seltune experiment"):
        find_experiment(tmp_path / "plain")


def test_storage_paths(tmp_path):
    assert resolve_storage(str(tmp_path)) == tmp_path.resolve()
    assert resolve_storage(f"file://{tmp_path}") == tmp_path.resolve()
    with pytest.raises(InputError, match="--storage"):
        resolve_storage("foo://bucket/x")  # a URI scheme pyarrow cannot open


def test_default_study_is_sqlite_inside_the_experiment(tmp_path):
    url = default_study_storage(tmp_path / "exp")
    assert url.startswith("sqlite:///") and url.endswith("/exp/seltune/study.db")


def test_a_name_whose_sweep_died_before_its_spec_is_free_again(tmp_path):
    # issue 15, defect 8: neither resumable (no sweep.json) nor reusable
    from tuning.experiment.layout import create_experiment_dir

    (tmp_path / "early" / "seltune").mkdir(parents=True)
    assert create_experiment_dir(tmp_path, "early", "argse-selective") == tmp_path / "early"
    (tmp_path / "early" / "seltune" / "sweep.json").write_text("{}")
    with pytest.raises(InputError, match="experiment already exists"):
        create_experiment_dir(tmp_path, "early", "argse-selective")
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="experiment already exists"):
        create_experiment_dir(tmp_path, "user", "argse-selective")
