"""GoogLeNet (Szegedy et al. 2014) as BVLC trained it, and Places365's GoogLeNet."""
from __future__ import annotations

from ._net import Net
from ._registry import register
from .alexnet import LRN

# module: (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool projection), the paper's table 1
INCEPTIONS = {
    "3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64), "4b": (160, 112, 224, 24, 64, 64), "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64), "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128), "5b": (384, 192, 384, 48, 128, 128),
}


@register("bvlc_googlenet", net_name="GoogleNet", input_layer="data", classes=1000)
@register("places365_googlenet", net_name="GoogleNet-Places365", input_layer="input", classes=365)
def googlenet(net_name: str, *, input_layer: str, classes: int):
    n = Net(net_name, (10, 3, 224, 224), input_layer=input_layer)
    x = n.relu("conv1/relu_7x7", n.conv("conv1/7x7_s2", "data", num_output=64, pad=3, kernel_size=7, stride=2))
    x = n.lrn("pool1/norm1", n.pool("pool1/3x3_s2", x, "MAX", kernel_size=3, stride=2), **LRN)
    x = n.relu("conv2/relu_3x3_reduce", n.conv("conv2/3x3_reduce", x, num_output=64, kernel_size=1))
    x = n.relu("conv2/relu_3x3", n.conv("conv2/3x3", x, num_output=192, pad=1, kernel_size=3))
    x = n.pool("pool2/3x3_s2", n.lrn("conv2/norm2", x, **LRN), "MAX", kernel_size=3, stride=2)
    for module, widths in INCEPTIONS.items():
        if module in ("4a", "5a"):
            x = n.pool(f"pool{int(module[0]) - 1}/3x3_s2", x, "MAX", kernel_size=3, stride=2)
        x = _inception(n, f"inception_{module}", x, *widths)
    x = n.dropout("pool5/drop_7x7_s1", n.pool("pool5/7x7_s1", x, "AVE", kernel_size=7, stride=1), 0.4)
    n.softmax("prob", n.ip("loss3/classifier", x, num_output=classes))
    return n.proto


def _inception(n: Net, p: str, x: str, c1: int, r3: int, c3: int, r5: int, c5: int, proj: int) -> str:
    def conv_relu(branch: str, bottom: str, num_output: int, **geometry) -> str:
        return n.relu(f"{p}/relu_{branch}", n.conv(f"{p}/{branch}", bottom, num_output=num_output, **geometry))

    b1 = conv_relu("1x1", x, c1, kernel_size=1)
    b3 = conv_relu("3x3", conv_relu("3x3_reduce", x, r3, kernel_size=1), c3, pad=1, kernel_size=3)
    b5 = conv_relu("5x5", conv_relu("5x5_reduce", x, r5, kernel_size=1), c5, pad=2, kernel_size=5)
    pooled = n.pool(f"{p}/pool", x, "MAX", kernel_size=3, stride=1, pad=1)
    return n.concat(f"{p}/output", [b1, b3, b5, conv_relu("pool_proj", pooled, proj, kernel_size=1)])
