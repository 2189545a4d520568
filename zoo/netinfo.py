"""What `zoo info` reports about a net: pure functions from a Graph to a dict, and from that dict to text.

Blob names are Caffe's own. A blob written in place (conv1 -> relu1 -> conv1) appears once, under its
Caffe name, with its final shape: what Caffe's ``net.blobs`` shows. Caffe's internal ``*_split_*``
copies are not listed. Shared parameters are counted once, in the layer that owns them.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Optional, Sequence

from prototxt import Graph

GROUP_SEPARATOR = "/"


def summary(graph: Graph) -> dict[str, Any]:
    """Everything `zoo info` shows, as plain JSON-ready data."""
    layers = [_layer(graph, layer) for layer in graph.layers]
    out: dict[str, Any] = {
        "name": graph.name,
        "phase": graph.phase,
        "inputs": {name: _shape(shape) for name, shape in graph.input_shapes.items()},
        "outputs": [graph.values[v].caffe_name for v in graph.outputs],
        "blobs": {name: _shape(shape) for name, shape in graph.caffe_blobs().items()},
        "layers": layers,
        "groups": groups(layers),
        "params_total": graph.params_total,
        "macs_total": graph.macs_total,
        "upgrades": list(graph.upgrades),
    }
    if graph.weights_report is not None:
        report = graph.weights_report
        out["weights"] = {"path": report.path, "matched": list(report.matched), "missing": list(report.missing),
                          "ignored": list(report.ignored)}
    return out


def _layer(graph: Graph, layer) -> dict[str, Any]:
    return {
        "name": layer.name,
        "type": layer.type,
        "bottoms": list(layer.caffe_bottoms),
        "tops": list(layer.caffe_tops),
        "output_shapes": [_shape(graph.values[t].shape) for t in layer.tops],
        "params": [list(s) for s in layer.param_shapes],
        "param_count": layer.param_count,
        "shared_params": [p.name for p in layer.params if p.owner is not None],
        "macs": layer.macs,
    }


def group_of(layer_name: str) -> str:
    """GoogLeNet-style names ('inception_3a/3x3_reduce') group by their prefix; others stand alone."""
    return layer_name.split(GROUP_SEPARATOR, 1)[0]


def has_groups(layers: Iterable[dict[str, Any]]) -> bool:
    return any(GROUP_SEPARATOR in layer["name"] for layer in layers)


def groups(layers: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-group totals in order of first appearance: name, layer count, params, MACs, output shapes."""
    by_name: dict[str, dict[str, Any]] = {}
    for layer in layers:
        g = by_name.setdefault(group_of(layer["name"]),
                               {"name": group_of(layer["name"]), "layers": 0, "params": 0, "macs": 0,
                                "output_shapes": []})
        g["layers"] += 1
        g["params"] += layer["param_count"]
        g["macs"] += layer["macs"]
        g["output_shapes"] = layer["output_shapes"]  # the group's last layer gives its output
    return list(by_name.values())


def _shape(shape: Optional[Sequence[int]]) -> Optional[list[int]]:
    return None if shape is None else [int(d) for d in shape]


# -- text -------------------------------------------------------------------------------------

def format_text(info: dict[str, Any], *, layers: bool = True, group_table: Optional[bool] = None) -> str:
    """The summary as an aligned, human-readable report.

    ``layers``: list every layer; ``group_table``: add per-group totals (default: when layer names
    have '/' prefixes).
    """
    if group_table is None:
        group_table = has_groups(info["layers"])
    lines = [f"net: {info['name'] or '(unnamed)'}  (phase {info['phase']})"]
    if info.get("upgrades"):
        lines.append(f"upgraded from an old format: {', '.join(info['upgrades'])}")
    lines.append("inputs: " + _blob_list(info["inputs"]))
    lines.append("outputs: " + _blob_list({name: info["blobs"].get(name) for name in info["outputs"]}))
    if layers:
        lines += ["", *_layer_table(info["layers"])]
    if group_table:
        lines += ["", "groups (layer-name prefix before '/'):", *_group_table(info["groups"])]
    lines += ["", _totals(info)]
    if "weights" in info:
        lines += ["", *_weights_lines(info["weights"])]
    return "\n".join(lines) + "\n"


def _layer_table(layers: Sequence[dict[str, Any]]) -> list[str]:
    header = ("#", "layer", "type", "output", "param shapes", "params", "MACs", "bottoms -> tops")
    rows = [(str(i), l["name"], l["type"], "; ".join(fmt_shape(s) for s in l["output_shapes"]) or "-",
             ", ".join(fmt_shape(s) for s in l["params"]) or "-",
             _count(l["param_count"]) + (" (shared)" if l["shared_params"] else ""), _count(l["macs"]),
             f"{', '.join(l['bottoms']) or '-'} -> {', '.join(l['tops']) or '-'}")
            for i, l in enumerate(layers, 1)]
    return _table(header, rows, right={0, 5, 6})


def _group_table(groups_: Sequence[dict[str, Any]]) -> list[str]:
    header = ("group", "layers", "output", "params", "MACs")
    rows = [(g["name"], str(g["layers"]), "; ".join(fmt_shape(s) for s in g["output_shapes"]) or "-",
             _count(g["params"]), _count(g["macs"])) for g in groups_]
    return ["  " + line for line in _table(header, rows, right={1, 3, 4})]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    last = len(header) - 1

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if i in right else (c if i == last else c.ljust(w))
                 for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(parts).rstrip()
    return [line(header), *(line(r) for r in rows)]


def _totals(info: dict[str, Any]) -> str:
    text = (f"total: {_count(info['params_total'])} parameters ({human(info['params_total'])}), "
            f"{_count(info['macs_total'])} multiply-accumulates ({human(info['macs_total'])})")
    batch = _batch(info["inputs"])
    if batch and batch > 1:
        text += f"; {human(info['macs_total'] / batch)} MACs per item at batch {batch}"
    return text


def _batch(inputs: dict[str, Optional[list[int]]]) -> Optional[int]:
    batches = {s[0] for s in inputs.values() if s}
    return batches.pop() if len(batches) == 1 else None


def _weights_lines(w: dict[str, Any]) -> list[str]:
    lines = [f"weights: {w['path']}", f"  {len(w['matched'])} layers matched by name"]
    if w["missing"]:
        lines.append(f"  net layers with no stored weights (they keep their filler init): {', '.join(w['missing'])}")
    if w["ignored"]:
        lines.append(f"  stored layers not in the net (Caffe ignores them): {', '.join(w['ignored'])}")
    if not w["missing"] and not w["ignored"]:
        lines.append("  every layer with parameters has weights, and every stored layer is used")
    return lines


def _blob_list(blobs: dict[str, Optional[list[int]]]) -> str:
    return ", ".join(f"{name} {fmt_shape(shape)}" for name, shape in blobs.items()) or "(none)"


def fmt_shape(shape: Optional[Sequence[int]]) -> str:
    if shape is None:
        return "?"
    return "x".join(str(d) for d in shape) if len(shape) else "scalar"


def _count(n: int) -> str:
    return f"{n:,}"


def human(n: float) -> str:
    """1234567 -> '1.23 M' (decimal units, as parameter and MAC counts are usually quoted)."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.{_digits(n / size)}f} {unit}"
    return f"{n:g}"


def _digits(x: float) -> int:
    return max(0, 2 - int(math.log10(abs(x)))) if x else 0
