"""Classifying images with a model: its ONNX file (converted once into the cache from the card's net
and weights), an onnxruntime session, the card's transform, top-k probabilities."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from zoo.hub.download import cache_dir
from zoo.hub.resolve import Model
from zoo.inference.image import batches
from zoo.inference.sampling import Sampler, class_probabilities
from zoo.inference.transform import Transform


def cached_onnx(model: Model, input_shapes: Optional[Mapping[str, Sequence[int]]] = None,
                outputs: Sequence[str] = ()) -> str:
    """The model's .onnx file in the cache (batch 1, symbolic), converted once per weights file: the
    name carries the weights' path, size and modification time, so other weights never get a stale file
    (a net without parameters: its prototxt's). ``input_shapes`` (default: the card's) and ``outputs``
    (graph values to output besides the net's own, e.g. Faster R-CNN's rois) make another file each; the
    files share the net's weights, kept once in the cache's onnx/weights folder (``write_model``'s
    shared_data): a net run at many image sizes costs one copy of its weights on disk."""
    name = model.card.name if model.card is not None else Path(model.source).stem
    keyed = model.weights if model.weights is not None else model.source
    st = os.stat(keyed)
    text = f"{os.path.abspath(keyed)}:{st.st_size}:{st.st_mtime_ns}"
    if input_shapes is not None or outputs:
        text += f":{sorted((k, tuple(v)) for k, v in (input_shapes or {}).items())}:{list(outputs)}"
    key = hashlib.sha1(text.encode()).hexdigest()[:12]
    target = cache_dir() / "onnx" / f"{name}-{key}.onnx"
    if not (target.exists() and _complete(target)):
        target.parent.mkdir(parents=True, exist_ok=True)
        _convert(model.graph(input_shapes if input_shapes is not None else model.card_input_shapes()), target,
                 outputs)
    return str(target)


def _complete(target: Path) -> bool:
    """Whether every external data file the cached model names is in the cache at its full length: the
    shared onnx/weights folder is where the cache's size is, and a user may delete it; then the model is
    converted again (onnxruntime would refuse it: a bug-report line)."""
    import onnx
    model = onnx.load(str(target), load_external_data=False)
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in t.external_data}
            path = target.parent / info.get("location", "")
            if not path.is_file() or path.stat().st_size < int(info.get("offset", 0)) + int(info.get("length", 0)):
                return False
    return True


def _convert(graph: Any, target: Path, outputs: Sequence[str]) -> None:
    from converters import save_onnx
    save_onnx(graph, target, outputs=outputs, shared_data="weights")  # sizes of one net share its weights


def probabilities(scores: np.ndarray) -> tuple[np.ndarray, bool]:
    """Each row as probabilities: as given when they already are, else softmaxed (and True)."""
    return class_probabilities(scores.reshape(scores.shape[0], -1))


def classify(sess: Any, transform: Transform, images: Sequence[Path], labels: Sequence[str], top: int,
             batch: int = 1, progress: Optional[Callable[[int], None]] = None, sampler: Optional[Sampler] = None
             ) -> tuple[list[dict], bool]:
    """({image, top: [{class, label, probability}]} per image, whether a softmax was applied). With a
    ``sampler`` (a net that samples at test), each image's probabilities are the mean of its samples',
    with their uncertainty (``Sampler.mean``), one image at a time."""
    inp = sess.get_inputs()[0]
    results, softmaxed = [], False
    for group in batches(images, max(1, batch) if sampler is None else 1):
        spread: dict = {}
        if sampler is None:
            x = np.stack([transform.image(p) for p in group])
            probs, applied = probabilities(sess.run(None, {inp.name: x})[0])
        else:
            mean, spread, applied = sampler.mean(transform.image(group[0]))
            probs = mean.reshape(1, -1)
        softmaxed |= applied
        for path, p in zip(group, probs):
            best = np.argsort(-p)[:top]
            results.append({"image": str(path), "top": [
                {"class": int(k), "label": labels[k] if k < len(labels) else str(k), "probability": float(p[k])}
                for k in best], **spread})
        if progress is not None:
            progress(len(group))
    return results, softmaxed
