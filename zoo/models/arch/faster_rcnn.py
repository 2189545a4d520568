"""Faster R-CNN (rbgirshick/py-faster-rcnn), its PASCAL VOC test nets: a backbone's convolutions; a
region proposal network (3x3 conv, per-anchor object scores and box deltas for 9 anchors) whose Python
proposal layer (served by caffezoo's own implementation) turns them into 300 regions of the image
im_info describes; ROI pooling of the last convolution per region, fc6 and fc7, then per region the
class scores with their softmax and per-class box deltas. VGG16 (the end2end test net) and ZF (the
alternating-optimisation test net its demo weights were saved from)."""
from __future__ import annotations

from typing import Any, Callable

from ._net import Net, fill
from ._registry import register
from .alexnet import fc6_fc7
from .vgg import trunk

ANCHORS = 9  # 3 scales x 3 aspect ratios (generate_anchors' defaults)
STRIDE = 16  # the last convolution's stride on the image
ZF_LRN = {"local_size": 3, "alpha": 0.00005, "beta": 0.75, "norm_region": "WITHIN_CHANNEL", "engine": "CAFFE"}


def zf_trunk(n: Net, x: str) -> str:
    """Zeiler & Fergus's five convolutions (conv1 and conv2 strided, each followed by a within-channel
    LRN and a padded 3x3 max pooling); returns conv5 after its ReLU."""
    for i, (out, k, pad, stride) in enumerate(((96, 7, 3, 2), (256, 5, 2, 2)), start=1):
        x = n.relu(f"relu{i}", n.conv(f"conv{i}", x, num_output=out, kernel_size=k, pad=pad, stride=stride))
        x = n.pool(f"pool{i}", n.lrn(f"norm{i}", x, **ZF_LRN), "MAX", kernel_size=3, stride=2, pad=1)
    for i, out in ((3, 384), (4, 384), (5, 256)):
        x = n.relu(f"relu{i}", n.conv(f"conv{i}", x, num_output=out, kernel_size=3, pad=1, stride=1))
    return x


@register("faster_rcnn_vgg16", net_name="VGG_ILSVRC_16_layers", backbone=trunk, rpn=("rpn_conv/3x3", "rpn/output",
          "rpn_relu/3x3", 512), roi=("roi_pool5", "pool5", 7))
@register("faster_rcnn_zf", net_name="ZF", backbone=zf_trunk, rpn=("rpn_conv1", "rpn_conv1", "rpn_relu1", 256),
          roi=("roi_pool_conv5", "roi_pool_conv5", 6), dropout={"scale_train": False},
          cls_loss={"ignore_label": -1, "normalize": True})
def faster_rcnn(net_name: str, backbone: Callable[[Net, str], str], rpn: tuple[str, str, str, int],
                roi: tuple[str, str, int], classes: int = 21, dropout: dict[str, Any] | None = None,
                cls_loss: dict[str, Any] | None = None):
    """``rpn``: the RPN convolution's name, top, ReLU name and width; ``roi``: the ROI pooling's name, top
    and output size. ZF's test net keeps two training leftovers: its dropouts' ``scale_train: false``
    (py-faster-rcnn's Caffe then scales by 1 - ratio at test) and a ``loss_param`` on cls_prob."""
    n = Net(net_name, (1, 3, 224, 224), input_layer="input")
    info = n.input("im_info", (1, 3))  # [height, width, scale] of the image fed
    features = backbone(n, "data")
    conv, top, relu, width = rpn
    x = n.relu(relu, n.conv(conv, features, top, num_output=width, pad=1, kernel_size=3, stride=1))
    scores = n.conv("rpn_cls_score", x, num_output=2 * ANCHORS, pad=0, kernel_size=1, stride=1)
    deltas = n.conv("rpn_bbox_pred", x, num_output=4 * ANCHORS, pad=0, kernel_size=1, stride=1)
    # the softmax runs over (background, object) per anchor: (1, 2, A*H, W), then back to (1, 2A, H, W)
    x = n.layer("Reshape", "rpn_cls_score_reshape", scores, shape={"dim": [0, 2, -1, 0]})
    x = n.layer("Softmax", "rpn_cls_prob", x)
    x = n.layer("Reshape", "rpn_cls_prob_reshape", x, shape={"dim": [0, 2 * ANCHORS, -1, 0]})
    rois = n.layer("Python", "proposal", [x, deltas, info], "rois", module="rpn.proposal_layer",
                   layer="ProposalLayer", param_str=f"'feat_stride': {STRIDE}")
    name, top, size = roi
    x = n.layer("ROIPooling", name, [features, rois], top, pooled_h=size, pooled_w=size, spatial_scale=1 / STRIDE)
    x = fc6_fc7(n, x, 4096, **(dropout or {}))
    scores = n.ip("cls_score", x, num_output=classes)
    n.ip("bbox_pred", x, num_output=4 * classes)
    n.softmax("cls_prob", scores)
    if cls_loss:
        fill(n.proto.layer[-1].loss_param, cls_loss)
    return n.proto
