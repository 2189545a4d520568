"""ENet (TimoSaemann/ENet, the Caffe fork's BN and mask Upsample), its deploy release with BatchNorm
merged into the convolutions: an initial block (a strided 3x3 beside a max pool), bottlenecks (1x1,
then a 3x3, dilated or a 5x1 + 1x5 pair, then 1x1, added to the input), downsampling bottlenecks whose
pool keeps its mask, upsampling ones that unpool with it, and a final 2x deconvolution. Every layer
writes its own top; the encoder's activations are PReLUs, the decoder's ReLUs."""
from __future__ import annotations

from typing import Any

from ._net import Net
from ._registry import register

BIAS = {"bias_term": True}
# stage 2 and 3's bottlenecks 1..8: None a plain 3x3, an int its dilation, "asym" the 5x1 + 1x5 pair
PATTERN = (None, 2, "asym", 4, None, 8, "asym", 16)


def _act(n: Net, name: str, x: str, decoder: bool) -> str:
    return n.layer("ReLU" if decoder else "PReLU", name, x)


def _middle(n: Net, b: str, x: str, width: int, kind: Any, decoder: bool) -> str:
    """conv<b>_1: the bottleneck's spatial convolution (and its activation)."""
    if kind == "asym":
        x = n.conv(f"conv{b}_1_a", x, num_output=width, **BIAS, pad=1, stride=1, kernel_h=5, kernel_w=1)
        x = n.conv(f"conv{b}_1", x, num_output=width, **BIAS, pad=1, stride=1, kernel_h=1, kernel_w=5)
    else:
        dilated = {"dilation": kind} if kind else {}
        x = n.conv(f"conv{b}_1", x, num_output=width, **BIAS, pad=kind or 1, kernel_size=3, stride=1, **dilated)
    return _act(n, f"prelu{b}_1", x, decoder)


def _bottleneck(n: Net, b: str, x: str, width: int, out: int, kind: Any = None, decoder: bool = False) -> str:
    y = _act(n, f"prelu{b}_0", n.conv(f"conv{b}_0", x, num_output=width, **BIAS, kernel_size=1, stride=1), decoder)
    y = n.conv(f"conv{b}_2", _middle(n, b, y, width, kind, decoder), num_output=out, **BIAS, kernel_size=1, stride=1)
    return _act(n, f"prelu{b}_4", n.eltwise(f"eltwise{b}_4", [x, y]), decoder)


def _down(n: Net, b: str, x: str, width: int, out: int) -> str:
    y = n.layer("PReLU", f"prelu{b}_0", n.conv(f"conv{b}_0", x, num_output=width, **BIAS, kernel_size=2, stride=2))
    y = n.conv(f"conv{b}_2", _middle(n, b, y, width, None, False), num_output=out, **BIAS, kernel_size=1, stride=1)
    p = n.layer("Pooling", f"pool{b}_4", x, [f"pool{b}_4", f"pool{b}_4_mask"], pool="MAX", kernel_size=2, stride=2)
    p = n.conv(f"conv{b}_4", p, num_output=out, **BIAS, kernel_size=1, stride=1)
    return n.layer("PReLU", f"prelu{b}_4", n.eltwise(f"eltwise{b}_4", [p, y]))


def _up(n: Net, b: str, x: str, width: int, out: int, mask: str) -> str:
    y = n.conv(f"conv{b}_0", x, num_output=width, **BIAS, kernel_size=1, stride=1)
    y = n.layer("ReLU", f"prelu{b}_0", y)
    y = n.layer("Deconvolution", f"deconv{b}_1", y, num_output=width, **BIAS, kernel_size=2, stride=2)
    y = n.layer("ReLU", f"prelu{b}_1", n.layer("BN", f"bn{b}_1", y, bn_mode="INFERENCE"))
    y = n.conv(f"conv{b}_2", y, num_output=out, **BIAS, kernel_size=1, stride=1)
    s = n.conv(f"conv{b}_4", x, num_output=out, **BIAS, kernel_size=1, stride=1)
    s = n.layer("Upsample", f"upsample{b}_4", [s, mask], scale=2)
    return n.layer("ReLU", f"prelu{b}_4", n.eltwise(f"eltwise{b}_4", [s, y]))


@register("enet_cityscapes", classes=19)
def enet(classes: int):
    n = Net("ENet", (1, 3, 512, 1024))
    c = n.conv("conv0_1", "data", num_output=13, **BIAS, pad=1, kernel_size=3, stride=2)
    p = n.pool("pool0_1", "data", "MAX", kernel_size=2, stride=2)
    x = n.concat("concat0_1", [c, p], axis=1)
    x = n.layer("PReLU", "prelu0_1", n.layer("BN", "bn0_1", x, bn_mode="INFERENCE"))
    x = _down(n, "1_0", x, 16, 64)
    for i in range(1, 5):
        x = _bottleneck(n, f"1_{i}", x, 16, 64)
    x = _down(n, "2_0", x, 32, 128)
    for stage in (2, 3):
        for i, kind in enumerate(PATTERN, start=1):
            x = _bottleneck(n, f"{stage}_{i}", x, 32, 128, kind)
    x = _up(n, "4_0", x, 16, 64, "pool2_0_4_mask")
    for i in (1, 2):
        x = _bottleneck(n, f"4_{i}", x, 16, 64, decoder=True)
    x = _up(n, "5_0", x, 4, 16, "pool1_0_4_mask")
    x = _bottleneck(n, "5_1", x, 4, 16, decoder=True)
    n.layer("Deconvolution", "deconv6_0_0", x, num_output=classes, **BIAS, kernel_size=2, stride=2)
    return n.proto
