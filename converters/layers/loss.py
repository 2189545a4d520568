"""Losses, metrics and Silence: implementations like any other layer's, marked ``training_only``. A
deploy conversion leaves them out (with a note); `zoo train` and finetuning keep the ones with a
PyTorch form (their tops become outputs)."""
from __future__ import annotations

from ..registry import LayerImpl, register_layer
from ._common import nn_specs

_NORMALIZATION = {0: "FULL", 1: "VALID", 2: "BATCH_SIZE", 3: "NONE"}


class _TrainingOnly(LayerImpl):
    training_only = True

    def onnx(self, layer, ctx) -> None:
        raise NotImplementedError(f"layer '{layer.name}' ({layer.type}) only trains or measures; "
                                  f"the ONNX model leaves it out")


def _normalization(layer, default: str) -> str:
    lp = layer.proto.loss_param
    if lp.HasField("normalization"):
        return _NORMALIZATION[lp.normalization]
    if lp.HasField("normalize"):
        return "VALID" if lp.normalize else "BATCH_SIZE"
    return default


@register_layer("SoftmaxWithLoss")
class SoftmaxWithLoss(_TrainingOnly):
    def torch(self, layer, graph):
        lp = layer.proto.loss_param
        ignore = lp.ignore_label if lp.HasField("ignore_label") else None
        return nn_specs().SoftmaxWithLoss(layer.proto.softmax_param.axis, ignore, _normalization(layer, "VALID")), []


@register_layer("EuclideanLoss")
class EuclideanLoss(_TrainingOnly):
    def torch(self, layer, graph):
        return nn_specs().EuclideanLoss(), []


@register_layer("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLoss(_TrainingOnly):
    def torch(self, layer, graph):
        return nn_specs().SigmoidCrossEntropyLoss(_normalization(layer, "BATCH_SIZE")), []


@register_layer("Accuracy")
class Accuracy(_TrainingOnly):
    def torch(self, layer, graph):
        ap = layer.proto.accuracy_param
        return nn_specs().Accuracy(ap.axis, ap.top_k, ap.ignore_label if ap.HasField("ignore_label") else None), []


@register_layer("HingeLoss", "InfogainLoss", "MultinomialLogisticLoss", "ContrastiveLoss", "Silence")
class NoTorchForm(_TrainingOnly):
    """Losses without a PyTorch form yet, and Silence (no tops: nothing to compute)."""
    has_torch = False
