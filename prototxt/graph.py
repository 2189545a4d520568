"""The intermediate graph: Caffe's layers after phase filtering, in Caffe's order, with shapes.

Caffe names blobs, and one name can hold several values over time (in-place layers such as
``conv1 -> relu1 -> conv1``). The graph gives each value a unique name so that converters can treat
the net as plain data flow: the LAST value written under a Caffe name keeps that name (that is what
Caffe's ``net.blobs[name]`` shows after a forward pass), earlier ones are called ``name@layer``
after the layer that wrote them. Net inputs always keep their Caffe name.
"""
from __future__ import annotations

import difflib
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

from . import caffe_pb2, shapes
from .errors import (GraphError, InputShapeRequired, MissingBottomError, ShapeError, SizeLimitError, UnsupportedLayers,
                     WeightsError)
from .limits import BLOB_ENV, format_bytes, max_blob_bytes
from .shapes import Shape
from .text import parse, read_text
from .upgrade import upgrade_net, upgrade_solver

Phase = caffe_pb2.Phase


class DroppedLayerWarning(UserWarning):
    """A loss/metric layer whose inputs do not exist in the chosen phase was left out."""


@dataclass
class ParamSpec:
    """A learnable blob of a layer as the solver sees it (after sharing is resolved)."""
    name: str            # the `param { name }`, or "" when unshared
    lr_mult: float = 1.0
    decay_mult: float = 1.0
    owner: Optional[str] = None    # (layer name) of the owner when this layer shares it
    owner_index: int = 0           # index of the blob in the owner layer


@dataclass
class Layer:
    name: str
    type: str
    bottoms: list[str]               # unique value names
    tops: list[str]                  # unique value names
    caffe_bottoms: list[str]
    caffe_tops: list[str]
    proto: caffe_pb2.LayerParameter  # the layer as written (upgraded), without blobs
    index: int                       # position in the filtered net
    param_shapes: list[Shape] = field(default_factory=list)
    macs: int = 0
    params: list[ParamSpec] = field(default_factory=list)
    blobs: list[np.ndarray] = field(default_factory=list)  # attached weights, in the prototxt's shapes

    @property
    def in_place(self) -> bool:
        return any(t in self.caffe_bottoms for t in self.caffe_tops)

    @property
    def param_count(self) -> int:
        return sum(math.prod(s) for i, s in enumerate(self.param_shapes)
                   if i >= len(self.params) or self.params[i].owner is None)


@dataclass
class Value:
    name: str                       # unique
    caffe_name: str
    shape: Optional[Shape]
    producer: Optional[str]         # layer name; None for a net input
    consumers: list[str] = field(default_factory=list)


@dataclass
class Graph:
    name: str
    layers: list[Layer]
    values: dict[str, Value]
    inputs: list[str]               # value names of net inputs (Input / data layer tops), in Caffe's order
    outputs: list[str]              # value names no later layer consumes, in Caffe's order (by name)
    proto: caffe_pb2.NetParameter   # the upgraded, filtered net (no blobs)
    phase: str = "test"
    source: str = ""
    upgrades: list[str] = field(default_factory=list)
    unknown_types: dict[str, list[str]] = field(default_factory=dict)
    shape_problem: Optional[str] = None  # why some shapes are unknown (e.g. a data layer's source)
    weights_report: Optional["WeightsReport"] = None

    # -- lookups ---------------------------------------------------------------------------
    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        close = difflib.get_close_matches(name, [l.name for l in self.layers], n=3)
        raise KeyError(f"no layer named '{name}'" + (f"; did you mean {', '.join(close)}?" if close else ""))

    def final_value(self, caffe_name: str) -> str:
        """The unique value name of what Caffe's ``net.blobs[caffe_name]`` holds after a forward pass."""
        last = None
        for v in self.values.values():
            if v.caffe_name == caffe_name:
                last = v.name
        if last is None:
            raise KeyError(f"no blob named '{caffe_name}'")
        return last

    def caffe_blobs(self) -> dict[str, Optional[Shape]]:
        """Caffe's ``net.blobs``: every Caffe blob name with its final shape, in creation order."""
        out: dict[str, Optional[Shape]] = {}
        for v in self.values.values():
            out[v.caffe_name] = v.shape
        return out

    @property
    def input_shapes(self) -> dict[str, Optional[Shape]]:
        return {self.values[v].caffe_name: self.values[v].shape for v in self.inputs}

    @property
    def params_total(self) -> int:
        return sum(l.param_count for l in self.layers)

    @property
    def macs_total(self) -> int:
        return sum(l.macs for l in self.layers)

    def require_shapes(self) -> None:
        """Raise the one clear error that explains why this net's shapes are not all known."""
        if self.unknown_types:
            raise UnsupportedLayers(self.unknown_types, source=self.source,
                                    hint="these are fork or custom layer types; register an implementation "
                                         "(converters.register_layer) to use them")
        if self.shape_problem:
            raise InputShapeRequired(self.shape_problem)


