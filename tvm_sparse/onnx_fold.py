"""Fold the constant-only parts of an ONNX graph into initializers before the Relax import.

Why: exporters write shape and index plumbing that depends on nothing but constants (PyTorch's
BERT export computes position ids, token type ids and parts of the attention mask with
``ConstantOfShape`` / ``Expand`` / ``GatherElements`` / ``Where`` on constants). TVM's ONNX
frontend fails on some of it (``ConstantOfShape`` with an empty shape gives a 1-element value a
rank-0 target and raises), and what it does import is work the compiled model need not do at run
time. Every node whose inputs are all known constants is evaluated once with onnx's reference
evaluator and replaced by its value; nodes it cannot evaluate are kept as they are.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

# Values bigger than this stay computed at run time (an Expand can blow a scalar up).
MAX_FOLDED_ELEMENTS = 1 << 22
_STANDARD_DOMAINS = ("", "ai.onnx")


def _opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in _STANDARD_DOMAINS:
            return int(entry.version)
    return 17


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute
    )


def _evaluate(node: onnx.NodeProto, known: dict[str, np.ndarray], opset: int):
    """The node's outputs as numpy arrays, or None when the reference evaluator cannot run it."""
    from onnx.reference import ReferenceEvaluator

    try:
        evaluator = ReferenceEvaluator(node, opsets={"": opset})
        feeds = {name: known[name] for name in node.input if name}
        outputs = evaluator.run(None, feeds)
    except Exception:  # noqa: BLE001 - anything it cannot evaluate simply stays in the graph
        return None
    return [np.asarray(v) for v in outputs]


def _static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Every value whose shape ONNX shape inference knows statically (graph inputs included)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - inference is best effort: nothing is folded then
        return {}
    graph = inferred.graph
    shapes = {}
    for vi in (*graph.input, *graph.value_info):
        dims = tensor_type_shape(vi.type)
        if dims is not None and all(d > 0 for d in dims):
            shapes[vi.name] = dims
    return shapes


def tensor_type_shape(ty: onnx.TypeProto) -> tuple[int, ...] | None:
    """The static shape an ONNX type gives a tensor, or None (not a tensor, or a dim unknown)."""
    if ty.WhichOneof("value") != "tensor_type" or not ty.tensor_type.HasField("shape"):
        return None
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in ty.tensor_type.shape.dim]
    return None if any(d < 0 for d in dims) else tuple(dims)


# Ops through which a shape value flows as index arithmetic (to a slice bound), and the inputs
# of the ops where such a value ends as a bound: Slice's starts/ends/axes/steps, Split's sizes.
_INDEX_ARITHMETIC = {
    "Gather", "Add", "Sub", "Mul", "Div", "Unsqueeze", "Squeeze", "Concat", "Cast", "Slice",
}  # fmt: skip
_BOUND_INPUTS = {"Slice": {1, 2, 3, 4}, "Split": {1}}


def _feeds_only_slice_bounds(name: str, consumers: dict[str, list[tuple[onnx.NodeProto, int]]]
                             ) -> bool:  # fmt: skip
    """Whether every use of ``name``, followed through index arithmetic, is a Slice or Split
    bound. Why only those: folding them is what TVM needs (it cannot build the shape-less slice
    that runtime bounds give), while shapes that reach Reshape, Expand, Range or masks (ONNX's
    expanded attention functions) compile to fp16/bf16 and fully-masked-row results that differ
    from the reference, where unfolded they are refused."""
    todo, seen = [name], set()
    while todo:
        value = todo.pop()
        if value in seen:
            continue
        seen.add(value)
        uses = consumers.get(value, [])
        if not uses:
            return False  # a graph output, or unused: nothing to gain
        for node, index in uses:
            if node.domain not in _STANDARD_DOMAINS:
                return False
            if index in _BOUND_INPUTS.get(node.op_type, ()):
                continue
            if node.op_type not in _INDEX_ARITHMETIC:
                return False
            todo.extend(node.output)
    return True


def _consumers(graph: onnx.GraphProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    out: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for index, name in enumerate(node.input):
            out.setdefault(name, []).append((node, index))
    return out


def _static_shape_of(
    node: onnx.NodeProto,
    shapes: dict[str, tuple[int, ...]],
    graph_outputs: set[str],
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]],
    any_use: bool = False,
) -> np.ndarray | None:
    """The value of a ``Shape`` node whose input has a static shape and which only feeds slice
    bounds (``_feeds_only_slice_bounds``; with ``any_use``, whatever it feeds), else None.

    Why: exporters compute slice bounds from ``Shape`` (PyTorch's ``chunk``: Shape -> Gather ->
    Div -> Slice); with the shape a constant, the chain folds and TVM's frontend sees static
    slices (as runtime bounds it made a shape-less ``dynamic_strided_slice`` that neither plain
    TVM nor tvm-sparse could build: ShuffleNetV2)."""
    if node.op_type != "Shape" or node.domain not in _STANDARD_DOMAINS:
        return None
    if node.input[0] not in shapes or node.output[0] in graph_outputs:
        return None
    if not any_use and not _feeds_only_slice_bounds(node.output[0], consumers):
        return None
    shape = shapes[node.input[0]]
    start, end = 0, len(shape)
    for attr in node.attribute:
        if attr.name == "start":
            start = int(attr.i)
        elif attr.name == "end":
            end = int(attr.i)
    return np.array(shape[slice(start, end)], dtype=np.int64)


