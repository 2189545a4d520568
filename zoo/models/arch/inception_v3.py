"""Inception v3 (Szegedy et al. 2015) as soeaver/caffe-model converted it from MXNet.

Every convolution is conv + BatchNorm + Scale + ReLU named <conv>_bn, <conv>_scale, <conv>_relu (the
stem names its ReLUs its own way); 1x7, 7x1, 1x3 and 3x1 convolutions give kernel_h and kernel_w.
Layers are appended in call order, which is the publisher's order: branches left to right.
"""
from __future__ import annotations

from ._net import Net
from ._registry import register

BN = {"use_global_stats": True, "eps": 0.001}


@register("inception_v3")
def inception_v3():
    n = Net("", (1, 3, 299, 299), input_layer="input")
    u = _Units(n)
    x = u.conv("conv1_3x3_s2", "data", 32, 3, stride=2, relu="conv1_3x3_relu")
    x = u.conv("conv2_3x3_s1", x, 32, 3, relu="conv2_3x3_relu")
    x = u.conv("conv3_3x3_s1", x, 64, 3, pad=1, relu="conv3_3x3_relu")
    x = u.conv("conv4_3x3_reduce", u.pool("pool1_3x3_s2", x, "MAX", 2), 80, relu="conv4_relu_3x3_reduce")
    x = u.pool("pool2_3x3_s2", u.conv("conv4_3x3", x, 192, 3, relu="conv4_relu_3x3"), "MAX", 2)
    for i, proj in enumerate((32, 64, 64), start=1):
        x = _inception_a(u, f"inception_a{i}", x, proj)
    x = _reduction_a(u, x)
    for i, width in enumerate((128, 160, 160, 192), start=1):
        x = _inception_b(u, f"inception_b{i}", x, width)
    x = _reduction_b(u, x)
    for i, pool in enumerate(("AVE", "MAX"), start=1):  # the converted model really max-pools in c2
        x = _inception_c(u, f"inception_c{i}", x, pool)
    x = n.pool("pool_8x8_s1", x, "AVE", global_pooling=True)
    x = n.dropout("pool_8x8_s1_drop", x, 0.2, top="pool_8x8_s1_drop")
    n.softmax("prob", n.ip("classifier", x, num_output=1000))
    return n.proto


class _Units:
    def __init__(self, n: Net) -> None:
        self.n = n

    def conv(self, name: str, bottom: str, num_output: int, kernel: int | tuple[int, int] = 1, stride: int = 1,
             pad: int = 0, relu: str | None = None) -> str:
        if isinstance(kernel, tuple):
            kh, kw = kernel
            geometry = {"stride": stride, "pad_h": kh // 2, "pad_w": kw // 2, "kernel_h": kh, "kernel_w": kw}
        else:
            geometry = {"pad": pad, "kernel_size": kernel, "stride": stride}
        x = self.n.conv(name, bottom, num_output=num_output, bias_term=False, **geometry)
        return self.n.relu(relu or f"{name}_relu", self.n.bn_scale(f"{name}_bn", f"{name}_scale", x, **BN))

    def pool(self, name: str, bottom: str, method: str, stride: int = 1) -> str:
        pad = {"pad": 1} if stride == 1 else {}  # stride 1 pools keep the size
        return self.n.pool(name, bottom, method, kernel_size=3, stride=stride, **pad)

    def chain(self, p: str, bottom: str, *units: tuple) -> str:
        """Convolutions one after another: each unit is (suffix, num_output, kernel[, pad])."""
        x = bottom
        for suffix, num_output, kernel, *pad in units:
            x = self.conv(f"{p}_{suffix}", x, num_output, kernel, pad=pad[0] if pad else 0)
        return x


def _inception_a(u: _Units, p: str, x: str, proj: int) -> str:
    b1 = u.conv(f"{p}_1x1", x, 64)
    b5 = u.chain(p, x, ("5x5_reduce", 48, 1), ("5x5", 64, 5, 2))
    b3 = u.chain(p, x, ("3x3_reduce", 64, 1), ("3x3_1", 96, 3, 1), ("3x3_2", 96, 3, 1))
    bp = u.conv(f"{p}_pool_proj", u.pool(f"{p}_pool", x, "AVE"), proj)
    return u.n.concat(f"{p}_output", [b1, b5, b3, bp])


def _reduction_a(u: _Units, x: str) -> str:
    b3 = u.conv("reduction_a_3x3", x, 384, 3, stride=2)
    bd = u.chain("reduction_a", x, ("3x3_2_reduce", 64, 1), ("3x3_2", 96, 3, 1))
    bd = u.conv("reduction_a_3x3_3", bd, 96, 3, stride=2)
    return u.n.concat("reduction_a_concat", [b3, bd, u.pool("reduction_a_pool", x, "MAX", 2)])


def _inception_b(u: _Units, p: str, x: str, m: int) -> str:
    b1 = u.conv(f"{p}_1x1_2", x, 192)
    b7 = u.chain(p, x, ("1x7_reduce", m, 1), ("1x7", m, (1, 7)), ("7x1", 192, (7, 1)))
    bd = u.chain(p, x, ("7x1_reduce", m, 1), ("7x1_2", m, (7, 1)), ("1x7_2", m, (1, 7)), ("7x1_3", m, (7, 1)),
                 ("1x7_3", 192, (1, 7)))
    bp = u.conv(f"{p}_1x1", u.pool(f"{p}_pool_ave", x, "AVE"), 192)
    return u.n.concat(f"{p}_concat", [b1, b7, bd, bp])


def _reduction_b(u: _Units, x: str) -> str:
    b3 = u.conv("reduction_b_3x3", u.conv("reduction_b_3x3_reduce", x, 192), 320, 3, stride=2)
    b7 = u.chain("reduction_b", x, ("1x7_reduce", 192, 1), ("1x7", 192, (1, 7)), ("7x1", 192, (7, 1)))
    b7 = u.conv("reduction_b_3x3_2", b7, 192, 3, stride=2)
    return u.n.concat("reduction_b_concat", [b3, b7, u.pool("reduction_b_pool", x, "MAX", 2)])


def _inception_c(u: _Units, p: str, x: str, pool: str) -> str:
    b1 = u.conv(f"{p}_1x1_2", x, 320)
    r = u.conv(f"{p}_1x3_reduce", x, 384)
    b13, b31 = u.conv(f"{p}_1x3", r, 384, (1, 3)), u.conv(f"{p}_3x1", r, 384, (3, 1))
    d = u.chain(p, x, ("3x3_reduce", 448, 1), ("3x3", 384, 3, 1))
    d13, d31 = u.conv(f"{p}_1x3_2", d, 384, (1, 3)), u.conv(f"{p}_3x1_2", d, 384, (3, 1))
    bp = u.conv(f"{p}_1x1", u.pool(f"{p}_pool", x, pool), 192)
    return u.n.concat(f"{p}_concat", [b1, b13, b31, d13, d31, bp])
