"""Segmentation fork layers: Interp (PSPNet/DeepLab), the two forks' BN (SegNet/ENet and PSPNet),
Upsample (SegNet's max-unpooling by a mask; the one-bottom nearest form) and DenseImageData's shape."""
from __future__ import annotations

import numpy as np

from prototxt import shapes
from prototxt.shapes import ShapeResult

from ..registry import LayerImpl, register_layer
from ._common import f32, shape_of, top_shape, nn_specs


# -- Interp -----------------------------------------------------------------------------------------

def _interp_shape(layer, bottoms):
    """InterpLayer::Reshape: crop by pad_beg/pad_end (<= 0), then a second bottom's size, or the first of
    shrink, zoom, height/width, shrink and zoom that the parameters give."""
    p = layer.interp_param
    if p.pad_beg > 0 or p.pad_end > 0:
        shapes.fail(layer, f"pad_beg {p.pad_beg} / pad_end {p.pad_end} must be <= 0 (Interp only crops)")
    n, c, h, w = bottoms[0]
    h_in, w_in = h + p.pad_beg + p.pad_end, w + p.pad_beg + p.pad_end
    if h_in <= 0 or w_in <= 0:
        shapes.fail(layer, f"cropping {-p.pad_beg}+{-p.pad_end} leaves nothing of {h}x{w}")
    shrink, zoom = p.HasField("shrink_factor"), p.HasField("zoom_factor")
    if len(bottoms) > 1:  # the forks' "resize to a reference blob" form: its height and width
        return ShapeResult([(n, c) + tuple(bottoms[1][2:4])])
    if (shrink and p.shrink_factor < 1) or (zoom and p.zoom_factor < 1):
        shapes.fail(layer, "shrink_factor and zoom_factor must be >= 1")
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
        shapes.fail(layer, "give zoom_factor, shrink_factor or height and width in interp_param")
    if min(out) <= 0:
        shapes.fail(layer, f"output size {out} must be positive")
    return ShapeResult([(n, c) + tuple(out)])


@register_layer("Interp", shape=_interp_shape)
class Interp(LayerImpl):
    deterministic = True  # no parameters; the output a fixed function of the inputs

    def _args(self, layer, graph):
        p = layer.proto.interp_param
        h, w = graph.values[layer.tops[0]].shape[2:]
        return dict(crop=[-p.pad_beg, -p.pad_end], height=h, width=w)

    def torch(self, layer, graph):
        return nn_specs().Interp(**self._args(layer, graph)), []

    def onnx(self, layer, ctx):
        a = self._args(layer, ctx.graph)
        x = layer.bottoms[0]
        h, w = shape_of(layer, ctx)[2:]
        beg, end = a["crop"]
        if beg or end:
            x = ctx.node("Slice", [x, ctx.ints([beg, beg]), ctx.ints([h - end, w - end]), ctx.ints([2, 3])])[0]
        if (h - beg - end, w - beg - end) == (a["height"], a["width"]):
            ctx.node("Identity", [x], [layer.tops[0]])
            return
        ctx.node("Resize", [x, "", "", ctx.ints([a["height"], a["width"]], "sizes")], [layer.tops[0]],
                 mode="linear", coordinate_transformation_mode="align_corners", axes=[2, 3])


# -- BN ---------------------------------------------------------------------------------------------

PSPNET_FIELDS = ("slope_filler", "bias_filler", "momentum", "frozen")


def bn_mode(proto) -> str:
    """Which fork's BN: PSPNet's (slope/bias/mean/variance, 4 blobs) by its own fields or 4 param specs,
    else SegNet/ENet's (scale/shift, 2 blobs) in its bn_mode."""
    p = proto.bn_param
    if any(p.HasField(f) for f in PSPNET_FIELDS) or len(proto.param) == 4:
        return "PSPNET"
    return "INFERENCE" if p.bn_mode == p.INFERENCE else "LEARN"


def _bn_shape(layer, bottoms):
    if len(bottoms[0]) != 4:
        shapes.fail(layer, f"BN needs a 4-axis input (N, C, H, W), got {bottoms[0]}")
    if len(layer.top) > 1:
        shapes.fail(layer, "the batch mean/variance tops of SegNet's BN are training outputs; deploy nets have one top")
    blob = (1, bottoms[0][1], 1, 1)
    return ShapeResult([bottoms[0]], [blob] * (4 if bn_mode(layer) == "PSPNET" else 2))


def _bn_eps(layer) -> float:
    # SegNet's layer fixes var_eps_ = 1e-9 and has no eps field; PSPNet reads bn_param.eps
    return layer.proto.bn_param.eps if bn_mode(layer.proto) == "PSPNET" else 1e-9


