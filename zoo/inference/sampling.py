"""Monte Carlo dropout for `zoo run`: a net that samples at test (caffe-segnet's Dropout with
sample_weights_test, Bayesian SegNet) gives one random draw per pass. Its publisher's
Scripts/test_bayesian_segnet.py (alexgkendall/SegNet-Tutorial) repeats the image over the batch (the
prototxt's batch is the number of samples), takes the mean of the class probabilities over the samples
as the prediction and their variance as the uncertainty; this module does the same through onnxruntime."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Optional

import numpy as np

# ONNX operators whose output differs from run to run: a net holding one samples at test
RANDOM_OPS = frozenset({"RandomUniform", "RandomUniformLike", "RandomNormal", "RandomNormalLike", "Bernoulli",
                        "Multinomial"})
CHUNK = 16  # copies of an image per run: a batch of 100 copies of SegNet at 360x480 would not fit in memory


def onnx_samples_at_test(path: str) -> bool:
    """Whether a converted .onnx file draws random numbers at inference (its weights are not read)."""
    import onnx
    graph = onnx.load(path, load_external_data=False).graph
    return any(node.op_type in RANDOM_OPS for node in graph.node)


def net_batch(graph: Any) -> int:
    """The batch of the net's first input as its prototxt declares it (1 when unknown): Bayesian SegNet's
    publisher sets it to the number of samples."""
    shape = graph.values[graph.inputs[0]].shape if graph.inputs else None
    return int(shape[0]) if shape else 1


def class_probabilities(scores: np.ndarray) -> tuple[np.ndarray, bool]:
    """Scores (N, K, ...) as class probabilities over axis 1: as given when they already are, else
    softmaxed over the classes (and True)."""
    scores = scores.astype(np.float64)
    if np.all(scores >= 0) and np.allclose(scores.sum(axis=1), 1.0, atol=1e-3):
        return scores, False
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True), True


@dataclass
class Sampler:
    """``samples`` stochastic passes of one image through ``sess``, read at its output ``output`` (the
    class scores or probabilities, before any ArgMax)."""
    sess: Any
    samples: int
    output: str

    def draws(self, x: np.ndarray) -> Iterator[np.ndarray]:
        """The outputs of ``samples`` passes of one image x (C, H, W), a run at a time: batches of copies
        (at most CHUNK a run) when the model takes any batch, else runs of its fixed batch of copies."""
        inp = self.sess.get_inputs()[0]
        fixed = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
        left = self.samples
        while left > 0:
            size = fixed or min(left, CHUNK)
            out = self.sess.run([self.output], {inp.name: np.repeat(x[None], size, axis=0)})[0][:left]
            left -= out.shape[0]
            yield out

    def mean(self, x: np.ndarray) -> tuple[np.ndarray, dict, bool]:
        """(the mean class probabilities (K, ...), the uncertainty, whether a softmax was applied): the
        uncertainty is the variance over the samples of the predicted class's probability and, as the
        publisher's script shows it, of every class's probability averaged over the classes, each
        averaged over the pixels. Sums of p and p squared, so that memory does not grow with ``samples``."""
        total, squares, softmaxed = 0.0, 0.0, False
        for out in self.draws(x):
            probs, applied = class_probabilities(out)
            total, squares = total + probs.sum(axis=0), squares + (probs ** 2).sum(axis=0)
            softmaxed |= applied
        mean = total / self.samples
        var = np.maximum(squares / self.samples - mean ** 2, 0.0)  # rounding may leave a -1e-17 where all agree
        best = np.argmax(mean, axis=0)
        predicted = np.take_along_axis(var, best[None], axis=0)[0]
        return mean, {"uncertainty": float(predicted.mean()), "mean_class_variance": float(var.mean())}, softmaxed


def scores_output(graph: Any, output: str) -> Optional[str]:
    """The value an ArgMax producing ``output`` reads (its class scores), or None when ``output`` is not an
    ArgMax's: class indices cannot be averaged, the scores before them can."""
    value = graph.values.get(output)
    if value is None or value.producer is None:
        return None
    layer = graph.layer(value.producer)
    return layer.bottoms[0] if layer.type == "ArgMax" else None
