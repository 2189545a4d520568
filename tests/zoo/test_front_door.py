"""The Python front door (`import zoo`), the one transform shared by `zoo run` and finetuning, and the
CLI's error contract (one toolkit error base; anything else is a bug-report line)."""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import zoo
from prototxt import CaffeError
from tests.helpers import REPO, SHARED, make_weights
from zoo import cli

GOOGLENET = SHARED / "reference" / "models" / "bvlc_googlenet_unit"


@pytest.fixture(scope="module")
def googlenet_weights(weights_cache) -> Path:
    """Seeded weights for the corpus GoogLeNet deploy net (the built-in bvlc_googlenet, layer for layer)."""
    if not GOOGLENET.is_dir():
        pytest.skip(f"{GOOGLENET} is missing")
    return make_weights(GOOGLENET, "layer", weights_cache[0])


def _photo(path: Path, size=(300, 211), seed=0) -> Path:
    from PIL import Image
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def readme_example() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("### The front door: `import zoo`", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_front_door_example_runs(googlenet_weights, tmp_path):
    (tmp_path / "bvlc_googlenet.caffemodel").symlink_to(googlenet_weights)
    _photo(tmp_path / "cat.jpg")
    env = dict(os.environ, ZOO_HOME=str(tmp_path / "cache"), PYTHONPATH=str(REPO))
    env.pop("ZOO_PATH", None)
    result = subprocess.run([sys.executable, "-c", readme_example()], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("bvlc_alexnet classification 3x227x227 BGR")
    top, diff = lines[-1].split()
    assert 0 <= int(top) < 1000 and float(diff) < 1e-4  # torch and onnxruntime agree on the same input


def test_list_models_is_what_zoo_list_json_prints(capsys):
    import json
    assert cli.main(["list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == zoo.list_models()
    names = [m["name"] for m in zoo.list_models("bvlc_*")]
    assert "bvlc_googlenet" in names and all(n.startswith("bvlc_") for n in names)


def test_load_gives_an_eval_module_with_caffes_numbers(googlenet_weights):
    import torch
    from converters import run_pytorch
    net = zoo.load("bvlc_googlenet", weights=googlenet_weights)
    assert isinstance(net, torch.nn.Module) and not net.training
    io = np.load(GOOGLENET / "io.npz")
    x = io["in/data"]
    got = run_pytorch(net, [x])["prob"]
    ref = io["out/prob"]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(ref).max())))


def test_an_unknown_backend_is_one_line():
    with pytest.raises(CaffeError, match="backend must be one of torch, onnxruntime"):
        zoo.load("bvlc_googlenet", backend="tensorflow")


def test_importing_zoo_is_cheap():
    code = ("import sys, zoo; zoo.list_models; "
            "heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'numpy', 'PIL') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


# -- one transform -----------------------------------------------------------------------------

class _Recorder:
    """An onnxruntime session stand-in that keeps what it is fed."""

    def __init__(self, shape):
        self.fed, self.shape = [], shape

    def get_inputs(self):
        return [type("Input", (), {"name": "data", "shape": self.shape})()]

    def run(self, names, feeds):
        x = feeds["data"]
        self.fed.append(x)
        return [np.full((len(x), 1000), 1e-3, np.float32)]


def test_zoo_run_feeds_the_net_what_finetune_validation_computes(googlenet_weights, tmp_path, monkeypatch):
    """The same card, the same image file: `zoo run`'s input array equals finetuning's validation batch."""
    from zoo.hub.registry import get
    from zoo.hub.resolve import resolve
    from zoo.training.finetune import Loader, input_transform
    from zoo.training.sources import open_source

    card = get("bvlc_googlenet")
    folder = tmp_path / "photos"
    (folder / "a").mkdir(parents=True)
    (folder / "b").mkdir()
    images = [_photo(folder / "a" / "x.png", (300, 211), 1), _photo(folder / "b" / "y.jpg", (199, 257), 2)]

    recorder = _Recorder([None, 3, 224, 224])
    monkeypatch.setattr("zoo.inference.runtime.session", lambda *a, **k: recorder)
    (tmp_path / "net.onnx").write_bytes(b"")  # never read: the session is the recorder
    card_file = Path(card.path)
    for image in images:
        assert cli.main(["run", str(tmp_path / "net.onnx"), str(image), "--card", str(card_file)]) == 0
    run_inputs = np.concatenate(recorder.fed)

    model = resolve("bvlc_googlenet", weights=googlenet_weights)
    transform = input_transform(model, model.graph({card.input.blob: (1, *card.input.shape)}, weights=False))
    source = open_source(folder, transform.color)
    loader = Loader(source, dataclasses.replace(transform, mirror=False))
    validation = loader.batch(range(len(source)), False, None)
    assert [Path(source.where(i)) for i in range(len(source))] == images
    np.testing.assert_array_equal(run_inputs, validation)
    np.testing.assert_array_equal(zoo.transform("bvlc_googlenet")(str(images[0])), validation[0])
    from PIL import Image
    with Image.open(images[1]) as im:
        np.testing.assert_array_equal(zoo.transform("bvlc_googlenet")(im), validation[1])


def test_the_transform_resizes_as_opencv_does(tmp_path):
    """zoo run's resize is cv::resize INTER_LINEAR (Caffe's), not Pillow's."""
    cv2 = pytest.importorskip("cv2")
    from zoo.hub.registry import get
    from zoo.inference.transform import Transform
    path = _photo(tmp_path / "p.png", (300, 211), 3)
    t = Transform.from_card(get("bvlc_googlenet"))
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    resized = cv2.resize(bgr, (256, 256), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    want = (resized[16:240, 16:240] - np.float32([104, 117, 123])).transpose(2, 0, 1)
    np.testing.assert_array_equal(t.image(path), want)


# -- errors ------------------------------------------------------------------------------------

def _zoo_modules():
    for info in pkgutil.walk_packages(zoo.__path__, "zoo."):
        if info.name.startswith("zoo.models.arch.") or info.name.endswith("__main__"):
            continue
        yield importlib.import_module(info.name)


def test_every_zoo_error_is_a_toolkit_error():
    found = []
    for module in _zoo_modules():
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, Exception) and not issubclass(obj, Warning)
                    and obj.__module__ == module.__name__
                    and not name.startswith("_")):
                found.append(obj)
                assert issubclass(obj, CaffeError), f"{module.__name__}.{name} does not derive from CaffeError"
    assert len(found) >= 12, found


def _failing(monkeypatch, exc: BaseException) -> None:
    def boom(args):
        raise exc
    monkeypatch.setattr("zoo.cli.listing.run", boom)


def test_a_toolkit_error_is_one_line(monkeypatch, capsys):
    from zoo.training.data import DataError
    _failing(monkeypatch, DataError("db: the LMDB 'db' is empty"))
    assert cli.main(["list"]) == 1
    assert capsys.readouterr().err == "zoo: error: db: the LMDB 'db' is empty\n"


def test_an_os_error_is_one_line(monkeypatch, capsys):
    _failing(monkeypatch, PermissionError(13, "Permission denied", "/out"))
    assert cli.main(["list"]) == 1
    assert capsys.readouterr().err == "zoo: error: [Errno 13] Permission denied: '/out'\n"


def test_anything_else_is_a_bug_report_line_without_traceback(monkeypatch, capsys):
    monkeypatch.delenv("ZOO_DEBUG", raising=False)
    _failing(monkeypatch, KeyError("conv1"))
    assert cli.main(["list"]) == 1
    assert capsys.readouterr().err == ("zoo: internal error: KeyError: 'conv1'; please report it; "
                                       "set ZOO_DEBUG=1 for the traceback\n")
    monkeypatch.setenv("ZOO_DEBUG", "1")
    assert cli.main(["list"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.endswith("set ZOO_DEBUG=1 for the traceback\n")


def test_the_cached_onnx_file_follows_the_weights(tmp_path, monkeypatch):
    """`zoo run` / ``zoo.load(backend="onnxruntime")`` convert once per weights file, never serving a model
    converted from other weights."""
    from prototxt import build_graph, fill_missing, read_net, write_caffemodel
    from zoo.hub.resolve import resolve
    from zoo.inference.classify import cached_onnx
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "cache"))
    net = tmp_path / "tiny.prototxt"
    net.write_text('name: "tiny"\ninput: "data"\ninput_shape { dim: 1 dim: 3 dim: 4 dim: 4 }\n'
                   'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
                   'inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }\n')
    paths = []
    for seed in (1, 2):
        graph = build_graph(read_net(net)[0])
        fill_missing(graph, seed=seed)
        weights = tmp_path / f"w{seed}.caffemodel"
        write_caffemodel(weights, graph.name, [(l.proto.SerializeToString(), l.blobs) for l in graph.layers])
        paths.append(cached_onnx(resolve(str(net), weights=weights)))
    assert paths[0] != paths[1] and all(Path(p).is_file() for p in paths)
    assert cached_onnx(resolve(str(net), weights=tmp_path / "w1.caffemodel")) == paths[0]


def test_a_cached_onnx_file_whose_shared_weights_were_deleted_is_converted_again(tmp_path, monkeypatch):
    """The cached models keep their large weights in the cache's onnx/weights folder (shared_data); deleting
    that folder (where the cache's size is) must not leave a model onnxruntime refuses."""
    import shutil

    import onnxruntime as ort

    from prototxt import build_graph, fill_missing, read_net, write_caffemodel
    from zoo.hub.resolve import resolve
    from zoo.inference.classify import cached_onnx
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "cache"))
    net = tmp_path / "wide.prototxt"  # 768 x 400 float32 weights: 1.2 MB, over write_model's 1 MB
    net.write_text('name: "wide"\ninput: "data"\ninput_shape { dim: 1 dim: 3 dim: 16 dim: 16 }\n'
                   'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
                   'inner_product_param { num_output: 400 weight_filler { type: "xavier" } } }\n')
    graph = build_graph(read_net(net)[0])
    fill_missing(graph, seed=1)
    weights = tmp_path / "w.caffemodel"
    write_caffemodel(weights, graph.name, [(l.proto.SerializeToString(), l.blobs) for l in graph.layers])
    path = cached_onnx(resolve(str(net), weights=weights))
    shared = Path(path).parent / "weights"
    assert len(list(shared.iterdir())) == 1
    shutil.rmtree(shared)
    assert cached_onnx(resolve(str(net), weights=weights)) == path
    ort.InferenceSession(path)  # its weights are back