class NameSet(set):
    """A set of names that hands out unique ones in linear time: it remembers, per base, the suffix
    to try next, where a plain set would try ``base_2``, ``base_3``... from the start each time
    (20,000 in-place layers of one name took a minute)."""

    def __init__(self, names: Iterable[str] = ()):
        super().__init__(names)
        self._next: dict[tuple[str, str], int] = {}

    def unique(self, base: str, sep: str = "_") -> str:
        k = self._next.get((base, sep), 1)  # names are never removed: every lower suffix is still taken
        name = base if k == 1 else f"{base}{sep}{k}"
        while name in self:
            k += 1
            name = f"{base}{sep}{k}"
        self._next[(base, sep)] = k + 1
        self.add(name)
        return name


def unique_name(base: str, taken: set[str], sep: str = "_") -> str:
    """``base``, or ``base<sep>2``, ``base<sep>3``... whichever is not taken yet; marks it taken.
    Linear over many calls when ``taken`` is a NameSet, quadratic for a plain set."""
    if isinstance(taken, NameSet):
        return taken.unique(base, sep)
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}{sep}{k}"
    taken.add(name)
    return name


# -- net state rules ---------------------------------------------------------------------------

def _state_meets_rule(state: caffe_pb2.NetState, rule: caffe_pb2.NetStateRule) -> bool:
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    if any(s not in state.stage for s in rule.stage):
        return False
    return not any(s in state.stage for s in rule.not_stage)


def layer_included(layer: caffe_pb2.LayerParameter, state: caffe_pb2.NetState) -> bool:
    if layer.include and layer.exclude:
        raise GraphError(f"layer '{layer.name}' has both include and exclude rules; use one of them")
    if layer.include:
        return any(_state_meets_rule(state, r) for r in layer.include)
    return not any(_state_meets_rule(state, r) for r in layer.exclude)


def net_state(net: caffe_pb2.NetParameter, phase: str, stages: Sequence[str] = (),
              level: Optional[int] = None) -> caffe_pb2.NetState:
    state = caffe_pb2.NetState()
    state.CopyFrom(net.state)
    state.phase = _phase(phase)
    if level is not None:
        state.level = level
    state.stage.extend(s for s in stages if s not in state.stage)
    return state


def _phase(phase: str | int) -> int:
    if isinstance(phase, int):
        return phase
    try:
        return Phase.Value(phase.upper())
    except ValueError:
        raise GraphError(f"phase must be 'train' or 'test', not '{phase}'") from None


# -- building ----------------------------------------------------------------------------------

def build_graph(net: caffe_pb2.NetParameter, *, phase: str = "test", stages: Sequence[str] = (),
                level: Optional[int] = None, input_shapes: Optional[Mapping[str, Sequence[int]]] = None,
                source: str = "", upgrades: Sequence[str] = (), max_bytes: Optional[int] = None) -> Graph:
    """A Graph from an already upgraded NetParameter (blobs in it are ignored; see attach_weights).

    A blob (parameter or top) larger than ``max_bytes`` as float32 (default ``$ZOO_MAX_BYTES``, else
    4 GiB) is refused with a SizeLimitError before anything is allocated."""
    state = net_state(net, phase, stages, level)
    filtered = caffe_pb2.NetParameter()
    filtered.CopyFrom(net)
    del filtered.layer[:]
    for layer in net.layer:
        if layer_included(layer, state):
            kept = filtered.layer.add()
            kept.CopyFrom(layer)
            del kept.blobs[:]
    filtered.state.CopyFrom(state)
    graph = _wire(filtered, source)
    graph.phase = Phase.Name(state.phase).lower()
    graph.upgrades = list(upgrades)
    try:
        _resolve_params(graph)
        _infer_shapes(graph, dict(input_shapes or {}), max_blob_bytes(max_bytes))
    except GraphError as exc:
        # Shape rules know the layer, not the file: name the file too, as every other error does.
        if source and not str(exc).startswith(f"{source}:"):
            raise type(exc)(f"{source}: {exc}") from None
        raise
    return graph