@register_layer("BN", shape=_bn_shape)
class BN(LayerImpl):
    def torch(self, layer, graph):
        mode = bn_mode(layer.proto)
        names = ["weight", "bias", "mean", "variance"] if mode == "PSPNET" else ["weight", "bias"]
        return nn_specs().BN(shape_of(layer, graph)[1], mode, _bn_eps(layer)), names

    def onnx(self, layer, ctx):
        mode = bn_mode(layer.proto)
        x, y = layer.bottoms[0], layer.tops[0]
        scale, shift = (f32(b).reshape(1, -1, 1, 1) for b in layer.blobs[:2])
        if mode == "LEARN":  # this batch's statistics, var = E[x^2] - E[x]^2, as SegNet's layer
            axes = ctx.ints([0, 2, 3], "axes")
            mean = ctx.node("ReduceMean", [x, axes], keepdims=1)[0]
            square = ctx.node("ReduceMean", [ctx.node("Mul", [x, x])[0], axes], keepdims=1)[0]
            var = ctx.node("Sub", [square, ctx.node("Mul", [mean, mean])[0]])[0]
            std = ctx.node("Sqrt", [ctx.node("Add", [var, ctx.const(np.float32(1e-9), "eps")])[0]])[0]
            x = ctx.node("Div", [ctx.node("Sub", [x, mean])[0], std])[0]
        elif mode == "PSPNET":
            mean, var = (f32(b).reshape(1, -1, 1, 1) for b in layer.blobs[2:4])
            std = np.sqrt(var + np.float32(_bn_eps(layer)), dtype=np.float32)
            x = ctx.node("Div", [ctx.node("Sub", [x, ctx.const(mean, "mean")])[0], ctx.const(std, "std")])[0]
        scaled = ctx.node("Mul", [x, ctx.const(scale, "scale")])[0]
        ctx.node("Add", [scaled, ctx.const(shift, "shift")], [y])


# -- Upsample -----------------------------------------------------------------------------------------

def _upsample_shape(layer, bottoms):
    """SegNet's UpsampleLayer::Reshape with a mask bottom: upsample_h/w if given, else H * scale
    (minus 1 where pad_out_h/w, which needs scale 2); one bottom: nearest, H * scale."""
    p = layer.upsample_param
    n, c, h, w = bottoms[0]
    if len(bottoms) == 1:
        if p.scale < 1:
            shapes.fail(layer, f"scale {p.scale} must be >= 1")
        return ShapeResult([(n, c, h * p.scale, w * p.scale)])
    if bottoms[1] != bottoms[0]:
        shapes.fail(layer, f"the mask {bottoms[1]} must have the input's shape {bottoms[0]}")
    if p.HasField("upsample_h") and p.HasField("upsample_w"):
        out = (p.upsample_h, p.upsample_w)
    else:
        sh, sw = (p.scale_h, p.scale_w) if p.HasField("scale_h") else (p.scale, p.scale)
        if (p.pad_out_h and sh != 2) or (p.pad_out_w and sw != 2):
            shapes.fail(layer, "pad_out_h/pad_out_w work only with scale 2")
        out = (h * sh - int(p.pad_out_h), w * sw - int(p.pad_out_w))
    if min(out) <= 1:
        shapes.fail(layer, f"upsampled size {out} must be > 1")
    return ShapeResult([(n, c) + tuple(out)])


@register_layer("Upsample", shape=_upsample_shape)
class Upsample(LayerImpl):
    deterministic = True  # no parameters; the output a fixed function of the inputs

    def torch(self, layer, graph):
        if len(layer.bottoms) == 1:
            return nn_specs().UpsampleNearest(layer.proto.upsample_param.scale), []
        return nn_specs().UpsampleMask(*graph.values[layer.tops[0]].shape[2:]), []

    def onnx(self, layer, ctx):
        x = layer.bottoms[0]
        if len(layer.bottoms) == 1:
            s = float(layer.proto.upsample_param.scale)
            ctx.node("Resize", [x, "", ctx.const(np.array([s, s], np.float32), "scales")], [layer.tops[0]],
                     mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor", axes=[2, 3])
            return
        # scatter each value to its mask position in a zero plane (N, C, H*W), as SegNet's loop
        h, w = top_shape(layer, ctx)[2:]
        flat = ctx.ints([0, 0, -1], "flat")
        values = ctx.node("Reshape", [x, flat])[0]
        index = ctx.node("Cast", [ctx.node("Reshape", [layer.bottoms[1], flat])[0]], to=7)[0]
        nc = ctx.node("Slice", [ctx.node("Shape", [x])[0], ctx.ints([0]), ctx.ints([2])])[0]
        size = ctx.node("Concat", [nc, ctx.ints([h * w], "plane")], axis=0)[0]
        zeros = ctx.node("ConstantOfShape", [size])[0]
        scattered = ctx.node("ScatterElements", [zeros, index, values], axis=2)[0]
        ctx.node("Reshape", [scattered, ctx.ints([0, 0, h, w])], [layer.tops[0]])


# -- DenseImageData -------------------------------------------------------------------------------------

@shapes.register_shape_rule("DenseImageData")
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
