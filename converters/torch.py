"""Graph -> torch.fx.GraphModule whose submodules are named after the Caffe layers.

Calling convention: inputs in Caffe's input order (NCHW float32); one output -> a tensor, several ->
a dict of Caffe output blob names (Caffe's order). ``export_folder`` writes a folder that loads with
plain torch: ``model.py`` (the modules of ``converters/nn.py`` verbatim plus a readable ``Net``) and
``weights.pt`` (a state dict for ``torch.load(weights_only=True)``).
"""
from __future__ import annotations

import inspect
import keyword
import operator
import os
import re
import shutil
import tempfile
import warnings

import numpy as np
import torch
import torch.fx as fx

from prototxt.graph import Graph, unique_name

from . import nn as caffe_nn
from . import registry

# Loss/metric layers that have a PyTorch form for training (`zoo train`).
TRAINABLE_LOSSES = {"SoftmaxWithLoss", "EuclideanLoss", "SigmoidCrossEntropyLoss", "Accuracy"}


def identifier(name: str, taken: set[str]) -> str:
    """A valid, unique Python identifier for a Caffe name (inception_3a/1x1 -> inception_3a_1x1)."""
    base = re.sub(r"\W", "_", name) or "layer"
    if base[0].isdigit():
        base = "_" + base
    if keyword.iskeyword(base):
        base += "_"
    return unique_name(base, taken)


def _loss_module(layer):
    p = layer.proto
    norm_names = {0: "FULL", 1: "VALID", 2: "BATCH_SIZE", 3: "NONE"}
    lp = p.loss_param
    if lp.HasField("normalization"):
        norm = norm_names[lp.normalization]
    elif lp.HasField("normalize"):
        norm = "VALID" if lp.normalize else "BATCH_SIZE"
    else:
        norm = None
    ignore = lp.ignore_label if lp.HasField("ignore_label") else None
    if layer.type == "SoftmaxWithLoss":
        return caffe_nn.SoftmaxWithLoss(p.softmax_param.axis, ignore, norm or "VALID")
    if layer.type == "EuclideanLoss":
        return caffe_nn.EuclideanLoss()
    if layer.type == "SigmoidCrossEntropyLoss":
        return caffe_nn.SigmoidCrossEntropyLoss(norm or "BATCH_SIZE")
    ap = p.accuracy_param
    return caffe_nn.Accuracy(ap.axis, ap.top_k, ap.ignore_label if ap.HasField("ignore_label") else None)


def _load_blobs(module: torch.nn.Module, layer, blob_names: list[str]) -> None:
    """Point the module's tensors at the graph's arrays (no copy when they are float32 already)."""
    state = module.state_dict(keep_vars=True)
    for i, key in enumerate(blob_names):
        if i >= len(layer.blobs) or layer.blobs[i] is None:
            continue
        target = state[key]
        array = np.asarray(layer.blobs[i])
        if array.dtype != np.float32 or not array.flags.c_contiguous or not array.flags.writeable:
            array = np.ascontiguousarray(array, dtype=np.float32)
        value = torch.from_numpy(array).reshape(target.shape)
        owner, _, attr = key.rpartition(".")
        holder = module.get_submodule(owner) if owner else module
        if isinstance(target, torch.nn.Parameter):
            setattr(holder, attr, torch.nn.Parameter(value, requires_grad=target.requires_grad))
        else:
            holder.register_buffer(attr, value, persistent=attr not in getattr(holder, "_non_persistent_buffers_set", ()))


def to_pytorch(graph: Graph, training: bool = False) -> fx.GraphModule:
    """The net as a torch.fx.GraphModule (eval mode unless ``training``).

    With ``training=True`` the loss and metric layers are kept (their tops become outputs) and data
    layers' label tops are inputs, for `zoo train`.
    """
    registry.check_supported(graph)
    missing = [l.name for l in graph.layers if l.param_shapes and not l.blobs]
    if missing and not training:
        raise ValueError(f"no weights for layers {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; "
                         f"load the net with its .caffemodel")
    fg = fx.Graph()
    root = torch.nn.Module()
    taken: set[str] = set()
    env: dict[str, fx.Node] = {}
    names: dict[str, str] = {}  # module attribute -> Caffe layer name
    modules: dict[str, tuple[torch.nn.Module, list[str]]] = {}
    value_nodes: dict[str, str] = {}  # graph value -> fx node name
    for v in graph.inputs:
        env[v] = fg.placeholder(identifier(graph.values[v].caffe_name, taken))
        value_nodes[v] = env[v].name
    dropped = []
    kept_losses = []
    for layer in graph.layers:
        if layer.type in registry.DATA_LAYERS or layer.type == "Silence":
            continue
        if layer.type in registry.TRAINING_ONLY:
            if training and layer.type in TRAINABLE_LOSSES:
                module, blob_names = _loss_module(layer), []
                kept_losses.extend(layer.tops)
            else:
                dropped.append(f"{layer.name} ({layer.type})")
                continue
        else:
            module, blob_names = registry.get(layer.type).torch(layer, graph)
        _load_blobs(module, layer, blob_names)
        attr = identifier(layer.name, taken)
        names[attr] = layer.name
        root.add_module(attr, module)
        modules[layer.name] = (module, blob_names)
        node = fg.call_module(attr, tuple(env[b] for b in layer.bottoms))
        node.name = identifier(layer.tops[0] if len(layer.tops) == 1 else layer.name, taken) if layer.tops else node.name
        if len(layer.tops) == 1:
            env[layer.tops[0]] = node
            value_nodes[layer.tops[0]] = node.name
        else:
            for i, t in enumerate(layer.tops):
                item = fg.call_function(operator.getitem, (node, i))
                item.name = identifier(t, taken)
                env[t] = item
                value_nodes[t] = item.name
    _share_params(graph, modules)
    if dropped:
        warnings.warn(f"left out training-only layers: {', '.join(dropped)}", stacklevel=2)
    outputs = [o for o in graph.outputs if o in env and (graph.values[o].producer is not None)]
    if training:
        outputs += [t for t in kept_losses if t not in outputs]
    if len(outputs) == 1:
        fg.output(env[outputs[0]])
    else:
        fg.output({graph.values[o].caffe_name: env[o] for o in outputs})
    gm = fx.GraphModule(root, fg, class_name=_class_name(graph.name))
    gm.caffe_names = names
    gm.value_nodes = value_nodes
    gm.input_names = [graph.values[v].caffe_name for v in graph.inputs]
    gm.output_names = [graph.values[o].caffe_name for o in outputs]
    # Caffe layer name -> the state-dict key of each of its blobs, in Caffe's blob order.
    gm.blob_keys = {names[attr]: [f"{attr}.{key}" for key in modules[names[attr]][1]] for attr in names}
    return gm.train(training)


