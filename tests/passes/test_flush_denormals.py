"""Subnormals flushed while a module's kernels run (FTZ + DAZ), and nowhere else: not in the
caller's thread after the run, not in TVM's pool threads, not in a module compiled without it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tvm
from onnx import TensorProto, helper
from tvm.script import tirx as T

import tvm_sparse
from tvm_sparse.passes import flush_denormals
from tvm_sparse.target import resolve_target

pytestmark = pytest.mark.skipif(
    not flush_denormals.applies(resolve_target("llvm")), reason="FTZ/DAZ is x86's (MXCSR)"
)

ROWS, COLS = 64, 1024  # 65536 products: the leftover rules make the kernel's loop parallel
SUBNORMAL = np.float32(5e-39)


def _scale_model():
    """y = x * s, s an input too (a constant would be folded away)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [ROWS, COLS])
    s = helper.make_tensor_value_info("s", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [ROWS, COLS])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "s"], ["y"])], "scale", [x, s], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def modules():
    model = _scale_model()
    return {flag: tvm_sparse.compile(model, "llvm", flush_denormals=flag) for flag in (True, False)}


def _ieee_still_in_numpy() -> bool:
    return SUBNORMAL * np.float32(0.5) != 0


def test_results_flush_to_zero_on_every_thread(modules):
    x = np.full((ROWS, COLS), 1e-10, np.float32)
    tiny = np.array([1e-30], np.float32)  # products ~1e-40: subnormal
    assert np.all(modules[True].run(x, tiny) == 0)  # FTZ, in every parallel chunk
    assert np.all(modules[False].run(x, tiny) > 0)
    assert _ieee_still_in_numpy()


def test_subnormal_inputs_read_as_zero(modules):
    x = np.full((ROWS, COLS), SUBNORMAL, np.float32)
    big = np.array([1e30], np.float32)  # 5e-39 * 1e30 = 5e-9, unless the input reads as 0
    assert np.all(modules[True].run(x, big) == 0)  # DAZ
    np.testing.assert_allclose(modules[False].run(x, big), 5e-9, rtol=1e-5)


def test_normal_values_are_unchanged(modules, rng):
    x = rng.standard_normal((ROWS, COLS)).astype(np.float32)
    s = np.array([0.75], np.float32)
    np.testing.assert_array_equal(modules[True].run(x, s), x * s)


def test_pool_threads_created_by_a_flushing_module_keep_ieee_mode():
    """A pool thread inherits the mode of the thread that creates it: a flushing module's first
    parallel launch must not hand its threads FTZ for every later kernel of the process."""
    script = textwrap.dedent(f"""
        import os, sys
        os.environ["TVM_NUM_THREADS"] = "2"
        sys.path.insert(0, {repr(sys.path[0])})
        import numpy as np
        import tvm_sparse
        from tests.passes.test_flush_denormals import _scale_model
        model = _scale_model()
        flushing = tvm_sparse.compile(model, "llvm", flush_denormals=True)
        keeping = tvm_sparse.compile(model, "llvm", flush_denormals=False)
        x = np.full(({ROWS}, {COLS}), 1e-10, np.float32)
        tiny = np.array([1e-30], np.float32)
        assert np.all(flushing.run(x, tiny) == 0)  # the first parallel launch of the process
        out = keeping.run(x, tiny)
        assert np.all(out > 0), int((out == 0).sum())
        assert np.float32(5e-39) * np.float32(0.5) != 0
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, cwd=_repo_root())  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok")


def _repo_root() -> str:
    import os

    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@T.prim_func(private=True)
def _scaled(a: T.handle, b: T.handle, lo: T.int32, n: T.int32):
    A = T.match_buffer(a, (200,), "float32")
    B = T.match_buffer(b, (200,), "float32")
    for i in T.parallel(lo, lo + n):
        B[i] = A[i] * T.float32(2)


@pytest.mark.parametrize("tasks", [1, 2, 3, 7])
@pytest.mark.parametrize(("lo", "n"), [(0, 0), (0, 1), (0, 5), (3, 17), (10, 190), (0, 200)])
def test_chunked_parallel_loop_covers_every_iteration_once(target, tasks, lo, n):
    """The parallel loop cut into ``tasks`` chunks (any extent, any start, symbolic) still
    writes exactly its iterations."""
    func = flush_denormals.flush_denormals_in(_scaled.with_attr("global_symbol", "scaled"), tasks)
    assert "T.parallel(" in func.script()
    kernel = tvm.tirx.build(func, target=target)
    a = np.arange(200, dtype=np.float32)
    b = np.full(200, -1, np.float32)
    out = tvm.runtime.tensor(b)
    kernel(tvm.runtime.tensor(a), out, lo, n)
    expected = b.copy()
    expected[lo : lo + n] = 2 * a[lo : lo + n]
    np.testing.assert_array_equal(out.numpy(), expected)


@T.prim_func(private=True)
def _row_sums(p: T.handle, v: T.handle, s: T.handle, lo: T.int32, n: T.int32):
    ptr = T.match_buffer(p, (201,), "int32")
    vals = T.match_buffer(v, (400,), "float32")
    sums = T.match_buffer(s, (200,), "float32")
    for i in T.parallel(lo, lo + n):
        sums[i] = T.float32(0)
        for j in range(ptr[i], ptr[i + 1]):  # bounds read the parallel loop's variable
            sums[i] = sums[i] + vals[j]


@pytest.mark.parametrize("tasks", [1, 2, 3])
@pytest.mark.parametrize(("lo", "n"), [(0, 7), (3, 17), (10, 190)])
def test_loops_nested_in_a_chunked_loop_see_the_right_iteration(target, tasks, lo, n):
    """A CSR row loop inside a parallel loop (``for j in range(ptr[i], ptr[i + 1])``): each
    chunk's loop starts at 0 and binds ``i`` with a let. A chunk loop starting at its first
    iteration made TVM 0.27 read ``ptr[i - first]`` in the nested loop's bounds: every task
    but the first summed another row's values."""
    func = flush_denormals.flush_denormals_in(_row_sums.with_attr("global_symbol", "sums"), tasks)
    kernel = tvm.tirx.build(func, target=target)
    lengths = np.arange(200) % 4
    ptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    vals = np.linspace(-1, 1, 400, dtype=np.float32)  # ptr[200] = 300 values
    out = tvm.runtime.tensor(np.full(200, -7, np.float32))
    kernel(tvm.runtime.tensor(ptr), tvm.runtime.tensor(vals), out, lo, n)
    expected = np.full(200, -7, np.float32)
    for i in range(lo, lo + n):
        expected[i] = vals[ptr[i] : ptr[i + 1]].sum()
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6, atol=1e-6)


