"""Shape rules of the Caffe forks' layer types that ``converters`` implements, and the parameter readers
they need (also used by ``converters``' implementations of these types).

Here, not beside the implementations, so that ``prototxt.load_net`` infers every blob of a fork net
(MobileNet-SSD, SegNet, PSPNet, Faster R-CNN, ShuffleNet, ...) without importing ``converters``.
``prototxt/__init__.py`` imports this module, which registers the rules. Types a user implements
still bring their own rule with ``converters.register_layer(..., shape=...)``.
"""
from __future__ import annotations

import ast
import copy
import math
import re

import numpy as np

from . import shapes
from .shapes import ShapeResult, fail, register_shape_rule

register_shape_rule("ReLU6")(shapes.same_shape)  # SSDLite's min(max(x, 0), 6)


def legacy_hw(shape) -> tuple[int, int]:
    """Caffe's legacy height() and width(): axes 2 and 3, 1 where the blob has fewer axes."""
    return (shape[2] if len(shape) > 2 else 1), (shape[3] if len(shape) > 3 else 1)


# -- SSD (weiliu89/caffe `ssd` branch): Permute, PriorBox, Normalize, DetectionOutput ------------------

def permute_order(layer, n_axes: int) -> list[int]:
    """The full order: the given axes, then the missing ones in order (Caffe's LayerSetUp)."""
    order = list(layer.permute_param.order)
    if any(o >= n_axes for o in order) or len(set(order)) != len(order):
        fail(layer, f"order {order} needs distinct axes below the input's {n_axes}")
    return order + [i for i in range(n_axes) if i not in order]


@register_shape_rule("Permute")
def _permute(layer, bottoms):
    x = bottoms[0]
    return ShapeResult([tuple(x[o] for o in permute_order(layer, len(x)))])


def aspect_ratios(p) -> list[float]:
    """1, then each new ratio (and its inverse with flip), as Caffe's float list."""
    out = [1.0]
    for ar in (float(np.float32(a)) for a in p.aspect_ratio):
        if all(abs(ar - have) >= 1e-6 for have in out):
            out.append(ar)
            if p.flip:
                out.append(float(np.float32(1.0 / ar)))
    return out


def prior_sizes(p) -> list[list[float]]:
    """Each prior's (width, height) at one location, in Caffe's order and float32 values: per min_size
    (truncated to int, as Caffe reads it) the square, then sqrt(min*max), then the other ratios."""
    sizes = []
    for i, min_size in enumerate(p.min_size):
        m = int(min_size)
        sizes.append([float(m), float(m)])
        if p.max_size:
            side = float(np.float32(math.sqrt(m * int(p.max_size[i]))))
            sizes.append([side, side])
        for ar in aspect_ratios(p):
            if abs(ar - 1.0) < 1e-6:
                continue
            root = np.sqrt(np.float32(ar))
            sizes.append([float(np.float32(m * root)), float(np.float32(m / root))])
    return sizes


@register_shape_rule("PriorBox")
def _prior_box(layer, bottoms):
    p = layer.prior_box_param
    if not p.min_size or any(s <= 0 for s in p.min_size):
        fail(layer, "needs positive min_size values")
    if p.max_size and (len(p.max_size) != len(p.min_size) or any(a <= b for a, b in zip(p.max_size, p.min_size))):
        fail(layer, "needs one max_size per min_size, each greater than it")
    if len(p.variance) not in (0, 1, 4) or any(v <= 0 for v in p.variance):
        fail(layer, f"needs 1 or 4 positive variances, got {list(p.variance)}")
    if p.HasField("img_size") and (p.HasField("img_h") or p.HasField("img_w")):
        fail(layer, "gives both img_size and img_h/img_w; give one")
    if p.HasField("step") and (p.HasField("step_h") or p.HasField("step_w")):
        fail(layer, "gives both step and step_h/step_w; give one")
    h, w = legacy_hw(bottoms[0])
    return ShapeResult([(1, 2, h * w * len(prior_sizes(p)) * 4)])


