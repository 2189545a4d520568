"""AlexNet and the nets that reuse its layout.

CaffeNet swaps AlexNet's LRN and pooling; R-CNN, Flickr Style and Places365-AlexNet are CaffeNet with
another classifier; Levi & Hassner's age and gender nets keep CaffeNet's stem with a 7x7 conv1, three
ungrouped convolutions and 512-wide fully connected layers.
"""
from __future__ import annotations

from typing import Any

from ._net import Net
from ._registry import register

LRN = {"local_size": 5, "alpha": 0.0001, "beta": 0.75}


@register("bvlc_alexnet", net_name="AlexNet", lrn_first=True)
@register("bvlc_reference_caffenet", net_name="CaffeNet")
@register("bvlc_reference_rcnn_ilsvrc13", net_name="R-CNN-ilsvrc13", classifier="fc-rcnn", classes=200,
          softmax=False)
@register("finetune_flickr_style", net_name="FlickrStyleCaffeNet", classifier="fc8_flickr", classes=20)
@register("places365_alexnet", net_name="CaffeNet-Places365", classes=365, input_layer="input")
def alexnet(net_name: str, *, lrn_first: bool = False, classifier: str = "fc8", classes: int = 1000,
            softmax: bool = True, input_layer: str = "data"):
    n = Net(net_name, (10, 3, 227, 227), input_layer=input_layer)
    x = _relu_pool_norm(n, n.conv("conv1", "data", num_output=96, kernel_size=11, stride=4), 1, lrn_first)
    x = n.conv("conv2", x, num_output=256, pad=2, kernel_size=5, group=2)
    x = _relu_pool_norm(n, x, 2, lrn_first)
    x = n.relu("relu3", n.conv("conv3", x, num_output=384, pad=1, kernel_size=3))
    x = n.relu("relu4", n.conv("conv4", x, num_output=384, pad=1, kernel_size=3, group=2))
    x = n.relu("relu5", n.conv("conv5", x, num_output=256, pad=1, kernel_size=3, group=2))
    x = n.pool("pool5", x, "MAX", kernel_size=3, stride=2)
    return classifier_head(n, x, 4096, classifier, classes, softmax)


@register("age_net", batch=1, classes=8)
@register("gender_net", batch=10, classes=2)
def levi_hassner(*, batch: int, classes: int):
    n = Net("CaffeNet", (batch, 3, 227, 227), input_layer="input")
    x = _relu_pool_norm(n, n.conv("conv1", "data", num_output=96, kernel_size=7, stride=4), 1, False)
    x = _relu_pool_norm(n, n.conv("conv2", x, num_output=256, pad=2, kernel_size=5), 2, False)
    x = n.relu("relu3", n.conv("conv3", x, num_output=384, pad=1, kernel_size=3))
    x = n.pool("pool5", x, "MAX", kernel_size=3, stride=2)
    return classifier_head(n, x, 512, "fc8", classes, True)


def _relu_pool_norm(n: Net, x: str, i: int, lrn_first: bool) -> str:
    x = n.relu(f"relu{i}", x)
    if lrn_first:
        return n.pool(f"pool{i}", n.lrn(f"norm{i}", x, **LRN), "MAX", kernel_size=3, stride=2)
    return n.lrn(f"norm{i}", n.pool(f"pool{i}", x, "MAX", kernel_size=3, stride=2), **LRN)


def fc6_fc7(n: Net, x: str, width: int, **dropout: Any) -> str:
    """fc6 and fc7, each with its ReLU and dropout 0.5 (in place; ``dropout``: more of its parameters)."""
    for i in (6, 7):
        x = n.dropout(f"drop{i}", n.relu(f"relu{i}", n.ip(f"fc{i}", x, num_output=width)), 0.5, **dropout)
    return x


def classifier_head(n: Net, x: str, width: int, classifier: str, classes: int, softmax: bool):
    """fc6 and fc7, the classifier and `prob`: AlexNet's head, which VGG keeps."""
    x = n.ip(classifier, fc6_fc7(n, x, width), num_output=classes)
    if softmax:
        n.softmax("prob", x)
    return n.proto
