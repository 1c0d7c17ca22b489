"""What the CLI integration tests share: a private-Ray environment, two tiny bundles and a
``seltune`` runner (imported by the test modules; not a test module)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SELTUNE = [sys.executable, "-m", "tuning.cli"]


def private_env(prefix: str, **extra: str):
    """Yield ``os.environ`` with a private short RAY_TMPDIR (unix socket paths), HF
    offline and no RAY_ADDRESS; the temp dir is removed afterwards."""
    ray_tmp = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    e = dict(os.environ, RAY_TMPDIR=ray_tmp, HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0",
             PYTHONPATH=str(ROOT), **extra)
    e.pop("RAY_ADDRESS", None)
    try:
        yield e
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def write_small_bundles(root: Path) -> Path:
    """``root/argse`` (20 classes, 3 experts) and ``root/stage1`` (16-d features)."""
    from core.bundles import save_bundle
    from core.synth import synth_argse_bundle, synth_stage1_bundle

    save_bundle(synth_argse_bundle(classes=20, n_max=100, per_class=(15, 10, 20)),
                root / "argse")
    save_bundle(synth_stage1_bundle(sizes=(600, 300, 300), dim=16), root / "stage1")
    return root


def run_seltune(env, *args, timeout=240) -> subprocess.CompletedProcess:
    """Run ``seltune ARGS`` in the repository; fail the test with its stderr tail."""
    p = subprocess.run([*SELTUNE, *map(str, args)], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=timeout)
    assert p.returncode == 0, f"seltune {' '.join(map(str, args))} failed:\n{p.stderr[-4000:]}"
    return p
