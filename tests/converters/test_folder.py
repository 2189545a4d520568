"""The PyTorch folder is planned and written without torch (``converters.plan``, ``converters.folder``):
module specs equal the modules they build, weights.pt is PyTorch's own format, and ``zoo convert``
does not import torch unless it verifies."""
from __future__ import annotations

import importlib
import os
import pickle
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
import torch

from converters import registry
from converters.folder import _Pickle, export_folder, write_state_dict
from converters.plan import ModuleSpec, plan
from converters.torch import to_pytorch
from prototxt import load_net
from prototxt.graph import fill_missing
from prototxt.errors import CaffeError
from tests.converters.common import real_weights
from tests.helpers import REPO, SHARED, corpus_nets, fixture_inputs, reference_fixtures, shared_params

pytestmark = [pytest.mark.filterwarnings("ignore:left out training-only layers"),
              pytest.mark.filterwarnings("ignore:TF32 acceleration:UserWarning")]  # mkldnn.flags() says it


def _graphs():
    """Every Caffe-run fixture net, and every corpus net whose shapes are known."""
    fixtures = reference_fixtures()
    cases = [(f / "net.prototxt", fixture_inputs(f)) for f in fixtures]
    cases += [(SHARED / "corpus" / n, None) for n in corpus_nets()]
    ids = [f"{f.parent.name}/{f.name}" for f in fixtures] + list(corpus_nets())
    return shared_params(cases, ids)


@pytest.mark.parametrize("case", _graphs())
def test_specs_build_the_modules_they_describe(case):
    """For each layer: the spec's class and arguments are what the built module records, and its
    state-dict entries are exactly the Caffe blobs, in Caffe's canonical blob shapes (what weights.pt
    is written in without building the module)."""
    path, shapes = case
    try:
        graph = load_net(path, input_shapes=shapes)
        registry.check_supported(graph)
    except (CaffeError, ValueError) as e:
        pytest.skip(f"not convertible: {str(e)[:120]}")
    checked = 0
    for layer in graph.layers:
        if layer.type in registry.DATA_LAYERS or registry.training_only(layer.type):
            continue
        spec, names = registry.get(layer.type).torch(layer, graph)
        assert isinstance(spec, ModuleSpec)
        with torch.device("meta"):  # shapes only: some corpus nets are huge at their stated input size
            module = spec.build()
        assert type(module).__name__ == spec.cls
        assert module.args == spec.args, layer.name
        state = module.state_dict()
        assert sorted(state) == sorted(names), layer.name
        for name, shape in zip(names, layer.param_shapes):
            assert tuple(state[name].shape) == tuple(shape), (layer.name, name)
        checked += 1
    assert checked


def test_weights_file_is_pytorchs_format(tmp_path):
    shared = np.arange(6, dtype=np.float32).reshape(2, 3)
    state = {
        "a.weight": shared,
        "tied.weight": shared,  # one storage for both, as torch.save writes tied parameters
        "scalar": np.array(2.5, dtype=np.float32),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "double": np.linspace(0, 1, 5),
        "long": np.array([1, -2, 2**40], dtype=np.int64),
        "bytes": np.arange(7, dtype=np.uint8),
        "flags": np.array([True, False]),
        "strided": np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2],  # written contiguous
        "big-endian": np.arange(3, dtype=">f4"),
        "layer/with unicode é": np.ones(3, dtype=np.float32),
    }
    path = str(tmp_path / "weights.pt")
    write_state_dict(path, state)
    for mmap in (False, True):
        loaded = torch.load(path, weights_only=True, mmap=mmap)
        assert list(loaded) == list(state)
        for key, want in state.items():
            got = loaded[key]
            assert got.dtype == torch.from_numpy(np.ascontiguousarray(want).astype(want.dtype.newbyteorder("="))).dtype
            assert tuple(got.shape) == want.shape and not got.requires_grad
            np.testing.assert_array_equal(got.numpy(), want, err_msg=key)
        assert loaded["a.weight"].untyped_storage().data_ptr() == loaded["tied.weight"].untyped_storage().data_ptr()
    with zipfile.ZipFile(path) as z, open(path, "rb") as f:
        for info in z.infolist():
            assert info.compress_type == zipfile.ZIP_STORED
            f.seek(info.header_offset + 26)
            name_len, extra_len = np.frombuffer(f.read(4), "<u2")
            assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0, info.filename
        assert z.read("weights/byteorder") == b"little" and z.testzip() is None


