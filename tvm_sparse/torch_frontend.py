"""PyTorch in: a ``torch.nn.Module`` (or ``torch.export.ExportedProgram``) becomes a Relax module.

The library path is ``torch.export`` and TVM's own ``from_exported_program``; what it cannot
take (an op ``torch.export`` or TVM's importer refuses) goes through the ONNX exporter instead,
with a warning that says why. Either way the rest of the compiler sees what it sees from an
ONNX file: weights as constants, BatchNorm as ``batch_norm`` with constant statistics (folded by
``FoldAffine``), the same k-WTA op patterns.

Before export, on a copy of the module (the caller's is not touched):
- pruning reparametrizations (``torch.nn.utils.prune``: ``weight = weight_orig * weight_mask``
  in a forward pre-hook; ``torch.nn.utils.parametrize``) become plain weights with the zeros in
  them, so the sparse passes see the zeros as constants;
- the module is put in eval mode (BatchNorm with running statistics, dropout off).

nupic.torch writes k-WTA with ``kthvalue`` and ``topk(sorted=False)``, which TVM 0.27's importer
refuses; they are converted here as the ONNX path converts them (TopK of the smallest, the
last value taken; unsorted TopK as sorted: one valid order of the same set, and these graphs
only mask or scatter by it), so the k-WTA detector sees one form from either path.

torch is imported inside the functions: tvm_sparse works without it.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from .errors import (
    InputShapeError,
    ModelLoadError,
    TvmSparseError,
    UnsupportedModelError,
    error_detail,
)
from .frontend import ImportedModel, import_model, import_onnx, import_relax, load_onnx

log = logging.getLogger("tvm_sparse")

ONNX_OPSET = 17
# aten ops whose constant weight makes a layer, with the op name the report pairs them by
# (``analyze_sparsity.name_layers`` checks conv vs not-conv).
_WEIGHTED_OPS = {
    "conv2d": "Conv",
    "conv1d": "Conv",
    "convolution": "Conv",
    "linear": "Gemm",
    "addmm": "Gemm",
    "mm": "MatMul",
    "matmul": "MatMul",
}


def is_torch_model(model: Any) -> bool:
    """Whether ``model`` is a torch module or exported program (without importing torch)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    return isinstance(model, (torch.nn.Module, torch.export.ExportedProgram))


def import_any(
    model: Any, input_shapes: str | dict | None = None, example_inputs: Any = None
) -> ImportedModel:
    """Import any model form ``compile`` takes: an ONNX path, ModelProto or IRModule
    (``frontend.import_model``), a torch module with ``example_inputs``, an ExportedProgram."""
    if is_torch_model(model):
        if input_shapes is not None:
            raise InputShapeError(
                "input_shapes does not apply to a torch module: its example_inputs fix the shapes"
            )
        return import_torch(model, example_inputs)
    if example_inputs is not None:
        raise ModelLoadError("example_inputs is for torch modules; this model is not one")
    return import_model(model, input_shapes)


