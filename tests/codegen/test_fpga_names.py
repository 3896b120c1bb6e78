"""Model names become valid, unique C identifiers and file names; unsupported ops are named."""

from __future__ import annotations

import re
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tvm_sparse.codegen.fpga import compile_fpga
from tvm_sparse.codegen.fpga.names import C_KEYWORDS, NameTable, sanitize
from tvm_sparse.errors import UnsupportedModelError

WEIRD = ["1st-layer.fc", "int", "class", "my layer/2", "__main__"]


def _mlp(names, sizes=(16, 24, 24, 8), last_op="Relu", seed=0, opset=17):
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "input"
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        w = rng.standard_normal((fan_out, fan_in)).astype(np.float32)
        w *= rng.random(w.shape) < 0.3
        inits += [
            numpy_helper.from_array(w, f"w{i}"),
            numpy_helper.from_array(rng.standard_normal(fan_out).astype(np.float32), f"b{i}"),
        ]
        out = f"t{i}"
        nodes.append(
            helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [out], name=names[i], transB=1)
        )
        x = out
        if i < len(sizes) - 2:
            nodes.append(helper.make_node(last_op, [x], [f"a{i}"], name=names[len(sizes) - 1 + i]))
            x = f"a{i}"
    nodes[-1].output[0] = "output"
    graph = helper.make_graph(
        nodes,
        "weird",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, sizes[0]])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, sizes[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset <= 17 else 9
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize(
    "raw", ["1st-layer.fc", "int", "class", "my layer/2", "__main__", "", "-", "ünï", "a" * 99]
)
def test_sanitize_gives_c_identifiers(raw):
    name = sanitize(raw)
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name), name
    assert name not in C_KEYWORDS
    assert len(name) <= 49


def test_name_table_makes_names_unique():
    table = NameTable()
    names = [table.add(n) for n in ["conv.1", "conv-1", "conv 1", "int", "int"]]
    assert len(set(names)) == 5
    assert table.source[names[1]] == "conv-1"


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_weird_node_names_compile_and_match(tmp_path):
    project = compile_fpga(_mlp(WEIRD), "fpga", output_dir=tmp_path, tb_samples=3)
    assert project._csim.ok
    weighted = [layer for layer in project.hw.layers if layer.weighted]
    assert [layer.source for layer in weighted] == WEIRD[:3]
    for layer in project.hw.layers:
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", layer.name)
        assert layer.name not in C_KEYWORDS
        assert (tmp_path / "firmware" / "weights" / f"{layer.name}.h").is_file()


def test_unsupported_op_is_named():
    with pytest.raises(UnsupportedModelError, match="sigmoid") as err:
        compile_fpga(_mlp(WEIRD, last_op="Sigmoid"), "fpga", run_csim=False)
    assert "sigmoid" in (err.value.op or "")


def test_unsupported_activation_fused_into_a_layer_is_named():
    """A GELU the layer finder fuses into a Gemm's epilogue is refused by name, not dropped."""
    model = _mlp(WEIRD, last_op="Gelu", opset=20)
    with pytest.raises(UnsupportedModelError, match="gelu"):
        compile_fpga(model, "fpga", run_csim=False)


@pytest.mark.parametrize(
    "options", [{"sparse": False}, {"measure": True}, {"tuning_records": "records"}]
)
def test_cpu_only_options_are_refused_for_the_fpga_target(options):
    """The FPGA backend packs every layer itself: an option that steers the CPU kernel choice
    would be ignored, so it is refused by name."""
    import tvm_sparse
    from tvm_sparse import models

    name = next(iter(options))
    with pytest.raises(TypeError, match=rf"\['{name}'\] do not apply to the fpga target"):
        tvm_sparse.compile(models.pruned_mlp(layers=1, hidden=8), "fpga", **options)


@pytest.mark.parametrize(
    ("last_op", "attrs", "name"),
    [("HardSwish", {}, "hardswish"), ("HardSigmoid", {"alpha": 1 / 6}, "hardsigmoid")],
)
def test_hard_activation_fused_into_a_layer_is_refused_by_name(last_op, attrs, name):
    """A hard-swish / hard-sigmoid fused into a Gemm's epilogue: the fpga target (ReLU only)
    refuses it by name rather than dropping it."""
    model = _mlp(WEIRD, last_op=last_op)
    for node in model.graph.node:
        if node.op_type == last_op:
            node.attribute.extend(helper.make_attribute(k, v) for k, v in attrs.items())
    with pytest.raises(UnsupportedModelError, match=rf"the {name} activation") as err:
        compile_fpga(model, "fpga", run_csim=False)
    assert err.value.op == name