def _wire(net: caffe_pb2.NetParameter, source: str) -> Graph:
    where = f"{source}: " if source else ""
    current: dict[str, str] = {}          # caffe name -> unique name of its latest value
    writes: dict[str, int] = {}           # caffe name -> number of values written under it
    produced_by: dict[str, list[int]] = {}
    for i, lp in enumerate(net.layer):
        for t in lp.top:
            produced_by.setdefault(t, []).append(i)
    # Final writer of each caffe name: that value keeps the name.
    final_writer: dict[str, int] = {name: idx[-1] for name, idx in produced_by.items()}
    values: dict[str, Value] = {}
    layers: list[Layer] = []
    inputs: list[str] = []
    used_names = NameSet()

    def new_value(caffe_name: str, layer_index: int, layer_name: str, is_input: bool) -> str:
        if (is_input and caffe_name not in current) or final_writer.get(caffe_name) == layer_index:
            name = caffe_name
            if name in used_names:  # an input rewritten later by an in-place layer
                name = f"{caffe_name}@{layer_name}"
        else:
            name = f"{caffe_name}@{layer_name}"
        return unique_name(name, used_names, sep="#")

    for i, lp in enumerate(net.layer):
        name_of_layer = lp.name or f"{lp.type.lower()}_{i + 1}"  # Caffe allows unnamed layers
        if lp.type in shapes.TRAINING_ONLY_TYPES and any(b not in current and b not in produced_by for b in lp.bottom):
            missing = [b for b in lp.bottom if b not in current]
            warnings.warn(DroppedLayerWarning(
                f"{where}dropped {lp.type} layer '{name_of_layer}': its bottom {', '.join(missing)} is produced "
                f"by no layer in this phase (a training-only layer left in the net)"), stacklevel=3)
            continue
        bottoms = []
        for j, b in enumerate(lp.bottom):
            if b not in current:
                later = [net.layer[k].name for k in produced_by.get(b, []) if k > i]
                if later:
                    if _depends_on(net, produced_by, producer=produced_by[b][-1], target=i):
                        raise GraphError(f"{where}layer '{lp.name}': the net has a cycle through blob '{b}' "
                                         f"(produced by '{later[0]}', which depends on '{lp.name}')")
                    raise GraphError(f"{where}layer '{lp.name}' uses blob '{b}' before layer '{later[0]}' "
                                     f"produces it; Caffe runs layers in file order: move '{later[0]}' above it")
                close = difflib.get_close_matches(b, list(current), n=3)
                hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
                raise MissingBottomError(f"{where}layer '{lp.name}' ({lp.type}): unknown bottom blob '{b}' "
                                         f"(bottom {j}){hint}", layer=lp.name, bottom=b)
            bottoms.append(current[b])
        tops = []
        is_input_layer = lp.type in shapes.DATA_TYPES
        for j, t in enumerate(lp.top):
            in_place = j < len(lp.bottom) and lp.bottom[j] == t
            if t in current and not in_place:
                other = values[current[t]].producer
                by = f"layer '{other}'" if other else "a net input"
                raise GraphError(f"{where}layer '{lp.name}': top blob '{t}' is already produced by {by} and this "
                                 f"is not an in-place use (top {j} must equal bottom {j}); rename the top")
            if t in lp.top[:j]:
                raise GraphError(f"{where}layer '{lp.name}': top blob '{t}' is listed twice")
            name = new_value(t, i, name_of_layer, is_input_layer)
            values[name] = Value(name, t, None, None if is_input_layer else lp.name)
            current[t] = name
            writes[t] = writes.get(t, 0) + 1
            tops.append(name)
            if is_input_layer:
                inputs.append(name)
        proto = caffe_pb2.LayerParameter()
        proto.CopyFrom(lp)
        layers.append(Layer(name_of_layer, lp.type, bottoms, tops, list(lp.bottom), list(lp.top), proto, i))
        for b in bottoms:
            values[b].consumers.append(name_of_layer)
    consumed = {b for l in layers for b in l.bottoms}
    outputs = [v for l in layers for v in l.tops if v not in consumed]
    outputs.sort(key=lambda v: values[v].caffe_name)  # Caffe keeps its outputs in a std::set: sorted by name
    return Graph(net.name, layers, values, inputs, outputs, net, source=source)


