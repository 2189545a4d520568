"""A net with no learnable parameters (Permute, PriorBox... layer nets) converts, verifies and loads
without --weights; a net with parameters still asks for them, in one line."""
from __future__ import annotations

import numpy as np
import pytest

import zoo
from prototxt import CaffeError
from tests.helpers import shared_dir
from zoo import cli


def _layer_net(name: str):
    net = shared_dir() / "reference" / "fork_caffe" / "layers" / name / "net.prototxt"
    if not net.is_file():
        pytest.skip(f"{net} is missing")
    return net


def test_convert_of_a_parameter_free_net_needs_no_weights(tmp_path, capsys):
    net = _layer_net("permute_orders")
    assert cli.main(["convert", str(net), "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "permute_orders.onnx").is_file() and "max |pytorch - onnxruntime|" in out


def test_verify_of_a_parameter_free_net_needs_no_weights(capsys):
    net = _layer_net("priorbox_basic")
    reference = net.parent / "io.npz"
    assert cli.main(["verify", str(net), "--reference", str(reference)]) == 0, capsys.readouterr()


def test_load_of_a_parameter_free_net_gives_the_permutation():
    import torch
    module = zoo.load(str(_layer_net("permute_orders")))
    x = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).reshape(2, 3, 5, 7)
    out = module(x)
    np.testing.assert_array_equal(out["p0231"].numpy(), x.permute(0, 2, 3, 1).numpy())


def test_a_net_with_parameters_still_asks_for_its_weights(tmp_path, capsys):
    net = tmp_path / "net.prototxt"
    net.write_text('name: "n"\ninput: "data"\ninput_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n'
                   'layer { name: "p" type: "Permute" bottom: "data" top: "p" permute_param { order: 0 order: 2 '
                   'order: 3 order: 1 } }\n'
                   'layer { name: "fc" type: "InnerProduct" bottom: "p" top: "fc" inner_product_param { num_output: 2 } }\n')
    assert cli.main(["convert", str(net), "-o", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == (f"zoo: error: {net}: conversion needs the trained weights: pass --weights "
                                       "MODEL.caffemodel\n")
    assert not (tmp_path / "out").exists()
    with pytest.raises(CaffeError, match="loading it needs the trained weights: pass weights=MODEL.caffemodel"):
        zoo.load(str(net))


def test_converters_verify_stays_the_function_after_compare_and_random_inputs():
    """`zoo convert` then `zoo verify` in one process: the lazy submodule import once replaced it."""
    import converters
    from prototxt import build_graph, read_net
    graph = build_graph(read_net(_layer_net("permute_orders"))[0])
    converters.compare(*converters.random_inputs(graph) * 2)
    assert callable(converters.verify) and converters.verify(graph).ok
