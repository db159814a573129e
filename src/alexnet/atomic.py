"""Writing files so that a reader never sees half of one: the one atomic-write helper.

Every file the package writes goes through :func:`atomic_path` (or the ``write_*``
shortcuts): the content goes to a temporary file in the same directory, is flushed to
disk, renamed over the target, and the directory entry is flushed too. An interrupted
write leaves the previous file (or none) and a ``.tmp`` file that the next write
replaces; a failed write removes its temporary file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (a no-op where the filesystem does not allow it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def names_a_folder(path: str | Path) -> bool:
    """An output path that is a folder, or ends with a separator (``out/``): refused by the
    commands before their work, since the write at the end would fail (or, for ``file/``,
    replace ``file``)."""
    text = os.fspath(path)
    return text.endswith(("/", os.sep)) or Path(text).is_dir()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside ``path`` (same suffix, so numpy and safetensors
    keep it); when the block succeeds the file is fsynced and renamed over ``path``. A
    symlink is followed (the link stays); a path that exists and is not a regular file
    (a device, a pipe) is yielded as it is and written in place."""
    path = Path(path)
    if path.exists() and not path.is_file():
        # A device, pipe or terminal (--csv /dev/stdout), through any links: written in
        # place, never replaced. (A folder fails in open() with its own message.)
        yield path
        return
    if path.is_symlink():  # a link to a file: write the file, the link stays
        path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        _fsync_file(tmp)
        # Some writers (safetensors) create 0600 files; give every file the usual mode.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as err:
        full = isinstance(err, Exception) and _disk_full(err, path.parent)
        with contextlib.suppress(OSError):
            tmp.unlink()
        if full:
            raise OSError(errno.ENOSPC, "no space left on the device", str(path)) from err
        if isinstance(err, OSError) and err.filename in (str(tmp), tmp):
            err.filename = str(path)  # the user's name, not the temporary one
        raise
    fsync_dir(path.parent)


def _disk_full(err: Exception, folder: Path) -> bool:
    """Whether a failed write ran out of space. Writers report it differently (an OSError,
    torch's "unexpected pos" RuntimeError, safetensors' error text), so the filesystem is
    asked too, while the partial temporary file still holds its space."""
    if isinstance(err, OSError):  # it says what it is (a permission error is not a full disk)
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    if "No space left" in str(err):
        return True
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):  # pragma: no cover - no statvfs (Windows)
        return False
    return st.f_bavail * st.f_frsize < 1 << 20


@contextlib.contextmanager
def text_output(path: str | Path, newline: str | None = None) -> Iterator[TextIO]:
    """An open text file that :func:`atomic_path` puts in place, or standard output for "-".
    File names that are not valid UTF-8 (surrogate escapes) are written as their bytes."""
    if str(path) == "-":
        errors = getattr(sys.stdout, "errors", None)
        reconfigure = getattr(sys.stdout, "reconfigure", None)
        if reconfigure and errors:
            reconfigure(errors="surrogateescape")
        try:
            yield sys.stdout
            sys.stdout.flush()
        finally:
            if reconfigure and errors:
                reconfigure(errors=errors)
        return
    with atomic_path(path) as tmp, open(tmp, "w", newline=newline, errors="surrogateescape") as f:
        yield f


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """Surrogate escapes (file names that are not valid UTF-8) are written as their bytes."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, errors="surrogateescape")
    return Path(path)


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    return write_text(path, json.dumps(obj, indent=indent, default=str) + "\n")
