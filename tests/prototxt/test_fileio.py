"""Atomic writes: nothing half-written under the target's name, and the finished file gets the
permissions a plain ``open`` would give (the temp file's 0600 must not survive the rename)."""
from __future__ import annotations

import os
import stat

import pytest

from prototxt.fileio import atomic_open


@pytest.fixture
def umask():
    def set_(mask):
        os.umask(mask)
    old = os.umask(0o022)
    yield set_
    os.umask(old)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_finished_file_has_umask_permissions(tmp_path, umask, mask, mode):
    umask(mask)
    target = tmp_path / "out.bin"
    with atomic_open(target) as f:
        f.write(b"data")
    assert stat.S_IMODE(os.stat(target).st_mode) == mode
    assert target.read_bytes() == b"data"


def test_failure_leaves_nothing(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_open(target) as f:
            f.write(b"half")
            raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == []


def test_exported_folder_has_umask_permissions(tmp_path, umask):
    """The PyTorch folder is built in a temp folder (mkdtemp: 0700) and renamed into place."""
    import numpy as np

    from converters.folder import export_folder
    from prototxt import load_net
    umask(0o022)
    net = tmp_path / "net.prototxt"
    net.write_text('name: "t"\ninput: "data"\ninput_shape { dim: 1 dim: 3 }\n'
                   'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 2 } }\n')
    graph = load_net(net)
    graph.layer("fc").blobs = [np.ones((2, 3), np.float32), np.zeros(2, np.float32)]
    folder = export_folder(graph, tmp_path / "out")
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o755
    assert {stat.S_IMODE(os.stat(os.path.join(folder, f)).st_mode) for f in os.listdir(folder)} == {0o644}
