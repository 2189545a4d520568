"""The PyTorch form of a net, planned without importing torch.

``plan(graph)`` decides everything ``to_pytorch`` and the exported folder share: which layers become
submodules (under valid, unique Python names), what each module is (a ``ModuleSpec``: a class of
``converters.nn`` and its constructor arguments), which state-dict entry holds each Caffe blob, the
variable of every value, and the outputs. ``to_pytorch`` builds modules from it; ``converters.folder``
writes ``model.py`` and ``weights.pt`` from it without torch (so ``zoo convert`` pays for torch only
when it verifies).

Built-in layer implementations describe their module through ``nn_specs()`` (``.Convolution(...)``
gives a spec, not a module); a user's implementation may return a real ``nn.Module`` instead.
"""
from __future__ import annotations

import ast
import functools
import keyword
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

from prototxt.graph import Graph, Layer, NameSet, unique_name

from . import registry
from .specs import ModuleSpec, nn_source, nn_specs, nn_tree  # noqa: F401 - folder.py imports nn_source from here


def identifier(name: str, taken: set[str]) -> str:
    """A valid, unique Python identifier for a Caffe name (inception_3a/1x1 -> inception_3a_1x1).

    ASCII only: Python folds identifiers by NFKC (a layer 'ﬁ' would be the same attribute as 'fi') and
    some word characters (x²) are no identifier characters at all."""
    base = re.sub(r"[^0-9A-Za-z_]", "_", name) or "layer"
    if base[0].isdigit():
        base = "_" + base
    if keyword.iskeyword(base):
        base += "_"
    return unique_name(base, taken)


@functools.lru_cache(maxsize=1)
def model_py_names() -> frozenset[str]:
    """Names model.py defines or imports beside the net's class (nn.py's classes, functions, imports)."""
    names = {"CAFFE_NAMES", "load", "os"}
    for node in nn_tree().body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return frozenset(names)


def class_name(name: str, taken: frozenset[str] = frozenset()) -> str:
    """The net's class in model.py: CamelCase of its name, never one of the names beside it (a net
    called "crop" must not shadow the Crop module)."""
    words = re.findall(r"[A-Za-z0-9]+", name or "caffe net")
    out = "".join(w[:1].upper() + w[1:] for w in words) or "CaffeNet"
    out = out if not out[0].isdigit() else "Net" + out
    while out in model_py_names() or out in taken:
        out += "Net"
    return out


@dataclass
class Step:
    """One Caffe layer as a submodule call: ``tops = self.<attr>(*bottoms)``."""
    attr: str
    layer: Layer
    module: Any                # ModuleSpec, or a user's nn.Module
    blob_names: list[str]      # the module's state-dict entry of each Caffe blob, in Caffe's order
    call: str                  # the variable of the call's result (the top, or the tuple of tops)
    tops: list[str] = field(default_factory=list)  # the variable of each top


@dataclass
class Plan:
    class_name: str
    inputs: list[str]                 # graph values fed in, Caffe's input order
    input_vars: list[str]
    steps: list[Step]
    outputs: list[str]                # graph values returned
    output_names: list[str]           # their Caffe names
    value_vars: dict[str, str]        # graph value -> variable

    @property
    def caffe_names(self) -> dict[str, str]:
        return {s.attr: s.layer.name for s in self.steps}

    def blob_keys(self) -> dict[str, list[str]]:
        """Caffe layer name -> the state-dict key of each of its blobs, in Caffe's blob order."""
        return {s.layer.name: [f"{s.attr}.{b}" for b in s.blob_names] for s in self.steps}

    def shared(self) -> dict[str, str]:
        """State-dict key -> the key of the blob it shares (``param { name }``) where shapes agree."""
        by_layer = {s.layer.name: s for s in self.steps}
        out = {}
        for s in self.steps:
            for i, spec in enumerate(s.layer.params):
                owner = by_layer.get(spec.owner) if spec.owner is not None else None
                if owner is None or i >= len(s.blob_names) or spec.owner_index >= len(owner.blob_names):
                    continue
                if tuple(s.layer.param_shapes[i]) == tuple(owner.layer.param_shapes[spec.owner_index]):
                    out[f"{s.attr}.{s.blob_names[i]}"] = f"{owner.attr}.{owner.blob_names[spec.owner_index]}"
        return out


def plan(graph: Graph, training: bool = False) -> Plan:
    """The PyTorch form of ``graph`` (see the module docstring); checks support and weights first.

    With ``training=True`` the loss and metric layers are kept (their tops become outputs) and data
    layers' label tops are inputs, for `zoo train`.
    """
    registry.check_supported(graph)
    if not training:
        registry.check_weights(graph)
    attrs: set[str] = set()          # submodule names
    taken: set[str] = NameSet({"self"})  # forward()'s variables (NameSet: linear uniquing)
    value_vars: dict[str, str] = {}
    io = None if training else registry.inference_io(graph)
    inputs = list(graph.inputs) if io is None else io.inputs
    for v in inputs:
        value_vars[v] = identifier(graph.values[v].caffe_name, taken)
    input_vars = [value_vars[v] for v in inputs]
    steps: list[Step] = []
    dropped: list[str] = []
    kept_losses: list[str] = []
    for layer in graph.layers:
        if layer.type in registry.DATA_LAYERS:
            continue
        impl = registry.get(layer.type)
        if impl.training_only:
            if not layer.tops:  # Silence: nothing to compute
                continue
            if not (training and impl.has_torch):
                dropped.append(f"{layer.name} ({layer.type})")
                continue
            kept_losses.extend(layer.tops)
        module, blob_names = impl.torch(layer, graph)
        attr = identifier(layer.name, attrs)
        tops = [identifier(graph.values[t].caffe_name, taken) for t in layer.tops]
        call = tops[0] if len(tops) == 1 else identifier(layer.name, taken)
        value_vars.update(zip(layer.tops, tops))
        steps.append(Step(attr, layer, module, list(blob_names), call, tops))
    if io is None:
        outputs = [o for o in graph.outputs if o in value_vars and graph.values[o].producer is not None]
        outputs += [t for t in kept_losses if t not in outputs]
        if dropped:
            warnings.warn(f"left out training-only layers: {', '.join(dropped)}", stacklevel=3)
    else:
        outputs = io.outputs
        if io.dropped:
            warnings.warn(io.note(graph), stacklevel=3)
    return Plan(class_name(graph.name), inputs, input_vars, steps, outputs,
                [graph.values[o].caffe_name for o in outputs], value_vars)
