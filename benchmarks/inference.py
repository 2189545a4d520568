"""Inference speed of a converted net: onnxruntime (the converted ONNX, all graph optimisations,
explicit threads) vs the PyTorch module vs OpenCV dnn's own Caffe importer, in one run, as ratios.

    python benchmarks/inference.py [--threads 2] [--repeat 20] [--models bvlc_googlenet,bvlc_alexnet,resnet50,
                                    fork/mobilenet_ssd_deploy_merged_bn,segnet_basic]

Needs the `bench` extra (opencv-python-headless<5: OpenCV 5 dropped the Caffe importer).
Targets (issue 3): onnxruntime >= 1.3x OpenCV dnn on googlenet and ResNet-50, >= 1x on AlexNet; (issue 11)
>= 1.3x on MobileNet-SSD, its DetectionOutput included in every backend's time (the net's own output),
and on SegNet (`segnet_basic`: the fork_caffe fixture's net and seeded weights at SegNet's 360x480).

OpenCV dnn cannot read SegNet as published: its Caffe importer refuses caffe-segnet's `bn_param` and has no
"BN" or "Upsample" layer type (cv2 4.14). Its ONNX importer runs our export but computes it wrongly (max
difference 0.82 on the probabilities), at two nodes: the LRN's AveragePool (count_include_pad=1, a 5-channel
window over 3 channels: it divides by the 3 channels inside, not by 5) and MaxPool's second output, the
indices: OpenCV's MaxPool has one output (a model cut at `pool1_mask` fails "out_port < out.size()").
So OpenCV runs a twin written with its own Caffe layers (`_opencv_fork.py`: BN -> Scale with bias, the mask
Upsample -> MaxUnpool), checked here to give our outputs before it is timed. OpenCV's MaxUnpool runs batch 1
only, so at a larger batch the twin's time is that of one forward per image. The full SegNet is no row: with
seeded weights its activations reach ~650, and near-ties flip a few mask entries between any two implementations
(onnxruntime vs our PyTorch: 1 of pool5's; the OpenCV twin vs PyTorch: 2 of upsample5's input), which its decoder
spreads over thousands of output pixels, so no output check within tolerance can hold (the twin agrees through
pool5: 0.0043 at most, tolerance 0.065).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from _fixtures import REPO, bench, fixture, median, ratio
from _opencv_fork import needs_twin, write_twin

sys.path.insert(0, str(REPO))


# short names; a SegNet fixture runs at SegNet's own CamVid size, not the small size Caffe was run at
ALIASES = {"segnet_basic": ("fork_caffe/models/segnet_basic_inference", (360, 480))}


def opencv_net(prototxt: Path, weights: Path, graph, folder: Path):
    """(OpenCV dnn's net, whether it is a twin): its Caffe importer on the file itself, or on the twin of a
    SegNet-family net."""
    import cv2
    from prototxt.graph import read_net
    from prototxt.weights import load_weights
    net, _ = read_net(prototxt)
    twin = needs_twin(net)
    if twin:
        shape = graph.values[graph.inputs[0]].shape
        prototxt, weights = write_twin(net, graph, load_weights(weights), shape, folder)
    cv_net = cv2.dnn.readNetFromCaffe(str(prototxt), str(weights))
    cv_net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    return cv_net, twin


def check_twin(name: str, module, net, sess, x: np.ndarray) -> None:
    """The twin's output on one image against our PyTorch module's (and onnxruntime's, shown)."""
    import torch
    net.setInput(x)
    with torch.no_grad():
        ours = module(torch.from_numpy(x))
    ours = (ours[0] if isinstance(ours, (tuple, list)) else ours).numpy()
    check_same(name, ours, net.forward(), sess.run(None, {sess.get_inputs()[0].name: x})[0])


def check_same(name: str, ours: np.ndarray, theirs: np.ndarray, ort_out: np.ndarray) -> None:
    """The twin must compute our function: OpenCV's output equals our PyTorch module's within the project's parity
    tolerance, else the row is no comparison. onnxruntime's difference is printed, not required: with all its graph
    optimisations its convolutions sum in another order, and a near-tie in a max pooling may then pick another
    argmax, which the mask Upsample carries to another pixel (at 360x480: one of SegNet-basic's 1.4M pool2 mask
    entries, with onnxruntime's basic optimisations none)."""
    tol = 1e-4 * max(1.0, float(np.abs(ours).max()))
    worst = float(np.abs(ours.astype(np.float64) - theirs).max()) if ours.shape == theirs.shape else np.inf
    if not worst <= tol:
        raise SystemExit(f"{name}: OpenCV's output differs from ours by {worst:.3g} (> {tol:.3g}); not the same net")
    ort_worst = float(np.abs(ours.astype(np.float64) - ort_out).max())
    print(f"# {name}: OpenCV dnn twin equals our PyTorch module (worst {worst:.2g}, tolerance {tol:.2g}); "
          f"onnxruntime differs by {ort_worst:.2g}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--models", default="bvlc_googlenet,bvlc_alexnet,resnet50,fork/mobilenet_ssd_deploy_merged_bn,"
                                              "segnet_basic")
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
    print(f"threads={args.threads}, median of {args.repeat} rounds (each backend once per round), ms per batch; "
          f"ratios: median of the per-round ratios")
    print(f"{'model':<16}{'batch':>6}{'onnxruntime':>13}{'pytorch':>10}{'opencv':>10}{'ort vs cv':>11}{'ort vs pt':>11}")
    tmp = tempfile.mkdtemp()
    for name in args.models.split(","):
        source, size = ALIASES.get(name, (name, None))
        prototxt, weights, _ = fixture(source)
        shapes = None
        if size:
            shapes = {load_net(prototxt).inputs[0]: (1, 3, *size)}
        graph = load_net(prototxt, weights, input_shapes=shapes)
        onnx_path = Path(tmp) / f"{name.replace('/', '_')}.onnx"
        model, arrays = build(graph)
        write_model(model, arrays, onnx_path)
        sess = session(str(onnx_path), device="cpu", threads=args.threads)
        module = to_pytorch(graph)
        net, needs_check = opencv_net(prototxt, weights, graph, Path(tmp))
        per_image = needs_check  # OpenCV's MaxUnpool takes batch 1 only ("input.size[0] == 1")
        shape = graph.values[graph.inputs[0]].shape
        for batch in map(int, args.batches.split(",")):
            x = np.random.default_rng(0).uniform(-100, 100, (batch, *shape[1:])).astype(np.float32)
            feed = {sess.get_inputs()[0].name: x}
            tx = torch.from_numpy(x)
            if needs_check:
                check_twin(name, module, net, sess, x[:1])
                needs_check = False

            def run_ort():
                sess.run(None, feed)

            def run_torch():
                with torch.no_grad():
                    module(tx)

            def run_cv():
                for image in np.split(x, batch) if per_image else [x]:
                    net.setInput(image)
                    net.forward()
            t = bench({"ort": run_ort, "pt": run_torch, "cv": run_cv}, args.repeat)
            ms = {k: median(v) * 1e3 for k, v in t.items()}
            print(f"{Path(name).name[:15]:<16}{batch:>6}{ms['ort']:>13.1f}{ms['pt']:>10.1f}{ms['cv']:>10.1f}"
                  f"{ratio(t['cv'], t['ort']):>10.2f}x{ratio(t['pt'], t['ort']):>10.2f}x")


if __name__ == "__main__":
    main()
