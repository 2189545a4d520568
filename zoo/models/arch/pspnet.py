"""PSPNet (hszhao/PSPNet, its Caffe fork's BN and Interp): a dilated ResNet (three 3x3 convolutions as
the stem, stages 4 and 5 dilated 2 and 4 instead of strided, output stride 8), the pyramid pooling module
(average pools of 1, 2, 3 and 6 bins, each 1x1-reduced and interpolated back), a 3x3 fusion, the
classifier and an 8x Interp to the input size."""
from __future__ import annotations

from typing import Any

from ._net import Net
from ._registry import register

BN = {"frozen": True, "momentum": 0.95}
# (stage, bottleneck width, output channels, first stride, dilation)
STAGES = ((2, 64, 256, 1, 1), (3, 128, 512, 2, 1), (4, 256, 1024, 1, 2), (5, 512, 2048, 1, 4))
PYRAMID = (1, 2, 3, 6)  # bins per side; the pools run in the published order 1, 2, 3, 6 and concat 6, 3, 2, 1


def _conv_bn(n: Net, name: str, x: str, relu: bool = True, **param: Any) -> str:
    x = n.layer("BN", f"{name}/bn", n.conv(name, x, bias_term=False, **param), name, **BN)
    return n.relu(f"{name}/relu", x) if relu else x


def _block(n: Net, b: str, x: str, width: int, out: int, stride: int, dilation: int, project: bool,
           strided_3x3: bool) -> str:
    """A bottleneck; its stride on the first 1x1 (PSPNet50) or on the 3x3 (``strided_3x3``: PSPNet101)."""
    y = _conv_bn(n, f"{b}_1x1_reduce", x, num_output=width, pad=0, kernel_size=1, stride=1 if strided_3x3 else stride)
    dilated = {"dilation": dilation} if dilation > 1 else {}
    y = _conv_bn(n, f"{b}_3x3", y, num_output=width, pad=dilation, kernel_size=3,
                 stride=stride if strided_3x3 else 1, **dilated)
    y = _conv_bn(n, f"{b}_1x1_increase", y, False, num_output=out, pad=0, kernel_size=1, stride=1)
    if project:
        x = _conv_bn(n, f"{b}_1x1_proj", x, False, num_output=out, pad=0, kernel_size=1, stride=stride)
    return n.relu(f"{b}/relu", n.layer("Eltwise", b, [x, y], operation="SUM"))


@register("pspnet50_ade20k", size=473, blocks=(3, 4, 6, 3), classes=150, strided_3x3=False)
@register("pspnet101_voc2012", size=473, blocks=(3, 4, 23, 3), classes=21, strided_3x3=True)
def pspnet(size: int, blocks: tuple[int, ...], classes: int, strided_3x3: bool):
    n = Net("", (1, 3, size, size), input_layer="input")
    x = _conv_bn(n, "conv1_1_3x3_s2", "data", num_output=64, pad=1, kernel_size=3, stride=2)
    x = _conv_bn(n, "conv1_2_3x3", x, num_output=64, pad=1, kernel_size=3, stride=1)
    x = _conv_bn(n, "conv1_3_3x3", x, num_output=128, pad=1, kernel_size=3, stride=1)
    x = n.pool("pool1_3x3_s2", x, "MAX", kernel_size=3, stride=2, pad=1)
    for (stage, width, out, stride, dilation), count in zip(STAGES, blocks):
        for i in range(1, count + 1):
            x = _block(n, f"conv{stage}_{i}", x, width, out, stride if i == 1 else 1, dilation, i == 1,
                       strided_3x3)
    side = (size - 1) // 8 + 1  # the feature map: 60 for 473
    levels = {}
    for bins in PYRAMID:
        p = n.pool(f"{x}_pool{bins}", x, "AVE", kernel_size=side // bins, stride=side // bins)
        p = _conv_bn(n, f"{p}_conv", p, num_output=512, kernel_size=1, stride=1)
        levels[bins] = n.layer("Interp", f"{x}_pool{bins}_interp", p, height=side, width=side)
    y = n.concat(f"{x}_concat", [x, *(levels[b] for b in reversed(PYRAMID))])
    y = _conv_bn(n, "conv5_4", y, num_output=512, pad=1, kernel_size=3, stride=1)
    y = n.dropout("conv5_4/dropout", y, 0.1)
    y = n.conv("conv6", y, num_output=classes, kernel_size=1, stride=1)
    n.layer("Interp", "conv6_interp", y, zoom_factor=8)
    return n.proto
