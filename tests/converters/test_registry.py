"""The layer registry: every registered type is checked somewhere (a fixture computed by real Caffe in
../shared/reference, or a semantics test named in SEMANTICS), a type's facts live on its implementation,
losses are implementations, and a broken plugin is reported."""
from __future__ import annotations

import importlib
import re
import warnings

import numpy as np
import pytest

from converters import implementation, registered_types, registry, to_onnx, to_pytorch
from converters.torch import run
from prototxt import TRAINING_ONLY_TYPES, load_net
from tests.helpers import SHARED

# Types no reference fixture holds -> the test (module::function) that checks their semantics.
SEMANTICS = {
    "Parameter": "tests.converters.test_layer_semantics::test_parameter_layer_output",
    "RNN": "tests.converters.test_recurrent::test_expose_hidden_carries_state",
    "EuclideanLoss": "tests.converters.test_registry::test_euclidean_loss_is_caffes",
    "SigmoidCrossEntropyLoss": "tests.converters.test_registry::test_sigmoid_cross_entropy_loss_is_caffes",
    "ContrastiveLoss": "tests.converters.test_registry::test_losses_without_a_torch_form_are_dropped_and_refused",
    "HingeLoss": "tests.converters.test_registry::test_losses_without_a_torch_form_are_dropped_and_refused",
    "InfogainLoss": "tests.converters.test_registry::test_losses_without_a_torch_form_are_dropped_and_refused",
    "MultinomialLogisticLoss": "tests.converters.test_registry::test_losses_without_a_torch_form_are_dropped_and_refused",
    "Silence": "tests.converters.test_registry::test_silence_computes_nothing",
    "ROIPooling": "tests.converters.test_fork_layers::test_roi_pooling",
    "PSROIPooling": "tests.converters.test_fork_layers::test_psroi_pooling",
    "Python": "tests.converters.test_fork_layers::test_proposal_layer_numpy_transcription",
}


def fixture_types() -> dict[str, list[str]]:
    """Layer type -> the reference fixtures (real Caffe's numbers) whose net holds it."""
    root = SHARED / "reference"
    if not root.is_dir():
        pytest.skip(f"{root} is missing")
    found: dict[str, list[str]] = {}
    # a fixture's net is its net.prototxt, or the corpus prototxt its `source` file names
    nets = [(n.parent, n) for n in root.rglob("net.prototxt")]
    nets += [(s.parent, SHARED / s.read_text().strip()) for s in root.rglob("source")]
    for fixture, net in nets:
        for t in set(re.findall(r'\btype:\s*"?(\w+)"?', net.read_text(errors="replace"))):
            found.setdefault(t, []).append(str(fixture.relative_to(root)))
    return found


def test_every_registered_type_has_a_fixture_or_a_semantics_test():
    fixtures = fixture_types()
    uncovered = [t for t in registered_types() if t not in fixtures and t not in SEMANTICS]
    assert uncovered == [], f"add a fixture or a semantics test (and a SEMANTICS entry) for {uncovered}"
    for t, where in SEMANTICS.items():
        assert t in registered_types(), f"SEMANTICS names {t}, which nobody registers"
        module, _, name = where.partition("::")
        assert callable(getattr(importlib.import_module(module), name, None)), where


def test_a_types_facts_live_on_its_implementation():
    training_only = {t for t in registered_types() if implementation(t).training_only}
    assert training_only == set(TRAINING_ONLY_TYPES)
    assert {t for t in registered_types() if implementation(t).statistics} == {"BatchNorm"}
    assert {t for t in registered_types() if implementation(t).folds_affine} == {"Convolution", "InnerProduct"}
    assert {t for t in registered_types() if not implementation(t).dynamic_batch} == {"LSTM", "RNN"}
    assert {t for t in registered_types() if not implementation(t).any_batch} == {"LSTM", "RNN", "Reshape"}
    deterministic = {t for t in registered_types() if implementation(t).deterministic}
    assert {"ReLU", "Pooling", "Concat", "Flatten", "Eltwise"} <= deterministic
    assert not deterministic & {"Dropout", "BatchNorm", "Convolution", "InnerProduct", "PReLU", "Scale"}


def _loss_net(tmp_path, loss: str, shape=(4, 3, 2), extra: str = ""):
    dims = " ".join(f"dim: {d}" for d in shape)
    path = tmp_path / "loss.prototxt"
    path.write_text(f'name: "l"\ninput: "x"\ninput_shape {{ {dims} }}\ninput: "t"\ninput_shape {{ {dims} }}\n'
                    f'layer {{ name: "loss" type: "{loss}" bottom: "x" bottom: "t" top: "loss" {extra} }}\n')
    return load_net(path, phase="train")


