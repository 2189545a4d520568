"""SSD detectors (weiliu89/caffe's ssd branch): a backbone, then per source map a loc and a conf
convolution (permuted to NHWC and flattened), its PriorBox on the image, the three concatenated, a
softmax over the classes and DetectionOutput. YuFaceDetectNet v1 and v2 (ShiqiYu/libfacedetection) and
chuanqi305's MobileNet-SSD (its deploy release, BatchNorm merged into the convolutions)."""
from __future__ import annotations

from typing import Any, Sequence

from ._net import Net, fill
from ._registry import register

NHWC = {"order": [0, 2, 3, 1]}
VARIANCE = [0.1, 0.1, 0.2, 0.2]


def _head(n: Net, x: str, prefix: str, boxes: int, classes: int, conv: dict, suffix: str = "",
          **priorbox: Any) -> tuple[str, ...]:
    """One source map's (loc, conf, priorbox) tops: ``boxes`` priors per cell, each with 4 offsets and
    ``classes`` scores, from convolutions with the parameters ``conv``."""
    flat = []
    for kind, channels in (("loc", 4 * boxes), ("conf", classes * boxes)):
        y = n.conv(f"{prefix}_mbox_{kind}{suffix}", x, num_output=channels, **conv)
        y = n.layer("Permute", f"{prefix}_mbox_{kind}_perm", y, **NHWC)
        flat.append(n.layer("Flatten", f"{prefix}_mbox_{kind}_flat", y, axis=1))
    box = n.layer("PriorBox", f"{prefix}_mbox_priorbox", [x, "data"], **priorbox)
    return flat[0], flat[1], box


def _detection_output(n: Net, heads: Sequence[tuple[str, ...]], classes: int, transform: dict | None = None,
                      **param: Any) -> str:
    """The concatenated heads, the per-prior softmax over the classes, DetectionOutput (with the
    ``transform_param`` some publishers leave on it: read by nothing at deploy, kept to equal their net)."""
    loc, conf, box = ([h[i] for h in heads] for i in range(3))
    loc = n.concat("mbox_loc", loc, axis=1)
    conf = n.concat("mbox_conf", conf, axis=1)
    box = n.concat("mbox_priorbox", box, axis=2)
    conf = n.layer("Reshape", "mbox_conf_reshape", conf, shape={"dim": [0, -1, classes]})
    conf = n.layer("Softmax", "mbox_conf_softmax", conf, axis=2)
    conf = n.layer("Flatten", "mbox_conf_flatten", conf, axis=1)
    out = n.layer("DetectionOutput", "detection_out", [loc, conf, box], **param)
    if transform:
        fill(n.proto.layer[-1].transform_param, transform)
    return out


# (block, output channels of its 3x3 convs, of its 1x1 conv, whether it has a third conv):
# conv<b>_1 3x3, conv<b>_2 1x1, [conv<b>_3 3x3]; v2 widens the 3x3s of the first four blocks
YU_V1 = ((1, 16, 16, False), (2, 16, 16, False), (3, 32, 32, True), (4, 64, 64, True), (5, 128, 128, True),
         (6, 128, 128, True))
YU_V2 = ((1, 32, 16, False), (2, 32, 16, False), (3, 64, 32, True), (4, 128, 64, True), (5, 128, 128, True),
         (6, 128, 128, True))
YU_HEAD = {"bias_term": False, "pad": 1, "kernel_size": 3, "stride": 1}
# (source, min sizes, step): the four detection sources
YU_SOURCES = (("conv3_3", (10.0, 16.0, 24.0), 8.0), ("conv4_3", (32.0, 48.0), 16.0),
              ("conv5_3", (64.0, 96.0), 32.0), ("conv6_3", (128.0, 192.0, 256.0), 64.0))


@register("yufacedetectnet_v1", blocks=YU_V1, first_suffix="_new")
@register("yufacedetectnet_v2", blocks=YU_V2, first_suffix="")
def yufacedetectnet(blocks, first_suffix: str):
    """``first_suffix``: v1 names the first source's loc and conf convolutions ``..._new``."""
    n = Net("YuFaceDetectNet", (1, 3, 240, 320), input_layer="input")
    x = "data"
    for b, wide, narrow, third in blocks:
        dilated = {"dilation": 1} if b >= 5 else {}
        for i, (k, pad, width) in enumerate(((3, 1, wide), (1, 0, narrow), (3, 1, wide))[: 3 if third else 2], 1):
            stride = {"stride": 2} if (b, i) == (1, 1) else {}
            x = n.conv(f"conv{b}_{i}", x, num_output=width, bias_term=False, pad=pad, kernel_size=k, **stride,
                       **dilated)
            x = n.relu(f"relu{b}_{i}", x)
        if b < 6:
            x = n.pool(f"pool{b}", x, "MAX", kernel_size=2, stride=2)
    heads = []
    for source, sizes, step in YU_SOURCES:
        x = n.layer("Normalize", f"{source}_norm", source, across_spatial=False, channel_shared=False)
        heads.append(_head(n, x, f"{source}_norm", len(sizes), 2, YU_HEAD, first_suffix if source == "conv3_3" else "",
                           min_size=list(sizes), clip=False, variance=VARIANCE, step=step, offset=0.5))
    _detection_output(n, heads, 2, {"mean_value": [103.94, 116.78, 123.68]}, num_classes=2, share_location=True, background_label_id=0,
                      nms_param={"nms_threshold": 0.15, "top_k": 100}, code_type="CENTER_SIZE", keep_top_k=50,
                      confidence_threshold=0.01, visualize=False, visualize_threshold=0.3)
    return n.proto


