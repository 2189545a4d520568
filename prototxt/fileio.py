"""Writing files and folders so that a reader never sees half of one: a temp file (or folder) beside
the target, renamed onto it only when everything was written (and deleted on any failure).

Temp names are ``<target>.<pid>.<random>.partial``: a run killed before its rename leaves one behind,
and the next write of the same target removes those of dead processes (never a live one's). A
folder replaces a previous one in three steps (the old one renamed aside as
``<target>.<pid>.<random>.old.partial``, the new one renamed in, the old one deleted): a kill between
the first two leaves the old folder aside, and the next write puts it back before it starts.

Reading, ``open_regular`` opens only a regular file: a named pipe given as a net or weights file would
block ``open`` forever, a device would stream without end."""
from __future__ import annotations

import os
import re
import secrets
import shutil
import stat
import tempfile
import time
from contextlib import contextmanager
from typing import IO, BinaryIO, Iterator

# Temp names of older versions carry no pid: such left-overs are removed once this old (seconds).
LEGACY_STALE_AGE = 24 * 3600


def umask_mode(mode: int = 0o666) -> int:
    """``mode`` less the process umask: what ``open`` or ``mkdir`` would give (tempfile's 0600/0700 would
    otherwise survive the rename and leave outputs unreadable to the user's group)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mode & ~mask


class NotRegularFile(OSError):
    """A path to read that names a named pipe, a device, a socket or a directory."""


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _refuse_irregular(mode: int) -> None:
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
        raise NotRegularFile(f"it is {kind}, not a regular file; give the path of the file itself")


def open_regular(path: os.PathLike | str, buffering: int = -1) -> BinaryIO:
    """``open(path, "rb")`` of a regular file; anything else raises ``NotRegularFile`` (an OSError whose
    str is one line) without blocking: checked before opening, then opened non-blocking (opening a FIFO
    waits for a writer otherwise) and checked again on the open descriptor (the path may have changed)."""
    _refuse_irregular(os.stat(path).st_mode)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        _refuse_irregular(os.fstat(fd).st_mode)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb", buffering=buffering)
    except BaseException:
        os.close(fd)
        raise


def _temp_prefix(path: str) -> str:
    return f"{os.path.basename(path)}.{os.getpid()}."


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OSError:  # pid out of range, or no such call here: not ours to judge
        return True
    return True


def _remove(path: str) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:  # another run cleaned it first
        pass


def clean_stale(path: os.PathLike | str) -> list[str]:
    """Remove the temp files and folders that killed runs left beside ``path``: those of processes no
    longer alive, and pid-less ones (older versions) older than LEGACY_STALE_AGE. A previous folder a
    killed swap left aside is renamed back onto ``path`` when nothing took its place. Returns what was
    removed or restored."""
    path = os.path.abspath(os.fspath(path))
    folder, base = os.path.split(path)
    ours = re.compile(re.escape(base) + r"\.(\d+)\.[a-z0-9_]+(\.old)?\.partial")
    legacy = re.compile(re.escape(base) + r"\.[a-z0-9_]{8}\.partial")
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    done = []
    for name in sorted(names):
        full = os.path.join(folder, name)
        match = ours.fullmatch(name)
        if match is not None:
            if _alive(int(match.group(1))):
                continue
        elif legacy.fullmatch(name) is None or not _older_than(full, LEGACY_STALE_AGE):
            continue
        if match is not None and match.group(2) and not os.path.lexists(path):
            os.rename(full, path)  # a swap killed half way: the previous output comes back
        else:
            _remove(full)
        done.append(full)
    return done


def _older_than(path: str, seconds: float) -> bool:
    try:
        return time.time() - os.lstat(path).st_mtime > seconds
    except OSError:
        return False


@contextmanager
def atomic_path(path: os.PathLike | str) -> Iterator[str]:
    """A temp path beside ``path`` to write to; it replaces ``path`` when the block succeeds."""
    path = os.fspath(path)
    clean_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".partial",
                               dir=os.path.dirname(os.path.abspath(path)))
    os.fchmod(fd, umask_mode(0o666))
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextmanager
def atomic_open(path: os.PathLike | str, mode: str = "wb", **kwargs) -> Iterator[IO]:
    """``open(path, mode)`` as an atomic write."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **kwargs) as f:
            yield f


def atomic_write(path: os.PathLike | str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: the old file, or all of the new one."""
    with atomic_open(path) as f:
        f.write(data)


@contextmanager
def atomic_dir(path: os.PathLike | str) -> Iterator[str]:
    """A temp folder beside ``path`` to fill; it takes the place of ``path`` (a folder or a file) when
    the block succeeds. The old one is renamed aside before and deleted after the new one is renamed
    in, so at any moment ``path`` is the old output, the new one, or (killed between two renames) the
    old one lies aside where ``clean_stale`` puts it back."""
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    clean_stale(path)
    tmp = tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".partial", dir=parent)
    os.chmod(tmp, umask_mode(0o777))
    aside = None
    try:
        yield tmp
        if os.path.lexists(path):
            aside = os.path.join(parent, f"{_temp_prefix(path)}{secrets.token_hex(4)}.old.partial")
            os.rename(path, aside)
        os.rename(tmp, path)
    except BaseException:
        if aside is not None and not os.path.lexists(path):
            os.rename(aside, path)
            aside = None
        _remove(tmp)
        raise
    if aside is not None:
        _remove(aside)
