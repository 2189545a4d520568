"""MobileNet v1 and v2 as shicai/MobileNet-Caffe converted them (conv + BatchNorm + Scale, depthwise
convolutions as grouped ones with engine CAFFE)."""
from __future__ import annotations

from ._net import Net
from ._registry import register

BN = {"use_global_stats": True, "eps": 1e-5}

# (block, output channels, stride of its depthwise conv): Howard et al. table 1
V1_BLOCKS = (("2_1", 64, 1), ("2_2", 128, 2), ("3_1", 128, 1), ("3_2", 256, 2), ("4_1", 256, 1), ("4_2", 512, 2),
             *((f"5_{i}", 512, 1) for i in range(1, 6)), ("5_6", 1024, 2), ("6", 1024, 1))

# (expansion, output channels, blocks, stride of the first): Sandler et al. table 2, except that this
# release strides the first 96-channel block rather than the first 64-channel one (same 7x7 output).
V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 1), (6, 96, 3, 2), (6, 160, 3, 2), (6, 320, 1, 1))


@register("mobilenet_v1")
def mobilenet_v1():
    n = Net("MOBILENET", (1, 3, 224, 224), input_layer="input")
    x = n.conv("conv1", "data", num_output=32, bias_term=False, pad=1, kernel_size=3, stride=2)
    x = n.relu("relu1", n.bn_scale("conv1/bn", "conv1/scale", x, **BN))
    channels = 32
    for b, out, stride in V1_BLOCKS:
        x = n.conv(f"conv{b}/dw", x, num_output=channels, bias_term=False, pad=1, kernel_size=3, group=channels,
                   stride=stride, engine="CAFFE")
        x = n.relu(f"relu{b}/dw", n.bn_scale(f"conv{b}/dw/bn", f"conv{b}/dw/scale", x, **BN))
        x = n.conv(f"conv{b}/sep", x, num_output=out, bias_term=False, pad=0, kernel_size=1, stride=1)
        x = n.relu(f"relu{b}/sep", n.bn_scale(f"conv{b}/sep/bn", f"conv{b}/sep/scale", x, **BN))
        channels = out
    x = n.pool("pool6", x, "AVE", global_pooling=True)
    n.softmax("prob", n.conv("fc7", x, num_output=1000, kernel_size=1))
    return n.proto


@register("mobilenet_v2")
def mobilenet_v2():
    n = Net("MOBILENET_V2", (1, 3, 224, 224), input_layer="input")
    x = _conv_bn(n, "conv1", "relu1", "data", num_output=32, pad=1, kernel_size=3, stride=2)
    channels, stage, index = 32, 2, 1  # blocks are named by the resolution they start at: conv<stage>_<index>
    for expansion, out, count, first_stride in V2_STAGES:
        for i in range(count):
            stride = first_stride if i == 0 else 1
            x = _inverted_residual(n, x, f"{stage}_{index}", channels, expansion * channels, out, stride)
            channels = out
            stage, index = (stage + 1, 1) if stride == 2 else (stage, index + 1)
    x = _conv_bn(n, "conv6_4", "relu6_4", x, num_output=1280, kernel_size=1)
    x = n.pool("pool6", x, "AVE", global_pooling=True)
    n.softmax("prob", n.conv("fc7", x, num_output=1000, kernel_size=1))
    return n.proto


def _conv_bn(n: Net, conv: str, relu: str | None, bottom: str, **param) -> str:
    """v2 writes BatchNorm out of place, into <conv>/bn."""
    x = n.conv(conv, bottom, bias_term=False, **param)
    x = n.bn_scale(f"{conv}/bn", f"{conv}/scale", x, top=f"{conv}/bn", **BN)
    return n.relu(relu, x) if relu else x


def _inverted_residual(n: Net, x: str, b: str, channels: int, hidden: int, out: int, stride: int) -> str:
    y = _conv_bn(n, f"conv{b}/expand", f"relu{b}/expand", x, num_output=hidden, kernel_size=1)
    strided = {"stride": stride} if stride != 1 else {}
    y = _conv_bn(n, f"conv{b}/dwise", f"relu{b}/dwise", y, num_output=hidden, pad=1, kernel_size=3, group=hidden,
                 **strided, engine="CAFFE")
    y = _conv_bn(n, f"conv{b}/linear", None, y, num_output=out, kernel_size=1)
    return n.eltwise(f"block_{b}", [x, y]) if stride == 1 and channels == out else y
