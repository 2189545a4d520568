"""Faster R-CNN (py-faster-rcnn's test nets) in `zoo run`, as its lib/fast_rcnn/test.py and tools/demo.py
use it: the image minus the pixel means, rescaled so its shorter side is the card's ``resize`` unless the
longer one would pass ``MAX_SIZE``; the net converted at that size and fed ``im_info = [[h, w, scale]]``;
its proposals (rois), class probabilities and per-class box deltas decoded into boxes of the original
image: box regression, clipping, per class NMS 0.3 (py_cpu_nms), boxes at or above a threshold."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from prototxt import CaffeError
from zoo.inference.image import decode_image, resize_bilinear
from zoo.inference.scene import detection
from zoo.inference.transform import Transform

MAX_SIZE = 1000     # cfg.TEST.MAX_SIZE: the longer side's limit (the card gives the shorter side)
NMS_THRESH = 0.3    # tools/demo.py's NMS_THRESH (cfg.TEST.NMS)
CONF_THRESH = 0.8   # tools/demo.py's CONF_THRESH: the default threshold of `zoo run` for these nets
LIVE_SESSIONS = 2   # the sessions kept for the latest image sizes: a folder of photos has many sizes


def image_scale(height: int, width: int, shorter: int, max_size: int = MAX_SIZE) -> float:
    """The factor that takes the shorter side to ``shorter``, or the longer to ``max_size`` when the
    first would take it (rounded) past that."""
    scale = shorter / min(height, width)
    if np.round(scale * max(height, width)) > max_size:
        scale = max_size / max(height, width)
    return scale


def prepare(image: np.ndarray, transform: Transform, shorter: int,
            max_size: int = MAX_SIZE) -> tuple[np.ndarray, np.ndarray, float]:
    """A decoded (C, H, W) image -> (data (1, C, h, w), im_info (1, 3), scale): the means subtracted in
    float32 first, then cv2.resize by the factor (INTER_LINEAR, the source step 1/scale as OpenCV takes
    it from fx, fy; OpenCV's own arithmetic, not Intel IPP's), then the card's scale."""
    c, h, w = image.shape
    if transform.channel_order == "RGB" and c == 3:
        image = image[::-1]
    mean = np.asarray(transform.mean, dtype=np.float64)
    mean = np.broadcast_to(mean, (c,)) if mean.size == 1 else mean
    x = (image.astype(np.float64) - mean.reshape(c, 1, 1)).astype(np.float32)  # float32 -= float64 means
    scale = image_scale(h, w, shorter, max_size)
    size = (round(h * scale), round(w * scale))  # cv::resize's dsize from fx, fy: rounded to nearest (even)
    data = resize_bilinear(x, *size, factor=scale)
    if transform.scale != 1.0:
        data = data * np.float32(transform.scale)
    return data[None], np.array([[size[0], size[1], scale]], dtype=np.float32), scale


