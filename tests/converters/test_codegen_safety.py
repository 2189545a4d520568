"""model.py is generated code: a name from a model file (net, layer, blob) and a user's module class
reach it only as safe literals or derived identifiers. Importing an exported folder of a hostile net
runs no injected code, imports at all, and computes the right numbers."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from converters import registry
from converters.folder import export_folder
from converters.torch import to_pytorch
from prototxt import build_graph, caffe_pb2
from tests.converters.test_folder import clean_registry  # noqa: F401  (a fixture)


def payload(marker: Path) -> str:
    """Python that creates ``marker`` if it ever runs."""
    return f"__import__('pathlib').Path({str(marker)!r}).touch()"


def breakouts(marker: Path) -> list[str]:
    """Names that break out of a docstring, a comment, a string literal or an identifier."""
    code = payload(marker)
    return [
        f'x"""\n{code}\n"""',                 # out of a triple-quoted docstring
        f"x'''\n{code}\n'''",
        f"x'\n{code}\n'",
        f'x"\n{code}\n#',
        f"x\n{code}\n",                       # out of a comment
        "bad\\N",                             # \N{...} escape: SyntaxError in a non-raw literal
        "bad\\x",                             # \x without hex digits
        "trailing\\",                         # escapes the closing quote
        "nul\x00byte",                        # NUL: source cannot contain it
        "line\u2028sep\r",                    # line breaks Python or editors see
        f"x = 1; {code}",
        "\ufb01",                             # 'fi' ligature: NFKC folds it to 'fi' in identifiers
        "fi",
        "x\u00b2",                            # a \w character that no identifier may contain
        "class",
    ]


def hostile_net(marker: Path) -> caffe_pb2.NetParameter:
    """Input -> Scale -> in-place ReLU -> Scale ... one layer per hostile name, each its own top; the
    last two tops are outputs. Net name, input name, layer names and blob names all hostile."""
    names = breakouts(marker)
    net = caffe_pb2.NetParameter()
    net.name = names[0]
    inp = net.layer.add(name=names[1] + "/input", type="Input", top=[names[2]])
    inp.input_param.shape.add(dim=[2, 3, 2, 2])
    bottom = names[2]
    for i, name in enumerate(names):
        top = f"{names[-1 - i]}{i}" if i % 3 else name
        scale = net.layer.add(name=name, type="Scale", bottom=[bottom], top=[top])
        scale.scale_param.bias_term = True
        net.layer.add(name=f"{name}/relu", type="ReLU", bottom=[top], top=[top])
        bottom = top
    net.layer.add(name=names[4] + "/side", type="Scale", bottom=[names[2]], top=[names[3] + "/out"])
    return net


def with_weights(net: caffe_pb2.NetParameter):
    graph = build_graph(net)
    rng = np.random.default_rng(0)
    for layer in graph.layers:
        if layer.param_shapes:
            layer.blobs = [rng.uniform(0.5, 1.5, s).astype(np.float32) for s in layer.param_shapes]
    return graph


IMPORT = textwrap.dedent('''
    import importlib.util, sys
    import numpy as np, torch
    spec = importlib.util.spec_from_file_location("model", sys.argv[1] + "/model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.load()(torch.from_numpy(np.load(sys.argv[2])))
    out = out if isinstance(out, dict) else {"": out}
    np.savez(sys.argv[3], **{f"o{i}": v.detach().numpy() for i, v in enumerate(out.values())})
    np.save(sys.argv[4], np.array([module.__doc__, *out.keys(), *module.CAFFE_NAMES.values()], dtype=object),
            allow_pickle=True)
''')


def import_folder(folder: str, x: np.ndarray, tmp_path: Path) -> tuple[list[np.ndarray], list[str]]:
    """Import the written model.py in a fresh interpreter (cwd: an empty folder) and run it on ``x``:
    (its outputs, [its docstring, its output names, its CAFFE_NAMES values])."""
    np.save(tmp_path / "x.npy", x)
    work = tmp_path / "cwd"
    work.mkdir(exist_ok=True)
    done = subprocess.run([sys.executable, "-c", IMPORT, folder, str(tmp_path / "x.npy"), str(tmp_path / "o.npz"),
                           str(tmp_path / "names.npy")], cwd=work, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(tmp_path / "o.npz") as o:
        outs = [o[f"o{i}"] for i in range(len(o.files))]
    return outs, list(np.load(tmp_path / "names.npy", allow_pickle=True))


def test_hostile_names_never_run_and_the_folder_computes_the_net(tmp_path):
    marker = tmp_path / "PWNED"
    graph = with_weights(hostile_net(marker))
    gm = to_pytorch(graph)
    assert not marker.exists()
    folder = export_folder(graph, tmp_path / "out")
    source = Path(folder, "model.py").read_text(encoding="utf-8")
    compile(source, "model.py", "exec")  # a valid module
    assert "\x00" not in source
    x = np.random.default_rng(1).standard_normal((2, 3, 2, 2)).astype(np.float32)
    outs, names = import_folder(folder, x, tmp_path)
    assert not marker.exists(), "importing the exported folder ran code from a layer or blob name"
    with torch.no_grad():
        want = gm(torch.from_numpy(x))
    want = list(want.values()) if isinstance(want, dict) else [want]
    assert len(outs) == len(want) == 2
    for got, ref in zip(outs, want):
        assert np.array_equal(got, ref.numpy())
    doc, out_names, caffe_names = names[0], names[1:3], names[3:]
    assert graph.name in doc  # the docstring shows the name as it is, escaped in the source
    assert out_names == list(gm.output_names)
    assert caffe_names == [l.name for l in graph.layers if l.type != "Input"]


def test_input_shapes_named_raw_in_the_docstring_are_literals(tmp_path):
    """The docstring names each input and output with its Caffe name: a name with a quote, backslash or
    NUL in it is escaped, never closes the docstring."""
    marker = tmp_path / "PWNED"
    net = caffe_pb2.NetParameter(name="plain")
    inp = net.layer.add(name="in", type="Input", top=[f'd"""\n{payload(marker)}\n"""\\'])
    inp.input_param.shape.add(dim=[1, 2])
    net.layer.add(name="s", type="Scale", bottom=[inp.top[0]], top=['o\\"""\\'])
    graph = with_weights(net)
    folder = export_folder(graph, tmp_path / "out")
    outs, names = import_folder(folder, np.ones((1, 2), np.float32), tmp_path)
    assert not marker.exists()
    assert inp.top[0] in names[0] and 'o\\"""\\' in names[0]
    assert np.allclose(outs[0], graph.layer("s").blobs[0])


