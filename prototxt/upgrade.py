"""Old Caffe net formats brought up to date, step by step, as Caffe's upgrade_proto.cpp does.

``UPGRADES`` is an ordered list of (needs, upgrade) pairs. Each ``upgrade`` is pure (returns a new
message, the argument is untouched) and idempotent (``needs`` is false on its result).
"""
from __future__ import annotations

import difflib

from typing import Callable

from . import caffe_pb2
from .errors import GraphError

NetParameter = caffe_pb2.NetParameter
_V1 = caffe_pb2.V1LayerParameter

_V1_TYPE_NAMES = {
    "NONE": "", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution", "DATA": "Data", "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output", "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData", "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss", "MVN": "MVN",
    "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence", "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice", "TANH": "TanH",
    "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}

# V0 type strings -> V1 enum names.
_V0_TYPES = {
    "accuracy": "ACCURACY", "bnll": "BNLL", "concat": "CONCAT", "conv": "CONVOLUTION", "data": "DATA",
    "dropout": "DROPOUT", "euclidean_loss": "EUCLIDEAN_LOSS", "flatten": "FLATTEN", "hdf5_data": "HDF5_DATA",
    "hdf5_output": "HDF5_OUTPUT", "im2col": "IM2COL", "images": "IMAGE_DATA", "infogain_loss": "INFOGAIN_LOSS",
    "innerproduct": "INNER_PRODUCT", "lrn": "LRN", "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS",
    "pool": "POOLING", "relu": "RELU", "sigmoid": "SIGMOID", "softmax": "SOFTMAX", "softmax_loss": "SOFTMAX_LOSS",
    "split": "SPLIT", "tanh": "TANH", "window_data": "WINDOW_DATA",
}

# V0 field -> {v0 layer type: (V1 sub-message, field, repeated?)}; "*" applies to every type.
_V0_FIELDS: dict[str, dict[str, tuple[str, str, bool]]] = {
    "num_output": {"conv": ("convolution_param", "num_output", False),
                   "innerproduct": ("inner_product_param", "num_output", False)},
    "biasterm": {"conv": ("convolution_param", "bias_term", False),
                 "innerproduct": ("inner_product_param", "bias_term", False)},
    "weight_filler": {"conv": ("convolution_param", "weight_filler", False),
                      "innerproduct": ("inner_product_param", "weight_filler", False)},
    "bias_filler": {"conv": ("convolution_param", "bias_filler", False),
                    "innerproduct": ("inner_product_param", "bias_filler", False)},
    "pad": {"conv": ("convolution_param", "pad", True), "pool": ("pooling_param", "pad", False)},
    "kernelsize": {"conv": ("convolution_param", "kernel_size", True), "pool": ("pooling_param", "kernel_size", False)},
    "group": {"conv": ("convolution_param", "group", False)},
    "stride": {"conv": ("convolution_param", "stride", True), "pool": ("pooling_param", "stride", False)},
    "pool": {"pool": ("pooling_param", "pool", False)},
    "dropout_ratio": {"dropout": ("dropout_param", "dropout_ratio", False)},
    "local_size": {"lrn": ("lrn_param", "local_size", False)},
    "alpha": {"lrn": ("lrn_param", "alpha", False)},
    "beta": {"lrn": ("lrn_param", "beta", False)},
    "k": {"lrn": ("lrn_param", "k", False)},
    "source": {"data": ("data_param", "source", False), "hdf5_data": ("hdf5_data_param", "source", False),
               "images": ("image_data_param", "source", False),
               "window_data": ("window_data_param", "source", False),
               "infogain_loss": ("infogain_loss_param", "source", False)},
    "scale": {"*": ("transform_param", "scale", False)},
    "meanfile": {"*": ("transform_param", "mean_file", False)},
    "batchsize": {"data": ("data_param", "batch_size", False), "hdf5_data": ("hdf5_data_param", "batch_size", False),
                  "images": ("image_data_param", "batch_size", False),
                  "window_data": ("window_data_param", "batch_size", False)},
    "cropsize": {"*": ("transform_param", "crop_size", False)},
    "mirror": {"*": ("transform_param", "mirror", False)},
    "rand_skip": {"data": ("data_param", "rand_skip", False), "images": ("image_data_param", "rand_skip", False)},
    "shuffle_images": {"images": ("image_data_param", "shuffle", False)},
    "new_height": {"images": ("image_data_param", "new_height", False)},
    "new_width": {"images": ("image_data_param", "new_width", False)},
    "concat_dim": {"concat": ("concat_param", "concat_dim", False)},
    "det_fg_threshold": {"window_data": ("window_data_param", "fg_threshold", False)},
    "det_bg_threshold": {"window_data": ("window_data_param", "bg_threshold", False)},
    "det_fg_fraction": {"window_data": ("window_data_param", "fg_fraction", False)},
    "det_context_pad": {"window_data": ("window_data_param", "context_pad", False)},
    "det_crop_mode": {"window_data": ("window_data_param", "crop_mode", False)},
    "hdf5_output_param": {"hdf5_output": ("hdf5_output_param", None, False)},
}


def v1_type_name(number: int) -> str:
    """The current type string of a V1 LayerType enum number ('' when unknown)."""
    try:
        return _V1_TYPE_NAMES.get(_V1.LayerType.Name(number), "")
    except ValueError:
        return ""


def v0_type_name(v0_type: str) -> str:
    return _V1_TYPE_NAMES.get(_V0_TYPES.get(v0_type, "NONE"), "")


# -- V0 -> V1 ----------------------------------------------------------------------------------

def needs_v0(net: NetParameter) -> bool:
    return any(layer.HasField("layer") for layer in net.layers)


def upgrade_v0(net: NetParameter) -> NetParameter:
    """V0 (``layers { layer { type: "conv" } }``) to V1; "padding" layers fold into the next conv/pool."""
    if not needs_v0(net):
        return _copy(net)  # a V1 layer has no V0 part to convert: rebuilding it would drop its fields
    padded = _fold_padding_layers(net)
    out = NetParameter()
    out.CopyFrom(padded)
    del out.layers[:]
    for old in padded.layers:
        new = out.layers.add()
        new.bottom.extend(old.bottom)
        new.top.extend(old.top)
        if old.HasField("layer"):
            _upgrade_v0_layer(old.layer, new)
    return out


def _fold_padding_layers(net: NetParameter) -> NetParameter:
    out = NetParameter()
    out.CopyFrom(net)
    del out.layers[:]
    last_top: dict[str, int] = {name: -1 for name in net.input}
    for i, layer in enumerate(net.layers):
        if layer.layer.type != "padding":
            out.layers.add().CopyFrom(layer)
        for j, bottom in enumerate(layer.bottom):
            src = last_top.get(bottom, -1)
            if src == -1 or net.layers[src].layer.type != "padding":
                continue
            source = net.layers[src]
            if layer.layer.type not in ("conv", "pool") or len(layer.bottom) != 1 \
                    or len(source.bottom) != 1 or len(source.top) != 1:
                raise GraphError(f"V0 layer '{layer.layer.name}': a padding layer may only feed a single-input "
                                 f"conv or pool layer")
            out.layers[-1].layer.pad = source.layer.pad
            out.layers[-1].bottom[j] = source.bottom[0]
        for top in layer.top:
            last_top[top] = i
    return out


def _upgrade_v0_layer(v0: caffe_pb2.V0LayerParameter, v1: caffe_pb2.V1LayerParameter) -> None:
    if v0.HasField("name"):
        v1.name = v0.name
    kind = v0.type
    if v0.HasField("type"):
        if kind not in _V0_TYPES:  # UpgradeV0LayerType: LOG(FATAL) << "Unknown layer name"
            close = difflib.get_close_matches(kind, _V0_TYPES, n=1)
            raise GraphError(f"V0 layer '{v0.name}': unknown V0 layer type '{kind}'"
                             + (f"; did you mean '{close[0]}'?" if close else ""))
        v1.type = _V1.LayerType.Value(_V0_TYPES[kind])
    v1.blobs.extend(v0.blobs)
    v1.blobs_lr.extend(v0.blobs_lr)
    v1.weight_decay.extend(v0.weight_decay)
    for v0_field, targets in _V0_FIELDS.items():
        if not v0.HasField(v0_field):
            continue
        target = targets.get(kind) or targets.get("*")
        if target is None:
            continue  # Caffe reports the net as not fully compatible and drops the field
        sub_name, field_name, repeated = target
        sub = getattr(v1, sub_name)
        value = getattr(v0, v0_field)
        if field_name is None:
            sub.CopyFrom(value)
        elif repeated:
            getattr(sub, field_name).append(value)
        elif hasattr(value, "CopyFrom"):
            getattr(sub, field_name).CopyFrom(value)
        else:
            setattr(sub, field_name, value)  # V0 and current PoolMethod enums share their numbers


# -- data transformation fields (V1) ----------------------------------------------------------

_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")
_DATA_PARAMS = {"DATA": "data_param", "IMAGE_DATA": "image_data_param", "WINDOW_DATA": "window_data_param"}


def _data_param_of(layer: caffe_pb2.V1LayerParameter):
    name = _DATA_PARAMS.get(_V1.LayerType.Name(layer.type)) if layer.type in _V1.LayerType.values() else None
    return getattr(layer, name) if name else None


def needs_data(net: NetParameter) -> bool:
    return any(p is not None and any(p.HasField(f) for f in _TRANSFORM_FIELDS)
               for p in map(_data_param_of, net.layers))


def upgrade_data(net: NetParameter) -> NetParameter:
    """V1 data layers' scale/mean_file/crop_size/mirror move into transform_param."""
    out = NetParameter()
    out.CopyFrom(net)
    for layer in out.layers:
        param = _data_param_of(layer)
        if param is None:
            continue
        for f in _TRANSFORM_FIELDS:
            if param.HasField(f):
                setattr(layer.transform_param, f, getattr(param, f))
                param.ClearField(f)
    return out


# -- V1 -> V2 ----------------------------------------------------------------------------------

_V1_COPIED = [f.name for f in _V1.DESCRIPTOR.fields
              if f.name.endswith("_param") and f.name in caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name]


def needs_v1(net: NetParameter) -> bool:
    return len(net.layers) > 0


def upgrade_v1(net: NetParameter) -> NetParameter:
    """V1 (``layers { type: CONVOLUTION blobs_lr: 1 }``) to ``layer { type: "Convolution" param {...} }``."""
    if not needs_v1(net):
        return _copy(net)
    if len(net.layer):
        raise GraphError("the net mixes V1 'layers' and current 'layer' entries; use one format")
    out = NetParameter()
    out.CopyFrom(net)
    del out.layers[:]
    for old in net.layers:
        new = out.layer.add()
        new.bottom.extend(old.bottom)
        new.top.extend(old.top)
        if old.HasField("name"):
            new.name = old.name
        new.include.extend(old.include)
        new.exclude.extend(old.exclude)
        if old.HasField("type"):
            new.type = v1_type_name(old.type)
        new.blobs.extend(old.blobs)
        for i, name in enumerate(old.param):
            _param(new, i).name = name
        for i, mode in enumerate(old.blob_share_mode):
            _param(new, i).share_mode = mode  # STRICT/PERMISSIVE share their numbers
        for i, lr in enumerate(old.blobs_lr):
            _param(new, i).lr_mult = lr
        for i, decay in enumerate(old.weight_decay):
            _param(new, i).decay_mult = decay
        new.loss_weight.extend(old.loss_weight)
        for name in _V1_COPIED:
            if old.HasField(name):
                getattr(new, name).CopyFrom(getattr(old, name))
    return out


def _copy(net: NetParameter) -> NetParameter:
    out = NetParameter()
    out.CopyFrom(net)
    return out


def _param(layer: caffe_pb2.LayerParameter, i: int) -> caffe_pb2.ParamSpec:
    while len(layer.param) <= i:
        layer.param.add()
    return layer.param[i]


# -- net-level input fields -> Input layer ----------------------------------------------------

def needs_input(net: NetParameter) -> bool:
    return len(net.input) > 0


def upgrade_input(net: NetParameter) -> NetParameter:
    """``input``/``input_dim``/``input_shape`` become one Input layer named "input" at the front."""
    if not needs_input(net):
        return _copy(net)  # no net-level inputs: adding an Input layer without tops would change the net
    out = NetParameter()
    out.CopyFrom(net)
    if net.input_shape or net.input_dim:
        # Caffe reads one input_shape (or 4 input_dim values) per input and ignores any beyond
        if net.input_shape and len(net.input_shape) < len(net.input):
            raise GraphError(f"net '{net.name}': {len(net.input)} inputs but {len(net.input_shape)} input_shape "
                             f"entries; give one input_shape per input")
        if not net.input_shape and len(net.input_dim) < 4 * len(net.input):
            raise GraphError(f"net '{net.name}': {len(net.input)} inputs need {4 * len(net.input)} input_dim "
                             f"values, found {len(net.input_dim)}; give 4 (N, C, H, W) per input")
        layer = caffe_pb2.LayerParameter(name="input", type="Input")
        for i, top in enumerate(net.input):
            layer.top.append(top)
            shape = layer.input_param.shape.add()
            if net.input_shape:
                shape.CopyFrom(net.input_shape[i])
            else:
                shape.dim.extend(net.input_dim[4 * i:4 * i + 4])
    else:  # inputs named without shapes: keep them as inputs whose shape must be given
        layer = caffe_pb2.LayerParameter(name="input", type="Input", top=list(net.input))
    del out.layer[:]
    out.layer.append(layer)
    out.layer.extend(net.layer)
    out.ClearField("input")
    out.ClearField("input_shape")
    out.ClearField("input_dim")
    return out


# -- BatchNorm's old three params --------------------------------------------------------------

def needs_batch_norm(net: NetParameter) -> bool:
    return any(layer.type == "BatchNorm" and len(layer.param) == 3
               and any(p.lr_mult != 0 or p.decay_mult != 0 for p in layer.param) for layer in net.layer)


def upgrade_batch_norm(net: NetParameter) -> NetParameter:
    """BatchNorm layers declaring 3 params get lr_mult 0 and decay_mult 0 (its blobs are statistics)."""
    out = NetParameter()
    out.CopyFrom(net)
    for layer in out.layer:
        if layer.type == "BatchNorm" and len(layer.param) == 3:
            for p in layer.param:
                p.lr_mult = 0.0
                p.decay_mult = 0.0
    return out


Upgrade = tuple[Callable[[NetParameter], bool], Callable[[NetParameter], NetParameter]]

# Caffe's order (UpgradeNetAsNeeded): V0, data transformation, V1, input fields, BatchNorm.
UPGRADES: list[Upgrade] = [
    (needs_v0, upgrade_v0),
    (needs_data, upgrade_data),
    (needs_v1, upgrade_v1),
    (needs_input, upgrade_input),
    (needs_batch_norm, upgrade_batch_norm),
]


def needs_upgrade(net: NetParameter) -> bool:
    return any(needs(net) for needs, _ in UPGRADES)


def upgrade_net(net: NetParameter) -> tuple[NetParameter, list[str]]:
    """The net in the current format, and the names of the upgrades applied."""
    applied = []
    for needs, upgrade in UPGRADES:
        if needs(net):
            net = upgrade(net)
            applied.append(upgrade.__name__.replace("upgrade_", ""))
    return net, applied


_SOLVER_TYPES = {"SGD": "SGD", "NESTEROV": "Nesterov", "ADAGRAD": "AdaGrad", "RMSPROP": "RMSProp",
                 "ADADELTA": "AdaDelta", "ADAM": "Adam"}


def upgrade_solver(solver: caffe_pb2.SolverParameter, path: str = "") -> caffe_pb2.SolverParameter:
    """The legacy ``solver_type`` enum becomes the ``type`` string."""
    out = caffe_pb2.SolverParameter()
    out.CopyFrom(solver)
    if solver.HasField("solver_type"):
        if solver.HasField("type"):
            raise GraphError(f"{path or 'solver'}: both 'solver_type' and 'type' are set; keep only 'type'")
        out.type = _SOLVER_TYPES[caffe_pb2.SolverParameter.SolverType.Name(solver.solver_type)]
        out.ClearField("solver_type")
    return out
