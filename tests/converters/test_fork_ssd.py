"""The SSD family (weiliu89/caffe `ssd` branch: Permute, PriorBox, Normalize, DetectionOutput, ReLU6) in
both backends: every fixture computed by a real SSD Caffe (reference/fork_caffe) matches blob for blob,
detection rows in Caffe's order; OpenCV's numbers (reference/fork) match where OpenCV follows Caffe,
its detections compared as a set; a NumPy transcription of Caffe's DetectionOutput covers the corners
the fixtures do not reach; the exported folder gives the same detections."""
from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from converters import export_folder, to_onnx, to_pytorch
from prototxt import CaffeError, load_net
from tests.converters.common import (atol, close, describe, fixture_weights, io_arrays, meta, onnx_values, ort_run,
                                     torch_cpu, torch_values, RTOL)
from tests.helpers import SHARED, shared_params

pytestmark = [pytest.mark.filterwarnings("ignore:TF32 acceleration:UserWarning"),
              pytest.mark.filterwarnings("ignore:left out training-only layers")]  # SSDLite's Silence

# Every fixture a real fork Caffe computed, found on disk (so one added later is checked with no edit here),
# but the fork's own MaxUnPool net: test_fork_layers runs it as SegNet's Upsample, which is the same loop.
ELSEWHERE = {"layers/maxunpool_k2s2"}
FORK_CAFFE = sorted(f"{p.parent.name}/{p.name}" for p in (SHARED / "reference" / "fork_caffe").glob("*/*")
                    if (p / "io.npz").is_file() and f"{p.parent.name}/{p.name}" not in ELSEWHERE)
# OpenCV's fixtures, found on disk, but those test_fork_layers compares with their own caveats (OpenCV's Axpy
# formula, blobs it stored before an in-place layer ran).
OPENCV_ELSEWHERE = {"opencv_layer_interp", "se_resnet50", "se_resnext50", "shufflenet_v1", "shufflenet_v2"}
OPENCV = sorted(p.name for p in (SHARED / "reference" / "fork").glob("*")
                if (p / "io.npz").is_file() and p.name not in OPENCV_ELSEWHERE)
BACKENDS = ("torch", "onnx")


def _fixtures(kind: str, names: list[str]):
    root = SHARED / "reference" / kind
    found = [root / n for n in names if (root / n).is_dir()]
    return shared_params(found, [f"{kind}/{f.relative_to(root)}" for f in found])


def _weights(fixture: Path, weights_cache):
    """The corpus caffemodel ('real: corpus/...', relative to ../shared), or make_weights.py's."""
    w = meta(fixture).get("weights") or ""
    if w.startswith("real:"):
        return contextlib.nullcontext(SHARED / w.split(":", 1)[1].strip())
    return fixture_weights(fixture, weights_cache)


def _load(fixture: Path, weights_cache):
    ins, outs = io_arrays(fixture)
    net = fixture / "net.prototxt"
    if not net.is_file():
        net = SHARED / (fixture / "source").read_text().strip()
    with _weights(fixture, weights_cache) as weights:
        graph = load_net(net, weights, input_shapes={k: v.shape for k, v in ins.items()})
    return graph, ins, outs