@register_shape_rule("Normalize")
def _normalize(layer, bottoms):
    x = bottoms[0]
    if not 2 <= len(x) <= 4:
        fail(layer, f"takes 2 to 4 axes (num, channels, height, width), got {len(x)}")
    return ShapeResult([x], [() if layer.norm_param.channel_shared else (x[1],)])


@register_shape_rule("DetectionOutput")
def _detection_output(layer, bottoms):
    p = layer.detection_output_param
    if len(bottoms) < 3:
        fail(layer, "needs the location, confidence and prior bottoms")
    if not p.HasField("num_classes"):
        fail(layer, "needs num_classes")
    if p.nms_param.nms_threshold < 0 or not 0 < p.nms_param.eta <= 1:
        fail(layer, "needs nms_threshold >= 0 and 0 < eta <= 1")
    priors = legacy_hw(bottoms[2])[0] // 4
    loc_classes = 1 if p.share_location else p.num_classes
    locations, confidences = shapes.count(bottoms[0], 1), shapes.count(bottoms[1], 1)
    if locations != priors * loc_classes * 4 or confidences != priors * p.num_classes:
        fail(layer, f"{priors} priors need {priors * loc_classes * 4} locations and {priors * p.num_classes} "
                    f"confidences per image, got {locations} and {confidences}")
    if bottoms[0][0] != bottoms[1][0]:
        fail(layer, "location and confidence bottoms need the same batch size")
    return ShapeResult([(1, 1, 1, 7)])  # Caffe's Reshape; Forward gives one row per detection


# -- mobile nets: ConvolutionDepthwise, ShuffleChannel, Axpy ------------------------------------------

def depthwise_proto(proto, bottom):
    """The layer as the plain Convolution it is: group = the input's channels."""
    out = copy.deepcopy(proto)
    out.type = "Convolution"
    out.convolution_param.group = bottom[1]
    return out


@register_shape_rule("ConvolutionDepthwise")
def _depthwise(layer, bottoms):
    return shapes.infer(depthwise_proto(layer, bottoms[0]), bottoms)


@register_shape_rule("ShuffleChannel")
def _shuffle_channel(layer, bottoms):
    group, channels = layer.shuffle_channel_param.group, bottoms[0][1]
    if group <= 0 or channels % group:
        fail(layer, f"{channels} channels do not split into {group} groups")
    return ShapeResult([bottoms[0]])


@register_shape_rule("Axpy")
def _axpy(layer, bottoms):
    if len(bottoms) != 3:
        fail(layer, f"Axpy takes 3 bottoms (a, x, y), got {len(bottoms)}")
    a, x, y = bottoms
    if x != y or a[:2] != x[:2] or any(d != 1 for d in a[2:]):
        fail(layer, f"Axpy needs a (N, C, 1, 1) and x, y of one shape (N, C, H, W); got {a}, {x}, {y}")
    return ShapeResult([x])


# -- segmentation: Interp, BN, Upsample, DenseImageData -----------------------------------------------

