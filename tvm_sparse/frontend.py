"""Model import: ONNX files, ``onnx.ModelProto`` or Relax modules become one Relax IRModule.

Weights are bound as constants (the sparse passes need to see their values). Every failure a user
can cause (missing file, not ONNX, truncated file, unsupported op, dynamic shapes) becomes one of
our exceptions with the file, node and op named, before TVM gets a chance to fail obscurely.
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import tvm
from tvm import relax

from .errors import InputShapeError, ModelLoadError, UnsupportedModelError, error_detail
from .ir.layers import layer_key
from .onnx_fixes import fix_model
from .onnx_fold import fold_constants, fold_specialized, specialize_inputs
from .run_guards import FullLengthGuard, RunGuard

ShapeDict = dict[str, tuple[int, ...]]
log = logging.getLogger("tvm_sparse")


Dim = int | str  # a static extent, or a symbolic one by its ONNX name ("?" when unnamed)


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of one model input.

    ``shape`` holds ints for static dims and names for symbolic ones (compiled for any extent);
    ``None`` means the rank itself is unknown. ``optional`` marks an ONNX optional tensor input
    (TVM takes it as the tensor; an empty optional cannot be passed)."""

    name: str
    shape: tuple[Dim, ...] | None
    dtype: str
    optional: bool = False

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)

    def shape_text(self) -> str:
        return "[?]" if self.shape is None else "[" + ", ".join(str(d) for d in self.shape) + "]"

    def mismatch(self, shape: tuple[int, ...]) -> str:
        """Why an array of ``shape`` cannot be this input ('' when it can)."""
        if self.shape is None:
            return ""
        if len(shape) != len(self.shape):
            return f"expected {len(self.shape)} dims {self.shape_text()}, got {list(shape)}"
        named: dict[str, int] = {}
        for want, got in zip(self.shape, shape):
            if isinstance(want, int) and want != got:
                return f"expected shape {self.shape_text()}, got {list(shape)}"
            if isinstance(want, str) and want != "?" and named.setdefault(want, got) != got:
                return f"dim {want!r} has two sizes in {list(shape)}"
        return ""

    def example_shape(self, fill: int = 1) -> tuple[int, ...]:
        """A concrete shape for this input (symbolic dims become ``fill``)."""
        return tuple(d if isinstance(d, int) else fill for d in (self.shape or ()))

    def to_dict(self) -> dict:
        shape = None if self.shape is None else list(self.shape)
        return {"name": self.name, "shape": shape, "dtype": self.dtype, "optional": self.optional}

    @staticmethod
    def from_dict(d: dict) -> TensorSpec:
        shape = d["shape"]
        dims = None if shape is None else tuple(s if isinstance(s, str) else int(s) for s in shape)
        return TensorSpec(d["name"], dims, d["dtype"], bool(d.get("optional", False)))


@dataclass
class ImportedModel:
    """A Relax module plus what the rest of the compiler wants to know about its origin."""

    mod: tvm.IRModule
    inputs: list[TensorSpec]
    source: str
    # ONNX nodes with constant weights, in graph order: lets the report use the model's own names.
    weighted_nodes: list[tuple[str, str]] = field(default_factory=list)
    # checks on input values before each run (onnx_fixes.RunGuard)
    guards: list[RunGuard | FullLengthGuard] = field(default_factory=list)


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
    except Exception as err:  # noqa: BLE001 - the checker's own failures on damaged bytes
        # (a name that is not UTF-8 makes it raise UnicodeDecodeError: found by fuzzing)
        raise ModelLoadError(
            f"{path}: invalid ONNX model ({type(err).__name__}: {str(err)[:120]})"
        ) from err
    return model


def _dims_of(tensor_type: onnx.TypeProto.Tensor) -> tuple[Dim, ...] | None:
    """Static dims as ints, symbolic ones by name; None when the rank is unknown."""
    if not tensor_type.HasField("shape"):
        return None
    dims: list[Dim] = []
    for d in tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or "?")
    return tuple(dims)


