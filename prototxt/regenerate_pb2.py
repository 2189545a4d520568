"""Regenerate caffe_pb2.py from caffe.proto (needs grpcio-tools==1.85.1, i.e. protoc 35.1).

Same as running, from the repo root:
    python -m grpc_tools.protoc -I prototxt --python_out=prototxt prototxt/caffe.proto
"""
import os
import sys

from grpc_tools import protoc

here = os.path.dirname(os.path.abspath(__file__))
rc = protoc.main(["grpc_tools.protoc", "-I" + here, "--python_out=" + here, os.path.join(here, "caffe.proto")])
sys.exit(rc)
