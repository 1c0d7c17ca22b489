"""Lazy exports for a package ``__init__`` (PEP 562).

A package such as :mod:`core.argse` re-exports names from its submodules, several of
which import torch. Importing them eagerly would make ``import core.argse.config`` (a
Ray driver validating a config) import torch too. With :func:`lazy_exports` a name is
imported from its submodule on first access and then cached in the package.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, sources: dict[str, str]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level ``__getattr__`` and ``__dir__`` for ``package``.

    Args:
        package: the package's ``__name__``.
        sources: ``{public name: submodule that defines it}``.
    """

    def __getattr__(name: str) -> Any:
        if name in sources:
            value = getattr(importlib.import_module(sources[name]), name)
            setattr(sys.modules[package], name, value)  # later lookups skip this
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(sources))

    return __getattr__, __dir__
