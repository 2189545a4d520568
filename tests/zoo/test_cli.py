"""`zoo list` and `zoo download` against user cards and a local HTTP server (no network needed)."""
from __future__ import annotations

import hashlib
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from zoo.cli import main

DATA = bytes(range(256)) * 1000 + b"caffemodel"


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path != "/w.caffemodel":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(DATA)))
        self.end_headers()
        self.wfile.write(DATA)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def card(name: str, url: str | None, checksum: dict | None) -> dict:
    return {
        "name": name, "description": "a test model", "task": "classification", "paper": None,
        "license": {"name": "MIT", "url": None, "commercial_use": True},
        "architecture": "test_arch", "outputs": ["prob"], "num_classes": None, "labels": None,
        "weights": {"filename": f"{name}.caffemodel", "urls": [url] if url else [], "checksum": checksum,
                    "checksum_note": None if checksum else "the publisher gives none", "size": len(DATA),
                    "how_to_get": None if url else "ask the authors by email"},
        "input": {"blob": "data", "shape": [3, 8, 8], "channel_order": "BGR", "resize": None, "crop": None,
                  "mean": None, "scale": 1.0, "raw_scale": 255},
        "sources": {"weights": "https://example.org/w", "license": "https://example.org/l"},
    }


@pytest.fixture
def zoo_env(tmp_path, monkeypatch, server):
    cards = tmp_path / "cards"
    cards.mkdir()
    url = f"{server}/w.caffemodel"
    for c in [card("t_sha256", url, {"sha256": hashlib.sha256(DATA).hexdigest(), "md5": "0" * 32}),
              card("t_git", url, {"git_blob_sha1": git_blob_sha1(DATA)}),
              card("t_git_wrong", url, {"git_blob_sha1": "0" * 40}),
              card("t_none", url, None),
              card("t_manual", None, {"sha1": hashlib.sha1(DATA).hexdigest()})]:
        (cards / f"{c['name']}.json").write_text(json.dumps(c))
    monkeypatch.setenv("ZOO_PATH", str(cards))
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("ZOO_MIRROR", raising=False)
    return tmp_path / "cache"


def test_download_verifies_the_strongest_digest_and_prints_the_path(zoo_env, capsys):
    assert main(["download", "t_sha256", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert Path(out.strip()) == zoo_env / "t_sha256.caffemodel"
    assert Path(out.strip()).read_bytes() == DATA
    assert err == "zoo: note: t_sha256: verified (sha256)\n"


def test_download_checks_a_git_blob_id(zoo_env, capsys):
    assert main(["download", "t_git", "--quiet"]) == 0
    assert capsys.readouterr().err == "zoo: note: t_git: verified (git_blob_sha1)\n"


def test_download_with_a_wrong_git_blob_id_fails_and_removes_the_file(zoo_env, capsys):
    assert main(["download", "t_git_wrong", "--quiet"]) == 1
    err = capsys.readouterr().err
    # Checked before the rename, like every algorithm, so reported like any other mismatch.
    assert err.count("\n") == 1 and err.startswith("zoo: error: could not download t_git_wrong.caffemodel: ")
    assert "git_blob_sha1 mismatch" in err
    assert not (zoo_env / "t_git_wrong.caffemodel").exists()


def test_download_without_checksum_says_unverified(zoo_env, capsys):
    assert main(["download", "t_none", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "zoo: note: t_none: UNVERIFIED: the publisher gives none" in err
    assert "zoo: warning: t_none.caffemodel: no checksum on record" in err


def test_download_of_weights_without_urls_says_how_to_get_them(zoo_env, capsys):
    assert main(["download", "t_manual"]) == 1
    assert capsys.readouterr().err == ("zoo: error: t_manual: the weights cannot be downloaded automatically: "
                                       "ask the authors by email; then pass --weights FILE\n")


def test_download_unknown_model_and_usage(zoo_env, capsys):
    assert main(["download", "t_sha25"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown model 't_sha25'; did you mean t_sha256" in err
    assert main(["download"]) == 2
    assert capsys.readouterr().err == "zoo: error: give a model NAME or --card FILE (one of them)\n"


def test_list_shows_cards_and_whether_their_weights_are_cached(zoo_env, capsys):
    assert main(["list", "t_*", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"t_sha256", "t_git", "t_git_wrong", "t_none", "t_manual"}
    assert rows["t_sha256"] == {"name": "t_sha256", "task": "classification", "input": "3x8x8 BGR", "params": None,
                                "weights_size": len(DATA), "license": "MIT", "cached": False}
    assert main(["download", "t_sha256", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["list", "t_sha*"]) == 0
    out = capsys.readouterr().out
    row = next(line.split() for line in out.splitlines() if line.startswith("t_sha256"))
    assert row[-1] == "yes" and row[-2] == "MIT"


def test_list_of_built_in_cards(capsys, monkeypatch):
    monkeypatch.delenv("ZOO_PATH", raising=False)
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "bvlc_googlenet" in out and "53.5 MB" in out


def test_an_entry_point_plugins_layer_type_is_shaped_by_zoo_info(tmp_path):
    """A package's 'caffezoo.layers' entry point (README: "A package can ship such modules") registers its
    type's shape rule on import: `zoo info` of a net using it (every command resolves through one place) sees it."""
    import subprocess
    import sys

    from tests.helpers import REPO
    (tmp_path / "twice_plugin.py").write_text(
        "import numpy as np\nimport torch\nfrom converters import LayerImpl, register_layer\n"
        "from prototxt.shapes import ShapeResult\n\n"
        "class Twice(torch.nn.Module):\n    def forward(self, x):\n        return 2 * x\n\n"
        "@register_layer('Twice', shape=lambda layer, bottoms: ShapeResult([bottoms[0]]))\n"
        "class TwiceLayer(LayerImpl):\n    def torch(self, layer, graph):\n        return Twice(), []\n\n"
        "    def onnx(self, layer, ctx):\n"
        "        ctx.node('Mul', [layer.bottoms[0], ctx.const(np.float32(2))], [layer.tops[0]])\n")
    info = tmp_path / "twice_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: twice-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[caffezoo.layers]\ntwice = twice_plugin\n")
    net = tmp_path / "net.prototxt"
    net.write_text('name: "n"\ninput: "data"\ninput_shape { dim: 1 dim: 3 dim: 4 dim: 5 }\n'
                   'layer { name: "t" type: "Twice" bottom: "data" top: "out" }\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    shown = subprocess.run([sys.executable, "-m", "zoo", "info", str(net)], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "1x3x4x5" in shown.stdout, shown.stderr
