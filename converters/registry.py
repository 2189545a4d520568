"""Layer type -> implementation. Families register themselves with ``@register_layer``.

An implementation gives, for one Caffe layer of its type:
- ``torch(layer, graph)``: a ``(module, blob_names)`` pair: the module (its forward takes the bottoms
  and returns the top, or a tuple of tops) and, for each Caffe blob of the layer, the state-dict entry
  of the module that holds it. Built-ins describe a module of ``converters.nn`` with
  ``converters.plan.nn_specs()`` (no torch import); a user's implementation may return any
  ``nn.Module`` (the exported model.py imports its class, so define it at a module's top level);
- ``onnx(layer, ctx)``: the ONNX nodes computing the tops from the bottoms (see ``converters.onnx``);
- optionally ``shape``: a shape rule for types the ``prototxt`` package does not know (fork or
  custom layers), registered with ``prototxt.shapes``.
Users add types from their own code with ``register_layer`` or through the ``caffezoo.layers``
entry-point group (each entry point names a module that registers on import).
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil
from typing import Callable, Optional, Sequence

from prototxt import shapes
from prototxt.errors import UnsupportedLayers
from prototxt.graph import Graph, Layer

ENTRY_POINT_GROUP = "caffezoo.layers"

# Types that only train or measure: dropped from deploy conversion with a note.
TRAINING_ONLY = shapes.LOSS_TYPES | {"Silence"}
# Data layers become graph inputs.
DATA_LAYERS = shapes.DATA_TYPES


class LayerImpl:
    """Base class of a layer implementation; subclasses set ``types`` and override methods."""

    types: Sequence[str] = ()

    def torch(self, layer: Layer, graph: Graph):  # -> tuple[ModuleSpec | nn.Module, list[str]]
        raise NotImplementedError

    def onnx(self, layer: Layer, ctx) -> None:
        raise NotImplementedError

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
    try:
        from importlib.metadata import entry_points
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            ep.load()
    except Exception:  # a broken plugin must not break the built-ins; it shows up as unsupported
        pass


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


PLUGIN_HINT = ("implement them with converters.register_layer (or a 'caffezoo.layers' entry point); "
               "see the README's 'Custom layers'")


def check_supported(graph: Graph, training: bool = False) -> None:
    """Raise UnsupportedLayers listing EVERY layer type of the graph that has no implementation."""
    _discover()
    missing: dict[str, list[str]] = {}
    for layer in graph.layers:
        if (layer.type in _REGISTRY and _REGISTRY[layer.type].serves(layer)) or layer.type in DATA_LAYERS:
            continue
        if layer.type in TRAINING_ONLY and not training:
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
