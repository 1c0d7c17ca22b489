"""Experiments in object storage (``s3://``, ``gs://``, ... any URI pyarrow.fs opens).

With ``--storage URI`` Ray Tune writes its own files (``tuner.pkl``, experiment state,
trial directories and checkpoints) to ``URI/NAME`` itself: the workers upload their
checkpoints, the driver syncs the experiment state. seltune's own files
(``seltune/sweep.json``, ``trials.json``, ``asha_state.json``, ``driver.json``) are
written, exactly as for a directory storage, into a *local mirror* of the experiment,
``CACHE/remote/<slug>/NAME`` (``CACHE``: ``$SELTUNE_CACHE`` or ``~/.cache/seltune``;
``slug``: scheme, bucket and prefix made file-name safe, plus a hash of the whole
storage URI), and each file is uploaded to ``URI/NAME/seltune/<file>`` right after it
was written. ``resume | status | export`` download ``URI/NAME/seltune/`` into the mirror
first, so every other code path reads local files.

The mirror marks itself with ``seltune/remote.json`` (``{"storage": URI, "name":
NAME}``, never uploaded): :func:`publish` uploads a file only from a marked directory.

URIs: ``SCHEME://BUCKET/PREFIX[?QUERY]``; the query holds pyarrow's options, e.g.
``s3://bucket/runs?endpoint_override=127.0.0.1:9000&scheme=http``. An experiment is
named ``SCHEME://BUCKET/PREFIX/NAME[?QUERY]`` (the form Ray Tune uses too);
``SCHEME://BUCKET/PREFIX?QUERY/NAME`` (the storage string with ``/NAME`` appended) is
accepted as well. ``file://PATH`` is a local directory, not a URI, here.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import InputError
from core.synth import cache_root  # one cache for default bundles and mirrors

#: What ``--storage`` may be; the tail of every error about a storage value.
EXPECTED_STORAGE = ("a directory path, or a URI pyarrow can open and the driver can "
                    "write (s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, ...; options as a "
                    "query, e.g. ?endpoint_override=HOST:PORT&scheme=http)")
#: Marker of a local mirror, inside its ``seltune/`` directory (never uploaded).
REMOTE_FILE = "remote.json"
#: Object stores replace an object atomically on PUT: no temporary key needed there.
_OBJECT_STORES = frozenset({"s3", "gcs", "abfs"})


def is_uri(text: str | os.PathLike | None) -> bool:
    """True for ``SCHEME://...`` other than ``file://`` (which names a local directory)."""
    if text is None:
        return False
    s = str(text)
    return "://" in s and not s.startswith("file://")


def split_uri(uri: str) -> tuple[str, str, str]:
    """``"s3://b/p/?q=1"`` -> ``("s3", "b/p", "q=1")``: scheme, path (bucket first, no
    trailing ``/``) and query (without ``?``)."""
    scheme, _, rest = uri.partition("://")
    path, _, query = rest.partition("?")
    return scheme, path.rstrip("/"), query


def join_uri(uri: str, *parts: str) -> str:
    """``join_uri("s3://b/runs?x=1", "NAME", "seltune")`` -> ``"s3://b/runs/NAME/seltune?x=1"``."""
    scheme, path, query = split_uri(uri)
    path = "/".join([path, *(p.strip("/") for p in parts if p)])
    return f"{scheme}://{path}" + (f"?{query}" if query else "")


def split_experiment(uri: str) -> tuple[str, str]:
    """``URI/NAME`` -> ``(storage URI, NAME)`` (both forms of the module docstring).

    Raises:
        InputError: no name after the bucket.
    """
    scheme, path, query = split_uri(uri)
    if "/" in query:  # "s3://b/runs?endpoint_override=h:9000/NAME"
        query, _, name = query.rpartition("/")
        storage = f"{scheme}://{path}" + (f"?{query}" if query else "")
        return storage, name
    parent, _, name = path.rpartition("/")
    if not parent or not name:
        raise InputError("no experiment name in the URI", field="EXPERIMENT", value=uri,
                         expected="SCHEME://BUCKET/PREFIX/NAME (or NAME with --storage URI)")
    return f"{scheme}://{parent}" + (f"?{query}" if query else ""), name


def mirror_dir(storage: str, name: str) -> Path:
    """The local mirror of experiment ``name`` in ``storage`` (module docstring).

    The same storage URI (up to a trailing ``/``) always maps to the same directory;
    URIs that differ only in their query (e.g. two endpoints with the same bucket
    name) map to different ones.
    """
    scheme, path, query = split_uri(storage)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{scheme}_{path}").strip("_")[:80]
    digest = hashlib.sha256(f"{scheme}://{path}?{query}".encode()).hexdigest()[:10]
    return cache_root() / "remote" / f"{slug}-{digest}" / name


@dataclass(frozen=True)
class RemoteStorage:
    """A storage URI opened with pyarrow.

    Attributes:
        uri: the storage URI as given (no trailing ``/``; the query kept).
        fs: the ``pyarrow.fs.FileSystem`` it names.
        base: the path inside ``fs`` (``BUCKET/PREFIX``).
    """

    uri: str
    fs: Any
    base: str

    def fs_path(self, *parts: str) -> str:
        """Path inside ``fs`` of ``base/parts...``."""
        return "/".join([self.base.rstrip("/"), *(p.strip("/") for p in parts if p)])

    def experiment_uri(self, name: str) -> str:
        """``URI/NAME`` with the query kept at the end (what ``Tuner.restore`` takes)."""
        return join_uri(self.uri, name)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


