"""Graph -> torch.fx.GraphModule whose submodules are named after the Caffe layers.

Calling convention: inputs in Caffe's input order (NCHW float32); one output -> a tensor, several ->
a dict of Caffe output blob names (Caffe's order). The module is built from ``converters.plan``, which
the standalone folder (``converters.folder``) is written from too.
"""
from __future__ import annotations

import operator
import os

import numpy as np
import torch
import torch.fx as fx

from prototxt.graph import Graph

from .blobs import load_blobs
from .plan import ModuleSpec, plan


def to_pytorch(graph: Graph, training: bool = False) -> fx.GraphModule:
    """The net as a torch.fx.GraphModule (eval mode unless ``training``).

    With ``training=True`` the loss and metric layers are kept (their tops become outputs) and data
    layers' label tops are inputs, for `zoo train`.
    """
    p = plan(graph, training=training)
    fg = fx.Graph()
    root = torch.nn.Module()
    env: dict[str, fx.Node] = {}
    for v, var in zip(p.inputs, p.input_vars):
        env[v] = fg.placeholder(var)
    for step in p.steps:
        module = step.module.build() if isinstance(step.module, ModuleSpec) else step.module
        load_blobs(module, step.layer, step.blob_names)
        root.add_module(step.attr, module)
        node = fg.call_module(step.attr, tuple(env[b] for b in step.layer.bottoms))
        if not step.layer.tops:
            continue
        node.name = step.call
        if len(step.layer.tops) == 1:
            env[step.layer.tops[0]] = node
        else:
            for i, (t, var) in enumerate(zip(step.layer.tops, step.tops)):
                item = fg.call_function(operator.getitem, (node, i))
                item.name = var
                env[t] = item
    for key, owner in p.shared().items():
        _share(root, key, owner)
    if len(p.outputs) == 1:
        fg.output(env[p.outputs[0]])
    else:
        fg.output({name: env[o] for o, name in zip(p.outputs, p.output_names)})
    gm = fx.GraphModule(root, fg, class_name=p.class_name)
    gm.caffe_names = p.caffe_names
    gm.value_nodes = {v: node.name for v, node in env.items()}
    gm.input_names = [graph.values[v].caffe_name for v in p.inputs]
    gm.output_names = p.output_names
    gm.blob_keys = p.blob_keys()
    return gm.train(training)


def _share(root: torch.nn.Module, key: str, owner_key: str) -> None:
    """Layers sharing a blob by `param { name }` hold the same Parameter object (gradients add up)."""
    holder, _, attr = key.rpartition(".")
    setattr(root.get_submodule(holder), attr, root.get_parameter(owner_key))


def export_folder(gm: fx.GraphModule, graph: Graph, folder: str | os.PathLike) -> str:
    """Write ``model.py`` + ``weights.pt`` of ``gm`` (a module of ``to_pytorch(graph)``, e.g. trained)
    into ``folder`` atomically; see ``converters.folder`` (which does the same from the graph alone)."""
    from .folder import export_folder as write
    arrays: dict[tuple, np.ndarray] = {}
    state = {}
    for key, tensor in gm.state_dict().items():
        tensor = tensor.detach().cpu()
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if ident not in arrays:  # tied parameters: one storage in the file, as torch.save does
            arrays[ident] = tensor.numpy()
        state[key] = arrays[ident]
    return write(graph, folder, state=state)


def run(module: torch.nn.Module, inputs) -> dict[str, np.ndarray]:
    """Run a converted module on numpy inputs; returns {Caffe output name: array}."""
    with torch.no_grad():
        out = module(*[torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) for x in inputs])
    if isinstance(out, dict):  # detach: a Parameter layer's top is its parameter itself
        return {k: v.detach().numpy() for k, v in out.items()}
    return {module.output_names[0]: out.detach().numpy()}