def _depends_on(net, produced_by, producer: int, target: int) -> bool:
    """Whether layer ``producer`` (transitively) needs a top of layer ``target``."""
    seen, stack = set(), [producer]
    targets = set(net.layer[target].top)
    while stack:
        i = stack.pop()
        if i in seen:
            continue
        seen.add(i)
        for b in net.layer[i].bottom:
            if b in targets:
                return True
            stack.extend(produced_by.get(b, []))
    return False


def _resolve_params(graph: Graph) -> None:
    """ParamSpecs per layer with sharing by ``param { name }`` resolved as Caffe's Net::AppendParam."""
    owners: dict[str, tuple[str, int]] = {}
    mults: dict[str, list] = {}  # param name -> [lr_mult or None, decay_mult or None]
    for layer in graph.layers:
        for i, spec in enumerate(layer.proto.param):
            if not spec.name:
                continue
            if spec.name not in owners:
                owners[spec.name] = (layer.name, i)
                mults[spec.name] = [None, None]
            m = mults[spec.name]
            for k, f in enumerate(("lr_mult", "decay_mult")):
                if spec.HasField(f):
                    if m[k] is not None and m[k] != getattr(spec, f):
                        raise GraphError(f"layer '{layer.name}': shared param '{spec.name}' has {f} "
                                         f"{getattr(spec, f)} but another user gives {m[k]}; they must match")
                    m[k] = getattr(spec, f)
    for layer in graph.layers:
        layer.params = []
        for i, spec in enumerate(layer.proto.param):
            if spec.name:
                lr, decay = mults[spec.name]
                owner, idx = owners[spec.name]
                layer.params.append(ParamSpec(spec.name, 1.0 if lr is None else lr, 1.0 if decay is None else decay,
                                              None if owner == layer.name and idx == i else owner, idx))
            else:
                layer.params.append(ParamSpec("", spec.lr_mult, spec.decay_mult))


def _infer_shapes(graph: Graph, overrides: dict[str, Sequence[int]], max_bytes: int) -> None:
    where = f"{graph.source}: " if graph.source else ""
    known_inputs = set()
    for layer in graph.layers:
        rule = shapes.shape_rule(layer.type)
        if rule is None:
            graph.unknown_types.setdefault(layer.type, []).append(layer.name)
            continue
        bottom_shapes = [graph.values[b].shape for b in layer.bottoms]
        if any(s is None for s in bottom_shapes):
            continue
        if layer.type in shapes.DATA_TYPES and all(t in overrides for t in layer.caffe_tops[:1]):
            result = _overridden_input(layer, overrides)
        else:
            try:
                result = shapes.infer(layer.proto, bottom_shapes)
            except shapes.UnknownLayer:
                graph.unknown_types.setdefault(layer.type, []).append(layer.name)
                continue
            except shapes.UnknownInputShape as exc:
                tops = ", ".join(layer.caffe_tops)
                if graph.shape_problem is None:
                    graph.shape_problem = (
                        f"{where}data layer '{layer.name}' ({layer.type}): {exc}; give the shape with "
                        f"--input-shape {layer.caffe_tops[0]}=N,C,H,W (Python: input_shapes={{'{layer.caffe_tops[0]}': "
                        f"(N, C, H, W)}}) for {tops}")
                continue
            if layer.type in shapes.DATA_TYPES:
                for t, s in zip(layer.caffe_tops, result.tops):
                    if t in overrides:
                        s = tuple(overrides[t])
            result.tops = [tuple(overrides.get(t, s)) if layer.type in shapes.DATA_TYPES else s
                           for t, s in zip(layer.caffe_tops, result.tops)]
        if len(result.tops) != len(layer.tops):
            raise ShapeError(f"{where}layer '{layer.name}' ({layer.type}) has {len(layer.tops)} tops but produces "
                             f"{len(result.tops)} outputs")
        _check_sizes(layer, result, max_bytes)
        for v, s in zip(layer.tops, result.tops):
            graph.values[v].shape = tuple(int(d) for d in s)
        layer.param_shapes = [tuple(int(d) for d in p) for p in result.params]
        layer.macs = int(result.macs)
        if layer.type in shapes.DATA_TYPES:
            known_inputs.update(layer.caffe_tops)
    unknown = set(overrides) - known_inputs - {graph.values[v].caffe_name for v in graph.inputs}
    if unknown:
        names = ", ".join(graph.values[v].caffe_name for v in graph.inputs)
        raise GraphError(f"{where}no net input named {', '.join(sorted(unknown))}; the inputs are: {names}")
    _check_shared_shapes(graph)


