"""Experiments in object storage without a server or Ray: URI parsing, mirror paths, the
--study-storage rule, and name claims / downloads against a storage whose pyarrow
file system is a real LocalFileSystem (the code under test only sees pyarrow.fs)."""

from __future__ import annotations

import json

import pyarrow.fs as pafs
import pytest
from sweep_specs import make_spec

import tuning.experiment.layout as experiment
import tuning.experiment.mirror as remote
from core.errors import InputError
from tuning.experiment.layout import (
    create_remote_experiment,
    experiment_local_dir,
    find_experiment,
    resolve_storage,
)
from tuning.experiment.mirror import (
    RemoteStorage,
    is_uri,
    join_uri,
    mirror_dir,
    split_experiment,
    split_uri,
)
from tuning.experiment.spec import load_spec, save_spec

URI = "s3://bkt/runs?endpoint_override=127.0.0.1:9&scheme=http"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SELTUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def bucket(tmp_path, monkeypatch, cache):
    """``URI`` opened as a LocalFileSystem rooted at ``tmp_path/bucket`` (no S3 server)."""
    root = tmp_path / "bucket"
    root.mkdir()
    storage = RemoteStorage(uri=URI, fs=pafs.LocalFileSystem(), base=str(root / "runs"))

    def fake_open(uri: str) -> RemoteStorage:
        if uri != URI:
            raise AssertionError(f"unexpected storage {uri}")
        return storage

    monkeypatch.setattr(remote, "open_storage", fake_open)
    monkeypatch.setattr(experiment, "open_storage", fake_open)
    return root / "runs"


def test_is_uri():
    assert is_uri("s3://b/p") and is_uri("gs://b") and is_uri(URI)
    assert not is_uri("/abs/dir") and not is_uri("rel") and not is_uri("file:///x")
    assert not is_uri(None)


def test_split_and_join():
    assert split_uri("s3://b/p/?q=1&r=2") == ("s3", "b/p", "q=1&r=2")
    assert split_uri("gs://b") == ("gs", "b", "")
    assert join_uri(URI, "exp", "seltune") == \
        "s3://bkt/runs/exp/seltune?endpoint_override=127.0.0.1:9&scheme=http"
    assert join_uri("s3://b/p/", "/n/") == "s3://b/p/n"


@pytest.mark.parametrize("text", [
    "s3://bkt/runs/exp?endpoint_override=127.0.0.1:9&scheme=http",  # Tune's form
    "s3://bkt/runs?endpoint_override=127.0.0.1:9&scheme=http/exp",  # storage + "/exp"
])
def test_split_experiment_both_forms(text):
    assert split_experiment(text) == (URI, "exp")


def test_split_experiment_plain_and_without_name():
    assert split_experiment("gs://b/a/b/exp/") == ("gs://b/a/b", "exp")
    with pytest.raises(InputError, match="no experiment name"):
        split_experiment("s3://bucket")


def test_mirror_dir(cache):
    m = mirror_dir(URI, "exp")
    assert m.name == "exp" and m.parent.parent == cache / "remote"
    assert m.parent.name.startswith("s3_bkt_runs-")
    assert mirror_dir("s3://bkt/runs/?endpoint_override=127.0.0.1:9&scheme=http", "exp") == m
    # Same bucket name on another endpoint is another storage.
    assert mirror_dir("s3://bkt/runs?endpoint_override=127.0.0.1:10&scheme=http", "exp") != m
    assert mirror_dir("s3://bkt/runs", "exp") != m
    assert experiment_local_dir(join_uri(URI, "exp")) == m
    assert experiment_local_dir("/x/y") == __import__("pathlib").Path("/x/y")


def test_resolve_storage_uri_checked_without_network():
    # An endpoint_override skips pyarrow's region lookup: nothing is contacted here.
    assert resolve_storage(URI + "&region=us-east-1") == URI + "&region=us-east-1"
    with pytest.raises(InputError, match=r"--storage='foo://b/x'.*pyarrow cannot open"):
        resolve_storage("foo://b/x")


def test_uri_storage_needs_study_storage(cache):
    from tuning.sweep.options import SweepOptions
    from tuning.sweep.prepare import prepare_sweep

    with pytest.raises(InputError) as err:
        prepare_sweep(SweepOptions(storage=URI, address="local"))
    msg = str(err.value)
    assert "--study-storage" in msg and URI in msg and "postgresql://" in msg \
        and "sqlite:////abs/path.db" in msg and "\n" not in msg
    assert not cache.exists()  # nothing created


def test_spec_in_object_storage(bucket, cache):
    mirror = create_remote_experiment(URI, "exp", "stage1")
    assert mirror == mirror_dir(URI, "exp") and (mirror / "seltune" / "remote.json").is_file()
    spec = make_spec(URI, name="exp")
    assert spec.path == mirror and spec.uri == join_uri(URI, "exp") == spec.location
    save_spec(spec)
    uploaded = bucket / "exp" / "seltune" / "sweep.json"
    assert json.loads(uploaded.read_text())["storage"] == URI
    assert not (bucket / "exp" / "seltune" / "remote.json").exists()  # marker stays local
    assert load_spec(mirror) == spec