# (output channels of the 1x1 conv, stride of the depthwise conv before it): conv1 .. conv13
MSSD_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *((512, 1),) * 5, (1024, 2), (1024, 1))
# the extra layers conv14 .. conv17: (1x1 channels, strided 3x3 channels)
MSSD_EXTRAS = ((256, 512), (128, 256), (128, 256), (64, 128))
# (source, min size, max size): SSD300's scales; conv11 has 3 priors (no max size, aspect ratio 2), the rest 6
MSSD_SOURCES = (("conv11", 60.0, None), ("conv13", 105.0, 150.0), ("conv14_2", 150.0, 195.0),
                ("conv15_2", 195.0, 240.0), ("conv16_2", 240.0, 285.0), ("conv17_2", 285.0, 300.0))


@register("mobilenet_ssd", merged=True)
@register("mobilenet_ssd_iter73000", merged=False)
def mobilenet_ssd(merged: bool):
    """``merged``: the deploy release, BatchNorm folded into biased convolutions (depthwise ones with
    engine CAFFE); else the training-time layout, each convolution unbiased then BatchNorm + Scale."""
    n = Net("MobileNet-SSD", (1, 3, 300, 300), input_layer="input")

    def conv_relu(name: str, x: str, **param: Any) -> str:
        if merged:
            return n.relu(f"{name}/relu", n.conv(name, x, **param))
        x = n.conv(name, x, bias_term=False, **{k: v for k, v in param.items() if k != "engine"})
        return n.relu(f"{name}/relu", n.bn_scale(f"{name}/bn", f"{name}/scale", x))

    x = conv_relu("conv0", "data", num_output=32, pad=1, kernel_size=3, stride=2)
    channels = 32
    for b, (out, stride) in enumerate(MSSD_BLOCKS, start=1):
        strided = {"stride": stride} if stride != 1 else {}
        x = conv_relu(f"conv{b}/dw", x, num_output=channels, pad=1, kernel_size=3, group=channels, **strided,
                      engine="CAFFE")
        x = conv_relu(f"conv{b}", x, num_output=out, kernel_size=1)
        channels = out
    for b, (squeeze, out) in enumerate(MSSD_EXTRAS, start=14):
        x = conv_relu(f"conv{b}_1", x, num_output=squeeze, kernel_size=1)
        x = conv_relu(f"conv{b}_2", x, num_output=out, pad=1, kernel_size=3, stride=2)
    heads = []
    for source, low, high in MSSD_SOURCES:
        ratios = [2.0] if high is None else [2.0, 3.0]
        sizes = {"min_size": low} if high is None else {"min_size": low, "max_size": high}
        heads.append(_head(n, source, source, 3 if high is None else 6, 21, {"kernel_size": 1}, **sizes,
                           aspect_ratio=ratios, flip=True, clip=False, variance=VARIANCE, offset=0.5))
    _detection_output(n, heads, 21, num_classes=21, share_location=True, background_label_id=0,
                      nms_param={"nms_threshold": 0.45, "top_k": 100}, code_type="CENTER_SIZE", keep_top_k=100,
                      confidence_threshold=0.25)
    return n.proto


# OpenCV's face detector: a pre-activation ResNet-10-like body at reduced widths. (block, 3x3 widths, stride of
# its first conv, dilation of its second, the layers whose names end in "_h", the publisher's marks of layers
# changed from the ResNet it started from); a block without bn1 adds its input itself, the others a 1x1 projection
RES10_BLOCKS = (("layer_64_1", (32, 32), 1, 1, {"conv1", "bn2", "scale2", "conv2"}),
                ("layer_128_1", (128, 128), 2, 1, {"bn1", "scale1", "conv1", "conv_expand"}),
                ("layer_256_1", (256, 256), 2, 1, set()),
                ("layer_512_1", (128, 256), 1, 2, {"conv1", "bn2", "scale2", "conv2", "conv_expand"}))
