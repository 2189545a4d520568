"""Inference speed of a converted net: onnxruntime (the converted ONNX, all graph optimisations,
explicit threads) vs the PyTorch module vs OpenCV dnn's own Caffe importer, in one run, as ratios.

    python benchmarks/inference.py [--threads 2] [--repeat 20] [--models bvlc_googlenet,bvlc_alexnet,resnet50,
                                    fork/mobilenet_ssd_deploy_merged_bn]

Needs the `bench` extra (opencv-python-headless<5: OpenCV 5 dropped the Caffe importer).
Targets (issue 3): onnxruntime >= 1.3x OpenCV dnn on googlenet and ResNet-50, >= 1x on AlexNet; (issue 11)
>= 1.3x on MobileNet-SSD, its DetectionOutput included in every backend's time (the net's own output).
No SegNet here: OpenCV dnn cannot read SegNet's fork layers (BN with bn_mode, the mask Upsample), so
there is nothing to compare it with in the same run.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from _fixtures import REPO, bench, fixture

sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--models", default="bvlc_googlenet,bvlc_alexnet,resnet50,fork/mobilenet_ssd_deploy_merged_bn")
    parser.add_argument("--batches", default="1,16")
    args = parser.parse_args()
    import cv2
    import torch

    from converters import to_pytorch
    from converters.onnx import build, write_model
    from prototxt import load_net
    from zoo.inference.runtime import session
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    warnings.simplefilter("ignore")
    print(f"threads={args.threads}, median of {args.repeat} runs, ms per batch")
    print(f"{'model':<16}{'batch':>6}{'onnxruntime':>13}{'pytorch':>10}{'opencv':>10}{'ort vs cv':>11}{'ort vs pt':>11}")
    tmp = tempfile.mkdtemp()
    for name in args.models.split(","):
        prototxt, weights, _ = fixture(name)
        graph = load_net(prototxt, weights)
        onnx_path = Path(tmp) / f"{name.replace('/', '_')}.onnx"
        model, arrays = build(graph)
        write_model(model, arrays, onnx_path)
        sess = session(str(onnx_path), device="cpu", threads=args.threads)
        module = to_pytorch(graph)
        net = cv2.dnn.readNetFromCaffe(str(prototxt), str(weights))
        net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        shape = graph.values[graph.inputs[0]].shape
        for batch in map(int, args.batches.split(",")):
            x = np.random.default_rng(0).uniform(-100, 100, (batch, *shape[1:])).astype(np.float32)
            feed = {sess.get_inputs()[0].name: x}
            t_ort = bench(lambda: sess.run(None, feed), args.repeat)
            tx = torch.from_numpy(x)

            def run_torch():
                with torch.no_grad():
                    module(tx)
            t_pt = bench(run_torch, args.repeat)

            def run_cv():
                net.setInput(x)
                net.forward()
            t_cv = bench(run_cv, args.repeat)
            print(f"{Path(name).name[:15]:<16}{batch:>6}{t_ort * 1e3:>13.1f}{t_pt * 1e3:>10.1f}{t_cv * 1e3:>10.1f}"
                  f"{t_cv / t_ort:>10.2f}x{t_pt / t_ort:>10.2f}x")


if __name__ == "__main__":
    main()