def input_dims(vi: onnx.ValueInfoProto) -> tuple | None:
    """A graph input's declared dims (None for a dynamic one), or None when it has no shape."""
    if vi.type.WhichOneof("value") != "tensor_type" or not vi.type.tensor_type.HasField("shape"):
        return None
    return tuple(
        d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim
    )


def specialize_inputs(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]
                      ) -> onnx.ModelProto:  # fmt: skip
    """``model`` compiled for ``shapes``: ``with_input_dims`` for the inputs whose declared dims
    differ; ``model`` itself when its inputs already have them (or a rank differs: the caller
    reports that by name)."""
    changed = {}
    for vi in model.graph.input:
        dims, given = input_dims(vi), shapes.get(vi.name)
        if dims is not None and given is not None and len(dims) == len(given):
            if dims != tuple(int(v) for v in given):
                changed[vi.name] = given
    return with_input_dims(model, changed) if changed else model


def with_input_dims(model: onnx.ModelProto, dims: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph inputs named in ``dims`` have those static dims, every
    output's dims cleared (they follow the inputs, on whichever axis: an RNN's Y has its batch
    third) and ``value_info`` dropped (hints for the old shapes, which shape inference and
    onnxruntime would find in conflict)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for vi in out.graph.input:
        if vi.name in dims:
            shape = vi.type.tensor_type.shape
            del shape.dim[:]
            for extent in dims[vi.name]:
                shape.dim.add().dim_value = int(extent)
    for vi in out.graph.output:
        if vi.type.WhichOneof("value") == "tensor_type":
            for dim in vi.type.tensor_type.shape.dim:
                dim.Clear()
    del out.graph.value_info[:]
    return out


def fold_specialized(model: onnx.ModelProto, rounds: int = 8) -> onnx.ModelProto:
    """``fold_constants`` for a model whose dynamic dims the user fixed (``--input-shapes``):
    every ``Shape`` of a statically shaped value folds, whatever it feeds, and folding repeats
    while shape inference learns more (a Reshape's target computed from ``Shape`` is static only
    once that chain folded).

    Why: a GPT-2 exported with a dynamic sequence builds its position ids as
    ``Range(0, Gather(Shape(x), 1))`` and its head reshapes from ``Shape``; imported unfolded,
    TVM's frontend fails on them ("shape_of expects a tensor input, but received R.Shape"),
    specialized or not. Static models keep ``fold_constants``' narrower rule."""
    for _ in range(rounds):
        folded = fold_constants(model, any_shape_use=True)
        if folded is model:
            break
        model = folded
    return model


def fold_constants(
    model: onnx.ModelProto, max_elements: int = MAX_FOLDED_ELEMENTS, any_shape_use: bool = False
) -> onnx.ModelProto:
    """A copy of ``model`` with every constant-only node replaced by an initializer (``model``
    itself when nothing folds). ``any_shape_use``: see ``fold_specialized``."""
    graph = model.graph
    overridable = {vi.name for vi in graph.input}  # an initializer listed as input may be fed
    known = {
        t.name: numpy_helper.to_array(t) for t in graph.initializer if t.name not in overridable
    }
    graph_outputs = {o.name for o in graph.output}
    opset = _opset(model)
    kept: list[onnx.NodeProto] = []
    folded: dict[str, np.ndarray] = {}
    shapes = _static_shapes(model) if any(n.op_type == "Shape" for n in graph.node) else {}
    consumers = _consumers(graph) if shapes else {}
    for node in graph.node:
        value = _static_shape_of(node, shapes, graph_outputs, consumers, any_shape_use)
        if value is not None:  # Shape of a tensor whose shape is static: a constant
            known[node.output[0]] = folded[node.output[0]] = value
            continue
        foldable = (
            node.domain in _STANDARD_DOMAINS
            and not _has_subgraph(node)
            and all(not name or name in known for name in node.input)
            and not any(name in graph_outputs for name in node.output)
        )
        values = _evaluate(node, known, opset) if foldable else None
        if values is None or any(v.size > max_elements for v in values):
            kept.append(node)
            continue
        for name, value in zip(node.output, values):
            if name:
                known[name] = folded[name] = value
    if not folded:
        return model
    used = {name for node in kept for name in node.input} | graph_outputs
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(kept)
    initializers = [t for t in model.graph.initializer if t.name in used]
    initializers += [
        numpy_helper.from_array(value, name) for name, value in folded.items() if name in used
    ]
    del out.graph.initializer[:]
    out.graph.initializer.extend(initializers)
    # Shape annotations of folded values are now redundant.
    live = {name for node in kept for name in node.output}
    kept_info = [vi for vi in model.graph.value_info if vi.name in live]
    del out.graph.value_info[:]
    out.graph.value_info.extend(kept_info)
    return out