def test_explicit_name_taken_in_storage(bucket, cache):
    mirror = create_remote_experiment(URI, "exp", "stage1")
    save_spec(make_spec(URI, name="exp"))
    with pytest.raises(InputError, match=r"already exists.*seltune resume s3://bkt/runs/exp"):
        create_remote_experiment(URI, "exp", "stage1")
    # Taken in the storage even when this machine has no mirror of it.
    import shutil

    shutil.rmtree(mirror)
    with pytest.raises(InputError, match="already exists"):
        create_remote_experiment(URI, "exp", "stage1")


def test_half_started_mirror_refused(bucket, cache):
    create_remote_experiment(URI, "exp", "stage1")  # no spec uploaded (yet)
    with pytest.raises(InputError, match="local mirror"):
        create_remote_experiment(URI, "exp", "stage1")


def test_automatic_names_skip_taken_remote_ones(bucket, cache):
    first = create_remote_experiment(URI, None, "stage1")
    save_spec(make_spec(URI, name=first.name))
    import shutil

    shutil.rmtree(first)  # remote spec only: the name is still taken
    second = create_remote_experiment(URI, None, "stage1")
    third = create_remote_experiment(URI, None, "stage1")
    assert len({first.name, second.name, third.name}) == 3
    assert all(p.name.startswith("stage1-") for p in (second, third))


def test_find_downloads_into_mirror(bucket, cache):
    mirror = create_remote_experiment(URI, "exp", "stage1")
    spec = make_spec(URI, name="exp")
    save_spec(spec)
    (bucket / "exp" / "seltune" / "trials.json").write_text('{"trials": {}}')
    import shutil

    shutil.rmtree(mirror)
    for text, storage in ((join_uri(URI, "exp"), None), (URI + "/exp", None), ("exp", URI)):
        found = find_experiment(text, storage)
        assert found == mirror and (mirror / "seltune" / "trials.json").is_file()
        assert load_spec(found) == spec
    # A file the storage no longer has is not kept in the mirror.
    (mirror / "seltune" / "driver.json").write_text("{}")
    find_experiment(join_uri(URI, "exp"))
    assert not (mirror / "seltune" / "driver.json").exists()
    with pytest.raises(InputError, match=r"s3://bkt/runs/nope.*no such experiment"):
        find_experiment(join_uri(URI, "nope"))
    (bucket / "plain").mkdir()
    (bucket / "plain" / "x").write_text("x")
    with pytest.raises(InputError, match="not a seltune experiment"):
        find_experiment("plain", URI)


def test_driver_lock_is_published(bucket, cache):
    from tuning.sweep.lock import claim_driver, release_driver

    mirror = create_remote_experiment(URI, "exp", "stage1")
    claim_driver(mirror)
    remote_lock = bucket / "exp" / "seltune" / "driver.json"
    assert json.loads(remote_lock.read_text())["pid"] > 0
    release_driver(mirror)
    assert not remote_lock.exists() and not (mirror / "seltune" / "driver.json").exists()


def test_local_experiment_publishes_nothing(tmp_path, cache):
    spec = make_spec(tmp_path)
    (tmp_path / "exp" / "seltune").mkdir(parents=True)
    save_spec(spec)
    assert spec.uri is None and spec.location == str(tmp_path / "exp")
    assert not cache.exists()


def test_restored_ledger_and_asha_write_where_this_driver_runs(tmp_path):
    """Tuner.restore unpickles the ledger callback and ASHA from tuner.pkl; they must use
    this driver's experiment directory (e.g. this machine's mirror), not the pickled one."""
    import pickle

    from tuning.experiment.layout import set_running_experiment
    from tuning.sweep.callbacks import LedgerCallback
    from tuning.sweep.scheduler import build_scheduler

    ledger = LedgerCallback(str(tmp_path / "elsewhere"))
    asha = build_scheduler({"kind": "asha", "grace_period": 1, "max_t": 3,
                            "reduction_factor": 3.0}, "augrc", "min",
                           tmp_path / "elsewhere" / "seltune" / "asha_state.json")
    blobs = pickle.dumps(ledger), pickle.dumps(asha)
    set_running_experiment(tmp_path / "here")
    try:
        ledger2, asha2 = (pickle.loads(b) for b in blobs)
    finally:
        set_running_experiment(None)
    assert ledger2.experiment_dir == str(tmp_path / "here")
    assert asha2._state_path == str(tmp_path / "here" / "seltune" / "asha_state.json")
    # No running experiment (e.g. a test unpickling it): the pickled paths stay.
    assert pickle.loads(blobs[0]).experiment_dir == str(tmp_path / "elsewhere")
