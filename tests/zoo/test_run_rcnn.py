"""`zoo run` on Faster R-CNN (py-faster-rcnn): the image prepared as lib/fast_rcnn/test.py prepares it, the
net run at that size with its im_info, the proposals decoded as im_detect and tools/demo.py decode them.
No trained weights exist here: seeded ones (the card's net narrowed, through a user card, fast; the card's
own net once, marked slow), and the decoding against a NumPy transcription of the publisher's steps."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from prototxt import CaffeError, save_net
from tests.zoo.test_arch import _seeded_faster_rcnn
from zoo import cli
from zoo.hub import registry
from zoo.inference import rcnn
from zoo.inference.transform import Transform

PIXEL_MEANS = (102.9801, 115.9465, 122.7717)  # py-faster-rcnn's cfg.PIXEL_MEANS (BGR)


# -- a transcription of the publisher's test-time steps (lib/fast_rcnn/test.py, bbox_transform.py,
#    nms/py_cpu_nms.py, tools/demo.py), in float32 where they compute in float32 -------------------------

def _publisher_nms(dets, thresh):
    x1, y1, x2, y2, s = (dets[:, i] for i in range(5))
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order, keep = s.argsort()[::-1], []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        iw = np.maximum(0.0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]]) + 1)
        ih = np.maximum(0.0, np.minimum(y2[i], y2[order[1:]]) - np.maximum(y1[i], y1[order[1:]]) + 1)
        ovr = iw * ih / (areas[i] + areas[order[1:]] - iw * ih)
        order = order[np.where(ovr <= thresh)[0] + 1]
    return keep


def _publisher_detections(rois, scores, deltas, im_scale, im_shape, conf, nms_thresh=0.3):
    """[(class, score, box)] as demo.py keeps them: NMS on every box of a class, then the ones >= conf."""
    boxes = (rois[:, 1:5] / np.float32(im_scale)).astype(deltas.dtype)
    widths = boxes[:, 2] - boxes[:, 0] + 1.0
    heights = boxes[:, 3] - boxes[:, 1] + 1.0
    cx, cy = boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights
    px = deltas[:, 0::4] * widths[:, None] + cx[:, None]
    py = deltas[:, 1::4] * heights[:, None] + cy[:, None]
    pw, ph = np.exp(deltas[:, 2::4]) * widths[:, None], np.exp(deltas[:, 3::4]) * heights[:, None]
    pred = np.zeros(deltas.shape, dtype=deltas.dtype)
    pred[:, 0::4], pred[:, 1::4], pred[:, 2::4], pred[:, 3::4] = px - 0.5 * pw, py - 0.5 * ph, px + 0.5 * pw, py + 0.5 * ph
    for j, limit in enumerate((im_shape[1] - 1, im_shape[0] - 1) * 2):
        pred[:, j::4] = np.maximum(np.minimum(pred[:, j::4], limit), 0)
    out = []
    for k in range(1, scores.shape[1]):
        dets = np.hstack((pred[:, 4 * k:4 * k + 4], scores[:, k:k + 1])).astype(np.float32)
        dets = dets[_publisher_nms(dets, nms_thresh), :]
        out += [(k, float(d[4]), [round(float(v), 1) for v in d[:4]]) for d in dets if d[4] >= conf]
    return sorted(out, key=lambda t: -t[1])


def _as_tuples(found):
    return [(d["class"], d["confidence"], d["box"]) for d in found]


def _crafted(rng, rois_count=300, classes=21, size=(600, 800)):
    h, w = size
    x1, y1 = rng.uniform(0, w - 40, rois_count), rng.uniform(0, h - 40, rois_count)
    rois = np.stack([np.zeros(rois_count), x1, y1, np.minimum(x1 + rng.uniform(8, 300, rois_count), w - 1),
                     np.minimum(y1 + rng.uniform(8, 300, rois_count), h - 1)], 1).astype(np.float32)
    rois[150:200, 1:] = rois[100:150, 1:] + rng.uniform(-6, 6, (50, 4)).astype(np.float32)  # near-duplicates: NMS
    logits = rng.normal(0, 3, (rois_count, classes))
    probs = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    deltas = rng.normal(0, 0.3, (rois_count, 4 * classes)).astype(np.float32)
    return rois, probs, deltas


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_decode_is_the_publishers_box_regression_clipping_and_nms(seed):
    rng = np.random.default_rng(seed)
    rois, probs, deltas = _crafted(rng)
    labels = registry.get("faster_rcnn_vgg16").label_names() if seed == 0 else []
    scale = 1.6
    for conf in (0.8, 0.3):
        got = rcnn.decode(rois, probs, deltas, scale, (500, 375), labels, conf)
        want = _publisher_detections(rois, probs, deltas, scale, (375, 500), conf)
        assert _as_tuples(got) == want and len(want) > (5 if conf == 0.3 else 0)
        assert all(0 <= d["box"][0] <= d["box"][2] <= 499 and 0 <= d["box"][1] <= d["box"][3] <= 374 for d in got)
    assert labels == [] or got[0]["label"] == labels[got[0]["class"]] != "background"


def test_no_proposals_no_detections_and_mismatched_outputs_are_one_line():
    empty = np.zeros((0, 5), np.float32)
    assert rcnn.decode(empty, np.zeros((0, 21), np.float32), np.zeros((0, 84), np.float32), 1.0, (8, 8), [], 0.0) == []
    with pytest.raises(CaffeError, match=r"rois \(3, 5\), cls_prob \(3, 21\) and bbox_pred \(3, 4\); expected"):
        rcnn.decode(np.zeros((3, 5), np.float32), np.zeros((3, 21), np.float32), np.zeros((3, 4), np.float32),
                    1.0, (8, 8), [], 0.5)


def test_nms_overlap_counts_the_pixel_on_each_side():
    dets = np.array([[0, 0, 9, 9, 0.9], [5, 0, 14, 9, 0.8], [0, 0, 9, 9, 0.7], [20, 20, 29, 29, 0.6]], np.float32)
    # boxes 0 and 1: 10x10 each, 5x10 shared (with the +1): IoU 50 / 150 = 1/3
    assert rcnn.nms(dets, 0.3) == [0, 3]
    assert rcnn.nms(dets, 0.34) == [0, 1, 3]
    assert rcnn.nms(dets[[3, 2, 1, 0]], 0.3) == [3, 0]  # by score, whatever the row order


@pytest.mark.parametrize("hw, scale, size", [((375, 500), 1.6, (600, 800)), ((100, 400), 2.5, (250, 1000)),
                                             ((333, 500), 600 / 333, (600, 901)), ((600, 1000), 1.0, (600, 1000))])
def test_the_image_is_scaled_as_test_py_scales_it(hw, scale, size):
    """The shorter side to 600 unless the longer would pass 1000 (rounded), then the longer to 1000."""
    assert rcnn.image_scale(*hw, 600) == pytest.approx(scale, rel=1e-15)
    image = np.random.default_rng(0).integers(0, 256, (3, *hw), dtype=np.uint8)
    transform = Transform.from_card(registry.get("faster_rcnn_vgg16"))
    data, info, got_scale = rcnn.prepare(image, transform, 600)
    assert data.shape == (1, 3, *size) and data.dtype == np.float32
    assert info.dtype == np.float32 and info.tolist() == [[size[0], size[1], np.float32(scale)]]


def test_the_data_is_opencvs_resize_of_the_image_minus_the_means():
    """Bit-exact with cv2.resize(im - PIXEL_MEANS, None, fx=s, fy=s) in OpenCV's own arithmetic (Intel IPP,
    when an OpenCV build uses it for float images, differs by up to 0.007)."""
    cv2 = pytest.importorskip("cv2", reason="opencv-python-headless (the test extra) is the oracle for the resize")
    image = np.random.default_rng(1).integers(0, 256, (3, 333, 500), dtype=np.uint8)
    transform = Transform.from_card(registry.get("faster_rcnn_vgg16"))
    data, info, scale = rcnn.prepare(image, transform, 600)
    im = image.transpose(1, 2, 0).astype(np.float32)
    im -= np.array([[PIXEL_MEANS]])
    ipp = cv2.ipp.useIPP()
    try:
        cv2.ipp.setUseIPP(False)
        want = cv2.resize(im, None, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    finally:
        cv2.ipp.setUseIPP(ipp)
    assert np.array_equal(data[0], want.transpose(2, 0, 1))


# -- zoo run end to end ------------------------------------------------------------------------------------

def _scene(path, size=(160, 120)):
    from PIL import Image, ImageDraw
    im = Image.new("RGB", size, (90, 140, 200))
    d = ImageDraw.Draw(im)
    d.rectangle((20, 30, 90, 100), fill=(200, 60, 40))
    d.ellipse((95, 20, 150, 80), fill=(30, 160, 60))
    im.save(path)


def _seeded(narrow: int):
    """The seeded net with its class scores and box deltas brought to a trained net's size (the He scale
    of 4096 inputs saturates the softmax at 1.0, whose ties NMS may order either way, and overflows exp)."""
    graph = _seeded_faster_rcnn(narrow)
    for layer in graph.layers:
        if layer.name in ("cls_score", "bbox_pred"):
            layer.blobs = [b * np.float32(0.0125 * narrow if layer.name == "cls_score" else 0.01) for b in layer.blobs]
    return graph


def _user_card(tmp_path, narrow: int, resize: int):
    """The card's net narrowed by ``narrow`` with seeded weights, as a user card asking for ``resize``."""
    cards = tmp_path / "cards"
    cards.mkdir()
    graph = _seeded(narrow)
    save_net(graph, cards / "frcnn.prototxt", tmp_path / "frcnn.caffemodel")
    shutil.copy(registry.get("faster_rcnn_vgg16").labels_path, cards / "voc.txt")
    card = json.loads(registry.get("faster_rcnn_vgg16").path.read_text())
    card.update(name="my_frcnn", architecture="frcnn.prototxt", labels="voc.txt")
    card["input"]["resize"] = resize
    card["weights"].update(checksum=None, filename="frcnn.caffemodel")
    (cards / "my_frcnn.json").write_text(json.dumps(card))
    return cards / "my_frcnn.json", tmp_path / "frcnn.caffemodel", graph


