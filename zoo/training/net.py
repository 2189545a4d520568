"""The torch form of a Caffe net being trained: the module with its loss weights and batches, Caffe's
learnable params (lr_mult/decay_mult, shared and frozen blobs), one forward pass, the device, and the
blobs back out for a .caffemodel. `zoo train` and `zoo finetune` both train through it."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from converters import implementation
from prototxt import CaffeError, Graph
from zoo.training.solver import LearnableParam


class TrainError(CaffeError):
    """A training setup Caffe would refuse, or one this tool cannot run (one line, what to do next)."""


@dataclass
class Net:
    graph: Graph
    module: torch.fx.GraphModule
    batches: Any                     # FeedBatches | LayerBatches (zoo.training.train); None in finetuning
    loss_weights: dict[str, float]   # output blob -> loss_weight (the tops that make the loss)
    source: str


def loss_weights(graph: Graph, module: torch.fx.GraphModule) -> dict[str, float]:
    """Layer::SetLossWeights: `loss_weight` per top; a *Loss layer's first top defaults to 1."""
    out: dict[str, float] = {}
    for layer in graph.layers:
        weights = [float(np.float32(w)) for w in layer.proto.loss_weight]
        if weights and len(weights) != len(layer.tops):
            raise TrainError(f"layer '{layer.name}': {len(weights)} loss_weight values for {len(layer.tops)} tops; "
                             f"give one per top")
        if not weights and layer.type.endswith("Loss"):
            weights = [1.0]
        for top, w in zip(layer.tops, weights):
            if w == 0:
                continue
            name = graph.values[top].caffe_name
            if name not in module.output_names:
                raise TrainError(f"layer '{layer.name}': top '{name}' has loss_weight {w:g} but a later layer "
                                 f"consumes it; zoo train takes losses from the net's output blobs only")
            out[name] = w
    return out


def tensor_at(module: torch.nn.Module, key: str) -> torch.Tensor:
    """A parameter or buffer by its state-dict key."""
    owner, _, attr = key.rpartition(".")
    return getattr(module.get_submodule(owner) if owner else module, attr)


def _statistics(layer) -> bool:
    """Whether the layer's blobs are statistics its forward pass updates (``LayerImpl.statistics``)."""
    impl = implementation(layer.type)
    return impl is not None and impl.statistics


def _own_lr_mult(layer, i: int) -> float:
    """The lr_mult a layer itself gives its blob i (Caffe's param_propagate_down is this != 0)."""
    if _statistics(layer):
        return 0.0  # BatchNormLayer masks its statistics with lr_mult 0
    proto = layer.proto.param
    return proto[i].lr_mult if i < len(proto) and proto[i].HasField("lr_mult") else 1.0


def learnable_params(net: Net) -> list[LearnableParam]:
    """Caffe's learnable_params_: one per distinct blob, in net order (a shared blob at its owner's place),
    with the effective lr_mult/decay_mult. BatchNorm's statistics are learnable params with lr_mult 0, as in
    Caffe, so that a .solverstate lists the same blobs; the solver never changes them (forward updates them).

    Gradients follow Caffe's param_propagate_down, which each layer sets from its OWN lr_mult: a blob gets
    no gradient when every layer using it gives it lr_mult 0; a shared blob that one layer trains and
    another freezes gets the gradient of the training layers only (the freezing layer uses a detached
    alias of the same storage), and it counts in the clipping norm even when the blob's effective lr_mult
    (its owner's) is 0."""
    params: list[LearnableParam] = []
    blobs: dict[int, torch.Tensor] = {}
    uses: dict[int, list[tuple[str, float]]] = {}  # id(blob) -> (state-dict key, the layer's own lr_mult)
    for layer in net.graph.layers:
        for i, key in enumerate(net.module.blob_keys.get(layer.name, [])):
            spec = layer.params[i] if i < len(layer.params) else None
            tensor = tensor_at(net.module, key)
            uses.setdefault(id(tensor), []).append((key, _own_lr_mult(layer, i)))
            if spec is not None and spec.owner is not None:  # the owner's blob, listed at the owner
                owner_key = net.module.blob_keys[spec.owner][spec.owner_index]
                if tensor is not tensor_at(net.module, owner_key):
                    raise TrainError(f"layer '{layer.name}': shared param '{spec.name}' has shape "
                                     f"{tuple(tensor.shape)} but its owner '{spec.owner}' has "
                                     f"{tuple(tensor_at(net.module, owner_key).shape)}; zoo train shares "
                                     f"same-shape blobs only")
                continue
            if id(tensor) in blobs:
                continue
            blobs[id(tensor)] = tensor
            lr_mult, decay_mult = (spec.lr_mult, spec.decay_mult) if spec is not None else (1.0, 1.0)
            if _statistics(layer):
                if lr_mult != 0 and spec is not None and layer.proto.param[i].HasField("lr_mult"):
                    raise TrainError(f"layer '{layer.name}': BatchNorm statistics cannot be learned (lr_mult "
                                     f"{lr_mult:g} on blob {i}); set lr_mult: 0 or remove the param entries")
                lr_mult = 0.0
            if not isinstance(tensor, torch.nn.Parameter):
                lr_mult = 0.0
            params.append(LearnableParam(tensor, lr_mult, decay_mult, f"{layer.name}/{i}"))
    for blob_id, tensor in blobs.items():
        if not isinstance(tensor, torch.nn.Parameter):
            continue
        trained = any(own != 0 for _, own in uses[blob_id])
        tensor.requires_grad_(trained)
        for key, own in uses[blob_id] if trained else ():
            if own == 0:  # this layer's part of the gradient is not computed: a detached alias
                owner, _, attr = key.rpartition(".")
                setattr(net.module.get_submodule(owner), attr, torch.nn.Parameter(tensor.detach(), requires_grad=False))
    if not params:
        raise TrainError(f"{net.source}: the net has no learnable blobs; nothing to train")
    return params


