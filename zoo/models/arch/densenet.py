"""DenseNet-121 (Huang et al.) as shicai/DenseNet-Caffe converted it: pre-activation BatchNorm + Scale +
ReLU before each convolution, every layer's 32 new channels concatenated onto its input."""
from __future__ import annotations

from ._net import Net
from ._registry import register

BN = {"eps": 1e-5}
GROWTH, BOTTLENECK = 32, 128


@register("densenet121", blocks=(6, 12, 24, 16))
def densenet(blocks: tuple[int, ...]):
    n = Net("DENSENET_121", (1, 3, 224, 224), input_layer="input")
    x = n.conv("conv1", "data", num_output=64, bias_term=False, pad=3, kernel_size=7, stride=2)
    x = n.relu("relu1", n.bn_scale("conv1/bn", "conv1/scale", x, top="conv1/bn", **BN))
    x = n.pool("pool1", x, "MAX", kernel_size=3, stride=2, pad=1, ceil_mode=False)
    channels = 64
    for b, count in enumerate(blocks, start=2):
        for i in range(1, count + 1):
            y = _bn_relu_conv(n, x, f"conv{b}_{i}/x1", f"relu{b}_{i}/x1", num_output=BOTTLENECK, kernel_size=1)
            y = _bn_relu_conv(n, y, f"conv{b}_{i}/x2", f"relu{b}_{i}/x2", num_output=GROWTH, pad=1, kernel_size=3)
            x = n.concat(f"concat_{b}_{i}", [x, y])
        channels += count * GROWTH
        if b - 1 < len(blocks):  # a transition halves channels and resolution
            channels //= 2
            x = _bn_relu_conv(n, x, f"conv{b}_blk", f"relu{b}_blk", num_output=channels, kernel_size=1)
            x = n.pool(f"pool{b}", x, "AVE", kernel_size=2, stride=2)
    last = len(blocks) + 1
    x = n.relu(f"relu{last}_blk", n.bn_scale(f"conv{last}_blk/bn", f"conv{last}_blk/scale", x,
                                               top=f"conv{last}_blk/bn", **BN))
    x = n.pool(f"pool{last}", x, "AVE", global_pooling=True)
    n.conv("fc6", x, num_output=1000, kernel_size=1)
    return n.proto


def _bn_relu_conv(n: Net, x: str, conv: str, relu: str, **param) -> str:
    x = n.relu(relu, n.bn_scale(f"{conv}/bn", f"{conv}/scale", x, top=f"{conv}/bn", **BN))
    return n.conv(conv, x, bias_term=False, **param)
