"""Fetch model weights into the cache: checksummed while streaming, resumable, atomic, one process at a time.

The file grows in ``<dst>.partial`` and is renamed onto ``dst`` only once its size and hash match, so
``dst`` is either absent or complete. The partial name is fixed (not random, unlike torch.hub) so that a
dropped download can be resumed with an HTTP Range request, even by a later run; ``<dst>.lock`` keeps two
processes from writing it at once.

Every byte is treated as hostile until verified: each checksum algorithm a card may give is checked
before the rename (never after), only http(s) URLs are fetched (redirects included), a body larger than
the card's size (else ``$ZOO_MAX_DOWNLOAD_BYTES``) is cut off at once, and a server that delivers fewer
than ``STALL_BYTES`` in ``$ZOO_DOWNLOAD_STALL_SECONDS`` is abandoned.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import pathlib
import re
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass
from typing import IO, Any, Iterator, Mapping, Sequence

from tqdm import tqdm

from prototxt import CaffeError

__all__ = [
    "ChecksumError",
    "DownloadError",
    "UnverifiedDownloadWarning",
    "cache_dir",
    "cache_path",
    "download",
    "file_digest",
    "filename_problem",
    "new_hasher",
    "pick_digest",
    "verify_file",
]

CHUNK = 1 << 20
# The one list of checksum algorithms, cards included, with their hex digest lengths. Strongest first:
# when a card lists several digests, the strongest one is checked. git_blob_sha1 is the object id a git
# host shows for a file (`git hash-object FILE`): the only checksum some publishers give, implicitly.
HEX_LENGTHS = {"sha384": 96, "sha256": 64, "sha1": 40, "git_blob_sha1": 40, "md5": 32}
ALGORITHMS = tuple(HEX_LENGTHS)
MAX_BYTES_ENV = "ZOO_MAX_DOWNLOAD_BYTES"
# Without a size on the card: far above any Caffe model (VGG16 is 528 MiB), far below a full disk.
DEFAULT_MAX_BYTES = 4 << 30
STALL_ENV = "ZOO_DOWNLOAD_STALL_SECONDS"
DEFAULT_STALL_SECONDS = 60.0
# Fewer bytes than this in a stall window (1 KiB/s over the default minute) abandons the server.
STALL_BYTES = 64 << 10
SCHEMES = ("http", "https")
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


@dataclass(frozen=True)
class _Limits:
    cap: int  # the most bytes the file may have
    cap_text: str  # where the cap comes from, for messages
    stall: float  # seconds in which at least STALL_BYTES must arrive
    timeout: float  # socket connect/read timeout


def _limits(size: int | None, stall: float | None, timeout: float) -> _Limits:
    if size is not None:
        return _Limits(size, f"the {size} bytes the card declares", _stall_seconds(stall), timeout)
    cap = _positive_setting(MAX_BYTES_ENV, DEFAULT_MAX_BYTES, int)
    return _Limits(cap, f"the {cap}-byte cap (raise it with {MAX_BYTES_ENV})", _stall_seconds(stall), timeout)


def _stall_seconds(stall: float | None) -> float:
    return stall if stall is not None else _positive_setting(STALL_ENV, DEFAULT_STALL_SECONDS, float)


def _positive_setting(name: str, default: float, kind: type) -> Any:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = 0
    if not value > 0 or value == float("inf"):
        raise DownloadError(f"{name}={raw[:40]!r} is not a positive number; unset it or fix it")
    return value


def filename_problem(name: str) -> str | None:
    """Why ``name`` cannot be a file in the cache folder, or None: one plain component, portable."""
    if not _PLAIN_NAME.fullmatch(name):
        return "is not a plain file name (letters, digits and '_', then also '-', '.', '+')"
    if name.endswith("."):
        return "ends with a dot, which Windows drops"
    if len(name) > 255:
        return f"is {len(name)} characters long, more than file systems allow (255)"
    if _WINDOWS_DEVICE.fullmatch(name):
        return "is a device name on Windows"
    return None


_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")
_WINDOWS_DEVICE = re.compile(r"(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?", re.IGNORECASE)


def cache_path(directory: os.PathLike | str, filename: str) -> pathlib.Path:
    """``directory/filename``, refused unless it is a plain file name inside ``directory``."""
    directory = pathlib.Path(directory)
    problem = filename_problem(filename)
    path = directory / filename
    # Lexically (abspath, not resolve): a cached file may well be a symlink to a big disk elsewhere.
    if problem is None and os.path.dirname(os.path.abspath(path)) != os.path.abspath(directory):
        problem = "leads out of the cache folder"
    if problem is not None:
        raise DownloadError(f"weights file name {filename[:60]!r} {problem}; fix the card's weights.filename")
    return path


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
    algorithm, digest = pick_digest(checksum)
    if not path.is_file():
        return False
    return algorithm is None or file_digest(path, algorithm) == digest


def download(
    urls: str | Sequence[str],
    dst: os.PathLike | str,
    checksum: Mapping[str, str] | None = None,
    *,
    size: int | None = None,
    quiet: bool = False,
    timeout: float = 30.0,
    retries: int = 3,
    stall: float | None = None,
) -> pathlib.Path:
    """Fetch the file to ``dst`` from the first URL that delivers it, and return ``dst``.

    ``$ZOO_MIRROR/<dst name>`` is tried before ``urls``. A dropped connection is resumed from the same
    URL up to ``retries`` times. With ``checksum=None`` the file is not verified and an
    ``UnverifiedDownloadWarning`` says so. The body may not exceed ``size`` (else ``$ZOO_MAX_DOWNLOAD_BYTES``,
    default 4 GiB); a server sending fewer than ``STALL_BYTES`` in ``stall`` seconds (else
    ``$ZOO_DOWNLOAD_STALL_SECONDS``, default 60) is abandoned; ``timeout`` bounds each connect and read.
    Raises ``DownloadError`` (``ChecksumError`` for a wrong digest) with a one-line message.
    """
    dst = pathlib.Path(dst)
    dst = cache_path(dst.parent, dst.name)
    algorithm, digest = pick_digest(checksum)
    expected = _Expected(dst.name, algorithm, digest, size)
    limits = _limits(size, stall, timeout)
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
        if partial.is_symlink():  # planted: resuming would read, and writing would clobber, another file
            partial.unlink()
        if not _partial_is_complete(partial, expected):
            _fetch_any(candidates, partial, expected, quiet, limits, retries)
        os.replace(partial, dst)
    return dst


def pick_digest(checksum: Mapping[str, str] | None) -> tuple[str | None, str | None]:
    """(algorithm, digest) of the strongest checksum given, (None, None) for none."""
    if not checksum:
        return None, None
    unknown = sorted(set(checksum) - set(ALGORITHMS))
    if unknown:
        raise DownloadError(f"unsupported checksum algorithm {unknown[0]!r}; use one of {', '.join(ALGORITHMS)}")
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


def new_hasher(algorithm: str, size: int | None = None) -> hashlib._Hash:
    """A streaming hasher for one of ``ALGORITHMS``; git_blob_sha1 hashes a header with the file size."""
    if algorithm not in HEX_LENGTHS:
        raise DownloadError(f"unsupported checksum algorithm {algorithm!r}; use one of {', '.join(ALGORITHMS)}")
    if algorithm != "git_blob_sha1":
        # usedforsecurity=False lets md5 cards work on FIPS-mode systems; sha384/256 are still the real thing.
        return hashlib.new(algorithm, usedforsecurity=False)
    if size is None:
        raise ValueError("git_blob_sha1 needs the file size")
    hasher = hashlib.sha1(usedforsecurity=False)
    hasher.update(b"blob %d\0" % size)
    return hasher


def file_digest(path: os.PathLike | str, algorithm: str) -> str:
    """The hex digest of a whole file."""
    path = pathlib.Path(path)
    return _feed(new_hasher(algorithm, path.stat().st_size), path).hexdigest()


def _feed(hasher: hashlib._Hash, path: pathlib.Path) -> hashlib._Hash:
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
    return expected.algorithm is None or file_digest(path, expected.algorithm) == expected.digest


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
    urls: list[str], partial: pathlib.Path, expected: _Expected, quiet: bool, limits: _Limits, retries: int
) -> None:
    """Leave the verified file at ``partial``, or raise one DownloadError that reports every URL."""
    reasons: list[str] = []
    mismatch: ChecksumError | None = None
    last_drop: _Dropped | None = None
    attempts = max(retries, 0) + 1
    for url in urls:
        for _ in range(attempts):
            try:
                _fetch(url, partial, expected, quiet, limits)
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


def _fetch(url: str, partial: pathlib.Path, expected: _Expected, quiet: bool, limits: _Limits) -> None:
    """One request: resume or restart ``partial``, stream to it while hashing, then check size and hash."""
    offset = partial.stat().st_size if partial.is_file() else 0
    if offset > limits.cap:  # left by a run with another cap: no prefix of an acceptable file
        partial.unlink()
        offset = 0
    with _request(url, offset, partial, limits) as response:
        offset, total = _resume_point(response, offset, partial)
        if expected.size is not None and total is not None and total != expected.size:
            partial.unlink(missing_ok=True)
            raise _Failed(f"server sends {total} bytes, expected {expected.size}")
        if total is not None and total > limits.cap:
            raise _Failed(f"server announces {total} bytes, more than {limits.cap_text}")
        hasher = _resumed_hasher(expected, total, partial, offset)
        received = _stream(response, partial, offset, total, hasher, expected, quiet, limits)
    if expected.size is not None and received != expected.size:
        partial.unlink()
        raise _Failed(f"got {received} bytes, expected {expected.size}")
    _check_digest(partial, expected, hasher)


def _resumed_hasher(
    expected: _Expected, total: int | None, partial: pathlib.Path, offset: int
) -> hashlib._Hash | None:
    """The hasher fed with the kept prefix; None when there is no checksum or the size is not known yet."""
    size = expected.size if expected.size is not None else total
    if expected.algorithm is None or (expected.algorithm == "git_blob_sha1" and size is None):
        return None
    hasher = new_hasher(expected.algorithm, size)
    return _feed(hasher, partial) if offset else hasher


def _check_digest(partial: pathlib.Path, expected: _Expected, hasher: hashlib._Hash | None) -> None:
    """Verify the partial before it may take the final name (a git blob of unknown size is hashed now)."""
    if expected.algorithm is None:
        return
    got = hasher.hexdigest() if hasher is not None else file_digest(partial, expected.algorithm)
    if got != expected.digest:
        # A corrupt whole file is no prefix of the right one: never resume from it.
        partial.unlink()
        raise ChecksumError(
            f"{expected.algorithm} mismatch: expected {expected.digest}, got {got}",
            algorithm=expected.algorithm,
            expected=expected.digest,
            got=got,
        )


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """urllib follows redirects to ftp://; the zoo fetches only http(s), and says so in one line."""

    def http_error_302(self, req, fp, code, msg, headers):  # type: ignore[no-untyped-def]
        location = headers.get("location") or headers.get("uri")
        if location:
            try:
                _require_http(urllib.parse.urljoin(req.full_url, location), "redirected to")
            except _Failed:
                fp.close()
                raise
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _require_http(url: str, what: str) -> None:
    if urllib.parse.urlsplit(url).scheme.lower() not in SCHEMES:
        raise _Failed(f"{what} {url[:200]!r}, not an http(s) URL; only http and https are fetched")


