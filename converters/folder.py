"""The standalone PyTorch folder of a net, written without importing torch.

``export_folder(graph, folder)`` writes ``model.py`` (the modules of ``converters/nn.py`` verbatim plus
a readable ``nn.Module`` whose submodules are named after the Caffe layers, and ``load()``) and
``weights.pt`` (its state dict in PyTorch's zip format, for ``torch.load(weights_only=True)``). The
weights go from the graph's arrays straight into the file, so ``zoo convert`` imports torch only to
verify.
"""
from __future__ import annotations

import keyword
import math
import os
import re
import struct
import zipfile
from typing import Any, Iterable, Mapping, Optional

import numpy as np

from prototxt.fileio import atomic_dir
from prototxt.graph import Graph

from .plan import ModuleSpec, Plan, model_py_names, class_name, nn_source, plan

# -- weights.pt ------------------------------------------------------------------------------------
# PyTorch's format: a stored (uncompressed) zip; `<archive>/data.pkl` pickles the state dict with each
# tensor as torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks) and
# each storage as a persistent id ('storage', torch.<Type>Storage, key, 'cpu', numel) whose bytes are
# the record `<archive>/data/<key>`, aligned to 64 bytes in the file.

_STORAGE = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
            np.dtype(np.float16): "HalfStorage", np.dtype(np.int64): "LongStorage",
            np.dtype(np.int32): "IntStorage", np.dtype(np.int16): "ShortStorage",
            np.dtype(np.int8): "CharStorage", np.dtype(np.uint8): "ByteStorage", np.dtype(np.bool_): "BoolStorage"}
_ALIGN = 64


class _Pickle:
    """The few pickle (protocol 2) opcodes a state dict needs; torch's weights-only loader accepts them."""

    def __init__(self):
        self.out = bytearray(b"\x80\x02")

    def global_(self, module: str, name: str):
        self.out += b"c" + f"{module}\n{name}\n".encode()

    def str_(self, s: str):
        b = s.encode("utf-8")
        self.out += b"X" + struct.pack("<I", len(b)) + b

    def int_(self, v: int):
        if 0 <= v < 256:
            self.out += b"K" + bytes([v])
        elif 0 <= v < 65536:
            self.out += b"M" + struct.pack("<H", v)
        elif -2**31 <= v < 2**31:
            self.out += b"J" + struct.pack("<i", v)
        else:
            raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
            self.out += b"\x8a" + bytes([len(raw)]) + raw

    def tuple_(self, items: Iterable[int]):
        self.out += b"("
        for v in items:
            self.int_(v)
        self.out += b"t"

    def empty_ordered_dict(self):
        self.global_("collections", "OrderedDict")
        self.out += b")R"


def _strides(shape) -> list[int]:
    out, step = [], 1
    for n in reversed(shape):
        out.append(step)
        step *= n
    return out[::-1]


