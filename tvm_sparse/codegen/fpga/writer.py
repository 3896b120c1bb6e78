"""Write an ``HwModel`` as a Vitis HLS project, hls4ml's way: templates filled with the model.

Layout of the project directory::

    firmware/<top>.cpp, <top>.h       the kernel: AXI ports, DATAFLOW of one stage per layer
    firmware/defines.h, parameters.h  number formats, sizes, one config struct per layer (from
                                      its engine's template, templates/engines/<function>.h)
    firmware/nnet_sparse.h            the engines (dense, sparse-dense, sparse-sparse, k-WTA...)
    firmware/weights/<layer>.h        constant arrays: only what the engine reads
    firmware/hls_compat/              hls_stream.h / ap_fixed.h stand-ins for g++ C simulation
    <top>_test.cpp, tb_data/          testbench, inputs and golden outputs (CPU module)
    build_prj.tcl, Makefile, host/    Vitis HLS script; v++ link + XRT host for the Alveo card

Templates are real files under ``templates/`` with ``{{key}}`` placeholders; every placeholder
must be filled (a missing key is a bug and raises). A line ``{{> snippets/<file>}}`` stands for
that file's lines, so fields several engine configs declare alike are written once (as hls4ml
shares template parts): ``weighted_types.h`` (the number formats of a weighted engine) and
``conv_window.h`` (the kernel window of the conv engines that walk its taps).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np

from ...safe_text import comment_text
from .cycles import PHASE_DEPTH
from .engines import engine_of
from .hw_model import HwLayer, HwModel
from .number_formats import boost_table, weight_value_arrays

TEMPLATES = Path(__file__).parent / "templates"
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
_INCLUDE = re.compile(r"^\{\{> ([\w/.]+)\}\}\n", re.M)


def template_text(template: str) -> str:
    """The template file ``template`` (relative to templates/) with its snippet lines expanded."""
    text = (TEMPLATES / template).read_text()
    return _INCLUDE.sub(lambda m: template_text(m.group(1)), text)


def render(template: str, values: dict) -> str:
    """Fill ``{{key}}`` placeholders of the template file ``template`` (relative to templates/)."""
    text = template_text(template)

    def sub(m: re.Match) -> str:
        key = m.group(1)
        if key not in values:
            raise KeyError(f"template {template}: no value for {{{{{key}}}}}")
        return str(values[key])

    return _PLACEHOLDER.sub(sub, text)


def format_floats(values: np.ndarray, per_line: int = 8) -> str:
    """C initializer text of float32 values, exact (9 significant digits round-trip)."""
    items = []
    for v in np.asarray(values, np.float32).ravel().tolist():
        if v != v:
            items.append("NAN")
        elif v in (float("inf"), float("-inf")):
            items.append("INFINITY" if v > 0 else "-INFINITY")
        else:
            text = f"{v:.9g}"
            items.append(text + ("f" if any(c in text for c in ".e") else ".0f"))
    return _lines(items, per_line)


def format_ints(values: np.ndarray, per_line: int = 16) -> str:
    return _lines([str(int(v)) for v in np.asarray(values).ravel().tolist()], per_line)


def _lines(items: list[str], per_line: int) -> str:
    rows = [", ".join(items[i : i + per_line]) for i in range(0, len(items), per_line)]
    return "    " + ",\n    ".join(rows)


def _array(c_type: str, name: str, values: np.ndarray) -> str:
    body = format_floats(values) if values.dtype.kind == "f" else format_ints(values)
    return f"static const {c_type} {name}[{values.size}] = {{\n{body}\n}};"


# ---------------------------------------------------------------------------------------------
# Per-layer pieces
# ---------------------------------------------------------------------------------------------
def weight_arrays(layer: HwLayer) -> list[tuple[str, str, np.ndarray]]:
    """(C type, array name, values) of a layer's constants, in the engine's argument order."""
    cfg = f"config_{layer.name}"
    out: list[tuple[str, str, np.ndarray]] = []
    if layer.weights is not None:
        for key, arr in weight_value_arrays(layer).items():
            if key in ("w", "val", "rval"):
                c_type = f"{cfg}::weight_t"
            elif key in ("owner", "ridx"):
                c_type = f"{cfg}::owner_t"
            else:
                c_type = "uint32_t"
            out.append((c_type, f"{key}_{layer.name}", arr))
        bias = layer.bias if layer.weight_scale is None else layer.bias / layer.weight_scale
        out.append((f"{cfg}::bias_t", f"b_{layer.name}", bias.astype(np.float32)))
    elif layer.op == "kwta":
        out.append((f"{cfg}::boost_store_t", f"boost_{layer.name}", boost_table(layer)))
    return out


def _describe(layer: HwLayer) -> str:
    w = layer.weights
    if w is None:
        return layer.op
    if w.fmt == "dense":
        return f"dense weight [{layer.out_shape[0]} x {layer.n_kin}]"
    if w.fmt == "csr":
        return f"CSR of the {w.nnz} non-zero weights (of {layer.out_shape[0] * layer.n_kin})"
    return (
        f"complementary packed: {w.n_groups} groups x {layer.n_kin} inputs + residual "
        f"{w.arrays['rptr'][-1]} ({w.nnz} non-zeros of {layer.out_shape[0] * layer.n_kin})"
    )


def layer_config(layer: HwLayer) -> str:
    """The layer's config struct, from its engine's own template."""
    engine = engine_of(layer)
    return render(engine.config_template, engine.config_values(layer))


def stream_type(model: HwModel, layer: HwLayer | None, sparse: bool) -> str:
    """C type of the stream leaving ``layer`` (None: the input stream)."""
    if layer is None:
        return f"hls::stream<nnet::beat<input_t, {model.input_pack}> >"
    if sparse:
        return f"hls::stream<nnet::elem<{layer.out_t}> >"
    return f"hls::stream<nnet::beat<{layer.out_t}, {layer.pack_out}> >"


def stream_name(model: HwModel, index: int, port: int) -> str:
    """The C name of the stream leaving stage ``index`` (-1: the input) on ``port``."""
    if index < 0:
        return "s_input"
    layer = model.layers[index]
    return f"s_{layer.name}_{port}" if layer.n_outputs > 1 else f"s_{layer.name}"


def stage_function(model: HwModel, layer: HwLayer) -> str:
    """The DATAFLOW process of ``layer``: its engine called once per sample."""
    ins = [stream_type(model, prev, layer.in_sparse) for prev in model.producers(layer)]
    values = {
        "source": comment_text(layer.source),
        "engine": layer.engine,
        "op": layer.op,
        "lanes": layer.lanes,
        "name": layer.name,
        "function": engine_of(layer).function,
        "stage": layer.index + 1,  # the cycle counters' stage number (0 is the AXI input)
    }
    if len(ins) == 1 and layer.n_outputs == 1:
        args = "".join(f", {name}" for _, name, _ in weight_arrays(layer))
        return render(
            "snippets/stage.cpp",
            values
            | {
                "in_stream_t": ins[0],
                "out_stream_t": stream_type(model, layer, layer.out_sparse),
                "arguments": args,
            },
        )
    # a clone (two outputs) or an add (two inputs): streams in, then streams out
    params = [f"{t} &in{i}" for i, t in enumerate(ins)]
    out_t = stream_type(model, layer, layer.out_sparse)
    params += [f"{out_t} &out{p}" for p in range(layer.n_outputs)]
    return render(
        "snippets/stage_streams.cpp",
        values
        | {
            "stream_params": ", ".join(params),
            "stream_args": ", ".join(p.rsplit("&", 1)[1] for p in params),
        },
    )


def weights_header(layer: HwLayer) -> str:
    arrays = "\n\n".join(_array(t, n, v) for t, n, v in weight_arrays(layer))
    return render(
        "snippets/weights.h",
        {
            "source": comment_text(layer.source),
            "description": _describe(layer),
            "guard": layer.name.upper(),
            "arrays": arrays,
        },
    )


def _summary(model: HwModel) -> str:
    lines = [f"// {'layer':<24} {'op':<10} {'engine':<14} {'in':>12} -> {'out':<12} lanes"]
    for layer in model.layers:
        shape_in = "x".join(map(str, layer.in_shape)) + ("(sp)" if layer.in_sparse else "")
        shape_out = "x".join(map(str, layer.out_shape)) + ("(sp)" if layer.out_sparse else "")
        lines.append(
            f"// {layer.name:<24} {layer.op:<10} {layer.engine:<14} {shape_in:>12} -> "
            f"{shape_out:<12} {layer.lanes}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The project
# ---------------------------------------------------------------------------------------------
def write_project(
    model: HwModel,
    out_dir: str | os.PathLike,
    tb_inputs: np.ndarray | None = None,
    tb_golden: np.ndarray | None = None,
    copies: int = 1,
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> Path:
    """Write the whole project for ``model`` into ``out_dir`` (created; files overwritten)."""
    out = Path(out_dir)
    fw = out / "firmware"
    (fw / "weights").mkdir(parents=True, exist_ok=True)
    (out / "tb_data").mkdir(exist_ok=True)
    (out / "host").mkdir(exist_ok=True)
    top = model.target.top
    last = model.layers[-1]
    common = {
        "top": top,
        "model": comment_text(model.name),
        "variant": model.variant,
        "precision": str(model.precision),
        "n_input": int(np.prod(model.input_shape)),
        "n_output": int(np.prod(model.output_shape)),
    }
    (fw / "defines.h").write_text(
        render(
            "firmware/defines.h",
            common
            | {
                "input_t": model.input_t,
                "input_pack": model.input_pack,
                "output_pack": last.pack_out,
                "pipeline_depth": PHASE_DEPTH,
                "output_stage": len(model.layers) + 1,
            },
        )
    )
    (fw / "parameters.h").write_text(
        render(
            "firmware/parameters.h",
            common
            | {
                "layer_configs": "\n".join(layer_config(x) for x in model.layers),
                "weight_includes": "\n".join(
                    f'#include "weights/{x.name}.h"' for x in model.layers
                ),
            },
        )
    )
    for layer in model.layers:
        (fw / "weights" / f"{layer.name}.h").write_text(weights_header(layer))
    (fw / f"{top}.h").write_text(
        render(
            "firmware/myproject.h",
            common
            | {
                "guard": f"{top.upper()}_H_",
                "input_shape": "x".join(map(str, model.input_shape)),
            },
        )
    )
    streams = ["    " + stream_type(model, None, False) + ' s_input("s_input");']
    calls = []
    for layer in model.layers:  # a topological order: every stream is declared before its use
        for port in range(layer.n_outputs):
            s_name = stream_name(model, layer.index, port)
            streams.append(
                f'    {stream_type(model, layer, layer.out_sparse)} {s_name}("{s_name}");\n'
                f"#pragma HLS STREAM variable = {s_name} depth = {model.fifo_depth(layer, port)}"
            )
        ins = [stream_name(model, i, port) for i, port in model.sources(layer)]
        outs = [stream_name(model, layer.index, port) for port in range(layer.n_outputs)]
        calls.append(f"    stage_{layer.name}({', '.join(ins + outs)}, n_samples);")
    prev_stream = stream_name(model, last.index, 0)
    (fw / f"{top}.cpp").write_text(
        render(
            "firmware/myproject.cpp",
            common
            | {
                "layer_summary": _summary(model),
                "stage_functions": "\n".join(stage_function(model, x) for x in model.layers),
                "in_depth": common["n_input"],
                "out_depth": common["n_output"],
                "stream_declarations": "\n".join(streams),
                "stage_calls": "\n".join(calls),
                "output_t": last.out_t,
                "last_stream": prev_stream,
            },
        )
    )
    shutil.copyfile(TEMPLATES / "firmware" / "nnet_sparse.h", fw / "nnet_sparse.h")
    shutil.copytree(TEMPLATES / "firmware" / "hls_compat", fw / "hls_compat", dirs_exist_ok=True)

    (out / f"{top}_test.cpp").write_text(
        render(
            "myproject_test.cpp",
            common
            | {"tb_check": int(model.precision.is_float), "rtol": f"{rtol:g}", "atol": f"{atol:g}"},
        )
    )
    part = model.target.part
    board = {
        "part": part.name,
        "board": part.board,
        "platform": part.platform,
        "clock_mhz": f"{model.target.clock_mhz:g}",
        "clock_period_ns": f"{1000.0 / model.target.clock_mhz:.4g}",
        "copies": max(1, int(copies)),
    }
    (out / "build_prj.tcl").write_text(render("build_prj.tcl", common | board))
    (out / "Makefile").write_text(render("Makefile", common | board))
    (out / "host" / "host.cpp").write_text(render("host/host.cpp", common | board))
    if tb_inputs is not None:
        write_dat(out / "tb_data" / "tb_input_features.dat", tb_inputs)
    if tb_golden is not None:
        write_dat(out / "tb_data" / "tb_output_predictions.dat", tb_golden)
    (out / "tvm_sparse_project.json").write_text(json.dumps(project_manifest(model), indent=2))
    return out


def write_dat(path: Path, values: np.ndarray) -> None:
    """One sample per line, values space separated, float32 exact (9 digits)."""
    rows = np.asarray(values, np.float32).reshape(values.shape[0], -1)
    with open(path, "w") as f:
        for row in rows:
            f.write(" ".join(f"{v:.9g}" for v in row.tolist()) + "\n")


def project_manifest(model: HwModel) -> dict:
    """What was generated, for tools and humans (names map back to the model's names)."""
    return {
        "model": model.name,
        "variant": model.variant,
        "target": model.target.to_dict(),
        "input": {"name": model.input_name, "shape": list(model.input_shape)},
        "output_shape": list(model.output_shape),
        "layers": [
            {
                "name": x.name,
                "source": x.source,
                "op": x.op,
                "engine": x.engine,
                "in_shape": list(x.in_shape),
                "out_shape": list(x.out_shape),
                "inputs": [list(src) for src in model.sources(x)],
                "in_sparse": x.in_sparse,
                "out_sparse": x.out_sparse,
                "lanes": x.lanes,
                "weight_nnz": x.weights.nnz if x.weights else None,
                "weight_words": x.weights.value_words if x.weights else None,
                "types": {"in": x.in_t, "out": x.out_t, "weight": x.weight_t, "acc": x.accum_t},
            }
            for x in model.layers
        ],
    }
