"""Detection fork layers: ROIPooling (Fast/Faster R-CNN), PSROIPooling (R-FCN), and the well-known
Python layers served by our own implementations: py-faster-rcnn's proposal layer and test-time
identities (ENet's spatial dropout). Any other Python layer names user code: never imported, refused.
Their shape rules, and the reading of a Python layer's python_param, are prototxt.fork_shapes'."""
from __future__ import annotations

import warnings

import numpy as np

from prototxt.fork_shapes import proposal_args, python_kind

from ..registry import LayerImpl, register_layer
from ._common import shape_of, nn_specs


# -- ROIPooling / PSROIPooling ----------------------------------------------------------------------------

@register_layer("ROIPooling")
class ROIPooling(LayerImpl):
    deterministic = True  # no parameters; the output a fixed function of the inputs

    def torch(self, layer, graph):
        p = layer.proto.roi_pooling_param
        return nn_specs().ROIPooling(p.pooled_h, p.pooled_w, p.spatial_scale), []

    def onnx(self, layer, ctx):
        # onnxruntime's MaxRoiPool is Caffe's loop: round(x * scale), float bins floor/ceil, empty bin 0
        p = layer.proto.roi_pooling_param
        rois = ctx.node("Reshape", [layer.bottoms[1], ctx.ints([-1, 5])])[0]
        ctx.node("MaxRoiPool", [layer.bottoms[0], rois], [layer.tops[0]], pooled_shape=[p.pooled_h, p.pooled_w],
                 spatial_scale=float(np.float32(p.spatial_scale)))


@register_layer("PSROIPooling")
class PSROIPooling(LayerImpl):
    deterministic = True  # no parameters; the output a fixed function of the inputs

    def torch(self, layer, graph):
        p = layer.proto.psroi_pooling_param
        return nn_specs().PSROIPooling(p.output_dim, p.group_size, p.spatial_scale), []

    def onnx(self, layer, ctx):
        """Each bin's average from a float64 integral image: four Gathers, no loop over the ROIs."""
        p = layer.proto.psroi_pooling_param
        g, d = p.group_size, p.output_dim
        n, c, h, w = shape_of(layer, ctx)
        x = ctx.node("Cast", [layer.bottoms[0]], to=11)[0]
        for axis in (2, 3):
            x = ctx.node("CumSum", [x, ctx.ints([axis], "axis")])[0]
        x = ctx.node("Pad", [x, ctx.ints([0, 0, 1, 1, 0, 0, 0, 0])])[0]
        table = ctx.node("Reshape", [x, ctx.ints([-1])])[0]
        rois = ctx.node("Reshape", [layer.bottoms[1], ctx.ints([-1, 5])])[0]
        batch, x1, y1, x2, y2 = ctx.node("Split", [rois], [ctx.tmp(f"col{i}") for i in range(5)], axis=1, num_outputs=5)
        rx1, ry1, rx2, ry2 = (_c_round(ctx, v) for v in (x1, y1, x2, y2))
        scale = ctx.const(np.float32(p.spatial_scale), "spatial_scale")
        one = ctx.const(np.float32(1), "one")
        sx1, sy1 = (ctx.node("Mul", [v, scale])[0] for v in (rx1, ry1))
        sx2, sy2 = (ctx.node("Mul", [ctx.node("Add", [v, one])[0], scale])[0] for v in (rx2, ry2))
        rows = _bins(ctx, sy1, sy2, g, h)
        cols = _bins(ctx, sx1, sx2, g, w)
        b = ctx.node("Reshape", [ctx.node("Cast", [batch], to=7)[0], ctx.ints([-1, 1, 1, 1])])[0]
        ch = ctx.ints(np.arange(d * g * g).reshape(1, d, g, g).ravel(), "channels")
        ch = ctx.node("Reshape", [ch, ctx.ints([1, d, g, g])])[0]
        plane = ctx.node("Mul", [ctx.node("Add", [ctx.node("Mul", [b, ctx.ints([c], "c")])[0], ch])[0],
                                 ctx.ints([(h + 1) * (w + 1)], "plane")])[0]
        r_lo, r_hi = (ctx.node("Unsqueeze", [v, ctx.ints([1, 3], "axes")])[0] for v in rows)
        c_lo, c_hi = (ctx.node("Unsqueeze", [v, ctx.ints([1, 2], "axes")])[0] for v in cols)

        def corner(r, col):
            at = ctx.node("Add", [ctx.node("Add", [plane, ctx.node("Mul", [r, ctx.ints([w + 1], "stride")])[0]])[0], col])[0]
            return ctx.node("Gather", [table, at], axis=0)[0]

        total = ctx.node("Sub", [corner(r_hi, c_hi), corner(r_lo, c_hi)])[0]
        total = ctx.node("Add", [ctx.node("Sub", [total, corner(r_hi, c_lo)])[0], corner(r_lo, c_lo)])[0]
        area = ctx.node("Mul", [ctx.node("Sub", [r_hi, r_lo])[0], ctx.node("Sub", [c_hi, c_lo])[0]])[0]
        area = ctx.node("Cast", [area], to=11)[0]
        zero = _double(ctx, 0.0)
        mean = ctx.node("Div", [total, ctx.node("Max", [area, _double(ctx, 1.0)])[0]])[0]
        out = ctx.node("Where", [ctx.node("Greater", [area, zero])[0], mean, zero])[0]
        ctx.node("Cast", [out], [layer.tops[0]], to=1)


