"""Canonicalization: BatchNorm and scales fold into the layer, numerics and zeros are kept."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from tvm_sparse import models
from tvm_sparse.frontend import import_model
from tvm_sparse.ir.layers import find_layers
from tvm_sparse.ir.relax_utils import iter_bindings, op_name
from tvm_sparse.passes.canonicalize import canonicalize, canonicalize_passes
from tvm_sparse.passes.fold_affine import FoldAffineIntoLayers
from tvm_sparse.passes.numpy_fold import NumpyFoldConstant


def _model(nodes, inits, in_shape, out_shape):
    graph = helper.make_graph(
        nodes,
        "m",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, out_shape)],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _bn_inits(rng, c, gamma=None):
    return {
        "s": (rng.random(c) + 0.5 if gamma is None else gamma).astype(np.float32),
        "b": rng.standard_normal(c).astype(np.float32),
        "m": rng.standard_normal(c).astype(np.float32),
        "v": (rng.random(c) + 0.5).astype(np.float32),
    }


def _conv_bn(rng, gamma=None):
    w = rng.standard_normal((6, 3, 3, 3)).astype(np.float32)
    w[:, :, 0, :] = 0  # sparsity that must survive folding
    w[2] = 0  # one all-zero filter
    inits = {"W": w, "cb": rng.standard_normal(6).astype(np.float32), **_bn_inits(rng, 6, gamma)}
    nodes = [
        helper.make_node("Conv", ["input", "W", "cb"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["bn"]),
        helper.make_node("Relu", ["bn"], ["output"]),
    ]
    return _model(nodes, inits, [2, 3, 8, 8], [2, 6, 8, 8]), w


def _gemm_bn(rng):
    w = rng.standard_normal((10, 12)).astype(np.float32) * (rng.random((10, 12)) < 0.3)
    inits = {"W": w, "gb": rng.standard_normal(10).astype(np.float32), **_bn_inits(rng, 10)}
    nodes = [
        helper.make_node("Gemm", ["input", "W", "gb"], ["g"], transB=1, alpha=0.5, beta=2.0),
        helper.make_node("BatchNormalization", ["g", "s", "b", "m", "v"], ["output"]),
    ]
    return _model(nodes, inits, [3, 12], [3, 10]), w


def _run(mod, x):
    ex = tvm.compile(mod, target="llvm")
    return relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()


@pytest.mark.parametrize("build", [_conv_bn, _gemm_bn], ids=["conv_bn", "gemm_bn"])
def test_batchnorm_folds_into_layer(build):
    rng = np.random.default_rng(1)
    model, w = build(rng)
    imported = import_model(model)
    canon = canonicalize(imported.mod)
    ops = [op_name(b.value) for b in iter_bindings(canon["main"])]
    assert not any(
        o and ("batch_norm" in o or o in ("relax.divide", "relax.subtract")) for o in ops
    )
    (layer,) = find_layers(canon["main"])
    assert layer.bias is not None
    # zeros of the pruned weight stay exactly zero after folding the BN scale
    weight = layer.weight.reshape(w.shape)
    assert np.all(weight[w == 0] == 0)
    assert np.count_nonzero(weight) == np.count_nonzero(w)
    x = rng.standard_normal([d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim])
    x = x.astype(np.float32)
    np.testing.assert_allclose(_run(canon, x), _run(imported.mod, x), rtol=1e-4, atol=1e-4)


def test_relu_becomes_layer_activation():
    model, _ = _conv_bn(np.random.default_rng(2))
    (layer,) = find_layers(canonicalize(import_model(model).mod)["main"])
    assert layer.activation == "relu" and layer.kind == "conv2d"
    assert layer.conv_attrs["padding"] == (1, 1, 1, 1)


def test_zero_bn_scale_is_not_folded():
    """gamma = 0 would turn NaN/Inf activations into 0: keep the multiply separate."""
    rng = np.random.default_rng(3)
    gamma = np.ones(6, np.float32)
    gamma[4] = 0.0
    model, _ = _conv_bn(rng, gamma)
    canon = canonicalize(import_model(model).mod)
    ops = [op_name(b.value) for b in iter_bindings(canon["main"])]
    assert "relax.multiply" in ops
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(
        _run(canon, x), _run(import_model(model).mod, x), rtol=1e-4, atol=1e-4
    )


def test_matmul_with_constant_weight_is_a_layer():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((12, 7)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["input", "W"], ["output"])]
    model = _model(nodes, {"W": w}, [2, 5, 12], [2, 5, 7])
    onnx.checker.check_model(model)
    (layer,) = find_layers(canonicalize(import_model(model).mod)["main"])
    assert layer.kind == "linear" and layer.rows == 10
    np.testing.assert_array_equal(layer.weight, w.T)


def test_folding_leaves_the_callers_module_as_it_was():
    mod = import_model(models.gsc_sparse_cnn(super_sparse=True)).mod
    mod = relax.transform.FoldConstant()(relax.transform.DecomposeOpsForInference()(mod))
    main = mod["main"]
    folded = FoldAffineIntoLayers()(mod)
    assert mod["main"].same_as(main)
    assert not folded["main"].same_as(main)


def test_gathers_clamp_then_check_their_indices_and_tvm_prints_no_fast_mode_warning(capfd):
    """ONNX Gather with runtime indices: TVM's fast mode warned on every compile and reads out
    of bounds on a bad index; after canonicalize every take clamps, with the same values, and
    the compiled model raises on an index out of range, as onnxruntime does (clamped, it read
    the last row silently)."""
    import onnxruntime as ort
    from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

    import tvm_sparse
    from tvm_sparse.errors import RunError

    data = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(3, 4), "data")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["data", "i"], ["y"], axis=0)],
        "gather",
        [helper.make_tensor_value_info("i", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        [data],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    mod = canonicalize(import_model(model).mod)
    modes = [
        b.value.attrs.mode for b in iter_bindings(mod["main"]) if op_name(b.value) == "relax.take"
    ]
    assert modes == ["clip"]
    capfd.readouterr()
    compiled = tvm_sparse.compile(model, "llvm")
    assert "Fast mode segfaults" not in capfd.readouterr().err
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for i in (np.array([2, 0], np.int64), np.array([-3, -1], np.int64)):  # negatives: ONNX's
        np.testing.assert_array_equal(compiled.run(i), session.run(None, {"i": i})[0])
    for bad in (np.array([3, 1], np.int64), np.array([0, -4], np.int64)):
        with pytest.raises(InvalidArgument, match="out of data bounds"):
            session.run(None, {"i": bad})
        with pytest.raises(RunError, match=r"Gather: an index is out of range.*\[-3, 2\]"):
            compiled.run(bad)


def test_constant_comparisons_fold_in_numpy():
    """The frontend normalizes each constant Gather index on a static shape (x[:, -1] of a
    sequence) with where(less(i, 0), i + dim, i): numpy folds it all, where FoldConstant built
    it with LLVM (~3 s), and folding only the less made SafeFoldConstant skip the rest."""
    nodes = [helper.make_node("Gather", ["input", "i"], ["output"], axis=1)]
    model = _model(nodes, {"i": np.array(-1, np.int64)}, [2, 5, 4], [2, 4])
    imported = import_model(model).mod
    assert "relax.less" in [op_name(b.value) for b in iter_bindings(imported["main"])]
    canon = NumpyFoldConstant()(canonicalize_passes()[0](imported))  # ClipTakeMode first
    ops = [op_name(b.value) for b in iter_bindings(canon["main"])]
    # the whole index plumbing folds: the take reads a constant index (what rewrite_kwta needs)
    assert not {"relax.less", "relax.where", "relax.add", "relax.shape_to_tensor"} & set(ops)
    x = np.random.default_rng(0).standard_normal((2, 5, 4)).astype(np.float32)
    np.testing.assert_array_equal(_run(canonicalize(imported), x), x[:, -1])
