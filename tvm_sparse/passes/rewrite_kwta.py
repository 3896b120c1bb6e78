"""Replace each k-WTA subgraph (every form ``activation_sparsity`` matches) by a linear-time kernel.

TVM lowers ``topk`` to a full sort per sample; ``schedules.kwta_x86`` selects the k-th largest
value by radix select instead (global k-WTA), or keeps a short compare-exchange chain per vector
of locations (local k-WTA, over the channels of each NCHW location). The subgraph's result
becomes ``call_tir(kernel, [x], shape of the result)`` on the unboosted ``x``, with the boost
factor (flattened in the order the kernel reads ``x``) a constant of the kernel; TopK and its
plumbing are left dead and removed. When ``x`` is a reshape (the flattening in front of a
KWinners2d), the kernel reads the reshape's input directly. The exact forms (TopK's indices
scattered into a mask) keep exactly k, ties broken by index, as onnxruntime does.

``kwta -> [reshape to] [B, C, H, W] -> max_pool2d`` (KWinners2d then MaxPool2d, as in the GSC
CNN), where nothing else reads the k-WTA result, becomes one ``kwta_maxpool`` call for a global
threshold k-WTA: the pool is done in the k-WTA's write pass, so the full-size result is never
written nor read back.

Runs after the Sparsify phase: its AnalyzeLayers reads the k-WTA pattern to report the activation
density of the layers that follow. Only on CPU targets (the kernels are CPU TIR); other targets
and float64/float16 activations keep TVM's topk.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import relax
from tvm.relax.dpl import is_op, wildcard
from tvm.relax.expr_functor import mutator

from ..ir.relax_utils import binding_map, constant, dtype_of, static_shape, through_reshape
from ..ir.rewrite import Bindings, PlannedRewriter
from ..schedules.kwta_x86 import kwta_kernel, kwta_local_kernel, kwta_maxpool_kernel
from .activation_sparsity import KwtaMatch, find_kwta
from .cpu_only import CpuRewrite


@dataclass(frozen=True)
class _PoolFusion:
    """A max-pool that reads only a k-WTA result (through a reshape to NCHW)."""

    match: KwtaMatch
    chw: tuple[int, int, int]
    pool_size: tuple[int, int]
    strides: tuple[int, int]


def _rewritable(match: KwtaMatch) -> bool:
    shape = static_shape(match.out_var)
    if (
        shape is None
        or static_shape(match.x) != shape
        or dtype_of(match.x) != "float32"
        or dtype_of(match.out_var) != "float32"
    ):
        return False
    return not match.local or len(shape) == 4


def _flat_source(x: relax.Expr, bindings: dict) -> relax.Expr:
    """The input of the reshape that produced ``x`` when it has the same batch (the kernel reads
    each sample flat), else ``x``."""
    flat = static_shape(x)

    def same_batch(src: relax.Expr) -> bool:
        shape = static_shape(src)
        return (
            shape is not None
            and flat is not None
            and len(shape) >= 2
            and shape[0] == flat[0]
            and dtype_of(src) == "float32"
        )

    return through_reshape(x, bindings.get, same_batch)


def _pool_fusion(pool_value: relax.Call, match: KwtaMatch) -> _PoolFusion | None:
    """The fusion of ``pool_value`` (a max_pool2d of reshape(match.out_var)) when supported."""
    attrs = pool_value.attrs
    ints = [int(v) for v in (*attrs.padding, *attrs.dilation)]
    if (
        str(attrs.layout) != "NCHW"
        or str(attrs.out_layout) != "NCHW"
        or bool(attrs.ceil_mode)
        or ints != [0, 0, 0, 0, 1, 1]
        or dtype_of(pool_value.args[0]) != "float32"
    ):
        return None
    shape = static_shape(pool_value.args[0])
    if shape is None or len(shape) != 4:
        return None
    pool_size = tuple(int(v) for v in attrs.pool_size)
    strides = tuple(int(v) for v in attrs.strides)
    return _PoolFusion(match, tuple(shape[1:]), pool_size, strides)


# max_pool2d([reshape of] k-WTA result): which k-WTA, and that nothing else reads it, is
# _plan_pools'
_KWTA_OUT = wildcard()
_POOL_OF_KWTA = is_op("relax.nn.max_pool2d")(
    is_op("relax.reshape")(_KWTA_OUT, wildcard()) | _KWTA_OUT
)


def _plan_pools(func: relax.Function, matches: dict) -> dict[relax.Var, _PoolFusion]:
    """The max-pools to fuse, keyed by the pool's var: pool([reshape of] kwta), each read once;
    only global threshold k-WTA (the exact and local kernels have no pooled write)."""
    bindings = Bindings.of(func)
    plan = {}
    for var, pool, found in bindings.matches(_POOL_OF_KWTA):
        if bindings.uses[pool.args[0]] != 1:
            continue
        match = matches.get(bindings.bound.get(found[_KWTA_OUT]))
        if match is None or match.exact or match.local or bindings.uses[match.out_var] != 1:
            continue
        fusion = _pool_fusion(pool, match)
        if fusion is not None:
            plan[var] = fusion
    return plan


@mutator
class _KwtaRewriter(PlannedRewriter):
    """``plan``: the var of each k-WTA result (a ``KwtaMatch``) or fused max-pool (a
    ``_PoolFusion``) -> that entry."""

    def __init__(
        self,
        plan: dict[relax.Var, KwtaMatch | _PoolFusion],
        bindings: dict,
        mod: tvm.IRModule,
        target: tvm.target.Target,
    ):
        super().__init__(plan, mod)
        self.bindings = bindings
        self.target = target
        self.count = 0

    def replacement(self, _var: relax.Var, entry: KwtaMatch | _PoolFusion) -> relax.Expr:
        fusion = entry if isinstance(entry, _PoolFusion) else None
        match = fusion.match if fusion is not None else entry
        src = match.x if match.local else _flat_source(match.x, self.bindings)
        x_shape = static_shape(src)
        out_shape = static_shape(match.out_var)
        if fusion is not None:
            kernel = kwta_maxpool_kernel(
                x_shape, fusion.chw, match.k, fusion.pool_size, fusion.strides, match.boost,
                self.target,
            )  # fmt: skip
        elif match.local:
            kernel = kwta_local_kernel(
                x_shape, match.k, match.boost, self.target, exact=match.exact, out_shape=out_shape
            )
        else:
            kernel = kwta_kernel(
                out_shape[0], match.n, match.k, match.boost, self.target, x_shape=x_shape,
                exact=match.exact, out_shape=out_shape,
            )  # fmt: skip
        name = f"{kernel.name}_{self.count}"
        self.count += 1
        func = kernel.func.with_attr("global_symbol", name)
        gvar = self.builder_.add_func(func, name)
        args = [self.visit_expr(src)] + [constant(c) for c in kernel.consts]  # int64 stays int64
        return relax.call_tir(gvar, args, relax.TensorType(kernel.out_shape, kernel.out_dtype))


@tvm.transform.module_pass(opt_level=0, name="tvm_sparse.RewriteKwta")
class RewriteKwta(CpuRewrite):
    """Rewrite the k-WTA subgraphs of every Relax function (CPU targets only)."""

    def rewriter_for(
        self, func: relax.Function, mod: tvm.IRModule, target: tvm.target.Target
    ) -> _KwtaRewriter | None:
        matches = find_kwta(func, exact=True, local=True)
        plan = {m.out_var: m for m in matches if _rewritable(m)}
        if not plan:
            return None
        pools = _plan_pools(func, plan)
        for fusion in pools.values():  # the fused call replaces the k-WTA's own
            del plan[fusion.match.out_var]
        return _KwtaRewriter({**plan, **pools}, binding_map(func), mod, target)
