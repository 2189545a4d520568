"""SqueezeNet v1.0 and v1.1 (Iandola et al., forresti/SqueezeNet): fire modules squeeze with 1x1 and
expand with 1x1 and 3x3 convolutions side by side (4x the squeeze width each)."""
from __future__ import annotations

from typing import Any

from ._net import Net
from ._registry import register

SQUEEZE = (16, 16, 32, 32, 48, 48, 64, 64)  # fire2 ... fire9


@register("squeezenet_v1.0", input_layer="input", conv1={"num_output": 96, "kernel_size": 7, "stride": 2},
          pool_after=(4, 8), conv10={"pad": 1})  # v1.0 pads its 1x1 conv10 (13x13 -> 15x15), as published
@register("squeezenet_v1.1", input_layer="data", conv1={"num_output": 64, "kernel_size": 3, "stride": 2},
          pool_after=(3, 5), conv10={})
def squeezenet(*, input_layer: str, conv1: dict[str, Any], pool_after: tuple[int, ...], conv10: dict[str, Any]):
    n = Net("", (10, 3, 227, 227), input_layer=input_layer)
    x = n.pool("pool1", n.relu("relu_conv1", n.conv("conv1", "data", **conv1)), "MAX", kernel_size=3, stride=2)
    for i, squeeze in enumerate(SQUEEZE, start=2):
        x = _fire(n, f"fire{i}", x, squeeze, 4 * squeeze)
        if i in pool_after:
            x = n.pool(f"pool{i}", x, "MAX", kernel_size=3, stride=2)
    x = n.dropout("drop9", x, 0.5)
    x = n.relu("relu_conv10", n.conv("conv10", x, num_output=1000, **conv10, kernel_size=1))
    n.softmax("prob", n.pool("pool10", x, "AVE", global_pooling=True))
    return n.proto


def _fire(n: Net, p: str, x: str, squeeze: int, expand: int) -> str:
    def conv_relu(branch: str, bottom: str, num_output: int, **geometry: int) -> str:
        return n.relu(f"{p}/relu_{branch}", n.conv(f"{p}/{branch}", bottom, num_output=num_output, **geometry))

    s = conv_relu("squeeze1x1", x, squeeze, kernel_size=1)
    e1 = conv_relu("expand1x1", s, expand, kernel_size=1)
    e3 = conv_relu("expand3x3", s, expand, pad=1, kernel_size=3)
    return n.concat(f"{p}/concat", [e1, e3])
