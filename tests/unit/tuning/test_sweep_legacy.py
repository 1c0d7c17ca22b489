"""Pickles written by a seltune from before the ``tuning/`` packages still load."""

import pickle
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def _old_pickle(module: str, name: str) -> bytes:
    """A protocol-4 pickle of a global reference ``module.name`` (what Ray wrote)."""
    return b"\x80\x04\x95" + b"\x00" * 8 + b"\x8c" + bytes([len(module)]) + module.encode() \
        + b"\x94\x8c" + bytes([len(name)]) + name.encode() + b"\x94\x93\x94."


def test_old_class_paths_resolve_after_install_aliases():
    code = (
        "import pickle, sys\n"
        "from tuning.sweep.legacy import install_aliases\n"
        "install_aliases()\n"
        "from tuning.sweep.searcher import SeltuneOptunaSearch\n"
        "from tuning.sweep.scheduler import PersistentASHA\n"
        "from tuning.sweep.callbacks import LedgerCallback\n"
        "from tuning.trainables.trial import argse_selective\n"
        f"data = {[_old_pickle(m, n) for m, n in (('tuning.searcher', 'SeltuneOptunaSearch'), ('tuning.searcher', 'PersistentASHA'), ('tuning.sweep', 'LedgerCallback'), ('tuning.trainables', 'argse_selective'))]!r}\n"
        "got = [pickle.loads(d) for d in data]\n"
        "assert got == [SeltuneOptunaSearch, PersistentASHA, LedgerCallback, argse_selective], got\n"
        "print('ok')\n"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip() == "ok"


def test_the_pickle_helper_makes_a_global_reference():
    assert pickle.loads(_old_pickle("pathlib", "Path")) is Path