_WEIGHTED = {"Convolution", "Deconvolution", "InnerProduct", "Embed"}  # blob 0 weights, blob 1 bias


def _check_sizes(layer: Layer, result: shapes.ShapeResult, max_bytes: int) -> None:
    """Refuse a parameter or top blob larger than ``max_bytes`` as float32, before anyone allocates it."""
    named = [(f"{('weight', 'bias')[i]} blob" if layer.type in _WEIGHTED and i < 2 else f"parameter blob {i}", s)
             for i, s in enumerate(result.params)]
    named += [(f"top '{t}'", s) for t, s in zip(layer.caffe_tops, result.tops)]
    for what, shape in named:
        if any(d < 0 for d in shape):
            raise ShapeError(f"layer '{layer.name}' ({layer.type}): its {what} has a negative dimension "
                             f"({_shapes([shape])})")
        need = math.prod(shape) * 4
        if need > max_bytes:
            raise SizeLimitError(
                f"layer '{layer.name}' ({layer.type}): its {what} {_shapes([shape])} would need "
                f"{format_bytes(need)} as float32, above the limit of {format_bytes(max_bytes)} per blob; if the net "
                f"really is this large, raise the limit with {BLOB_ENV} (e.g. {BLOB_ENV}={-(-need >> 30)}G) or "
                f"load_net(..., max_bytes=...)")


def _overridden_input(layer: Layer, overrides: dict[str, Sequence[int]]) -> shapes.ShapeResult:
    tops = []
    for t in layer.caffe_tops:
        if t in overrides:
            dims = tuple(int(d) for d in overrides[t])
            if any(d < 0 or d > 1 << 31 for d in dims) or math.prod(dims) > 1 << 40:
                raise ShapeError(f"input shape {dims} for '{t}' has a negative or absurd dimension")
            tops.append(dims)
        elif len(tops) and layer.type != "Input":
            tops.append((tops[0][0],))  # a data layer's label: one per item
        else:
            raise InputShapeRequired(f"data layer '{layer.name}': give a shape for '{t}' too "
                                     f"(--input-shape {t}=N,C,H,W)")
    return shapes.ShapeResult(tops)


def _check_shared_shapes(graph: Graph) -> None:
    by_name = {l.name: l for l in graph.layers}
    for layer in graph.layers:
        for i, spec in enumerate(layer.params):
            if spec.owner is None or i >= len(layer.param_shapes):
                continue
            owner = by_name[spec.owner]
            if spec.owner_index >= len(owner.param_shapes):
                continue
            mine, theirs = layer.param_shapes[i], owner.param_shapes[spec.owner_index]
            strict = layer.proto.param[i].share_mode == caffe_pb2.ParamSpec.STRICT
            if (mine != theirs) if strict else (math.prod(mine) != math.prod(theirs)):
                raise ShapeError(f"layer '{layer.name}': shared param '{spec.name}' has shape {mine} but its owner "
                                 f"'{owner.name}' has {theirs}")


# -- files -------------------------------------------------------------------------------------

def read_net(path: os.PathLike | str, max_prototxt_bytes: Optional[int] = None
             ) -> tuple[caffe_pb2.NetParameter, list[str]]:
    """Parse and upgrade a net .prototxt (also a solver file with an inline net); a file with no layers
    is refused (an empty file, or some other text file, parses as an empty net)."""
    path = str(path)
    text = read_text(path, max_prototxt_bytes)
    from .errors import PrototxtSyntaxError
    try:
        net = parse(text, caffe_pb2.NetParameter(), path)
    except PrototxtSyntaxError as first:
        try:
            solver = parse(text, caffe_pb2.SolverParameter(), path)
        except PrototxtSyntaxError:
            raise first from None
        if solver.HasField("net_param"):
            net = solver.net_param
        elif solver.HasField("train_net_param"):
            net = solver.train_net_param
        else:
            raise GraphError(f"{path}: this is a solver file; load the net it names "
                             f"('{solver.net or solver.train_net}') instead") from None
    net, applied = upgrade_net(net)
    if not net.layer:
        raise GraphError(f"{path}: the file defines no layers; is it a Caffe net prototxt?")
    return net, applied


