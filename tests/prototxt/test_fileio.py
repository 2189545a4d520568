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


KILLED_SWAP = '''
import os, sys
from prototxt import fileio
target = os.path.abspath(sys.argv[1])
real_rename, real_replace = os.rename, os.replace

def killed_at_target(src, dst, *a, **k):  # the process dies as the new output is about to take the name
    if os.path.abspath(dst) == target:
        os._exit(9)
    return real_rename(src, dst, *a, **k)

def killed_replace(src, dst, *a, **k):
    if os.path.abspath(dst) == target:
        os._exit(9)
    return real_replace(src, dst, *a, **k)

os.rename, os.replace = killed_at_target, killed_replace
from converters.folder import export_folder
from prototxt import load_net
import numpy as np
graph = load_net(sys.argv[2])
graph.layer("fc").blobs = [np.full((2, 3), 2.0, np.float32), np.zeros(2, np.float32)]
export_folder(graph, target)
'''


def _fc_net(tmp_path):
    net = tmp_path / "net.prototxt"
    net.write_text('name: "t"\ninput: "data"\ninput_shape { dim: 1 dim: 3 }\n'
                   'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 2 } }\n')
    return net


def test_a_kill_while_swapping_a_folder_never_loses_the_old_one(tmp_path):
    """Killed between its renames, an export leaves the previous folder aside; the next write of the
    same target (or clean_stale) puts it back, and removes the dead run's temp folder."""
    import subprocess
    import sys

    import numpy as np

    from converters.folder import export_folder
    from prototxt import load_net
    from prototxt.fileio import clean_stale
    from tests.helpers import REPO
    net = _fc_net(tmp_path)
    graph = load_net(net)
    graph.layer("fc").blobs = [np.ones((2, 3), np.float32), np.zeros(2, np.float32)]
    target = tmp_path / "out"
    export_folder(graph, target)
    old = (target / "weights.pt").read_bytes()
    done = subprocess.run([sys.executable, "-c", KILLED_SWAP, str(target), str(net)], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert done.returncode == 9
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".partial"))
    assert left, "the killed run left nothing behind: it did not get as far as the swap"
    clean_stale(target)
    assert (target / "weights.pt").read_bytes() == old
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_stale_temp_files_of_dead_runs_are_removed_never_a_live_ones(tmp_path):
    import subprocess
    import sys
    import time

    from prototxt.fileio import LEGACY_STALE_AGE
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        target = tmp_path / "out.bin"
        dead_file = tmp_path / f"out.bin.{dead_pid}.abc123_x.partial"
        dead_dir = tmp_path / f"out.bin.{dead_pid}.zz9.partial"
        live_file = tmp_path / f"out.bin.{live.pid}.abc123_x.partial"
        old_legacy = tmp_path / "out.bin.k2j4h5g6.partial"
        new_legacy = tmp_path / "out.bin.a1b2c3d4.partial"
        other_target = tmp_path / f"out.bin.other.{dead_pid}.abc.partial"
        download = tmp_path / "out.bin.partial"  # a resumable download's file: not a temp of these writes
        for f in (dead_file, live_file, old_legacy, new_legacy, other_target, download):
            f.write_bytes(b"x")
        dead_dir.mkdir()
        (dead_dir / "model.py").write_text("")
        past = time.time() - LEGACY_STALE_AGE - 60
        os.utime(old_legacy, (past, past))
        with atomic_open(target) as f:
            f.write(b"data")
        left = {p.name for p in tmp_path.iterdir()}
        assert left == {"out.bin", live_file.name, new_legacy.name, other_target.name, download.name}, left
    finally:
        live.kill()
        live.wait()
