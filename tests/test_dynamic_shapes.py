"""Models with a dynamic batch or sequence axis keep their linears on tvm-sparse kernels built
for any row count, and match onnxruntime at every size, after export and load too."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import tvm_sparse
from tvm_sparse import models

from .conftest import ort_run


def _dynamic_mlp() -> onnx.ModelProto:
    model = models.pruned_mlp(layers=3, hidden=96, density=0.1, seed=4)
    for value in (model.graph.input[0], model.graph.output[0]):
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_param = "batch"
    del model.graph.value_info[:]
    return model


def _dynamic_sequence_model() -> onnx.ModelProto:
    """x [1, S, 32] -> MatMul(32x48, 80% zeros) + bias -> Relu -> MatMul(48x16, dense)."""
    rng = np.random.default_rng(7)
    w1 = rng.standard_normal((32, 48)).astype(np.float32)
    w1 *= rng.random(w1.shape) < 0.2
    b1 = rng.standard_normal(48).astype(np.float32)
    w2 = rng.standard_normal((48, 16)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "seq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "S", 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "S", 16])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"))],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_dynamic_batch_mlp_keeps_sparse_kernels_and_matches_at_any_batch(tmp_path):
    model = _dynamic_mlp()
    path = models.save(model, tmp_path / "mlp.onnx")
    # chosen by estimate, so the test does not depend on timings (90% zeros: CSR)
    compiled = tvm_sparse.compile(path, "llvm", measure=False)
    chosen = [row.chosen for row in compiled.report.layers]
    assert chosen == ["csr", "csr", "csr"], [r.reason for r in compiled.report.layers]
    compiled.export(tmp_path / "mlp.so")
    loaded = tvm_sparse.load(tmp_path / "mlp.so")
    for batch in (1, 5, 33):
        x = np.random.default_rng(batch).standard_normal((batch, 96)).astype(np.float32)
        want = ort_run(path, x)
        np.testing.assert_allclose(compiled.run(x), want, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(loaded.run(x), want, rtol=1e-4, atol=1e-4)


def test_dynamic_sequence_linears_flatten_symbolic_rows(tmp_path):
    path = models.save(_dynamic_sequence_model(), tmp_path / "seq.onnx")
    compiled = tvm_sparse.compile(path, "llvm")
    rows = compiled.report.layers
    assert len(rows) == 2 and all(r.chosen in ("dense", "csr") for r in rows), [
        (r.chosen, r.reason) for r in rows
    ]
    for seq in (1, 7, 20):
        x = np.random.default_rng(seq).standard_normal((1, seq, 32)).astype(np.float32)
        np.testing.assert_allclose(compiled.run(x), ort_run(path, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", ["input:6x96"])
def test_input_shapes_still_specialize_to_the_static_kernels(tmp_path, shape):
    path = models.save(_dynamic_mlp(), tmp_path / "mlp.onnx")
    compiled = tvm_sparse.compile(path, "llvm", input_shapes=shape)
    assert all(r.input_shape[0] == 6 for r in compiled.report.layers)
    x = np.random.default_rng(0).standard_normal((6, 96)).astype(np.float32)
    np.testing.assert_allclose(compiled.run(x), ort_run(path, x), rtol=1e-4, atol=1e-4)
