"""LSTM and RNN with ``expose_hidden``: the t=0 hidden states are bottoms (after x, cont and the
optional static input) and the states after the last step are tops, so a caller carries the state
across calls (recurrent_layer.cpp). No Caffe fixture uses it; its meaning pins it down: zero initial
states give the layer without expose_hidden, and running the sequence in two halves, feeding the
first half's final states to the second, gives the whole sequence's outputs and final states.
Both backends, with and without a static input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from converters import to_onnx, to_pytorch
from prototxt import load_net
from tests.converters.common import ort_session

T, N, H, K, S = 6, 3, 5, 4, 7


def _net(tmp_path, kind: str, t: int, expose: bool, static: bool) -> str:
    states = ["h0", "c0"] if kind == "LSTM" else ["h0"]
    shapes = [("x", (t, N, K)), ("cont", (t, N))] + ([("xs", (N, S))] if static else [])
    if expose:
        shapes += [(s, (1, N, H)) for s in states]
    inputs = "".join(f'input: "{name}"\ninput_shape {{ {" ".join(f"dim: {d}" for d in shape)} }}\n'
                     for name, shape in shapes)
    bottoms = "".join(f' bottom: "{name}"' for name, _ in shapes)
    tops = ' top: "y"' + ("".join(f' top: "{s[0]}T"' for s in states) if expose else "")
    path = tmp_path / f"{kind}_{t}_{expose}_{static}.prototxt"
    path.write_text(f'name: "r"\n{inputs}layer {{ name: "rec" type: "{kind}"{bottoms}{tops}\n'
                    f'  recurrent_param {{ num_output: {H} expose_hidden: {str(expose).lower()} }} }}\n')
    return str(path)


def _graph(tmp_path, kind, t, expose, static, blobs):
    graph = load_net(_net(tmp_path, kind, t, expose, static))
    graph.layer("rec").blobs = blobs
    return graph


def _run(graph, feeds: dict, backend: str) -> dict:
    names = [graph.values[v].caffe_name for v in graph.inputs]
    if backend == "torch":
        with torch.no_grad():
            out = to_pytorch(graph)(*[torch.from_numpy(feeds[n]) for n in names])
        out = out if isinstance(out, dict) else {"y": out}
        return {k: v.numpy() for k, v in out.items()}
    sess = ort_session(to_onnx(graph))
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {n: feeds[n] for n in names})))


@pytest.mark.parametrize("backend", ["torch", "onnx"])
@pytest.mark.parametrize("static", [False, True], ids=["plain", "static"])
@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_expose_hidden_carries_state(tmp_path, kind, static, backend):
    rng = np.random.default_rng(0)
    probe = load_net(_net(tmp_path, kind, T, False, static))
    blobs = [rng.uniform(-0.5, 0.5, s).astype(np.float32) for s in probe.layer("rec").param_shapes]
    states = ["h", "c"] if kind == "LSTM" else ["h"]
    x = rng.standard_normal((T, N, K)).astype(np.float32)
    cont = np.ones((T, N), np.float32)
    cont[0, 0] = 0  # stream 0 starts a new sequence at t=0 (its exposed state is ignored)
    cont[4, 1] = 0  # stream 1 starts over at t=4
    common = {"x": x, "cont": cont, **({"xs": rng.standard_normal((N, S)).astype(np.float32)} if static else {})}
    zeros = {f"{s}0": np.zeros((1, N, H), np.float32) for s in states}

    # zero initial states: the layer without expose_hidden
    plain = _run(_graph(tmp_path, kind, T, False, static, blobs), common, backend)["y"]
    whole = _run(_graph(tmp_path, kind, T, True, static, blobs), {**common, **zeros}, backend)
    np.testing.assert_allclose(whole["y"], plain, rtol=1e-5, atol=1e-6)
    assert sorted(whole) == sorted(["y"] + [f"{s}T" for s in states])
    assert all(whole[f"{s}T"].shape == (1, N, H) for s in states)
    if kind == "LSTM":  # h_T is the last output step
        np.testing.assert_array_equal(whole["hT"][0], whole["y"][-1])

    # two halves, the first half's final states fed to the second
    half = T // 2
    graph_half = _graph(tmp_path, kind, half, True, static, blobs)
    first = _run(graph_half, {**common, "x": x[:half], "cont": cont[:half], **zeros}, backend)
    carried = {f"{s}0": first[f"{s}T"] for s in states}
    second = _run(graph_half, {**common, "x": x[half:], "cont": cont[half:], **carried}, backend)
    np.testing.assert_allclose(np.concatenate([first["y"], second["y"]]), whole["y"], rtol=1e-5, atol=1e-6)
    for s in states:
        np.testing.assert_allclose(second[f"{s}T"], whole[f"{s}T"], rtol=1e-5, atol=1e-6)

    # a non-zero initial state matters, except for streams that start a sequence at t=0
    other = {f"{s}0": rng.standard_normal((1, N, H)).astype(np.float32) for s in states}
    moved = _run(_graph(tmp_path, kind, T, True, static, blobs), {**common, **other}, backend)["y"]
    np.testing.assert_allclose(moved[:, 0], whole["y"][:, 0], rtol=1e-5, atol=1e-6)  # cont=0 resets h (and c)
    assert not np.allclose(moved[:, 2], whole["y"][:, 2])


def test_hidden_state_shape_checked(tmp_path):
    path = _net(tmp_path, "LSTM", T, True, False)
    text = open(path).read().replace(f"dim: 1 dim: {N} dim: {H} }}\ninput: \"c0\"", f"dim: 1 dim: {N} dim: {H + 1} }}\ninput: \"c0\"")
    open(path, "w").write(text)
    with pytest.raises(Exception) as info:
        load_net(path).require_shapes()
    assert "hidden state at t=0" in str(info.value) and "(1, 3, 5)" in str(info.value), str(info.value)
