"""``docs/ARCHITECTURE.md``'s module tree names exactly the modules the code has.

The tree is the first fenced block under "## The house": two spaces of indent per
level, ``name/`` for a folder, then one or more ``file.py`` names separated by single
spaces, then (after two or more spaces) a description. ``__init__.py`` files are not
listed; every other ``.py`` file of ``core/``, ``search_spaces/``, ``tuning/`` and
``cluster/`` is, once.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "search_spaces", "tuning", "cluster")


def parse_tree(text: str) -> list[str]:
    """The ``.py`` paths the first fenced block after ``## The house`` lists."""
    section = text.split("## The house", 1)[1]
    block = section.split("```", 2)[1]
    stack: list[str] = []
    found: list[str] = []
    for line in block.splitlines()[1:]:
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip(" "))) // 2
        names = re.split(r" {2,}", line.strip(), maxsplit=1)[0].split(" ")
        if len(names) == 1 and names[0].endswith("/"):
            del stack[depth:]
            stack.append(names[0].rstrip("/"))
            continue
        parent = stack[:depth]
        found += ["/".join([*parent, n]) for n in names if n.endswith(".py")]
    return found


def code_modules() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
                  if p.name != "__init__.py")


def test_parse_tree_reads_folders_files_and_descriptions():
    text = ("## The house\n\n```\na/                 the a package\n  x.py y.py        two\n"
            "  b/\n    z.py           deep\n  w.py             back up\nc/\n  v.py\n```\n")
    assert parse_tree(text) == ["a/x.py", "a/y.py", "a/b/z.py", "a/w.py", "c/v.py"]


def test_the_tree_in_the_doc_matches_the_files():
    listed = parse_tree((ROOT / "docs" / "ARCHITECTURE.md").read_text())
    ours = [p for p in listed if p.split("/")[0] in PACKAGES]
    twice = sorted({p for p in ours if ours.count(p) > 1})
    assert not twice, f"listed more than once in docs/ARCHITECTURE.md: {twice}"
    missing = sorted(set(code_modules()) - set(ours))
    stale = sorted(set(ours) - set(code_modules()))
    assert not missing and not stale, (
        f"docs/ARCHITECTURE.md's tree is out of date: not listed {missing}; "
        f"listed but gone {stale}")
