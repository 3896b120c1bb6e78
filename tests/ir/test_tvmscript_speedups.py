"""The TVMScript parser speed-ups (fast stack, one AST per source) change no kernel."""

from __future__ import annotations

import inspect

import tvm_ffi
from tvm.script import tirx as T
from tvm.script.parser.core import diagnostics

import tvm_sparse.ir  # noqa: F401 - installs both speed-ups
from tvm_sparse.ir import tvmscript_ast_cache, tvmscript_stack


def _scale_kernel(n: int, factor: float):
    @T.prim_func(s_tir=True)
    def func(x: T.Buffer((n,), "float32"), y: T.Buffer((n,), "float32")):
        for i in range(n):
            with T.sblock("scale"):
                vi = T.axis.spatial(n, i)
                y[vi] = x[vi] * T.float32(factor)

    return func


def test_a_builder_parsed_twice_reuses_its_ast_and_still_gives_each_shape_its_kernel():
    first, second = _scale_kernel(8, 2.0), _scale_kernel(16, 3.0)
    assert not tvm_ffi.structural_equal(first, second)
    assert "T.Buffer((8,)" in first.script() and "T.float32(2.0)" in first.script()
    assert "T.Buffer((16,)" in second.script() and "T.float32(3.0)" in second.script()
    source = diagnostics.Source(_scale_kernel)
    assert source.as_ast() is source.as_ast()


def test_a_kernel_parsed_with_and_without_the_cache_is_the_same(monkeypatch):
    cached = _scale_kernel(12, 1.5)
    monkeypatch.setattr(tvmscript_ast_cache, "_trees", {})
    uncached_as_ast = diagnostics.Source.as_ast
    monkeypatch.setattr(diagnostics.Source, "as_ast", lambda self: _fresh_tree(self))
    fresh = _scale_kernel(12, 1.5)
    monkeypatch.setattr(diagnostics.Source, "as_ast", uncached_as_ast)
    assert tvm_ffi.structural_equal(cached, fresh)


def _fresh_tree(source: diagnostics.Source):
    from tvm.script.parser.core import doc

    return doc.parse(source.source)


def test_the_fast_stack_has_every_frame_of_the_real_one():
    fast = [(f.filename, f.lineno, f.function) for f in tvmscript_stack.fast_stack()]
    real = [(f.filename, f.lineno, f.function) for f in inspect.stack()]
    assert fast[1:] == real[1:]


def test_the_fast_outer_frames_are_the_real_ones():
    frame = inspect.currentframe()
    fast = tvmscript_stack.fast_outer_frames(frame)
    real = inspect.getouterframes(frame)
    assert [(f.frame, f.function) for f in fast] == [(f.frame, f.function) for f in real]
    assert [f.lineno for f in fast[1:]] == [f.lineno for f in real[1:]]  # [0] is still moving


def _macro_kernel(n: int):
    @T.macro
    def double(buf, i):
        buf[i] = buf[i] * T.float32(2)

    @T.prim_func(s_tir=True)
    def func(y: T.Buffer((n,), "float32")):
        for i in range(n):
            double(y, i)

    return func


def test_a_macro_finds_its_parser_through_the_fast_frames(monkeypatch):
    from tvm.script.parser.core import parser

    assert parser.inspect.getouterframes is tvmscript_stack.fast_outer_frames
    fast = _macro_kernel(8)
    monkeypatch.setattr(parser, "inspect", inspect)
    assert tvm_ffi.structural_equal(fast, _macro_kernel(8))
    assert "y[i] = y[i] * T.float32(2.0)" in fast.script()
