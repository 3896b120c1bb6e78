"""Which buffer each kernel of a compiled model waits on inside the model.

    python benchmarks/kernel_context.py MODULE.so --shape 1,3,299,299 [--match conv2d ...]
                                        [--sweep-mb 256] [--reps 15]
    python benchmarks/kernel_context.py MODULE.so --inputs feeds.npz ...

``--shape`` runs a model of one float32 input on random values; ``--inputs`` gives every input
by name (``numpy.savez``), for models of several or integer inputs (BERT's ids and mask).

Why: kernels run up to 1.3-4x slower in a model than timed alone (session 35: Inception-v3's
35x35 1x1 convs 2x, its big-image Winograd layers 1.2-1.4x), and a kernel timed alone with cold
weights does not show it. This captures every kernel call of one run with its own tensors (the
VM's instrument), then times each call:

- ``model``: inside the model (median over runs);
- ``hot``: the same call repeated on the same tensors (everything in cache);
- ``swept``: after writing ``--sweep-mb`` MB (every cache evicted, as a whole inference does);
- ``argN``: after the sweep with argument N read again (so in L2): the argument whose ``argN``
  falls furthest below ``swept`` is the one the kernel waits on; if no argument brings it down,
  the cost is in the kernel's own workspace.

Build the module for the thread count you run (``TVM_NUM_THREADS=1 tvm-sparse compile ...``):
a module built for all cores and run on one thread has other kernels.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("module", help="library written by 'tvm-sparse compile'")
    given = p.add_mutually_exclusive_group(required=True)
    given.add_argument("--shape", help="the one float32 input's shape, e.g. 1,3,224,224")
    given.add_argument("--inputs", help="an .npz holding every input by its name")
    p.add_argument("--match", nargs="*", default=[], help="only kernels whose name has one")
    p.add_argument("--sweep-mb", type=int, default=256)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--top", type=int, default=25, help="kernels shown (largest excess first)")
    return p.parse_args()


ARGS = _parse()
os.environ.setdefault("TVM_NUM_THREADS", "1")  # before tvm is imported

import numpy as np  # noqa: E402
import tvm  # noqa: E402
from tvm import relax  # noqa: E402

import tvm_sparse  # noqa: E402


def capture(module, xs: list[np.ndarray], runs: int):
    """Every kernel call of a run, in order: (symbol, function, tensors), and its median time
    over ``runs`` runs of the model."""
    vm = relax.VirtualMachine(module.executable, module.device)
    calls: list[tuple[str, object, tuple]] = []
    times: list[float] = []
    started: list[float] = []
    recording = [True]

    def instrument(func, symbol, before_run, ret_value, *call_args):
        name = str(symbol)
        if before_run:
            started.append(time.perf_counter())
            return 0
        elapsed = time.perf_counter() - started.pop()
        if not name.startswith("vm.builtin"):
            if recording[0]:
                calls.append((name, func, call_args))
            times.append(elapsed)
        return 0

    vm.set_instrument(instrument)
    main = vm["main"]
    args = [tvm.runtime.tensor(x, module.device) for x in xs]
    main(*args)
    recording[0] = False
    times.clear()
    for _ in range(runs):
        main(*args)
    per_call = np.median(np.array(times).reshape(runs, len(calls)), axis=0) * 1e6
    return calls, per_call


def contexts(func, call_args, sweep: np.ndarray, reps: int) -> dict[str, float]:
    """Median microseconds of one call: hot, after a sweep, after a sweep and one re-read."""
    tensors = [a for a in call_args if hasattr(a, "shape")]
    views = [np.from_dlpack(t) for t in tensors]

    def timed(before) -> float:
        samples = []
        for _ in range(reps):
            before()
            start = time.perf_counter()
            func(*call_args)
            samples.append(time.perf_counter() - start)
        return statistics.median(samples) * 1e6

    def swept(reread=None):
        def before():
            sweep[:] += 1.0
            if reread is not None:
                views[reread].sum()

        return before

    result = {"hot": timed(lambda: None), "swept": timed(swept())}
    for i in range(len(tensors)):
        result[f"arg{i}"] = timed(swept(i))
    return result


def model_inputs(module) -> list[np.ndarray]:
    """The module's inputs in its order: from ``--inputs`` by name, or one random float32
    tensor of ``--shape``."""
    if ARGS.shape:
        shape = tuple(int(v) for v in ARGS.shape.split(","))
        return [np.random.default_rng(0).standard_normal(shape).astype(np.float32)]
    saved = np.load(ARGS.inputs)
    missing = [spec.name for spec in module.inputs if spec.name not in saved.files]
    if missing:
        sys.exit(f"{ARGS.inputs} has no array for input(s) {missing} (it has {saved.files})")
    return [saved[spec.name] for spec in module.inputs]


def main() -> None:
    module = tvm_sparse.load(ARGS.module)
    calls, in_model = capture(module, model_inputs(module), ARGS.reps)
    sweep = np.zeros(ARGS.sweep_mb << 18, np.float32)
    rows = []
    seen = set()
    for index, (name, func, call_args) in enumerate(calls):
        if name in seen or (ARGS.match and not any(m in name for m in ARGS.match)):
            continue
        seen.add(name)  # the first call of each kernel
        times = contexts(func, call_args, sweep, ARGS.reps)
        rows.append((in_model[index] - times["hot"], index, name, in_model[index], times))
        print(f"  {index:3d} {name}", flush=True)
    rows.sort(key=lambda r: -r[0])
    print(
        f"\n{'#':>3} {'kernel':48} {'model':>8} {'hot':>8} {'swept':>8}  after the sweep, re-read"
    )
    for _excess, index, name, model_us, times in rows[: ARGS.top]:
        args = " ".join(f"{k} {v:.0f}" for k, v in times.items() if k.startswith("arg"))
        print(f"{index:3d} {name[:48]:48} {model_us:8.1f} {times['hot']:8.1f} "
              f"{times['swept']:8.1f}  {args}")  # fmt: skip
    total_model = sum(r[3] for r in rows)
    total_hot = sum(r[4]["hot"] for r in rows)
    print(f"\nfirst calls of {len(rows)} kernels: {total_model / 1e3:.2f} ms in the model, "
          f"{total_hot / 1e3:.2f} ms hot")  # fmt: skip


if __name__ == "__main__":
    main()
