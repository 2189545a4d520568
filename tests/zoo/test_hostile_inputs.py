"""Issue 9 items 9 and 10 for images, data and training: hostile or broken inputs to `zoo run`, `zoo train`,
`zoo finetune` and `zoo verify` end in one `zoo: error:` line (exit 1) naming the file and what is wrong,
never a traceback, an internal error or a run that trains silently on garbage."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from tests.zoo.test_finetune import TINY, _net, texture_folder
from tests.zoo.test_train import NET, SOLVER, _write_lmdb
from zoo.cli import main


def _one_line(capsys, argv: list) -> str:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()  # notes (the runtime, no card) may come before
    assert code == 1 and err and err[-1].startswith("zoo: error: "), (code, err)
    assert not any(line.startswith(("zoo: error", "zoo: internal", "Traceback")) for line in err[:-1]), err
    return err[-1]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(path: Path, width: int = 100000, height: int = 100000) -> Path:
    """A 70-byte PNG that declares width x height RGB pixels (30 GB decoded)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + _chunk(b"IEND", b""))
    return path


@pytest.fixture()
def tiny(tmp_path) -> tuple[Path, Path]:
    return _net(tmp_path, TINY)


# -- decompression bombs: refused from the header, before decoding --------------------------------

def test_a_png_bomb_is_refused_before_decoding_naming_the_file_and_pixels(tmp_path):
    from zoo.inference.image import ImageError, decode_image
    bomb = png_bomb(tmp_path / "bomb.png")
    with pytest.raises(ImageError, match=r"bomb\.png.*10000000000 pixels.*ZOO_MAX_IMAGE_PIXELS"):
        decode_image(str(bomb), True, str(bomb))
    with pytest.raises(ImageError, match="10000000000 pixels"):
        decode_image(bomb.read_bytes(), None, "record 1")


def test_the_image_limit_is_raised_or_lowered_by_its_variable(tmp_path, monkeypatch):
    from PIL import Image

    from zoo.inference.image import ImageError, decode_image
    Image.new("RGB", (5, 4)).save(tmp_path / "small.png")
    assert decode_image(str(tmp_path / "small.png"), True, "small").shape == (3, 4, 5)
    monkeypatch.setenv("ZOO_MAX_IMAGE_PIXELS", "19")
    with pytest.raises(ImageError, match="20 pixels"):
        decode_image(str(tmp_path / "small.png"), True, "small")
    monkeypatch.setenv("ZOO_MAX_IMAGE_PIXELS", "20")
    assert decode_image(str(tmp_path / "small.png"), True, "small").shape == (3, 4, 5)
    monkeypatch.setenv("ZOO_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ImageError, match="ZOO_MAX_IMAGE_PIXELS='lots'"):
        decode_image(str(tmp_path / "small.png"), True, "small")


def test_zoo_run_refuses_a_bomb_in_one_line(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "home"))
    prototxt, weights = tiny
    bomb = png_bomb(tmp_path / "bomb.png")
    line = _one_line(capsys, ["run", prototxt, "--weights", weights, bomb])
    assert "bomb.png" in line and "10000000000 pixels" in line


def test_zoo_finetune_refuses_a_bomb_in_one_line(tiny, tmp_path, capsys):
    prototxt, weights = tiny
    folder = texture_folder(tmp_path / "imgs", 3, size=16)
    png_bomb(folder / "flat" / "bomb.png")
    line = _one_line(capsys, ["finetune", prototxt, "--weights", weights, "--data", folder, "--num-classes", 3,
                              "-o", tmp_path / "o", "--quiet"])
    assert "bomb.png" in line and "10000000000 pixels" in line


def _train(tmp_path: Path, capsys, net: dict, solver: str = SOLVER) -> str:
    (tmp_path / "net.prototxt").write_text(NET.format(**net))
    (tmp_path / "solver.prototxt").write_text(solver)
    return _one_line(capsys, ["train", "--solver", "solver.prototxt", "--device", "cpu"])


LIST_NET = dict(type="ImageData", source_param="image_data_param", source="list.txt", extra="", transform="")
DATA_NET = dict(type="Data", source_param="data_param", source="db", extra="backend: LMDB", transform="")


def test_zoo_train_imagedata_refuses_a_bomb_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    png_bomb(tmp_path / "bomb.png")
    (tmp_path / "list.txt").write_text("bomb.png 0\n")
    line = _train(tmp_path, capsys, LIST_NET)
    assert "bomb.png" in line and "10000000000 pixels" in line


# -- LMDB Datums with impossible dims ---------------------------------------------------------------

def _datum_lmdb(path: Path, *datums) -> None:
    import lmdb
    env = lmdb.open(str(path), map_size=1 << 20)
    with env.begin(write=True) as txn:
        for i, datum in enumerate(datums):
            txn.put(f"{i:08d}".encode(), datum.SerializeToString())
    env.close()


