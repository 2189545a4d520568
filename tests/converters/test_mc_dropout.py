"""Monte Carlo dropout: caffe-segnet's Dropout with `sample_weights_test: true` (Bayesian SegNet) samples at
test as in training (alexgkendall/caffe-segnet dropout_layer.cpp: mask ~ Bernoulli(1 - ratio) per value,
top = bottom * mask * 1/(1 - ratio)); without it, Dropout at test is a copy. Both backends draw their own
masks, so the checks are statistics, seeding (PyTorch) and what verify leaves uncompared."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from converters import random_layers, random_values, to_onnx, to_pytorch, verify
from converters.layers.neuron import MonteCarloDropoutNote
from prototxt import load_net
from tests.converters.common import ort_session

SHAPE = (2, 8, 64, 64)  # 65536 values: the dropped fraction within 0.01 of p is > 5 sigma


def _net(tmp_path, ratio: float, sample: bool):
    path = tmp_path / "net.prototxt"
    flag = "sample_weights_test: true" if sample else ""
    path.write_text(f'name: "d"\ninput: "data"\ninput_shape {{ dim: {SHAPE[0]} dim: {SHAPE[1]} dim: {SHAPE[2]} '
                    f'dim: {SHAPE[3]} }}\n'
                    'layer { name: "relu" type: "ReLU" bottom: "data" top: "relu" }\n'
                    'layer { name: "drop" type: "Dropout" bottom: "relu" top: "relu"\n'
                    f'  dropout_param {{ dropout_ratio: {ratio} {flag} }} }}\n'
                    'layer { name: "out" type: "Power" bottom: "relu" top: "out" power_param { scale: 2 } }\n')
    return load_net(path)


def _runner(graph, backend: str):
    """x -> output of one forward pass; the passes of one runner share a module or a session, whose
    generator moves on (onnxruntime's session repeats its sequence from the start; torch's follows its seed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MonteCarloDropoutNote)
        if backend == "torch":
            module = to_pytorch(graph)

            def run(x):
                with torch.no_grad():
                    return module(torch.from_numpy(x)).numpy()
            return run
        sess = ort_session(to_onnx(graph))
        return lambda x: sess.run(None, {"data": x})[0]


@pytest.mark.parametrize("backend", ["torch", "onnx"])
@pytest.mark.parametrize("ratio", [0.5, 0.3])
def test_sample_weights_test_drops_ratio_and_scales_the_rest(tmp_path, backend, ratio):
    graph = _net(tmp_path, ratio, sample=True)
    x = np.random.default_rng(0).uniform(0.5, 2.0, SHAPE).astype(np.float32)  # no zeros of its own
    run = _runner(graph, backend)
    got = run(x) / 2  # undo the Power after the dropout
    dropped = got == 0
    assert abs(dropped.mean() - ratio) < 0.01
    np.testing.assert_allclose(got[~dropped], x[~dropped] / np.float32(1 - ratio), rtol=1e-6)
    again = run(x) / 2
    assert (again != got).mean() > 0.2  # a fresh mask each pass (same only where both drop or both keep)


def test_pytorch_masks_repeat_under_torch_manual_seed(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MonteCarloDropoutNote)
        module = to_pytorch(_net(tmp_path, 0.5, sample=True))
    x = torch.ones(SHAPE)
    with torch.no_grad():
        torch.manual_seed(7)
        a = module(x)
        torch.manual_seed(7)
        b = module(x)
        torch.manual_seed(8)
        c = module(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_plain_dropout_is_still_the_identity_at_test(tmp_path, backend):
    graph = _net(tmp_path, 0.5, sample=False)
    x = np.random.default_rng(1).uniform(0.5, 2.0, SHAPE).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MonteCarloDropoutNote)  # no note for a deterministic net
        got = _runner(graph, backend)(x)
    np.testing.assert_array_equal(got, 2 * x)
    assert random_layers(graph) == [] and random_values(graph) == set()


def test_conversion_says_the_outputs_are_random(tmp_path):
    graph = _net(tmp_path, 0.5, sample=True)
    for convert in (to_onnx, to_pytorch):
        with pytest.warns(MonteCarloDropoutNote, match=r"layer 'drop'.*random by design; average"):
            convert(graph)


def test_verify_leaves_the_sampled_blobs_uncompared(tmp_path):
    graph = _net(tmp_path, 0.5, sample=True)
    assert random_layers(graph) == ["drop"]
    assert random_values(graph) == {graph.final_value("relu"), "out"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MonteCarloDropoutNote)
        report = verify(graph)
    assert report.ok, report.lines()
    compared = [c for c in report.checks if not c.random]
    assert [c.layer for c in compared] == ["input", "relu"] and compared[1].torch_vs_onnx is not None
    assert [c.layer for c in report.checks if c.random] == ["drop", "out"]
    assert report.outputs == {}
    assert any("2 blobs computed from layers that sample at every forward pass ('drop')" in line
               for line in report.lines())


def test_bayesian_segnet_samples_in_its_six_dropout_layers(shared):
    graph = load_net(shared / "corpus" / "bayesian_segnet" / "bayesian_segnet_inference.prototxt")
    assert random_layers(graph) == ["encdrop3", "encdrop4", "encdrop5", "decdrop5", "decdrop4", "decdrop3"]


@pytest.mark.parametrize("ratio, flag, words", [
    (1.0, "sample_weights_test: true", "below 1"),      # Caffe's scale 1 / (1 - ratio): inf
    (1.0, "scale_train: false", "below 1"),
    (float("nan"), "", "from 0 to 1"),
    (1.5, "", "from 0 to 1"),
])
def test_a_ratio_without_an_output_is_one_line_in_both_backends(tmp_path, ratio, flag, words):
    from prototxt import CaffeError
    path = tmp_path / "net.prototxt"
    path.write_text('name: "d"\ninput: "data"\ninput_shape { dim: 1 dim: 2 dim: 3 dim: 3 }\n'
                    'layer { name: "drop" type: "Dropout" bottom: "data" top: "out"\n'
                    f'  dropout_param {{ dropout_ratio: {ratio} {flag} }} }}\n')
    graph = load_net(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MonteCarloDropoutNote)
        for convert in (to_onnx, to_pytorch):
            with pytest.raises(CaffeError) as info:
                convert(graph)
            assert "layer 'drop'" in str(info.value) and words in str(info.value) and "\n" not in str(info.value)
