"""One way from what a user names to a net and its weights: a zoo model name, a user card (.json) or
a deploy .prototxt; the weights from the caller (``--weights``), else the cache, downloaded and
checksum-verified the first time. `zoo convert`, `verify`, `run`, `finetune` and ``zoo.load`` all
resolve their model here."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import warnings

from prototxt import CaffeError, Graph, WeightsError, attach_weights, build_graph, caffe_pb2, read_net
from zoo.hub import registry
from zoo.hub.cards import ModelCard


class ModelNotFound(CaffeError):
    """A model or weights file that does not exist (one line naming it)."""


@dataclass
class Model:
    net: caffe_pb2.NetParameter     # the upgraded deploy net (named after the card when built in code)
    weights: Optional[str]          # the .caffemodel path; None for a bare prototxt given without weights
    card: Optional[ModelCard]       # None for a bare prototxt
    source: str                     # where the net comes from, for messages
    status: str = ""                # how the weights were verified when they came from the cache
    upgrades: list[str] = field(default_factory=list)  # format upgrades applied while reading the file

    def graph(self, input_shapes: Optional[Mapping[str, Sequence[int]]] = None, *, weights: bool = True) -> Graph:
        """The deploy graph (TEST phase) shaped by ``input_shapes``, with the weights attached."""
        graph = build_graph(self.net, input_shapes=input_shapes, source=self.source, upgrades=self.upgrades)
        if weights and self.weights is not None:
            attach_weights(graph, self.weights)
            check_weights_match(graph, self.source, self.weights)
        return graph

    def card_input_shapes(self) -> Optional[dict[str, tuple[int, ...]]]:
        """The card's image input at batch 1, any other input (Faster R-CNN's im_info) as the net declares
        it; None without a card (the net's own shapes)."""
        if self.card is None:
            return None
        declared = {}
        for layer in self.net.layer:
            if layer.type == "Input":
                shapes = list(layer.input_param.shape)
                for i, top in enumerate(layer.top):  # one shape may serve every top, as in Caffe
                    declared[top] = tuple(shapes[min(i, len(shapes) - 1)].dim) if shapes else None
        image = self.card.input
        return {**{k: v for k, v in declared.items() if v}, image.blob: (1, *image.shape)}

    def require_weights(self, doing: str, input_shapes: Optional[Mapping[str, Sequence[int]]] = None,
                        how: str = "--weights MODEL.caffemodel") -> None:
        """Refuse a net given without weights only when it has learnable parameters: a net of parameter-free
        layers (PriorBox, Permute, an Interp...) converts and runs as it is. A net whose shapes are not
        known says why first (no parameter shape can be told without them)."""
        if self.weights is not None:
            return
        graph = self.graph(input_shapes, weights=False)
        if any(l.param_shapes for l in graph.layers):
            raise WeightsError(f"{self.source}: {doing} needs the trained weights: pass {how}")
        graph.require_shapes()


def check_weights_match(graph: Graph, prototxt: str, weights: str) -> None:
    """Caffe copies weights by layer name and keeps the filler init of the rest: with the wrong
    .caffemodel that is a net of random weights, converted without a word. Refuse weights that fit no
    layer; name the layers they leave with their filler init."""
    report = graph.weights_report
    weighted = [l.name for l in graph.layers if l.param_shapes]
    if report is None or not weighted:
        return
    if not report.matched:
        raise WeightsError(f"{weights}: no layer of {prototxt} has weights there (none of its {len(weighted)} "
                           f"layers with weights is named in it); pass the .caffemodel trained with this prototxt")
    if report.missing:
        warnings.warn(f"{weights}: no stored weights for {len(report.missing)} of the {len(weighted)} layers with "
                      f"weights of {prototxt}, they keep their filler init: {', '.join(report.missing)}", stacklevel=3)


def is_prototxt(model: str) -> bool:
    """Whether ``model`` names a net file rather than a zoo model."""
    return model.endswith(".prototxt") or os.path.sep in model or os.path.isfile(model)


def resolve(model: Optional[str] = None, *, card: Optional[os.PathLike | str] = None,
            weights: Optional[os.PathLike | str] = None, fetch: bool = True, quiet: bool = False) -> Model:
    """The net and weights ``model`` names (a zoo name, a user card .json or a deploy .prototxt), or those
    of the user card file ``card``. ``weights`` given must exist; a card's weights otherwise come from the
    cache, downloaded once when ``fetch`` (else their cached path, which may not exist yet)."""
    # The layer plugins of the 'caffezoo.layers' entry points load on this import (numpy only, no torch):
    # their shape rules must hold before any command shapes the net (prototxt knows only the built-in types).
    import converters  # noqa: F401
    if weights is not None:
        weights = os.fspath(weights)
        if not os.path.exists(weights):
            raise ModelNotFound(f"{weights}: no such file")
    if card is not None:
        found = registry.load_user_card(card)
    elif model is None:
        raise ModelNotFound("no model given: name a zoo model, a user card (.json) or a deploy .prototxt")
    elif model.endswith(".json"):
        found = registry.load_user_card(model)
    elif is_prototxt(model):
        net, upgrades = read_net(model)
        return Model(net, weights, None, model, upgrades=upgrades)
    else:
        found = registry.get(model)
    return _card_model(found, weights, fetch, quiet)


def _card_model(card: ModelCard, weights: Optional[str], fetch: bool, quiet: bool) -> Model:
    if card.architecture_path is not None:
        net, upgrades = read_net(card.architecture_path)
        source = str(card.architecture_path)
    else:
        from zoo.models import arch
        net, upgrades = arch.build(card.architecture), []
        net.name = card.name  # outputs are named after the card (age_net and gender_net are both "CaffeNet")
        source = f"{card.name} (built-in architecture)"
    status = ""
    if weights is None:
        if fetch:
            from zoo.hub.fetch import fetch_weights
            path, status = fetch_weights(card, quiet=quiet)
            weights = str(path)
        else:
            from zoo.hub.download import cache_dir
            weights = str(cache_dir() / card.weights.filename)
    return Model(net, weights, card, source, status, upgrades)