def _share_params(graph: Graph, modules) -> None:
    """Layers sharing a blob by `param { name }` hold the same Parameter object (gradients add up)."""
    for layer in graph.layers:
        if layer.name not in modules:
            continue
        module, names = modules[layer.name]
        for i, spec in enumerate(layer.params):
            if spec.owner is None or spec.owner not in modules or i >= len(names):
                continue
            owner, owner_names = modules[spec.owner]
            if spec.owner_index >= len(owner_names):
                continue
            shared = owner.get_parameter(owner_names[spec.owner_index])
            mine = module.get_parameter(names[i])
            if shared.shape == mine.shape:
                setattr(module, names[i], shared)


def _class_name(name: str) -> str:
    words = re.findall(r"[A-Za-z0-9]+", name or "caffe net")
    out = "".join(w[:1].upper() + w[1:] for w in words) or "CaffeNet"
    return out if not out[0].isdigit() else "Net" + out


# -- the standalone folder ----------------------------------------------------------------------

_HEADER = '''"""{name}: converted from Caffe by caffezoo.

Load with plain PyTorch (no caffezoo needed):

    import model
    net = model.load()          # eval mode, weights from weights.pt beside this file
    out = net({inputs})

Inputs: {input_desc}. Outputs: {output_desc}.
The classes below reproduce Caffe's layer semantics; `{cls}` is the net, its submodules named
after the Caffe layers (see CAFFE_NAMES for the exact Caffe names).
"""
'''


def generate_model_py(gm: fx.GraphModule, graph: Graph) -> str:
    nn_source = inspect.getsource(caffe_nn)
    nn_source = nn_source.split('"""', 2)[2].lstrip("\n") if nn_source.startswith('"""') else nn_source
    cls = type(gm).__name__
    inits = []
    for attr in gm.caffe_names:
        m = getattr(gm, attr)
        inits.append(f"        self.{attr} = {type(m).__name__}(**{m.args!r})")
    forward = gm.code.strip("\n")
    forward = "\n".join(("    " + line) if line.strip() else "" for line in forward.splitlines())
    inputs = ", ".join(gm.input_names)
    shapes = "; ".join(f"{graph.values[v].caffe_name} {tuple(graph.values[v].shape)}" for v in graph.inputs)
    outputs = ", ".join(gm.output_names)
    body = [
        _HEADER.format(name=graph.name or "net", inputs=inputs, input_desc=shapes or "none", output_desc=outputs,
                       cls=cls),
        nn_source.rstrip(),
        "",
        "",
        f"CAFFE_NAMES = {gm.caffe_names!r}",
        "",
        "",
        f"class {cls}(nn.Module):",
        "    def __init__(self):",
        "        super().__init__()",
        *inits,
        "",
        forward,
        "",
        "",
        "def load(weights=None, map_location=\"cpu\"):",
        "    \"\"\"The net in eval mode with its converted weights (weights.pt beside this file by default).\"\"\"",
        "    import os",
        "    net = " + cls + "()",
        "    path = weights or os.path.join(os.path.dirname(os.path.abspath(__file__)), \"weights.pt\")",
        "    net.load_state_dict(torch.load(path, map_location=map_location, weights_only=True))",
        "    return net.eval()",
        "",
    ]
    return "\n".join(body)


def export_folder(gm: fx.GraphModule, graph: Graph, folder: str | os.PathLike) -> str:
    """Write ``model.py`` + ``weights.pt`` into ``folder`` atomically (a temp folder, then rename)."""
    folder = os.fspath(folder)
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(folder) + ".", suffix=".partial", dir=parent)
    try:
        with open(os.path.join(tmp, "model.py"), "w", encoding="utf-8") as f:
            f.write(generate_model_py(gm, graph))
        torch.save(gm.state_dict(), os.path.join(tmp, "weights.pt"))
        if os.path.isdir(folder):
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def run(module: torch.nn.Module, inputs) -> dict[str, np.ndarray]:
    """Run a converted module on numpy inputs; returns {Caffe output name: array}."""
    with torch.no_grad():
        out = module(*[torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) for x in inputs])
    if isinstance(out, dict):
        return {k: v.numpy() for k, v in out.items()}
    return {module.output_names[0]: out.numpy()}