def _tensor_type_of(vi: onnx.ValueInfoProto, source: str) -> tuple[onnx.TypeProto.Tensor, bool]:
    """The tensor type of an input and whether it is optional; other kinds are refused here,
    by name, rather than by the VM at run time."""
    kind = vi.type.WhichOneof("value")
    if kind == "tensor_type":
        return vi.type.tensor_type, False
    if kind == "optional_type" and vi.type.optional_type.elem_type.HasField("tensor_type"):
        return vi.type.optional_type.elem_type.tensor_type, True
    kinds = {
        "sequence_type": "a sequence",
        "optional_type": "an optional sequence",
        "map_type": "a map",
        "sparse_tensor_type": "a sparse tensor",
    }
    what = kinds.get(kind, str(kind))
    raise UnsupportedModelError(
        f"{source}: input {vi.name!r} is {what}: TVM's ONNX frontend takes graph inputs as "
        "tensors only (its VM cannot be given a sequence or map)",
        node=vi.name,
    )


# Elements a tensor may hold: TVM's kernels index with int32.
MAX_ELEMENTS = 2**31 - 1


def _check_size(name: str, shape: tuple | None, source: str) -> None:
    """Refuse an input shape no kernel can index (more than ``MAX_ELEMENTS``) before anything
    is allocated for it. (Dims of 0 or less are read as symbolic by ``_dims_of``.)"""
    if shape is None:
        return
    elements = math.prod(d for d in shape if isinstance(d, int))
    if elements > MAX_ELEMENTS:
        raise UnsupportedModelError(
            f"{source}: input {name!r} of shape {list(shape)} holds {elements:,} elements; "
            f"kernels index tensors with 32-bit integers (at most {MAX_ELEMENTS:,})",
            node=name,
        )


def _input_dtype(name: str, elem: int, source: str) -> str:
    """The numpy dtype of an input's ONNX element type (float32 when unset); an element type
    ONNX does not define (a damaged or hand-edited model) is refused by name."""
    if not elem:
        return "float32"
    try:
        return str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)))
    except (KeyError, TypeError, ValueError) as err:
        raise UnsupportedModelError(
            f"{source}: input {name!r} has element type {elem}, which is not an ONNX tensor type "
            "tvm-sparse can feed",
            node=name,
        ) from err


def onnx_input_specs(
    model: onnx.ModelProto, shapes: ShapeDict | None, source: str = "<model>"
) -> list[TensorSpec]:
    """Specs of the graph inputs (initializers excluded). ``shapes`` fixes dims; dims left
    symbolic are compiled for any extent."""
    initializers = {t.name for t in model.graph.initializer}
    specs = []
    shapes = dict(shapes or {})
    for vi in model.graph.input:
        if vi.name in initializers:
            continue
        tensor_type, optional = _tensor_type_of(vi, source)
        dtype = _input_dtype(vi.name, tensor_type.elem_type, source)
        if vi.name in shapes:
            given = shapes.pop(vi.name)
            dims = _dims_of(tensor_type)
            if dims is not None and len(dims) != len(given):
                raise InputShapeError(
                    f"--input-shapes {vi.name}: {len(given)} dims given, the model's input has "
                    f"{len(dims)} [{'x'.join(str(d) for d in dims)}]"
                )
            shape: tuple[Dim, ...] | None = tuple(int(d) for d in given)
        else:
            shape = _dims_of(tensor_type)
        _check_size(vi.name, shape, source)
        specs.append(TensorSpec(vi.name, shape, dtype, optional))
    if shapes:
        names = ", ".join(s.name for s in specs)
        raise InputShapeError(
            f"--input-shapes names unknown input(s) {sorted(shapes)}; inputs: {names}"
        )
    return specs


def warn_dynamic_inputs(specs: list[TensorSpec], source: str) -> None:
    """One warning naming the dynamic inputs and how to specialize them."""
    dynamic = [s for s in specs if not s.is_static]
    if not dynamic:
        return
    shown = ", ".join(f"{s.name!r} {s.shape_text()}" for s in dynamic)
    example = ",".join(
        f"{s.name}:{'x'.join(str(d) for d in s.example_shape())}" for s in dynamic if s.shape
    )
    hint = f" (--input-shapes {example} specializes them)" if example else ""
    log.warning(
        "%s: input(s) %s have dynamic dims: compiled for any size; layers that need static "
        "shapes keep TVM's dense path%s",
        source,
        shown,
        hint,
    )