def _expected(graph, image_path, resize: int, threshold: float):
    """What the publisher's steps give on the net run by onnxruntime at the image's rescaled size."""
    import onnxruntime as ort

    from converters import to_onnx
    from prototxt import build_graph
    from zoo.inference.image import decode_image
    image = decode_image(image_path, True, "test")
    transform = Transform.from_card(registry.get("faster_rcnn_vgg16"))
    data, info, scale = rcnn.prepare(image, transform, resize)
    sized = build_graph(graph.proto, input_shapes={"data": data.shape, "im_info": (1, 3)})
    for layer, seeded in zip(sized.layers, graph.layers):
        layer.blobs = seeded.blobs
    model = to_onnx(sized)
    from onnx import TensorProto, helper
    model.graph.output.append(helper.make_tensor_value_info("rois", TensorProto.FLOAT, None))
    out = dict(zip(["cls_prob", "bbox_pred", "rois"],
                   ort.InferenceSession(model.SerializeToString()).run(["cls_prob", "bbox_pred", "rois"],
                                                                      {"data": data, "im_info": info})))
    assert len(out["rois"]) > 20  # real proposals on the rescaled image
    return _publisher_detections(out["rois"], out["cls_prob"], out["bbox_pred"], scale, image.shape[1:], threshold)


