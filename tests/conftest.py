"""Shared test configuration.

- ``gpu`` tests skip without CUDA.
- ``extended`` tests (the long tier: the whole fault matrix, every kill point, the
  overlapping multi-process resumes) run only when ``-m`` names them, e.g.
  ``bash scripts/test.sh -m extended``; the default run (CI's) keeps one case of each
  behaviour and stays well under 15 minutes on a 2-core box.
- Every test runs with HF offline, so nothing ever reaches a model hub.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    if "extended" not in (config.getoption("-m") or ""):
        later = pytest.mark.skip(reason="the extended tier: runs with -m extended")
        for item in items:
            if "extended" in item.keywords:
                item.add_marker(later)
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch is a hard dependency
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
