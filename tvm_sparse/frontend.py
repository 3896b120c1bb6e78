"""Model import: ONNX files, ``onnx.ModelProto`` or Relax modules become one Relax IRModule.

Weights are bound as constants (the sparse passes need to see their values). Every failure a user
can cause (missing file, not ONNX, truncated file, unsupported op, dynamic shapes) becomes one of
our exceptions with the file, node and op named, before TVM gets a chance to fail obscurely.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import tvm
from tvm import relax

from .errors import InputShapeError, ModelLoadError, UnsupportedModelError
from .onnx_fold import fold_constants

ShapeDict = dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class TensorSpec:
    """Name, static shape and dtype of one model input or output."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @staticmethod
    def from_dict(d: dict) -> TensorSpec:
        return TensorSpec(d["name"], tuple(int(s) for s in d["shape"]), d["dtype"])


@dataclass
class ImportedModel:
    """A Relax module plus what the rest of the compiler wants to know about its origin."""

    mod: tvm.IRModule
    inputs: list[TensorSpec]
    source: str
    # ONNX nodes with constant weights, in graph order: lets the report use the model's own names.
    weighted_nodes: list[tuple[str, str]] = field(default_factory=list)


def parse_input_shapes(spec: str | dict | None) -> ShapeDict | None:
    """Parse ``"input:1x1x32x32,mask:1x128"`` (the CLI form) or pass a dict through."""
    if spec is None or isinstance(spec, dict):
        return None if spec is None else {k: tuple(int(d) for d in v) for k, v in spec.items()}
    shapes: ShapeDict = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, sep, dims = item.rpartition(":")
        if not sep or not name or not re.fullmatch(r"\d+(x\d+)*", dims):
            raise InputShapeError(
                f"bad input shape {item!r}: expected NAME:DIMxDIM..., e.g. input:1x1x32x32"
            )
        shapes[name] = tuple(int(d) for d in dims.split("x"))
    return shapes


