"""``seltune dashboard EXPERIMENT``: optuna-dashboard on the experiment's Optuna study.

The dashboard is an optional extra (``pip install 'seltune[dashboard]'``); nothing is
installed at run time, a missing extra is a one-line error naming it. The server binds
127.0.0.1 only (the study storage URL may carry a database password, and the
dashboard can edit and delete studies), on ``--port`` or a free port chosen by the OS,
prints the URL once it is listening, and stops on Ctrl-C (or SIGTERM) with exit 0.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

from core.errors import InputError, SeltuneError

EXTRA_HINT = "pip install 'seltune[dashboard]'"
HOST = "127.0.0.1"


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser(
        "dashboard", help="open optuna-dashboard on an experiment's study (127.0.0.1)",
        description="Serve optuna-dashboard for the Optuna study of EXPERIMENT on "
        "127.0.0.1; stop it with Ctrl-C. Needs the 'dashboard' extra: " + EXTRA_HINT)
    d.add_argument("experiment", metavar="EXPERIMENT",
                   help="experiment directory, name (under --storage) or URI/NAME")
    d.add_argument("--storage")
    d.add_argument("--port", type=int, default=0,
                   help="port to listen on (default: a free port, printed)")
    d.set_defaults(func=run_dashboard_cmd)


def import_dashboard() -> Any:
    """The ``optuna_dashboard`` module, or a one-line SeltuneError naming the extra."""
    try:
        import optuna_dashboard
    except ImportError as exc:
        raise SeltuneError(f"optuna-dashboard is not installed ({exc}); install the "
                           f"'dashboard' extra: {EXTRA_HINT}") from None
    return optuna_dashboard


def make_server(app: Any, port: int) -> Any:
    """A quiet wsgiref server for ``app`` bound to 127.0.0.1:``port`` (0: any free port)."""
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer
    from wsgiref.simple_server import make_server as wsgi_make_server

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            """No access log: a line per request drowns the URL on the terminal."""

    class Server(ThreadingMixIn, WSGIServer):
        """One thread per request: the dashboard's page fires several API calls at once."""

        daemon_threads = True

    try:
        return wsgi_make_server(HOST, port, app, server_class=Server,
                                handler_class=QuietHandler)
    except OSError as exc:
        raise SeltuneError(f"cannot listen on {HOST}:{port}: {exc.strerror or exc}; "
                           "choose another --port") from None


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run_dashboard_cmd(args: argparse.Namespace) -> int:
    from tuning.experiment.layout import find_experiment
    from tuning.experiment.spec import load_spec

    dashboard = import_dashboard()  # before any slow work: a missing extra fails first
    if not 0 <= args.port <= 65535:
        raise InputError(field="--port", value=args.port, expected="0..65535")
    spec = load_spec(find_experiment(args.experiment, args.storage))

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.get_storage(spec.study_storage)
    try:
        study_id = storage.get_study_id_from_name(spec.study_name)
    except KeyError:
        raise InputError("the experiment's study is not in its study storage",
                         file=spec.location, field="study_name", value=spec.study_name,
                         expected="a study created by `seltune sweep`") from None
    server = make_server(dashboard.wsgi(storage), args.port)
    port = server.server_address[1]
    # Ctrl-C must stop the server even when the parent started us with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    print(f"optuna-dashboard for study {spec.study_name!r} of {spec.location}", file=sys.stderr)
    print(f"http://{HOST}:{port}/dashboard/studies/{study_id}", flush=True)
    print("press Ctrl-C to stop", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("dashboard stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0
