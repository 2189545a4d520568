"""The PyTorch modules on a CUDA device give Caffe's numbers as on the CPU: every tensor a module makes in
its forward pass (priors, anchors, thresholds, index tables) is made on its input's device. Runs only where
CUDA is available (a GPU machine; skipped on CPU-only CI); TF32 is off, so the tolerance is the standard one."""
from __future__ import annotations

import pytest
import torch

from converters import to_pytorch
from tests.converters.common import close, describe, load_fixture, torch_values
from tests.converters.test_fork_ssd import FORK_CAFFE, _load
from tests.helpers import SHARED, shared_params

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
              pytest.mark.filterwarnings("ignore:left out training-only layers")]

MODELS = ["bvlc_googlenet", "resnet50", "squeezenet_v1.1", "fcn8s_voc"]  # convolution, pooling, BN, Deconvolution, Crop
FORK = [SHARED / "reference" / "fork_caffe" / n for n in FORK_CAFFE]


def _check_on_cuda(graph, ins, outs):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    got = torch_values(to_pytorch(graph), graph, ins, list(outs), device="cuda")
    bad = [f"{b}: {describe(got[b], ref)}" for b, ref in outs.items() if not close(got[b], ref)]
    assert not bad, "; ".join(bad[:5])


@pytest.mark.parametrize("fixture", shared_params(FORK, [f.name for f in FORK]))
def test_fork_fixture_on_cuda(fixture, weights_cache):
    graph, ins, outs = _load(fixture, weights_cache)
    _check_on_cuda(graph, ins, outs)


@pytest.mark.parametrize("name", MODELS)
def test_reference_model_on_cuda(name, weights_cache):
    fixture = SHARED / "reference" / "models" / name
    if not fixture.is_dir():
        pytest.skip(f"{fixture} is missing")
    graph, ins, outs = load_fixture(fixture, weights_cache)
    _check_on_cuda(graph, ins, outs)
