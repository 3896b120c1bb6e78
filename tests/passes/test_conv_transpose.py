"""RewriteConvTranspose: a transposed conv whose kernel equals its stride becomes a 1x1 conv +
depth-to-space (TVM's own lowering of it was a scalar loop nest, 0.7 s for one UNet upsampling);
other transposed convs are left to TVM. Checked against onnxruntime on the exported file."""

from __future__ import annotations

import numpy as np
import pytest

from ..conftest import assert_close, ort_run


def _export(tmp_path, kernel: int, stride: int, padding: int, sparsity: float) -> str:
    import torch
    from torch.nn.utils import prune

    from tvm_sparse.zoo.prune import export_onnx

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.ConvTranspose2d(16, 8, kernel, stride, padding),
    ).eval()
    if sparsity:
        prune.l1_unstructured(model[2], "weight", amount=sparsity)
        prune.remove(model[2], "weight")
    path = str(tmp_path / f"ct_k{kernel}s{stride}p{padding}.onnx")
    return export_onnx(model, (torch.randn(1, 3, 9, 7),), path, ["input"], ["output"])


@pytest.mark.parametrize(
    "kernel, stride, padding, sparsity, rewritten",
    [
        (2, 2, 0, 0.0, True),  # UNet's upsampling
        (3, 3, 0, 0.9, True),  # pruned: the 1x1 conv may take a sparse kernel
        (3, 2, 1, 0.0, False),  # overlapping patches: TVM's lowering stays
    ],
)
def test_conv_transpose_matches_onnxruntime(tmp_path, rng, kernel, stride, padding, sparsity,
                                            rewritten):  # fmt: skip
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    import tvm_sparse
    from tvm_sparse.passes.canonicalize import canonicalize

    path = _export(tmp_path, kernel, stride, padding, sparsity)
    text = canonicalize(from_onnx(onnx.load(path))).script()
    assert ("conv2d_transpose" not in text) == rewritten
    x = rng.standard_normal((1, 3, 9, 7)).astype(np.float32)
    module = tvm_sparse.compile(path, "llvm", measure=False)
    assert_close(module.run(x), ort_run(path, x))
