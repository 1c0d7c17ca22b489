"""Check that every alive Ray node can reach a sweep's storage, before any trial runs.

On a cluster, trials write checkpoints to ``--storage`` from whichever node runs them,
and a resumed trial reads them back on another node. A path that exists only on the
driver's machine (or a bucket a worker has no credentials for) otherwise fails late,
mid-sweep, with a confusing error deep inside Ray Tune. :func:`check_storage_reachable`
fails early with one line naming the storage and the node.

The probe proves the storage is *shared*, not merely writable: the driver writes a
file with a random token; a zero-CPU task pinned to each alive node reads it back
(same token) and writes its own file; the driver then reads each node's file. A
directory that exists on every machine but is not the same directory (e.g. a local
``/data`` on each node) therefore fails too. Probe files live under
``STORAGE/.seltune-probe-<token>/`` and are removed afterwards. The probe also accepts a
pyarrow URI (``s3://...``, as ``seltune sweep --storage`` does): every node must then
reach the bucket with its own credentials and endpoint.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from core.errors import InputError

EXPECTED = ("a directory every node sees at the same path and can write (a shared file "
            "system such as NFS/EFS mounted on all nodes), or a URI (s3://BUCKET/PREFIX) "
            "every node can write")


def _filesystem(storage: str) -> tuple[Any, str]:
    """``(pyarrow FileSystem, path inside it)`` for a local path or a pyarrow URI."""
    import pyarrow.fs as pafs

    if "://" in storage:
        return pafs.FileSystem.from_uri(storage)
    return pafs.LocalFileSystem(), str(Path(storage).expanduser().resolve())


def _probe(storage: str, probe_dir: str, token: str, node_id: str) -> dict[str, Any]:
    """Run on one node: read the driver's token, write this node's file. Never raises."""
    import socket

    try:
        fs, _ = _filesystem(storage)
        with fs.open_input_stream(f"{probe_dir}/driver") as f:
            seen = f.read().decode()
        if seen != token:
            return {"ok": False, "error": f"read a different probe file (token {seen[:8]}...): "
                    "this node sees another directory at that path"}
        with fs.open_output_stream(f"{probe_dir}/node-{node_id}") as f:
            f.write(f"{token}:{node_id}".encode())
        return {"ok": True, "host": socket.gethostname()}
    except Exception as exc:  # report, the driver turns it into an InputError
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}".splitlines()[0]}


def check_storage_reachable(storage: str | Path, *, timeout_s: float = 120.0) -> list[dict]:
    """Probe ``storage`` from every alive node of the connected Ray cluster.

    Call it after ``ray.init`` (e.g. right after :func:`tuning.sweep.runtime.start_ray`)
    and before ``Tuner.fit``.

    Args:
        storage: a local/shared directory path or a pyarrow URI (``s3://...``).
        timeout_s: how long to wait for all probes (seconds).

    Returns:
        One ``{"node_id", "node_ip", "ok": True, "host"}`` dict per alive node.

    Raises:
        InputError: the driver cannot write the storage, or a node cannot read the
            driver's probe / write its own (the message names the storage path, the
            node's IP and id, and the underlying error).
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    storage = str(storage)
    token = secrets.token_hex(16)
    try:
        fs, base = _filesystem(storage)
        probe_dir = f"{base.rstrip('/')}/.seltune-probe-{token[:12]}"
        fs.create_dir(probe_dir, recursive=True)
        with fs.open_output_stream(f"{probe_dir}/driver") as f:
            f.write(token.encode())
    except Exception as exc:
        raise InputError(f"the driver cannot write there ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})",
                         field="--storage", value=storage, expected=EXPECTED) from None

    probe = ray.remote(num_cpus=0, max_retries=0)(_probe)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = {
        probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            n["NodeID"], soft=False)).remote(storage, probe_dir, token, n["NodeID"]): n
        for n in nodes
    }
    try:
        ready, pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
        results = []
        problems = []
        for ref in ready:
            node = refs[ref]
            where = f"node {node.get('NodeManagerAddress')} ({node['NodeID'][:12]})"
            try:
                out = ray.get(ref)
            except Exception as exc:
                out = {"ok": False, "error": f"probe task failed: {type(exc).__name__}"}
            if out["ok"]:
                try:
                    with fs.open_input_stream(f"{probe_dir}/node-{node['NodeID']}") as f:
                        if f.read().decode() != f"{token}:{node['NodeID']}":
                            out = {"ok": False, "error": "its probe file differs"}
                except Exception as exc:
                    out = {"ok": False, "error": "the driver cannot see the file it wrote "
                           f"({type(exc).__name__})"}
            if not out["ok"]:
                problems.append(f"{where}: {out['error']}")
            results.append({"node_id": node["NodeID"],
                            "node_ip": node.get("NodeManagerAddress"), **out})
        for ref in pending:
            node = refs[ref]
            problems.append(f"node {node.get('NodeManagerAddress')} ({node['NodeID'][:12]}): "
                            f"no answer within {timeout_s:.0f} s")
            ray.cancel(ref, force=True)
        if problems:
            raise InputError("not reachable from every node: " + "; ".join(problems),
                             field="--storage", value=storage, expected=EXPECTED)
        return results
    finally:
        try:
            fs.delete_dir(probe_dir)
        except Exception:  # best effort: a leftover probe dir is harmless
            pass
