"""Model import: the forms accepted and the one-line errors for bad input."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import tvm_sparse
from tvm_sparse import models
from tvm_sparse.errors import InputShapeError, ModelLoadError, UnsupportedModelError
from tvm_sparse.frontend import import_model, parse_input_shapes


def test_missing_file_is_named(tmp_path):
    path = tmp_path / "nope.onnx"
    with pytest.raises(ModelLoadError, match="nope.onnx: no such file"):
        import_model(str(path))


def test_text_file_is_not_onnx(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("this is not a protobuf\n" * 10)
    with pytest.raises(ModelLoadError, match="notes.onnx"):
        import_model(str(path))


def test_truncated_file(tmp_path):
    full = models.save(models.pruned_mlp(layers=2, hidden=64, density=0.5), tmp_path / "m.onnx")
    data = open(full, "rb").read()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="cut.onnx"):
        import_model(str(cut))


def test_unsupported_op_names_node_and_op():
    with pytest.raises(UnsupportedModelError, match=r"det0.*'Det'") as info:
        import_model(models.model_with_unsupported_op())
    assert info.value.op == "Det"


def test_dynamic_batch_compiles_for_any_batch_and_shapes_specialize(caplog):
    model = models.model_with_dynamic_batch(features=16)
    with caplog.at_level("WARNING", logger="tvm_sparse"):
        imported = import_model(model)
    assert imported.inputs[0].shape == ("N", 16) and not imported.inputs[0].is_static
    assert "dynamic dims" in caplog.text and "--input-shapes input:1x16" in caplog.text
    imported = import_model(model, "input:4x16")
    assert imported.inputs[0].shape == (4, 16) and imported.inputs[0].is_static


def test_dynamic_batch_model_runs_at_any_batch_against_onnxruntime():
    import onnxruntime as ort

    import tvm_sparse
    from tvm_sparse.errors import RunInputError

    model = models.model_with_dynamic_batch(features=16)
    compiled = tvm_sparse.compile(model, "llvm")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 16), dtype=np.float32)
        (want,) = session.run(None, {"input": x})
        np.testing.assert_allclose(compiled.run(x), want, rtol=1e-4, atol=1e-5)
    with pytest.raises(RunInputError, match="expected 2 dims"):
        compiled.run(np.zeros((16,), np.float32))
    with pytest.raises(RunInputError, match=r"expected shape \[N, 16\]"):
        compiled.run(np.zeros((2, 8), np.float32))


def test_input_shapes_must_match_the_rank():
    model = models.model_with_dynamic_batch(features=16)
    with pytest.raises(InputShapeError, match="3 dims given.*2"):
        import_model(model, "input:1x4x16")


def test_sequence_input_is_refused_by_name():
    import onnx
    from onnx import TensorProto, helper

    seq = helper.make_tensor_sequence_value_info("xs", TensorProto.FLOAT, [2])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    node = helper.make_node("SequenceAt", ["xs", "i"], ["y"])
    index = helper.make_tensor("i", TensorProto.INT64, [], [0])
    graph = helper.make_graph([node], "g", [seq], [out], initializer=[index])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    with pytest.raises(UnsupportedModelError, match="'xs' is a sequence"):
        import_model(model)


def test_undefined_element_type_is_refused_by_name():
    """A damaged model's input element type (99: no ONNX type) is a named error, not a
    KeyError from onnx.helper (found by benchmarks/fuzz_models.py)."""
    model = models.pruned_mlp(layers=1, hidden=8)
    model.graph.input[0].type.tensor_type.elem_type = 99
    with pytest.raises(UnsupportedModelError, match="'input' has element type 99"):
        import_model(model)


def test_name_that_is_not_utf8_is_a_load_error(tmp_path):
    """The ONNX checker raises UnicodeDecodeError when its message quotes a damaged name (an
    unknown op type here); that is a named load error (found by benchmarks/fuzz_models.py)."""
    from tvm_sparse.errors import ModelLoadError
    from tvm_sparse.frontend import load_onnx

    model = models.pruned_mlp(layers=1, hidden=8)
    model.graph.node[0].op_type = "MARKERMARKER"
    payload = model.SerializeToString().replace(b"MARKERMARKER", b"\x9e\x9eMARKERMARK")
    path = tmp_path / "damaged.onnx"
    path.write_bytes(payload)
    with pytest.raises(ModelLoadError, match="damaged.onnx: invalid ONNX model"):
        load_onnx(path)


def test_frontend_error_detail_skips_the_ir_dump():
    """TVM appends the IR it failed on after the failed check; the user gets the check."""
    from tvm_sparse.errors import error_detail as _frontend_detail

    err = ValueError(
        "Traceback: ...\nValueError: Check failed: lanes > 0 is false\n# from tvm.script import"
        "\n@I.ir_module\nclass Module:\n# Metadata omitted. Use show_meta=True"
    )
    assert _frontend_detail(err) == "ValueError: Check failed: lanes > 0 is false"
    assert _frontend_detail(RuntimeError("")) == "RuntimeError"


@pytest.mark.parametrize("dim", [2**31, 2**40])
def test_input_too_large_to_index_is_refused(dim):
    """A damaged or hostile input shape is refused before anything is allocated for it."""
    model = models.pruned_mlp(layers=1, hidden=8)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = dim
    with pytest.raises(UnsupportedModelError, match="32-bit"):
        import_model(model)


def test_shape_for_unknown_input_is_rejected():
    with pytest.raises(InputShapeError, match="unknown input"):
        import_model(models.pruned_mlp(layers=1, hidden=8, density=1.0), {"x": (1, 8)})


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("input:1x1x32x32", {"input": (1, 1, 32, 32)}),
        ("a:2x3, b:4", {"a": (2, 3), "b": (4,)}),
        ("ns:x:1x2", {"ns:x": (1, 2)}),
    ],
)
def test_parse_input_shapes(spec, expected):
    assert parse_input_shapes(spec) == expected


@pytest.mark.parametrize("spec", ["input", "input:", "input:1xx2", ":1x2", "input:-1x2"])
def test_parse_input_shapes_rejects(spec):
    with pytest.raises(InputShapeError, match="bad input shape"):
        parse_input_shapes(spec)


def test_weighted_nodes_follow_graph_order():
    imported = import_model(models.tiny_sparse_cnn())
    assert [op for _, op in imported.weighted_nodes] == ["Conv", "Conv", "Gemm", "Gemm"]
    assert imported.inputs[0].shape == (1, 1, 32, 32)
    assert np.dtype(imported.inputs[0].dtype) == np.float32


def test_layers_are_named_by_weight_when_tvm_reorders_the_graph():
    """A residual block whose projection conv comes first in the file (as torch exports
    RegNet's) is bound after the main branch in Relax: each layer still gets its own node's
    name, told apart by weight shape and stride, not by position."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from tvm_sparse.passes.analyze_sparsity import analyze_function
    from tvm_sparse.passes.canonicalize import canonicalize

    rng = np.random.default_rng(0)

    def weight(name, shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "wp"], ["p"], name="proj", strides=[2, 2]),
        helper.make_node("Conv", ["x", "wa"], ["a"], name="a"),
        helper.make_node("Relu", ["a"], ["ar"]),
        helper.make_node("Conv", ["ar", "wb"], ["b"], name="b", strides=[2, 2], pads=[1] * 4),
        helper.make_node("Add", ["p", "b"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "reordered",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])],
        [weight("wp", (8, 8, 1, 1)), weight("wa", (8, 8, 1, 1)), weight("wb", (8, 8, 3, 3))],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    imported = import_model(model)
    rows = analyze_function(canonicalize(imported.mod)["main"], imported.weighted_nodes)
    named = {
        layer.name: (layer.weight.shape, tuple(layer.conv_attrs["strides"])) for layer, _ in rows
    }
    assert named == {
        "proj": ((8, 8, 1, 1), (2, 2)),
        "a": ((8, 8, 1, 1), (1, 1)),
        "b": ((8, 8, 3, 3), (2, 2)),
    }


