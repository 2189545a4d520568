"""`zoo info` and zoo.netinfo: what they report about a net, in text and JSON."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from prototxt import load_net
from tests.helpers import REPO, fixture_inputs
from zoo import netinfo
from zoo.cli import main

SPEC_KEYS = {"name", "inputs", "outputs", "blobs", "layers", "params_total", "macs_total"}
LAYER_KEYS = {"name", "type", "bottoms", "tops", "params", "macs"}


def info_json(capsys, *argv) -> dict:
    assert main(["info", *map(str, argv), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_googlenet_has_7m_parameters_and_alexnet_61m(shared, capsys):
    googlenet = info_json(capsys, shared / "corpus/bvlc_googlenet/deploy.prototxt")
    alexnet = info_json(capsys, shared / "corpus/bvlc_alexnet/deploy.prototxt")
    assert googlenet["params_total"] == 6_998_552
    assert alexnet["params_total"] == 60_965_224
    assert SPEC_KEYS <= set(googlenet) and all(LAYER_KEYS <= set(l) for l in googlenet["layers"])
    assert googlenet["inputs"] == {"data": [10, 3, 224, 224]} and googlenet["outputs"] == ["prob"]


def test_json_reports_caffe_blob_names_with_final_shapes(shared, capsys):
    info = info_json(capsys, shared / "corpus/bvlc_alexnet/deploy.prototxt", "--input-shape", "data=1,3,227,227")
    graph = load_net(shared / "corpus/bvlc_alexnet/deploy.prototxt", input_shapes={"data": (1, 3, 227, 227)})
    assert info["blobs"] == {name: list(shape) for name, shape in graph.caffe_blobs().items()}
    assert info["blobs"]["conv1"] == [1, 96, 55, 55]  # written by conv1, then in place by relu1
    names = [n for l in info["layers"] for n in l["bottoms"] + l["tops"]] + list(info["blobs"])
    assert not [n for n in names if "@" in n]  # the graph's internal value names never show
    relu1 = next(l for l in info["layers"] if l["name"] == "relu1")
    assert relu1["bottoms"] == relu1["tops"] == ["conv1"]
    assert info["macs_total"] == sum(l["macs"] for l in info["layers"])


def test_shared_parameters_count_once(shared):
    fixture = shared / "reference/layers/inplace_split_shared"
    graph = load_net(fixture / "net.prototxt", input_shapes=fixture_inputs(fixture))
    info = netinfo.summary(graph)
    owned = sum(math.prod(s) for l in info["layers"] if not l["shared_params"] for s in l["params"])
    assert [l["name"] for l in info["layers"] if l["shared_params"]]  # the net does share
    assert info["params_total"] == owned == graph.params_total


# The worked example of the README: what inception_3a's 1x1 reductions save, from the shapes alone.
INCEPTION_3A = {"3x3": (101_154_816, 173_408_256), "5x5": (12_443_648, 120_422_400)}


def test_readme_inception_3a_example(shared):
    graph = load_net(shared / "corpus/bvlc_googlenet/deploy.prototxt", input_shapes={"data": (1, 3, 224, 224)})
    cin = graph.values[graph.layer("inception_3a/1x1").bottoms[0]].shape[1]  # 192 channels come in

    def macs(layer_name, channels_in):
        layer = graph.layer(layer_name)
        n, cout, h, w = graph.values[layer.tops[0]].shape
        _, _, kh, kw = layer.param_shapes[0]
        return n * cout * h * w * channels_in * kh * kw

    for branch, (with_reduce, without) in INCEPTION_3A.items():
        reduce, conv = f"inception_3a/{branch}_reduce", f"inception_3a/{branch}"
        assert graph.layer(reduce).macs + graph.layer(conv).macs == with_reduce
        assert macs(conv, cin) == without
    readme = (REPO / "README.md").read_text()
    for with_reduce, without in INCEPTION_3A.values():
        assert f"{with_reduce:,}" in readme and f"{without:,}" in readme
    groups = {g["name"]: g for g in netinfo.summary(graph)["groups"]}
    assert f"{groups['inception_3a']['macs']:,}" in readme
    assert "6,998,552" in readme and "60,965,224" in readme


def test_text_report_lists_layers_groups_and_totals(shared, capsys):
    assert main(["info", str(shared / "corpus/bvlc_googlenet/deploy.prototxt")]) == 0
    out = capsys.readouterr().out
    assert "inception_3a/3x3_reduce" in out and "96x192x1x1, 96" in out
    assert "groups (layer-name prefix before '/')" in out
    assert "total: 6,998,552 parameters (7.00 M)" in out


def test_group_option_shows_group_totals_instead_of_layers(shared, capsys):
    assert main(["info", str(shared / "corpus/bvlc_googlenet/deploy.prototxt"), "--group",
                 "--input-shape", "data=1,3,224,224"]) == 0
    out = capsys.readouterr().out
    assert "inception_3a/3x3_reduce" not in out
    row = next(line.split() for line in out.splitlines() if line.strip().startswith("inception_3a "))
    assert row == ["inception_3a", "14", "1x256x28x28", "163,696", "128,049,152"]


def test_weights_report_says_what_caffe_ignores(shared, capsys):
    folder = shared / "corpus/mtcnn"
    assert main(["info", str(folder / "det2.prototxt"), "--weights", str(folder / "det2.caffemodel")]) == 0
    out = capsys.readouterr().out
    assert "10 layers matched by name" in out
    assert "stored layers not in the net (Caffe ignores them): conv5-3" in out
    info = info_json(capsys, folder / "det2.prototxt", "--weights", folder / "det2.caffemodel")
    assert info["weights"]["ignored"] == ["conv5-3"] and info["weights"]["missing"] == []


TRAIN_ONLY_DATA = """name: "t"
layer { name: "data" type: "Input" top: "data" include { phase: TRAIN }
        input_param { shape { dim: 4 dim: 3 dim: 5 dim: 5 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 2 } }
"""


def test_falls_back_to_train_phase_with_a_note(tmp_path, capsys):
    path = tmp_path / "net.prototxt"
    path.write_text(TRAIN_ONLY_DATA)
    assert main(["info", str(path), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["phase"] == "train"
    assert err == ("zoo: note: the TEST phase lacks blob 'data' (needed by layer 'ip'); showing the TRAIN phase "
                   "instead (choose with --phase)\n")
    assert main(["info", str(path), "--phase", "test"]) == 1  # asked for explicitly: no fallback
    assert "unknown bottom blob 'data'" in capsys.readouterr().err


def test_input_shape_overrides_and_usage_errors(tmp_path, capsys):
    path = tmp_path / "net.prototxt"
    path.write_text(TRAIN_ONLY_DATA)
    info = info_json(capsys, path, "--phase", "train", "--input-shape", "data=2,3,7,7")
    assert info["inputs"] == {"data": [2, 3, 7, 7]} and info["blobs"]["ip"] == [2, 2]
    assert main(["info", str(path), "--input-shape", "data=2,x"]) == 2
    assert "BLOB=N,C,H,W" in capsys.readouterr().err
    assert main(["info", str(path), "--phase", "train", "--input-shape", "image=1,3,5,5"]) == 1
    assert "no net input named image; the inputs are: data" in capsys.readouterr().err


def test_info_never_imports_torch_or_onnx(shared):
    code = ("import sys; from zoo.cli import main; "
            f"rc = main(['info', {str(shared / 'corpus/bvlc_googlenet/deploy.prototxt')!r}]); "
            "heavy = [m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules]; "
            "assert rc == 0 and not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, stdout=subprocess.DEVNULL)


def test_python_m_zoo_and_version():
    result = subprocess.run([sys.executable, "-m", "zoo", "--version"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("zoo (caffezoo) ")


def test_every_command_has_examples_in_its_help(capsys):
    from zoo.cli import COMMANDS
    for command in COMMANDS:
        assert main([command.name, "--help"]) == 0
        assert f"zoo {command.name}" in capsys.readouterr().out.split("examples:", 1)[1]


@pytest.mark.parametrize("value", ["data", "=1,3", "data=1,0,3", "data=a,b"])
def test_bad_input_shape_is_a_usage_error(value, capsys):
    assert main(["info", "x.prototxt", "--input-shape", value]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("zoo info: error: argument --input-shape")
