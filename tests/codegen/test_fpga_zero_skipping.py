"""The generated code really skips zeros: the weight headers hold the non-zeros (+ packing
padding) and no dense weight array is emitted for a sparse layer."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tvm_sparse import models
from tvm_sparse.codegen.fpga.from_relax import build_hw_model
from tvm_sparse.codegen.fpga.target import parse_fpga_target
from tvm_sparse.codegen.fpga.weight_stores import dense_weight
from tvm_sparse.codegen.fpga.writer import write_project
from tvm_sparse.frontend import import_model
from tvm_sparse.passes.canonicalize import canonicalize

_ARRAY = re.compile(r"static const (\S+) (\w+)\[(\d+)\] = \{([^}]*)\};", re.S)


@pytest.fixture(scope="module")
def canonical():
    imported = import_model(models.tiny_sparse_cnn())
    return canonicalize(imported.mod), imported.weighted_nodes


def _arrays(path):
    """{name: (C type, declared size, number of initializers)} of a weights header."""
    out = {}
    for c_type, name, size, body in _ARRAY.findall(path.read_text()):
        out[name] = (c_type, int(size), len([v for v in body.split(",") if v.strip()]))
    return out


@pytest.mark.parametrize("variant", ["sparse-sparse", "sparse-dense"])
def test_weight_words_are_the_non_zeros(tmp_path, canonical, variant):
    mod, names = canonical
    hw = build_hw_model(mod, parse_fpga_target("fpga"), variant, names)
    write_project(hw, tmp_path)
    for layer in hw.layers:
        if not layer.weighted:
            continue
        arrays = _arrays(tmp_path / "firmware" / "weights" / f"{layer.name}.h")
        for _, size, count in arrays.values():
            assert size == count  # what is declared is what is written
        values = {n: a for n, a in arrays.items() if a[0].endswith("weight_t")}
        words = sum(a[1] for a in values.values())
        nnz = int(np.count_nonzero(dense_weight(layer)))
        dense_size = layer.out_shape[0] * layer.n_kin
        assert nnz == layer.weights.nnz
        if layer.weight_density < 0.9:
            # no dense weight array for a sparse layer
            assert all(a[1] < dense_size for a in values.values()), layer.name
            if layer.engine == "sparse_dense":
                assert words == nnz + layer.weights.padding
            else:  # slots left empty by complementary packing are the only padding
                owner = layer.weights.arrays["owner"]
                empty = owner == layer.out_shape[0]
                assert words == nnz + int(empty.sum()) + layer.weights.padding
                assert not layer.weights.arrays["val"][empty].any()  # empty slots hold 0
                assert words < 0.6 * dense_size


def test_hw_model_weights_rebuild_the_model_weights(canonical):
    """The stores are lossless: rebuilt weights equal the canonical model's weights."""
    from tvm_sparse.ir.layers import find_layers

    mod, names = canonical
    reference = [spec.weight_2d for spec in find_layers(mod["main"])]
    for variant in ("dense", "sparse-dense", "sparse-sparse"):
        hw = build_hw_model(mod, parse_fpga_target("fpga"), variant, names)
        rebuilt = [dense_weight(layer) for layer in hw.layers if layer.weighted]
        for w, ref in zip(rebuilt, reference, strict=True):
            np.testing.assert_array_equal(w, ref)
