"""Signing what the driver writes; refusing to unpickle what it did not (issue 15,
defect 4). No Ray started."""

from __future__ import annotations

import os
import pickle
import stat

import pytest
from sweep_specs import make_spec

from core.errors import InputError
from tuning.experiment import trust
from tuning.sweep.restart import trusted_snapshot


@pytest.fixture(autouse=True)
def config(tmp_path, monkeypatch):
    monkeypatch.setenv("SELTUNE_CONFIG", str(tmp_path / "config"))
    return tmp_path / "config"


def _experiment(tmp_path):
    exp = tmp_path / "exp"
    (exp / "seltune").mkdir(parents=True)
    (exp / "tuner.pkl").write_bytes(pickle.dumps({"tuner": 1}))
    (exp / "experiment_state-S1.json").write_text('{"trial_data": []}')
    (exp / "searcher-state-S1.pkl").write_bytes(pickle.dumps({"s": 1}))
    (exp / "search_gen_state-S1.json").write_text("{}")
    return exp


class Payload:
    def __reduce__(self):
        return (os.system, ("touch /tmp/pwned",))


def test_key_is_made_once_private_and_outside_the_experiment(config):
    key = trust.load_key()
    path = config / trust.KEY_FILE
    assert key is not None and len(key) == 32 and trust.load_key() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)
    with pytest.raises(InputError, match="readable or writable by others"):
        trust.load_key()


def test_signed_files_verify_and_any_change_is_found(tmp_path):
    exp = _experiment(tmp_path)
    assert [w for _, w in trust.problems(exp)] == ["unsigned"] * 4  # nobody signed it
    trust.sign(exp)
    assert trust.problems(exp) == []
    (exp / "tuner.pkl").write_bytes(pickle.dumps(Payload()))  # a planted payload
    assert trust.problems(exp) == [(exp / "tuner.pkl", "changed since it was signed")]
    # a signed file copied over another's name does not carry its signature along
    (exp / "tuner.pkl").write_bytes((exp / "searcher-state-S1.pkl").read_bytes())
    assert [p.name for p, _ in trust.problems(exp)] == ["tuner.pkl"]


def test_another_users_key_signs_nothing(tmp_path, monkeypatch):
    exp = _experiment(tmp_path)
    trust.sign(exp)
    monkeypatch.setenv("SELTUNE_CONFIG", str(tmp_path / "other-user"))
    trust.load_key()
    assert len(trust.problems(exp)) == 4


def test_sign_with_stamps_only_when_changed(tmp_path):
    exp = _experiment(tmp_path)
    stamps: dict = {}
    trust.sign(exp, stamps)
    sig_file = exp / "seltune" / trust.SIGNATURES_FILE
    before = sig_file.stat().st_mtime_ns
    trust.sign(exp, stamps)  # nothing changed: not rewritten
    assert sig_file.stat().st_mtime_ns == before
    (exp / "experiment_state-S1.json").write_text('{"trial_data": [1]}')
    trust.sign(exp, stamps)
    assert trust.problems(exp) == []


def test_resume_refuses_an_unsigned_folder_in_one_line(tmp_path):
    exp = _experiment(tmp_path)
    spec = make_spec(tmp_path, name="exp")
    with pytest.raises(InputError, match=r"tuner\.pkl: unsigned by this user's seltune: not "
                       r"unpickled .*--trust-experiment") as err:
        trusted_snapshot(spec)
    assert "\n" not in str(err.value)
    trust.sign(exp)
    assert trusted_snapshot(spec) is True
    (exp / "tuner.pkl").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(InputError, match=r"tuner\.pkl: changed since it was signed"):
        trusted_snapshot(spec)


def test_a_snapshot_written_after_the_last_signature_is_not_read(tmp_path, capsys):
    # killed between Tune writing a snapshot and the driver signing it (or tampered):
    # the resume continues from the ledger and study, which unpickle nothing
    exp = _experiment(tmp_path)
    trust.sign(exp)
    (exp / "experiment_state-S1.json").write_text('{"trial_data": [2]}')
    assert trusted_snapshot(make_spec(tmp_path, name="exp")) is False
    assert "experiment_state-S1.json: changed since it was signed" in capsys.readouterr().err


def test_resume_in_object_storage_needs_trust(monkeypatch):
    """Tune's pickles in a bucket are not signed: a resume refuses them in one line,
    before Ray starts, unless --trust-experiment (issue 15, object storage)."""
    import pytest
    from sweep_specs import make_spec

    from core.errors import InputError
    from tuning.sweep import driver

    spec = make_spec("s3://bucket/runs?endpoint_override=127.0.0.1:9&scheme=http")

    def no_ray(*a, **k):
        raise AssertionError("Ray started before the trust check")

    monkeypatch.setattr("tuning.sweep.runtime.ray_session", no_ray)
    with pytest.raises(InputError) as info:
        driver._fit(spec, None, resume=True, num_cpus=None, progress_interval=10.0)
    msg = str(info.value)
    assert msg.startswith("s3://bucket/runs/exp/tuner.pkl: in object storage")
    assert msg.endswith("expected --trust-experiment if you trust everyone who can write there")
    with pytest.raises(AssertionError, match="Ray started"):  # trusted: goes on to Ray
        driver._fit(spec, None, resume=True, num_cpus=None, progress_interval=10.0,
                    trust_experiment=True)
