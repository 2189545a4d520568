"""The SSD family (weiliu89/caffe `ssd` branch): Permute, PriorBox, Normalize, DetectionOutput, and
ReLU6 (min(max(x, 0), 6)) of the nets built on it (SSDLite).

PriorBox depends on shapes only: the ONNX model holds its priors as a constant. DetectionOutput
reproduces Caffe's ApplyNMSFast exactly in both backends: candidates above the confidence
threshold, top_k of them by a stable sort (ties: lower prior index first), then greedy NMS with
Caffe's own IoU (no "+1"; a box with xmax < xmin has area 0 and overlaps nothing) and its adaptive
threshold (eta). In ONNX the pairwise IoUs of the ranked candidates are computed once, every image and class
at once; with eta = 1 greedy NMS is their fixed point (a short Loop of whole-matrix steps), else a Loop
over the ranked candidates reads one row per step, every image and class
at once: the standard NonMaxSuppression op has no eta, limits the boxes it keeps rather than the
candidates it ranks (Caffe's top_k), and reorders each box's corners, so an inverted box would
suppress others where Caffe's overlaps nothing.

The shape rules of these types, and the parameter readers shared with them, are prototxt.fork_shapes'.
"""
from __future__ import annotations

import numpy as np

from prototxt.errors import CaffeError
from prototxt.fork_shapes import legacy_hw, permute_order, prior_sizes

from ..registry import LayerImpl, register_layer
from ._common import f32, nn_specs, shape_of

FLT_MAX = float(np.finfo(np.float32).max)
CODE_TYPES = {1: "CORNER", 2: "CENTER_SIZE", 3: "CORNER_SIZE"}
FLOAT, INT64, BOOL = 1, 7, 9  # onnx.TensorProto's codes: onnx itself is imported only on the ONNX path


# -- Permute ---------------------------------------------------------------------------------------

@register_layer("Permute")
class Permute(LayerImpl):
    deterministic = True

    def torch(self, layer, graph):
        return nn_specs().Permute(permute_order(layer.proto, len(shape_of(layer, graph)))), []

    def onnx(self, layer, ctx):
        order = permute_order(layer.proto, len(shape_of(layer, ctx)))
        ctx.node("Transpose", [layer.bottoms[0]], [layer.tops[0]], perm=order)


# -- PriorBox --------------------------------------------------------------------------------------