@functools.lru_cache(maxsize=16)
def open_storage(uri: str) -> RemoteStorage:
    """Open a storage URI (cached: one S3/GCS client per URI and process).

    Raises:
        InputError: pyarrow cannot open it (unknown scheme, malformed options).
    """
    import pyarrow.fs as pafs

    scheme, path, query = split_uri(uri)
    if not scheme or not path:
        raise InputError(field="--storage", value=uri, expected=EXPECTED_STORAGE)
    clean = f"{scheme}://{path}" + (f"?{query}" if query else "")
    try:
        fs, base = pafs.FileSystem.from_uri(clean)
    except Exception as exc:
        raise InputError(f"pyarrow cannot open it ({_one_line(exc)})", field="--storage",
                         value=uri, expected=EXPECTED_STORAGE) from None
    return RemoteStorage(uri=clean, fs=fs, base=base.rstrip("/"))


def exists(storage: RemoteStorage, *parts: str) -> bool:
    """True if the file or directory ``parts`` exists under the storage.

    Raises:
        InputError: the storage cannot be reached (no such bucket, no endpoint, denied).
    """
    import pyarrow.fs as pafs

    try:
        bucket = storage.base.split("/", 1)[0]
        if storage.fs.type_name in _OBJECT_STORES and \
                storage.fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            raise InputError(f"bucket {bucket!r} does not exist", field="--storage",
                             value=storage.uri, expected=EXPECTED_STORAGE)
        info = storage.fs.get_file_info(storage.fs_path(*parts))
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot reach it ({_one_line(exc)})", field="--storage",
                         value=storage.uri, expected=EXPECTED_STORAGE) from None
    return info.type != pafs.FileType.NotFound


def upload_file(storage: RemoteStorage, local: Path, *parts: str) -> None:
    """Copy the local file ``local`` to ``parts`` under the storage, replacing it whole.

    Object stores replace an object atomically; other file systems get a temporary
    sibling that is then moved into place, so a reader never sees half a file.
    """
    data = Path(local).read_bytes()
    dest = storage.fs_path(*parts)
    fs = storage.fs
    if fs.type_name not in _OBJECT_STORES:
        fs.create_dir(dest.rpartition("/")[0], recursive=True)
        tmp = f"{dest}.tmp-{uuid.uuid4().hex[:8]}"
        with fs.open_output_stream(tmp) as out:
            out.write(data)
        fs.move(tmp, dest)
        return
    with fs.open_output_stream(dest) as out:
        out.write(data)


def delete_file(storage: RemoteStorage, *parts: str) -> None:
    """Delete ``parts`` under the storage if it exists."""
    import pyarrow.fs as pafs

    path = storage.fs_path(*parts)
    if storage.fs.get_file_info(path).type != pafs.FileType.NotFound:
        storage.fs.delete_file(path)


def download_dir(storage: RemoteStorage, dest: Path, *parts: str) -> list[str]:
    """Copy every file under ``parts`` (recursively) into the local directory ``dest``;
    returns their paths relative to ``dest``. Files already in ``dest`` are replaced,
    others kept."""
    import pyarrow.fs as pafs

    src = storage.fs_path(*parts)
    infos = storage.fs.get_file_info(pafs.FileSelector(src, recursive=True,
                                                       allow_not_found=True))
    done = []
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        rel = info.path[len(src):].lstrip("/")
        target = Path(dest) / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
        with storage.fs.open_input_stream(info.path) as f:
            tmp.write_bytes(f.read())
        os.replace(tmp, target)
        done.append(rel)
    return done


# ---------------------------------------------------------------- mirrors of experiments
def mark_mirror(seltune_dir: Path, storage: str, name: str) -> None:
    """Write the marker that makes ``seltune_dir`` the mirror of ``storage``/``name``."""
    seltune_dir.mkdir(parents=True, exist_ok=True)
    (seltune_dir / REMOTE_FILE).write_text(json.dumps({"storage": storage, "name": name}))


def mirror_source(seltune_dir: Path) -> tuple[str, str] | None:
    """``(storage URI, name)`` if ``seltune_dir`` is a marked mirror, else None."""
    try:
        data = json.loads((Path(seltune_dir) / REMOTE_FILE).read_text())
        return str(data["storage"]), str(data["name"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def publish(path: Path) -> None:
    """Upload ``path`` (a file in an experiment's ``seltune/``) to the experiment's
    ``URI/NAME/seltune/`` if that directory is a mirror; nothing for a local experiment."""
    source = mirror_source(Path(path).parent)
    if source is not None:
        storage, name = source
        upload_file(open_storage(storage), Path(path), name, Path(path).parent.name,
                    Path(path).name)


def unpublish(path: Path) -> None:
    """Delete the remote copy of ``path`` (see :func:`publish`); best effort."""
    source = mirror_source(Path(path).parent)
    if source is not None:
        storage, name = source
        try:
            delete_file(open_storage(storage), name, Path(path).parent.name, Path(path).name)
        except OSError:  # a stale driver.json is harmless: claim_driver checks the pid
            pass
