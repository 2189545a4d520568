"""`zoo run` on a net that samples at test (Monte Carlo dropout, as Bayesian SegNet): the class
probabilities of --samples stochastic passes are averaged (Scripts/test_bayesian_segnet.py of
alexgkendall/SegNet-Tutorial: the image repeated over the batch, the mean as the prediction, the variance as
the uncertainty). Tiny hand-written nets: Dropout { sample_weights_test: true } then Softmax or ArgMax."""
from __future__ import annotations

import itertools
import json
import warnings

import numpy as np
import pytest

from converters import to_onnx
from converters.layers.neuron import MonteCarloDropoutNote
from prototxt import load_net
from tests.converters.common import ort_session
from zoo import cli
from zoo.inference.sampling import CHUNK, Sampler, class_probabilities

SHAPE = (3, 4, 4)


def _prototxt(tmp_path, batch: int = 4, sample: bool = True, end: str = "Softmax", name: str = "mc", side: int = 4):
    path = tmp_path / f"{name}.prototxt"
    flag = "sample_weights_test: true" if sample else ""
    end_param = " argmax_param { axis: 1 }" if end == "ArgMax" else ""
    path.write_text(f'name: "{name}"\ninput: "data"\ninput_shape {{ dim: {batch} dim: 3 dim: {side} dim: {side} }}\n'
                    'layer { name: "scale" type: "Power" bottom: "data" top: "scaled" power_param { scale: 0.01 } }\n'
                    'layer { name: "drop" type: "Dropout" bottom: "scaled" top: "drop" '
                    f'dropout_param {{ dropout_ratio: 0.5 {flag} }} }}\n'
                    f'layer {{ name: "out" type: "{end}" bottom: "drop" top: "out"{end_param} }}\n')
    return path


