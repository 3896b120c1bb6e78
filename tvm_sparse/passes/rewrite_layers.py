"""Replace each planned layer chain (op + bias + activation) by ``call_tir`` on its kernel.

The kernel is a scheduled PrimFunc from ``tvm_sparse.schedules``; its packed weight arrays become
Relax constants. Linear layers on 3-D activations ([batch, seq, hidden]) are flattened to rows
before the kernel and reshaped back after, so one kernel serves MLPs and transformers. The last
sparsify pass: it applies the plan; the module keeps the report the passes before it wrote.
"""

from __future__ import annotations

import functools

import tvm
from tvm import relax
from tvm.relax.expr_functor import mutator

from ..ir.layers import LINEAR, LayerSpec
from ..ir.relax_utils import constant, static_shape, through_reshape
from ..ir.rewrite import PlannedRewriter
from ..schedules.kernel import KernelCall, finish_opaque
from ..schedules.nan_fixup_x86 import nan_fixup_kernel
from .layer_plan import LayerPlan


def _scheduled(func: tvm.tirx.PrimFunc, name: str) -> tvm.tirx.PrimFunc:
    """Name a kernel uniquely (every builder's kernel is called "main"), marked as every
    hand-scheduled kernel is (``finish_opaque``)."""
    return finish_opaque(func.with_attr("global_symbol", name))


@mutator
class _LayerRewriter(PlannedRewriter):
    def __init__(self, plan: dict[relax.Var, tuple[LayerSpec, KernelCall]], mod: tvm.IRModule,
                 nan_fixup: set | None = None):  # fmt: skip
        super().__init__(plan, mod)
        self.tile_vars: set[relax.Var] = set()  # original vars now bound to tile-layout tensors
        self.nan_fixup = nan_fixup or set()  # layers that get dense NaN semantics restored

    def _rows_of(self, x: relax.Expr, rows_shape: tuple[int, int]) -> relax.Expr:
        """``x`` as ``[rows, features]``. When ``x`` is itself a reshape of a tensor of that
        shape (the previous kernel's output, put back into 3-D), that tensor: FuseOps would
        turn the reshape pair into a copy kernel."""
        src = through_reshape(
            x, self.builder_.lookup_binding, lambda s: static_shape(s) == rows_shape
        )
        if not src.same_as(x):
            return src
        return self.builder_.emit(relax.op.reshape(x, rows_shape), "rows")

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        # the consumer's own matmul (dead after the rewrite) can't type-check on a tile tensor
        if binding.var in self.plan or not self.tile_vars.intersection(
            relax.analysis.free_vars(binding.value)
        ):
            super().visit_var_binding_(binding)

    def replacement(self, var: relax.Var, entry: tuple[LayerSpec, KernelCall]) -> relax.Expr:
        layer, kernel = entry
        x = self.visit_expr(layer.x_var)
        if layer.dynamic_rows:
            return self._dynamic_replacement(layer, kernel, x)
        flatten = layer.kind == LINEAR and len(layer.x_shape) != 2
        # an activation in the tile layout (chain_layouts) passes between kernels as it is
        x_rows = kernel.info.get("x_layout", "rows") == "rows"
        y_rows = kernel.info.get("y_layout", "rows") == "rows"
        if flatten and x_rows:
            x = self._rows_of(x, (layer.rows, layer.x_shape[-1]))
        out = self._call(layer, kernel, x, kernel.out_shape)
        if var in self.nan_fixup:
            out = self._nan_fixup(layer, x, self.builder_.emit(out, "sparse_out"))
        if flatten and y_rows:
            out = relax.op.reshape(self.builder_.emit(out, "rows_out"), layer.out_shape)
        if not y_rows:
            self.tile_vars.add(var)
        return out

    def _call(self, layer: LayerSpec, kernel: KernelCall, x: relax.Expr, out_shape,
              after: tuple[relax.Expr, ...] = ()) -> relax.Expr:  # fmt: skip
        """``call_tir`` of the layer's kernel (added to the module under a unique name) on ``x``,
        its constants and the tensors ``after`` them, giving ``out_shape`` (static, or symbolic
        rows)."""
        name = f"{kernel.name}_{layer.index}"
        gvar = self.builder_.add_func(_scheduled(kernel.func, name), name)
        args = [x, *(constant(c) for c in kernel.consts), *after]
        return relax.call_tir(gvar, args, relax.TensorType(out_shape, kernel.out_dtype))

    def _nan_fixup(self, layer: LayerSpec, x_rows: relax.Expr, y: relax.Expr) -> relax.Expr:
        """``y`` with dense math's NaNs where a non-finite input met a skipped zero weight."""
        fixup = nan_fixup_kernel(layer.rows, layer.weight)
        return self._call(layer, fixup, x_rows, fixup.out_shape, after=(y,))

    def _dynamic_replacement(self, layer: LayerSpec, kernel: KernelCall, x: relax.Expr
                             ) -> relax.Expr:  # fmt: skip
        """The call of a kernel built for any row count: rows = the product of x's leading
        (symbolic) dims, the output shaped like the layer's tail again."""
        dims = list(x.ty.shape.values)
        rows = functools.reduce(lambda a, b: a * b, dims[:-1])
        n = layer.weight.shape[0]
        if len(dims) != 2:
            x = self.builder_.emit(relax.op.reshape(x, [rows, dims[-1]]), "rows")
        out = self._call(layer, kernel, x, [rows, n])
        if len(dims) != 2:
            tail_dims = list(layer.tail_var.ty.shape.values)
            out = relax.op.reshape(self.builder_.emit(out, "rows_out"), tail_dims)
        return out


@tvm.transform.module_pass(opt_level=0, name="tvm_sparse.RewriteLayers")
class RewriteLayers:
    """Apply ``plan`` (tail var -> (layer, kernel)) to ``main`` and drop the replaced chains."""

    def __init__(self, plan: LayerPlan):
        self.plan = plan

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        self.plan.check(mod, "RewriteLayers")
        if not self.plan.kernels:
            return mod
        rewriter = _LayerRewriter(self.plan.kernels, mod, self.plan.nan_fixup)
        new_main = rewriter.visit_expr(mod["main"])
        rewriter.builder_.update_func(mod.get_global_var("main"), new_main)
        return relax.transform.DeadCodeElimination()(rewriter.builder_.get())
