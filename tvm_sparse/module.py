"""The compiled module: run it, export it (.so + JSON manifest), load it back.

A loaded module needs nothing but TVM's runtime and this package: the manifest beside the .so
carries the input specs (for checking inputs before they reach TVM) and the sparsity report.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import tvm
from tvm import relax

from . import huge_pages
from .errors import ArtifactError, RunError, RunInputError, error_detail
from .frontend import TensorSpec
from .phases import PhaseTimes
from .report import Report
from .run_guards import FullLengthGuard, RunGuard, guard_from_dict

MANIFEST_VERSION = 1


def manifest_path(library_path: str | os.PathLike) -> str:
    """``model.so`` -> ``model.json`` (the manifest lives beside the library)."""
    root, _ = os.path.splitext(os.fspath(library_path))
    return root + ".json"


class CompiledModule:
    """A model compiled for a CPU or CUDA target."""

    def __init__(
        self,
        executable: Any,
        inputs: list[TensorSpec],
        report: Report,
        target: str,
        device: tvm.runtime.Device | None = None,
        guards: list[RunGuard | FullLengthGuard] | None = None,
        compile_seconds: PhaseTimes | None = None,
        library: Any = None,
    ):
        self.executable = executable
        # the final build (``final_build.Built``): export links the kernels' object files it
        # kept instead of generating the machine code again
        self._library = library
        self.inputs = list(inputs)
        self.guards = list(guards or [])  # input values a run must not have
        self.compile_seconds = compile_seconds  # time per compile phase (None once loaded)
        self.report = report
        self.target = target
        self.device = device or (tvm.cuda() if target.startswith("cuda") else tvm.cpu())
        self._vm_main = None  # created on first run: a CUDA module can be built without a GPU

    @property
    def _main(self):
        if self._vm_main is None:
            if not self.device.exist:
                raise RunInputError(
                    f"cannot run a {self.target} module here: no {self.device} device present "
                    "(export it and run it where one is)"
                )
            vm = relax.VirtualMachine(self.executable, self.device)
            main = vm["main"]  # looked up once: a lookup costs ~18 us
            if huge_pages.wanted(self.device):  # the weights on 2 MiB pages after a first run
                main = huge_pages.collapse_on_first_call(self.executable, self.device, main)
            self._vm_main = main
        return self._vm_main

    # -- running ---------------------------------------------------------------------------
    def _check_inputs(self, inputs: tuple) -> list[np.ndarray]:
        if len(inputs) != len(self.inputs):
            names = ", ".join(f"{s.name}{s.shape_text()}" for s in self.inputs)
            raise RunInputError(
                f"expected {len(self.inputs)} input(s) ({names}), got {len(inputs)}"
            )
        arrays = []
        for spec, value in zip(self.inputs, inputs):
            if value is None:
                raise RunInputError(
                    f"input {spec.name!r}: got None; "
                    + (
                        "an empty optional cannot be passed to TVM's VM"
                        if spec.optional
                        else "expected an array"
                    )  # fmt: skip
                )
            if isinstance(value, (list, tuple)) and not hasattr(value, "shape"):
                raise RunInputError(f"input {spec.name!r}: expected an array, got a sequence")
            arr = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
            why = spec.mismatch(tuple(arr.shape))
            if why:
                raise RunInputError(f"input {spec.name!r}: {why}")
            if str(arr.dtype) != spec.dtype:
                raise RunInputError(
                    f"input {spec.name!r}: expected dtype {spec.dtype}, got {arr.dtype}"
                )
            arrays.append(np.require(arr, requirements="C"))  # keeps a 0-d input 0-d
        feeds = {spec.name: arr for spec, arr in zip(self.inputs, arrays)}
        for guard in self.guards:
            why = guard.violation(feeds)
            if why:
                raise RunInputError(why)
        return arrays

    def run(self, *inputs: Any) -> np.ndarray | tuple[np.ndarray, ...]:
        """Run on numpy inputs (in model input order); a tuple for several outputs."""
        arrays = self._check_inputs(inputs)
        main = self._main  # first: names a missing device before any transfer
        args = [tvm.runtime.tensor(a, self.device) for a in arrays]
        try:
            return _to_numpy(main(*args))
        except RuntimeError as err:  # a failed run-time check (TVM raises RuntimeError)
            raise RunError(f"the model failed on these inputs: {error_detail(err)}") from err

    def device_call(self, *inputs: Any) -> Callable[[], None]:
        """A no-argument call of the model on ``inputs`` copied to the device once, then a
        device sync: what a benchmark times (no transfer in it)."""
        arrays = self._check_inputs(inputs)
        main = self._main  # looked up once: a lookup costs ~18 us
        args = [tvm.runtime.tensor(a, self.device) for a in arrays]
        device = self.device

        def call() -> None:
            main(*args)
            device.sync()

        return call

    def benchmark(self, *inputs: Any, repeat: int = 20, min_time: float = 0.2) -> dict:
        """Median/min seconds per run, inputs already on the device (no transfer timed)."""
        call = self.device_call(*inputs)
        call()  # warm-up
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < repeat or time.perf_counter() - start < min_time:
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
            if len(times) > 100_000:
                break
        return {"median_s": float(np.median(times)), "min_s": float(min(times)), "runs": len(times)}

    def random_inputs(self, seed: int = 0) -> list[np.ndarray]:
        """Random inputs of the right shapes and dtypes (the CLI's default; symbolic dims 1)."""
        return random_arrays(((s.example_shape(), s.dtype) for s in self.inputs), seed)

    # -- export / load -----------------------------------------------------------------------
    def export(self, path: str | os.PathLike) -> str:
        """Write ``path`` (.so) and the JSON manifest beside it; returns the manifest path."""
        path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        export = getattr(self._library, "export", None)
        (export or self.executable.export_library)(path)
        manifest = {
            "format": "tvm-sparse-module",
            "version": MANIFEST_VERSION,
            "library": os.path.basename(path),
            # the library this manifest describes: load refuses another one (a rebuilt or
            # swapped .so would be run with inputs, guards and a report that are not its own)
            "library_sha256": _sha256(path),
            "target": self.target,
            "inputs": [s.to_dict() for s in self.inputs],
            "guards": [g.to_dict() for g in self.guards],
            "report": self.report.to_dict(),
        }
        mpath = manifest_path(path)
        with open(mpath, "w") as f:
            json.dump(manifest, f, indent=2)
        return mpath


def random_arrays(shapes_dtypes: Iterable[tuple], seed: int = 0) -> list[np.ndarray]:
    """Seeded arrays for ``(shape, dtype)`` pairs: standard normal floats, 0/1 integers and
    booleans (inputs no model rejects: 0/1 is a valid index, mask and token id)."""
    rng = np.random.default_rng(seed)
    out = []
    for shape, dtype in shapes_dtypes:
        shape = tuple(shape)
        if str(dtype).startswith("float"):
            out.append(rng.standard_normal(shape).astype(dtype))
        elif str(dtype) == "bool":
            out.append(rng.integers(0, 2, shape).astype(bool))
        else:
            out.append(rng.integers(0, 2, shape).astype(dtype))
    return out


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _to_numpy(out: Any) -> np.ndarray | tuple:
    if hasattr(out, "numpy"):
        return out.numpy()
    if isinstance(out, tvm.runtime.ShapeTuple):  # an ONNX Shape output: int64 values
        return np.array(list(out), dtype=np.int64)
    if isinstance(out, (int, float, bool)):  # a scalar the VM returns as a plain value
        return np.asarray(out)
    return tuple(_to_numpy(o) for o in out)


def load(path: str | os.PathLike) -> CompiledModule:
    """Load a module written by ``CompiledModule.export``."""
    path = os.fspath(path)
    mpath = manifest_path(path)
    if not os.path.exists(path):
        raise ArtifactError(f"{path}: no such file")
    if not os.path.exists(mpath):
        raise ArtifactError(f"{path}: manifest {mpath} is missing (export writes both)")
    try:
        with open(mpath) as f:
            manifest = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ArtifactError(f"{mpath}: unreadable manifest ({err})") from err
    if manifest.get("format") != "tvm-sparse-module":
        raise ArtifactError(f"{mpath}: not a tvm-sparse manifest")
    expected = manifest.get("library_sha256")
    if expected is not None and _sha256(path) != expected:
        raise ArtifactError(
            f"{path}: this library is not the one {mpath} was written with (its SHA-256 "
            "differs): export the module again, or keep each .so with its own manifest"
        )
    try:
        lib = tvm.runtime.load_module(path)
    except Exception as err:  # TVM raises its own error types for bad libraries
        raise ArtifactError(f"{path}: cannot load the module ({type(err).__name__})") from err
    inputs = [TensorSpec.from_dict(d) for d in manifest["inputs"]]
    report = Report.from_dict(manifest["report"])
    guards = [guard_from_dict(d) for d in manifest.get("guards", [])]
    return CompiledModule(lib, inputs, report, manifest.get("target", "llvm"), guards=guards)
