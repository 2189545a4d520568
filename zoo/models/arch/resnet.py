"""Bottleneck ResNets: He et al.'s ResNet-50/101/152 (KaimingHe/deep-residual-networks), Places365's
ResNet-152, and Yahoo's open_nsfw (ResNet-50 at half width, "1by2", with its own layer names)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._net import Net
from ._registry import register

BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


@dataclass(frozen=True)
class Naming:
    """Layer names of one bottleneck block; {b} is the block, {br} the branch."""
    conv: str
    bn: str
    scale: str
    relu: str
    sum: str
    sum_relu: str
    shortcut: str  # the projection branch


KAIMING = Naming("res{b}_{br}", "bn{b}_{br}", "scale{b}_{br}", "res{b}_{br}_relu", "res{b}", "res{b}_relu", "branch1")
NSFW = Naming("conv_{b}_{br}", "bn_{b}_{br}", "scale_{b}_{br}", "relu_{b}_{br}", "eltwise_{b}", "relu_{b}",
              "proj_shortcut")


@register("resnet50", depth=50)
@register("resnet101", depth=101)
@register("resnet152", depth=152)
@register("places365_resnet152", depth=152, net_name="ResNet-152-places365", batch=10, classifier="fc365",
          classes=365, global_stats=False)
def resnet(depth: int, *, net_name: str = "", batch: int = 1, classifier: str = "fc1000", classes: int = 1000,
           global_stats: bool = True):
    # Places365 leaves use_global_stats unset: Caffe then uses the stored statistics in the TEST phase anyway.
    bn = {"use_global_stats": True} if global_stats else {}
    n = Net(net_name or f"ResNet-{depth}", (batch, 3, 224, 224), input_layer="input")
    no_bias = {} if depth == 50 else {"bias_term": False}  # ResNet-50's conv1 keeps a bias, 101's and 152's do not
    x = n.conv("conv1", "data", num_output=64, **no_bias, pad=3, kernel_size=7, stride=2)
    x = n.relu("conv1_relu", n.bn_scale("bn_conv1", "scale_conv1", x, **bn))
    x = n.pool("pool1", x, "MAX", kernel_size=3, stride=2)
    for stage, count in enumerate(BLOCKS[depth], start=2):
        numbered = depth > 50 and count > 3  # res4a, res4b1, res4b2... instead of res4a, res4b, res4c...
        for i in range(count):
            block = f"{stage}{'a' if i == 0 else f'b{i}' if numbered else chr(ord('a') + i)}"
            x = bottleneck(n, x, KAIMING, block, 64 << (stage - 2), first=i == 0, downsample=stage > 2,
                           conv={"bias_term": False}, bn=bn)
    x = n.pool("pool5", x, "AVE", kernel_size=7, stride=1)
    n.softmax("prob", n.ip(classifier, x, num_output=classes))
    return n.proto


@register("open_nsfw")
def resnet50_1by2_nsfw():
    bn = {"use_global_stats": True}
    n = Net("ResNet_50_1by2_nsfw", (1, 3, 224, 224))
    x = n.conv("conv_1", "data", num_output=64, pad=3, kernel_size=7, stride=2)
    x = n.relu("relu_1", n.bn_scale("bn_1", "scale_1", x, **bn))
    x = n.pool("pool1", x, "MAX", kernel_size=3, stride=2)
    for stage, count in enumerate(BLOCKS[50]):
        for i in range(count):
            x = bottleneck(n, x, NSFW, f"stage{stage}_block{i}", 32 << stage, first=i == 0, downsample=stage > 0,
                           conv={}, bn=bn)
    x = n.pool("pool", x, "AVE", kernel_size=7, stride=1)
    n.softmax("prob", n.ip("fc_nsfw", x, num_output=2))
    return n.proto


def bottleneck(n: Net, x: str, names: Naming, block: str, width: int, *, first: bool, downsample: bool,
               conv: dict[str, Any], bn: dict[str, Any]) -> str:
    """1x1, 3x3, 1x1 (4 x width) plus the shortcut, a projection in a stage's first block; that block
    strides by 2 in its 1x1 convolutions (the v1 placement) when the stage downsamples."""
    stride = 2 if first and downsample else 1

    def unit(bottom: str, branch: str, relu: bool, **geometry: int) -> str:
        y = n.conv(names.conv.format(b=block, br=branch), bottom, **conv, **geometry)
        y = n.bn_scale(names.bn.format(b=block, br=branch), names.scale.format(b=block, br=branch), y, **bn)
        return n.relu(names.relu.format(b=block, br=branch), y) if relu else y

    shortcut = x
    if first:
        shortcut = unit(x, names.shortcut, False, num_output=4 * width, pad=0, kernel_size=1, stride=stride)
    y = unit(x, "branch2a", True, num_output=width, pad=0, kernel_size=1, stride=stride)
    y = unit(y, "branch2b", True, num_output=width, pad=1, kernel_size=3, stride=1)
    y = unit(y, "branch2c", False, num_output=4 * width, pad=0, kernel_size=1, stride=1)
    return n.relu(names.sum_relu.format(b=block), n.eltwise(names.sum.format(b=block), [shortcut, y]))