class _Tagged(torch.nn.Module):
    def forward(self, x):
        return x + 1


@pytest.mark.parametrize("attr, value", [
    ("__name__", 'Evil"""'), ("__qualname__", "Evil\n__import__('os')"), ("__qualname__", "Evil; import os"),
    ("__module__", "os import path\n__import__('os').system('true')\nfrom os"), ("__module__", "my mod"),
])
def test_a_user_class_not_importable_by_name_is_refused(tmp_path, clean_registry, attr, value):  # noqa: F811
    """A user's module class reaches model.py as an import: its module and class names must be dotted
    identifiers, or the export stops with one line naming the layer."""
    cls = type("Tagged", (_Tagged,), {"__module__": __name__})
    setattr(cls, attr, value)
    if attr == "__name__":
        cls.__qualname__ = value

    registry.register_layer("Tagged", shape=lambda param, bottoms: __import__("prototxt").shapes.ShapeResult(
        [tuple(bottoms[0])]))(type("Impl", (registry.LayerImpl,), {"torch": lambda self, layer, graph: (cls(), [])}))
    net = caffe_pb2.NetParameter(name="t")
    net.layer.add(name="in", type="Input", top=["data"]).input_param.shape.add(dim=[1, 2])
    net.layer.add(name="tag", type="Tagged", bottom=["data"], top=["out"])
    with pytest.raises(ValueError) as info:
        export_folder(build_graph(net), tmp_path / "out")
    text = str(info.value)
    assert "'tag'" in text and "\n" not in text, text
    assert not (tmp_path / "out").exists()
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())


def test_non_finite_arguments_are_literals(tmp_path):
    """A module argument Python writes as a bare name (inf, nan) still imports: model.py spells it out."""
    net = caffe_pb2.NetParameter(name="t")
    net.layer.add(name="in", type="Input", top=["data"]).input_param.shape.add(dim=[1, 2])
    power = net.layer.add(name="p", type="Power", bottom=["data"], top=["out"])
    power.power_param.shift = float("inf")
    graph = build_graph(net)
    folder = export_folder(graph, tmp_path / "out")
    outs, _ = import_folder(folder, np.ones((1, 2), np.float32), tmp_path)
    with torch.no_grad():
        assert np.array_equal(outs[0], to_pytorch(graph)(torch.ones(1, 2)).numpy())
