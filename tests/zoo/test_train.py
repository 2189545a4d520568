"""`zoo train` against real Caffe training runs (shared/reference/solvers), plus snapshots, resuming,
TEST phases, display lines, data layers and the CLI's one-line errors."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from prototxt import load_net, load_weights
from tests.helpers import REPO, SHARED, shared_params
from zoo.cli import main

CASES_DIR = SHARED / "reference" / "solvers"
CASES = sorted(p.parent.name for p in CASES_DIR.glob("*/solver.prototxt")) if CASES_DIR.is_dir() else []
RTOL, ATOL = 1e-4, 1e-5


@pytest.fixture(autouse=True)
def one_thread():
    # Nets this small only pay for intra-op threads.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _trajectory(case: str) -> list[dict]:
    return json.loads((CASES_DIR / case / "trajectory.json").read_text())["trajectory"]


def _frozen(case: str) -> set[str]:
    """`<layer>/<i>` of the blobs whose layer spec says lr_mult 0."""
    graph = load_net(CASES_DIR / case / "train.prototxt", phase="train")
    return {f"{l.name}/{i}" for l in graph.layers for i, spec in enumerate(l.proto.param)
            if spec.HasField("lr_mult") and spec.lr_mult == 0 and l.type != "BatchNorm"}


def _blobs(caffemodel: Path) -> dict[str, np.ndarray]:
    return {f"{name}/{i}": b for name, blobs in load_weights(caffemodel).items() for i, b in enumerate(blobs)}


def _assert_blobs(got: dict[str, np.ndarray], expected, label: str) -> float:
    """Every blob of `expected` (an npz) within tolerance; returns the largest relative error."""
    worst = 0.0
    for key in expected.files:
        want = expected[key]
        have = got[key].reshape(want.shape)
        np.testing.assert_allclose(have, want, rtol=RTOL, atol=ATOL, err_msg=f"{label} {key}")
        worst = max(worst, float((np.abs(have - want) / np.maximum(np.abs(want), ATOL)).max()))
    return worst


def _assert_trajectory(got: list[dict], expected: list[dict]) -> None:
    assert [g["iter"] for g in got] == [e["iter"] for e in expected]
    for g, e in zip(got, expected):
        assert g["loss"] == pytest.approx(e["loss"], rel=RTOL), g["iter"]
        assert g["lr"] == pytest.approx(e["lr"], rel=RTOL), g["iter"]


def _train_cli(tmp_path: Path, *extra: str) -> int:
    return main(["train", "--solver", "solver.prototxt", "--weights", "init.caffemodel", "--feed", "batches.npz",
                 "--log", str(tmp_path / "log.json"), "--output", str(tmp_path / "final.caffemodel"), *extra])


# -- the acceptance runs -------------------------------------------------------------------------

@pytest.mark.parametrize("case", shared_params(CASES, CASES))
def test_training_matches_caffe_for_every_iteration_and_blob(case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(CASES_DIR / case)
    assert _train_cli(tmp_path, "--device", "cpu") == 0
    assert "Using device cpu" in capsys.readouterr().out
    _assert_trajectory(json.loads((tmp_path / "log.json").read_text()), _trajectory(case))
    got = _blobs(tmp_path / "final.caffemodel")
    _assert_blobs(got, np.load(CASES_DIR / case / "final.npz"), "final")
    init = np.load(CASES_DIR / case / "init.npz")
    for key in _frozen(case):
        assert np.array_equal(got[key], init[key]), f"frozen blob {key} moved"


@pytest.mark.parametrize("case", shared_params(CASES, CASES))
def test_snapshot_every_iteration_gives_after1_and_resuming_equals_uninterrupted(case, tmp_path, monkeypatch):
    monkeypatch.chdir(CASES_DIR / case)
    text = (CASES_DIR / case / "solver.prototxt").read_text()
    text = re.sub(r"(?m)^snapshot: 0$", "snapshot: 1", text) + f'\nsnapshot_prefix: "{tmp_path}/snap"\n'
    (tmp_path / "solver.prototxt").write_text(text)
    from zoo.training.train import train

    straight = train(tmp_path / "solver.prototxt", weights="init.caffemodel", feed="batches.npz", device="cpu")
    assert len(straight.snapshots) == 12
    _assert_blobs(_blobs(tmp_path / "snap_iter_1.caffemodel"), np.load(CASES_DIR / case / "after1.npz"), "after1")
    final = _blobs(tmp_path / "snap_iter_12.caffemodel")

    resumed = train(tmp_path / "solver.prototxt", snapshot=tmp_path / "snap_iter_6.solverstate",
                    feed="batches.npz", device="cpu", output=tmp_path / "resumed.caffemodel")
    assert [e["iter"] for e in resumed.trajectory] == list(range(6, 12))
    assert resumed.trajectory == straight.trajectory[6:]
    again = _blobs(tmp_path / "resumed.caffemodel")
    assert again.keys() == final.keys()
    for key in final:
        assert np.array_equal(again[key], final[key]), key


def test_the_real_command_line(tmp_path):
    case = "sgd_step_lrmult"
    if case not in CASES:
        pytest.skip(f"{CASES_DIR / case} is missing")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "zoo", "train", "--solver", "solver.prototxt", "--weights",
                           "init.caffemodel", "--feed", "batches.npz", "--log", str(tmp_path / "log.json"),
                           "--output", str(tmp_path / "final.caffemodel")],
                          cwd=CASES_DIR / case, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("Using device") == 1 and "Optimization Done." in done.stdout
    _assert_trajectory(json.loads((tmp_path / "log.json").read_text()), _trajectory(case))
    _assert_blobs(_blobs(tmp_path / "final.caffemodel"), np.load(CASES_DIR / case / "final.npz"), "final")


# -- iter_size with distinct sub-batches ---------------------------------------------------------

def _case_or_skip(case: str) -> Path:
    if case not in CASES:
        pytest.skip(f"{CASES_DIR / case} is missing")
    return CASES_DIR / case


def test_per_pass_keys_feed_each_iter_size_pass(tmp_path, monkeypatch):
    folder = _case_or_skip("sgd_itersize_clip_l1")
    monkeypatch.chdir(folder)
    batches = np.load(folder / "batches.npz")
    n = len(_trajectory("sgd_itersize_clip_l1"))
    # The same batch under both pass keys: exactly the fixture (Caffe ran both passes on one batch).
    same = {f"{b}_{i}_{k}": batches[f"{b}_{i}"] for b in ("data", "label") for i in range(n) for k in (0, 1)}
    np.savez(tmp_path / "same.npz", **same)
    from zoo.training.train import train

    result = train("solver.prototxt", weights="init.caffemodel", feed=tmp_path / "same.npz", device="cpu")
    _assert_trajectory(result.trajectory, _trajectory("sgd_itersize_clip_l1"))
    # Distinct passes at iteration 0 (the init weights): the reported loss is the mean of the two passes.
    np.savez(tmp_path / "distinct.npz", **{f"{b}_0_{k}": batches[f"{b}_{k + 3}"] for b in ("data", "label")
                                            for k in (0, 1)})
    (tmp_path / "one.prototxt").write_text((folder / "solver.prototxt").read_text().replace("max_iter: 12",
                                                                                            "max_iter: 1"))
    both = train(tmp_path / "one.prototxt", weights="init.caffemodel", feed=tmp_path / "distinct.npz", device="cpu")
    losses = []
    for k in (0, 1):
        np.savez(tmp_path / f"pass{k}.npz", data_0=batches[f"data_{k + 3}"], label_0=batches[f"label_{k + 3}"])
        losses.append(train(tmp_path / "one.prototxt", weights="init.caffemodel", feed=tmp_path / f"pass{k}.npz",
                            device="cpu").trajectory[0]["loss"])
    assert losses[0] != pytest.approx(losses[1], rel=1e-3)
    assert both.trajectory[0]["loss"] == pytest.approx(np.mean(losses), rel=1e-6)


# -- TEST phase and display ----------------------------------------------------------------------

def test_test_phase_shares_the_trained_weights_and_display_prints_caffes_lines(tmp_path, monkeypatch, capsys):
    folder = _case_or_skip("sgd_step_lrmult")
    monkeypatch.chdir(folder)
    batches = np.load(folder / "batches.npz")
    feed = {k: batches[k] for k in batches.files}
    feed.update(test_data_0=batches["data_0"], test_label_0=batches["label_0"])
    np.savez(tmp_path / "feed.npz", **feed)
    text = (folder / "solver.prototxt").read_text().replace("display: 0", "display: 4")
    (tmp_path / "solver.prototxt").write_text(text + "\ntest_iter: 1\ntest_interval: 4\n")
    from zoo.training.train import train

    lines: list[str] = []
    result = train(tmp_path / "solver.prototxt", weights="init.caffemodel", feed=tmp_path / "feed.npz",
                   device="cpu", echo=lines.append)
    trajectory = _trajectory("sgd_step_lrmult")
    assert [t["iter"] for t in result.tests] == [0, 4, 8, 12]
    # At iteration 0 the TEST net sees the train net's initial weights and batch 0: the same loss.
    assert result.tests[0]["outputs"]["loss"][0] == pytest.approx(trajectory[0]["loss"], rel=1e-6)
    assert result.tests[1]["outputs"]["loss"][0] != pytest.approx(trajectory[0]["loss"], rel=1e-3)
    text = "\n".join(lines)
    assert re.search(r"^Iteration 0 \([^)]* iter/s, [^)]*s/4 iters\), loss = 2\.2538\d*$", text, re.M), text
    assert re.search(r"^    Train net output #0: loss = 2\.2538\d* \(\* 1 = 2\.2538\d* loss\)$", text, re.M)
    assert "Iteration 4, lr = 0.005" in lines and "Iteration 0, Testing net (#0)" in lines
    assert lines[-1] == "Optimization Done."


def test_average_loss_smooths_the_displayed_loss():
    from zoo.training.train import SmoothedLoss

    smoothed = SmoothedLoss(window=2, start=0)
    values = [smoothed.update(np.float32(x), it) for it, x in enumerate([4.0, 2.0, 6.0, 10.0])]
    assert values == [4.0, 3.0, 4.0, 8.0]


# -- learnable params ----------------------------------------------------------------------------

def test_learnable_params_list_shared_blobs_once_and_batchnorm_statistics_as_frozen(monkeypatch):
    for case in ("sgd_shared_params", "bn_train"):
        _case_or_skip(case)
    from zoo.training.train import learnable_params, read_solver, train_net_spec, build_net
    from zoo.training.data import TRAIN

    monkeypatch.chdir(CASES_DIR / "sgd_shared_params")
    proto, _ = read_solver("solver.prototxt")
    net = build_net(train_net_spec(proto, "solver.prototxt"), TRAIN, feed="batches.npz", feed_prefix="",
                    rng=np.random.default_rng(0), weights=["init.caffemodel"], seed=0, device=torch.device("cpu"))
    params = learnable_params(net)
    assert [(p.name, p.lr_mult, p.decay_mult) for p in params] == [
        ("conv_a/0", 1.0, 1.0), ("conv_a/1", 2.0, 0.0), ("ip2/0", 1.0, 1.0), ("ip2/1", 1.0, 1.0)]
    assert net.module.conv_a.weight is net.module.conv_b.weight

    monkeypatch.chdir(CASES_DIR / "bn_train")
    proto, _ = read_solver("solver.prototxt")
    net = build_net(train_net_spec(proto, "solver.prototxt"), TRAIN, feed="batches.npz", feed_prefix="",
                    rng=np.random.default_rng(0), weights=["init.caffemodel"], seed=0, device=torch.device("cpu"))
    bn = [p for p in learnable_params(net) if p.name.startswith("bn")]
    assert [p.name for p in bn] == ["bn1/0", "bn1/1", "bn1/2", "bn2/0", "bn2/1", "bn2/2"]
    assert all(p.lr_mult == 0 for p in bn)


def test_a_frozen_blob_that_a_training_layer_shares_gets_that_layers_gradient(tmp_path, monkeypatch):
    """Caffe sets param_propagate_down from each layer's OWN lr_mult: with the owner conv_a freezing the
    shared blobs (lr_mult 0) and the sharer conv_b naming them only (default 1), the shared diff is conv_b's
    part alone, ClipGradients counts it, and the blobs stay (effective lr_mult 0). The same net with
    conv_b unshared and trained (same initial values) has exactly that diff: every other blob must agree."""
    _case_or_skip("sgd_shared_params")
    from prototxt import caffe_pb2

    from zoo.training.train import train
    case = CASES_DIR / "sgd_shared_params"
    text = (case / "train.prototxt").read_text()
    frozen_owner = text.replace('param { name: "shared_w" lr_mult: 1 decay_mult: 1 } param { name: "shared_b" '
                                'lr_mult: 2 decay_mult: 0 }', 'param { name: "shared_w" lr_mult: 0 } '
                                'param { name: "shared_b" lr_mult: 0 }')
    unshared = frozen_owner.replace('param { name: "shared_w" lr_mult: 0 } param { name: "shared_b" lr_mult: 0 }',
                                    'param { lr_mult: 0 } param { lr_mult: 0 }')
    unshared = unshared.replace('param { name: "shared_w" } param { name: "shared_b" }',
                                'param { lr_mult: 1 } param { lr_mult: 1 }')
    assert frozen_owner != text and unshared.count('name: "shared_') == 0
    model = caffe_pb2.NetParameter()
    model.ParseFromString((case / "init.caffemodel").read_bytes())
    copy = model.layer.add()
    copy.CopyFrom(next(l for l in model.layer if l.name == "conv_a"))
    copy.name = "conv_b"
    (tmp_path / "b.caffemodel").write_bytes(model.SerializeToString())
    solver = (case / "solver.prototxt").read_text().replace("max_iter: 12", "max_iter: 1")  # then conv_b moves
    results = {}
    for name, net, weights in (("shared", frozen_owner, case / "init.caffemodel"),
                               ("unshared", unshared, tmp_path / "b.caffemodel")):
        (tmp_path / f"{name}.prototxt").write_text(net)
        (tmp_path / f"{name}_solver.prototxt").write_text(
            solver.replace('net: "train.prototxt"', f'net: "{name}.prototxt"') + "clip_gradients: 0.5\n")
        monkeypatch.chdir(tmp_path)
        results[name] = train(f"{name}_solver.prototxt", weights=str(weights), feed=str(case / "batches.npz"),
                              device="cpu")
    shared, unshared_run = (results[k] for k in ("shared", "unshared"))
    assert float(shared.solver.last_grad_norm) == float(unshared_run.solver.last_grad_norm)
    assert float(shared.solver.last_grad_norm) > 0.5  # the clip fires, so the norm shapes every update
    got, want = shared.module.state_dict(), unshared_run.module.state_dict()
    for key in ("ip2.weight", "ip2.bias"):
        assert torch.equal(got[key], want[key]), key
    start = _blobs(case / "init.caffemodel")
    np.testing.assert_array_equal(got["conv_a.weight"].numpy(), start["conv_a/0"].reshape(got["conv_a.weight"].shape))
    assert got["conv_b.weight"].data_ptr() == got["conv_a.weight"].data_ptr()


# -- data layers ---------------------------------------------------------------------------------

NET = """
name: "tiny"
layer {{ name: "data" type: "{type}" top: "data" top: "label" include {{ phase: TRAIN }}
  {source_param} {{ source: "{source}" batch_size: 2 {extra} }}
  transform_param {{ {transform} }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param {{ num_output: 3
  weight_filler {{ type: "gaussian" std: 0.01 }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
"""
SOLVER = 'net: "net.prototxt" base_lr: 0.01 lr_policy: "fixed" max_iter: 3 snapshot_after_train: false ' \
         'random_seed: 5 solver_mode: CPU\n'


def _write_lmdb(path: Path, images: list[np.ndarray], labels: list[int], encoded: bool = False) -> None:
    import io

    import lmdb
    from PIL import Image

    from prototxt import caffe_pb2
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i, (img, label) in enumerate(zip(images, labels)):
            datum = caffe_pb2.Datum(channels=img.shape[0], height=img.shape[1], width=img.shape[2], label=label)
            if encoded:
                buf = io.BytesIO()
                Image.fromarray(img[::-1].transpose(1, 2, 0)).save(buf, format="PNG")  # BGR -> RGB file
                datum.data, datum.encoded = buf.getvalue(), True
            else:
                datum.data = img.tobytes()
            txn.put(f"{i:08d}".encode(), datum.SerializeToString())
    env.close()


def test_lmdb_data_layer_reads_datums_in_key_order_and_wraps_around(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (3, 5, 4), dtype=np.uint8) for _ in range(3)]
    _write_lmdb(tmp_path / "db", images, [0, 1, 2])
    from prototxt import caffe_pb2
    from zoo.training.data import TRAIN, LmdbSource

    layer = caffe_pb2.LayerParameter(name="data", type="Data", top=["data", "label"])
    layer.data_param.source, layer.data_param.batch_size, layer.data_param.backend = "db", 2, 1
    layer.transform_param.scale = 0.5
    layer.transform_param.mean_value.extend([10.0])
    source = LmdbSource(layer, TRAIN, np.random.default_rng(0))
    assert source.shapes == [(2, 3, 5, 4), (2,)]
    first, second = source.next_batch(), source.next_batch()
    np.testing.assert_array_equal(first["label"], [0, 1])
    np.testing.assert_array_equal(second["label"], [2, 0])  # wraps to the first record
    np.testing.assert_allclose(second["data"][0], (images[2].astype(np.float32) - 10) * 0.5)
    source.close()


def test_data_layer_ignores_rand_skip_as_caffe_does(tmp_path, monkeypatch):
    """Caffe's Data layer has not read data_param.rand_skip since its DataReader: it starts at the first
    record whatever the seed (the ImageData layer still skips)."""
    monkeypatch.chdir(tmp_path)
    images = [np.full((1, 2, 2), i, np.uint8) for i in range(6)]
    _write_lmdb(tmp_path / "db", images, list(range(6)))
    from prototxt import caffe_pb2
    from zoo.training.data import TRAIN, LmdbSource

    layer = caffe_pb2.LayerParameter(name="data", type="Data", top=["data", "label"])
    layer.data_param.source, layer.data_param.batch_size, layer.data_param.backend = "db", 1, 1
    layer.data_param.rand_skip = 5
    for seed in range(4):
        source = LmdbSource(layer, TRAIN, np.random.default_rng(seed))
        assert source.next_batch()["label"].tolist() == [0]
        source.close()


def test_encoded_datums_decode_to_bgr(tmp_path):
    bgr = np.zeros((3, 2, 2), np.uint8)
    bgr[2] = 255  # red in BGR order
    _write_lmdb(tmp_path / "db", [bgr], [1], encoded=True)
    from prototxt import caffe_pb2
    from zoo.training.data import TEST, LmdbSource

    layer = caffe_pb2.LayerParameter(name="data", type="Data", top=["data", "label"])
    layer.data_param.source, layer.data_param.batch_size, layer.data_param.backend = str(tmp_path / "db"), 1, 1
    batch = LmdbSource(layer, TEST, np.random.default_rng(0)).next_batch()
    np.testing.assert_array_equal(batch["data"][0], bgr.astype(np.float32))


def test_transform_crops_at_the_centre_in_test_subtracts_the_mean_there_then_mirrors():
    from zoo.inference.transform import TEST, DataTransformer as Transform

    image = np.arange(2 * 5 * 6, dtype=np.float32).reshape(2, 5, 6)
    mean = np.full((2, 5, 6), 1.0, np.float32)
    mean[:, 1:4, 1:5] = 7.0  # the centred 3x4 window sees 7 everywhere
    t = Transform(scale=2.0, crop_size=3, mean=mean, phase=TEST)
    out = t(image[:, :, :], np.random.default_rng(0), "test")
    np.testing.assert_array_equal(out, (image[:, 1:4, 1:4] - 7.0) * 2.0)
    mirrored = Transform(mirror=True, mean_values=(1.0, 2.0), phase=TEST)
    rng = np.random.default_rng(1)
    outs = [mirrored(image, rng, "test") for _ in range(8)]
    flipped = (image - np.array([1.0, 2.0], np.float32).reshape(2, 1, 1))[:, :, ::-1]
    assert any(np.array_equal(o, flipped) for o in outs) and any(np.array_equal(o, flipped[:, :, ::-1]) for o in outs)


def _image_list(tmp_path: Path) -> None:
    from PIL import Image
    (tmp_path / "img").mkdir()
    for i, color in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        Image.new("RGB", (6, 4), color).save(tmp_path / "img" / f"{i}.png")
    (tmp_path / "list.txt").write_text("0.png 0\n1.png 1\n\n2.png 2\n")


def test_imagedata_and_data_nets_train_from_their_own_layers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _image_list(tmp_path)
    from zoo.training.train import train

    (tmp_path / "net.prototxt").write_text(NET.format(
        type="ImageData", source_param="image_data_param", source="list.txt", extra='root_folder: "img/"',
        transform="crop_size: 3 mirror: true mean_value: 104 mean_value: 117 mean_value: 123"))
    (tmp_path / "solver.prototxt").write_text(SOLVER)
    result = train("solver.prototxt", device="cpu", output=tmp_path / "out.caffemodel")
    assert len(result.trajectory) == 3 and all(np.isfinite(e["loss"]) for e in result.trajectory)
    assert load_weights(tmp_path / "out.caffemodel")["ip"][0].shape == (3, 27)

    rng = np.random.default_rng(2)
    _write_lmdb(tmp_path / "db", [rng.integers(0, 256, (1, 4, 4), dtype=np.uint8) for _ in range(5)], [0, 1, 2, 1, 0])
    (tmp_path / "net.prototxt").write_text(NET.format(
        type="Data", source_param="data_param", source="db", extra="backend: LMDB", transform="scale: 0.00390625"))
    result = train("solver.prototxt", device="cpu")
    assert len(result.trajectory) == 3 and result.graph.input_shapes["data"] == (2, 1, 4, 4)


def test_imagedata_reads_bgr_with_the_label_after_the_last_space(tmp_path):
    _image_list(tmp_path)
    (tmp_path / "img" / "with space.png").write_bytes((tmp_path / "img" / "0.png").read_bytes())
    (tmp_path / "list.txt").write_text("with space.png 4\n")
    from prototxt import caffe_pb2
    from zoo.training.data import TEST, ImageListSource

    layer = caffe_pb2.LayerParameter(name="data", type="ImageData", top=["data", "label"])
    layer.image_data_param.source, layer.image_data_param.batch_size = str(tmp_path / "list.txt"), 1
    layer.image_data_param.root_folder = str(tmp_path / "img") + "/"
    batch = ImageListSource(layer, TEST, np.random.default_rng(0)).next_batch()
    assert batch["label"].tolist() == [4.0]
    assert batch["data"][0, :, 0, 0].tolist() == [0.0, 0.0, 255.0]  # red, as OpenCV's BGR


# -- errors: one line each -----------------------------------------------------------------------

def _error(capsys, argv: list[str]) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


DATA_NET = dict(type="Data", source_param="data_param", extra="backend: LMDB", transform="")
LIST_NET = dict(type="ImageData", source_param="image_data_param", source="list.txt", extra="", transform="")


@pytest.mark.parametrize("net, list_text, match", [
    (dict(DATA_NET, source="nowhere"), None, "the LMDB 'nowhere' does not exist"),
    (dict(DATA_NET, source="db", extra=""), None, "backend LEVELDB is not supported"),
    (LIST_NET, "a.png zero\n", r"list.txt:1: expected 'path label'"),
    (LIST_NET, "missing.png 0\n", "line 1: 'missing.png': could not load the image"),
], ids=["missing-lmdb", "leveldb", "bad-list-line", "unreadable-image"])
def test_data_problems_are_one_line_errors(net, list_text, match, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    if list_text is not None:
        (tmp_path / "list.txt").write_text(list_text)
    (tmp_path / "net.prototxt").write_text(NET.format(**net))
    (tmp_path / "solver.prototxt").write_text(SOLVER)
    code, err = _error(capsys, ["train", "--solver", "solver.prototxt", "--device", "cpu"])
    assert code == 1 and err.count("\n") == 0 and err.startswith("zoo: error: ")
    assert re.search(match, err), err


def test_setup_problems_are_one_line_errors(tmp_path, monkeypatch, capsys):
    folder = _case_or_skip("sgd_step_lrmult")
    monkeypatch.chdir(folder)
    base = ["train", "--solver", "solver.prototxt", "--device", "cpu"]
    code, err = _error(capsys, base + ["--weights", "init.caffemodel", "--snapshot", "x.solverstate"])
    assert code == 2 and "not both" in err
    code, err = _error(capsys, base + ["--weights", "init.caffemodel"])
    assert code == 1 and "give the batches with --feed" in err and "\n" not in err
    np.savez(tmp_path / "short.npz", data_0=np.zeros((8, 1, 20, 20), np.float32), label_0=np.zeros(8, np.float32))
    code, err = _error(capsys, base + ["--feed", str(tmp_path / "short.npz")])
    assert code == 1 and "no batch for net input 'data' at iteration 1" in err
    code, err = _error(capsys, base + ["--snapshot", str(tmp_path / "none.solverstate")])
    assert code == 1 and "cannot read the solver state" in err
    (tmp_path / "bad.prototxt").write_text('base_lr: 0.1 lr_policy: "stepp" net: "train.prototxt"')
    code, err = _error(capsys, ["train", "--solver", str(tmp_path / "bad.prototxt")])
    assert code == 1 and "did you mean 'step'" in err
    (tmp_path / "nonet.prototxt").write_text('base_lr: 0.1 lr_policy: "fixed"')
    code, err = _error(capsys, ["train", "--solver", str(tmp_path / "nonet.prototxt")])
    assert code == 1 and "names no train net" in err
    (tmp_path / "snap.prototxt").write_text('net: "train.prototxt" base_lr: 0.1 lr_policy: "fixed" max_iter: 2 '
                                            f'snapshot: 1 snapshot_prefix: "{tmp_path}/nowhere/x"')
    code, err = _error(capsys, ["train", "--solver", str(tmp_path / "snap.prototxt"), "--feed", "batches.npz"])
    assert code == 1 and "cannot write snapshots to" in err and "nowhere" in err


def test_a_solverstate_of_another_solver_type_is_refused(tmp_path, monkeypatch, capsys):
    for case in ("sgd_step_lrmult", "adam_fixed"):
        _case_or_skip(case)
    monkeypatch.chdir(CASES_DIR / "adam_fixed")  # the same LeNet, so its weights fit
    text = (CASES_DIR / "adam_fixed" / "solver.prototxt").read_text().replace("max_iter: 12", "max_iter: 1")
    text = text.replace("snapshot_after_train: false", f'snapshot_after_train: true snapshot_prefix: "{tmp_path}/adam"')
    (tmp_path / "solver.prototxt").write_text(text)
    from zoo.training.train import train
    train(tmp_path / "solver.prototxt", weights="init.caffemodel", feed="batches.npz", device="cpu")
    monkeypatch.chdir(CASES_DIR / "sgd_step_lrmult")
    code, err = _error(capsys, ["train", "--solver", "solver.prototxt", "--feed", "batches.npz", "--device", "cpu",
                                "--snapshot", str(tmp_path / "adam_iter_1.solverstate")])
    assert code == 1 and "\n" not in err
    assert "incorrect length of history blobs: got 16, a SGD solver over 8 params keeps 8" in err


def test_a_loss_without_a_torch_form_is_refused_by_name(tmp_path, monkeypatch):
    from zoo.training.train import TrainError, train
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text(
        'name: "n"\nlayer { name: "in" type: "Input" top: "x" top: "t" input_param { shape { dim: 2 dim: 3 } '
        'shape { dim: 2 } } }\n'
        'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip" inner_product_param { num_output: 3 } }\n'
        'layer { name: "hinge" type: "HingeLoss" bottom: "ip" bottom: "t" top: "loss" }\n')
    (tmp_path / "solver.prototxt").write_text('net: "net.prototxt"\nbase_lr: 0.1\nlr_policy: "fixed"\nmax_iter: 1\n')
    np.savez(tmp_path / "feed.npz", x_0=np.zeros((2, 3), np.float32), t_0=np.zeros(2, np.float32))
    with pytest.raises(TrainError, match=r"no PyTorch form for the loss layer HingeLoss \(hinge\) \(zoo train has "
                                         r"Accuracy, EuclideanLoss, SigmoidCrossEntropyLoss, SoftmaxWithLoss\)"):
        train("solver.prototxt", feed="feed.npz", device="cpu")
