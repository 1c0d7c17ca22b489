"""Choosing the Ray address (no Ray started)."""

from __future__ import annotations

import pytest

from core.errors import InputError
from tuning.ray_runtime import resolve_address


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
