"""Layer type -> implementation. Families register themselves with ``@register_layer``.

An implementation gives, for one Caffe layer of its type:
- ``torch(layer, graph)``: a ``(module, blob_names)`` pair: the module (its forward takes the bottoms
  and returns the top, or a tuple of tops) and, for each Caffe blob of the layer, the state-dict entry
  of the module that holds it. Built-ins describe a module of ``converters.nn`` with
  ``converters.plan.nn_specs()`` (no torch import); a user's implementation may return any
  ``nn.Module`` (the exported model.py imports its class, so define it at a module's top level);
  losses and metrics are implementations too (``converters.layers.loss``), kept for training only;
- ``onnx(layer, ctx)``: the ONNX nodes computing the tops from the bottoms (see ``converters.onnx``);
- optionally ``shape``: a shape rule for types the ``prototxt`` package does not know (fork or
  custom layers), registered with ``prototxt.shapes``;
- the type's facts, as class attributes (see ``LayerImpl``): the rest of the toolkit asks the
  implementation (training-only, deterministic, statistics blobs, per-channel affine for folding,
  batch handling) instead of keeping lists of type names.
Users add types from their own code with ``register_layer`` or through the ``caffezoo.layers``
entry-point group (each entry point names a module that registers on import).
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from prototxt import shapes
from prototxt.errors import GraphError, UnsupportedLayers
from prototxt.graph import Graph, Layer

ENTRY_POINT_GROUP = "caffezoo.layers"

# Data layers become graph inputs.
DATA_LAYERS = shapes.DATA_TYPES


class PluginWarning(UserWarning):
    """A `caffezoo.layers` entry point that failed to load (its layer types stay unsupported)."""


@dataclass
class InferenceIO:
    """The inputs and outputs of a net converted for inference (graph values, Caffe's order)."""
    inputs: list[str]
    outputs: list[str]
    dropped: list[str] = field(default_factory=list)  # "name (Type)" of each training-only layer left out
    fed: list[str] = field(default_factory=list)      # outputs only because they fed a left-out layer
    labels: list[str] = field(default_factory=list)   # inputs left out: they fed only left-out layers

    def note(self, graph: Graph) -> Optional[str]:
        """One line saying what was left out and what became an output instead, or None."""
        if not self.dropped:
            return None
        text = f"left out training-only layers: {', '.join(self.dropped)}"
        if self.fed:
            names = ", ".join(graph.values[v].caffe_name for v in self.fed)
            text += f"; the blobs they were fed are outputs instead: {names}"
        if self.labels:
            text += f"; inputs only they read are left out: {', '.join(graph.values[v].caffe_name for v in self.labels)}"
        return text


def inference_io(graph: Graph) -> InferenceIO:
    """What a net converted for inference takes and gives. Losses, Accuracy and Silence are left out,
    with their tops; the blobs fed to the losses and Accuracy become outputs instead (a train/test net's
    fc8, which fed SoftmaxWithLoss and Accuracy, is what its user wants out of it), except net inputs
    (labels), and inputs that fed only left-out layers are no inputs."""
    left_out = [l for l in graph.layers if training_only(l.type)]
    io = InferenceIO([], [o for o in graph.outputs if graph.values[o].producer is not None
                          and not training_only(graph.layer(graph.values[o].producer).type)],
                     [f"{l.name} ({l.type})" for l in left_out])
    for layer in left_out:
        if layer.type == "Silence":  # it discards its bottoms on purpose
            continue
        io.fed += [b for b in layer.bottoms if graph.values[b].producer is not None
                   and b not in io.outputs and b not in io.fed]
    io.outputs = sorted(io.outputs + io.fed, key=lambda v: graph.values[v].caffe_name)  # Caffe's std::set order
    if not io.outputs:
        where = f"{graph.source}: " if graph.source else ""
        raise GraphError(f"{where}the net computes nothing to output for inference (every blob its layers "
                         f"produce is read by another layer or by a left-out layer)")
    dropped = {l.name for l in left_out}
    for v in graph.inputs:
        consumers = graph.values[v].consumers
        (io.labels if consumers and all(c in dropped for c in consumers) else io.inputs).append(v)
    return io


class LayerImpl:
    """Base class of a layer implementation; subclasses set ``types``, override methods and set the
    facts below that differ from the defaults."""

    types: Sequence[str] = ()
    # Losses, metrics and Silence: left out of a deploy conversion (with a note), kept by `zoo train`.
    training_only: bool = False
    # No parameters, and the output a fixed function of the inputs (not Dropout, not BatchNorm, whose
    # training changes them): finetuning computes such a layer with the frozen part before it.
    deterministic: bool = False
    # Its blobs are statistics its forward pass updates (BatchNorm), never learned (lr_mult 0).
    statistics: bool = False
    # Convolution / InnerProduct: a per-channel affine after it (``affine``) folds into its weights.
    folds_affine: bool = False
    # The ONNX model keeps a symbolic batch through it (not the recurrent layers).
    dynamic_batch: bool = True
    # Its module runs at a batch other than the one the net was shaped for (not Reshape's fixed dims).
    any_batch: bool = True
    # It has a PyTorch form (a training-only layer may have none yet: zoo train refuses it).
    has_torch: bool = True

    def torch(self, layer: Layer, graph: Graph):  # -> tuple[ModuleSpec | nn.Module, list[str]]
        raise NotImplementedError

    def onnx(self, layer: Layer, ctx) -> None:
        raise NotImplementedError

    def affine(self, layer: Layer):
        """(a, b) per channel when the layer computes y = a*x + b over axis 1 with its stored blobs (it
        can fold into the Convolution or InnerProduct before it); None otherwise."""
        return None

    def random_at_test(self, layer: Layer) -> bool:
        """Whether its output at inference is random by design (a fresh sample each forward, as Bayesian
        SegNet's Monte Carlo dropout): two backends, or two runs, agree only on average."""
        return False

    def serves(self, layer: Layer) -> bool:
        """Whether this implementation handles this layer of its type (the built-in 'Python' one serves
        only the well-known Python layers)."""
        return True


_REGISTRY: dict[str, LayerImpl] = {}
_discovered = False


def register_layer(*types: str, replace: bool = False, shape: Optional[Callable] = None):
    """Class decorator: register a LayerImpl subclass for Caffe layer ``types``.

    A type registered twice is an error unless ``replace=True`` (for a user overriding a built-in).
    ``shape`` is a prototxt shape rule ``(layer_param, bottom_shapes) -> ShapeResult`` for types
    the prototxt package does not know.
    """
    def deco(cls):
        impl = cls() if isinstance(cls, type) else cls
        for t in types or impl.types:
            if t in _REGISTRY and not replace:
                raise ValueError(f"layer type '{t}' is already registered by {type(_REGISTRY[t]).__name__}; "
                                 f"pass replace=True to override it")
            _REGISTRY[t] = impl
            if shape is not None:
                shapes.register_shape_rule(t, replace=replace)(shape)
        return cls
    return deco


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    from . import layers
    for info in pkgutil.iter_modules(layers.__path__):
        importlib.import_module(f"{layers.__name__}.{info.name}")
    from importlib.metadata import entry_points
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as exc:  # a broken plugin must not break the built-ins: said, then left out
            warnings.warn(PluginWarning(f"layer plugin '{ep.name}' ({ep.value}) failed to load: "
                                        f"{type(exc).__name__}: {exc}; its layer types stay unsupported"),
                          stacklevel=2)


def get(layer_type: str) -> LayerImpl:
    _discover()
    try:
        return _REGISTRY[layer_type]
    except KeyError:
        close = difflib.get_close_matches(layer_type, _REGISTRY, n=3)
        raise KeyError(f"no implementation for layer type '{layer_type}'"
                       + (f"; did you mean {', '.join(close)}?" if close else "")) from None


def registered_types() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def implementation(layer_type: str) -> Optional[LayerImpl]:
    """The implementation of a type, or None (a data layer, or a type nobody registered)."""
    _discover()
    return _REGISTRY.get(layer_type)


def random_layers(graph: Graph) -> list[str]:
    """The layers whose output at inference is random by design, in net order."""
    out = []
    for layer in graph.layers:
        impl = implementation(layer.type)
        if impl is not None and impl.serves(layer) and impl.random_at_test(layer):
            out.append(layer.name)
    return out


def random_values(graph: Graph) -> set[str]:
    """The values a random layer (``random_layers``) writes, and every value computed from one."""
    tainted: set[str] = set()
    sources = set(random_layers(graph))
    for layer in graph.layers:
        if layer.name in sources or tainted & set(layer.bottoms):
            tainted.update(layer.tops)
    return tainted


def training_only(layer_type: str) -> bool:
    impl = implementation(layer_type)
    return impl is not None and impl.training_only


PLUGIN_HINT = ("implement them with converters.register_layer (or a 'caffezoo.layers' entry point); "
               "see the README's 'Custom layers'")


def check_weights(graph: Graph) -> None:
    """Refuse a graph whose weighted layers have no weights (a deploy conversion needs them all)."""
    missing = [l.name for l in graph.layers if l.param_shapes and not l.blobs]
    if missing:
        raise ValueError(f"no weights for layers {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; "
                         f"load the net with its .caffemodel")


def check_supported(graph: Graph) -> None:
    """Raise UnsupportedLayers listing EVERY layer type of the graph that has no implementation."""
    _discover()
    missing: dict[str, list[str]] = {}
    for layer in graph.layers:
        if (layer.type in _REGISTRY and _REGISTRY[layer.type].serves(layer)) or layer.type in DATA_LAYERS:
            continue
        missing.setdefault(layer.type, []).append(layer.name)
    if "Python" in missing:
        names = missing.pop("Python")
        python = [graph.layer(n).proto.python_param for n in names]
        detail = ", ".join(f"'{n}' ({p.module}.{p.layer})" for n, p in zip(names, python))
        hint = ("Python layers name user code, which is never imported or run implicitly; register an "
                "implementation for type 'Python' if you trust that code")
        if missing:
            hint = f"also Python layers {detail}: {hint}; for the others: {PLUGIN_HINT}"
            raise UnsupportedLayers(missing, hint=hint, source=graph.source)
        raise UnsupportedLayers({"Python": names}, hint=f"{detail}: {hint}", source=graph.source)
    if missing:
        raise UnsupportedLayers(missing, hint=PLUGIN_HINT, source=graph.source)
    graph.require_shapes()
