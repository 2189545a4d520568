"""End to end through the `zoo` command: a user card whose weights come from a local server (via
ZOO_MIRROR), `zoo download`, `zoo convert --card`, and `zoo run` of the card and of the converted
ONNX file agreeing with the converted PyTorch module on generated images."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import shared_dir
from zoo import cli


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest's output clean
        pass


@pytest.fixture
def lenet_site(tmp_path, monkeypatch):
    """A folder served on 127.0.0.1 holding LeNet's real weights under mirror/, a user card for it
    (architecture and labels beside the card), and a cache dir in ZOO_HOME."""
    corpus = shared_dir() / "corpus" / "mnist_lenet"
    site = tmp_path / "site"
    (site / "mirror").mkdir(parents=True)
    weights = site / "mirror" / "lenet_iter_10000.caffemodel"
    shutil.copy(corpus / "lenet_iter_10000.caffemodel", weights)
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    cards = tmp_path / "cards"
    cards.mkdir()
    shutil.copy(corpus / "lenet.prototxt", cards / "lenet.prototxt")
    (cards / "digits.txt").write_text("\n".join(str(d) for d in range(10)) + "\n")
    card = {
        "name": "my_lenet", "description": "LeNet on MNIST (Caffe's example), served locally for a test",
        "task": "classification", "paper": None,
        "license": {"name": "BSD-2-Clause", "url": "https://github.com/BVLC/caffe", "commercial_use": True},
        "architecture": "lenet.prototxt", "outputs": ["prob"], "num_classes": 10, "labels": "digits.txt",
        "weights": {"filename": "lenet_iter_10000.caffemodel",
                    "urls": [f"{base}/nowhere/lenet_iter_10000.caffemodel"],
                    "checksum": {"sha1": hashlib.sha1(weights.read_bytes()).hexdigest()},
                    "checksum_note": None, "size": weights.stat().st_size, "how_to_get": None},
        "input": {"blob": "data", "shape": [1, 28, 28], "channel_order": "BGR", "resize": [28, 28], "crop": None,
                  "mean": None, "scale": 0.00390625, "raw_scale": 255},
        "sources": {"weights": "https://github.com/BVLC/caffe", "license": "https://github.com/BVLC/caffe"},
    }
    (cards / "my_lenet.json").write_text(json.dumps(card))
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("ZOO_MIRROR", f"{base}/mirror")
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(images / f"{i}.png")
    yield cards / "my_lenet.json", images, tmp_path
    server.shutdown()


def test_user_card_downloads_converts_and_runs(lenet_site, capsys):
    card, images, tmp = lenet_site
    assert cli.main(["download", "--card", str(card), "--quiet"]) == 0  # the card's URL is a 404: the mirror serves
    cached = Path(capsys.readouterr().out.strip())
    assert cached.parent == tmp / "cache" and cached.exists()

    out = tmp / "out"
    assert cli.main(["convert", "--card", str(card), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "max |pytorch - onnxruntime|" in printed
    onnx_file = out / "LeNet.onnx"
    assert onnx_file.exists() and (out / "LeNet_pytorch" / "model.py").exists()

    assert cli.main(["run", str(onnx_file), str(images), "--card", str(card), "--json", "--top", "10"]) == 0
    from_onnx = json.loads(capsys.readouterr().out)
    assert cli.main(["run", "my_lenet", str(images), "--card", str(card), "--json", "--top", "10"]) == 0
    from_card = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in from_onnx] == [r["image"] for r in from_card]

    # The same preprocessed images through the standalone PyTorch folder, in a fresh interpreter.
    from zoo.hub import registry
    from zoo.inference.image import find_images
    from zoo.inference.transform import Transform
    transform = Transform.from_card(registry.load_user_card(card))
    batch = np.stack([transform.image(p) for p in find_images([str(images)])])
    np.save(tmp / "batch.npy", batch)
    code = (f"import numpy as np, torch, model; x = torch.from_numpy(np.load({str(tmp / 'batch.npy')!r})); "
            "print(repr(model.load()(x).detach().numpy().tolist()))")
    run = subprocess.run([sys.executable, "-c", code], cwd=out / "LeNet_pytorch", capture_output=True, text=True,
                         check=True)
    torch_probs = np.array(eval(run.stdout))  # noqa: S307 - our own repr of a list of floats
    for results in (from_onnx, from_card):
        for row, r in zip(torch_probs, results):
            got = np.zeros(10)
            for t in r["top"]:
                got[t["class"]] = t["probability"]
            assert np.allclose(got, row, rtol=1e-4, atol=1e-6)
            assert r["top"][0]["label"] == str(int(np.argmax(row)))


def test_run_says_which_device_once(lenet_site, capsys):
    card, images, tmp = lenet_site
    assert cli.main(["download", "--card", str(card), "--quiet"]) == 0
    assert cli.main(["run", "my_lenet", str(images), "--card", str(card), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert err.count("onnxruntime on CPU") == 1


def test_run_on_a_missing_image_is_one_line(lenet_site, capsys):
    card, images, tmp = lenet_site
    assert cli.main(["run", "my_lenet", str(tmp / "nope.png"), "--card", str(card)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.png" in err[0] and err[0].startswith("zoo: error:")


def test_run_on_an_unreadable_image_is_one_line(lenet_site, capsys):
    card, images, tmp = lenet_site
    assert cli.main(["download", "--card", str(card), "--quiet"]) == 0
    capsys.readouterr()
    bad = tmp / "broken.png"
    bad.write_bytes(b"not an image")
    assert cli.main(["run", "my_lenet", str(bad), "--card", str(card)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.png" in err[0]
