"""Tuning over RPC on one device and on several at once: the wall time of the same tune.

    python benchmarks/bench_rpc_tuning.py [--devices 2] [--trials 8] [--layers 4] [--hidden 1024]

Starts a loopback RPC tracker and ``--devices`` servers of one key on this machine (each server
runs kernels on one thread), then tunes the same pruned MLP twice into fresh records
directories: measuring on one server (``rpc_devices=1``), then on all of them at once
(``rpc_devices=N``: the layers' searches are stepped side by side, one per free server, each
trial built in a worker process here, ``tuning.build_pool``). Prints both wall times, the
speedup, and per layer the best time each tune found, so a parallel tune that measured worse
(servers disturbing each other) shows. On a machine with fewer cores than servers plus
builds, the speedup is capped by the cores, not by the tracker.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

KEY = "bench-rpc-tuning"


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=2, help="RPC servers to measure on at once")
    p.add_argument("--trials", type=int, default=8, help="most settings measured per layer")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--density", type=float, default=0.1)
    p.add_argument("--batch", type=int, default=16, help="16+: the larger CSR panel space")
    return p.parse_args()


def _tune(model, tracker: str, devices: int, trials: int):
    from tvm_sparse import tuner

    with tempfile.TemporaryDirectory(prefix="bench_rpc_tuning_") as records:
        start = time.perf_counter()
        summary = tuner.tune(
            model,
            trials=trials,
            records_dir=records,
            candidates="chosen",
            metaschedule=False,
            rpc_tracker=tracker,
            rpc_key=KEY,
            rpc_devices=devices,
            progress=None,
        )
        return time.perf_counter() - start, summary


def main() -> int:
    args = _parse()
    os.environ["TVM_NUM_THREADS"] = "1"  # each server measures on one core (inherited)
    from tvm_sparse.models import pruned_mlp
    from tvm_sparse.schedules.tuning.loopback import loopback_rpc

    model = pruned_mlp(
        layers=args.layers, hidden=args.hidden, density=args.density, batch=args.batch
    )
    with loopback_rpc(KEY, servers=args.devices) as tracker:
        print(
            f"MLP {args.layers}x{args.hidden} at density {args.density}, batch {args.batch}, "
            f"{args.trials} trials a layer, {args.devices} RPC servers on this machine "
            f"({os.cpu_count()} cores)"
        )
        _tune(model, tracker, args.devices, 1)  # warm-up: imports, first sessions
        one_s, one = _tune(model, tracker, 1, args.trials)
        print(f"  1 device : {one_s:7.1f} s, {one.trials} trials")
        many_s, many = _tune(model, tracker, args.devices, args.trials)
        print(f"  {args.devices} devices: {many_s:7.1f} s, {many.trials} trials")
        again_s, _ = _tune(model, tracker, 1, args.trials)  # the first, timed again
        print(f"  1 device : {again_s:7.1f} s (again)")
        print(
            f"  speedup of measuring in parallel: {min(one_s, again_s) / many_s:.2f}x "
            "(against the faster of the two one-device runs)"
        )
        print("  best per layer (ms), one device / parallel:")
        for a, b in zip(one.tasks, many.tasks, strict=True):
            print(f"    {a.name:40s} {a.best_s * 1e3:8.4f} / {b.best_s * 1e3:8.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
