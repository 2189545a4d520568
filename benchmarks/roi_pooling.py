"""ROIPooling in PyTorch: the vectorised module (converters.nn.ROIPooling, range-max queries over all
bins at once) against two baselines measured in the same run: the per-ROI Python loop it replaced
(kept below as it was) and onnxruntime's MaxRoiPool (the ONNX path). Faster R-CNN VGG16's case:
300 ROIs over conv5_3 of a 600x800 image (1x512x38x50), 7x7 bins, spatial_scale 1/16.

    python benchmarks/roi_pooling.py [--repeat 5] [--rois 300] [--threads 2]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from _fixtures import REPO, bench, median, ratio

sys.path.insert(0, str(REPO))
from converters import to_onnx  # noqa: E402
from converters.nn import ROIPooling, _c_round  # noqa: E402
from prototxt import load_net  # noqa: E402

POOLED, SCALE = 7, 0.0625


def _loop_bins(start, size, pooled, limit):
    step = torch.tensor(float(size), dtype=torch.float32) / pooled
    p = torch.arange(pooled, dtype=torch.float32)
    lo = (torch.floor(p * step) + start).clamp(0, limit)
    hi = (torch.ceil((p + 1) * step) + start).clamp(0, limit)
    return list(zip(lo.long().tolist(), hi.long().tolist()))


def loop_roi_pooling(x, rois, pooled_h, pooled_w, spatial_scale):
    """The module before vectorising: one ROI, one bin row at a time (the baseline)."""
    rois = rois.reshape(-1, 5)
    n, c, h, w = x.shape
    out = x.new_zeros(rois.shape[0], c, pooled_h, pooled_w)
    scaled = _c_round(rois[:, 1:].float() * torch.tensor(spatial_scale, dtype=torch.float32)).to(torch.int64).tolist()
    for r, (b, (x1, y1, x2, y2)) in enumerate(zip(rois[:, 0].to(torch.int64).tolist(), scaled)):
        rows = _loop_bins(y1, max(y2 - y1 + 1, 1), pooled_h, h)
        cols = _loop_bins(x1, max(x2 - x1 + 1, 1), pooled_w, w)
        for i, (h0, h1) in enumerate(rows):
            if h1 <= h0:
                continue
            band = x[b, :, h0:h1].amax(dim=1)
            for j, (w0, w1) in enumerate(cols):
                if w1 > w0:
                    out[r, :, i, j] = band[:, w0:w1].amax(dim=1)
    return out


def proposals(count: int, rng) -> np.ndarray:
    """RPN-like boxes in a 600x800 image: centres anywhere, sides 16..600 px, clipped to the image."""
    cx, cy = rng.uniform(0, 800, count), rng.uniform(0, 600, count)
    bw, bh = rng.uniform(16, 600, count), rng.uniform(16, 600, count)
    x1, x2 = np.clip(cx - bw / 2, 0, 799), np.clip(cx + bw / 2, 0, 799)
    y1, y2 = np.clip(cy - bh / 2, 0, 599), np.clip(cy + bh / 2, 0, 599)
    return np.stack([np.zeros(count), x1, y1, x2, y2], 1).astype(np.float32)


def ort_pool(x: np.ndarray, rois: np.ndarray):
    """The converted ONNX model of a one-layer ROIPooling net, on onnxruntime."""
    import onnxruntime as ort
    text = (f'input: "x" input_shape {{ {" ".join(f"dim: {d}" for d in x.shape)} }}\n'
            f'input: "rois" input_shape {{ dim: {len(rois)} dim: 5 }}\n'
            f'layer {{ name: "pool" type: "ROIPooling" bottom: "x" bottom: "rois" top: "y" roi_pooling_param {{ '
            f'pooled_h: {POOLED} pooled_w: {POOLED} spatial_scale: {SCALE} }} }}\n')
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "roi.prototxt"
        path.write_text(text)
        model = to_onnx(load_net(path))
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = torch.get_num_threads(), 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return lambda: sess.run(None, {"x": x, "rois": rois})[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rois", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 512, 38, 50)).astype(np.float32)
    rois = proposals(args.rois, rng)
    xt, rt = torch.from_numpy(x), torch.from_numpy(rois)
    module = ROIPooling(POOLED, POOLED, SCALE)
    ort_fn = ort_pool(x, rois)
    with torch.no_grad():
        want = loop_roi_pooling(xt, rt, POOLED, POOLED, SCALE)
        got = module(xt, rt)
        assert torch.equal(got, want) and np.array_equal(ort_fn(), want.numpy()), "the three disagree"
        times = bench({"loop (before)": lambda: loop_roi_pooling(xt, rt, POOLED, POOLED, SCALE),
                       "vectorised (converters.nn)": lambda: module(xt, rt), "onnxruntime MaxRoiPool": ort_fn},
                      args.repeat)
    loop, ort_s = times["loop (before)"], times["onnxruntime MaxRoiPool"]
    print(f"ROIPooling 1x512x38x50, {args.rois} ROIs, {POOLED}x{POOLED}, {args.threads} threads "
          f"(medians of {args.repeat} interleaved rounds)")
    print(f"{'path':<28}{'ms':>9}{'vs loop':>9}{'vs ORT':>9}")
    for name, t in times.items():
        print(f"{name:<28}{median(t) * 1e3:>9.1f}{ratio(loop, t):>8.1f}x{ratio(ort_s, t):>8.2f}x")


if __name__ == "__main__":
    main()
