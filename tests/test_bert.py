"""A tiny pruned BERT from PyTorch, end to end: export, analyze, compile, match onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import tvm_sparse  # noqa: E402
from tvm_sparse.models_bert import TINY_BERT, bert_inputs, tiny_pruned_bert_onnx  # noqa: E402

from .conftest import assert_close  # noqa: E402

ROLES = (
    "attention/self/query",
    "attention/self/key",
    "attention/self/value",
    "attention/output/dense",
    "intermediate/dense",
    "output/dense",
)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    return tiny_pruned_bert_onnx(tmp_path_factory.mktemp("bert") / "tiny_bert.onnx")


@pytest.fixture(scope="module")
def feeds() -> dict[str, np.ndarray]:
    # the last 5 tokens are padding, so the attention mask really masks something
    return bert_inputs(TINY_BERT.batch, TINY_BERT.seq, seed=1, padded=5)


@pytest.fixture(scope="module")
def reference(tiny_bert, feeds) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(tiny_bert, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


@pytest.fixture(scope="module")
def compiled(tiny_bert):
    return {
        sparse: tvm_sparse.compile(tiny_bert, sparse=sparse, measure=False)
        for sparse in (True, False)
    }


def test_export_is_what_pytorch_writes(tiny_bert):
    model = onnx.load(tiny_bert)
    ops = {n.op_type for n in model.graph.node}
    assert {"MatMul", "Add", "Erf", "LayerNormalization", "Softmax", "Where", "Expand"} <= ops
    inits = {t.name for t in model.graph.initializer}
    linears = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    assert len(linears) == 6 * TINY_BERT.layers
    assert model.opset_import[0].version == 17


@pytest.mark.parametrize("sparse", [True, False], ids=["sparse", "dense"])
def test_matches_onnxruntime(compiled, feeds, reference, sparse):
    out = compiled[sparse].run(feeds["input_ids"], feeds["attention_mask"])
    assert out.shape == (TINY_BERT.batch, TINY_BERT.seq, TINY_BERT.hidden)
    assert_close(out, reference, rtol=1e-3)


def test_report_names_every_linear_with_its_density(compiled):
    layers = compiled[True].report.layers
    assert len(layers) == 6 * TINY_BERT.layers
    for i, layer in enumerate(layers):
        block, role = divmod(i, 6)
        assert f"layer.{block}/" in layer.name and ROLES[role] in layer.name, layer.name
        assert layer.weight_density == pytest.approx(0.1, abs=0.01), layer.name
        assert layer.chosen in ("dense", "csr") or layer.chosen.startswith("bsr"), layer.chosen


def test_gelu_is_fused_into_the_ffn_epilogue(compiled):
    for i, layer in enumerate(compiled[True].report.layers):
        expected = ["bias", "gelu"] if ROLES[i % 6] == "intermediate/dense" else ["bias"]
        assert layer.epilogue == expected, (layer.name, layer.epilogue)


def test_dense_baseline_uses_dense_kernels(compiled):
    assert {layer.chosen for layer in compiled[False].report.layers} == {"dense"}


def test_export_is_deterministic(tiny_bert, tmp_path):
    again = tiny_pruned_bert_onnx(tmp_path / "again.onnx")
    a, b = onnx.load(tiny_bert), onnx.load(again)
    from onnx import numpy_helper

    for x, y in zip(a.graph.initializer, b.graph.initializer):
        np.testing.assert_array_equal(numpy_helper.to_array(x), numpy_helper.to_array(y))
