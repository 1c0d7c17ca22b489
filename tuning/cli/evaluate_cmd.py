"""``seltune evaluate CKPT --data BUNDLE --split test``: recompute metrics from a checkpoint.

``CKPT`` is a checkpoint or an export directory (``seltune export --out DIR``: one
holding ``checkpoint/`` and ``metrics.json``; its ``checkpoint/`` is evaluated). The
checkpoint's kind is recognised from its files: an AR-GSE ``*.ckpt`` (or a directory
holding ``gating_selective.ckpt`` / ``gating_pretrained.ckpt``) or a Stage-1 directory
holding ``stage1_head.pth``. An AR-GSE checkpoint's stored expert order must be the
bundle's (the gate's inputs are per expert: swapped experts change every decision
without any shape error).
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

from core.device import DEVICE_CHOICES
from core.errors import InputError

EXPORT_CHECKPOINT = "checkpoint"
EXPORT_METRICS = "metrics.json"
_NOT_A_CHECKPOINT = ("a *.ckpt file, or a directory with gating_selective.ckpt, "
                     "gating_pretrained.ckpt or stage1_head.pth, or an export directory "
                     "with checkpoint/ and metrics.json")


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint path of ``path``: ``path/checkpoint`` for an export directory,
    else ``path`` itself."""
    path = Path(path)
    if path.is_dir() and (path / EXPORT_CHECKPOINT).is_dir() and (path / EXPORT_METRICS).is_file():
        return path / EXPORT_CHECKPOINT
    return path


def checkpoint_kind(path: str | Path) -> str:
    """``"argse"`` or ``"stage1"`` for a checkpoint (or export) path; InputError otherwise."""
    path = resolve_checkpoint(path)
    if path.is_file() and path.suffix == ".ckpt":
        return "argse"
    if path.is_dir():
        if (path / "stage1_head.pth").is_file():
            return "stage1"
        if any((path / n).is_file() for n in ("gating_selective.ckpt", "gating_pretrained.ckpt")):
            return "argse"
    if path.is_file() and path.name == "stage1_head.pth":
        return "stage1"
    raise InputError("not a seltune checkpoint", file=path, expected=_NOT_A_CHECKPOINT)


def check_argse_expert_order(checkpoint: str | Path, bundle_dir: str | Path) -> None:
    """InputError when the bundle's ``expert_names`` are not the checkpoint's, in order.

    Reads only the checkpoint and the bundle's ``manifest.json``; a bundle that cannot be
    read is left to the bundle loader to report.
    """
    from core.argse.checkpoint import load_checkpoint
    from core.argse.compat import check_expert_order

    manifest_path = Path(bundle_dir) / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return  # load_expert_bundle says what is wrong with it, on one line
    names = manifest.get("expert_names") if isinstance(manifest, dict) else None
    if not isinstance(names, list):
        return
    ckpt = load_checkpoint(checkpoint)
    stored = ckpt.get("expert_names")
    if stored:
        check_expert_order(stored, names, checkpoint=ckpt["_file"], bundle=bundle_dir)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="recompute metrics of a checkpoint on a bundle split",
                       description="Recompute metrics of a checkpoint (or of an export "
                       "directory's checkpoint/) on a bundle split.")
    p.add_argument("checkpoint", metavar="CKPT",
                   help="checkpoint file/directory, or an export directory")
    p.add_argument("--data", required=True, help="bundle directory")
    p.add_argument("--split", default="test")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    kind = checkpoint_kind(args.checkpoint)
    args.checkpoint = str(resolve_checkpoint(args.checkpoint))
    if kind == "argse":
        check_argse_expert_order(args.checkpoint, args.data)
        return _evaluate_argse(args)
    module = {"argse": "tuning.cli.train_argse", "stage1": "tuning.cli.train_stage1"}[kind]
    return int(importlib.import_module(module).run_evaluate(args))


def _evaluate_argse(args: argparse.Namespace) -> int:
    """``train_argse.run_evaluate`` with a progress bar (stderr) over the split's rows."""
    from core.argse import load_predictor, model_metrics
    from core.bundles import load_expert_bundle
    from tuning.terminal import print_metrics, progress

    predictor = load_predictor(args.checkpoint, args.device)
    bundle = load_expert_bundle(args.data)
    with progress() as bar:
        task = bar.add_task(f"evaluate {args.split}", total=None, status="")
        try:
            metrics = model_metrics(
                predictor, bundle, args.split,
                on_step=lambda done, total: bar.update(task, completed=done, total=total))
        except BaseException:
            bar.update(task, visible=False)  # an error stays one line
            raise
    print_metrics(args.split, metrics, args.json)
    return 0
