"""The dependency direction of docs/ARCHITECTURE.md: tuning -> core, tuning -> search_spaces.

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


@pytest.mark.parametrize("package", ["core.argse", "core.stage1"])
def test_package_exports_are_lazy_and_complete(package):
    """Every public name resolves, and the lazy table matches ``__all__``."""
    import importlib

    module = importlib.import_module(package)
    assert set(module.__all__) == set(module._SOURCES)
    for name in module.__all__:
        assert getattr(module, name) is not None
    with pytest.raises(AttributeError):
        module.no_such_name  # noqa: B018


def test_sweep_driver_validates_without_torch(tmp_path):
    """A sweep's driver builds and checks configs, builds the spec and Tune's loggers
    without importing torch: the trials import it, the driver never needs it."""
    import subprocess

    from core.bundles import save_bundle
    from core.synth import synth_argse_bundle

    save_bundle(synth_argse_bundle(classes=10, n_max=40, per_class=(6, 4, 8)), tmp_path / "b")
    code = (
        "import sys\n"
        "from tuning.sweep.options import SweepOptions\n"
        "from tuning.sweep.prepare import prepare_sweep\n"
        "from tuning.sweep.driver import _loggers\n"
        f"spec, bundle = prepare_sweep(SweepOptions(data=r'{tmp_path}/b', storage=r'{tmp_path}/runs', "
        "num_samples=2, overrides=['cycles=1']))\n"
        "_loggers(False)\n"
        "from tuning.trainables import TRAINABLES\n"
        "for info in TRAINABLES.values():\n"
        "    info.build_config({})\n"
        "print('torch' in sys.modules)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip() == "False"


def _house():
    """``scripts/house_numbers.py`` (the graph code is shared with that report)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("house_numbers",
                                                  ROOT / "scripts" / "house_numbers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_import_cycles():
    """Every import counts (function-local and ``TYPE_CHECKING`` ones too): a cycle hidden
    behind a local import still ties two modules into one."""
    house = _house()
    found = house.cycles(house.module_graph(ROOT))
    assert not found, f"import cycles among product modules: {found}"


def test_library_code_never_imports_the_cli():
    house = _house()
    found = house.cli_imports(house.module_graph(ROOT))
    assert not found, f"library modules import tuning.cli: {found}"


@pytest.mark.parametrize("package", ["tuning/experiment", "tuning/results"])
def test_results_layer_never_imports_ray_or_the_sweep(package):
    """What reads a sweep's files (status, export, report) works without Ray."""
    imports = _imported_modules(package)
    bad = {m: f for m, f in imports.items()
           if m.split(".")[0] == "ray" or m == "tuning.sweep" or m.startswith("tuning.sweep.")}
    assert not bad, f"{package} imports {bad}"


def test_cycle_finder_sees_a_cycle_behind_a_local_import(tmp_path):
    house = _house()
    (tmp_path / "core").mkdir()
    (tmp_path / "core" / "__init__.py").write_text("")
    (tmp_path / "core" / "a.py").write_text("from core.b import f\n")
    (tmp_path / "core" / "b.py").write_text("def f():\n    from core import a\n")
    assert house.cycles(house.module_graph(tmp_path)) == [["core.a", "core.b"]]


def _imported_modules(package: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                found.setdefault(name, str(path.relative_to(ROOT)))
    return found
