"""LSTM / GRU / RNN unrolled into plain ONNX ops (``onnx_recurrent``): the expanded graph must
give onnxruntime's answer on the original node for every attribute the spec has, and a
compiled model must too."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tvm_sparse.errors import UnsupportedModelError
from tvm_sparse.onnx_fixes import fix_model

ort = pytest.importorskip("onnxruntime")

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def _model(
    op: str,
    *,
    steps: int = 5,
    batch: int = 2,
    inputs: int = 3,
    hidden: int = 4,
    direction: str = "forward",
    layout: int = 0,
    bias: bool = True,
    initial: bool = True,
    peepholes: bool = False,
    weights_as_inputs: bool = False,
    outputs: tuple[bool, ...] = (True, True, True),
    seed: int = 0,
    **attrs,
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """One recurrent node: the model and its feeds (X, and W / R when they are inputs)."""
    rng = np.random.default_rng(seed)
    dirs = 2 if direction == "bidirectional" else 1
    g = GATES[op]
    x_shape = [steps, batch, inputs] if layout == 0 else [batch, steps, inputs]
    state = [dirs, batch, hidden] if layout == 0 else [batch, dirs, hidden]
    values = {
        "W": rng.standard_normal((dirs, g * hidden, inputs)).astype(np.float32),
        "R": rng.standard_normal((dirs, g * hidden, hidden)).astype(np.float32) * 0.5,
        "B": rng.standard_normal((dirs, 2 * g * hidden)).astype(np.float32) if bias else None,
        "seq": None,
        "h0": rng.standard_normal(state).astype(np.float32) if initial else None,
        "c0": rng.standard_normal(state).astype(np.float32) if initial and op == "LSTM" else None,
        "P": rng.standard_normal((dirs, 3 * hidden)).astype(np.float32) if peepholes else None,
    }
    order = ["W", "R", "B", "seq", "h0", "c0", "P"][: {"LSTM": 7, "GRU": 6, "RNN": 6}[op]]
    feeds = {"X": rng.standard_normal(x_shape).astype(np.float32)}
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)]
    inits, names = [], ["X"]
    for key in order:
        value = values[key]
        if value is None:
            names.append("")
        elif weights_as_inputs and key in ("W", "R"):
            feeds[key] = value
            graph_inputs.append(helper.make_tensor_value_info(key, TensorProto.FLOAT, value.shape))
            names.append(key)
        else:
            inits.append(numpy_helper.from_array(value, key))
            names.append(key)
    while names and not names[-1]:
        names.pop()
    out_names = ["Y", "Y_h", "Y_c"][: 3 if op == "LSTM" else 2]
    shapes = {
        "Y": [steps, dirs, batch, hidden] if layout == 0 else [batch, steps, dirs, hidden],
        "Y_h": state,
        "Y_c": state,
    }
    wanted = [n if keep else "" for n, keep in zip(out_names, outputs, strict=False)]
    node = helper.make_node(
        op, names, wanted, name="rec", hidden_size=hidden, direction=direction, **attrs
    )
    if layout:
        node.attribute.append(helper.make_attribute("layout", layout))
    graph = helper.make_graph(
        [node],
        "g",
        graph_inputs,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shapes[n]) for n in wanted if n],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model, feeds


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _reference(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """onnxruntime's answer; ONNX's reference evaluator's for layout 1, which onnxruntime
    refuses ("Batchwise recurrent operations are not supported")."""
    if any(a.name == "layout" and a.i == 1 for a in model.graph.node[0].attribute):
        from onnx.reference import ReferenceEvaluator

        return ReferenceEvaluator(model).run(None, feeds)
    return _run(model, feeds)


def _check_expansion(model, feeds) -> onnx.ModelProto:
    fixed, _ = fix_model(model, "test.onnx")
    assert not any(n.op_type in GATES for n in fixed.graph.node)
    onnx.checker.check_model(fixed)
    for want, got in zip(_reference(model, feeds), _run(fixed, feeds), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    return fixed


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize(
    "direction,layout", list(itertools.product(["forward", "reverse", "bidirectional"], [0, 1]))
)
def test_every_direction_and_layout(op, direction, layout):
    _check_expansion(*_model(op, direction=direction, layout=layout))


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("bias,initial", [(False, False), (True, False), (False, True)])
def test_optional_inputs_left_out(op, bias, initial):
    """No bias and no initial state: the first step has no recurrent product (zero state)."""
    _check_expansion(*_model(op, bias=bias, initial=initial, direction="bidirectional"))


@pytest.mark.parametrize("initial", [True, False])
def test_lstm_peepholes(initial):
    _check_expansion(*_model("LSTM", peepholes=True, initial=initial, direction="bidirectional"))


@pytest.mark.parametrize("lbr", [0, 1])
@pytest.mark.parametrize("initial", [True, False])
def test_gru_linear_before_reset(lbr, initial):
    """PyTorch writes linear_before_reset=1: the h gate's recurrent bias sits inside r * (.)."""
    _check_expansion(*_model("GRU", linear_before_reset=lbr, initial=initial))


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_weights_given_as_graph_inputs(op):
    """W and R fed at run time (ONNX's backend tests do): transposed in the graph."""
    fixed = _check_expansion(*_model(op, weights_as_inputs=True, direction="bidirectional"))
    assert any(n.op_type == "Transpose" for n in fixed.graph.node)


