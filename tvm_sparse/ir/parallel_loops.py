"""Parallel loops of scheduled TIR: find them and rewrite them (no Python TIR mutator in 0.27).

Why here: the denormal flush (``passes.flush_denormals``) wraps each parallel loop's tasks, and
a kernel compiled for one core runs its parallel loops serially (``serial_on_one_core``), both
in the model and where a candidate kernel is timed alone (``schedules.kernel.build_kernel``).
"""

from __future__ import annotations

from collections.abc import Callable

import tvm
from tvm import s_tir, tirx

from ..target import is_cpu, num_cores

# statements that hold no loop (the walk does not look inside them)
_LEAVES = (tirx.BufferStore, tirx.Evaluate, tirx.AllocBuffer, tirx.DeclBuffer, tirx.Bind,
           tirx.AssertStmt)  # fmt: skip


def map_parallel_loops(stmt: tirx.Stmt, rewrite: Callable[[tirx.For], tirx.Stmt]) -> tirx.Stmt:
    """``stmt`` with each outermost parallel loop replaced by ``rewrite(loop)``. Walks the
    statement kinds a scheduled kernel nests loops in; a parallel loop under any other kind
    raises rather than being missed."""

    def walk(node: tirx.Stmt) -> tirx.Stmt:
        if isinstance(node, tirx.For):
            if node.kind == tirx.ForKind.PARALLEL:
                return rewrite(node)
            return with_body(node, walk(node.body))
        if isinstance(node, tirx.SeqStmt):
            return tirx.SeqStmt([walk(s) for s in node.seq])
        if isinstance(node, tirx.IfThenElse):
            other = walk(node.else_case) if node.else_case is not None else None
            return tirx.IfThenElse(node.condition, walk(node.then_case), other)
        if isinstance(node, tirx.AttrStmt):
            return tirx.AttrStmt(node.node, node.attr_key, node.value, walk(node.body))
        if isinstance(node, tirx.While):
            return tirx.While(node.condition, walk(node.body))
        if isinstance(node, s_tir.SBlockRealize):
            return s_tir.SBlockRealize(node.iter_values, node.predicate, walk(node.block))
        if isinstance(node, s_tir.SBlock):
            return s_tir.SBlock(node.iter_vars, node.reads, node.writes, node.name_hint,
                                walk(node.body), node.init, node.alloc_buffers,
                                node.match_buffers, node.annotations)  # fmt: skip
        if not isinstance(node, _LEAVES) and "T.parallel(" in node.script():
            raise TypeError(f"a parallel loop under a {type(node).__name__}")
        return node

    return walk(stmt)


def prim_func_pass(name: str, rewrite: Callable[[tirx.PrimFunc], tirx.PrimFunc]
                   ) -> tvm.transform.Pass:  # fmt: skip
    """A module pass that replaces every PrimFunc ``f`` of the module by ``rewrite(f)``."""

    @tvm.transform.module_pass(opt_level=0, name=name)
    def apply(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        updates = {
            gv: rewrite(func) for gv, func in mod.functions.items()
            if isinstance(func, tirx.PrimFunc)
        }  # fmt: skip
        for gv, func in updates.items():
            mod[gv] = func
        return mod

    return apply


def with_body(loop: tirx.For, body: tirx.Stmt, kind: tirx.ForKind | None = None) -> tirx.For:
    """``loop`` with another body (and kind)."""
    return tirx.For(loop.loop_var, loop.min, loop.extent, loop.kind if kind is None else kind,
                    body, loop.thread_binding, loop.annotations, loop.step)  # fmt: skip


def has_parallel_loop(func: tirx.PrimFunc) -> bool:
    found = []
    map_parallel_loops(func.body, lambda loop: found.append(loop) or loop)
    return bool(found)


def serial_parallel_loops(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with every parallel loop serial.

    Why: on one core a parallel loop still goes through TVM's pool launch, its body an outlined
    closure that LLVM optimizes apart from the code around it: the 2048x2048 panel kernel at
    batch 64 ran 3-10% slower so (745 against 783 us; 723 against 796 accumulating in y), on
    one thread either way (Zen 4)."""
    found = []

    def serial(loop: tirx.For) -> tirx.Stmt:
        found.append(loop)
        return with_body(loop, map_parallel_loops(loop.body, serial), tirx.ForKind.SERIAL)

    body = map_parallel_loops(func.body, serial)
    return func.with_body(body) if found else func  # none: the function itself, unchanged


def serial_on_one_core(func: tirx.PrimFunc, target: tvm.target.Target) -> tirx.PrimFunc:
    """``func`` with serial loops where ``target`` is a CPU of one core, else as it is."""
    return serial_parallel_loops(func) if one_core(target) else func


def one_core(target: tvm.target.Target) -> bool:
    """Whether ``target`` is a CPU that says it has one core (``num-cores`` 1; a target that
    does not say keeps its parallel loops: they use whatever threads the runtime has)."""
    attrs = target.attrs if target.attrs is not None else {}
    return is_cpu(target) and "num-cores" in attrs and num_cores(target) == 1
