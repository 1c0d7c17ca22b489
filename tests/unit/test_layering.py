"""The dependency direction of DESIGN.md: tuning -> core, tuning -> search_spaces.

core/ and search_spaces/ never import ray, optuna or tuning; search_spaces is stdlib only.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _imported_top_levels(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


@pytest.mark.parametrize("package", ["core", "search_spaces"])
def test_no_ray_optuna_or_tuning(package):
    imports = _imported_top_levels(package)
    for forbidden in ("ray", "optuna", "tuning"):
        assert forbidden not in imports, f"{package} imports {forbidden} in {imports[forbidden]}"


def test_search_spaces_is_stdlib_only():
    imports = _imported_top_levels("search_spaces")
    allowed = set(sys.stdlib_module_names) | {"search_spaces", "core", "yaml"}
    extra = {name: files for name, files in imports.items() if name not in allowed}
    assert not extra, f"search_spaces imports non-stdlib modules: {extra}"