def share_trained_layers(test: Net, train: Net) -> None:
    """Net::ShareTrainedLayersWith: a test layer named like a train layer uses the train layer's blobs."""
    for layer in test.graph.layers:
        keys = test.module.blob_keys.get(layer.name)
        source = train.module.blob_keys.get(layer.name)
        if not keys or not source:
            continue
        if len(keys) != len(source):
            raise TrainError(f"{test.source}: layer '{layer.name}' has {len(keys)} blobs in the TEST net but "
                             f"{len(source)} in the TRAIN net")
        for key, src in zip(keys, source):
            tensor = tensor_at(train.module, src)
            if tensor_at(test.module, key).shape != tensor.shape:
                raise TrainError(f"{test.source}: layer '{layer.name}' blob {key.rpartition('.')[2]} has shape "
                                 f"{tuple(tensor_at(test.module, key).shape)} in the TEST net but "
                                 f"{tuple(tensor.shape)} in the TRAIN net")
            owner, _, attr = key.rpartition(".")
            holder = test.module.get_submodule(owner) if owner else test.module
            if isinstance(tensor, torch.nn.Parameter):
                setattr(holder, attr, tensor)
            else:
                holder.register_buffer(attr, tensor)


def layer_blobs(net: Net) -> list[tuple[bytes, list[np.ndarray]]]:
    """Every layer with its current blobs, for write_caffemodel (Net::ToProto)."""
    out = []
    for layer in net.graph.layers:
        keys = net.module.blob_keys.get(layer.name)
        blobs = [tensor_at(net.module, k).detach().to("cpu", torch.float32).numpy() for k in keys] \
            if keys else list(layer.blobs)
        out.append((layer.proto.SerializeToString(), blobs))
    return out


def forward(net: Net, batch: dict[str, np.ndarray], device: torch.device) -> tuple[torch.Tensor, dict]:
    """One forward pass: (the weighted loss sum, {output blob: tensor})."""
    _check_labels(net.graph, batch)
    inputs = []
    for v in net.graph.inputs:
        value = net.graph.values[v]
        array = batch[value.caffe_name]
        if tuple(array.shape) != tuple(value.shape):
            raise TrainError(f"net input '{value.caffe_name}' is {tuple(value.shape)} but a batch is "
                             f"{tuple(array.shape)}; every batch must have the first batch's shape")
        inputs.append(torch.from_numpy(array).to(device))
    out = net.module(*inputs)
    if not isinstance(out, dict):
        out = {net.module.output_names[0]: out}
    loss = torch.zeros((), device=device)
    for name, w in net.loss_weights.items():
        top = out[name].sum()
        loss = loss + (top if w == 1.0 else top * w)
    return loss, out


def check_finite_loss(loss: float, it: int, where: str) -> None:
    """Stop at the first NaN or infinite loss: every update after it is garbage (Caffe trains on)."""
    if not np.isfinite(loss):
        raise TrainError(f"{where}: the loss is {float(loss)} at iteration {it}; stopped before that iteration's "
                         f"update, nothing of it saved. Look for NaN or inf in the training data, or lower base_lr")


def _check_labels(graph: Graph, batch: dict[str, np.ndarray]) -> None:
    """SoftmaxWithLoss CHECKs 0 <= label < classes (labels other than its ignore_label): a label fed from
    the data is checked here, before torch indexes with it."""
    for layer in graph.layers:
        if layer.type != "SoftmaxWithLoss" or len(layer.bottoms) < 2 or layer.bottoms[1] not in graph.inputs:
            continue
        label, scores = graph.values[layer.bottoms[1]], graph.values[layer.bottoms[0]]
        classes = scores.shape[layer.proto.softmax_param.axis]
        values = batch[label.caffe_name].astype(np.int64)  # Caffe's static_cast<int>
        bad = (values < 0) | (values >= classes)
        if layer.proto.loss_param.HasField("ignore_label"):
            bad &= values != layer.proto.loss_param.ignore_label
        if bad.any():
            raise TrainError(f"layer '{layer.name}' (SoftmaxWithLoss): label {values[bad].flat[0]} in "
                             f"'{label.caffe_name}' is outside 0..{classes - 1} (the {classes} classes of "
                             f"'{scores.caffe_name}') and is not its ignore_label; fix the data's labels or the "
                             f"layer before it (Caffe CHECKs this)")


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainError(f"--device {device}: CUDA is not available here; use --device cpu (or auto)")
    try:
        return torch.device(device)
    except RuntimeError:
        raise TrainError(f"unknown device {device!r}; use auto, cuda or cpu") from None


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    threads = torch.get_num_threads()
    return f"cpu ({threads} thread{'s' if threads != 1 else ''})"


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """Caffe computes in IEEE float32: no TF32 in cuBLAS/cuDNN while training."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
