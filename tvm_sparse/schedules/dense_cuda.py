"""The dense CUDA baseline: TE + dlight's GPU rules, what the sparse CUDA kernels must beat."""

from __future__ import annotations

import numpy as np
import tvm
from tvm.script import tirx as T

from ..target import resolve_target
from ._epilogue import SQRT1_2 as _SQRT1_2
from ._epilogue import check_activation as _check_activation
from ._epilogue import epilogue
from .kernel import KernelCall
from .kernel import as_weight as _as_weight
from .kernel import finish as _finish


def dense_linear(
    m: int,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    activation: str | None = None,
    target=None,
) -> KernelCall:
    """y[m, N] = act(x[m, K] @ weight.T + bias) in TE, scheduled by dlight's GPU rules.

    dlight's GEMV rule (batch 1) and Matmul rule (larger batch) already produce reasonable CUDA
    kernels for this shape, so there is no hand-written dense kernel: this is the baseline the
    sparse kernels are compared with. Consts: ``(weight [N, K], bias?)``.
    """
    from tvm import te
    from tvm.s_tir import dlight as dl

    _check_activation(activation)
    weight = _as_weight(weight, 2)
    n, k = weight.shape
    tgt = _cuda_target(target)
    x = te.placeholder((m, k), "float32", name="x")
    w = te.placeholder((n, k), "float32", name="w")
    kk = te.reduce_axis((0, k), name="kk")
    mm = te.compute((m, n), lambda i, j: te.sum(x[i, kk] * w[j, kk], axis=kk), name="matmul")
    params = [x, w]
    if bias is not None:
        b = te.placeholder((n,), "float32", name="bias")
        params.append(b)
        pre = te.compute((m, n), lambda i, j: mm[i, j] + b[j], name="bias_add")
    else:
        pre = mm
    if activation in (
        "relu",
        "relu6",
        "gelu_tanh",
        "silu",
        "sigmoid",
        "hardswish",
        "hardsigmoid",
    ):  # selects keep NaN
        out = te.compute((m, n), lambda i, j: epilogue(pre[i, j], activation), name=activation)
    elif activation == "gelu":
        out = te.compute(
            (m, n),
            lambda i, j: (
                T.float32(0.5)
                * pre[i, j]
                * (T.float32(1) + te.erf(pre[i, j] * T.float32(_SQRT1_2)))
            ),
            name="gelu",
        )
    elif activation is None:
        out = pre
    else:  # a new activation must be added here, not dropped
        raise ValueError(f"dense CUDA linear: no epilogue for activation {activation!r}")
    func = te.create_prim_func([*params, out]).with_attr("global_symbol", "main")
    mod = tvm.IRModule({"main": func})
    with tgt:
        mod = dl.ApplyDefaultSchedule(
            dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.LowBatchGEMV(), dl.gpu.Fallback()
        )(mod)
    consts = [weight]
    if bias is not None:
        consts.append(np.ascontiguousarray(bias, dtype=np.float32).reshape(n))
    return KernelCall(
        func=_finish(mod["main"].without_attr("global_symbol")),
        name="dense_linear",
        consts=tuple(consts),
        out_shape=(m, n),
        info={"kernel": "dlight_dense", "m": m, "n": n, "k": k, "macs_dense": m * n * k},
    )


def _cuda_target(target) -> tvm.target.Target:
    return resolve_target("cuda" if target is None else target)
