"""`zoo convert` checks what it wrote, and never reports success on a model it silently got wrong:
the written model.py is imported in a fresh interpreter (a hostile name runs nothing there either),
weights that match no layer are refused, a train/test net keeps the blobs its losses were fed."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from prototxt import caffe_pb2, load_net, save_net
from tests.converters.test_codegen_safety import hostile_net, with_weights
from tests.converters.test_folder import clean_registry  # noqa: F401  (a fixture)
from tests.helpers import SHARED
from zoo import cli


def _save(graph, folder, name="net"):
    proto, weights = folder / f"{name}.prototxt", folder / f"{name}.caffemodel"
    save_net(graph, proto, weights)
    return proto, weights


def test_convert_of_a_hostile_net_runs_no_injected_code(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    proto, weights = _save(with_weights(hostile_net(marker)), tmp_path)
    assert cli.main(["convert", str(proto), "--weights", str(weights), "-o", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert not marker.exists()
    assert out.count("max |pytorch - onnxruntime|") == 2, out


def test_convert_verifies_the_written_model_py(tmp_path, capsys, monkeypatch):
    """A model.py that does not import fails `zoo convert`, though the module in memory is fine."""
    from converters import folder
    real = folder.generate_model_py
    monkeypatch.setattr(folder, "generate_model_py",
                        lambda p, graph: real(p, graph) + "\nraise ImportError('the written file')\n")
    proto, weights = _save(with_weights(_net({"a": "Scale"})), tmp_path)
    assert cli.main(["convert", str(proto), "--weights", str(weights), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "zoo: error:" in err and "the written file" in err and err.count("\n") == 1, err


def _net(layers: dict[str, str], name="t") -> caffe_pb2.NetParameter:
    """Input 'data' (1x2x1x1) through the named layers in a chain."""
    net = caffe_pb2.NetParameter(name=name)
    net.layer.add(name="input", type="Input", top=["data"]).input_param.shape.add(dim=[1, 2, 1, 1])
    bottom = "data"
    for layer, kind in layers.items():
        net.layer.add(name=layer, type=kind, bottom=[bottom], top=[layer])
        bottom = layer
    return net


def test_weights_matching_no_layer_are_refused(tmp_path, capsys):
    _, weights = _save(with_weights(_net({"x": "Scale"}, "other")), tmp_path, "other")
    proto, _ = _save(with_weights(_net({"a": "Scale", "b": "Scale"})), tmp_path)
    assert cli.main(["convert", str(proto), "--weights", str(weights), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("zoo: error:") and err.count("\n") == 1, err
    assert str(proto) in err and str(weights) in err
    assert not (tmp_path / "out" / "t.onnx").exists()


def test_weights_missing_some_layers_warn(tmp_path, capsys):
    _, weights = _save(with_weights(_net({"a": "Scale"})), tmp_path, "partial")
    proto, _ = _save(with_weights(_net({"a": "Scale", "b": "Scale", "c": "Scale"})), tmp_path)
    assert cli.main(["convert", str(proto), "--weights", str(weights), "-o", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    warning = [line for line in err.splitlines() if "warning" in line and "b, c" in line]
    assert warning and "filler" in warning[0], err


def _corpus(*parts: str):
    path = SHARED.joinpath("corpus", *parts)
    if not path.is_file():
        pytest.skip(f"{path} is missing (../shared)")
    return path


@pytest.mark.parametrize("folder, net, weights, data, deploy", [
    ("mnist_lenet", "lenet_train_test.prototxt", "lenet_iter_10000.caffemodel", "1,1,28,28", "lenet.prototxt"),
    ("cifar10_quick", "cifar10_quick_train_test.prototxt", "cifar10_quick_iter_5000.caffemodel", "1,3,32,32",
     "cifar10_quick.prototxt"),
])
def test_train_test_net_outputs_what_fed_its_losses(tmp_path, capsys, folder, net, weights, data, deploy):
    """The losses and Accuracy are left out; ip2, which fed them, is the output (a note says so), and
    the label (which only fed them) is no input. Its numbers are the deploy net's ip2."""
    from tests.converters.common import ort_run
    proto, caffemodel = _corpus(folder, net), _corpus(folder, weights)
    out = tmp_path / "out"
    assert cli.main(["convert", str(proto), "--weights", str(caffemodel), "-o", str(out), "--input-shape",
                     f"data={data}", "--input-shape", "label=1"]) == 0
    err = capsys.readouterr().err
    assert "ip2" in err and "output" in err, err
    model = onnx.load(next(out.glob("*.onnx")))
    assert [i.name for i in model.graph.input] == ["data"]
    assert [o.name for o in model.graph.output] == ["ip2"]
    from converters import to_onnx
    from prototxt import load_net
    reference = to_onnx(load_net(_corpus(folder, deploy), caffemodel))
    x = {"data": np.random.default_rng(0).uniform(0, 1, tuple(map(int, data.split(",")))).astype(np.float32)}
    from tests.converters.common import expose
    expose(reference, ["ip2"])
    assert np.allclose(ort_run(model, x)["ip2"], ort_run(reference, x)["ip2"], rtol=1e-5, atol=1e-5)


def test_output_file_names_from_the_net_name_stay_in_the_output_folder(tmp_path, capsys):
    net = _net({"a": "Scale"}, name="../../" + "x" * 300)
    proto, weights = _save(with_weights(net), tmp_path)
    out = tmp_path / "deep" / "out"
    assert cli.main(["convert", str(proto), "--weights", str(weights), "-o", str(out), "--no-verify"]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert len(written) == 2 and all(not n.startswith(".") and len(n) <= 110 for n in written), written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep", "net.caffemodel", "net.prototxt"]


def test_convert_verifies_a_net_with_a_custom_layer(tmp_path, capsys, monkeypatch, clean_registry):  # noqa: F811
    """The fresh interpreter imports the user's layer module from where this process found it."""
    import importlib

    from tests.converters.test_folder import _readme_custom_layer
    (tmp_path / "my_layers.py").write_text(_readme_custom_layer())
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("my_layers")  # registers "Double"
    net = tmp_path / "net.prototxt"
    net.write_text('name: "t"\nlayer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 } } }\n'
                   'layer { name: "s" type: "Scale" bottom: "data" top: "y" }\n'
                   'layer { name: "twice" type: "Double" bottom: "y" top: "out" }\n')
    graph = load_net(net)
    graph.layer("s").blobs = [np.array([1.0, 2.0, 3.0], np.float32)]
    weights = tmp_path / "net.caffemodel"
    save_net(graph, tmp_path / "copy.prototxt", weights)
    assert cli.main(["convert", str(net), "--weights", str(weights), "-o", str(tmp_path / "out")]) == 0
    assert "out: max |pytorch - onnxruntime| = 0" in capsys.readouterr().out
