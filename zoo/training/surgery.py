"""The net side of `zoo finetune`: the new head (Caffe's rename-and-resize recipe), cross-modality input,
the cut between the frozen part and the trainable part, and the frozen part as one forward function.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from converters import implementation
from prototxt import (CaffeError, Graph, attach_weights, build_graph, caffe_pb2, fill, fill_missing, layer_fillers,
                      unique_name)
from zoo.hub.resolve import Model
from zoo.training import distributed

Echo = Callable[[str], None]
HEAD_SUFFIX = "_ft"


class FinetuneError(CaffeError):
    """A finetuning setup that cannot run (one line: what is wrong and what to do)."""


def _input_layer(net: caffe_pb2.NetParameter, blob: str) -> caffe_pb2.LayerParameter:
    for layer in net.layer:
        if layer.type == "Input" and blob in layer.top:
            return layer
    raise FinetuneError(f"the net's input '{blob}' does not come from an Input layer; finetune a deploy net")


def _head_layer(graph: Graph, head: Optional[str]):
    if head is not None:
        try:
            layer = graph.layer(head)
        except KeyError as exc:
            raise FinetuneError(f"--head {head}: {exc.args[0]}") from None
        if layer.type not in ("InnerProduct", "Convolution"):
            raise FinetuneError(f"--head {head}: a {layer.type} layer; the head must be an InnerProduct or "
                                f"Convolution layer (it gets num_output = the number of classes)")
        return layer
    for types in (("InnerProduct",), ("Convolution",)):
        found = [l for l in graph.layers if l.type in types]
        if found:
            return found[-1]
    raise FinetuneError(f"{graph.source}: no InnerProduct or Convolution layer to use as the head; name it with --head")


def _default_params(layer: caffe_pb2.LayerParameter, weight_lr: float) -> None:
    """Caffe's finetuning specs (finetune_flickr_style): weights at lr_mult x, bias at 2x without decay."""
    has_bias = {"InnerProduct": layer.inner_product_param.bias_term,
                "Convolution": layer.convolution_param.bias_term,
                "Deconvolution": layer.convolution_param.bias_term}.get(layer.type)
    if has_bias is None:
        return
    del layer.param[:]
    layer.param.add(lr_mult=weight_lr, decay_mult=1)
    if has_bias:
        layer.param.add(lr_mult=2 * weight_lr, decay_mult=0)


@dataclass
class Surgery:
    net: caffe_pb2.NetParameter   # the new deploy net
    graph: Graph                  # its graph, blobs attached (the new head filled)
    head: str                     # the new head's name
    logits: str                   # the value the loss reads (the final Softmax's bottom)
    input_blob: str
    replaced: str                 # the old head's name