def _double(ctx, value: float) -> str:
    """A float64 scalar (initializers stay float32/int64: a float32 constant cast, exact for these values)."""
    return ctx.node("Cast", [ctx.const(np.float32(value), "scalar")], to=11)[0]


def _c_round(ctx, v: str) -> str:
    """C's round() (halves away from zero; ONNX Round goes to even), in float64, back to float32."""
    v = ctx.node("Cast", [v], to=11)[0]
    mag = ctx.node("Floor", [ctx.node("Add", [ctx.node("Abs", [v])[0], _double(ctx, 0.5)])[0]])[0]
    return ctx.node("Cast", [ctx.node("Mul", [ctx.node("Sign", [v])[0], mag])[0]], to=1)[0]


def _bins(ctx, start: str, end: str, g: int, limit: int) -> tuple[str, str]:
    """R-FCN's bins along one axis, (R, g) int64: floor(p*bin + start), ceil((p+1)*bin + start), in [0, limit]."""
    size = ctx.node("Max", [ctx.node("Sub", [end, start])[0], ctx.const(np.float32(0.1), "min_size")])[0]
    step = ctx.node("Div", [size, ctx.const(np.float32(g), "group")])[0]
    p = ctx.const(np.arange(g, dtype=np.float32).reshape(1, g), "bins")
    lo = ctx.node("Floor", [ctx.node("Add", [ctx.node("Mul", [p, step])[0], start])[0]])[0]
    p1 = ctx.const(np.arange(1, g + 1, dtype=np.float32).reshape(1, g), "bins_end")
    hi = ctx.node("Ceil", [ctx.node("Add", [ctx.node("Mul", [p1, step])[0], start])[0]])[0]
    lo_hi = []
    for v in (lo, hi):
        v = ctx.node("Clip", [v, ctx.const(np.float32(0), "lo"), ctx.const(np.float32(limit), "hi")])[0]
        lo_hi.append(ctx.node("Cast", [v], to=7)[0])
    return lo_hi[0], lo_hi[1]


# -- Python layers we serve ---------------------------------------------------------------------------------

class PythonLayerNote(UserWarning):
    """A well-known Python layer served by caffezoo's own implementation instead of its code."""


def _note(layer, what: str) -> None:
    p = layer.proto.python_param
    warnings.warn(PythonLayerNote(f"layer '{layer.name}': Python layer {p.module}.{p.layer} is served by caffezoo's "
                                  f"own {what} (its code is never imported)"), stacklevel=4)


@register_layer("Python")
class Python(LayerImpl):
    def serves(self, layer) -> bool:
        return python_kind(layer.proto) is not None

    def torch(self, layer, graph):
        if python_kind(layer.proto) == "identity":
            _note(layer, "test-time identity")
            return nn_specs().Identity(), []
        _note(layer, "proposal layer (py-faster-rcnn, TEST config: 6000 -> NMS 0.7 -> 300)")
        return nn_specs().Proposal(**proposal_args(layer.proto), scores_top=len(layer.tops) > 1), []

    def onnx(self, layer, ctx):
        if python_kind(layer.proto) == "identity":
            _note(layer, "test-time identity")
            ctx.node("Identity", [layer.bottoms[0]], [layer.tops[0]])
            return
        _note(layer, "proposal layer (py-faster-rcnn, TEST config: 6000 -> NMS 0.7 -> 300)")
        emit_proposal(ctx, layer, proposal_args(layer.proto))


