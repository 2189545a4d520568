"""zoo.hub.download against a real HTTP server on 127.0.0.1, so no test needs the network."""

from __future__ import annotations

import hashlib
import os
import pathlib
import random
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import zoo.hub.download
from zoo.hub.cards import WeightsInfo
from zoo.hub.fetch import fetch_weights
from zoo.hub.download import (
    ChecksumError,
    DownloadError,
    UnverifiedDownloadWarning,
    cache_dir,
    download,
    verify_file,
)

# Not a multiple of the 1 MiB read size, and random so that a resume at the wrong offset cannot match.
DATA = random.Random(0).randbytes(3 * (1 << 20) + 17)
SHA256 = {"sha256": hashlib.sha256(DATA).hexdigest()}
NAME = "weights.caffemodel"


@dataclass
class Route:
    data: bytes
    drops: int = 0  # this many first requests get the full Content-Length but half the body, then a close
    ranges: bool = True  # honour Range; False answers every request 200 with the whole file
    delay: float = 0.0  # seconds slept after each piece of the body
    piece: int = 64 * 1024
    hits: int = 0
    length: int | str | None = -1  # the Content-Length announced: -1 the body's, None none (read until close)
    endless: bool = False  # repeat the data until the client hangs up
    redirect: str | None = None  # answer 302 to this location
    slow_headers: bool = False  # trickle an endless header, one byte every 50 ms


class _Handler(BaseHTTPRequestHandler):
    server: FileServer

    def do_GET(self) -> None:
        range_header = self.headers.get("Range")
        self.server.requests.append((self.path, range_header))
        route = self.server.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        route.hits += 1
        if route.slow_headers:
            self.wfile.write(b"HTTP/1.0 200 OK\r\nX-Slow: ")
            try:
                for _ in range(400):
                    self.wfile.write(b"a")
                    self.wfile.flush()
                    time.sleep(0.05)
            except ConnectionError:
                pass
            return
        if route.redirect is not None:
            self.send_response(302)
            self.send_header("Location", route.redirect)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = int(range_header.split("=")[1].split("-")[0]) if range_header and route.ranges else None
        if start is not None and start >= len(route.data):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(route.data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = route.data if start is None else route.data[start:]
        self.send_response(200 if start is None else 206)
        if start is not None:
            self.send_header("Content-Range", f"bytes {start}-{len(route.data) - 1}/{len(route.data)}")
        if route.length is not None:
            self.send_header("Content-Length", str(len(body) if route.length == -1 else route.length))
        self.end_headers()
        if route.hits <= route.drops:
            body = body[: len(body) // 2]
        try:
            while True:
                for at in range(0, len(body), route.piece):
                    self.wfile.write(body[at : at + route.piece])
                    time.sleep(route.delay)
                if not route.endless:
                    break
        except ConnectionError:
            pass  # the client gave up early, as some tests make it do

    def log_message(self, format: str, *args: object) -> None:
        pass


class FileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, str | None]] = []

    def serve(self, path: str, data: bytes = DATA, **behaviour: object) -> str:
        self.routes[path] = Route(data, **behaviour)
        return self.url(path)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_port}{path}"

    def ranges_asked(self, path: str) -> list[str | None]:
        return [range_header for asked, range_header in self.requests if asked == path]


@pytest.fixture(autouse=True)
def plain_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    zoo_settings = ("ZOO_MIRROR", "ZOO_HOME", "ZOO_MAX_DOWNLOAD_BYTES", "ZOO_DOWNLOAD_STALL_SECONDS")
    for name in (*zoo_settings, "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "*")


@pytest.fixture
def server() -> Iterator[FileServer]:
    httpd = FileServer()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def dst(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "cache"))
    return cache_dir() / "bvlc" / NAME


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and "\r" not in message
    return message


def names_beside(path: pathlib.Path) -> set[str]:
    return {p.name for p in path.parent.iterdir()}


def test_good_file_is_verified_and_renamed_into_place(server: FileServer, dst: pathlib.Path) -> None:
    url = server.serve("/good.bin")

    assert download(url, dst, SHA256, size=len(DATA), quiet=True, timeout=5) == dst

    assert dst.read_bytes() == DATA
    assert verify_file(dst, SHA256)
    assert names_beside(dst) == {NAME, NAME + ".lock"}  # no temp or partial file left


def test_wrong_checksum_raises_and_leaves_no_file(server: FileServer, dst: pathlib.Path) -> None:
    url = server.serve("/bad.bin", DATA[:-1] + b"!")

    with pytest.raises(ChecksumError) as error:
        download(url, dst, SHA256, quiet=True, timeout=5)

    message = one_line(error)
    assert SHA256["sha256"] in message and error.value.got in message and url in message
    assert error.value.expected == SHA256["sha256"] and error.value.got != error.value.expected
    assert names_beside(dst) == {NAME + ".lock"}