def require_static(specs: list[TensorSpec], source: str, why: str) -> None:
    """InputShapeError naming the first dynamic input, for backends that need static shapes."""
    for spec in specs:
        if not spec.is_static:
            example = "x".join(str(d) for d in spec.example_shape())
            raise InputShapeError(
                f"{source}: input {spec.name!r} has dynamic shape {spec.shape_text()}: {why}; "
                f"give static shapes with --input-shapes {spec.name}:{example}"
            )


def frontend_unsupported_ops(graph: onnx.GraphProto) -> set[str]:
    """The ops of ``graph`` TVM's ONNX frontend refuses, by the frontend's own check.

    Read from the frontend, not kept by hand: it converts ops outside its converter map too
    (``If``, ``Constant``), and a list of ours would drift from the TVM it runs on."""
    from tvm.relax.frontend.onnx import onnx_frontend

    importer = onnx_frontend.ONNXGraphImporter
    check = getattr(importer, "_check_for_unsupported_ops", None)
    if check is None:  # another TVM: its converter map plus what 0.27 handles directly
        supported = set(onnx_frontend._get_convert_map()) | {"If", "Constant"}
        return {node.op_type for node in graph.node if node.op_type not in supported}
    try:
        check(importer.__new__(importer), graph)
    except tvm.error.OpNotImplemented as err:
        listed = str(err).rpartition(":")[2]
        return {op.strip() for op in listed.split(",") if op.strip()}
    return set()


def _check_supported_ops(model: onnx.ModelProto, source: str) -> None:
    unsupported = frontend_unsupported_ops(model.graph)
    for node in model.graph.node:
        if node.op_type in unsupported:
            raise UnsupportedModelError(
                f"{source}: node {node.name or '<unnamed>'!r}: op {node.op_type!r}"
                f"{' (domain ' + node.domain + ')' if node.domain else ''} is not supported by "
                "TVM's ONNX frontend",
                node=node.name,
                op=node.op_type,
            )


class WeightedNode(tuple):
    """``(name, op)`` of one ONNX node with a constant weight, and ``key``: its weight's shape,
    strides and groups (``ir.layers.layer_key``), so a report names layers right when TVM's
    order is not the graph's (RegNet's projection conv comes first in the file, after
    ``a``..``b`` in Relax). A plain pair to every consumer that unpacks it."""

    key: tuple | None

    def __new__(cls, name: str, op: str, key: tuple | None = None) -> WeightedNode:
        node = super().__new__(cls, (name, op))
        node.key = key
        return node