@pytest.mark.parametrize("dims, data, match", [
    ((0, 4, 4), b"", r"channels 0, height 4, width 4.*positive"),
    ((3, -2, 4), b"", r"height -2.*positive"),
    ((3, 4, 4), b"\0" * 10, r"10 data bytes for a 3x4x4 Datum"),
], ids=["zero", "negative", "short"])
def test_a_datum_with_impossible_dims_is_one_line(dims, data, match, tmp_path, monkeypatch, capsys):
    from prototxt import caffe_pb2
    monkeypatch.chdir(tmp_path)
    c, h, w = dims
    _datum_lmdb(tmp_path / "db", caffe_pb2.Datum(channels=c, height=h, width=w, data=data, label=0))
    line = _train(tmp_path, capsys, DATA_NET)
    assert "record b'00000000'" in line and __import__("re").search(match, line), line


def test_a_finetune_lmdb_with_negative_dims_is_one_line(tiny, tmp_path, capsys):
    from prototxt import caffe_pb2
    prototxt, weights = tiny
    good = caffe_pb2.Datum(channels=3, height=32, width=32, data=bytes(3 * 32 * 32), label=1)
    _datum_lmdb(tmp_path / "train_lmdb", *[good] * 5, caffe_pb2.Datum(channels=3, height=-1, width=-1, label=0))
    line = _one_line(capsys, ["finetune", prototxt, "--weights", weights, "--data", tmp_path / "train_lmdb",
                              "--num-classes", 3, "-o", tmp_path / "o", "--quiet"])
    assert "train_lmdb: record '00000005'" in line and "height -1" in line


