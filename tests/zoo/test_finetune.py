"""`zoo finetune`: the Caffe recipe on googlenet (frozen weights bit for bit, a trained head, outputs that
load and agree), resuming after SIGKILL to the same weights, cross-modality input, and one-line errors."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from prototxt import build_graph, caffe_pb2, load_net, load_weights, write_caffemodel
from prototxt.graph import fill_missing, read_net
from tests.helpers import REPO, SHARED, make_weights, same_bits
from zoo.cli import main

GOOGLENET = SHARED / "reference" / "models" / "bvlc_googlenet_unit"
TINY = """name: "TinyNet"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 32 dim: 32 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_size: 3 stride: 2 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        convolution_param { num_output: 16 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "fc" type: "InnerProduct" bottom: "conv2" top: "fc"
        inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


TINY_BN = """name: "TinyBN"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 24 dim: 24 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 6 kernel_size: 3 stride: 2 bias_term: false weight_filler { type: "msra" } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
        convolution_param { num_output: 8 kernel_size: 3 bias_term: false weight_filler { type: "msra" } } }
layer { name: "bn2" type: "BatchNorm" bottom: "conv2" top: "conv2" }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "fc" type: "InnerProduct" bottom: "conv2" top: "fc" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


# -- data and nets -------------------------------------------------------------------------------

def texture_folder(root: Path, per_class: int, size: int = 64, seed: int = 0) -> Path:
    """Three classes the unit-scaled googlenet tells apart well: flat grey, a checkerboard, horizontal
    stripes (random phase, pixel noise). Hues (red/green/blue) separate far less in its features."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for k, name in enumerate(("flat", "checker", "stripes")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            dx, dy = rng.integers(0, 16, 2)
            level = [np.full((size, size), 128.0), ((xx + dx) // 4 + (yy + dy) // 4) % 2 * 255.0,
                     ((yy + dy) // 8) % 2 * 255.0][k]
            img = level[..., None] + rng.normal(0, 20, (size, size, 3))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / name / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def googlenet(weights_cache) -> tuple[Path, Path]:
    if not GOOGLENET.is_dir():
        pytest.skip(f"{GOOGLENET} is missing")
    folder, _ = weights_cache
    return GOOGLENET / "net.prototxt", make_weights(GOOGLENET, "layer", folder)


@pytest.fixture(scope="module")
def textures(tmp_path_factory) -> Path:
    return texture_folder(tmp_path_factory.mktemp("textures"), 30)


def _net(folder: Path, text: str) -> tuple[Path, Path]:
    """A deploy prototxt and seeded weights (BatchNorm: statistics with scale factor 1)."""
    prototxt, weights = folder / "net.prototxt", folder / "net.caffemodel"
    prototxt.write_text(text)
    graph = build_graph(read_net(prototxt)[0])
    fill_missing(graph, seed=3)
    rng = np.random.default_rng(3)
    for layer in graph.layers:
        if layer.type == "BatchNorm":
            c = layer.param_shapes[0][0]
            layer.blobs = [rng.normal(0, 1, c).astype(np.float32), rng.uniform(0.5, 2, c).astype(np.float32),
                           np.ones(1, np.float32)]
    write_caffemodel(weights, graph.name, [(l.proto.SerializeToString(), l.blobs) for l in graph.layers])
    return prototxt, weights


@pytest.fixture()
def tiny(tmp_path) -> tuple[Path, Path]:
    return _net(tmp_path, TINY)


def _blobs(path: Path) -> dict[str, list[np.ndarray]]:
    return load_weights(path)


def _finetune(*args: str) -> int:
    return main(["finetune", *map(str, args), "--quiet"])


def _load_folder(folder: Path):
    spec = importlib.util.spec_from_file_location(f"finetuned_{abs(hash(folder))}", folder / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.load()


# -- googlenet, the acceptance run ---------------------------------------------------------------

@pytest.mark.slow
def test_googlenet_freeze_until_inception_4e_trains_the_head_and_keeps_frozen_weights(googlenet, tmp_path):
    import onnxruntime as ort
    import torch

    from converters import to_pytorch
    prototxt, weights = googlenet
    out = tmp_path / "out"
    # The command: 2 epochs at the default base_lr, random crops and mirroring (no cache). Caffe's
    # recipe (momentum 0.9, step policy) needs ~100 updates on these features, hence 80 images per class
    # (192 for training) in batches of 4: 48 iterations per epoch.
    data = texture_folder(tmp_path / "textures", 80)
    assert _finetune(prototxt, "--weights", weights, "--data", data, "--num-classes", 3,
                     "--freeze-until", "inception_4e", "--epochs", 2, "--batch-size", 4,
                     "--device", "cpu", "-o", out) == 0

    metrics = json.loads((out / "metrics.json").read_text())
    assert [m["epoch"] for m in metrics["epochs"]] == [1, 2]
    assert metrics["epochs"][-1]["iter"] == 2 * 48
    assert metrics["epochs"][-1]["val_acc"] > 0.9
    assert set(metrics["epochs"][0]) >= {"train_loss", "train_acc", "val_loss", "val_acc", "images_per_s", "lr"}

    before, after = _blobs(weights), _blobs(out / "finetuned.caffemodel")
    assert "loss3/classifier" not in after and after["loss3/classifier_ft"][0].shape == (3, 1024)
    frozen = [n for n in before if n.split("/")[0] in ("conv1", "conv2") or n.startswith(("inception_3", "inception_4"))]
    assert len(frozen) == 45  # conv1, conv2 (2), inception_3a..4e (7 x 6)
    for name in frozen:
        assert all(same_bits(a, b) for a, b in zip(before[name], after[name])), name
    assert not np.array_equal(before["inception_5b/1x1"][0], after["inception_5b/1x1"][0])  # trainable
    from zoo.hub.resolve import resolve
    from zoo.training.surgery import operate
    initial = operate(resolve(str(prototxt), weights=weights), 3, head=None, head_name=None, head_lr_mult=10,
                      input_channels=None, cross_modality=False, seed=0, say=lambda _: None)
    head0 = initial.graph.layer("loss3/classifier_ft").blobs[0]
    assert np.abs(after["loss3/classifier_ft"][0] - head0).max() > 1e-3  # the head learned

    x = np.random.default_rng(1).normal(0, 50, (2, 3, 224, 224)).astype(np.float32)
    sess = ort.InferenceSession(str(out / "finetuned.onnx"), providers=["CPUExecutionProvider"])
    onnx_prob = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        folder_prob = _load_folder(out / "finetuned_pytorch")(torch.from_numpy(x)).numpy()
        caffe = load_net(out / "deploy.prototxt", out / "finetuned.caffemodel")
        reloaded = to_pytorch(caffe)(torch.from_numpy(x)).numpy()
    assert onnx_prob.shape == (2, 3)
    np.testing.assert_allclose(folder_prob, onnx_prob, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(reloaded, onnx_prob, rtol=1e-4, atol=1e-4)
    assert caffe.layer("loss3/classifier_ft").proto.inner_product_param.num_output == 3

    from PIL import Image
    with Image.open(out / "curves.png") as im:
        assert im.format == "PNG" and im.size[0] > 400
    assert (out / "labels.txt").read_text().split() == ["checker", "flat", "stripes"]
    assert (out / "finetuned_best.caffemodel").is_file()


# -- resuming after SIGKILL ----------------------------------------------------------------------

def _run_args(prototxt, weights, data, out) -> list[str]:
    # random crops and mirroring (no cache): the resumed run must redraw exactly the same ones
    return ["finetune", str(prototxt), "--weights", str(weights), "--data", str(data), "--num-classes", "3",
            "--freeze-until", "inception_4e", "--epochs", "2", "--batch-size", "4", "--checkpoint-every", "2",
            "--device", "cpu", "--seed", "5", "-o", str(out), "--quiet"]


@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_to_the_weights_of_an_uninterrupted_run(googlenet, tmp_path):
    import torch
    prototxt, weights = googlenet
    data = texture_folder(tmp_path / "data", 8)  # 19 training items: 5 iterations per epoch
    assert main(_run_args(prototxt, weights, data, tmp_path / "whole")) == 0

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "zoo", *_run_args(prototxt, weights, data, out)], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoint = out / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    killed_at = torch.load(checkpoint, weights_only=True)["iter"]
    assert 0 < killed_at < 10
    assert not (out / "finetuned.caffemodel").exists()

    assert main([*_run_args(prototxt, weights, data, out), "--resume"]) == 0
    whole, resumed = _blobs(tmp_path / "whole" / "finetuned.caffemodel"), _blobs(out / "finetuned.caffemodel")
    assert whole.keys() == resumed.keys()
    for name in whole:
        for a, b in zip(whole[name], resumed[name]):
            np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7, err_msg=name)
    strip = lambda m: [{k: v for k, v in e.items() if k != "images_per_s"} for e in m["epochs"]]  # noqa: E731
    assert strip(json.loads((out / "metrics.json").read_text())) == \
        strip(json.loads((tmp_path / "whole" / "metrics.json").read_text()))


# -- cross-modality ------------------------------------------------------------------------------

def _flow_lmdb(path: Path, n: int, channels: int, size: int = 16) -> Path:
    import lmdb
    rng = np.random.default_rng(0)
    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for i in range(n):
            label = i % 3
            data = np.clip(128 + rng.normal(0, 30, (channels, size, size)) + 40 * (label - 1), 0, 255).astype(np.uint8)
            datum = caffe_pb2.Datum(channels=channels, height=size, width=size, data=data.tobytes(), label=label)
            txn.put(f"{i:08d}".encode(), datum.SerializeToString())
    env.close()
    return path


def test_cross_modality_averages_the_first_convolution_over_rgb_and_replicates_it(tiny, tmp_path):
    prototxt, weights = tiny
    data = _flow_lmdb(tmp_path / "flow_lmdb", 15, 20)
    out = tmp_path / "out"
    assert _finetune(prototxt, "--weights", weights, "--data", data, "--num-classes", 3, "--input-channels", 20,
                     "--cross-modality", "--freeze-until", "conv1", "--epochs", 1, "--batch-size", 4,
                     "--device", "cpu", "-o", out) == 0
    rgb = _blobs(weights)["conv1"][0]
    got = _blobs(out / "finetuned.caffemodel")["conv1"][0]
    assert got.shape == (8, 20, 3, 3)
    expected = np.repeat(rgb.astype(np.float64).mean(axis=1, keepdims=True), 20, axis=1).astype(np.float32)
    assert same_bits(got, expected)
    graph = load_net(out / "deploy.prototxt", out / "finetuned.caffemodel")
    assert graph.input_shapes["data"][1] == 20


def test_cross_modality_needs_input_channels(tiny, tmp_path, capsys):
    prototxt, weights = tiny
    assert _finetune(prototxt, "--weights", weights, "--data", tmp_path, "--num-classes", 3, "--cross-modality",
                     "-o", tmp_path / "out") == 2
    assert "--cross-modality needs --input-channels" in capsys.readouterr().err


# -- the tiny net: sources, full backprop, outputs -----------------------------------------------

def test_full_backprop_on_a_list_file_with_an_npz_validation_set(tiny, tmp_path):
    prototxt, weights = tiny
    folder = texture_folder(tmp_path / "imgs", 4, size=24)
    lines = [f"{p.relative_to(tmp_path)} {['checker', 'flat', 'stripes'].index(p.parent.name)}"
             for p in sorted(folder.rglob("*.png"))]
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "val.npz", data=rng.integers(0, 256, (5, 3, 40, 40), dtype=np.uint8), labels=np.arange(5) % 3)
    out = tmp_path / "out"
    assert _finetune(prototxt, "--weights", weights, "--data", tmp_path / "train.txt", "--val", tmp_path / "val.npz",
                     "--num-classes", 3, "--epochs", 2, "--batch-size", 5, "--device", "cpu", "-o", out) == 0
    before, after = _blobs(weights), _blobs(out / "finetuned.caffemodel")
    assert not np.array_equal(before["conv1"][0], after["conv1"][0])  # nothing frozen: everything learns
    assert after["fc_ft"][0].shape == (3, 16 * 8 * 8) and "fc" not in after
    metrics = json.loads((out / "metrics.json").read_text())["epochs"]
    assert [m["iter"] for m in metrics] == [3, 6]  # ceil(12 / 5) iterations per epoch
    text = (out / "deploy.prototxt").read_text()
    assert 'name: "fc_ft"' in text and 'bottom: "fc_ft"' in text  # the head and its top renamed, Softmax rewired


def test_a_solver_file_sets_the_updates_and_its_max_iter_the_length(tiny, tmp_path):
    prototxt, weights = tiny
    folder = texture_folder(tmp_path / "imgs", 4, size=24)  # 12 items: 9 to train, 3 iterations per epoch
    solver = tmp_path / "solver.prototxt"
    solver.write_text('net: "train_val.prototxt"\ntest_iter: 10\ntest_interval: 100\nbase_lr: 0.01\n'
                      'lr_policy: "fixed"\nmomentum: 0.9\ntype: "Nesterov"\nmax_iter: 7\n')
    out = tmp_path / "out"
    assert _finetune(prototxt, "--weights", weights, "--data", folder, "--num-classes", 3, "--solver", solver,
                     "--batch-size", 4, "--device", "cpu", "-o", out) == 0
    metrics = json.loads((out / "metrics.json").read_text())["epochs"]
    assert [m["iter"] for m in metrics] == [3, 6, 7]  # the last epoch is cut short by max_iter
    assert all(m["lr"] == pytest.approx(0.01) for m in metrics)


@pytest.mark.slow
def test_a_zoo_name_uses_its_built_in_architecture_and_card_transform(googlenet, tmp_path):
    _, weights = googlenet
    data = texture_folder(tmp_path / "data", 5)
    out = tmp_path / "out"
    assert _finetune("bvlc_googlenet", "--weights", weights, "--data", data, "--num-classes", 3, "--freeze-until",
                     "inception_5b", "--epochs", 1, "--batch-size", 6, "--cache-features", "--device", "cpu",
                     "-o", out) == 0
    head = load_net(out / "deploy.prototxt").layer("loss3/classifier_ft").proto
    assert [(p.lr_mult, p.decay_mult) for p in head.param] == [(10, 1), (20, 0)]
    assert head.inner_product_param.weight_filler.type == "gaussian"  # the built-in net names no fillers
    assert _blobs(out / "finetuned.caffemodel")["loss3/classifier_ft"][0].shape == (3, 1024)


def test_frozen_batchnorm_keeps_its_statistics_and_trainable_batchnorm_learns_them(tmp_path):
    prototxt, weights = _net(tmp_path, TINY_BN)
    folder = texture_folder(tmp_path / "imgs", 4, size=24)
    out = tmp_path / "out"
    assert _finetune(prototxt, "--weights", weights, "--data", folder, "--num-classes", 3, "--freeze-until",
                     "scale1", "--epochs", 1, "--batch-size", 3, "--device", "cpu", "-o", out) == 0
    before, after = _blobs(weights), _blobs(out / "finetuned.caffemodel")
    for name in ("conv1", "bn1", "scale1"):
        assert all(same_bits(a, b) for a, b in zip(before[name], after[name])), name
    assert not np.array_equal(before["bn2"][2], after["bn2"][2])  # training forward passes moved its sums
    assert not np.array_equal(before["conv2"][0], after["conv2"][0])


def test_the_frozen_part_gets_lr_mult_0_and_the_head_10_and_20(tiny):
    from zoo.hub.resolve import resolve
    from zoo.training.surgery import cut, operate, trainable_net
    prototxt, weights = tiny
    s = operate(resolve(str(prototxt), weights=weights), 4, head=None, head_name=None, head_lr_mult=10,
                input_channels=None, cross_modality=False, seed=0, say=lambda _: None)
    c = cut(s.graph, s.logits, s.head, "conv1")
    assert c.frozen == ["conv1"] and c.computed == ["conv1", "relu1", "pool1"]  # parameter-free layers absorbed
    assert c.trainable == ["conv2", "relu2", "fc_ft"] and [s.graph.values[v].caffe_name for v in c.boundary] == ["pool1"]
    net, _, label = trainable_net(s.graph, c, s.logits)
    params = {l.name: [(p.lr_mult, p.decay_mult) for p in l.param] for l in net.layer}
    assert params["fc_ft"] == [(10, 1), (20, 0)] and params["conv2"] == [(1, 1), (2, 0)]
    assert [l.type for l in net.layer][-2:] == ["SoftmaxWithLoss", "Accuracy"] and label == "label"


def test_freeze_until_takes_a_group_prefix_and_its_ancestors(googlenet):
    from zoo.training.surgery import cut, match_layers
    graph = load_net(googlenet[0])
    assert match_layers(graph, "inception_4e") == [l.name for l in graph.layers if l.name.startswith("inception_4e/")]
    c = cut(graph, "loss3/classifier", "loss3/classifier", "inception_4e")
    assert "conv1/7x7_s2" in c.frozen and "inception_4e/output" in c.frozen and "inception_5a/1x1" in c.trainable
    assert [graph.values[v].caffe_name for v in c.boundary] == ["pool4/3x3_s2", "inception_5a/pool"]


# -- one clear line for each bad input -----------------------------------------------------------

def _error(capsys, *args) -> str:
    assert _finetune(*args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("zoo: error: "), err
    return err[0]


@pytest.mark.parametrize("content, message", [(b"", "the image file is empty"),
                                              (b"not an image at all", "not a readable image")],
                         ids=["empty", "unreadable"])
def test_a_bad_image_is_one_line(tiny, tmp_path, capsys, content, message):
    prototxt, weights = tiny
    folder = texture_folder(tmp_path / "imgs", 3, size=16)
    (folder / "flat" / "broken.jpg").write_bytes(content)
    line = _error(capsys, prototxt, "--weights", weights, "--data", folder, "--num-classes", 3, "-o", tmp_path / "o")
    assert message in line and "broken.jpg" in line


def _list(tmp_path: Path, lines: list[str]) -> Path:
    folder = texture_folder(tmp_path / "imgs", 2, size=16)
    first = sorted(folder.rglob("*.png"))[0]
    path = tmp_path / "list.txt"
    path.write_text("\n".join(line.format(img=first) for line in lines) + "\n")
    return path


def test_a_label_outside_the_classes_is_one_line(tiny, tmp_path, capsys):
    prototxt, weights = tiny
    data = _list(tmp_path, ["{img} 0", "{img} 1", "{img} 2", "{img} 5", "{img} 1"])
    line = _error(capsys, prototxt, "--weights", weights, "--data", data, "--num-classes", 3, "-o", tmp_path / "o")
    assert "label 5 is outside 0..2 (--num-classes 3)" in line


def test_a_list_line_without_a_label_is_one_line(tiny, tmp_path, capsys):
    prototxt, weights = tiny
    data = _list(tmp_path, ["{img} 0", "{img}"])
    line = _error(capsys, prototxt, "--weights", weights, "--data", data, "--num-classes", 3, "-o", tmp_path / "o")
    assert "list.txt:2: expected 'path label'" in line


def test_a_missing_lmdb_is_one_line(tiny, tmp_path, capsys):
    prototxt, weights = tiny
    line = _error(capsys, prototxt, "--weights", weights, "--data", tmp_path / "train_lmdb", "--num-classes", 3,
                  "-o", tmp_path / "o")
    assert "train_lmdb: the LMDB does not exist" in line


def test_freeze_until_a_name_that_matches_nothing_suggests_the_closest(tiny, tmp_path, capsys):
    prototxt, weights = tiny
    folder = texture_folder(tmp_path / "imgs", 3, size=16)
    line = _error(capsys, prototxt, "--weights", weights, "--data", folder, "--num-classes", 3,
                  "--freeze-until", "conv_2", "-o", tmp_path / "o")
    assert "--freeze-until conv_2: no layer or layer group of that name; the closest: conv2" in line


def test_an_existing_run_needs_resume_and_resume_needs_a_run(tiny, tmp_path, capsys):
    prototxt, weights = tiny
    folder = texture_folder(tmp_path / "imgs", 3, size=16)
    args = [prototxt, "--weights", weights, "--data", folder, "--num-classes", 3, "-o", tmp_path / "o"]
    assert "has no checkpoint" in _error(capsys, *args, "--resume")
    (tmp_path / "o" / "checkpoints").mkdir(parents=True)
    (tmp_path / "o" / "checkpoints" / "last.pt").write_bytes(b"")
    assert "add --resume to continue it" in _error(capsys, *args)
