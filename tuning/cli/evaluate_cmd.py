"""``seltune evaluate CKPT --data BUNDLE --split test``: recompute metrics from a checkpoint.

The checkpoint's kind is recognised from its files: an AR-GSE ``*.ckpt`` (or a
directory holding ``gating_selective.ckpt`` / ``gating_pretrained.ckpt``) or a Stage-1
directory holding ``stage1_head.pth``.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from core.device import DEVICE_CHOICES
from core.errors import InputError


def checkpoint_kind(path: str | Path) -> str:
    """``"argse"`` or ``"stage1"`` for a checkpoint path; InputError otherwise."""
    path = Path(path)
    if path.is_file() and path.suffix == ".ckpt":
        return "argse"
    if path.is_dir():
        if (path / "stage1_head.pth").is_file():
            return "stage1"
        if any((path / n).is_file() for n in ("gating_selective.ckpt", "gating_pretrained.ckpt")):
            return "argse"
    if path.is_file() and path.name == "stage1_head.pth":
        return "stage1"
    raise InputError(
        "not a seltune checkpoint", file=path,
        expected="a *.ckpt file, or a directory with gating_selective.ckpt, "
        "gating_pretrained.ckpt or stage1_head.pth",
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="recompute metrics of a checkpoint on a bundle split")
    p.add_argument("checkpoint", metavar="CKPT")
    p.add_argument("--data", required=True, help="bundle directory")
    p.add_argument("--split", default="test")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    module = {"argse": "tuning.cli.train_argse", "stage1": "tuning.cli.train_stage1"}[
        checkpoint_kind(args.checkpoint)
    ]
    return int(importlib.import_module(module).run_evaluate(args))
