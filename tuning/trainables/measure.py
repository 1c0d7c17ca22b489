"""Write :mod:`tuning.trainables.reported_metrics` from what the core trainers report.

Usage::

    python -m tuning.trainables.measure          # print the measured module
    python -m tuning.trainables.measure --write  # rewrite reported_metrics.py

Every trainable's core trainer runs once on its tiny probe (``Adapter.probe``, about a
second each on a CPU); the metric names every report carried, without per-group names
and the iteration counter, are what ``--metric`` accepts. ``tests/unit/tuning/
test_trainables.py`` measures again and fails when the stored module differs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tuning.trainables import TRAINABLES

MODULE = Path(__file__).with_name("reported_metrics.py")

_HEADER = '''"""The metrics each trainable's core trainer puts in every report (generated).

Measured by ``python -m tuning.trainables.measure --write`` (do not edit by hand):
names every report of a tiny run carried, per-group names (``coverage_gK``,
``error_gK``) and the iteration counter left out. Stored so that the sweep driver can
check ``--metric`` without importing torch; ``tests/unit/tuning/test_trainables.py``
re-measures and fails when this differs from what the trainers report.
"""

REPORTED: dict[str, tuple[str, ...]] = {
'''


def measure() -> dict[str, tuple[str, ...]]:
    """``{trainable name: sorted metric names}`` of every trainable (runs torch)."""
    return {name: adapter.measure_reported() for name, adapter in TRAINABLES.items()}


def render(reported: dict[str, tuple[str, ...]]) -> str:
    """The text of ``reported_metrics.py`` for ``reported``."""
    lines = [_HEADER]
    for name, metrics in reported.items():
        lines.append(f"    {json.dumps(name)}: (\n")
        lines.extend(f"        {json.dumps(m)},\n" for m in metrics)
        lines.append("    ),\n")
    lines.append("}\n")
    return "".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--write", action="store_true", help=f"rewrite {MODULE.name}")
    args = parser.parse_args(argv)
    text = render(measure())
    if args.write:
        MODULE.write_text(text)
        print(f"wrote {MODULE}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
