"""End to end: generated models compile, export, load in a fresh process and match onnxruntime."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import tvm_sparse
from tvm_sparse import models

from .conftest import assert_close, ort_run

pytestmark = pytest.mark.slow


def _input(model, seed=0):
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return np.random.default_rng(seed).standard_normal(dims).astype(np.float32)


@pytest.mark.parametrize(
    "name, build",
    [
        ("mlp", lambda: models.pruned_mlp(layers=4, hidden=512, density=0.1)),
        ("mlp_b16", lambda: models.pruned_mlp(layers=3, hidden=256, density=0.1, batch=16)),
        ("gsc", lambda: models.gsc_sparse_cnn()),
        ("gsc_super_boost", lambda: models.gsc_sparse_cnn(super_sparse=True, boosting=True)),
        ("gsc_b4", lambda: models.gsc_sparse_cnn(super_sparse=True, batch=4)),
        # batch 16 fills the lanes of the samples-in-lanes conv (a candidate for cnn2)
        ("gsc_b16", lambda: models.gsc_sparse_cnn(super_sparse=True, batch=16)),
        ("gsc_dense_twin", lambda: models.gsc_dense_twin()),
    ],
)
def test_model_matches_onnxruntime_after_reload(name, build, tmp_path):
    model = build()
    path = models.save(model, tmp_path / f"{name}.onnx")
    x = _input(model)
    expected = ort_run(path, x)
    compiled = tvm_sparse.compile(path, "llvm")
    assert_close(compiled.run(x), expected)
    assert [layer.name for layer in compiled.report.layers]
    lib = tmp_path / f"{name}.so"
    compiled.export(lib)
    np.save(tmp_path / "x.npy", x)
    # a fresh interpreter: nothing but TVM's runtime and this package
    script = textwrap.dedent(
        f"""
        import numpy as np, tvm_sparse
        m = tvm_sparse.load({str(lib)!r})
        np.save({str(tmp_path / "y.npy")!r}, m.run(np.load({str(tmp_path / "x.npy")!r})))
        print(m.report.layers[0].name)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert_close(np.load(tmp_path / "y.npy"), expected)


def test_dense_baseline_matches_too():
    model = models.tiny_sparse_cnn(boosting=True)
    x = _input(model, seed=3)
    dense = tvm_sparse.compile(model, "llvm", sparse=False)
    assert all(layer.chosen == "dense" for layer in dense.report.layers)
    assert_close(dense.run(x), ort_run(model, x))


def test_relax_module_input():
    from tvm_sparse.frontend import import_model

    model = models.pruned_mlp(layers=2, hidden=64, density=0.3)
    mod = import_model(model).mod
    x = _input(model)
    assert_close(tvm_sparse.compile(mod, "llvm").run(x), ort_run(model, x))


def test_run_rejects_wrong_inputs():
    compiled = tvm_sparse.compile(models.pruned_mlp(layers=1, hidden=16, density=1.0), "llvm")
    with pytest.raises(tvm_sparse.RunInputError, match=r"expected shape \[1, 16\], got \[2, 16\]"):
        compiled.run(np.zeros((2, 16), np.float32))
    with pytest.raises(tvm_sparse.RunInputError, match="expected dtype float32, got float64"):
        compiled.run(np.zeros((1, 16)))
    with pytest.raises(tvm_sparse.RunInputError, match="expected 1 input"):
        compiled.run()


def test_odd_input_names_are_sanitized_for_tvm_but_kept_for_users(tmp_path):
    model = models.pruned_mlp(layers=2, hidden=32, density=0.25)
    odd = "input:0/x y-1"
    for node in model.graph.node:
        node.input[:] = [odd if name == "input" else name for name in node.input]
    model.graph.input[0].name = odd
    x = _input(model)
    compiled = tvm_sparse.compile(model, "llvm")
    assert compiled.inputs[0].name == odd
    assert_close(compiled.run(x), ort_run(model, x))
    lib = tmp_path / "odd.so"
    compiled.export(lib)
    assert tvm_sparse.load(lib).inputs[0].name == odd


def test_layer_followed_by_elementwise_op():
    """A kernel followed by Sigmoid: FuseOps must not fuse into our scheduled kernel."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    w = (rng.standard_normal((24, 16)) * (rng.random((24, 16)) < 0.2)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["input", "W"], ["g"], transB=1),
            helper.make_node("Sigmoid", ["g"], ["output"]),
        ],
        "gs",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [2, 24])],
        initializer=[numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = _input(model)
    for sparse in (True, False):
        assert_close(tvm_sparse.compile(model, "llvm", sparse=sparse).run(x), ort_run(model, x))


def test_scalar_inputs_stay_zero_dimensional():
    """Clip with its bounds as 0-d graph inputs (as ONNX's own backend tests feed them): the
    module must hand the VM 0-d tensors (np.ascontiguousarray made them 1-d, and TVM refused)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Clip", ["x", "lo", "hi"], ["y"])],
        "clip_scalar_bounds",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5]),
            helper.make_tensor_value_info("lo", TensorProto.FLOAT, []),
            helper.make_tensor_value_info("hi", TensorProto.FLOAT, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    module = tvm_sparse.compile(model, "llvm")
    x = np.linspace(-2, 2, 10, dtype=np.float32).reshape(2, 5)
    lo, hi = np.array(-0.5, np.float32), np.array(1.0, np.float32)
    np.testing.assert_array_equal(module.run(x, lo, hi), np.clip(x, lo, hi))
