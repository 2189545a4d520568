"""SegNet (alexgkendall/SegNet-Tutorial, the fork's BN and mask Upsample): VGG-16's convolutions as an
encoder, each pooling keeping its argmax mask; a mirrored decoder that unpools with those masks; the
road-scene web demo's 12 classes, as an ArgMax map."""
from __future__ import annotations

from ._net import Net
from ._registry import register

# (stage, channels of its convolutions in order): the encoder; the decoder runs them backwards
ENCODER = ((1, (64, 64)), (2, (128, 128)), (3, (256, 256, 256)), (4, (512, 512, 512)), (5, (512, 512, 512)))
# decoder output channels per stage, conv<s>_<k>_D from k = last down to 1 (the last conv of stage 1 is the classifier)
DECODER = ((5, (512, 512, 512)), (4, (512, 512, 256)), (3, (256, 256, 128)), (2, (128, 64)), (1, (64,)))
# the unpooled sizes Caffe cannot infer from an odd map (360x480 input: 23x30 and 45x60)
UPSAMPLE_SIZE = {5: (23, 30), 4: (45, 60)}


def _conv_bn_relu(n: Net, name: str, x: str, out: int) -> str:
    x = n.conv(name, x, num_output=out, pad=1, kernel_size=3)
    return n.relu(name.replace("conv", "relu", 1), n.layer("BN", f"{name}_bn", x, x, bn_mode="INFERENCE"))


@register("segnet_driving_webdemo", classes=12)
def segnet(classes: int):
    n = Net("VGG_ILSVRC_16_layer", (1, 3, 360, 480), input_layer="input")
    x = "data"
    for stage, widths in ENCODER:
        for i, width in enumerate(widths, start=1):
            x = _conv_bn_relu(n, f"conv{stage}_{i}", x, width)
        x = n.layer("Pooling", f"pool{stage}", x, [f"pool{stage}", f"pool{stage}_mask"], pool="MAX", kernel_size=2,
                    stride=2)
    for stage, widths in DECODER:
        size = UPSAMPLE_SIZE.get(stage)
        sized = {"upsample_h": size[0], "upsample_w": size[1]} if size else {}
        x = n.layer("Upsample", f"upsample{stage}", [x, f"pool{stage}_mask"], f"pool{stage}_D", scale=2, **sized)
        for k, width in zip(range(len(widths) + (stage == 1), 0, -1), widths):
            x = _conv_bn_relu(n, f"conv{stage}_{k}_D", x, width)
    x = n.conv("conv1_1_D", x, num_output=classes, pad=1, kernel_size=3)
    n.layer("ArgMax", "argmax", x, axis=1)
    return n.proto
