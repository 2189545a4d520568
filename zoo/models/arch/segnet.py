"""SegNet (alexgkendall/SegNet-Tutorial, the fork's BN and mask Upsample): VGG-16's convolutions as an
encoder, each pooling keeping its argmax mask; a mirrored decoder that unpools with those masks; an
ArgMax class map. The road-scene web demo (12 classes), the SUN RGB-D indoor net (38 classes, with
dropout between the deeper stages: an identity at deploy, kept to equal the published net), Bayesian
SegNet on CamVid (11 classes, the same dropout sampled at test) and SegNet-Basic on CamVid (four 7x7
stages after an LRN, 11 classes)."""
from __future__ import annotations

from ._net import Net
from ._registry import register

# (stage, channels of its convolutions in order): the encoder; the decoder runs them backwards
ENCODER = ((1, (64, 64)), (2, (128, 128)), (3, (256, 256, 256)), (4, (512, 512, 512)), (5, (512, 512, 512)))
# decoder output channels per stage, conv<s>_<k>_D from k = last down to 1 (the last conv of stage 1 is the classifier)
DECODER = ((5, (512, 512, 512)), (4, (512, 512, 256)), (3, (256, 256, 128)), (2, (128, 64)), (1, (64,)))
# the unpooled sizes Caffe cannot infer from an odd map (360x480 input: 23x30 and 45x60)
UPSAMPLE_SIZE = {5: (23, 30), 4: (45, 60)}
BN = {"bn_mode": "INFERENCE"}
POOL = {"pool": "MAX", "kernel_size": 2, "stride": 2}


def _bn(n: Net, name: str, x: str) -> str:
    return n.layer("BN", f"{name}_bn", x, x, **BN)


def _conv_bn_relu(n: Net, name: str, x: str, out: int) -> str:
    x = n.conv(name, x, num_output=out, pad=1, kernel_size=3)
    return n.relu(name.replace("conv", "relu", 1), _bn(n, name, x))


def _pool(n: Net, stage: int, x: str) -> str:
    """Max pooling with its mask as a second top, pool<s>_mask, for the decoder's Upsample."""
    return n.layer("Pooling", f"pool{stage}", x, [f"pool{stage}", f"pool{stage}_mask"], **POOL)


@register("segnet_driving_webdemo", classes=12)
@register("segnet_sun", classes=38, dropout=(3, 4, 5))
@register("bayesian_segnet_camvid", classes=11, dropout=(3, 4, 5), batch=4, classifier="camvid", bayesian=True)
def segnet(classes: int, dropout: tuple[int, ...] = (), batch: int = 1, classifier: str = "conv1_1_D",
           bayesian: bool = False):
    """``dropout``: the stages whose pooling output and last decoder convolution go through Dropout 0.5
    (encdrop<s> and decdrop<s>; Bayesian SegNet's pool<s>_drop and, before the next Upsample,
    upsample<s-1>_drop, sampled at test too: Monte Carlo dropout over a batch of copies of the image).
    ``classifier``: the last convolution, which the decoder's conv1_1_D is unless another name is
    given (then conv1_1_D is a 64-wide convolution like the rest); Bayesian SegNet ends in a softmax
    (its mean over the samples is the prediction), the others in an ArgMax class map."""
    n = Net("VGG_ILSVRC_16_layer", (batch, 3, 360, 480), input_layer="input")
    drop = {"sample_weights_test": True} if bayesian else {}
    x = "data"
    for stage, widths in ENCODER:
        for i, width in enumerate(widths, start=1):
            x = _conv_bn_relu(n, f"conv{stage}_{i}", x, width)
        x = _pool(n, stage, x)
        if stage in dropout:
            x = n.dropout(f"pool{stage}_drop" if bayesian else f"encdrop{stage}", x, 0.5, **drop)
    for stage, widths in DECODER:
        size = UPSAMPLE_SIZE.get(stage)
        sized = {"upsample_h": size[0], "upsample_w": size[1]} if size else {}
        x = n.layer("Upsample", f"upsample{stage}", [x, f"pool{stage}_mask"], f"pool{stage}_D", scale=2, **sized)
        if stage == 1 and classifier != "conv1_1_D":
            widths = (64, 64)  # conv1_2_D and conv1_1_D, then the named classifier
        last = 2 if stage == 1 else len(widths)  # stage 1 counts down from conv1_2_D whatever follows
        for k, width in zip(range(last, 0, -1), widths):
            x = _conv_bn_relu(n, f"conv{stage}_{k}_D", x, width)
        if stage in dropout:
            x = n.dropout(f"upsample{stage - 1}_drop" if bayesian else f"decdrop{stage}", x, 0.5, **drop)
    x = n.conv(classifier, x, num_output=classes, pad=1, kernel_size=3)
    if bayesian:
        n.layer("Softmax", "prob", x, engine="CAFFE")
    else:
        n.layer("ArgMax", "argmax", x, axis=1)
    return n.proto


@register("segnet_basic_camvid", classes=11)
def segnet_basic(classes: int):
    """Four stages of 64 7x7 filters each way; the decoder's convolutions have no ReLU. pool4's map of
    a 360-row input has 23 rows (45 / 2 rounded up): its Upsample drops the padded last row."""
    n = Net("segnet", (1, 3, 360, 480), input_layer="input")
    x = n.lrn("norm", "data", local_size=5, alpha=0.0001, beta=0.75)
    conv = {"num_output": 64, "pad": 3, "kernel_size": 7}
    for stage in range(1, 5):
        x = _bn(n, f"conv{stage}", n.conv(f"conv{stage}", x, **conv))
        x = _pool(n, stage, n.relu(f"relu{stage}", x))
    for stage in range(4, 0, -1):
        padded = {"pad_out_h": True} if stage == 4 else {}
        x = n.layer("Upsample", f"upsample{stage}", [x, f"pool{stage}_mask"], scale=2, **padded)
        x = _bn(n, f"conv_decode{stage}", n.conv(f"conv_decode{stage}", x, **conv))
    x = n.conv("dense_softmax_inner_prod", x, num_output=classes, kernel_size=1)
    n.layer("ArgMax", "argmax", x, axis=1)
    return n.proto