@register_shape_rule("Interp")
def _interp(layer, bottoms):
    """InterpLayer::Reshape: crop by pad_beg/pad_end (<= 0), then a second bottom's size, or the first of
    shrink, zoom, height/width, shrink and zoom that the parameters give."""
    p = layer.interp_param
    if p.pad_beg > 0 or p.pad_end > 0:
        fail(layer, f"pad_beg {p.pad_beg} / pad_end {p.pad_end} must be <= 0 (Interp only crops)")
    n, c, h, w = bottoms[0]
    h_in, w_in = h + p.pad_beg + p.pad_end, w + p.pad_beg + p.pad_end
    if h_in <= 0 or w_in <= 0:
        fail(layer, f"cropping {-p.pad_beg}+{-p.pad_end} leaves nothing of {h}x{w}")
    shrink, zoom = p.HasField("shrink_factor"), p.HasField("zoom_factor")
    if len(bottoms) > 1:  # the forks' "resize to a reference blob" form: its height and width
        return ShapeResult([(n, c) + tuple(bottoms[1][2:4])])
    if (shrink and p.shrink_factor < 1) or (zoom and p.zoom_factor < 1):
        fail(layer, "shrink_factor and zoom_factor must be >= 1")
    if shrink and not zoom:
        out = ((h_in - 1) // p.shrink_factor + 1, (w_in - 1) // p.shrink_factor + 1)
    elif zoom and not shrink:
        out = (h_in + (h_in - 1) * (p.zoom_factor - 1), w_in + (w_in - 1) * (p.zoom_factor - 1))
    elif p.HasField("height") and p.HasField("width"):
        out = (p.height, p.width)
    elif shrink and zoom:
        hs, ws = (h_in - 1) // p.shrink_factor + 1, (w_in - 1) // p.shrink_factor + 1
        out = (hs + (hs - 1) * (p.zoom_factor - 1), ws + (ws - 1) * (p.zoom_factor - 1))
    else:
        fail(layer, "give zoom_factor, shrink_factor or height and width in interp_param")
    if min(out) <= 0:
        fail(layer, f"output size {out} must be positive")
    return ShapeResult([(n, c) + tuple(out)])


PSPNET_FIELDS = ("slope_filler", "bias_filler", "momentum", "frozen")


def bn_mode(proto) -> str:
    """Which fork's BN: PSPNet's (slope/bias/mean/variance, 4 blobs) by its own fields or 4 param specs,
    else SegNet/ENet's (scale/shift, 2 blobs) in its bn_mode."""
    p = proto.bn_param
    if any(p.HasField(f) for f in PSPNET_FIELDS) or len(proto.param) == 4:
        return "PSPNET"
    return "INFERENCE" if p.bn_mode == p.INFERENCE else "LEARN"


@register_shape_rule("BN")
def _bn(layer, bottoms):
    if len(bottoms[0]) != 4:
        fail(layer, f"BN needs a 4-axis input (N, C, H, W), got {bottoms[0]}")
    if len(layer.top) > 1:
        fail(layer, "the batch mean/variance tops of SegNet's BN are training outputs; deploy nets have one top")
    blob = (1, bottoms[0][1], 1, 1)
    return ShapeResult([bottoms[0]], [blob] * (4 if bn_mode(layer) == "PSPNET" else 2))


@register_shape_rule("Upsample")
def _upsample(layer, bottoms):
    """SegNet's UpsampleLayer::Reshape with a mask bottom: upsample_h/w if given, else H * scale
    (minus 1 where pad_out_h/w, which needs scale 2); one bottom: nearest, H * scale."""
    p = layer.upsample_param
    n, c, h, w = bottoms[0]
    if len(bottoms) == 1:
        if p.scale < 1:
            fail(layer, f"scale {p.scale} must be >= 1")
        return ShapeResult([(n, c, h * p.scale, w * p.scale)])
    if bottoms[1] != bottoms[0]:
        fail(layer, f"the mask {bottoms[1]} must have the input's shape {bottoms[0]}")
    if p.HasField("upsample_h") and p.HasField("upsample_w"):
        out = (p.upsample_h, p.upsample_w)
    else:
        sh, sw = (p.scale_h, p.scale_w) if p.HasField("scale_h") else (p.scale, p.scale)
        if (p.pad_out_h and sh != 2) or (p.pad_out_w and sw != 2):
            fail(layer, "pad_out_h/pad_out_w work only with scale 2")
        out = (h * sh - int(p.pad_out_h), w * sw - int(p.pad_out_w))
    if min(out) <= 1:
        fail(layer, f"upsampled size {out} must be > 1")
    return ShapeResult([(n, c) + tuple(out)])


@register_shape_rule("DenseImageData")
def _dense_image_data(layer, bottoms):
    """SegNet/ENet's image + label-image data layer: crop, else new_height/new_width; the label is
    (N, 1, H, W). At deploy it is an input like any data layer."""
    p = layer.dense_image_data_param
    channels = 3 if p.is_color else 1
    if p.crop_height and p.crop_width:
        h, w = p.crop_height, p.crop_width
    elif p.new_height and p.new_width:
        h, w = p.new_height, p.new_width
    else:
        raise shapes.UnknownInputShape("the image size comes from the images (no new_height/new_width or "
                                       "crop_height/crop_width)")
    return ShapeResult([(p.batch_size, channels, h, w), (p.batch_size, 1, h, w)][:len(layer.top)])


# -- detection: ROIPooling (Fast/Faster R-CNN), PSROIPooling (R-FCN) ----------------------------------

def _rois_count(layer, rois) -> int:
    if len(rois) < 2 or shapes.count(rois, 1) != 5:
        fail(layer, f"the ROIs bottom must be (R, 5) rows (batch, x1, y1, x2, y2), got {rois}")
    return rois[0]


@register_shape_rule("ROIPooling")
def _roi_pooling(layer, bottoms):
    p = layer.roi_pooling_param
    if p.pooled_h <= 0 or p.pooled_w <= 0:
        fail(layer, "roi_pooling_param needs pooled_h and pooled_w > 0")
    return ShapeResult([(_rois_count(layer, bottoms[1]), bottoms[0][1], p.pooled_h, p.pooled_w)])


@register_shape_rule("PSROIPooling")
def _psroi_pooling(layer, bottoms):
    p = layer.psroi_pooling_param
    if not (p.HasField("spatial_scale") and p.HasField("output_dim") and p.HasField("group_size")):
        fail(layer, "psroi_pooling_param needs spatial_scale, output_dim and group_size (R-FCN requires all three)")
    if p.output_dim <= 0 or p.group_size <= 0:
        fail(layer, "output_dim and group_size must be > 0")
    channels = bottoms[0][1]
    if channels != p.output_dim * p.group_size ** 2:
        fail(layer, f"input channels {channels} must be output_dim * group_size^2 = {p.output_dim * p.group_size ** 2}")
    return ShapeResult([(_rois_count(layer, bottoms[1]), p.output_dim, p.group_size, p.group_size)])


# -- the well-known Python layers (py-faster-rcnn's proposal layer, ENet's test-time spatial dropout) --
# Recognised by python_param's module and layer only: their code is never imported or run.

PROPOSAL = ("rpn.proposal_layer", "ProposalLayer")
# Layers that pass their bottom through at test time (the param_str must say phase TEST where it has one).
TEST_IDENTITY = {("spatial_dropout", "SpatialDropoutLayer")}
_PARAM_ITEM = re.compile(r"""\s*['"]?(\w+)['"]?\s*:\s*([^,\[\(]+|\[[^\]]*\]|\([^\)]*\))\s*(?:,|$)""")
MAX_FEAT_STRIDE = 1 << 16  # int64-safe anchor shifts whatever the map size; py-faster-rcnn nets use 16
PROPOSAL_TEST = dict(pre_nms_top_n=6000, post_nms_top_n=300, nms_thresh=0.7, min_size=16)  # py-faster-rcnn cfg.TEST


def python_kind(proto) -> str | None:
    """'proposal' or 'identity' for a Python layer we serve, None for any other (user code)."""
    key = (proto.python_param.module, proto.python_param.layer)
    if key == PROPOSAL:
        return "proposal"
    if key in TEST_IDENTITY and _test_phase(proto):
        return "identity"
    return None


def _test_phase(proto) -> bool:
    """A param_str phase other than TEST (ENet's training nets say 'TRAIN') makes the layer drop channels."""
    try:
        return str(param_str(proto).get("phase", "TEST")).upper() == "TEST"
    except ValueError:
        return False


def param_str(proto) -> dict:
    """The param_str's 'key': value pairs (a YAML/dict fragment, read as literals only, never evaluated)."""
    text = proto.python_param.param_str.strip()
    if len(text) > 4096:
        raise ValueError(f"layer '{proto.name}': param_str is too long ({len(text)} characters)")
    text = text[1:-1] if text.startswith("{") and text.endswith("}") else text
    out, pos = {}, 0
    while pos < len(text):
        m = _PARAM_ITEM.match(text, pos)
        if m is None or m.end() == pos:
            raise ValueError(f"layer '{proto.name}': cannot read param_str {proto.python_param.param_str!r} "
                             f"as 'key': value pairs")
        raw = m.group(2).strip()
        try:
            out[m.group(1)] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[m.group(1)] = raw.strip("'\"")
        pos = m.end()
    return out


def proposal_args(proto) -> dict:
    params = param_str(proto)
    unknown = set(params) - {"feat_stride", "scales", "ratios"}
    if unknown or "feat_stride" not in params:
        raise ValueError(f"layer '{proto.name}' (rpn.proposal_layer.ProposalLayer): param_str needs 'feat_stride' and "
                         f"may give 'scales', 'ratios'; " + (f"unknown: {', '.join(sorted(unknown))}" if unknown
                                                             else "no 'feat_stride'"))
    scales = _numbers(proto, "scales", params.get("scales", (8, 16, 32)))
    ratios = _numbers(proto, "ratios", params.get("ratios", (0.5, 1, 2)))
    stride = params["feat_stride"]
    if isinstance(stride, (str, list, tuple)) or not 1 <= _numbers(proto, "feat_stride", stride)[0] <= MAX_FEAT_STRIDE:
        raise ValueError(f"layer '{proto.name}': param_str's 'feat_stride' must be a number from 1 to "
                         f"{MAX_FEAT_STRIDE} (the image pixels per feature map cell), got {stride!r}")
    anchors = generate_anchors(16, ratios, scales)
    return dict(anchors=anchors.tolist(), feat_stride=int(stride), **PROPOSAL_TEST)


def _numbers(proto, key: str, value) -> np.ndarray:
    """A param_str value (a number or a list of them, from a stranger's file) as finite float64s, or a
    ValueError naming it: a tuple, a dict or 1e999 must not reach int() or float() unchecked."""
    try:
        out = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError, OverflowError):
        out = None
    if out is None or not np.all(np.isfinite(out)):
        raise ValueError(f"layer '{proto.name}': param_str's '{key}' must be a finite number or a list of them, "
                         f"got {value!r}"[:300])
    return out


