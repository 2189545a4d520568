"""Network in Network for ImageNet (Lin et al.; mavenlin's gist, which publishes only train_val.prototxt).

The deploy net is that file's TEST net without its data, accuracy and loss layers: it ends at pool4,
the global average of the 1000 class maps (apply softmax for probabilities). Batch 1: no deploy file
says otherwise.
"""
from __future__ import annotations

from ._net import Net
from ._registry import register


@register("nin_imagenet")
def nin():
    n = Net("nin_imagenet", (1, 3, 224, 224))
    relus = iter(f"relu{i}" for i in (0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12))  # the gist has no relu4

    def mlpconv(names: tuple[str, ...], bottom: str, widths: tuple[int, ...], tops: tuple[str, ...] = (),
                **geometry: int) -> str:
        """A k x k convolution then two 1x1 ones ("cccp"), each with its ReLU."""
        x = bottom
        for i, (name, width) in enumerate(zip(names, widths)):
            shape = geometry if i == 0 else {"kernel_size": 1, "stride": 1}
            x = n.relu(next(relus), n.conv(name, x, top=tops[i] if tops else None, num_output=width, **shape))
        return x

    x = mlpconv(("conv1", "cccp1", "cccp2"), "data", (96, 96, 96), kernel_size=11, stride=4)
    x = n.pool("pool0", x, "MAX", kernel_size=3, stride=2)
    x = mlpconv(("conv2", "cccp3", "cccp4"), x, (256, 256, 256), pad=2, kernel_size=5, stride=1)
    x = n.pool("pool2", x, "MAX", kernel_size=3, stride=2)
    x = mlpconv(("conv3", "cccp5", "cccp6"), x, (384, 384, 384), pad=1, kernel_size=3, stride=1)
    x = n.dropout("drop", n.pool("pool3", x, "MAX", kernel_size=3, stride=2), 0.5)
    x = mlpconv(("conv4-1024", "cccp7-1024", "cccp8-1024"), x, (1024, 1024, 1000), tops=("conv4", "cccp7", "cccp8"),
                pad=1, kernel_size=3, stride=1)
    n.pool("pool4", x, "AVE", kernel_size=6, stride=1)
    return n.proto