def prior_box_args(layer) -> dict:
    p = layer.proto.prior_box_param
    img_h, img_w = (p.img_size, p.img_size) if p.HasField("img_size") else (p.img_h, p.img_w)
    step_h, step_w = (p.step, p.step) if p.HasField("step") else (p.step_h, p.step_w)
    variance = [float(np.float32(v)) for v in p.variance] or [0.1]
    return dict(sizes=prior_sizes(p), clip=p.clip, variance=variance * (4 // len(variance)), img_h=img_h,
                img_w=img_w, step_h=step_h, step_w=step_w, offset=p.offset)


def prior_boxes(args: dict, feature, image) -> np.ndarray:
    """The priors in NumPy (the ONNX constant); converters.nn.PriorBox computes them from live shapes."""
    h, w = legacy_hw(feature)
    img_h, img_w = (args["img_h"], args["img_w"]) if args["img_h"] and args["img_w"] else legacy_hw(image)
    if args["step_h"] and args["step_w"]:
        step_h, step_w = np.float32(args["step_h"]), np.float32(args["step_w"])
    else:
        step_h, step_w = np.float32(img_h) / np.float32(h), np.float32(img_w) / np.float32(w)
    cy = ((np.arange(h, dtype=np.float32) + np.float32(args["offset"])) * step_h).astype(np.float64)
    cx = ((np.arange(w, dtype=np.float32) + np.float32(args["offset"])) * step_w).astype(np.float64)
    size = np.asarray(args["sizes"], dtype=np.float32).astype(np.float64)
    half_w, half_h = size[:, 0] / 2.0, size[:, 1] / 2.0
    xs = cx[None, :, None]
    ys = cy[:, None, None]
    boxes = np.stack(np.broadcast_arrays((xs - half_w) / img_w, (ys - half_h) / img_h,
                                         (xs + half_w) / img_w, (ys + half_h) / img_h), -1).astype(np.float32)
    if args["clip"]:
        boxes = np.clip(boxes, 0.0, 1.0)
    var = np.broadcast_to(np.asarray(args["variance"], dtype=np.float32), boxes.shape)
    return np.stack([boxes.reshape(-1), var.reshape(-1)])[None]


@register_layer("PriorBox")
class PriorBox(LayerImpl):
    deterministic = True

    def torch(self, layer, graph):
        return nn_specs().PriorBox(**prior_box_args(layer)), []

    def onnx(self, layer, ctx):
        image = shape_of(layer, ctx, 1) if len(layer.bottoms) > 1 else ()
        priors = prior_boxes(prior_box_args(layer), shape_of(layer, ctx), image)
        ctx.node("Identity", [ctx.const(priors, "priors")], [layer.tops[0]])


# -- Normalize -------------------------------------------------------------------------------------

@register_layer("Normalize")
class Normalize(LayerImpl):
    def torch(self, layer, graph):
        p = layer.proto.norm_param
        return nn_specs().Normalize(shape_of(layer, graph)[1], p.across_spatial, p.channel_shared, p.eps), ["weight"]

    def onnx(self, layer, ctx):
        p = layer.proto.norm_param
        x, n = layer.bottoms[0], len(shape_of(layer, ctx))
        axes = ctx.ints(list(range(1, n)) if p.across_spatial else [1], "axes")
        sums = ctx.node("ReduceSumSquare", [x, axes], keepdims=1)[0]
        norm = ctx.node("Sqrt", [ctx.node("Add", [sums, ctx.const(np.float32(p.eps), "eps")])[0]])[0]
        if p.across_spatial:  # Caffe multiplies by the norm's reciprocal
            y = ctx.node("Mul", [x, ctx.node("Reciprocal", [norm])[0]])[0]
        else:
            y = ctx.node("Div", [x, norm])[0]
        scale = f32(layer.blobs[0]).reshape(() if p.channel_shared else [-1] + [1] * (n - 2))
        ctx.node("Mul", [y, ctx.const(scale, "scale")], [layer.tops[0]])


# -- ReLU6 -----------------------------------------------------------------------------------------

@register_layer("ReLU6")
class ReLU6(LayerImpl):
    deterministic = True

    def torch(self, layer, graph):
        return nn_specs().Elementwise("Clip", min=0.0, max=6.0), []

    def onnx(self, layer, ctx):
        ctx.node("Clip", [layer.bottoms[0], ctx.const(np.float32(0), "min"), ctx.const(np.float32(6), "max")],
                 [layer.tops[0]])


# -- DetectionOutput -------------------------------------------------------------------------------

def _refuse_unsupported(layer) -> None:
    """Parameters that make Caffe do more than compute its top: refused in one line."""
    p = layer.detection_output_param
    if p.save_output_param.output_directory:
        raise CaffeError(f"layer '{layer.name}' (DetectionOutput): save_output_param writes result files, "
                         f"which a converted net does not do; remove save_output_param from the prototxt")
    if p.visualize:
        raise CaffeError(f"layer '{layer.name}' (DetectionOutput): visualize: true draws windows, which a "
                         f"converted net does not do; set visualize: false")


def detection_output_args(layer) -> dict:
    _refuse_unsupported(layer.proto)
    p = layer.proto.detection_output_param
    nms = p.nms_param
    return dict(num_classes=p.num_classes, share_location=p.share_location,
                background_label_id=p.background_label_id, nms_threshold=float(np.float32(nms.nms_threshold)),
                top_k=nms.top_k if nms.HasField("top_k") else -1, eta=float(np.float32(nms.eta)),
                confidence_threshold=float(np.float32(p.confidence_threshold)) if p.HasField("confidence_threshold")
                else -FLT_MAX, keep_top_k=p.keep_top_k, code_type=CODE_TYPES[p.code_type],
                variance_encoded_in_target=p.variance_encoded_in_target)


@register_layer("DetectionOutput")
class DetectionOutput(LayerImpl):
    deterministic = True

    def torch(self, layer, graph):
        return nn_specs().DetectionOutput(**detection_output_args(layer)), []

    def onnx(self, layer, ctx):
        _DetectionOnnx(layer, ctx, detection_output_args(layer)).emit()


class _DetectionOnnx:
    """DetectionOutput as standard ONNX ops (see the module docstring): the same steps, in the same
    float32 arithmetic, as converters.nn.DetectionOutput."""

    def __init__(self, layer, ctx, args: dict):
        self.layer, self.ctx, self.a = layer, ctx, args
        self.n = ctx.node
        self.priors = legacy_hw(shape_of(layer, ctx, 2))[0] // 4
        c = args["num_classes"]
        self.labels = [k for k in range(c) if k != args["background_label_id"]]
        self.k = self.priors if args["top_k"] < 0 else min(args["top_k"], self.priors)

    def slice(self, x: str, start: int, end: int, axis: int = -1) -> str:
        c = self.ctx
        return self.n("Slice", [x, c.ints([start]), c.ints([end]), c.ints([axis])])[0]

    def emit(self) -> None:
        a, c, n = self.a, self.ctx, self.n
        loc, conf, prior = self.layer.bottoms[:3]
        p, classes = self.priors, a["num_classes"]
        loc_classes = 1 if a["share_location"] else classes
        pri = n("Reshape", [prior, c.ints([-1, 4])])[0]
        boxes = self.decode(self.slice(pri, 0, p, 0), self.slice(pri, p, 2 * p, 0),
                            n("Reshape", [loc, c.ints([-1, p, loc_classes, 4])])[0])
        boxes = n("Transpose", [boxes], perm=[0, 2, 1, 3])[0]
        labels = c.ints(self.labels, "labels")
        if a["share_location"]:
            boxes = n("Expand", [boxes, c.ints([1, len(self.labels), 1, 1])])[0]
        else:
            boxes = n("Gather", [boxes, labels], axis=1)[0]
        scores = n("Transpose", [n("Reshape", [conf, c.ints([-1, p, classes])])[0]], perm=[0, 2, 1])[0]
        scores = n("Gather", [scores, labels], axis=1)[0]
        thr = c.const(np.float32(a["confidence_threshold"]), "confidence_threshold")
        ninf = c.const(np.float32(-np.inf), "minus_inf")
        masked = n("Where", [n("Greater", [scores, thr])[0], scores, ninf])[0]
        values, order = n("TopK", [masked, c.ints([self.k], "top_k")], [c.tmp("values"), c.tmp("order")], axis=2)
        valid = n("Greater", [values, thr])[0]
        order4 = n("Expand", [n("Unsqueeze", [order, c.ints([3])])[0], c.ints([1, 1, 1, 4])])[0]
        cand = n("GatherElements", [boxes, order4], axis=2)[0]
        keep = self.nms(cand, valid, values)
        if a["keep_top_k"] > -1:
            keep = self.keep_top(keep, values, ninf)
        self.rows(keep, values, cand)

    def decode(self, pb: str, var: str, loc: str) -> str:
        """converters.nn.decode_boxes, op for op: priors, variances [P, 4]; loc [B, P, L, 4]."""
        a, c, n = self.a, self.ctx, self.n
        pb = n("Unsqueeze", [pb, c.ints([1])])[0]
        var = n("Unsqueeze", [var, c.ints([1])])[0]
        if a["code_type"] == "CORNER":
            return n("Add", [pb, loc if a["variance_encoded_in_target"] else n("Mul", [var, loc])[0]])[0]
        scaled = loc if a["variance_encoded_in_target"] else n("Mul", [var, loc])[0]
        lo, hi = self.slice(pb, 0, 2), self.slice(pb, 2, 4)
        size = n("Sub", [hi, lo])[0]
        if a["code_type"] == "CORNER_SIZE":
            return n("Add", [pb, n("Mul", [scaled, n("Concat", [size, size], axis=-1)[0]])[0]])[0]
        half = c.const(np.float32(0.5), "half")
        centre = n("Add", [n("Mul", [self.slice(scaled, 0, 2), size])[0], n("Mul", [n("Add", [lo, hi])[0], half])[0]])[0]
        extent = n("Mul", [n("Mul", [n("Exp", [self.slice(scaled, 2, 4)])[0], size])[0], half])[0]
        return n("Concat", [n("Sub", [centre, extent])[0], n("Add", [centre, extent])[0]], axis=-1)[0]

    def areas(self, boxes: str) -> str:
        """converters.nn.box_areas: [..., 4] -> [...]."""
        c, n = self.ctx, self.n
        wh = n("Sub", [self.slice(boxes, 2, 4), self.slice(boxes, 0, 2)])[0]
        area = n("Mul", [self.slice(wh, 0, 1), self.slice(wh, 1, 2)])[0]
        inverted = n("Less", [n("ReduceMin", [wh, c.ints([-1])], keepdims=1)[0], c.const(np.float32(0), "zero")])[0]
        area = n("Where", [inverted, c.const(np.float32(0), "zero"), area])[0]
        return n("Squeeze", [area, c.ints([-1])])[0]

    def nms(self, cand: str, valid: str, values: str) -> str:
        """ApplyNMSFast on the K ranked candidates of every image and class at once. The pairwise IoU
        matrix is computed once outside any Loop; the Loop bodies only read it."""
        c, n = self.ctx, self.n
        areas = self.areas(cand)
        # one [B, C', K] tensor per corner coordinate: the [K, K] broadcasts below then run over a
        # contiguous last axis (a trailing axis of 4 or 2 makes onnxruntime's broadcasting slow)
        xy = [n("Squeeze", [self.slice(cand, i, i + 1), c.ints([-1])])[0] for i in range(4)]
        rows = [n("Unsqueeze", [v, c.ints([3])])[0] for v in xy + [areas]]
        cols = [n("Unsqueeze", [v, c.ints([2])])[0] for v in xy + [areas]]
        # iou[..., j, i]: candidate j against candidate i, Caffe's arithmetic (symmetric, bit for bit)
        iou = self.jaccard(rows, cols)
        if self.a["eta"] < 1:
            return self.nms_adaptive(iou, valid, values)
        return self.nms_fixed_point(iou, valid)

    def nms_fixed_point(self, iou: str, valid: str) -> str:
        """Greedy NMS with a fixed threshold is the unique fixed point of
        keep[j] = valid[j] and no i < j with keep[i] and iou[i, j] > threshold (by induction on j), and
        iterating that map from keep = valid makes one more leading position exact per step: a Loop of
        at most K whole-matrix steps that stops as soon as nothing changes (a handful on real nets)."""
        c, n = self.ctx, self.n
        before = np.triu(np.ones((self.k, self.k), np.float32), 1)  # [i, j]: i ranks before j
        over = n("Where", [n("Greater", [iou, c.const(np.float32(self.a["nms_threshold"]), "nms_threshold")])[0],
                           c.const(before, "ranked_before"), c.const(np.float32(0), "zero")])[0]

        def step(it, cond, keep_in):
            # 0/1 sums of at most K < 2**24 terms: exact in float32
            hits = n("MatMul", [n("Unsqueeze", [n("Cast", [keep_in], to=FLOAT)[0], c.ints([2])])[0], over])[0]
            suppressed = n("Greater", [n("Squeeze", [hits, c.ints([2])])[0], c.const(np.float32(0), "zero")])[0]
            keep_out = n("And", [valid, n("Not", [suppressed])[0]])[0]
            changed = n("Cast", [n("Xor", [keep_in, keep_out])[0]], to=FLOAT)[0]
            changed = n("Reshape", [n("ReduceMax", [changed], keepdims=1)[0], c.ints([], "scalar")])[0]
            return n("Cast", [changed], to=BOOL)[0], keep_out

        true = n("Cast", [n("Reshape", [c.ints([1], "true"), c.ints([], "scalar")])[0]], to=BOOL)[0]
        return self.loop([("keep", BOOL, valid)], step, cond=true)[0]

    def nms_adaptive(self, iou: str, valid: str, values: str) -> str:
        """eta < 1: the threshold after each kept box depends on the order, so one Loop step per rank."""
        from onnx import helper
        a, c, n = self.a, self.ctx, self.n
        keep0 = n("Xor", [valid, valid])[0]  # all false, shaped [B, C', K]
        thr0 = n("ConstantOfShape", [n("Shape", [values], start=0, end=2)[0]],
                 value=helper.make_tensor("nms", FLOAT, [1], [a["nms_threshold"]]))[0]
        positions = c.ints(list(range(self.k)), "positions")

        def step(it, cond, keep_in, thr_in):
            j = n("Unsqueeze", [it, c.ints([0])])[0]
            row = n("Squeeze", [n("Gather", [iou, j], axis=2)[0], c.ints([2])])[0]
            over = n("Greater", [row, n("Unsqueeze", [thr_in, c.ints([-1])])[0]])[0]
            hit = n("Cast", [n("And", [over, keep_in])[0]], to=FLOAT)[0]
            suppressed = n("Cast", [n("ReduceMax", [hit, c.ints([-1])], keepdims=0)[0]], to=BOOL)[0]
            kept = n("And", [n("Squeeze", [n("Gather", [valid, j], axis=2)[0], c.ints([-1])])[0],
                             n("Not", [suppressed])[0]])[0]
            here = n("Equal", [positions, it])[0]
            keep_out = n("Or", [keep_in, n("And", [n("Unsqueeze", [kept, c.ints([-1])])[0], here])[0]])[0]
            shrink = n("And", [kept, n("Greater", [thr_in, c.const(np.float32(0.5), "half")])[0]])[0]
            thr_out = n("Where", [shrink, n("Mul", [thr_in, c.const(np.float32(a["eta"]), "eta")])[0], thr_in])[0]
            return n("Identity", [cond])[0], keep_out, thr_out

        return self.loop([("keep", BOOL, keep0), ("thr", FLOAT, thr0)], step)[0]

    def loop(self, carried: list[tuple[str, int, str]], step, cond: str = "") -> list[str]:
        """An ONNX Loop of at most K trips: ``carried`` are (name, element type, initial value) of the
        loop-carried values; ``step(iteration, cond, *carried)`` emits the body's nodes and returns
        (cond_out, *carried_out). Returns the carried values' final names."""
        from onnx import helper
        c = self.ctx
        saved, c.nodes = c.nodes, []
        it, cond_in, *state_in = (c.tmp(s) for s in ("iter", "cond", *(f"{name}_in" for name, _, _ in carried)))
        cond_out, *state_out = step(it, cond_in, *state_in)
        body_nodes, c.nodes = c.nodes, saved
        types = [t for _, t, _ in carried]
        info = helper.make_tensor_value_info
        body = helper.make_graph(
            body_nodes, f"{self.layer.name}_nms",
            [info(it, INT64, []), info(cond_in, BOOL, [])] + [info(v, t, None) for v, t in zip(state_in, types)],
            [info(cond_out, BOOL, [])] + [info(v, t, None) for v, t in zip(state_out, types)])
        return self.n("Loop", [c.ints([self.k], "trips"), cond, *(v for _, _, v in carried)],
                      [c.tmp(name) for name, _, _ in carried], body=body)

    def jaccard(self, a: list[str], b: list[str]) -> str:
        """converters.nn.jaccard, broadcasting: a and b are [xmin, ymin, xmax, ymax, area] -> IoUs."""
        c, n = self.ctx, self.n
        iw, ih = (n("Sub", [n("Min", [a[i + 2], b[i + 2]])[0], n("Max", [a[i], b[i]])[0]])[0] for i in (0, 1))
        inter = n("Mul", [iw, ih])[0]
        iou = n("Div", [inter, n("Sub", [n("Add", [a[4], b[4]])[0], inter])[0]])[0]
        zero = c.const(np.float32(0), "zero")
        both = n("And", [n("Greater", [iw, zero])[0], n("Greater", [ih, zero])[0]])[0]
        return n("Where", [both, iou, zero])[0]

    def keep_top(self, keep: str, values: str, ninf: str) -> str:
        """keep_top_k per image: the best-scoring kept boxes, ties to the lower label, then rank."""
        c, n = self.ctx, self.n
        total = len(self.labels) * self.k
        top = min(self.a["keep_top_k"], total)
        if top == 0:
            return n("Xor", [keep, keep])[0]
        flat = n("Reshape", [n("Where", [keep, values, ninf])[0], c.ints([0, -1])])[0]
        _, rank = n("TopK", [flat, c.ints([top], "keep_top_k")], [c.tmp("best"), c.tmp("rank")], axis=1)
        zeros = n("Cast", [n("Less", [flat, flat])[0]], to=FLOAT)[0]
        ones = n("Cast", [n("Equal", [rank, rank])[0]], to=FLOAT)[0]
        chosen = n("ScatterElements", [zeros, rank, ones], axis=1)[0]
        chosen = n("Reshape", [n("Greater", [chosen, c.const(np.float32(0.5), "half")])[0],
                               n("Shape", [keep])[0]])[0]
        return n("And", [keep, chosen])[0]

    def rows(self, keep: str, values: str, cand: str) -> None:
        """[1, 1, M, 7] rows in (image, label, rank) order; one [i, -1, ...] row per image when M is 0."""
        c, n = self.ctx, self.n
        idx = n("Transpose", [n("NonZero", [keep])[0]], perm=[1, 0])[0]
        score = n("Unsqueeze", [n("GatherND", [values, idx])[0], c.ints([1])])[0]
        box = n("GatherND", [cand, idx])[0]
        image = n("Cast", [self.slice(idx, 0, 1, 1)], to=FLOAT)[0]
        label = n("Gather", [c.const(np.asarray(self.labels, np.float32), "label_values"), self.slice(idx, 1, 2, 1)])[0]
        found = n("Concat", [image, label, score, box], axis=1)[0]
        batch = n("Shape", [values], start=0, end=1)[0]
        ids = n("Range", [c.const(np.float32(0), "zero"), n("Cast", [n("Squeeze", [batch])[0]], to=FLOAT)[0],
                          c.const(np.float32(1), "one")])[0]
        empty = n("Concat", [n("Unsqueeze", [ids, c.ints([1])])[0],
                             n("Expand", [c.const(np.full((1, 6), -1, np.float32), "minus_ones"),
                                          n("Concat", [batch, c.ints([6])], axis=0)[0]])[0]], axis=1)[0]
        count = n("Shape", [found], start=0, end=1)[0]
        none = n("Cast", [n("Equal", [count, c.ints([0])])[0]], to=INT64)[0]
        end = n("Add", [count, n("Mul", [none, batch])[0]])[0]
        # M rows, or where M is 0 the B rows after them
        rows = n("Slice", [n("Concat", [found, empty], axis=0)[0], c.ints([0]), end, c.ints([0])])[0]
        top = self.layer.tops[0]
        n("Reshape", [rows, c.ints([1, 1, -1, 7])], [top])
        c.value_shapes[top] = [1, 1, f"{top}_rows", 7]
