"""An OpenCV-dnn-readable twin of a SegNet-family net (caffe-segnet's fork layers), for the inference benchmark.

OpenCV dnn's Caffe importer (4.x) refuses caffe-segnet's layers: `bn_param` is not in its caffe.proto (an unknown
field: "UnknownField should have at least 2 items: name and value"), and it has no layer types "BN" or
"Upsample". Its ONNX importer reads our export but computes it wrongly (see inference.py's doc). So the peer is
the same function written with layers OpenCV's Caffe importer does have:

- BN in INFERENCE mode (`x * scale[c] + shift[c]`, caffe-segnet's bn_layer.cpp) -> Caffe `Scale` with a bias,
  the same two blobs as vectors;
- Upsample with a mask bottom (zero plane, each value written at the position its pooling mask recorded) ->
  OpenCV's `MaxUnpool`, which does exactly that from a Caffe `Pooling` mask top. Its parameters
  (pool_k_h...) are not caffe.proto fields, so they go in as the unknown scalar fields OpenCV's importer
  passes to a layer; its output size comes from a third bottom: the blob the matching Pooling read (SegNet
  chooses upsample_h/w to restore exactly that size; anything else is refused here).

inference.py checks the twin's outputs against ours before timing it, so the peer computes the same function.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

FORK_TYPES = {"BN", "Upsample"}


def needs_twin(net) -> bool:
    return any(layer.type in FORK_TYPES for layer in net.layer)


def _pool_of_mask(net, mask: str):
    for layer in net.layer:
        if layer.type == "Pooling" and len(layer.top) > 1 and layer.top[1] == mask:
            return layer
    raise SystemExit(f"the mask '{mask}' is not the second top of a Pooling layer; no OpenCV twin for this net")


def _unpool_fields(layer, pool, graph) -> str:
    """MaxUnpool's parameters as OpenCV reads them; checks that the pooling's input has the Upsample's size."""
    from prototxt.shapes import pool_geometry
    want, have = graph.values[layer.top[0]].shape, graph.values[pool.bottom[0]].shape
    if tuple(want) != tuple(have):
        raise SystemExit(f"layer '{layer.name}': upsampled size {want} is not the size {have} its pooling read")
    g = pool_geometry(pool, have)
    fields = dict(pool_k_h=g.kernel[0], pool_k_w=g.kernel[1], pool_stride_h=g.stride[0], pool_stride_w=g.stride[1],
                  pool_pad_h=g.pad[0], pool_pad_w=g.pad[1])
    return "".join(f"  {k}: {v}\n" for k, v in fields.items())


def _layer_text(layer, extra: str = "") -> str:
    from google.protobuf import text_format
    body = text_format.MessageToString(layer, indent=2)
    return "layer {\n" + body + extra + "}\n"


def write_twin(net, graph, weights: dict[str, Sequence[np.ndarray]], input_shape, folder: Path
               ) -> tuple[Path, Path]:
    """(prototxt, caffemodel) of the OpenCV twin of ``net`` (an upgraded NetParameter) with ``weights``."""
    from prototxt.weights import write_caffemodel
    text, stored = [f'name: "{net.name}_opencv"\n'], []
    for source in net.layer:
        layer, extra, blobs = type(source)(), "", list(weights.get(source.name, []))
        layer.CopyFrom(source)
        if layer.type in ("Input", "DenseImageData"):
            layer.Clear()
            layer.name, layer.type = source.name, "Input"
            layer.top.append(source.top[0])
            layer.input_param.shape.add().dim.extend(input_shape)
        elif layer.type == "BN":
            if layer.bn_param.bn_mode != layer.bn_param.INFERENCE:
                raise SystemExit(f"layer '{layer.name}': only BN in INFERENCE mode has an OpenCV twin")
            layer.type = "Scale"
            layer.ClearField("bn_param")
            layer.scale_param.bias_term = True
            blobs = [np.asarray(b, np.float32).reshape(-1) for b in blobs]
        elif layer.type == "Upsample" and len(layer.bottom) == 2:
            pool = _pool_of_mask(net, layer.bottom[1])
            extra = _unpool_fields(layer, pool, graph)
            layer.type = "MaxUnpool"
            layer.ClearField("upsample_param")
            layer.bottom.append(pool.bottom[0])
        text.append(_layer_text(layer, extra))
        if blobs:
            stored.append((_name_only(layer.name), blobs))
    proto, model = folder / "opencv_twin.prototxt", folder / "opencv_twin.caffemodel"
    proto.write_text("".join(text))
    write_caffemodel(model, net.name, stored)
    return proto, model


def _name_only(name: str) -> bytes:
    from prototxt import caffe_pb2
    return caffe_pb2.LayerParameter(name=name).SerializeToString()