def operate(model: Model, num_classes: int, *, head: Optional[str], head_name: Optional[str], head_lr_mult: float,
            input_channels: Optional[int], cross_modality: bool, seed: int, say: Echo) -> Surgery:
    """The new deploy net: head renamed and resized, the input widened for cross-modality; weights copied
    by layer name from the old one."""
    base = build_graph(model.net, source=model.source)
    if len(base.inputs) != 1:
        names = ", ".join(base.values[v].caffe_name for v in base.inputs)
        raise FinetuneError(f"{model.source}: finetuning takes nets with one image input; this one has {names}")
    blob = base.values[base.inputs[0]].caffe_name
    shape = base.values[base.inputs[0]].shape
    if model.card is not None and shape is None:
        shape = (1, *model.card.input.shape)
    if shape is None or len(shape) != 4:
        base.require_shapes()
        raise FinetuneError(f"{model.source}: the input '{blob}' must be N x C x H x W, not {shape}")
    base = build_graph(model.net, source=model.source, input_shapes={blob: shape})
    base.require_shapes()
    if model.weights:
        attach_weights(base, model.weights)
    else:
        say("no weights given: every layer starts from its filler (training from scratch)")
        fill_missing(base, seed=seed)
    old = _head_layer(base, head)
    new_name = head_name or old.name + HEAD_SUFFIX
    if any(l.name == new_name for l in base.layers):
        raise FinetuneError(f"the new head's name '{new_name}' is already a layer; choose another with --head-name")
    channels = input_channels or shape[1]
    if channels != shape[1] and not cross_modality:
        raise FinetuneError(f"--input-channels {channels}: the net takes {shape[1]}; add --cross-modality to adapt "
                            f"its first convolution (weights averaged over the input channels)")

    net = caffe_pb2.NetParameter()
    net.CopyFrom(model.net)
    old_top = old.caffe_tops[0]
    new_top = new_name if old_top == old.name else old_top
    for layer in net.layer:
        if layer.name == old.name:
            _new_head(layer, new_name, num_classes, head_lr_mult)
        if new_top != old_top:
            for field_ in (layer.bottom, layer.top):
                for i, b in enumerate(field_):
                    if b == old_top:
                        field_[i] = new_top
    first_conv = None
    if channels != shape[1]:
        _input_layer(net, blob).input_param.shape[0].dim[1] = channels
        first_conv = _first_conv(base, blob)
    graph = build_graph(net, source=model.source, input_shapes={blob: (shape[0], channels, *shape[2:])})
    by_name = {l.name: l for l in base.layers}
    rng = np.random.default_rng([seed, 4])
    for layer in graph.layers:
        if layer.name == new_name:
            fillers = layer_fillers(layer.proto, len(layer.param_shapes))
            layer.blobs = [fill(f, s, rng) for f, s in zip(fillers, layer.param_shapes)]
        elif layer.name in by_name and by_name[layer.name].blobs:
            layer.blobs = list(by_name[layer.name].blobs)
    if first_conv is not None:
        conv = graph.layer(first_conv)
        conv.blobs[0] = cross_modality_weights(by_name[first_conv].blobs[0], channels)
        say(f"cross-modality: '{first_conv}' weights averaged over {shape[1]} input channels and replicated "
            f"over {channels}")
    return Surgery(net, graph, new_name, _logits(graph, new_name), blob, old.name)


def _new_head(layer: caffe_pb2.LayerParameter, name: str, num_classes: int, lr_mult: float) -> None:
    param = layer.inner_product_param if layer.type == "InnerProduct" else layer.convolution_param
    param.num_output = num_classes
    # finetune_flickr_style's fc8_flickr: gaussian 0.01 weights, zero bias, when the net names no fillers
    if not param.HasField("weight_filler"):
        param.weight_filler.type, param.weight_filler.std = "gaussian", 0.01
    if not param.HasField("bias_filler"):
        param.bias_filler.type, param.bias_filler.value = "constant", 0.0
    layer.name = name
    _default_params(layer, lr_mult)


def _first_conv(graph: Graph, blob: str) -> str:
    for layer in graph.layers:
        if layer.type == "Convolution":
            if graph.values[layer.bottoms[0]].caffe_name != blob:
                raise FinetuneError(f"--cross-modality: the first convolution '{layer.name}' does not read the input "
                                    f"'{blob}' directly")
            if layer.proto.convolution_param.group != 1:
                raise FinetuneError(f"--cross-modality: the first convolution '{layer.name}' is grouped")
            return layer.name
    raise FinetuneError("--cross-modality: the net has no Convolution layer")


def cross_modality_weights(weight: np.ndarray, channels: int) -> np.ndarray:
    """Wang et al. 2015: the first convolution's weights averaged over the input channels (the RGB
    filters' mean) and replicated over the new channel count."""
    mean = np.asarray(weight, dtype=np.float64).mean(axis=1, keepdims=True).astype(np.float32)
    return np.ascontiguousarray(np.repeat(mean, channels, axis=1))


def _logits(graph: Graph, head: str) -> str:
    """The value the loss reads: the bottom of the Softmax that follows the head, else the head's top."""
    layer = graph.layer(head)
    start = layer.tops[0]
    seen, stack = set(), [start]
    while stack:
        v = stack.pop()
        for consumer in graph.values[v].consumers:
            c = graph.layer(consumer)
            if c.type == "Softmax":
                return c.bottoms[0]
            if consumer not in seen:
                seen.add(consumer)
                stack.extend(c.tops)
    return graph.final_value(graph.values[start].caffe_name)


