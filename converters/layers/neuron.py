"""Element-wise neurons: ReLU, PReLU, ELU, Sigmoid, TanH, AbsVal, BNLL, Power, Exp, Log, Threshold, Clip,
Swish, Dropout (identity at test time, or Monte Carlo dropout with caffe-segnet's sample_weights_test)."""
from __future__ import annotations

import math
import warnings

import numpy as np

from prototxt.errors import CaffeError

from ..registry import LayerImpl, register_layer
from ._common import broadcast_shape, f32, shape_of, nn_specs


def _each(layer, ctx, emit):
    for b, t in zip(layer.bottoms, layer.tops):
        emit(b, t)


@register_layer("ReLU")
class ReLU(LayerImpl):
    deterministic = True

    def torch(self, layer, graph):
        return nn_specs().ReLU(layer.proto.relu_param.negative_slope), []

    def onnx(self, layer, ctx):
        s = layer.proto.relu_param.negative_slope
        ctx.node("Relu" if s == 0 else "LeakyRelu", [layer.bottoms[0]], [layer.tops[0]], **({} if s == 0 else {"alpha": s}))


@register_layer("PReLU")
class PReLU(LayerImpl):
    def torch(self, layer, graph):
        shape = shape_of(layer, graph)
        return nn_specs().PReLU(shape[1], layer.proto.prelu_param.channel_shared), ["weight"]

    def onnx(self, layer, ctx):
        shape = shape_of(layer, ctx)
        slope = f32(layer.blobs[0]).reshape(broadcast_shape(len(shape) - 1, 0, [-1 if slope_n(layer) > 1 else 1]))
        ctx.node("PRelu", [layer.bottoms[0], ctx.const(slope, "slope")], [layer.tops[0]])


def slope_n(layer) -> int:
    return int(np.asarray(layer.blobs[0]).size)


def exp_factors(base: float, scale: float, shift: float) -> tuple[float, float]:
    """Caffe's Exp as outer * exp(inner * x): (inner, outer) = (ln(base)*scale, base^shift)."""
    inner = (1.0 if base == -1 else math.log(base)) * scale
    with np.errstate(over="ignore"):  # base^shift in float: inf where Caffe's is
        outer = 1.0 if shift == 0 else float(np.exp(np.float32(shift)) if base == -1 else
                                             np.float32(np.float64(base) ** np.float64(shift)))
    return inner, outer


def _params(layer) -> tuple[str, dict]:
    t, p = layer.type, layer.proto
    if t == "ELU":
        return t, {"alpha": p.elu_param.alpha}
    if t == "Power":
        return t, {"power": p.power_param.power, "scale": p.power_param.scale, "shift": p.power_param.shift}
    if t == "Exp":
        return t, {"base": p.exp_param.base, "scale": p.exp_param.scale, "shift": p.exp_param.shift}
    if t == "Log":
        return t, {"base": p.log_param.base, "scale": p.log_param.scale, "shift": p.log_param.shift}
    if t == "Threshold":
        return t, {"threshold": p.threshold_param.threshold}
    if t == "Clip":
        return t, {"min": p.clip_param.min, "max": p.clip_param.max}
    if t == "Swish":
        return t, {"beta": p.swish_param.beta}
    return t, {}


@register_layer("Sigmoid", "TanH", "AbsVal", "BNLL", "ELU", "Power", "Exp", "Log", "Threshold", "Clip", "Swish")
class Elementwise(LayerImpl):
    deterministic = True

    def torch(self, layer, graph):
        op, args = _params(layer)
        return nn_specs().Elementwise(op, **args), []

    def onnx(self, layer, ctx):
        op, a = _params(layer)
        x, y = layer.bottoms[0], layer.tops[0]
        simple = {"Sigmoid": "Sigmoid", "TanH": "Tanh", "AbsVal": "Abs", "BNLL": "Softplus"}
        if op in simple:
            ctx.node(simple[op], [x], [y])
        elif op == "ELU":
            ctx.node("Elu", [x], [y], alpha=a["alpha"])
        elif op == "Threshold":
            gt = ctx.node("Greater", [x, ctx.const(np.float32(a["threshold"]), "threshold")])[0]
            ctx.node("Cast", [gt], [y], to=1)
        elif op == "Clip":
            lo, hi = ctx.const(np.float32(a["min"]), "min"), ctx.const(np.float32(a["max"]), "max")
            if a["min"] <= a["max"]:
                ctx.node("Clip", [x, lo, hi], [y])
            else:  # Caffe's max(min, min(x, max)) is `min` everywhere; ONNX Clip would give `max`
                ctx.node("Max", [ctx.node("Min", [x, hi])[0], lo], [y])
        elif op == "Swish":
            bx = x if a["beta"] == 1 else ctx.node("Mul", [x, ctx.const(np.float32(a["beta"]), "beta")])[0]
            ctx.node("Mul", [x, ctx.node("Sigmoid", [bx])[0]], [y])
        elif op == "Exp":
            self._exp(ctx, a, x, y)
        else:
            self._affine_then(ctx, op, a, x, y)

    @staticmethod
    def _exp(ctx, a, x, y):
        """Caffe's Exp: outer * exp(inner * x), inner = ln(base)*scale, outer = base^shift."""
        inner, outer = (float(np.float32(v)) for v in exp_factors(a["base"], a["scale"], a["shift"]))
        z = ctx.node("Mul", [x, ctx.const(np.float32(inner), "inner_scale")])[0] if inner != 1 else x
        if outer == 1:
            ctx.node("Exp", [z], [y])
        else:
            ctx.node("Mul", [ctx.node("Exp", [z])[0], ctx.const(np.float32(outer), "outer_scale")], [y])

    @staticmethod
    def _affine_then(ctx, op, a, x, y):
        """Power / Log: f(shift + scale * x)."""
        last = {"Power": a.get("power") == 1, "Log": False}[op]
        z = x
        if a["scale"] != 1:
            z = ctx.node("Mul", [z, ctx.const(np.float32(a["scale"]), "scale")], [y] if last and a["shift"] == 0 else None)[0]
        if a["shift"] != 0:
            z = ctx.node("Add", [z, ctx.const(np.float32(a["shift"]), "shift")], [y] if last else None)[0]
        if op == "Power":
            if a["power"] != 1:
                ctx.node("Pow", [z, ctx.const(np.float32(a["power"]), "power")], [y])
            elif z == x:
                ctx.node("Identity", [x], [y])
        elif a["base"] == -1:
            ctx.node("Log", [z], [y])
        else:
            ln = ctx.node("Log", [z])[0]
            ctx.node("Mul", [ln, ctx.const(np.float32(1.0 / math.log(a["base"])), "base_scale")], [y])


