"""Choosing the Ray address (no Ray started)."""

from __future__ import annotations

import pytest

from core.errors import InputError
from tuning.sweep.runtime import resolve_address


def test_explicit_env_and_default(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert resolve_address(None) == "local"
    assert resolve_address("auto") == "auto"
    assert resolve_address("10.0.0.5:6379") == "10.0.0.5:6379"
    assert resolve_address("ray://head:10001") == "ray://head:10001"
    monkeypatch.setenv("RAY_ADDRESS", "head.example:6379")
    assert resolve_address(None) == "head.example:6379"
    assert resolve_address("local") == "local"  # the flag wins over the environment


@pytest.mark.parametrize("bad", ["localhost", "http://x:1", "host:port", "a b:1"])
def test_bad_addresses(bad):
    with pytest.raises(InputError, match="--address"):
        resolve_address(bad)


def test_trial_actors_get_no_runtime_env_of_their_own(monkeypatch):
    """Tune's per-actor PL_DISABLE_FORK (which keeps trials off Ray's prestarted
    workers) moves into the environment that a local Ray's workers inherit."""
    import os

    from ray.tune.execution import class_cache

    from tuning.sweep.runtime import _trial_actors_use_prestarted_workers

    monkeypatch.setattr(class_cache, "DEFAULT_ENV_VARS", {"PL_DISABLE_FORK": "1"})
    monkeypatch.delenv("PL_DISABLE_FORK", raising=False)
    _trial_actors_use_prestarted_workers()
    assert class_cache.DEFAULT_ENV_VARS == {}
    assert os.environ["PL_DISABLE_FORK"] == "1"
    # What Tune now attaches to a trial actor: nothing but variables it propagates.
    for name in class_cache.ENV_VARS_TO_PROPAGATE:
        monkeypatch.delenv(name, raising=False)

    class Trainable:
        pass

    remote = class_cache._ActorClassCache().get(Trainable)
    assert not remote._default_options.get("runtime_env")  # Ray normalises it to {}


def test_loopback_addresses(monkeypatch):
    from tuning.sweep.runtime import _is_loopback

    for address in ("127.0.0.1:6379", "localhost:6379", "127.1:6379", "ray://127.0.0.1:10001"):
        assert _is_loopback(address), address
    for address in ("10.0.0.5:6379", "head.example:6379", "ray://10.0.0.5:10001"):
        assert not _is_loopback(address), address
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:7000")
    assert _is_loopback("auto")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:7000")
    assert not _is_loopback("auto")
