"""`zoo run` on detection and segmentation nets: YuFaceDetectNet's real weights through a user card
(boxes in pixels of the original image, --threshold, --json, --draw), and SegNet's seeded weights
(per-class pixel shares, the class mask blended over the image)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.helpers import make_weights, shared_dir
from zoo import cli
from zoo.inference.scene import class_map, class_shares, detections, output_kind

FORK = "reference/fork_caffe/models"


def _fixture(name: str):
    folder = shared_dir() / FORK / name
    if not folder.is_dir():
        pytest.skip(f"{folder} is missing")
    return folder


def _faces(path, size=(640, 480)):
    """Two drawn faces (skin-coloured ovals with hair, eyes, brows, nose and mouth) on a blue ground: the
    face detector finds both; their head ovals are returned as (x0, y0, x1, y1)."""
    from PIL import Image, ImageDraw
    im = Image.new("RGB", size, (70, 110, 160))
    d = ImageDraw.Draw(im)
    heads = []
    for cx, cy, r in ((200, 220, 90), (460, 260, 60)):
        heads.append((cx - r, cy - 1.3 * r, cx + r, cy + 1.3 * r))
        d.ellipse(heads[-1], fill=(224, 172, 140))
        for ex in (cx - 0.4 * r, cx + 0.4 * r):
            d.ellipse((ex - 0.15 * r, cy - 0.4 * r, ex + 0.15 * r, cy - 0.2 * r), fill=(255, 255, 255))
            d.ellipse((ex - 0.07 * r, cy - 0.37 * r, ex + 0.07 * r, cy - 0.23 * r), fill=(40, 30, 20))
            d.line((ex - 0.2 * r, cy - 0.55 * r, ex + 0.2 * r, cy - 0.55 * r), fill=(60, 40, 30), width=4)
        d.polygon(((cx, cy - 0.1 * r), (cx - 0.12 * r, cy + 0.25 * r), (cx + 0.12 * r, cy + 0.25 * r)),
                  fill=(200, 140, 115))
        d.chord((cx - 0.35 * r, cy + 0.35 * r, cx + 0.35 * r, cy + 0.7 * r), 0, 180, fill=(150, 60, 60))
        d.chord((cx - r * 1.05, cy - 1.4 * r, cx + r * 1.05, cy - 0.5 * r), 180, 360, fill=(60, 40, 20))
    im.save(path)
    return heads


@pytest.fixture
def face_card(tmp_path, monkeypatch):
    """A user card for YuFaceDetectNet v1 (the corpus prototxt beside it) and the corpus caffemodel."""
    folder = _fixture("yufacedetectnet_v1")
    corpus = shared_dir()
    prototxt = corpus / (folder / "source").read_text().strip()
    weights = corpus / (folder / "weights").read_text().strip()
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "home"))
    cards = tmp_path / "cards"
    cards.mkdir()
    shutil.copy(prototxt, cards / prototxt.name)
    (cards / "faces.txt").write_text("background\nface\n")
    card = {
        "name": "my_faces", "description": "YuFaceDetectNet v1", "task": "face_detection", "paper": None,
        "license": {"name": "BSD-3-Clause", "url": None, "commercial_use": True},
        "architecture": prototxt.name, "outputs": ["detection_out"], "num_classes": 2, "labels": "faces.txt",
        "weights": {"filename": weights.name, "urls": [], "checksum": None, "checksum_note": "a test card",
                    "size": None, "how_to_get": "the corpus copy, passed with --weights"},
        "input": {"blob": "data", "shape": [3, 240, 320], "channel_order": "BGR", "resize": [240, 320],
                  "crop": None, "mean": {"values": [104, 117, 123]}, "scale": 1.0, "raw_scale": 255},
        "sources": {"weights": "https://example.org/w", "license": "https://example.org/l"},
    }
    (cards / "my_faces.json").write_text(json.dumps(card))
    return cards / "my_faces.json", weights


def test_the_kind_of_an_output_comes_from_the_card_else_its_shape():
    assert output_kind(None, [1, 1, "detection_out_rows", 7]) == "detection"
    assert output_kind(None, ["N", 11, 72, 96]) == "segmentation"
    assert output_kind(None, ["N", 1000]) == output_kind(None, ["N", 1000, 1, 1]) == "classification"
    assert output_kind("face_detection", ["N", 5]) == "detection"
    assert output_kind("segmentation", ["N", 21, 1, 1]) == "segmentation"
    assert output_kind("classification", [1, 1, 4, 7]) == "classification"


def test_detection_rows_become_boxes_in_pixels_of_the_original_image():
    rows = np.array([[0, 1, 0.9, 0.1, 0.2, 0.5, 0.6], [0, 2, 0.4, 0, 0, 1, 1], [1, 1, 0.95, -0.1, 0.5, 0.5, 1.2],
                     [0, 1, 0.97, 0.0, 0.0, 0.25, 0.5], [2, -1, -1, -1, -1, -1, -1]], np.float32)[None, None]
    got = detections(rows, 0, (200, 100), ["bg", "cat"], 0.5)
    assert got == [{"class": 1, "label": "cat", "confidence": pytest.approx(0.97), "box": [0.0, 0.0, 50.0, 50.0]},
                   {"class": 1, "label": "cat", "confidence": pytest.approx(0.9), "box": [20.0, 20.0, 100.0, 60.0]}]
    assert detections(rows, 1, (10, 10), [], 0.5)[0]["box"] == [0.0, 5.0, 5.0, 10.0]  # clipped to the image
    assert detections(rows, 0, (10, 10), [], 0.3)[2]["label"] == "2"
    assert detections(rows, 2, (10, 10), [], 0.0) == []  # Caffe's "nothing found" row


def test_a_class_map_is_the_best_score_or_an_argmax_output():
    scores = np.array([[[0.1, 0.9]], [[0.8, 0.05]], [[0.1, 0.05]]])  # (K=3, H=1, W=2)
    assert class_map(scores).tolist() == [[1, 0]]
    assert class_map(np.array([[[2.0, 7.0]]])).tolist() == [[2, 7]]  # SegNet's web demo ends in ArgMax


def test_class_shares_count_pixels():
    classes = np.array([[0, 2, 2], [2, 1, 2]])
    assert class_shares(classes, ["a", "b"], 3) == [{"class": 2, "label": "2", "share": pytest.approx(4 / 6)},
                                                    {"class": 0, "label": "a", "share": pytest.approx(1 / 6)},
                                                    {"class": 1, "label": "b", "share": pytest.approx(1 / 6)}]


def test_zoo_run_finds_the_faces_and_draws_them(face_card, tmp_path, capsys):
    from PIL import Image
    card, weights = face_card
    image = tmp_path / "faces.png"
    heads = _faces(image)
    drawn = tmp_path / "drawn.png"
    args = ["run", "card", str(image), "--card", str(card), "--weights", str(weights)]
    assert cli.main(args + ["--json", "--draw", str(drawn)]) == 0
    [result] = json.loads(capsys.readouterr().out)
    assert result["size"] == [640, 480]
    found = result["detections"]
    assert [d["label"] for d in found] == ["face", "face"] and all(d["confidence"] >= 0.5 for d in found)
    for head in heads:  # each drawn head holds the centre of one box, of about its width
        hits = [d["box"] for d in found if head[0] < (d["box"][0] + d["box"][2]) / 2 < head[2]
                and head[1] < (d["box"][1] + d["box"][3]) / 2 < head[3]]
        assert len(hits) == 1 and 0.5 < (hits[0][2] - hits[0][0]) / (head[2] - head[0]) < 1.5
    with Image.open(drawn) as im, Image.open(image) as original:
        assert im.size == original.size
        changed = np.any(np.asarray(im.convert("RGB")) != np.asarray(original.convert("RGB")), axis=2)
    x0, y0, x1, y1 = (round(v) for v in found[0]["box"])
    assert changed[(y0 + y1) // 2, x0] and not changed[(y0 + y1) // 2, (x0 + x1) // 2]  # an outline, not a fill
    assert cli.main(args + ["--threshold", "0.99"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == ["  nothing at or above 0.99"]
    assert cli.main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{image} (640x480)" and len(lines) == 3 and lines[1].split()[1] == "face"


def test_the_boxes_are_the_nets_rows_scaled_to_the_image(face_card, tmp_path, capsys):
    import onnxruntime as ort

    from zoo.hub import registry
    from zoo.inference.transform import Transform
    card, weights = face_card
    image = tmp_path / "faces.png"
    _faces(image, (800, 450))
    out = tmp_path / "out"
    assert cli.main(["convert", "--card", str(card), "--weights", str(weights), "-o", str(out), "--no-verify"]) == 0
    capsys.readouterr()
    onnx_file = next(out.glob("*.onnx"))
    assert cli.main(["run", str(onnx_file), str(image), "--card", str(card), "--json", "--threshold", "0.2"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    x = Transform.from_card(registry.load_user_card(card)).image(image)[None]
    rows = ort.InferenceSession(str(onnx_file)).run(None, {"data": x})[0].reshape(-1, 7)
    rows = rows[rows[:, 2] >= 0.2]
    assert len(result["detections"]) == len(rows) >= 2
    for d in result["detections"]:
        assert len([r for r in rows if abs(r[2] - d["confidence"]) < 1e-6 and
                   np.allclose(np.clip(r[3:], 0, 1) * (800, 450, 800, 450), d["box"], atol=0.051)]) == 1


def test_zoo_run_of_a_segmentation_net_gives_class_shares_and_a_mask(tmp_path, monkeypatch, capsys, weights_cache):
    from PIL import Image
    folder = _fixture("segnet_basic_inference")
    weights = make_weights(folder, "layer", weights_cache[0])
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "home"))
    image = tmp_path / "faces.png"
    _faces(image, (192, 144))
    drawn = tmp_path / "mask.png"
    args = ["run", str(folder / "net.prototxt"), str(image), "--weights", str(weights)]
    assert cli.main(args + ["--json", "--draw", str(drawn)]) == 0
    [result] = json.loads(capsys.readouterr().out)
    shares = result["classes"]
    assert sum(c["share"] for c in shares) == pytest.approx(1.0, abs=1e-5)
    assert all(0 <= c["class"] < 11 for c in shares) and shares == sorted(shares, key=lambda c: -c["share"])
    assert all(round(c["share"] * 72 * 96) == pytest.approx(c["share"] * 72 * 96, abs=1e-3) for c in shares)
    with Image.open(drawn) as im:
        assert im.size == (192, 144)
    assert cli.main(args + ["--draw", str(tmp_path / "mask.bmpx")]) == 1
    assert capsys.readouterr().err.endswith("mask.bmpx: unknown image extension; name the drawing .png or .jpg\n")
    assert not (tmp_path / "mask.bmpx").exists()


def test_zoo_run_of_a_detector_without_detection_output_is_one_line(tmp_path, monkeypatch, capsys):
    """UltraFace ends in per-prior scores and boxes (its publisher decodes them in Python): said, not guessed."""
    weights = shared_dir() / "corpus" / "ultraface_rfb320" / "RFB-320.caffemodel"
    if not weights.is_file():
        pytest.skip(f"{weights} is missing")
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "home"))
    image = tmp_path / "faces.png"
    _faces(image)
    assert cli.main(["run", "ultraface_rfb320", str(image), "--weights", str(weights)]) == 1
    assert capsys.readouterr().err.endswith("this detector's outputs are raw per-prior scores and boxes, with no "
                                            "DetectionOutput layer to decode them; decode them as its publisher's "
                                            "script does\n")


def test_zoo_run_of_a_net_with_a_second_input_is_one_line(tmp_path, capsys):
    """Faster R-CNN also takes im_info: zoo run feeds one image, and says so rather than guessing the rest."""
    import converters
    from prototxt import load_net
    net = tmp_path / "two.prototxt"
    net.write_text('input: "data" input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n'
                   'input: "im_info" input_shape { dim: 1 dim: 3 }\n'
                   'layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" '
                   'pooling_param { pool: AVE global_pooling: true } }\n'
                   'layer { name: "flat" type: "Flatten" bottom: "pool" top: "flat" }\n'
                   'layer { name: "sum" type: "Eltwise" bottom: "flat" bottom: "im_info" top: "sum" }\n')
    converters.save_onnx(load_net(net), tmp_path / "two.onnx")
    image = tmp_path / "faces.png"
    _faces(image)
    assert cli.main(["run", str(tmp_path / "two.onnx"), str(image)]) == 1
    assert capsys.readouterr().err.endswith("two.onnx: this net has 2 inputs (data, im_info) and zoo run feeds one "
                                            "image; feed them yourself (zoo.load gives the net), as its publisher's "
                                            "script does\n")


def test_draw_of_several_images_fills_a_folder(tmp_path, monkeypatch, capsys, weights_cache):
    folder = _fixture("segnet_basic_inference")
    weights = make_weights(folder, "layer", weights_cache[0])
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "home"))
    images = tmp_path / "photos"
    images.mkdir()
    for name in ("a", "b"):
        _faces(images / f"{name}.png", (96, 72))
    out = tmp_path / "drawn"
    assert cli.main(["run", str(folder / "net.prototxt"), str(images), "--weights", str(weights), "--batch", "2",
                     "--draw", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if not line.startswith(" ")] == [f"{images / 'a.png'} (96x72)",
                                                                  f"{images / 'b.png'} (96x72)"]
