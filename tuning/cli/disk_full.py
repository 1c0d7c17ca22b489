"""A full disk reported in one line, by every command.

Writes go through temporary files renamed into place (``core.atomic``), so a command
that runs out of space leaves what was there before; what the user needs is the cause,
not the traceback of whichever library hit it (pyarrow, torch's zip writer, shutil's
copy tree, json). :func:`disk_full_message` recognises a full disk from the exception
(an ``OSError`` with ``ENOSPC``/``EDQUOT`` anywhere in its chain, or a library's
message that quotes one) or, for libraries that lose the errno (torch's
``unexpected pos``), from the command's own output paths having no space left.
"""

from __future__ import annotations

import errno
import os
import shutil
from argparse import Namespace
from pathlib import Path

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_FULL_TEXTS = ("No space left on device", "Disk quota exceeded", f"[Errno {errno.ENOSPC}]")
#: Less free space than this on an output's file system counts as full (a torch or
#: pyarrow writer that failed without an errno left at most a few blocks).
FULL_BELOW_BYTES = 1 << 20
#: Namespace attributes that name where a command writes.
OUTPUT_ARGS = ("out", "storage", "experiment", "cluster_dir")


def _chain(exc: BaseException):
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        stack += [e.__cause__, e.__context__]


def _full_file(exc: BaseException) -> tuple[bool, str | None]:
    """``(disk full?, the file it names)`` from the exception chain alone."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in _FULL_ERRNOS:
            return True, e.filename
        if isinstance(e, shutil.Error):  # copytree collects (src, dst, why) triples
            for item in (e.args[0] if e.args and isinstance(e.args[0], list) else []):
                if isinstance(item, tuple) and len(item) == 3 and \
                        any(t in str(item[2]) for t in _FULL_TEXTS):
                    return True, str(item[1])
        if any(t in str(e) for t in _FULL_TEXTS):
            return True, getattr(e, "filename", None)
    return False, None


def _free_bytes(path: Path) -> int | None:
    """Free bytes on the file system holding ``path`` (its nearest existing ancestor)."""
    for candidate in (path, *path.parents):
        try:
            st = os.statvfs(candidate)
        except OSError:
            continue
        return st.f_bavail * st.f_frsize
    return None


def _full_output(args: Namespace) -> str | None:
    """The first local output path of the command whose file system is (nearly) full."""
    for name in OUTPUT_ARGS:
        value = getattr(args, name, None)
        if not value or "://" in str(value):
            continue
        free = _free_bytes(Path(str(value)).expanduser().absolute())
        if free is not None and free < FULL_BELOW_BYTES:
            return str(value)
    return None


def disk_full_message(exc: BaseException, args: Namespace) -> str | None:
    """One line for a command that failed because a disk is full, else ``None``."""
    full, file = _full_file(exc)
    output = _full_output(args)
    if not full and output is None:
        return None
    # The command's own output path, not the temporary file inside it that hit the
    # limit (it was removed on the way out).
    where = output or file
    target = where or "an output file"
    return (f"{target}: no space left on device ({type(exc).__name__}); what was there "
            f"before is unchanged (seltune writes through temporary files): expected free "
            f"space on that file system, then run the command again")
