"""Squeeze-and-Excitation ResNet-50 as hujie-frank/SENet released it: ResNet-50's bottlenecks (BatchNorm
+ Scale after every convolution, the stride on the first 1x1), each rescaled per channel by a gate
(global average, 1x1 down to a sixteenth, ReLU, 1x1 up, sigmoid) that the fork's Axpy layer applies
while adding the shortcut: gate * residual + shortcut."""
from __future__ import annotations

from typing import Any

from ._net import Net
from ._registry import register

# (stage, blocks, bottleneck width, output channels): He et al. table 1, 50-layer column
STAGES = ((2, 3, 64, 256), (3, 4, 128, 512), (4, 6, 256, 1024), (5, 3, 512, 2048))
SQUEEZE = 16  # the reduction ratio r of Hu et al.


def _conv_bn(n: Net, name: str, x: str, relu: bool, **param: Any) -> str:
    x = n.bn_scale(f"{name}/bn", f"{name}/bn/scale", n.conv(name, x, bias_term=False, **param), use_global_stats=True)
    return n.relu(f"{name}/relu", x) if relu else x


def _block(n: Net, b: str, x: str, width: int, out: int, stride: int, project: bool) -> str:
    y = _conv_bn(n, f"{b}_1x1_reduce", x, True, num_output=width, kernel_size=1, stride=stride)
    y = _conv_bn(n, f"{b}_3x3", y, True, num_output=width, pad=1, kernel_size=3, stride=1)
    y = _conv_bn(n, f"{b}_1x1_increase", y, False, num_output=out, kernel_size=1, stride=1)
    g = n.pool(f"{b}_global_pool", y, "AVE", engine="CAFFE", global_pooling=True)
    g = n.relu(f"{b}_1x1_down/relu", n.conv(f"{b}_1x1_down", g, num_output=out // SQUEEZE, kernel_size=1, stride=1))
    g = n.conv(f"{b}_1x1_up", g, num_output=out, kernel_size=1, stride=1)
    g = n.layer("Sigmoid", f"{b}_prob", g, g)
    if project:
        x = _conv_bn(n, f"{b}_1x1_proj", x, False, num_output=out, kernel_size=1, stride=stride)
    return n.relu(f"{b}/relu", n.layer("Axpy", b, [g, y, x]))


@register("se_resnet50")
def se_resnet50():
    n = Net("SE-ResNet-50", (1, 3, 224, 224))
    x = n.conv("conv1/7x7_s2", "data", num_output=64, bias_term=False, pad=3, kernel_size=7, stride=2)
    x = n.relu("conv1/relu_7x7_s2", n.bn_scale("conv1/7x7_s2/bn", "conv1/7x7_s2/bn/scale", x, use_global_stats=True))
    x = n.pool("pool1/3x3_s2", x, "MAX", kernel_size=3, stride=2)
    for stage, blocks, width, out in STAGES:
        for i in range(1, blocks + 1):
            stride = 2 if i == 1 and stage > 2 else 1
            x = _block(n, f"conv{stage}_{i}", x, width, out, stride, project=i == 1)
    x = n.pool("pool5/7x7_s1", x, "AVE", kernel_size=7, stride=1)
    n.softmax("prob", n.ip("classifier", x, num_output=1000))
    return n.proto
