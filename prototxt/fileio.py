"""Writing files so that a reader never sees half of one: a temp file beside the target, renamed
onto it only when everything was written (and deleted on any failure)."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from typing import IO, Iterator


def umask_mode(mode: int = 0o666) -> int:
    """``mode`` less the process umask: what ``open`` or ``mkdir`` would give (tempfile's 0600/0700 would
    otherwise survive the rename and leave outputs unreadable to the user's group)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mode & ~mask


@contextmanager
def atomic_path(path: os.PathLike | str) -> Iterator[str]:
    """A temp path beside ``path`` to write to; it replaces ``path`` when the block succeeds."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".partial",
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
