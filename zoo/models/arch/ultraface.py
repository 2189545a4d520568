"""Linzaer's Ultra-Light-Fast-Generic-Face-Detector-1MB, versions RFB and slim at 320x240, as its publisher
converted it from PyTorch through ONNX: BatchNorm folded into the convolutions, every parameter written
out, and layers named by their ONNX value numbers. `Ids` hands out those numbers the way the export
did (a folded BatchNorm, a ReLU and the shape nodes before a Reshape each used some)."""
from __future__ import annotations

from ._net import Net
from ._registry import register


class Ids:
    """The ONNX value numbers, in export order."""

    def __init__(self, start: int) -> None:
        self.next = start

    def take(self, used: int) -> str:
        """The next number, then skip the ``used`` numbers this node's export consumed."""
        name, self.next = str(self.next), self.next + used
        return name


def _conv(n: Net, ids: Ids, x: str, out: int, k: int = 3, stride: int = 1, group: int = 1, dilation: int = 1,
          bn: bool = True, relu: bool = True) -> str:
    """A convolution (with its BatchNorm folded in when ``bn``), then a ReLU when ``relu``."""
    pad = dilation * (k // 2)
    x = n.conv(ids.take(2 if bn else 1), x, num_output=out, bias_term=True, group=group, pad_h=pad, pad_w=pad,
               kernel_h=k, kernel_w=k, stride_h=stride, stride_w=stride, dilation=dilation)
    return n.layer("ReLU", ids.take(1), x) if relu else x


def _dw(n: Net, ids: Ids, x: str, channels: int, out: int, stride: int = 1) -> str:
    """MobileNet's depthwise 3x3 then pointwise 1x1, both with BatchNorm and ReLU."""
    return _conv(n, ids, _conv(n, ids, x, channels, stride=stride, group=channels), out, k=1)


def _rfb(n: Net, ids: Ids, x: str) -> str:
    """BasicRFB(64, 64): three branches of growing dilation (1x1 8 ch, then 3x3s), concatenated, a 1x1
    back to 64 plus a 1x1 shortcut, a ReLU."""
    branches = []
    for widths, dilation in (((16,), 2), ((16,), 3), ((12, 16), 5)):
        y = _conv(n, ids, x, 8, k=1, relu=False)
        for w in widths:
            y = _conv(n, ids, y, w)
        branches.append(_conv(n, ids, y, 16, dilation=dilation, relu=False))
    y = _conv(n, ids, n.concat(ids.take(1), branches, axis=1), 64, k=1, relu=False)
    shortcut = _conv(n, ids, x, 64, k=1, relu=False)
    y = n.layer("Eltwise", ids.take(1), [y, shortcut], operation="SUM")
    return n.layer("ReLU", ids.take(1), y)


def _heads(n: Net, ids: Ids, x: str, channels: int, priors: int, separable: bool = True) -> tuple[str, str]:
    """(scores, boxes) of one source: a depthwise 3x3 + ReLU + 1x1 (the last source: a plain 3x3), to
    NHWC, reshaped to one row per prior."""
    out = []
    for per_prior in (2, 4):
        if separable:
            y = _conv(n, ids, x, channels, group=channels, bn=False)
            y = _conv(n, ids, y, per_prior * priors, k=1, bn=False, relu=False)
        else:
            y = _conv(n, ids, x, per_prior * priors, bn=False, relu=False)
        y = n.layer("Permute", ids.take(10), y, order=[0, 2, 3, 1])
        out.append(n.layer("Reshape", ids.take(1), y, shape={"dim": [1, -1, per_prior]}))
    return out[0], out[1]


@register("ultraface_rfb320", first_id=245, rfb=True)
@register("ultraface_slim320", first_id=185, rfb=False)
def ultraface(first_id: int, rfb: bool):
    """version-RFB ends its first stage in a BasicRFB, version-slim in one more depthwise block."""
    n = Net("", (1, 3, 240, 320), input_layer="input", blob="input")
    ids = Ids(first_id)
    x = _conv(n, ids, "input", 16, stride=2)
    for channels, out, stride in ((16, 32, 1), (32, 32, 2), (32, 32, 1), (32, 64, 2), (64, 64, 1), (64, 64, 1)):
        x = _dw(n, ids, x, channels, out, stride)
    x = _rfb(n, ids, x) if rfb else _dw(n, ids, x, 64, 64)
    heads = [_heads(n, ids, x, 64, 3)]
    x = _dw(n, ids, x, 64, 128, 2)
    for _ in range(2):
        x = _dw(n, ids, x, 128, 128)
    heads.append(_heads(n, ids, x, 128, 2))
    x = _dw(n, ids, _dw(n, ids, x, 128, 256, 2), 256, 256)
    heads.append(_heads(n, ids, x, 256, 2))
    x = _conv(n, ids, x, 64, k=1, bn=False)
    x = _conv(n, ids, _conv(n, ids, x, 64, stride=2, group=64, bn=False), 256, k=1, bn=False)
    heads.append(_heads(n, ids, x, 256, 3, separable=False))
    scores = n.concat(ids.take(1), [h[0] for h in heads], axis=1)
    n.concat("boxes", [h[1] for h in heads], axis=1)
    n.layer("Softmax", "scores", scores, axis=2)
    return n.proto