def load_net(prototxt: os.PathLike | str, weights: Optional[os.PathLike | str] = None, phase: str = "test",
             stages: Sequence[str] = (), *, level: Optional[int] = None,
             input_shapes: Optional[Mapping[str, Sequence[int]]] = None, strict_weights: bool = True,
             max_bytes: Optional[int] = None, max_prototxt_bytes: Optional[int] = None) -> Graph:
    """Load a Caffe net: parse, upgrade old formats, filter by phase/stages, infer shapes, attach weights.

    ``input_shapes`` overrides (or supplies) the shape of net inputs, e.g. ``{"data": (1, 3, 224, 224)}``.
    ``max_bytes`` (per blob) and ``max_prototxt_bytes`` raise the limits of prototxt.limits for this call.
    """
    net, applied = read_net(prototxt, max_prototxt_bytes)
    graph = build_graph(net, phase=phase, stages=stages, level=level, input_shapes=input_shapes,
                        source=str(prototxt), upgrades=applied, max_bytes=max_bytes)
    if weights is not None:
        attach_weights(graph, weights, strict=strict_weights)
    return graph


def load_solver(path: os.PathLike | str) -> caffe_pb2.SolverParameter:
    path = str(path)
    return upgrade_solver(parse(read_text(path), caffe_pb2.SolverParameter(), path), path)


# -- weights -----------------------------------------------------------------------------------

@dataclass
class WeightsReport:
    matched: list[str]                    # net layers that got weights
    missing: list[str]                    # net layers with params but nothing stored (keep filler init)
    ignored: list[str]                    # stored layers not in the net (Caffe ignores them)
    path: str = ""

    def lines(self) -> list[str]:
        out = [f"weights: {len(self.matched)} layers matched by name"]
        if self.missing:
            out.append(f"net layers with no stored weights (they keep their filler init): {', '.join(self.missing)}")
        if self.ignored:
            out.append(f"stored layers not in the net (Caffe ignores them): {', '.join(self.ignored)}")
        return out


def fit_blob(stored: np.ndarray, legacy: bool, target: Shape, shapeless: bool = False) -> Optional[np.ndarray]:
    """The stored array in the target shape if Caffe would accept it (legacy 4-D dims right-aligned; a
    blob stored without any shape, which Caffe reads as a scalar, fits any target of its size)."""
    if tuple(stored.shape) == tuple(target):
        return stored
    if shapeless and stored.size == math.prod(target):
        return stored.reshape(target)
    if legacy and len(target) <= 4:
        padded = (1,) * (4 - len(target)) + tuple(target)
        if tuple(stored.shape) == padded:
            return stored.reshape(target)
    return None


def attach_weights(graph: Graph, weights: os.PathLike | str, strict: bool = True) -> WeightsReport:
    """Copy a caffemodel's blobs into the graph's layers as Caffe's CopyTrainedLayersFrom does.

    Each stored layer goes to the first net layer of the same name; counts and shapes must fit.
    """
    from .weights import read_caffemodel
    graph.require_shapes()
    _, stored = read_caffemodel(weights)
    first_by_name: dict[str, Layer] = {}
    for layer in graph.layers:
        first_by_name.setdefault(layer.name, layer)
    matched, ignored = [], []
    order: dict[str, int] = {}  # net layer -> position in the file of the stored layer copied into it
    for k, s in enumerate(stored):
        target = first_by_name.get(s.name)
        if target is None:
            if s.blobs:
                ignored.append(s.name)
            continue
        expected = target.param_shapes
        if len(s.blobs) != len(expected):  # Caffe: CHECK_EQ, "Incompatible number of blobs" (0 stored too)
            raise WeightsError(f"{weights}: layer '{s.name}' stores {len(s.blobs)} blobs but the net's "
                               f"{target.type} layer needs {len(expected)} ({_shapes(expected)}); rename the layer "
                               f"in the prototxt to learn it from scratch")
        arrays = []
        for j, (blob, shape) in enumerate(zip(s.blobs, expected)):
            fitted = fit_blob(blob.data, blob.legacy, shape, blob.shapeless)
            if fitted is None:
                raise WeightsError(f"{weights}: layer '{s.name}' blob {j} has shape {_shapes([blob.shape])} but the "
                                   f"net needs {_shapes([shape])}; the weights do not fit this prototxt (rename the "
                                   f"layer to learn it from scratch)")
            arrays.append(fitted)
        target.blobs = arrays
        if expected:
            order[target.name] = k
        if s.name not in matched and expected:
            matched.append(s.name)
    _share_blobs(graph, order)
    missing = [l.name for l in graph.layers if l.param_shapes and not l.blobs]
    fill_missing(graph)
    report = WeightsReport(matched, missing, ignored, str(weights))
    graph.weights_report = report
    return report


