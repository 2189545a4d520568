"""Every corpus net: what it converts to for inference, or why not. The only refusals allowed are nets
with no deploy form (their input shape lives in a data source: LMDB, LevelDB, HDF5, images) and the
named exceptions below, each with its reason."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from converters import registry
from prototxt import CaffeError, InputShapeRequired, MissingBottomError, UnsupportedLayers, load_net, load_solver
from tests.helpers import SHARED, corpus_nets, shared_params

# Layer types of training nets only (data sources with annotations, losses, evaluation), no deploy form.
# MarginInnerProduct (SphereFace's A-Softmax) takes the label as its second bottom: a training head.
TRAINING_FORK_TYPES = {"AnnotatedData", "MultiBoxLoss", "DetectionEvaluate", "SmoothL1Loss", "ImageLabelmapData",
                       "MarginInnerProduct"}
# Nets refused for another reason, and why.
EXCEPTIONS = {
    "vgg16/VGG_ILSVRC_16_layers_deploy.prototxt": "fc6 would hold 374.7 GiB (pool strides of 1); Caffe refuses it too",
    "detectnet_kitti/detectnet_network.prototxt": "DetectNet's clustering is user Python code, never run",
    "pycaffe_linreg/linreg.prototxt": "its loss is user Python code, never run",
}


def _solver_state(path: Path) -> dict:
    """The stages and level of the first test_state of a solver beside ``path`` that names it as its net:
    the layers of such a net are chosen by those stage rules, as Caffe's solver builds it."""
    for solver_path in sorted(path.parent.glob("*solver*.prototxt")):
        solver = load_solver(solver_path)
        named = {solver.net, solver.train_net, *solver.test_net}
        if path.name in {Path(n).name for n in named if n} and solver.test_state:
            state = solver.test_state[0]
            return dict(stages=list(state.stage), level=state.level if state.HasField("level") else None)
    return {}


def _census(net: str):
    path = SHARED / "corpus" / net
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state = _solver_state(path)
        try:
            graph = load_net(path, **state)
        except MissingBottomError:
            graph = load_net(path, phase="train", **state)
        graph.require_shapes()
        registry.check_supported(graph)
        return registry.inference_io(graph)


@pytest.mark.parametrize("net", shared_params(corpus_nets()))
def test_corpus_net_converts_or_has_no_deploy_form(net):
    try:
        io = _census(net)
    except InputShapeRequired as e:  # a train/test net: the shape is in its data source
        assert "data layer" in str(e), str(e)
        return
    except UnsupportedLayers as e:
        missing = set(e.types)
        python_data = missing == {"Python"} and ("train" in net or "val" in net)  # a Python data/dropout layer of a training net
        assert missing <= TRAINING_FORK_TYPES | {"Python"} and (missing - {"Python"} or python_data) or net in EXCEPTIONS, str(e)
        return
    except CaffeError as e:
        assert net in EXCEPTIONS, f"{net}: {e}"
        return
    assert net not in EXCEPTIONS, f"{net} converts now: drop it from EXCEPTIONS"
    assert io.outputs, net