def _run(graph, ins, blobs, backend):
    if backend == "torch":
        return torch_values(to_pytorch(graph), graph, ins, blobs)
    return onnx_values(graph, ins, blobs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fixture", _fixtures("fork_caffe", FORK_CAFFE))
def test_fork_caffe_parity(fixture, backend, weights_cache):
    """Every kept blob of SSD Caffe's run, detection rows included in Caffe's order."""
    graph, ins, outs = _load(fixture, weights_cache)
    got = _run(graph, ins, list(outs), backend)
    bad = [f"{b}: {describe(got[b], ref)}" for b, ref in outs.items() if not close(got[b], ref)]
    assert not bad, "; ".join(bad)


def _match_rows(got: np.ndarray, ref: np.ndarray) -> list[str]:
    """OpenCV's detections as a set: each of its rows has an unused row of ours with every value within
    the tolerance, and the counts agree. Where keep_top_k cuts the list, two candidates whose scores
    differ by less than the tolerance may swap (OpenCV's fused BatchNorm moves scores by that much:
    mobilenet_ssd_deploy_bn): rows scoring within the tolerance of the cut-off may go unmatched."""
    got, ref = got.reshape(-1, 7), ref.reshape(-1, 7)
    tol = atol(ref)
    problems = [] if len(got) == len(ref) else [f"{len(got)} rows, OpenCV {len(ref)}"]
    used = np.zeros(len(got), bool)
    cut = ref[:, 2].min()
    for row in ref:
        ok = np.all(np.abs(got - row) <= tol + RTOL * np.abs(row), axis=1) & ~used
        if ok.any():
            used[np.argmax(ok)] = True
        elif abs(row[2] - cut) > tol:
            problems.append(f"no row for {np.round(row, 4).tolist()}")
    spare = got[~used]
    if np.any(np.abs(spare[:, 2] - cut) > tol):
        problems.append(f"rows OpenCV lacks: {np.round(spare, 4).tolist()[:3]}")
    return problems


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fixture", _fixtures("fork", OPENCV))
def test_opencv_fixtures(fixture, backend, weights_cache):
    """OpenCV's numbers: blobs with the standard tolerance, detection_out as a set of rows."""
    graph, ins, outs = _load(fixture, weights_cache)
    got = _run(graph, ins, list(outs), backend)
    bad = []
    for b, ref in outs.items():
        if b == "detection_out":
            bad += _match_rows(got[b], ref)
        elif not close(got[b], ref):
            bad.append(f"{b}: {describe(got[b], ref)}")
    assert not bad, "; ".join(bad[:5])


def test_exported_folder_gives_the_same_detections(weights_cache, tmp_path):
    """The exported model.py (nn.py's SSD modules verbatim) computes to_pytorch's rows exactly."""
    import torch
    fixture = SHARED / "reference" / "fork_caffe" / "models" / "yufacedetectnet_v1"
    if not fixture.is_dir():
        pytest.skip(f"{fixture} missing (../shared)")
    graph, ins, outs = _load(fixture, weights_cache)
    folder = export_folder(graph, tmp_path / "f")
    spec = importlib.util.spec_from_file_location("exported_ssd", os.path.join(folder, "model.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    x = torch.from_numpy(ins["data"])
    with torch_cpu():
        want, got = to_pytorch(graph)(x), module.load()(x)
    assert torch.equal(want, got)
    assert close(got.numpy(), outs["detection_out"])


# -- corners the fixtures do not reach, against a NumPy transcription of Caffe ---------------------

def _decode(code, pb, var, l, in_target):
    """DecodeBBox for one box, float32 as Caffe's NormalizedBBox."""
    f = np.float32
    var = np.ones(4, f) if in_target else var
    if code == "CORNER":
        return pb + var * l
    pw, ph = f(pb[2] - pb[0]), f(pb[3] - pb[1])
    if code == "CORNER_SIZE":
        return pb + var * l * np.array([pw, ph, pw, ph], f)
    cx = f(var[0] * l[0]) * pw + f((pb[0] + pb[2]) * f(0.5))
    cy = f(var[1] * l[1]) * ph + f((pb[1] + pb[3]) * f(0.5))
    w, h = f(np.exp(f(var[2] * l[2])) * pw), f(np.exp(f(var[3] * l[3])) * ph)
    return np.array([cx - w * f(0.5), cy - h * f(0.5), cx + w * f(0.5), cy + h * f(0.5)], f)


def _size(b):
    return np.float32(0) if b[2] < b[0] or b[3] < b[1] else np.float32(b[2] - b[0]) * np.float32(b[3] - b[1])


def _overlap(b1, b2):
    """JaccardOverlap(normalized): no "+1"; no intersection -> 0."""
    if b2[0] > b1[2] or b2[2] < b1[0] or b2[1] > b1[3] or b2[3] < b1[1]:
        return np.float32(0)
    w = np.float32(min(b1[2], b2[2]) - max(b1[0], b2[0]))
    h = np.float32(min(b1[3], b2[3]) - max(b1[1], b2[1]))
    if not (w > 0 and h > 0):
        return np.float32(0)
    inter = np.float32(w * h)
    return np.float32(inter / np.float32(np.float32(_size(b1) + _size(b2)) - inter))


def caffe_detection_output(loc, conf, prior, a):
    """DetectionOutputLayer::Forward_cpu, loop by loop (std::sort of keep_top_k taken as stable)."""
    n, c = loc.shape[0], a["num_classes"]
    p = prior.shape[2] // 4
    loc = loc.reshape(n, p, 1 if a["share_location"] else c, 4)
    conf = conf.reshape(n, p, c)
    pb, var = prior.reshape(-1, 4)[:p], prior.reshape(-1, 4)[p:2 * p]
    rows = []
    for i in range(n):
        dets, boxes = {}, {}
        for label in range(c):
            if label == a["background_label_id"]:
                continue
            ll = 0 if a["share_location"] else label
            boxes[label] = [_decode(a["code_type"], pb[j], var[j], loc[i, j, ll], a["variance_encoded_in_target"])
                            for j in range(p)]
            scores = conf[i, :, label]
            cand = sorted([(s, j) for j, s in enumerate(scores) if s > np.float32(a["confidence_threshold"])],
                          key=lambda t: -t[0])
            if a["top_k"] > -1:
                cand = cand[:a["top_k"]]
            kept, thr = [], np.float32(a["nms_threshold"])
            for _, j in cand:
                keep = all(_overlap(boxes[label][j], boxes[label][q]) <= thr for q in kept)
                if keep:
                    kept.append(j)
                    if a["eta"] < 1 and thr > 0.5:
                        thr = np.float32(thr * np.float32(a["eta"]))
            dets[label] = [(scores[j], j) for j in kept]
        if a["keep_top_k"] > -1 and sum(len(d) for d in dets.values()) > a["keep_top_k"]:
            best = sorted([(s, label, j) for label in sorted(dets) for s, j in dets[label]], key=lambda t: -t[0])
            dets = {}
            for s, label, j in best[:a["keep_top_k"]]:
                dets.setdefault(label, []).append((s, j))
        rows += [[i, label, s, *boxes[label][j]] for label in sorted(dets) for s, j in dets[label]]
    if not rows:
        rows = [[i] + [-1] * 6 for i in range(n)]
    return np.asarray(rows, np.float32).reshape(1, 1, -1, 7)


CODES = {"CORNER": 1, "CENTER_SIZE": 2, "CORNER_SIZE": 3}
BASE = dict(num_classes=4, share_location=True, background_label_id=0, nms_threshold=0.45, top_k=-1, eta=1.0,
            confidence_threshold=0.2, keep_top_k=-1, code_type="CENTER_SIZE", variance_encoded_in_target=False)
CORNERS = {
    "corner_size": dict(code_type="CORNER_SIZE", top_k=20),
    "corner": dict(code_type="CORNER", top_k=15, keep_top_k=12),
    "variance_in_target": dict(variance_encoded_in_target=True, top_k=25),
    "eta": dict(eta=0.8, nms_threshold=0.7, top_k=30),
    "keep_top_k_below_rows": dict(keep_top_k=5, nms_threshold=0.6),
    "keep_top_k_zero": dict(keep_top_k=0),
    "batch2_noshare": dict(share_location=False, background_label_id=2, keep_top_k=9, top_k=12),
    "no_background_ties": dict(background_label_id=-1, confidence_threshold=0.0, top_k=40, ties=True),
    "nothing_passes": dict(confidence_threshold=1.0),
    "many_priors_ties": dict(confidence_threshold=0.3, top_k=200, keep_top_k=150, ties=True, priors=1500),
}


def _detection_net(tmp_path, a, batch, priors):
    p = a.copy()
    lines = [f"num_classes: {p['num_classes']} share_location: {str(p['share_location']).lower()} "
             f"background_label_id: {p['background_label_id']} code_type: {[k for k in CODES if k == p['code_type']][0]} "
             f"variance_encoded_in_target: {str(p['variance_encoded_in_target']).lower()} keep_top_k: {p['keep_top_k']} "
             f"confidence_threshold: {p['confidence_threshold']} nms_param {{ nms_threshold: {p['nms_threshold']} "
             f"eta: {p['eta']}" + (f" top_k: {p['top_k']}" if p["top_k"] > -1 else "") + " }"]
    loc_n = priors * (1 if p["share_location"] else p["num_classes"]) * 4
    net = tmp_path / "det.prototxt"
    net.write_text(
        'name: "det"\n'
        f'layer {{ name: "loc" type: "Input" top: "loc" input_param {{ shape {{ dim: {batch} dim: {loc_n} }} }} }}\n'
        f'layer {{ name: "conf" type: "Input" top: "conf" input_param {{ shape {{ dim: {batch} dim: {priors * p["num_classes"]} }} }} }}\n'
        f'layer {{ name: "prior" type: "Input" top: "prior" input_param {{ shape {{ dim: 1 dim: 2 dim: {priors * 4} }} }} }}\n'
        'layer { name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior" top: "det" '
        f'detection_output_param {{ {lines[0]} }} }}\n')
    return net


@pytest.mark.parametrize("case", list(CORNERS))
def test_detection_output_corners(case, tmp_path):
    a = {**BASE, **{k: v for k, v in CORNERS[case].items() if k not in ("ties", "priors")}}
    rng = np.random.default_rng(sum(map(ord, case)))
    batch, priors, c = 2, CORNERS[case].get("priors", 60), a["num_classes"]
    centre = rng.uniform(0.1, 0.9, (priors, 2))
    half = rng.uniform(0.05, 0.3, (priors, 2))
    boxes = np.concatenate([centre - half, centre + half], 1)
    boxes[7] = boxes[3]  # identical priors
    var = np.tile([0.1, 0.1, 0.2, 0.2], (priors, 1))
    prior = np.stack([boxes.reshape(-1), var.reshape(-1)])[None].astype(np.float32)
    loc = rng.normal(0, 1, (batch, priors, 1 if a["share_location"] else c, 4)).astype(np.float32)
    loc[0, 5, 0, 2] = -40 if a["code_type"] != "CENTER_SIZE" else loc[0, 5, 0, 2]  # an inverted box (area 0)
    logits = rng.normal(0, 2, (batch, priors, c))
    conf = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    if CORNERS[case].get("ties"):
        conf = np.round(conf, 1)  # many equal scores: Caffe's stable sort keeps the lower prior first
    conf = conf.astype(np.float32)
    want = caffe_detection_output(loc.reshape(batch, -1), conf.reshape(batch, -1), prior, a)
    graph = load_net(_detection_net(tmp_path, a, batch, priors))
    feeds = {"loc": loc.reshape(batch, -1), "conf": conf.reshape(batch, -1), "prior": prior}
    import torch
    with torch_cpu():
        got_torch = to_pytorch(graph)(*(torch.from_numpy(feeds[k]) for k in ("loc", "conf", "prior"))).numpy()
    got_onnx = ort_run(to_onnx(graph), feeds)["det"]
    if case == "nothing_passes":  # one row [i, -1, -1, -1, -1, -1, -1] per image
        assert want.reshape(-1, 7).tolist() == [[0] + [-1] * 6, [1] + [-1] * 6]
    else:
        assert want.shape[2] > 1 and len(set(want[0, 0, :, 0].tolist())) == batch  # rows for both images
    for got in (got_torch, got_onnx):
        assert close(got, want), describe(got, want)


def test_unsupported_parameter_is_one_line(tmp_path):
    a = dict(BASE)
    net = _detection_net(tmp_path, a, 1, 4)
    net.write_text(net.read_text().replace("keep_top_k: -1", 'keep_top_k: -1 save_output_param { output_directory: "out" }'))
    graph = load_net(net)
    for convert in (to_pytorch, to_onnx):
        with pytest.raises(CaffeError) as info:
            convert(graph)
        text = str(info.value)
        assert "\n" not in text and "'det' (DetectionOutput)" in text and "save_output_param" in text, text


def test_onnx_batch_of_two(weights_cache):
    """The ONNX model's batch is symbolic: priors do not depend on it, and each image's rows are its own."""
    fixture = SHARED / "reference" / "fork_caffe" / "models" / "yufacedetectnet_v1"
    if not fixture.is_dir():
        pytest.skip(f"{fixture} missing (../shared)")
    graph, ins, outs = _load(fixture, weights_cache)
    x = ins["data"]
    pair = np.concatenate([x, x[:, :, ::-1].copy()])
    got = ort_run(to_onnx(graph), {"data": pair})["detection_out"].reshape(-1, 7)
    import torch
    with torch_cpu():
        want = to_pytorch(graph)(torch.from_numpy(pair)).numpy().reshape(-1, 7)
    assert close(got, want)
    first = got[got[:, 0] == 0]
    assert close(first.reshape(outs["detection_out"].shape), outs["detection_out"])
    assert (got[:, 0] == 1).any()


@pytest.mark.parametrize("param, what", [
    ("prior_box_param { min_size: 30 max_size: 20 }", "max_size"),
    ("prior_box_param { min_size: 30 variance: 0.1 variance: 0.2 }", "variances"),
    ("prior_box_param { min_size: 30 step: 8 step_h: 8 }", "step"),
])
def test_prior_box_parameters_caffe_refuses_are_one_line(tmp_path, param, what):
    net = tmp_path / "pb.prototxt"
    net.write_text('name: "pb"\nlayer { name: "f" type: "Input" top: "f" input_param { shape { dim: 1 dim: 2 dim: 3 dim: 3 } } }\n'
                   'layer { name: "img" type: "Input" top: "img" input_param { shape { dim: 1 dim: 3 dim: 30 dim: 30 } } }\n'
                   f'layer {{ name: "pb" type: "PriorBox" bottom: "f" bottom: "img" top: "pb" {param} }}\n')
    with pytest.raises(CaffeError) as info:
        load_net(net)
    text = str(info.value)
    assert "\n" not in text and "'pb' (PriorBox)" in text and what in text, text