def write_state_dict(path: str, state: Mapping[str, np.ndarray], archive: str = "weights") -> None:
    """``state`` (key -> array) as a file ``torch.load(path, weights_only=True)`` reads into an OrderedDict
    of tensors. Keys holding the same array object share one storage, as tied parameters do in torch."""
    storages: dict[int, tuple[str, np.ndarray]] = {}
    p = _Pickle()
    p.empty_ordered_dict()
    p.out += b"("
    for key, array in state.items():
        if id(array) not in storages:
            a = np.asarray(array)
            if a.dtype.newbyteorder("=") not in _STORAGE:
                raise TypeError(f"{key}: no PyTorch storage for dtype {a.dtype}")
            a = np.require(a, requirements="C").astype(a.dtype.newbyteorder("<"), copy=False)  # keeps 0-d
            storages[id(array)] = (str(len(storages)), a)
        skey, a = storages[id(array)]
        p.str_(key)
        p.global_("torch._utils", "_rebuild_tensor_v2")
        p.out += b"(("
        p.str_("storage")
        p.global_("torch", _STORAGE[a.dtype.newbyteorder("=")])
        p.str_(skey)
        p.str_("cpu")
        p.int_(a.size)
        p.out += b"tQ"
        p.int_(0)
        p.tuple_(a.shape)
        p.tuple_(_strides(a.shape))
        p.out += b"\x89"  # requires_grad False
        p.empty_ordered_dict()  # backward hooks
        p.out += b"tR"
    p.out += b"u."
    with open(path, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        _record(z, f, f"{archive}/data.pkl", [bytes(p.out)])
        _record(z, f, f"{archive}/.format_version", [b"1"])
        _record(z, f, f"{archive}/.storage_alignment", [str(_ALIGN).encode()])
        _record(z, f, f"{archive}/byteorder", [b"little"])
        for skey, a in storages.values():
            _record(z, f, f"{archive}/data/{skey}", [a.reshape(-1).view(np.uint8)] if a.size else [])
        _record(z, f, f"{archive}/version", [b"3\n"])


def _record(z: zipfile.ZipFile, f, name: str, chunks: list) -> None:
    """One stored zip entry whose data starts on a 64-byte boundary (padding in the local extra field)."""
    size = sum(len(memoryview(c).cast("B")) for c in chunks)
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    info.file_size = size
    zip64 = size * 1.05 > zipfile.ZIP64_LIMIT
    header = 30 + len(name.encode()) + (20 if zip64 else 0)
    pad = -(f.tell() + header + 4) % _ALIGN
    info.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad  # the field id PyTorch's writer uses ("FB")
    with z.open(info, "w", force_zip64=zip64) as w:
        for c in chunks:
            w.write(c)


# -- model.py --------------------------------------------------------------------------------------

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


def _user_class(step) -> tuple[str, str]:
    """(module, top-level name) to import a user's module class from, or one clear error. Both reach
    model.py as an import statement: they must be dotted identifiers, nothing else."""
    cls = type(step.module)
    where = f"layer '{step.layer.name}' ({step.layer.type}): its module class {cls.__qualname__!r}"
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        raise ValueError(f"{where} is defined {'in __main__' if cls.__module__ == '__main__' else 'inside a function'}, "
                         f"so the exported model.py cannot import it; define it at the top level of a module")
    if not (_dotted(cls.__module__) and _dotted(cls.__qualname__)) or cls.__name__ != cls.__qualname__.split(".")[-1]:
        raise ValueError(f"{where} of module {cls.__module__!r} is not importable by that name, so the exported "
                         f"model.py cannot import it; give the class and its module plain Python names")
    return cls.__module__, cls.__qualname__.split(".")[0]


def _dotted(name: str) -> bool:
    return isinstance(name, str) and all(part.isidentifier() and not keyword.iskeyword(part)
                                         for part in name.split("."))


def literal(value: Any) -> str:
    """``value`` (None, bools, numbers, strings, and lists, tuples and dicts of them) as Python source
    that evaluates to it, whatever the strings hold: repr() but for non-finite floats, which repr()
    writes as bare names (inf, nan), and numpy scalars, which it writes as np.float32(...)."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, int):
        return repr(int(value))
    if isinstance(value, float):
        return repr(float(value)) if math.isfinite(value) else f"float({str(float(value))!r})"
    if isinstance(value, str):
        return repr(str(value))
    if isinstance(value, (list, tuple)):
        items = [literal(v) for v in value]
        if isinstance(value, list):
            return "[" + ", ".join(items) + "]"
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{literal(k)}: {literal(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no Python literal for a {type(value).__name__}")


def _doc(text: str) -> str:
    """``text`` (a name from the model file) escaped for the inside of a \"\"\" docstring: quotes,
    backslashes and every unprintable character (NUL, line breaks) as escapes, so it reads back as it is."""
    return "".join(c if c.isprintable() and c not in '\\"' else repr(c)[1:-1] if c != '"' else '\\"'
                   for c in text)


def _arguments(step, args: Any) -> str:
    try:
        return literal(args or {})
    except TypeError as exc:
        raise ValueError(f"layer '{step.layer.name}' ({step.layer.type}): its module's arguments cannot be "
                         f"written into model.py: {exc}") from None


def generate_model_py(p: Plan, graph: Graph) -> str:
    modules = nn_source()
    modules = modules.split('"""', 2)[2].lstrip("\n") if modules.startswith('"""') else modules
    imported: dict[tuple[str, str], str] = {}  # (module, name) -> the name model.py knows it by
    imports, inits = [], []
    for step in p.steps:
        m = step.module
        if isinstance(m, ModuleSpec):
            if m.cls not in model_py_names():
                raise ValueError(f"layer '{step.layer.name}': {m.cls!r} is no module of converters/nn.py")
            inits.append(f"        self.{step.attr} = {m.cls}(**{_arguments(step, m.args)})")
            continue
        source, top = _user_class(step)
        if (source, top) not in imported:  # never shadow the modules of nn.py or another import
            local = top
            while local in model_py_names() or local in imported.values():
                local = local + "_" + re.sub(r"\W", "_", source)
            imported[(source, top)] = local
            imports.append(f"from {source} import {top}" + (f" as {local}" if local != top else ""))
        rest = type(m).__qualname__.split(".", 1)[1:]
        expr = ".".join([imported[(source, top)], *rest])
        inits.append(f"        self.{step.attr} = {expr}(**{_arguments(step, getattr(m, 'args', None))})")
    cls = class_name(p.class_name, frozenset(imported.values()))
    forward = [f"    def forward(self{''.join(', ' + v for v in p.input_vars)}):"]
    for step in p.steps:
        args = ", ".join(p.value_vars[b] for b in step.layer.bottoms)
        call = f"self.{step.attr}({args})"
        if not step.layer.tops:
            forward.append(f"        {call}")
        elif len(step.tops) == 1:
            forward.append(f"        {step.tops[0]} = {call}")
        else:
            forward.append(f"        {', '.join(step.tops)} = {call}")
    if len(p.outputs) == 1:
        forward.append(f"        return {p.value_vars[p.outputs[0]]}")
    else:
        items = ", ".join(f"{literal(name)}: {p.value_vars[o]}" for o, name in zip(p.outputs, p.output_names))
        forward.append(f"        return {{{items}}}")
    shapes = "; ".join(f"{_doc(graph.values[v].caffe_name)} {tuple(graph.values[v].shape)}" for v in p.inputs)
    body = [
        _HEADER.format(name=_doc(graph.name or "net"), inputs=", ".join(p.input_vars), input_desc=shapes or "none",
                       output_desc=", ".join(_doc(n) for n in p.output_names), cls=cls),
        modules.rstrip(),
        *([""] + imports if imports else []),
        "",
        "",
        f"CAFFE_NAMES = {literal(p.caffe_names)}",
        "",
        "",
        f"class {cls}(nn.Module):",
        "    def __init__(self):",
        "        super().__init__()",
        *inits,
        "",
        *forward,
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


def state_arrays(p: Plan) -> dict[str, np.ndarray]:
    """The state dict of the planned module as arrays: each Caffe blob under its key, in its module
    shape (Caffe's canonical blob shape; legacy 4-d blobs reshaped), float32, no copy where possible."""
    state: dict[str, np.ndarray] = {}
    for step in p.steps:
        layer = step.layer
        if not isinstance(step.module, ModuleSpec):  # a user's module: its own tensors, Caffe's blobs loaded
            from .blobs import load_blobs
            load_blobs(step.module, layer, step.blob_names)
            state.update({f"{step.attr}.{k}": v.detach().cpu().numpy()
                          for k, v in step.module.state_dict().items()})
            continue
        for i, name in enumerate(step.blob_names):
            if i >= len(layer.blobs) or layer.blobs[i] is None:
                raise ValueError(f"layer '{layer.name}': no weights for its blob {i}; load the net with its .caffemodel")
            array = np.asarray(layer.blobs[i])
            if array.dtype != np.float32:
                array = array.astype(np.float32)
            state[f"{step.attr}.{name}"] = array.reshape(layer.param_shapes[i])
    for key, owner in p.shared().items():
        state[key] = state[owner]
    return state


def export_folder(graph: Graph, folder: str | os.PathLike, state: Optional[Mapping[str, np.ndarray]] = None) -> str:
    """Write ``model.py`` + ``weights.pt`` into ``folder`` atomically (``prototxt.fileio.atomic_dir``: a
    temp folder swapped in; a previous folder is never lost, even to a kill).

    ``state`` replaces the graph's weights (e.g. a trained module's state dict as arrays)."""
    p = plan(graph)
    source = generate_model_py(p, graph)
    folder = os.fspath(folder)
    with atomic_dir(folder) as tmp:
        with open(os.path.join(tmp, "model.py"), "w", encoding="utf-8") as f:
            f.write(source)
        write_state_dict(os.path.join(tmp, "weights.pt"), state if state is not None else state_arrays(p))
    return folder
