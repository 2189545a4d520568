"""Faster R-CNN (rbgirshick/py-faster-rcnn), its VGG16 PASCAL VOC test net: VGG 16's convolutions; a
region proposal network (3x3 conv, per-anchor object scores and box deltas for 9 anchors) whose Python
proposal layer (served by caffezoo's own implementation) turns them into 300 regions of the image
im_info describes; ROI pooling of conv5_3 to 7x7 per region, fc6 and fc7, then per region the class
scores with their softmax and per-class box deltas."""
from __future__ import annotations

from ._net import Net
from ._registry import register
from .alexnet import fc6_fc7
from .vgg import trunk

ANCHORS = 9  # 3 scales x 3 aspect ratios (generate_anchors' defaults)
STRIDE = 16  # conv5_3's stride on the image


@register("faster_rcnn_vgg16", classes=21)
def faster_rcnn_vgg16(classes: int):
    n = Net("VGG_ILSVRC_16_layers", (1, 3, 224, 224), input_layer="input")
    info = n.input("im_info", (1, 3))  # [height, width, scale] of the image fed
    features = trunk(n, "data")
    x = n.relu("rpn_relu/3x3", n.conv("rpn_conv/3x3", features, "rpn/output", num_output=512, pad=1,
                                      kernel_size=3, stride=1))
    scores = n.conv("rpn_cls_score", x, num_output=2 * ANCHORS, pad=0, kernel_size=1, stride=1)
    deltas = n.conv("rpn_bbox_pred", x, num_output=4 * ANCHORS, pad=0, kernel_size=1, stride=1)
    # the softmax runs over (background, object) per anchor: (1, 2, A*H, W), then back to (1, 2A, H, W)
    x = n.layer("Reshape", "rpn_cls_score_reshape", scores, shape={"dim": [0, 2, -1, 0]})
    x = n.layer("Softmax", "rpn_cls_prob", x)
    x = n.layer("Reshape", "rpn_cls_prob_reshape", x, shape={"dim": [0, 2 * ANCHORS, -1, 0]})
    rois = n.layer("Python", "proposal", [x, deltas, info], "rois", module="rpn.proposal_layer",
                   layer="ProposalLayer", param_str=f"'feat_stride': {STRIDE}")
    x = n.layer("ROIPooling", "roi_pool5", [features, rois], "pool5", pooled_h=7, pooled_w=7,
                spatial_scale=1 / STRIDE)
    x = fc6_fc7(n, x, 4096)
    scores = n.ip("cls_score", x, num_output=classes)
    n.ip("bbox_pred", x, num_output=4 * classes)
    n.softmax("cls_prob", scores)
    return n.proto