def test_dropped_connection_is_resumed_with_range(server: FileServer, dst: pathlib.Path) -> None:
    url = server.serve("/flaky.bin", drops=1)

    download(url, dst, SHA256, quiet=True, timeout=5)

    assert server.ranges_asked("/flaky.bin") == [None, f"bytes={len(DATA) // 2}-"]
    assert dst.read_bytes() == DATA
    assert names_beside(dst) == {NAME, NAME + ".lock"}


def test_server_answering_range_with_200_restarts_from_zero(server: FileServer, dst: pathlib.Path) -> None:
    url = server.serve("/norange.bin", drops=1, ranges=False)

    download(url, dst, SHA256, quiet=True, timeout=5)

    assert server.ranges_asked("/norange.bin") == [None, f"bytes={len(DATA) // 2}-"]
    assert dst.read_bytes() == DATA


def test_connection_dropping_past_retries_keeps_a_resumable_partial(server: FileServer, dst: pathlib.Path) -> None:
    url = server.serve("/dying.bin", drops=2)

    with pytest.raises(DownloadError) as error:
        download(url, dst, SHA256, quiet=True, timeout=5, retries=1)
    assert "dropped 2 times" in one_line(error) and url in str(error.value)
    assert not dst.exists() and (dst.parent / (NAME + ".partial")).is_file()

    download(url, dst, SHA256, quiet=True, timeout=5, retries=1)  # a later run picks up where it stopped
    assert server.ranges_asked("/dying.bin")[-1] == f"bytes={len(DATA) * 3 // 4}-"
    assert dst.read_bytes() == DATA


def test_hash_covers_the_resumed_prefix(server: FileServer, dst: pathlib.Path) -> None:
    url = server.serve("/good.bin")
    dst.parent.mkdir(parents=True)
    (dst.parent / (NAME + ".partial")).write_bytes(b"\0" * 1000)  # a prefix that is not the file's

    with pytest.raises(ChecksumError):
        download(url, dst, SHA256, quiet=True, timeout=5)

    assert server.ranges_asked("/good.bin") == ["bytes=1000-"]
    assert names_beside(dst) == {NAME + ".lock"}  # the corrupt partial is not kept for resuming


def test_404_is_one_line_with_status_and_url(server: FileServer, dst: pathlib.Path) -> None:
    url = server.url("/missing.bin")

    with pytest.raises(DownloadError) as error:
        download(url, dst, SHA256, quiet=True, timeout=5)

    message = one_line(error)
    assert "404" in message and url in message
    assert not isinstance(error.value, ChecksumError)
    assert names_beside(dst) == {NAME + ".lock"}


def test_unreachable_server_points_to_weights_option(dst: pathlib.Path) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago refuses connections
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/w.bin"

    with pytest.raises(DownloadError) as error:
        download(url, dst, SHA256, quiet=True, timeout=5)

    message = one_line(error)
    assert url in message and "--weights" in message
    assert not dst.exists()


