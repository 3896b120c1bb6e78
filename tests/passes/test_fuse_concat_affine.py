"""FuseConcatAffine: a channel concat and the per-channel affine ops and ReLU after it become
one copy kernel. Checked against onnxruntime on ONNX files (DenseNet's concat -> BatchNorm ->
ReLU, a plain concat, affine chains with the constant on either side, tails of positions that
are not whole vectors), and the forms it must leave alone."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import tvm_sparse
from tvm_sparse.passes.fuse_concat_affine import _fold

from ..conftest import assert_close, fused_text, ort_run


def _model(in_channels, hw, tail_nodes, consts=(), batch: int = 1) -> onnx.ModelProto:
    """Convs (one per input, so the model has layers) -> Concat(axis=1) -> ``tail_nodes``
    (reading "cat", writing "out")."""
    rng = np.random.default_rng(5)
    inits, nodes = [], []
    for i, c in enumerate(in_channels):
        w = rng.standard_normal((c, 3, 1, 1)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("Conv", ["x", f"w{i}"], [f"y{i}"]))
    nodes.append(
        helper.make_node("Concat", [f"y{i}" for i in range(len(in_channels))], ["cat"], axis=1)
    )
    nodes += tail_nodes
    inits += [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in consts]
    total = sum(in_channels)
    graph = helper.make_graph(
        nodes,
        "concat",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, *hw])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, total, *hw])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _batch_norm(total: int, rng) -> tuple[list, list]:
    consts = [
        ("gamma", rng.standard_normal(total)),
        ("beta", rng.standard_normal(total)),
        ("mean", rng.standard_normal(total)),
        ("var", rng.random(total) + 0.5),
    ]
    nodes = [
        helper.make_node("BatchNormalization", ["cat", "gamma", "beta", "mean", "var"], ["bn"]),
        helper.make_node("Relu", ["bn"], ["out"]),
    ]
    return nodes, consts


def _check(tmp_path, model: onnx.ModelProto, fused: bool) -> None:
    path = str(tmp_path / "concat.onnx")
    onnx.save(model, path)
    text = fused_text(model)
    assert ("concat_affine" in text) == fused
    assert ("R.concat(" not in text) == fused
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(0).standard_normal(dims).astype(np.float32)
    assert_close(tvm_sparse.compile(path, "llvm").run(x), ort_run(path, x))


@pytest.mark.parametrize(
    "in_channels, hw",
    [
        ((4, 3, 5), (8, 8)),  # 64 positions: whole vectors
        ((6, 2), (7, 7)),  # 49: three vectors and a scalar tail
        ((3,) * 9, (5, 6)),  # many inputs (a DenseNet block), 30 positions
    ],
)
def test_densenet_concat_batchnorm_relu(tmp_path, in_channels, hw):
    nodes, consts = _batch_norm(sum(in_channels), np.random.default_rng(1))
    _check(tmp_path, _model(in_channels, hw, nodes, consts), fused=True)


def test_plain_concat(tmp_path):
    """At batch 2 the inputs are not runs of the output, so FuseConcatProducers leaves the
    concat (batch 1: see test_fuse_concat_producers) and this pass copies it."""
    identity = [helper.make_node("Identity", ["cat"], ["out"])]
    _check(tmp_path, _model((4, 5), (6, 6), identity, batch=2), fused=True)


def test_affine_chain_with_the_constant_on_either_side(tmp_path):
    """k - x and x / k fold (scale -1, and 1/k); broadcast shapes () and (C, 1, 1)."""
    total = 7
    rng = np.random.default_rng(2)
    nodes = [
        helper.make_node("Sub", ["k1", "cat"], ["a"]),  # k - x
        helper.make_node("Div", ["a", "k2"], ["b"]),
        helper.make_node("Mul", ["b", "k3"], ["c"]),
        helper.make_node("Add", ["c", "k4"], ["out"]),
    ]
    consts = [
        ("k1", rng.standard_normal((total, 1, 1))),
        ("k2", rng.random((1, total, 1, 1)) + 1.0),
        ("k3", np.float32(1.5)),
        ("k4", rng.standard_normal((total, 1, 1))),
    ]
    _check(tmp_path, _model((3, 4), (5, 5), nodes, consts), fused=True)


@pytest.mark.parametrize(
    "node, const, op",
    [
        # k / x is not affine: the concat is a kernel alone, the division stays an op
        (helper.make_node("Div", ["k", "cat"], ["out"]), np.full((7, 1, 1), 2.0), "R.divide("),
        # a constant that varies along the columns is not per channel: the add stays
        (helper.make_node("Add", ["cat", "k"], ["out"]), np.arange(4.0).reshape(1, 1, 1, 4),
         "R.add("),
    ],
    ids=["k-over-x", "per-column"],
)  # fmt: skip
def test_ops_that_are_not_per_channel_affine_stay(tmp_path, node, const, op):
    model = _model((3, 4), (4, 4), [node], [("k", const)])
    path = str(tmp_path / "stay.onnx")
    onnx.save(model, path)
    text = fused_text(model)  # the concat is a kernel (its inputs in place, or copied)
    assert ("concat_affine" in text or "concat_in_place" in text) and op in text
    x = np.random.default_rng(0).standard_normal((1, 3, 4, 4)).astype(np.float32)
    assert_close(tvm_sparse.compile(path, "llvm").run(x), ort_run(path, x))


def test_other_targets_keep_the_concat():
    nodes, consts = _batch_norm(7, np.random.default_rng(1))
    assert "concat_affine" not in fused_text(_model((3, 4), (4, 4), nodes, consts), "cuda")


def test_fold_refuses_a_zero_divisor_and_a_constant_over_the_value():
    one, zero = np.ones(2), np.zeros(2)
    assert _fold("relax.divide", one, zero, np.array([1.0, 0.0]), True) is None
    assert _fold("relax.divide", one, zero, np.array([2.0, 2.0]), False) is None
    scale, shift = _fold("relax.subtract", one, zero, np.array([3.0, 4.0]), False)
    assert list(scale) == [-1, -1] and list(shift) == [3, 4]