# -- labels ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("label", [3, 7, -1])
def test_zoo_train_refuses_a_label_outside_the_losss_classes(label, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    _write_lmdb(tmp_path / "db", [rng.integers(0, 256, (1, 2, 2), dtype=np.uint8) for _ in range(2)], [0, label])
    line = _train(tmp_path, capsys, DATA_NET)
    assert f"label {label}" in line and "'loss'" in line and "0..2" in line, line


def test_the_ignore_label_is_not_out_of_range(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    _write_lmdb(tmp_path / "db", [rng.integers(0, 256, (1, 2, 2), dtype=np.uint8) for _ in range(2)], [0, 255])
    net = NET.format(**DATA_NET).replace('top: "loss" }', 'top: "loss" loss_param { ignore_label: 255 } }')
    (tmp_path / "net.prototxt").write_text(net)
    (tmp_path / "solver.prototxt").write_text(SOLVER)
    from zoo.training.train import train
    assert len(train("solver.prototxt", device="cpu").trajectory) == 3


def test_a_list_label_beyond_int64_is_one_line_in_train_and_finetune(tiny, tmp_path, monkeypatch, capsys):
    work = tmp_path / "train"
    work.mkdir()
    monkeypatch.chdir(work)
    folder = texture_folder(tmp_path / "imgs", 2, size=16)
    first = sorted(folder.rglob("*.png"))[0]
    (work / "list.txt").write_text(f"{first} 0\n{first} {2 ** 70}\n")
    line = _train(work, capsys, LIST_NET)
    assert f"list.txt:2: label {2 ** 70}" in line
    prototxt, weights = tiny
    line = _one_line(capsys, ["finetune", prototxt, "--weights", weights, "--data", work / "list.txt",
                              "--num-classes", 3, "-o", tmp_path / "o", "--quiet"])
    assert f"list.txt:2: label {2 ** 70}" in line


# -- finetune --resume with a bad checkpoint, --num-classes too large -------------------------------

def _finetune_args(tiny, tmp_path: Path) -> list:
    prototxt, weights = tiny
    folder = texture_folder(tmp_path / "imgs", 3, size=16)
    return ["finetune", prototxt, "--weights", weights, "--data", folder, "--num-classes", 3,
            "-o", tmp_path / "o", "--quiet", "--epochs", 1]


def test_resume_from_a_pickle_torch_refuses_is_one_line(tiny, tmp_path, capsys):
    import pickle
    (tmp_path / "o" / "checkpoints").mkdir(parents=True)
    (tmp_path / "o" / "checkpoints" / "last.pt").write_bytes(pickle.dumps(Path("x")))
    line = _one_line(capsys, _finetune_args(tiny, tmp_path) + ["--resume"])
    assert "last.pt" in line and "without --resume" in line and "delete" in line


def test_resume_from_a_checkpoint_missing_keys_is_one_line(tiny, tmp_path, capsys):
    import torch
    (tmp_path / "o" / "checkpoints").mkdir(parents=True)
    torch.save({"format": 1, "metrics": []}, tmp_path / "o" / "checkpoints" / "last.pt")
    line = _one_line(capsys, _finetune_args(tiny, tmp_path) + ["--resume"])
    assert "last.pt" in line and "config" in line and "without --resume" in line


def test_num_classes_beyond_uint32_is_one_line(tiny, tmp_path, capsys):
    args = _finetune_args(tiny, tmp_path)
    args[args.index("--num-classes") + 1] = 2 ** 32
    line = _one_line(capsys, args)
    assert "--num-classes 4294967296" in line


# -- zoo verify --reference with a bad .npz -------------------------------------------------------

def test_verify_with_a_bad_reference_npz_is_one_line(tiny, tmp_path, capsys):
    prototxt, weights = tiny
    args = ["verify", prototxt, "--weights", weights, "--reference"]
    (tmp_path / "text.npz").write_text("not a zip")
    assert "text.npz" in _one_line(capsys, args + [tmp_path / "text.npz"])
    np.savez(tmp_path / "nokey.npz", **{"out/fc": np.zeros((1, 10), np.float32)})
    line = _one_line(capsys, args + [tmp_path / "nokey.npz"])
    assert "nokey.npz" in line and "in/data" in line
    np.savez(tmp_path / "shape.npz", **{"in/data": np.zeros((1, 3, 32), np.float32)})
    line = _one_line(capsys, args + [tmp_path / "shape.npz"])
    assert "shape.npz" in line and "in/data" in line and "(1, 3, 32)" in line
    np.save(tmp_path / "one.npy", np.zeros(3))
    assert "not an .npz" in _one_line(capsys, args + [tmp_path / "one.npy"])


def test_verify_with_a_reference_skips_blobs_the_net_does_not_have(tiny, tmp_path, capsys):
    prototxt, weights = tiny
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "ref.npz", **{"in/data": x, "out/unknown_blob": np.zeros(2)})
    assert main(["verify", str(prototxt), "--weights", str(weights), "--reference", str(tmp_path / "ref.npz")]) == 0


# -- non-finite losses stop training ----------------------------------------------------------------

def test_zoo_train_stops_at_the_first_non_finite_loss(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    images = [np.zeros((1, 2, 2), np.float32), np.full((1, 2, 2), np.nan, np.float32)]
    import lmdb

    from prototxt import caffe_pb2
    env = lmdb.open(str(tmp_path / "db"), map_size=1 << 20)
    with env.begin(write=True) as txn:
        for i, img in enumerate(images * 2):
            datum = caffe_pb2.Datum(channels=1, height=2, width=2, label=0, float_data=img.ravel().tolist())
            txn.put(f"{i:08d}".encode(), datum.SerializeToString())
    env.close()
    solver = SOLVER.replace("snapshot_after_train: false", f'snapshot_prefix: "{tmp_path}/snap"')
    line = _train(tmp_path, capsys, DATA_NET, solver)
    assert "iteration 0" in line and "nan" in line
    assert not list(tmp_path.glob("snap*"))


def test_zoo_finetune_stops_at_the_first_non_finite_loss(tiny, tmp_path, capsys):
    data = np.zeros((10, 3, 32, 32), np.float32)
    data[::2] = np.inf
    np.savez(tmp_path / "inf.npz", data=data, labels=np.arange(10) % 3)
    prototxt, weights = tiny
    line = _one_line(capsys, ["finetune", prototxt, "--weights", weights, "--data", tmp_path / "inf.npz",
                              "--num-classes", 3, "-o", tmp_path / "o", "--quiet", "--epochs", 1,
                              "--freeze-until", "conv1"])
    assert "iteration 0" in line and ("nan" in line or "inf" in line)
    assert not list((tmp_path / "o").glob("*.caffemodel")) and not (tmp_path / "o" / "checkpoints").exists()


def test_zoo_finetune_stops_at_a_non_finite_validation_loss(tiny, tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "train.npz", data=rng.uniform(0, 255, (6, 3, 32, 32)).astype(np.float32),
             labels=np.arange(6) % 3)
    val = rng.uniform(0, 255, (3, 3, 32, 32)).astype(np.float32)
    val[1] = np.inf
    np.savez(tmp_path / "val.npz", data=val, labels=np.arange(3))
    prototxt, weights = tiny
    line = _one_line(capsys, ["finetune", prototxt, "--weights", weights, "--data", tmp_path / "train.npz",
                              "--val", tmp_path / "val.npz", "--num-classes", 3, "-o", tmp_path / "o", "--quiet",
                              "--epochs", 1, "--batch-size", 3, "--device", "cpu", "--freeze-until", "conv1"])
    assert "the validation loss is" in line and "after epoch 1 (iteration 2)" in line
    assert "nan" in line or "inf" in line
    assert not (tmp_path / "o" / "metrics.json").exists() and not (tmp_path / "o" / "checkpoints" / "best.pt").exists()
