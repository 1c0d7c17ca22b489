"""Atomic writes of user artefacts: write to a temporary sibling, then rename.

An interrupted run therefore never leaves a half-written bundle or checkpoint: either
the old content (or nothing) is there, or the complete new one.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from core.errors import InputError

#: ``SELTUNE_FAULT=POINT[:N[:SIGNAL]]``: the fault-injection suite's kill point
#: (``tests/integration/test_faults.py``). The process sends itself ``SIGNAL`` (``KILL``
#: by default, or ``INT``) the ``N``-th time (default 1) it reaches ``POINT``. Off
#: unless set; when off, a fault point costs one comparison with None.
FAULT_POINTS = ("after_tuner_pkl", "before_first_snapshot", "after_trial_result",
                "during_export")
_FAULT = os.environ.get("SELTUNE_FAULT") or None
_FAULT_SEEN: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Die here if ``SELTUNE_FAULT`` names this point (see :data:`FAULT_POINTS`)."""
    if _FAULT is None:
        return
    point, _, rest = _FAULT.partition(":")
    if point != name:
        return
    count, _, sig = rest.partition(":")
    _FAULT_SEEN[name] = _FAULT_SEEN.get(name, 0) + 1
    if _FAULT_SEEN[name] == int(count or 1):
        import signal
        import sys

        print(f"[seltune] SELTUNE_FAULT: SIG{sig or 'KILL'} at {name}", file=sys.stderr,
              flush=True)
        os.kill(os.getpid(), getattr(signal, f"SIG{sig or 'KILL'}"))


#: Files by which a directory is recognised as one seltune wrote, and may be replaced
#: with ``--overwrite``: a bundle (``manifest.json``), a training run or an export
#: (``metrics.json`` / ``best_config.json``), a Stage-1 training checkpoint
#: (``state.pt`` with ``config.json``).
SELTUNE_OUTPUT_MARKERS: tuple[tuple[str, ...], ...] = (
    ("manifest.json",), ("metrics.json",), ("best_config.json",), ("state.pt", "config.json"))


def written_by_seltune(path: Path) -> bool:
    """Whether directory ``path`` is empty or looks like a seltune output (markers)."""
    try:
        names = {p.name for p in path.iterdir()}
    except OSError:
        return False
    return not names or any(all(m in names for m in group) for group in SELTUNE_OUTPUT_MARKERS)


def check_output_path(out: str | Path, overwrite: bool,
                      protect: tuple[str | Path, ...] = ()) -> Path:
    """Refuse an existing output path unless ``overwrite``; returns it as a Path.

    Even with ``overwrite`` only what seltune itself wrote is replaced (a directory
    :func:`written_by_seltune`): never a regular file, a directory of other files, or a
    path in ``protect`` (an input of the same command, e.g. ``--from``) or above one.
    """
    out = Path(out)
    target = out.resolve()
    for source in protect:
        src = Path(source).resolve()
        if target == src or target in src.parents:
            raise InputError("is (or holds) this command's input", file=out,
                             expected="an output path apart from the input")
    check_parents_are_dirs(out, "--out")
    if not (out.exists() or out.is_symlink()):
        return out
    if not overwrite:
        raise InputError(
            "already exists", file=out, expected="a new path (or pass --overwrite)"
        )
    if not out.is_dir():
        raise InputError("is not a directory; --overwrite replaces only what seltune wrote",
                         file=out, expected="a new path, or a bundle/export directory")
    if not written_by_seltune(out):
        raise InputError("is a directory seltune did not write (no manifest.json, "
                         "metrics.json or best_config.json); --overwrite replaces only what "
                         "seltune wrote", file=out,
                         expected="a new path, or a bundle/export directory")
    return out


def check_parents_are_dirs(path: str | Path, field: str) -> None:
    """Refuse, in one line, a path whose nearest existing ancestor is not a directory
    (``--out notes.txt/run``): creating it would fail deep in ``mkdir``."""
    path = Path(path)
    for parent in Path(os.path.abspath(path)).parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"{parent} is a regular file, not a directory",
                                 field=field, value=str(path),
                                 expected="a path whose parents are directories")
            return
        if parent.is_symlink():  # a dangling link: mkdir would fail on it too
            raise InputError(f"{parent} is a broken symbolic link", field=field,
                             value=str(path), expected="a path whose parents are directories")


def _temp_prefix(out: Path, kind: str) -> str:
    """``.NAME.tmp-PID-``: the writer's pid in the name, so a later writer of the same
    output can tell a temporary left by a killed process (SIGKILL runs no cleanup)
    from one a live process is still filling."""
    return f".{out.name}.{kind}-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-[^/]*$")


def remove_stale_temporaries(out: str | Path | None = None, *,
                             directory: str | Path | None = None) -> list[Path]:
    """Remove what killed writers left: ``.NAME.tmp-PID-*`` / ``.NAME.old-PID-*`` whose
    PID is gone, beside ``out`` (that name only) or anywhere in ``directory``; returns
    what was removed. Temporaries of live processes, and names of any other form, are
    left alone."""
    if out is not None:
        parent, only = Path(out).parent, Path(out).name
    else:
        parent, only = Path(directory or "."), None
    removed: list[Path] = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for path in entries:
        match = _TEMP_NAME.match(path.name)
        if match is None or (only is not None and match["name"] != only) \
                or _pid_alive(int(match["pid"])):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_dir(out: str | Path, overwrite: bool = False,
               protect: tuple[str | Path, ...] = ()) -> Iterator[Path]:
    """Yield a fresh temporary directory that becomes ``out`` when the block succeeds.

    On an exception the temporary directory is removed and ``out`` is untouched. An
    existing ``out`` is replaced only as :func:`check_output_path` allows.
    """
    out = check_output_path(out, overwrite, protect)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(out, "tmp"), dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fault_point("during_export")  # contents written, not yet renamed into place
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=_temp_prefix(out, "old"), dir=out.parent))
        os.replace(out, old / out.name)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; it replaces ``path`` when the block succeeds.

    The caller writes the temporary path (by any library).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=_temp_prefix(path, "tmp"), dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