def emit_proposal(ctx, layer, a: dict) -> None:
    """py-faster-rcnn's proposal layer in standard ops: TopK, Compress and NonMaxSuppression (boxes
    given as (y1, x1, y2 + 1, x2 + 1) so its overlap is Fast R-CNN's +1-pixel one). A second top gets
    the kept boxes' scores, (R, 1), as py-faster-rcnn's optional scores top."""
    scores_in, deltas_in, info_in = layer.bottoms
    num = len(a["anchors"])
    h, w = shape_of(layer, ctx)[2:]
    base = np.asarray(a["anchors"], dtype=np.float64)
    sy, sx = np.meshgrid(np.arange(h) * a["feat_stride"], np.arange(w) * a["feat_stride"], indexing="ij")
    shifts = np.stack([sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel()], 1).astype(np.float64)
    anchors = (base[None] + shifts[:, None]).reshape(-1, 4).astype(np.float32)
    widths = anchors[:, 2] - anchors[:, 0] + np.float32(1)
    heights = anchors[:, 3] - anchors[:, 1] + np.float32(1)
    half = np.float32(0.5)
    node, const = ctx.node, ctx.const
    scores = node("Slice", [scores_in, ctx.ints([num]), ctx.ints([2 * num]), ctx.ints([1])])[0]
    scores = node("Reshape", [node("Transpose", [scores], perm=[0, 2, 3, 1])[0], ctx.ints([-1])])[0]
    deltas = node("Reshape", [node("Transpose", [deltas_in], perm=[0, 2, 3, 1])[0], ctx.ints([-1, 4])])[0]
    dx, dy, dw, dh = (node("Reshape", [v, ctx.ints([-1])])[0]
                      for v in node("Split", [deltas], [ctx.tmp(f"d{i}") for i in range(4)], axis=1, num_outputs=4))
    cx = node("Add", [node("Mul", [dx, const(widths, "widths")])[0], const(anchors[:, 0] + half * widths, "ctr_x")])[0]
    cy = node("Add", [node("Mul", [dy, const(heights, "heights")])[0], const(anchors[:, 1] + half * heights, "ctr_y")])[0]
    pw = node("Mul", [node("Exp", [dw])[0], const(widths, "widths")])[0]
    ph = node("Mul", [node("Exp", [dh])[0], const(heights, "heights")])[0]
    info = node("Reshape", [info_in, ctx.ints([-1])])[0]
    im_h, im_w, im_scale = (node("Gather", [info, ctx.ints([i], "i")], axis=0)[0] for i in range(3))
    one, zero = const(np.float32(1), "one"), const(np.float32(0), "zero")
    max_x, max_y = node("Sub", [im_w, one])[0], node("Sub", [im_h, one])[0]

    def clip(v, hi):
        return node("Min", [node("Max", [v, zero])[0], hi])[0]

    hw, hh = node("Mul", [pw, const(half, "half")])[0], node("Mul", [ph, const(half, "half")])[0]
    x1, x2 = clip(node("Sub", [cx, hw])[0], max_x), clip(node("Add", [cx, hw])[0], max_x)
    y1, y2 = clip(node("Sub", [cy, hh])[0], max_y), clip(node("Add", [cy, hh])[0], max_y)
    min_size = node("Mul", [const(np.float32(a["min_size"]), "min_size"), im_scale])[0]
    keep = node("And", [node("GreaterOrEqual", [node("Add", [node("Sub", [x2, x1])[0], one])[0], min_size])[0],
                        node("GreaterOrEqual", [node("Add", [node("Sub", [y2, y1])[0], one])[0], min_size])[0]])[0]
    cols = [node("Unsqueeze", [node("Compress", [v, keep], axis=0)[0], ctx.ints([1], "axis")])[0] for v in (x1, y1, x2, y2)]
    boxes = node("Concat", cols, axis=1)[0]
    scores = node("Compress", [scores, keep], axis=0)[0]
    k = node("Min", [node("Shape", [scores])[0], ctx.ints([a["pre_nms_top_n"]], "pre_nms")])[0]
    top, order = node("TopK", [scores, k], [ctx.tmp("top"), ctx.tmp("order")], axis=0, largest=1, sorted=1)
    boxes = node("Gather", [boxes, order], axis=0)[0]
    bx1, by1, bx2, by2 = node("Split", [boxes], [ctx.tmp(f"b{i}") for i in range(4)], axis=1, num_outputs=4)
    nms_boxes = node("Concat", [by1, bx1, node("Add", [by2, one])[0], node("Add", [bx2, one])[0]], axis=1)[0]
    nms_boxes = node("Unsqueeze", [nms_boxes, ctx.ints([0], "axis")])[0]
    nms_scores = node("Reshape", [top, ctx.ints([1, 1, -1])])[0]
    selected = node("NonMaxSuppression", [nms_boxes, nms_scores, ctx.ints([a["post_nms_top_n"]], "post_nms"),
                                          const(np.float32(a["nms_thresh"]), "nms_thresh")])[0]
    index = node("Reshape", [node("Slice", [selected, ctx.ints([2]), ctx.ints([3]), ctx.ints([1])])[0], ctx.ints([-1])])[0]
    kept = node("Gather", [boxes, index], axis=0)[0]
    rows = node("Slice", [node("Shape", [kept])[0], ctx.ints([0]), ctx.ints([1])])[0]
    batch = node("ConstantOfShape", [node("Concat", [rows, ctx.ints([1], "one_col")], axis=0)[0]])[0]
    node("Concat", [batch, kept], [layer.tops[0]], axis=1)
    if len(layer.tops) > 1:
        node("Reshape", [node("Gather", [top, index], axis=0)[0], ctx.ints([-1, 1], "column")], [layer.tops[1]])
