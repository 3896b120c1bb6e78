"""MetaSchedule tasks: the dense leftovers, tuned into MetaSchedule's JSON database.

The leftovers are the fused TIR functions left after legalization that no tvm-sparse kernel
covers (pooling, k-WTA plumbing, reshapes...). MetaSchedule tunes them with its XGBoost cost
model into the database in ``RECORDS_DIR``, which ``compile(tuning_records=RECORDS_DIR)``
applies with ``MetaScheduleApplyDatabase``. The default (dlight) schedule is measured and
committed as a record too, so the database's best is never worse than what compile would do
without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Callable

import numpy as np
import tvm

from ...target import is_cpu
from ..candidate_run import GPU_TIMER_SETTINGS, TIMER_SETTINGS
from .measure import EVERY_CACHE, LocalMeasurer, _split_tracker
from .records import _VERSION, MS_TASKS, _atomic_write_json
from .results import TaskResult, _ms

log = logging.getLogger("tvm_sparse")


def _has_blocks(func: tvm.tirx.PrimFunc) -> bool:
    from tvm import s_tir

    try:
        sch = s_tir.Schedule(func)
        return bool(sch.get_child_blocks(sch.get_sblock("root")))
    except Exception:  # noqa: BLE001 - no root block: an ir_builder loop nest (TopK)
        return False


def extract_ms_tasks(mod: tvm.IRModule, target: tvm.target.Target) -> tuple[list, list[str]]:
    """MetaSchedule tasks for the dense leftovers, and notes on the functions left out.

    Left out: our scheduled kernels, functions without blocks (TVM's TopK is an ir_builder
    loop nest) and functions with integer inputs (MetaSchedule's runner fills them with random
    values, which are out-of-range indices for ``take``).
    """
    from tvm.s_tir import meta_schedule as ms

    keep, skipped = [], []
    for task in ms.relax_integration.extract_tasks(mod, target):
        func = task.dispatched[0]["main"]
        attrs = func.attrs or {}
        if attrs.get("tirx.is_scheduled", False):
            continue
        if not _has_blocks(func):
            skipped.append(f"{task.task_name} (no blocks)")
            continue
        if any(not str(p.dtype).startswith("float") for p in func.params):
            skipped.append(f"{task.task_name} (integer inputs)")
            continue
        keep.append(task)
    keep.sort(key=lambda t: t.task_name)
    return keep, skipped


def _random_args(func: tvm.tirx.PrimFunc, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    args = []
    for p in func.params:  # TVM 0.27: PrimFunc params are the buffers themselves
        shape = [int(d) for d in p.shape]
        dtype = str(p.dtype)
        if dtype.startswith("float"):
            args.append(rng.standard_normal(shape).astype(dtype))
        else:
            args.append(np.zeros(shape, dtype=dtype))
    return args


def default_schedule(func: tvm.tirx.PrimFunc, target: tvm.target.Target):
    """The schedule compile gives a leftover without records (dlight + ours), as a traced
    Schedule; None when no rule applies (the function runs unscheduled)."""
    from ..leftover_x86 import cpu_leftover_rules, gpu_leftover_rules

    rules = cpu_leftover_rules() if is_cpu(target) else gpu_leftover_rules()
    with target:
        for rule in rules:
            sch = rule.apply(func, target, False)
            if sch is not None:
                return sch
    return None


def _commit_default(db, task, target, measurer) -> float | None:
    """Measure the default schedule of ``task`` and commit it as a tuning record."""
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms

    mod = task.dispatched[0]
    func = mod["main"]
    sch = default_schedule(func, target)
    if sch is None:  # unscheduled: a trace that only looks the blocks up (an empty trace is
        sch = s_tir.Schedule(mod)  # ignored by the database's top-k)
        sch.get_child_blocks(sch.get_sblock("root"))
    scheduled, trace = sch.mod, sch.trace
    try:
        # timed as MetaSchedule's runner times its candidates: with every cache flushed
        seconds, _ = measurer.run(scheduled, _random_args(func), weights_in=EVERY_CACHE)
    except Exception as err:  # noqa: BLE001 - no default record; MetaSchedule's still count
        log.warning("%s: default schedule failed to run: %s", task.task_name, err)
        return None
    record = ms.database.TuningRecord(
        trace,
        db.commit_workload(mod),
        run_secs=[seconds],
        target=target,
        args_info=ms.arg_info.ArgInfo.from_prim_func(func),
    )
    db.commit_tuning_record(record)
    return seconds


def _ms_runner(rpc_tracker: str | None, rpc_key: str | None, target: tvm.target.Target):
    """MetaSchedule's runner, timing as the kernel measurer does (``measure``): on a CPU one call
    per repeat with the caches flushed, so its candidates and the committed default compare."""
    from tvm.s_tir import meta_schedule as ms

    cpu = is_cpu(target)
    settings = TIMER_SETTINGS if cpu else GPU_TIMER_SETTINGS
    evaluator = ms.runner.EvaluatorConfig(
        number=settings["number"], repeat=settings["repeat"],
        min_repeat_ms=settings["min_repeat_ms"], enable_cpu_cache_flush=cpu,
    )  # fmt: skip
    if rpc_tracker is None:
        return ms.runner.LocalRunner(evaluator_config=evaluator, timeout_sec=120)
    host, port = _split_tracker(rpc_tracker)
    config = ms.runner.RPCConfig(
        tracker_host=host, tracker_port=port, tracker_key=rpc_key, session_timeout_sec=120
    )
    return ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator, max_workers=1)


def in_process_builder():
    """A MetaSchedule builder that compiles in this process, one candidate after another.

    MetaSchedule's LocalBuilder starts a fresh process pool for every batch, and each worker
    imports TVM (seconds, more on a loaded machine): for the small leftover functions that
    start-up costs more than the builds, and loaded machines hit its 30 s timeout.
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.builder.local_builder import default_build, default_export

    @derived_object
    class InProcessBuilder(ms.builder.PyBuilder):
        def build(self, build_inputs):
            results = []
            for item in build_inputs:
                try:
                    artifact = default_export(default_build(item.mod, item.target, None))
                    results.append(ms.builder.BuilderResult(artifact, None))
                except Exception as err:  # noqa: BLE001 - a failed candidate, not a failed tune
                    results.append(ms.builder.BuilderResult(None, f"build failed: {err}"))
            return results

    return InProcessBuilder()