def test_mirror_is_tried_before_card_urls(
    server: FileServer, dst: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.serve(f"/mirror/{NAME}")
    monkeypatch.setenv("ZOO_MIRROR", server.url("/mirror/"))

    download(server.serve("/origin.bin"), dst, SHA256, quiet=True, timeout=5)

    assert [path for path, _ in server.requests] == [f"/mirror/{NAME}"]
    assert dst.read_bytes() == DATA


def test_urls_are_tried_in_order_until_one_delivers(
    server: FileServer, dst: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZOO_MIRROR", server.url("/empty-mirror"))
    urls = [server.url("/gone.bin"), server.serve("/origin.bin")]

    download(urls, dst, SHA256, quiet=True, timeout=5)

    assert [path for path, _ in server.requests] == [f"/empty-mirror/{NAME}", "/gone.bin", "/origin.bin"]
    assert dst.read_bytes() == DATA


def test_wrong_size_is_an_error(server: FileServer, dst: pathlib.Path) -> None:
    url = server.serve("/good.bin")

    with pytest.raises(DownloadError) as error:
        download(url, dst, SHA256, size=len(DATA) + 1, quiet=True, timeout=5)

    assert str(len(DATA) + 1) in one_line(error)
    assert names_beside(dst) == {NAME + ".lock"}


def test_missing_checksum_is_reported_as_a_warning(server: FileServer, dst: pathlib.Path) -> None:
    url = server.serve("/good.bin")

    with pytest.warns(UnverifiedDownloadWarning, match=NAME):
        download(url, dst, None, quiet=True, timeout=5)

    assert dst.read_bytes() == DATA


def test_existing_verified_file_needs_no_request(server: FileServer, dst: pathlib.Path) -> None:
    url = server.serve("/good.bin")
    dst.parent.mkdir(parents=True)
    dst.write_bytes(DATA)

    assert download(url, dst, SHA256, size=len(DATA), quiet=True, timeout=5) == dst

    assert server.requests == []


def test_corrupt_existing_file_is_replaced(server: FileServer, dst: pathlib.Path) -> None:
    url = server.serve("/good.bin")
    dst.parent.mkdir(parents=True)
    dst.write_bytes(b"truncated")

    download(url, dst, SHA256, quiet=True, timeout=5)

    assert dst.read_bytes() == DATA


CHILD = """
import sys
from zoo.hub.download import download
print("ready", flush=True)
sys.stdin.readline()
print(download(sys.argv[1], sys.argv[2], {"sha256": sys.argv[3]}, timeout=10), flush=True)
"""


def test_two_processes_share_one_download(server: FileServer, dst: pathlib.Path) -> None:
    data = DATA[: 1 << 20]
    url = server.serve("/slow.bin", data, piece=64 * 1024, delay=0.03)  # about half a second
    env = dict(os.environ, PYTHONPATH=str(pathlib.Path(zoo.hub.download.__file__).resolve().parents[2]))
    args = [sys.executable, "-c", CHILD, url, str(dst), hashlib.sha256(data).hexdigest()]
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    children = [subprocess.Popen(args, text=True, env=env, **pipes) for _ in range(2)]
    for child in children:  # both imported: release them together so they contend for the lock
        assert child.stdout.readline().strip() == "ready"
    for child in children:
        child.stdin.write("go\n")
        child.stdin.flush()
    results = [child.communicate(timeout=20) for child in children]

    assert [child.returncode for child in children] == [0, 0], results
    assert [out.strip() for out, _ in results] == [str(dst), str(dst)]
    assert sum("waiting for another process" in err for _, err in results) == 1
    assert server.ranges_asked("/slow.bin") == [None]
    assert dst.read_bytes() == data
    assert names_beside(dst) == {NAME, NAME + ".lock"}


@pytest.mark.parametrize(
    "platform, environment, expected",
    [
        ("linux", {}, "home/.cache/caffezoo"),
        ("linux", {"XDG_CACHE_HOME": "/xdg"}, "/xdg/caffezoo"),
        ("linux", {"XDG_CACHE_HOME": "relative"}, "home/.cache/caffezoo"),
        ("darwin", {}, "home/Library/Caches/caffezoo"),
        ("win32", {"LOCALAPPDATA": "/appdata"}, "/appdata/caffezoo/Cache"),
        ("linux", {"ZOO_HOME": "/zoo", "XDG_CACHE_HOME": "/xdg"}, "/zoo"),
    ],
)
def test_cache_dir_follows_platform_conventions(
    platform: str,
    environment: dict[str, str],
    expected: str,
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "platform", platform)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("XDG_CACHE_HOME", "LOCALAPPDATA"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)

    assert cache_dir() == (tmp_path / expected if expected.startswith("home") else pathlib.Path(expected))


# --- hostile servers and cards (issue 9) ------------------------------------------------------

SHA384 = {"sha384": hashlib.sha384(DATA).hexdigest()}
GIT_BLOB = {"git_blob_sha1": hashlib.sha1(b"blob %d\0" % len(DATA) + DATA).hexdigest()}
WRONG = DATA[:-1] + b"!"


def card_for(urls: list[str], checksum: dict[str, str] | None, filename: str = NAME, size: int | None = None):
    weights = WeightsInfo(filename, tuple(urls), checksum, None if checksum else "none published", size, None)
    return type("Card", (), {"name": "m", "weights": weights})()


@pytest.fixture
def renames(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bytes]]:
    """Every rename download() makes, with the bytes it put under the final name."""
    done: list[tuple[str, bytes]] = []
    real = os.replace

    def spy(src: object, target: object) -> None:
        done.append((str(target), pathlib.Path(src).read_bytes()))
        real(src, target)

    monkeypatch.setattr(zoo.hub.download.os, "replace", spy)
    return done


@pytest.mark.parametrize("checksum", [SHA384, GIT_BLOB], ids=["sha384", "git_blob_sha1"])
def test_every_card_algorithm_is_verified_before_the_rename(
    server: FileServer, dst: pathlib.Path, renames: list, checksum: dict[str, str]
) -> None:
    card = card_for([server.serve("/bad.bin", WRONG)], checksum)

    with pytest.raises(ChecksumError) as error:
        fetch_weights(card, dst.parent, quiet=True)

    assert next(iter(checksum)) in one_line(error)
    assert renames == [] and not dst.exists()


@pytest.mark.parametrize("checksum", [SHA384, GIT_BLOB], ids=["sha384", "git_blob_sha1"])
def test_every_card_algorithm_accepts_the_right_bytes(
    server: FileServer, dst: pathlib.Path, checksum: dict[str, str]
) -> None:
    card = card_for([server.serve("/good.bin", length=None)], checksum)  # git blob: size from no header

    path, status = fetch_weights(card, dst.parent, quiet=True)

    assert path == dst and dst.read_bytes() == DATA and status == f"verified ({next(iter(checksum))})"
    assert verify_file(dst, checksum)


def test_git_blob_size_comes_from_the_card_when_the_server_gives_none(
    server: FileServer, dst: pathlib.Path
) -> None:
    card = card_for([server.serve("/bad.bin", WRONG, length=None)], GIT_BLOB, size=len(DATA))

    with pytest.raises(ChecksumError):
        fetch_weights(card, dst.parent, quiet=True)
    assert names_beside(dst) == {NAME + ".lock"}


@pytest.mark.parametrize("filename", ["..", ".", "", "../escape.caffemodel", "/tmp/abs.caffemodel", "CON"])
def test_weights_never_land_outside_the_cache(server: FileServer, dst: pathlib.Path, filename: str) -> None:
    card = card_for([server.serve("/good.bin")], SHA256, filename=filename)

    with pytest.raises(DownloadError) as error:
        fetch_weights(card, dst.parent, quiet=True)

    assert "file name" in one_line(error)
    assert server.requests == []


def test_endless_body_stops_at_the_cap(
    server: FileServer, dst: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZOO_MAX_DOWNLOAD_BYTES", str(1 << 20))
    url = server.serve("/endless.bin", DATA[:100_000], length=None, endless=True)
    started = time.monotonic()

    with pytest.raises(DownloadError) as error:
        download(url, dst, SHA256, quiet=True, timeout=5)

    assert "ZOO_MAX_DOWNLOAD_BYTES" in one_line(error) and str(1 << 20) in str(error.value)
    assert time.monotonic() - started < 5
    assert names_beside(dst) == {NAME + ".lock"}  # what came past the cap is not kept


def test_more_bytes_than_the_card_declares_is_an_error_at_once(server: FileServer, dst: pathlib.Path) -> None:
    url = server.serve("/endless.bin", DATA, length=None, endless=True)

    with pytest.raises(DownloadError) as error:
        download(url, dst, SHA256, size=len(DATA), quiet=True, timeout=5)

    assert f"more than the {len(DATA)} bytes" in one_line(error)
    assert names_beside(dst) == {NAME + ".lock"}


def test_announced_length_over_the_cap_is_refused_before_reading(
    server: FileServer, dst: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZOO_MAX_DOWNLOAD_BYTES", "1000")
    url = server.serve("/big.bin")

    with pytest.raises(DownloadError) as error:
        download(url, dst, SHA256, quiet=True, timeout=5)

    assert f"announces {len(DATA)} bytes" in one_line(error) and "ZOO_MAX_DOWNLOAD_BYTES" in str(error.value)
    assert names_beside(dst) == {NAME + ".lock"}


def test_bad_cap_setting_is_one_line(dst: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOO_MAX_DOWNLOAD_BYTES", "lots")
    with pytest.raises(DownloadError, match="ZOO_MAX_DOWNLOAD_BYTES"):
        download("http://127.0.0.1:9/w.bin", dst, SHA256, quiet=True, timeout=5)


@pytest.mark.parametrize("how", ["parameter", "environment"])
def test_trickling_server_is_abandoned(
    server: FileServer, dst: pathlib.Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    url = server.serve("/trickle.bin", DATA[:1000], piece=1, delay=0.05)  # 20 bytes a second
    stall = {"stall": 0.3} if how == "parameter" else {}
    if how == "environment":
        monkeypatch.setenv("ZOO_DOWNLOAD_STALL_SECONDS", "0.3")
    started = time.monotonic()

    with pytest.raises(DownloadError) as error:
        download(url, dst, {"sha256": hashlib.sha256(DATA[:1000]).hexdigest()}, quiet=True, timeout=5, **stall)

    assert "too slow" in one_line(error) and url in str(error.value)
    assert time.monotonic() - started < 3


def test_silent_server_times_out(server: FileServer, dst: pathlib.Path) -> None:
    url = server.serve("/silent.bin", DATA[:1000], piece=500, delay=3)

    with pytest.raises(DownloadError) as error:
        download(url, dst, SHA256, quiet=True, timeout=0.3, retries=0)

    assert url in one_line(error)


@pytest.mark.parametrize("target", ["file:///etc/hostname", "ftp://127.0.0.1:9/w.bin", "data:,hello"])
def test_only_http_urls_are_fetched(
    server: FileServer, dst: pathlib.Path, renames: list, target: str
) -> None:
    with pytest.raises(DownloadError) as error, pytest.warns(UnverifiedDownloadWarning):
        download(target, dst, None, quiet=True, timeout=5)  # no checksum: a file:// read would be taken as is
    assert "not an http(s) URL" in one_line(error) and renames == []


@pytest.mark.parametrize("target", ["file:///etc/hostname", "ftp://127.0.0.1:9/w.bin"])
def test_redirect_to_another_scheme_is_refused(
    server: FileServer, dst: pathlib.Path, renames: list, target: str
) -> None:
    moved = server.serve("/moved.bin", redirect=target)

    with pytest.raises(DownloadError) as error:
        download(moved, dst, SHA256, quiet=True, timeout=5)
    assert f"redirected to {target!r}, not an http(s) URL" in one_line(error)

    download([moved, server.serve("/good.bin")], dst, SHA256, quiet=True, timeout=5)  # the next URL delivers
    assert renames == [(str(dst), DATA)]


def test_mirror_bytes_are_verified_like_any_other(
    server: FileServer, dst: pathlib.Path, monkeypatch: pytest.MonkeyPatch, renames: list
) -> None:
    server.serve(f"/mirror/{NAME}", WRONG)
    monkeypatch.setenv("ZOO_MIRROR", server.url("/mirror/"))

    download(server.serve("/origin.bin"), dst, SHA384, quiet=True, timeout=5)

    assert renames == [(str(dst), DATA)]


@pytest.mark.parametrize("checksum", [SHA384, GIT_BLOB], ids=["sha384", "git_blob_sha1"])
def test_a_full_length_partial_left_by_another_process_is_verified(
    server: FileServer, dst: pathlib.Path, renames: list, checksum: dict[str, str]
) -> None:
    url = server.serve("/good.bin")
    dst.parent.mkdir(parents=True)
    (dst.parent / (NAME + ".partial")).write_bytes(WRONG)

    download(url, dst, checksum, size=len(DATA), quiet=True, timeout=5)

    assert renames == [(str(dst), DATA)]


@pytest.mark.parametrize("length", ["\u00b2", "9" * 5000, "-5", "1e3"])
def test_nonsense_content_length_is_ignored(server: FileServer, dst: pathlib.Path, length: str) -> None:
    url = server.serve("/odd.bin", length=length)

    download(url, dst, SHA256, quiet=True, timeout=5)  # read to the end, verified by its hash

    assert dst.read_bytes() == DATA


def test_server_trickling_its_headers_is_abandoned(server: FileServer, dst: pathlib.Path) -> None:
    url = server.serve("/slow-headers.bin", slow_headers=True)
    started = time.monotonic()

    with pytest.raises(DownloadError) as error:
        download(url, dst, SHA256, quiet=True, timeout=5, stall=0.3)

    assert "no response within 0.3 s" in one_line(error) and url in str(error.value)
    assert time.monotonic() - started < 3


@pytest.mark.skipif(os.name == "nt", reason="symbolic links need privileges on Windows")
def test_a_partial_planted_as_a_symlink_writes_nowhere_else(
    server: FileServer, dst: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    dst.parent.mkdir(parents=True)
    (dst.parent / (NAME + ".partial")).symlink_to(victim)

    download(server.serve("/good.bin"), dst, SHA256, quiet=True, timeout=5)

    assert victim.read_bytes() == b"precious"
    assert dst.read_bytes() == DATA and not dst.is_symlink()


@pytest.mark.skipif(os.name == "nt", reason="symbolic links need privileges on Windows")
def test_cached_weights_may_be_a_symlink_to_another_disk(
    server: FileServer, dst: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    elsewhere = tmp_path / "big-disk" / NAME
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(DATA)
    dst.parent.mkdir(parents=True)
    dst.symlink_to(elsewhere)

    assert download(server.serve("/good.bin"), dst, SHA256, quiet=True, timeout=5) == dst
    assert server.requests == []
