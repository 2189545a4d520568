"""caffezoo's Python front door: the zoo's models as PyTorch modules or onnxruntime sessions, with the
preprocessing their cards publish.

    import zoo
    zoo.list_models()                                  # [{name, task, input, params, license, cached, ...}]
    net = zoo.load("bvlc_googlenet")                   # torch.nn.Module, eval mode, Caffe's numbers
    sess = zoo.load("bvlc_googlenet", backend="onnxruntime")
    x = zoo.transform("bvlc_googlenet")(pil_image)     # float32 (C, H, W), as `zoo run` and finetuning compute it

A model is a zoo name, a user card (.json) or a deploy .prototxt; its weights are ``weights=`` or the
cache (downloaded and checksum-verified once). Importing ``zoo`` is cheap: everything loads on first use.

The package by role: ``zoo.cli`` (the command line), ``zoo.hub`` (cards, registry, downloads,
resolving a model), ``zoo.models`` (the cards' data and the built-in architectures),
``zoo.inference`` (images, the one transform, onnxruntime), ``zoo.training`` (solvers, data,
`zoo train`, `zoo finetune`); ``zoo.netinfo`` and ``zoo.drawing`` describe a net for `zoo info`.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Optional

BACKENDS = ("torch", "onnxruntime")


def list_models(pattern: Optional[str] = None) -> list[dict[str, Any]]:
    """The zoo's models (whose name matches the shell ``pattern``), one dict each: name, task, input,
    params, weights_size, license, cached; what `zoo list --json` prints."""
    from zoo.hub.catalog import rows
    return rows(pattern)


def load(model: str, *, weights: Optional[os.PathLike | str] = None, backend: str = "torch",
         device: str = "auto") -> Any:
    """``model`` with its weights: a ``torch.nn.Module`` in eval mode (``backend="torch"``; inputs in
    Caffe's order, one output a tensor, several a dict by Caffe blob name), or an onnxruntime
    ``InferenceSession`` (``backend="onnxruntime"``, on ``device`` auto/cuda/cpu, from an ONNX file
    converted once into the cache)."""
    from prototxt import CaffeError
    if backend not in BACKENDS:
        raise CaffeError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    from zoo.hub.resolve import resolve
    resolved = resolve(model, weights=weights)
    resolved.require_weights("loading it", how="weights=MODEL.caffemodel")
    if backend == "onnxruntime":
        from zoo.inference.classify import cached_onnx
        from zoo.inference.runtime import session
        return session(cached_onnx(resolved), device=device)
    from converters import to_pytorch
    return to_pytorch(resolved.graph(resolved.card_input_shapes())).eval()


def transform(model: str) -> Callable[[Any], Any]:
    """The preprocessing of ``model``'s card (for a bare prototxt: the zoo defaults for its input) as a
    function: an image (a Pillow image, a path or the bytes of a file) -> float32 (C, H, W), the array
    `zoo run` feeds the net and finetuning validates on."""
    from zoo.hub.resolve import resolve
    from zoo.inference.transform import Transform
    resolved = resolve(model, fetch=False)
    if resolved.card is not None:
        return Transform.from_card(resolved.card).image
    graph = resolved.graph(weights=False)
    shape = graph.values[graph.inputs[0]].shape
    return Transform.from_card(None, tuple(shape[2:]), shape[1]).image


__all__ = ["list_models", "load", "transform"]
