"""Fetch model weights into the cache: checksummed while streaming, resumable, atomic, one process at a time.

The file grows in ``<dst>.partial`` and is renamed onto ``dst`` only once its size and hash match, so
``dst`` is either absent or complete. The partial name is fixed (not random, unlike torch.hub) so that a
dropped download can be resumed with an HTTP Range request, even by a later run; ``<dst>.lock`` keeps two
processes from writing it at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import pathlib
import re
import sys
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from typing import IO, Iterator, Mapping, Sequence

from tqdm import tqdm

from prototxt import CaffeError

__all__ = [
    "ChecksumError",
    "DownloadError",
    "UnverifiedDownloadWarning",
    "cache_dir",
    "download",
    "verify_file",
]

CHUNK = 1 << 20
# Strongest first: when a card lists several digests, the strongest one is checked.
ALGORITHMS = ("sha256", "sha1", "md5")
USER_AGENT = "caffezoo"
WEIGHTS_HINT = "if you obtain the file another way, pass it with --weights FILE"


class DownloadError(CaffeError):
    """A file could not be fetched. The message is one line naming every URL tried."""

    def __init__(self, message: str) -> None:
        # Reasons come from sockets and servers; fold any newline so the CLI prints one line.
        super().__init__(" ".join(message.split()))


class ChecksumError(DownloadError):
    """The downloaded bytes do not hash to the expected digest."""

    def __init__(self, message: str, *, algorithm: str, expected: str, got: str) -> None:
        super().__init__(message)
        self.algorithm = algorithm
        self.expected = expected
        self.got = got


class UnverifiedDownloadWarning(UserWarning):
    """The file has no checksum on record, so its content was not verified."""


@dataclass(frozen=True)
class _Expected:
    name: str
    algorithm: str | None
    digest: str | None
    size: int | None


class _Dropped(Exception):
    """The connection broke mid-stream; the partial file is a valid prefix to resume from."""


class _Failed(Exception):
    """This URL cannot deliver the file (HTTP error, unreachable, wrong size); try the next one."""


def cache_dir() -> pathlib.Path:
    """Where weights are kept: ``$ZOO_HOME``, else the platform's user cache directory (not created)."""
    if os.environ.get("ZOO_HOME"):
        return pathlib.Path(os.environ["ZOO_HOME"]).expanduser()
    home = pathlib.Path.home()
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA") or str(home / "AppData" / "Local")
        return pathlib.Path(local) / "caffezoo" / "Cache"
    if sys.platform == "darwin":
        return home / "Library" / "Caches" / "caffezoo"
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG spec says a relative value is invalid and must be ignored.
    base = pathlib.Path(xdg) if os.path.isabs(xdg) else home / ".cache"
    return base / "caffezoo"


def verify_file(path: os.PathLike | str, checksum: Mapping[str, str] | None) -> bool:
    """True if ``path`` is a file whose digest matches ``checksum`` (a file with no checksum passes)."""
    path = pathlib.Path(path)
    algorithm, digest = _pick_digest(checksum)
    if not path.is_file():
        return False
    return algorithm is None or _hash_file(path, algorithm).hexdigest() == digest


def download(
    urls: str | Sequence[str],
    dst: os.PathLike | str,
    checksum: Mapping[str, str] | None = None,
    *,
    size: int | None = None,
    quiet: bool = False,
    timeout: float = 30.0,
    retries: int = 3,
) -> pathlib.Path:
    """Fetch the file to ``dst`` from the first URL that delivers it, and return ``dst``.

    ``$ZOO_MIRROR/<dst name>`` is tried before ``urls``. A dropped connection is resumed from the same
    URL up to ``retries`` times. With ``checksum=None`` the file is not verified and an
    ``UnverifiedDownloadWarning`` says so. Raises ``DownloadError`` (``ChecksumError`` for a wrong
    digest) with a one-line message.
    """
    dst = pathlib.Path(dst)
    algorithm, digest = _pick_digest(checksum)
    expected = _Expected(dst.name, algorithm, digest, size)
    candidates = _candidate_urls(urls, dst.name)
    if algorithm is None:
        warnings.warn(
            f"{dst.name}: no checksum on record, the file is used unverified",
            UnverifiedDownloadWarning,
            stacklevel=2,
        )
    if _is_complete(dst, expected):
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(dst.with_name(dst.name + ".lock"), dst.name, quiet):
        # Another process may have finished the file while this one waited for the lock.
        if _is_complete(dst, expected):
            return dst
        partial = dst.with_name(dst.name + ".partial")
        if not _partial_is_complete(partial, expected):
            _fetch_any(candidates, partial, expected, quiet, timeout, retries)
        os.replace(partial, dst)
    return dst


