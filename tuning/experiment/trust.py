"""Which of an experiment's files seltune may unpickle: the ones this user's driver wrote.

``Tuner.restore`` unpickles ``tuner.pkl`` and ``searcher-state-*.pkl``, and the
cloudpickled objects inside ``experiment_state-*.json``: restoring runs code from the
experiment folder. A folder copied from somewhere else, or one in a shared directory
someone else can write, could carry a ``__reduce__`` payload. So the driver signs what
Tune writes: an HMAC-SHA256 of each of those files (its name and its bytes) with a key
of this user's, kept outside every experiment (``~/.config/seltune/trust.key``, mode
0600, made on first use; ``$SELTUNE_CONFIG`` names another directory), stored in
``seltune/signatures.json``. ``seltune resume`` unpickles only files whose signature
matches (:func:`problems`); otherwise it refuses in one line naming the file and
``--trust-experiment``, the flag that says the folder is trusted.

The signature proves only that this user's seltune wrote the file (on a machine that
has the key), not that the folder is safe in any other way; ``status`` and ``export``
read JSON and the study only and never unpickle Tune's state.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

from core.atomic import atomic_file
from core.errors import InputError

KEY_FILE = "trust.key"
SIGNATURES_FILE = "signatures.json"
#: Tune's files in the experiment directory that carry pickles (or may).
SIGNED_GLOBS = ("tuner.pkl", "searcher-state-*.pkl", "experiment_state-*.json",
                "search_gen_state-*.json")
TRUST_FLAG = "--trust-experiment"


def config_dir() -> Path:
    """``$SELTUNE_CONFIG``, else ``$XDG_CONFIG_HOME/seltune``, else ``~/.config/seltune``."""
    env = os.environ.get("SELTUNE_CONFIG")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "seltune"


def load_key(create: bool = True) -> bytes | None:
    """This user's signing key (32 random bytes), created with mode 0600 if ``create``.

    Raises:
        InputError: the key file is readable by others, or is not a key.
    """
    path = config_dir() / KEY_FILE
    if not path.exists():
        if not create:
            return None
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another driver made it this instant
            return load_key(create=False)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
    if path.stat().st_mode & 0o077:
        raise InputError("the signing key is readable or writable by others", file=path,
                         expected="mode 0600 (chmod 600 it, or delete it to make a new one: "
                         "experiments signed with it then need --trust-experiment once)")
    key = path.read_bytes()
    if len(key) < 32:
        raise InputError(f"{len(key)} bytes", file=path, expected="a key of 32 bytes "
                         "written by seltune (delete it to make a new one)")
    return key


def signed_files(experiment_dir: Path) -> list[Path]:
    """Tune's pickle-carrying files of the experiment (:data:`SIGNED_GLOBS`), sorted."""
    found: set[Path] = set()
    for pattern in SIGNED_GLOBS:
        found.update(p for p in Path(experiment_dir).glob(pattern) if p.is_file())
    return sorted(found)


def signature(key: bytes, path: Path) -> str:
    """HMAC-SHA256 of ``path``'s name and bytes (a signed file cannot be renamed into
    another's place)."""
    mac = hmac.new(key, path.name.encode() + b"\0", hashlib.sha256)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            mac.update(block)
    return mac.hexdigest()


def _signatures_path(experiment_dir: Path) -> Path:
    return Path(experiment_dir) / "seltune" / SIGNATURES_FILE


def read_signatures(experiment_dir: Path) -> dict[str, str]:
    """``{file name: hex HMAC}`` from ``seltune/signatures.json`` (``{}`` if none)."""
    path = _signatures_path(experiment_dir)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}  # unreadable signatures sign nothing: every file is then unsigned
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        return {}
    return {str(k): v for k, v in files.items() if isinstance(v, str)}


def sign(experiment_dir: Path, stamps: dict[str, tuple[int, int]] | None = None) -> None:
    """(Re)sign Tune's files of the experiment; with ``stamps`` (``{name: (mtime_ns,
    size)}`` of the last call, updated in place) only when one of them changed."""
    files = signed_files(experiment_dir)
    if not files:  # nothing of Tune's here (yet, or an experiment in object storage)
        return
    now = {}
    for p in files:
        try:
            st = p.stat()
        except FileNotFoundError:  # Tune replaced it this instant: next call signs it
            continue
        now[p.name] = (st.st_mtime_ns, st.st_size)
    if stamps is not None:
        if now == stamps:
            return
        stamps.clear()
        stamps.update(now)
    key = load_key()
    assert key is not None
    sigs = read_signatures(experiment_dir)
    for p in files:
        if p.name in now:
            sigs[p.name] = signature(key, p)
    sigs = {n: s for n, s in sigs.items() if n in now}
    with atomic_file(_signatures_path(experiment_dir)) as tmp:
        tmp.write_text(json.dumps({"version": 1, "files": sigs}, indent=1))


def problems(experiment_dir: Path) -> list[tuple[Path, str]]:
    """Tune's files that this user's seltune did not sign as they are now:
    ``[(file, "unsigned" | "changed since it was signed")]``."""
    key = load_key(create=False)
    sigs = read_signatures(experiment_dir)
    out = []
    for p in signed_files(experiment_dir):
        expected = sigs.get(p.name)
        if expected is None or key is None:
            out.append((p, "unsigned"))
        elif not hmac.compare_digest(expected, signature(key, p)):
            out.append((p, "changed since it was signed"))
    return out


def refusal(file: Path, why: str) -> InputError:
    """The one-line refusal to unpickle ``file``."""
    return InputError(f"{why} by this user's seltune: not unpickled (restoring it would run "
                      f"code from the folder)", file=file,
                      expected=f"an experiment this user's driver wrote, or {TRUST_FLAG} if "
                      "you trust this folder")


def remote_refusal(uri: str) -> InputError:
    """The one-line refusal to restore an experiment in object storage unasked.

    Tune keeps its pickles (``tuner.pkl``, the snapshots) in the bucket, where seltune
    does not sign them: whoever can write the bucket could plant one, and ``seltune
    resume URI`` is meant to run from any machine that reaches it. So such a resume
    needs ``--trust-experiment``, the statement that everyone who can write there is
    trusted (``status`` and ``export`` read JSON and the study only, as locally).
    """
    return InputError("in object storage, where seltune cannot check who wrote Tune's "
                      "pickles (tuner.pkl, the snapshots): not unpickled (restoring them "
                      "would run code from the bucket)", file=f"{uri.split('?')[0]}/tuner.pkl",
                      expected=f"{TRUST_FLAG} if you trust everyone who can write there")

