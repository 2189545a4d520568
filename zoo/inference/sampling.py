"""Monte Carlo dropout for `zoo run`: a net that samples at test (caffe-segnet's Dropout with
sample_weights_test, Bayesian SegNet) gives one random draw per pass. Its publisher's
Scripts/test_bayesian_segnet.py (alexgkendall/SegNet-Tutorial) repeats the image over the batch (the
prototxt's batch is the number of samples), takes the mean of the class probabilities over the samples
as the prediction and their variance as the uncertainty; this module does the same through onnxruntime."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

# ONNX operators whose output differs from run to run: a net holding one samples at test
RANDOM_OPS = frozenset({"RandomUniform", "RandomUniformLike", "RandomNormal", "RandomNormalLike", "Bernoulli",
                        "Multinomial"})


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

    def draws(self, x: np.ndarray) -> np.ndarray:
        """(samples, K, ...) outputs for one image x (C, H, W): a batch of copies when the model takes any
        batch, else as many runs of its fixed batch (all copies) as it takes."""
        inp = self.sess.get_inputs()[0]
        fixed = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
        size = fixed or self.samples
        outs, have = [], 0
        while have < self.samples:
            out = self.sess.run([self.output], {inp.name: np.repeat(x[None], size, axis=0)})[0]
            outs.append(out)
            have += out.shape[0]
        return np.concatenate(outs)[:self.samples]

    def mean(self, x: np.ndarray) -> tuple[np.ndarray, dict, bool]:
        """(the mean class probabilities (K, ...), the uncertainty, whether a softmax was applied): the
        uncertainty is the variance over the samples of the predicted class's probability and, as the
        publisher's script shows it, of every class's probability averaged over the classes, each
        averaged over the pixels."""
        probs, softmaxed = class_probabilities(self.draws(x))
        mean, var = probs.mean(axis=0), probs.var(axis=0)
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