# -- the cut -------------------------------------------------------------------------------------

@dataclass
class Cut:
    frozen: list[str]        # layers frozen by --freeze-until (with ancestors), in net order
    computed: list[str]      # what the frozen part computes: frozen ancestors of the logits + absorbed layers
    trainable: list[str]     # everything else the logits need
    boundary: list[str]      # values the frozen part hands to the trainable part (or the net input)


def _ancestors(graph: Graph, values: Sequence[str]) -> set[str]:
    found: set[str] = set()
    stack = list(values)
    while stack:
        producer = graph.values[stack.pop()].producer
        if producer is not None and producer not in found:
            found.add(producer)
            stack.extend(graph.layer(producer).bottoms)
    return found


def match_layers(graph: Graph, name: str) -> list[str]:
    """A layer name, or a group prefix (`inception_4e` = every `inception_4e/...` layer)."""
    names = [l.name for l in graph.layers if l.type != "Input"]
    matched = [n for n in names if n == name or n.startswith(name.rstrip("/") + "/")]
    if not matched:
        groups = sorted({n.split("/")[0] for n in names if "/" in n})
        close = difflib.get_close_matches(name, groups + names, n=5, cutoff=0.5) or groups[:5] or names[-5:]
        raise FinetuneError(f"--freeze-until {name}: no layer or layer group of that name; the closest: "
                            f"{', '.join(close)}")
    return matched


def cut(graph: Graph, logits: str, head: str, freeze_until: Optional[str], replaced: Optional[str] = None) -> Cut:
    needed = _ancestors(graph, [logits])
    inputs = set(graph.inputs)
    frozen: set[str] = set()
    if freeze_until and freeze_until in (head, replaced):
        raise FinetuneError(f"--freeze-until {freeze_until}: that is the head, which finetuning replaces; freeze a "
                            f"layer before it")
    if freeze_until:
        matched = match_layers(graph, freeze_until)
        frozen = set(matched) | _ancestors(graph, [b for n in matched for b in graph.layer(n).bottoms])
        if head in frozen:
            raise FinetuneError(f"--freeze-until {freeze_until} freezes the head '{head}' too: nothing would learn")
    computed = {n for n in frozen if n in needed and graph.layer(n).type != "Input"}
    if computed:
        for layer in graph.layers:  # absorb deterministic parameter-free layers fed only by the frozen part
            if (layer.name in needed and layer.name not in computed and _deterministic(layer.type)
                    and not layer.param_shapes and all(graph.values[b].producer in computed or b in inputs for b in layer.bottoms)):
                computed.add(layer.name)
    order = [l.name for l in graph.layers]
    trainable = [n for n in order if n in needed and n not in computed and graph.layer(n).type != "Input"]
    boundary: list[str] = []
    for n in trainable:
        for b in graph.layer(n).bottoms:
            if (graph.values[b].producer in computed or b in inputs) and b not in boundary:
                boundary.append(b)
    return Cut([n for n in order if n in frozen and graph.layer(n).type != "Input"],
               [n for n in order if n in computed], trainable, boundary)


def _deterministic(layer_type: str) -> bool:
    """Parameter-free with an output fixed by its inputs (``LayerImpl.deterministic``): when every input is
    frozen, the layer is computed with the frozen part."""
    impl = implementation(layer_type)
    return impl is not None and impl.deterministic