@pytest.mark.parametrize("keep", [(False, True, False), (True, False, False), (False, False, True)])
def test_only_some_outputs(keep):
    _check_expansion(*_model("LSTM", outputs=keep))


@pytest.mark.parametrize(
    "op,acts,alpha,beta",
    [
        ("LSTM", ["HardSigmoid", "LeakyRelu", "ScaledTanh"], [0.3, 0.05, 1.5], [0.4, 0.7]),
        ("GRU", ["sigmoid", "relu", "HardSigmoid", "tanh"], [0.25], [0.45]),
        ("RNN", ["Elu", "Softsign"], [0.7], []),
        ("RNN", ["Affine"], [0.5], [0.1]),
        ("RNN", ["ThresholdedRelu"], [0.2], []),
    ],
)
def test_activation_functions_and_their_parameters(op, acts, alpha, beta):
    direction = "bidirectional" if len(acts) > {"LSTM": 3, "GRU": 2, "RNN": 1}[op] else "forward"
    extra = {"activations": acts, "activation_alpha": alpha}
    if beta:
        extra["activation_beta"] = beta
    model, feeds = _model(op, direction=direction, **extra)
    try:
        _run(model, feeds)
    except Exception as err:  # noqa: BLE001 - onnxruntime lacks some of the spec's activations
        pytest.skip(f"onnxruntime cannot run it: {err}")
    _check_expansion(model, feeds)


def test_constant_weights_become_one_initializer_per_direction():
    """x @ W^T over every step at once, and each step's h @ R^T reading one shared R^T: the
    MatMuls the sparse rewrite picks up, and R stored once, not once per step."""
    model, _ = _model("LSTM", steps=7, direction="bidirectional", initial=False)
    fixed, _ = fix_model(model, "t")
    inits = {t.name: t for t in fixed.graph.initializer}
    matmuls = [n for n in fixed.graph.node if n.op_type == "MatMul"]
    assert all(n.input[1] in inits for n in matmuls)
    weights = {n.input[1] for n in matmuls}
    assert len(weights) == 4  # W^T and R^T of each direction
    assert len(matmuls) == 2 + 2 * 6  # the projections; no h @ R^T at step 0 (h0 = 0)


@pytest.mark.parametrize(
    "attrs,why",
    [
        ({"clip": 1.0}, "clip"),
        ({"input_forget": 1}, "input_forget"),
        ({"activations": ["Sigmoid", "Tanh"]}, "2 activations for 1 direction"),
        ({"activations": ["Sigmoid", "Tanh", "Gelu"]}, "activation 'gelu'"),
    ],
)
def test_refused_with_the_reason(attrs, why):
    model, _ = _model("LSTM", **attrs)
    with pytest.raises(UnsupportedModelError, match=f"'rec'.*'LSTM'.*{why}"):
        fix_model(model, "m.onnx")


def test_computed_sequence_lengths_are_refused():
    model, _ = _model("GRU")
    model.graph.node[0].input[4] = "lens"
    model.graph.input.append(helper.make_tensor_value_info("l0", TensorProto.INT32, [2]))
    model.graph.node.insert(0, helper.make_node("Abs", ["l0"], ["lens"]))
    with pytest.raises(UnsupportedModelError, match="sequence_lens 'lens'"):
        fix_model(model, "m.onnx")


