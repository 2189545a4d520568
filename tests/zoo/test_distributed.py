"""`zoo train` / `zoo finetune` on several processes (torch.distributed, gloo on CPU): N processes equal one
process with N times the iter_size over the same sub-batches, on one machine (torchrun, --nproc) or on two
single-process "nodes" meeting over 127.0.0.1; a process killed mid-run and restarted by torchrun resumes to the
same weights; finetune writes its outputs once and keeps its frozen layers bit for bit; every zoo option
passes through torchrun's parser; the pieces of zoo/training/distributed.py."""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from prototxt import load_weights
from tests.helpers import REPO, SHARED, same_bits

CASE = SHARED / "reference" / "solvers" / "sgd_step_lrmult"  # SGD, momentum, step policy, a frozen conv
ITERS = 12


def _need_case() -> Path:
    if not (CASE / "solver.prototxt").is_file():
        pytest.skip(f"{CASE} is missing")
    return CASE


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "LOGLEVEL": "WARNING"}


def _run(cmd: list[str], cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    return done


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def feed(tmp_path_factory) -> Path:
    """Two distinct sub-batches per iteration: `<blob>_<i>_0` and `<blob>_<i>_1`."""
    folder = _need_case()
    batches = np.load(folder / "batches.npz")
    path = tmp_path_factory.mktemp("feed") / "feed.npz"
    np.savez(path, **{f"{b}_{i}_{k}": batches[f"{b}_{(i + 6 * k) % ITERS}"] for b in ("data", "label")
                      for i in range(ITERS) for k in (0, 1)})
    return path


def _solver(folder: Path, name: str, extra: str, snapshot: int = 0) -> Path:
    path = folder / f"{name}.prototxt"
    text = (CASE / "solver.prototxt").read_text().replace("snapshot: 0\n", f"snapshot: {snapshot}\n")
    path.write_text(text + "\n" + extra + "\n")
    return path


def _train_args(solver: Path, feed: Path, out: Path) -> list[str]:
    return ["train", "--solver", str(solver), "--weights", "init.caffemodel", "--feed", str(feed), "--device", "cpu",
            "--log-json", str(out / "log.json"), "--output", str(out / "final.caffemodel")]


@pytest.fixture(scope="module")
def one_process(feed, tmp_path_factory) -> Path:
    """The reference: one process, iter_size 2, over both sub-batches."""
    out = tmp_path_factory.mktemp("one")
    from zoo.cli import main
    cwd = os.getcwd()
    os.chdir(CASE)
    try:
        assert main(_train_args(_solver(out, "solver", "iter_size: 2"), feed, out)) == 0
    finally:
        os.chdir(cwd)
    return out


def _assert_same_training(got: Path, want: Path) -> None:
    log, ref = json.loads((got / "log.json").read_text()), json.loads((want / "log.json").read_text())
    assert [e["iter"] for e in log] == [e["iter"] for e in ref] == list(range(ITERS))
    assert [e["lr"] for e in log] == [e["lr"] for e in ref]  # identical, not close
    a, b = load_weights(got / "final.caffemodel"), load_weights(want / "final.caffemodel")
    assert a.keys() == b.keys()
    for name in b:
        for x, y in zip(a[name], b[name]):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(y).max())), err_msg=name)


def test_two_processes_equal_one_process_with_iter_size_2(feed, one_process, tmp_path):
    out = tmp_path
    done = _run(_torchrun("--nproc-per-node", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0",
                          "-m", "zoo", *_train_args(_solver(out, "solver", ""), feed, out)), CASE)
    _assert_same_training(out, one_process)
    # rank 0 alone speaks: one set of Caffe's lines, naming the group
    assert done.stdout.count("Using device cpu") == 1 and "process 0 of 2 (gloo)" in done.stdout
    assert done.stdout.count("Optimization Done.") == 1