class _Watchdog:
    """Shuts the request's connections down if the response headers are not all in after ``seconds``.

    The socket timeout bounds each read, not their sum: a server trickling its headers one byte at a time
    would hold the download forever.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.sockets: list[socket.socket] = []
        self.fired = False
        self.timer = threading.Timer(seconds, self._fire)
        self.timer.daemon = True

    def _fire(self) -> None:
        self.fired = True
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def handlers(self) -> list[urllib.request.BaseHandler]:
        """urllib's http and https handlers, recording each socket they connect (proxies included)."""
        sockets = self.sockets

        class Recording:
            def do_open(self, http_class, req, **kwargs):  # type: ignore[no-untyped-def]
                class Connection(http_class):  # type: ignore[misc, valid-type]
                    def connect(self) -> None:
                        super().connect()
                        sockets.append(self.sock)

                return super().do_open(Connection, req, **kwargs)  # type: ignore[misc]

        http_handler = type("Http", (Recording, urllib.request.HTTPHandler), {})
        https_handler = type("Https", (Recording, urllib.request.HTTPSHandler), {})
        return [http_handler(), https_handler()]


def _open(url: str, offset: int, partial: pathlib.Path, limits: _Limits) -> http.client.HTTPResponse:
    _require_http(url, "refused")
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    watchdog = _Watchdog(limits.stall)
    # Built per call: the proxy settings are read from the environment as it is now.
    opener = urllib.request.build_opener(_HttpOnlyRedirects, *watchdog.handlers())
    watchdog.timer.start()
    response = None
    try:
        response = opener.open(urllib.request.Request(url, headers=headers), timeout=limits.timeout)
    except Exception:
        if not watchdog.fired:
            raise
    finally:
        watchdog.timer.cancel()
    if watchdog.fired:  # cut short, the headers may even have parsed: none of it is to be trusted
        if response is not None:
            response.close()
        raise _Failed(f"no response within {limits.stall:g} s ({STALL_ENV} sets the limit)")
    return response


