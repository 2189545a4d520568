"""MTCNN's four cascaded nets (Zhang et al. 2016, kpzhang93/MTCNN_face_detection_alignment): P-Net
(fully convolutional proposals), R-Net and O-Net (refinement, O-Net adds 5 landmarks), and the v2
L-Net that refines each landmark from its own 24x24 patch (5 patches stacked as 15 channels)."""
from __future__ import annotations

from typing import Callable

from ._net import Net
from ._registry import register

# Each conv: (num_output, kernel, max-pool kernel after its PReLU or None, whether it writes stride: 1)
Spec = tuple[int, int, "int | None", bool]
R_CONVS: tuple[Spec, ...] = ((28, 3, 3, True), (48, 3, 3, True), (64, 2, None, True))


def _convs(n: Net, x: str, specs: tuple[Spec, ...], suffix: str = "", prelu: str = "prelu") -> str:
    for i, (width, kernel, pool, stride) in enumerate(specs, start=1):
        x = n.conv(f"conv{i}{suffix}", x, num_output=width, kernel_size=kernel, **({"stride": 1} if stride else {}))
        x = n.prelu(f"{prelu}{i}{suffix}", x)
        if pool:
            x = n.pool(f"pool{i}{suffix}", x, "MAX", kernel_size=pool, stride=2)
    return x


def _heads(n: Net, x: str, prefix: str, widths: tuple[int, ...], layer: Callable[..., str]):
    """Face/non-face scores (prefix-1, with its softmax prob1), box regression, landmarks."""
    tops = [layer(f"{prefix}-{j}", x, num_output=w) for j, w in enumerate(widths, start=1)]
    n.softmax("prob1", tops[0])
    return n.proto


@register("mtcnn_det1")
def pnet():
    n = Net("PNet", (1, 3, 12, 12), input_layer="input")
    x = _convs(n, "data", ((10, 3, 2, True), (16, 3, None, True), (32, 3, None, True)), prelu="PReLU")
    return _heads(n, x, "conv4", (2, 4), lambda name, x, **p: n.conv(name, x, **p, kernel_size=1, stride=1))


@register("mtcnn_det2")
def rnet():
    n = Net("RNet", (1, 3, 24, 24), input_layer="input")
    x = n.prelu("prelu4", n.ip("conv4", _convs(n, "data", R_CONVS), num_output=128))
    return _heads(n, x, "conv5", (2, 4), n.ip)


@register("mtcnn_det3")
def onet():
    n = Net("ONet", (1, 3, 48, 48), input_layer="input")
    x = _convs(n, "data", ((32, 3, 3, True), (64, 3, 3, True), (64, 3, 2, False), (128, 2, None, False)))
    x = n.prelu("prelu5", n.dropout("drop5", n.ip("conv5", x, num_output=256), 0.25))
    return _heads(n, x, "conv6", (2, 4, 10), n.ip)


@register("mtcnn_det4")
def lnet():
    n = Net("LNet", (1, 15, 24, 24), input_layer="input")
    patches = [f"data24{k}" for k in range(1, 6)]
    n.slice("slicer_data", "data", patches, slice_point=[3, 6, 9, 12], axis=1)
    towers = [_convs(n, patch, R_CONVS, suffix=f"_{k}") for k, patch in enumerate(patches, start=1)]
    x = n.prelu("prelu4", n.ip("fc4", n.concat("concat", towers, top="conv3", axis=1), num_output=256))
    for k in range(1, 6):  # one (dx, dy) regressor per landmark
        n.ip(f"fc5_{k}", n.prelu(f"prelu4_{k}", n.ip(f"fc4_{k}", x, num_output=64)), num_output=2)
    return n.proto