def _weight_dims(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Shape of every initializer and Constant output."""
    dims = {t.name: tuple(t.dims) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    dims[node.output[0]] = tuple(attr.t.dims)
    return dims


def _weighted_nodes(model: onnx.ModelProto) -> list[WeightedNode]:
    """Conv/Gemm/MatMul nodes whose weight is an initializer, in graph order."""
    dims = _weight_dims(model)
    out = []
    for i, node in enumerate(model.graph.node):
        if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1:
            if node.input[1] in dims:
                attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
                shape = dims[node.input[1]]
                if node.op_type == "Conv":
                    strides = attrs.get("strides") or (1, 1)
                    key = layer_key("conv2d", shape, strides, attrs.get("group", 1))
                else:
                    key = layer_key("linear", shape)
                name = node.name or f"{node.op_type.lower()}_{i}"
                out.append(WeightedNode(name, node.op_type, key))
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
    """Import an ONNX model into Relax with weights as constants; dims ``shapes`` does not fix
    stay as the model declares them (symbolic where it names them)."""
    specialized = specialize_inputs(model, shapes or {})
    if specialized is not model:
        # compiled for shapes other than the declared ones (dynamic dims, or another batch):
        # the shape plumbing folds whole for them (fold_specialized) before TVM sees it
        return _import_folded(fold_specialized(specialized), shapes, source)
    model = fold_constants(model)
    try:
        return _import_folded(model, shapes, source)
    except UnsupportedModelError as first:
        if first.frontend_detail is None or not (shapes or _static_float32(model)):
            raise
        # compiled for the shapes given (--input-shapes or a benchmark batch, equal to the
        # declared ones), or for the model's own static ones: its shape plumbing (position ids
        # from Range(Shape), reshapes from Shape) can fold whole, which TVM then imports. Not
        # without shapes for float16 / bfloat16 inputs: ONNX's expanded fp16 / bf16 attention
        # cases fold into models whose outputs differ from the reference by an fp16 ulp (rtol
        # 1e-3), where unfolded they are refused.
        folded = fold_specialized(model)
        if folded is model:
            raise
        try:
            return _import_folded(folded, shapes, source)
        except UnsupportedModelError:
            raise first from None


def _static_float32(model: onnx.ModelProto) -> bool:
    """Every graph input has a static shape and no float16 / bfloat16 dtype."""
    specs = onnx_input_specs(model, None)
    return all(s.is_static and s.dtype not in ("float16", "bfloat16") for s in specs)


def _import_folded(model: onnx.ModelProto, shapes: ShapeDict | None, source: str
                   ) -> ImportedModel:  # fmt: skip
    """``import_onnx``'s import of ``model``, its constants folded."""
    # constant subgraphs (PyTorch's position-id / ConstantOfShape plumbing) crash TVM's importer
    model = _sorted_topk(model)
    model, guards = fix_model(model, source)  # what TVM's frontend converts wrongly
    _check_supported_ops(model, source)
    specs = onnx_input_specs(model, shapes, source)
    warn_dynamic_inputs(specs, source)
    from tvm.relax.frontend.onnx import from_onnx

    try:
        mod = from_onnx(
            model,
            shape_dict={s.name: list(s.shape) for s in specs if s.is_static},
            keep_params_in_input=False,
            sanitize_input_names=True,  # Relax names only; the manifest keeps ONNX names
        )
    except Exception as err:
        detail = error_detail(err)
        error = UnsupportedModelError(f"{source}: TVM's ONNX frontend failed: {detail}")
        error.frontend_detail = detail
        raise error from err
    return ImportedModel(mod, specs, source, _weighted_nodes(model), guards)


def import_relax(mod: tvm.IRModule, source: str = "<IRModule>") -> ImportedModel:
    """Accept a Relax module with a ``main`` of tensor parameters (symbolic dims allowed)."""
    if "main" not in [gv.name_hint for gv in mod.get_global_vars()]:
        raise UnsupportedModelError(f"{source}: the IRModule has no 'main' function")
    func = mod["main"]
    specs = []
    for param in func.params:
        ty = param.ty
        if not isinstance(ty, relax.TensorType):
            raise InputShapeError(f"{source}: parameter {param.name} is not a tensor")
        dims: tuple[Dim, ...] | None = None
        if isinstance(ty.shape, relax.ShapeExpr):
            dims = tuple(
                int(d.value) if isinstance(d, tvm.tirx.IntImm) else str(d) for d in ty.shape.values
            )
        specs.append(TensorSpec(param.name, dims, str(ty.dtype)))
    warn_dynamic_inputs(specs, source)
    return ImportedModel(mod, specs, source)


def import_model(model: Any, input_shapes: str | dict | None = None) -> ImportedModel:
    """Import an ONNX path, ModelProto or IRModule (torch modules:
    ``torch_frontend.import_any``); an ``ImportedModel`` is taken as it is (the torch.compile
    backend imports its graph itself, with the layer names dynamo gives)."""
    if isinstance(model, ImportedModel):
        if input_shapes is not None:
            raise InputShapeError(f"{model.source}: already imported: input_shapes cannot apply")
        return model
    shapes = parse_input_shapes(input_shapes)
    if isinstance(model, tvm.IRModule):
        return import_relax(model)
    if isinstance(model, onnx.ModelProto):
        return import_onnx(model, shapes)
    if isinstance(model, (str, os.PathLike)):
        return import_onnx(load_onnx(model), shapes, source=os.fspath(model))
    raise ModelLoadError(
        f"unsupported model type {type(model).__name__}: give an ONNX path, onnx.ModelProto, "
        "tvm.IRModule or torch.nn.Module (with example_inputs)"
    )