def test_zoo_run_on_a_prototxt_without_weights_is_one_line(tmp_path, capsys):
    net = tmp_path / "net.prototxt"
    net.write_text('name: "n"\ninput: "data"\ninput_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n'
                   'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 2 } }\n')
    image = _photo(tmp_path / "a.png", (8, 8))
    assert cli.main(["run", str(net), str(image)]) == 1
    assert capsys.readouterr().err.strip().endswith("running it needs the trained weights: pass --weights "
                                                    "MODEL.caffemodel")


def test_zoo_run_says_every_time_that_a_monte_carlo_dropout_net_gives_one_random_pass(tmp_path, monkeypatch, capsys):
    """Bayesian SegNet's outputs are one sample of many its publisher averages: said on every run, not only
    by the conversion's warning (the first run; later ones use the cached model)."""
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "cache"))
    net = tmp_path / "mc.prototxt"
    net.write_text('name: "mc"\ninput: "data"\ninput_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n'
                   'layer { name: "drop" type: "Dropout" bottom: "data" top: "drop" '
                   'dropout_param { dropout_ratio: 0.5 sample_weights_test: true } }\n'
                   'layer { name: "prob" type: "Softmax" bottom: "drop" top: "prob" }\n')
    image = _photo(tmp_path / "a.png", (8, 8))
    for _ in range(2):
        assert cli.main(["run", str(net), str(image)]) == 0
        assert "the results are one random pass" in capsys.readouterr().err
