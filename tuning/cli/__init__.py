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
    if not hasattr(args, "func"):  # `seltune` alone: the help, and a usage error's code
        parser.print_help()
        return 2
    try:
        _join_seltune_cluster(args)
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


def _address_of(args: argparse.Namespace) -> str | None:
    """The Ray address the command will join: ``--address``, else ``$RAY_ADDRESS``, else
    (``resume``) the one its experiment recorded; None for a local Ray."""
    import json
    import os
    from pathlib import Path

    address = getattr(args, "address", None) or os.environ.get("RAY_ADDRESS")
    experiment = getattr(args, "experiment", None)
    if not address and args.command == "resume" and experiment:
        storage = getattr(args, "storage", None)
        for base in (Path(experiment), Path(storage or ".") / experiment):
            try:
                address = json.loads((base / "seltune" / "sweep.json").read_text()).get(
                    "address")
                break
            except (OSError, ValueError, AttributeError):
                continue
    return address if isinstance(address, str) and address not in ("", "local", "auto") \
        else None


def _join_seltune_cluster(args: argparse.Namespace) -> None:
    """Give a driver joining a cluster that ``seltune cluster up`` started its token.

    Ray reads ``RAY_AUTH_MODE`` / ``RAY_AUTH_TOKEN_PATH`` once, when it is imported, so
    this runs before any command imports Ray. Without it, ``seltune sweep --address
    HOST:PORT`` of such a cluster without ``eval "$(seltune cluster env)"`` first fails
    to authenticate; a cluster seltune did not start is left to the environment (and
    :func:`tuning.sweep.runtime.start_ray` names a missing token as the cause).
    """
    import os

    address = _address_of(args)
    if address is None or os.environ.get("RAY_AUTH_MODE") or "ray" in sys.modules:
        return
    from cluster.local import apply_env, find_cluster

    state = find_cluster(address)
    if state is None or state.auth_mode != "token":
        return
    apply_env(state)
    print(f"[seltune] joining the cluster `seltune cluster up` started in {state.dir} with "
          f"its token ({state.token_file})", file=sys.stderr, flush=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