@pytest.mark.parametrize("value", [0, 255, 256, 65535, 65536, 2**31 - 1, 2**31, 2**40, 3 * 2**62, -1, -2**31,
                                   -2**31 - 1])
def test_pickle_ints(value):
    """Sizes and element counts over 2**31 (tensors of many GB) take the long opcode."""
    p = _Pickle()
    p.int_(value)
    assert pickle.loads(bytes(p.out) + b".") == value


def test_plan_is_what_to_pytorch_builds():
    path = SHARED / "reference" / "models" / "bvlc_googlenet_unit" / "net.prototxt"
    if not path.is_file():
        pytest.skip(f"{path} missing")
    graph = load_net(path)
    fill_missing(graph, seed=0)
    p = plan(graph)
    gm = to_pytorch(graph)
    assert gm.caffe_names == p.caffe_names and gm.blob_keys == p.blob_keys()
    assert [n for n, _ in gm.named_children()] == [s.attr for s in p.steps]
    assert gm.value_nodes == p.value_vars  # the fx graph and model.py name every value alike


def _lenet():
    """(prototxt, real trained caffemodel) of the LeNet fixture."""
    folder = SHARED / "reference" / "models" / "mnist_lenet"
    weights = real_weights(folder) if folder.is_dir() else None
    if weights is None or not weights.is_file():
        pytest.skip(f"{folder} or its real caffemodel is missing (../shared)")
    return folder / "net.prototxt", weights


CHILD = textwrap.dedent('''
    import sys
    from prototxt import load_net
    from converters.folder import export_folder
    export_folder(load_net(sys.argv[1], sys.argv[2]), sys.argv[3])
    heavy = sorted(m for m in ("torch", "onnxruntime") if m in sys.modules)
    assert not heavy, f"exporting the PyTorch folder imported {heavy}"
''')