def generate_anchors(base: int, ratios: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """py-faster-rcnn's generate_anchors: the (A, 4) boxes at the first cell, ratio-major order."""
    def centre(a):
        w, h = a[2] - a[0] + 1, a[3] - a[1] + 1
        return w, h, a[0] + 0.5 * (w - 1), a[1] + 0.5 * (h - 1)

    def boxes(ws, hs, cx, cy):
        return np.stack([cx - 0.5 * (ws - 1), cy - 0.5 * (hs - 1), cx + 0.5 * (ws - 1), cy + 0.5 * (hs - 1)], 1)

    w, h, cx, cy = centre(np.array([0, 0, base - 1, base - 1], dtype=np.float64))
    ws = np.round(np.sqrt(w * h / ratios))  # numpy rounds halves to even, as the original does
    by_ratio = boxes(ws, np.round(ws * ratios), cx, cy)
    out = []
    for a in by_ratio:
        w, h, cx, cy = centre(a)
        out.append(boxes(w * scales, h * scales, cx, cy))
    return np.concatenate(out, 0)


@register_shape_rule("Python")
def _python(layer, bottoms):
    kind = python_kind(layer)
    if kind is None:
        raise shapes.UnknownLayer(f"{layer.python_param.module}.{layer.python_param.layer}")
    if kind == "identity":
        return ShapeResult([bottoms[0]])
    args = proposal_args(layer)
    if bottoms[0][0] != 1:
        fail(layer, f"the proposal layer takes one image (py-faster-rcnn: 'Only single item batches are "
                    f"supported'), got a batch of {bottoms[0][0]}")
    if len(bottoms) != 3 or bottoms[0][1] != 2 * len(args["anchors"]) or bottoms[1][1] != 4 * len(args["anchors"]):
        fail(layer, f"the proposal layer takes scores (1, 2A, H, W), deltas (1, 4A, H, W) and im_info with "
                    f"A = {len(args['anchors'])} anchors; got {bottoms}")
    # at most post_nms_top_n rows: the count depends on the data
    r = args["post_nms_top_n"]
    return ShapeResult([(r, 5), (r, 1)][:len(layer.top)])
