"""prototxt/caffe_pb2.py is exactly what the pinned protoc makes of prototxt/caffe.proto."""
from __future__ import annotations

from pathlib import Path

import pytest

import prototxt


def test_caffe_pb2_is_regenerated_from_caffe_proto(tmp_path):
    protoc = pytest.importorskip("grpc_tools.protoc", reason="grpcio-tools (the pinned protoc) is not installed")
    here = Path(prototxt.__file__).parent
    # The command of prototxt/regenerate_pb2.py, writing into tmp_path instead of the package.
    rc = protoc.main(["grpc_tools.protoc", f"-I{here}", f"--python_out={tmp_path}", str(here / "caffe.proto")])
    assert rc == 0
    assert (tmp_path / "caffe_pb2.py").read_bytes() == (here / "caffe_pb2.py").read_bytes(), \
        "caffe_pb2.py is stale: run `python prototxt/regenerate_pb2.py` (grpcio-tools==1.85.1)"
