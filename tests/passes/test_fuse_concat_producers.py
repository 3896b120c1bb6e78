"""FuseConcatProducers: a concat whose inputs are kernels' outputs becomes one kernel in which
each writes its own run of the output. Checked against onnxruntime on ONNX files (a Fire
module, an input copied beside computed ones, the same kernel twice, a concat of linears),
and the forms it must leave to FuseConcatAffine."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import tvm_sparse

from ..conftest import assert_close, fused_text, ort_run


def _graph(nodes, inits, x_shape, out_shape) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "concat_producers",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, list(out_shape))],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _conv(name: str, x: str, w: np.ndarray, relu: bool = True, pad: int = 0) -> list:
    out = f"{name}_c" if relu else name
    nodes = [helper.make_node("Conv", [x, f"{name}_w"], [out], pads=[pad] * 4)]
    return nodes + ([helper.make_node("Relu", [out], [name])] if relu else [])


def _fire(hw: int, squeeze: int, expand: tuple[int, int], tail=None) -> onnx.ModelProto:
    """SqueezeNet's Fire module: squeeze 1x1 -> (expand 1x1 | expand 3x3) -> concat."""
    rng = np.random.default_rng(3)
    inits = {
        "s_w": rng.standard_normal((squeeze, 8, 1, 1)),
        "e1_w": rng.standard_normal((expand[0], squeeze, 1, 1)),
        "e3_w": rng.standard_normal((expand[1], squeeze, 3, 3)),
    }
    nodes = _conv("s", "x", inits["s_w"]) + _conv("e1", "s", inits["e1_w"])
    nodes += _conv("e3", "s", inits["e3_w"], pad=1)
    end = "out" if tail is None else "cat"
    nodes.append(helper.make_node("Concat", ["e1", "e3"], [end], axis=1))
    nodes += [] if tail is None else [helper.make_node(tail, ["cat"], ["out"])]
    return _graph(nodes, inits, (1, 8, hw, hw), (1, sum(expand), hw, hw))


def _check(tmp_path, model: onnx.ModelProto, in_place: bool) -> str:
    """The fused module's text, after checking the compiled model against onnxruntime."""
    path = str(tmp_path / "model.onnx")
    onnx.save(model, path)
    text = fused_text(model)
    assert ("concat_in_place" in text) == in_place
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(0).standard_normal(dims).astype(np.float32)
    assert_close(tvm_sparse.compile(path, "llvm").run(x), ort_run(path, x))
    return text


@pytest.mark.parametrize(
    "hw, squeeze, expand",
    [
        (16, 8, (16, 16)),  # whole vectors, both convs in place
        (13, 16, (32, 48)),  # SqueezeNet's last 13x13: 169 positions, a scalar tail
        (15, 8, (64, 16)),  # Winograd-sized 3x3 after a wide 1x1
    ],
)
def test_fire_module_writes_both_expands_in_place(tmp_path, hw, squeeze, expand):
    text = _check(tmp_path, _fire(hw, squeeze, expand), in_place=True)
    assert "R.concat(" not in text and "concat_affine" not in text


def test_an_input_that_is_not_a_kernel_output_is_copied_into_its_run(tmp_path):
    """``concat(x, conv(x))``: the graph input has no kernel, so a copy writes it."""
    w = np.random.default_rng(4).standard_normal((16, 8, 1, 1))
    nodes = _conv("y", "x", w) + [helper.make_node("Concat", ["x", "y"], ["out"], axis=1)]
    text = _check(tmp_path, _graph(nodes, {"y_w": w}, (1, 8, 8, 8), (1, 24, 8, 8)), True)
    assert "R.concat(" not in text


def test_an_output_read_elsewhere_is_copied_and_still_read(tmp_path):
    """``concat(a, b) + tile(a)``: ``a`` has a second reader, so it keeps its tensor and
    the merged kernel copies it; ``b`` is computed in place."""
    rng = np.random.default_rng(5)
    inits = {"a_w": rng.standard_normal((16, 8, 1, 1)), "b_w": rng.standard_normal((16, 8, 1, 1))}
    nodes = _conv("a", "x", inits["a_w"]) + _conv("b", "x", inits["b_w"])
    nodes += [
        helper.make_node("Concat", ["a", "b"], ["cat"], axis=1),
        helper.make_node("Concat", ["a", "a"], ["aa"], axis=1),
        helper.make_node("Add", ["cat", "aa"], ["out"]),
    ]
    _check(tmp_path, _graph(nodes, inits, (1, 8, 8, 8), (1, 32, 8, 8)), in_place=True)


def test_the_same_kernel_twice(tmp_path):
    """Two convs with the same weights (the same kernel): each copy gets its own variables."""
    w = np.random.default_rng(6).standard_normal((16, 8, 1, 1))
    nodes = _conv("a", "x", w) + _conv("b", "x", w)
    nodes.append(helper.make_node("Concat", ["a", "b"], ["out"], axis=1))
    _check(tmp_path, _graph(nodes, {"a_w": w, "b_w": w}, (1, 8, 8, 8), (1, 32, 8, 8)), True)


def test_misaligned_runs_are_left_to_the_copy(tmp_path):
    """3 channels of 5x5 end at byte 300, not a 64-byte line: FuseConcatAffine copies."""
    text = _check(tmp_path, _fire(5, 4, (3, 4)), in_place=False)
    assert "concat_affine" in text


@pytest.mark.parametrize("tail", ["Relu", "Identity"])
def test_batch_two_and_a_relu_after_are_left_to_the_copy(tmp_path, tail):
    model = _fire(8, 4, (16, 16), tail=tail)
    if tail == "Identity":  # batch 2: each input is two runs of the output
        for value in (model.graph.input[0], model.graph.output[0]):
            value.type.tensor_type.shape.dim[0].dim_value = 2
    text = _check(tmp_path, model, in_place=False)
    assert "concat_affine" in text


def test_other_targets_keep_the_concat():
    assert "concat_in_place" not in fused_text(_fire(16, 8, (16, 16)), "cuda")


def test_a_concat_of_linears(tmp_path):
    """Rows of one sample ``[1, F]``: any axis whose leading dims are 1 is a run."""
    rng = np.random.default_rng(7)
    inits = {"a_w": rng.standard_normal((64, 48)), "b_w": rng.standard_normal((64, 80))}
    nodes = [
        helper.make_node("MatMul", ["x", "a_w"], ["a"]),
        helper.make_node("MatMul", ["x", "b_w"], ["b"]),
        helper.make_node("Concat", ["a", "b"], ["out"], axis=1),
    ]
    _check(tmp_path, _graph(nodes, inits, (1, 64), (1, 128)), in_place=True)


def test_a_merged_kernel_that_fails_to_build_leaves_the_concat(tmp_path, monkeypatch, caplog):
    """Never crash: a merged kernel the isolated compile check refuses keeps the concat."""
    from tvm_sparse.passes import fuse_concat_producers

    monkeypatch.setattr(fuse_concat_producers, "compile_check", lambda *_: "LLVM ERROR (test)")
    text = _check(tmp_path, _fire(16, 8, (16, 16)), in_place=False)
    assert "concat_affine" in text
    assert "concat in place skipped" in caplog.text
