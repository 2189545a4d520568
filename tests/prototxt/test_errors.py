"""Bad input gives one clear line naming the file and the place (line:column or layer), both from the
library and from `zoo info` (exit code 1, that line alone on stderr)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

from prototxt import (GraphError, MissingBottomError, PrototxtSyntaxError, ShapeError, UnsupportedLayers,
                      WeightsError, caffe_pb2, load_net, load_solver, read_caffemodel, write_caffemodel)
from prototxt.text import ForkParamWarning
from tests.helpers import REPO
from zoo.cli import main

INPUT = 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }\n'
CONV = ('layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" '
        'convolution_param { num_output: 4 kernel_size: 3 } }\n')


def write(tmp_path, text, name="net.prototxt"):
    path = tmp_path / name
    path.write_text(text)
    return path


def cli_error(capsys, *argv) -> str:
    """Run `zoo ...`, expect exit code 1 and exactly one stderr line; return the message."""
    code = main([*map(str, argv)])
    out, err = capsys.readouterr()
    assert code == 1, err
    assert err.count("\n") == 1 and err.startswith("zoo: error: "), err
    return err[len("zoo: error: "):].rstrip("\n")


def test_syntax_error_names_file_line_column_and_token(tmp_path, capsys):
    path = write(tmp_path, f'name: "bad"\n{INPUT}layer {{\n  name: "conv1" type: "Convolution"\n  }}\n}}\n')
    with pytest.raises(PrototxtSyntaxError) as err:
        load_net(path)
    assert (err.value.line, err.value.column) == (6, 1)
    assert cli_error(capsys, "info", path) == f"{path}:6:1: expected a field name but found '}}'"


def test_unknown_field_points_at_it_and_suggests_the_real_one(tmp_path, capsys):
    path = write(tmp_path, INPUT + 'layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"\n'
                                   '  convolution_param { num_output: 4 kernal_size: 3 } }\n')
    message = cli_error(capsys, "info", path)
    assert message.startswith(f"{path}:3:37: ConvolutionParameter has no field named 'kernal_size'; "
                              f"did you mean 'kernel_size'")


def test_fork_param_block_warns_with_its_place_and_still_loads(tmp_path, capsys):
    path = write(tmp_path, INPUT + 'layer { name: "relu" type: "ReLU" bottom: "data" top: "data"\n'
                                   '  margin_inner_product_param { type: QUADRUPLE base: 1000 } }\n')
    with pytest.warns(ForkParamWarning, match=r":3:3: skipped 'margin_inner_product_param'"):
        graph = load_net(path)
    assert [l.type for l in graph.layers] == ["Input", "ReLU"]
    assert main(["info", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "relu" in out
    assert err == (f"zoo: warning: {path}:3:3: skipped 'margin_inner_product_param', a layer parameter block of a Caffe fork "
                   f"this toolkit does not know\n")


def _small_net(tmp_path, num_output=4):
    return write(tmp_path, INPUT + CONV.replace("num_output: 4", f"num_output: {num_output}"))


def _weights(tmp_path, shapes, name="w.caffemodel"):
    layer = caffe_pb2.LayerParameter(name="conv1", type="Convolution").SerializeToString()
    rng = np.random.default_rng(0)
    path = tmp_path / name
    write_caffemodel(path, "net", [(layer, [rng.standard_normal(s).astype(np.float32) for s in shapes])])
    return path


def test_truncated_caffemodel(tmp_path, capsys):
    net = _small_net(tmp_path)
    good = _weights(tmp_path, [(4, 3, 3, 3), (4,)])
    bad = tmp_path / "truncated.caffemodel"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size - 9])
    with pytest.raises(WeightsError, match="truncated"):
        load_net(net, bad)
    message = cli_error(capsys, "info", net, "--weights", bad)
    assert message.startswith(f"{bad}: ") and "truncated" in message


def test_blob_shape_mismatch_names_layer_and_both_shapes(tmp_path, capsys):
    net = _small_net(tmp_path, num_output=5)
    weights = _weights(tmp_path, [(4, 3, 3, 3), (4,)])
    assert cli_error(capsys, "info", net, "--weights", weights) == (
        f"{weights}: layer 'conv1' blob 0 has shape 4x3x3x3 but the net needs 5x3x3x3; the weights do not fit "
        f"this prototxt (rename the layer to learn it from scratch)")


def test_missing_bottom_suggests_the_close_name(tmp_path, capsys):
    path = write(tmp_path, INPUT + CONV.replace('bottom: "data"', 'bottom: "dta"'))
    with pytest.raises(MissingBottomError) as err:
        load_net(path)
    assert (err.value.layer, err.value.bottom) == ("conv1", "dta")
    assert cli_error(capsys, "info", path) == (
        f"{path}: layer 'conv1' (Convolution): unknown bottom blob 'dta' (bottom 0); did you mean 'data'?")


def test_duplicate_top_that_is_not_in_place(tmp_path, capsys):
    path = write(tmp_path, INPUT + CONV + CONV.replace('name: "conv1"', 'name: "conv2"'))
    assert cli_error(capsys, "info", path) == (
        f"{path}: layer 'conv2': top blob 'conv1' is already produced by layer 'conv1' and this is not an in-place "
        f"use (top 0 must equal bottom 0); rename the top")


def test_cycle(tmp_path, capsys):
    path = write(tmp_path, INPUT + 'layer { name: "a" type: "Eltwise" bottom: "data" bottom: "b" top: "a" }\n'
                                   'layer { name: "b" type: "ReLU" bottom: "a" top: "b" }\n')
    with pytest.raises(GraphError, match="cycle"):
        load_net(path)
    assert cli_error(capsys, "info", path) == (
        f"{path}: layer 'a': the net has a cycle through blob 'b' (produced by 'b', which depends on 'a')")


def test_unknown_layer_types_are_listed_all_at_once(tmp_path, capsys):
    path = write(tmp_path, INPUT + 'layer { name: "n1" type: "MyNormalize" bottom: "data" top: "n1" }\n'
                                   'layer { name: "p1" type: "MyPermute" bottom: "n1" top: "p1" }\n'
                                   'layer { name: "n2" type: "MyNormalize" bottom: "data" top: "n2" }\n')
    graph = load_net(path)
    with pytest.raises(UnsupportedLayers) as err:
        graph.require_shapes()
    assert err.value.types == {"MyNormalize": ["n1", "n2"], "MyPermute": ["p1"]}
    assert cli_error(capsys, "info", path) == (
        f"{path}: unsupported layer types: MyNormalize ('n1', 'n2'), MyPermute ('p1'); these are fork or custom layer "
        f"types; register an implementation (converters.register_layer) to use them")


@pytest.mark.parametrize("dims, what", [
    ("input_dim: 100000000 " * 4, "(100000000, 100000000, 100000000, 100000000)"),
    ("input_dim: 1 input_dim: -3 input_dim: 5 input_dim: 5", "(1, -3, 5, 5)"),
])
def test_negative_or_absurd_dimension_fails_fast(dims, what, tmp_path, capsys):
    path = write(tmp_path, f'input: "data" {dims}\n' + CONV)
    start = time.perf_counter()
    with pytest.raises(ShapeError):
        load_net(path)
    assert time.perf_counter() - start < 1.0  # nothing of that size is ever allocated
    assert cli_error(capsys, "info", path) == (
        f"{path}: layer 'input' (Input): input shape {what} has a negative or absurd dimension")


def test_absurd_input_shape_override(tmp_path, capsys):
    path = _small_net(tmp_path)
    message = cli_error(capsys, "info", path, "--input-shape", "data=100000000,100000000,100000000,100000000")
    assert message.startswith(f"{path}: ") and "absurd" in message


def test_solver_file_with_inline_net_loads_its_net(tmp_path):
    path = write(tmp_path, f'base_lr: 0.01\nlr_policy: "fixed"\nnet_param {{ name: "inline"\n{INPUT}{CONV}}}\n',
                 "solver.prototxt")
    graph = load_net(path)
    assert graph.name == "inline" and [l.name for l in graph.layers] == ["data", "conv1"]
    assert load_solver(path).base_lr == pytest.approx(0.01)


def test_solver_file_naming_its_net_says_to_load_that(tmp_path, capsys):
    path = write(tmp_path, 'net: "train_val.prototxt"\nbase_lr: 0.01\n', "solver.prototxt")
    assert cli_error(capsys, "info", path) == (
        f"{path}: this is a solver file; load the net it names ('train_val.prototxt') instead")


def test_unreadable_file(tmp_path, capsys):
    path = tmp_path / "absent.prototxt"
    assert cli_error(capsys, "info", path) == f"{path}: cannot read: No such file or directory"


FIFO_READERS = """
import sys
from prototxt import CaffeError, load_blob, load_net, read_caffemodel
for read in (load_net, read_caffemodel, load_blob):
    try:
        read(sys.argv[1])
    except CaffeError as exc:
        print(exc)
