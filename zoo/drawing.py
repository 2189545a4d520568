"""`zoo info --graph out.svg`: the net as a picture (Graphviz's `dot` when it is installed)."""
from __future__ import annotations

import os
import shutil
import subprocess

from prototxt import CaffeError

_COLOURS = {"Convolution": "#9ecae1", "Deconvolution": "#9ecae1", "InnerProduct": "#a1d99b", "Pooling": "#fdd0a2",
            "Concat": "#dadaeb", "Eltwise": "#dadaeb", "BatchNorm": "#fcbba1", "Scale": "#fcbba1",
            "LRN": "#fcbba1", "Softmax": "#fee391", "Input": "#ffffff"}


class DrawingUnavailable(CaffeError):
    """Graphviz is not installed (one line, for the CLI)."""


def _q(text: str) -> str:
    return '"' + text.replace('"', '\\"') + '"'


def to_dot(graph) -> str:
    """DOT text: one box per layer (name, type, output shape), edges labelled with Caffe blob names.
    In-place layers (ReLU after a convolution, BatchNorm+Scale) are folded into the box they modify."""
    lines = [f"digraph {_q(graph.name or 'net')} {{", "  rankdir=TB; node [shape=box, style=filled, fontname=Helvetica];"]
    owner: dict[str, str] = {}  # value -> box that shows it
    extras: dict[str, list[str]] = {}  # box -> in-place layer types folded into it
    for layer in graph.layers:
        if layer.in_place and layer.bottoms and layer.bottoms[0] in owner:
            box = owner[layer.bottoms[0]]
            for t in layer.tops:
                owner[t] = box
            extras.setdefault(box, []).append(layer.type)
            continue
        shape = graph.values[layer.tops[0]].shape if layer.tops else None
        dims = "x".join(map(str, shape)) if shape else ""
        label = f"{layer.name}\\n{layer.type}" + (f"\\n{dims}" if dims else "")
        lines.append(f"  {_q(layer.name)} [label={_q(label)}, fillcolor={_q(_COLOURS.get(layer.type, '#f0f0f0'))}];")
        for b in layer.bottoms:
            if b in owner:
                lines.append(f"  {_q(owner[b])} -> {_q(layer.name)} [label={_q(graph.values[b].caffe_name)}, fontsize=9];")
        for t in layer.tops:
            owner[t] = layer.name
    for box, types in extras.items():
        lines.append(f"  {_q(box)} [xlabel={_q('+' + '+'.join(types))}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def draw(graph, path: str) -> str:
    """Write the picture to ``path`` (format from its suffix: .svg, .png, .pdf, or .dot for the text)."""
    fmt = os.path.splitext(path)[1].lstrip(".").lower() or "svg"
    dot = to_dot(graph)
    from prototxt.fileio import atomic_open, atomic_path
    if fmt == "dot":
        with atomic_open(path, "w", encoding="utf-8") as f:
            f.write(dot)
        return path
    exe = shutil.which("dot")
    if exe is None:
        raise DrawingUnavailable(f"drawing {path} needs Graphviz's `dot` (e.g. apt-get install graphviz); "
                                 f"or write the DOT text with --graph {os.path.splitext(path)[0]}.dot")
    with atomic_path(path) as tmp:
        subprocess.run([exe, f"-T{fmt}", "-o", tmp], input=dot.encode(), check=True, capture_output=True)
    return path