def _pick_digest(checksum: Mapping[str, str] | None) -> tuple[str | None, str | None]:
    if not checksum:
        return None, None
    unknown = sorted(set(checksum) - set(ALGORITHMS))
    if unknown:
        raise ValueError(f"unsupported checksum algorithm {unknown[0]!r}; use one of {', '.join(ALGORITHMS)}")
    algorithm = next(a for a in ALGORITHMS if a in checksum)
    return algorithm, checksum[algorithm].strip().lower()


def _candidate_urls(urls: str | Sequence[str], filename: str) -> list[str]:
    listed = [urls] if isinstance(urls, str) else list(urls)
    mirror = os.environ.get("ZOO_MIRROR", "").strip()
    if mirror:
        listed.insert(0, mirror.rstrip("/") + "/" + filename)
    candidates = list(dict.fromkeys(u for u in listed if u))
    if not candidates:
        raise ValueError(f"no URL to download {filename} from")
    return candidates


def _new_hasher(algorithm: str) -> hashlib._Hash:
    # An integrity check, not a security one: lets md5 cards work on FIPS-mode systems too.
    return hashlib.new(algorithm, usedforsecurity=False)


def _hash_file(path: pathlib.Path, algorithm: str) -> hashlib._Hash:
    hasher = _new_hasher(algorithm)
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            hasher.update(block)
    return hasher


def _is_complete(path: pathlib.Path, expected: _Expected) -> bool:
    """Cheap check first: a wrong size settles it without reading the file."""
    if not path.is_file():
        return False
    if expected.size is not None and path.stat().st_size != expected.size:
        return False
    return expected.algorithm is None or _hash_file(path, expected.algorithm).hexdigest() == expected.digest


def _partial_is_complete(partial: pathlib.Path, expected: _Expected) -> bool:
    """A partial as long as the whole file (killed just before the rename) would get a 416 on resume."""
    if expected.size is None or not partial.is_file() or partial.stat().st_size < expected.size:
        return False
    if _is_complete(partial, expected):
        return True
    partial.unlink()
    return False


