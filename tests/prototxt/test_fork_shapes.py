"""`from prototxt import load_net` knows the shapes of the fork layer types by itself: in a fresh
interpreter, with neither `converters` nor torch imported, it infers every blob of the corpus's fork nets."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import REPO

# (corpus net, input shapes given where its data layer reads the size from its images)
NETS = {
    "mobilenet_ssd/MobileNetSSD_deploy.prototxt": None,     # Permute, PriorBox, DetectionOutput, ConvolutionDepthwise
    "mobilenetv2_ssdlite/deploy.prototxt": None,            # ReLU6
    "segnet/segnet_inference.prototxt": {"data": (1, 3, 360, 480)},  # DenseImageData, BN, Upsample with a mask
    "enet/enet_deploy_final.prototxt": None,                # the mask Upsample, ENet's Python spatial dropout
    "pspnet50_ade20k/pspnet50_ADE20K_473.prototxt": None,   # Interp, PSPNet's BN
    "faster_rcnn_vgg16/test.prototxt": None,                # ROIPooling, the proposal Python layer
    "shufflenet_v2/shufflenet_v2_1x_deploy.prototxt": None,  # ShuffleChannel
}
FORK_TYPES = {"Permute", "PriorBox", "DetectionOutput", "ConvolutionDepthwise", "ReLU6", "DenseImageData", "BN",
              "Upsample", "Interp", "ROIPooling", "Python", "ShuffleChannel"}

SCRIPT = """
import json, sys
from prototxt import load_net
out = {}
for path, shapes in json.loads(sys.argv[1]).items():
    graph = load_net(path, input_shapes=shapes)
    out[path] = dict(unknown=sorted(graph.unknown_types), problem=graph.shape_problem,
                     unshaped=[v for v, value in graph.values.items() if value.shape is None],
                     types=sorted({layer.type for layer in graph.layers}))
out["imported"] = [m for m in ("converters", "torch") if m in sys.modules]
print(json.dumps(out))
"""


def test_load_net_shapes_fork_nets_without_converters(shared):
    nets = {str(shared / "corpus" / net): shapes for net, shapes in NETS.items()}
    done = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(nets)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out.pop("imported") == []
    for path, got in out.items():
        assert (got["unknown"], got["problem"], got["unshaped"]) == ([], None, []), path
    assert FORK_TYPES <= {t for got in out.values() for t in got["types"]}
