"""VGG 16 and 19 (Simonyan & Zisserman, configurations D and E) and Places365's VGG 16."""
from __future__ import annotations

from ._net import Net
from ._registry import register
from .alexnet import classifier_head


@register("vgg16", net_name="VGG_ILSVRC_16_layers", convs=(2, 2, 3, 3, 3))
@register("vgg19", net_name="VGG_ILSVRC_19_layers", convs=(2, 2, 4, 4, 4))
@register("places365_vgg16", net_name="VGG-Places365", convs=(2, 2, 3, 3, 3), classifier="fc8a", classes=365)
def vgg(net_name: str, *, convs: tuple[int, ...], classifier: str = "fc8", classes: int = 1000):
    n = Net(net_name, (10, 3, 224, 224), input_layer="input")
    x = n.pool("pool5", trunk(n, "data", convs), "MAX", kernel_size=2, stride=2)
    return classifier_head(n, x, 4096, classifier, classes, True)


def trunk(n: Net, x: str, convs: tuple[int, ...] = (2, 2, 3, 3, 3)) -> str:
    """The convolutions conv1_1 .. conv5_<last> with their ReLUs and the first four max poolings; returns
    the last ReLU's top (pool5 is the caller's: Faster R-CNN pools regions of it instead)."""
    for block, (count, width) in enumerate(zip(convs, (64, 128, 256, 512, 512)), start=1):
        if block > 1:
            x = n.pool(f"pool{block - 1}", x, "MAX", kernel_size=2, stride=2)
        for i in range(1, count + 1):
            x = n.relu(f"relu{block}_{i}", n.conv(f"conv{block}_{i}", x, num_output=width, pad=1, kernel_size=3))
    return x
