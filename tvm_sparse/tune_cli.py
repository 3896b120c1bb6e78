"""The ``tvm-sparse tune`` subcommand (kept apart from cli.py so the tuner stays optional).

    tvm-sparse tune MODEL --target T --trials N -o RECORDS_DIR
                    [--rpc-tracker HOST:PORT --rpc-key KEY [--rpc-devices N]]
                    [--input-shapes ...]
                    [--no-model-check] [--check-rounds R]

Then ``tvm-sparse compile MODEL --tuning-records RECORDS_DIR`` applies what it found, unless the
end-to-end check at the end of the tune found the model no faster with it.
"""

from __future__ import annotations

import argparse


def add_tune_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``tune`` to the ``tvm-sparse`` subcommands; returns its parser."""
    t = subparsers.add_parser(
        "tune", help="auto-tune every kernel of a model; write tuning records"
    )
    t.add_argument("model", help="ONNX file")
    t.add_argument("--target", default="llvm", help="llvm (this CPU) or a JSON target")
    t.add_argument(
        "--trials", type=int, default=64, help="most settings measured per task (default 64)"
    )
    t.add_argument("-o", "--output", required=True, metavar="RECORDS_DIR", help="records directory")
    t.add_argument("--rpc-tracker", metavar="HOST:PORT", help="measure on an RPC device")
    t.add_argument("--rpc-key", metavar="KEY", help="device key registered with the tracker")
    t.add_argument(
        "--rpc-devices",
        type=int,
        default=1,
        metavar="N",
        help="measure on N of the tracker's KEY servers at once, one layer each (default 1)",
    )
    t.add_argument(
        "--candidates",
        choices=("all", "chosen"),
        default="all",
        help="tune every candidate kernel per layer (default) or only the one compile picks",
    )
    t.add_argument(
        "--no-metaschedule", action="store_true", help="skip the leftover (non-kernel) functions"
    )
    t.add_argument(
        "--no-model-check",
        action="store_true",
        help="skip the end-to-end check (the model timed with and without the records)",
    )
    t.add_argument(
        "--check-rounds",
        type=int,
        default=12,
        help="rounds of the end-to-end check, the two models taking turns (default 12)",
    )
    t.add_argument(
        "--weights-in",
        choices=("auto", "dram", "l3"),
        default="auto",
        help="where a timed kernel's weights come from: l3 (the model's weights and "
        "activations fit the last-level cache), dram, or auto (by the model's size; default)",
    )
    t.add_argument(
        "--input-shapes",
        metavar="NAME:DxD,...",
        help="static input shapes, e.g. input:1x1x32x32 (needed for dynamic models)",
    )
    return t


def run_tune(args: argparse.Namespace) -> int:
    """Run ``tune`` for parsed arguments; prints progress and the summary table."""
    from .errors import TvmSparseError
    from .tuner import tune

    if args.trials < 1:
        raise TvmSparseError(f"--trials must be >= 1, got {args.trials}")
    if args.check_rounds < 1:
        raise TvmSparseError(f"--check-rounds must be >= 1, got {args.check_rounds}")
    summary = tune(
        args.model,
        args.target,
        trials=args.trials,
        records_dir=args.output,
        input_shapes=args.input_shapes,
        rpc_tracker=args.rpc_tracker,
        rpc_key=args.rpc_key,
        rpc_devices=args.rpc_devices,
        candidates=args.candidates,
        metaschedule=not args.no_metaschedule,
        check_model=not args.no_model_check,
        check_rounds=args.check_rounds,
        weights_in=args.weights_in,
    )
    print(summary.table())
    return 0
