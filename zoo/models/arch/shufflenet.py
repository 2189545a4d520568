"""ShuffleNet v2 (Ma et al.) as miaow1988/ShuffleNet_V2_pytorch_caffe converted it from PyTorch: every
convolution unbiased and followed by BatchNorm + Scale (the input too, in place of a mean), depthwise
convolutions as grouped ones, the fork's ShuffleChannel; a 1x1 convolution as the classifier."""
from __future__ import annotations

from ._net import Net
from ._registry import register

# (stage, units): Ma et al. table 5; the output channels per stage depend on the width multiplier
REPEATS = ((2, 4), (3, 8), (4, 4))


def _conv(n: Net, name: str, x: str, out: int, kernel: int = 1, stride: int = 1, group: int = 1,
          relu: bool = True) -> str:
    """A convolution written as the converter writes every one (all fields explicit), BatchNorm, Scale."""
    x = n.conv(name, x, num_output=out, bias_term=False, pad=kernel // 2, kernel_size=kernel, group=group,
               stride=stride, dilation=1)
    x = n.bn_scale(f"{name}/bn", f"{name}/bn/scale", x)
    return n.relu(f"{name}/relu", x) if relu else x


def _unit(n: Net, prefix: str, x: str, channels: int, out: int) -> str:
    """The first unit of a stage halves the map in two branches (conv4-conv5 on the input, conv1-conv3);
    the others slice the channels in two and transform the second half only. Then concat and shuffle."""
    half = out // 2
    first = prefix.endswith("_1")
    stride = 2 if first else 1
    if first:
        left = _conv(n, f"{prefix}/conv4", x, channels, 3, 2, channels, relu=False)
        left = _conv(n, f"{prefix}/conv5", left, half)
    else:
        tops = [f"{prefix}/slice1", f"{prefix}/slice2"]
        n.slice(tops[0], x, tops, slice_point=half, axis=1)
        left, x = tops
    right = _conv(n, f"{prefix}/conv1", x, half)
    right = _conv(n, f"{prefix}/conv2", right, half, 3, stride, half, relu=False)
    right = _conv(n, f"{prefix}/conv3", right, half)
    x = n.concat(f"{prefix}/concat", [left, right], axis=1)
    return n.layer("ShuffleChannel", f"{prefix}/shuffle", x, group=2)


@register("shufflenet_v2_x0.5", widths=(48, 96, 192))
def shufflenet_v2(widths: tuple[int, int, int]):
    n = Net("", (1, 3, 224, 224))
    x = n.bn_scale("data/bn", "data/bn/scale", "data")
    x = _conv(n, "stage1/conv", x, 24, 3, 2)
    x = n.pool("stage1/pool", x, "MAX", kernel_size=3, stride=2, pad=0)
    channels = 24
    for (stage, units), out in zip(REPEATS, widths):
        for unit in range(1, units + 1):
            x = _unit(n, f"stage_{stage}_{unit}", x, channels, out)
            channels = out
    x = _conv(n, "conv5", x, 1024)
    x = n.pool("pool", x, "AVE", kernel_size=7, stride=1, pad=0)
    n.conv("fc", x, num_output=1000, bias_term=True, pad=0, kernel_size=1, group=1, stride=1, dilation=1)
    return n.proto