def trainable_net(graph: Graph, c: Cut, logits: str) -> tuple[caffe_pb2.NetParameter, dict[str, str], str]:
    """The trainable part as a Caffe net: an Input layer for the boundary blobs and `label`, the trainable
    layers, SoftmaxWithLoss (`loss`) and Accuracy (`accuracy`) on the logits. Returns it, the input blob
    name of each boundary value, and the label blob's name."""
    net = caffe_pb2.NetParameter(name=graph.name)
    taken = {v.caffe_name for v in graph.values.values()}
    caffe_names = [graph.values[v].caffe_name for v in c.boundary]
    name_of: dict[str, str] = {}
    for v, cn in zip(c.boundary, caffe_names):
        name_of[v] = cn if caffe_names.count(cn) == 1 else v
    label = _fresh("label", taken)
    inp = net.layer.add(name="finetune_input", type="Input")
    for v in c.boundary:
        inp.top.append(name_of[v])
        inp.input_param.shape.add().dim.extend(graph.values[v].shape)
    inp.top.append(label)
    inp.input_param.shape.add().dim.append(graph.values[c.boundary[0]].shape[0])
    for n in c.trainable:
        layer = graph.layer(n)
        proto = net.layer.add()
        proto.CopyFrom(layer.proto)
        if not proto.param:
            _default_params(proto, 1.0)
        del proto.bottom[:], proto.top[:]
        proto.bottom.extend(name_of.get(b, graph.values[b].caffe_name) for b in layer.bottoms)
        for j, t in enumerate(layer.tops):
            in_place = j < len(layer.caffe_bottoms) and layer.caffe_bottoms[j] == layer.caffe_tops[j]
            name_of[t] = proto.bottom[j] if in_place else layer.caffe_tops[j]
            proto.top.append(name_of[t])
    loss, acc = _fresh("loss", taken), _fresh("accuracy", taken)
    net.layer.add(name=loss, type="SoftmaxWithLoss", bottom=[name_of[logits], label], top=[loss])
    net.layer.add(name=acc, type="Accuracy", bottom=[name_of[logits], label], top=[acc])
    return net, {v: name_of[v] for v in c.boundary}, label


def _fresh(name: str, taken: set[str]) -> str:
    return unique_name(name, taken)


# -- the frozen part -----------------------------------------------------------------------------

class FrozenPart:
    """The frozen layers as one forward function: a batch of net inputs -> the boundary blobs."""

    def __init__(self, graph: Graph, c: Cut, input_blob: str, runtime: str, device, workdir: Path) -> None:
        self.runtime, self.passthrough = runtime, [v in graph.inputs for v in c.boundary]
        net = caffe_pb2.NetParameter(name=f"{graph.name}_frozen")
        keep = set(c.computed) | {l.name for l in graph.layers if l.type == "Input"}
        for layer in graph.layers:
            if layer.name in keep:
                net.layer.add().CopyFrom(layer.proto)
        shape = graph.values[graph.inputs[0]].shape
        fgraph = build_graph(net, input_shapes={input_blob: shape}, source=f"{graph.source} (frozen part)")
        by_name = {l.name: l for l in graph.layers}
        for layer in fgraph.layers:
            layer.blobs = by_name[layer.name].blobs
        wanted = []  # the frozen graph's name for each computed boundary value
        for v in c.boundary:
            if v in graph.inputs:
                continue
            value = graph.values[v]
            wanted.append(next(u.name for u in fgraph.values.values()
                               if u.producer == value.producer and u.caffe_name == value.caffe_name))
        fgraph.outputs = wanted
        if runtime == "torch" and len({fgraph.values[w].caffe_name for w in wanted}) < len(wanted):
            self.runtime = runtime = "onnxruntime"  # its outputs are keyed by Caffe name: they must differ
        if runtime == "onnxruntime":
            from converters import save_onnx
            from zoo.inference.runtime import session
            workdir.mkdir(parents=True, exist_ok=True)
            path = workdir / "frozen.onnx"
            save_onnx(fgraph, path)
            self.session = session(str(path), device="cuda" if device.type == "cuda" else "cpu",
                                   threads=distributed.threads_per_process())  # N processes share the cores
            self.names = wanted
            self.input_name = self.session.get_inputs()[0].name
        else:
            from converters import to_pytorch
            self.module = to_pytorch(fgraph).to(device).eval()
            self.names = [fgraph.values[w].caffe_name for w in wanted]
            self.device = device

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        if self.runtime == "onnxruntime":
            computed = iter(self.session.run(self.names, {self.input_name: x}))
        else:
            import torch
            with torch.no_grad():
                out = self.module(torch.from_numpy(x).to(self.device))
            out = out if isinstance(out, dict) else {self.names[0]: out}
            computed = iter([out[n].float().cpu().numpy() for n in self.names])
        return [x if passthrough else next(computed) for passthrough in self.passthrough]
