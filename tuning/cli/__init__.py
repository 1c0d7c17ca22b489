"""The ``seltune`` command line.

Each command group lives in its own module exposing ``register(subparsers)``; the
module sets ``func`` on its parser(s), and ``func(args) -> int`` is the exit code.
Heavy imports (torch, ray, optuna) happen inside ``func``, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from core.errors import SeltuneError

# Command modules, in the order their commands appear in ``seltune --help``.
COMMAND_MODULES = (
    "tuning.cli.data_cmd",
    "tuning.cli.train_cmd",
    "tuning.cli.evaluate_cmd",
    "tuning.cli.sweep_cmd",
    "tuning.cli.cluster_cmd",
    "tuning.cli.dashboard_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seltune",
        description="Hyperparameter search for selective classifiers "
        "(AR-GSE gating, Stage-1 exit gates) on Ray Tune + Optuna + ASHA.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        if importlib.util.find_spec(name) is None:  # command group not built yet
            continue
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        if args.command is None and hasattr(parser, "default_func"):
            return int(parser.default_func(args))
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except SeltuneError as exc:
        print(f"seltune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("seltune: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from tuning.cli.disk_full import disk_full_message

        message = disk_full_message(exc, args)
        if message is None:
            raise
        print(f"seltune: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