def _train_forward(graph, feeds) -> float:
    out = run(to_pytorch(graph, training=True), feeds)
    return float(np.asarray(out["loss"]).reshape(()))


def test_euclidean_loss_is_caffes(tmp_path):
    """euclidean_loss_layer.cpp: dot(a - b, a - b) / num / 2."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 4, 3, 2)).astype(np.float32)
    want = float(((a.astype(np.float64) - b) ** 2).sum() / a.shape[0] / 2)
    assert _train_forward(_loss_net(tmp_path, "EuclideanLoss"), [a, b]) == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("extra, normalizer", [("", "batch"), ("loss_param { normalization: FULL }", "count"),
                                               ("loss_param { normalization: NONE }", "one")])
def test_sigmoid_cross_entropy_loss_is_caffes(tmp_path, extra, normalizer):
    """sigmoid_cross_entropy_loss_layer.cpp: loss -= x*(t - (x >= 0)) - log(1 + exp(x - 2*x*(x >= 0))) over
    every item, divided by the normalizer (BATCH_SIZE unless loss_param says otherwise: outer_num_ =
    the first axis)."""
    rng = np.random.default_rng(1)
    x = rng.normal(0, 3, (4, 3, 2)).astype(np.float32)
    t = rng.integers(0, 2, (4, 3, 2)).astype(np.float32)
    xd = x.astype(np.float64)
    pos = (xd >= 0).astype(np.float64)
    loss = -(xd * (t - pos) - np.log1p(np.exp(xd - 2 * xd * pos))).sum()
    want = loss / {"batch": 4, "count": x.size, "one": 1}[normalizer]
    assert _train_forward(_loss_net(tmp_path, "SigmoidCrossEntropyLoss", extra=extra), [x, t]) == \
        pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("loss", ["ContrastiveLoss", "HingeLoss", "InfogainLoss", "MultinomialLogisticLoss"])
def test_losses_without_a_torch_form_are_dropped_and_refused(tmp_path, loss):
    """Training-only, without a PyTorch form: a conversion (deploy or for training) leaves them out with a
    note naming them (`zoo train` refuses them: tests/zoo/test_train.py)."""
    path = tmp_path / "net.prototxt"
    path.write_text('name: "n"\ninput: "x"\ninput_shape { dim: 2 dim: 3 }\ninput: "t"\ninput_shape { dim: 2 }\n'
                    'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip" inner_product_param { num_output: 3 } }\n'
                    f'layer {{ name: "loss" type: "{loss}" bottom: "ip" bottom: "t" top: "loss" }}\n')
    graph = load_net(path, phase="train")
    graph.layer("ip").blobs = [np.ones((3, 3), np.float32), np.zeros(3, np.float32)]
    with pytest.warns(UserWarning, match=f"left out training-only layers: loss \\({loss}\\)"):
        model = to_onnx(graph)
    assert [n.name for n in model.graph.node] == ["ip"]
    with pytest.warns(UserWarning, match=f"left out training-only layers: loss \\({loss}\\)"):
        module = to_pytorch(graph, training=True)
    assert list(module.caffe_names.values()) == ["ip"]
    assert not implementation(loss).has_torch and implementation(loss).training_only


def test_silence_computes_nothing(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text('name: "n"\ninput: "x"\ninput_shape { dim: 2 dim: 3 }\n'
                    'layer { name: "r" type: "ReLU" bottom: "x" top: "r" }\n'
                    'layer { name: "s" type: "Silence" bottom: "x" }\n')
    graph = load_net(path)
    x = np.array([[-1, 0, 2], [3, -4, 5]], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no note for a layer with nothing to compute
        module = to_pytorch(graph, training=True)
    np.testing.assert_array_equal(run(module, [x])["r"], np.maximum(x, 0))
    assert "s" not in module.caffe_names.values()


class _BrokenEntryPoint:
    name, value = "ssd_layers", "caffezoo_ssd.layers"

    def load(self):
        raise ImportError("No module named 'caffezoo_ssd'")


def test_a_broken_plugin_is_reported_and_the_builtins_still_load(monkeypatch):
    import importlib.metadata
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: [_BrokenEntryPoint()])
    monkeypatch.setattr(registry, "_discovered", False)
    with pytest.warns(registry.PluginWarning) as caught:
        types = registry.registered_types()
    message = str(caught[0].message)
    assert "ssd_layers" in message and "caffezoo_ssd.layers" in message and "ImportError" in message
    assert "Convolution" in types
