"""ONNX conformance: ONNX's own backend node cases (and held-out CNNs) through onnxruntime, plain
TVM and tvm-sparse, each case in a worker process that an abort cannot take down.

Why: tvm-sparse is a layer on TVM, so every model plain TVM runs it must run too, exactly. This
runs every case through the three engines, compares with the case's expected outputs at the
case's own rtol/atol (the ONNX backend runner's rule: same dtype, same shape, allclose), and
lists every case where tvm-sparse does worse than plain TVM.

Statuses: ``ok``, ``wrong`` (ran, answer differs), ``error`` (a Python exception: a clean refusal
or a bug, the message says which), ``crash`` (the worker died: an LLVM abort, a segfault),
``timeout``.

    python benchmarks/conformance.py                          # every node case, 3 engines
    python benchmarks/conformance.py --cases conv relu        # names containing a pattern
    python benchmarks/conformance.py --models all --image 64  # the held-out classic CNNs too
    python benchmarks/conformance.py --json out.json --workers 2

Exit status 1 when tvm-sparse regresses against plain TVM or crashes anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from worker_pool import run_jobs, serve

ENGINES = ("ort", "tvm", "sparse")
STATUSES = ("ok", "wrong", "error", "crash", "timeout")


@dataclass
class Case:
    """One model with its feeds and the outputs it must give (None: a reference engine's)."""

    name: str
    model: bytes
    inputs: list
    expected: list | None
    rtol: float = 1e-3
    atol: float = 1e-7


@dataclass
class Result:
    case: str
    engine: str
    status: str
    detail: str = ""
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


# -- cases ---------------------------------------------------------------------------------


def node_cases(patterns: list[str] | None = None) -> list[Case]:
    """ONNX's backend node cases (``onnx.backend.test.case.node``), first data set of each."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        collected = collect_testcases()
    cases = []
    for tc in collected:
        if patterns and not any(p in tc.name for p in patterns):
            continue
        inputs, outputs = tc.data_sets[0]
        cases.append(
            Case(
                tc.name,
                tc.model.SerializeToString(),
                [_array(x) for x in inputs],
                [_array(x) for x in outputs],
                float(tc.rtol),
                float(tc.atol),
            )
        )
    return cases


def _array(value):
    """A feed as the engines take it: numpy scalars become 0-d arrays, sequences stay lists."""
    if value is None:
        return None
    if isinstance(value, list):
        return [_array(v) for v in value]
    return np.asarray(value)


def case_ops(case: Case) -> set[str]:
    import onnx

    model = onnx.load_from_string(case.model)
    return {n.op_type for n in model.graph.node}


def model_cases(
    names: list[str], options: dict, workdir: str, sparsities: tuple[float, ...] = (0.0,)
) -> list[Case]:
    """Zoo models at each sparsity (``options``: their export options, e.g. image, width);
    the expected outputs come from onnxruntime, in the worker."""
    from tvm_sparse import zoo

    os.makedirs(workdir, exist_ok=True)
    cases = []
    for name in names:
        for sparsity in sparsities:
            path = os.path.join(workdir, f"{name}_{sparsity:g}.onnx")
            print(f"exporting {name} at {sparsity:.0%} {options}", flush=True)
            zoo.export(name, path, sparsity=sparsity, **options)
            feeds = zoo.inputs(name, **options)
            with open(path, "rb") as f:
                model = f.read()
            label = f"model_{name}" + (f"@{sparsity:g}" if sparsity else "")
            cases.append(Case(label, model, list(feeds.values()), None, 1e-3, 0.0))
    return cases


# -- engines (run in the worker) ----------------------------------------------------------------


def _graph_inputs(model) -> list[str]:
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def run_ort(case: Case) -> list:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(case.model, options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, dict(zip(names, case.inputs)))


def _to_tvm(value):
    import tvm

    if value is None:
        return None
    if isinstance(value, list):
        return [_to_tvm(v) for v in value]
    return tvm.runtime.tensor(np.require(value, requirements="C"), tvm.cpu())


def _from_tvm(out) -> list:
    """The VM's result as a list of outputs, converted the way tvm-sparse's ``run`` does
    (a nested tuple, an ONNX sequence, becomes a list)."""
    from tvm_sparse.module import _to_numpy

    def listify(value):
        return [listify(v) for v in value] if isinstance(value, tuple) else value

    value = _to_numpy(out)
    return listify(value) if isinstance(value, tuple) else [value]


def _as_graph_outputs(model, outs: list) -> list:
    """A lone sequence output comes back from TVM as its elements: make it one list again."""
    graph_outputs = model.graph.output
    if len(graph_outputs) == 1 and graph_outputs[0].type.WhichOneof("value") == "sequence_type":
        flat = [o for o in outs if not isinstance(o, list)]
        return [flat] if len(flat) == len(outs) else outs
    return outs


def run_tvm(case: Case) -> list:
    """Plain TVM 0.27: the Relax ONNX frontend, ``tvm.compile`` with its default pipeline."""
    import onnx
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    model = onnx.load_from_string(case.model)
    start = time.perf_counter()
    mod = from_onnx(model)
    executable = tvm.compile(mod, target="llvm")
    _COMPILE_SECONDS[0] = time.perf_counter() - start
    vm = relax.VirtualMachine(executable, tvm.cpu())
    return _as_graph_outputs(model, _from_tvm(vm["main"](*[_to_tvm(x) for x in case.inputs])))


def run_sparse(case: Case) -> list:
    import onnx

    import tvm_sparse

    model = onnx.load_from_string(case.model)
    start = time.perf_counter()
    compiled = tvm_sparse.compile(model, "llvm")
    _COMPILE_SECONDS[0] = time.perf_counter() - start
    out = compiled.run(*case.inputs)
    listed = (
        [list(o) if isinstance(o, tuple) else o for o in out] if isinstance(out, tuple) else [out]
    )
    return _as_graph_outputs(model, listed)


RUNNERS = {"ort": run_ort, "tvm": run_tvm, "sparse": run_sparse}
_COMPILE_SECONDS = [0.0]


def compare(expected: list, got: list, rtol: float, atol: float) -> str:
    """'' when ``got`` matches (the ONNX backend runner's rule), else what differs."""
    if len(got) != len(expected):
        return f"{len(got)} outputs, expected {len(expected)}"
    for i, (ref, out) in enumerate(zip(expected, got)):
        if isinstance(ref, list) or isinstance(out, list):
            if not isinstance(ref, list) or not isinstance(out, list) or len(ref) != len(out):
                return f"output {i}: sequence mismatch"
            why = compare(ref, out, rtol, atol)
            if why:
                return f"output {i}: {why}"
            continue
        if ref is None or out is None:
            if ref is not out:
                return f"output {i}: optional mismatch"
            continue
        ref, out = np.asarray(ref), np.asarray(out)
        if ref.dtype != out.dtype:
            return f"output {i}: dtype {out.dtype}, expected {ref.dtype}"
        if ref.shape != out.shape:
            return f"output {i}: shape {list(out.shape)}, expected {list(ref.shape)}"
        if ref.dtype == object or ref.dtype.kind in "SU":
            if not np.array_equal(ref, out):
                return f"output {i}: values differ"
            continue
        try:
            np.testing.assert_allclose(out, ref, rtol=rtol, atol=atol)
        except AssertionError:
            with np.errstate(all="ignore"):
                diff = np.nanmax(np.abs(out.astype(np.float64) - ref.astype(np.float64)))
            return f"output {i}: max abs diff {diff:.3g} (rtol {rtol:g}, atol {atol:g})"
    return ""


def model_tolerance(expected: list) -> float:
    """atol for a held-out model: 1e-3 of its largest output, as the zoo checks do."""
    return 1e-3 * max(float(np.max(np.abs(np.asarray(e)))) for e in expected)


def run_case(case: Case, engine: str) -> Result:
    """One case through one engine, in this process (the worker's body)."""
    _COMPILE_SECONDS[0] = 0.0
    start = time.perf_counter()
    try:
        if case.expected is None:  # a held-out model: onnxruntime gives the reference
            case.expected = run_ort(case)
            case.atol = model_tolerance(case.expected)
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            got = RUNNERS[engine](case)
        why = compare(case.expected, got, case.rtol, case.atol)
        status, detail = ("wrong", why) if why else ("ok", "")
    except Exception as err:  # every failure is a result, not the end of the run
        lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
        status, detail = "error", f"{type(err).__name__}: {lines[-1] if lines else ''}"[:400]
    extra = {"compile_s": round(_COMPILE_SECONDS[0], 3)} if _COMPILE_SECONDS[0] else {}
    return Result(case.name, engine, status, detail, time.perf_counter() - start, extra)


# -- worker processes ---------------------------------------------------------------------------


def _worker_main(conn) -> None:
    os.environ.setdefault("TVM_NUM_THREADS", "1")
    serve(conn, lambda job: run_case(*job))


def _failed(job: tuple[Case, str], kind: str, detail: str, seconds: float) -> Result:
    case, engine = job
    return Result(case.name, engine, kind, detail, seconds)


def run_all(
    cases: list[Case], engines: tuple[str, ...], workers: int, timeout_s: float, progress=None
) -> list[Result]:
    """Every (case, engine) through a pool of ``workers`` processes (``worker_pool``)."""
    jobs = [(c, e) for c in cases for e in engines]
    return run_jobs(jobs, _worker_main, (), workers, timeout_s, _failed, progress)


# -- summary -----------------------------------------------------------------------------------


def by_case(results: list[Result]) -> dict[str, dict[str, Result]]:
    table: dict[str, dict[str, Result]] = {}
    for r in results:
        table.setdefault(r.case, {})[r.engine] = r
    return table


def regressions(results: list[Result]) -> list[tuple[str, Result, Result]]:
    """Cases plain TVM passes and tvm-sparse does not: (name, tvm result, sparse result)."""
    out = []
    for name, row in sorted(by_case(results).items()):
        tvm_r, sparse_r = row.get("tvm"), row.get("sparse")
        if tvm_r and sparse_r and tvm_r.status == "ok" and sparse_r.status != "ok":
            out.append((name, tvm_r, sparse_r))
    return out


def summary(results: list[Result]) -> str:
    table = by_case(results)
    engines = [e for e in ENGINES if any(e in row for row in table.values())]
    lines = [f"{len(table)} cases", f"{'engine':8s} " + " ".join(f"{s:>8s}" for s in STATUSES)]
    for engine in engines:
        counts = Counter(row[engine].status for row in table.values() if engine in row)
        lines.append(f"{engine:8s} " + " ".join(f"{counts.get(s, 0):8d}" for s in STATUSES))
    regress = regressions(results)
    lines.append(f"\ntvm-sparse worse than plain TVM: {len(regress)}")
    for name, _, sparse_r in regress:
        lines.append(f"  {name}: {sparse_r.status}: {sparse_r.detail}")
    crashes = [r for r in results if r.status in ("crash", "timeout")]
    lines.append(f"crashes and timeouts: {len(crashes)}")
    for r in crashes:
        lines.append(f"  {r.case} [{r.engine}]: {r.status}: {r.detail}")
    if "sparse" in engines:
        wrong = [
            row["sparse"]
            for row in table.values()
            if row.get("sparse", None) and row["sparse"].status == "wrong"
        ]
        lines.append(f"tvm-sparse wrong answers: {len(wrong)}")
        for r in sorted(wrong, key=lambda r: r.case):
            lines.append(f"  {r.case}: {r.detail}")
        pairs = [
            (row["tvm"].extra.get("compile_s"), row["sparse"].extra.get("compile_s"), n)
            for n, row in table.items()
            if "tvm" in row and "sparse" in row
        ]
        pairs = [(t, s, n) for t, s, n in pairs if t and s]
        if pairs:
            ratio = sum(s for _, s, _ in pairs) / sum(t for t, _, _ in pairs)
            lines.append(f"compile time, tvm-sparse / plain TVM, {len(pairs)} cases: {ratio:.2f}x")
            for t, s, n in pairs:
                if n.startswith("model_"):
                    lines.append(f"  {n}: plain TVM {t:.1f} s, tvm-sparse {s:.1f} s ({s / t:.2f}x)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", help="only node cases whose name contains one")
    parser.add_argument("--no-node-cases", action="store_true", help="held-out models only")
    parser.add_argument(
        "--models", nargs="*", default=[], help="zoo models to add ('all': the classic CNNs)"
    )
    parser.add_argument("--image", type=int, default=None, help="image size for --models")
    parser.add_argument("--width", type=float, default=None, help="channel scale for --models")
    parser.add_argument(
        "--sparsities",
        nargs="*",
        type=float,
        default=[0.0],
        help="sparsities to export --models at",
    )
    parser.add_argument("--engines", nargs="*", default=list(ENGINES), choices=ENGINES)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2)))
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per case")
    parser.add_argument("--json", help="write every result here")
    parser.add_argument("--workdir", default="/tmp/tvm-sparse-conformance")
    args = parser.parse_args(argv)

    cases = [] if args.no_node_cases else node_cases(args.cases)
    models = args.models
    if models == ["all"]:
        from tvm_sparse import zoo

        models = sorted(n for n, m in zoo.ZOO.items() if m.family == "classic")
    options = {k: v for k, v in (("image", args.image), ("width", args.width)) if v is not None}
    cases += model_cases(models, options, args.workdir, tuple(args.sparsities))
    print(f"{len(cases)} cases x {len(args.engines)} engines, {args.workers} workers", flush=True)

    def progress(result: Result, done: int) -> None:
        if result.status != "ok" or done % 100 == 0:
            print(
                f"[{done}] {result.case} [{result.engine}] {result.status} {result.detail}"[:300],
                flush=True,
            )

    results = run_all(cases, tuple(args.engines), args.workers, args.timeout, progress)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.__dict__ for r in results], f, indent=1)
    print(summary(results))
    bad = regressions(results) or [
        r for r in results if r.engine == "sparse" and r.status in ("crash", "timeout")
    ]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
