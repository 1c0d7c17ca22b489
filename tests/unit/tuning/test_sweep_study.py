"""The study found relative to the experiment; moved, copied, deleted and corrupt
studies (issue 15, defect 6). No Ray started."""

from __future__ import annotations

import json
import shutil

import optuna
import pytest
from sweep_specs import make_spec

from core.errors import InputError
from tuning.experiment.layout import default_study_storage, write_json
from tuning.experiment.spec import STUDY_IN_EXPERIMENT, check_study_db, load_spec, save_spec
from tuning.sweep.study import OWNER_ATTR, claim_study


def _experiment(storage, name="exp"):
    path = storage / name
    (path / "seltune").mkdir(parents=True)
    spec = make_spec(storage, name=name, study_storage=default_study_storage(path))
    save_spec(spec)
    optuna.create_study(study_name=name, storage=spec.study_storage)
    claim_study(spec.study_storage, name, path, own_db=True)
    return path


def test_default_study_is_saved_relative_and_follows_a_move(tmp_path):
    exp = _experiment(tmp_path / "a")
    saved = json.loads((exp / "seltune" / "sweep.json").read_text())
    assert saved[STUDY_IN_EXPERIMENT] is True
    assert saved["study_storage"] == default_study_storage(exp)  # for raw readers
    moved = tmp_path / "b" / "renamed"
    moved.parent.mkdir()
    shutil.move(str(exp), moved)
    spec = load_spec(moved)
    assert spec.study_storage == default_study_storage(moved)
    claim_study(spec.study_storage, spec.study_name, moved, own_db=True)  # takes it over
    study = optuna.load_study(study_name=spec.study_name, storage=spec.study_storage)
    assert study.user_attrs[OWNER_ATTR] == str(moved.resolve())


def test_a_copy_uses_its_own_study_never_the_originals(tmp_path):
    exp = _experiment(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(exp, copy)
    spec = load_spec(copy)
    assert spec.study_storage == default_study_storage(copy)
    claim_study(spec.study_storage, spec.study_name, copy, own_db=True)
    original = optuna.load_study(study_name="exp", storage=default_study_storage(exp))
    assert original.user_attrs[OWNER_ATTR] == str(exp.resolve())


def test_old_absolute_default_of_another_directory_becomes_the_own_copy(tmp_path):
    exp = _experiment(tmp_path)
    data = json.loads((exp / "seltune" / "sweep.json").read_text())
    data["study_storage"] = "sqlite:////elsewhere/old/seltune/study.db"  # saved before
    del data[STUDY_IN_EXPERIMENT]  # written before the flag existed
    write_json(exp / "seltune" / "sweep.json", data)
    assert load_spec(exp).study_storage == default_study_storage(exp)


def test_a_copy_sharing_an_outside_study_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    exp = tmp_path / "exp"
    (exp / "seltune").mkdir(parents=True)
    save_spec(make_spec(tmp_path, name="exp", study_storage=url))
    optuna.create_study(study_name="exp", storage=url)
    claim_study(url, "exp", exp, own_db=False)
    copy = tmp_path / "copy"
    shutil.copytree(exp, copy)
    with pytest.raises(InputError, match=r"copy of .*/exp, whose study it would write into"):
        claim_study(url, "exp", copy, own_db=False)
    shutil.rmtree(exp)  # the original is gone: the copy is a moved experiment now
    claim_study(url, "exp", copy, own_db=False)


def test_deleted_or_corrupt_study_db_is_one_line(tmp_path):
    exp = _experiment(tmp_path)
    spec = load_spec(exp)
    check_study_db(spec)
    write_json(exp / "seltune" / "trials.json", {"trials": {"a": {"trial_id": "a"}}})
    (exp / "seltune" / "study.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(InputError, match=r"study\.db: not a readable Optuna study database"):
        check_study_db(spec)
    (exp / "seltune" / "study.db").unlink()
    with pytest.raises(InputError, match=r"study\.db: the study database is missing"):
        check_study_db(spec)
    write_json(exp / "seltune" / "trials.json", {"trials": {}})
    check_study_db(spec)  # no trial yet: the first driver died before creating it
