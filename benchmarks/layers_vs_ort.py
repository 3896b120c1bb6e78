"""Each conv of a compiled model against onnxruntime's node for it, both timed inside their
models.

    python benchmarks/layers_vs_ort.py MODEL.onnx MODULE.so [--runs 30] [--top 40] [--threads 1]

Why: a whole-model ratio says that a model loses, not where. onnxruntime's profiler times each
node in its model (its own layout, NCHWc, and its own cache state), and ``tvm_sparse.profile``
times each kernel in ours; matched by input and weight shape, the rows say which layers lose
and by how much, so the work goes where the time is (session 36: Inception-v3's 35x35 1x1
convs, 1.5-2x onnxruntime's time each, were rows the whole-model number hid). Kernels without
a weight shape in their name (Winograd, fused, pooling) and onnxruntime's other nodes are
listed unmatched, largest first.

Build the module for the thread count you compare (``TVM_NUM_THREADS=1 tvm-sparse compile
...`` for one thread).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import statistics
import sys
import tempfile


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("onnx", help="the model file both runtimes run")
    p.add_argument("module", help="library written by 'tvm-sparse compile' for that file")
    p.add_argument("--runs", type=int, default=30, help="profiled runs of each runtime")
    p.add_argument("--top", type=int, default=40, help="rows shown in each table")
    p.add_argument("--threads", type=int, default=1, help="both runtimes' threads")
    return p.parse_args()


# our dense conv kernels are named <kind>_<N>x<C>x<H>x<W>_w<O>x<I>x<KH>x<KW>_<n>
_CONV_NAME = re.compile(r"_(\d+x\d+x\d+x\d+)_w(\d+x\d+x\d+x\d+)_\d+$")


def conv_key(symbol: str) -> tuple[str, str] | None:
    """(input shape, weight shape) of a conv kernel named after them, else None."""
    found = _CONV_NAME.search(symbol)
    return (found.group(1), found.group(2)) if found else None


def same_conv(ours: tuple[str, str], theirs: tuple) -> bool:
    """Whether onnxruntime's conv node ``theirs`` is our conv ``ours``: the same input and
    filter, its output channels padded up to its channel block (NCHWc: 24 -> 32, 1000 ->
    1008) or not."""
    if len(theirs) != 2 or theirs[0] != ours[0] or theirs[1].count("x") != 3:
        return False
    co, *rest = (int(v) for v in ours[1].split("x"))
    co_ort, *rest_ort = (int(v) for v in theirs[1].split("x"))
    return rest == rest_ort and co <= co_ort < co + 16


def ort_nodes(onnx_path: str, x, runs: int, threads: int = 1) -> dict[tuple, list[float]]:
    """onnxruntime's per-node times (us, median over runs), keyed like ``conv_key`` for
    convs and by (op, input shape) for the rest; a list per key, one entry a node."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "ort")
    session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}
    for _ in range(runs):
        session.run(None, feed)
    with open(session.end_profiling()) as f:
        events = json.load(f)
    times: dict[str, list[float]] = collections.defaultdict(list)
    keys: dict[str, tuple] = {}
    for event in events:
        name = event.get("name", "")
        if event.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        node = name[: -len("_kernel_time")]
        times[node].append(event["dur"])
        args = event["args"]
        shapes = ["x".join(map(str, next(iter(d.values())))) for d in args["input_type_shape"]]
        op = args.get("op_name", "")
        keys[node] = (shapes[0], shapes[1]) if op == "Conv" and len(shapes) > 1 else (op, shapes[0])
    out: dict[tuple, list[float]] = collections.defaultdict(list)
    for node, durations in times.items():
        out[keys[node]].append(statistics.median(durations[min(3, len(durations) - 1) :]))
    return out


def ours(module_path: str, x, runs: int) -> list[tuple[str, float, int]]:
    """(symbol, in-model us summed over its calls, calls) of every kernel, largest first."""
    import tvm_sparse
    from tvm_sparse.profile import profile

    prof = profile(tvm_sparse.load(module_path), [x], runs=runs)
    rows = [(c.symbol, c.median_us * c.calls, c.calls) for c in prof.calls if not c.builtin]
    return sorted(rows, key=lambda r: -r[1])


def main() -> int:
    args = _parse()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # before tvm starts its pool
    import numpy as np
    import onnx

    graph_input = onnx.load(args.onnx, load_external_data=False).graph.input[0]
    dims = [d.dim_value or 1 for d in graph_input.type.tensor_type.shape.dim]
    x = np.random.default_rng(0).standard_normal(dims).astype(np.float32)
    theirs = ort_nodes(args.onnx, x, args.runs, args.threads)
    mine = ours(args.module, x, max(3, args.runs // 3))
    matched, unmatched = [], []
    for symbol, us, calls in mine:
        key = conv_key(symbol)
        node = next((k for k in theirs if key and same_conv(key, k) and len(theirs[k]) == calls),
                    None)  # fmt: skip
        if node is None:
            unmatched.append((us, calls, symbol))
            continue
        matched.append((us - sum(theirs[node]), us, sum(theirs[node]), calls, symbol))
        theirs.pop(node)
    print(f"{'ours - ort':>10s} {'ours us':>9s} {'ort us':>9s} {'calls':>5s}  kernel")
    for diff, us, theirs_us, calls, symbol in sorted(matched, reverse=True)[: args.top]:
        print(f"{diff:10.0f} {us:9.0f} {theirs_us:9.0f} {calls:5d}  {symbol}")
    total = sum(row[0] for row in matched)
    print(f"{total:10.0f}  over {len(matched)} matched kernels (positive: ours slower)")
    print("\nunmatched kernels of ours (us, calls):")
    for us, calls, symbol in unmatched[: args.top]:
        print(f"  {us:9.0f} {calls:5d}  {symbol}")
    print("\nunmatched onnxruntime nodes (us, nodes):")
    rest = sorted(theirs.items(), key=lambda kv: -sum(kv[1]))
    for key, durations in rest[: args.top]:
        print(f"  {sum(durations):9.0f} {len(durations):5d}  {' '.join(key)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
