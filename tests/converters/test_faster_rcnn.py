"""End to end: the corpus Faster R-CNN nets (py-faster-rcnn's test.prototxt for VGG16 and ZF: data and
im_info in, the RPN, the proposal layer, ROIPooling, the Fast R-CNN head) with seeded weights at a small
input, converted to PyTorch and to ONNX. Every blob agrees between the two backends, and each backend's
rois are the NumPy transcription of py-faster-rcnn's proposal layer run on that backend's own RPN outputs."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from converters import to_pytorch
from prototxt import load_net
from tests.converters.common import close, describe, onnx_values, torch_values
from tests.converters.test_fork_layers import proposal_reference
from tests.helpers import SHARED, make_weights_module, shared_params

pytestmark = pytest.mark.filterwarnings("ignore:TF32 acceleration:UserWarning")

HEIGHT, WIDTH = 96, 128
# make_weights.py's per-layer "scale": RPN logits of ~10 saturate the float32 softmax, so many anchors tie at
# one score, where py-faster-rcnn's order is numpy's unstable argsort's (ours: the lower anchor index first);
# deltas of ~5 stretch most boxes over the whole image. A tenth keeps the proposals distinct and varied.
RPN_SCALE = {"rpn_cls_score": 0.1, "rpn_bbox_pred": 0.1}


def _seeded(net: str):
    """The net at 1x3x96x128 with make_weights.py's numbers (seed 7, the recipe in layer order)."""
    graph = load_net(SHARED / "corpus" / net / "test.prototxt", input_shapes={"data": (1, 3, HEIGHT, WIDTH), "im_info": (1, 3)})
    layers = [layer for layer in graph.layers if layer.param_shapes]
    recipe = {"seed": 7, "layers": [{"name": layer.name, "type": layer.type, "blobs": [list(s) for s in layer.param_shapes],
                                     **({"scale": RPN_SCALE[layer.name]} if layer.name in RPN_SCALE else {})}
                                    for layer in layers]}
    for layer, (_, arrays) in zip(layers, make_weights_module().weights(recipe)):
        layer.blobs = arrays
    return graph


@pytest.mark.parametrize("net", shared_params(["faster_rcnn_vgg16", "faster_rcnn_zf"],
                                              marks=[pytest.mark.slow, ()]))
def test_faster_rcnn_both_backends_and_the_proposal_transcription(net):
    graph = _seeded(net)
    rng = np.random.default_rng(5)
    ins = {"data": rng.uniform(-1, 1, (1, 3, HEIGHT, WIDTH)).astype(np.float32),
           "im_info": np.array([[HEIGHT, WIDTH, 1]], np.float32)}
    blobs = [b for b in graph.caffe_blobs() if b not in ins]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the note that our own proposal layer serves the Python layer
        got = {"torch": torch_values(to_pytorch(graph), graph, ins, blobs), "onnx": onnx_values(graph, ins, blobs)}
    for b in blobs:
        assert close(got["onnx"][b], got["torch"][b]), f"{b}: {describe(got['onnx'][b], got['torch'][b])}"
    for backend, values in got.items():
        foreground = values["rpn_cls_prob_reshape"][:, 9:]
        assert len(np.unique(foreground)) == foreground.size  # no ties: py-faster-rcnn's order is defined
        rois, _ = proposal_reference(values["rpn_cls_prob_reshape"], values["rpn_bbox_pred"], ins["im_info"], 16)
        assert len(rois) >= 15, f"{backend}: only {len(rois)} proposals"  # 20 (VGG16), 27 (ZF) at 96x128
        assert close(values["rois"], rois), f"{backend} rois: {describe(values['rois'], rois)}"
        assert values["cls_prob"].shape[0] == values["bbox_pred"].shape[0] == len(rois)