def bbox_transform_inv(boxes: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    """Boxes (R, 4) moved by deltas (R, 4K) (dx, dy, dw, dh per class), in the deltas' dtype: the
    centre shifts by dx, dy times the width, height (+1-pixel sizes); the size scales by exp(dw, dh)."""
    boxes = boxes.astype(deltas.dtype, copy=False)
    widths = (boxes[:, 2] - boxes[:, 0] + 1.0)[:, None]
    heights = (boxes[:, 3] - boxes[:, 1] + 1.0)[:, None]
    centre_x = boxes[:, :1] + 0.5 * widths
    centre_y = boxes[:, 1:2] + 0.5 * heights
    x = deltas[:, 0::4] * widths + centre_x
    y = deltas[:, 1::4] * heights + centre_y
    half_w = 0.5 * (np.exp(deltas[:, 2::4]) * widths)
    half_h = 0.5 * (np.exp(deltas[:, 3::4]) * heights)
    out = np.empty_like(deltas)
    out[:, 0::4], out[:, 1::4], out[:, 2::4], out[:, 3::4] = x - half_w, y - half_h, x + half_w, y + half_h
    return out


def clip_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Every x into [0, width - 1] and y into [0, height - 1] (boxes (R, 4K))."""
    limits = np.tile(np.array([width - 1, height - 1], dtype=boxes.dtype), boxes.shape[1] // 2)
    return np.maximum(np.minimum(boxes, limits), 0)


def nms(dets: np.ndarray, thresh: float) -> list[int]:
    """py_cpu_nms: from the best score down, keep a box and drop those overlapping it by more than
    ``thresh`` (inclusive pixel areas: +1 on each side). Equal scores: the later row first."""
    x1, y1, x2, y2, scores = dets[:, 0], dets[:, 1], dets[:, 2], dets[:, 3], dets[:, 4]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores, kind="stable")[::-1]
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        order = rest[inter / (areas[i] + areas[rest] - inter) <= thresh]
    return keep


def decode(rois: np.ndarray, cls_prob: np.ndarray, bbox_pred: np.ndarray, scale: float, size: tuple[int, int],
           labels: Sequence[str], threshold: float, nms_thresh: float = NMS_THRESH) -> list[dict]:
    """The detections of one image of ``size`` (W, H), most confident first: the proposals (rows
    batch, x1, y1, x2, y2 on the rescaled image) back in original pixels, moved by their class's deltas,
    clipped to the image; per class (not the background 0) NMS, then the boxes at or above ``threshold``."""
    num = cls_prob.shape[-1]
    if rois.ndim != 2 or rois.shape[1] != 5 or cls_prob.shape != (len(rois), num) or bbox_pred.shape != (len(rois), 4 * num):
        raise CaffeError(f"Faster R-CNN outputs: rois {tuple(rois.shape)}, cls_prob {tuple(cls_prob.shape)} and bbox_pred "
                         f"{tuple(bbox_pred.shape)}; expected (R, 5) rois, and per roi class scores and 4 deltas per class")
    w, h = size
    boxes = rois[:, 1:5].astype(np.float32) / np.float32(scale)  # float32, as numpy 1 divided by a float64 scalar
    boxes = clip_boxes(bbox_transform_inv(boxes, bbox_pred.astype(np.float32)), h, w)
    found = []
    for k in range(1, num):
        dets = np.hstack((boxes[:, 4 * k:4 * k + 4], cls_prob[:, k:k + 1])).astype(np.float32)
        found += [detection(k, float(dets[i, 4]), dets[i, :4], labels) for i in nms(dets, nms_thresh)
                  if dets[i, 4] >= threshold]
    return sorted(found, key=lambda d: -d["confidence"])


def region_feed(model: Any) -> Optional[Any]:
    """The net's proposal layer fed by an im_info input (``converters.verify.ProposalFeed``), or None."""
    from converters import proposal_feeds
    feeds = proposal_feeds(model.graph(model.card_input_shapes(), weights=False))
    return feeds[0] if len(feeds) == 1 else None


def detect(model: Any, feed: Any, images: Sequence[Path], labels: Sequence[str], threshold: float,
           device: str = "auto", progress: Optional[Callable[[int], None]] = None) -> list[dict]:
    """{image, size, detections} per image: each image run alone at its own size (the proposal layer's
    anchors are laid out for one feature map), the net converted once per size into the cache."""
    from zoo.inference.classify import cached_onnx
    from zoo.inference.runtime import session
    card = model.card
    if card is None or not isinstance(card.input.resize, int) or len(card.outputs) != 2:
        raise CaffeError(f"{model.source}: running a Faster R-CNN net takes a card giving its input's shorter side "
                         f"(input.resize, an integer), means and outputs [class probabilities, box deltas]")
    transform = Transform.from_card(card)
    sessions: dict[tuple[int, ...], Any] = {}
    results = []
    for path in images:
        image = decode_image(path, transform.color, str(path))
        data, info, scale = prepare(image, transform, card.input.resize)
        if 0 in data.shape[2:]:  # cv2.resize refuses it too (the publisher's script fails there)
            raise CaffeError(f"{path}: a {image.shape[2]}x{image.shape[1]} image rescales to "
                             f"{data.shape[3]}x{data.shape[2]} pixels (longer side at most {MAX_SIZE}): too thin "
                             f"to run; crop it first")
        if data.shape not in sessions:
            if len(sessions) >= LIVE_SESSIONS:  # each holds its own copy of the weights (VGG16's: 0.5 GB)
                del sessions[next(iter(sessions))]
            shapes = {feed.image: data.shape, feed.im_info: info.shape}
            sessions[data.shape] = session(cached_onnx(model, shapes, outputs=[feed.rois]), device=device, quiet=False)
        sess = sessions[data.shape] = sessions.pop(data.shape)  # the most recently used last
        names = [i.name for i in sess.get_inputs()]
        out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, dict(zip(names, (data, info))))))
        missing = [n for n in card.outputs if n not in out]
        if missing:
            raise CaffeError(f"{card.path}: the card's outputs {', '.join(map(repr, missing))} are not outputs of "
                             f"its net (it has {', '.join(map(repr, sorted(set(out) - {feed.rois})))}); name "
                             f"the class probabilities and the box deltas")
        size = (image.shape[2], image.shape[1])
        rois, probs, deltas = (out[n] for n in (feed.rois, *card.outputs))
        results.append({"image": str(path), "size": list(size),
                        "detections": decode(rois, probs, deltas, scale, size, labels, threshold)})
        if progress is not None:
            progress(1)
    return results
