"""RewriteConv1d: Conv1d becomes a conv2d of height 1 (a conv layer of the report; TVM's own
lowering was a scalar loop nest, ~70x onnxruntime's time on a raw-audio net). Checked against
onnxruntime on the exported file: stride, padding, dilation, groups, pruned weights."""

from __future__ import annotations

import numpy as np

from ..conftest import assert_close, ort_run


def test_conv1d_is_a_conv_layer_and_matches_onnxruntime(tmp_path, rng):
    import onnx
    import torch
    from torch import nn
    from torch.nn.utils import prune
    from tvm.relax.frontend.onnx import from_onnx

    import tvm_sparse
    from tvm_sparse.passes.canonicalize import canonicalize
    from tvm_sparse.zoo.prune import export_onnx

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv1d(1, 16, 9, stride=4, padding=4),
        nn.ReLU(),
        nn.Conv1d(16, 32, 3, padding=2, dilation=2),
        nn.ReLU(),
        nn.Conv1d(32, 32, 3, padding=1, groups=32),  # depthwise
        nn.Conv1d(32, 24, 1, groups=4),
    ).eval()
    prune.l1_unstructured(model[2], "weight", amount=0.9)
    prune.remove(model[2], "weight")
    path = export_onnx(
        model, (torch.randn(1, 1, 203),), str(tmp_path / "c1d.onnx"), ["input"], ["output"]
    )
    text = canonicalize(from_onnx(onnx.load(path))).script()
    assert "conv1d" not in text and text.count("R.nn.conv2d(") == 4
    module = tvm_sparse.compile(path, "llvm", measure=False)
    assert len([layer for layer in module.report.layers if layer.op == "conv2d"]) == 4
    x = rng.standard_normal((1, 1, 203)).astype(np.float32)
    assert_close(module.run(x), ort_run(path, x))