def fold_reparametrizations(module: Any) -> tuple[Any, list[str]]:
    """A copy of ``module`` with pruning masks and parametrizations baked into plain weights.

    ``prune.l1_unstructured`` leaves ``weight_orig`` and ``weight_mask`` and recomputes
    ``weight`` in a forward pre-hook: exported as is, the weight would be a product the
    compiler has to fold before it sees a zero. Returns the copy and the folded names
    (``layer1.0.conv1.weight``)."""
    import torch
    from torch.nn.utils import parametrize, prune

    module = copy.deepcopy(module, _detached_memo(module, torch))
    folded = []
    for path, sub in module.named_modules():
        for hook in list(sub._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                names = [h._tensor_name for h in getattr(hook, "_pruning_methods", ())] or [
                    hook._tensor_name
                ]
                for name in dict.fromkeys(names):
                    prune.remove(sub, name)
                    folded.append(f"{path}.{name}" if path else name)
        if parametrize.is_parametrized(sub):
            # not ``remove_parametrizations``: it deletes the property from the generated
            # class, which the copy shares with the caller's module
            with torch.no_grad():
                values = {n: getattr(sub, n).detach().clone() for n in sub.parametrizations}
            sub.__class__ = sub.__class__.__bases__[0]
            del sub._modules["parametrizations"]
            for name, value in values.items():
                sub.register_parameter(name, torch.nn.Parameter(value, requires_grad=False))
                folded.append(f"{path}.{name}" if path else name)
    return module, folded


def _detached_memo(module: Any, torch: Any) -> dict:
    """``deepcopy`` memo entries for the computed tensors pruning keeps as plain attributes
    (``weight = weight_orig * weight_mask``, with a grad_fn): deepcopy refuses non-leaf
    tensors, and the pre-hook computes them again anyway."""
    memo = {}
    for sub in module.modules():
        for value in vars(sub).values():
            if isinstance(value, torch.Tensor) and not value.is_leaf:
                memo[id(value)] = value.detach().clone()
    return memo


def _as_tuple(example_inputs: Any) -> tuple:
    if example_inputs is None:
        raise ModelLoadError(
            "compiling a torch module needs example_inputs=(tensor, ...): the shapes and "
            "dtypes it is compiled for"
        )
    torch = sys.modules["torch"]
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    return tuple(example_inputs)


def _kthvalue(node: Any, importer: Any) -> Any:
    """``aten.kthvalue(x, k, dim, keepdim)`` as ``topk(x, k, smallest)`` and its last value."""
    from tvm import relax

    args = importer.retrieve_args(node)
    x, k = args[0], int(args[1])
    dim = int(args[2]) if len(args) > 2 else -1
    keepdim = bool(args[3]) if len(args) > 3 else False
    bb = importer.block_builder
    both = bb.emit(relax.op.topk(x, k=k, axis=dim, largest=False, ret_type="both", dtype="int64"))
    last = relax.const(k - 1, "int64")
    values = bb.emit(relax.op.take(bb.emit(relax.TupleGetItem(both, 0)), last, axis=dim))
    indices = bb.emit(relax.op.take(bb.emit(relax.TupleGetItem(both, 1)), last, axis=dim))
    if keepdim:
        values = bb.emit(relax.op.expand_dims(values, dim))
        indices = bb.emit(relax.op.expand_dims(indices, dim))
    return bb.emit(relax.Tuple([values, indices]))


def _topk_any_order(node: Any, importer: Any) -> Any:
    """``aten.topk`` with ``sorted=False`` too (TVM 0.27 refuses it): a sorted result is one
    valid order of an unsorted one."""
    from tvm import relax

    args = importer.retrieve_args(node)
    x = args[0]
    k = int(args[1]) if len(args) > 1 else int(node.kwargs.get("k", 1))
    dim = int(args[2]) if len(args) > 2 else int(node.kwargs.get("dim", -1))
    largest = bool(args[3]) if len(args) > 3 else bool(node.kwargs.get("largest", True))
    return importer.block_builder.emit(
        relax.op.topk(x, k=k, axis=dim, largest=largest, ret_type="both", dtype="int64")
    )


CUSTOM_CONVERTERS = {"kthvalue.default": _kthvalue, "topk.default": _topk_any_order}


def _weighted_layer_names(
    program: Any, weight_names: dict[str, str] | None = None
) -> list[tuple[str, str]]:
    """(module path, op) of the ops with a parameter weight, in graph order: the report's
    layer names (``layer1.0.conv1``). ``weight_names`` names a weight by its parameter or
    buffer name instead (the torch.compile backend's lifted weights)."""
    params = {
        spec.arg.name: spec.target
        for spec in program.graph_signature.input_specs
        if spec.kind.name in ("PARAMETER", "BUFFER", "CONSTANT_TENSOR")
    }
    names = []
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        op = getattr(node.target, "__name__", str(node.target)).split(".")[0]
        if op not in _WEIGHTED_OPS:
            continue
        weight = node.args[2] if op == "addmm" else node.args[1] if len(node.args) > 1 else None
        weight = _weight_parameter(weight, params)
        if weight is None:
            continue
        stack = node.meta.get("nn_module_stack") or {}
        path = list(stack.values())[-1][0] if stack else node.name
        path = (weight_names or {}).get(params[weight.name], path)
        names.append((path or node.name, _WEIGHTED_OPS[op]))
    return names


# what a reparametrized weight passes through between its parameters and the layer
_REPARAMETRIZATION_OPS = {"mul", "t", "permute", "transpose", "detach", "clone", "_to_copy",
                          "view", "reshape", "contiguous", "alias"}  # fmt: skip


def _weight_parameter(arg: Any, params: dict, depth: int = 3) -> Any:
    """The parameter / buffer placeholder a weight comes from, through the few ops a
    reparametrization puts in the graph (``weight_orig * weight_mask``, a transpose)."""
    if getattr(arg, "name", None) in params:
        return arg
    if depth == 0 or getattr(arg, "op", None) != "call_function":
        return None
    if getattr(arg.target, "__name__", "").split(".")[0] not in _REPARAMETRIZATION_OPS:
        return None  # e.g. a linear's output: attention's K is no weight
    for inner in arg.args:
        found = _weight_parameter(inner, params, depth - 1)
        if found is not None:
            return found
    return None


def export_program(module: Any, example_inputs: tuple) -> Any:
    """``torch.export`` of the eval-mode module, without autograd."""
    import torch

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.export(module, example_inputs)


def decompose(program: Any) -> Any:
    """PyTorch's core-ATen decompositions (what TVM's importer runs by default), except that
    ``aten.linear`` stays one op: decomposed, a 3-D linear becomes reshape -> matmul -> add ->
    reshape, and the reshape between the bias and a GELU hides the epilogue from the layer
    finder. Whole, TVM imports it as matmul + add on the 3-D tensor, the form ONNX gives."""
    import torch

    table = torch.export.default_decompositions()
    table.pop(torch.ops.aten.linear.default, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return program.run_decompositions(table)


def relax_from_program(program: Any) -> Any:
    """TVM's ``from_exported_program``, weights bound as constants, a single output unwrapped."""
    from tvm.relax.frontend.torch import from_exported_program

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return from_exported_program(
            program,
            keep_params_as_input=False,
            unwrap_unit_return_tuple=True,
            custom_convert_map=CUSTOM_CONVERTERS,
            run_ep_decomposition=False,  # done by ``decompose`` (linear kept)
        )


def import_torch(
    model: Any,
    example_inputs: Any = None,
    *,
    via: str = "auto",
    source: str | None = None,
    weight_names: dict[str, str] | None = None,
) -> ImportedModel:
    """Import a torch module (or an ``ExportedProgram``) into Relax.

    ``via``: "export" (torch.export + TVM's importer only), "onnx" (the ONNX exporter only) or
    "auto" (export, then ONNX when export or TVM's importer fails, with a warning).
    ``weight_names``: layer names by weight (parameter / buffer) name, for the report."""
    import torch

    if via not in ("auto", "export", "onnx"):
        raise ValueError(f"via must be 'auto', 'export' or 'onnx', got {via!r}")
    if isinstance(model, torch.export.ExportedProgram):
        name = source or "ExportedProgram"
        return _from_program(model, name, weight_names)
    name = source or type(model).__name__
    args = _as_tuple(example_inputs)
    module, folded = fold_reparametrizations(model)
    if folded:
        log.info("%s: pruning masks folded into %d weight(s)", name, len(folded))
    if model.training:
        log.info("%s: compiled in eval mode (BatchNorm statistics, no dropout)", name)
    module.eval()
    if via == "onnx":
        return import_torch_via_onnx(module, args, name)
    try:
        program = export_program(module, args)
        return _from_program(program, name, weight_names)
    except Exception as err:  # noqa: BLE001 - any export / importer failure has a fallback
        if via == "export":
            raise UnsupportedModelError(
                f"{name}: torch.export / TVM's importer failed: {error_detail(err)}"
            ) from err
        log.warning(
            "%s: torch.export path failed (%s); exporting through ONNX instead",
            name,
            error_detail(err),
        )
    return import_torch_via_onnx(module, args, name)


def _from_program(
    program: Any, name: str, weight_names: dict[str, str] | None = None
) -> ImportedModel:
    mod = relax_from_program(decompose(program))
    imported = import_relax(mod, source=name)
    imported.weighted_nodes = _weighted_layer_names(program, weight_names)
    return imported


@contextlib.contextmanager
def kthvalue_as_topk() -> Iterator[None]:
    """Register ``aten::kthvalue`` for the TorchScript ONNX exporter (which has none) as
    ``TopK(largest=0, k) -> Gather(k - 1)`` (keepdim: ``Unsqueeze``), for one export."""
    import torch
    from torch.onnx import symbolic_helper

    def kthvalue(g, self, k, dim, keepdim):
        k = symbolic_helper._get_const(k, "i", "k")
        dim = symbolic_helper._get_const(dim, "i", "dim")
        keepdim = symbolic_helper._get_const(keepdim, "b", "keepdim")
        count = g.op("Constant", value_t=torch.tensor([k], dtype=torch.int64))
        values, indices = g.op("TopK", self, count, axis_i=dim, largest_i=0, sorted_i=1,
                               outputs=2)  # fmt: skip
        last = g.op("Constant", value_t=torch.tensor(k - 1, dtype=torch.int64))
        values = g.op("Gather", values, last, axis_i=dim)
        indices = g.op("Gather", indices, last, axis_i=dim)
        if keepdim:
            axes = g.op("Constant", value_t=torch.tensor([dim], dtype=torch.int64))
            values, indices = g.op("Unsqueeze", values, axes), g.op("Unsqueeze", indices, axes)
        return values, indices

    torch.onnx.register_custom_op_symbolic("aten::kthvalue", kthvalue, ONNX_OPSET)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::kthvalue", ONNX_OPSET)


def export_onnx_file(
    module: Any, args: Sequence[Any], path: str | os.PathLike, input_names: Sequence[str]
) -> str:
    """The TorchScript ONNX exporter at opset 17, static shapes (kthvalue registered)."""
    import torch

    path = os.fspath(path)
    with kthvalue_as_topk(), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, tuple(args), path, input_names=list(input_names), opset_version=ONNX_OPSET,
            do_constant_folding=True, dynamo=False,
        )  # fmt: skip
    return path


def _onnx_model(module: Any, args: tuple) -> Any:
    """``module`` through the ONNX exporter (``export_onnx_file``) as an ``onnx.ModelProto``;
    its inputs are ``input`` (one) or ``input_0, input_1, ...``."""
    names = [f"input_{i}" for i in range(len(args))] if len(args) > 1 else ["input"]
    with tempfile.TemporaryDirectory(prefix="tvm_sparse_torch_") as tmp:
        return load_onnx(export_onnx_file(module, args, os.path.join(tmp, "model.onnx"), names))


def torch_to_onnx(model: Any, example_inputs: Any) -> Any:
    """The module as an ``onnx.ModelProto`` (reparametrizations folded, eval mode): for the
    backends that take ONNX alone (the FPGA flow)."""
    module, _ = fold_reparametrizations(model)
    return _onnx_model(module.eval(), _as_tuple(example_inputs))


def import_torch_via_onnx(module: Any, args: tuple, name: str) -> ImportedModel:
    """The ONNX fallback: export, then import it as any ONNX model."""
    try:
        model = _onnx_model(module, args)
    except TvmSparseError:
        raise
    except Exception as err:  # noqa: BLE001 - the exporter raises many kinds
        raise UnsupportedModelError(
            f"{name}: neither torch.export nor the ONNX exporter takes this module: "
            f"{error_detail(err)}"
        ) from err
    return import_onnx(model, source=name)
