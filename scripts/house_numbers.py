"""Structure figures of the product code (``core``, ``search_spaces``, ``tuning``, ``cluster``).

Usage::

    python scripts/house_numbers.py            # this checkout
    python scripts/house_numbers.py DIR        # another checkout (e.g. a git worktree)
    python scripts/house_numbers.py --json

Prints: files over 400 lines, functions over 60 lines, function-local imports,
import cycles (strongly connected groups of first-party modules, every import counted:
module level, inside functions and under ``TYPE_CHECKING``), library modules that import
the CLI, and private-attribute reads (``obj._name`` where the module does not define
``_name`` itself) in modules that import Ray or Optuna. Read from the source text; nothing is imported.
``tests/unit/test_layering.py`` uses :func:`module_graph` and :func:`cycles` to keep the
cycles and the CLI imports at zero.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

PACKAGES = ("core", "search_spaces", "tuning", "cluster")
CLI = "tuning.cli"
BIG_FILE = 400
BIG_FUNCTION = 60


def modules(root: Path) -> dict[str, Path]:
    """``{dotted module name: file}`` of the product packages under ``root``."""
    out: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _imports(tree: ast.AST, name: str, is_package: bool) -> list[tuple[str, ast.AST]]:
    """Every imported dotted name in ``tree`` (relative imports resolved)."""
    found: list[tuple[str, ast.AST]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found += [(f"{base}.{alias.name}", node) for alias in node.names]
            found.append((base, node))
    return found


def module_graph(root: Path) -> dict[str, set[str]]:
    """``{module: first-party modules it imports}``; ``from a import b`` counts ``a.b``
    when that is a module, else ``a``. Importing a submodule does not count its parent
    package (whose ``__init__`` Python also runs), so lazy package facades add no edges."""
    mods = modules(root)
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        edges: set[str] = set()
        for target, _ in _imports(tree, name, path.name == "__init__.py"):
            if target in mods:
                edges.add(target)
        # ``from a import b`` also listed ``a``: keep ``a`` only when ``b`` is not a module
        for target in list(edges):
            if any(t.startswith(target + ".") for t in edges) and _only_submodules(
                    tree, name, path.name == "__init__.py", target, mods):
                edges.discard(target)
        edges.discard(name)
        graph[name] = edges
    return graph


def _only_submodules(tree, name, is_package, package, mods) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for target, _ in _imports(ast.Module(body=[node], type_ignores=[]), name, is_package):
                if target == package:
                    names = [a.name for a in node.names]
                    if any(f"{package}.{n}" not in mods for n in names):
                        return False
        elif isinstance(node, ast.Import) and any(a.name == package for a in node.names):
            return False
    return True


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    groups: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(groups)


def cli_imports(graph: dict[str, set[str]]) -> dict[str, list[str]]:
    """Library modules (outside ``tuning.cli``) that import ``tuning.cli``."""
    return {m: sorted(t for t in ts if t == CLI or t.startswith(CLI + "."))
            for m, ts in graph.items()
            if not (m == CLI or m.startswith(CLI + "."))
            and any(t == CLI or t.startswith(CLI + ".") for t in ts)}


def _own_attributes(tree: ast.AST) -> set[str]:
    """Names the module itself defines: ``self.x = ...`` targets, methods, and module or
    class level names (an ``obj._x`` read of one of those is not a foreign private)."""
    own: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            own.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            own.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            own.add(node.id)
    return own


def figures(root: Path) -> dict[str, object]:
    mods = modules(root)
    big_files, big_functions, private_reads = [], [], []
    local_imports = 0
    for name, path in mods.items():
        text = path.read_text()
        tree = ast.parse(text, filename=str(path))
        lines = len(text.splitlines())
        if lines > BIG_FILE:
            big_files.append((str(path.relative_to(root)), lines))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                span = (node.end_lineno or node.lineno) - node.lineno + 1
                if span > BIG_FUNCTION:
                    big_functions.append((f"{path.relative_to(root)}:{node.name}", span))
                local_imports += sum(isinstance(n, (ast.Import, ast.ImportFrom))
                                     for n in ast.walk(node) if n is not node
                                     and not isinstance(n, (ast.FunctionDef,
                                                            ast.AsyncFunctionDef)))
        uses_ray = any(t.split(".")[0] in ("ray", "optuna")
                       for t, _ in _imports(tree, name, path.name == "__init__.py"))
        if uses_ray:
            own = _own_attributes(tree)
            for node in ast.walk(tree):
                if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                        and not node.attr.startswith("__") and node.attr not in own):
                    private_reads.append(f"{path.relative_to(root)}:{node.lineno}:{node.attr}")
            private_reads += [f"{path.relative_to(root)}:{n.lineno}:{t}"
                              for t, n in _imports(tree, name, False) if "._" in t
                              and t.split(".")[0] in ("ray", "optuna")]
    graph = module_graph(root)
    return {
        "files_over_400_lines": sorted(big_files, key=lambda x: -x[1]),
        "functions_over_60_lines": sorted(big_functions, key=lambda x: -x[1]),
        "function_local_imports": local_imports,
        "import_cycles": cycles(graph),
        "library_imports_of_cli": cli_imports(graph),
        "private_attribute_reads": len(private_reads),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", default=str(Path(__file__).resolve().parents[1]))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    out = figures(Path(args.root))
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    for key, value in out.items():
        count = value if isinstance(value, int) else len(value)  # type: ignore[arg-type]
        print(f"{key.replace('_', ' ')}: {count}")
        if isinstance(value, list):
            for item in value:
                print(f"    {item}")
        elif isinstance(value, dict):
            for k, v in value.items():
                print(f"    {k} -> {', '.join(v)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