class MonteCarloDropoutNote(UserWarning):
    """A Dropout that samples at test time (caffe-segnet's sample_weights_test): the outputs are random."""


def _note_sampling(layer) -> None:
    warnings.warn(MonteCarloDropoutNote(
        f"layer '{layer.name}': Dropout with sample_weights_test samples a fresh mask at every forward pass "
        f"(Monte Carlo dropout, as caffe-segnet at test): this net's outputs are random by design; average "
        f"many passes"), stacklevel=4)


def _checked_ratio(layer) -> float:
    """The dropout_ratio, refused in one line where no output follows from it: outside [0, 1] (torch's
    dropout raises), or 1 where Caffe divides by 1 - ratio (sampling at test, or scale_train false)."""
    p = layer.proto.dropout_param
    ratio = float(p.dropout_ratio)
    divides = p.sample_weights_test or not p.scale_train
    if not (0.0 <= ratio < 1.0 or (ratio == 1.0 and not divides)):
        raise CaffeError(f"layer '{layer.name}' (Dropout): dropout_ratio {ratio:g} must be "
                         + ("at least 0 and below 1 (with sample_weights_test or scale_train false, Caffe scales "
                            "by 1 / (1 - ratio))" if divides else "from 0 to 1"))
    return ratio


def unscaled_test_factor(p) -> float | None:
    """caffe-fast-rcnn's Dropout with scale_train false: the kept values are not scaled in training, so at test
    the output is the input times 1 / scale_, scale_ = 1 / (1 - ratio) in float (dropout_layer.cpp); None
    for Caffe's own Dropout (scale_train true: the identity at test)."""
    if p.scale_train:
        return None
    scale = np.float32(1.0 / (1.0 - float(np.float32(p.dropout_ratio))))
    return float(np.float32(1.0 / float(scale)))


@register_layer("Dropout")
class Dropout(LayerImpl):
    """caffe-segnet's dropout_layer.cpp at test with sample_weights_test: mask ~ Bernoulli(1 - ratio) per
    value, top = bottom * mask / (1 - ratio), as in training; without it a copy, or with caffe-fast-rcnn's
    scale_train false the input times 1 - ratio."""

    def random_at_test(self, layer) -> bool:
        return layer.proto.dropout_param.sample_weights_test

    def torch(self, layer, graph):
        _checked_ratio(layer)
        p = layer.proto.dropout_param
        sample = self.random_at_test(layer)
        if sample:
            _note_sampling(layer)
        factor = unscaled_test_factor(p)
        if factor is None:
            return nn_specs().Dropout(p.dropout_ratio, sample), []
        return nn_specs().Dropout(p.dropout_ratio, sample, scale_train=False, test_scale=factor), []

    def onnx(self, layer, ctx):
        ratio = _checked_ratio(layer)
        p = layer.proto.dropout_param
        if not self.random_at_test(layer):
            factor = unscaled_test_factor(p)
            if factor is None:
                ctx.node("Identity", [layer.bottoms[0]], [layer.tops[0]])
            else:
                ctx.node("Mul", [layer.bottoms[0], ctx.const(np.float32(factor), "test_scale")], [layer.tops[0]])
            return
        _note_sampling(layer)
        # Not ONNX Dropout with training_mode true: onnxruntime's EliminateDropout (basic optimisations, on by
        # default) removes any Dropout between two nodes whatever its training_mode, so the net would silently
        # be the identity. The mask from RandomUniformLike instead: kept where u < 1 - ratio, as Caffe's
        # Bernoulli(1 - ratio); the kept values times 1/(1 - ratio) (not scaled with scale_train false).
        x = layer.bottoms[0]
        u = ctx.node("RandomUniformLike", [x], dtype=1, low=0.0, high=1.0)[0]
        keep = ctx.node("Cast", [ctx.node("Less", [u, ctx.const(np.float32(1 - ratio), "keep")])[0]], to=1)[0]
        if p.scale_train:
            keep = ctx.node("Mul", [keep, ctx.const(np.float32(1 / (1 - ratio)), "scale")])[0]
        ctx.node("Mul", [x, keep], [layer.tops[0]])