@pytest.fixture
def narrowed(tmp_path, monkeypatch):
    """(user card, weights, seeded graph, a 160x120 image) of the net at 1/8 width, asking for 192 pixels."""
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "home"))
    card, weights, graph = _user_card(tmp_path, narrow=8, resize=192)
    image = tmp_path / "scene.png"
    _scene(image)
    return card, weights, graph, image


@pytest.mark.filterwarnings("ignore::converters.layers.rcnn.PythonLayerNote")
def test_zoo_run_detects_with_a_narrowed_faster_rcnn(narrowed, tmp_path, capsys):
    from PIL import Image
    card, weights, graph, image = narrowed
    drawn = tmp_path / "drawn.png"
    args = ["run", "card", str(image), "--card", str(card), "--weights", str(weights)]
    assert cli.main(args + ["--json", "--threshold", "0.06", "--draw", str(drawn)]) == 0
    [result] = json.loads(capsys.readouterr().out)
    assert set(result) == {"image", "size", "detections"} and result["size"] == [160, 120]
    found = result["detections"]
    assert found and all(set(d) == {"class", "label", "confidence", "box"} for d in found)
    assert _as_tuples(found) == _expected(graph, image, 192, 0.06)
    assert all(d["label"] == registry.get("faster_rcnn_vgg16").label_names()[d["class"]] for d in found)
    with Image.open(drawn) as im:
        assert im.format == "PNG" and im.size == (160, 120)
    assert cli.main(args) == 0  # the demo's threshold, 0.8, by default
    lines = capsys.readouterr().out.splitlines()
    sure = [d for d in found if d["confidence"] >= 0.8]
    assert lines[0] == f"{image} (160x120)" and 0 < len(sure) == len(lines) - 1 < len(found)
    assert lines[1] == f"  {sure[0]['confidence']:.4f}  {sure[0]['label']}  [{', '.join(f'{v:g}' for v in sure[0]['box'])}]"
    assert cli.main(args + ["--threshold", "0.9999", "--samples", "3"]) == 0
    out = capsys.readouterr()
    assert out.out.splitlines()[1:] == ["  nothing at or above 0.9999"]
    assert "--samples 3 ignored" in out.err  # the net does not sample at test
    assert len(list((tmp_path / "home").rglob("*.onnx"))) == 1  # converted once, at 192x256


