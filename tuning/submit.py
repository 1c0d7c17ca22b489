"""Submit a ``seltune`` command to a running Ray cluster as a Ray job.

Uses Ray's own job submission (``ray.job_submission.JobSubmissionClient``, the HTTP job
server on the head's dashboard port, 8265 by default); the entrypoint is
``seltune ARGS...`` (e.g. ``seltune sweep --address auto ...``), run by the job
supervisor on the head with ``RAY_ADDRESS`` set to the cluster, so ``--address auto``
attaches the sweep to that cluster. The job server needs ``ray[default]`` on the
cluster *and* on the submitting machine (aiohttp/requests).

Address resolution (first that applies): ``--address``; ``$RAY_API_SERVER_ADDRESS``; the
dashboard URL recorded by ``seltune cluster up --dashboard`` (``--dir`` or the default
cluster dir). When the address belongs to a local cluster, that cluster's token-auth
environment is applied first so the request carries the token.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from core.errors import InputError, SeltuneError

# The runtime env shipped with the package (cluster/runtime_env.yaml).
DEFAULT_RUNTIME_ENV = Path(__file__).resolve().parents[1] / "cluster" / "runtime_env.yaml"
# Seltune commands that make sense as a cluster job.
JOB_COMMANDS = ("sweep", "resume", "export", "status", "train", "evaluate", "data")


def load_runtime_env(path: str | Path) -> dict[str, Any]:
    """Read a runtime env mapping from YAML or JSON; InputError naming the file if bad.

    The accepted keys are Ray's (``env_vars``, ``pip``, ``working_dir``, ``py_modules``,
    ``excludes``, ``config``, ...); values are checked by Ray when the job starts.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", file=path, expected="a runtime env YAML or JSON file")
    text = path.read_text()
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except (json.JSONDecodeError, ValueError) as exc:
        raise InputError(f"cannot parse ({exc})".splitlines()[0], file=path,
                         expected="a YAML/JSON mapping") from None
    except Exception as exc:  # yaml.YAMLError, without importing yaml at module level
        raise InputError(f"cannot parse ({type(exc).__name__})", file=path,
                         expected="a YAML/JSON mapping") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(file=path, value=type(data).__name__,
                         expected="a mapping of runtime env fields (env_vars, pip, ...)")
    env_vars = data.get("env_vars", {})
    if not isinstance(env_vars, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items()
    ):
        raise InputError(file=path, field="env_vars", value=env_vars,
                         expected="a mapping of string names to string values "
                         "(quote numbers in YAML)")
    return data


def build_entrypoint(seltune_args: Sequence[str]) -> str:
    """``seltune ARGS...`` as one shell-quoted command line; InputError if empty/unknown."""
    args = list(seltune_args)
    if not args:
        raise InputError(field="seltune command", value="",
                         expected="a command after `--`, e.g. `-- sweep --num-samples 32`")
    if args[0] not in JOB_COMMANDS:
        raise InputError("not a seltune command", field="seltune command", value=args[0],
                         expected=f"one of {', '.join(JOB_COMMANDS)}")
    return shlex.join(["seltune", *args])


def _flag(args: Sequence[str], name: str) -> str | None:
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def follow_commands(address: str, job_id: str, seltune_args: Sequence[str]) -> list[str]:
    """Shell commands that follow the job (logs, status) and the experiment it runs."""
    lines = [
        f"ray job logs --address {shlex.quote(address)} --follow {shlex.quote(job_id)}",
        f"ray job status --address {shlex.quote(address)} {shlex.quote(job_id)}",
        f"ray job stop --address {shlex.quote(address)} {shlex.quote(job_id)}",
    ]
    storage, name = _flag(seltune_args, "--storage"), _flag(seltune_args, "--name")
    if seltune_args and seltune_args[0] == "sweep" and storage and name:
        experiment = storage.rstrip("/") + "/" + name
        lines.append(f"seltune status {shlex.quote(experiment)}")
    else:
        lines.append("seltune status EXPERIMENT   (EXPERIMENT = --storage/--name of the sweep)")
    return lines


@contextlib.contextmanager
def _only_explicit_address() -> Iterator[None]:
    """Hide RAY_ADDRESS / RAY_API_SERVER_ADDRESS while the client is built.

    ``JobSubmissionClient`` lets either variable override its ``address`` argument, so
    a shell that exported a local cluster's ``RAY_ADDRESS`` (a GCS address) would send
    the job elsewhere than the URL the user typed.
    """
    saved = {k: os.environ.pop(k) for k in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")
             if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def resolve_address(address: str | None, cluster_dir: str | Path | None) -> tuple[str, Any]:
    """``(job server URL, local ClusterState or None)``; see the module docstring."""
    from cluster import local

    state = None
    with contextlib.suppress(InputError):
        state = local.load_state(cluster_dir)
    if address is None:
        address = os.environ.get("RAY_API_SERVER_ADDRESS")
    if address is None:
        if state is None or state.dashboard_url is None:
            raise InputError(
                field="--address", value=None,
                expected="the job server URL, e.g. http://HEAD:8265 (or a local cluster "
                "started with `seltune cluster up --dashboard`)")
        address = state.dashboard_url
    if "://" not in address:
        raise InputError(field="--address", value=address,
                         expected="an http(s) URL of the job server, e.g. http://HEAD:8265")
    if state is not None and state.dashboard_url != address.rstrip("/"):
        state = None  # a different cluster: its auth comes from the user's environment
    return address, state


def submit(seltune_args: Sequence[str], *, address: str | None = None,
           runtime_env_path: str | Path | None = None, use_runtime_env: bool = True,
           submission_id: str | None = None, entrypoint_num_cpus: float | None = None,
           cluster_dir: str | Path | None = None,
           metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """Submit ``seltune ARGS...`` as a Ray job; returns what to print.

    Returns:
        ``{"job_id", "address", "entrypoint", "runtime_env", "follow": [shell lines]}``.

    Raises:
        InputError: empty/unknown command, bad address or runtime env file.
        SeltuneError: the job server is unreachable or refused the job (the message
            names the address).
    """
    entrypoint = build_entrypoint(seltune_args)
    runtime_env: dict[str, Any] | None = None
    if use_runtime_env:
        runtime_env = load_runtime_env(runtime_env_path or DEFAULT_RUNTIME_ENV)
    address, state = resolve_address(address, cluster_dir)
    if state is not None:
        from cluster import local

        local.apply_env(state)  # before ray is imported: Ray reads RAY_AUTH_MODE once
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as exc:  # pragma: no cover - ray[tune] is a dependency
        raise SeltuneError(f"Ray job submission is unavailable: {exc}") from None
    try:
        with _only_explicit_address():
            client = JobSubmissionClient(address)
        job_id = client.submit_job(
            entrypoint=entrypoint, runtime_env=runtime_env or None,
            submission_id=submission_id, entrypoint_num_cpus=entrypoint_num_cpus,
            metadata={"submitted_by": "seltune", **(metadata or {})},
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SeltuneError(f"job submission to {address} failed: {first}") from None
    return {"job_id": job_id, "address": address, "entrypoint": entrypoint,
            "runtime_env": runtime_env,
            "follow": follow_commands(address, job_id, seltune_args)}
