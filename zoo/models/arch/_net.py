"""`Net`: a NetParameter written layer by layer, so that a family function reads like its prototxt.

Each method appends one Caffe layer and returns the top it wrote, keyword arguments being the fields
of that layer's parameter message under Caffe's own names (`num_output`, `kernel_size`, `pool="MAX"`).
Only the fields given are set: a publisher's explicit `pad: 0` stays explicit, an omitted one stays
omitted, so the built net equals the published one message for message.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from google.protobuf.message import Message

from prototxt import caffe_pb2

Blobs = str | Sequence[str]


def _param_fields() -> dict[str, str]:
    """Layer type -> its parameter field, derived from the descriptors as Caffe's net_spec does."""
    fields = {}
    for field in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        message = field.message_type
        if field.name.endswith("_param") and message is not None and message.name.endswith("Parameter"):
            fields[message.name[: -len("Parameter")]] = field.name  # "LRNParameter" -> "LRN"
    fields["Deconvolution"] = fields["Convolution"]
    return fields


PARAM_FIELD = _param_fields()


def fill(message: Message, values: Mapping[str, Any]) -> None:
    """Set fields of `message`: enums by name, repeated fields from one value or a list, messages from dicts."""
    for key, value in values.items():
        field = message.DESCRIPTOR.fields_by_name.get(key)
        if field is None:
            known = ", ".join(sorted(message.DESCRIPTOR.fields_by_name))
            raise TypeError(f"{message.DESCRIPTOR.name} has no field {key!r}; its fields are: {known}")
        if field.message_type is not None:
            fill(getattr(message, key), value)
            continue
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        if field.enum_type is not None:
            items = [field.enum_type.values_by_name[v].number if isinstance(v, str) else v for v in items]
        if field.is_repeated:
            getattr(message, key).extend(items)
        else:
            setattr(message, key, items[0])


def _listed(blobs: Blobs) -> list[str]:
    return [blobs] if isinstance(blobs, str) else list(blobs)


class Net:
    """A deploy net: an Input layer, then whatever the methods append (see the module docstring)."""

    def __init__(self, name: str, shape: Sequence[int], *, input_layer: str = "data", blob: str = "data") -> None:
        self.proto = caffe_pb2.NetParameter()
        if name:  # several publishers leave their net unnamed
            self.proto.name = name
        layer = self.proto.layer.add(name=input_layer, type="Input", top=[blob])
        layer.input_param.shape.add(dim=list(shape))

    def input(self, blob: str, shape: Sequence[int]) -> str:
        """Another top of the Input layer (py-faster-rcnn's im_info), as Caffe upgrades a second `input:`."""
        layer = self.proto.layer[0]
        layer.top.append(blob)
        layer.input_param.shape.add(dim=list(shape))
        return blob

    def layer(self, type_: str, name: str, bottom: Blobs, top: Blobs | None = None, **param: Any) -> str:
        """Append a layer of any type; `top` defaults to the layer's name."""
        tops = [name] if top is None else _listed(top)
        layer = self.proto.layer.add(name=name, type=type_, bottom=_listed(bottom), top=tops)
        if param:
            fill(getattr(layer, PARAM_FIELD[type_]), param)
        return tops[0]

    def conv(self, name: str, bottom: str, top: str | None = None, **param: Any) -> str:
        return self.layer("Convolution", name, bottom, top, **param)

    def ip(self, name: str, bottom: str, **param: Any) -> str:
        return self.layer("InnerProduct", name, bottom, **param)

    def pool(self, name: str, bottom: str, pool: str, **param: Any) -> str:
        return self.layer("Pooling", name, bottom, pool=pool, **param)

    def lrn(self, name: str, bottom: str, **param: Any) -> str:
        return self.layer("LRN", name, bottom, **param)

    def concat(self, name: str, bottoms: Sequence[str], top: str | None = None, **param: Any) -> str:
        return self.layer("Concat", name, bottoms, top, **param)

    def eltwise(self, name: str, bottoms: Sequence[str]) -> str:
        return self.layer("Eltwise", name, bottoms)

    def slice(self, name: str, bottom: str, tops: Sequence[str], **param: Any) -> str:
        return self.layer("Slice", name, bottom, tops, **param)

    def softmax(self, name: str, bottom: str) -> str:
        return self.layer("Softmax", name, bottom)

    # In place unless told otherwise, as deploy nets write them:
    def relu(self, name: str, bottom: str) -> str:
        return self.layer("ReLU", name, bottom, bottom)

    def prelu(self, name: str, bottom: str) -> str:
        return self.layer("PReLU", name, bottom, bottom)

    def dropout(self, name: str, bottom: str, ratio: float, top: str | None = None, **param: Any) -> str:
        return self.layer("Dropout", name, bottom, top or bottom, dropout_ratio=ratio, **param)

    def bn_scale(self, bn: str, scale: str, bottom: str, top: str | None = None, **batch_norm_param: Any) -> str:
        """BatchNorm then a Scale with bias (Caffe's split batch normalisation); the Scale works in place."""
        x = self.layer("BatchNorm", bn, bottom, top or bottom, **batch_norm_param)
        return self.layer("Scale", scale, x, x, bias_term=True)