def _request(url: str, offset: int, partial: pathlib.Path, limits: _Limits) -> http.client.HTTPResponse:
    """``_open`` with its failures sorted: start again, try the next URL."""
    try:
        return _open(url, offset, partial, limits)
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


# ASCII digits only, at most 19 (int() takes other Unicode digits, and refuses thousands of them).
_BYTES = "[0-9]{1,19}"
_CONTENT_RANGE = re.compile(rf"bytes\s+({_BYTES})-{_BYTES}/({_BYTES}|\*)")


def _byte_count(header: str) -> int | None:
    return int(header) if re.fullmatch(_BYTES, header.strip()) else None


def _resume_point(
    response: http.client.HTTPResponse, offset: int, partial: pathlib.Path
) -> tuple[int, int | None]:
    """Return (bytes kept from the partial, announced total size) for this response."""
    length = _byte_count(response.headers.get("Content-Length", ""))
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
    hasher: hashlib._Hash | None,
    expected: _Expected,
    quiet: bool,
    limits: _Limits,
) -> int:
    """Append the body to ``partial`` from ``offset``; return the partial's final size."""
    received = offset
    pace = _Pace(limits.stall)
    with _open_partial(partial, offset) as out, _progress(expected.name, total, offset, quiet) as bar:
        while True:
            try:
                # read1 returns what has arrived, so a trickling server is noticed; one byte past the cap
                # is enough to know it is exceeded.
                block = response.read1(min(CHUNK, limits.cap - received + 1))
            except (OSError, http.client.HTTPException) as error:
                raise _Dropped(f"after {received} bytes: {_reason(error)}") from None
            if not block:
                break
            received += len(block)
            if received > limits.cap:
                out.close()
                partial.unlink()
                raise _Failed(f"sent more than {limits.cap_text}")
            out.write(block)
            if hasher is not None:
                hasher.update(block)
            bar.update(len(block))
            pace.check(len(block), received)
        out.flush()
        os.fsync(out.fileno())
    # read1() returns b"" when the peer closes early, without raising IncompleteRead.
    if total is not None and received < total:
        raise _Dropped(f"connection closed after {received} of {total} bytes")
    return received


def _open_partial(partial: pathlib.Path, offset: int) -> IO[bytes]:
    """Append from ``offset`` (truncating when 0), never through a symlink planted in the meantime."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if offset else os.O_TRUNC) | getattr(os, "O_NOFOLLOW", 0)
    return os.fdopen(os.open(partial, flags | getattr(os, "O_BINARY", 0), 0o666), "ab" if offset else "wb")


class _Pace:
    """Abandons a server that sends fewer than STALL_BYTES in any window of ``stall`` seconds."""

    def __init__(self, stall: float) -> None:
        self.stall = stall
        self.start = time.monotonic()
        self.bytes = 0

    def check(self, count: int, received: int) -> None:
        self.bytes += count
        now = time.monotonic()
        if now - self.start < self.stall:
            return
        if self.bytes < STALL_BYTES:
            raise _Failed(
                f"too slow: {self.bytes} bytes in {now - self.start:.1f} s after {received} bytes, fewer than "
                f"{STALL_BYTES} in {self.stall:g} s ({STALL_ENV} sets the window)"
            )
        self.start, self.bytes = now, 0


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