@contextlib.contextmanager
def _exclusive(lock_path: pathlib.Path, name: str, quiet: bool) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (the lock file stays: unlinking it would race a waiter)."""
    with open(lock_path, "a+b") as handle:
        if not _try_lock(handle):
            if not quiet:
                print(f"waiting for another process downloading {name}", file=sys.stderr)
            _lock(handle)
        try:
            yield
        finally:
            _unlock(handle)


if os.name == "nt":
    import msvcrt

    def _try_lock(handle: IO[bytes]) -> bool:
        handle.seek(0)
        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _lock(handle: IO[bytes]) -> None:
        # LK_LOCK gives up after ten one-second tries; a download takes longer, so keep asking.
        while True:
            handle.seek(0)
            try:
                msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK, 1)
                return
            except OSError:
                continue

    def _unlock(handle: IO[bytes]) -> None:
        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(handle: IO[bytes]) -> bool:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _lock(handle: IO[bytes]) -> None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)

    def _unlock(handle: IO[bytes]) -> None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _fetch_any(
    urls: list[str], partial: pathlib.Path, expected: _Expected, quiet: bool, timeout: float, retries: int
) -> None:
    """Leave the verified file at ``partial``, or raise one DownloadError that reports every URL."""
    reasons: list[str] = []
    mismatch: ChecksumError | None = None
    last_drop: _Dropped | None = None
    attempts = max(retries, 0) + 1
    for url in urls:
        for _ in range(attempts):
            try:
                _fetch(url, partial, expected, quiet, timeout)
                return
            except _Dropped as dropped:
                last_drop = dropped
            except _Failed as failed:
                reasons.append(f"{url}: {failed}")
                break
            except ChecksumError as error:
                mismatch = error
                reasons.append(f"{url}: {error}")
                break
        else:
            reasons.append(f"{url}: connection dropped {attempts} times ({last_drop})")
    message = f"could not download {expected.name}: {'; '.join(reasons)}; {WEIGHTS_HINT}"
    if mismatch is not None:
        raise ChecksumError(message, algorithm=mismatch.algorithm, expected=mismatch.expected, got=mismatch.got)
    raise DownloadError(message)


def _fetch(url: str, partial: pathlib.Path, expected: _Expected, quiet: bool, timeout: float) -> None:
    """One request: resume or restart ``partial``, stream to it while hashing, then check size and hash."""
    offset = partial.stat().st_size if partial.is_file() else 0
    with _open(url, offset, partial, timeout) as response:
        offset, total = _resume_point(response, offset, partial)
        if expected.size is not None and total is not None and total != expected.size:
            partial.unlink(missing_ok=True)
            raise _Failed(f"server sends {total} bytes, expected {expected.size}")
        algorithm = expected.algorithm or "sha256"
        hasher = _hash_file(partial, algorithm) if offset else _new_hasher(algorithm)
        received = _stream(response, partial, offset, total, hasher, expected, quiet)
    if expected.size is not None and received != expected.size:
        partial.unlink()
        raise _Failed(f"got {received} bytes, expected {expected.size}")
    got = hasher.hexdigest()
    if expected.algorithm is not None and got != expected.digest:
        # A corrupt whole file is no prefix of the right one: never resume from it.
        partial.unlink()
        raise ChecksumError(
            f"{expected.algorithm} mismatch: expected {expected.digest}, got {got}",
            algorithm=expected.algorithm,
            expected=expected.digest,
            got=got,
        )


def _open(url: str, offset: int, partial: pathlib.Path, timeout: float) -> http.client.HTTPResponse:
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:
            # The partial does not fit the file the server has now: start again from zero.
            partial.unlink(missing_ok=True)
            raise _Dropped("server refused to resume") from None
        raise _Failed(f"HTTP {error.code} {error.reason}") from None
    except urllib.error.URLError as error:
        raise _Failed(f"unreachable ({_reason(error.reason)})") from None
    except (OSError, http.client.HTTPException) as error:
        raise _Failed(f"unreachable ({_reason(error)})") from None


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-\d+/(\d+|\*)")


def _resume_point(
    response: http.client.HTTPResponse, offset: int, partial: pathlib.Path
) -> tuple[int, int | None]:
    """Return (bytes kept from the partial, announced total size) for this response."""
    length = response.headers.get("Content-Length")
    length = int(length) if length and length.isdigit() else None
    if not offset or response.status != 206:
        # A 200 to a Range request is the whole file: start again from zero.
        return 0, length
    match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
    if match is None or int(match.group(1)) != offset:
        partial.unlink(missing_ok=True)
        raise _Dropped("server sent an unexpected range")
    if match.group(2) != "*":
        return offset, int(match.group(2))
    return offset, None if length is None else offset + length


def _stream(
    response: http.client.HTTPResponse,
    partial: pathlib.Path,
    offset: int,
    total: int | None,
    hasher: hashlib._Hash,
    expected: _Expected,
    quiet: bool,
) -> int:
    """Append the body to ``partial`` from ``offset``; return the partial's final size."""
    received = offset
    with open(partial, "ab" if offset else "wb") as out, _progress(expected.name, total, offset, quiet) as bar:
        while True:
            try:
                block = response.read(CHUNK)
            except (OSError, http.client.HTTPException) as error:
                raise _Dropped(f"after {received} bytes: {_reason(error)}") from None
            if not block:
                break
            out.write(block)
            hasher.update(block)
            received += len(block)
            bar.update(len(block))
            if expected.size is not None and received > expected.size:
                break
        out.flush()
        os.fsync(out.fileno())
    # read() returns b"" when the peer closes early, without raising IncompleteRead.
    if total is not None and received < total:
        raise _Dropped(f"connection closed after {received} of {total} bytes")
    return received


def _progress(name: str, total: int | None, initial: int, quiet: bool) -> tqdm:
    interactive = sys.stderr is not None and sys.stderr.isatty()
    return tqdm(
        total=total,
        initial=initial,
        desc=name,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        disable=quiet or not interactive,
    )


def _reason(error: object) -> str:
    # A bare socket.timeout() or ConnectionResetError() has an empty str.
    return str(error) or type(error).__name__
