"""The ``tvm-sparse`` command line, modelled on TVMC (removed from TVM in 0.20).

    tvm-sparse compile MODEL --target T -o OUT.so [--tuning-records DIR] [--input-shapes ...]
                       [--html REPORT.html]
    tvm-sparse run OUT.so [--inputs in.npz] [-o out.npz] [--print-time] [--repeat N]
    tvm-sparse analyze MODEL [--format table|json] [--input-shapes ...] [--html REPORT.html]
    tvm-sparse benchmark MODEL [--batch-sizes 1,16] [--threads 1,2] [--time S] [--json F] [...]

Every error a user can cause prints one line ``tvm-sparse: error: ...`` and exits non-zero;
tracebacks are kept for bugs (set TVM_SPARSE_DEBUG=1 to see them for user errors too).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import zipfile

import numpy as np

from .benchmark import MEASURE_MODES
from .safe_text import terminal_text

EXIT_USER_ERROR = 2


def _add_shapes(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--input-shapes",
        metavar="NAME:DxD,...",
        help="static input shapes, e.g. input:1x1x32x32 (specializes dynamic dims)",
    )


def _add_html(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--html",
        metavar="FILE",
        help="also write the report as one self-contained HTML page (plots, table; no network)",
    )


def _write_html(report, path: str, stream=None) -> None:
    """The report's HTML page at ``path`` (parent folders made, as ``export`` makes them); a
    path that cannot be written is a user error, not a traceback."""
    from .errors import TvmSparseError

    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(report.to_html())
    except OSError as err:
        raise TvmSparseError(f"{path}: cannot write the HTML report ({err.strerror})") from err
    print(f"wrote {path}", file=stream or sys.stdout)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tvm-sparse", description="Compile sparse neural networks with Apache TVM."
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    sub = parser.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compile", help="compile an ONNX model into a deployable module")
    c.add_argument("model", help="ONNX file")
    c.add_argument(
        "--target", default="llvm", help="llvm (this CPU), cuda, fpga[:u250], or a JSON target"
    )
    c.add_argument(
        "-o", "--output", required=True, help="output library (.so); a directory for fpga"
    )
    c.add_argument("--no-csim", action="store_true", help="fpga: skip the C simulation check")
    c.add_argument("--tuning-records", metavar="DIR", help="MetaSchedule database directory")
    c.add_argument("--dense", action="store_true", help="dense kernels only (baseline)")
    c.add_argument(
        "--strict-nan",
        action="store_true",
        help="NaN / Inf inputs give what dense math gives (0 x NaN = NaN) instead of skipping "
        "zero weights; keeps the sparse linear kernels, makes conv layers dense",
    )
    c.add_argument(
        "--keep-denormals",
        action="store_true",
        help="x86: keep IEEE subnormal floats (slow: ~100 cycles each) instead of flushing them "
        "to zero while the kernels run (FTZ/DAZ)",
    )
    c.add_argument(
        "--measure",
        choices=tuple(MEASURE_MODES),
        default="auto",
        help="kernel choice: time dense + best sparse candidates (auto), all, or none (estimates)",
    )
    c.add_argument(
        "--report", action="store_true", help="print the per-layer report and time per phase"
    )
    _add_html(c)
    _add_shapes(c)

    r = sub.add_parser("run", help="run a compiled module")
    r.add_argument("module", help="library written by 'compile' (manifest beside it)")
    r.add_argument("--inputs", help=".npz with one array per model input (default: random)")
    r.add_argument("-o", "--outputs", help="write outputs to this .npz")
    r.add_argument("--print-time", action="store_true", help="print the time per run")
    r.add_argument("--repeat", type=int, default=10, help="runs to time (with --print-time)")
    r.add_argument(
        "--profile",
        action="store_true",
        help="print the time of every kernel and VM call of a run (median over --repeat runs)",
    )
    r.add_argument("--profile-json", metavar="FILE", help="write the --profile times here too")

    a = sub.add_parser("analyze", help="report weight and activation sparsity per layer")
    a.add_argument("model", help="ONNX file")
    a.add_argument("--format", choices=("table", "json"), default="table")
    _add_html(a)
    _add_shapes(a)
    from .tune_cli import add_tune_parser

    add_tune_parser(sub)
    from .benchmark import add_benchmark_parser

    add_benchmark_parser(sub)
    return parser


def _cmd_compile_fpga(args: argparse.Namespace) -> int:
    from .codegen.fpga import compile_fpga
    from .codegen.fpga.cycle_check import agreement_table
    from .errors import TargetError

    if args.html:  # checked before the long HLS run
        raise TargetError(
            "--html is not supported for the fpga target: an HLS project has no per-layer "
            "sparsity report (compile prints its resource and latency estimate instead)"
        )
    project = compile_fpga(
        args.model,
        args.target,
        input_shapes=args.input_shapes,
        output_dir=args.output,
        run_csim=not args.no_csim,
    )
    print(project.estimate().table())
    if project.csim_result is not None:
        print(project.csim_result.summary())
        if project.csim_result.stage_cycles is not None:
            print("cycles per sample, estimated vs counted by the C simulation:")
            print(agreement_table(project.cycle_agreement()))
    print(f"wrote HLS project {args.output}")
    return 0


def _cmd_compile(args: argparse.Namespace) -> int:
    import tvm_sparse

    from .codegen.fpga import is_fpga_target

    if is_fpga_target(args.target):
        return _cmd_compile_fpga(args)

    mod = tvm_sparse.compile(
        args.model,
        args.target,
        tuning_records=args.tuning_records,
        input_shapes=args.input_shapes,
        sparse=not args.dense,
        measure=MEASURE_MODES[args.measure],
        strict_nan=args.strict_nan,
        flush_denormals=not args.keep_denormals,
    )
    manifest = mod.export(args.output)
    if args.report:
        print(mod.report.table())
        if mod.compile_seconds is not None:
            print(mod.compile_seconds.table())
    print(f"wrote {args.output} and {manifest}")
    if args.html:
        _write_html(mod.report, args.html)
    return 0


def _load_inputs(path: str, module) -> list[np.ndarray]:
    from .errors import RunInputError

    if not os.path.exists(path):
        raise RunInputError(f"{path}: no such inputs file")
    try:
        data = np.load(path)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise RunInputError(f"{path}: not a readable .npz file ({err})") from err
    names = [s.name for s in module.inputs]
    if isinstance(data, np.ndarray):  # a bare .npy for single-input models
        return [data]
    missing = [n for n in names if n not in data.files]
    if missing and len(data.files) == len(names):
        return [data[f] for f in data.files]  # positional: arr_0, arr_1, ...
    if missing:
        raise RunInputError(f"{path}: missing input(s) {missing}; file has {data.files}")
    return [data[n] for n in names]


def _cmd_run(args: argparse.Namespace) -> int:
    import tvm_sparse

    module = tvm_sparse.load(args.module)
    inputs = _load_inputs(args.inputs, module) if args.inputs else module.random_inputs()
    outputs = module.run(*inputs)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    if args.outputs:
        np.savez(args.outputs, **{f"output_{i}": o for i, o in enumerate(outputs)})
        print(f"wrote {args.outputs}")
    for i, out in enumerate(outputs):
        print(f"output_{i}: shape {list(out.shape)} {out.dtype}, mean {float(np.mean(out)):.6g}")
    if args.print_time:
        stats = module.benchmark(*inputs, repeat=max(args.repeat, 1))
        print(
            f"time: median {stats['median_s'] * 1e3:.3f} ms, min {stats['min_s'] * 1e3:.3f} ms "
            f"over {stats['runs']} runs"
        )
    if args.profile or args.profile_json:
        from .profile import profile

        prof = profile(module, inputs, runs=max(args.repeat, 1))
        print(prof.table())
        if args.profile_json:
            with open(args.profile_json, "w") as f:
                json.dump(prof.to_dict(), f, indent=1)
            print(f"wrote {args.profile_json}")
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    import tvm_sparse

    report = tvm_sparse.analyze(args.model, input_shapes=args.input_shapes)
    print(report.to_json() if args.format == "json" else report.table())
    if args.html:  # stdout stays one JSON document with --format json
        _write_html(report, args.html, sys.stderr if args.format == "json" else sys.stdout)
    return 0


class _TerminalFormatter(logging.Formatter):
    """Progress and warning lines quote model names: no escape sequence or control character
    reaches the terminal. The record's arguments (where names come in) go through
    ``safe_text.terminal_text``; each line of the message loses control characters too, while
    the message's own line breaks (a timing table) stay."""

    def format(self, record: logging.LogRecord) -> str:
        if isinstance(record.args, tuple):
            record.args = tuple(
                terminal_text(a, None) if isinstance(a, str) else a for a in record.args
            )
        text = super().format(record)
        return "\n".join(terminal_text(line, None) for line in text.split("\n"))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(_TerminalFormatter("tvm-sparse: %(message)s"))
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, handlers=[handler])
    from .benchmark import run_benchmark
    from .errors import TvmSparseError
    from .tune_cli import run_tune

    commands = {
        "compile": _cmd_compile,
        "run": _cmd_run,
        "analyze": _cmd_analyze,
        "tune": run_tune,
        "benchmark": run_benchmark,
    }
    try:
        return commands[args.command](args)
    except TvmSparseError as err:
        if os.environ.get("TVM_SPARSE_DEBUG"):
            raise
        print(f"tvm-sparse: error: {terminal_text(err, None)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("tvm-sparse: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
