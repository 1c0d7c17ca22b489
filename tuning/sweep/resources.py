"""Whether a sweep's trials can ever be placed: checked before anything is written.

Ray keeps a trial that asks for more than any node has (a GPU on a CPU-only machine,
64 CPUs on a 2-core one) PENDING forever, and a local Ray with ``--num-cpus 0`` never
runs anything; the sweep then waits without end. :func:`check_resources` compares one
trial's request with the largest node (a trial runs on one node) and raises an
:class:`InputError` naming the option, its value and what the cluster has.

:func:`local_nodes` describes the local Ray a sweep would start (``--num-cpus`` or the
machine's CPUs; its GPUs counted without importing torch in the driver), and
:func:`cluster_nodes` a running cluster (``ray.nodes()``, after ``ray.init``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from core.errors import InputError


class ResourceError(InputError):
    """A trial asks for more than the cluster has (it would stay PENDING forever)."""


def check_resources(nodes: Sequence[dict[str, float]], *, cpus_per_trial: float,
                    gpus_per_trial: float, where: str = "this machine",
                    num_cpus: int | None = None) -> None:
    """Raise InputError unless one trial fits on at least one of ``nodes``.

    Args:
        nodes: the resources of each node, ``{"CPU": n, "GPU": m}`` (missing = 0).
        cpus_per_trial, gpus_per_trial: what one trial asks for.
        where: how the error names the cluster (``this machine``, ``the cluster at X``).
        num_cpus: the ``--num-cpus`` given for a local Ray (named in the error), or None.
    """
    if num_cpus is not None and num_cpus < 1:
        raise ResourceError("a local Ray with no CPUs runs no trial", field="--num-cpus",
                            value=num_cpus, expected="an integer >= 1")
    if not nodes:
        raise ResourceError(f"no live node on {where}", field="--address",
                            expected="a cluster with at least one node")
    most_cpus = max(float(n.get("CPU", 0.0)) for n in nodes)
    most_gpus = max(float(n.get("GPU", 0.0)) for n in nodes)
    node = " on its largest node" if len(nodes) > 1 else ""
    if cpus_per_trial > most_cpus:
        option = "--num-cpus"
        raise ResourceError(f"a trial would never start: {where} has {most_cpus:g} "
                            f"CPU(s){node}", field="--cpus-per-trial", value=cpus_per_trial,
                            expected=f"<= {most_cpus:g}" + (f" (or a larger {option})"
                                                            if num_cpus is not None else ""))
    if gpus_per_trial > most_gpus:
        has = "no GPU" if most_gpus == 0 else f"{most_gpus:g} GPU(s){node}"
        raise ResourceError(f"a trial would never start: {where} has {has}",
                            field="--gpus-per-trial", value=gpus_per_trial,
                            expected=f"<= {most_gpus:g}" + (" (leave it at 0 to train on CPU)"
                                                           if most_gpus == 0 else ""))


def _visible_devices(value: str) -> int:
    """How many GPUs ``CUDA_VISIBLE_DEVICES=value`` leaves (as CUDA reads it: the list
    stops at the first invalid entry, e.g. ``-1``)."""
    count = 0
    for item in value.split(","):
        item = item.strip()
        if not item or item.startswith("-") or item.lower() == "nodevfiles":
            break
        count += 1
    return count


def local_gpu_count(proc: Path = Path("/proc/driver/nvidia/gpus")) -> int:
    """NVIDIA GPUs of this machine, without importing torch (as Ray counts them).

    ``CUDA_VISIBLE_DEVICES`` when set; else the driver's ``/proc`` entries; else
    ``nvidia-smi -L``; else 0.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return _visible_devices(visible)
    if proc.is_dir():
        return sum(1 for _ in proc.iterdir())
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return 0  # a driver that does not answer serves no trial either
    return sum(line.startswith("GPU ") for line in out.stdout.splitlines())


def local_nodes(num_cpus: int | None) -> list[dict[str, float]]:
    """The one node of the local Ray a sweep starts (``--num-cpus`` or every CPU)."""
    cpus = num_cpus if num_cpus is not None else (os.cpu_count() or 1)
    return [{"CPU": float(cpus), "GPU": float(local_gpu_count())}]


def cluster_nodes() -> list[dict[str, float]]:
    """The resources of each live node of the cluster ``ray.init`` connected to."""
    import ray

    return [{k: float(v) for k, v in node.get("Resources", {}).items()}
            for node in ray.nodes() if node.get("Alive")]
