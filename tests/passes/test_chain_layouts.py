"""chain_tile_layouts: consecutive batched sparse linears pass activations in the transposed
tile layout, only where the activation has no other reader, and the model still matches
onnxruntime."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import tvm_sparse
from tvm_sparse import models

from ..conftest import assert_close, ort_run

BATCH, HIDDEN = 64, 256


def _reasons(compiled) -> list[str]:
    return [layer.reason for layer in compiled.report.layers]


def test_mlp_chain_keeps_activations_transposed():
    model = models.pruned_mlp(layers=3, hidden=HIDDEN, density=0.1, batch=BATCH)
    x = np.random.default_rng(0).standard_normal((BATCH, HIDDEN)).astype(np.float32)
    compiled = tvm_sparse.compile(model, "llvm", measure=False)
    assert [layer.chosen for layer in compiled.report.layers] == ["csr"] * 3
    first, middle, last = _reasons(compiled)
    assert first.endswith("output stays transposed for the next layer")
    assert middle.endswith("input and output stay transposed")
    assert last.endswith("reads the previous layer's transposed output")
    assert_close(compiled.run(x), ort_run(model, x))


def test_activation_with_another_reader_stays_in_rows():
    """h1 feeds the next Gemm and a residual Add: it must stay [batch, features] for the Add,
    so no layer is chained (h2's reader is the Add, not a Gemm)."""
    rng = np.random.default_rng(1)

    def sparse_weight(name):
        w = rng.standard_normal((HIDDEN, HIDDEN)) * (rng.random((HIDDEN, HIDDEN)) < 0.1)
        return numpy_helper.from_array((w * 0.3).astype(np.float32), name)

    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["input", "W1"], ["g1"], transB=1),
            helper.make_node("Relu", ["g1"], ["h1"]),
            helper.make_node("Gemm", ["h1", "W2"], ["g2"], transB=1),
            helper.make_node("Relu", ["g2"], ["h2"]),
            helper.make_node("Add", ["h1", "h2"], ["s"]),
            helper.make_node("Gemm", ["s", "W3"], ["output"], transB=1),
        ],
        "residual",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [BATCH, HIDDEN])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [BATCH, HIDDEN])],
        initializer=[sparse_weight("W1"), sparse_weight("W2"), sparse_weight("W3")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((BATCH, HIDDEN)).astype(np.float32)
    compiled = tvm_sparse.compile(model, "llvm", measure=False)
    assert [layer.chosen for layer in compiled.report.layers] == ["csr"] * 3
    assert not any("transposed" in reason for reason in _reasons(compiled))
    assert_close(compiled.run(x), ort_run(model, x))


def test_small_batch_has_no_tile_layout():
    """Batch 2 runs the row kernel, which has no tile form: nothing is chained."""
    model = models.pruned_mlp(layers=3, hidden=HIDDEN, density=0.1, batch=2)
    x = np.random.default_rng(2).standard_normal((2, HIDDEN)).astype(np.float32)
    compiled = tvm_sparse.compile(model, "llvm", measure=False)
    assert not any("transposed" in reason for reason in _reasons(compiled))
    assert_close(compiled.run(x), ort_run(model, x))
