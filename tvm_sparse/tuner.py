"""``tune()``: auto-tune every kernel of a model, the driver over ``schedules.tuning``.

It sits beside ``compiler.py`` because, like compile, it runs the whole front of the pipeline
(import, canonicalize, sparsify, legalize) to find its tasks; ``schedules.tuning`` holds the
parts (knob spaces, search, measurers, records) and imports no pass.

It extracts two kinds of tasks: kernel tasks (one per layer and candidate kernel, searched over
the builders' knobs) and MetaSchedule tasks (the fused dense leftovers), steps the kernel
searches round-robin, then tunes the MetaSchedule tasks one by one, and returns a
:class:`~tvm_sparse.schedules.tuning.TuneSummary`. Re-running on the same model measures nothing
again; with more trials than before, a task continues where it stopped.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import queue
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import tvm

from .errors import TvmSparseError
from .frontend import import_model
from .ir.layers import LayerSpec
from .passes import pipeline as tvm_sparse_pipeline
from .passes.analyze_sparsity import analyze_function
from .passes.canonicalize import canonicalize
from .schedules.choice import choose_layer
from .schedules.registry import candidates_for, find_family
from .schedules.tuning.build_pool import BuildPool
from .schedules.tuning.measure import LocalMeasurer, RPCMeasurer, free_rpc_devices
from .schedules.tuning.metaschedule import (
    _ms_runner,
    extract_ms_tasks,
    in_process_builder,
    tune_ms_task,
)
from .schedules.tuning.model_check import ModelCheck, forget_check, model_fingerprint, write_check
from .schedules.tuning.records import MS_TASKS, KernelRecords, _read_json, open_database
from .schedules.tuning.results import TaskResult, TuneSummary, _result_line
from .schedules.tuning.search import KernelSearch
from .schedules.weights_residency import WEIGHTS_IN, model_working_set, weights_in_for
from .target import device_present, resolve_target
from .timing import take_turns


@dataclasses.dataclass
class KernelTask:
    """One knob search to run: a layer and one of its candidate kernels."""

    layer: LayerSpec
    candidate: str


def _compile_phases(imported, target: tvm.target.Target) -> tvm.IRModule:
    """The module exactly as ``compile`` has it when the tuning database is applied.

    The same ``pre_schedule_passes`` as ``passes.pipeline.build_pipeline``, so the MetaSchedule
    workloads recorded here match the ones compile looks up.
    """
    options = tvm_sparse_pipeline.SparsifyOptions(layer_names=imported.weighted_nodes)
    with target:
        phases = tvm_sparse_pipeline.pre_schedule_passes(target, options)
        return tvm.transform.Sequential(phases, name="tvm_sparse.tune")(imported.mod)


def extract_kernel_tasks(imported, target: tvm.target.Target, candidates: str = "all"):
    """One task per (layer, candidate kernel); ``candidates="chosen"``: only the kernel that
    compile picks by estimate for each layer."""
    mod = canonicalize(imported.mod)
    tasks = []
    for layer, _act in analyze_function(mod["main"], imported.weighted_nodes):
        names = [c.name for c in candidates_for(layer, target, sparse=True)]
        if candidates == "chosen":
            names = [choose_layer(layer, target).chosen]
        tasks += [KernelTask(layer, n) for n in names if find_family(n, layer, target)]
    return tasks


def tune(
    model: Any,
    target: Any = "llvm",
    *,
    trials: int = 64,
    records_dir: str | os.PathLike,
    input_shapes: str | dict | None = None,
    rpc_tracker: str | None = None,
    rpc_key: str | None = None,
    progress: Callable[[str], None] | None = print,
    candidates: str = "all",
    metaschedule: bool = True,
    check_model: bool = True,
    check_rounds: int = 12,
    weights_in: str = "auto",
    rpc_devices: int = 1,
) -> TuneSummary:
    """Tune every kernel of ``model`` and write the records to ``records_dir``.

    ``trials`` is the most settings measured per task. ``candidates``: "all" tunes every
    candidate kernel of every layer (the tuned times then decide dense vs sparse per layer at
    compile), "chosen" only the kernel compile picks by estimate. ``metaschedule=False`` skips
    the leftovers. With ``rpc_tracker="HOST:PORT"`` and ``rpc_key`` every measurement runs on
    the device the tracker hands out; building stays here. ``check_model``: end with the
    end-to-end check (``schedules.tuning.model_check``): the model compiled without and with the
    records, timed in ``check_rounds`` turns; records that do not make it faster are not applied
    to it by compile (the summary says so). It runs where the model can run: on this machine,
    not through RPC. ``weights_in``: where a timed kernel's weights come from on a CPU
    (``weights_residency.WEIGHTS_IN``); "auto" is "l3" when the model's weights and activations
    fit half this machine's last-level cache (they stay there between inferences), else "dram";
    over RPC always "dram".
    ``rpc_devices``: how many of the tracker's ``rpc_key`` servers to hold and measure on at
    once (each layer's trials still run one at a time; different layers run side by side).
    """
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    if candidates not in ("all", "chosen"):
        raise ValueError(f"candidates must be 'all' or 'chosen', got {candidates!r}")
    if (rpc_tracker is None) != (rpc_key is None):
        raise TvmSparseError("RPC tuning needs both --rpc-tracker and --rpc-key")
    if rpc_devices < 1 or (rpc_devices > 1 and rpc_tracker is None):
        raise TvmSparseError(
            f"--rpc-devices must be >= 1 and, above 1, come with --rpc-tracker (the devices "
            f"are the tracker's servers of --rpc-key); got {rpc_devices}"
        )
    say = progress or (lambda _msg: None)
    start = time.perf_counter()
    tgt = resolve_target(target)
    if rpc_tracker is None and not device_present(tgt):
        raise TvmSparseError(
            f"tuning for {tgt.kind.name} times kernels on a {tgt.kind.name} device and this "
            "machine has none: give --rpc-tracker and --rpc-key of a machine that has one"
        )
    records_dir = os.fspath(records_dir)
    os.makedirs(records_dir, exist_ok=True)
    imported = import_model(model, input_shapes)
    kernel_tasks = extract_kernel_tasks(imported, tgt, candidates)
    ms_tasks, skipped = [], []
    if metaschedule:
        mod = _compile_phases(imported, tgt)
        ms_tasks, skipped = extract_ms_tasks(mod, tgt)
    db = open_database(records_dir)  # compile needs the database files even when empty
    say(
        f"tuning {imported.source}: {len(kernel_tasks)} kernel tasks, {len(ms_tasks)} "
        f"MetaSchedule tasks, up to {trials} trials each, on {rpc_tracker or 'this machine'}"
    )
    if skipped:
        say(f"  not tuned: {', '.join(skipped)}")
    weights_in = _weights_in(weights_in, kernel_tasks, bool(rpc_tracker))
    if rpc_devices > 1 and (free := free_rpc_devices(rpc_tracker, rpc_key)) < rpc_devices:
        # each measurer holds its device for the whole tune: one too many would wait forever
        raise TvmSparseError(
            f"--rpc-devices {rpc_devices}: the tracker at {rpc_tracker} has {free} free "
            f"server(s) of key {rpc_key!r}"
        )
    measurers = (
        [RPCMeasurer(tgt, rpc_tracker, rpc_key) for _ in range(rpc_devices)] if rpc_tracker
        else [LocalMeasurer(tgt, weights_in=weights_in)]
    )  # fmt: skip
    measurer = measurers[0]
    say(f"  kernels timed with their weights in {measurer.weights_in}")
    if len(measurers) > 1:
        say(f"  measuring on {len(measurers)} devices of key {rpc_key!r} at once")
    results: list[TaskResult] = []
    try:
        records = KernelRecords(records_dir)
        total = len(kernel_tasks) + len(ms_tasks)
        searches = [
            KernelSearch(t.candidate, t.layer, tgt, records, measurer, trials, say,
                         f"[{i}/{total}] {t.layer.name} {t.candidate}")
            for i, t in enumerate(kernel_tasks, 1)
        ]  # fmt: skip
        step_round_robin(searches, measurers)
        for search in searches:  # the best few of each task timed again, in turns
            search.confirm()
            results.append(search.result())
            say(_result_line(search.label, results[-1]))
        for extra in measurers[1:]:  # MetaSchedule's runner measures on one device of its own
            extra.release()
        state = _read_json(os.path.join(records_dir, MS_TASKS))
        tools = (in_process_builder(), _ms_runner(rpc_tracker, rpc_key, tgt)) if ms_tasks else ()
        for j, task in enumerate(ms_tasks, len(kernel_tasks) + 1):
            label = f"[{j}/{total}] {task.task_name}"
            res = tune_ms_task(task, tgt, records_dir, db, state, measurer, trials, tools, say)
            results.append(res)
            say(_result_line(label, res))
    finally:
        for each in measurers:
            each.close()
    summary = TuneSummary(records_dir, str(tgt), results, time.perf_counter() - start)
    if not check_model:
        summary.model_check_note = "not checked (check_model=False)"
    elif rpc_tracker:
        summary.model_check_note = "not checked: the model runs on the RPC device, not here"
    elif not device_present(tgt):
        summary.model_check_note = f"not checked: no {tgt.kind.name} device here"
    else:
        summary.model_check = check_tuned_model(
            model, input_shapes, imported, tgt, records_dir, measurer.machine, check_rounds, say
        )
    summary.wall_s = time.perf_counter() - start
    say(f"done: {len(results)} tasks, reused {summary.reused} tasks, {summary.trials} new trials "
        f"in {summary.wall_s:.1f} s")  # fmt: skip
    return summary


def step_round_robin(searches: list, measurers: list) -> None:
    """Step every unfinished search once per round until all are done: the hand schedules
    first, then every layer improved a little at a time. With several measurers (RPC devices)
    the searches of a round run in parallel, one per free device, each trial built in a worker
    process (``build_pool``: the builds are Python that holds the GIL) and timed on its
    device."""
    if len(measurers) == 1:
        while any(not s.done for s in searches):
            for search in searches:
                if not search.done:
                    search.step(measurers[0])
        return
    free: queue.Queue = queue.Queue()
    for each in measurers:
        free.put(each)
    builds = BuildPool(len(measurers))

    def step_on_a_free_device(search) -> None:
        device = free.get()
        try:
            search.step(device, builds)
        finally:
            free.put(device)

    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(measurers)) as pool:
            while any(not s.done for s in searches):
                todo = [s for s in searches if not s.done]
                list(pool.map(step_on_a_free_device, todo))  # list(): a step's error is raised
    finally:
        builds.close()


def check_tuned_model(
    model: Any,
    input_shapes: str | dict | None,
    imported,
    tgt: tvm.target.Target,
    records_dir: str,
    machine: str,
    rounds: int,
    say: Callable[[str], None],
) -> ModelCheck:
    """Compile the model without and with the records, time both in turns, and record the
    verdict compile reads (``model_check``): kept when the median over rounds of untuned /
    tuned time is above 1 and both give the same answers."""
    from .compile_tvm import compile_tvm

    fingerprint = model_fingerprint(imported.mod, tgt, machine)
    forget_check(records_dir, fingerprint)  # an earlier verdict must not hide the new records
    say("whole model: compiling it without and with the records, then timing both in turns")
    untuned = compile_tvm(model, tgt, input_shapes=input_shapes)
    tuned = compile_tvm(model, tgt, input_shapes=input_shapes, tuning_records=records_dir)
    inputs = untuned.random_inputs(0)
    same = _same_outputs(untuned.run(*inputs), tuned.run(*inputs))
    samples = take_turns({"untuned": _model_timer(untuned, inputs),
                          "tuned": _model_timer(tuned, inputs)}, rounds)  # fmt: skip
    speedup = statistics.median(u / t for u, t in zip(samples["untuned"], samples["tuned"]))
    check = ModelCheck(
        untuned_ms=statistics.median(samples["untuned"]) * 1e3,
        tuned_ms=statistics.median(samples["tuned"]) * 1e3,
        speedup=speedup,
        rounds=rounds,
        machine=machine,
        kept=same and speedup > 1.0,
    )
    write_check(records_dir, fingerprint, check)
    if not same:
        say("whole model: the tuned model's outputs differ from the untuned one's")
    say(check.line())
    return check


def _same_outputs(a, b) -> bool:
    outs_a = a if isinstance(a, tuple) else (a,)
    outs_b = b if isinstance(b, tuple) else (b,)
    return all(
        np.allclose(x, y, rtol=1e-3, atol=1e-3 * max(float(np.abs(x).max(initial=0)), 1e-6),
                    equal_nan=True)
        for x, y in zip(outs_a, outs_b)
    )  # fmt: skip


def _model_timer(module, inputs: list[np.ndarray], sample_s: float = 0.05) -> Callable[[], float]:
    """A timer of whole runs (seconds per run, averaged over enough runs for ``sample_s``)."""
    run = module._main
    args = [tvm.runtime.tensor(a, module.device) for a in inputs]
    run(*args)
    module.device.sync()
    start = time.perf_counter()
    run(*args)
    module.device.sync()
    count = max(1, int(sample_s / max(time.perf_counter() - start, 1e-6)))

    def sample() -> float:
        begin = time.perf_counter()
        for _ in range(count):
            run(*args)
        module.device.sync()
        return (time.perf_counter() - begin) / count

    return sample


def _weights_in(choice: str, tasks: list[KernelTask], remote: bool) -> str:
    """Resolve ``tune``'s ``weights_in``: "auto" -> "l3" when the model's working set (weights,
    as CSR where that is smaller, and activations) fits half the last-level cache here, else
    "dram" (``weights_residency``)."""
    if choice not in ("auto", *WEIGHTS_IN):
        raise TvmSparseError(f"weights_in must be auto or one of {WEIGHTS_IN}, got {choice!r}")
    if remote or choice != "auto":
        return "dram" if remote else choice
    layers = {id(t.layer): t.layer for t in tasks}.values()
    return weights_in_for(model_working_set(layers))
