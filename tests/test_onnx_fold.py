"""fold_constants: constant-only ONNX plumbing becomes initializers; answers do not change."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from tvm_sparse.frontend import import_model
from tvm_sparse.onnx_fold import fold_constants


def _model() -> onnx.ModelProto:
    """y = (x @ W) * where(ConstantOfShape([]) , 2, 3) + Expand(1, shape) : what exporters write.

    ``ConstantOfShape`` with an empty shape is what TVM's importer fails on.
    """
    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    nodes = [
        helper.make_node("Constant", [], ["empty"], value=numpy_helper.from_array(
            np.zeros(0, dtype=np.int64), "empty_v")),
        helper.make_node("ConstantOfShape", ["empty"], ["flag"],
                         value=helper.make_tensor("one", TensorProto.BOOL, [1], [True])),
        helper.make_node("Where", ["flag", "two", "three"], ["scale"]),
        helper.make_node("Expand", ["one_f", "shape"], ["ones"]),
        helper.make_node("MatMul", ["x", "W"], ["xw"], name="/linear/MatMul"),
        helper.make_node("Mul", ["xw", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "ones"], ["y"]),
    ]  # fmt: skip
    inits = [
        numpy_helper.from_array(w, "W"),
        numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two"),
        numpy_helper.from_array(np.array(3.0, dtype=np.float32), "three"),
        numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one_f"),
        numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "shape"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_folds_constant_plumbing_and_keeps_answers(rng):
    model = _model()
    folded = fold_constants(model)
    onnx.checker.check_model(folded)
    ops = [n.op_type for n in folded.graph.node]
    assert ops == ["MatMul", "Mul", "Add"]
    x = rng.standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_array_equal(_ort(folded, x), _ort(model, x))
    # the weight is untouched and still an initializer: the layer keeps its name and sparsity
    assert any(t.name == "W" for t in folded.graph.initializer)


def test_folded_model_imports_into_relax():
    imported = import_model(fold_constants(_model()))
    assert imported.weighted_nodes == [("/linear/MatMul", "MatMul")]


def test_input_dependent_nodes_and_graph_outputs_stay():
    model = _model()
    model.graph.output.append(helper.make_tensor_value_info("scale", TensorProto.FLOAT, []))
    folded = fold_constants(model)
    assert "Where" in [n.op_type for n in folded.graph.node]  # feeds a graph output: kept


def test_nothing_to_fold_returns_the_model():
    model = _model()
    folded = fold_constants(model)
    assert fold_constants(folded) is folded


def test_shape_of_a_static_tensor_folds_and_the_chunk_after_it_compiles():
    """PyTorch writes ``chunk(2, dim=1)`` as Shape -> Gather -> Div -> Slice: with the shape a
    constant the bounds fold and TVM sees a static slice (runtime bounds made a shape-less
    slice that neither plain TVM nor tvm-sparse could build: ShuffleNetV2)."""
    import tvm_sparse

    def const(name, value):
        return helper.make_tensor(name, TensorProto.INT64, [len(value)], value)

    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "one"], ["channels"], axis=0),
        helper.make_node("Div", ["channels", "two"], ["half"]),
        helper.make_node("Slice", ["x", "zero", "half", "one"], ["first"]),
        helper.make_node("Relu", ["first"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "chunk",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[const("one", [1]), const("two", [2]), const("zero", [0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    folded = fold_constants(model)
    assert [n.op_type for n in folded.graph.node] == ["Slice", "Relu"]
    x = np.random.default_rng(0).standard_normal((1, 6, 4, 4)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (want,) = session.run(None, {"x": x})
    np.testing.assert_allclose(tvm_sparse.compile(model, "llvm").run(x), want, rtol=1e-6)
