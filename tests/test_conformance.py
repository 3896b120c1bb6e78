"""ONNX's backend node cases through plain TVM and tvm-sparse: never worse than plain TVM.

A sample of ``onnx.backend.test.case.node`` covering the ops real CNNs and transformers use,
plus every case that once failed on tvm-sparse and passed on plain TVM (and the ones TVM's
frontend converts wrongly, which tvm-sparse fixes or refuses). Each case runs through both
engines in this process (an abort would end the run: the whole suite, in worker processes that
survive one, is ``make conformance``). Asserted: where plain TVM passes, tvm-sparse passes; and
tvm-sparse never gives a wrong answer.
"""

from __future__ import annotations

import os
import sys

import pytest

BENCHMARKS = os.path.join(os.path.dirname(__file__), "..", "benchmarks")
sys.path.insert(0, os.path.abspath(BENCHMARKS))

import conformance  # noqa: E402

from tvm_sparse import errors  # noqa: E402

OPS = (
    "Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "AveragePool", "MaxPool",
    "GlobalAveragePool", "Relu", "Clip", "Gelu", "Sigmoid", "Softmax", "LayerNormalization",
    "Reshape", "Transpose", "Slice", "Concat", "Gather", "Split", "TopK", "Resize", "Add", "Mul",
    "Flatten", "Unsqueeze", "Squeeze", "Erf", "Tanh", "ReduceMean", "Where", "Expand", "Cast",
    "Pad", "LeakyRelu", "HardSigmoid", "Pow", "Sqrt", "Div", "Sub", "Shape", "Dropout",
)  # fmt: skip
PER_OP = 3

# Cases tvm-sparse once failed where plain TVM passed (0-d inputs, Slice with tensor bounds, If,
# optional inputs, dynamic dims, vectorized cosh / bfloat16) and cases TVM's frontend converts
# wrongly (onnx_fixes.py rewrites or refuses them).
# no converter in TVM 0.27 (onnx_recurrent unrolls them): ours must pass, not only not fail
RECURRENT = ("test_lstm_with_peepholes", "test_gru_seq_length", "test_simple_rnn_batchwise")
REGRESSIONS = (
    "test_clip_default_inbounds", "test_slice", "test_slice_neg_steps", "test_if",
    "test_optional_has_element_tensor_input", "test_optional_get_element_optional_tensor",
    "test_tril_zero", "test_triu_zero", "test_cosh", "test_sinh",
    "test_einsum_batch_matmul_bfloat16", "test_shape", "test_shape_start_greater_than_end",
    "test_expand_dim_changed", "test_isinf_negative", "test_isinf_positive",
    "test_mod_float_edge_cases_fmod_0_float32", "test_mish", "test_dropout_default_mask",
    "test_layer_normalization_2d_axis0", "test_convtranspose_output_shape",
    "test_spacetodepth_crd_mode_example", "test_split_to_sequence_nokeepdims",
    "test_nonmaxsuppression_single_box", "test_batchnorm_example_training_mode",
    "test_training_dropout", "test_roialign_mode_max", "test_mish_expanded",
    "test_training_dropout_zero_ratio",
    *RECURRENT,
)  # fmt: skip

KNOWN_WRONG: set[str] = set()  # wrong through both engines and not fixed yet: none
OUR_ERRORS = {cls.__name__ for cls in vars(errors).values()
              if isinstance(cls, type) and issubclass(cls, errors.TvmSparseError)}  # fmt: skip


def _sample() -> list[conformance.Case]:
    cases = conformance.node_cases()
    by_name = {c.name: c for c in cases}
    chosen: dict[str, conformance.Case] = {n: by_name[n] for n in REGRESSIONS if n in by_name}
    plain = [c for c in cases if "_expanded" not in c.name]
    for op in OPS:
        matching = sorted((c for c in plain if op in conformance.case_ops(c)), key=lambda c: c.name)
        step = max(1, len(matching) // PER_OP)
        for case in matching[::step][:PER_OP]:
            chosen.setdefault(case.name, case)
    return [chosen[n] for n in sorted(chosen)]


CASES = _sample()


def test_sample_covers_the_ops_and_the_regressions():
    names = {c.name for c in CASES}
    assert set(REGRESSIONS) <= names
    covered = set().union(*(conformance.case_ops(c) for c in CASES))
    assert set(OPS) <= covered, set(OPS) - covered


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_never_worse_than_plain_tvm(case):
    plain = conformance.run_case(case, "tvm")
    ours = conformance.run_case(case, "sparse")
    if plain.status == "ok" or case.name in RECURRENT:
        assert ours.status == "ok", f"plain TVM passes, tvm-sparse: {ours.status}: {ours.detail}"
    if case.name not in KNOWN_WRONG:
        assert ours.status != "wrong", ours.detail
    if ours.status == "error":  # one of ours, naming the problem: never a bare traceback
        assert ours.detail.split(":")[0] in OUR_ERRORS, ours.detail


def test_compare_follows_the_onnx_runner_rule():
    import numpy as np

    ref = [np.array([1.0, 2.0], np.float32)]
    assert conformance.compare(ref, [np.array([1.0, 2.0], np.float32)], 1e-3, 1e-7) == ""
    assert "dtype" in conformance.compare(ref, [np.array([1.0, 2.0])], 1e-3, 1e-7)
    assert "shape" in conformance.compare(ref, [np.array([[1.0, 2.0]], np.float32)], 1e-3, 0)
    assert "max abs diff" in conformance.compare(ref, [np.array([1.0, 2.1], np.float32)], 1e-3, 0)
    assert "outputs" in conformance.compare(ref, [], 1e-3, 0)


def test_runtime_training_flag_is_guarded_after_export_and_load(tmp_path):
    import numpy as np
    import onnx

    import tvm_sparse

    (case,) = [c for c in CASES if c.name == "test_training_dropout"]
    compiled = tvm_sparse.compile(onnx.load_from_string(case.model), "llvm")
    compiled.export(tmp_path / "dropout.so")
    loaded = tvm_sparse.load(tmp_path / "dropout.so")
    x, ratio, _ = case.inputs
    for module in (compiled, loaded):
        with pytest.raises(errors.RunInputError, match="training-mode dropout"):
            module.run(x, ratio, np.array(True))
        np.testing.assert_array_equal(module.run(x, ratio, np.array(False)), x)
        np.testing.assert_array_equal(module.run(x, np.array(0.0, np.float32), np.array(True)), x)


@pytest.mark.parametrize(
    "name, sparsity", [("googlenet", 0.0), ("resnext50_32x4d", 0.0), ("shufflenet_v2", 0.0)]
)
def test_held_out_cnn_matches_onnxruntime(tmp_path, name, sparsity):
    """Concatenated branches and ceil-mode pools (GoogLeNet), grouped convs (ResNeXt), chunk's
    Shape -> Slice plumbing and channel shuffles (ShuffleNetV2, which plain TVM cannot build):
    small versions, checked against onnxruntime (the rest, full size and pruned, in make
    conformance; DenseNet's 120 layers cost 30 s even small)."""
    pytest.importorskip("torch")
    options = {"image": 32, "width": 0.125}
    (case,) = conformance.model_cases([name], options, str(tmp_path), (sparsity,))
    result = conformance.run_case(case, "sparse")
    assert result.status == "ok", result.detail
