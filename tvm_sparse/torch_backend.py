"""``torch.compile(model, backend="tvm_sparse")``: each graph dynamo captures goes through the
sparse pipeline; what the pipeline cannot take runs eagerly, with a warning.

Registered under torch's ``torch_dynamo_backends`` entry point (pyproject.toml), so the name
works once the package is installed. Options come through ``torch.compile(...,
options={...})``: ``target`` (default "llvm") and any ``tvm_sparse.compile`` option
(``measure``, ``sparse``, ...).

The backend compiles for inference, as torch-TensorRT and inductor's ``freezing`` do: dynamo
hands the graph its parameters and buffers as inputs, and they are bound as constants at
compile time (the sparse passes must see the zeros). A graph whose weights change later keeps
computing with the old ones; compile again after training. Shapes are static: dynamo
recompiles (calls the backend again) for a new input shape, and a graph with symbolic shapes
runs eagerly.

Calls are zero-copy: tvm-ffi passes torch tensors in and out by DLPack (an input that is not
64-byte aligned or contiguous is copied first). The reports of
every compiled graph are in ``reports()``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .report import Report

log = logging.getLogger("tvm_sparse")

BACKEND_NAME = "tvm_sparse"


@dataclass
class CompiledGraph:
    """One dynamo graph and what became of it: the compiled module (None when it runs
    eagerly) and why not."""

    index: int
    module: Any
    report: Report | None
    compile_seconds: float
    fallback_reason: str = ""
    # which graph inputs are weights (bound as constants); the rest are passed at run time
    weight_inputs: tuple[bool, ...] = ()


_GRAPHS: list[CompiledGraph] = []


def compiled_graphs() -> list[CompiledGraph]:
    """Every graph this process compiled with the backend, in order."""
    return list(_GRAPHS)


def reports() -> list[Report]:
    """The per-layer reports of the graphs that were compiled (eager fallbacks have none)."""
    return [g.report for g in _GRAPHS if g.report is not None]


def clear() -> None:
    """Forget the compiled graphs (their modules stay alive where dynamo holds them)."""
    _GRAPHS.clear()


_MODULE_PATH = re.compile(r"_modules\['([^']*)'\]")


def weight_name(source: str) -> str:
    """A layer name from a dynamo source: ``L['self']._modules['layer1']._modules['0']
    ._parameters['weight']`` -> ``layer1.0``."""
    path = _MODULE_PATH.findall(source)
    return ".".join(path) if path else source


def _is_weight(node: Any, example: Any) -> bool:
    """A placeholder dynamo lifted from the module: a parameter or a buffer."""
    import torch

    if isinstance(example, torch.nn.Parameter):
        return True
    source = _source_name(node)
    return "._parameters[" in source or "._buffers[" in source


def _source_name(node: Any) -> str:
    """Where dynamo took a placeholder from (``L['self']._modules['fc']._parameters['weight']``),
    else the placeholder's own name."""
    grapharg = node.meta.get("grapharg")
    source = getattr(getattr(grapharg, "source", None), "name", "") or node.name
    return source() if callable(source) else source


def _frozen_module(gm: Any, example_inputs: Sequence[Any], weights: list[bool]) -> Any:
    """A module that holds the graph's weights as buffers and takes only its runtime inputs,
    so ``torch.export`` sees the weights as constants."""
    import torch

    class Frozen(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.graph_module = gm
            self.slots: list[str | None] = []
            for i, (example, is_weight) in enumerate(zip(example_inputs, weights)):
                if is_weight:
                    self.register_buffer(f"weight_{i}", example.detach().clone())
                self.slots.append(f"weight_{i}" if is_weight else None)

        def forward(self, *inputs: Any) -> Any:
            it = iter(inputs)
            args = [getattr(self, s) if s else next(it) for s in self.slots]
            return self.graph_module(*args)

    return Frozen().eval()


def _aligned(x: Any) -> Any:
    """``x`` as TVM's kernels take it: contiguous, 64-byte aligned (torch's allocator aligns to
    64; a tensor made from a numpy array may not be), no autograd: copied only when not."""
    import torch

    if x.requires_grad:
        x = x.detach()
    if x.is_contiguous() and x.data_ptr() % 64 == 0:
        return x
    return x.clone(memory_format=torch.contiguous_format)


def _runner(module: Any, weights: list[bool]) -> Callable[..., tuple]:
    """Call the compiled module on the graph's runtime inputs (dynamo passes the weights
    too: they are constants in the module). Zero-copy both ways: tvm-ffi takes torch tensors
    as arguments and returns torch tensors for them (DLPack underneath), with no Python in
    between; this path runs inside dynamo's frame on every call, so it stays this short."""
    import torch

    main = module._main
    runtime = [i for i, w in enumerate(weights) if not w]

    def as_tuple(out: Any) -> tuple:
        if isinstance(out, torch.Tensor):
            return (out,)
        return tuple(o if isinstance(o, torch.Tensor) else torch.from_dlpack(o) for o in out)

    def run(*inputs: Any) -> tuple:
        args = []
        for i in runtime:
            x = inputs[i]
            if x.requires_grad or x.data_ptr() % 64 or not x.is_contiguous():
                x = _aligned(x)
            args.append(x)
        return as_tuple(main(*args))

    return run


def _fallback(gm: Any, index: int, seconds: float, why: str) -> Callable:
    log.warning("torch.compile backend %s: graph %d runs eagerly: %s", BACKEND_NAME, index, why)
    _GRAPHS.append(CompiledGraph(index, None, None, seconds, why))
    return gm.forward


def tvm_sparse_backend(
    gm: Any, example_inputs: Sequence[Any], options: dict | None = None
) -> Callable:
    """The dynamo backend: compile ``gm`` with tvm-sparse, or hand it back to run eagerly."""
    import torch

    from .compiler import compile as compile_model
    from .errors import error_detail
    from .torch_frontend import import_torch

    options = dict(options or {})
    target = options.pop("target", "llvm")
    index = len(_GRAPHS)
    start = time.perf_counter()
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if any(not isinstance(e, torch.Tensor) for e in example_inputs) or any(
        isinstance(d, torch.SymInt) for e in example_inputs for d in e.shape
    ):
        return _fallback(
            gm, index, 0.0,
            "symbolic shapes or non-tensor inputs: the backend compiles static shapes; "
            "pass dynamic=False to torch.compile",
        )  # fmt: skip
    weights = [_is_weight(n, e) for n, e in zip(placeholders, example_inputs)]
    runtime_inputs = tuple(e for e, w in zip(example_inputs, weights) if not w)
    names = {
        f"weight_{i}": weight_name(_source_name(n))
        for i, (n, w) in enumerate(zip(placeholders, weights))
        if w
    }
    frozen = _frozen_module(gm, example_inputs, weights)
    try:
        imported = import_torch(frozen, runtime_inputs, weight_names=names)
        imported.source = f"dynamo graph {index}"
        module = compile_model(imported, target, **options)
    except Exception as err:  # noqa: BLE001 - whatever fails, eager still answers right
        return _fallback(gm, index, time.perf_counter() - start, error_detail(err))
    seconds = time.perf_counter() - start
    _GRAPHS.append(CompiledGraph(index, module, module.report, seconds, "", tuple(weights)))
    log.info("torch.compile backend %s: graph %d compiled in %.1f s", BACKEND_NAME, index,
             seconds)  # fmt: skip
    return _runner(module, weights)