def test_sequence_lengths_fed_at_run_time_are_guarded(tmp_path):
    """test_lstm_with_peepholes feeds sequence_lens: compiled for full sequences, a run with a
    shorter one is refused by name, one with full ones matches onnxruntime (also reloaded)."""
    import tvm_sparse
    from tvm_sparse.errors import RunInputError
    from tvm_sparse.module import load

    model, feeds = _model("LSTM", peepholes=True)
    model.graph.node[0].input[4] = "lens"
    model.graph.input.insert(1, helper.make_tensor_value_info("lens", TensorProto.INT32, [2]))
    feeds = {"X": feeds["X"], "lens": np.array([5, 5], np.int32)}
    fixed, guards = fix_model(model, "m.onnx")
    assert [g.to_dict() for g in guards] == [
        {"kind": "full_length", "node": "rec", "lens": "lens", "steps": 5}
    ]
    module = tvm_sparse.compile(model, "llvm", measure=False)
    module.export(tmp_path / "m.so")
    for m in (module, load(tmp_path / "m.so")):
        for want, got in zip(_run(model, feeds), m.run(*feeds.values()), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        with pytest.raises(RunInputError, match=r"node 'rec': lens=\[5, 3\]"):
            m.run(feeds["X"], np.array([5, 3], np.int32))


def test_constant_full_sequence_lengths_are_accepted():
    model, feeds = _model("GRU")
    model.graph.node[0].input[4] = "lens"
    model.graph.initializer.append(numpy_helper.from_array(np.array([5, 5], np.int32), "lens"))
    _check_expansion(model, feeds)


@pytest.mark.parametrize("layout", [0, 1])
def test_dynamic_batch(layout):
    """A symbolic batch (an export with dynamic axes) is fine: only the steps must be static."""
    model, feeds = _model("LSTM", batch=3, layout=layout, initial=False)
    x_dims = model.graph.input[0].type.tensor_type.shape.dim
    x_dims[1 - layout].ClearField("dim_value")
    x_dims[1 - layout].dim_param = "batch"
    for out in model.graph.output:
        for dim in out.type.tensor_type.shape.dim:
            dim.ClearField("dim_value")
    _check_expansion(model, feeds)


def test_dynamic_sequence_length_is_refused():
    model, _ = _model("RNN")
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    dim.ClearField("dim_value")
    dim.dim_param = "steps"
    with pytest.raises(UnsupportedModelError, match="sequence length and input size"):
        fix_model(model, "m.onnx")


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_pruned_torch_rnn_compiles_sparse_and_matches_onnxruntime(tmp_path, cell):
    """A keyword-spotting net as PyTorch exports it (2 layers, bidirectional, batch_first, h0
    from Expand of zeros, GRU with linear_before_reset=1), 90% magnitude-pruned: compiled,
    it equals onnxruntime and its W / R products run as sparse kernels."""
    torch = pytest.importorskip("torch")
    import tvm_sparse
    from tvm_sparse.zoo.prune import export_onnx

    class Kws(torch.nn.Module):
        def __init__(self):
            super().__init__()
            rnn = getattr(torch.nn, cell)
            self.rnn = rnn(20, 64, num_layers=2, batch_first=True, bidirectional=True)
            self.fc = torch.nn.Linear(128, 12)

        def forward(self, x):
            return self.fc(self.rnn(x)[0][:, -1])

    torch.manual_seed(0)
    net = Kws().eval()
    with torch.no_grad():
        for p in net.rnn.parameters():
            if p.dim() == 2:
                p[p.abs() < p.abs().flatten().kthvalue(int(0.9 * p.numel())).values] = 0
    x = torch.randn(1, 12, 20)
    path = export_onnx(net, (x,), tmp_path / "kws.onnx", ["input"], ["output"])
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"input": x.numpy()}
    )[0]
    module = tvm_sparse.compile(path, "llvm", measure=False)
    np.testing.assert_allclose(module.run(x.numpy()), ref, rtol=1e-4, atol=1e-5)
    chosen = [layer.chosen for layer in module.report.layers]
    assert chosen.count("dense") < len(chosen) / 2, chosen


def _as_double(model: onnx.ModelProto, feeds: dict) -> tuple[onnx.ModelProto, dict]:
    for init in model.graph.initializer:
        value = numpy_helper.to_array(init).astype(np.float64)
        init.CopyFrom(numpy_helper.from_array(value, init.name))
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.elem_type = TensorProto.DOUBLE
    return model, {k: v.astype(np.float64) for k, v in feeds.items()}


def test_double_precision_keeps_its_dtype():
    """Activation constants and the GRU bias mask take X's dtype: a float32 constant in a
    double graph is a type error. (ONNX's reference evaluator is the judge: onnxruntime has no
    double GRU; the reference ignores custom activations, so those are checked by type only.)"""
    from onnx.reference import ReferenceEvaluator

    model, feeds = _as_double(*_model("GRU", linear_before_reset=1))
    fixed, _ = fix_model(model, "m.onnx")
    want = ReferenceEvaluator(model).run(None, feeds)
    for w, g in zip(want, ReferenceEvaluator(fixed).run(None, feeds), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)
    acts = {"activations": ["HardSigmoid", "ScaledTanh", "Affine"],
            "activation_alpha": [0.3, 1.2, 0.5], "activation_beta": [0.4, 0.8, 0.1]}  # fmt: skip
    custom, _ = _as_double(*_model("LSTM", **acts))
    fixed, _ = fix_model(custom, "m.onnx")
    onnx.checker.check_model(fixed, full_check=True)  # the types agree everywhere
    floats = {TensorProto.FLOAT, TensorProto.DOUBLE}
    assert {t.data_type for t in fixed.graph.initializer} & floats == {TensorProto.DOUBLE}