def _session(tmp_path, dynamic: bool):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MonteCarloDropoutNote)
        return ort_session(to_onnx(load_net(_prototxt(tmp_path, batch=1)), dynamic_batch=dynamic))


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def _exact(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mean and variance of softmax(Dropout 0.5 of 0.01 x) over every mask of the 3 channels."""
    draws = [_softmax(np.asarray(keep, np.float64)[:, None, None] * 2 * 0.01 * x)
             for keep in itertools.product((0, 1), repeat=SHAPE[0])]
    return np.mean(draws, axis=0), np.var(draws, axis=0)


def test_the_mean_of_many_passes_approaches_the_exact_expectation(tmp_path):
    x = np.random.default_rng(0).uniform(-100, 100, SHAPE).astype(np.float32)
    mean, spread, softmaxed = Sampler(_session(tmp_path, dynamic=True), 4000, "out").mean(x)
    want, var = _exact(x.astype(np.float64))
    assert not softmaxed  # the Softmax's output is already probabilities
    np.testing.assert_allclose(mean, want, atol=0.03)  # sd of a mean of 4000 draws of [0, 1] values <= 0.008
    best = np.argmax(want, axis=0)
    predicted = np.take_along_axis(var, best[None], axis=0)[0].mean()
    assert spread["uncertainty"] == pytest.approx(predicted, abs=0.01)
    assert spread["mean_class_variance"] == pytest.approx(var.mean(), abs=0.01)
    assert spread["uncertainty"] > 0.02  # the samples really differ


@pytest.mark.parametrize("dynamic", [True, False])
def test_the_mean_is_that_of_the_same_draws_run_by_hand(tmp_path, dynamic):
    """Batches of copies, CHUNK at most (a model taking any batch), or N runs (a fixed batch of 1): the same
    numbers as the same passes of a fresh session of the model (an onnxruntime session repeats its draws from
    the start)."""
    x = np.random.default_rng(1).uniform(-100, 100, SHAPE).astype(np.float32)
    n = CHUNK + 4
    mean, spread, _ = Sampler(_session(tmp_path, dynamic), n, "out").mean(x)
    by_hand = _session(tmp_path, dynamic)
    feeds = [np.repeat(x[None], k, axis=0) for k in (CHUNK, 4)] if dynamic else [x[None]] * n
    draws = np.concatenate([by_hand.run(None, {"data": f})[0] for f in feeds]).astype(np.float64)
    np.testing.assert_allclose(mean, draws.mean(axis=0), rtol=1e-12)
    assert len({d.tobytes() for d in draws}) == n  # different passes, not one repeated
    best = np.argmax(draws.mean(axis=0), axis=0)
    assert spread["uncertainty"] == pytest.approx(np.take_along_axis(draws.var(axis=0), best[None], 0).mean())
    assert spread["mean_class_variance"] == pytest.approx(draws.var(axis=0).mean())


def test_scores_not_probabilities_are_softmaxed_before_averaging():
    scores = np.array([[[0.0]], [[np.log(3.0)]]])[None]  # (1, 2, 1, 1): probabilities 1/4, 3/4
    probs, softmaxed = class_probabilities(scores)
    assert softmaxed
    np.testing.assert_allclose(probs.ravel(), [0.25, 0.75])


def _photo(path):
    from PIL import Image
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (4, 4, 3), dtype=np.uint8)).save(path)
    return path


def _run(tmp_path, monkeypatch, capsys, net, *extra) -> tuple[int, str, str]:
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "home"))
    code = cli.main(["run", str(net), str(_photo(tmp_path / "a.png")), *extra])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_zoo_run_averages_the_prototxt_batch_of_passes_and_gives_the_uncertainty(tmp_path, monkeypatch, capsys):
    code, out, err = _run(tmp_path, monkeypatch, capsys, _prototxt(tmp_path, batch=4), "--json")
    assert code == 0
    assert "the mean of 4 stochastic passes" in err  # the prototxt's batch, as the publisher's script
    assert "one random pass" not in err
    (result,) = json.loads(out)
    assert result["uncertainty"] > 0 and result["mean_class_variance"] > 0
    assert sum(c["share"] for c in result["classes"]) == pytest.approx(1.0)
    code, _, err = _run(tmp_path, monkeypatch, capsys, _prototxt(tmp_path, batch=4), "--samples", "7",
                        "--draw", str(tmp_path / "map.png"))
    assert code == 0 and "the mean of 7 stochastic passes" in err and (tmp_path / "map.png").is_file()


def test_zoo_run_averages_the_scores_before_an_argmax(tmp_path, monkeypatch, capsys):
    """A net ending in ArgMax gives class indices; the passes' probabilities are those of the scores it reads
    (softmaxed), so the uncertainty is not the zero of averaging one-channel indices."""
    code, out, err = _run(tmp_path, monkeypatch, capsys, _prototxt(tmp_path, end="ArgMax"), "--samples", "16",
                          "--json")
    assert code == 0, err
    (result,) = json.loads(out)
    assert result["uncertainty"] > 0.01
    assert {c["class"] for c in result["classes"]} <= {0, 1, 2}


def test_zoo_run_averages_a_classifier_that_samples(tmp_path, monkeypatch, capsys):
    """A 1x1 output is class scores: the top classes are those of the mean, with the uncertainty beside them."""
    code, out, err = _run(tmp_path, monkeypatch, capsys, _prototxt(tmp_path, side=1), "--json", "--samples", "32")
    assert code == 0 and "the mean of 32 stochastic passes" in err
    (result,) = json.loads(out)
    assert sum(t["probability"] for t in result["top"]) == pytest.approx(1.0)
    assert result["uncertainty"] > 0


def test_zoo_run_on_a_converted_onnx_file_that_samples(tmp_path, monkeypatch, capsys):
    """A converted .onnx has no prototxt: its random operator says it samples; its batch is any, so one pass
    unless --samples says more."""
    from converters import save_onnx
    path = tmp_path / "mc.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MonteCarloDropoutNote)
        save_onnx(load_net(_prototxt(tmp_path, batch=1)), path)
    code, out, err = _run(tmp_path, monkeypatch, capsys, path, "--json")
    assert code == 0 and "the results are one random pass; pass --samples N" in err
    assert json.loads(out)[0]["uncertainty"] == 0.0  # one sample varies from nothing
    code, out, err = _run(tmp_path, monkeypatch, capsys, path, "--json", "--samples", "9")
    assert code == 0 and "the mean of 9 stochastic passes" in err
    assert json.loads(out)[0]["uncertainty"] > 0


@pytest.mark.parametrize("value", ["0", "-3"])
def test_zoo_run_samples_below_one_is_one_line(tmp_path, monkeypatch, capsys, value):
    code, out, err = _run(tmp_path, monkeypatch, capsys, _prototxt(tmp_path), "--samples", value)
    assert code == 1 and out == ""
    assert err.strip() == f"zoo: error: --samples must be 1 or more (the stochastic passes averaged per image), " \
                          f"not {value}"


def test_zoo_run_on_a_net_without_random_layers_is_unchanged(tmp_path, monkeypatch, capsys):
    net = _prototxt(tmp_path, sample=False, name="plain")
    code, plain, err = _run(tmp_path, monkeypatch, capsys, net, "--json")
    assert code == 0 and "Monte Carlo" not in err
    code, sampled, err = _run(tmp_path, monkeypatch, capsys, net, "--json", "--samples", "5")
    assert code == 0 and sampled == plain
    assert "--samples applies only to nets that sample at test" in err and "--samples 5 ignored" in err
    assert "uncertainty" not in json.loads(plain)[0]
