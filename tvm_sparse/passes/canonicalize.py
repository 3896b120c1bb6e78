"""Canonicalization: one form per layer for the analysis and rewrite passes.

Inference-mode BatchNorm is decomposed and folded into the preceding layer; transposed constant
weights (ONNX Gemm transB, ``permute_dims`` of a constant) are folded to constants; tuple plumbing
from the importer is removed. What is left: ``matmul(x, W_kn) [+ bias]`` and
``conv2d(x, W_oihw) [+ bias]``, each optionally followed by ReLU, GELU, ReLU6, SiLU, sigmoid,
hard-sigmoid or hard-swish. Ops that TVM lowers to unscheduled loop nests are rewritten into
ones the kernels take: conv1d as a conv2d of height 1, a non-overlapping transposed conv as a
1x1 conv + depth-to-space, a bilinear resize as two gathers over constant tables; kernel taps
of a dilated conv that read only padding are cut.
"""

from __future__ import annotations

import tvm
from tvm import relax

from .conv1d import RewriteConv1d
from .conv_transpose import RewriteConvTranspose
from .drop_padding_taps import DropPaddingTaps
from .fold_affine import FoldAffineIntoLayers
from .fuse_gelu import FuseGelu
from .fuse_hard_activations import FuseHardActivations
from .fuse_relu6 import FuseRelu6
from .fuse_silu import FuseSilu
from .integer_powers import IntegerPowers
from .numpy_fold import NumpyFoldConstant
from .safe_fold import SafeFoldConstant
from .separable_resize import SeparableResize
from .take_mode import ClipTakeMode


def canonicalize_passes() -> list[tvm.transform.Pass]:
    return [
        ClipTakeMode(),  # gathers clamp their indices: no segfault, no TVM warning per compile
        relax.transform.DecomposeOpsForInference(),
        NumpyFoldConstant(),  # most of what FoldConstant would build with LLVM, in numpy
        SafeFoldConstant(),
        relax.transform.CanonicalizeBindings(),
        IntegerPowers(),  # power(x, 2 or 3) -> multiplies (TVM calls powf per element)
        FuseGelu(),  # erf-GELU subgraph -> nn.gelu, a fusable kernel epilogue
        FuseRelu6(),  # the frontend's maximum + minimum of Clip(x, 0, 6) -> one clip
        FuseSilu(),  # x * sigmoid(x) -> nn.silu, a fusable kernel epilogue
        FuseHardActivations(),  # hard-sigmoid / hard-swish: one form, a kernel epilogue
        RewriteConv1d(),  # conv2d of height 1: a conv layer, not TVM's scalar loop nest
        RewriteConvTranspose(),  # kernel == stride: 1x1 conv + depth-to-space, a conv layer
        SeparableResize(),  # bilinear resize: gathers through constant tables, no float indices
        FoldAffineIntoLayers(),
        SafeFoldConstant(),
        DropPaddingTaps(),  # dilated taps that only read padding (ASPP on small maps) cut
        relax.transform.DeadCodeElimination(),
    ]


def canonicalize(mod: tvm.IRModule) -> tvm.IRModule:
    """Apply the canonicalization passes (used directly by analyze() and compile())."""
    return tvm.transform.Sequential(canonicalize_passes(), name="tvm_sparse.Canonicalize")(mod)