@pytest.mark.filterwarnings("ignore::converters.layers.rcnn.PythonLayerNote")
def test_zoo_run_of_a_faster_rcnn_prototxt_without_a_card_is_one_line(narrowed, capsys):
    card, weights, _, image = narrowed
    assert cli.main(["run", str(card.parent / "frcnn.prototxt"), str(image), "--weights", str(weights)]) == 1
    assert capsys.readouterr().err.endswith("frcnn.prototxt: running a Faster R-CNN net takes a card giving its "
                                            "input's shorter side (input.resize, an integer), means and outputs "
                                            "[class probabilities, box deltas]\n")


@pytest.mark.filterwarnings("ignore::converters.layers.rcnn.PythonLayerNote")
def test_zoo_run_of_an_image_too_thin_to_rescale_names_the_image(narrowed, tmp_path, capsys):
    from PIL import Image
    card, weights, _, _ = narrowed
    thin = tmp_path / "thin.png"  # 2000 wide: scale 0.5 (its longer side to 1000), its one row to 0 rows
    Image.fromarray(np.zeros((1, 2000, 3), np.uint8)).save(thin)
    assert cli.main(["run", "card", str(thin), "--card", str(card), "--weights", str(weights)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"zoo: error: {thin}: a 2000x1 image rescales to 1000x0 pixels") and err.count("\n") == 1


@pytest.mark.filterwarnings("ignore::converters.layers.rcnn.PythonLayerNote")
def test_a_card_whose_outputs_are_not_the_nets_is_one_line(narrowed, capsys):
    card, weights, _, image = narrowed
    fields = json.loads(card.read_text())
    fields["outputs"] = ["cls_prob", "bbox_deltas"]
    card.write_text(json.dumps(fields))
    assert cli.main(["run", "card", str(image), "--card", str(card), "--weights", str(weights)]) == 1
    err = capsys.readouterr().err
    assert err.endswith(f"zoo: error: {card}: the card's outputs 'bbox_deltas' are not outputs of its net (it has "
                        f"'bbox_pred', 'cls_prob'); name the class probabilities and the box deltas\n"), err


@pytest.mark.filterwarnings("ignore::converters.layers.rcnn.PythonLayerNote")
def test_a_folder_of_many_image_sizes_keeps_few_sessions_alive(narrowed, tmp_path, monkeypatch, capsys):
    """One session per image size, each with its own copy of the weights (VGG16's: 0.5 GB): a folder of
    photos of many sizes must not hold them all."""
    import weakref

    from PIL import Image

    from zoo.inference import runtime
    card, weights, _, _ = narrowed
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, (w, h) in enumerate([(60, 50), (50, 60), (70, 50), (60, 50), (40, 60)]):
        Image.fromarray(np.full((h, w, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    real, live, most = runtime.session, weakref.WeakSet(), [0]

    class Tracked:
        def __init__(self, sess):
            self.sess = sess

        def __getattr__(self, name):
            return getattr(self.sess, name)

    def tracked(*args, **kwargs):
        out = Tracked(real(*args, **kwargs))
        live.add(out)
        most[0] = max(most[0], len(live))
        return out
    monkeypatch.setattr(runtime, "session", tracked)
    assert cli.main(["run", "card", str(folder), "--card", str(card), "--weights", str(weights), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 5
    assert most[0] == 2  # of 4 sizes


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::converters.layers.rcnn.PythonLayerNote")
def test_zoo_run_faster_rcnn_vgg16_at_600(tmp_path, monkeypatch, capsys):
    """The card's own net (full width) with seeded weights, by its zoo name, at the card's 600 pixels."""
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "home"))
    graph = _seeded(narrow=1)
    save_net(graph, tmp_path / "net.prototxt", tmp_path / "seeded.caffemodel")
    image = tmp_path / "scene.png"
    _scene(image)
    args = ["run", "faster_rcnn_vgg16", str(image), "--weights", str(tmp_path / "seeded.caffemodel")]
    assert cli.main(args + ["--json", "--threshold", "0.06"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    assert len(result["detections"]) > 5 and max(d["confidence"] for d in result["detections"]) < 1
    assert _as_tuples(result["detections"]) == _expected(graph, image, 600, 0.06)
    assert [p.name for p in (tmp_path / "home").rglob("*.onnx")][0].startswith("faster_rcnn_vgg16-")