def tune_ms_task(
    task,
    target: tvm.target.Target,
    records_dir: str,
    db,
    state: dict,
    measurer: LocalMeasurer,
    trials: int,
    tools: tuple,
    progress: Callable[[str], None],
) -> TaskResult:
    """Tune one leftover function with MetaSchedule (XGBoost cost model) into ``db``."""
    from tvm.s_tir import meta_schedule as ms

    mod = task.dispatched[0]
    key = hashlib.sha256(f"{mod.script()}\n{target}".encode()).hexdigest()[:32]
    entry = state.get(key, {"name": task.task_name, "trials": 0})
    if entry["trials"] >= trials:
        return TaskResult(task.task_name, "metaschedule", entry.get("default_s"),
                          entry.get("best_s"), entry["trials"], True)  # fmt: skip
    if entry.get("default_s") is None:
        entry["default_s"] = _commit_default(db, task, target, measurer)
    new = trials - entry["trials"]
    progress(f"  {task.task_name}: MetaSchedule, {new} trials (default {_ms(entry['default_s'])})")
    # One context per task, built here: MetaSchedule's own helper configures per-task log
    # files through the logging module and fails once something else reconfigured logging.
    context = ms.TuneContext(
        mod=mod,
        target=task.target,
        space_generator="post-order-apply",
        search_strategy="evolutionary",
        task_name=task.task_name,
        rand_state=len(state) + 1,
        num_threads="physical",
    ).clone()
    measurer.release()  # an RPC device serves one session at a time
    with _quiet_ms():
        ms.tune_tasks(
            tasks=[context],
            task_weights=[1.0],
            work_dir=records_dir,
            max_trials_global=new,
            num_trials_per_iter=min(new, 16),
            builder=tools[0],
            runner=tools[1],
            database=db,
            cost_model="xgb",
        )
    top = db.get_top_k(db.commit_workload(mod), 1)
    entry["best_s"] = float(np.mean([float(s) for s in top[0].run_secs])) if top else None
    entry["trials"] = trials
    state[key] = entry
    _atomic_write_json(os.path.join(records_dir, MS_TASKS), {"version": _VERSION, "records": state})
    progress(f"  {task.task_name}: best {_ms(entry['best_s'])}")
    return TaskResult(task.task_name, "metaschedule", entry["default_s"], entry["best_s"],
                      new, False)  # fmt: skip


@contextlib.contextmanager
def _quiet_ms():
    """MetaSchedule logs every iteration at INFO; keep its table out of our progress lines."""
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    level = logger.level
    if not log.isEnabledFor(logging.DEBUG):
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
