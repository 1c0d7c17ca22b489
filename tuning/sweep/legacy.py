"""Class paths that experiments made before the ``tuning/`` packages pickled.

Ray Tune pickles the searcher, the scheduler and the callbacks into ``tuner.pkl`` and
its snapshots by module path (``tuning.searcher.SeltuneOptunaSearch``, ...). Those
modules now live in :mod:`tuning.sweep` and :mod:`tuning.trainables`; an experiment
started by an older seltune is still resumed by registering the old module names as
aliases of the new modules before ``Tuner.restore`` unpickles anything.
"""

from __future__ import annotations

import importlib
import sys
import types

#: old module path -> the modules (in order) that now hold its pickled names
MOVED: dict[str, tuple[str, ...]] = {
    "tuning.searcher": ("tuning.sweep.searcher", "tuning.sweep.scheduler"),
    "tuning.optuna_space": ("tuning.sweep.space",),
    "tuning.sweep": ("tuning.sweep.callbacks", "tuning.sweep.driver"),
    "tuning.trainables": ("tuning.trainables.trial",),
}

#: old module path -> its pickled names that are now submodules of the package at that
#: path (``tuning.trainables.stage1`` is the Stage-1 adapter module; an old pickle's
#: ``tuning.trainables.stage1`` is the Tune function)
SHADOWED: dict[str, tuple[str, ...]] = {
    "tuning.trainables": ("argse_selective", "argse_pretrain", "stage1"),
}


def install_aliases() -> None:
    """Make the old module paths of :data:`MOVED` resolve for the unpickler.

    A missing module gets a stand-in module holding the names of its new modules; an
    existing one (``tuning.sweep`` and ``tuning.trainables`` are packages now) gets the
    missing names added as attributes, and the names of :data:`SHADOWED` replaced
    (code imports those submodules with ``from package.submodule import ...``, which
    reads ``sys.modules``, not the package attribute).
    """
    for old, news in MOVED.items():
        module = sys.modules.get(old)
        if module is None:
            try:
                module = importlib.import_module(old)
            except ModuleNotFoundError:
                module = types.ModuleType(old, f"alias of {', '.join(news)} (old pickles)")
                sys.modules[old] = module
        for new in news:
            for name, value in vars(importlib.import_module(new)).items():
                if name.startswith("__"):
                    continue
                if not hasattr(module, name) or name in SHADOWED.get(old, ()):
                    setattr(module, name, value)
