"""Bad input to the converters gives one clear line; custom layer types plug in through
``converters.register_layer`` and run in both backends."""
from __future__ import annotations

import numpy as np
import pytest

import converters
from converters import registry, to_onnx, to_pytorch
from prototxt import UnsupportedLayers, WeightsError, load_net, save_net, shapes

INPUT = 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 4 } } }\n'


def _net(tmp_path, body: str, name: str = "net.prototxt"):
    path = tmp_path / name
    path.write_text('name: "t"\n' + INPUT + body)
    return path


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text, text
    return text


@pytest.fixture
def clean_registry():
    """Leave the layer registry and shape rules as they were."""
    registry.registered_types()  # built-ins discovered before a test registers anything
    saved_impls, saved_rules = dict(registry._REGISTRY), dict(shapes._RULES)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved_impls)
    shapes._RULES.clear()
    shapes._RULES.update(saved_rules)


@pytest.mark.parametrize("convert", [to_pytorch, to_onnx], ids=["torch", "onnx"])
def test_unsupported_types_listed_at_once(tmp_path, convert):
    path = _net(tmp_path, 'layer { name: "f1" type: "Foo" bottom: "data" top: "a" }\n'
                          'layer { name: "b1" type: "Bar" bottom: "a" top: "b" }\n'
                          'layer { name: "f2" type: "Foo" bottom: "b" top: "c" }\n'
                          'layer { name: "relu" type: "ReLU" bottom: "c" top: "c" }\n')
    graph = load_net(path)
    with pytest.raises(UnsupportedLayers) as info:
        convert(graph)
    text = _one_line(info.value)
    assert info.value.types == {"Foo": ["f1", "f2"], "Bar": ["b1"]}
    assert "Foo ('f1', 'f2')" in text and "Bar ('b1')" in text, text
    assert "register_layer" in text and "caffezoo.layers" in text, text  # the plugin hint
    assert str(path) in text


@pytest.mark.parametrize("convert", [to_pytorch, to_onnx], ids=["torch", "onnx"])
def test_python_layer_refused_never_imported(tmp_path, monkeypatch, convert):
    """A Python layer names user code: the converters refuse it and never import that module."""
    marker = tmp_path / "imported"
    (tmp_path / "evil_mod.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass EvilLayer: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = _net(tmp_path, 'layer { name: "py" type: "Python" bottom: "data" top: "p"\n'
                          '        python_param { module: "evil_mod" layer: "EvilLayer" } }\n')
    graph = load_net(path)
    with pytest.raises(UnsupportedLayers) as info:
        convert(graph)
    text = _one_line(info.value)
    assert "'py' (evil_mod.EvilLayer)" in text, text
    assert "never imported or run implicitly" in text, text
    assert not marker.exists()


def test_python_layer_with_other_unsupported_types(tmp_path):
    path = _net(tmp_path, 'layer { name: "py" type: "Python" bottom: "data" top: "p"\n'
                          '        python_param { module: "m" layer: "L" } }\n'
                          'layer { name: "f" type: "Foo" bottom: "p" top: "q" }\n')
    with pytest.raises(UnsupportedLayers) as info:
        to_pytorch(load_net(path))
    text = _one_line(info.value)
    assert "Foo ('f')" in text and "(m.L)" in text and "never imported or run implicitly" in text, text
    assert "register_layer" in text, text


def _conv(num_output: int) -> str:
    return ('layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"\n'
            f'        convolution_param {{ num_output: {num_output} kernel_size: 3 }} }}\n')


def test_weights_that_do_not_fit(tmp_path):
    donor = load_net(_net(tmp_path, _conv(4), "four.prototxt"))
    rng = np.random.default_rng(0)
    for layer in donor.layers:
        layer.blobs = [rng.standard_normal(s).astype(np.float32) for s in layer.param_shapes]
    save_net(donor, tmp_path / "saved.prototxt", tmp_path / "four.caffemodel")
    five = _net(tmp_path, _conv(5), "five.prototxt")
    with pytest.raises(WeightsError) as info:
        load_net(five, tmp_path / "four.caffemodel")
    text = _one_line(info.value)
    assert "'conv'" in text and "4x3x3x3" in text and "5x3x3x3" in text, text
    # the same file fits the net it came from
    graph = load_net(tmp_path / "four.prototxt", tmp_path / "four.caffemodel")
    assert to_pytorch(graph) is not None


@pytest.mark.parametrize("convert", [to_pytorch, to_onnx], ids=["torch", "onnx"])
def test_no_weights_refused(tmp_path, convert):
    with pytest.raises(ValueError) as info:
        convert(load_net(_net(tmp_path, _conv(4))))
    text = _one_line(info.value)
    assert "no weights for layers conv" in text and ".caffemodel" in text, text


def test_custom_layer_type_both_backends(tmp_path, clean_registry):
    import torch

    def double_shape(param, bottoms):
        return shapes.ShapeResult([tuple(bottoms[0])])

    class DoubleModule(torch.nn.Module):
        def forward(self, x):
            return x * 2

    @converters.register_layer("Double", shape=double_shape)
    class Double(converters.LayerImpl):
        def torch(self, layer, graph):
            return DoubleModule(), []

        def onnx(self, layer, ctx):
            ctx.node("Add", [layer.bottoms[0], layer.bottoms[0]], [layer.tops[0]])

    assert "Double" in converters.registered_types()
    path = _net(tmp_path, 'layer { name: "twice" type: "Double" bottom: "data" top: "y" }\n'
                          'layer { name: "relu" type: "ReLU" bottom: "y" top: "y" }\n')
    graph = load_net(path)
    assert graph.values[graph.final_value("y")].shape == (2, 3, 5, 4)
    x = np.random.default_rng(1).standard_normal((2, 3, 5, 4)).astype(np.float32)
    want = np.maximum(2 * x, 0)

    module = to_pytorch(graph)
    assert type(module.twice).__name__ == "DoubleModule"
    with torch.no_grad():
        np.testing.assert_array_equal(module(torch.from_numpy(x)).numpy(), want)

    import onnxruntime as ort
    model = to_onnx(graph)
    assert [n.name for n in model.graph.node][0] == "twice"
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(sess.run(None, {"data": x})[0], want)


def test_register_existing_type_needs_replace(clean_registry):
    class Mine(converters.LayerImpl):
        pass

    original = registry.get("ReLU")
    with pytest.raises(ValueError, match=r"'ReLU' is already registered by ReLU; pass replace=True"):
        converters.register_layer("ReLU")(Mine)
    assert registry.get("ReLU") is original

    @converters.register_layer("Twice")
    class Once(converters.LayerImpl):
        pass

    with pytest.raises(ValueError, match="replace=True"):
        converters.register_layer("Twice")(Mine)

    converters.register_layer("ReLU", replace=True)(Mine)
    assert isinstance(registry.get("ReLU"), Mine)


def test_unknown_type_lookup_suggests(clean_registry):
    with pytest.raises(KeyError, match="did you mean Convolution"):
        registry.get("Convolutoin")
