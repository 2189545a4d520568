"""`verify` (zoo verify, and zoo convert's check of a net with max-pooling masks) tells a near-tie in a
max-pooling mask apart from a wrong conversion: where a window's two largest values are equal within the
tolerance, each backend's float rounding may pick either position (either is Caffe's, within the
tolerance), and the mask Upsample then carries the value to another pixel. Such a mask and the blobs computed
from it are named and left uncompared; a mask entry that points at a smaller value is still a divergence."""
from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest

from converters import verify
from prototxt import load_net
from tests.helpers import make_weights, shared_dir

verify_module = importlib.import_module("converters.verify")  # the package's `verify` is the function

NET = """name: "ties"
input: "data"
input_shape { dim: 1 dim: 2 dim: 4 dim: 4 }
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" top: "mask" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "up" type: "Upsample" bottom: "pool" bottom: "mask" top: "up" upsample_param { scale: 2 } }
layer { name: "out" type: "Scale" bottom: "up" top: "out" scale_param { bias_term: false } param { lr_mult: 0 } }
"""


def _graph(tmp_path: Path):
    path = tmp_path / "ties.prototxt"
    path.write_text(NET)
    graph = load_net(path)
    graph.layer("out").blobs = [np.array([2.0, 3.0], np.float32)]
    return graph


def _data(tie: float) -> np.ndarray:
    """Window (0,0) of channel 1 holds its maximum 5 at (0,0) and 5 + tie at (0,1)."""
    x = np.random.default_rng(0).uniform(-1, 1, (1, 2, 4, 4)).astype(np.float32)
    x[0, 1, 0, 0], x[0, 1, 0, 1] = 5.0, 5.0 + tie
    return x


def _onnx_picks_the_other(monkeypatch):
    """onnxruntime's values, as if its rounding had put window (0,0) of channel 1 at (0,0) instead of (0,1)."""
    real = verify_module.run_onnx_values

    def patched(graph, inputs, values, threads=2):
        got = dict(real(graph, inputs, values, threads))
        mask, up = got["mask"].copy(), got["up"].copy()
        mask[0, 1, 0, 0] = 0.0
        up[0, 1, 0, 1], up[0, 1, 0, 0] = 0.0, got["up"][0, 1, 0, 1]
        got["mask"], got["up"] = mask, up
        got["out"] = up * np.array([2.0, 3.0], np.float32).reshape(1, 2, 1, 1)
        return got
    monkeypatch.setattr(verify_module, "run_onnx_values", patched)


def test_a_near_tie_is_named_and_what_follows_is_not_compared(tmp_path, monkeypatch):
    _onnx_picks_the_other(monkeypatch)
    report = verify(_graph(tmp_path), [_data(tie=1e-6)])  # 2 float32 steps above 5
    assert report.ok, report.lines()
    assert report.ties == {"mask": (1, 8)}
    assert [c.blob for c in report.checks if c.tied] == ["mask", "up", "out"]
    assert any("'mask' (1 of 8)" in line and "3 blobs" in line for line in report.lines())


def test_a_mask_pointing_at_a_smaller_value_is_a_divergence(tmp_path, monkeypatch):
    _onnx_picks_the_other(monkeypatch)
    report = verify(_graph(tmp_path), [_data(tie=0.5)])
    assert not report.ok and report.first_divergence.blob == "mask" and not report.ties


def test_equal_masks_compare_everything(tmp_path):
    report = verify(_graph(tmp_path), [_data(tie=0.5)])
    assert report.ok and not report.ties and not any(c.tied for c in report.checks)


@pytest.mark.slow
def test_segnet_basic_at_its_camvid_size(tmp_path):
    """SegNet-basic (seeded weights) at 360x480: one of pool1's 2.76M mask entries is such a near-tie between
    PyTorch and onnxruntime (found so, not constructed); verify names it and everything else agrees."""
    fixture = shared_dir() / "reference" / "fork_caffe" / "models" / "segnet_basic_inference"
    graph = load_net(fixture / "net.prototxt", make_weights(fixture, "layer", tmp_path),
                     input_shapes={"data": (1, 3, 360, 480)})
    report = verify(graph)
    assert report.ok, report.lines()
    assert all(n <= 3 for n, _ in report.ties.values()), report.ties


def test_zoo_convert_accepts_outputs_apart_only_by_a_near_tie(tmp_path, monkeypatch, capsys):
    """zoo convert's check: outputs that disagree are looked into blob by blob when the net has mask
    poolings; a near-tie passes with its lines printed, anything else stays an error."""
    from zoo.cli.convert import _explained_by_pooling_ties
    _onnx_picks_the_other(monkeypatch)
    assert _explained_by_pooling_ties(_graph(tmp_path), [_data(tie=1e-6)])
    assert "'mask' (1 of 8)" in capsys.readouterr().out
    assert not _explained_by_pooling_ties(_graph(tmp_path), [_data(tie=0.5)])


def test_against_a_reference_what_follows_a_near_tie_must_agree_with_one_backend(tmp_path, monkeypatch):
    """Caffe broke the tie as one backend did: a reference agreeing with neither (the conversion wrong after
    the tie) is a divergence, not a blob left uncompared."""
    _onnx_picks_the_other(monkeypatch)
    graph, x = _graph(tmp_path), _data(tie=1e-6)
    caffe = verify_module.run_torch_values(graph, [x])[graph.final_value("out")]
    report = verify(graph, [x], blobs={"out": caffe * 1.5})
    assert not report.ok and report.first_divergence.blob == "out", report.lines()
    report = verify(graph, [x], blobs={"out": caffe})
    assert report.ok and report.ties == {"mask": (1, 8)}, report.lines()
    assert any("agrees with the reference in one of them" in line for line in report.lines())