def test_export_imports_no_torch(tmp_path):
    prototxt, weights = _lenet()
    out = tmp_path / "lenet_pytorch"
    subprocess.run([sys.executable, "-c", CHILD, str(prototxt), str(weights), str(out)], check=True, cwd=REPO,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    graph = load_net(prototxt, weights)
    gm = to_pytorch(graph)
    state = torch.load(out / "weights.pt", weights_only=True)
    mine = gm.state_dict()
    assert list(state) == list(mine)
    assert all(torch.equal(state[k], mine[k]) for k in mine)


def test_trained_module_exports_its_own_weights(tmp_path):
    """converters.torch.export_folder writes a (trained) module's tensors, not the graph's."""
    from converters.torch import export_folder as export_module
    prototxt, weights = _lenet()
    graph = load_net(prototxt, weights)
    gm = to_pytorch(graph)
    with torch.no_grad():
        for t in gm.parameters():
            t.add_(1.0)
    folder = export_module(gm, graph, tmp_path / "trained")
    state = torch.load(os.path.join(folder, "weights.pt"), weights_only=True)
    assert all(torch.equal(state[k], v) for k, v in gm.state_dict().items())


def _readme_custom_layer() -> str:
    """The README's "Custom layers" example, as written there."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### Custom layers"):]
    return section[section.index("```python\n") + 10:section.index("```\n", section.index("```python\n") + 10)]


@pytest.fixture
def clean_registry():
    """Leave the layer registry and shape rules (and any user module imported) as they were."""
    from prototxt import shapes
    registry.registered_types()  # the built-ins discovered before saving them
    saved_impls, saved_rules, modules = dict(registry._REGISTRY), dict(shapes._RULES), set(sys.modules)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved_impls)
    shapes._RULES.clear()
    shapes._RULES.update(saved_rules)
    for name in set(sys.modules) - modules:
        sys.modules.pop(name, None)


def test_custom_layer_exports_and_loads(tmp_path, monkeypatch, clean_registry):
    """The README's custom layer: model.py imports the user's module class, and the folder loads and
    runs in a fresh interpreter that can import the user's module (and not the toolkit)."""
    (tmp_path / "my_layers.py").write_text(_readme_custom_layer())
    monkeypatch.syspath_prepend(str(tmp_path))
    net = tmp_path / "net.prototxt"
    net.write_text('name: "t"\nlayer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 } } }\n'
                   'layer { name: "twice" type: "Double" bottom: "data" top: "out" }\n')
    importlib.import_module("my_layers")  # registers "Double"
    folder = export_folder(load_net(net), tmp_path / "out")
    source = open(os.path.join(folder, "model.py")).read()
    assert "from my_layers import DoubleModule" in source and "self.twice = DoubleModule(**{})" in source
    env = {"PYTHONPATH": f"{folder}{os.pathsep}{tmp_path / 'user'}", "PATH": os.environ.get("PATH", ""),
           "PYTHONNOUSERSITE": "1"}
    (tmp_path / "user").mkdir()
    # where the toolkit is not installed, the user ships the class without its registration
    (tmp_path / "user" / "my_layers.py").write_text(
        "import torch\n\nclass DoubleModule(torch.nn.Module):\n    def forward(self, x):\n        return 2 * x\n")
    out = subprocess.run([sys.executable, "-c", "import torch, model; print(model.load()(torch.ones(1, 3)).tolist())"],
                         cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[[2.0, 2.0, 2.0]]"

    class Local(torch.nn.Module):
        def forward(self, x):
            return x

    registry.register_layer("Double", replace=True)(
        type("Impl", (registry.LayerImpl,), {"torch": lambda self, layer, graph: (Local(), [])}))
    with pytest.raises(ValueError) as info:
        export_folder(load_net(net), tmp_path / "out2")
    text = str(info.value)
    assert "\n" not in text and "'twice'" in text and "inside a function" in text, text
    assert not (tmp_path / "out2").exists()


def _layer_fixtures():
    fixtures = sorted(p for p in (SHARED / "reference" / "layers").glob("*") if (p / "net.prototxt").is_file()) \
        if SHARED.is_dir() else []
    return shared_params(fixtures, [f.name for f in fixtures])


@pytest.mark.parametrize("fixture", _layer_fixtures())
def test_every_layer_fixture_exports_a_folder_that_computes_the_same(fixture, weights_cache, tmp_path):
    """model.py is generated code: every layer fixture (multi-top Slice/Split, in-place chains, SPP,
    shared params, legacy inputs ...) exported and imported back gives to_pytorch's outputs exactly."""
    import importlib.util

    from tests.converters.common import load_fixture, torch_cpu
    graph, ins, _ = load_fixture(fixture, weights_cache)
    gm = to_pytorch(graph)
    folder = export_folder(graph, tmp_path / "f")
    spec = importlib.util.spec_from_file_location(f"exported_{fixture.name}", os.path.join(folder, "model.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    net = module.load()
    xs = [torch.from_numpy(np.ascontiguousarray(ins[graph.values[v].caffe_name], dtype=np.float32))
          for v in graph.inputs]
    with torch_cpu():
        want, got = gm(*xs), net(*xs)
    want = want if isinstance(want, dict) else {"": want}
    got = got if isinstance(got, dict) else {"": got}
    assert list(got) == list(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k
    assert dict(net.named_children()).keys() == dict(gm.named_children()).keys()


def test_names_in_model_py_never_shadow_each_other(tmp_path, monkeypatch, clean_registry):
    """A net named like a module class ("scale" -> ScaleNet) and a user's class named like a built-in
    one (imported under another name) keep model.py working."""
    from prototxt import shapes
    (tmp_path / "user_scale.py").write_text("import torch\n\nclass Scale(torch.nn.Module):\n"
                                            "    def forward(self, x):\n        return 3 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    net = tmp_path / "net.prototxt"
    net.write_text('name: "scale"\ninput: "x"\ninput_shape { dim: 1 dim: 2 dim: 1 dim: 1 }\n'
                   'layer { name: "s" type: "Scale" bottom: "x" top: "y" }\n'
                   'layer { name: "t" type: "Triple" bottom: "y" top: "z" }\n')
    user = importlib.import_module("user_scale")

    @registry.register_layer("Triple", shape=lambda param, bottoms: shapes.ShapeResult([tuple(bottoms[0])]))
    class Impl(registry.LayerImpl):
        def torch(self, layer, graph):
            return user.Scale(), []

    graph = load_net(net)
    graph.layer("s").blobs = [np.array([2.0, 5.0], np.float32)]
    folder = export_folder(graph, tmp_path / "out")
    source = open(os.path.join(folder, "model.py")).read()
    assert "class ScaleNet(nn.Module):" in source
    assert "from user_scale import Scale as Scale_user_scale" in source
    spec = importlib.util.spec_from_file_location("exported_scale", os.path.join(folder, "model.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.load()(torch.ones(1, 2, 1, 1))
    assert out.reshape(-1).tolist() == [6.0, 15.0]
