"""Terminal output shared by all commands: JSON on stdout, tables and progress via rich.

Human-readable output (tables, progress bars, notes) goes to stderr when ``--json`` is
given, so that stdout holds exactly one JSON object.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from core.jsonable import to_jsonable


@contextlib.contextmanager
def stdout_to_stderr(active: bool = True) -> Iterator[None]:
    """Send everything written to stdout (file descriptor 1, so also Ray's and torch's
    own prints, and child processes') to stderr while the block runs.

    ``--json`` commands wrap their work in this and print their one JSON object after
    it, so stdout holds nothing but that object.
    """
    if not active:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n")
    sys.stdout.flush()


def console(stderr: bool = False):
    """A rich console; when the stream is not a terminal (a log file, CI) it is 200
    columns wide instead of rich's 80, so wide metric tables are not truncated."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else 200
    return Console(stderr=stderr, highlight=False, width=width)


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def print_table(
    title: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    stderr: bool = False,
) -> None:
    """Print a rich table; floats are shown with 4 decimals."""
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for i, col in enumerate(columns):
        # the first column names rows (baselines like "plugin_worst"): never truncate it
        if i == 0:
            table.add_column(col, justify="left", no_wrap=True, min_width=12)
        else:
            table.add_column(col, justify="right")
    for row in rows:
        table.add_row(*[fmt(v) for v in row])
    console(stderr).print(table)


def progress(stderr: bool = True):
    """A rich progress bar (with elapsed/remaining time) writing to stderr by default."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=console(stderr),
        transient=False,
    )


# Columns of the train/evaluate tables, in order; a metric missing from a row shows "-".
HEADLINE_METRICS = (
    "worst_group_error", "balanced_error", "coverage", "worst_group_area", "balanced_area",
    "augrc", "aurc", "risk_at_coverage", "accuracy", "ece", "nll",
)


def print_train_result(result: dict[str, Any], as_json: bool) -> None:
    """Print a ``train --json``-shaped result: the model beside every baseline.

    ``result`` = ``{"val": {METRIC: v}, "test": {...}, "baselines": {"val": {NAME:
    {METRIC: v}}, "test": {...}}, "config": {...}, "checkpoint": PATH}``.
    """
    if as_json:
        print_json(result)
        return
    for split in ("val", "test"):
        if split not in result:
            continue
        rows_src = {"model": result[split], **result.get("baselines", {}).get(split, {})}
        present = [m for m in HEADLINE_METRICS if any(m in r for r in rows_src.values())]
        rows = [[name, *[r.get(m) for m in present]] for name, r in rows_src.items()]
        print_table(f"{split}: trained model vs baselines", ["", *present], rows)
    for line in result.get("verdict") or []:
        print(line, flush=True)  # plain: one line a reader (or grep) can take whole
    if result.get("checkpoint"):
        console().print(f"checkpoint: {result['checkpoint']}")


def print_metrics(split: str, metrics: dict[str, Any], as_json: bool) -> None:
    """Print an ``evaluate --json``-shaped result: ``{"split": NAME, "metrics": {...}}``."""
    if as_json:
        print_json({"split": split, "metrics": metrics})
        return
    scalars = [(k, v) for k, v in metrics.items() if isinstance(v, (int, float)) or v is None]
    print_table(f"metrics on {split}", ["metric", "value"], scalars)