"""


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this platform")
def test_a_named_pipe_is_refused_without_blocking(tmp_path):
    """open() on a FIFO waits for a writer forever: each reader refuses it in one line first (a subprocess
    with a timeout, so that a regression fails instead of hanging the suite)."""
    fifo = tmp_path / "net.prototxt"
    os.mkfifo(fifo)
    done = subprocess.run([sys.executable, "-c", FIFO_READERS, str(fifo)], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    want = f"{fifo}: cannot read: it is a named pipe (FIFO), not a regular file; give the path of the file itself"
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [want] * 3
    cli = subprocess.run([sys.executable, "-m", "zoo", "info", str(fifo)], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert (cli.returncode, cli.stderr) == (1, f"zoo: error: {want}\n")


def test_a_directory_or_device_is_refused_in_one_line(tmp_path, capsys):
    assert cli_error(capsys, "info", tmp_path) == (f"{tmp_path}: cannot read: it is a directory, not a regular file; "
                                                   f"give the path of the file itself")
    with pytest.raises(WeightsError, match="it is a character device, not a regular file"):
        read_caffemodel(os.devnull)


def test_traceback_only_with_zoo_debug(tmp_path, capsys, monkeypatch):
    path = write(tmp_path, INPUT + CONV.replace('bottom: "data"', 'bottom: "dta"'))
    monkeypatch.setenv("ZOO_DEBUG", "1")
    assert main(["info", str(path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("zoo: error: ")


def test_warnings_do_not_leak_into_a_failed_command(tmp_path, capsys):
    path = write(tmp_path, INPUT + 'layer { name: "n" type: "MyNormalize" bottom: "data" top: "n" norm_param { } }\n')
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # main() records warnings itself, whatever the outer filter says
        message = cli_error(capsys, "info", path)
    assert "Normalize" in message