def load_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """Read and check an ONNX file, naming the file in every error."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelLoadError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ModelLoadError(f"{path}: is a directory, expected an ONNX file")
    try:
        model = onnx.load(path)
    except Exception as err:  # protobuf raises DecodeError, RuntimeWarning-ish, ...
        raise ModelLoadError(f"{path}: not a readable ONNX model ({type(err).__name__})") from err
    if not model.graph.node and not model.graph.output:
        raise ModelLoadError(f"{path}: not an ONNX model (empty graph: truncated or wrong file?)")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "invalid model"
        raise ModelLoadError(f"{path}: invalid ONNX model: {first}") from err
    return model


def _dims_of(value_info: onnx.ValueInfoProto) -> list[int | str]:
    dims: list[int | str] = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or "?")
    return dims


def onnx_input_specs(model: onnx.ModelProto, shapes: ShapeDict | None) -> list[TensorSpec]:
    """Static specs of the graph inputs (initializers excluded); dynamic dims need ``shapes``."""
    initializers = {t.name for t in model.graph.initializer}
    specs = []
    shapes = dict(shapes or {})
    for vi in model.graph.input:
        if vi.name in initializers:
            continue
        elem = vi.type.tensor_type.elem_type
        dtype = str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem))) if elem else "float32"
        if vi.name in shapes:
            shape = shapes.pop(vi.name)
        else:
            dims = _dims_of(vi)
            if any(not isinstance(d, int) for d in dims):
                shown = "x".join(str(d) for d in dims)
                example = "x".join(str(d) if isinstance(d, int) else "1" for d in dims)
                raise InputShapeError(
                    f"input {vi.name!r} has dynamic shape [{shown}]: give static shapes with "
                    f"--input-shapes {vi.name}:{example}"
                )
            shape = tuple(dims)
        specs.append(TensorSpec(vi.name, tuple(int(s) for s in shape), dtype))
    if shapes:
        names = ", ".join(s.name for s in specs)
        raise InputShapeError(
            f"--input-shapes names unknown input(s) {sorted(shapes)}; inputs: {names}"
        )
    return specs


def _check_supported_ops(model: onnx.ModelProto, source: str) -> None:
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    supported = _get_convert_map()
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in supported:
            raise UnsupportedModelError(
                f"{source}: node {node.name or '<unnamed>'!r}: op {node.op_type!r}"
                f"{' (domain ' + node.domain + ')' if node.domain else ''} is not supported by "
                "TVM's ONNX frontend",
                node=node.name,
                op=node.op_type,
            )


def _weighted_nodes(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(name, op) of Conv/Gemm/MatMul nodes whose weight is an initializer, in graph order."""
    inits = {t.name for t in model.graph.initializer}
    consts = {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    out = []
    for i, node in enumerate(model.graph.node):
        if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1:
            if node.input[1] in inits or node.input[1] in consts:
                out.append((node.name or f"{node.op_type.lower()}_{i}", node.op_type))
    return out


def _sorted_topk(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with every ``TopK(sorted=0)`` made ``sorted=1``.

    TVM 0.27's importer refuses unsorted TopK, which PyTorch writes for ``topk(sorted=False)``
    (nupic.torch's 2019 k-WTA, ``break_ties``). A sorted result is one valid order of an unsorted
    one, and these graphs only scatter or gather by the indices, so the answer is the same. The
    caller's model is not changed (a copy is patched)."""
    unsorted = [
        n
        for n in model.graph.node
        if n.op_type == "TopK" and any(a.name == "sorted" and a.i == 0 for a in n.attribute)
    ]
    if not unsorted:
        return model
    patched = onnx.ModelProto()
    patched.CopyFrom(model)
    for node in patched.graph.node:
        if node.op_type == "TopK":
            for attr in node.attribute:
                if attr.name == "sorted":
                    attr.i = 1
    return patched


def import_onnx(
    model: onnx.ModelProto, shapes: ShapeDict | None = None, source: str = "<model>"
) -> ImportedModel:
    """Import an ONNX model into Relax with weights as constants and static input shapes."""
    # constant subgraphs (PyTorch's position-id / ConstantOfShape plumbing) crash TVM's importer
    model = _sorted_topk(fold_constants(model))
    _check_supported_ops(model, source)
    specs = onnx_input_specs(model, shapes)
    from tvm.relax.frontend.onnx import from_onnx

    try:
        mod = from_onnx(
            model,
            shape_dict={s.name: list(s.shape) for s in specs},
            keep_params_in_input=False,
            sanitize_input_names=True,  # Relax names only; the manifest keeps ONNX names
        )
    except Exception as err:
        message = str(err).strip().splitlines()
        detail = message[-1] if message else type(err).__name__
        raise UnsupportedModelError(f"{source}: TVM's ONNX frontend failed: {detail}") from err
    return ImportedModel(mod, specs, source, _weighted_nodes(model))


def import_relax(mod: tvm.IRModule, source: str = "<IRModule>") -> ImportedModel:
    """Accept a Relax module whose ``main`` has static tensor parameters."""
    if "main" not in [gv.name_hint for gv in mod.get_global_vars()]:
        raise UnsupportedModelError(f"{source}: the IRModule has no 'main' function")
    func = mod["main"]
    specs = []
    for param in func.params:
        ty = param.ty
        if not isinstance(ty, relax.TensorType):
            raise InputShapeError(f"{source}: parameter {param.name} is not a tensor")
        if not isinstance(ty.shape, relax.ShapeExpr) or not all(
            isinstance(d, tvm.tirx.IntImm) for d in ty.shape.values
        ):
            raise InputShapeError(
                f"{source}: parameter {param.name} has a dynamic shape: bind static dims first"
            )
        dims = tuple(int(d.value) for d in ty.shape.values)
        specs.append(TensorSpec(param.name, dims, str(ty.dtype)))
    return ImportedModel(mod, specs, source)


def import_model(model: Any, input_shapes: str | dict | None = None) -> ImportedModel:
    """Import any supported model form (path, ModelProto, IRModule)."""
    shapes = parse_input_shapes(input_shapes)
    if isinstance(model, tvm.IRModule):
        return import_relax(model)
    if isinstance(model, onnx.ModelProto):
        return import_onnx(model, shapes)
    if isinstance(model, (str, os.PathLike)):
        return import_onnx(load_onnx(model), shapes, source=os.fspath(model))
    raise ModelLoadError(
        f"unsupported model type {type(model).__name__}: give an ONNX path, onnx.ModelProto or "
        "tvm.IRModule"
    )
