"""``export_folder`` writes a folder that plain PyTorch loads: ``model.py`` + ``weights.pt``, run in
a separate interpreter where the toolkit (prototxt, converters, zoo) cannot be imported."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from converters import registry, to_pytorch
from converters.folder import export_folder
from tests.converters.common import load_fixture, torch_cpu
from tests.helpers import REPO, SHARED, shared_params

# Small fixtures: real trained weights; BatchNorm + Scale (odd sizes); googlenet ('/' in its layer names).
pytestmark = pytest.mark.filterwarnings("ignore:TF32 acceleration:UserWarning")  # mkldnn.flags() says it

FIXTURES = ["models/mnist_lenet", "layers/batchnorm_scale", "models/bvlc_googlenet"]

# Runs model.py with the toolkit unimportable: only the folder on the path, and a meta-path guard
# that also catches the toolkit where it is pip-installed (and records any attempt to import it).
CHILD = textwrap.dedent('''
    import importlib.abc, json, sys
    import numpy as np
    TOOLKIT = ("prototxt", "converters", "zoo", "tests")
    tried = []
    class Guard(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in TOOLKIT:
                tried.append(name)
                raise ImportError(f"{name} must not be needed")
            return None
    sys.meta_path.insert(0, Guard())
    try:
        import prototxt
        raise SystemExit("prototxt is importable beside the exported folder")
    except ImportError:
        pass
    tried.clear()
    import torch
    torch.set_num_threads(2)
    import model
    net = model.load()
    data = np.load("inputs.npz")
    xs = [torch.from_numpy(data[f"x{i}"]) for i in range(len(data.files))]
    with torch.backends.mkldnn.flags(enabled=False), torch.no_grad():
        out = net(*xs)
    out = out if isinstance(out, dict) else {"": out}
    np.savez("outputs.npz", **{k or "_single": v.numpy() for k, v in out.items()})
    state = torch.load("weights.pt", weights_only=True)
    json.dump({"tried": tried, "children": [n for n, _ in net.named_children()],
               "caffe_names": model.CAFFE_NAMES, "training": net.training,
               "state_keys": sorted(state), "path": sys.path,
               "module_file": model.__file__}, open("report.json", "w"))
''')


def _cases():
    fixtures = [SHARED / "reference" / f for f in FIXTURES if (SHARED / "reference" / f).is_dir()]
    return shared_params(fixtures, [f.name for f in fixtures])


@pytest.mark.parametrize("fixture", _cases())
def test_export_folder_runs_without_toolkit(fixture, weights_cache, tmp_path):
    graph, ins, _ = load_fixture(fixture, weights_cache)
    module = to_pytorch(graph)
    folder = export_folder(graph, tmp_path / "export" / fixture.name)  # written without torch
    assert sorted(os.listdir(folder)) == ["model.py", "weights.pt"]
    assert not [p for p in os.listdir(tmp_path / "export") if p != fixture.name]  # no .partial left over

    xs = [np.ascontiguousarray(ins[graph.values[v].caffe_name], dtype=np.float32) for v in graph.inputs]
    with torch_cpu():
        want = module(*[torch.from_numpy(x) for x in xs])
    want = {k: v.numpy() for k, v in want.items()} if isinstance(want, dict) else {"_single": want.numpy()}

    # in-process: the weights file holds the module's state dict (same keys, shapes, values), loadable
    # without pickled code
    state = torch.load(os.path.join(folder, "weights.pt"), weights_only=True)
    mine = module.state_dict()
    assert sorted(state) == sorted(mine)
    assert all(torch.equal(state[k], mine[k]) for k in mine)

    np.savez(os.path.join(folder, "inputs.npz"), **{f"x{i}": x for i, x in enumerate(xs)})
    env = {"PYTHONPATH": folder, "PATH": os.environ.get("PATH", ""), "PYTHONNOUSERSITE": "1",
           "HOME": os.environ.get("HOME", str(tmp_path)), "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, "-c", CHILD], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(open(os.path.join(folder, "report.json")).read())
    assert report["tried"] == [], f"model.py imports the toolkit: {report['tried']}"
    assert str(REPO) not in [os.path.abspath(p) for p in report["path"] if p], report["path"]
    assert os.path.dirname(report["module_file"]) == os.path.abspath(folder)
    assert report["training"] is False

    with np.load(os.path.join(folder, "outputs.npz")) as got:
        assert sorted(got.files) == sorted(want)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-6, err_msg=k)

    # submodules are the Caffe layers under sanitized names; CAFFE_NAMES maps them back
    assert report["caffe_names"] == module.caffe_names
    assert report["children"] == list(module.caffe_names)
    converted = [l.name for l in graph.layers
                 if l.type not in registry.DATA_LAYERS and not registry.training_only(l.type)]
    assert sorted(report["caffe_names"].values()) == sorted(converted)
    for attr, name in report["caffe_names"].items():
        base = re.sub(r"\W", "_", name)
        base = "_" + base if base[0].isdigit() else base
        assert attr.isidentifier() and re.fullmatch(re.escape(base) + r"(_|_\d+)?", attr), (attr, name)
    if fixture.name == "bvlc_googlenet":
        assert report["caffe_names"]["inception_3a_1x1"] == "inception_3a/1x1"
