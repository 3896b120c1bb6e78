"""Which functions the vectorizing leftover rules may touch.

TVM 0.27's LLVM codegen has no vector lowering for some intrinsics (``cosh`` and ``sinh`` in
every float type; ``erf``, ``log1p`` and the inverse trigonometric functions in float16) and
cannot store a vector of bfloat16 (its buffers hold uint16: "dtype mismatch on BufferStore").
Plain TVM never vectorizes its leftovers on CPU, so it builds these; a rule of ours that did
would turn a model TVM runs into a build error. Such functions keep TVM's scalar loops.
"""

from __future__ import annotations

import logging

import tvm
from tvm import s_tir
from tvm.s_tir.dlight.base import ScheduleRule

log = logging.getLogger("tvm_sparse")

# From probing every unary float intrinsic, vectorized 16 wide, in float16/32/64 with TVM 0.27 on
# x86 (znver4): these fail in any float type, the second set in float16.
_NO_VECTOR_LOWERING = ("cosh", "sinh")
_NO_VECTOR_LOWERING_F16 = ("erf", "log1p", "asin", "acos", "atan", "asinh", "acosh")


def scalar_only_reason(func: tvm.tirx.PrimFunc) -> str:
    """Why ``func`` must not be vectorized ('' when it may be).

    Read from the printed function: TVM 0.27 has no Python TIR visitor. Conservative (a
    float16 function that calls ``erf`` on float32 values is kept scalar too)."""
    text = func.script()
    if "bfloat16" in text:
        return "bfloat16 values"
    for name in _NO_VECTOR_LOWERING:
        if f"T.{name}(" in text:
            return f"{name} (no vector lowering in LLVM codegen)"
    if "float16" in text:
        for name in _NO_VECTOR_LOWERING_F16:
            if f"T.{name}(" in text:
                return f"float16 {name} (no vector lowering in LLVM codegen)"
    return ""


class ScalarOnlyGuard(ScheduleRule):
    """Claims (leaves unscheduled, as plain TVM does) the functions no vector rule may touch;
    put it before the vectorizing rules."""

    def apply(self, func: tvm.tirx.PrimFunc, target: tvm.target.Target, _tunable: bool):
        if isinstance(func, tvm.tirx.PrimFunc) and scalar_only_reason(func):
            return s_tir.Schedule(func)
        return None


class RuleGuard(ScheduleRule):
    """A rule whose failure on a function means "not mine": the next rule (or TVM's scalar
    loops) takes it. dlight's CPU reduction rule asserts on some reductions it matches
    (test_gelu_*_expanded: "assert r_loops"); plain TVM applies no rule, so a rule's crash
    must not turn a model TVM builds into a compile error."""

    def __init__(self, rule: ScheduleRule):
        self.rule = rule

    def apply(self, func: tvm.tirx.PrimFunc, target: tvm.target.Target, tunable: bool):
        try:
            return self.rule.apply(func, target, tunable)
        except Exception as err:  # noqa: BLE001 - any failure of a rule declines the function
            log.debug("%s declined a function: %s", type(self.rule).__name__, err)
            return None