# the extra layers conv6 .. conv9: (1x1 channels, 3x3 channels, 3x3 stride)
RES10_EXTRAS = ((6, 128, 256, 2), (7, 64, 128, 2), (8, 64, 128, 1), (9, 64, 128, 1))
# (source blob, head prefix, min size, max size, aspect ratios, step): SSD300's scales on a 300x300 image
RES10_SOURCES = (("layer_256_1_bn1", "conv4_3_norm", 30.0, 60.0, (2.0,), 8.0),
                 ("fc7", "fc7", 60.0, 111.0, (2.0, 3.0), 16.0),
                 ("conv6_2_h", "conv6_2", 111.0, 162.0, (2.0, 3.0), 32.0),
                 ("conv7_2_h", "conv7_2", 162.0, 213.0, (2.0, 3.0), 64.0),
                 ("conv8_2_h", "conv8_2", 213.0, 264.0, (2.0,), 100.0),
                 ("conv9_2_h", "conv9_2", 264.0, 315.0, (2.0,), 300.0))


def _res10_block(n: Net, x: str, block: str, widths: tuple[int, int], stride: int, dilation: int,
                 marked: set[str]) -> str:
    """BN-Scale-ReLU (except the first block, whose input is already activated), 3x3, BN-Scale-ReLU,
    3x3, plus the shortcut; the sum is left unactivated for the next block's bn1."""
    def name(key: str) -> str:
        return f"{block}_{key}{'_h' if key in marked else ''}"

    def conv(key: str, bottom: str, out: int, k: int, stride: int, pad: int, **more: Any) -> str:
        return n.conv(name(key), bottom, num_output=out, bias_term=False, pad=pad, kernel_size=k, stride=stride, **more)

    first = block == RES10_BLOCKS[0][0]
    if not first:
        x = n.relu(f"{block}_relu1", n.bn_scale(name("bn1"), name("scale1"), x, name("bn1")))
    y = conv("conv1", x, widths[0], 3, stride, 1)
    y = n.relu(f"{block}_relu2", n.bn_scale(name("bn2"), name("scale2"), y))
    more = {"dilation": dilation} if dilation != 1 else {}
    y = conv("conv2", y, widths[1], 3, 1, dilation, **more)
    shortcut = x if first else conv("conv_expand", x, widths[1], 1, stride, 0)
    return n.eltwise(f"{block}_sum", [y, shortcut])


@register("opencv_face_detector_res10")
def res10_ssd():
    """Its input passes a BatchNorm + Scale first (data_bn); fc7 is the body's output after a last
    BN-Scale-ReLU, named as VGG-SSD's source it replaces (likewise conv4_3_norm)."""
    n = Net("", (1, 3, 300, 300), input_layer="input")
    x = n.bn_scale("data_bn", "data_scale", "data", "data_bn")
    x = n.conv("conv1_h", x, num_output=32, pad=3, kernel_size=7, stride=2)
    x = n.relu("conv1_relu", n.bn_scale("conv1_bn_h", "conv1_scale_h", x))
    x = n.layer("Pooling", "conv1_pool", x, kernel_size=3, stride=2)  # pool left at its default, MAX
    for block in RES10_BLOCKS:
        x = _res10_block(n, x, *block)
    x = n.layer("ReLU", "last_relu", n.bn_scale("last_bn_h", "last_scale_h", x), "fc7")
    for b, squeeze, out, stride in RES10_EXTRAS:
        x = n.relu(f"conv{b}_1_relu", n.conv(f"conv{b}_1_h", x, num_output=squeeze, pad=0, kernel_size=1, stride=1))
        x = n.relu(f"conv{b}_2_relu", n.conv(f"conv{b}_2_h", x, num_output=out, pad=1, kernel_size=3, stride=stride))
    heads = []
    for source, prefix, low, high, ratios, step in RES10_SOURCES:
        if prefix == "conv4_3_norm":
            source = n.layer("Normalize", prefix, source, across_spatial=False, channel_shared=False)
        boxes = 2 + 2 * len(ratios)  # min, max and each ratio flipped
        heads.append(_head(n, source, prefix, boxes, 2, {"pad": 1, "kernel_size": 3, "stride": 1}, min_size=low,
                           max_size=high, aspect_ratio=list(ratios), flip=True, clip=False, variance=VARIANCE,
                           step=step, offset=0.5))
    _detection_output(n, heads, 2, num_classes=2, share_location=True, background_label_id=0,
                      nms_param={"nms_threshold": 0.45, "top_k": 400}, code_type="CENTER_SIZE", keep_top_k=200,
                      confidence_threshold=0.01)
    return n.proto