def test_every_kernel_of_a_model_sets_the_mode_and_none_without_it(target):
    from tvm_sparse import models
    from tvm_sparse.frontend import import_model
    from tvm_sparse.passes.pipeline import SparsifyOptions, build_pipeline

    imported = import_model(models.pruned_mlp(layers=2, hidden=128, density=0.1, batch=4))
    for flag in (True, False):
        options = SparsifyOptions(layer_names=imported.weighted_nodes, measure=False,
                                  flush_denormals=flag)  # fmt: skip
        with target:
            lowered = build_pipeline(target, options)(imported.mod)
        kernels = [f for f in lowered.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
        assert kernels
        for func in kernels:
            assert ("llvm.x86.sse.ldmxcsr" in func.script()) == flag


@pytest.mark.parametrize("keep", [False, True])
def test_cli_keep_denormals_reaches_the_kernels(tmp_path, keep):
    """``tvm-sparse compile --keep-denormals``: the exported module keeps subnormal results;
    without the flag the same module flushes them (the mode travels in the .so itself)."""
    import onnx

    onnx.save(_scale_model(), tmp_path / "scale.onnx")
    lib = tmp_path / "scale.so"
    flags = ["--keep-denormals"] if keep else []
    cli = [sys.executable, "-m", "tvm_sparse.cli"]
    done = subprocess.run([*cli, "compile", str(tmp_path / "scale.onnx"), "-o", str(lib), *flags],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    x = np.full((ROWS, COLS), 1e-10, np.float32)
    np.savez(tmp_path / "in.npz", x=x, s=np.array([1e-30], np.float32))
    done = subprocess.run([*cli, "run", str(lib), "--inputs", str(tmp_path / "in.npz"), "-o",
                           str(tmp_path / "out.npz")], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    out = np.load(tmp_path / "out.npz")["output_0"]
    assert np.all(out > 0) if keep else np.all(out == 0)


@T.prim_func(private=True)
def _halved(a: T.Buffer((64,), "float32"), b: T.Buffer((64,), "float32")):
    for i in T.parallel(64):
        b[i] = a[i] * T.float32(0.5)


@pytest.mark.parametrize("flush", [True, False])
def test_a_kernel_timed_alone_runs_in_the_models_mode(target, flush):
    """``build_kernel`` (the candidates' timing build) applies the model's FTZ/DAZ rewrite, so a
    candidate is timed on the code the model runs; ``flush_denormals=False`` leaves it."""
    from tvm_sparse.schedules.kernel import KernelCall, build_kernel

    call = KernelCall(func=_halved, name="halved", consts=(), out_shape=(64,))
    module = build_kernel(call, target, flush_denormals=flush)
    out = tvm.runtime.tensor(np.ones(64, np.float32))
    module["main"](tvm.runtime.tensor(np.full(64, 2e-38, np.float32)), out)
    assert np.all(out.numpy() == 0) == flush  # 1e-38 is subnormal: flushed, or kept
    assert _ieee_still_in_numpy()