def _share_blobs(graph: Graph, order: Optional[dict[str, int]] = None) -> None:
    """Layers sharing a param by name see one array. Caffe shares the storage before copying the
    caffemodel in, so of the owner's and the sharers' stored copies the one LAST in the file wins
    (``order``: net layer -> position in the file of what was copied into it)."""
    by_name = {l.name: l for l in graph.layers}
    order = order or {}
    won: dict[tuple[str, int], int] = {}
    for layer in graph.layers:
        for i, spec in enumerate(layer.params):
            if spec.owner is None:
                continue
            owner = by_name[spec.owner]
            slot = (owner.name, spec.owner_index)
            won.setdefault(slot, order.get(owner.name, -1))
            if layer.blobs and i < len(layer.blobs) and owner.blobs and order.get(layer.name, -1) > won[slot]:
                owner.blobs[spec.owner_index] = layer.blobs[i].reshape(owner.param_shapes[spec.owner_index])
                won[slot] = order[layer.name]
    for layer in graph.layers:
        shared = [(i, s) for i, s in enumerate(layer.params) if s.owner is not None]
        if not shared:
            continue
        owner_blobs = {i: by_name[s.owner].blobs for i, s in shared}
        if all(owner_blobs[i] for i, _ in shared):
            blobs = list(layer.blobs) if layer.blobs else [None] * len(layer.param_shapes)
            for i, s in shared:
                blobs[i] = owner_blobs[i][s.owner_index].reshape(layer.param_shapes[i])
            if all(b is not None for b in blobs):
                layer.blobs = blobs


def fill_missing(graph: Graph, seed: int = 0) -> list[str]:
    """Give layers with no stored blobs their fillers' values, as Caffe keeps them (shared blobs follow
    their owner). Returns the names of the layers filled."""
    from .fillers import fill, layer_fillers
    rng = np.random.default_rng(seed)
    filled = []
    for layer in graph.layers:
        shared_only = bool(layer.params) and all(p.owner is not None for p in layer.params)
        if not layer.param_shapes or layer.blobs or shared_only:
            continue
        fillers = layer_fillers(layer.proto, len(layer.param_shapes))
        try:
            layer.blobs = [fill(f, s, rng) for f, s in zip(fillers, layer.param_shapes)]
        except GraphError as exc:
            where = f"{graph.source}: " if graph.source else ""
            raise GraphError(f"{where}layer '{layer.name}' ({layer.type}): {exc}") from None
        filled.append(layer.name)
    _share_blobs(graph)
    return filled


def _shapes(shapes_: Iterable[Sequence[int]]) -> str:
    return ", ".join("x".join(map(str, s)) or "scalar" for s in shapes_)


def save_net(graph: Graph, prototxt_path: os.PathLike | str, caffemodel_path: Optional[os.PathLike | str] = None) -> None:
    """Write the graph as a current-format .prototxt (+ .caffemodel with its weights), atomically."""
    from .text import to_text
    from .weights import write_caffemodel
    net = caffe_pb2.NetParameter()
    net.CopyFrom(graph.proto)
    net.ClearField("state")
    text = to_text(net)
    _atomic_write_text(prototxt_path, text)
    if caffemodel_path is not None:
        layers = [(l.proto.SerializeToString(), l.blobs) for l in graph.layers]
        write_caffemodel(caffemodel_path, graph.name, layers)


def _atomic_write_text(path: os.PathLike | str, text: str) -> None:
    from .fileio import atomic_open
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)