@pytest.mark.slow
def test_two_single_process_nodes_over_127_0_0_1_equal_one_process(feed, one_process, tmp_path):
    port = str(_free_port())
    solver = _solver(tmp_path, "solver", "")
    outs = [tmp_path / "node0", tmp_path / "node1"]
    procs = []
    for node, out in enumerate(outs):
        out.mkdir()
        cmd = _torchrun("--nnodes", "2", "--node-rank", str(node), "--nproc-per-node", "1", "--master-addr",
                        "127.0.0.1", "--master-port", port, "-m", "zoo", *_train_args(solver, feed, out))
        procs.append(subprocess.Popen(cmd, cwd=CASE, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    results = [p.communicate(timeout=240) for p in procs]
    for p, (stdout, stderr) in zip(procs, results):
        assert p.returncode == 0, (stdout[-2000:], stderr[-2000:])
    _assert_same_training(outs[0], one_process)
    assert not any(outs[1].iterdir())  # node 1 (rank 1) writes nothing
    assert "Using device" not in results[1][0]


@pytest.mark.slow
def test_a_killed_process_restarts_the_group_which_resumes_from_the_newest_snapshot(feed, one_process, tmp_path):
    solver = _solver(tmp_path, "solver", f'snapshot_prefix: "{tmp_path}/snap"', snapshot=3)
    done = subprocess.run(_torchrun("--nproc-per-node", "2", "--max-restarts", "1", "--rdzv-backend", "c10d",
                                    "--rdzv-endpoint", "127.0.0.1:0", "--monitor-interval", "0.1",
                                    str(REPO / "tests" / "zoo" / "_kill_once.py"),
                                    *_train_args(solver, feed, tmp_path)),
                          cwd=CASE, env={**_env(), "ZOO_TEST_KILL_RANK": "1", "ZOO_TEST_KILL_AT": "7"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    # the first attempt snapshotted at 3 and 6 and died in iteration 7; the second resumed at 6
    assert f"Resuming from {tmp_path}/snap_iter_6.solverstate at iteration 6" in done.stdout
    assert [e["iter"] for e in json.loads((tmp_path / "log.json").read_text())] == list(range(6, ITERS))
    final, ref = load_weights(tmp_path / "final.caffemodel"), load_weights(one_process / "final.caffemodel")
    for name in ref:
        for x, y in zip(final[name], ref[name]):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(y).max())), err_msg=name)
    assert sorted(p.name for p in tmp_path.glob("snap_iter_*.solverstate")) == \
        [f"snap_iter_{i}.solverstate" for i in (12, 3, 6, 9)]


def test_nproc_starts_the_group_through_torchs_launcher(feed, one_process, tmp_path):
    # `--log` too: outside torchrun it is still accepted (the same option as --log-json)
    args = _train_args(_solver(tmp_path, "solver", ""), feed, tmp_path)
    args[args.index("--log-json")] = "--log"
    done = _run([sys.executable, "-m", "zoo", *args, "--nproc", "2"], CASE)
    _assert_same_training(tmp_path, one_process)
    assert done.stdout.count("Optimization Done.") == 1


def test_a_failing_process_is_one_line_from_nproc(tmp_path):
    done = subprocess.run([sys.executable, "-m", "zoo", "train", "--solver", str(tmp_path / "none.prototxt"),
                           "--nproc", "2"], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 1
    assert "zoo: error: 2 of 2 processes failed" in done.stderr
    assert "Traceback" not in done.stderr


# -- every option through torchrun -------------------------------------------------------------------

def _options(command: str) -> list[argparse.Action]:
    from zoo.cli import build_parser
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [a for a in sub.choices[command]._actions if a.option_strings and a.dest != "help"]


@pytest.mark.parametrize("command", ["train", "finetune"])
def test_every_zoo_option_reaches_zoo_through_torchruns_parser(command):
    from torch.distributed.run import get_args_parser
    refused = []
    for action in _options(command):
        for option in action.option_strings:
            if option in ("--log", "--nproc"):
                # documented: torchrun refuses both as ambiguous abbreviations of its own options; --log has
                # --log-json, and --nproc has no use under torchrun (which gets --nproc-per-node instead)
                continue
            forms = [[option]] if action.nargs == 0 else [[option, "x"], [f"{option}=x"]]
            for form in forms:
                args = get_args_parser().parse_args(["--nproc-per-node", "2", "-m", "zoo", command, *form])
                if args.training_script_args != [command, *form]:
                    refused.append(form)
    assert not refused


@pytest.mark.parametrize("option", ["--log", "--nproc"])
def test_torchrun_refuses_log_and_nproc_as_the_readme_says(option, capsys):
    from torch.distributed.run import get_args_parser
    with pytest.raises(SystemExit):
        get_args_parser().parse_args(["--nproc-per-node", "2", "-m", "zoo", "train", option, "x"])
    assert "ambiguous option" in capsys.readouterr().err


# -- zoo finetune -------------------------------------------------------------------------------------

def _finetune_args(weights: Path, data: Path, out: Path) -> list[str]:
    from tests.zoo.test_finetune import GOOGLENET
    return ["finetune", str(GOOGLENET / "net.prototxt"), "--weights", str(weights), "--data", str(data),
            "--num-classes", "3", "--freeze-until", "inception_4e", "--epochs", "2", "--batch-size", "4",
            "--cache-features", "--checkpoint-every", "1", "--device", "cpu", "--quiet", "-o", str(out)]


@pytest.fixture(scope="module")
def finetuned(weights_cache, tmp_path_factory) -> tuple[Path, Path, Path, str]:
    """(weights, data, output folder, stdout) of `zoo finetune` on 2 processes."""
    from tests.helpers import make_weights
    from tests.zoo.test_finetune import GOOGLENET, texture_folder
    if not GOOGLENET.is_dir():
        pytest.skip(f"{GOOGLENET} is missing")
    tmp = tmp_path_factory.mktemp("finetune")
    weights = make_weights(GOOGLENET, "layer", weights_cache[0])
    data = texture_folder(tmp / "data", 6)  # 18 items: 14 to train (7 per process), 4 to validate
    out = tmp / "out"
    done = _run(_torchrun("--nproc-per-node", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0",
                          "-m", "zoo", *_finetune_args(weights, data, out)), REPO, timeout=600)
    return weights, data, out, done.stdout


@pytest.mark.slow
def test_finetune_on_two_processes_trains_writes_once_and_keeps_frozen_layers(finetuned):
    weights, _, out, stdout = finetuned
    for name in ("deploy.prototxt", "finetuned.caffemodel", "finetuned.onnx", "metrics.json", "curves.png"):
        assert stdout.count(f"wrote {out / name}") == 1, stdout[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert [m["epoch"] for m in metrics["epochs"]] == [1, 2]
    assert metrics["epochs"][-1]["iter"] == 2 * 2  # 7 items per process in batches of 4: 2 iterations an epoch
    # each process ran (and cached) the frozen part on its own items only
    assert sorted(p.name for p in (out / "cache").iterdir() if p.is_dir()) == ["rank0of2", "rank1of2"]
    assert len(list((out / "cache").glob("train-*-0.npy"))) == 2
    before, after = load_weights(weights), load_weights(out / "finetuned.caffemodel")
    frozen = [n for n in before
              if n.split("/")[0] in ("conv1", "conv2") or n.startswith(("inception_3", "inception_4"))]
    assert len(frozen) == 45
    for name in frozen:
        assert all(same_bits(a, b) for a, b in zip(before[name], after[name])), name
    assert not np.array_equal(before["inception_5b/1x1"][0], after["inception_5b/1x1"][0])


@pytest.mark.slow
def test_finetune_killed_on_one_process_resumes_from_its_checkpoint(finetuned, tmp_path):
    weights, data, whole, _ = finetuned
    out = tmp_path / "out"
    done = subprocess.run(_torchrun("--nproc-per-node", "2", "--max-restarts", "1", "--rdzv-backend", "c10d",
                                    "--rdzv-endpoint", "127.0.0.1:0", "--monitor-interval", "0.1",
                                    str(REPO / "tests" / "zoo" / "_kill_once.py"), *_finetune_args(weights, data, out)),
                          cwd=REPO, env={**_env(), "ZOO_TEST_KILL_RANK": "1", "ZOO_TEST_KILL_AT": "2"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    assert "resuming at iteration" in done.stdout
    a, b = load_weights(whole / "finetuned.caffemodel"), load_weights(out / "finetuned.caffemodel")
    for name in a:
        for x, y in zip(a[name], b[name]):
            np.testing.assert_allclose(y, x, rtol=1e-6, atol=1e-7, err_msg=name)
    strip = lambda m: [{k: v for k, v in e.items() if k != "images_per_s"} for e in m["epochs"]]  # noqa: E731
    assert strip(json.loads((out / "metrics.json").read_text())) == \
        strip(json.loads((whole / "metrics.json").read_text()))


# -- the pieces ---------------------------------------------------------------------------------------

def test_one_process_is_left_alone(monkeypatch):
    import torch

    from zoo.training import distributed
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not distributed.launched()
    assert distributed.setup(torch.device("cpu")) == torch.device("cpu")
    assert (distributed.rank(), distributed.world_size(), distributed.pass_index(1, 3)) == (0, 1, 1)
    order = np.array([3, 0, 2, 1])
    assert distributed.shard_order(order, 4) is order
    seen = []
    distributed.main_only(seen.append)("x")
    assert seen == ["x"]


def test_an_epochs_order_is_shared_out_by_position(monkeypatch):
    from zoo.training import distributed
    order = np.random.default_rng(0).permutation(11)
    parts = []
    for r in range(3):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        monkeypatch.setattr(distributed, "world_size", lambda: 3)
        items = distributed.shard_items(11)
        local = distributed.shard_order(order, 11)
        parts.append(items[local])
        assert list(items[local]) == [i for i in order if i % 3 == r]  # the epoch's sequence, kept
        assert distributed.shard_size(11) == 4
        assert distributed.pass_index(1, 2) == 2 * r + 1
    assert sorted(np.concatenate(parts)) == list(range(11))  # together: every item once


def test_strip_nproc_and_newest_snapshot(tmp_path, monkeypatch):
    from zoo.training import distributed
    argv = ["train", "--nproc", "2", "--solver", "s", "--nproc=3"]
    assert distributed.strip_nproc(argv) == ["train", "--solver", "s"]
    for i in (3, 12, 6):
        (tmp_path / f"snap_iter_{i}.solverstate").write_bytes(b"")
    (tmp_path / "snap_iter_99.caffemodel").write_bytes(b"")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    assert distributed.newest_snapshot(str(tmp_path / "snap")) is None  # a first start never resumes
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert distributed.newest_snapshot(str(tmp_path / "snap")) == str(tmp_path / "snap_iter_12.solverstate")
    assert distributed.newest_snapshot(str(tmp_path / "other")) is None


def test_lmdb_and_imagedata_shares_cover_the_stream_once(tmp_path, monkeypatch):
    from tests.zoo.test_train import _write_lmdb
    from prototxt import caffe_pb2
    from zoo.training.data import open_layer_source
    images = [np.full((1, 2, 2), i, np.uint8) for i in range(5)]
    _write_lmdb(tmp_path / "db", images, list(range(5)))
    layer = caffe_pb2.LayerParameter(name="d", type="Data", top=["data", "label"])
    layer.data_param.source, layer.data_param.batch_size, layer.data_param.backend = str(tmp_path / "db"), 1, 1

    def stream(shard, n=5):
        src = open_layer_source(layer, "train", np.random.default_rng(0), shard)
        try:
            return [int(src.next_batch()["label"][0]) for _ in range(n)]
        finally:
            src.close()
    whole = stream((0, 1), 10)
    assert stream((0, 2)) == whole[0::2] and stream((1, 2)) == whole[1::2]  # Caffe's DataLayer::Skip

    from PIL import Image
    for i in range(5):
        Image.fromarray(np.full((2, 2, 3), i, np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "list.txt").write_text("".join(f"{i}.png {i}\n" for i in range(5)))
    listed = caffe_pb2.LayerParameter(name="img", type="ImageData", top=["data", "label"])
    listed.image_data_param.source, listed.image_data_param.batch_size = str(tmp_path / "list.txt"), 1
    listed.image_data_param.root_folder, listed.image_data_param.shuffle = f"{tmp_path}/", True
    layer = listed
    parts = [stream((r, 2), 5) for r in range(2)]
    merged = [x for pair in zip(parts[0], parts[1]) for x in pair]
    assert sorted(merged[:5]) == list(range(5)) and sorted(merged[5:10]) == list(range(5))  # once per epoch each