def test_unsorted_topk_is_imported_sorted_without_touching_the_callers_model():
    """TVM's importer refuses TopK sorted=0 (torch.topk(sorted=False)); the frontend imports a
    sorted copy (one valid order of the unsorted result) and leaves the user's model alone."""
    import onnx
    from onnx import TensorProto, helper

    from tvm_sparse.frontend import import_onnx

    k = helper.make_tensor("k", TensorProto.INT64, [1], [3])
    node = helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=1, largest=1, sorted=0)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [
            helper.make_tensor_value_info("v", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("i", TensorProto.INT64, [2, 3]),
        ],
        [k],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    imported = import_onnx(model)
    assert "topk" in imported.mod["main"].script()
    assert any(a.name == "sorted" and a.i == 0 for a in model.graph.node[0].attribute)


def test_a_later_pass_tripping_on_a_damaged_model_is_a_named_error(tmp_path, capsys):
    """A k-WTA whose k index became int8 imports, then trips constant folding: one error line
    naming the model and the step, no traceback (found by benchmarks/fuzz_models.py)."""
    import onnx
    from onnx import numpy_helper

    from tvm_sparse.cli import main

    model = models.tiny_sparse_cnn()
    for init in model.graph.initializer:
        if init.name.endswith("kth_index"):
            arr = numpy_helper.to_array(init).astype(np.int8)  # 596 wraps
            init.CopyFrom(numpy_helper.from_array(arr, init.name))
    path = tmp_path / "damaged.onnx"
    onnx.save(model, str(path))
    assert main(["analyze", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tvm-sparse: error: damaged.onnx: analysis failed")


def _dynamic_sequence_model() -> onnx.ModelProto:
    """GPT-2's prefix as exported with a dynamic sequence: token + position embeddings, the
    position ids ``Range(0, Shape(ids)[1])``, then a head reshape built from ``Shape``."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    i64 = np.int64
    consts = {
        "tok": rng.standard_normal((50, 8)).astype(np.float32),
        "pos": rng.standard_normal((32, 8)).astype(np.float32),
        "zero": np.array(0, i64), "one": np.array(1, i64), "axis0": np.array([0], i64),
        "heads": np.array([2], i64), "width": np.array([4], i64), "batch": np.array([1], i64),
    }  # fmt: skip
    nodes = [
        helper.make_node("Shape", ["ids"], ["shape"]),
        helper.make_node("Gather", ["shape", "one"], ["seq"], axis=0),
        helper.make_node("Range", ["zero", "seq", "one"], ["positions"]),
        helper.make_node("Gather", ["tok", "ids"], ["t"], axis=0),
        helper.make_node("Gather", ["pos", "positions"], ["p"], axis=0),
        helper.make_node("Add", ["t", "p"], ["h"]),
        helper.make_node("Unsqueeze", ["seq", "axis0"], ["seq1"]),
        helper.make_node("Concat", ["batch", "seq1", "heads", "width"], ["heads_shape"], axis=0),
        helper.make_node("Reshape", ["h", "heads_shape"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "prefix", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "seq", 2, 4])],
        [numpy_helper.from_array(v, k) for k, v in consts.items()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_dynamic_sequence_compiled_for_given_shapes_folds_its_shape_plumbing():
    """TVM's frontend fails on the Range(Shape) / Reshape(Shape) plumbing of a dynamic-sequence
    export ("shape_of expects a tensor input"); compiled for a sequence length, it folds and
    the result equals onnxruntime's."""
    ort = pytest.importorskip("onnxruntime")
    model = _dynamic_sequence_model()
    ids = np.random.default_rng(1).integers(0, 50, (1, 12)).astype(np.int64)
    module = tvm_sparse.compile(model, "llvm", measure=False, input_shapes={"ids": (1, 12)})
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"ids": ids})[0]
    np.testing.assert_allclose(module.run(ids), want, rtol=1e-6)


def test_specialize_inputs_keeps_a_model_that_already_has_the_shapes():
    from tvm_sparse.onnx_fold import specialize_inputs

    model = _dynamic_sequence_model()
    fixed = specialize_inputs(model, {"ids": (1, 12)})
    assert fixed is not model and specialize_inputs(fixed, {"ids": (1, 12)}) is fixed
    dims = [d.dim_value for d in fixed.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 12]
    assert not any(
        d.HasField("dim_value") for d in fixed.graph.output[0].type.tensor_type.shape.dim
    )


def test_static_model_with_a_reshape_built_from_shape_compiles_without_input_shapes():
    """CLIP's pooling, ``x[arange(B), ids.argmax(-1)]``, exported by TorchScript: its index
    math reshapes by a shape made from ``Shape`` of a run-time tensor, which TVM's frontend
    refuses ("Reshape requires the input new shape to be Shape"). The inputs are static, so the
    shape plumbing folds and the model compiles with no --input-shapes; outputs equal torch's
    and onnxruntime's."""
    import io

    ort = pytest.importorskip("onnxruntime")
    torch = pytest.importorskip("torch")

    class Pool(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(50, 16)
            self.norm = torch.nn.LayerNorm(16)

        def forward(self, ids):
            x = self.norm(self.emb(ids))
            return x[torch.arange(x.shape[0]), ids.argmax(dim=-1)]

    torch.manual_seed(0)
    module, ids = Pool().eval(), torch.randint(0, 50, (2, 7))
    buf = io.BytesIO()
    torch.onnx.export(module, (ids,), buf, input_names=["ids"], opset_version=17, dynamo=False)
    model = onnx.load_from_string(buf.getvalue())
    compiled = tvm_sparse.compile(model, "llvm")
    feed = ids.numpy()
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    want = session.run(None, {"ids": feed})[0]
    np.testing.assert_allclose(compiled.run(feed), want, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        np.testing.assert_allclose(want, module(ids).numpy(), rtol=1e-5, atol=1e-6)
