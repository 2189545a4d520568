"""The caffemodels that shared/tools/make_weights.py writes (the exact files real Caffe loaded for the
reference fixtures) load with bit-identical values, in the current layer format and as old V1 binaries."""
from __future__ import annotations

import pytest

from prototxt import load_net
from tests.helpers import (fixture_inputs, make_weights, make_weights_module, recipe, recipe_bytes, recipe_formats,
                           reference_fixtures, same_bits, shared_params)

BIG = 50e6  # bytes of weights: above this a case takes seconds (make_weights writes ~70 MB/s)


def _cases():
    cases, ids, marks = [], [], []
    for fixture in reference_fixtures():
        if not (fixture / "recipe.json").is_file():
            continue  # real trained weights: see test_corpus.py
        rec = recipe(fixture)
        for fmt in recipe_formats(rec):
            cases.append((fixture, fmt))
            ids.append(f"{fixture.parent.name}/{fixture.name}-{fmt}")
            marks.append([pytest.mark.slow] if recipe_bytes(rec) > BIG else [])
    return shared_params(cases, ids, marks)


@pytest.mark.parametrize("case", _cases())
def test_generated_weights_load_bit_identical(case, weights_cache):
    fixture, fmt = case
    folder, keep = weights_cache
    path = make_weights(fixture, fmt, folder)
    try:
        graph = load_net(fixture / "net.prototxt", path, input_shapes=fixture_inputs(fixture))
        wrong = []
        for layer, arrays in make_weights_module().weights(recipe(fixture)):
            got = graph.layer(layer["name"]).blobs
            if len(got) != len(arrays) or not all(same_bits(a, b) for a, b in zip(got, arrays)):
                wrong.append(layer["name"])
        assert wrong == []
        # Caffe fills the FIRST layer of a name; a later namesake keeps its filler init.
        first = {}
        for layer in graph.layers:
            first.setdefault(layer.name, layer)
        assert graph.weights_report.missing == [l.name for l in graph.layers if l.param_shapes and first[l.name] is not l]
    finally:
        if not keep:
            path.unlink()
