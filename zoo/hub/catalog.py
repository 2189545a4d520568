"""The zoo's models as rows (what `zoo list` prints and ``zoo.list_models()`` returns)."""
from __future__ import annotations

from typing import Any, Optional

from zoo.hub import registry
from zoo.hub.download import cache_dir


def rows(pattern: Optional[str] = None) -> list[dict[str, Any]]:
    """One row per card (built-in and ZOO_PATH cards) whose name matches the shell ``pattern``: name,
    task, input (``CxHxW ORDER``), params (of the deploy net; None when it cannot be read here),
    weights_size (bytes, None when the card gives none), license, cached (the weights are in the cache)."""
    cache = cache_dir()
    rows = []
    for card in registry.list_cards(pattern):
        c, h, w = card.input.shape
        rows.append({
            "name": card.name,
            "task": card.task,
            "input": f"{c}x{h}x{w} {card.input.channel_order}",
            "params": card_params(card),
            "weights_size": card.weights.size,
            "license": card.license.name,
            "cached": (cache / card.weights.filename).is_file(),
        })
    return rows


def card_params(card: Any) -> Optional[int]:
    """The parameter count of a card's deploy net, from its architecture's shapes (no weights needed)."""
    from prototxt import CaffeError, build_graph, load_net
    from zoo.models import arch
    try:
        if card.architecture_path is not None:
            graph = load_net(card.architecture_path)
        else:
            graph = build_graph(arch.build(card.architecture))
        return graph.params_total if not graph.unknown_types and not graph.shape_problem else None
    except (CaffeError, OSError):
        return None  # a card whose net cannot be read here shows no count rather than failing the list
